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
}

/// A JSON object: members in document order, keys unique by Unicode scalar values.
///
/// An index by UTF-8 bytes keeps lookups and duplicate detection O(1), so a large `targets`
/// or `meta` object cannot make parsing quadratic.
public struct JSONObject: Sendable, Equatable {
    public private(set) var members: [(key: String, value: JSONValue)]
    private var index: [[UInt8]: Int]

    public init() {
        self.members = []
        self.index = [:]
    }

    /// Builds an object; throws when two keys have the same scalar values.
    public init(members: [(key: String, value: JSONValue)]) throws(TUFError) {
        self.init()
        for m in members { try self.append(m.key, m.value) }
    }

    public var count: Int { members.count }
    public var keys: [String] { members.map(\.key) }

    public subscript(key: String) -> JSONValue? {
        guard let i = index[Array(key.utf8)] else { return nil }
        return members[i].value
    }

    /// Appends a member; duplicate keys are refused (RFC 8259 §4 leaves them undefined,
    /// and an attacker could otherwise make two parsers disagree on signed content).
    public mutating func append(_ key: String, _ value: JSONValue) throws(TUFError) {
        let k = Array(key.utf8)
        guard index[k] == nil else { throw TUFError(.malformedJSON, "duplicate object key") }
        index[k] = members.count
        members.append((key, value))
    }

    /// Sets or replaces a member.
    public mutating func set(_ key: String, _ value: JSONValue) {
        let k = Array(key.utf8)
        if let i = index[k] {
            members[i].value = value
        } else {
            index[k] = members.count
            members.append((key, value))
        }
    }

    /// Members whose keys are not in `known`, in document order (round-trip of unknown fields).
    public func removing(_ known: [String]) -> JSONObject {
        let drop = Set(known.map { Array($0.utf8) })
        var o = JSONObject()
        for m in members where !drop.contains(Array(m.key.utf8)) { o.set(m.key, m.value) }
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
