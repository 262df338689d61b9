import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization
public import TUFClient

/// A `Fetcher` over HTTP/1.1 on SwiftNIO.
///
/// - The byte limit is enforced while streaming: the body is counted as it arrives and the
///   connection is closed as soon as the limit is passed (and up front, from Content-Length).
/// - `timeout` bounds the whole fetch, connect to last byte (slow retrieval attack).
/// - `http://` works out of the box. TLS is a seam: pass a `secureChannel` that adds a TLS
///   client handler (e.g. NIOSSL's `NIOSSLClientHandler`) to the pipeline; it runs before the
///   HTTP codec is added, and `https://` URLs are refused without it.
public struct HTTPFetcher: Fetcher {
    /// Adds TLS to a freshly connected channel for `host`, synchronously on its event loop.
    public typealias SecureChannel = @Sendable (_ channel: any Channel, _ host: String) throws -> Void

    public var timeout: Duration
    public var connectTimeout: Duration
    let group: any EventLoopGroup
    let secureChannel: SecureChannel?

    public init(
        timeout: Duration = .seconds(30),
        connectTimeout: Duration = .seconds(10),
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        secureChannel: SecureChannel? = nil
    ) {
        self.timeout = timeout
        self.connectTimeout = connectTimeout
        self.group = group
        self.secureChannel = secureChannel
    }

    public func fetch(_ url: String, maxBytes: Int) async throws -> [UInt8] {
        let target = try HTTPURL(url)
        if target.secure, secureChannel == nil {
            throw UpdaterError.usage("https:// needs a TLS channel configuration")
        }
        let channelBox = ChannelBox()
        let limit = timeout
        return try await withThrowingTaskGroup(of: [UInt8]?.self) { group in
            group.addTask {
                try await self.get(target, url: url, maxBytes: maxBytes, channelBox: channelBox)
            }
            group.addTask {
                try await Task.sleep(for: limit)
                return nil
            }
            defer {
                group.cancelAll()
                channelBox.channel.withLock { $0 }?.close(promise: nil)
            }
            guard let first = try await group.next(), let bytes = first else {
                throw UpdaterError.timeout(url: url)
            }
            return bytes
        }
    }

    private func get(
        _ target: HTTPURL,
        url: String,
        maxBytes: Int,
        channelBox: ChannelBox
    ) async throws
        -> [UInt8]
    {
        let connectMillis =
            Int64(connectTimeout.components.seconds * 1000)
            + connectTimeout.components.attoseconds / 1_000_000_000_000_000
        let secure = target.secure ? secureChannel : nil
        let channel: NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>
        let initializer:
            @Sendable (any Channel) -> EventLoopFuture<
                NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>
            > = { channel in
                channel.eventLoop.makeCompletedFuture {
                    try secure?(channel, target.host)
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(
                        wrappingChannelSynchronously: channel
                    )
                }
            }
        do {
            let bootstrap = ClientBootstrap(group: group).connectTimeout(.milliseconds(connectMillis))
            // An address literal is connected to as it is: resolving it would start the resolver's thread pool
            // (getaddrinfo runs off the event loop), a cost every short-lived client process would pay.
            if let address = try? SocketAddress(ipAddress: target.host, port: target.port) {
                channel = try await bootstrap.connect(to: address, channelInitializer: initializer)
            } else {
                channel = try await bootstrap.connect(
                    host: target.host, port: target.port, channelInitializer: initializer)
            }
        } catch {
            throw UpdaterError.transport("cannot connect to \(target.host):\(target.port)")
        }
        channelBox.channel.withLock { $0 = channel.channel }
        return try await channel.executeThenClose { inbound, outbound in
            var headers = HTTPHeaders()
            headers.add(name: "Host", value: target.hostHeader)
            headers.add(name: "Connection", value: "close")
            headers.add(name: "User-Agent", value: "bulwark-tuf")
            let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: target.path, headers: headers)
            // Head and end go out in one flush. A server may answer and close as soon as it has
            // read the head, so a failed write is not fatal: the response may already be here.
            try? await outbound.write(contentsOf: [.head(head), .end(nil)])
            var body: [UInt8] = []
            var status = 0
            for try await part in inbound {
                switch part {
                case .head(let head):
                    status = Int(head.status.code)
                    if (200..<300).contains(status), let declared = head.headers.first(name: "Content-Length"),
                        let n = Int(declared), n > maxBytes
                    {
                        throw UpdaterError.tooLarge(limit: maxBytes, url: url)
                    }
                case .body(let buffer):
                    guard (200..<300).contains(status) else { continue }
                    guard body.count + buffer.readableBytes <= maxBytes else {
                        throw UpdaterError.tooLarge(limit: maxBytes, url: url)
                    }
                    body.append(contentsOf: buffer.readableBytesView)
                case .end:
                    guard (200..<300).contains(status) else { throw UpdaterError.httpStatus(status, url: url) }
                    return body
                }
            }
            throw UpdaterError.transport("connection closed before the response ended")
        }
    }
}

/// Holds the open channel so the timeout path can close it and end a stalled read.
final class ChannelBox: Sendable {
    let channel = Mutex<(any Channel)?>(nil)
}
