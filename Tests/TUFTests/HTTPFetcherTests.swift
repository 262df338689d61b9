import Glibc
import NIOCore
import NIOPosix
import Synchronization
import Testing

@testable import TUFClient
@testable import TUFClientNIO

/// A loopback server that misbehaves on purpose.
enum Misbehaviour: Sendable {
    case silent  // accepts and never answers
    case drip  // answers one byte every 50 ms
    case endless  // streams without a length until the client gives up (bounded at 64 MiB)
    case declaresHugeLength
    case ok(String)
    case closeDelimited(String)  // no Content-Length: the body ends when the server closes
    case status(Int)
    case chunked([String])  // Transfer-Encoding: chunked, one chunk per string
}

/// Both fetchers must pass every test: the NIO one the agent uses and the socket one of the command-line client.
enum FetcherKind: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case nio, socket

    func make(timeout: Duration) -> any Fetcher {
        switch self {
        case .nio: HTTPFetcher(timeout: timeout)
        case .socket: SocketFetcher(timeout: timeout)
        }
    }

    var testDescription: String { rawValue }
}

final class MisbehavingHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let mode: Misbehaviour

    init(_ mode: Misbehaviour) { self.mode = mode }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let channel = context.channel
        @Sendable func send(_ s: String) { channel.writeAndFlush(channel.allocator.buffer(string: s), promise: nil) }
        switch mode {
        case .silent: break
        case .drip:
            send("HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
            channel.eventLoop.scheduleRepeatedTask(initialDelay: .milliseconds(50), delay: .milliseconds(50)) { task in
                guard channel.isActive else { return task.cancel() }
                send("x")
            }
        case .endless:
            send("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
            let chunk = String(repeating: "y", count: 65536)
            @Sendable func pump(_ remaining: Int) {
                guard channel.isActive, remaining > 0 else { return }
                channel.writeAndFlush(channel.allocator.buffer(string: chunk)).whenSuccess { pump(remaining - 1) }
            }
            pump(1024)
        case .declaresHugeLength:
            send("HTTP/1.1 200 OK\r\nContent-Length: 999999999\r\n\r\nabc")
        case .closeDelimited(let body):
            channel.writeAndFlush(
                channel.allocator.buffer(string: "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n\(body)")
            ).whenComplete { _ in channel.close(promise: nil) }
        case .status(let code):
            channel.writeAndFlush(
                channel.allocator.buffer(string: "HTTP/1.1 \(code) Nope\r\nContent-Length: 4\r\n\r\nnope")
            ).whenComplete { _ in channel.close(promise: nil) }
        case .chunked(let chunks):
            var text = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            for c in chunks { text += String(c.utf8.count, radix: 16) + ";ext=1\r\n" + c + "\r\n" }
            text += "0\r\nTrailer-Field: x\r\n\r\n"
            channel.writeAndFlush(channel.allocator.buffer(string: text)).whenComplete { _ in
                channel.close(promise: nil)
            }
        case .ok(let body):
            channel.writeAndFlush(
                channel.allocator.buffer(string: "HTTP/1.1 200 OK\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)")
            ).whenComplete { _ in channel.close(promise: nil) }
        }
    }
}

func withServer(_ mode: Misbehaviour, _ body: (String) async throws -> Void) async throws {
    @Sendable func handler() -> any ChannelHandler { MisbehavingHandler(mode) }
    try await withServer(handler: handler, body)
}

/// A loopback server whose connections each get the handler `handler` makes; `body` gets the URL of `/x` on it.
func withServer(
    handler: @escaping @Sendable () -> any ChannelHandler, _ body: (String) async throws -> Void
) async throws {
    let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        .childChannelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(handler())
            }
        }
        .bind(host: "127.0.0.1", port: 0).get()
    defer { server.close(promise: nil) }
    let port = try need(server.localAddress?.port)
    try await body("http://127.0.0.1:\(port)/x")
}

@Suite struct HTTPFetcherTests {
    /// The URL both fetchers split: IPv6 literals, default ports, and ports that are empty, 0 or too large refused.
    @Test func urlsAreSplitAsTheFetchersNeedThem() throws {
        let v6 = try HTTPURL("http://[::1]:8080/a/b")
        #expect(v6.host == "::1" && v6.port == 8080 && v6.path == "/a/b" && v6.hostHeader == "[::1]:8080" && !v6.secure)
        let plain = try HTTPURL("https://example.com")
        #expect(plain.port == 443 && plain.path == "/" && plain.secure && plain.hostHeader == "example.com")
        for bad in ["http://host:/x", "http://host:0/", "http://host:65536/", "ftp://x/", "http:///x", "http://[::1/x"]
        {
            #expect(throws: (any Error).self, "\(bad)") { try HTTPURL(bad) }
        }
    }

    @Test(arguments: FetcherKind.allCases)
    func fetchesABody(_ kind: FetcherKind) async throws {
        try await withServer(.ok("hello")) { url in
            let got = try await kind.make(timeout: .seconds(5)).fetch(url, maxBytes: 100)
            #expect(got == Array("hello".utf8))
        }
    }

    @Test(arguments: [Misbehaviour.silent, .drip], FetcherKind.allCases)
    func slowRetrievalTimesOut(_ mode: Misbehaviour, _ kind: FetcherKind) async throws {
        try await withServer(mode) { url in
            let start = ContinuousClock.now
            do {
                _ = try await kind.make(timeout: .milliseconds(500)).fetch(url, maxBytes: 1_000_000)
                Issue.record("slow server did not time out")
            } catch UpdaterError.timeout {
                // The drip alone would take 83 minutes; 20 s leaves room for a machine busy with the whole suite.
                #expect(ContinuousClock.now - start < .seconds(20))
            }
        }
    }

    @Test(arguments: FetcherKind.allCases)
    func endlessDataIsCutAtTheLimit(_ kind: FetcherKind) async throws {
        try await withServer(.endless) { url in
            await #expect(throws: UpdaterError.self) {
                _ = try await kind.make(timeout: .seconds(10)).fetch(url, maxBytes: 200_000)
            }
        }
    }

    @Test(arguments: FetcherKind.allCases)
    func closeDelimitedBodyIsRead(_ kind: FetcherKind) async throws {
        try await withServer(.closeDelimited("until close")) { url in
            let got = try await kind.make(timeout: .seconds(5)).fetch(url, maxBytes: 100)
            #expect(got == Array("until close".utf8))
        }
    }

    @Test(arguments: FetcherKind.allCases)
    func notFoundIsAStatusError(_ kind: FetcherKind) async throws {
        try await withServer(.status(404)) { url in
            do {
                _ = try await kind.make(timeout: .seconds(5)).fetch(url, maxBytes: 100)
                Issue.record("404 accepted")
            } catch UpdaterError.httpStatus(let code, _) {
                #expect(code == 404)
            }
        }
    }

    @Test(arguments: FetcherKind.allCases)
    func declaredOversizeIsRefusedUpFront(_ kind: FetcherKind) async throws {
        try await withServer(.declaresHugeLength) { url in
            await #expect(throws: UpdaterError.self) {
                _ = try await kind.make(timeout: .seconds(5)).fetch(url, maxBytes: 1000)
            }
        }
    }

    @Test(arguments: FetcherKind.allCases)
    func bodyAtExactlyTheLimitIsAccepted(_ kind: FetcherKind) async throws {
        try await withServer(.ok("12345")) { url in
            let got = try await kind.make(timeout: .seconds(5)).fetch(url, maxBytes: 5)
            #expect(got.count == 5)
            await #expect(throws: UpdaterError.self) {
                _ = try await kind.make(timeout: .seconds(5)).fetch(url, maxBytes: 4)
            }
        }
    }

    @Test(arguments: FetcherKind.allCases)
    func chunkedBodyIsDecodedAndBounded(_ kind: FetcherKind) async throws {
        try await withServer(.chunked(["hel", "lo ", "world"])) { url in
            let got = try await kind.make(timeout: .seconds(5)).fetch(url, maxBytes: 11)
            #expect(got == Array("hello world".utf8))
            await #expect(throws: UpdaterError.self) {
                _ = try await kind.make(timeout: .seconds(5)).fetch(url, maxBytes: 10)
            }
        }
    }

    @Test func socketFetcherRefusesHTTPS() async {
        await #expect(throws: UpdaterError.self) {
            _ = try await SocketFetcher().fetch("https://127.0.0.1:1/x", maxBytes: 10)
        }
    }

    @Test func socketFetcherReportsARefusedConnection() async throws {
        // A port bound but not listening, held for the whole test: connections to it are refused, and no other
        // test's server can take it meanwhile (a port closed before the fetch was once taken by one that hung).
        let holder = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        #expect(holder >= 0)
        defer { close(holder) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(holder, $0, length) == 0 && getsockname(holder, $0, &length) == 0
            }
        }
        #expect(bound)
        let port = Int(UInt16(bigEndian: address.sin_port))
        do {
            _ = try await SocketFetcher(timeout: .seconds(5)).fetch("http://127.0.0.1:\(port)/x", maxBytes: 10)
            Issue.record("connected to a closed port")
        } catch UpdaterError.transport {}
        // A prepared request that met the refusal: the fetch of its URL reports it.
        let fetcher = SocketFetcher(timeout: .seconds(5))
        await fetcher.prepare("http://127.0.0.1:\(port)/y")
        do {
            _ = try await fetcher.fetch("http://127.0.0.1:\(port)/y", maxBytes: 10)
            Issue.record("a prepared request to a closed port succeeded")
        } catch UpdaterError.transport {}
    }

    /// `prepare` sends the request at once: the server has read it before any fetch. The fetch of that URL reads
    /// its answer with the fetch's own byte limit and sends nothing; a URL fetched a second time is requested again.
    @Test func aPreparedRequestIsSentAtOnceAndReadByItsFetch() async throws {
        let log = RequestLog()
        @Sendable func handler() -> any ChannelHandler { LoggingHandler(log) }
        try await withServer(handler: handler) { url in
            let base = String(url.dropLast())
            let fetcher = SocketFetcher(timeout: .seconds(5))
            await fetcher.prepare(base + "a")
            await fetcher.prepare(base + "b")
            for _ in 0..<500 where log.paths.count < 2 { try await Task.sleep(for: .milliseconds(10)) }
            #expect(log.paths.sorted() == ["/a", "/b"])
            do {
                _ = try await fetcher.fetch(base + "b", maxBytes: 7)
                Issue.record("8 bytes under a limit of 7")
            } catch UpdaterError.tooLarge {}
            #expect(try await fetcher.fetch(base + "a", maxBytes: 8) == Array("prepared".utf8))
            #expect(log.paths.count == 2)
            #expect(try await fetcher.fetch(base + "a", maxBytes: 8) == Array("prepared".utf8))
            #expect(log.paths.count == 3)
        }
    }

    /// The paths a `LoggingHandler` server has read requests for.
    final class RequestLog: Sendable {
        private let list = Mutex<[String]>([])
        var paths: [String] { list.withLock { $0 } }
        func add(_ path: String) { list.withLock { $0.append(path) } }
    }

    /// Reads one request (to its blank line), logs its path, answers "prepared" and closes (and says so).
    final class LoggingHandler: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        let log: RequestLog
        var received: [UInt8] = []

        init(_ log: RequestLog) { self.log = log }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var buffer = unwrapInboundIn(data)
            received += buffer.readBytes(length: buffer.readableBytes) ?? []
            guard received.firstRange(of: Array("\r\n\r\n".utf8)) != nil else { return }
            let line = received.split(separator: UInt8(ascii: " "))
            log.add(line.count > 1 ? String(decoding: line[1], as: UTF8.self) : "")
            received = []
            let channel = context.channel
            context.writeAndFlush(
                wrapOutboundOut(
                    channel.allocator.buffer(
                        string: "HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\nprepared"))
            ).whenComplete { _ in channel.close(promise: nil) }
        }
    }

    /// At most `SentRequests.limit` requests wait; preparing more drops (and closes) the oldest.
    @Test func preparedRequestsAreBounded() async throws {
        let sent = SentRequests()
        for i in 0..<(SentRequests.limit + 2) { sent.put("u\(i)", .failed(UpdaterError.timeout(url: "u\(i)"))) }
        #expect(sent.take("u0") == nil && sent.take("u1") == nil)
        #expect(sent.take("u2") != nil && sent.take("u\(SentRequests.limit + 1)") != nil)
        #expect(sent.take("u2") == nil)
    }
}

/// Persistent connections (RFC 9112 §9.3) in `SocketFetcher`: a refresh's requests share one connection where the
/// server allows it, and a kept connection the server has closed is replaced once.
@Suite struct PersistentConnectionTests {
    /// The requests each connection carried, in the order the connections were accepted.
    final class ConnectionLog: Sendable {
        private let list = Mutex<[[String]]>([])
        /// Connections after the first are closed at once, unanswered.
        let refusesNewConnections: Bool

        init(refusesNewConnections: Bool = false) { self.refusesNewConnections = refusesNewConnections }

        private let closedCount = Mutex(0)
        var connections: [[String]] { list.withLock { $0 } }
        /// How many connections have closed, on the server's side.
        var closed: Int { closedCount.withLock { $0 } }
        func didClose() { closedCount.withLock { $0 += 1 } }
        private let lateCount = Mutex(0)
        /// How many unasked answers (`/late…`) have been written to their connections.
        var lateWritten: Int { lateCount.withLock { $0 } }
        func didWriteLate() { lateCount.withLock { $0 += 1 } }
        func open() -> Int {
            list.withLock {
                $0.append([])
                return $0.count - 1
            }
        }
        func add(_ path: String, on connection: Int) { list.withLock { $0[connection].append(path) } }
    }

    /// Answers each request on the connection: `/missing` with 404 and a short body; any other with 200 and the path
    /// as the body, and the connection persists, except after these paths:
    /// - `/last…`: the connection is closed right after the answer, without saying so (a server whose idle timer
    ///   fires);
    /// - `/late…`: 50 ms after the answer, a second, unasked answer follows on the connection;
    /// - `/drop-next…`, `/reset-next…`: the next request on the connection is logged and not answered, the connection
    ///   closed (with a FIN, or with a reset: `SO_LINGER` 0), as if the idle timer fired as the request arrived.
    final class KeepAliveHandler: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        let log: ConnectionLog
        var connection = -1
        var received: [UInt8] = []
        var closed = false
        var dropNext: (reset: Bool, armed: Bool) = (false, false)

        init(_ log: ConnectionLog) { self.log = log }

        func channelInactive(context: ChannelHandlerContext) {
            log.didClose()
            context.fireChannelInactive()
        }

        func channelActive(context: ChannelHandlerContext) {
            connection = log.open()
            if connection > 0, log.refusesNewConnections {
                closed = true
                context.close(promise: nil)
            }
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            guard !closed else { return }
            var buffer = unwrapInboundIn(data)
            received += buffer.readBytes(length: buffer.readableBytes) ?? []
            while let end = received.firstRange(of: Array("\r\n\r\n".utf8)) {
                let head = received[..<end.lowerBound]
                received.removeSubrange(..<end.upperBound)
                let words = head.split(separator: UInt8(ascii: " "))
                let path = words.count > 1 ? String(decoding: words[1], as: UTF8.self) : ""
                log.add(path, on: connection)
                if dropNext.armed {
                    closed = true
                    let channel = context.channel
                    if dropNext.reset, let options = channel as? any SocketOptionProvider {
                        options.setSoLinger(linger(l_onoff: 1, l_linger: 0)).whenComplete { _ in
                            channel.close(promise: nil)
                        }
                    } else {
                        context.close(promise: nil)
                    }
                    return
                }
                let answer =
                    path == "/missing"
                    ? "HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found"
                    : "HTTP/1.1 200 OK\r\nContent-Length: \(path.utf8.count)\r\n\r\n\(path)"
                context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(string: answer)), promise: nil)
                if path.hasPrefix("/last") {
                    closed = true
                    context.close(promise: nil)
                    return
                }
                if path.hasPrefix("/late") {
                    let (channel, log) = (context.channel, log)
                    channel.eventLoop.scheduleTask(in: .milliseconds(50)) {
                        channel.writeAndFlush(
                            channel.allocator.buffer(string: "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\njunk")
                        ).whenSuccess { log.didWriteLate() }
                    }
                }
                if path.hasPrefix("/drop-next") { dropNext = (false, true) }
                if path.hasPrefix("/reset-next") { dropNext = (true, true) }
            }
        }
    }

    func withKeepAliveServer(_ log: ConnectionLog, _ body: (String) async throws -> Void) async throws {
        @Sendable func handler() -> any ChannelHandler { KeepAliveHandler(log) }
        try await withServer(handler: handler) { url in try await body(String(url.dropLast(2))) }
    }

    @Test func aRefreshSharesOneConnection() async throws {
        let log = ConnectionLog()
        try await withKeepAliveServer(log) { base in
            let fetcher = SocketFetcher(timeout: .seconds(5))
            #expect(try await fetcher.fetch(base + "/a", maxBytes: 100) == Array("/a".utf8))
            await fetcher.prepare(base + "/b")
            #expect(try await fetcher.fetch(base + "/b", maxBytes: 100) == Array("/b".utf8))
            do {
                _ = try await fetcher.fetch(base + "/missing", maxBytes: 100)
                Issue.record("a 404 was a body")
            } catch UpdaterError.httpStatus(404, _) {}
            #expect(try await fetcher.fetch(base + "/c", maxBytes: 100) == Array("/c".utf8))
        }
        #expect(log.connections == [["/a", "/b", "/missing", "/c"]])
    }

    /// The server closes the kept connection after answering (without saying so): the next request, fetched or
    /// prepared, goes on a new connection.
    @Test func aKeptConnectionTheServerClosedIsReplaced() async throws {
        let log = ConnectionLog()
        try await withKeepAliveServer(log) { base in
            let fetcher = SocketFetcher(timeout: .seconds(5))
            #expect(try await fetcher.fetch(base + "/last-a", maxBytes: 100) == Array("/last-a".utf8))
            for _ in 0..<400 where log.closed < 1 { try await Task.sleep(for: .milliseconds(5)) }
            #expect(log.closed == 1)
            #expect(try await fetcher.fetch(base + "/b", maxBytes: 100) == Array("/b".utf8))
            #expect(try await fetcher.fetch(base + "/last-c", maxBytes: 100) == Array("/last-c".utf8))
            for _ in 0..<400 where log.closed < 2 { try await Task.sleep(for: .milliseconds(5)) }
            await fetcher.prepare(base + "/d")
            #expect(try await fetcher.fetch(base + "/d", maxBytes: 100) == Array("/d".utf8))
        }
        #expect(log.connections == [["/last-a"], ["/b", "/last-c"], ["/d"]])
    }

    /// Bytes that arrive on a kept connection after its answer (here an answer nobody asked for) are never read as
    /// the next answer: the connection is replaced before the next request, fetched or prepared.
    @Test func lateBytesOnAKeptConnectionAreNotTheNextAnswer() async throws {
        let log = ConnectionLog()
        try await withKeepAliveServer(log) { base in
            let fetcher = SocketFetcher(timeout: .seconds(5))
            /// Until the server has written `count` unasked answers (on loopback they are then in the client's
            /// socket), and a little more: a loaded run may write one well after its 50 ms.
            func lateWritten(_ count: Int) async throws {
                for _ in 0..<1000 where log.lateWritten < count { try await Task.sleep(for: .milliseconds(10)) }
                try #require(log.lateWritten == count)
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(try await fetcher.fetch(base + "/late", maxBytes: 100) == Array("/late".utf8))
            try await lateWritten(1)
            #expect(try await fetcher.fetch(base + "/b", maxBytes: 100) == Array("/b".utf8))
            #expect(try await fetcher.fetch(base + "/late-c", maxBytes: 100) == Array("/late-c".utf8))
            try await lateWritten(2)
            await fetcher.prepare(base + "/d")
            #expect(try await fetcher.fetch(base + "/d", maxBytes: 100) == Array("/d".utf8))
        }
        #expect(log.connections == [["/late"], ["/b", "/late-c"], ["/d"]])
    }

    /// The server closes a kept connection as the request arrives (with a FIN, or a reset), before any byte of the
    /// answer: the request is sent again on a new connection.
    @Test(arguments: ["/drop-next", "/reset-next"])
    func aRequestTheServerDroppedIsSentAgain(_ first: String) async throws {
        let log = ConnectionLog()
        try await withKeepAliveServer(log) { (base: String) async throws in
            let fetcher = SocketFetcher(timeout: .seconds(5))
            #expect(try await fetcher.fetch(base + first, maxBytes: 100) == Array(first.utf8))
            #expect(try await fetcher.fetch(base + "/b", maxBytes: 100) == Array("/b".utf8))
        }
        #expect(log.connections == [[first, "/b"], ["/b"]])
    }

    /// Only once: when the new connection fails too, the fetch fails (no loop).
    @Test func aRequestIsSentAgainOnlyOnce() async throws {
        let log = ConnectionLog(refusesNewConnections: true)
        try await withKeepAliveServer(log) { base in
            let fetcher = SocketFetcher(timeout: .seconds(5))
            #expect(try await fetcher.fetch(base + "/drop-next", maxBytes: 100) == Array("/drop-next".utf8))
            do {
                _ = try await fetcher.fetch(base + "/b", maxBytes: 100)
                Issue.record("a connection closed unanswered gave a body")
            } catch UpdaterError.transport {}
        }
        #expect(
            log.connections.count == 2 && log.connections[0] == ["/drop-next", "/b"] && log.connections[1].isEmpty)
    }
}
