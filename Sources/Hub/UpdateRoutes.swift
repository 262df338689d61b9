import Core
import Foundation
import Gateway
import HTTPTypes
import Hummingbird
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The update repository, served read-only to authenticated devices on the device listener:
/// `GET /v1/updates/metadata/<file>` and `GET /v1/updates/targets/<path>` from the published repository
/// (`tuf.repository`: `metadata/`, `targets/`; never `staged/`). Each request passes the gateway's identity,
/// quarantine and rate-limit stages (route `updates`, with its own larger limit, `gateway.updatesRate`); the content
/// needs no request signature (it is signed TUF metadata and hashed artifacts, and nothing is written). Paths are
/// refused unless every segment is a plain name (no `..`, `.`, empty or percent-encoded segment, no absolute path)
/// and every component on disk is a directory or a regular file, never a symbolic link. Targets stream from disk in
/// chunks (the hub never holds an artifact in memory), with `ETag` and single-range `Range`/`If-Range`
/// (RFC 9110 §13.1.5, §14). Downloads in progress are bounded per device and in all (`updates.maxDownloads*`).
struct UpdateRoutes {
    let repository: String
    let gateway: GatewayPipeline
    let downloads: DownloadSlots
    let assignments: UpdateAssignments
    let fileIO = FileIO()
    let smallFiles = SmallFileCache()
    let rootVersions = RootVersions()

    func register(on router: Router<HubRequestContext>) {
        router.get("/v1/updates/assignment") { request, context in
            let device = try admit(request, context)
            return JSONResponse.make(.ok, text: try assignments.answer(try await assignments.resolve(device)))
        }
        router.get("/v1/updates/check") { request, context in
            let device = try admit(request, context)
            return try await check(device, context)
        }
        router.get("/v1/updates/metadata/:file") { request, context in
            try await serve(request, context, directory: "metadata", path: context.parameters.get("file") ?? "")
        }
        router.get("/v1/updates/targets/**") { request, context in
            try await serve(
                request, context, directory: "targets", path: context.parameters.getCatchAll().joined(separator: "/"))
        }
    }

    /// `GET /v1/updates/check`: what an update check that finds nothing new needs, in one request instead of three:
    /// `{"root": N, "timestamp": BASE64, "assignment": {…}}`, with N the highest root version published, the
    /// published `timestamp.json` byte for byte, and the assignment as `GET /v1/updates/assignment` answers it.
    /// The device's TUF client verifies the timestamp as if it had fetched it (TUF §5.4), and treats versions above
    /// N as not found (§5.3.3): a hint that is exactly as (un)trusted as the 404 it replaces, since the same server
    /// answers both. Everything else (a newer root, snapshot, targets) is still fetched file by file.
    func check(_ device: DeviceID, _ context: HubRequestContext) async throws -> Response {
        let metadata = repository + "/metadata"
        guard let file = Self.resolve(metadata, "timestamp.json"), let timestamp = smallFiles.bytes(of: file),
            let root = rootVersions.latest(metadata)
        else {
            throw HubError(.notFound, "not-found", detail: "updates: no published repository", event: nil)
        }
        let assignment = try assignments.answer(try await assignments.resolve(device))
        let encoded = Data(timestamp.readableBytesView).base64EncodedString()
        // Every part is generated here: an integer, base64 and canonical JSON.
        return JSONResponse.make(
            .ok, text: #"{"assignment":\#(assignment),"root":\#(root),"timestamp":"\#(encoded)"}"#)
    }

    /// The gateway's identity, quarantine, authorization and rate-limit stages for route `updates`.
    func admit(_ request: Request, _ context: HubRequestContext) throws -> DeviceID {
        guard let peer = context.peer else { throw HubError.forbidden("no peer identity") }
        var message = InboundMessage(
            identity: peer.identity, route: "updates", source: context.sourceText,
            contentType: nil, messageType: nil, body: [],
            transport: .http(
                SignedRequest(
                    method: "GET", path: request.uri.path, signatureInput: nil, signature: nil, contentDigest: nil),
                key: nil))
        message.deviceKey = peer.deviceKey
        message.sourceAddress = context.sourceKey
        switch gateway.admitEnvelope(message, now: GatewayTime.now()) {
        case .success(let admitted): return admitted
        case .failure(let refusal): throw GatewayError(refusal: refusal, identity: peer.identity.uri)
        }
    }

    func serve(_ request: Request, _ context: HubRequestContext, directory: String, path: String) async throws
        -> Response
    {
        let device = try admit(request, context)
        guard let file = Self.resolve(repository + "/" + directory, path) else {
            // The next root version not existing is how every TUF refresh ends (§5.3.3): the normal answer, not
            // worth a log line per device and check.
            if directory == "metadata", Self.isVersionedRoot(path) {
                return ProblemResponse.make(
                    ProblemResponse.problem(forStatus: 404), correlationID: context.correlationID.rawValue)
            }
            throw HubError(
                .notFound, "not-found",
                detail:
                    "updates: \(directory)/\(MessageSignatureProfile.printable(path, limit: 120)) is not a published file",
                event: nil)
        }
        let etag = "\"\(file.size)-\(file.modified)\""
        var headers = HTTPFields()
        headers[.eTag] = etag
        headers[.acceptRanges] = "bytes"
        headers[.cacheControl] = "no-cache"
        headers[.contentType] = directory == "metadata" ? "application/json" : "application/octet-stream"
        // If-Range (RFC 9110 §13.1.5): the range applies only while the representation is the one named.
        var range: ClosedRange<Int>? = nil
        if let rangeField = request.headers[.range], request.headers[.ifRange].map({ $0 == etag }) ?? true {
            switch Self.parseRange(rangeField, size: file.size) {
            case .none: break
            case .unsatisfiable:
                headers[.contentRange] = "bytes */\(file.size)"
                return Response(status: .rangeNotSatisfiable, headers: headers)
            case .some(let bounds): range = bounds
            }
        }
        // Metadata is small and asked for at every check: served from memory (checked against the file's inode, size
        // and modification time, so a rename by `tuf publish` or the re-signer is seen at once).
        if directory == "metadata", let bytes = smallFiles.bytes(of: file) {
            let served = range.map { bytes.getSlice(at: $0.lowerBound, length: $0.count) ?? bytes } ?? bytes
            if let range {
                headers[.contentRange] = "bytes \(range.lowerBound)-\(range.upperBound)/\(file.size)"
                return Response(status: .partialContent, headers: headers, body: ResponseBody(byteBuffer: served))
            }
            return Response(status: .ok, headers: headers, body: ResponseBody(byteBuffer: served))
        }
        guard downloads.acquire(device) else {
            headers[.retryAfter] = "5"
            throw HubError(.tooManyRequests, "busy", detail: "updates: too many downloads in progress", event: nil)
        }
        let slots = downloads
        let body: ResponseBody
        do {
            body =
                file.size == 0
                ? ResponseBody()
                : try await fileIO.loadFile(path: file.path, range: range ?? 0...(file.size - 1), context: context)
        } catch {
            slots.release(device)
            throw error
        }
        let released = ResponseBody(contentLength: body.contentLength) { writer in
            defer { slots.release(device) }
            try await body.write(writer)
        }
        if let range {
            headers[.contentRange] = "bytes \(range.lowerBound)-\(range.upperBound)/\(file.size)"
            return Response(status: .partialContent, headers: headers, body: released)
        }
        return Response(status: .ok, headers: headers, body: released)
    }

    struct File {
        let path: String
        let size: Int
        let modified: Int64
        var inode: UInt64 = 0
    }

    /// `N.root.json`: a versioned root (TUF §5.3.3 asks for the next one until there is none).
    static func isVersionedRoot(_ path: String) -> Bool {
        guard path.hasSuffix(".root.json") else { return false }
        let version = path.dropLast(".root.json".count)
        return !version.isEmpty && version.count <= 19 && version.allSatisfy(\.isASCII)
            && version.allSatisfy(\.isNumber)
    }

    /// The regular file at `path` below `root`, or nil when any segment is not a plain name or any component is not
    /// a directory (or, last, a regular file): a symbolic link anywhere is refused.
    static func resolve(_ root: String, _ path: String) -> File? {
        let segments = path.split(separator: "/", omittingEmptySubsequences: false)
        guard !segments.isEmpty, segments.count <= 16,
            segments.allSatisfy({ segment in
                !segment.isEmpty && segment != "." && segment != ".." && !segment.hasPrefix(".")
                    && !segment.contains("%") && !segment.contains("\\") && segment.utf8.count <= 255
                    && segment.unicodeScalars.allSatisfy { $0.value > 0x20 && $0.value != 0x7F }
            })
        else { return nil }
        var current = root
        var info = stat()
        guard lstat(current, &info) == 0, info.st_mode & S_IFMT == S_IFDIR else { return nil }
        for (index, segment) in segments.enumerated() {
            current += "/" + segment
            guard lstat(current, &info) == 0 else { return nil }
            let kind = info.st_mode & S_IFMT
            if index == segments.count - 1 {
                guard kind == S_IFREG else { return nil }
            } else {
                guard kind == S_IFDIR else { return nil }
            }
        }
        return File(
            path: current, size: Int(info.st_size),
            modified: Int64(info.st_mtim.tv_sec) * 1_000_000_000 + Int64(info.st_mtim.tv_nsec),
            inode: UInt64(info.st_ino))
    }

    enum RangeRequest: Equatable {
        case none
        case unsatisfiable
        case some(ClosedRange<Int>)
    }

    /// RFC 9110 §14.1.2, one range: `bytes=a-b`, `bytes=a-`, `bytes=-n`. Anything else is ignored (the whole file,
    /// as §14.2 allows), a range that starts past the end is unsatisfiable.
    static func parseRange(_ field: String, size: Int) -> RangeRequest {
        guard field.hasPrefix("bytes="), !field.contains(",") else { return .none }
        let spec = field.dropFirst("bytes=".count).trimmingCharacters(in: .whitespaces)
        let parts = spec.split(separator: "-", maxSplits: 1, omittingEmptySubsequences: false)
        guard parts.count == 2 else { return .none }
        if parts[0].isEmpty {
            guard let suffix = Int(parts[1]), suffix > 0 else { return .none }
            guard size > 0 else { return .unsatisfiable }
            return .some(max(0, size - suffix)...(size - 1))
        }
        guard let start = Int(parts[0]), start >= 0 else { return .none }
        guard start < size else { return .unsatisfiable }
        if parts[1].isEmpty { return .some(start...(size - 1)) }
        guard let end = Int(parts[1]), end >= start else { return .none }
        return .some(start...min(end, size - 1))
    }
}

/// Small files (the repository's metadata) kept in memory: an entry is used only while the file on disk has the same
/// inode, size and modification time (nanoseconds). Bounded in entries and in file size.
final class SmallFileCache: Sendable {
    struct Entry {
        let inode: UInt64
        let size: Int
        let modified: Int64
        let bytes: ByteBuffer
    }
    private let entries = Mutex<[String: Entry]>([:])
    let maximumFileBytes = 256 * 1024
    let maximumEntries = 256

    /// The file's bytes, from memory or read now (never through a link: the path was resolved without one, and
    /// the file is opened with O_NOFOLLOW); nil for a file too large to keep, or one that changed while read.
    func bytes(of file: UpdateRoutes.File) -> ByteBuffer? {
        guard file.size <= maximumFileBytes else { return nil }
        if let entry = entries.withLock({ $0[file.path] }), entry.inode == file.inode, entry.size == file.size,
            entry.modified == file.modified
        {
            return entry.bytes
        }
        let fd = open(file.path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0, UInt64(info.st_ino) == file.inode, Int(info.st_size) == file.size else {
            return nil
        }
        var bytes = [UInt8](repeating: 0, count: file.size)
        var got = 0
        while got < file.size {
            let n = bytes.withUnsafeMutableBytes { buffer -> Int in
                guard let base = buffer.baseAddress else { return -1 }
                return read(fd, base + got, file.size - got)
            }
            guard n > 0 else { return nil }
            got += n
        }
        let buffer = ByteBuffer(bytes: bytes)
        entries.withLock {
            if $0.count >= maximumEntries { $0.removeAll() }
            $0[file.path] = Entry(inode: file.inode, size: file.size, modified: file.modified, bytes: buffer)
        }
        return buffer
    }
}

/// The highest `N.root.json` in the metadata directory, listed again only when the directory changes (its
/// modification time, which every file added or renamed into it moves).
final class RootVersions: Sendable {
    private let cached = Mutex<(modified: Int64, inode: UInt64, latest: Int)?>(nil)

    func latest(_ directory: String) -> Int? {
        var info = stat()
        guard stat(directory, &info) == 0 else { return nil }
        let modified = Int64(info.st_mtim.tv_sec) * 1_000_000_000 + Int64(info.st_mtim.tv_nsec)
        let inode = UInt64(info.st_ino)
        if let hit = cached.withLock({ $0 }), hit.modified == modified, hit.inode == inode { return hit.latest }
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return nil }
        let latest = names.compactMap { name -> Int? in
            guard UpdateRoutes.isVersionedRoot(name) else { return nil }
            return Int(name.dropLast(".root.json".count))
        }.max()
        guard let latest else { return nil }
        cached.withLock { $0 = (modified, inode, latest) }
        return latest
    }
}

/// Work in progress (downloads, live-event streams, audit verifications), bounded per holder and in all.
final class Slots<Holder: Hashable & Sendable>: Sendable {
    private let state = Mutex<(total: Int, perHolder: [Holder: Int])>((0, [:]))
    let total: Int
    let perHolder: Int

    init(total: Int, perHolder: Int) {
        self.total = total
        self.perHolder = perHolder
    }

    func acquire(_ holder: Holder) -> Bool {
        state.withLock { state in
            guard state.total < total, state.perHolder[holder, default: 0] < perHolder else { return false }
            state.total += 1
            state.perHolder[holder, default: 0] += 1
            return true
        }
    }

    func release(_ holder: Holder) {
        state.withLock { state in
            state.total -= 1
            let left = state.perHolder[holder, default: 1] - 1
            state.perHolder[holder] = left > 0 ? left : nil
        }
    }
}

/// Downloads in progress, per device and in all.
typealias DownloadSlots = Slots<DeviceID>
