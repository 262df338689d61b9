import Crypto
import Foundation
import HubClient
import NIOCore
import Synchronization
import TUF
import TUFClient

#if canImport(Glibc)
    import Glibc
#endif

/// Why an update step failed. `refused` marks what the device will not accept (altered or oversized artifacts, a
/// target outside signed metadata, a downgrade): reported as `refused`, nothing installed. Anything else (the hub
/// unreachable, a connection cut) is retried at the next check.
public struct UpdateError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public let refused: Bool
    public init(_ description: String, refused: Bool = false) {
        self.description = description
        self.refused = refused
    }
}

/// One pinned mutual-TLS connection to the hub's device API, kept alive for the whole update check: TUF metadata,
/// the assignment and the download go over it one after another. Used from one task at a time.
final class HubLink: @unchecked Sendable {
    // Only used by the update check that opened it, sequentially (the TUF client's actor, then the download).
    let connection: HTTPConnection
    init(_ connection: HTTPConnection) { self.connection = connection }

    static func open<Result: Sendable>(
        _ state: AgentState, apiURL: String, _ body: (HubLink) async throws -> Result
    ) async throws -> Result {
        let (host, port) = try endpoint(apiURL)
        return try await HTTPSClient.withConnection(
            host: host, port: port, tls: try state.credentials.tlsConfiguration(), pinned: state.pinned,
            profile: state.credentials.profile
        ) { connection in try await body(HubLink(connection)) }
    }

    static func endpoint(_ apiURL: String) throws -> (String, Int) {
        guard let url = URLComponents(string: apiURL), url.scheme == "https", let host = url.host, !host.isEmpty else {
            throw AgentError(.connection, "the device API must be an https:// URL, not \(apiURL)")
        }
        return (host, url.port ?? 443)
    }

    /// `GET /v1/updates/assignment`: the target path the hub wants this device to run, or nil.
    func assignment() async throws -> String? {
        let result = try await connection.send(method: "GET", path: "/v1/updates/assignment")
        guard result.status == 200,
            let object = try? JSONSerialization.jsonObject(with: Data(result.body)) as? [String: Any]
        else {
            throw UpdateError("the hub did not answer the assignment request (HTTP \(result.status))")
        }
        return try Self.target(object)
    }

    static func target(_ assignment: [String: Any]) throws -> String? {
        guard let target = assignment["target"], !(target is NSNull) else { return nil }
        guard let path = target as? String else { throw UpdateError("the hub's assignment is malformed") }
        return path
    }

    /// What `GET /v1/updates/check` answers: the highest root version published, the timestamp metadata's bytes
    /// (verified by the TUF client like any fetched file), and the assignment.
    struct Check: Sendable {
        let latestRoot: Int64
        let timestamp: [UInt8]
        let assigned: String?
    }

    /// One request for a check that finds nothing new; nil from a hub without the route (then the metadata and the
    /// assignment are fetched one by one).
    func check() async throws -> Check? {
        let result = try await connection.send(method: "GET", path: "/v1/updates/check")
        if result.status == 404 { return nil }
        guard result.status == 200,
            let object = try? JSONSerialization.jsonObject(with: Data(result.body)) as? [String: Any],
            let root = (object["root"] as? NSNumber)?.int64Value, root >= 1,
            let encoded = object["timestamp"] as? String, let timestamp = Data(base64Encoded: encoded),
            let assignment = object["assignment"] as? [String: Any]
        else { throw UpdateError("the hub did not answer the update check (HTTP \(result.status))") }
        return Check(latestRoot: root, timestamp: Array(timestamp), assigned: try Self.target(assignment))
    }
}

/// The TUF client's fetcher over a `HubLink` (the same checks as `HTTPFetcher`: the byte limit enforced from
/// Content-Length and while the body streams; a non-2xx status is `UpdaterError.httpStatus`, which the client needs
/// for TUF §5.3.3's "no newer root").
struct LinkFetcher: Fetcher {
    let link: HubLink
    /// The answer of `GET /v1/updates/check`, when the hub gave one: `timestamp.json` comes from it, and a root
    /// version above the one it names is not found (as the 404 the same server would have answered).
    var check: HubLink.Check?

    func fetch(_ url: String, maxBytes: Int) async throws -> [UInt8] {
        let path = Self.path(of: url)
        if let check {
            let name = path.split(separator: "/").last.map(String.init) ?? ""
            if name == "timestamp.json" {
                guard check.timestamp.count <= maxBytes else { throw UpdaterError.tooLarge(limit: maxBytes, url: url) }
                return check.timestamp
            }
            if name.hasSuffix(".root.json"), let version = Int64(name.dropLast(".root.json".count)),
                version > check.latestRoot
            {
                throw UpdaterError.httpStatus(404, url: url)
            }
        }
        return try await network(url, path: path, maxBytes: maxBytes)
    }

    private func network(_ url: String, path: String, maxBytes: Int) async throws -> [UInt8] {
        var status = 0
        var body: [UInt8] = []
        var errorBytes = 0
        try await link.connection.stream(
            path: path,
            onHead: { code, headers in
                status = code
                if (200..<300).contains(code),
                    let declared = headers.first(where: { $0.0.lowercased() == "content-length" }).flatMap({ Int($0.1) }
                    ),
                    declared > maxBytes
                {
                    throw UpdaterError.tooLarge(limit: maxBytes, url: url)
                }
            },
            onBody: { buffer in
                guard (200..<300).contains(status) else {
                    // An error's body is not read for ever either.
                    errorBytes += buffer.readableBytes
                    if errorBytes > 64 * 1024 { throw UpdaterError.tooLarge(limit: 64 * 1024, url: url) }
                    return
                }
                guard body.count + buffer.readableBytes <= maxBytes else {
                    throw UpdaterError.tooLarge(limit: maxBytes, url: url)
                }
                body.append(contentsOf: buffer.readableBytesView)
            })
        guard (200..<300).contains(status) else { throw UpdaterError.httpStatus(status, url: url) }
        return body
    }

    /// The path and query of an absolute URL (the link is already connected to its host).
    static func path(of url: String) -> String {
        guard let scheme = url.range(of: "://") else { return url }
        let rest = url[scheme.upperBound...]
        return rest.firstIndex(of: "/").map { String(rest[$0...]) } ?? "/"
    }
}

/// Every hash a release lists, computed as the bytes arrive.
struct ReleaseHasher {
    var sha256: SHA256?
    var sha384: SHA384?
    var sha512: SHA512?

    init(_ release: Release) {
        sha256 = release.hashes["sha256"] == nil ? nil : SHA256()
        sha384 = release.hashes["sha384"] == nil ? nil : SHA384()
        sha512 = release.hashes["sha512"] == nil ? nil : SHA512()
    }

    mutating func update(_ bytes: UnsafeRawBufferPointer) {
        sha256?.update(bufferPointer: bytes)
        sha384?.update(bufferPointer: bytes)
        sha512?.update(bufferPointer: bytes)
    }

    /// Whether every listed digest matches (each compared in full; the digests are public values).
    func matches(_ release: Release) -> Bool {
        var ok = true
        if let sha256 { ok = ok && hexEncode(sha256.finalize()) == release.hashes["sha256"] }
        if let sha384 { ok = ok && hexEncode(sha384.finalize()) == release.hashes["sha384"] }
        if let sha512 { ok = ok && hexEncode(sha512.finalize()) == release.hashes["sha512"] }
        return ok
    }
}

/// A target streamed to disk (`ROOT/<slot>.part`), hashed as it arrives, never more than its signed length, and
/// resumed with `Range`/`If-Range` (RFC 9110 §14.2, §13.1.5) after an interruption or a restart: the bytes already on
/// disk are read and hashed again, not fetched again. `<slot>.part.json` names the release the partial file belongs
/// to and the `ETag` it came with; a partial file of another release is discarded.
struct TargetDownload {
    let release: Release
    let urlPath: String
    let file: String
    var stateFile: String { file + ".json" }

    struct Resume: Codable {
        var identity: String
        var etag: String?
    }

    struct Outcome {
        /// Bytes fetched from the hub by this call (the rest were on disk already).
        var fetched: Int64
        var resumedFrom: Int64
    }

    /// Downloads what is missing and verifies the whole file; returns what was fetched. On a length or hash
    /// mismatch the partial file is removed and the error is a refusal.
    func run(_ link: HubLink, progress: (Int64, Int64) -> Void) async throws -> Outcome {
        var resume = (FileManager.default.contents(atPath: stateFile)).flatMap {
            try? JSONDecoder().decode(Resume.self, from: $0)
        }
        if resume?.identity != release.identity {
            unlink(file)
            resume = Resume(identity: release.identity, etag: nil)
            try saveResume(resume)
        }
        let fd = open(file, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw UpdateError("cannot write \(file): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var hasher = ReleaseHasher(release)
        var offset = try rehash(fd, into: &hasher, progress: progress)
        let resumedFrom = offset
        if offset > release.length {
            // More on disk than the release has: not ours to trust; start again.
            try restart(fd, &hasher, &offset)
        }
        var fetched: Int64 = 0
        if offset < release.length {
            var headers: [(String, String)] = []
            if offset > 0 {
                headers.append(("Range", "bytes=\(offset)-"))
                if let etag = resume?.etag { headers.append(("If-Range", etag)) }
            }
            var status = 0
            try await link.connection.stream(
                path: urlPath, headers: headers,
                onHead: { code, fields in
                    status = code
                    func field(_ name: String) -> String? { fields.first { $0.0.lowercased() == name }?.1 }
                    switch code {
                    case 200:
                        // The whole representation (the range was not honoured, or it changed): from the start.
                        if offset > 0 { try restart(fd, &hasher, &offset) }
                    case 206:
                        guard let range = field("content-range"), Self.contentRangeStart(range) == offset else {
                            throw UpdateError("the hub answered a range that was not asked for")
                        }
                    case 416:
                        return
                    default:
                        throw UpdateError("the hub did not serve \(release.path) (HTTP \(code))")
                    }
                    if let etag = field("etag"), etag != resume?.etag {
                        resume?.etag = etag
                        try saveResume(resume)
                    }
                },
                onBody: { buffer in
                    guard status == 200 || status == 206 else { return }
                    guard offset + Int64(buffer.readableBytes) <= release.length else {
                        discard()
                        throw UpdateError(
                            "\(release.path) is longer than its signed length (\(release.length) bytes)", refused: true)
                    }
                    try buffer.withUnsafeReadableBytes { bytes in
                        hasher.update(bytes)
                        try Self.writeAll(fd, bytes, file: file)
                    }
                    offset += Int64(buffer.readableBytes)
                    fetched += Int64(buffer.readableBytes)
                    progress(offset, release.length)
                })
            if status == 416 {
                // What is on disk is not a prefix the hub can continue: start over at the next check.
                discard()
                throw UpdateError("the hub refused to resume \(release.path); starting over")
            }
        }
        guard offset == release.length else {
            throw UpdateError("the download of \(release.path) ended at \(offset) of \(release.length) bytes")
        }
        guard hasher.matches(release) else {
            discard()
            throw UpdateError(
                "\(release.path) does not match its signed hashes (altered after signing, or corrupted)",
                refused: true)
        }
        fsync(fd)
        return Outcome(fetched: fetched, resumedFrom: resumedFrom)
    }

    /// Refuses to start a download the file system cannot hold: what is still to be fetched, plus the slot it is
    /// extracted into (at most its own size).
    func requireSpace(in directory: String) throws {
        var info = statvfs()
        guard statvfs(directory, &info) == 0 else { return }
        let available = Int64(info.f_bavail) * Int64(info.f_frsize)
        var existing = stat()
        let onDisk = stat(file, &existing) == 0 ? Int64(existing.st_size) : 0
        let needed = max(0, release.length - onDisk) + release.length
        guard available >= needed else {
            throw UpdateError(
                "not enough space for \(release.path): \(needed) bytes needed, \(available) available in \(directory)")
        }
    }

    /// Removes the partial file and its record.
    func discard() {
        unlink(file)
        unlink(stateFile)
    }

    private func saveResume(_ resume: Resume?) throws {
        guard let resume else { return }
        let directory = (file as NSString).deletingLastPathComponent
        try Outbox.write(stateFile, Array(try JSONEncoder().encode(resume)), directory: directory, mode: 0o600)
    }

    private func restart(_ fd: Int32, _ hasher: inout ReleaseHasher, _ offset: inout Int64) throws {
        guard ftruncate(fd, 0) == 0, lseek(fd, 0, SEEK_SET) == 0 else { throw UpdateError("cannot truncate \(file)") }
        hasher = ReleaseHasher(release)
        offset = 0
    }

    /// Hashes what is on disk and leaves the file offset at its end.
    private func rehash(_ fd: Int32, into hasher: inout ReleaseHasher, progress: (Int64, Int64) -> Void) throws
        -> Int64
    {
        var buffer = [UInt8](repeating: 0, count: 256 * 1024)
        var total: Int64 = 0
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            guard n >= 0 else { throw UpdateError("cannot read \(file)") }
            if n == 0 { break }
            buffer.withUnsafeBytes { hasher.update(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            total += Int64(n)
            // Progress (which also tells the stall watchdog that work goes on) every 8 MiB re-hashed.
            if total % (8 << 20) < Int64(n) { progress(total, release.length) }
            if total > release.length { break }
        }
        return total
    }

    static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, file: String) throws {
        guard let base = bytes.baseAddress else { return }
        var written = 0
        while written < bytes.count {
            let n = Glibc.write(fd, base + written, bytes.count - written)
            guard n > 0 else { throw UpdateError("cannot write \(file): \(String(cString: strerror(errno)))") }
            written += n
        }
    }

    /// The first byte of `bytes S-E/L` (RFC 9110 §14.4).
    static func contentRangeStart(_ field: String) -> Int64? {
        guard field.hasPrefix("bytes ") else { return nil }
        return Int64(field.dropFirst(6).prefix { $0 != "-" })
    }

    /// The URL path of a target: hash-prefixed (`dir/HASH.name`, with the first hash listed) when the repository
    /// uses consistent snapshots (TUF §5.7.3), as the TUF client itself asks for it.
    static func urlPath(_ target: TargetFile, consistentSnapshot: Bool) -> String {
        "/v1/updates/targets/" + Updater.downloadPath(target, hashPrefixed: consistentSnapshot)
    }
}
