import Foundation
import JSON
import TUF

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Small POSIX file helpers for the repository side.
enum Files {
    static func read(_ path: String) throws(RepositoryError) -> [UInt8]? {
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw RepositoryError(.io, "cannot read \(path)")
        }
        return Array(data)
    }

    static func makeDirectory(_ path: String, mode: Int = 0o755) throws(RepositoryError) {
        do {
            try FileManager.default.createDirectory(
                atPath: path,
                withIntermediateDirectories: true,
                attributes: [.posixPermissions: mode]
            )
        } catch {
            throw RepositoryError(.io, "cannot create directory \(path)")
        }
    }

    /// Writes `data` to `path` atomically: unique temp file in the same directory, fsync,
    /// `rename` over the target, fsync of the directory. A reader (the HTTP server) sees the
    /// old or the new file, never a partial one. `mode` applies to the new file.
    static func writeAtomically(_ data: [UInt8], to path: String, mode: mode_t = 0o644) throws(RepositoryError) {
        let directory = (path as NSString).deletingLastPathComponent
        var template = Array((directory + "/.tmp-XXXXXX").utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { buf -> Int32 in
            guard let base = buf.baseAddress else { return -1 }
            return mkstemp(base)
        }
        guard fd >= 0 else { throw RepositoryError(.io, "cannot create a temp file in \(directory)") }
        let tempPath = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        var ok = false
        defer {
            if !ok { unlink(tempPath) }
        }
        var offset = 0
        var failed = fchmod(fd, mode) != 0
        while !failed, offset < data.count {
            let n = data[offset...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                failed = true
            } else {
                offset += n
            }
        }
        if !failed, fsync(fd) != 0 { failed = true }
        close(fd)
        guard !failed else { throw RepositoryError(.io, "cannot write \(path)") }
        guard rename(tempPath, path) == 0 else { throw RepositoryError(.io, "cannot rename into \(path)") }
        ok = true
        // The rename is durable only once the directory is synced: a failure is reported, not ignored (the file is
        // in place, but a power loss could still take it back).
        try syncDirectory(directory)
    }

    /// Syncs `directory`, so that a rename or a new file in it survives a power loss; an error when it cannot be
    /// opened or synced.
    static func syncDirectory(_ directory: String) throws(RepositoryError) {
        let dfd = open(directory.isEmpty ? "." : directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard dfd >= 0 else { throw RepositoryError(.io, "cannot sync the directory \(directory)") }
        defer { close(dfd) }
        guard fsync(dfd) == 0 else { throw RepositoryError(.io, "cannot sync the directory \(directory)") }
    }

    static func remove(_ path: String) {
        unlink(path)
    }

    /// Role names in metadata file names, encoded as python-tuf and our client do (`percentEncode`).
    static func quote(_ s: String) -> String { percentEncode(s) }
}

/// Formats and reads TUF `expires` values (TUF §4.3: "YYYY-MM-DDTHH:MM:SSZ", UTC).
public enum ExpiryDate {
    /// Seconds since the Unix epoch, now.
    public static func now() -> Int64 { Int64(Date().timeIntervalSince1970) }

    /// `YYYY-MM-DDTHH:MM:SSZ` for `seconds` since the epoch (Howard Hinnant's civil-from-days).
    public static func format(_ seconds: Int64) -> String { Timestamp8601(secondsSinceEpoch: seconds).text }
}

/// Compact RFC 8259 JSON for metadata files: keys sorted like canonical JSON, but control
/// characters escaped (canonical JSON leaves them raw, which strict JSON parsers refuse; PEM
/// public keys contain newlines). Signatures cover the canonical form of `signed`, not these bytes.
enum JSONWriter {
    static func encode(_ value: JSONValue) throws(RepositoryError) -> [UInt8] {
        guard !value.containsFloat else { throw RepositoryError(.repository, "floats are not allowed in metadata") }
        return value.serialized(sortingKeys: true)
    }
}
