import JSON

/// The envelope's fields (a generic type holds no stored static).
let metadataEnvelopeFields = JSONNames(["signed", "signatures"])

/// TUF §4.2: the envelope `{"signed": ..., "signatures": [...]}`.
///
/// Keeps the exact bytes received (`raw`, so storage is byte for byte) next to the canonical
/// bytes that signatures cover (`signedBytes`). A `Metadata` value is *unverified*: only
/// `TrustedMetadataSet` hands out `Verified` values.
///
/// `Role` is a `SignedRole`, but the type does not say so: a generic type with a protocol requirement makes the Swift
/// runtime look that conformance up when it first builds the type's metadata, and the first look-up of each pair scans
/// every protocol conformance record in the process (4,000 in bulwark-tuf-client; four roles, four scans in every
/// refresh). The functions that use the role (`parse`, `jsonValue`) carry the requirement instead.
public struct Metadata<Role> {
    public let signed: Role
    public let signatures: [Signature]
    /// Canonical JSON of `signed` (TUF §4.2); what every signature is computed over.
    public let signedBytes: [UInt8]
    /// The bytes exactly as received.
    public let raw: [UInt8]
    public let unrecognized: JSONObject

}

extension Metadata: Sendable where Role: Sendable {}

extension Metadata where Role: SignedRole {
    /// Decodes metadata of role type `Role`; checks `_type` (TUF §4.3–§4.6),
    /// refuses duplicate signature keyids (TUF §4.2: "the keyid MUST be unique"),
    /// and refuses content that cannot be canonicalized.
    ///
    /// One parse, read in place: the canonical bytes of `signed` are written from the parsed document (not from a
    /// rebuilt value), and the role's fields are decoded from it.
    public static func parse(_ bytes: some Collection<UInt8>) throws(TUFError) -> Metadata<Role> {
        let raw = Array(bytes)
        let document: JSONDocument
        do { document = try StrictJSON.tuf.parse(raw) } catch { throw TUFError(error) }
        guard document.isObject else { throw TUFError(.invalidMetadata, "metadata must be a JSON object") }
        let top = ObjectNode(document: document, element: document.root)
        let signedObject = try top.object("signed")
        let signedBytes: [UInt8]
        do { signedBytes = try CanonicalJSON.encode(document, signedObject.element) } catch { throw TUFError(error) }
        let type = try signedObject.string("_type")
        guard type == Role.type else { throw TUFError(.wrongType, "expected _type '\(Role.type)', got another type") }
        var signatures: [Signature] = []
        for v in try top.array("signatures") {
            guard let o = v.objectValue else { throw TUFError(.invalidMetadata, "signature must be an object") }
            signatures.append(try Signature(json: o))
        }
        guard !hasDuplicates(signatures.map(\.keyid)) else {
            throw TUFError(.invalidMetadata, "duplicate keyid in signatures")
        }
        let role = try Role(document: document, element: signedObject.element)
        return Metadata(
            signed: role,
            signatures: signatures,
            signedBytes: signedBytes,
            raw: raw,
            unrecognized: top.removing(metadataEnvelopeFields)
        )
    }

    /// Re-encodes the envelope; unknown fields are kept (round trip).
    public var jsonValue: JSONValue {
        merged([("signed", signed.jsonValue), ("signatures", .array(signatures.map(\.jsonValue)))], unrecognized)
    }
}

/// TUF §4.2 signature entry.
public struct Signature: Sendable, Equatable {
    public let keyid: String
    /// Hex-encoded signature (TUF §4.2 "sig").
    public let sig: String
    public let unrecognized: JSONObject

    /// A signature entry built by a signer (repository side).
    public init(keyid: String, sig: String) {
        self.keyid = keyid
        self.sig = sig
        self.unrecognized = JSONObject()
    }

    init(json: ObjectNode) throws(TUFError) {
        keyid = try json.string("keyid")
        sig = try json.string("sig")
        unrecognized = json.removing(Self.fields)
    }

    static let fields = JSONNames(["keyid", "sig"])

    public var jsonValue: JSONValue { merged([("keyid", .string(keyid)), ("sig", .string(sig))], unrecognized) }
}

/// Common interface of the four role types' `signed` portion.
public protocol SignedRole: Sendable {
    static var type: String { get }
    var common: SignedCommon { get }
    /// Decodes the `signed` portion at `element` of a parsed document.
    init(document: JSONDocument, element: JSONElement) throws(TUFError)
    var jsonValue: JSONValue { get }
}

/// Fields every role has (TUF §4.3 and §4.4): `_type`, `spec_version`, `version`, `expires`.
public struct SignedCommon: Sendable, Equatable {
    public let type: String
    public let specVersion: String
    public let version: Int64
    public let expires: Timestamp8601
    let expiresText: String

    static let keys = ["_type", "spec_version", "version", "expires"]

    init(json: ObjectNode) throws(TUFError) {
        type = try json.string("_type")
        specVersion = try json.string("spec_version")
        let parts = specVersion.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 2 || parts.count == 3,
            parts.allSatisfy({ !$0.isEmpty && $0.allSatisfy { $0.isASCII && $0.isNumber } })
        else { throw TUFError(.invalidMetadata, "malformed spec_version") }
        // TUF §4.3: clients check the major version they support.
        guard parts[0] == "1" else { throw TUFError(.invalidMetadata, "unsupported spec_version major") }
        version = try json.integer("version")
        guard version > 0 else { throw TUFError(.invalidMetadata, "version must be positive") }
        expiresText = try json.string("expires")
        expires = try Timestamp8601(parsing: expiresText)
    }

    var fields: [(String, JSONValue?)] {
        [
            ("_type", .string(type)), ("spec_version", .string(specVersion)), ("version", .integer(version)),
            ("expires", .string(expiresText)),
        ]
    }

    /// TUF §5.3.10 and siblings: metadata is expired when the reference time is at or past `expires`.
    public func isExpired(at referenceTime: Timestamp8601) -> Bool { referenceTime >= expires }
}

/// TUF §4.3 KEY object. Unknown fields (e.g. the deprecated `keyid_hash_algorithms`) are kept.
public struct Key: Sendable, Equatable {
    public let keytype: String
    public let scheme: String
    public let keyval: JSONObject
    public let unrecognized: JSONObject

    public init(json: JSONObject) throws(TUFError) { try self.init(json: ObjectNode(json)) }

    init(json: ObjectNode) throws(TUFError) {
        keytype = try json.string("keytype")
        scheme = try json.string("scheme")
        keyval = try json.object("keyval").built
        unrecognized = json.removing(Self.fields)
    }

    static let fields = JSONNames(["keytype", "scheme", "keyval"])

    /// The `public` member of `keyval`, if it is a string.
    public var publicValue: String? { keyval["public"]?.stringValue }

    public var jsonValue: JSONValue {
        merged([("keytype", .string(keytype)), ("scheme", .string(scheme)), ("keyval", .object(keyval))], unrecognized)
    }
}

/// TUF §4.3 ROLE: the keys trusted for a role and how many must sign.
public struct RoleKeys: Sendable, Equatable {
    public let keyids: [String]
    public let threshold: Int64
    public let unrecognized: JSONObject

    init(json: ObjectNode) throws(TUFError) {
        try self.init(keysOf: json, unrecognized: json.removing(Self.fields))
    }

    static let fields = JSONNames(["keyids", "threshold"])

    /// Only `keyids` and `threshold`, from an object that also holds other fields (a delegated role).
    init(keysOf json: ObjectNode, unrecognized: JSONObject = JSONObject()) throws(TUFError) {
        let keyids = try json.stringArray("keyids")
        self.keyids = keyids
        threshold = try json.integer("threshold")
        guard threshold >= 1 else { throw TUFError(.invalidMetadata, "threshold must be at least 1") }
        // A keyid listed twice could otherwise be counted twice toward the threshold.
        guard !hasDuplicates(keyids) else { throw TUFError(.invalidMetadata, "duplicate keyids in role") }
        self.unrecognized = unrecognized
    }

    var fields: [(String, JSONValue?)] {
        [("keyids", .array(keyids.map { .string($0) })), ("threshold", .integer(threshold))]
    }

    public var jsonValue: JSONValue { merged(fields, unrecognized) }
}

/// Whether a list repeats an item, as `String`s compare (canonical equivalence): a short list is searched, a longer
/// one hashed. Keyids in a role and in a signature list must be unique (TUF §4.2, §4.3).
func hasDuplicates(_ items: [String]) -> Bool {
    items.count < 8 ? items.indices.contains { i in items[..<i].contains(items[i]) } : Set(items).count != items.count
}

func parseKeys(_ o: ObjectNode) throws(TUFError) -> [String: Key] {
    var keys: [String: Key] = [:]
    for m in o.members {
        guard let ko = m.value.objectValue else { throw TUFError(.invalidMetadata, "key must be an object") }
        // Swift `String` keys compare by canonical equivalence; refuse keyids that would collide.
        guard keys[m.key] == nil else { throw TUFError(.invalidMetadata, "keyids collide under Unicode equivalence") }
        keys[m.key] = try Key(json: ko)
    }
    return keys
}

func keysJSON(_ keys: [String: Key], order: [String]) -> JSONValue {
    var o = JSONObject()
    for k in order { if let key = keys[k] { o.set(k, key.jsonValue) } }
    return .object(o)
}
