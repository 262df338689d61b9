import Crypto
import Foundation
import TUF

#if canImport(Glibc)
    import Glibc
#endif

/// Where releases are installed and which one boots: the seam for a real bootloader. `DirectorySlotStore` keeps two
/// directories and a boot record; an implementation over RAUC (`rauc install`, `rauc status mark-good`) or U-Boot
/// (`fw_setenv bootcount`, `upgrade_available`) writes partitions and environment variables instead, under the same
/// rules (`BootRecord`).
public protocol SlotStore: Sendable {
    /// The boot record; a fresh one when none was written yet.
    func bootRecord() throws -> BootRecord
    /// Replaces the boot record atomically (written in full, synced, renamed).
    func write(_ record: BootRecord) throws
    /// Makes `slot` empty and writable, ready for `install`.
    func clear(_ slot: Slot) throws
    /// Writes the verified artifact at `artifact` into `slot` (hashing it again as it is read: it must still match
    /// `release`), records the hash of every file it holds, and makes the slot read-only. Returns how write protection went (e.g. whether files were made immutable).
    func install(_ slot: Slot, from artifact: String, verifying release: Release) throws -> String
    /// Checks that `slot` holds exactly what was installed (every file's hash, no file added or removed).
    func verify(_ slot: Slot) throws
    /// The directory of `slot` (what `{slot}` names in the payload command).
    func directory(of slot: Slot) -> String
    /// Where downloads in progress are kept (`ROOT/<slot>.part`) and the payload's leftover check looks.
    var root: String { get }
    /// Creates what the store needs on disk, and refuses a layout another user could change.
    func ensureDirectories() throws
}

/// Why a slot could not be installed or verified.
public struct SlotError: Error, CustomStringConvertible, Equatable {
    public let description: String
    /// The artifact itself is unusable (its format, its contents): installing it again would fail again. Otherwise
    /// (a full disk, a read error) it may work next time.
    public let permanent: Bool
    public init(_ description: String, permanent: Bool = false) {
        self.description = description
        self.permanent = permanent
    }
    public static func == (a: SlotError, b: SlotError) -> Bool { a.description == b.description }
}

/// Slots as directories: `ROOT/a`, `ROOT/b`, the boot record `ROOT/boot` (JSON, replaced atomically). Each slot's
/// manifest (path, mode and SHA-256 of every file) is kept in `manifests`, a directory the payload cannot write
/// (`STATE/trust`, 0700, owned by the agent), so a payload that edits its own slot cannot also edit the record of it.
///
/// Artifacts are POSIX ustar archives (`tar --format=ustar -cf app.tar -C dir .`) holding regular files and
/// directories only: a link, a device, an absolute path, a `..` component or a PAX/GNU extension header is refused,
/// so nothing is ever written outside the slot. A committed slot is read-only (files 0444, or 0555 when executable;
/// directories 0555), and immutable (`chattr +i`) when the agent runs as root on a file system that supports it.
public struct DirectorySlotStore: SlotStore {
    public let root: String
    public let manifests: String
    /// The most files an artifact may hold.
    public var maximumFiles = 10_000

    public init(root: String, manifests: String) {
        self.root = root
        self.manifests = manifests
    }

    public func directory(of slot: Slot) -> String { root + "/" + slot.rawValue }
    var bootFile: String { root + "/boot" }
    func manifestFile(_ slot: Slot) -> String { manifests + "/slot-\(slot.rawValue).manifest" }

    public func bootRecord() throws -> BootRecord {
        try ensureDirectories()
        guard let data = FileManager.default.contents(atPath: bootFile) else { return BootRecord() }
        do { return try JSONDecoder().decode(BootRecord.self, from: data) } catch {
            throw SlotError("\(bootFile) is not a valid boot record: restore it or remove the slots directory")
        }
    }

    public func write(_ record: BootRecord) throws {
        try ensureDirectories()
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        try Outbox.write(bootFile, Array(try encoder.encode(record)), directory: root, mode: 0o644)
    }

    /// Creates the slots root (0755) and the manifests directory (0700), and refuses either when it belongs to
    /// another user or others may write it: the boot record in the root decides what runs, so the payload's user
    /// must never be able to replace it.
    public func ensureDirectories() throws {
        for (path, mode) in [(root, mode_t(0o755)), (manifests, mode_t(0o700))] {
            if mkdir(path, mode) == 0 {
                chmod(path, mode)  // whatever the umask
            } else if errno != EEXIST {
                throw SlotError("cannot create \(path): \(String(cString: strerror(errno)))")
            }
            var info = stat()
            guard lstat(path, &info) == 0, info.st_mode & S_IFMT == S_IFDIR else {
                throw SlotError("\(path) is not a directory")
            }
            guard info.st_uid == geteuid(), info.st_mode & 0o022 == 0 else {
                throw SlotError(
                    "\(path) must belong to the agent's user and not be writable by group or others "
                        + "(chown and chmod go-w it)")
            }
        }
    }

    public func clear(_ slot: Slot) throws {
        try ensureDirectories()
        let path = directory(of: slot)
        unlink(manifestFile(slot))
        if FileManager.default.fileExists(atPath: path) {
            Self.makeMutable(path)
            do { try FileManager.default.removeItem(atPath: path) } catch {
                throw SlotError("cannot clear slot \(slot.rawValue) (\(path)): \(error.localizedDescription)")
            }
        }
        guard mkdir(path, 0o755) == 0 else {
            throw SlotError("cannot create \(path): \(String(cString: strerror(errno)))")
        }
        chmod(path, 0o755)
    }

    public func install(_ slot: Slot, from artifact: String, verifying release: Release) throws -> String {
        let target = directory(of: slot)
        let entries = try UstarReader.extract(artifact, into: target, maximumFiles: maximumFiles, verifying: release)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        try Outbox.write(
            manifestFile(slot), Array(try encoder.encode(entries)), directory: manifests, mode: 0o600)
        return Self.protect(target, entries: entries)
    }

    public func verify(_ slot: Slot) throws {
        let path = directory(of: slot)
        guard let data = FileManager.default.contents(atPath: manifestFile(slot)),
            let expected = try? JSONDecoder().decode([SlotEntry].self, from: data)
        else { throw SlotError("slot \(slot.rawValue) has no manifest: it was not installed by this agent") }
        let found = try Self.scan(path)
        let byPath = Dictionary(found.map { ($0.path, $0) }, uniquingKeysWith: { first, _ in first })
        for entry in expected {
            guard let actual = byPath[entry.path] else {
                throw SlotError("slot \(slot.rawValue): \(entry.path) is missing")
            }
            guard actual.directory == entry.directory, actual.sha256 == entry.sha256 else {
                throw SlotError("slot \(slot.rawValue): \(entry.path) was modified")
            }
        }
        if let extra = found.first(where: { entry in !expected.contains { $0.path == entry.path } }) {
            throw SlotError("slot \(slot.rawValue): \(extra.path) was added")
        }
    }

    /// Every file and directory under `root` (relative paths), with the SHA-256 of each file; a link or any other
    /// kind of file is reported as tampering.
    static func scan(_ root: String) throws -> [SlotEntry] {
        var entries: [SlotEntry] = []
        var stack = [""]
        while let relative = stack.popLast() {
            let absolute = relative.isEmpty ? root : root + "/" + relative
            guard let names = try? FileManager.default.contentsOfDirectory(atPath: absolute) else {
                throw SlotError("cannot read \(absolute)")
            }
            for name in names.sorted() {
                let path = relative.isEmpty ? name : relative + "/" + name
                var info = stat()
                guard lstat(root + "/" + path, &info) == 0 else { throw SlotError("cannot read \(path)") }
                switch info.st_mode & S_IFMT {
                case S_IFDIR:
                    entries.append(SlotEntry(path: path, directory: true, executable: false, sha256: nil))
                    stack.append(path)
                case S_IFREG:
                    entries.append(
                        SlotEntry(
                            path: path, directory: false, executable: info.st_mode & 0o111 != 0,
                            sha256: try hashFile(root + "/" + path)))
                default:
                    throw SlotError("\(path) is not a regular file or directory")
                }
            }
        }
        return entries
    }

    static func hashFile(_ path: String) throws -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { throw SlotError("cannot read \(path)") }
        defer { close(fd) }
        var hasher = SHA256()
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            guard n >= 0 else { throw SlotError("cannot read \(path)") }
            if n == 0 { break }
            buffer.withUnsafeBytes { hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
        }
        return hexEncode(hasher.finalize())
    }

    /// Files 0444 (0555 when executable), directories 0555, deepest first; then `chattr +i` when root.
    static func protect(_ root: String, entries: [SlotEntry]) -> String {
        for entry in entries.reversed() {
            let mode: mode_t = entry.directory || entry.executable ? 0o555 : 0o444
            chmod(root + "/" + entry.path, mode)
        }
        chmod(root, 0o555)
        guard geteuid() == 0 else { return "read-only (not immutable: the agent is not root)" }
        guard let chattr = executable(["/usr/bin/chattr", "/bin/chattr"]) else {
            return "read-only (not immutable: chattr is not installed)"
        }
        let status = runQuietly(chattr, ["-R", "+i", root])
        return status == 0
            ? "read-only and immutable" : "read-only (not immutable: the file system does not support chattr +i)"
    }

    /// Undoes `protect` so the slot can be replaced.
    public static func makeMutable(_ root: String) {
        if geteuid() == 0, let chattr = executable(["/usr/bin/chattr", "/bin/chattr"]) {
            _ = runQuietly(chattr, ["-R", "-i", root])
        }
        chmod(root, 0o755)
        if let enumerator = FileManager.default.enumerator(atPath: root) {
            for case let path as String in enumerator {
                var info = stat()
                if lstat(root + "/" + path, &info) == 0, info.st_mode & S_IFMT == S_IFDIR {
                    chmod(root + "/" + path, 0o755)
                }
            }
        }
    }

    /// The first of `paths` that is an executable file.
    static func executable(_ paths: [String]) -> String? { paths.first { access($0, X_OK) == 0 } }

    static func runQuietly(_ executable: String, _ arguments: [String]) -> Int32 {
        guard let process = try? ChildProcess.start(executable, arguments, newGroup: false) else { return 127 }
        return process.waitBlocking()
    }
}

/// One line of a slot's manifest.
struct SlotEntry: Codable, Equatable {
    var path: String
    var directory: Bool
    var executable: Bool
    var sha256: String?
}

/// A strict reader of POSIX ustar archives (IEEE Std 1003.1-2008, `pax` "ustar Interchange Format"): 512-byte
/// headers with a checksum, octal fields, the `ustar\0` magic, and only regular files (`0`, or NUL) and directories
/// (`5`). It reads the archive from disk block by block and writes each file as it goes.
enum UstarReader {
    /// Extracts `archive` into `root`. With `release`, every byte read (to the end of the file) is hashed as it is
    /// read, and the extraction fails unless the length and every hash match the signed ones: what is installed is
    /// exactly what was verified, even if the file changed on disk in between.
    static func extract(_ archive: String, into root: String, maximumFiles: Int, verifying release: Release? = nil)
        throws -> [SlotEntry]
    {
        let fd = open(archive, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SlotError("cannot read \(archive)") }
        defer { close(fd) }
        let input = ArchiveInput(fd: fd, release: release)
        func matchesSigned() throws -> Bool {
            guard let release else { return true }
            var rest = [UInt8](repeating: 0, count: 64 * 1024)
            while try input.read(&rest, count: 0, upTo: rest.count) {}
            return input.total == release.length && input.hasher?.matches(release) == true
        }
        let entries: [SlotEntry]
        do { entries = try extract(input, into: root, maximumFiles: maximumFiles) } catch let error as SlotError {
            // A format error in the bytes that were signed will recur (permanent); in bytes that changed on disk
            // after they were verified, it will not.
            guard error.permanent, try matchesSigned() else {
                throw SlotError("the archive no longer matches its signed length and hashes")
            }
            throw error
        }
        guard try matchesSigned() else { throw SlotError("the archive no longer matches its signed length and hashes") }
        return entries
    }

    private static func extract(_ input: ArchiveInput, into root: String, maximumFiles: Int) throws -> [SlotEntry] {
        var entries: [SlotEntry] = []
        var seen = Set<String>()
        var header = [UInt8](repeating: 0, count: 512)
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            guard try input.read(&header, count: 512) else {
                throw SlotError("the archive ends without its end-of-archive blocks", permanent: true)
            }
            if header.allSatisfy({ $0 == 0 }) { break }
            guard let parsed = try parseHeader(header) else { continue }
            guard entries.count < maximumFiles else {
                throw SlotError("the archive holds more than \(maximumFiles) files", permanent: true)
            }
            guard seen.insert(parsed.path).inserted else {
                throw SlotError("the archive lists \(parsed.path) twice", permanent: true)
            }
            let absolute = root + "/" + parsed.path
            if parsed.directory {
                guard mkdir(absolute, 0o755) == 0 || errno == EEXIST else {
                    throw SlotError("cannot create \(parsed.path): \(String(cString: strerror(errno)))")
                }
                entries.append(SlotEntry(path: parsed.path, directory: true, executable: false, sha256: nil))
                continue
            }
            // O_EXCL | O_NOFOLLOW: never through a link, never over something already there.
            let out = open(absolute, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
            guard out >= 0 else { throw SlotError("cannot create \(parsed.path): \(String(cString: strerror(errno)))") }
            var hasher = SHA256()
            var left = parsed.size
            do {
                defer { close(out) }
                while left > 0 {
                    let chunk = Int(min(Int64(buffer.count), left))
                    guard try input.read(&buffer, count: chunk) else {
                        throw SlotError("the archive ends inside \(parsed.path)", permanent: true)
                    }
                    try buffer.withUnsafeBytes { bytes in
                        let slice = UnsafeRawBufferPointer(rebasing: bytes[0..<chunk])
                        hasher.update(bufferPointer: slice)
                        guard let base = slice.baseAddress else { return }
                        var written = 0
                        while written < chunk {
                            let n = Glibc.write(out, base + written, chunk - written)
                            guard n > 0 else { throw SlotError("cannot write \(parsed.path)") }
                            written += n
                        }
                    }
                    left -= Int64(chunk)
                }
                guard fsync(out) == 0 else { throw SlotError("cannot write \(parsed.path)") }
            }
            // The data is padded to a whole block.
            let padding = Int((512 - parsed.size % 512) % 512)
            if padding > 0, try !input.read(&buffer, count: padding) {
                throw SlotError("the archive ends inside \(parsed.path)", permanent: true)
            }
            entries.append(
                SlotEntry(
                    path: parsed.path, directory: false, executable: parsed.mode & 0o111 != 0,
                    sha256: hexEncode(hasher.finalize())))
        }
        return entries
    }

    struct Header: Equatable {
        var path: String
        var directory: Bool
        var mode: Int64
        var size: Int64
    }

    /// The entry a header describes; nil for the archive's root directory (`./`), which is the slot itself.
    static func parseHeader(_ header: [UInt8]) throws -> Header? {
        guard header.count == 512 else { throw SlotError("short archive header", permanent: true) }
        // The checksum: the sum of the header's bytes with the checksum field read as spaces.
        let stored = try octal(header[148..<156], "checksum")
        var sum: Int64 = 0
        for (index, byte) in header.enumerated() { sum += (148..<156).contains(index) ? 32 : Int64(byte) }
        guard sum == stored else { throw SlotError("an archive header's checksum does not match", permanent: true) }
        guard Array(header[257..<263]) == Array("ustar\0".utf8) else {
            throw SlotError("the artifact is not a POSIX ustar archive (tar --format=ustar)", permanent: true)
        }
        let type = header[156]
        guard type == 0 || type == UInt8(ascii: "0") || type == UInt8(ascii: "5") else {
            throw SlotError(
                "the archive holds an entry of type \(String(UnicodeScalar(type))) (only files and directories are "
                    + "installed: no links, devices or extension headers)", permanent: true)
        }
        func text(_ range: Range<Int>) -> [UInt8] { Array(header[range].prefix { $0 != 0 }) }
        let prefix = text(345..<500)
        let name = text(0..<100)
        var raw = prefix.isEmpty ? name : prefix + [UInt8(ascii: "/")] + name
        let directory = type == UInt8(ascii: "5")
        while raw.last == UInt8(ascii: "/") { raw.removeLast() }
        while raw.starts(with: Array("./".utf8)) { raw.removeFirst(2) }
        if directory, raw.isEmpty || raw == [UInt8(ascii: ".")] { return nil }
        guard let path = String(validating: raw, as: UTF8.self), isSafe(path) else {
            throw SlotError("the archive holds an unsafe path", permanent: true)
        }
        let size = try octal(header[124..<136], "size")
        guard !directory || size == 0 else { throw SlotError("a directory entry has data", permanent: true) }
        return Header(path: path, directory: directory, mode: try octal(header[100..<108], "mode"), size: size)
    }

    /// Relative, every component a plain name: no empty, `.` or `..` component, no control character, no NUL.
    static func isSafe(_ path: String) -> Bool {
        guard !path.isEmpty, path.utf8.count <= 255, !path.hasPrefix("/") else { return false }
        guard !path.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) else { return false }
        return path.split(separator: "/", omittingEmptySubsequences: false).allSatisfy {
            !$0.isEmpty && $0 != "." && $0 != ".."
        }
    }

    static func octal(_ field: ArraySlice<UInt8>, _ name: String) throws -> Int64 {
        var value: Int64 = 0
        var digits = 0
        for byte in field {
            if byte == 0 || byte == UInt8(ascii: " ") {
                if digits > 0 { break } else { continue }
            }
            guard (UInt8(ascii: "0")...UInt8(ascii: "7")).contains(byte), digits < 12 else {
                throw SlotError("an archive header's \(name) field is not octal", permanent: true)
            }
            value = value * 8 + Int64(byte - UInt8(ascii: "0"))
            digits += 1
        }
        guard digits > 0 else { throw SlotError("an archive header's \(name) field is empty", permanent: true) }
        return value
    }

}

/// The archive as it is read: every byte counted and, when verifying, hashed.
final class ArchiveInput {
    let fd: Int32
    var hasher: ReleaseHasher?
    var total: Int64 = 0

    init(fd: Int32, release: Release?) {
        self.fd = fd
        hasher = release.map(ReleaseHasher.init)
    }

    /// Reads exactly `count` bytes; false at a clean end of file before the first byte. With `upTo`, reads what
    /// one call gives (at most that many), false at the end of the file.
    func read(_ buffer: inout [UInt8], count: Int, upTo: Int? = nil) throws -> Bool {
        let wanted = upTo ?? count
        var got = 0
        while got < wanted {
            let n = buffer.withUnsafeMutableBytes { bytes -> Int in
                guard let base = bytes.baseAddress else { return -1 }
                return Glibc.read(fd, base + got, wanted - got)
            }
            guard n >= 0 else { throw SlotError("cannot read the archive") }
            if n == 0 {
                if got == 0 { return false }
                throw SlotError("the archive is truncated", permanent: true)
            }
            buffer.withUnsafeBytes { hasher?.update(UnsafeRawBufferPointer(rebasing: $0[got..<(got + n)])) }
            total += Int64(n)
            got += n
            if upTo != nil { return true }
        }
        return true
    }
}
