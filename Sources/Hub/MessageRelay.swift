import Foundation
import MQTT
import NIOCore
import Store

/// MQTT between hub nodes on one database: each node delivers what it admits to its own subscribers and hands it
/// on as a cluster event; the other nodes deliver it when they read the event (`ClusterSync`). Events are read in
/// the order they committed, so one publisher's messages keep their order on every node, and a device's message
/// is handed on in the transaction that stores it: once acknowledged it reaches every node's subscribers, even if
/// its node dies the next moment (at least once; a node that was down meanwhile has no sessions to deliver to).
struct MessageRelay: Sendable {
    /// This node, for this run: it does not deliver its own messages a second time.
    let origin: String

    /// The message as an MQTT 5 PUBLISH: topic, payload, QoS, RETAIN, the properties subscribers get (MQTT 5.0
    /// §3.3.2.3) and, for one that expires, the time it has left (§3.3.2.3.3). With a `placement` (which node's
    /// members of each matching shared subscription get it, `SharedPlacement`), the PUBLISH follows it in an
    /// envelope: `BQR1`, a 16-bit count, then per group its filter and its node, each a 16-bit length and UTF-8.
    func relayed(
        _ message: BrokerMessage, publisher: String?, placement: [TopicFilter: String] = [:],
        now: ContinuousClock.Instant = .now
    ) -> RelayedMessage {
        var properties = message.properties
        properties.subscriptionIdentifiers = []
        if let expiresAt = message.expiresAt {
            properties.messageExpiryInterval = UInt32(clamping: max(1, (expiresAt - now).components.seconds))
        }
        let publish = PublishPacket(
            topic: message.topic, payload: message.payload, qos: message.qos, retain: message.retain,
            packetID: message.qos == .atMostOnce ? nil : 1, properties: properties)
        var buffer = ByteBuffer()
        if !placement.isEmpty {
            buffer.writeBytes(Self.envelope)
            buffer.writeInteger(UInt16(placement.count))
            for (group, node) in placement.sorted(by: { $0.key.rawValue < $1.key.rawValue }) {
                for text in [group.rawValue, node] {
                    buffer.writeInteger(UInt16(text.utf8.count))
                    buffer.writeString(text)
                }
            }
        }
        Packet.publish(publish).encode(into: &buffer, version: .v5)
        return RelayedMessage(origin: origin, publisher: publisher, packet: Array(buffer.readableBytesView))
    }

    static let envelope = Array("BQR1".utf8)

    /// A message another node handed on; nil for one that does not decode (it is skipped, never delivered half) and
    /// for one that expired on its way (its expiry counts from when the origin handed it on, `at`).
    static func message(_ relayed: RelayedMessage, now: Date = Date()) -> BrokerMessage? {
        decode(relayed, now: now)?.message
    }

    /// The message and its placement among shared subscriptions (empty: none given).
    static func decode(_ relayed: RelayedMessage, now: Date = Date()) -> (
        message: BrokerMessage, placement: [TopicFilter: String]
    )? {
        var buffer = ByteBuffer(bytes: relayed.packet)
        var placement: [TopicFilter: String] = [:]
        if relayed.packet.starts(with: Self.envelope) {
            buffer.moveReaderIndex(forwardBy: Self.envelope.count)
            guard let count = buffer.readInteger(as: UInt16.self) else { return nil }
            for _ in 0..<count {
                guard let groupLength = buffer.readInteger(as: UInt16.self),
                    let group = buffer.readString(length: Int(groupLength)).flatMap({ try? TopicFilter($0) }),
                    let nodeLength = buffer.readInteger(as: UInt16.self),
                    let node = buffer.readString(length: Int(nodeLength))
                else { return nil }
                placement[group] = node
            }
        }
        var decoder = MQTTDecoder(role: .server, maximumPacketSize: 1 << 28, version: .v5)
        guard case .publish(var publish)? = try? decoder.decode(buffer: &buffer), buffer.readableBytes == 0 else {
            return nil
        }
        if let interval = publish.properties.messageExpiryInterval, let at = relayed.at {
            let left = Double(interval) - max(0, now.timeIntervalSince(at))
            guard left >= 1 else { return nil }
            publish.properties.messageExpiryInterval = UInt32(left)
        }
        return (BrokerMessage(publish), placement)
    }
}
