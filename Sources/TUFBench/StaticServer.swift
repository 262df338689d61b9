import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A static file server on 127.0.0.1 for the benchmark, as an alternative to `python3 -m http.server`
/// (`--server native`): the Python server takes about 0.5 ms to answer a request, and both clients wait for
/// every answer, so the clock of a cold refresh (six requests, one after the other) measured the server as
/// much as the client. This one answers from memory in tens of microseconds.
///
/// RFC 9112: a GET's request line and headers up to the empty line (§2.1, at most 16 KiB); the answer is
/// `200` with `Content-Length` or `404`; the connection persists (§9.3) unless the request says
/// `Connection: close` or is HTTP/1.0 (then the answer says `Connection: close`, §9.6), so python-tuf's pooled
/// connection is reused as a real server would let it, and so is ours (`SocketFetcher` keeps its connection since
/// 12-05; before, it asked to close and paid a connection and this server's thread start per request). Anything but
/// a well-formed GET closes the connection without an answer. A thread
/// per connection, detached; the files are read once when the server starts (after the repositories are built).
final class StaticServer: @unchecked Sendable {
    let port: Int
    private let files: [String: [UInt8]]
    private let listener: Int32

    init(directory: String) throws {
        var files: [String: [UInt8]] = [:]
        let root = URL(fileURLWithPath: directory).standardizedFileURL.path
        if let walker = FileManager.default.enumerator(atPath: root) {
            for case let relative as String in walker {
                let path = root + "/" + relative
                var isDirectory: ObjCBool = false
                if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), !isDirectory.boolValue,
                    let data = FileManager.default.contents(atPath: path)
                {
                    files["/" + relative] = [UInt8](data)
                }
            }
        }
        self.files = files
        // Close-on-exec, as every connection's socket: the clients this benchmark spawns must not inherit them.
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ServerError.socket(errno) }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard bound == 0, listen(fd, 64) == 0 else {
            close(fd)
            throw ServerError.socket(errno)
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        listener = fd
        port = Int(UInt16(bigEndian: address.sin_port))
        Thread.detachNewThread { [self] in acceptLoop() }
    }

    enum ServerError: Error { case socket(Int32) }

    private func acceptLoop() {
        while true {
            let client = accept(listener, nil, nil)
            if client < 0 {
                if errno == EINTR { continue }
                return
            }
            // (Glibc's module has no `accept4`: close-on-exec set right after. The benchmark spawns a client only
            // once the one before has exited, so no spawn falls between the two calls for a socket of its own.)
            _ = fcntl(client, F_SETFD, FD_CLOEXEC)
            var one: Int32 = 1
            setsockopt(client, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            Thread.detachNewThread { [self] in serve(client) }
        }
    }

    private func serve(_ fd: Int32) {
        defer { close(fd) }
        var pending: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16384)
        while true {
            // One request head: up to the empty line.
            var end: Int? = nil
            while end == nil {
                end = Self.headEnd(pending)
                if end != nil { break }
                // At most 16 KiB of head; more, or a read that fails, closes the connection.
                guard pending.count < 16384 else { return }
                let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, min($0.count, 16384 - pending.count)) }
                if n < 0, errno == EINTR { continue }
                if n <= 0 { return }
                pending += chunk[0..<n]
            }
            guard let headLength = end else { return }
            let head = String(decoding: pending[0..<headLength], as: UTF8.self)
            pending.removeFirst(headLength)
            let lines = head.split(separator: "\r\n", omittingEmptySubsequences: true)
            let parts = lines.first?.split(separator: " ") ?? []
            guard parts.count == 3, parts[0] == "GET" else { return }
            let path = String(parts[1])
            let closes =
                parts[2] == "HTTP/1.0"
                || lines.dropFirst().contains {
                    $0.lowercased().hasPrefix("connection:") && $0.lowercased().contains("close")
                }
            // Only the files read at start are served (an exact key: no path reaches outside them).
            var answer: [UInt8]
            let closing = closes ? "Connection: close\r\n" : ""
            if let body = files[path] {
                answer = Array(
                    ("HTTP/1.1 200 OK\r\nContent-Length: \(body.count)\r\nContent-Type: application/octet-stream\r\n"
                        + closing + "\r\n").utf8)
                answer += body
            } else {
                answer = Array(("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n" + closing + "\r\n").utf8)
            }
            var sent = 0
            while sent < answer.count {
                let n = answer.withUnsafeBytes {
                    send(fd, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL))
                }
                if n < 0, errno == EINTR { continue }
                if n <= 0 { return }
                sent += n
            }
            if closes { return }
        }
    }

    /// The length of the request head (through `\r\n\r\n`), when `bytes` holds all of it.
    private static func headEnd(_ bytes: [UInt8]) -> Int? {
        guard bytes.count >= 4 else { return nil }
        for i in 3..<bytes.count where bytes[i] == 10 && bytes[i - 1] == 13 && bytes[i - 2] == 10 && bytes[i - 3] == 13
        {
            return i + 1
        }
        return nil
    }

    func stop() {
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
    }
}
