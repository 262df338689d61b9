import CFileSync
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
}

/// Where verified artifacts are kept, by TUF target path.
public protocol ArtifactStore: Sendable {
    func load(targetPath: String) throws -> [UInt8]?
    func store(targetPath: String, _ data: [UInt8]) throws
    func flush() throws
}

extension MetadataStore {
    public func flush() throws {}
}

extension ArtifactStore {
    public func flush() throws {}
}

/// A directory of files written with temp file + fsync + rename + fsync(directory).
///
/// With `writesAtFlush`, `store` writes the bytes to a temp file and starts its writeback without waiting, and
/// `remove` is only noted (`load` sees both); `flush()` then makes them durable together: every removal first (and
/// the directory synced when there was one), then each temp file fsynced and renamed over its name in order, then the
/// directory fsynced once (`PendingChanges.commit`). Each file still reaches its name whole and fsynced (a crash
/// leaves the old bytes or the new, never a torn file), but on ext4 the files of a flush cost one journal commit, not
/// one each (the first fsync's commit carries every file's blocks; each later fsync then waits only for a cache flush
/// of the device). A crash before the flush loses what it had to write (and may leave temp files, swept once they are
/// old): the client then starts from the metadata it trusted before and fetches it again. The `Updater` flushes when
/// each public method ends, also when it fails, after each accepted root, and while an artifact's request travels.
public struct DirectoryStore: MetadataStore, ArtifactStore {
    public let directory: String
    public let writesAtFlush: Bool
    private let pending = PendingChanges()

    public init(directory: String, writesAtFlush: Bool = false) {
        self.directory = directory
        self.writesAtFlush = writesAtFlush
    }

    public func load(_ name: String) throws -> [UInt8]? {
        if writesAtFlush, let change = pending.change(of: name) { return change }
        return try AtomicFile.read(path: directory + "/" + name)
    }

    public func store(_ name: String, _ data: [UInt8]) throws {
        if writesAtFlush {
            try pending.write(name, data, directory: directory)
        } else {
            try AtomicFile.write(data, directory: directory, name: name)
        }
    }

    public func remove(_ name: String) throws {
        if writesAtFlush {
            pending.remove(name)
        } else {
            try AtomicFile.remove(directory: directory, name: name)
        }
    }

    /// Makes what `store` and `remove` kept (`writesAtFlush`) durable: the removals, then the writes in their order.
    /// A failure is thrown once; what was not renamed by then is dropped, as a crash would drop it.
    public func flush() throws {
        try pending.commit(directory: directory)
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
        if fsync(dfd) != 0, errno != EINVAL, errno != ENOTSUP, errno != EOPNOTSUPP {
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
        if fsync(fd) != 0 { throw UpdaterError.storage("fsync failed (errno \(errno))") }
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

/// The writes and removals a `DirectoryStore` keeps until its flush. A write is in its temp file, its writeback
/// started, from the moment it is recorded: the device writes it while the update goes on.
///
/// A name's later change replaces its earlier write (whose temp file goes), but never an earlier removal: the
/// commit does every removal first and then the writes, in their order. TUF §5.3.11 removes the trusted timestamp and
/// snapshot after a root rotation and may write a new timestamp in the same update; a crash or a failure in the middle
/// of the commit must not leave the new root in place with the old timestamp still there (the `Updater` also commits
/// a new root on its own, before it reads anything further).
///
/// One commit at a time, under the lock, which `load` also takes: nobody sees a name between its removal from the
/// list and its rename. Meant for one updater at a time per directory.
final class PendingChanges: Sendable {
    struct Change {
        enum Kind {
            /// The bytes to load back, in the temp file that will be renamed over the name.
            case write([UInt8], TempFile)
            case remove
        }

        let name: String
        let kind: Kind

        var temp: TempFile? {
            if case .write(_, let temp) = kind { return temp }
            return nil
        }
    }

    struct State {
        var changes: [Change] = []
        /// Renames or unlinks were made since the directory was last synced (a commit failed after them).
        var unsynced = false
        /// Temp files older than `staleAge`, left by a process that was killed, are removed once, before this store
        /// makes its first temp file or commits (so never one of its own: their age is measured by the clock, which
        /// may jump, or be faked, as the TUF conformance suite does).
        var swept = false
    }

    private let state = Mutex(State())
    static let staleAge = 600

    func write(_ name: String, _ bytes: [UInt8], directory: String) throws {
        sweepOnce(directory)
        let temp = try TempFile(directory: directory)
        do {
            try temp.write(bytes[...])
        } catch {
            temp.discard()
            throw error
        }
        _ = bulwark_start_writeback(temp.fd)
        record(Change(name: name, kind: .write(bytes, temp)))
    }

    func remove(_ name: String) {
        record(Change(name: name, kind: .remove))
    }

    private func record(_ change: Change) {
        let replaced = state.withLock { state -> [Change] in
            let replaced = state.changes.filter { $0.name == change.name && $0.temp != nil }
            state.changes.removeAll { $0.name == change.name && $0.temp != nil }
            let removed = state.changes.contains { $0.name == change.name }
            if change.temp != nil || !removed { state.changes.append(change) }
            return replaced
        }
        for old in replaced { old.temp?.discard() }
    }

    /// Under the lock, so that no other thread makes a temp file of this store while the sweep reads the directory.
    private func sweepOnce(_ directory: String) {
        state.withLock { state in PendingChanges.sweepOnce(&state, directory) }
    }

    private static func sweepOnce(_ state: inout State, _ directory: String) {
        if state.swept { return }
        state.swept = true
        AtomicFile.removeStaleTemporaries(in: directory, olderThan: staleAge)
    }

    /// The pending change of `name`: `.some(nil)` when it was removed, nil when it has none.
    func change(of name: String) -> [UInt8]?? {
        state.withLock { state -> [UInt8]?? in
            switch state.changes.last(where: { $0.name == name })?.kind {
            case .write(let bytes, _): return .some(bytes)
            case .remove: return .some(nil)
            case nil: return nil
            }
        }
    }

    /// Makes every change durable: each removal done (and the directory synced when one removed a file), then each
    /// temp file fsynced and renamed over its name in their order (the writeback of all of them started before the
    /// first fsync), then the directory fsynced once (when anything in it changed). A failure leaves no temp file; what was renamed or removed
    /// before it stays, and the next commit tries the directory's fsync again even when it has nothing else to do
    /// (after a failed fsync Linux may report success for data it lost: the `Updater` stops after any failure).
    func commit(directory: String) throws {
        try state.withLock { state throws(UpdaterError) in
            PendingChanges.sweepOnce(&state, directory)
            let taken = state.changes
            state.changes = []
            if taken.isEmpty, !state.unsynced { return }
            defer { for change in taken { change.temp?.discard() } }
            do {
                for change in taken where change.temp == nil {
                    if unlink(directory + "/" + change.name) != 0 {
                        guard errno == ENOENT else {
                            throw UpdaterError.storage("cannot remove \(change.name) (errno \(errno))")
                        }
                    } else {
                        state.unsynced = true
                    }
                }
                // The removals durable before any rename: POSIX does not promise that a later fsync carries them.
                if state.unsynced {
                    try AtomicFile.syncDirectory(directory)
                    state.unsynced = false
                }
                for change in taken {
                    guard let temp = change.temp else { continue }
                    try temp.sync()
                    try temp.rename(to: directory + "/" + change.name)
                    state.unsynced = true
                }
                if state.unsynced {
                    try AtomicFile.syncDirectory(directory)
                    state.unsynced = false
                }
            } catch let error as UpdaterError {
                throw error
            } catch {
                throw UpdaterError.storage("\(error)")
            }
        }
    }

    /// A store dropped without its flush leaves no temp file open or behind.
    deinit {
        for change in state.withLock({ $0.changes }) { change.temp?.discard() }
    }
}
