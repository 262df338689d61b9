import Crypto

#if canImport(Glibc)
    import Glibc
    private let systemRead = Glibc.read
    private func openFile(_ path: String, _ flags: Int32) -> Int32 { Glibc.open(path, flags) }
#elseif canImport(Darwin)
    import Darwin
    private let systemRead = Darwin.read
    private func openFile(_ path: String, _ flags: Int32) -> Int32 { Darwin.open(path, flags) }
#endif

/// One commit of a journaled `DirectoryStore`: every change of one flush, made durable together by one write and one
/// `fdatasync` of the journal (`Journal`). Pure: encoding, parsing and checking, no file.
///
/// Layout (little-endian): magic `BWTUFJ02` (8 bytes), cycle (8), sequence (8), body length (8), SHA-256 (32) of the
/// first 32 bytes and the body; then the body, one entry per change: kind (1 byte: 1 write, 2 remove), what the file
/// held before (1 byte: 0 nothing, 1 the SHA-256 that follows), name length (2), data length (4), [that SHA-256 (32)],
/// the name, the data. The digest tells a whole record from a torn one (a crash during its write); the cycle and
/// sequence tell a record of this run of records from a stale one left further on in the file. It does not
/// authenticate: the journal is as trusted as the files beside it.
struct JournalRecord: Equatable {
    struct Change: Equatable {
        let name: String
        /// The new bytes, or nil for a removal.
        let bytes: [UInt8]?
        /// The SHA-256 of what the file held when the change was committed, or nil when there was no file: after a
        /// crash, a file still holding that (a rename that did not reach the disk) is the journal's to repair; a
        /// file holding anything the journal never saw was written by someone else and is left alone.
        var before: [UInt8]? = nil
    }

    static let magic = Array("BWTUFJ02".utf8)
    static let headerSize = 64

    var cycle: UInt64
    var sequence: UInt64
    var changes: [Change]

    static func bodyLength(_ changes: [Change]) -> Int {
        changes.reduce(0) { $0 + 8 + ($1.before == nil ? 0 : 32) + $1.name.utf8.count + ($1.bytes?.count ?? 0) }
    }

    func encoded() -> [UInt8] {
        let length = Self.bodyLength(changes)
        var out = Self.magic
        out.reserveCapacity(Self.headerSize + length)
        Self.append(cycle, 8, to: &out)
        Self.append(sequence, 8, to: &out)
        Self.append(UInt64(length), 8, to: &out)
        out += [UInt8](repeating: 0, count: 32)
        for change in changes {
            out.append(change.bytes == nil ? 2 : 1)
            out.append(change.before == nil ? 0 : 1)
            Self.append(UInt64(change.name.utf8.count), 2, to: &out)
            Self.append(UInt64(change.bytes?.count ?? 0), 4, to: &out)
            if let before = change.before { out += before }
            out += change.name.utf8
            if let bytes = change.bytes { out += bytes }
        }
        let digest = Self.digest(out[...])
        out.replaceSubrange(32..<64, with: digest)
        return out
    }

    /// The SHA-256 over a record's first 32 bytes and its body.
    static func digest(_ record: ArraySlice<UInt8>) -> [UInt8] {
        var hash = SHA256()
        let start = record.startIndex
        hash.update(data: record[start..<(start + 32)])
        hash.update(data: record[(start + headerSize)...])
        return Array(hash.finalize())
    }

    /// The header's cycle, sequence and body length, when it starts with the magic (nothing else checked).
    static func header(_ bytes: ArraySlice<UInt8>) -> (cycle: UInt64, sequence: UInt64, length: UInt64)? {
        guard bytes.count >= headerSize, bytes.prefix(8).elementsEqual(magic) else { return nil }
        return (read(bytes, at: 8, 8), read(bytes, at: 16, 8), read(bytes, at: 24, 8))
    }

    /// Whether `bytes` (exactly one record) carries its own digest.
    static func isWhole(_ bytes: ArraySlice<UInt8>) -> Bool {
        guard bytes.count >= headerSize else { return false }
        let start = bytes.startIndex
        return bytes[(start + 32)..<(start + 64)].elementsEqual(digest(bytes))
    }

    /// The record in `bytes` (exactly its header and body), its digest not checked (`isWhole`); nil when an entry
    /// runs past the body or names a file the store could not have written (`Journal.isStorable`).
    static func parse(_ bytes: ArraySlice<UInt8>) -> JournalRecord? {
        guard let (cycle, sequence, length) = header(bytes), UInt64(bytes.count - headerSize) == length else {
            return nil
        }
        var changes: [Change] = []
        var at = bytes.startIndex + headerSize
        let end = bytes.endIndex
        while at < end {
            guard end - at >= 8 else { return nil }
            let kind = bytes[at]
            let hasBefore = bytes[at + 1]
            let nameLength = Int(read(bytes, at: at + 2 - bytes.startIndex, 2))
            let dataLength = read(bytes, at: at + 4 - bytes.startIndex, 4)
            at += 8
            guard kind == 1 || kind == 2, hasBefore <= 1, kind == 1 || dataLength == 0 else { return nil }
            let beforeLength = hasBefore == 1 ? 32 : 0
            guard UInt64(end - at) >= UInt64(beforeLength + nameLength) + dataLength else { return nil }
            let before = hasBefore == 1 ? Array(bytes[at..<(at + 32)]) : nil
            at += beforeLength
            let nameBytes = bytes[at..<(at + nameLength)]
            let name = String(decoding: nameBytes, as: UTF8.self)
            guard Journal.isStorable(name), name.utf8.elementsEqual(nameBytes) else { return nil }
            at += nameLength
            let data = Int(dataLength)
            changes.append(Change(name: name, bytes: kind == 1 ? Array(bytes[at..<(at + data)]) : nil, before: before))
            at += data
        }
        return JournalRecord(cycle: cycle, sequence: sequence, changes: changes)
    }

    static func append(_ value: UInt64, _ count: Int, to out: inout [UInt8]) {
        for i in 0..<count { out.append(UInt8(truncatingIfNeeded: value >> (8 * UInt64(i)))) }
    }

    static func read(_ bytes: ArraySlice<UInt8>, at offset: Int, _ count: Int) -> UInt64 {
        var value: UInt64 = 0
        for i in 0..<count { value |= UInt64(bytes[bytes.startIndex + offset + i]) << (8 * UInt64(i)) }
        return value
    }
}

/// What the journal knows of one file since its last checkpoint.
struct JournalHistory {
    /// What the file must hold (nil: no file).
    var final: [UInt8]?
    /// Everything the journal wrote to it before, and the digests of what it held before the journal's changes.
    var earlier: [[UInt8]] = []
    var before: [[UInt8]] = []
    /// The file was missing at some point of its history: a lost write may leave it missing again.
    var absent = false
    private var started = false

    mutating func record(_ change: JournalRecord.Change) {
        if started {
            if let final { earlier.append(final) } else { absent = true }
        }
        started = true
        if let digest = change.before { before.append(digest) } else { absent = true }
        final = change.bytes
    }

    /// Whether the file, holding `current` (nil: missing), is what the journal left (`.same`); a state the journal
    /// passed through or what a lost write leaves of one (nothing, zeros, a part of its start: `.repair`); or
    /// something the journal cannot account for (`.unknown`: edited by hand, or damaged), which is never taken for
    /// trusted metadata nor silently overwritten.
    enum Verdict { case same, repair, unknown }

    func verdict(_ current: [UInt8]?) -> Verdict {
        guard let current else { return final == nil ? .same : (absent ? .repair : .unknown) }
        if let final, final == current { return .same }
        // A lost rename (a whole earlier state), or a file whose size reached the disk before all of its blocks did:
        // each 4 KiB block of it is that state's or zeros (a part of the start of the state, zeros, or a mix).
        if let final, JournalHistory.lost(current, of: final) { return .repair }
        if earlier.contains(where: { JournalHistory.lost(current, of: $0) }) { return .repair }
        if current.allSatisfy({ $0 == 0 }) { return .repair }
        let digest = Array(SHA256.hash(data: current))
        return before.contains(digest) ? .repair : .unknown
    }

    /// Whether `current` is what a lost write of `state` may leave: no longer than it, each 4 KiB block either the
    /// state's own or zeros.
    static func lost(_ current: [UInt8], of state: [UInt8]) -> Bool {
        guard current.count <= state.count else { return false }
        var start = 0
        while start < current.count {
            let end = min(start + 4096, current.count)
            let block = current[start..<end]
            if !block.elementsEqual(state[start..<end]), !block.allSatisfy({ $0 == 0 }) { return false }
            start = end
        }
        return true
    }
}

/// The journal of a `DirectoryStore` that writes at its flush: what makes a flush durable with one write and one
/// `fdatasync`, instead of an fsync per file and one of the directory.
///
/// The file (`Journal.name` in the metadata directory; made whole, zeros, synced and linked into place once, by
/// `init` or the first commit) is a log of `JournalRecord`s, each starting on a 4 KiB boundary (a new record never
/// rewrites a block of an older one). A commit, under an exclusive `flock`:
/// 1. refuses when another process committed since this store read the log (its update was decided on older
///    trusted metadata), also when it has nothing to write (its lookups were made on that older metadata);
/// 2. writes its record after the last one and `fdatasync`s the journal: the commit point. The space was written with
///    zeros when the file was made, so the sync writes the record's blocks and flushes the device's cache without a
///    commit of the file system's own journal (on ext4 one sync of 0.2-0.4 ms, against one per file and one for the
///    directory). When the sync fails, the record's header is zeroed in the page cache (Linux may report a lost
///    write once only) and the journal is not used again;
/// 3. writes the files (temp file + rename, so a reader never sees a torn one) without fsync.
///
/// A store reads the log when it first uses the directory and at its next use after an update ended (`finishUpdate`)
/// when another process committed meanwhile (a run of records from offset 0, with sequence numbers 0, 1, 2... of one random cycle; only the last can
/// be torn, as each is synced before the next is written, and a torn last record is dropped), and compares each file
/// it names with the log's final state. A file holding a state the log passed through, or what a lost write leaves
/// of one (nothing, zeros, a part of its start), is repaired, after the journal is synced and every record checked
/// whole; files found as the log says are served to `load` from memory. A file the log cannot account for (edited by
/// hand, or damaged beyond that) stops the store with an error naming it: it is neither trusted nor overwritten, and
/// `init` starts the directory afresh. No marker decides what to skip: the page cache may have been lost without a
/// reboot.
///
/// When the log is full, a checkpoint writes each file the log names again from the log, each fsynced, then the
/// directory; the log's first block is zeroed and synced, and a new cycle (a new random number) starts at offset 0
/// (a first record torn in its first block never joins the older cycle's records, and those are never taken for the
/// new cycle's). An update too large for the log is written file by file, each fsynced, after an empty record
/// started a new cycle. `init` does the same checkpoint where it can (a file it cannot account for is left as it
/// is), then commits the new root as the new cycle's first record, under one lock.
final class Journal {
    /// Not a name the stores write: role files end in `.json`, and percent-encoded target paths never hold a `#`.
    static let name = ".bulwark-journal#"
    /// The log's size: a flat repository's 1,000-target `targets.json` (175 KB) five times over.
    static let logSize = 1 << 20
    /// Records start on multiples of this.
    static let block = 4096

    let directory: String
    private var fd: Int32
    private let size = Journal.logSize
    private var cycle: UInt64 = 0
    /// The next record's sequence number and where it goes.
    private var sequence: UInt64 = 0
    private var tail = 0
    private var histories: [String: JournalHistory] = [:]
    /// Names in the order the log first changed them.
    private var order: [String] = []
    /// A sync of this journal failed: it is not used again (a new store reads the log afresh).
    private var broken = false
    private var records: [(offset: Int, bytes: ArraySlice<UInt8>, record: JournalRecord)] = []
    /// The last record was checked whole (`checkLast`).
    private var lastChecked = true
    private var known: [String: [UInt8]?] = [:]
    private var seenAtTail = ArraySlice<UInt8>()
    private var seenAtStart = ArraySlice<UInt8>()

    /// Whether the log holds no record (a journal another store made holds its commits).
    var isEmptyLog: Bool { records.isEmpty }

    static func isStorable(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= 255 && name != "." && name != ".." && name != Journal.name
            && !name.utf8.contains(UInt8(ascii: "/")) && !name.utf8.contains(0)
    }

    static func exists(in directory: String) -> Bool {
        access(directory + "/" + name, F_OK) == 0
    }

    /// The directory's journal, its log read and the files it names repaired (without `repairing`, only read); nil
    /// when there is none and `create` is false. With `create`, a missing journal is made whole and linked into place
    /// (another process may win: then its journal is used). With `replacingDamaged` (`init` only), a damaged journal
    /// is replaced by a new one.
    static func of(
        directory: String, create: Bool, replacingDamaged: Bool = false, repairing: Bool = true
    ) throws -> Journal? {
        let path = directory + "/" + name
        var fd = openFile(path, O_RDWR | O_CLOEXEC)
        if fd < 0 {
            guard errno == ENOENT else { throw UpdaterError.storage("cannot open the journal (errno \(errno))") }
            guard create else { return nil }
            try make(directory: directory, replacing: false)
            fd = openFile(path, O_RDWR | O_CLOEXEC)
            guard fd >= 0 else { throw UpdaterError.storage("cannot open the journal (errno \(errno))") }
        }
        var status = stat()
        guard fstat(fd, &status) == 0 else {
            close(fd)
            throw UpdaterError.storage("cannot read the journal (errno \(errno))")
        }
        guard Int(status.st_size) >= logSize else {
            close(fd)
            if replacingDamaged {
                try make(directory: directory, replacing: true)
                return try of(directory: directory, create: false, repairing: repairing)
            }
            throw UpdaterError.storage(
                "the journal \(path) is damaged (\(status.st_size) bytes): the trusted metadata beside it may not be "
                    + "what was last committed; initialize the directory again")
        }
        let journal = Journal(directory: directory, fd: fd)
        try journal.locked { try journal.readLog(repairing: repairing) }
        return journal
    }

    /// A journal of zeros, synced, then linked into place (not replacing one another process made meanwhile) or,
    /// with `replacing`, renamed over the damaged one; then the directory synced.
    private static func make(directory: String, replacing: Bool) throws {
        let temp = try TempFile(directory: directory)
        defer { temp.discard() }
        try temp.write(ArraySlice(repeating: 0, count: logSize))
        try temp.sync()
        let path = directory + "/" + name
        if replacing {
            try temp.rename(to: path)
        } else if link(temp.path, path) != 0, errno != EEXIST {
            // Never a rename over the name: it could replace a journal another process made and committed to.
            throw UpdaterError.storage(
                "cannot make the journal (errno \(errno)): a journaled store needs a file system with hard links")
        }
        try AtomicFile.syncDirectory(directory)
    }

    private init(directory: String, fd: Int32) {
        self.directory = directory
        self.fd = fd
    }

    deinit { close(fd) }

    static let conflict = UpdaterError.storage(
        "another update committed trusted metadata meanwhile; this one was not written: run it again")

    /// Commits `changes` (the last change of each name, in order): durable when this returns. With no changes, only
    /// checks that nobody else committed since this store read the log. Without `applying` (tests only), it stops
    /// at the commit point, as a process killed there would.
    func commit(_ changes: [JournalRecord.Change], applying: Bool = true) throws {
        try locked {
            if try committedElsewhere() {
                try readLog(repairing: true)
                throw Journal.conflict
            }
            try checkLast()
            if changes.isEmpty { return }
            // Room for the record with every file's digest (the most it can take), before the digests are taken:
            // a checkpoint may rewrite the files.
            let most = JournalRecord.bodyLength(changes.map { .init(name: $0.name, bytes: $0.bytes, before: [0]) })
            if tail + JournalRecord.headerSize + most > size {
                try checkpoint(bestEffort: false)
            }
            let measured = try changes.map { change in
                var change = change
                change.before = try digestOfFile(change.name)
                return change
            }
            if tail + JournalRecord.headerSize + JournalRecord.bodyLength(measured) > size {
                // Too large for the log: an empty record starts the cycle, then each file on its own, fsynced.
                try append(JournalRecord(cycle: cycle, sequence: sequence, changes: []))
                try Journal.apply(measured, in: directory, durably: true)
                known = [:]
                return
            }
            try append(JournalRecord(cycle: cycle, sequence: sequence, changes: measured))
            guard applying else { return }
            try Journal.apply(measured, in: directory, durably: false)
            for change in measured { known[change.name] = .some(change.bytes) }
        }
    }

    /// `init`, under one lock: the files the log names made durable where they can be accounted for (others left as
    /// they are), a new cycle, and `root` its first record: nothing committed before is replayed over the directory.
    func initialize(root: [UInt8]) throws {
        try locked {
            try readLog(repairing: false)
            try checkpoint(bestEffort: true)
            let change = JournalRecord.Change(name: "root.json", bytes: root, before: try digestOfFile("root.json"))
            try append(JournalRecord(cycle: cycle, sequence: sequence, changes: [change]))
            try Journal.apply([change], in: directory, durably: false)
            known = ["root.json": .some(root)]
        }
    }

    /// The SHA-256 of what the directory's file holds, nil when there is none.
    private func digestOfFile(_ name: String) throws -> [UInt8]? {
        try AtomicFile.read(path: directory + "/" + name).map { Array(SHA256.hash(data: $0)) }
    }

    private func unaccounted(_ name: String) -> UpdaterError {
        .storage(
            "\(directory)/\(name) holds what its journal cannot account for (edited by hand, or damaged): it is not "
                + "trusted; initialize the directory again")
    }

    static let damaged = UpdaterError.storage(
        "the journal is damaged: a record inside its log does not check out; initialize the directory again")

    /// At the start of a store's next use after an update ended: the log read again when another process committed
    /// since.
    func readIfChanged() throws {
        try locked {
            if try committedElsewhere() { try readLog(repairing: true) }
        }
    }

    private func locked<T>(_ body: () throws -> T) throws -> T {
        guard !broken else { throw UpdaterError.storage("the journal failed earlier: open the directory again") }
        while flock(fd, LOCK_EX) != 0 {
            guard errno == EINTR else { throw UpdaterError.storage("cannot lock the journal (errno \(errno))") }
        }
        defer { flock(fd, LOCK_UN) }
        // The file this store opened must still be the directory's journal (not replaced or removed meanwhile).
        var mine = stat()
        var named = stat()
        guard fstat(fd, &mine) == 0, stat(directory + "/" + Journal.name, &named) == 0,
            mine.st_dev == named.st_dev, mine.st_ino == named.st_ino
        else {
            broken = true
            throw UpdaterError.storage("the journal was replaced or removed: open the directory again")
        }
        return try body()
    }

    /// Whether another store committed since this one last read or wrote the log: a record where this store's next
    /// would go, or a new cycle at the log's start.
    private func committedElsewhere() throws -> Bool {
        try headerAtTail() != seenAtTail || read(at: 0, count: JournalRecord.headerSize) != seenAtStart
    }

    /// The header-sized bytes where this store's next record would go (none when the log is full there).
    private func headerAtTail() throws -> ArraySlice<UInt8> {
        tail + JournalRecord.headerSize <= size ? try read(at: tail, count: JournalRecord.headerSize) : []
    }

    /// Reads the log from its start (records 0, 1, 2... of one cycle) into `records` and `histories`, and leaves
    /// `cycle`, `sequence` and `tail` after its last record. With `repairing`, each file the log names is compared
    /// with the log's final state: one it cannot account for is an error; the files to repair are written after the
    /// journal is synced and every record checked whole (a torn last record dropped first); files found as the log
    /// says are `known`.
    private func readLog(repairing: Bool) throws {
        records = []
        var at = 0
        var expectedCycle: UInt64? = nil
        while at + JournalRecord.headerSize <= size {
            let head = try read(at: at, count: JournalRecord.headerSize)
            guard let header = JournalRecord.header(head), header.sequence == UInt64(records.count),
                expectedCycle == nil || header.cycle == expectedCycle,
                header.length <= UInt64(size - at - JournalRecord.headerSize)
            else { break }
            let bytes = try read(at: at, count: JournalRecord.headerSize + Int(header.length))
            guard let record = JournalRecord.parse(bytes) else { break }
            records.append((at, bytes, record))
            expectedCycle = header.cycle
            at = Journal.aligned(at + bytes.count)
        }
        lastChecked = records.isEmpty
        try settle()
        known = [:]
        guard repairing else { return }
        var found = try compare()
        if !found.repairs.isEmpty || !found.unknown.isEmpty {
            // Nothing is taken from the log before every record of it is whole and the log durable.
            if try checkLast() { found = try compare() }
            guard records.dropLast().allSatisfy({ JournalRecord.isWhole($0.bytes) }) else { throw Journal.damaged }
            if let name = found.unknown.first { throw unaccounted(name) }
            if !found.repairs.isEmpty {
                try syncJournal()
                try Journal.apply(found.repairs, in: directory, durably: false)
                for change in found.repairs { known[change.name] = .some(change.bytes) }
            }
        }
        for name in found.same { known[name] = .some(histories[name]?.final) }
    }

    /// `histories`, `order`, and where the next record goes, from `records`.
    private func settle() throws {
        histories = [:]
        order = []
        for entry in records { remember(entry.record) }
        if let last = records.last {
            cycle = last.record.cycle
            sequence = last.record.sequence + 1
            tail = Journal.aligned(last.offset + last.bytes.count)
        } else {
            cycle = UInt64.random(in: 1...UInt64.max)
            sequence = 0
            tail = 0
        }
        try noteWhatIsThere()
    }

    /// Each file the log names: to repair (with its final state), as the log says, or unaccounted for.
    private func compare() throws -> (repairs: [JournalRecord.Change], same: [String], unknown: [String]) {
        var repairs: [JournalRecord.Change] = []
        var same: [String] = []
        var unknown: [String] = []
        for name in order {
            guard let history = histories[name] else { continue }
            switch history.verdict(try AtomicFile.read(path: directory + "/" + name)) {
            case .repair: repairs.append(JournalRecord.Change(name: name, bytes: history.final))
            case .same: same.append(name)
            case .unknown: unknown.append(name)
            }
        }
        return (repairs, same, unknown)
    }

    /// Only the last record can be torn (each is synced before the next is written): checked before anything is
    /// taken from it or written after it, and dropped when torn (the next commit takes its place). When its place
    /// no longer holds what this store read there, another store dropped it first and committed there: a conflict.
    /// Whether it dropped the last record.
    @discardableResult
    private func checkLast() throws -> Bool {
        guard !lastChecked else { return false }
        lastChecked = true
        guard let last = records.last, !JournalRecord.isWhole(last.bytes) else { return false }
        guard try read(at: last.offset, count: JournalRecord.headerSize) == last.bytes.prefix(JournalRecord.headerSize)
        else { throw Journal.conflict }
        records.removeLast()
        try settle()
        return true
    }

    /// What `load` may take from the log instead of the file: the file held it when this store read the log, or
    /// this store wrote it since (`.some(nil)`: no file); nil when the log does not say.
    func knownContent(of name: String) -> [UInt8]?? { known[name] }

    /// Every file the log names written again from the log and fsynced, the directory synced, then the log's first
    /// block zeroed and synced, and a new cycle at offset 0. A file the log cannot account for is an error, or, when
    /// `bestEffort` (`init`), left as it is, as are the records from a damaged one on. Nothing is reset when a write
    /// or sync fails.
    private func checkpoint(bestEffort: Bool) throws {
        try syncJournal()
        try checkLast()
        if let damaged = records.firstIndex(where: { !JournalRecord.isWhole($0.bytes) }) {
            guard bestEffort else { throw Journal.damaged }
            records.removeSubrange(damaged...)
            try settle()
        }
        let found = try compare()
        if !bestEffort, let name = found.unknown.first { throw unaccounted(name) }
        let writes = found.repairs + found.same.map { JournalRecord.Change(name: $0, bytes: histories[$0]?.final) }
        try Journal.apply(writes, in: directory, durably: true)
        try AtomicFile.syncDirectory(directory)
        try write([UInt8](repeating: 0, count: JournalRecord.headerSize), at: 0)
        try syncJournal()
        records = []
        lastChecked = true
        known = [:]
        try settle()
    }

    private func append(_ record: JournalRecord) throws {
        let bytes = record.encoded()
        try write(bytes, at: tail)
        do {
            try syncJournal()
        } catch {
            // Linux may report a lost write once and then call the page clean: nobody may find this record.
            try? write([UInt8](repeating: 0, count: JournalRecord.headerSize), at: tail)
            broken = true
            throw error
        }
        records.append((tail, bytes[...], record))
        remember(record)
        tail = Journal.aligned(tail + bytes.count)
        sequence += 1
        try noteWhatIsThere()
    }

    private func remember(_ record: JournalRecord) {
        for change in record.changes {
            if histories[change.name] == nil { order.append(change.name) }
            histories[change.name, default: JournalHistory()].record(change)
        }
    }

    /// What lies where this store would write its next record, and at the log's start, as this store last saw them:
    /// another store's commit changes one of them.
    private func noteWhatIsThere() throws {
        seenAtTail = try headerAtTail()
        seenAtStart = try read(at: 0, count: JournalRecord.headerSize)
    }

    private func syncJournal() throws {
        while fdatasync(fd) != 0 {
            guard errno == EINTR else { throw UpdaterError.storage("cannot sync the journal (errno \(errno))") }
        }
    }

    static func aligned(_ offset: Int) -> Int { (offset + block - 1) / block * block }

    private func read(at offset: Int, count: Int) throws -> ArraySlice<UInt8> {
        var failure: Int32 = 0
        let bytes = [UInt8](unsafeUninitializedCapacity: count) { buffer, filled in
            filled = 0
            while filled < count {
                let n = pread(fd, buffer.baseAddress! + filled, count - filled, off_t(offset + filled))
                if n > 0 {
                    filled += n
                } else if n == 0 {
                    break
                } else if errno != EINTR {
                    failure = errno
                    break
                }
            }
            if filled < count {
                (buffer.baseAddress! + filled).initialize(repeating: 0, count: count - filled)
                filled = count
            }
        }
        if failure != 0 { throw UpdaterError.storage("cannot read the journal (errno \(failure))") }
        return bytes[...]
    }

    private func write(_ bytes: [UInt8], at offset: Int) throws {
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes {
                pwrite(fd, $0.baseAddress! + done, bytes.count - done, off_t(offset + done))
            }
            if n < 0 {
                guard errno == EINTR else { throw UpdaterError.storage("cannot write the journal (errno \(errno))") }
                continue
            }
            done += n
        }
    }

    /// Makes the directory's files what `changes` say: a removal unlinks, a write replaces the file whole (temp file
    /// + rename); the removals first. With `durably`, each file is fsynced, and the directory after the removals
    /// and after the writes.
    static func apply(_ changes: [JournalRecord.Change], in directory: String, durably: Bool) throws {
        var removed = false
        for change in changes where change.bytes == nil {
            if unlink(directory + "/" + change.name) == 0 {
                removed = true
            } else if errno != ENOENT {
                throw UpdaterError.storage("cannot remove \(change.name) (errno \(errno))")
            }
        }
        if durably, removed { try AtomicFile.syncDirectory(directory) }
        for change in changes {
            guard let bytes = change.bytes else { continue }
            try AtomicFile.write(
                bytes, directory: directory, name: change.name, simulateCrashAfter: nil, syncing: durably)
        }
    }
}
