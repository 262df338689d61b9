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
}
