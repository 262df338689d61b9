import Core
import Foundation
import Gateway
import Logging
import MQTT
import NIOCore
import NIOPosix
import NIOSSL
import PKI
import Pairing
import ServiceLifecycle
import Store
import Synchronization
import X509

/// The MQTT listener: MQTT 3.1.1 and 5.0 over TLS 1.3 with a required device certificate (the same verification as
/// the device API). Identity is the certificate; a device publishes and subscribes only under `devices/<id>/`.
/// A QoS 1 PUBLISH is acknowledged only after it is durable in the store.
///
/// Not yet here (MQTT issue): retained messages, persistent sessions, QoS 1 redelivery to subscribers, the gateway
/// pipeline (rate limits, schemas, counters), connection limits per source.
struct MQTTListener: Service {
    let host: String
    let port: Int
    let credentials: HubCredentials
    let revocations: RevocationList
    let store: any HubStore
    let rids: RIDDirectory
    let broker: MQTTBroker
    /// Its quarantine applies here too: a device quarantined on any interface is refused on all of them.
    let gateway: GatewayPipeline
    let logger: Logger
    let onBound: @Sendable (Int) -> Void
    /// The TLS handshake plus CONNECT must arrive within this time (MQTT 3.1.1 §3.1.4 lets the server close).
    let connectDeadline: Duration = .seconds(5)
    let maximumPacketSize = 64 * 1024 + 1024

    func run() async throws {
        let (tls, verify) = try HubTLS.serverConfiguration(
            credentials: credentials, role: .device, revocations: revocations, store: store, logger: logger,
            applicationProtocols: ["mqtt"])
        let context = try NIOSSLContext(configuration: tls)
        let maximumPacketSize = maximumPacketSize
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .bind(host: host, port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        NIOSSLServerHandler(context: context, customVerificationCallback: verify))
                    try channel.pipeline.syncOperations.addHandler(
                        ByteToMessageHandler(
                            MQTTDecoder(role: .server, maximumPacketSize: maximumPacketSize),
                            maximumBufferSize: maximumPacketSize * 2))
                    return try NIOAsyncChannel<Packet, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
        let boundPort = server.channel.localAddress?.port ?? port
        logger.info("listening", metadata: ["address": .string("\(host):\(boundPort)")])
        onBound(boundPort)
        try await withGracefulShutdownHandler {
            try await withThrowingDiscardingTaskGroup { group in
                try await server.executeThenClose { connections in
                    for try await connection in connections {
                        group.addTask { await MQTTConnection(listener: self, channel: connection).serve() }
                    }
                }
            }
        } onGracefulShutdown: {
            server.channel.close(promise: nil)
        }
    }
}

/// One MQTT connection.
struct MQTTConnection {
    let listener: MQTTListener
    let channel: NIOAsyncChannel<Packet, ByteBuffer>

    func serve() async {
        let source = channel.channel.remoteAddress?.ipAddress
        do {
            try await channel.executeThenClose { inbound, outbound in
                var packets = inbound.makeAsyncIterator()
                // CONNECT within the deadline (the TLS handshake happens while we wait), or the connection closes.
                let nioChannel = channel.channel
                let deadline = nioChannel.eventLoop.scheduleTask(in: .nanoseconds(listener.connectDeadline.nanoseconds))
                {
                    nioChannel.close(promise: nil)
                }
                let first = try await packets.next()
                deadline.cancel()
                guard case .connect(let connect) = first else { return }
                guard let peer = try? await peerIdentity(), case .device(let device) = peer.identity,
                    !listener.revocations.contains(peer.serialHex)
                else { return }
                try await session(
                    connect: connect, device: device, serial: peer.serialHex, source: source, packets: &packets,
                    outbound: outbound)
            }
        } catch {
            listener.logger.debug("MQTT connection ended", metadata: ["error": "\(error)"])
        }
    }

    private func peerIdentity() async throws -> PeerCertificate? {
        guard let certificate = try await channel.channel.nioSSL_peerCertificate().get(),
            let x509 = try? Certificate(derEncoded: certificate.toDERBytes()), let identity = x509.bulwarkIdentity
        else { return nil }
        return PeerCertificate(identity: identity, serialHex: x509.serialHex)
    }

    private func send(
        _ packet: Packet, _ version: ProtocolVersion, _ outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>
    )
        async throws
    {
        var buffer = ByteBuffer()
        packet.encode(into: &buffer, version: version)
        try await outbound.write(buffer)
    }

    private func refuse(_ kind: String, _ device: DeviceID, _ source: String?, _ detail: String) async {
        listener.logger.notice(
            "MQTT refused", metadata: ["device": .string(device.rawValue), "detail": .string(detail)])
        try? await listener.store.recordSecurityEvent(
            SecurityEvent(at: Date(), kind: kind, identity: Identity.device(device).uri, source: source, detail: detail)
        )
    }

    /// The client identifier must name the certificate's device (or be its current RID); an empty one is assigned.
    private func acceptedClientID(_ requested: String, device: DeviceID) -> String? {
        if requested.isEmpty || requested == device.rawValue { return device.rawValue }
        if let rid = RotatingIdentifier.parse(requested), listener.rids.resolve(rid) == device { return requested }
        return nil
    }

    private func session(
        connect: ConnectPacket, device: DeviceID, serial: String, source: String?,
        packets: inout NIOAsyncChannelInboundStream<Packet>.AsyncIterator,
        outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>
    ) async throws {
        let version = connect.version
        let v5 = version == .v5
        guard let clientID = acceptedClientID(connect.clientID, device: device) else {
            await refuse("mqtt-client-id-refused", device, source, "client id names another device")
            // MQTT 5.0 §3.2.2.2 0x85 Client Identifier not valid; 3.1.1 §3.2.2.3 0x02 identifier rejected.
            try await send(
                .connack(sessionPresent: false, reasonCode: v5 ? 0x85 : 0x02, properties: .init()), version, outbound)
            return
        }
        // A quarantined device is refused with no further work (MQTT 5.0 §3.2.2.2 0x87 Not authorized;
        // 3.1.1 §3.2.2.3 0x05 not authorized), as on HTTP.
        if listener.gateway.quarantine.isQuarantined(device, now: Int64(Date().timeIntervalSince1970)) {
            try await send(
                .connack(sessionPresent: false, reasonCode: v5 ? 0x87 : 0x05, properties: .init()), version, outbound)
            return
        }
        var properties = Properties()
        if v5 {
            if connect.clientID.isEmpty { properties.assignedClientIdentifier = clientID }
            properties.maximumQoS = 1
            properties.retainAvailable = 0
            properties.topicAliasMaximum = 0
            properties.sessionExpiryInterval = 0
            properties.maximumPacketSize = UInt32(listener.maximumPacketSize)
        }
        try await send(.connack(sessionPresent: false, reasonCode: 0, properties: properties), version, outbound)
        // MQTT 3.1.1 §3.1.2.10: no packet within 1.5 × keep-alive closes the connection.
        if connect.keepAlive > 0 {
            let timeout = TimeAmount.milliseconds(Int64(connect.keepAlive) * 1500)
            try await channel.channel.pipeline.addHandlers(
                [IdleStateHandler(readTimeout: timeout), CloseOnIdleHandler()], position: .first)
        }
        let ownPrefix = "devices/\(device.rawValue)/"
        let subscriber = await listener.broker.register(channel: channel.channel, version: version)
        let cleanDisconnect: Bool
        do {
            cleanDisconnect = try await loop(
                device: device, serial: serial, source: source, version: version, subscriber: subscriber,
                packets: &packets, outbound: outbound)
        } catch {
            cleanDisconnect = false
        }
        await listener.broker.unregister(subscriber)
        // MQTT 3.1.1 §3.1.2.5: the will is published when the connection ends without a DISCONNECT.
        if !cleanDisconnect, let will = connect.will, will.topic.rawValue.hasPrefix(ownPrefix) {
            await listener.broker.publish(will.topic, will.payload, qos: will.qos, from: subscriber)
        }
    }

    /// Handles packets until the connection ends; true when it ended with a DISCONNECT.
    private func loop(
        device: DeviceID, serial: String, source: String?, version: ProtocolVersion, subscriber: Int,
        packets: inout NIOAsyncChannelInboundStream<Packet>.AsyncIterator,
        outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>
    ) async throws -> Bool {
        let v5 = version == .v5
        let ownPrefix = "devices/\(device.rawValue)/"
        while let packet = try await packets.next() {
            switch packet {
            case .publish(let publish):
                guard !listener.revocations.contains(serial) else {
                    await refuse("revoked-certificate-used", device, source, "MQTT publish after revocation")
                    if v5 { try await send(.disconnect(reasonCode: 0x87, properties: .init()), version, outbound) }
                    return false
                }
                guard !listener.gateway.quarantine.isQuarantined(device, now: Int64(Date().timeIntervalSince1970))
                else {
                    if v5 { try await send(.disconnect(reasonCode: 0x87, properties: .init()), version, outbound) }
                    return false
                }
                guard publish.qos != .exactlyOnce else {
                    if v5 { try await send(.disconnect(reasonCode: 0x9B, properties: .init()), version, outbound) }
                    return false
                }
                guard publish.topic.rawValue.hasPrefix(ownPrefix) else {
                    await refuse("mqtt-publish-refused", device, source, "publish outside own topics")
                    if v5, let id = publish.packetID {
                        try await send(.puback(packetID: id, reasonCode: 0x87, properties: .init()), version, outbound)
                        continue
                    }
                    return false  // 3.1.1 has no negative PUBACK: close (§4.8).
                }
                guard (try? JSONSerialization.jsonObject(with: Data(publish.payload))) is [String: Any] else {
                    await refuse("invalid-message", device, source, "MQTT payload is not a JSON object")
                    if v5, let id = publish.packetID {
                        try await send(.puback(packetID: id, reasonCode: 0x99, properties: .init()), version, outbound)
                        continue
                    }
                    return false
                }
                _ = try await listener.store.appendTelemetry(
                    NewTelemetry(
                        deviceID: device, receivedAt: Date(), correlationID: CorrelationID().rawValue,
                        body: publish.payload))
                if let id = publish.packetID {
                    try await send(.puback(packetID: id, reasonCode: 0, properties: .init()), version, outbound)
                }
                await listener.broker.publish(publish.topic, publish.payload, qos: publish.qos, from: subscriber)
            case .subscribe(let id, let subscriptions, _):
                var codes: [UInt8] = []
                var granted: [TopicFilter: QoS] = [:]
                for subscription in subscriptions {
                    if subscription.filter.rawValue.hasPrefix(ownPrefix) {
                        let qos = min(subscription.qos, .atLeastOnce)
                        granted[subscription.filter] = qos
                        codes.append(qos.rawValue)
                    } else {
                        await refuse("mqtt-subscribe-refused", device, source, "subscribe outside own topics")
                        codes.append(v5 ? 0x87 : 0x80)
                    }
                }
                await listener.broker.subscribe(subscriber, granted)
                try await send(.suback(packetID: id, reasonCodes: codes, properties: .init()), version, outbound)
            case .unsubscribe(let id, let filters, _):
                await listener.broker.unsubscribe(subscriber, filters)
                try await send(
                    .unsuback(packetID: id, reasonCodes: filters.map { _ in 0 }, properties: .init()), version, outbound
                )
            case .pingreq:
                try await send(.pingresp, version, outbound)
            case .disconnect:
                return true
            case .puback:
                continue
            case .pubrec, .pubrel, .pubcomp:
                if v5 { try await send(.disconnect(reasonCode: 0x9B, properties: .init()), version, outbound) }
                return false
            case .auth:
                if v5 { try await send(.disconnect(reasonCode: 0x8C, properties: .init()), version, outbound) }
                return false
            default:
                if v5 { try await send(.disconnect(reasonCode: 0x82, properties: .init()), version, outbound) }
                return false
            }
        }
        return false
    }
}

/// In-memory fan-out to subscribed connections (QoS 0 and 1 deliveries; no redelivery yet).
actor MQTTBroker {
    struct Subscriber {
        let channel: any Channel
        let version: ProtocolVersion
        var filters: [TopicFilter: QoS] = [:]
        var nextPacketID: UInt16 = 1
    }

    private var subscribers: [Int: Subscriber] = [:]
    private var nextID = 0

    func register(channel: any Channel, version: ProtocolVersion) -> Int {
        nextID += 1
        subscribers[nextID] = Subscriber(channel: channel, version: version)
        return nextID
    }

    func unregister(_ id: Int) { subscribers[id] = nil }

    func subscribe(_ id: Int, _ filters: [TopicFilter: QoS]) {
        subscribers[id]?.filters.merge(filters) { $1 }
    }

    func unsubscribe(_ id: Int, _ filters: [TopicFilter]) {
        for filter in filters { subscribers[id]?.filters[filter] = nil }
    }

    func publish(_ topic: TopicName, _ payload: [UInt8], qos: QoS, from publisher: Int) {
        for (id, subscriber) in subscribers {
            guard let granted = subscriber.filters.filter({ $0.key.matches(topic) }).values.max() else { continue }
            let deliveredQoS = min(granted, qos)
            var packetID: UInt16?
            if deliveredQoS != .atMostOnce {
                packetID = subscriber.nextPacketID
                subscribers[id]?.nextPacketID = subscriber.nextPacketID == UInt16.max ? 1 : subscriber.nextPacketID + 1
            }
            var buffer = ByteBuffer()
            Packet.publish(PublishPacket(topic: topic, payload: payload, qos: deliveredQoS, packetID: packetID))
                .encode(into: &buffer, version: subscriber.version)
            // Non-blocking: a slow subscriber's writes queue in its own channel, never stall the broker.
            subscriber.channel.writeAndFlush(buffer, promise: nil)
        }
    }
}

/// Closes the connection when `IdleStateHandler` reports no reads for the keep-alive period.
final class CloseOnIdleHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let idle = event as? IdleStateHandler.IdleStateEvent, idle == .read {
            context.close(promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }
}

@available(*, unavailable)
extension CloseOnIdleHandler: Sendable {}

extension Duration {
    var nanoseconds: Int64 { components.seconds * 1_000_000_000 + components.attoseconds / 1_000_000_000 }
}
