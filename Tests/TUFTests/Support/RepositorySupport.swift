import Foundation
import Synchronization
import TUF
import TUFRepository

@testable import TUFClient

/// A fresh directory under /tmp.
func makeTempDirectory(_ prefix: String = "tufrepo") -> String {
    let path = NSTemporaryDirectory() + "/\(prefix)-\(UInt64.random(in: 0..<UInt64.max))"
    try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

/// A settable clock for repository tests (seconds since the epoch).
final class TestClock: Sendable {
    let now = Mutex<Int64>(ExpiryDate.now())
    func advance(_ seconds: Int64) { now.withLock { $0 += seconds } }
    var reader: @Sendable () -> Int64 { { self.now.withLock { $0 } } }
    var timestamp: Timestamp8601 { Timestamp8601(secondsSinceEpoch: now.withLock { $0 }) }
}

/// Serves a published repository directory (`metadata/`, `targets/`) through a `MemoryFetcher`,
/// re-reading the files on every `sync()` so tests see what `publish` wrote.
final class RepositoryServer: Sendable {
    static let metadataURL = "http://repo.test/metadata/"
    static let targetsURL = "http://repo.test/targets/"
    let directory: String
    let fetcher = MemoryFetcher()

    init(_ directory: String) {
        self.directory = directory
        sync()
    }

    func sync() {
        fetcher.files.withLock { $0.removeAll() }
        for (sub, base) in [("metadata", RepositoryServer.metadataURL), ("targets", RepositoryServer.targetsURL)] {
            let root = directory + "/" + sub
            let enumerator = FileManager.default.enumerator(atPath: root)
            while let rel = enumerator?.nextObject() as? String {
                var isDir: ObjCBool = false
                guard FileManager.default.fileExists(atPath: root + "/" + rel, isDirectory: &isDir), !isDir.boolValue,
                    let data = FileManager.default.contents(atPath: root + "/" + rel)
                else { continue }
                fetcher.put(base + rel, Array(data))
            }
        }
    }
}

/// A client directory initialized with the repository's `1.root.json`.
func makeClient(for repoDirectory: String) throws -> String {
    let dir = makeTempDirectory("tufclient")
    let root = try need(
        FileManager.default.contents(atPath: repoDirectory + "/metadata/1.root.json"),
        "1.root.json"
    )
    try AtomicFile.write(Array(root), directory: dir, name: "root.json")
    try FileManager.default.createDirectory(atPath: dir + "/artifacts", withIntermediateDirectories: true)
    return dir
}

func makeUpdater(server: RepositoryServer, client: String, at time: Timestamp8601) throws -> Updater {
    try Updater(
        metadataBaseURL: RepositoryServer.metadataURL,
        metadataStore: DirectoryStore(directory: client),
        fetcher: server.fetcher,
        targetBaseURL: RepositoryServer.targetsURL,
        artifactStore: DirectoryStore(directory: client + "/artifacts"),
        referenceTime: time
    )
}

/// Signers for a repository: root keys plus one key per other top-level role.
struct TestKeys {
    var root: [FileSigner]
    var timestamp: FileSigner
    var snapshot: FileSigner
    var targets: FileSigner

    init(rootCount: Int = 3, type: KeyType = .ecdsaP256) throws {
        root = try (1...rootCount).map { try FileSigner.generate(name: "root-\($0)", type: type) }
        timestamp = try FileSigner.generate(name: "timestamp", type: type)
        snapshot = try FileSigner.generate(name: "snapshot", type: type)
        targets = try FileSigner.generate(name: "targets", type: type)
    }

    var keyring: Keyring { Keyring(root + [timestamp, snapshot, targets]) }
}

func makeEditor(
    _ dir: String,
    keys: TestKeys,
    rootThreshold: Int = 2,
    consistent: Bool = true,
    clock: TestClock = TestClock()
) throws -> RepositoryEditor {
    try FileRepository(directory: dir).create(
        root: RoleKeySpec(keys: keys.root.map(\.publicKey), threshold: rootThreshold),
        timestamp: RoleKeySpec(keys: [keys.timestamp.publicKey]),
        snapshot: RoleKeySpec(keys: [keys.snapshot.publicKey]),
        targets: RoleKeySpec(keys: [keys.targets.publicKey]),
        consistentSnapshot: consistent,
        clock: clock.reader
    )
}
