import JSON

/// A value of a parsed metadata document, read where it lies: the role types decode their fields from these, so
/// nothing but the fields themselves is built (no `JSONValue` tree for a 100,000-target file).
struct Node {
    let document: JSONDocument
    let element: JSONElement

    var stringValue: String? { document.string(element) }
    var integerValue: Int64? { document.int64(element) }
    var boolValue: Bool? { document.bool(element) }
    var objectValue: ObjectNode? {
        document.kind(element) == .object ? ObjectNode(document: document, element: element) : nil
    }
    var arrayValue: [Node]? {
        document.kind(element) == .array
            ? document.elements(element).map { Node(document: document, element: $0) } : nil
    }
}

/// An object of a parsed metadata document, with typed field access that throws `invalidMetadata` naming the field.
struct ObjectNode {
    let document: JSONDocument
    let element: JSONElement

    /// Parses bytes the caller already holds as a value (the repository side builds `JSONObject`s): serialized and
    /// read back with the TUF profile, so one decoder serves both.
    init(_ object: JSONObject) throws(TUFError) {
        let bytes = Array(JSONValue.object(object).serialized(sortingKeys: false))
        do { document = try StrictJSON.tuf.parse(bytes) } catch { throw TUFError(error) }
        element = document.root
    }

    init(document: JSONDocument, element: JSONElement) {
        self.document = document
        self.element = element
    }

    var count: Int { document.count(element) }

    subscript(key: String) -> Node? {
        document.member(key, of: element).map { Node(document: document, element: $0) }
    }

    /// Members in document order, names decoded.
    var members: [(key: String, value: Node)] {
        var out: [(key: String, value: Node)] = []
        out.reserveCapacity(count)
        for (name, value) in document.members(element) {
            out.append((document.string(name) ?? "", Node(document: document, element: value)))
        }
        return out
    }

    /// The whole object built as a value.
    var built: JSONObject { removing([]) }

    var keys: [String] { document.members(element).map { document.string($0.key) ?? "" } }

    /// The members whose names are not in `known`, built as values (kept for round trips); empty, with nothing
    /// allocated, when every member is known.
    func removing(_ known: [String]) -> JSONObject { removing(JSONNames(known)) }

    func removing(_ known: JSONNames) -> JSONObject {
        var out = JSONObject()
        document.forEachMember(of: element, matching: known) { position, name, value in
            if position == nil { out.set(document.string(name) ?? "", document.value(value)) }
        }
        return out
    }

    func required(_ key: String) throws(TUFError) -> Node {
        guard let v = self[key] else { throw TUFError(.invalidMetadata, "missing field '\(key)'") }
        return v
    }

    func string(_ key: String) throws(TUFError) -> String {
        guard let s = try required(key).stringValue else {
            throw TUFError(.invalidMetadata, "'\(key)' must be a string")
        }
        return s
    }

    func integer(_ key: String) throws(TUFError) -> Int64 {
        guard let i = try required(key).integerValue else {
            throw TUFError(.invalidMetadata, "'\(key)' must be an integer")
        }
        return i
    }

    func bool(_ key: String) throws(TUFError) -> Bool {
        guard let b = try required(key).boolValue else {
            throw TUFError(.invalidMetadata, "'\(key)' must be a boolean")
        }
        return b
    }

    func object(_ key: String) throws(TUFError) -> ObjectNode {
        guard let o = try required(key).objectValue else {
            throw TUFError(.invalidMetadata, "'\(key)' must be an object")
        }
        return o
    }

    func array(_ key: String) throws(TUFError) -> [Node] {
        guard let a = try required(key).arrayValue else {
            throw TUFError(.invalidMetadata, "'\(key)' must be an array")
        }
        return a
    }

    func stringArray(_ key: String) throws(TUFError) -> [String] {
        var out: [String] = []
        for v in try array(key) {
            guard let s = v.stringValue else { throw TUFError(.invalidMetadata, "'\(key)' must hold strings") }
            out.append(s)
        }
        return out
    }

    /// Parses a `HASHES` object (TUF §4.4): algorithm name to lowercase hex digest.
    func hashes(_ key: String) throws(TUFError) -> [(algorithm: String, digest: String)] {
        try Self.hashes(document, try required(key).element, key)
    }

    static func hashes(
        _ document: JSONDocument, _ element: JSONElement, _ key: String
    ) throws(TUFError) -> [(algorithm: String, digest: String)] {
        guard document.kind(element) == .object else { throw TUFError(.invalidMetadata, "'\(key)' must be an object") }
        guard document.count(element) > 0 else { throw TUFError(.invalidMetadata, "'\(key)' must not be empty") }
        var out: [(String, String)] = []
        out.reserveCapacity(document.count(element))
        for (name, value) in document.members(element) {
            guard let s = document.string(value) else {
                throw TUFError(.invalidMetadata, "hash values must be strings")
            }
            out.append((document.string(name) ?? "", s))
        }
        return out
    }
}

func hashesJSON(_ hashes: [(algorithm: String, digest: String)]) -> JSONValue {
    var o = JSONObject()
    for h in hashes { o.set(h.algorithm, .string(h.digest)) }
    return .object(o)
}

func merged(_ known: [(String, JSONValue?)], _ unrecognized: JSONObject) -> JSONValue {
    var o = JSONObject()
    for (k, v) in known { if let v { o.set(k, v) } }
    for m in unrecognized.members { o.set(m.key, m.value) }
    return .object(o)
}

/// Decodes lowercase or uppercase hex; `nil` on odd length or a non-hex character.
public func hexDecode(_ s: String) -> [UInt8]? {
    let u = Array(s.utf8)
    guard u.count % 2 == 0 else { return nil }
    var out: [UInt8] = []
    out.reserveCapacity(u.count / 2)
    func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case 0x30...0x39: return c - 0x30
        case 0x61...0x66: return c - 0x61 + 10
        case 0x41...0x46: return c - 0x41 + 10
        default: return nil
        }
    }
    var i = 0
    while i < u.count {
        guard let h = nibble(u[i]), let l = nibble(u[i + 1]) else { return nil }
        out.append(h << 4 | l)
        i += 2
    }
    return out
}

public func hexEncode(_ bytes: some Sequence<UInt8>) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var out: [UInt8] = []
    for b in bytes {
        out.append(digits[Int(b >> 4)])
        out.append(digits[Int(b & 0x0F)])
    }
    return String(decoding: out, as: UTF8.self)
}
