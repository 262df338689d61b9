#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Canonical JSON as securesystemslib's `encode_canonical` produces it, which is what TUF
/// signatures cover (TUF §4.2, "canonical JSON" as in OLPC's definition).
///
/// - Object keys are sorted by Unicode scalar values (equivalently by UTF-8 bytes), not by
///   Swift's `String <`, which uses canonical equivalence.
/// - Only `\` and `"` are escaped in strings; every other character is written as UTF-8.
/// - Only integers are allowed: floats make the value un-signable.
/// - No whitespace.
public enum CanonicalJSON {
    public static func encode(_ value: JSONValue) throws(JSONError) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(1024)
        try write(value, into: &out)
        return out
    }

    private static func write(_ value: JSONValue, into out: inout [UInt8]) throws(JSONError) {
        switch value {
        case .null: out.append(contentsOf: Array("null".utf8))
        case .bool(let b): out.append(contentsOf: Array((b ? "true" : "false").utf8))
        case .integer(let i): out.append(contentsOf: Array(String(i).utf8))
        case .float: throw JSONError(kind: .notCanonicalizable, offset: out.count)
        case .string(let s): writeString(s, into: &out)
        case .array(let a):
            out.append(UInt8(ascii: "["))
            for (i, v) in a.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                try write(v, into: &out)
            }
            out.append(UInt8(ascii: "]"))
        case .object(let o):
            out.append(UInt8(ascii: "{"))
            let sorted = o.members.sorted { scalarOrder($0.key, $1.key) }
            for (i, m) in sorted.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                writeString(m.key, into: &out)
                out.append(UInt8(ascii: ":"))
                try write(m.value, into: &out)
            }
            out.append(UInt8(ascii: "}"))
        }
    }

    private static func writeString(_ s: String, into out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        for b in s.utf8 {
            if b == UInt8(ascii: "\\") || b == UInt8(ascii: "\"") { out.append(UInt8(ascii: "\\")) }
            out.append(b)
        }
        out.append(UInt8(ascii: "\""))
    }

    /// Orders strings by Unicode scalar values. UTF-8 byte order equals scalar order.
    public static func scalarOrder(_ a: String, _ b: String) -> Bool {
        a.utf8.lexicographicallyPrecedes(b.utf8)
    }
}

extension CanonicalJSON {
    /// The canonical form of one value of a parsed document, written from its tape: the same bytes as
    /// `encode(document.value(element))` without building the value (TUF §4.2: signatures cover the canonical form of
    /// `signed`, and a client verifies them over bytes it has just parsed).
    ///
    /// Strings with no escape are copied as they lie (they cannot hold `"` or `\`); a key order that is already
    /// sorted is kept without sorting; `-0` is written `0`, as securesystemslib writes Python's integer zero.
    public static func encode(_ document: JSONDocument, _ element: JSONElement) throws(JSONError) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(document.bytes.count)
        let failure: Int? = document.withTape { tape in
            var writer = TapeWriter(tape: tape)
            let failed = writer.write(element.index)
            out = writer.out
            return failed
        }
        if let offset = failure { throw JSONError(kind: .notCanonicalizable, offset: offset) }
        return out
    }
}

/// Writes canonical JSON from a tape; `write` returns the offset of a value that has no canonical form (a float).
private struct TapeWriter {
    let tape: JSONTape
    var out: [UInt8] = []

    init(tape: JSONTape) {
        self.tape = tape
        out.reserveCapacity(tape.bytes.count)
    }

    mutating func write(_ index: Int) -> Int? {
        switch tape.kind(index) {
        case .null: out.append(contentsOf: [0x6E, 0x75, 0x6C, 0x6C])
        case .true: out.append(contentsOf: [0x74, 0x72, 0x75, 0x65])
        case .false: out.append(contentsOf: [0x66, 0x61, 0x6C, 0x73, 0x65])
        case .number:
            guard tape.isIntegerLiteral(index) else { return Int(tape.nodes[index].start) }
            let literal = tape.raw(index)
            if literal.count == 2, literal[0] == UInt8(ascii: "-"), literal[1] == UInt8(ascii: "0") {
                out.append(UInt8(ascii: "0"))
            } else {
                out.append(contentsOf: literal)
            }
        case .string: writeString(index)
        case .array:
            out.append(UInt8(ascii: "["))
            var position = index + 1
            for i in 0..<tape.count(index) {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                if let failed = write(position) { return failed }
                position = tape.next(position)
            }
            out.append(UInt8(ascii: "]"))
        case .object:
            out.append(UInt8(ascii: "{"))
            var keys: [Int] = []
            keys.reserveCapacity(tape.count(index))
            var position = index + 1
            var sorted = true
            for _ in 0..<tape.count(index) {
                if sorted, let last = keys.last, !precedes(last, position) { sorted = false }
                keys.append(position)
                position = tape.next(position + 1)
            }
            // The parser refused duplicate names, so the order is strict.
            if !sorted { keys.sort { precedes($0, $1) } }
            for (i, key) in keys.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                writeString(key)
                out.append(UInt8(ascii: ":"))
                if let failed = write(key + 1) { return failed }
            }
            out.append(UInt8(ascii: "}"))
        }
        return nil
    }

    /// Only `"` and `\` are escaped; every other byte is written as it is (securesystemslib's `encode_canonical`).
    mutating func writeString(_ index: Int) {
        out.append(UInt8(ascii: "\""))
        if !tape.hasEscape(index) {
            out.append(contentsOf: tape.raw(index))
        } else {
            tape.unescaped(index) { bytes in
                for b in bytes {
                    if b == UInt8(ascii: "\\") || b == UInt8(ascii: "\"") { out.append(UInt8(ascii: "\\")) }
                    out.append(b)
                }
            }
        }
        out.append(UInt8(ascii: "\""))
    }

    /// Names ordered by their unescaped UTF-8 bytes, which is the order of Unicode scalar values.
    func precedes(_ a: Int, _ b: Int) -> Bool {
        tape.unescaped(a) { x in
            tape.unescaped(b) { y in
                let common = min(x.count, y.count)
                if common > 0, let p = x.baseAddress, let q = y.baseAddress {
                    let order = memcmp(p, q, common)
                    if order != 0 { return order < 0 }
                }
                return x.count < y.count
            }
        }
    }
}
