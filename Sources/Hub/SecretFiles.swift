import Core
import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// Files that hold private keys: created with mode 0600 from the first byte (never chmod-ed after the fact), and
/// refused when they are readable by group or others.
public enum SecretFiles {
    /// Writes `contents` to a new file with mode 0600. Refuses to overwrite. The contents go to a temporary file of a
    /// unique name beside it (`mkstemp`: mode 0600, never another writer's), synced, then are linked in under `path`
    /// (`link` fails on an existing name, as `O_EXCL` did, so of two racing creators one wins and the other is
    /// refused), the temporary name removed and the directory synced: after a crash or a power loss the file is
    /// absent or whole, never an empty key file that would refuse every later start. On a file system without hard
    /// links (FAT, some network mounts) the file is written in place with `O_EXCL`, as before.
    public static func create(_ path: String, contents: String) throws {
        let bytes = Array(contents.utf8)
        let temporary = try temporaryCopy(beside: path, bytes, mode: 0o600)
        let linked = link(temporary, path) == 0
        let reason = errno
        unlink(temporary)
        if !linked {
            guard [EPERM, ENOTSUP, EOPNOTSUPP, EMLINK].contains(reason) else {
                throw HubStartupError("cannot create \(path): \(String(cString: strerror(reason)))")
            }
            try createInPlace(path, bytes)
        }
        try syncDirectory(of: path)
    }

    /// `create` where hard links are not to be had: `O_EXCL`, written and synced in place.
    private static func createInPlace(_ path: String, _ bytes: [UInt8]) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw HubStartupError("cannot create \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        guard writeAll(fd, bytes), fsync(fd) == 0 else {
            throw HubStartupError("cannot write \(path): \(String(cString: strerror(errno)))")
        }
    }

    /// Writes `bytes` to a new file of a unique name beside `path` (`mkstemp`: never another writer's, never a
    /// neighbour's), with `mode` whatever the process's umask (the hub narrows it while it opens the store), synced
    /// and closed; returns its name. Nothing is left behind on an error.
    private static func temporaryCopy(beside path: String, _ bytes: [UInt8], mode: mode_t) throws -> String {
        let directory = (path as NSString).deletingLastPathComponent
        var template = Array(((directory.isEmpty ? "." : directory) + "/.bulwark-XXXXXX").utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { buffer in buffer.baseAddress.map { mkstemp($0) } ?? -1 }
        guard fd >= 0 else { throw HubStartupError("cannot create \(path): \(String(cString: strerror(errno)))") }
        let temporary = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        guard fchmod(fd, mode) == 0, writeAll(fd, bytes), fsync(fd) == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            unlink(temporary)
            throw HubStartupError("cannot write \(path): \(reason)")
        }
        guard close(fd) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(temporary)
            throw HubStartupError("cannot write \(path): \(reason)")
        }
        return temporary
    }

    /// Writes every byte to `fd`; false on an error (`errno` says which).
    private static func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var written = 0
        while written < bytes.count {
            let n = bytes[written...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { return false }
            written += n
        }
        return true
    }

    /// Syncs the directory that holds `path`, so that a rename or link into it survives a power loss; a directory
    /// that cannot be opened or synced is an error.
    static func syncDirectory(of path: String) throws {
        try syncDirectory((path as NSString).deletingLastPathComponent)
    }

    /// Syncs `directory` (see `syncDirectory(of:)`).
    static func syncDirectory(_ directory: String) throws {
        if let failure = DirectorySync.sync(directory) { throw HubStartupError(failure) }
    }

    /// Reads a key file after checking that only its owner can read it.
    public static func read(_ path: String) throws -> String {
        var info = stat()
        guard stat(path, &info) == 0 else { throw HubStartupError("cannot read \(path): it does not exist") }
        let mode = info.st_mode & 0o777
        if mode & 0o077 != 0 {
            throw HubStartupError(
                "refusing to start: \(path) is readable by group or others (mode \(String(mode, radix: 8))); "
                    + "run: chmod 600 \(path)")
        }
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw HubStartupError("cannot read \(path)")
        }
        return text
    }

    /// Creates a directory that only its owner may enter (0700), if missing. An existing directory that group or
    /// others may read or enter is tightened to 0700 when this process owns it (the returned notice says so, for the
    /// log) and refused otherwise: the data directory holds the store, whose identity resolving keys link a device's
    /// rotating identifiers, and the keys.
    @discardableResult
    public static func makePrivateDirectory(_ path: String) throws -> String? {
        var info = stat()
        if lstat(path, &info) == 0 {
            guard info.st_mode & S_IFMT == S_IFDIR else {
                throw HubStartupError("\(path) exists and is not a directory")
            }
            let mode = info.st_mode & 0o777
            guard mode & 0o077 != 0 else { return nil }
            guard info.st_uid == geteuid(), chmod(path, 0o700) == 0 else {
                throw HubStartupError(
                    "refusing to start: \(path) is open to group or others (mode \(String(mode, radix: 8))) and "
                        + "cannot be tightened by this user; run: chmod 700 \(path)")
            }
            return "\(path) was open to group or others (mode \(String(mode, radix: 8))); tightened to 700"
        }
        do {
            try FileManager.default.createDirectory(
                atPath: path, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw HubStartupError("cannot create directory \(path)")
        }
        // createDirectory's mode is filtered by the umask: make sure of it.
        guard chmod(path, 0o700) == 0 else { throw HubStartupError("cannot set mode 700 on \(path)") }
        return nil
    }

    /// The SQLite store and its `-wal` and `-shm` files must be private to their owner, as the keys are: refused at
    /// start otherwise. A missing database file is created empty with mode 0600 first (SQLite gives the `-wal` and
    /// `-shm` files it makes later the database file's mode).
    public static func prepareStoreFile(_ path: String) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        if fd >= 0 {
            close(fd)
        } else if errno != EEXIST {
            throw HubStartupError("cannot create \(path): \(String(cString: strerror(errno)))")
        }
        for file in [path, path + "-wal", path + "-shm"] {
            var info = stat()
            guard stat(file, &info) == 0 else { continue }
            let mode = info.st_mode & 0o777
            if mode & 0o077 != 0 {
                throw HubStartupError(
                    "refusing to start: \(file) is readable by group or others (mode \(String(mode, radix: 8))); "
                        + "run: chmod 600 \(file)")
            }
        }
    }

    /// Replaces `path` atomically: the new contents go to a temporary file of its own beside it (0600 when
    /// `secret`, 0644 otherwise; see `temporaryCopy`), synced, then renamed over it, so a crash leaves either the old
    /// file or the new one, and writers racing leave one whole file; the directory is synced after the rename, so
    /// the new one survives a power loss once this returns.
    public static func replace(_ path: String, contents: String, secret: Bool) throws {
        let temporary = try temporaryCopy(beside: path, Array(contents.utf8), mode: secret ? 0o600 : 0o644)
        guard rename(temporary, path) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(temporary)
            throw HubStartupError("cannot replace \(path): \(reason)")
        }
        try syncDirectory(of: path)
    }

    /// Writes a public file (certificates) atomically, as `replace` does (the certificate the hub's key needs, the
    /// CA certificate devices trust: losing either to a power loss stops the hub from starting).
    public static func writePublic(_ path: String, contents: String) throws {
        try replace(path, contents: contents, secret: false)
    }
}
