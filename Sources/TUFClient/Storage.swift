import Synchronization
import TUF

#if canImport(Glibc)
    import Glibc
    private let systemRead = Glibc.read
    private let systemWrite = Glibc.write
    private let systemRename = Glibc.rename
#elseif canImport(Darwin)
    import Darwin
    private let systemRead = Darwin.read
    private let systemWrite = Darwin.write
    private let systemRename = Darwin.rename
#endif

/// Where the client keeps trusted metadata, by file name (`root.json`, `timestamp.json`,
/// percent-encoded delegated role names). Writes must be atomic: after a crash a reader
/// sees either the old or the new bytes, never a mix (TUF §5.3.7 and siblings persist
/// metadata that later runs trust).
public protocol MetadataStore: Sendable {
    func load(_ name: String) throws -> [UInt8]?
    func store(_ name: String, _ data: [UInt8]) throws
    /// Removes a trusted file; removing a missing file is not an error.
    func remove(_ name: String) throws
    /// Makes the writes and removals so far durable, for a store that leaves part of that to a later moment (the
    /// `Updater` calls it when a refresh, a lookup or a download ends, while the request after an accepted root
    /// travels, and while an artifact's request travels). Names are file names, one file each (no `/`, no `..`).
    func flush() throws
    /// `flush` at the end of an update (a public method of the `Updater`): what the store read before it may be
    /// read afresh at the next use; a flush within an update keeps the update's view.
    func finishUpdate() throws
}

/// Where verified artifacts are kept, by TUF target path.
public protocol ArtifactStore: Sendable {
    func load(targetPath: String) throws -> [UInt8]?
    func store(targetPath: String, _ data: [UInt8]) throws
    func flush() throws
}

extension MetadataStore {
    public func flush() throws {}
    public func finishUpdate() throws { try flush() }
}

extension ArtifactStore {
    public func flush() throws {}
}

/// A directory of files, each written whole (temp file + rename) so that a reader never sees a torn one.
///
/// By default each write is durable at once: the temp file fsynced, renamed, the directory fsynced.
///
/// With `writesAtFlush`, `store` and `remove` are kept in memory (`load` sees them) until `flush()`, which makes them
/// durable together through the directory's `Journal`: one record written and `fdatasync`ed, then the files written
/// without fsync (the journal replays them after a crash). A crash before the flush loses what it had to write: the
/// client then starts from the metadata it trusted before and fetches it again. The `Updater` flushes when each public
/// method ends, also when it fails, after each accepted root, and while an artifact's request travels. A directory
/// with a journal must be opened with `writesAtFlush` (the default mode refuses to write in it).
public struct DirectoryStore: MetadataStore, ArtifactStore {
    public let directory: String
    public let writesAtFlush: Bool
    private let pending = PendingChanges()

    public init(directory: String, writesAtFlush: Bool = false) {
        self.directory = directory
        self.writesAtFlush = writesAtFlush
    }

    public func load(_ name: String) throws -> [UInt8]? {
        if writesAtFlush, let change = try pending.change(of: name, directory: directory) { return change }
        return try AtomicFile.read(path: directory + "/" + name)
    }

    public func store(_ name: String, _ data: [UInt8]) throws {
        if writesAtFlush {
            try pending.record(name, data, directory: directory)
        } else {
            try refuseJournaledDirectory()
            try AtomicFile.write(data, directory: directory, name: name)
        }
    }

    public func remove(_ name: String) throws {
        if writesAtFlush {
            try pending.record(name, nil, directory: directory)
        } else {
            try refuseJournaledDirectory()
            try AtomicFile.remove(directory: directory, name: name)
        }
    }

    /// Makes what `store` and `remove` kept (`writesAtFlush`) durable, together (`Journal`). A failure is thrown once.
    public func flush() throws {
        if writesAtFlush { try pending.commit(directory: directory, endingUpdate: false) }
    }

    /// A flush that ends an update: the store reads the directory again at its next use when another process
    /// committed meanwhile (within an update it keeps its view, so that the update's last flush is refused then).
    public func finishUpdate() throws {
        if writesAtFlush { try pending.commit(directory: directory, endingUpdate: true) }
    }

    /// Makes `root` the directory's trust anchor (`init`): with `writesAtFlush`, the journal started afresh first
    /// (a damaged one replaced), so that nothing committed before is replayed over what `init` leaves.
    public func initialize(root: [UInt8]) throws {
        if writesAtFlush {
            try pending.initialize(root: root, directory: directory)
        } else {
            try store("root.json", root)
        }
    }

    /// Tests only: a flush that stops at its commit point, as a process killed there would (the store is then done).
    func flushKilledAtItsCommitPoint() throws {
        try pending.commit(directory: directory, endingUpdate: true, applying: false)
    }

    /// A file written at once, behind a journal's back, could be put back to an older version when the journal is
    /// replayed after a crash.
    private func refuseJournaledDirectory() throws {
        if Journal.exists(in: directory) {
            throw UpdaterError.storage("\(directory) is journaled: open it with writesAtFlush")
        }
    }

    /// Artifacts are stored flat under the percent-encoded target path, as python-tuf does,
    /// so `a/b.txt` and `a%2Fb.txt` cannot collide with directories or each other.
    public func load(targetPath: String) throws -> [UInt8]? { try load(percentEncode(targetPath)) }

    public func store(targetPath: String, _ data: [UInt8]) throws { try store(percentEncode(targetPath), data) }
}

/// A directory of downloaded artifacts written without fsync: an `ArtifactStore` only, so it cannot be handed to an
/// updater as the store of its trusted metadata (`DirectoryStore` is that, and syncs every file).
///
/// Each file is written whole to a temp file and renamed into place (stored flat under the percent-encoded target
/// path, as `DirectoryStore` does), so while the system runs nobody sees a torn file; nothing is fsynced, so after a
/// power cut a file may be missing, empty or old. The updater checks a cached artifact's length and hashes against
/// the trusted metadata before it uses it (`Updater.cachedTarget`), so a lost write costs a download again, never
/// trust; a program that reads the directory itself after a power cut should first run the download again, which
/// checks the cached copy. python-tuf, curl and wget leave a download the same way.
public struct UnsyncedArtifactDirectory: ArtifactStore {
    public let directory: String

    public init(directory: String) { self.directory = directory }

    public func load(targetPath: String) throws -> [UInt8]? {
        try AtomicFile.read(path: directory + "/" + percentEncode(targetPath))
    }

    public func store(targetPath: String, _ data: [UInt8]) throws {
        try AtomicFile.write(
            data, directory: directory, name: percentEncode(targetPath), simulateCrashAfter: nil, syncing: false)
    }
}

/// POSIX file helpers.
public enum AtomicFile {
    public static func read(path: String) throws -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            if errno == ENOENT { return nil }
            throw UpdaterError.storage("cannot open \(path) (errno \(errno))")
        }
        defer { close(fd) }
        // Read into one uninitialized buffer of the file's size (plus one byte, to see the end in the same call); a
        // file that grows meanwhile is read on in 64 KiB steps. (Not `append(contentsOf: repeatElement(0, ...))`: in a
        // debug build that zeroes byte by byte through generic witnesses, and 100 agents reading their metadata that
        // way held both of the test run's cooperative threads.)
        var status = stat()
        let expected = fstat(fd, &status) == 0 ? max(0, Int(status.st_size)) : 0
        var out: [UInt8] = []
        var step = expected + 1
        while true {
            var failure: Int32 = 0
            let chunk = [UInt8](unsafeUninitializedCapacity: step) { buffer, count in
                count = 0
                while true {
                    let n = systemRead(fd, buffer.baseAddress, step)
                    if n >= 0 {
                        count = n
                        return
                    }
                    if errno != EINTR {
                        failure = errno
                        return
                    }
                }
            }
            if failure != 0 { throw UpdaterError.storage("cannot read \(path) (errno \(failure))") }
            if chunk.isEmpty { break }
            if out.isEmpty { out = chunk } else { out += chunk }
            step = 65536
        }
        return out
    }

    /// Unlinks `directory/name` (a missing file is fine) and makes the removal durable.
    public static func remove(directory: String, name: String) throws {
        if unlink(directory + "/" + name) != 0, errno != ENOENT {
            throw UpdaterError.storage("cannot remove \(name) (errno \(errno))")
        }
        try syncDirectory(directory)
    }

    /// fsyncs the directory, so that the renames and unlinks in it so far are durable. A file system that cannot
    /// sync a directory (EINVAL, ENOTSUP: it has nothing to sync there) is not an error; any other failure is.
    static func syncDirectory(_ directory: String) throws {
        let dfd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard dfd >= 0 else { throw UpdaterError.storage("cannot open \(directory) to sync it (errno \(errno))") }
        defer { close(dfd) }
        while fsync(dfd) != 0 {
            if errno == EINTR { continue }
            if errno == EINVAL || errno == ENOTSUP || errno == EOPNOTSUPP { return }
            throw UpdaterError.storage("cannot sync \(directory) (errno \(errno))")
        }
    }

    /// Removes the temp files (`TempFile`'s `.tmp-XXXXXX`, regular files) in `directory` last modified more than
    /// `seconds` ago: what a writer killed between creating one and renaming it left behind. Best effort: what cannot
    /// be read or removed stays.
    static func removeStaleTemporaries(in directory: String, olderThan seconds: Int) {
        guard let stream = opendir(directory) else { return }
        defer { closedir(stream) }
        let fd = dirfd(stream)
        let now = time(nil)
        while let entry = readdir(stream) {
            // Exactly what `TempFile` makes (`mkstemp`'s six characters from [A-Za-z0-9]): a file a caller named
            // `.tmp-…` (a role `.tmp-x` is stored as `.tmp-x.json`) is never taken for one.
            let bytes = withUnsafeBytes(of: entry.pointee.d_name) { raw in Array(raw.prefix { $0 != 0 }) }
            let prefix = TempFile.prefix.utf8
            guard bytes.count == prefix.count + 6, bytes.starts(with: prefix),
                bytes[prefix.count...].allSatisfy({
                    ($0 >= 0x30 && $0 <= 0x39) || ($0 | 0x20 >= 0x61 && $0 | 0x20 <= 0x7A)
                })
            else { continue }
            let name = String(decoding: bytes, as: UTF8.self)
            var status = stat()
            guard fstatat(fd, name, &status, AT_SYMLINK_NOFOLLOW) == 0, status.st_mode & S_IFMT == S_IFREG else {
                continue
            }
            #if canImport(Glibc)
                let modified = status.st_mtim.tv_sec
            #else
                let modified = status.st_mtimespec.tv_sec
            #endif
            if now - modified > seconds { unlinkat(fd, name, 0) }
        }
    }

    /// Writes `data` to `directory/name` atomically: a unique temp file in the same directory,
    /// fsync, rename over the target, then fsync the directory so the rename is durable.
    public static func write(_ data: [UInt8], directory: String, name: String) throws {
        try write(data, directory: directory, name: name, simulateCrashAfter: nil)
    }

    /// `simulateCrashAfter` (tests only): stop after writing that many bytes to the temp file
    /// and throw, leaving the temp file behind as a crash would, without renaming. Without `syncing` the temp
    /// file is renamed without an fsync of it or of the directory (`UnsyncedArtifactDirectory`).
    static func write(
        _ data: [UInt8], directory: String, name: String, simulateCrashAfter: Int?, syncing: Bool = true
    ) throws {
        let temp = try TempFile(directory: directory)
        defer { temp.discard() }
        if let simulateCrashAfter {
            try temp.write(data[..<Swift.min(simulateCrashAfter, data.count)])
            temp.leave()  // a crash leaves the temp file behind
            throw UpdaterError.storage("simulated crash during write")
        }
        try temp.write(data[...])
        if syncing { try temp.sync() }
        try temp.rename(to: directory + "/" + name)
        if syncing { try syncDirectory(directory) }
    }
}

/// A unique temp file in a directory, open for writing until it is renamed over its target or discarded.
///
/// Unchecked Sendable: it has one owner at a time, the function that made it or a store's pending list (under its
/// lock) and then whoever took it out of that list; its state is never touched by two threads.
final class TempFile: @unchecked Sendable {
    /// Every temp file's name: this, then `mkstemp`'s six characters.
    static let prefix = ".tmp-"
    let fd: Int32
    let path: String
    private var open = true
    private var kept = false

    init(directory: String) throws {
        var template = Array((directory + "/" + TempFile.prefix + "XXXXXX").utf8CString)
        fd = template.withUnsafeMutableBufferPointer { buf -> Int32 in
            guard let base = buf.baseAddress else { return -1 }
            return mkstemp(base)
        }
        guard fd >= 0 else { throw UpdaterError.storage("cannot create temp file in \(directory) (errno \(errno))") }
        path = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    func write(_ data: ArraySlice<UInt8>) throws {
        var offset = data.startIndex
        while offset < data.endIndex {
            let n = data[offset...].withUnsafeBytes { systemWrite(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw UpdaterError.storage("cannot write \(path) (errno \(errno))")
            }
            offset += n
        }
    }

    func sync() throws {
        while fsync(fd) != 0 {
            guard errno == EINTR else { throw UpdaterError.storage("fsync failed (errno \(errno))") }
        }
    }

    /// Closes the file and renames it over `target`.
    func rename(to target: String) throws {
        closeOnce()
        guard systemRename(path, target) == 0 else { throw UpdaterError.storage("rename failed (errno \(errno))") }
        kept = true
    }

    /// Closes the file and leaves it where it is (a simulated crash).
    func leave() {
        closeOnce()
        kept = true
    }

    /// Closes the file and, unless it was renamed or left, unlinks it.
    func discard() {
        closeOnce()
        if !kept {
            unlink(path)
            kept = true
        }
    }

    private func closeOnce() {
        if open {
            close(fd)
            open = false
        }
    }
}

/// The writes and removals a `DirectoryStore` keeps until its flush, and the directory's `Journal`, which makes
/// them durable together.
///
/// A name's later change replaces its earlier one (a record is applied whole, so the order of a removal and a write
/// no longer matters to what a crash leaves: TUF §5.3.11's removal of the timestamp and snapshot after a rotation and
/// the new root reach the disk in one record). One commit at a time, under the lock, which `load` also takes. Before
/// its first use (and after a failed commit) the store brings the directory up to its journal, which replays what a
/// process killed after a commit point had not yet written.
final class PendingChanges: Sendable {
    struct State {
        var changes: [JournalRecord.Change] = []
        var journal: Journal?
        /// The directory must be read afresh (and repaired from its journal) before its next use: first use, or a
        /// commit failed.
        var behind = true
        /// An update ended (`finishUpdate`): at the store's next use, the log is read again if another process
        /// committed meanwhile.
        var flushed = false
        /// Temp files older than `staleAge`, left by a process that was killed, are removed once, at the first use
        /// (their age is measured by the clock, which may jump, or be faked, as the TUF conformance suite does).
        var swept = false
    }

    private let state = Mutex(State())
    static let staleAge = 600

    /// Keeps `bytes` (nil: a removal) as `name`'s change, replacing an earlier one.
    func record(_ name: String, _ bytes: [UInt8]?, directory: String) throws {
        guard Journal.isStorable(name) else { throw UpdaterError.storage("not a file name: \(name)") }
        try state.withLock { state in
            try PendingChanges.prepare(&state, directory)
            state.changes.removeAll { $0.name == name }
            state.changes.append(JournalRecord.Change(name: name, bytes: bytes))
        }
    }

    /// The pending change of `name` (`.some(nil)` when it was removed, nil when it has none), after the directory was
    /// brought up to its journal.
    func change(of name: String, directory: String) throws -> [UInt8]?? {
        try state.withLock { state -> [UInt8]?? in
            try PendingChanges.prepare(&state, directory)
            if let change = state.changes.last(where: { $0.name == name }) { return .some(change.bytes) }
            // What the journal found in the file (or wrote to it) when it read the directory: no second read.
            return state.journal?.knownContent(of: name)
        }
    }

    private static func prepare(_ state: inout State, _ directory: String) throws {
        if !state.swept {
            state.swept = true
            AtomicFile.removeStaleTemporaries(in: directory, olderThan: staleAge)
        }
        do {
            if state.behind {
                state.journal = nil
                state.journal = try Journal.of(directory: directory, create: false)
                state.behind = false
                state.flushed = false
            } else if state.flushed {
                state.flushed = false
                if let journal = state.journal {
                    try journal.readIfChanged()
                } else {
                    state.journal = try Journal.of(directory: directory, create: false)
                }
            }
        } catch {
            // Nothing is served from a directory that could not be read (a file the journal cannot account for,
            // a damaged log): the next use reads it again.
            state.behind = true
            state.journal = nil
            state.changes = []
            throw error
        }
    }

    /// `init`: the journal started afresh under one lock (a damaged one replaced, the files it names made durable
    /// where they can be accounted for), and `root` committed as the new trust anchor: nothing committed before is
    /// replayed over the directory.
    func initialize(root: [UInt8], directory: String) throws {
        try state.withLock { state in
            state.changes = []
            do {
                state.journal = nil
                guard
                    let journal = try Journal.of(
                        directory: directory, create: true, replacingDamaged: true, repairing: false)
                else { throw UpdaterError.storage("the journal of \(directory) went away") }
                try journal.initialize(root: root)
                state.journal = journal
                state.behind = false
                state.flushed = true
            } catch {
                state.behind = true
                if error is UpdaterError { throw error }
                throw UpdaterError.storage("\(error)")
            }
        }
    }

    /// Makes every change durable: one record in the journal (made, whole, if the directory has none yet), then the
    /// files written. Refused when another process committed since this store read the directory, also with nothing
    /// to write (what was looked up may be stale). A failure is thrown once; the changes are dropped, unless the
    /// record was committed (then the next use of the store, or the next run, writes them).
    func commit(directory: String, endingUpdate: Bool, applying: Bool = true) throws {
        try state.withLock { state in
            let taken = state.changes
            state.changes = []
            try PendingChanges.prepare(&state, directory)
            do {
                if state.journal == nil {
                    // No journal when this store read the directory: one made since holds another store's commits.
                    if taken.isEmpty {
                        if Journal.exists(in: directory) { throw Journal.conflict }
                        state.flushed = endingUpdate
                        return
                    }
                    let journal = try Journal.of(directory: directory, create: true)
                    state.journal = journal
                    if journal?.isEmptyLog == false { throw Journal.conflict }
                }
                try state.journal?.commit(taken, applying: applying)
                state.flushed = endingUpdate
            } catch {
                // The directory is read again (and repaired from the journal) before its next use.
                state.behind = true
                if error is UpdaterError { throw error }
                throw UpdaterError.storage("\(error)")
            }
        }
    }
}
