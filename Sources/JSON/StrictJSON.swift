#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Why bytes are not acceptable JSON: for the log and the audit record, never for a client.
public struct JSONError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: String, Sendable {
        case empty
        case invalidUTF8 = "invalid UTF-8"
        case unexpectedByte = "unexpected byte"
        case truncated
        case trailingData = "trailing data"
        case duplicateKey = "duplicate key"
        case tooDeep = "nesting too deep"
        case tooManyMembers = "too many members or elements"
        case stringTooLong = "string too long"
        case numberOutOfRange = "number out of range"
        case invalidEscape = "invalid escape"
        case loneSurrogate = "lone surrogate"
        case controlCharacter = "control character in string"
        case noncharacter = "noncharacter in string"
        case tooLarge = "document larger than 4 GiB"
        /// Canonical JSON (TUF §4.2) has no floats.
        case notCanonicalizable = "float in canonical JSON"
    }
    public let kind: Kind
    public let offset: Int
    public init(kind: Kind, offset: Int) {
        self.kind = kind
        self.offset = offset
    }
    public var description: String { "\(kind.rawValue) at byte \(offset)" }
}

/// The one strict JSON parser of Bulwark (RFC 8259 grammar), with two profiles from one code base:
///
/// - **I-JSON** (RFC 7493 §2), for device messages and schemas: UTF-8 only; no duplicate member names, compared by
///   their unescaped UTF-8 bytes (§2.3, RFC 8259 §8.3: Swift's `String` equality would make `"é"` and `"e\u{301}"`
///   one name); no surrogates and no noncharacters (U+FDD0–U+FDEF and every code point ending in FFFE or FFFF,
///   §2.1), raw or escaped, in names and values; numbers that fit an IEEE 754 double, integers exactly (at most
///   2^53 − 1 in magnitude, §2.2); NaN and Infinity are not JSON and fail as unexpected bytes.
/// - **TUF** (TUF §4.2), for metadata: the same grammar, UTF-8 and duplicate rules, integers that fit an `Int64`
///   kept apart from other numbers (canonical JSON refuses those), noncharacters allowed (securesystemslib accepts
///   them), lone surrogates refused.
///
/// The parser makes one pass and writes a tape (`JSONDocument`): one entry per value, pointing into the input.
/// Strings are validated where they lie and decoded only when asked for; numbers are checked without building
/// them. A small message costs one allocation (the tape). Limits bound the work an attacker can cause: nesting
/// depth, members per object or elements per array, string length (bytes as sent, escapes included) and number
/// length (characters of the literal). Each byte is looked at a bounded number of times: the work is linear in the
/// input (duplicate names in large objects are found through a hash table, not by comparing every pair).
public struct StrictJSON: Sendable, Equatable {
    public enum Profile: Sendable, Equatable {
        case iJSON
        case tuf
    }

    public var profile: Profile
    public var maxDepth: Int
    public var maxMembers: Int
    public var maxStringBytes: Int
    /// Longest number literal accepted (digits, sign, point, exponent).
    public var maxNumberLength: Int

    /// I-JSON with the device message limits (the gateway's default).
    public init(maxDepth: Int = 16, maxMembers: Int = 1000, maxStringBytes: Int = 16 * 1024, maxNumberLength: Int = 40)
    {
        self.profile = .iJSON
        self.maxDepth = maxDepth
        self.maxMembers = maxMembers
        self.maxStringBytes = maxStringBytes
        self.maxNumberLength = maxNumberLength
    }

    /// TUF metadata: depth 128, no other limit than the size of the input (bounded by the caller's length limits).
    public static let tuf: StrictJSON = {
        var parser = StrictJSON(maxDepth: 128, maxMembers: .max, maxStringBytes: .max, maxNumberLength: .max)
        parser.profile = .tuf
        return parser
    }()

    /// Parses exactly one JSON value (whitespace may surround it) into a tape over `bytes`.
    public func parse(_ bytes: [UInt8]) throws(JSONError) -> JSONDocument {
        guard bytes.count < Int(UInt32.max) else { throw JSONError(kind: .tooLarge, offset: 0) }
        let tape = try bytes.withUnsafeBufferPointer { buffer throws(JSONError) -> [JSONNode] in
            guard let base = buffer.baseAddress, !buffer.isEmpty else { throw JSONError(kind: .empty, offset: 0) }
            // One allocation for a typical small message: telemetry has a node per 7-15 bytes (the benchmarks' 200-byte
            // messages 28 and 13 nodes), and a 200-byte message gets room for 41 (852 bytes). Room for the densest
            // document (a node per 2 bytes, 102 for 200 bytes) was a 2,072-byte allocation per message, and glibc
            // consolidates its fast bins at every allocation of 1,024 bytes or more: 2.8 % of the event loops' CPU
            // per QoS 0 message in a profile (2026-12-08). A denser or larger document grows its tape.
            var parser = Parser(
                options: self, base: base, count: buffer.count, capacity: Swift.min(buffer.count / 6 + 8, 4096))
            try parser.document()
            return parser.tape
        }
        return JSONDocument(bytes: bytes, tape: tape)
    }

    /// Parses and builds the value (for configuration, schemas and metadata; the gateway reads the tape).
    public func value(_ bytes: [UInt8]) throws(JSONError) -> JSONValue {
        let document = try parse(bytes)
        return document.value(document.root)
    }
}

/// One value of a parsed document: its kind, where it lies in the input, and where the next sibling starts.
@usableFromInline
struct JSONNode: Sendable {
    @usableFromInline var kind: JSONKind
    /// Strings: an escape is present. Numbers: the literal has neither fraction nor exponent.
    @usableFromInline var flag: Bool
    /// Members of an object or elements of an array.
    @usableFromInline var count: UInt32
    /// Strings: the first byte after the opening quote; numbers: the first byte of the literal; containers: the
    /// opening bracket.
    @usableFromInline var start: UInt32
    /// Strings: the closing quote; numbers: one past the literal.
    @usableFromInline var end: UInt32
    /// The tape index after this value and everything inside it.
    @usableFromInline var next: UInt32
}

public enum JSONKind: UInt8, Sendable {
    case null, `false`, `true`, number, string, array, object

    /// The JSON Schema type name (draft 2020-12 §4.2.1).
    public var typeName: String {
        switch self {
        case .null: "null"
        case .false, .true: "boolean"
        case .number: "number"
        case .string: "string"
        case .array: "array"
        case .object: "object"
        }
    }
}

private let quote = UInt8(ascii: "\"")
private let backslash = UInt8(ascii: "\\")

extension StrictJSON {
    struct Parser {
        let options: StrictJSON
        let p: UnsafePointer<UInt8>
        let n: Int
        var i = 0
        var tape: [JSONNode]
        let iJSON: Bool

        init(options: StrictJSON, base: UnsafePointer<UInt8>, count: Int, capacity: Int) {
            self.options = options
            self.p = base
            self.n = count
            self.iJSON = options.profile == .iJSON
            tape = []
            tape.reserveCapacity(capacity)
        }

        @inline(__always) func fail(_ kind: JSONError.Kind, at offset: Int? = nil) -> JSONError {
            JSONError(kind: kind, offset: offset ?? i)
        }

        mutating func document() throws(JSONError) {
            skipWhitespace()
            guard i < n else { throw fail(.empty, at: 0) }
            try value(depth: 1)
            skipWhitespace()
            guard i == n else { throw fail(.trailingData) }
        }

        @inline(__always) mutating func skipWhitespace() {
            while i < n {
                switch p[i] {
                case 0x20, 0x0A, 0x0D, 0x09: i += 1
                default: return
                }
            }
        }

        @inline(__always) mutating func leaf(_ kind: JSONKind, flag: Bool = false, start: Int, end: Int) {
            let index = UInt32(tape.count)
            tape.append(
                JSONNode(
                    kind: kind, flag: flag, count: 0, start: UInt32(start), end: UInt32(end), next: index + 1))
        }

        mutating func value(depth: Int) throws(JSONError) {
            guard i < n else { throw fail(.truncated) }
            switch p[i] {
            case UInt8(ascii: "{"): try object(depth: depth)
            case UInt8(ascii: "["): try array(depth: depth)
            case quote: try string()
            case UInt8(ascii: "t"):
                try literal("true")
                leaf(.true, start: i - 4, end: i)
            case UInt8(ascii: "f"):
                try literal("false")
                leaf(.false, start: i - 5, end: i)
            case UInt8(ascii: "n"):
                try literal("null")
                leaf(.null, start: i - 4, end: i)
            case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): try number()
            default: throw fail(.unexpectedByte)
            }
        }

        @inline(__always) mutating func literal(_ word: StaticString) throws(JSONError) {
            let count = word.utf8CodeUnitCount
            for offset in 0..<count {
                guard i + offset < n else { throw fail(.truncated, at: i + offset) }
                guard p[i + offset] == word.utf8Start[offset] else { throw fail(.unexpectedByte, at: i + offset) }
            }
            i += count
        }

        mutating func object(depth: Int) throws(JSONError) {
            guard depth <= options.maxDepth else { throw fail(.tooDeep) }
            let at = tape.count
            tape.append(JSONNode(kind: .object, flag: false, count: 0, start: UInt32(i), end: 0, next: 0))
            i += 1
            skipWhitespace()
            var count = 0
            if i < n, p[i] == UInt8(ascii: "}") {
                i += 1
            } else {
                while true {
                    skipWhitespace()
                    guard i < n else { throw fail(.truncated) }
                    guard p[i] == quote else { throw fail(.unexpectedByte) }
                    try string()
                    skipWhitespace()
                    guard i < n else { throw fail(.truncated) }
                    guard p[i] == UInt8(ascii: ":") else { throw fail(.unexpectedByte) }
                    i += 1
                    skipWhitespace()
                    try value(depth: depth + 1)
                    count += 1
                    guard count <= options.maxMembers else { throw fail(.tooManyMembers) }
                    skipWhitespace()
                    guard i < n else { throw fail(.truncated) }
                    if p[i] == UInt8(ascii: ",") {
                        i += 1
                        continue
                    }
                    guard p[i] == UInt8(ascii: "}") else { throw fail(.unexpectedByte) }
                    i += 1
                    break
                }
            }
            tape[at].count = UInt32(count)
            tape[at].end = UInt32(i)
            tape[at].next = UInt32(tape.count)
            if count > 1 { try checkDuplicates(object: at, count: count) }
        }

        mutating func array(depth: Int) throws(JSONError) {
            guard depth <= options.maxDepth else { throw fail(.tooDeep) }
            let at = tape.count
            tape.append(JSONNode(kind: .array, flag: false, count: 0, start: UInt32(i), end: 0, next: 0))
            i += 1
            skipWhitespace()
            var count = 0
            if i < n, p[i] == UInt8(ascii: "]") {
                i += 1
            } else {
                while true {
                    skipWhitespace()
                    guard count < options.maxMembers else { throw fail(.tooManyMembers) }
                    try value(depth: depth + 1)
                    count += 1
                    skipWhitespace()
                    guard i < n else { throw fail(.truncated) }
                    if p[i] == UInt8(ascii: ",") {
                        i += 1
                        continue
                    }
                    guard p[i] == UInt8(ascii: "]") else { throw fail(.unexpectedByte) }
                    i += 1
                    break
                }
            }
            tape[at].count = UInt32(count)
            tape[at].end = UInt32(i)
            tape[at].next = UInt32(tape.count)
        }

        // MARK: Strings

        /// RFC 8259 §7, validated where it lies: well-formed UTF-8 (Unicode Table 3-7), no unescaped control
        /// characters, escapes from the grammar with surrogates paired, and in I-JSON no noncharacter.
        mutating func string() throws(JSONError) {
            let open = i
            let start = i + 1
            var k = start
            var escaped = false
            while true {
                // Plain ASCII is the common case: eight bytes at a time while none of them is a quote, a backslash,
                // a control character or the start of a multi-byte sequence (SWAR: each test sets the high bit of
                // a lane that matches, and no lane is set unless one matches), then byte by byte.
                while k &+ 8 <= n {
                    let word = UnsafeRawPointer(p + k).loadUnaligned(as: UInt64.self)
                    let ones: UInt64 = 0x0101_0101_0101_0101
                    let quotes = word ^ 0x2222_2222_2222_2222
                    let backslashes = word ^ 0x5C5C_5C5C_5C5C_5C5C
                    let special =
                        ((quotes &- ones) & ~quotes) | ((backslashes &- ones) & ~backslashes)
                        | ((word &- 0x2020_2020_2020_2020) & ~word) | word
                    guard special & 0x8080_8080_8080_8080 == 0 else { break }
                    k &+= 8
                }
                var byte: UInt8 = 0
                while k < n {
                    byte = p[k]
                    guard byte >= 0x20, byte < 0x80, byte != quote, byte != backslash else { break }
                    k &+= 1
                }
                guard k < n else {
                    i = k
                    throw fail(.truncated)
                }
                if byte == quote { break }
                i = k
                if byte == backslash {
                    escaped = true
                    try escape()
                } else if byte < 0x20 {
                    throw fail(.controlCharacter)
                } else {
                    try multibyte(byte)
                }
                k = i
            }
            guard k - start <= options.maxStringBytes else { throw fail(.stringTooLong, at: open) }
            leaf(.string, flag: escaped, start: start, end: k)
            i = k + 1
        }

        @inline(__always) func continuation(_ offset: Int, _ low: UInt8 = 0x80, _ high: UInt8 = 0xBF) -> UInt32? {
            guard i + offset < n else { return nil }
            let byte = p[i + offset]
            guard byte >= low, byte <= high else { return nil }
            return UInt32(byte & 0x3F)
        }

        /// One multi-byte UTF-8 sequence at `i` (Unicode Table 3-7: no overlong forms, no surrogates, nothing
        /// above U+10FFFF).
        mutating func multibyte(_ lead: UInt8) throws(JSONError) {
            let scalar: UInt32
            switch lead {
            case 0xC2...0xDF:
                guard continuation(1) != nil else { throw fail(.invalidUTF8) }
                i += 2
                return
            case 0xE0...0xEF:
                let low: UInt8 = lead == 0xE0 ? 0xA0 : 0x80
                let high: UInt8 = lead == 0xED ? 0x9F : 0xBF
                guard let b1 = continuation(1, low, high), let b2 = continuation(2) else {
                    throw fail(.invalidUTF8)
                }
                scalar = UInt32(lead & 0x0F) << 12 | b1 << 6 | b2
                if iJSON, Self.isNoncharacter(scalar) { throw fail(.noncharacter) }
                i += 3
            case 0xF0...0xF4:
                let low: UInt8 = lead == 0xF0 ? 0x90 : 0x80
                let high: UInt8 = lead == 0xF4 ? 0x8F : 0xBF
                guard let b1 = continuation(1, low, high), let b2 = continuation(2), let b3 = continuation(3) else {
                    throw fail(.invalidUTF8)
                }
                scalar = UInt32(lead & 0x07) << 18 | b1 << 12 | b2 << 6 | b3
                if iJSON, Self.isNoncharacter(scalar) { throw fail(.noncharacter) }
                i += 4
            default:
                throw fail(.invalidUTF8)
            }
        }

        /// Unicode §23.7: U+FDD0...U+FDEF, and the last two code points of every plane (U+xxFFFE, U+xxFFFF).
        @inline(__always) static func isNoncharacter(_ scalar: UInt32) -> Bool {
            (0xFDD0...0xFDEF).contains(scalar) || scalar & 0xFFFE == 0xFFFE
        }

        /// An escape at `i` (the backslash).
        mutating func escape() throws(JSONError) {
            guard i + 1 < n else { throw fail(.truncated) }
            switch p[i + 1] {
            case quote, backslash, UInt8(ascii: "/"), UInt8(ascii: "b"), UInt8(ascii: "f"), UInt8(ascii: "n"),
                UInt8(ascii: "r"), UInt8(ascii: "t"):
                i += 2
            case UInt8(ascii: "u"):
                let at = i
                let unit = try hex4(at: i + 2)
                i += 6
                var scalar = unit
                if (0xD800...0xDBFF).contains(unit) {
                    guard i + 1 < n, p[i] == backslash, p[i + 1] == UInt8(ascii: "u") else {
                        throw fail(.loneSurrogate, at: at)
                    }
                    let low = try hex4(at: i + 2)
                    guard (0xDC00...0xDFFF).contains(low) else { throw fail(.loneSurrogate, at: at) }
                    i += 6
                    scalar = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
                } else if (0xDC00...0xDFFF).contains(unit) {
                    throw fail(.loneSurrogate, at: at)
                }
                if iJSON, Self.isNoncharacter(scalar) { throw fail(.noncharacter, at: at) }
            default:
                throw fail(.invalidEscape)
            }
        }

        func hex4(at offset: Int) throws(JSONError) -> UInt32 {
            var value: UInt32 = 0
            for k in offset..<offset + 4 {
                guard k < n else { throw fail(.truncated, at: k) }
                guard let digit = hexValue(p[k]) else { throw fail(.invalidEscape, at: k) }
                value = value << 4 | digit
            }
            return value
        }

        // MARK: Numbers

        /// RFC 8259 §6: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`. I-JSON: integers within
        /// ±(2^53 − 1) and other numbers finite as doubles; TUF: integers within `Int64`.
        mutating func number() throws(JSONError) {
            let start = i
            var negative = false
            if p[i] == UInt8(ascii: "-") {
                negative = true
                i += 1
            }
            guard i < n else { throw fail(.truncated) }
            var magnitude: UInt64 = 0
            var overflow = false
            var integerDigits = 0
            if p[i] == UInt8(ascii: "0") {
                i += 1
                if i < n, isDigit(p[i]) { throw fail(.unexpectedByte) }  // leading zeros
            } else {
                guard isDigit(p[i]) else { throw fail(.unexpectedByte) }
                // Nineteen digits cannot overflow 64 bits; beyond them every step checks.
                while i < n, isDigit(p[i]) {
                    let digit = UInt64(p[i] &- 0x30)
                    if integerDigits < 19 {
                        magnitude = magnitude &* 10 &+ digit
                    } else {
                        let (times, o1) = magnitude.multipliedReportingOverflow(by: 10)
                        let (plus, o2) = times.addingReportingOverflow(digit)
                        magnitude = plus
                        overflow = overflow || o1 || o2
                    }
                    integerDigits += 1
                    i += 1
                }
            }
            var integer = true
            if i < n, p[i] == UInt8(ascii: ".") {
                integer = false
                i += 1
                try digits()
            }
            var exponent = 0
            if i < n, p[i] == UInt8(ascii: "e") || p[i] == UInt8(ascii: "E") {
                integer = false
                i += 1
                var negativeExponent = false
                if i < n, p[i] == UInt8(ascii: "+") || p[i] == UInt8(ascii: "-") {
                    negativeExponent = p[i] == UInt8(ascii: "-")
                    i += 1
                }
                let first = i
                try digits()
                for k in first..<i where exponent < 100_000 { exponent = exponent * 10 + Int(p[k] &- 0x30) }
                if negativeExponent { exponent = -exponent }
            }
            guard i - start <= options.maxNumberLength else { throw fail(.numberOutOfRange, at: start) }
            if integer {
                let limit: UInt64 =
                    iJSON ? 9_007_199_254_740_991 : (negative ? UInt64(Int64.max) + 1 : UInt64(Int64.max))
                guard !overflow, magnitude <= limit else { throw fail(.numberOutOfRange, at: start) }
            } else if iJSON {
                // Finite as a double: below 10^308 whatever the digits; only a literal near the edge is converted.
                if integerDigits + exponent > 308 {
                    let text = String(decoding: UnsafeBufferPointer(start: p + start, count: i - start), as: UTF8.self)
                    guard let value = Double(text), value.isFinite else { throw fail(.numberOutOfRange, at: start) }
                }
            }
            leaf(.number, flag: integer, start: start, end: i)
        }

        mutating func digits() throws(JSONError) {
            let first = i
            while i < n, isDigit(p[i]) { i += 1 }
            guard i > first else { throw i < n ? fail(.unexpectedByte) : fail(.truncated) }
        }

        // MARK: Duplicate names

        /// RFC 7493 §2.3: member names are unique, compared by their unescaped bytes. Small objects compare each
        /// pair (no allocation); large ones go through a hash table of their names.
        mutating func checkDuplicates(object at: Int, count: Int) throws(JSONError) {
            if count <= 16 {
                // A 64-bit Bloom filter of the names' fingerprints: a name is compared with the earlier ones only
                // when its bit is already set, or when a name with an escape (no fingerprint) is in play.
                var bloom: UInt64 = 0
                var escapes = false
                var key = at + 1
                for _ in 0..<count {
                    let print = fingerprint(key)
                    let bit: UInt64 = print == 0 ? 0 : 1 << ((print &* 0x9E37_79B9_7F4A_7C15) >> 58)
                    if print == 0 || escapes || bloom & bit != 0 {
                        var earlier = at + 1
                        while earlier != key {
                            let other = fingerprint(earlier)
                            if print == 0 || other == 0 || print == other, sameName(key, earlier) {
                                throw fail(.duplicateKey, at: Int(tape[key].start) - 1)
                            }
                            earlier = Int(tape[earlier + 1].next)
                        }
                    }
                    if print == 0 { escapes = true }
                    bloom |= bit
                    key = Int(tape[key + 1].next)
                }
                return
            }
            // Open addressing at most half full, keyed by SipHash with the process's random seed (Hasher), so
            // names chosen to collide cannot make this quadratic.
            var size = 32
            while size < count * 2 { size <<= 1 }
            var slots = [UInt32](repeating: 0, count: size)
            let mask = size - 1
            var key = at + 1
            for _ in 0..<count {
                var slot = nameHash(key) & mask
                while slots[slot] != 0 {
                    let other = Int(slots[slot] - 1)
                    if sameName(key, other) { throw fail(.duplicateKey, at: Int(tape[key].start) - 1) }
                    slot = (slot + 1) & mask
                }
                slots[slot] = UInt32(key + 1)
                key = Int(tape[key + 1].next)
            }
        }

        func sameName(_ a: Int, _ b: Int) -> Bool {
            let x = tape[a]
            let y = tape[b]
            let rx = UnsafeBufferPointer(start: p + Int(x.start), count: Int(x.end - x.start))
            let ry = UnsafeBufferPointer(start: p + Int(y.start), count: Int(y.end - y.start))
            if !x.flag, !y.flag { return rx.count == ry.count && memEqual(rx, ry) }
            var left = Unescaper(rx)
            var right = Unescaper(ry)
            while true {
                let l = left.next()
                let r = right.next()
                if l != r { return false }
                if l == nil { return true }
            }
        }

        /// 0 for a name with an escape (compared in full); otherwise never 0.
        @inline(__always) func fingerprint(_ key: Int) -> UInt64 {
            let node = tape[key]
            guard !node.flag else { return 0 }
            let start = Int(node.start)
            let length = Int(node.end) - start
            guard length > 0 else { return 1 }
            return UInt64(length) << 32 | UInt64(p[start]) << 24 | UInt64(p[start + length / 2]) << 16
                | UInt64(p[start + length - 1]) << 8 | 1
        }

        func nameHash(_ key: Int) -> Int {
            let node = tape[key]
            let raw = UnsafeBufferPointer(start: p + Int(node.start), count: Int(node.end - node.start))
            var hasher = Hasher()
            if node.flag {
                var decoded: [UInt8] = []
                var bytes = Unescaper(raw)
                while let byte = bytes.next() { decoded.append(byte) }
                decoded.withUnsafeBytes { hasher.combine(bytes: $0) }
            } else {
                hasher.combine(bytes: UnsafeRawBufferPointer(raw))
            }
            return hasher.finalize()
        }
    }
}

@inline(__always) func isDigit(_ byte: UInt8) -> Bool { byte &- 0x30 < 10 }

@inline(__always) func hexValue(_ byte: UInt8) -> UInt32? {
    switch byte {
    case 0x30...0x39: UInt32(byte - 0x30)
    case 0x41...0x46: UInt32(byte - 0x41 + 10)
    case 0x61...0x66: UInt32(byte - 0x61 + 10)
    default: nil
    }
}

@inline(__always) func memEqual(_ a: UnsafeBufferPointer<UInt8>, _ b: UnsafeBufferPointer<UInt8>) -> Bool {
    guard a.count == b.count else { return false }
    guard let x = a.baseAddress, let y = b.baseAddress, a.count > 0 else { return true }
    return memcmp(x, y, a.count) == 0
}

/// The unescaped UTF-8 bytes of a string the parser validated (its raw bytes between the quotes), one at a time.
struct Unescaper: IteratorProtocol {
    let raw: UnsafeBufferPointer<UInt8>
    var index = 0
    /// Bytes of a decoded escape still to hand out (UTF-8 of one scalar, at most 4).
    var pending: (UInt8, UInt8, UInt8, UInt8) = (0, 0, 0, 0)
    var pendingCount = 0
    var pendingIndex = 0

    init(_ raw: UnsafeBufferPointer<UInt8>) { self.raw = raw }

    mutating func next() -> UInt8? {
        if pendingIndex < pendingCount {
            defer { pendingIndex += 1 }
            switch pendingIndex {
            case 0: return pending.0
            case 1: return pending.1
            case 2: return pending.2
            default: return pending.3
            }
        }
        guard index < raw.count else { return nil }
        let byte = raw[index]
        guard byte == backslash else {
            index += 1
            return byte
        }
        let kind = raw[index + 1]
        index += 2
        switch kind {
        case UInt8(ascii: "b"): return 0x08
        case UInt8(ascii: "f"): return 0x0C
        case UInt8(ascii: "n"): return 0x0A
        case UInt8(ascii: "r"): return 0x0D
        case UInt8(ascii: "t"): return 0x09
        case UInt8(ascii: "u"): break
        default: return kind  // " \ /
        }
        var scalar = hex(at: index)
        index += 4
        if (0xD800...0xDBFF).contains(scalar) {
            let low = hex(at: index + 2)
            index += 6
            scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
        }
        // UTF-8 of the scalar (the parser checked it is one).
        switch scalar {
        case 0..<0x80:
            return UInt8(scalar)
        case 0x80..<0x800:
            pending = (UInt8(0x80 | scalar & 0x3F), 0, 0, 0)
            pendingCount = 1
            pendingIndex = 0
            return UInt8(0xC0 | scalar >> 6)
        case 0x800..<0x10000:
            pending = (UInt8(0x80 | (scalar >> 6) & 0x3F), UInt8(0x80 | scalar & 0x3F), 0, 0)
            pendingCount = 2
            pendingIndex = 0
            return UInt8(0xE0 | scalar >> 12)
        default:
            pending = (
                UInt8(0x80 | (scalar >> 12) & 0x3F), UInt8(0x80 | (scalar >> 6) & 0x3F), UInt8(0x80 | scalar & 0x3F), 0
            )
            pendingCount = 3
            pendingIndex = 0
            return UInt8(0xF0 | scalar >> 18)
        }
    }

    func hex(at offset: Int) -> UInt32 {
        var value: UInt32 = 0
        for k in offset..<offset + 4 { value = value << 4 | (hexValue(raw[k]) ?? 0) }
        return value
    }
}
