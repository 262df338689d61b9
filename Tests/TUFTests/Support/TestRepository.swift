import Crypto
import JSON
import Synchronization
import TUF

@testable import TUFClient

func obj(_ pairs: KeyValuePairs<String, JSONValue>) -> JSONValue {
    var o = JSONObject()
    for (k, v) in pairs { o.set(k, v) }
    return .object(o)
}

func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

func sha256Hex(_ data: [UInt8]) -> String { hexEncode(SHA256.hash(data: data)) }

/// An Ed25519 signer generated for the test run.
struct TestSigner {
    let key = Curve25519.Signing.PrivateKey()

    var keyJSON: JSONValue {
        obj([
            "keytype": .string("ed25519"), "scheme": .string("ed25519"),
            "keyval": obj(["public": .string(hexEncode(key.publicKey.rawRepresentation))]),
        ])
    }

    var keyid: String { sha256Hex((try? CanonicalJSON.encode(keyJSON)) ?? []) }

    func sign(_ data: [UInt8]) -> String {
        guard let signature = try? key.signature(for: data) else { return "" }
        return hexEncode(signature)
    }
}

/// Signs `signed` with each signer and returns the envelope bytes.
func envelope(_ signed: JSONValue, _ signers: [TestSigner]) -> [UInt8] {
    let canonical = (try? CanonicalJSON.encode(signed)) ?? []
    let sigs = signers.map { obj(["keyid": .string($0.keyid), "sig": .string($0.sign(canonical))]) }
    return (try? CanonicalJSON.encode(obj(["signed": signed, "signatures": .array(sigs)]))) ?? []
}

/// An in-memory `Fetcher` that serves a dictionary of URLs and records every request with the
/// byte limit it was given. It enforces the limit like a real fetcher must.
final class MemoryFetcher: Fetcher {
    let files = Mutex<[String: [UInt8]]>([:])
    let requests = Mutex<[(url: String, maxBytes: Int)]>([])

    func fetch(_ url: String, maxBytes: Int) async throws -> [UInt8] {
        requests.withLock { $0.append((url, maxBytes)) }
        guard let data = files.withLock({ $0[url] }) else { throw UpdaterError.httpStatus(404, url: url) }
        guard data.count <= maxBytes else { throw UpdaterError.tooLarge(limit: maxBytes, url: url) }
        return data
    }

    func put(_ url: String, _ data: [UInt8]) { files.withLock { $0[url] = data } }
    func remove(_ url: String) { _ = files.withLock { $0.removeValue(forKey: url) } }
    var requestedURLs: [String] { requests.withLock { $0.map(\.url) } }
    func clearLog() { requests.withLock { $0.removeAll() } }
}

/// A targets role in the test repository.
struct TestRole {
    var signer = TestSigner()
    var version: Int64 = 1
    var targets: [String: [UInt8]] = [:]
    /// Delegations in order: child name, paths, terminating.
    var delegations: [(name: String, paths: [String], terminating: Bool)] = []
}

/// A small TUF repository: Ed25519 keys, one key per top-level role, consistent snapshots.
/// `publish()` signs everything and puts it on the `MemoryFetcher`.
final class TestRepository {
    static let metadataURL = "http://repo.test/metadata/"
    static let targetsURL = "http://repo.test/targets/"

    let fetcher = MemoryFetcher()
    var rootSigner = TestSigner()
    var timestampSigner = TestSigner()
    /// More keys of the timestamp role in root (threshold 1; the timestamp is signed by `timestampSigner` alone).
    var extraTimestampSigners: [TestSigner] = []
    var snapshotSigner = TestSigner()
    var rootVersion: Int64 = 1
    var timestampVersion: Int64 = 1
    var snapshotVersion: Int64 = 1
    var expires = "2099-01-01T00:00:00Z"
    var timestampExpires = "2099-01-01T00:00:00Z"
    var roles: [String: TestRole] = ["targets": TestRole()]
    /// Order in which delegated roles appear in snapshot.
    var roleOrder: [String] = ["targets"]
    var consistentSnapshot = true

    init() { publish() }

    func common(_ type: String, _ version: Int64, _ expires: String) -> [(String, JSONValue)] {
        [
            ("_type", .string(type)), ("spec_version", .string("1.0.31")), ("version", .integer(version)),
            ("expires", .string(expires)),
        ]
    }

    func build(_ pairs: [(String, JSONValue)]) -> JSONValue {
        var o = JSONObject()
        for (k, v) in pairs { o.set(k, v) }
        return .object(o)
    }

    func rootJSON() -> JSONValue {
        let targetsSigner = roles["targets"]?.signer ?? TestSigner()
        let signers = [
            ("root", rootSigner), ("timestamp", timestampSigner), ("snapshot", snapshotSigner),
            ("targets", targetsSigner),
        ]
        var keys = JSONObject()
        var rolesObject = JSONObject()
        for (name, s) in signers {
            keys.set(s.keyid, s.keyJSON)
            var keyids: [JSONValue] = [.string(s.keyid)]
            if name == "timestamp" {
                for extra in extraTimestampSigners {
                    keys.set(extra.keyid, extra.keyJSON)
                    keyids.append(.string(extra.keyid))
                }
            }
            rolesObject.set(name, obj(["keyids": .array(keyids), "threshold": .integer(1)]))
        }
        return build(
            common("root", rootVersion, expires) + [
                ("consistent_snapshot", .bool(consistentSnapshot)), ("keys", .object(keys)),
                ("roles", .object(rolesObject)),
            ]
        )
    }

    func rootBytes() -> [UInt8] { envelope(rootJSON(), [rootSigner]) }

    func targetsBytes(_ name: String) -> [UInt8] {
        guard let role = roles[name] else { return [] }
        var targets = JSONObject()
        for (path, data) in role.targets.sorted(by: { $0.key < $1.key }) {
            targets.set(
                path,
                obj([
                    "length": .integer(Int64(data.count)),
                    "hashes": obj(["sha256": .string(sha256Hex(data))]),
                ])
            )
        }
        var pairs = common("targets", role.version, expires) + [("targets", .object(targets))]
        if !role.delegations.isEmpty {
            var keys = JSONObject()
            var list: [JSONValue] = []
            for d in role.delegations {
                let child = roles[d.name]?.signer ?? TestSigner()
                keys.set(child.keyid, child.keyJSON)
                list.append(
                    obj([
                        "name": .string(d.name), "keyids": .array([.string(child.keyid)]), "threshold": .integer(1),
                        "terminating": .bool(d.terminating), "paths": .array(d.paths.map { .string($0) }),
                    ])
                )
            }
            pairs.append(("delegations", obj(["keys": .object(keys), "roles": .array(list)])))
        }
        return envelope(build(pairs), [role.signer])
    }

    /// Signs and serves root (current version), all targets roles, snapshot and timestamp.
    func publish() {
        let m = TestRepository.metadataURL
        fetcher.put("\(m)\(rootVersion).root.json", rootBytes())
        var meta = JSONObject()
        for name in roleOrder {
            guard let role = roles[name] else { continue }
            let data = targetsBytes(name)
            fetcher.put("\(m)\(role.version).\(percentEncode(name)).json", data)
            fetcher.put("\(m)\(percentEncode(name)).json", data)
            meta.set("\(name).json", obj(["version": .integer(role.version)]))
        }
        let snapshot = envelope(
            build(common("snapshot", snapshotVersion, expires) + [("meta", .object(meta))]),
            [snapshotSigner]
        )
        fetcher.put("\(m)\(snapshotVersion).snapshot.json", snapshot)
        fetcher.put("\(m)snapshot.json", snapshot)
        let timestamp = envelope(
            build(
                common("timestamp", timestampVersion, timestampExpires) + [
                    (
                        "meta",
                        obj([
                            "snapshot.json": obj([
                                "version": .integer(snapshotVersion), "length": .integer(Int64(snapshot.count)),
                                "hashes": obj(["sha256": .string(sha256Hex(snapshot))]),
                            ])
                        ])
                    )
                ]
            ),
            [timestampSigner]
        )
        fetcher.put("\(m)timestamp.json", timestamp)
        for (name, role) in roles {
            for (path, data) in role.targets {
                fetcher.put("\(TestRepository.targetsURL)\(sha256Hex(data)).\(path)", data)
                _ = name
            }
        }
    }

    /// Bumps snapshot and timestamp (and the given targets roles) and publishes.
    func bump(_ targetRoles: [String] = []) {
        for r in targetRoles { roles[r]?.version += 1 }
        snapshotVersion += 1
        timestampVersion += 1
        publish()
    }

    func addDelegation(from parent: String, to child: String, paths: [String] = ["*"], terminating: Bool = false) {
        if roles[child] == nil {
            roles[child] = TestRole()
            roleOrder.append(child)
        }
        roles[parent]?.delegations.append((child, paths, terminating))
    }
}

/// A fresh temporary directory holding the trusted root of `repo`.
func makeClientDirectory(_ repo: TestRepository) throws -> String {
    var template = Array("/tmp/tuftest-XXXXXX".utf8CString)
    let dir = template.withUnsafeMutableBufferPointer { buf -> String in
        guard let base = buf.baseAddress, let p = mkdtemp(base) else { return "" }
        return String(
            decoding: Array(UnsafeBufferPointer(start: p, count: strlen(p))).map { UInt8(bitPattern: $0) },
            as: UTF8.self
        )
    }
    try AtomicFile.write(
        repo.fetcher.files.withLock { $0["\(TestRepository.metadataURL)1.root.json"] } ?? [],
        directory: dir,
        name: "root.json"
    )
    return dir
}

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

let testNow = Timestamp8601(secondsSinceEpoch: 1_800_000_000)

func makeUpdater(
    _ repo: TestRepository,
    dir: String,
    store: (any MetadataStore)? = nil,
    artifacts: (any ArtifactStore)? = nil,
    config: UpdaterConfig = UpdaterConfig(),
    now: Timestamp8601 = testNow
) throws -> Updater {
    try Updater(
        metadataBaseURL: TestRepository.metadataURL,
        metadataStore: store ?? DirectoryStore(directory: dir),
        fetcher: repo.fetcher,
        targetBaseURL: TestRepository.targetsURL,
        artifactStore: artifacts,
        referenceTime: now,
        config: config
    )
}

func trustedVersion(_ dir: String, _ role: String) -> Int64? {
    guard let data = try? AtomicFile.read(path: "\(dir)/\(role).json"),
        let top = try? TUFJSON.parse(data).objectValue,
        let signed = top["signed"]?.objectValue
    else { return nil }
    return signed["version"]?.integerValue
}

struct Missing: Error, CustomStringConvertible {
    let what: String
    var description: String { "missing \(what)" }
}

/// Unwraps or throws (usable nested, unlike `#require`).
func need<T>(_ value: T?, _ what: String = "value", sourceLocation: SourceLocationHint = .init()) throws -> T {
    guard let value else { throw Missing(what: what) }
    return value
}

struct SourceLocationHint {}
