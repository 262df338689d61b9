import NIOCore
import NIOEmbedded
import NIOHTTP1
import NIOTLS
import Testing

@testable import Hub

/// The HTTP guard's deadlines on an embedded channel with a virtual clock: no sockets, no waiting.
struct HTTPGuardTests {
    static func channel() throws -> EmbeddedChannel {
        var limits = HTTPLimits()
        limits.handshakeSeconds = 5
        limits.headerSeconds = 10
        limits.bodySeconds = 30
        limits.idleSeconds = 60
        let channel = EmbeddedChannel(handler: HTTPGuardHandler(limits: limits, onRefusal: { _ in }))
        try channel.connect(to: try SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        #expect(channel.isActive)
        channel.pipeline.fireUserInboundEventTriggered(TLSUserEvent.handshakeCompleted(negotiatedProtocol: nil))
        return channel
    }

    static func request(_ channel: EmbeddedChannel, _ uri: String) throws {
        try channel.writeInbound(HTTPServerRequestPart.head(HTTPRequestHead(version: .http1_1, method: .GET, uri: uri)))
        try channel.writeInbound(HTTPServerRequestPart.end(nil))
    }

    static func responseStarts(_ channel: EmbeddedChannel) throws {
        try channel.writeOutbound(HTTPServerResponsePart.head(HTTPResponseHead(version: .http1_1, status: .ok)))
        try channel.writeOutbound(HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(repeating: 1, count: 4096))))
    }

    /// A client that stops reading a download, then pipelines another request: the request's end must not lift the
    /// download's deadline (the connection was held for ever).
    @Test func aPipelinedRequestDoesNotLiftAStalledDownloadsDeadline() throws {
        let channel = try Self.channel()
        try Self.request(channel, "/big")
        try Self.responseStarts(channel)  // …and no more: the client's window is full
        channel.embeddedEventLoop.advanceTime(by: .seconds(20))
        try Self.request(channel, "/second")
        channel.embeddedEventLoop.advanceTime(by: .seconds(9))
        #expect(channel.isActive, "within 30 s of the download's last write")
        channel.embeddedEventLoop.advanceTime(by: .seconds(2))
        #expect(!channel.isActive, "31 s after the download last moved")
    }

    /// A response that keeps moving is not cut, and once it ends the idle deadline applies.
    @Test func aResponseThatKeepsMovingIsNotCut() throws {
        let channel = try Self.channel()
        try Self.request(channel, "/stream")
        try Self.responseStarts(channel)
        for _ in 0..<6 {
            channel.embeddedEventLoop.advanceTime(by: .seconds(20))
            try channel.writeOutbound(HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(repeating: 2, count: 16))))
        }
        #expect(channel.isActive, "two minutes, a write every 20 s")
        try channel.writeOutbound(HTTPServerResponsePart.end(nil))
        channel.embeddedEventLoop.advanceTime(by: .seconds(59))
        #expect(channel.isActive, "idle, within 60 s")
        channel.embeddedEventLoop.advanceTime(by: .seconds(2))
        #expect(!channel.isActive, "idle for 61 s")
    }

    /// Waiting for the hub's response (nothing written yet) is not the client's phase: no deadline runs.
    @Test func waitingForTheHubIsNotCut() throws {
        let channel = try Self.channel()
        try Self.request(channel, "/slow")
        channel.embeddedEventLoop.advanceTime(by: .seconds(300))
        #expect(channel.isActive)
        try Self.responseStarts(channel)
        try channel.writeOutbound(HTTPServerResponsePart.end(nil))
        channel.embeddedEventLoop.advanceTime(by: .seconds(61))
        #expect(!channel.isActive)
    }
}
