import JSON
public import TUF

/// A problem in an SBOM, a VEX document or an OSV record, located by its JSON pointer (RFC 6901), so the author can
/// find it: `/components/3/purl: not a package URL (no "pkg:" scheme)`.
public struct DocumentError: Error, Sendable, Equatable, CustomStringConvertible {
    /// RFC 6901 pointer to the offending value ("" is the whole document).
    public let pointer: String
    public let message: String

    public init(_ pointer: String, _ message: String) {
        self.pointer = pointer
        self.message = message
    }

    public var description: String { "\(pointer.isEmpty ? "/" : pointer): \(message)" }
}

/// One JSON value and where it sits in its document: typed accessors that fail with the value's pointer.
struct Node {
    let value: JSONValue
    let pointer: String

    /// Parses a whole document (the parser's strict rules: no duplicate keys, no trailing data, bounded depth).
    static func document(_ bytes: [UInt8]) throws(DocumentError) -> Node {
        do {
            return Node(value: try TUFJSON.parse(bytes), pointer: "")
        } catch {
            throw DocumentError("", "not JSON: \(error.reason)")
        }
    }

    func fail(_ message: String) -> DocumentError { DocumentError(pointer, message) }

    func object() throws(DocumentError) -> JSONObject {
        guard let object = value.objectValue else { throw fail("must be an object") }
        return object
    }

    func string() throws(DocumentError) -> String {
        guard let string = value.stringValue else { throw fail("must be a string") }
        return string
    }

    func array() throws(DocumentError) -> [Node] {
        guard let array = value.arrayValue else { throw fail("must be an array") }
        return array.enumerated().map { Node(value: $0.element, pointer: pointer + "/\($0.offset)") }
    }

    /// The member `key`, or nil when absent (`null` counts as absent only where `nullIsAbsent`).
    func member(_ key: String) throws(DocumentError) -> Node? {
        guard let value = try object()[key] else { return nil }
        return Node(value: value, pointer: pointer + "/" + Self.escape(key))
    }

    func required(_ key: String) throws(DocumentError) -> Node {
        guard let node = try member(key) else {
            throw DocumentError(pointer + "/" + Self.escape(key), "is required")
        }
        return node
    }

    func requiredString(_ key: String) throws(DocumentError) -> String {
        let node = try required(key)
        let text = try node.string()
        guard !text.isEmpty else { throw node.fail("must not be empty") }
        return text
    }

    func optionalString(_ key: String) throws(DocumentError) -> String? {
        try member(key).map { node throws(DocumentError) in try node.string() }
    }

    func optionalArray(_ key: String) throws(DocumentError) -> [Node] {
        try member(key).map { node throws(DocumentError) in try node.array() } ?? []
    }

    /// RFC 6901 §3: `~` is written `~0` and `/` is written `~1`.
    static func escape(_ key: String) -> String {
        var out = ""
        for character in key.unicodeScalars {
            switch character {
            case "~": out += "~0"
            case "/": out += "~1"
            default: out.unicodeScalars.append(character)
            }
        }
        return out
    }
}
