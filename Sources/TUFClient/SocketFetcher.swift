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

/// A `Fetcher` for plain `http://` over blocking POSIX sockets, for a process that does one update and exits
/// (`bulwark-tuf-client`): no event loop threads, no resolver pool, nothing to start before the first byte.
///
/// Connections persist (RFC 9112 §9.3): a connection whose response allowed it (`HTTPResponseReader.reusable`) is
/// kept, one at a time, for the next request to the same host and port, so that a refresh's requests (six for a
/// cold one with its download) share one TCP connection where the server allows it. A kept connection that has
/// anything to read before the next request is sent (bytes after the last answer, or the server's close) is closed
/// and replaced, so no late byte is read as the next answer. One the server closes while the request travels is
/// noticed when it ends before any byte of the answer, and the request (a GET, idempotent) is sent again once on a
/// new connection, within the same deadline (§9.3.1).
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
    private let kept = KeptConnection()

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
        var connection: Connection
        switch sent.take(url) {
        case .socket(let sent): connection = sent
        case .failed(let error): throw error
        case nil: connection = try request(url, deadline: deadline)
        }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 1)
        defer { buffer.deallocate() }
        while true {
            do {
                let (answer, reusable) = try read(
                    connection.fd, url: url, maxBytes: maxBytes, deadline: deadline, into: buffer)
                if reusable { kept.keep(connection) } else { close(connection.fd) }
                switch answer {
                case .body(let body): return body
                case .status(let status): throw UpdaterError.httpStatus(status, url: url)
                }
            } catch ReadFailure.endedBeforeAnswer(let error) {
                close(connection.fd)
                // A kept connection the server closed while it was idle: once more on a new one.
                guard connection.reused else { throw error }
                connection = try request(url, deadline: deadline, reuse: false)
            } catch ReadFailure.failed(let error) {
                close(connection.fd)
                throw error
            }
        }
    }

    /// A whole response: a 2xx response's body, or any other final status (`HTTPResponseReader.Outcome` less its
    /// `needMore`).
    private enum Answer {
        case body([UInt8])
        case status(Int)
    }

    private enum ReadFailure: Error {
        /// The connection ended (closed or reset) before any byte of the answer.
        case endedBeforeAnswer(UpdaterError)
        case failed(any Error)
    }

    /// Reads one response from `fd`: its outcome (a body or a status), and whether the connection may carry another
    /// request.
    private func read(
        _ fd: Int32, url: String, maxBytes: Int, deadline: Deadline, into buffer: UnsafeMutableRawBufferPointer
    ) throws(ReadFailure) -> (Answer, Bool) {
        var reader = HTTPResponseReader(maxBytes: maxBytes)
        while true {
            do {
                try wait(fd, for: Int16(POLLIN), deadline: deadline, url: url)
            } catch {
                throw .failed(error)
            }
            let n = recv(fd, buffer.baseAddress, buffer.count, 0)
            if n < 0 {
                let failure = errno
                if failure == EINTR || failure == EAGAIN { continue }
                let error = UpdaterError.transport("cannot read from \(url) (errno \(failure))")
                throw reader.started || failure != ECONNRESET ? .failed(error) : .endedBeforeAnswer(error)
            }
            #if canImport(Glibc)
                // Acknowledge at once, not up to 40 ms later: a server that writes an answer in pieces without
                // TCP_NODELAY holds its last piece back until the first is acknowledged (Nagle), which on a kept
                // connection stalls every answer by Linux's delayed-ACK timer. Linux clears the flag as it goes.
                var one: Int32 = 1
                _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_QUICKACK, &one, socklen_t(MemoryLayout<Int32>.size))
            #endif
            if n == 0, !reader.started {
                throw .endedBeforeAnswer(.transport("connection closed before the response ended"))
            }
            let outcome: HTTPResponseReader.Outcome
            do throws(HTTPResponseReader.Failure) {
                outcome =
                    n == 0 ? try reader.end() : try reader.receive(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
            } catch {
                switch error {
                case .tooLarge: throw .failed(UpdaterError.tooLarge(limit: maxBytes, url: url))
                case .malformed(let reason): throw .failed(UpdaterError.transport(reason))
                }
            }
            switch outcome {
            case .needMore: continue
            case .body(let body): return (.body(body), reader.reusable)
            case .status(let status): return (.status(status), reader.reusable)
            }
        }
    }

    /// Sends the GET on the kept connection to the URL's host and port when there is one (and `reuse` allows it),
    /// else on a new connection; returns the connection to read the answer from.
    private func request(_ url: String, deadline: Deadline, reuse: Bool = true) throws -> Connection {
        let target = try HTTPURL(url)
        guard !target.secure else {
            throw UpdaterError.usage("SocketFetcher speaks http:// only; https:// needs HTTPFetcher with TLS")
        }
        let origin = "\(target.host)|\(target.port)"
        let request = Array(
            "GET \(target.path) HTTP/1.1\r\nHost: \(target.hostHeader)\r\nUser-Agent: bulwark-tuf\r\n\r\n".utf8)
        let connection: Connection
        if reuse, let fd = kept.take(origin), Self.isQuiet(fd) {
            connection = Connection(fd: fd, origin: origin, reused: true)
        } else {
            connection = Connection(
                fd: try connect(target, deadline: deadline, url: url), origin: origin, reused: false)
        }
        do {
            try send(request, fd: connection.fd, deadline: deadline, url: url)
        } catch {
            close(connection.fd)
            throw error
        }
        return connection
    }

    /// Whether a kept connection has nothing to read: neither bytes (which would be taken for the next answer) nor the
    /// server's close. One that has is closed.
    private static func isQuiet(_ fd: Int32) -> Bool {
        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        if poll(&entry, 1, 0) == 0 { return true }
        close(fd)
        return false
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

/// A connection a request was sent on: its socket, the host and port it goes to, and whether it had carried a
/// request before.
struct Connection: Sendable {
    let fd: Int32
    let origin: String
    let reused: Bool
}

/// The one connection kept for the next request (`SocketFetcher`), closed with the fetcher.
final class KeptConnection: Sendable {
    private let connection = Mutex<(origin: String, fd: Int32)?>(nil)

    /// Keeps `connection` for the next request to its origin; a connection kept before is closed.
    func keep(_ kept: Connection) {
        let previous = connection.withLock { slot in
            defer { slot = (kept.origin, kept.fd) }
            return slot?.fd
        }
        if let previous { close(previous) }
    }

    /// The kept connection to `origin`, if there is one; it is no longer kept.
    func take(_ origin: String) -> Int32? {
        connection.withLock { slot in
            guard let kept = slot, kept.origin == origin else { return nil }
            slot = nil
            return kept.fd
        }
    }

    deinit {
        if let fd = connection.withLock({ $0?.fd }) { close(fd) }
    }
}

/// Requests sent by `prepare` and not yet read, oldest first: at most a few (a caller prepares the request it fetches
/// next); the sockets of any left over are closed with the fetcher.
final class SentRequests: Sendable {
    /// Not a `Result`: its `Failure: Error` requirement costs the process a scan of the runtime's conformance records
    /// on first use.
    enum Sent: Sendable {
        case socket(Connection)
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
        for case .socket(let connection) in dropped { close(connection.fd) }
    }

    func take(_ url: String) -> Sent? {
        requests.withLock { list in
            list.firstIndex { $0.url == url }.map { list.remove(at: $0).sent }
        }
    }

    deinit {
        requests.withLock { list in
            for case (_, .socket(let connection)) in list { close(connection.fd) }
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
