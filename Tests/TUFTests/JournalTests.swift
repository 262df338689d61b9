import Crypto
import Foundation
import Testing

@testable import TUFClient

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// The journal of a `DirectoryStore` that writes at its flush: what a crash at each point leaves, what the next run
/// makes of it, and what it leaves alone.
@Suite struct JournalTests {
    func names(_ dir: String) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: dir).sorted()
    }

    func file(_ dir: String, _ name: String) throws -> [UInt8]? {
        try AtomicFile.read(path: dir + "/" + name)
    }

    /// What a power cut may leave of a file renamed into place but never fsynced: nothing, an empty file, or zeros.
    enum Loss { case missing, empty, zeros }

    func lose(_ dir: String, _ name: String, _ loss: Loss) throws {
        switch loss {
        case .missing: _ = unlink(dir + "/" + name)
        case .empty: _ = truncate(dir + "/" + name, 0)
        case .zeros:
            let size = try file(dir, name)?.count ?? 0
            try AtomicFile.write([UInt8](repeating: 0, count: size), directory: dir, name: name)
        }
    }

    func store(_ dir: String) -> DirectoryStore { DirectoryStore(directory: dir, writesAtFlush: true) }

    func journalBytes(_ dir: String, at offset: Int, count: Int) throws -> [UInt8] {
        let fd = open(dir + "/" + Journal.name, O_RDONLY)
        try #require(fd >= 0)
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: count)
        #expect(pread(fd, &bytes, count, off_t(offset)) == count)
        return bytes
    }

    @Test func aRecordRoundTripsAndAnyDamageIsRefused() throws {
        let record = JournalRecord(
            cycle: 7, sequence: 3,
            changes: [
                .init(name: "root.json", bytes: Array("{\"x\":1}".utf8), before: Array(repeating: 5, count: 32)),
                .init(name: "timestamp.json", bytes: nil), .init(name: "e.json", bytes: []),
            ])
        let bytes = record.encoded()
        #expect(JournalRecord.parse(bytes[...]) == record)
        #expect(JournalRecord.isWhole(bytes[...]))
        #expect(bytes.count == JournalRecord.headerSize + JournalRecord.bodyLength(record.changes))
        func accepted(_ bytes: ArraySlice<UInt8>) -> Bool {
            JournalRecord.parse(bytes) != nil && JournalRecord.isWhole(bytes)
        }
        // Every single flipped byte and every truncation is refused (the digest covers the header and the body).
        for i in bytes.indices {
            var damaged = bytes
            damaged[i] ^= 0x01
            #expect(!accepted(damaged[...]), "byte \(i)")
        }
        for n in 0..<bytes.count { #expect(!accepted(bytes[..<n]), "length \(n)") }
        // A whole record with a name the store could not have written (a path) is refused too.
        let path = JournalRecord(cycle: 7, sequence: 3, changes: [.init(name: "../root.json", bytes: [1])])
        #expect(JournalRecord.parse(path.encoded()[...]) == nil)
    }

    /// Hostile bytes where a record should be (lengths running past the end, huge counts) are parsed within bounds
    /// (a read out of bounds would trap) and never yield a name the store could not have written.
    @Test func garbageIsNeverARecord() {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            var bytes =
                JournalRecord.magic
                + (0..<Int.random(in: 56...300, using: &generator)).map { _ in
                    UInt8.random(in: 0...255, using: &generator)
                }
            // Sometimes a body length that fits, so that the entries are parsed.
            if Bool.random(using: &generator) {
                let length = UInt64(bytes.count - JournalRecord.headerSize)
                for i in 0..<8 { bytes[24 + i] = UInt8(truncatingIfNeeded: length >> (8 * UInt64(i))) }
            }
            if let record = JournalRecord.parse(bytes[...]) {
                #expect(record.changes.allSatisfy { Journal.isStorable($0.name) })
            }
        }
    }

    /// A process killed after its commit point, before it wrote the files: the next store on the directory writes
    /// them, and TUF §5.3.11's removal of the timestamp is part of the same record as the new root.
    @Test func aCommitKilledBeforeItsFilesAreWrittenIsReplayed() throws {
        let dir = makeTempDirectory("journal")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let first = store(dir)
        try first.initialize(root: [1])
        try first.store("timestamp.json", [1])
        try first.finishUpdate()
        let killed = store(dir)
        try killed.store("root.json", [2])
        try killed.remove("timestamp.json")
        try killed.store("snapshot.json", [2])
        try killed.flushKilledAtItsCommitPoint()
        #expect(try file(dir, "root.json") == [1])
        #expect(try file(dir, "timestamp.json") == [1])
        let next = store(dir)
        #expect(try next.load("root.json") == [2])
        #expect(try names(dir) == [Journal.name, "root.json", "snapshot.json"])
        #expect(try file(dir, "snapshot.json") == [2])
        // And the log goes on from there.
        try next.store("timestamp.json", [3])
        try next.finishUpdate()
        try lose(dir, "root.json", .empty)
        try lose(dir, "timestamp.json", .missing)
        #expect(try store(dir).load("timestamp.json") == [3])
        #expect(try file(dir, "root.json") == [2])
    }

    /// After a power cut, every file the log names is put back whole, whatever the cut left of it (an older state,
    /// nothing, an empty file, zeros); a file the log does not name is left alone.
    @Test(arguments: [Loss.missing, .empty, .zeros]) func everyFileTheLogNamesIsRestored(_ loss: Loss) throws {
        let dir = makeTempDirectory("journal")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try AtomicFile.write([7], directory: dir, name: "other.json")
        let s = store(dir)
        for version in 1...5 {
            try s.store("timestamp.json", [UInt8(version)])
            if version % 2 == 1 { try s.store("snapshot.json", [UInt8(version), 0]) }
            try s.finishUpdate()
        }
        try lose(dir, "timestamp.json", loss)
        try AtomicFile.write([3, 0], directory: dir, name: "snapshot.json")  // a rename lost: the state before
        try lose(dir, "other.json", .missing)
        let next = store(dir)
        #expect(try next.load("timestamp.json") == [5])
        #expect(try next.load("snapshot.json") == [5, 0])
        #expect(try next.load("other.json") == nil)
        #expect(try file(dir, "timestamp.json") == [5])  // on disk, not only in what the store serves
        #expect(try file(dir, "snapshot.json") == [5, 0])
    }

    /// A file the journal cannot account for (edited by hand, or damaged past what a lost write leaves) is neither
    /// trusted nor overwritten: the store stops with an error naming it, until `init` starts the directory afresh.
    /// What a lost write leaves (the state before, or a part of the start of the new bytes) is repaired.
    @Test func whatTheJournalCannotAccountForIsAnErrorUntilInit() throws {
        let dir = makeTempDirectory("journal")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try AtomicFile.write([1], directory: dir, name: "root.json")
        try AtomicFile.write([1], directory: dir, name: "snapshot.json")
        let s = store(dir)
        try s.store("root.json", [2, 2, 2])
        try s.store("snapshot.json", [2])
        try s.finishUpdate()
        // Lost writes: the state before, and a part of the start of the new bytes (a file extended block by block).
        try AtomicFile.write([1], directory: dir, name: "root.json")
        #expect(try store(dir).load("root.json") == [2, 2, 2])
        try AtomicFile.write([2, 2], directory: dir, name: "root.json")
        #expect(try store(dir).load("root.json") == [2, 2, 2])
        #expect(try file(dir, "root.json") == [2, 2, 2])
        // By hand: new bytes, and the removal of a file that existed before the journal wrote it.
        try AtomicFile.write([9, 9], directory: dir, name: "root.json")
        #expect(throws: UpdaterError.self) { try store(dir).load("root.json") }
        #expect(try file(dir, "root.json") == [9, 9])
        try AtomicFile.write([2, 2, 2], directory: dir, name: "root.json")
        #expect(unlink(dir + "/snapshot.json") == 0)
        #expect(throws: UpdaterError.self) { try store(dir).load("root.json") }
        #expect(try file(dir, "snapshot.json") == nil)
        // `init` makes the directory its own again: the new log names only the root.
        try store(dir).initialize(root: [3])
        #expect(try store(dir).load("root.json") == [3])
        #expect(try store(dir).load("snapshot.json") == nil)
    }

    /// A store that could not read the directory again (here: a file edited by hand, found when another store's
    /// commit made it read the log afresh) serves nothing from it, then or at its next use.
    @Test func aStoreThatCannotReadTheDirectoryServesNothingFromIt() throws {
        let dir = makeTempDirectory("journal")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let a = store(dir)
        try a.store("root.json", [1])
        try a.finishUpdate()
        let b = store(dir)
        try b.store("timestamp.json", [1])
        try b.finishUpdate()
        try AtomicFile.write([9], directory: dir, name: "root.json")
        #expect(throws: UpdaterError.self) { try a.load("root.json") }
        #expect(throws: UpdaterError.self) { try a.load("root.json") }
    }

    /// `init` makes what the log accounts for durable, then starts a new cycle with the new root: nothing committed
    /// before is replayed afterwards (a file the old log named is the directory's own again).
    @Test func initStartsTheJournalAfresh() throws {
        let dir = makeTempDirectory("journal")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let s = store(dir)
        try s.initialize(root: [1])
        try s.store("timestamp.json", [1])
        try s.finishUpdate()
        try lose(dir, "timestamp.json", .empty)  // a lost write: init repairs it before it starts afresh
        try store(dir).initialize(root: [2])
        #expect(try file(dir, "timestamp.json") == [1])
        try AtomicFile.write([7], directory: dir, name: "timestamp.json")  // the new log does not name it
        #expect(try store(dir).load("timestamp.json") == [7])
        #expect(try store(dir).load("root.json") == [2])
    }

    /// A record torn by a crash during its write (its bytes partly on disk) is not replayed: the state is the one
    /// before it, and the next commit takes its place.
    @Test func aTornRecordIsNotReplayed() throws {
        let dir = makeTempDirectory("journal")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let s = store(dir)
        try s.store("timestamp.json", [1])
        try s.finishUpdate()
        // The next record, all but its last byte written where it would go (the first took one block).
        let header = try journalBytes(dir, at: 0, count: 64)
        let torn = JournalRecord(
            cycle: JournalRecord.read(header[...], at: 8, 8), sequence: 1,
            changes: [.init(name: "timestamp.json", bytes: [2], before: Array(SHA256.hash(data: [1])))]
        ).encoded()
        let fd = open(dir + "/" + Journal.name, O_RDWR)
        try #require(fd >= 0)
        #expect(pwrite(fd, torn, torn.count - 1, 4096) == torn.count - 1)
        close(fd)
        try lose(dir, "timestamp.json", .empty)
        let next = store(dir)
        #expect(try next.load("timestamp.json") == [1])
        try next.store("timestamp.json", [3])
        try next.finishUpdate()
        try lose(dir, "timestamp.json", .empty)
        #expect(try store(dir).load("timestamp.json") == [3])
        // The same record whole is replayed: the torn one was refused for its digest, not for where it was.
        let whole = store(dir)
        try whole.store("timestamp.json", [4])
        try whole.flushKilledAtItsCommitPoint()
        #expect(try store(dir).load("timestamp.json") == [4])
    }

    /// When the log is full, a checkpoint makes its files durable and a new cycle starts at the log's start. The
    /// older cycle's records further on are never replayed, even the one right after the new cycle's first record,
    /// with the very sequence number that would follow it (only the cycle differs).
    @Test func recordsOfAnOlderCycleAreNeverReplayed() throws {
        let dir = makeTempDirectory("journal")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let s = store(dir)
        let filler = [UInt8](repeating: 0x41, count: 300_000)
        try s.store("targets.json", filler + [1])
        try s.finishUpdate()  // sequence 0 at the log's start, 74 blocks
        try s.store("snapshot.json", [1])
        try s.finishUpdate()  // sequence 1, right after it
        try s.store("snapshot.json", [2])
        try s.finishUpdate()
        try s.store("big.json", filler)
        try s.finishUpdate()
        try s.store("targets.json", filler + [2])
        try s.finishUpdate()
        // The sixth does not fit: a checkpoint, and a record of the first one's blocks at the log's start.
        let firstCycle = JournalRecord.read(try journalBytes(dir, at: 0, count: 64)[...], at: 8, 8)
        try s.store("targets.json", filler + [3])
        try s.finishUpdate()
        let header = try journalBytes(dir, at: 0, count: 64)
        #expect(JournalRecord.read(header[...], at: 8, 8) != firstCycle)
        #expect(JournalRecord.read(try journalBytes(dir, at: 303_104, count: 64)[...], at: 16, 8) == 1)
        try lose(dir, "targets.json", .empty)
        let next = store(dir)
        #expect(try next.load("targets.json") == filler + [3])  // not the older cycle's filler + [2]
        #expect(try next.load("snapshot.json") == [2])
        #expect(try next.load("big.json") == filler)
    }

    /// An update larger than the whole log is written file by file, each fsynced, after an empty record started a
    /// new cycle (so no older record is replayed over it).
    @Test func anUpdateLargerThanTheLogIsWrittenFileByFile() throws {
        let dir = makeTempDirectory("journal")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let s = store(dir)
        try s.store("targets.json", [1])
        try s.finishUpdate()
        let huge = [UInt8](repeating: 0x42, count: Journal.logSize + 1)
        try s.store("targets.json", huge)
        try s.store("snapshot.json", [2])
        try s.finishUpdate()
        #expect(try file(dir, "targets.json") == huge)
        // What a lost write would leave: the older record (targets [1]) would repair it; the log no longer has it.
        try lose(dir, "targets.json", .empty)
        let next = store(dir)
        #expect(try next.load("targets.json") == [])
        #expect(try next.load("snapshot.json") == [2])
    }

    /// Two stores on one directory (two processes): a store whose update was decided on metadata another store has
    /// since replaced is refused (python-tuf would let the later write win, a rollback); it reads the directory
    /// again and its next update goes through.
    @Test func anUpdateDecidedOnOlderMetadataIsRefused() throws {
        let dir = makeTempDirectory("journal")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let a = store(dir)
        try a.store("timestamp.json", [5])
        try a.finishUpdate()
        let b = store(dir)
        #expect(try b.load("timestamp.json") == [5])
        try a.store("timestamp.json", [8])
        try a.finishUpdate()
        try b.store("timestamp.json", [6])
        #expect(throws: UpdaterError.self) { try b.finishUpdate() }
        #expect(try file(dir, "timestamp.json") == [8])
        #expect(try b.load("timestamp.json") == [8])
        try b.store("snapshot.json", [9])
        try b.finishUpdate()
        // A store's next use after its flush reads what others committed meanwhile: no conflict.
        let big = [UInt8](repeating: 1, count: 600_000)
        try a.store("big.json", big)
        try a.finishUpdate()
        // Lookups made before another store's commit are stale too: a flush with nothing to write is refused.
        #expect(try b.load("big.json") == big)
        try a.store("timestamp.json", [10])
        try a.finishUpdate()
        #expect(throws: UpdaterError.self) { try b.finishUpdate() }
        // And a checkpoint by one store (a new cycle at the log's start) is seen by the other.
        #expect(try b.load("timestamp.json") == [10])
        try a.store("big.json", big + [2])
        try a.finishUpdate()  // does not fit: a checkpoint
        try b.store("c.json", [1])
        #expect(throws: UpdaterError.self) { try b.finishUpdate() }
        try lose(dir, "big.json", .empty)
        #expect(try store(dir).load("big.json") == big + [2])
    }

    /// A flush within an update (after an accepted root, while an artifact's request travels) keeps the update's
    /// view: another process's commit after it is not absorbed, and the update's last flush is refused even with
    /// nothing left to write.
    @Test func aFlushWithinAnUpdateKeepsItsView() throws {
        let dir = makeTempDirectory("journal")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let a = store(dir)
        let b = store(dir)
        try a.store("root.json", [1])
        try a.finishUpdate()
        #expect(try b.load("root.json") == [1])
        try b.store("root.json", [2])
        try b.flush()  // within b's update
        try a.store("root.json", [3])
        try a.finishUpdate()
        #expect(try b.load("timestamp.json") == nil)  // b's next use within its update: no re-read
        #expect(throws: UpdaterError.self) { try b.finishUpdate() }
        #expect(try b.load("root.json") == [3])  // the next update reads afresh
    }

    /// What a lost write leaves when the file's size reached the disk before all of its blocks: each block the
    /// state's own or zeros, in any order.
    @Test func blocksOfZerosInALostWriteAreRepaired() throws {
        let dir = makeTempDirectory("journal")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let bytes = (0..<10_000).map { UInt8(truncatingIfNeeded: $0 % 251 + 1) }
        let s = store(dir)
        try s.store("targets.json", bytes)
        try s.finishUpdate()
        let holes = [
            Array(bytes[..<4096]) + [UInt8](repeating: 0, count: bytes.count - 4096),
            [UInt8](repeating: 0, count: 4096) + Array(bytes[4096...]),
            Array(bytes[..<4096]) + [UInt8](repeating: 0, count: 4096) + Array(bytes[8192...]),
        ]
        for damaged in holes {
            try AtomicFile.write(damaged, directory: dir, name: "targets.json")
            #expect(try store(dir).load("targets.json") == bytes)
            #expect(try file(dir, "targets.json") == bytes)
        }
        // One changed byte that is not zero is not what a lost write leaves.
        var edited = bytes
        edited[5000] = 0xFF
        try AtomicFile.write(edited, directory: dir, name: "targets.json")
        #expect(throws: UpdaterError.self) { try store(dir).load("targets.json") }
    }

    /// A directory without a journal (made by an older version, or by copying a root in): a store that read it then
    /// is refused once another store has committed, which made the journal; with something to write or without.
    @Test func aCommitIntoADirectoryAnotherStoreJournaledMeanwhileIsRefused() throws {
        let dir = makeTempDirectory("journal")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try AtomicFile.write([1], directory: dir, name: "root.json")
        let a = store(dir)
        let b = store(dir)
        let c = store(dir)
        for s in [a, b, c] { #expect(try s.load("root.json") == [1]) }
        try a.store("timestamp.json", [8])
        try a.finishUpdate()
        try b.store("timestamp.json", [6])
        #expect(throws: UpdaterError.self) { try b.finishUpdate() }
        #expect(throws: UpdaterError.self) { try c.finishUpdate() }
        #expect(try file(dir, "timestamp.json") == [8])
        #expect(try b.load("timestamp.json") == [8])
    }

    /// A store that writes each file at once refuses a journaled directory: a replay could put an older file back
    /// over what it wrote.
    @Test func theDefaultStoreRefusesAJournaledDirectory() throws {
        let dir = makeTempDirectory("journal")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let plain = DirectoryStore(directory: dir)
        try plain.store("root.json", [1])
        let s = store(dir)
        try s.store("timestamp.json", [1])
        try s.finishUpdate()
        #expect(throws: UpdaterError.self) { try plain.store("root.json", [2]) }
        #expect(throws: UpdaterError.self) { try plain.remove("timestamp.json") }
        #expect(try plain.load("root.json") == [1])
    }

    /// A damaged journal (cut short, even by one block) is an error, not a silent fresh start; `init` replaces it.
    @Test func aJournalCutShortIsAnErrorUntilInit() throws {
        let dir = makeTempDirectory("journal")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let s = store(dir)
        try s.store("root.json", [1])
        try s.finishUpdate()
        #expect(truncate(dir + "/" + Journal.name, off_t(Journal.logSize - 4096)) == 0)
        #expect(throws: UpdaterError.self) { try store(dir).load("root.json") }
        try store(dir).initialize(root: [2])
        #expect(try store(dir).load("root.json") == [2])
    }

    /// A journal replaced or removed under a store is noticed: the store stops using it.
    @Test func aJournalReplacedUnderAStoreIsNotWrittenTo() throws {
        let dir = makeTempDirectory("journal")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let s = store(dir)
        try s.store("a.json", [1])
        try s.finishUpdate()
        #expect(unlink(dir + "/" + Journal.name) == 0)
        #expect(throws: UpdaterError.self) {
            try s.store("a.json", [2])
            try s.finishUpdate()
        }
        #expect(try file(dir, "a.json") == [1])
    }
}
