import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import ServiceLifecycle

/// The CRL distribution point (`pki.crlAddress`): plain HTTP/1.1, read-only and unauthenticated, as RFC 5280
/// §4.2.1.13 expects of an `http` distribution point (the CRL is signed, and a relying party checking a certificate
/// should not need a TLS connection to fetch it). It answers `GET /crl` (and `HEAD`) with the DER CRL as
/// `application/pkix-crl` (RFC 2585 §4.2); other methods on `/crl` get 405, every other path 404. One request per
/// connection, then close. Open connections are capped in all and per source address, and a connection that has not
/// been answered within `deadline` is cut: a slow or silent peer holds a slot for seconds, not for ever.
struct CRLListener: Service {
    let host: String
    let port: Int
    let publisher: CRLPublisher
    let logger: Logger
    let onBound: @Sendable (Int) -> Void
    let connections = ConnectionCounter(total: 256, perSource: 16)
    let deadline: Duration = .seconds(10)

    static let path = "/crl"

    func run() async throws {
        let connections = connections
        let logger = logger
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .bind(host: host, port: port) {
                (channel: any Channel) -> EventLoopFuture<
                    NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>
                > in
                let source = channel.remoteAddress?.ipAddress ?? "unknown"
                if let refused = connections.admit(channel, source: source, logger: logger, listener: "CRL") {
                    return channel.eventLoop.makeFailedFuture(refused)
                }
                return channel.eventLoop.makeCompletedFuture {
                    // NIOHTTP1 parses the request (and answers 400 to one it cannot parse, then closes).
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(
                        withPipeliningAssistance: false, withErrorHandling: true)
                    return try NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>(
                        wrappingChannelSynchronously: channel)
                }
            }
        let boundPort = server.channel.localAddress?.port ?? port
        logger.info("listening", metadata: ["address": .string("\(host):\(boundPort)")])
        onBound(boundPort)
        try await withGracefulShutdownHandler {
            try await withThrowingDiscardingTaskGroup { group in
                try await server.executeThenClose { accepted in
                    for try await connection in accepted {
                        group.addTask { await serve(connection) }
                    }
                }
            }
        } onGracefulShutdown: {
            server.channel.close(promise: nil)
            connections.closeAll()
        }
    }

    /// Reads one request head, answers it, closes; or closes at the deadline, whichever comes first.
    private func serve(_ connection: NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>) async {
        let channel = connection.channel
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                try? await connection.executeThenClose { inbound, outbound in
                    var parts = inbound.makeAsyncIterator()
                    // The body, if any, is never read: the answer depends on the head alone.
                    guard case .head(let head) = try await parts.next() else { return }
                    let (status, headers, body) = await answer(head)
                    try await outbound.write(
                        .head(HTTPResponseHead(version: .http1_1, status: status, headers: headers)))
                    if head.method != .HEAD, !body.isEmpty {
                        try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: body))))
                    }
                    try await outbound.write(.end(nil))
                }
            }
            group.addTask {
                try? await Task.sleep(for: deadline)
                channel.close(promise: nil)
            }
            await group.next()
            group.cancelAll()
        }
    }

    func answer(_ head: HTTPRequestHead) async -> (HTTPResponseStatus, HTTPHeaders, [UInt8]) {
        var headers = HTTPHeaders([("Connection", "close"), ("X-Content-Type-Options", "nosniff")])
        guard head.uri == Self.path else {
            headers.add(name: "Content-Length", value: "0")
            return (.notFound, headers, [])
        }
        guard head.method == .GET || head.method == .HEAD else {
            headers.add(name: "Allow", value: "GET, HEAD")
            headers.add(name: "Content-Length", value: "0")
            return (.methodNotAllowed, headers, [])
        }
        guard let crl = await publisher.current else {
            headers.add(name: "Content-Length", value: "0")
            return (.serviceUnavailable, headers, [])
        }
        headers.add(name: "Content-Type", value: "application/pkix-crl")
        headers.add(name: "Content-Length", value: "\(crl.derBytes.count)")
        // A cache must ask again: a revocation is published at once, and must not wait out a cache's lifetime.
        headers.add(name: "Cache-Control", value: "no-cache")
        return (.ok, headers, crl.derBytes)
    }
}
