import Crypto
import FuzzSupport
import JSON
import TUF

/// TUF metadata parsing and the `TrustedMetadataSet` update path (TUF §5.2-§5.6).
///
/// At start the target builds a repository from fixed Ed25519 test keys: root v1, timestamp v1, snapshot v1,
/// targets v1 (delegating `role1`) and role1 v1, and the trusted sets reached by loading them in order. The first
/// input byte picks the operation (`op & 7`), the rest is metadata bytes:
///
///     0 updateRoot (trusted root v1)            4 updateTargets (after snapshot v1)
///     1 updateTimestamp (nothing loaded)        5 updateDelegatedTargets role1 by targets (after targets v1)
///     2 updateTimestamp (after timestamp v1)    6 TrustedMetadataSet(rootBytes:) (a new trusted root)
///     3 updateSnapshot (after timestamp v1)     7 Metadata.parse of every role type only
///
/// With bit 3 set the rest is the `signed` object only: the target signs it with the keys the operation needs and
/// wraps it, so the fuzzer reaches the checks behind the signature. With bit 4 set, after an accepted update the
/// next honest document of the workflow is loaded too. Invariants: accepted metadata obeys the checks the update
/// promises (version rules, expiry, snapshot/targets versions), and a parsed role written out canonically parses
/// back to a role whose canonical form is the same (the round trip of unrecognized fields is stable).
struct TestKey {
    let name: String
    let key: Curve25519.Signing.PrivateKey
    let json: JSONValue
    let keyid: String

    init(_ name: String) {
        self.name = name
        key = try! Curve25519.Signing.PrivateKey(rawRepresentation: FuzzSupport.testBytes("tuf-\(name)"))
        json = object([
            ("keytype", .string("ed25519")), ("scheme", .string("ed25519")),
            ("keyval", object([("public", .string(hexEncode(key.publicKey.rawRepresentation)))])),
        ])
        keyid = hexEncode(SHA256.hash(data: try! CanonicalJSON.encode(json)))
    }
}

func object(_ members: [(String, JSONValue)]) -> JSONValue {
    .object(try! JSONObject(members: members.map { (key: $0.0, value: $0.1) }))
}

let keys = Dictionary(
    uniqueKeysWithValues: ["root", "root2", "timestamp", "snapshot", "targets", "role1"].map { ($0, TestKey($0)) })
let referenceTime = try! Timestamp8601(parsing: "2026-12-01T00:00:00Z")
let future = "2030-01-01T00:00:00Z"

func common(_ type: String, _ version: Int64, expires: String = future) -> [(String, JSONValue)] {
    [
        ("_type", .string(type)), ("spec_version", .string("1.0.31")), ("version", .integer(version)),
        ("expires", .string(expires)),
    ]
}

func roleKeys(_ names: [String], threshold: Int64 = 1) -> JSONValue {
    object([("keyids", .array(names.map { .string(keys[$0]!.keyid) })), ("threshold", .integer(threshold))])
}

func root(_ version: Int64, rootKeys: [String] = ["root"], timestampKey: String = "timestamp") -> JSONValue {
    let used = Set(rootKeys + [timestampKey, "snapshot", "targets"]).sorted()
    return object(
        common("root", version) + [
            ("consistent_snapshot", .bool(true)),
            ("keys", object(used.map { (keys[$0]!.keyid, keys[$0]!.json) })),
            (
                "roles",
                object([
                    ("root", roleKeys(rootKeys)), ("timestamp", roleKeys([timestampKey])),
                    ("snapshot", roleKeys(["snapshot"])), ("targets", roleKeys(["targets"])),
                ])
            ),
        ])
}

func metaFile(_ version: Int64, of bytes: [UInt8]? = nil) -> JSONValue {
    guard let bytes else { return object([("version", .integer(version))]) }
    return object([
        ("version", .integer(version)), ("length", .integer(Int64(bytes.count))),
        ("hashes", object([("sha256", .string(hexEncode(SHA256.hash(data: bytes))))])),
    ])
}

func timestamp(_ version: Int64, snapshot: Int64, of bytes: [UInt8]? = nil) -> JSONValue {
    object(common("timestamp", version) + [("meta", object([("snapshot.json", metaFile(snapshot, of: bytes))]))])
}

func snapshot(_ version: Int64, targets: Int64 = 1, role1: Int64 = 1) -> JSONValue {
    object(
        common("snapshot", version) + [
            ("meta", object([("targets.json", metaFile(targets)), ("role1.json", metaFile(role1))]))
        ])
}

func targetFile(_ content: String) -> JSONValue {
    object([
        ("length", .integer(Int64(content.utf8.count))),
        ("hashes", object([("sha256", .string(hexEncode(SHA256.hash(data: Array(content.utf8)))))])),
        ("custom", object([("note", .string("fuzz"))])),
    ])
}

func targets(_ version: Int64, succinct: Bool = false) -> JSONValue {
    let delegations: JSONValue
    if succinct {
        delegations = object([
            ("keys", object([(keys["role1"]!.keyid, keys["role1"]!.json)])),
            (
                "succinct_roles",
                object([
                    ("keyids", .array([.string(keys["role1"]!.keyid)])), ("threshold", .integer(1)),
                    ("bit_length", .integer(3)), ("name_prefix", .string("bin")),
                ])
            ),
        ])
    } else {
        delegations = object([
            ("keys", object([(keys["role1"]!.keyid, keys["role1"]!.json)])),
            (
                "roles",
                .array([
                    object([
                        ("name", .string("role1")), ("keyids", .array([.string(keys["role1"]!.keyid)])),
                        ("threshold", .integer(1)), ("terminating", .bool(false)),
                        ("paths", .array([.string("files/*")])),
                    ]),
                    object([
                        ("name", .string("role2")), ("keyids", .array([])), ("threshold", .integer(1)),
                        ("terminating", .bool(true)), ("path_hash_prefixes", .array([.string("8f")])),
                    ]),
                ])
            ),
        ])
    }
    return object(
        common("targets", version) + [
            ("targets", object([("file1.txt", targetFile("one")), ("dir/file2.txt", targetFile("two"))])),
            ("delegations", delegations),
        ])
}

func role1(_ version: Int64) -> JSONValue {
    object(common("targets", version) + [("targets", object([("files/a.bin", targetFile("a"))]))])
}

/// The envelope `{"signatures": [...], "signed": ...}` signed by `signers` over canonical JSON of `signed`.
func envelope(_ signed: JSONValue, _ signers: [String]) -> [UInt8]? {
    guard let canonical = try? CanonicalJSON.encode(signed) else { return nil }
    let signatures: [JSONValue] = signers.map { name in
        let k = keys[name]!
        return object([("keyid", .string(k.keyid)), ("sig", .string(hexEncode(try! k.key.signature(for: canonical))))])
    }
    return try? CanonicalJSON.encode(object([("signatures", .array(signatures)), ("signed", signed)]))
}

struct Repository: @unchecked Sendable {
    let root1 = envelope(root(1), ["root"])!
    let timestamp1 = envelope(timestamp(1, snapshot: 1), ["timestamp"])!
    let snapshot1 = envelope(snapshot(1), ["snapshot"])!
    let targets1 = envelope(targets(1), ["targets"])!
    let role1v1 = envelope(role1(1), ["role1"])!
    let atRoot: TrustedMetadataSet
    let atTimestamp: TrustedMetadataSet
    let atSnapshot: TrustedMetadataSet
    let atTargets: TrustedMetadataSet

    init() {
        var set = try! TrustedMetadataSet(rootBytes: root1, referenceTime: referenceTime)
        atRoot = set
        try! set.updateTimestamp(timestamp1)
        atTimestamp = set
        try! set.updateSnapshot(snapshot1)
        atSnapshot = set
        try! set.updateTargets(targets1)
        atTargets = set
        try! set.updateDelegatedTargets(role1v1, role: "role1", delegator: "targets")
    }
}

let repository = Repository()
let signersForOperation: [[String]] = [
    ["root", "root2"], ["timestamp"], ["timestamp"], ["snapshot"], ["targets"], ["role1"], ["root", "root2"], ["root"],
]

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = FuzzSupport.bytes(data, size)
    guard let op = input.first else { return 0 }
    let operation = Int(op & 7)
    var bytes = Array(input.dropFirst())
    if op & 8 != 0 {
        guard let signed = try? TUFJSON.parse(bytes), let wrapped = envelope(signed, signersForOperation[operation])
        else { return 0 }
        bytes = wrapped
    }
    let continueWorkflow = op & 16 != 0
    defer { FuzzSupport.trace("operation \(operation) done") }
    let r = repository
    switch operation {
    case 0:
        var set = r.atRoot
        roundTrip(Root.self, bytes)
        guard let accepted = try? set.updateRoot(bytes) else { return 0 }
        FuzzSupport.trace("root accepted")
        guard accepted.signed.common.version == 2, set.root.signed.common.version == 2 else {
            FuzzSupport.violated("updateRoot accepted a version other than trusted + 1")
        }
        if continueWorkflow, (try? set.updateTimestamp(r.timestamp1)) != nil {
            _ = try? set.updateSnapshot(r.snapshot1)
        }
    case 1, 2:
        var set = operation == 1 ? r.atRoot : r.atTimestamp
        roundTrip(Timestamp.self, bytes)
        guard let accepted = try? set.updateTimestamp(bytes) else { return 0 }
        FuzzSupport.trace("timestamp accepted")
        guard !accepted.signed.common.isExpired(at: referenceTime) else {
            FuzzSupport.violated("an expired timestamp was accepted")
        }
        if operation == 2, accepted.signed.common.version <= 1 || accepted.signed.snapshotMeta.version < 1 {
            FuzzSupport.violated("a timestamp rollback was accepted")
        }
        if continueWorkflow, (try? set.updateSnapshot(r.snapshot1)) != nil { _ = try? set.updateTargets(r.targets1) }
    case 3:
        var set = r.atTimestamp
        roundTrip(Snapshot.self, bytes)
        guard let accepted = try? set.updateSnapshot(bytes) else { return 0 }
        FuzzSupport.trace("snapshot accepted")
        guard !accepted.signed.common.isExpired(at: referenceTime),
            accepted.signed.common.version == set.timestamp!.signed.snapshotMeta.version
        else { FuzzSupport.violated("a snapshot that is expired or of another version was accepted") }
        if continueWorkflow, (try? set.updateTargets(r.targets1)) != nil {
            _ = try? set.updateDelegatedTargets(r.role1v1, role: "role1", delegator: "targets")
        }
    case 4:
        var set = r.atSnapshot
        roundTrip(Targets.self, bytes)
        guard let accepted = try? set.updateTargets(bytes) else { return 0 }
        checkTargets(accepted, listed: set.snapshot!.signed.meta["targets.json"])
        if continueWorkflow { _ = try? set.updateDelegatedTargets(r.role1v1, role: "role1", delegator: "targets") }
    case 5:
        var set = r.atTargets
        roundTrip(Targets.self, bytes)
        guard let accepted = try? set.updateDelegatedTargets(bytes, role: "role1", delegator: "targets") else {
            return 0
        }
        checkTargets(accepted, listed: set.snapshot!.signed.meta["role1.json"])
        if continueWorkflow { _ = try? set.reverify(role: "role1", delegator: "targets") }
    case 6:
        roundTrip(Root.self, bytes)
        guard var set = try? TrustedMetadataSet(rootBytes: bytes, referenceTime: referenceTime) else { return 0 }
        FuzzSupport.trace("trusted root accepted")
        guard Set(set.root.signed.roles.keys) == Set(Root.topLevelRoles) else {
            FuzzSupport.violated("a root without exactly the top-level roles was trusted")
        }
        if continueWorkflow, (try? set.updateTimestamp(r.timestamp1)) != nil {
            _ = try? set.updateSnapshot(r.snapshot1)
        }
    default:
        roundTrip(Root.self, bytes)
        roundTrip(Timestamp.self, bytes)
        roundTrip(Snapshot.self, bytes)
        roundTrip(Targets.self, bytes)
    }
    return 0
}

/// §5.6.4 and §5.6.5 for an accepted targets role, then the lookups a client makes with it.
func checkTargets(_ accepted: Verified<Targets>, listed: MetaFile?) {
    FuzzSupport.trace("targets accepted")
    guard let listed, accepted.signed.common.version == listed.version,
        !accepted.signed.common.isExpired(at: referenceTime)
    else { FuzzSupport.violated("targets of an unlisted version, or expired, were accepted") }
    let paths = Array(accepted.signed.targets.keys.prefix(8)) + ["files/a.bin", "a/b/c.txt", ""]
    for path in paths {
        _ = accepted.signed.target(path)
        if let delegations = accepted.signed.delegations {
            for role in delegations.rolesFor(targetPath: path) { _ = delegations.roleKeys(for: role.name) }
        }
    }
}

/// Parses `bytes` as metadata of `role`; when that works, the role written as canonical JSON must parse again to a
/// role with the same canonical form (skipped when a string holds a control character, which canonical JSON writes
/// raw and the strict parser then refuses).
func roundTrip<R: SignedRole>(_ role: R.Type, _ bytes: [UInt8]) {
    guard let md = try? Metadata<R>.parse(bytes) else { return }
    guard md.signatures.count == Set(md.signatures.map(\.keyid)).count else {
        FuzzSupport.violated("metadata with a duplicate signature keyid parsed")
    }
    let first: [UInt8]
    do { first = try CanonicalJSON.encode(md.signed.jsonValue) } catch {
        FuzzSupport.violated("a parsed \(R.type) role cannot be written as canonical JSON: \(error)")
    }
    FuzzSupport.trace("\(R.type) parsed")
    guard !first.contains(where: { $0 < 0x20 }) else { return }
    let again: R
    do {
        let document = try StrictJSON.tuf.parse(first)
        guard document.isObject else { FuzzSupport.violated("not an object") }
        again = try R(document: document, element: document.root)
    } catch {
        FuzzSupport.violated("a \(R.type) role written out does not parse again: \(error)")
    }
    guard let second = try? CanonicalJSON.encode(again.jsonValue), second == first else {
        FuzzSupport.violated("the canonical form of a \(R.type) role is not stable")
    }
}

@_cdecl("LLVMFuzzerInitialize")
public func initialize(_ argc: FuzzArgc, _ argv: FuzzArgv) -> CInt {
    FuzzSupport.writeSeedsIfRequested {
        let r = repository
        var seeds: [[UInt8]] = []
        func add(_ op: UInt8, _ bytes: [UInt8]) { seeds.append([op] + bytes) }
        func addSigned(_ op: UInt8, _ signed: JSONValue) { add(op | 8, try! CanonicalJSON.encode(signed)) }
        // Honest next documents, whole and as signed parts.
        let root2 = root(2, rootKeys: ["root", "root2"], timestampKey: "root2")
        add(0, envelope(root2, ["root", "root2"])!)
        add(16, envelope(root(2), ["root"])!)
        addSigned(0, root2)
        addSigned(0, root(3))
        add(1, r.timestamp1)
        add(17, r.timestamp1)
        addSigned(1, timestamp(1, snapshot: 1, of: r.snapshot1))
        add(2, envelope(timestamp(2, snapshot: 2), ["timestamp"])!)
        addSigned(2 | 16, timestamp(2, snapshot: 1))
        add(3, r.snapshot1)
        add(3 | 16, r.snapshot1)
        addSigned(3, snapshot(1, targets: 1, role1: 2))
        add(4, r.targets1)
        add(4 | 16, r.targets1)
        addSigned(4, targets(1, succinct: true))
        add(5, r.role1v1)
        addSigned(5, role1(1))
        add(6, r.root1)
        add(6 | 16, r.root1)
        addSigned(6, root(1))
        for bytes in [r.root1, r.timestamp1, r.snapshot1, r.targets1, r.role1v1] { add(7, bytes) }
        // Near misses: expired, wrong type, rollback, a float, unrecognized fields.
        addSigned(
            1,
            object(
                common("timestamp", 1, expires: "2020-01-01T00:00:00Z") + [
                    ("meta", object([("snapshot.json", metaFile(1))]))
                ]))
        add(
            3 | 8,
            Array(
                #"{"_type":"snapshot","spec_version":"1.0","version":1,"expires":"2030-01-01T00:00:00Z","meta":{"targets.json":{"version":1}},"x":[null,true,1.5]}"#
                    .utf8))
        addSigned(2, timestamp(1, snapshot: 1))
        add(
            7,
            Array(
                #"{"signatures":[{"keyid":"a","sig":"b","x":1},{"keyid":"a","sig":"c"}],"signed":{"_type":"root"}}"#
                    .utf8))
        return seeds
    }
    return 0
}
