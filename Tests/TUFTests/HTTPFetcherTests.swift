import NIOCore
import NIOPosix
import Testing

@testable import TUFClient

/// A loopback server that misbehaves on purpose.
enum Misbehaviour: Sendable {
    case silent  // accepts and never answers
    case drip  // answers one byte every 50 ms
    case endless  // streams without a length until the client gives up (bounded at 64 MiB)
    case declaresHugeLength
    case ok(String)
    case closeDelimited(String)  // no Content-Length: the body ends when the server closes
    case status(Int)
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
        case .ok(let body):
            channel.writeAndFlush(
                channel.allocator.buffer(string: "HTTP/1.1 200 OK\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)")
            ).whenComplete { _ in channel.close(promise: nil) }
        }
    }
}

func withServer(_ mode: Misbehaviour, _ body: (String) async throws -> Void) async throws {
    let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        .childChannelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(MisbehavingHandler(mode))
            }
        }
        .bind(host: "127.0.0.1", port: 0).get()
    defer { server.close(promise: nil) }
    let port = try need(server.localAddress?.port)
    try await body("http://127.0.0.1:\(port)/x")
}

@Suite struct HTTPFetcherTests {
    @Test func fetchesABody() async throws {
        try await withServer(.ok("hello")) { url in
            let got = try await HTTPFetcher(timeout: .seconds(5)).fetch(url, maxBytes: 100)
            #expect(got == Array("hello".utf8))
        }
    }

    @Test(arguments: [Misbehaviour.silent, .drip])
    func slowRetrievalTimesOut(_ mode: Misbehaviour) async throws {
        try await withServer(mode) { url in
            let start = ContinuousClock.now
            do {
                _ = try await HTTPFetcher(timeout: .milliseconds(500)).fetch(url, maxBytes: 1_000_000)
                Issue.record("slow server did not time out")
            } catch UpdaterError.timeout {
                // The drip alone would take 83 minutes; 20 s leaves room for a machine busy with the whole suite.
                #expect(ContinuousClock.now - start < .seconds(20))
            }
        }
    }

    @Test func endlessDataIsCutAtTheLimit() async throws {
        try await withServer(.endless) { url in
            await #expect(throws: UpdaterError.self) {
                _ = try await HTTPFetcher(timeout: .seconds(10)).fetch(url, maxBytes: 200_000)
            }
        }
    }

    @Test func closeDelimitedBodyIsRead() async throws {
        try await withServer(.closeDelimited("until close")) { url in
            let got = try await HTTPFetcher(timeout: .seconds(5)).fetch(url, maxBytes: 100)
            #expect(got == Array("until close".utf8))
        }
    }

    @Test func notFoundIsAStatusError() async throws {
        try await withServer(.status(404)) { url in
            do {
                _ = try await HTTPFetcher(timeout: .seconds(5)).fetch(url, maxBytes: 100)
                Issue.record("404 accepted")
            } catch UpdaterError.httpStatus(let code, _) {
                #expect(code == 404)
            }
        }
    }

    @Test func declaredOversizeIsRefusedUpFront() async throws {
        try await withServer(.declaresHugeLength) { url in
            await #expect(throws: UpdaterError.self) {
                _ = try await HTTPFetcher(timeout: .seconds(5)).fetch(url, maxBytes: 1000)
            }
        }
    }

    @Test func bodyAtExactlyTheLimitIsAccepted() async throws {
        try await withServer(.ok("12345")) { url in
            let got = try await HTTPFetcher(timeout: .seconds(5)).fetch(url, maxBytes: 5)
            #expect(got.count == 5)
            await #expect(throws: UpdaterError.self) {
                _ = try await HTTPFetcher(timeout: .seconds(5)).fetch(url, maxBytes: 4)
            }
        }
    }
}
