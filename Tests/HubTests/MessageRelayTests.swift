import Foundation
import MQTT
import Store
import Testing

@testable import Hub

/// The MQTT message as it travels between hub nodes: what subscribers get survives the trip, and the expiry keeps
/// counting on the way.
@Suite struct MessageRelayTests {
    @Test func aRelayedMessageArrivesAsItLeftAndExpiresOnTime() throws {
        var properties = Properties()
        properties.contentType = "text/plain"
        properties.userProperties = [("k", "v")]
        properties.messageExpiryInterval = 60
        properties.subscriptionIdentifiers = [7]  // one subscriber's copy: never handed on
        let sent = BrokerMessage(
            PublishPacket(
                topic: try TopicName("devices/d/state"), payload: Array("on".utf8), qos: .exactlyOnce, retain: true,
                packetID: 3, properties: properties))
        let relay = MessageRelay(origin: "node-a")
        let handed = relay.relayed(sent, publisher: "device:d", now: .now)
        #expect(handed.origin == "node-a" && handed.publisher == "device:d")

        let now = Date()
        let received = try #require(
            MessageRelay.message(
                RelayedMessage(
                    origin: "node-a", publisher: "device:d", packet: handed.packet, at: now - 20), now: now))
        #expect(received.topic.rawValue == "devices/d/state" && received.payload == Array("on".utf8))
        #expect(received.qos == .exactlyOnce && received.retain)
        #expect(received.properties.contentType == "text/plain" && received.properties.userProperties.map(\.0) == ["k"])
        #expect(received.properties.subscriptionIdentifiers.isEmpty)
        let left = ContinuousClock.now.duration(to: try #require(received.expiresAt))
        #expect(left > .seconds(35) && left <= .seconds(40), "60 s less the 20 s on its way: \(left)")

        let late = RelayedMessage(origin: "node-a", publisher: nil, packet: handed.packet, at: now - 61)
        #expect(MessageRelay.message(late, now: now) == nil, "expired on its way: not delivered")
        #expect(MessageRelay.message(RelayedMessage(origin: "x", publisher: nil, packet: [0x30, 0x05, 1])) == nil)
        #expect(
            MessageRelay.message(RelayedMessage(origin: "x", publisher: nil, packet: handed.packet + [0])) == nil,
            "trailing bytes: refused whole")
    }

    /// A node's shared subscriptions as its heartbeat row records them: read back as written; what is not a shared
    /// subscription, or not JSON, is left out.
    @Test func aNodesSharedSubscriptionsReadBackAsAnnounced() throws {
        let presence: SharedPlacement.Presence = [
            try TopicFilter("$share/workers/devices/+/telemetry"): true, try TopicFilter("$share/audit/#"): false,
        ]
        let text = NodeDescription.encode(presence)
        #expect(text.contains("$share/workers/devices/+/telemetry"), "slashes unescaped: \(text)")
        #expect(NodeDescription.decode(text) == presence)
        #expect(NodeDescription.decode("") == [:] && NodeDescription.decode("[1]") == [:])
        #expect(
            NodeDescription.decode(#"{"devices/#":true,"$share/x/#":false}"#) == [try TopicFilter("$share/x/#"): false])
        // Share names that differ only in Unicode normalization are two shares (by bytes, MQTT 5.0 §4.7.3): both
        // encoded (a `[String: Bool]` once trapped on them as duplicate keys) and both read back; a control
        // character and a quote survive the JSON escaping.
        let spellings: SharedPlacement.Presence = [
            try TopicFilter("$share/caf\u{E9}/devices/d1/x"): true,
            try TopicFilter("$share/cafe\u{301}/devices/d1/x"): false,
            try TopicFilter("$share/q\"\u{1}/t"): true,
            // A noncharacter, which MQTT allows (I-JSON does not): the rest still reads.
            try TopicFilter("$share/\u{FFFF}/devices/d1/x"): true,
        ]
        #expect(NodeDescription.decode(NodeDescription.encode(spellings)) == spellings)
    }

    /// The placement among shared subscriptions travels in an envelope before the PUBLISH; a message without one
    /// (an older node's) still reads, and a damaged envelope is refused whole.
    @Test func thePlacementAmongSharedSubscriptionsTravelsWithTheMessage() throws {
        let message = BrokerMessage(
            topic: try TopicName("devices/d/telemetry"), payload: [1], qos: .atLeastOnce, retain: false)
        let relay = MessageRelay(origin: "node-a")
        let placement = [
            try TopicFilter("$share/workers/devices/+/telemetry"): "node-b", try TopicFilter("$share/x/#"): "node-a",
        ]
        let handed = relay.relayed(message, publisher: nil, placement: placement)
        #expect(handed.packet.starts(with: Array("BQR1".utf8)))
        let (received, placed) = try #require(MessageRelay.decode(handed))
        #expect(received.topic == message.topic && received.payload == [1] && placed == placement)
        let plain = relay.relayed(message, publisher: nil)
        #expect(plain.packet.first == 0x32, "no placement: the PUBLISH alone")
        #expect(try #require(MessageRelay.decode(plain)).placement.isEmpty)
        for cut in [5, 8, 12, handed.packet.count - plain.packet.count] {
            #expect(
                MessageRelay.decode(
                    RelayedMessage(origin: "x", publisher: nil, packet: Array(handed.packet.prefix(cut))))
                    == nil, "cut at \(cut)")
        }
    }
}
