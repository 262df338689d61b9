import Foundation
public import MQTT
public import NIOCore
import NIOPosix
public import NIOSSL

/// A small MQTT client over mutual TLS, for tests and the load generator: connect, publish (QoS 0 or 1 with
/// pipelining), subscribe. One task uses a connection at a time.
public final class MQTTClientConnection {
    public let version: ProtocolVersion
    private var inbound: NIOAsyncChannelInboundStream<Packet>.AsyncIterator
    private let outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>
    private var nextPacketID: UInt16 = 0
    /// The CONNACK's Session Present flag and properties.
    public private(set) var sessionPresent = false
    public private(set) var connackProperties = Properties()

    init(
        version: ProtocolVersion, inbound: NIOAsyncChannelInboundStream<Packet>.AsyncIterator,
        outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>
    ) {
        self.version = version
        self.inbound = inbound
        self.outbound = outbound
    }

    /// Connects, sends CONNECT and waits for CONNACK; returns its reason code with the connection.
    public static func withConnection<Result: Sendable>(
        host: String, port: Int, tls: TLSConfiguration, clientID: String, version: ProtocolVersion = .v311,
        keepAlive: UInt16 = 60, configure: (inout ConnectPacket) -> Void = { _ in },
        _ body: (MQTTClientConnection, ReasonCode) async throws -> Result
    ) async throws -> Result {
        let context = try NIOSSLContext(configuration: tls)
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(10))
            .connect(host: host, port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        NIOSSLClientHandler(context: context, serverHostname: "localhost"))
                    try channel.pipeline.syncOperations.addHandler(
                        ByteToMessageHandler(MQTTDecoder(role: .client, maximumPacketSize: 1 << 20, version: version)))
                    return try NIOAsyncChannel<Packet, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
        return try await channel.executeThenClose { inbound, outbound in
            let connection = MQTTClientConnection(
                version: version, inbound: inbound.makeAsyncIterator(), outbound: outbound)
            var connect = ConnectPacket(version: version, clientID: clientID, keepAlive: keepAlive)
            configure(&connect)
            try await connection.send(.connect(connect))
            guard case .connack(let present, let reason, let properties) = try await connection.next() else {
                throw ClientError("no CONNACK")
            }
            connection.sessionPresent = present
            connection.connackProperties = properties
            return try await body(connection, reason)
        }
    }

    public func send(_ packet: Packet) async throws {
        var buffer = ByteBuffer()
        packet.encode(into: &buffer, version: version)
        try await outbound.write(buffer)
    }

    /// Writes pre-encoded packets in one go (the load generator encodes once).
    public func write(_ buffer: ByteBuffer) async throws { try await outbound.write(buffer) }

    /// The next packet from the hub (those set aside while waiting for a PUBACK first).
    public func next() async throws -> Packet? {
        if !held.isEmpty { return held.removeFirst() }
        return try await inbound.next()
    }

    private var held: [Packet] = []

    public func makePacketID() -> UInt16 {
        nextPacketID = nextPacketID == UInt16.max ? 1 : nextPacketID + 1
        return nextPacketID
    }

    /// Publishes at QoS 1 and waits for its PUBACK; returns the reason code.
    public func publishAcknowledged(
        topic: TopicName, payload: [UInt8], retain: Bool = false, properties: Properties = .init()
    ) async throws -> ReasonCode {
        try await publishAcknowledgedWithProperties(
            topic: topic, payload: payload, retain: retain, properties: properties
        ).reason
    }

    /// Publishes at QoS 1 and waits for its PUBACK (or a DISCONNECT, returned as its reason code); returns the
    /// reason code and the acknowledgement's properties. Other packets that arrive meanwhile are kept for `next()`.
    public func publishAcknowledgedWithProperties(
        topic: TopicName, payload: [UInt8], retain: Bool = false, properties: Properties = .init()
    ) async throws -> (reason: ReasonCode, properties: Properties) {
        let id = makePacketID()
        try await send(
            .publish(
                PublishPacket(
                    topic: topic, payload: payload, qos: .atLeastOnce, retain: retain, packetID: id,
                    properties: properties)))
        while let packet = try await inbound.next() {
            switch packet {
            case .puback(let acknowledged, let reason, let properties) where acknowledged == id:
                return (reason, properties)
            case .disconnect(let reason, let properties):
                return (reason, properties)
            default:
                held.append(packet)
            }
        }
        throw ClientError("connection closed before PUBACK")
    }
}
