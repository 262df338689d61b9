/// A JSON value that keeps what canonical JSON needs: the order-independent object members,
/// integers apart from non-integers, and strings exactly as their Unicode scalars.
///
/// Objects are stored as member lists (not `Dictionary<String, _>`), because Swift's `String`
/// equality uses canonical equivalence while JSON and securesystemslib compare code points.
public indirect enum JSONValue: Sendable, Equatable {
    case null
    case bool(Bool)
    /// An integer literal (no fraction, no exponent).
    case integer(Int64)
    /// A non-integer number, kept as its literal text. Canonical JSON refuses these.
    case float(String)
    case string(String)
    case array([JSONValue])
    case object(JSONObject)

    public var objectValue: JSONObject? {
        if case .object(let o) = self { return o }
        return nil
    }

    public var stringValue: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    public var integerValue: Int64? {
        if case .integer(let i) = self { return i }
        return nil
    }

    public var boolValue: Bool? {
        if case .bool(let b) = self { return b }
        return nil
    }

    public var arrayValue: [JSONValue]? {
        if case .array(let a) = self { return a }
        return nil
    }

    /// A number's value as a double (integers exactly up to 2^53), or nil for anything else.
    public var doubleValue: Double? {
        switch self {
        case .integer(let i): Double(i)
        case .float(let literal):
            Array(literal.utf8).withUnsafeBufferPointer { fastDouble($0) } ?? Double(literal)
        default: nil
        }
    }

    /// The JSON Schema type name (draft 2020-12 §4.2.1).
    public var typeName: String {
        switch self {
        case .null: "null"
        case .bool: "boolean"
        case .integer, .float: "number"
        case .string: "string"
        case .array: "array"
        case .object: "object"
        }
    }
}

/// A JSON object: members in document order, keys unique by Unicode scalar values.
///
/// Small objects (most are) are searched member by member, comparing UTF-8 bytes; past `indexedFrom` members an
/// index by UTF-8 bytes keeps lookups and duplicate detection O(1), so a large `targets` or `meta` object cannot make
/// building quadratic.
public struct JSONObject: Sendable, Equatable {
    public private(set) var members: [(key: String, value: JSONValue)]
    /// Boxed: a `[[UInt8]: Int]?` stored inline makes every copy and destruction of an object (most never index)
    /// ask for that dictionary's type metadata, whose `[UInt8]: Hashable` requirement costs a scan of the runtime's
    /// conformance records on first use.
    private var index: ByteIndex?

    private final class ByteIndex: @unchecked Sendable {
        var table: [[UInt8]: Int]
        init(_ table: [[UInt8]: Int]) { self.table = table }
    }

    static let indexedFrom = 16

    public init() {
        self.members = []
        self.index = nil
    }

    /// Builds an object; throws when two keys have the same scalar values.
    public init(members: [(key: String, value: JSONValue)]) throws(JSONError) {
        self.init()
        for m in members { try self.append(m.key, m.value) }
    }

    public var count: Int { members.count }
    public var keys: [String] { members.map(\.key) }

    public subscript(key: String) -> JSONValue? {
        position(of: key).map { members[$0].value }
    }

    /// Where the member named `key` (by UTF-8 bytes) is.
    private func position(of key: String) -> Int? {
        if let index { return index.table[Array(key.utf8)] }
        return members.firstIndex { $0.key.utf8.elementsEqual(key.utf8) }
    }

    private mutating func add(_ key: String, _ value: JSONValue) {
        members.append((key, value))
        if index != nil {
            // Copy on write: the box may be another copy's too.
            if !isKnownUniquelyReferenced(&index!) { index = ByteIndex(index!.table) }
            index!.table[Array(key.utf8)] = members.count - 1
        } else if members.count > Self.indexedFrom {
            var built: [[UInt8]: Int] = [:]
            built.reserveCapacity(members.count * 2)
            for (i, m) in members.enumerated() { built[Array(m.key.utf8)] = i }
            index = ByteIndex(built)
        }
    }

    /// Appends a member; duplicate keys are refused (RFC 8259 §4 leaves them undefined,
    /// and an attacker could otherwise make two parsers disagree on signed content).
    public mutating func append(_ key: String, _ value: JSONValue) throws(JSONError) {
        guard position(of: key) == nil else { throw JSONError(kind: .duplicateKey, offset: 0) }
        add(key, value)
    }

    /// Sets or replaces a member.
    public mutating func set(_ key: String, _ value: JSONValue) {
        if let i = position(of: key) {
            members[i].value = value
        } else {
            add(key, value)
        }
    }

    /// Members whose keys are not in `known`, in document order (round-trip of unknown fields).
    public func removing(_ known: [String]) -> JSONObject {
        var o = JSONObject()
        for m in members where !known.contains(where: { $0.utf8.elementsEqual(m.key.utf8) }) { o.set(m.key, m.value) }
        return o
    }

    public static func == (lhs: JSONObject, rhs: JSONObject) -> Bool {
        guard lhs.members.count == rhs.members.count else { return false }
        for m in lhs.members {
            guard let v = rhs[m.key], v == m.value else { return false }
        }
        return true
    }
}

extension JSONValue {
    /// RFC 8259 text in document order (not canonical: floats as written, control characters escaped), which the
    /// parser reads back to an equal value. Never longer than the text the value was parsed from (escapes are the
    /// shortest ones), so no limit of the parser trips on it.
    ///
    /// `sortingKeys` orders members as canonical JSON does (by their UTF-8 bytes), for files people diff.
    public func serialized(sortingKeys: Bool = false) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(1024)
        write(into: &out, sortingKeys: sortingKeys)
        return out
    }

    /// Whether a float is anywhere in the value (canonical JSON refuses them).
    public var containsFloat: Bool {
        switch self {
        case .float: true
        case .array(let a): a.contains { $0.containsFloat }
        case .object(let o): o.members.contains { $0.value.containsFloat }
        default: false
        }
    }

    private func write(into out: inout [UInt8], sortingKeys: Bool) {
        switch self {
        case .null: out.append(contentsOf: "null".utf8)
        case .bool(let b): out.append(contentsOf: (b ? "true" : "false").utf8)
        case .integer(let i): out.append(contentsOf: String(i).utf8)
        case .float(let literal): out.append(contentsOf: literal.utf8)
        case .string(let s): Self.writeString(s, into: &out)
        case .array(let a):
            out.append(UInt8(ascii: "["))
            for (i, v) in a.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                v.write(into: &out, sortingKeys: sortingKeys)
            }
            out.append(UInt8(ascii: "]"))
        case .object(let o):
            out.append(UInt8(ascii: "{"))
            let members = sortingKeys ? o.members.sorted { CanonicalJSON.scalarOrder($0.key, $1.key) } : o.members
            for (i, m) in members.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                Self.writeString(m.key, into: &out)
                out.append(UInt8(ascii: ":"))
                m.value.write(into: &out, sortingKeys: sortingKeys)
            }
            out.append(UInt8(ascii: "}"))
        }
    }

    private static func writeString(_ s: String, into out: inout [UInt8]) {
        let hex = Array("0123456789abcdef".utf8)
        out.append(UInt8(ascii: "\""))
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"):
                out.append(UInt8(ascii: "\\"))
                out.append(b)
            case 0x08: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "b")])
            case 0x09: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "t")])
            case 0x0A: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "n")])
            case 0x0C: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "f")])
            case 0x0D: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "r")])
            case 0..<0x20:
                out.append(contentsOf: [
                    UInt8(ascii: "\\"), UInt8(ascii: "u"), 0x30, 0x30, hex[Int(b >> 4)], hex[Int(b & 15)],
                ])
            default: out.append(b)
            }
        }
        out.append(UInt8(ascii: "\""))
    }
}
