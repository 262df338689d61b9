import Synchronization
import TUF

#if canImport(Glibc)
    import Glibc
    private let systemRead = Glibc.read
    private let systemWrite = Glibc.write
#elseif canImport(Darwin)
    import Darwin
    private let systemRead = Darwin.read
    private let systemWrite = Darwin.write
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
    /// Makes the writes and removals so far durable, for a store that leaves part of that to the end of an update
    /// (the `Updater` calls it when a refresh, a lookup or a download ends).
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
/// With `defersDirectorySync`, each file is still written whole and fsynced before it is renamed into place (a crash
/// leaves the old bytes or the new, never a torn file), but the directory is fsynced once, by `flush()`, for all the
/// renames of one update instead of once per file. A crash before the flush may lose the newest renames: the client
/// then starts from the metadata it trusted before (as if the update had not run) and fetches it again.
public struct DirectoryStore: MetadataStore, ArtifactStore {
    public let directory: String
    public let defersDirectorySync: Bool
    private let renamed = PendingSync()

    public init(directory: String, defersDirectorySync: Bool = false) {
        self.directory = directory
        self.defersDirectorySync = defersDirectorySync
    }

    public func load(_ name: String) throws -> [UInt8]? {
        try AtomicFile.read(path: directory + "/" + name)
    }

    public func store(_ name: String, _ data: [UInt8]) throws {
        try AtomicFile.write(data, directory: directory, name: name, syncingDirectory: !defersDirectorySync)
        if defersDirectorySync { renamed.mark() }
    }

    public func remove(_ name: String) throws {
        try AtomicFile.remove(directory: directory, name: name, syncingDirectory: !defersDirectorySync)
        if defersDirectorySync { renamed.mark() }
    }

    public func flush() throws {
        if renamed.take() { AtomicFile.syncDirectory(directory) }
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
            data, directory: directory, name: percentEncode(targetPath), simulateCrashAfter: nil, syncingFile: false,
            syncingDirectory: false)
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

    /// Unlinks `directory/name` (a missing file is fine) and makes the removal durable (unless the caller will).
    public static func remove(directory: String, name: String, syncingDirectory: Bool = true) throws {
        if unlink(directory + "/" + name) != 0, errno != ENOENT {
            throw UpdaterError.storage("cannot remove \(name) (errno \(errno))")
        }
        if syncingDirectory { syncDirectory(directory) }
    }

    static func syncDirectory(_ directory: String) {
        let dfd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dfd >= 0 {
            _ = fsync(dfd)
            close(dfd)
        }
    }

    /// Writes `data` to `directory/name` atomically: a unique temp file in the same directory,
    /// fsync, rename over the target, then fsync the directory so the rename is durable.
    /// With `syncingDirectory` false the rename is left for the caller to make durable (`syncDirectory`).
    public static func write(_ data: [UInt8], directory: String, name: String, syncingDirectory: Bool = true) throws {
        try write(data, directory: directory, name: name, simulateCrashAfter: nil, syncingDirectory: syncingDirectory)
    }

    /// `simulateCrashAfter` (tests only): stop after writing that many bytes to the temp file
    /// and throw, leaving the temp file behind as a crash would, without renaming. Without `syncingFile` the temp
    /// file is renamed without an fsync (`UnsyncedArtifactDirectory`).
    static func write(
        _ data: [UInt8], directory: String, name: String, simulateCrashAfter: Int?, syncingFile: Bool = true,
        syncingDirectory: Bool = true
    ) throws {
        let target = directory + "/" + name
        var template = Array((directory + "/.tmp-XXXXXX").utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { buf -> Int32 in
            guard let base = buf.baseAddress else { return -1 }
            return mkstemp(base)
        }
        guard fd >= 0 else { throw UpdaterError.storage("cannot create temp file in \(directory) (errno \(errno))") }
        let tempPath = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        var ok = false
        defer {
            if !ok { unlink(tempPath) }
        }
        do {
            defer { close(fd) }
            var offset = 0
            let end = simulateCrashAfter.map { Swift.min($0, data.count) } ?? data.count
            while offset < end {
                let n = data[offset..<end].withUnsafeBytes { systemWrite(fd, $0.baseAddress, $0.count) }
                if n < 0 {
                    if errno == EINTR { continue }
                    throw UpdaterError.storage("cannot write \(tempPath) (errno \(errno))")
                }
                offset += n
            }
            if simulateCrashAfter != nil {
                ok = true  // a crash leaves the temp file behind
                throw UpdaterError.storage("simulated crash during write")
            }
            if syncingFile, fsync(fd) != 0 { throw UpdaterError.storage("fsync failed (errno \(errno))") }
        }
        guard rename(tempPath, target) == 0 else { throw UpdaterError.storage("rename failed (errno \(errno))") }
        ok = true
        if syncingDirectory { syncDirectory(directory) }
    }
}

/// Whether a rename awaits a directory fsync.
final class PendingSync: Sendable {
    private let pending = Mutex(false)

    func mark() { pending.withLock { $0 = true } }

    /// Whether a rename was pending; clears it.
    func take() -> Bool {
        pending.withLock { state in
            defer { state = false }
            return state
        }
    }
}
