import Foundation
import Synchronization
import TUF
import Testing

@testable import TUFClient

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

@Suite struct UpdaterTests {
    let m = TestRepository.metadataURL

    @Test func refreshesAndPersistsBytesAsReceived() async throws {
        let repo = TestRepository()
        let dir = try makeClientDirectory(repo)
        let updater = try makeUpdater(repo, dir: dir)
        try await updater.refresh()
        for role in ["timestamp", "snapshot", "targets"] {
            let served = repo.fetcher.files.withLock {
                $0[m + (role == "timestamp" ? "timestamp.json" : "1.\(role).json")]
            }
            #expect(try AtomicFile.read(path: "\(dir)/\(role).json") == served)
        }
        #expect(
            repo.fetcher.requestedURLs == [
                m + "2.root.json", m + "timestamp.json", m + "1.snapshot.json", m + "1.targets.json",
            ]
        )
    }

    @Test func appliesAByteLimitToEveryRole() async throws {
        let repo = TestRepository()
        let dir = try makeClientDirectory(repo)
        var config = UpdaterConfig()
        config.rootMaxLength = 1111
        config.timestampMaxLength = 2222
        config.targetsMaxLength = 3333
        let updater = try makeUpdater(repo, dir: dir, config: config)
        try await updater.refresh()
        let limits = Dictionary(
            uniqueKeysWithValues: repo.fetcher.requests.withLock { $0.map { ($0.url, $0.maxBytes) } }
        )
        #expect(limits[m + "2.root.json"] == 1111)
        #expect(limits[m + "timestamp.json"] == 2222)
        // Snapshot length is listed in timestamp: that exact length is the limit.
        let snapshotLength = repo.fetcher.files.withLock { $0[m + "1.snapshot.json"]?.count }
        #expect(limits[m + "1.snapshot.json"] == snapshotLength)
        #expect(limits[m + "1.targets.json"] == 3333)
    }

    /// A length listed by metadata signed with an online key never raises the configured cap: a stolen timestamp key
    /// cannot make a device buffer gigabytes.
    @Test func aListedLengthNeverRaisesTheConfiguredCap() async throws {
        let repo = TestRepository()
        let dir = try makeClientDirectory(repo)
        var config = UpdaterConfig()
        config.snapshotMaxLength = 100
        let updater = try makeUpdater(repo, dir: dir, config: config)
        await #expect(throws: UpdaterError.self) { try await updater.refresh() }
        let limits = Dictionary(
            uniqueKeysWithValues: repo.fetcher.requests.withLock { $0.map { ($0.url, $0.maxBytes) } }
        )
        #expect(limits[m + "1.snapshot.json"] == 100)
        #expect(trustedVersion(dir, "snapshot") == nil)
    }

    @Test func oversizedTimestampFailsTheRefresh() async throws {
        let repo = TestRepository()
        let dir = try makeClientDirectory(repo)
        var config = UpdaterConfig()
        config.timestampMaxLength = 100
        let updater = try makeUpdater(repo, dir: dir, config: config)
        await #expect(throws: UpdaterError.self) { try await updater.refresh() }
        #expect(trustedVersion(dir, "timestamp") == nil)
    }

    @Test func targetDownloadIsBoundedByLengthAndCheckedAgainstHashes() async throws {
        let repo = TestRepository()
        let content = Array("artifact".utf8)
        repo.roles["targets"]?.targets["dir/file.txt"] = content
        repo.bump(["targets"])
        let dir = try makeClientDirectory(repo)
        let updater = try makeUpdater(repo, dir: dir, artifacts: DirectoryStore(directory: dir))
        let info = try need(try await updater.targetInfo(for: "dir/file.txt"))
        let url = "\(TestRepository.targetsURL)dir/\(sha256Hex(content)).file.txt"
        // Serve more bytes than listed: the fetch limit is the listed length.
        repo.fetcher.put(url, content + [0x21])
        await #expect(throws: UpdaterError.self) { try await updater.downloadTarget(info) }
        #expect(repo.fetcher.requests.withLock { $0.last?.maxBytes } == content.count)
        // Same length, different content: the hash check refuses it.
        repo.fetcher.put(url, Array("ARTIFACT".utf8))
        await #expect(throws: UpdaterError.self) { try await updater.downloadTarget(info) }
        #expect(try await updater.cachedTarget(info) == nil)
        repo.fetcher.put(url, content)
        #expect(try await updater.downloadTarget(info) == content)
        // Cached and verified: no second download needed.
        #expect(try await updater.cachedTarget(info) == content)
    }

    /// The unsynced artifact directory is safe only because a cached artifact is checked before it is used: what a
    /// power cut can leave in it (an empty file, a torn one, an old version) is refused and downloaded again.
    @Test(arguments: [[], Array("artif".utf8), Array("ARTIFACT".utf8)])
    func anArtifactLostToAPowerCutIsDownloadedAgain(_ left: [UInt8]) async throws {
        let repo = TestRepository()
        let content = Array("artifact".utf8)
        repo.roles["targets"]?.targets["dir/file.txt"] = content
        repo.bump(["targets"])
        let dir = try makeClientDirectory(repo)
        let artifacts = UnsyncedArtifactDirectory(directory: dir)
        let updater = try makeUpdater(repo, dir: dir, artifacts: artifacts)
        repo.fetcher.put("\(TestRepository.targetsURL)dir/\(sha256Hex(content)).file.txt", content)
        #expect(try await updater.fetchTarget("dir/file.txt")?.downloaded == true)
        #expect(try await updater.fetchTarget("dir/file.txt")?.downloaded == false)
        try AtomicFile.write(left, directory: dir, name: "dir%2Ffile.txt")
        #expect(try await updater.fetchTarget("dir/file.txt")?.downloaded == true)
        #expect(try artifacts.load(targetPath: "dir/file.txt") == content)
    }

    @Test func rootRotationIsCapped() async throws {
        let repo = TestRepository()
        let dir = try makeClientDirectory(repo)
        for _ in 2...10 {
            repo.rootVersion += 1
            repo.publish()
        }
        var config = UpdaterConfig()
        config.maxRootRotations = 3
        let updater = try makeUpdater(repo, dir: dir, config: config)
        try await updater.refresh()
        #expect(trustedVersion(dir, "root") == 4)
        #expect(!repo.fetcher.requestedURLs.contains(m + "5.root.json"))
        #expect(UpdaterConfig().maxRootRotations == 256)
    }

    @Test func delegationSearchVisitsAtMostMaxDelegationsRoles() async throws {
        let repo = TestRepository()
        var parent = "targets"
        for i in 0..<40 {
            let child = "d\(i)"
            repo.addDelegation(from: parent, to: child)
            parent = child
        }
        repo.roles[parent]?.targets["deep.txt"] = Array("deep".utf8)
        repo.bump(["targets"])
        let dir = try makeClientDirectory(repo)
        var config = UpdaterConfig()
        config.maxDelegations = 5
        let updater = try makeUpdater(repo, dir: dir, config: config)
        #expect(try await updater.targetInfo(for: "deep.txt") == nil)
        let delegatedFetches = repo.fetcher.requestedURLs.filter { $0.contains(".d") }
        #expect(delegatedFetches.count <= 5)
    }

    @Test func delegationSearchIsPreorderAndHonoursTerminating() async throws {
        let repo = TestRepository()
        repo.addDelegation(from: "targets", to: "a", paths: ["*.txt"], terminating: true)
        repo.addDelegation(from: "targets", to: "b", paths: ["*"])
        repo.roles["b"]?.targets["x.txt"] = Array("b".utf8)
        repo.roles["b"]?.targets["x.bin"] = Array("b".utf8)
        repo.bump(["targets"])
        let dir = try makeClientDirectory(repo)
        let updater = try makeUpdater(repo, dir: dir)
        // "a" is terminating for *.txt and does not list it: "b" must not be consulted.
        #expect(try await updater.targetInfo(for: "x.txt") == nil)
        #expect(try await updater.targetInfo(for: "x.bin") != nil)
    }

    @Test func delegationCyclesTerminate() async throws {
        let repo = TestRepository()
        repo.addDelegation(from: "targets", to: "a")
        repo.addDelegation(from: "a", to: "b")
        repo.addDelegation(from: "b", to: "a")
        repo.bump(["targets"])
        let dir = try makeClientDirectory(repo)
        let updater = try makeUpdater(repo, dir: dir)
        #expect(try await updater.targetInfo(for: "missing") == nil)
    }

    /// Also with a store that writes when the update ends (`writesAtFlush`, the conformance client's).
    @Test(arguments: [false, true]) func rollbackOfTimestampIsRefused(_ atFlush: Bool) async throws {
        let repo = TestRepository()
        let dir = try makeClientDirectory(repo)
        let store = DirectoryStore(directory: dir, writesAtFlush: atFlush)
        repo.bump()
        repo.bump()
        try await makeUpdater(repo, dir: dir, store: store).refresh()
        repo.timestampVersion = 1
        repo.publish()
        await #expect(throws: UpdaterError.self) { try await makeUpdater(repo, dir: dir, store: store).refresh() }
        #expect(trustedVersion(dir, "timestamp") == 3)
    }

    @Test func freezeAttackIsRefusedAtTheReferenceTime() async throws {
        let repo = TestRepository()
        let dir = try makeClientDirectory(repo)
        let late = Timestamp8601(secondsSinceEpoch: 4_200_000_000)  // after 2099
        await #expect(throws: UpdaterError.self) { try await makeUpdater(repo, dir: dir, now: late).refresh() }
    }

    /// A client that trusts a fast-forwarded timestamp (version 100), with the default store or one that writes at
    /// its flush; the repository then rotates its timestamp keys in root version 2 and goes back to timestamp
    /// version 1 (TUF §5.3.11's recovery).
    func fastForwardedThenRotated(atFlush: Bool, addingAKey: Bool) async throws
        -> (repo: TestRepository, dir: String, store: DirectoryStore)
    {
        let repo = TestRepository()
        let dir = try makeClientDirectory(repo)
        let store = DirectoryStore(directory: dir, writesAtFlush: atFlush)
        repo.timestampVersion = 100
        repo.publish()
        try await makeUpdater(repo, dir: dir, store: store).refresh()
        #expect(trustedVersion(dir, "timestamp") == 100)
        if addingAKey {
            repo.extraTimestampSigners = [TestSigner()]
        } else {
            repo.timestampSigner = TestSigner()
        }
        repo.rootVersion = 2
        repo.timestampVersion = 1
        repo.publish()
        return (repo, dir, store)
    }

    /// The recovery with a new timestamp key, and with a key added to the timestamp role: then the old timestamp
    /// still verifies under the new root, and only the removal of the trusted timestamp lets the client take version
    /// 1 (without it, version 100 stays the rollback reference and the refresh fails).
    @Test(arguments: [false, true], [false, true])
    func fastForwardRecoveryAfterTimestampKeyRotation(_ atFlush: Bool, _ addingAKey: Bool) async throws {
        let (repo, dir, store) = try await fastForwardedThenRotated(atFlush: atFlush, addingAKey: addingAKey)
        try await makeUpdater(repo, dir: dir, store: store).refresh()
        #expect(trustedVersion(dir, "timestamp") == 1)
        #expect(trustedVersion(dir, "root") == 2)
    }

    /// The §5.3.11 removal is made at the rotating root, not after the loop: when the next root's answer is bad, the
    /// rotating root is kept (§5.3.8) and so is the removal; the next run starts from that root, sees no rotation,
    /// and can only recover because the old timestamp is already gone.
    @Test(arguments: [false, true]) func theRemovalStandsWhenTheRootUpdateFailsAfterTheRotation(_ atFlush: Bool)
        async throws
    {
        let (repo, dir, store) = try await fastForwardedThenRotated(atFlush: atFlush, addingAKey: true)
        repo.fetcher.put(m + "3.root.json", Array("{}".utf8))
        await #expect(throws: UpdaterError.self) { try await makeUpdater(repo, dir: dir, store: store).refresh() }
        #expect(trustedVersion(dir, "root") == 2)
        #expect(trustedVersion(dir, "timestamp") == nil)
        repo.rootVersion = 3  // the same keys as version 2
        repo.publish()
        try await makeUpdater(repo, dir: dir, store: store).refresh()
        #expect(trustedVersion(dir, "root") == 3)
        #expect(trustedVersion(dir, "timestamp") == 1)
    }

    @Test func expiredFinalRootStopsBeforeTimestamp() async throws {
        let repo = TestRepository()
        let dir = try makeClientDirectory(repo)
        repo.expires = "2020-01-01T00:00:00Z"
        repo.rootVersion = 2
        repo.publish()
        await #expect(throws: UpdaterError.self) { try await makeUpdater(repo, dir: dir).refresh() }
        #expect(trustedVersion(dir, "root") == 2)
        #expect(!repo.fetcher.requestedURLs.contains(m + "timestamp.json"))
    }

    /// A store that crashes while writing one file: the temp file is left half written and the
    /// rename never happens, as after a power loss.
    struct CrashingStore: MetadataStore {
        let directory: String
        let crashOn: String

        func load(_ name: String) throws -> [UInt8]? { try AtomicFile.read(path: directory + "/" + name) }

        func store(_ name: String, _ data: [UInt8]) throws {
            try AtomicFile.write(
                data,
                directory: directory,
                name: name,
                simulateCrashAfter: name == crashOn ? data.count / 2 : nil
            )
        }

        func remove(_ name: String) throws { try AtomicFile.remove(directory: directory, name: name) }
    }

    @Test(arguments: ["root.json", "timestamp.json", "snapshot.json", "targets.json"])
    func crashDuringMetadataWriteLeavesUsableTrustedState(_ crashOn: String) async throws {
        let repo = TestRepository()
        let dir = try makeClientDirectory(repo)
        try await makeUpdater(repo, dir: dir).refresh()
        repo.rootVersion += 1
        repo.bump(["targets"])
        let crashing = CrashingStore(directory: dir, crashOn: crashOn)
        await #expect(throws: UpdaterError.self) { try await makeUpdater(repo, dir: dir, store: crashing).refresh() }
        // Every trusted file is whole: it parses and the next run starts from it and succeeds.
        for role in ["root", "timestamp", "snapshot", "targets"] {
            #expect(trustedVersion(dir, role) != nil, "\(role) unreadable after crash")
        }
        try await makeUpdater(repo, dir: dir).refresh()
        #expect(trustedVersion(dir, "root") == 2)
        #expect(trustedVersion(dir, "targets") == 2)
    }
}

@Suite struct AtomicFileTests {
    @Test(arguments: [0, 1, 65535, 65536, 65537, 300_000])
    func readsBackWhatWasWritten(_ size: Int) throws {
        let repo = TestRepository()
        let dir = try makeClientDirectory(repo)
        var generator = SystemRandomNumberGenerator()
        let bytes = (0..<size).map { _ in UInt8.random(in: 0...255, using: &generator) }
        try AtomicFile.write(bytes, directory: dir, name: "blob")
        #expect(try AtomicFile.read(path: dir + "/blob") == bytes)
        #expect(try AtomicFile.read(path: dir + "/missing") == nil)
        try AtomicFile.remove(directory: dir, name: "blob")
        #expect(try AtomicFile.read(path: dir + "/blob") == nil)
    }

    /// The unsynced artifact directory still replaces files whole, under the percent-encoded target path, and leaves
    /// no temp file behind.
    @Test func theUnsyncedArtifactDirectoryWritesWholeFiles() throws {
        let dir = makeTempDirectory("artifacts")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let cache = UnsyncedArtifactDirectory(directory: dir)
        #expect(try cache.load(targetPath: "a/b.bin") == nil)
        try cache.store(targetPath: "a/b.bin", [1, 2, 3])
        try cache.store(targetPath: "a/b.bin", [4, 5])
        #expect(try cache.load(targetPath: "a/b.bin") == [4, 5])
        try cache.flush()
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["a%2Fb.bin"])
        #expect(try DirectoryStore(directory: dir).load(targetPath: "a/b.bin") == [4, 5])
    }
}

/// A `DirectoryStore` that writes when the update ends (`writesAtFlush`).
@Suite struct WritesAtFlushTests {
    func names(_ dir: String) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: dir).sorted()
    }

    /// Before the flush, the directory holds the old files only; after it, the new files and the journal.
    @Test func nothingReachesTheDirectoryBeforeTheFlushAndAllOfItAfter() throws {
        let dir = makeTempDirectory("atflush")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try AtomicFile.write([9], directory: dir, name: "old.json")
        try AtomicFile.write([8], directory: dir, name: "kept.json")
        let store = DirectoryStore(directory: dir, writesAtFlush: true)
        try store.store("a.json", [1])
        try store.store("b.json", [2, 2])
        try store.store("a.json", [1, 1, 1])  // the last write of a name wins
        try store.remove("old.json")
        try store.remove("b.json")
        try store.store("b.json", [3])  // a write after a removal stands
        try store.store("gone.json", [4])
        try store.remove("gone.json")  // a removal after a write stands
        // Loads see the pending changes; the directory does not.
        #expect(try store.load("a.json") == [1, 1, 1])
        #expect(try store.load("b.json") == [3])
        #expect(try store.load("old.json") == nil)
        #expect(try store.load("gone.json") == nil)
        #expect(try store.load("kept.json") == [8])
        #expect(try names(dir) == ["kept.json", "old.json"])
        try store.flush()
        #expect(try names(dir) == [Journal.name, "a.json", "b.json", "kept.json"])  // no temp file left
        #expect(try AtomicFile.read(path: dir + "/a.json") == [1, 1, 1])
        #expect(try AtomicFile.read(path: dir + "/b.json") == [3])
        try store.flush()  // nothing pending: nothing changes
        #expect(try names(dir) == [Journal.name, "a.json", "b.json", "kept.json"])
    }

    /// A store dropped without its flush leaves nothing behind.
    @Test func aStoreDroppedWithoutItsFlushLeavesNothing() throws {
        let dir = makeTempDirectory("atflush")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        func storeAndDrop() throws {
            let store = DirectoryStore(directory: dir, writesAtFlush: true)
            try store.store("a.json", [1])
        }
        try storeAndDrop()
        #expect(try names(dir) == [])
    }

    /// A name the journal could not replay (a path, `..`, the journal's own) is refused when it is stored.
    @Test(arguments: ["missing/x.json", "..", ".", "", Journal.name, "a\u{0}b"])
    func namesThatAreNotFileNamesAreRefused(_ name: String) throws {
        let dir = makeTempDirectory("atflush")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = DirectoryStore(directory: dir, writesAtFlush: true)
        #expect(throws: UpdaterError.self) { try store.store(name, [1]) }
        #expect(throws: UpdaterError.self) { try store.remove(name) }
        try store.flush()
        #expect(try names(dir) == [])
    }

    /// A flush that cannot reach its directory fails, and the files stay as they were.
    @Test func aFailedFlushThrowsAndLeavesEveryFileWhole() throws {
        let dir = makeTempDirectory("atflush")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try AtomicFile.write([9], directory: dir, name: "b.json")
        let store = DirectoryStore(directory: dir, writesAtFlush: true)
        try store.store("a.json", [1, 2, 3])
        try store.store("b.json", [5])
        #expect(rename(dir, dir + ".away") == 0)
        #expect(throws: UpdaterError.self) { try store.flush() }
        #expect(rename(dir + ".away", dir) == 0)
        #expect(try names(dir) == ["b.json"])
        #expect(try AtomicFile.read(path: dir + "/b.json") == [9])
        try store.flush()  // the failed changes were dropped, as a crash would drop them
        #expect(try AtomicFile.read(path: dir + "/b.json") == [9])
    }

    /// Temp files a killed writer left behind are removed once they are old, at the store's first use; a fresh one
    /// (another writer's, still at work) stays, and so does a role named `.tmp-x`.
    @Test func staleTempFilesAreSweptAtTheFirstUse() throws {
        let dir = makeTempDirectory("atflush")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try AtomicFile.write([1], directory: dir, name: ".tmp-old123")
        try AtomicFile.write([2], directory: dir, name: ".tmp-new123")
        try AtomicFile.write([3], directory: dir, name: ".tmp-x.json")  // a role named `.tmp-x`, not a temp file
        var times = [
            timespec(tv_sec: time(nil) - 3600, tv_nsec: 0), timespec(tv_sec: time(nil) - 3600, tv_nsec: 0),
        ]
        #expect(utimensat(AT_FDCWD, dir + "/.tmp-old123", &times, 0) == 0)
        #expect(utimensat(AT_FDCWD, dir + "/.tmp-x.json", &times, 0) == 0)
        let store = DirectoryStore(directory: dir, writesAtFlush: true)
        #expect(try store.load("a.json") == nil)
        #expect(try names(dir) == [".tmp-new123", ".tmp-x.json"])
        try store.store("a.json", [3])
        try store.flush()
        #expect(try names(dir) == [Journal.name, ".tmp-new123", ".tmp-x.json", "a.json"])
        #expect(try AtomicFile.read(path: dir + "/a.json") == [3])
    }

    /// An update whose files cannot be written fails, although every step before succeeded; the next one, able to
    /// write, starts from the old trusted files and succeeds.
    @Test func aRefreshWhoseFilesCannotBeWrittenFails() async throws {
        let repo = TestRepository()
        let dir = try makeClientDirectory(repo)
        let store = DirectoryStore(directory: dir, writesAtFlush: true)
        try await makeUpdater(repo, dir: dir, store: store).refresh()
        repo.bump(["targets"])
        let updater = try makeUpdater(repo, dir: dir, store: store)
        // The directory goes away after the updater read its root: the flush that ends the refresh finds the journal
        // it opened no longer in its place (checked under the lock), and fails before its commit point.
        let moved = dir + ".moved"
        #expect(rename(dir, moved) == 0)
        await #expect(throws: UpdaterError.self) { try await updater.refresh() }
        #expect(rename(moved, dir) == 0)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(trustedVersion(dir, "targets") == 1)
        try await makeUpdater(repo, dir: dir, store: store).refresh()
        #expect(trustedVersion(dir, "targets") == 2)
    }
}

/// An update's writes are made durable (`flush`) when it ends, also when it fails.
@Suite struct DeferredDirectorySyncTests {
    final class Recording: MetadataStore, @unchecked Sendable {
        let inner: DirectoryStore
        let events = Mutex<[String]>([])

        /// `flush` throws (after recording "flush failed") while this is set.
        let failingFlush = Mutex(false)

        init(_ directory: String) { inner = DirectoryStore(directory: directory, writesAtFlush: true) }

        func load(_ name: String) throws -> [UInt8]? { try inner.load(name) }
        func store(_ name: String, _ data: [UInt8]) throws {
            try inner.store(name, data)
            events.withLock { $0.append("store " + name) }
        }
        func remove(_ name: String) throws {
            try inner.remove(name)
            events.withLock { $0.append("remove " + name) }
        }
        func flush() throws {
            if failingFlush.withLock({ $0 }) {
                // The directory goes away under the commit, which fails as a real one does and drops what it had.
                let moved = inner.directory + ".away"
                guard rename(inner.directory, moved) == 0 else { throw UpdaterError.storage("test: cannot move") }
                defer { rename(moved, inner.directory) }
                do {
                    try inner.flush()
                } catch {
                    events.withLock { $0.append("flush failed") }
                    throw error
                }
                throw UpdaterError.storage("test: the flush did not fail")
            }
            try inner.flush()
            events.withLock { $0.append("flush") }
        }
    }

    /// A repository whose top-level targets lists `a.txt`, a client directory for it, and a recording store on it.
    func repositoryWithATarget() throws -> (TestRepository, String, Recording) {
        let repo = TestRepository()
        repo.roles["targets"]?.targets = ["a.txt": Array("hello".utf8)]
        repo.publish()
        let dir = try makeClientDirectory(repo)
        return (repo, dir, Recording(dir))
    }

    @Test func anUpdateEndsWithTheFlushWhetherItSucceedsOrFails() async throws {
        let repo = TestRepository()
        let dir = try makeClientDirectory(repo)
        let store = Recording(dir)
        try await makeUpdater(repo, dir: dir, store: store).refresh()
        let first = store.events.withLock { $0 }
        #expect(first.filter { $0.hasPrefix("store") }.count == 3, "\(first)")  // timestamp, snapshot, targets
        #expect(first.last == "flush", "\(first)")
        #expect(try AtomicFile.read(path: dir + "/targets.json") != nil)

        // A new timestamp and a snapshot that no longer matches it: the timestamp is kept, the refresh fails, and
        // the timestamp's rename is still made durable.
        store.events.withLock { $0 = [] }
        repo.bump(["targets"])
        repo.fetcher.put(
            TestRepository.metadataURL + "\(repo.snapshotVersion).snapshot.json", Array("{}".utf8))
        await #expect(throws: UpdaterError.self) { try await makeUpdater(repo, dir: dir, store: store).refresh() }
        let second = store.events.withLock { $0 }
        #expect(second.first == "store timestamp.json", "\(second)")
        #expect(second.last == "flush", "\(second)")
    }

    /// A refresh that verified everything but whose files were not made durable fails; the updater then refuses to
    /// look anything up on what it trusts (a restart would not know it); a new updater starts from the store.
    @Test func aRefreshWhoseFlushFailsFailsAndItsUpdaterStops() async throws {
        let (repo, dir, store) = try repositoryWithATarget()
        store.failingFlush.withLock { $0 = true }
        let updater = try makeUpdater(repo, dir: dir, store: store)
        await #expect(throws: UpdaterError.self) { try await updater.refresh() }
        #expect(store.events.withLock { $0 }.last == "flush failed")
        store.failingFlush.withLock { $0 = false }
        do {
            _ = try await updater.targetInfo(for: "a.txt")
            Issue.record("a lookup on an updater whose store failed must fail")
        } catch UpdaterError.storage(let reason) {
            #expect(reason.contains("earlier write"), "\(reason)")
        }
        #expect(trustedVersion(dir, "timestamp") == nil)
        #expect(try await makeUpdater(repo, dir: dir, store: store).targetInfo(for: "a.txt") != nil)
        #expect(trustedVersion(dir, "timestamp") == 1)
    }

    /// An accepted root is durable before the next answer is read (TUF §5.3.8), also with a store that writes at
    /// its flush: the flush runs while the next request travels.
    @Test func anAcceptedRootIsFlushedBeforeTheNextAnswerIsRead() async throws {
        let repo = TestRepository()
        let dir = try makeClientDirectory(repo)
        repo.rootVersion = 2
        repo.publish()
        let store = Recording(dir)
        let updater = try Updater(
            metadataBaseURL: TestRepository.metadataURL, metadataStore: store,
            fetcher: LoggingFetcher(inner: repo.fetcher, store: store), referenceTime: testNow)
        try await updater.refresh()
        let m = TestRepository.metadataURL
        let events = store.events.withLock { $0 }
        #expect(
            Array(events.prefix(5)) == [
                "fetch \(m)2.root.json", "prepare \(m)3.root.json", "store root.json", "flush",
                "fetch \(m)3.root.json",
            ], "\(events)")
        #expect(trustedVersion(dir, "root") == 2)
    }

    /// A fetcher that logs `prepare` and `fetch` into the store's log.
    struct LoggingFetcher: Fetcher {
        let inner: MemoryFetcher
        let store: Recording

        func prepare(_ url: String) async { store.events.withLock { $0.append("prepare " + url) } }
        func fetch(_ url: String, maxBytes: Int) async throws -> [UInt8] {
            store.events.withLock { $0.append("fetch " + url) }
            return try await inner.fetch(url, maxBytes: maxBytes)
        }
    }

    /// Each accepted file is written after the next request is sent (so that its fsync overlaps the server's answer)
    /// and before that answer is read; the repository sees the same requests in the same order; the last file is
    /// written before the method returns.
    @Test func acceptedFilesAreWrittenWhileTheNextRequestTravels() async throws {
        let (repo, dir, store) = try repositoryWithATarget()
        let updater = try Updater(
            metadataBaseURL: TestRepository.metadataURL, metadataStore: store,
            fetcher: LoggingFetcher(inner: repo.fetcher, store: store), targetBaseURL: TestRepository.targetsURL,
            referenceTime: testNow)
        let info = try #require(try await updater.targetInfo(for: "a.txt"))
        let m = TestRepository.metadataURL
        #expect(
            store.events.withLock { $0 } == [
                "fetch \(m)2.root.json",
                "fetch \(m)timestamp.json",
                "prepare \(m)1.snapshot.json", "store timestamp.json", "fetch \(m)1.snapshot.json",
                "prepare \(m)1.targets.json", "store snapshot.json", "fetch \(m)1.targets.json",
                "store targets.json", "flush",  // once, when the lookup ends
            ])
        #expect(
            repo.fetcher.requestedURLs
                == ["2.root.json", "timestamp.json", "1.snapshot.json", "1.targets.json"].map { m + $0 })
        #expect(try await updater.downloadTarget(info) == Array("hello".utf8))

        // Nothing new: the timestamp served is the stored one, byte for byte; nothing is written.
        store.events.withLock { $0 = [] }
        try await makeUpdater(repo, dir: dir, store: store).refresh()
        #expect(store.events.withLock { $0 } == ["flush"])
        // The same bytes with a broken signature, stored and served: refused, not taken as "the stored copy".
        var tampered = try #require(try AtomicFile.read(path: dir + "/timestamp.json"))
        let sig = try #require(tampered.firstRange(of: Array("\"sig\":\"".utf8)))
        tampered[sig.upperBound] = tampered[sig.upperBound] == UInt8(ascii: "0") ? UInt8(ascii: "1") : UInt8(ascii: "0")
        try AtomicFile.write(tampered, directory: dir, name: "timestamp.json")
        repo.fetcher.put(m + "timestamp.json", tampered)
        await #expect(throws: UpdaterError.self) { try await makeUpdater(repo, dir: dir).refresh() }
    }

    /// `fetchTarget` through a delegated role: the role is written, and the store flushed, while the artifact's
    /// request travels (not also when the top-level refresh ends; the flush when the call ends finds nothing left);
    /// a second call finds the cached copy and fetches nothing; an unknown path is nil.
    @Test func aTargetsDelegatedRoleIsWrittenWhileTheArtifactsRequestTravels() async throws {
        let repo = TestRepository()
        repo.addDelegation(from: "targets", to: "child")
        repo.roles["child"]?.targets = ["a.txt": Array("hello".utf8)]
        repo.publish()
        let dir = try makeClientDirectory(repo)
        let store = Recording(dir)
        // Artifacts apart from the journaled metadata (a plain store refuses a journaled directory).
        let artifacts = makeTempDirectory("artifacts")
        defer { try? FileManager.default.removeItem(atPath: artifacts) }
        func updater() throws -> Updater {
            try Updater(
                metadataBaseURL: TestRepository.metadataURL, metadataStore: store,
                fetcher: LoggingFetcher(inner: repo.fetcher, store: store), targetBaseURL: TestRepository.targetsURL,
                artifactStore: DirectoryStore(directory: artifacts), referenceTime: testNow)
        }
        let first = try #require(try await updater().fetchTarget("a.txt"))
        #expect(first.downloaded)
        let m = TestRepository.metadataURL
        let events = store.events.withLock { $0 }
        let artifact = try #require(events.first { $0.hasPrefix("prepare " + TestRepository.targetsURL) })
        #expect(
            events == [
                "fetch \(m)2.root.json", "fetch \(m)timestamp.json",
                "prepare \(m)1.snapshot.json", "store timestamp.json", "fetch \(m)1.snapshot.json",
                "prepare \(m)1.targets.json", "store snapshot.json", "fetch \(m)1.targets.json",
                "prepare \(m)1.child.json", "store targets.json", "fetch \(m)1.child.json",
                artifact, "store child.json", "flush", "fetch" + artifact.dropFirst("prepare".count), "flush",
            ], "\(events)")
        #expect(try AtomicFile.read(path: dir + "/child.json") != nil)

        store.events.withLock { $0 = [] }
        let again = try #require(try await updater().fetchTarget("a.txt"))
        #expect(!again.downloaded)
        #expect(store.events.withLock { $0 }.allSatisfy { !$0.hasPrefix("fetch " + TestRepository.targetsURL) })
        #expect(try await updater().fetchTarget("missing.txt") == nil)

        // Two targets through one updater (the command line's several --target-name); the second one's bytes are
        // not what the new role lists: refused, and the role accepted on the way is on disk all the same.
        repo.roles["child"]?.targets["b.txt"] = Array("world".utf8)
        repo.bump(["child"])
        let served = try #require(repo.fetcher.files.withLock { $0.keys.first { $0.hasSuffix(".b.txt") } })
        repo.fetcher.put(served, Array("WORLD".utf8))
        let both = try updater()
        #expect(try await both.fetchTarget("a.txt")?.downloaded == false)
        await #expect(throws: UpdaterError.self) { _ = try await both.fetchTarget("b.txt") }
        #expect(trustedVersion(dir, "child") == 2)
        #expect(store.events.withLock { $0 }.last == "flush")
    }
}
