import JSON

/// TUF §4.3 root metadata.
public struct Root: SignedRole, Equatable {
    public static let type = "root"
    public static let topLevelRoles = ["root", "timestamp", "snapshot", "targets"]
    public let common: SignedCommon
    public let consistentSnapshot: Bool
    public let keys: [String: Key]
    let keyOrder: [String]
    public let roles: [String: RoleKeys]
    let roleOrder: [String]
    public let unrecognized: JSONObject

    public init(json: JSONObject) throws(TUFError) { try self.init(json: ObjectNode(json)) }

    public init(document: JSONDocument, element: JSONElement) throws(TUFError) {
        try self.init(json: ObjectNode(document: document, element: element))
    }

    init(json: ObjectNode) throws(TUFError) {
        common = try SignedCommon(json: json)
        // TUF §4.3: consistent_snapshot is required; python-tuf tolerates its absence as false.
        consistentSnapshot = try json["consistent_snapshot"] == nil ? false : json.bool("consistent_snapshot")
        let keysObject = try json.object("keys")
        keys = try parseKeys(keysObject)
        keyOrder = keysObject.keys
        let rolesObject = try json.object("roles")
        var roles: [String: RoleKeys] = [:]
        for m in rolesObject.members {
            guard let ro = m.value.objectValue else { throw TUFError(.invalidMetadata, "role must be an object") }
            roles[m.key] = try RoleKeys(json: ro)
        }
        // TUF §4.3: root lists exactly the four top-level roles.
        guard Set(roles.keys) == Set(Root.topLevelRoles), rolesObject.count == 4 else {
            throw TUFError(.invalidMetadata, "root must define exactly the top-level roles")
        }
        self.roles = roles
        roleOrder = rolesObject.keys
        unrecognized = json.removing(SignedCommon.keys + ["consistent_snapshot", "keys", "roles"])
    }

    public var jsonValue: JSONValue {
        var rolesObject = JSONObject()
        for r in roleOrder { if let role = roles[r] { rolesObject.set(r, role.jsonValue) } }
        return merged(
            common.fields + [
                ("consistent_snapshot", .bool(consistentSnapshot)), ("keys", keysJSON(keys, order: keyOrder)),
                ("roles", .object(rolesObject)),
            ],
            unrecognized
        )
    }
}

/// TUF §4.4 METAFILES entry: `version`, optional `length` and `hashes`.
public struct MetaFile: Sendable, Equatable {
    public let version: Int64
    public let length: Int64?
    public let hashes: [(algorithm: String, digest: String)]?
    public let unrecognized: JSONObject

    static let fieldNames = JSONNames(["version", "length", "hashes"])

    init(json: ObjectNode) throws(TUFError) {
        version = try json.integer("version")
        guard version > 0 else { throw TUFError(.invalidMetadata, "meta version must be positive") }
        length = try json["length"] == nil ? nil : json.integer("length")
        if let length, length < 0 { throw TUFError(.invalidMetadata, "length must not be negative") }
        hashes = try json["hashes"] == nil ? nil : json.hashes("hashes")
        unrecognized = json.removing(Self.fieldNames)
    }

    public static func == (a: MetaFile, b: MetaFile) -> Bool {
        a.version == b.version && a.length == b.length && a.jsonValue == b.jsonValue
    }

    public var jsonValue: JSONValue {
        merged(
            [
                ("version", .integer(version)), ("length", length.map { .integer($0) }),
                ("hashes", hashes.map(hashesJSON)),
            ],
            unrecognized
        )
    }

    /// TUF §5.5.2 and §5.6.2: when length and hashes are listed, the bytes must match them.
    public func verifyLengthAndHashes(_ data: [UInt8]) throws(TUFError) {
        if let length, Int64(data.count) != length {
            throw TUFError(.lengthOrHashMismatch, "length does not match")
        }
        if let hashes { try Hashing.verify(data, hashes) }
    }
}

/// TUF §4.6 timestamp metadata.
public struct Timestamp: SignedRole, Equatable {
    public static let type = "timestamp"
    public let common: SignedCommon
    /// The `snapshot.json` entry of `meta` (TUF §4.6: the only entry).
    public let snapshotMeta: MetaFile
    public let unrecognized: JSONObject

    public init(json: JSONObject) throws(TUFError) { try self.init(json: ObjectNode(json)) }

    public init(document: JSONDocument, element: JSONElement) throws(TUFError) {
        try self.init(json: ObjectNode(document: document, element: element))
    }

    init(json: ObjectNode) throws(TUFError) {
        common = try SignedCommon(json: json)
        let meta = try json.object("meta")
        guard meta.count == 1, let s = meta["snapshot.json"]?.objectValue else {
            throw TUFError(.invalidMetadata, "timestamp meta must hold exactly snapshot.json")
        }
        snapshotMeta = try MetaFile(json: s)
        unrecognized = json.removing(SignedCommon.keys + ["meta"])
    }

    public var jsonValue: JSONValue {
        var meta = JSONObject()
        meta.set("snapshot.json", snapshotMeta.jsonValue)
        return merged(common.fields + [("meta", .object(meta))], unrecognized)
    }
}

/// TUF §4.5 snapshot metadata.
public struct Snapshot: SignedRole, Equatable {
    public static let type = "snapshot"
    public let common: SignedCommon
    public let meta: [String: MetaFile]
    let metaOrder: [String]
    public let unrecognized: JSONObject

    public init(json: JSONObject) throws(TUFError) { try self.init(json: ObjectNode(json)) }

    public init(document: JSONDocument, element: JSONElement) throws(TUFError) {
        try self.init(json: ObjectNode(document: document, element: element))
    }

    init(json: ObjectNode) throws(TUFError) {
        common = try SignedCommon(json: json)
        let metaObject = try json.object("meta")
        var meta: [String: MetaFile] = [:]
        meta.reserveCapacity(metaObject.count)
        for m in metaObject.members {
            guard let o = m.value.objectValue else { throw TUFError(.invalidMetadata, "meta entry must be an object") }
            guard meta.updateValue(try MetaFile(json: o), forKey: m.key) == nil else {
                throw TUFError(.invalidMetadata, "meta names collide under Unicode equivalence")
            }
        }
        self.meta = meta
        metaOrder = metaObject.keys
        unrecognized = json.removing(SignedCommon.keys + ["meta"])
    }

    public var jsonValue: JSONValue {
        var o = JSONObject()
        for k in metaOrder { if let m = meta[k] { o.set(k, m.jsonValue) } }
        return merged(common.fields + [("meta", .object(o))], unrecognized)
    }
}

/// TUF §4.5 TARGETS entry: the artifact's `length`, `hashes` and optional `custom`.
public struct TargetFile: Sendable, Equatable {
    public let path: String
    public let length: Int64
    public let hashes: [(algorithm: String, digest: String)]
    public let unrecognized: JSONObject

    static let fieldNames = JSONNames(["length", "hashes"])

    init(path: String, json: ObjectNode) throws(TUFError) {
        self.path = path
        let entry = try Self.check(json.document, json.element)
        length = entry.length
        hashes = try ObjectNode.hashes(json.document, entry.hashes, "hashes")
        unrecognized = entry.others ? json.removing(Self.fieldNames) : JSONObject()
    }

    /// Checks a TARGETS entry where it lies, building nothing: one pass over its members (a targets file holds
    /// thousands), then `length` (an integer, not negative) and `hashes` (a non-empty object of strings).
    static func check(
        _ document: JSONDocument, _ element: JSONElement
    ) throws(TUFError) -> (length: Int64, hashes: JSONElement, others: Bool) {
        guard document.kind(element) == .object else { throw TUFError(.invalidMetadata, "target must be an object") }
        var lengthElement: JSONElement?
        var hashesElement: JSONElement?
        var others = false
        document.forEachMember(of: element, matching: Self.fieldNames) { position, _, value in
            switch position {
            case 0: lengthElement = value
            case 1: hashesElement = value
            default: others = true
            }
        }
        guard let lengthElement else { throw TUFError(.invalidMetadata, "missing field 'length'") }
        guard let length = document.int64(lengthElement) else {
            throw TUFError(.invalidMetadata, "'length' must be an integer")
        }
        guard length >= 0 else { throw TUFError(.invalidMetadata, "length must not be negative") }
        guard let hashesElement else { throw TUFError(.invalidMetadata, "missing field 'hashes'") }
        guard document.kind(hashesElement) == .object else {
            throw TUFError(.invalidMetadata, "'hashes' must be an object")
        }
        guard document.count(hashesElement) > 0 else { throw TUFError(.invalidMetadata, "'hashes' must not be empty") }
        for (_, value) in document.members(hashesElement) where document.kind(value) != .string {
            throw TUFError(.invalidMetadata, "hash values must be strings")
        }
        return (length, hashesElement, others)
    }

    public static func == (a: TargetFile, b: TargetFile) -> Bool { a.path == b.path && a.jsonValue == b.jsonValue }

    public var custom: JSONValue? { unrecognized["custom"] }

    public var jsonValue: JSONValue {
        merged([("length", .integer(length)), ("hashes", hashesJSON(hashes))], unrecognized)
    }

    /// TUF §5.7.3: the artifact must match the trusted length and every listed hash.
    public func verifyLengthAndHashes(_ data: [UInt8]) throws(TUFError) {
        guard Int64(data.count) == length else { throw TUFError(.lengthOrHashMismatch, "target length does not match") }
        try Hashing.verify(data, hashes)
    }
}

/// The TARGETS object of a targets role as parsed: every entry is checked when the role is read, and built only when
/// asked for. A client looks up one path in a file of thousands; building them all was most of reading the file.
struct TargetTable: Sendable {
    let document: JSONDocument
    let element: JSONElement

    init(_ object: ObjectNode) throws(TUFError) {
        document = object.document
        element = object.element
        var ascii = true
        for (name, value) in document.members(element) {
            _ = try TargetFile.check(document, value)
            if ascii { ascii = document.withUnescapedBytes(name) { $0.allSatisfy { $0 < 0x80 } } }
        }
        // The parser refused paths with the same bytes. Two different paths can still be one Swift `String` (NFC and
        // NFD "é", "K" and KELVIN SIGN) when one is not ASCII; such a file is refused, as the editor refuses to write
        // it, so no map keyed by `String` can confuse them.
        if !ascii {
            var seen = Set<String>()
            for path in paths where !seen.insert(path).inserted {
                throw TUFError(.invalidMetadata, "target paths collide under Unicode equivalence")
            }
        }
    }

    var paths: [String] { document.members(element).map { document.string($0.key) ?? "" } }

    /// The entry for exactly these bytes (target paths are not Unicode-normalized).
    func target(_ path: String) -> TargetFile? {
        guard let value = document.member(path, of: element) else { return nil }
        return try? TargetFile(path: path, json: ObjectNode(document: document, element: value))
    }

    /// Every entry, built.
    var all: [String: TargetFile] {
        var out: [String: TargetFile] = [:]
        out.reserveCapacity(document.count(element))
        for (name, value) in document.members(element) {
            let path = document.string(name) ?? ""
            out[path] = try? TargetFile(path: path, json: ObjectNode(document: document, element: value))
        }
        return out
    }
}

/// TUF §4.5 targets metadata (top-level or delegated).
public struct Targets: SignedRole, Equatable {
    public static let type = "targets"
    public let common: SignedCommon
    let table: TargetTable
    /// Every target entry, built on each call (a client looks one up with `target(_:)`).
    public var targets: [String: TargetFile] { table.all }
    var targetOrder: [String] { table.paths }
    public let delegations: Delegations?
    public let unrecognized: JSONObject

    public init(json: JSONObject) throws(TUFError) { try self.init(json: ObjectNode(json)) }

    public init(document: JSONDocument, element: JSONElement) throws(TUFError) {
        try self.init(json: ObjectNode(document: document, element: element))
    }

    init(json: ObjectNode) throws(TUFError) {
        common = try SignedCommon(json: json)
        table = try TargetTable(json.object("targets"))
        delegations = try json["delegations"] == nil ? nil : Delegations(json: json.object("delegations"))
        unrecognized = json.removing(SignedCommon.keys + ["targets", "delegations"])
    }

    /// Looks a target up by exact scalar values (target paths are not Unicode-normalized).
    public func target(_ path: String) -> TargetFile? { table.target(path) }

    public var jsonValue: JSONValue {
        var o = JSONObject()
        let targets = table.all
        for k in targetOrder { if let t = targets[k] { o.set(k, t.jsonValue) } }
        return merged(common.fields + [("targets", .object(o)), ("delegations", delegations?.jsonValue)], unrecognized)
    }

    public static func == (a: Targets, b: Targets) -> Bool {
        a.common == b.common && a.targetOrder == b.targetOrder && a.targets == b.targets
            && a.delegations == b.delegations && a.unrecognized == b.unrecognized
    }
}
