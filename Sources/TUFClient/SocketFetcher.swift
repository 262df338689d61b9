import Synchronization
import TUF

#if canImport(Glibc)
    import Glibc
    private let systemConnect = Glibc.connect
    private let systemSend = Glibc.send
    private let streamType = Int32(SOCK_STREAM.rawValue)
    private let streamSocket = streamType | Int32(SOCK_CLOEXEC.rawValue)
    private let noSignal = Int32(MSG_NOSIGNAL)
#elseif canImport(Darwin)
    import Darwin
    private let systemConnect = Darwin.connect
    private let systemSend = Darwin.send
    private let streamType = SOCK_STREAM
    private let streamSocket = SOCK_STREAM
    private let noSignal: Int32 = 0
#endif

/// A `Fetcher` for plain `http://` over one blocking POSIX socket per fetch, for a process that does one update and
/// exits (`bulwark-tuf-client`): no event loop threads, no resolver pool, nothing to start before the first byte.
///
/// It blocks the calling thread for up to `timeout`, so it is not for a long-running program that shares its
/// threads (the agent uses `HTTPFetcher`, which also carries TLS). The same limits as `HTTPFetcher`:
/// - `timeout` bounds the whole fetch, name lookup excepted: connect, request and every read (slow retrieval attack);
///   a prepared request has it twice, once to connect and send, once to read the answer;
/// - at most `maxBytes` of body, refused from a declared length up front and from the running count as it arrives
///   (endless data attack); framing by `HTTPResponseReader` (RFC 9112).
///
/// `prepare(url)` connects and sends the request at once; the `fetch` of that URL that follows reads the answer (with
/// its own deadline and byte limit), or throws the error the request met.
public struct SocketFetcher: Fetcher {
    public var timeout: Duration
    private let sent = SentRequests()

    public init(timeout: Duration = .seconds(30)) { self.timeout = timeout }

    public func fetch(_ url: String, maxBytes: Int) async throws -> [UInt8] {
        try get(url, maxBytes: maxBytes)
    }

    public func prepare(_ url: String) async {
        do {
            sent.put(url, .socket(try request(url, deadline: Deadline(after: timeout))))
        } catch {
            sent.put(url, .failed(error))
        }
    }

    func get(_ url: String, maxBytes: Int) throws -> [UInt8] {
        let deadline = Deadline(after: timeout)
        let fd: Int32
        switch sent.take(url) {
        case .socket(let socket): fd = socket
        case .failed(let error): throw error
        case nil: fd = try request(url, deadline: deadline)
        }
        defer { close(fd) }
        var reader = HTTPResponseReader(maxBytes: maxBytes)
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            try wait(fd, for: Int16(POLLIN), deadline: deadline, url: url)
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 {
                if errno == EINTR || errno == EAGAIN { continue }
                throw UpdaterError.transport("cannot read from \(url) (errno \(errno))")
            }
            let outcome: HTTPResponseReader.Outcome
            do {
                outcome = n == 0 ? try reader.end() : try reader.receive(buffer[0..<n])
            } catch .tooLarge {
                throw UpdaterError.tooLarge(limit: maxBytes, url: url)
            } catch .malformed(let reason) {
                throw UpdaterError.transport(reason)
            }
            switch outcome {
            case .needMore: continue
            case .body(let body): return body
            case .status(let status): throw UpdaterError.httpStatus(status, url: url)
            }
        }
    }

    /// Connects and sends the GET; returns the socket to read the answer from.
    private func request(_ url: String, deadline: Deadline) throws -> Int32 {
        let target = try HTTPURL(url)
        guard !target.secure else {
            throw UpdaterError.usage("SocketFetcher speaks http:// only; https:// needs HTTPFetcher with TLS")
        }
        let fd = try connect(target, deadline: deadline, url: url)
        let request = Array(
            "GET \(target.path) HTTP/1.1\r\nHost: \(target.hostHeader)\r\nConnection: close\r\nUser-Agent: bulwark-tuf\r\n\r\n"
                .utf8)
        do {
            try send(request, fd: fd, deadline: deadline, url: url)
        } catch {
            close(fd)
            throw error
        }
        return fd
    }

    /// Tries each address of the host in turn until one connects within the deadline.
    private func connect(_ target: HTTPURL, deadline: Deadline, url: String) throws -> Int32 {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = streamType
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(target.host, String(target.port), &hints, &list) == 0, let first = list else {
            throw UpdaterError.transport("cannot resolve \(target.host)")
        }
        defer { freeaddrinfo(list) }
        var candidate: UnsafeMutablePointer<addrinfo>? = first
        while let info = candidate {
            candidate = info.pointee.ai_next
            let fd = socket(info.pointee.ai_family, streamSocket, 0)
            guard fd >= 0 else { continue }
            guard fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) == 0 else {
                close(fd)
                continue
            }
            #if canImport(Darwin)
                // No MSG_NOSIGNAL there: a reset connection must fail the write, not kill the process.
                var one: Int32 = 1
                _ = setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, socklen_t(MemoryLayout<Int32>.size))
            #endif
            if systemConnect(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 { return fd }
            guard errno == EINPROGRESS else {
                close(fd)
                continue
            }
            do {
                try wait(fd, for: Int16(POLLOUT), deadline: deadline, url: url)
            } catch {
                close(fd)
                throw error
            }
            var failure: Int32 = 0
            var size = socklen_t(MemoryLayout<Int32>.size)
            if getsockopt(fd, SOL_SOCKET, SO_ERROR, &failure, &size) == 0, failure == 0 { return fd }
            close(fd)
        }
        throw UpdaterError.transport("cannot connect to \(target.host):\(target.port)")
    }

    /// Writes the request. A server may answer and close as soon as it has read enough, so a failed write is left to
    /// the read that follows to report.
    private func send(_ bytes: [UInt8], fd: Int32, deadline: Deadline, url: String) throws {
        var offset = 0
        while offset < bytes.count {
            try wait(fd, for: Int16(POLLOUT), deadline: deadline, url: url)
            let n = bytes[offset...].withUnsafeBytes { systemSend(fd, $0.baseAddress, $0.count, noSignal) }
            if n < 0 {
                if errno == EINTR || errno == EAGAIN { continue }
                return
            }
            offset += n
        }
    }

    /// Waits until `fd` is ready for `events`, or throws `timeout` at the deadline.
    private func wait(_ fd: Int32, for events: Int16, deadline: Deadline, url: String) throws {
        while true {
            let remaining = deadline.remainingMilliseconds()
            guard remaining > 0 else { throw UpdaterError.timeout(url: url) }
            var entry = pollfd(fd: fd, events: events, revents: 0)
            let ready = poll(&entry, 1, Int32(clamping: remaining))
            if ready > 0 { return }
            if ready < 0, errno != EINTR { throw UpdaterError.transport("poll failed (errno \(errno))") }
        }
    }
}

/// Requests sent by `prepare` and not yet read, oldest first: at most a few (a caller prepares the request it fetches
/// next); the sockets of any left over are closed with the fetcher.
final class SentRequests: Sendable {
    /// Not a `Result`: its `Failure: Error` requirement costs the process a scan of the runtime's conformance records
    /// on first use.
    enum Sent: Sendable {
        case socket(Int32)
        case failed(any Error)
    }

    private let requests = Mutex<[(url: String, sent: Sent)]>([])
    static let limit = 4

    func put(_ url: String, _ sent: Sent) {
        let dropped: [Sent] = requests.withLock { list in
            var dropped: [Sent] = []
            if let i = list.firstIndex(where: { $0.url == url }) { dropped.append(list.remove(at: i).sent) }
            list.append((url, sent))
            while list.count > Self.limit { dropped.append(list.removeFirst().sent) }
            return dropped
        }
        for case .socket(let fd) in dropped { close(fd) }
    }

    func take(_ url: String) -> Sent? {
        requests.withLock { list in
            list.firstIndex { $0.url == url }.map { list.remove(at: $0).sent }
        }
    }

    deinit {
        requests.withLock { list in
            for case (_, .socket(let fd)) in list { close(fd) }
        }
    }
}

/// A point on the monotonic clock.
struct Deadline {
    let nanoseconds: UInt64

    init(after duration: Duration) {
        let (seconds, attoseconds) = duration.components
        let span = UInt64(clamping: seconds) &* 1_000_000_000 &+ UInt64(clamping: attoseconds / 1_000_000_000)
        nanoseconds = Deadline.now() &+ span
    }

    func remainingMilliseconds() -> Int64 {
        let now = Deadline.now()
        guard nanoseconds > now else { return 0 }
        // Rounded up, so a wait never ends a little before the deadline and spins.
        return Int64((nanoseconds - now + 999_999) / 1_000_000)
    }

    static func now() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
}
