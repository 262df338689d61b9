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

    /// One pass over the entry's members (a targets file holds thousands of these).
    init(path: String, json: ObjectNode) throws(TUFError) {
        self.path = path
        let document = json.document
        var lengthElement: JSONElement?
        var hashesElement: JSONElement?
        var others = false
        document.forEachMember(of: json.element, matching: Self.fieldNames) { position, _, value in
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
        self.length = length
        guard let hashesElement else { throw TUFError(.invalidMetadata, "missing field 'hashes'") }
        hashes = try ObjectNode.hashes(document, hashesElement, "hashes")
        unrecognized = others ? json.removing(Self.fieldNames) : JSONObject()
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

/// TUF §4.5 targets metadata (top-level or delegated).
public struct Targets: SignedRole, Equatable {
    public static let type = "targets"
    public let common: SignedCommon
    public let targets: [String: TargetFile]
    let targetOrder: [String]
    public let delegations: Delegations?
    public let unrecognized: JSONObject

    public init(json: JSONObject) throws(TUFError) { try self.init(json: ObjectNode(json)) }

    public init(document: JSONDocument, element: JSONElement) throws(TUFError) {
        try self.init(json: ObjectNode(document: document, element: element))
    }

    init(json: ObjectNode) throws(TUFError) {
        common = try SignedCommon(json: json)
        let targetsObject = try json.object("targets")
        var targets: [String: TargetFile] = [:]
        targets.reserveCapacity(targetsObject.count)
        let document = targetsObject.document
        for (name, value) in document.members(targetsObject.element) {
            guard document.kind(value) == .object else { throw TUFError(.invalidMetadata, "target must be an object") }
            let path = document.string(name) ?? ""
            let target = try TargetFile(path: path, json: ObjectNode(document: document, element: value))
            guard targets.updateValue(target, forKey: path) == nil else {
                throw TUFError(.invalidMetadata, "target paths collide under Unicode equivalence")
            }
        }
        self.targets = targets
        targetOrder = targetsObject.keys
        delegations = try json["delegations"] == nil ? nil : Delegations(json: json.object("delegations"))
        unrecognized = json.removing(SignedCommon.keys + ["targets", "delegations"])
    }

    /// Looks a target up by exact scalar values (target paths are not Unicode-normalized).
    public func target(_ path: String) -> TargetFile? {
        guard let t = targets[path], t.path.utf8.elementsEqual(path.utf8) else { return nil }
        return t
    }

    public var jsonValue: JSONValue {
        var o = JSONObject()
        for k in targetOrder { if let t = targets[k] { o.set(k, t.jsonValue) } }
        return merged(common.fields + [("targets", .object(o)), ("delegations", delegations?.jsonValue)], unrecognized)
    }
}
