import Core
import Foundation
import HubClient
import MQTT
import Testing

/// MQTT 5 features over real TLS connections: message properties forwarded (request/response works), Message
/// Expiry honoured in queues and for retained messages, Subscription Identifiers echoed, overlapping subscriptions
/// delivered once, shared subscriptions in turn and handed over when a member leaves.
@Suite(.serialized) struct MQTTFeatureTests {
    static func subscribe(
        _ mqtt: MQTTClientConnection, _ filters: [String], qos: QoS = .atLeastOnce, identifier: Int? = nil
    ) async throws -> [ReasonCode] {
        var properties = Properties()
        if let identifier { properties.subscriptionIdentifiers = [identifier] }
        let id = mqtt.makePacketID()
        try await mqtt.send(
            .subscribe(
                packetID: id, subscriptions: try filters.map { Subscription(filter: try TopicFilter($0), qos: qos) },
                properties: properties))
        guard case .suback(id, let codes, _) = try await mqtt.next() else { throw ClientError("no SUBACK") }
        return codes
    }

    /// The next PUBLISH, acknowledged when it is QoS 1 and `acknowledge` is set.
    static func received(_ mqtt: MQTTClientConnection, acknowledge: Bool = true) async throws -> PublishPacket {
        while let packet = try await mqtt.next() {
            guard case .publish(let publish) = packet else { continue }
            if acknowledge, let id = publish.packetID {
                try await mqtt.send(.puback(packetID: id, reasonCode: 0, properties: .init()))
            }
            return publish
        }
        throw ClientError("connection closed")
    }

    static func persistent(_ connect: inout ConnectPacket) {
        connect.cleanStart = false
        connect.properties.sessionExpiryInterval = 300
    }

    @Test func propertiesAreForwardedAndIdentifiersEchoed() async throws {
        let hub = try await TestHub.start()
        let device = try await hub.enroll("pf-1")
        let operatorClient = try hub.operatorClient()
        var request = Properties()
        request.userProperties = [("a", "1"), ("b", "2"), ("a", "3")]
        request.contentType = "application/json"
        request.payloadFormatIndicator = 1
        request.messageExpiryInterval = 60
        request.other = [(0x08, Array("devices/pf-1/commands/reply".utf8)), (0x09, [0xC0, 0xFF, 0xEE])]
        // A device may not name another device's topic as its Response Topic (an application would answer there).
        var foreignReply = Properties()
        foreignReply.other = [(0x08, Array("devices/pf-9/commands/reboot".utf8))]
        try await MQTTBrokerTests.connect(hub, operatorClient, clientID: "app") { fleet, _ async throws in
            // Two overlapping subscriptions with identifiers, one 3.1.1-style overlap below.
            #expect(try await Self.subscribe(fleet, ["devices/+/telemetry"], identifier: 7) == [1])
            #expect(try await Self.subscribe(fleet, ["devices/pf-1/#"], identifier: 9) == [1])
            try await MQTTBrokerTests.connect(hub, device) { mqtt, _ async throws in
                #expect(try await Self.subscribe(mqtt, ["devices/pf-1/commands/#"], identifier: 3) == [1])
                #expect(
                    try await mqtt.publishAcknowledged(
                        topic: try TopicName("devices/pf-1/telemetry"), payload: Array("{}".utf8),
                        properties: foreignReply) == 0x87)
                // Request: the device asks, naming where the answer goes and what correlates it.
                #expect(
                    try await mqtt.publishAcknowledged(
                        topic: try TopicName("devices/pf-1/telemetry"), payload: Array(#"{"q":1}"#.utf8),
                        properties: request) == 0)
                let asked = try await Self.received(fleet)
                #expect(asked.topic.rawValue == "devices/pf-1/telemetry")
                #expect(asked.properties.userProperties.map { "\($0.0)=\($0.1)" } == ["a=1", "b=2", "a=3"])
                #expect(asked.properties.contentType == "application/json")
                #expect(asked.properties.payloadFormatIndicator == 1)
                #expect((58...60).contains(asked.properties.messageExpiryInterval ?? 0))
                #expect(asked.properties.subscriptionIdentifiers == [7, 9], "one copy carrying both identifiers")
                #expect(asked.properties.topicAlias == nil)
                let responseTopic = try #require(asked.properties.other.first { $0.0 == 0x08 }.map { $0.1 })
                let correlation = try #require(asked.properties.other.first { $0.0 == 0x09 }.map { $0.1 })
                #expect(correlation == [0xC0, 0xFF, 0xEE])
                // Response: the application answers on the response topic with the correlation data.
                var response = Properties()
                response.other = [(0x09, correlation)]
                #expect(
                    try await fleet.publishAcknowledged(
                        topic: try TopicName(String(decoding: responseTopic, as: UTF8.self)),
                        payload: Array(#"{"a":42}"#.utf8), properties: response) == 0)
                let answer = try await Self.received(mqtt)
                #expect(answer.properties.other.first { $0.0 == 0x09 }?.1 == [0xC0, 0xFF, 0xEE])
                #expect(answer.properties.subscriptionIdentifiers == [3])
                #expect(answer.properties.messageExpiryInterval == nil, "the response had no expiry")
            }
        }
        // MQTT 3.1.1: overlapping subscriptions at QoS 0 and 1 give one copy, at QoS 1.
        try await MQTTBrokerTests.connect(hub, operatorClient, version: .v311, clientID: "legacy") {
            fleet, _ async throws in
            #expect(try await Self.subscribe(fleet, ["devices/#"], qos: .atMostOnce) == [0])
            #expect(try await Self.subscribe(fleet, ["devices/pf-1/telemetry"]) == [1])
            let telemetry = try TopicName("devices/pf-1/telemetry")
            let replies = try await MQTTBrokerTests.connect(hub, device) { mqtt, _ -> [ReasonCode] in
                [
                    try await mqtt.publishAcknowledged(topic: telemetry, payload: Array(#"{"q":2}"#.utf8)),
                    try await mqtt.publishAcknowledged(topic: telemetry, payload: Array(#"{"q":3}"#.utf8)),
                ]
            }
            #expect(replies == [0, 0])
            let first = try await Self.received(fleet)
            let second = try await Self.received(fleet)
            #expect(first.qos == .atLeastOnce && second.qos == .atLeastOnce)
            #expect(first.payload == Array(#"{"q":2}"#.utf8) && second.payload == Array(#"{"q":3}"#.utf8))
        }
        try await hub.stop()
    }

    /// §3.3.2.3.3: a queued message whose expiry passed is not delivered, one still alive carries what remains of
    /// its interval; an expired retained message is no longer sent to new subscribers.
    @Test(.timeLimit(.minutes(3))) func expiredMessagesAreNotDelivered() async throws {
        let hub = try await TestHub.start()
        let device = try await hub.enroll("pf-2")
        let other = try await hub.enroll("pf-3")
        let operatorClient = try hub.operatorClient()
        func expiring(_ seconds: UInt32) -> Properties {
            var properties = Properties()
            properties.messageExpiryInterval = seconds
            return properties
        }
        try await MQTTBrokerTests.connect(hub, device, configure: Self.persistent) { mqtt, _ async throws in
            #expect(try await Self.subscribe(mqtt, ["devices/pf-2/commands/#"]) == [1])
            // Retained state that expires in a second.
            #expect(
                try await mqtt.publishAcknowledged(
                    topic: try TopicName("devices/pf-2/state"), payload: Array(#"{"on":1}"#.utf8), retain: true,
                    properties: expiring(1)) == 0)
            try await mqtt.send(.disconnect(reasonCode: 0, properties: .init()))
        }
        try await MQTTBrokerTests.connect(hub, other) { mqtt, _ async throws in
            #expect(
                try await mqtt.publishAcknowledged(
                    topic: try TopicName("devices/pf-3/state"), payload: Array(#"{"on":2}"#.utf8), retain: true) == 0)
        }
        // Before command b is sent: the time it waited is at most the time since.
        let published = ContinuousClock.now
        try await MQTTBrokerTests.connect(hub, operatorClient, clientID: "ops") { fleet, _ async throws in
            #expect(
                try await fleet.publishAcknowledged(
                    topic: try TopicName("devices/pf-2/commands/a"), payload: Array(#"{"n":1}"#.utf8),
                    properties: expiring(1)) == 0)
            #expect(
                try await fleet.publishAcknowledged(
                    topic: try TopicName("devices/pf-2/commands/b"), payload: Array(#"{"n":2}"#.utf8),
                    properties: expiring(100)) == 0)
        }
        try await Task.sleep(for: .milliseconds(2200))
        try await MQTTBrokerTests.connect(hub, device, configure: Self.persistent) { mqtt, _ async throws in
            #expect(mqtt.sessionPresent)
            let delivered = try await Self.received(mqtt)
            // What remains: 100 s less the time it waited (at least the 2.2 s slept; more in a loaded run).
            let waited = Int((ContinuousClock.now - published).components.seconds)
            #expect(delivered.topic.rawValue == "devices/pf-2/commands/b", "the expired command was dropped")
            let remaining = Int(delivered.properties.messageExpiryInterval ?? 0)
            #expect((100 - waited - 1...98).contains(remaining), "\(remaining) s left after \(waited) s")
        }
        try await MQTTBrokerTests.connect(hub, operatorClient, clientID: "ops") { fleet, _ async throws in
            #expect(try await Self.subscribe(fleet, ["devices/+/state"]) == [1])
            // Every retained message arrives before a new publish that follows the SUBSCRIBE: count them.
            let marker = try await MQTTBrokerTests.connect(hub, other) { mqtt, _ async throws -> ReasonCode in
                try await mqtt.publishAcknowledged(
                    topic: try TopicName("devices/pf-3/state"), payload: Array(#"{"marker":1}"#.utf8))
            }
            #expect(marker == 0)
            var retained: [String] = []
            while true {
                let next = try await Self.received(fleet)
                if next.payload == Array(#"{"marker":1}"#.utf8) { break }
                #expect(next.retain)
                retained.append(next.topic.rawValue)
            }
            #expect(retained == ["devices/pf-3/state"], "the expired retained message is gone")
        }
        try await hub.stop()
    }

    /// §4.8.2: members of `$share/workers/…` receive the messages in turn, one copy each; a member that leaves
    /// with a message unacknowledged has it handed to another; a shared subscription gets no retained messages.
    @Test(.timeLimit(.minutes(3))) func sharedSubscriptionsShareTheWork() async throws {
        let hub = try await TestHub.start {
            $0.gateway.deviceBurst = 100
            $0.gateway.routeBurst = 100
        }
        let device = try await hub.enroll("pf-4")
        let operatorClient = try hub.operatorClient()
        let topic = try TopicName("devices/pf-4/telemetry")
        let shared = "$share/workers/devices/+/telemetry"
        try await MQTTBrokerTests.connect(hub, device) { mqtt, _ async throws in
            #expect(
                try await mqtt.publishAcknowledged(
                    topic: try TopicName("devices/pf-4/state"), payload: Array("{}".utf8), retain: true) == 0)
        }
        try await MQTTBrokerTests.connect(hub, operatorClient, clientID: "w1") { w1, _ async throws in
            #expect(try await Self.subscribe(w1, [shared, "$share/workers/devices/+/state"], identifier: 1) == [1, 1])
            try await MQTTBrokerTests.connect(hub, operatorClient, version: .v311, clientID: "w2") {
                w2, _ async throws in
                #expect(try await Self.subscribe(w2, [shared]) == [1])
                try await MQTTBrokerTests.connect(hub, device) { mqtt, _ async throws in
                    for n in 1...6 {
                        #expect(
                            try await mqtt.publishAcknowledged(topic: topic, payload: Array(#"{"n":\#(n)}"#.utf8))
                                == 0)
                    }
                    var first: [String] = []
                    var second: [String] = []
                    for _ in 1...3 {
                        let one = try await Self.received(w1)
                        #expect(one.properties.subscriptionIdentifiers == [1])
                        #expect(one.topic == topic, "no retained message on a shared subscription")
                        first.append(String(decoding: one.payload, as: UTF8.self))
                        second.append(String(decoding: try await Self.received(w2).payload, as: UTF8.self))
                    }
                    #expect(Set(first + second).count == 6, "each message went to exactly one member")
                    #expect(Set(first).isDisjoint(with: second))
                    // w1 takes the next message and leaves without acknowledging it: w2 gets it.
                    #expect(try await mqtt.publishAcknowledged(topic: topic, payload: Array(#"{"n":7}"#.utf8)) == 0)
                    #expect(try await mqtt.publishAcknowledged(topic: topic, payload: Array(#"{"n":8}"#.utf8)) == 0)
                    let taken = try await Self.received(w1, acknowledge: false)
                    let other = try await Self.received(w2)
                    #expect(Set([taken.payload, other.payload]) == [Array(#"{"n":7}"#.utf8), Array(#"{"n":8}"#.utf8)])
                    try await w1.send(.disconnect(reasonCode: 0, properties: .init()))
                    let handedOver = try await Self.received(w2)
                    #expect(handedOver.payload == taken.payload)
                }
            }
        }
        try await hub.stop()
    }

    /// §3.1.3.2.2: a will with a delay is published once the delay has passed, not at all when the client comes
    /// back in time, and when the session ends first, then.
    @Test(.timeLimit(.minutes(3))) func willDelayIntervalIsHonoured() async throws {
        let hub = try await TestHub.start()
        let device = try await hub.enroll("wd-1")
        let operatorClient = try hub.operatorClient()
        let state = try TopicName("devices/wd-1/state")
        func withWill(delay: UInt32, expiry: UInt32) -> (inout ConnectPacket) -> Void {
            { connect in
                var properties = Properties()
                properties.willDelayInterval = delay
                connect.will = Will(
                    topic: state, payload: Array(#"{"gone":\#(delay)}"#.utf8), qos: .atLeastOnce, retain: false,
                    properties: properties)
                connect.cleanStart = false
                connect.properties.sessionExpiryInterval = expiry
            }
        }
        try await MQTTBrokerTests.connect(hub, operatorClient, clientID: "watch") { fleet, _ async throws in
            #expect(try await Self.subscribe(fleet, ["devices/+/state"]) == [1])
            // Gone without DISCONNECT, not back: the will after its 2 s delay.
            try await MQTTBrokerTests.connect(hub, device, configure: withWill(delay: 2, expiry: 300)) { _, _ in }
            let left = ContinuousClock.now
            let will = try await Self.received(fleet)
            #expect(will.payload == Array(#"{"gone":2}"#.utf8))
            #expect(ContinuousClock.now - left >= .milliseconds(1800), "published before its delay")
            // Gone, then back within the delay (6 s: room for a loaded run's reconnect): no will (the next message on
            // the topic is the device's own).
            try await MQTTBrokerTests.connect(hub, device, configure: withWill(delay: 6, expiry: 300)) { _, _ in }
            try await Task.sleep(for: .milliseconds(300))
            try await MQTTBrokerTests.connect(hub, device, configure: MQTTBrokerTests.persistent) {
                mqtt, _ async throws in
                try await Task.sleep(for: .milliseconds(6500))
                #expect(try await mqtt.publishAcknowledged(topic: state, payload: Array(#"{"back":1}"#.utf8)) == 0)
                try await mqtt.send(.disconnect(reasonCode: 0, properties: .init()))
            }
            #expect(try await Self.received(fleet).payload == Array(#"{"back":1}"#.utf8))
            // A delay longer than the session: the will when the session ends (1 s).
            try await MQTTBrokerTests.connect(hub, device, configure: withWill(delay: 100, expiry: 1)) { _, _ in }
            let ended = ContinuousClock.now
            #expect(try await Self.received(fleet).payload == Array(#"{"gone":100}"#.utf8))
            #expect(ContinuousClock.now - ended < .seconds(10))
        }
        try await hub.stop()
    }

    /// paho-mqtt 2.x as the MQTT 5 client of the features above and the subscription options, payload rules and QoS
    /// 2 (`scripts/mqtt5-paho-check.py`, one line per check): a real client's encoding of each property and option,
    /// and topic aliases resolved by the client as it must, not by our own test client.
    @Test(.timeLimit(.minutes(3))) func pahoMQTT5Interoperates() async throws {
        let hub = try await TestHub.start {
            $0.mqttSettings.payloads = MQTTPayloadPolicyTests.rules
            $0.mqttSettings.maxKeepAliveSeconds = 1200
            $0.gateway.quarantineInvalid = 100
            $0.gateway.deviceBurst = 100
            $0.gateway.routeBurst = 100
        }
        try await MQTTBrokerTests.runPahoScript("mqtt5-paho-check.py", hub, try await hub.enroll("paho5-1"))
        try await hub.stop()
    }

    /// Outbound topic aliases to a client that allows them (§3.3.2.3.4), Response Information to a device that asks
    /// (§3.2.2.3.15), and an inbound alias that does not outlive its connection.
    @Test func topicAliasesAndResponseInformation() async throws {
        let hub = try await TestHub.start()
        let device = try await hub.enroll("ta-1")
        let operatorClient = try hub.operatorClient()
        let telemetry = try TopicName("devices/ta-1/telemetry")
        let askResponseInformation: (inout ConnectPacket) -> Void = { $0.properties.other = [(0x19, [1])] }
        let aliasesAndResponseInformation: (inout ConnectPacket) -> Void = {
            $0.properties.topicAliasMaximum = 2
            $0.properties.other = [(0x19, [1])]
        }
        try await MQTTBrokerTests.connect(hub, device, configure: aliasesAndResponseInformation) {
            mqtt, _ async throws in
            #expect(
                mqtt.connackProperties.other.first { $0.0 == 0x1A }?.1
                    == Array("devices/ta-1/commands/response".utf8))
            #expect(try await Self.subscribe(mqtt, ["devices/ta-1/commands/#"]) == [1])
            // The inbound alias the device sets here is gone on its next connection (below).
            var alias = Properties()
            alias.topicAlias = 1
            #expect(
                try await mqtt.publishAcknowledged(topic: telemetry, payload: Array("{}".utf8), properties: alias) == 0)
            try await MQTTBrokerTests.connect(hub, operatorClient, clientID: "ops") { fleet, _ async throws in
                for name in ["a", "b", "c", "a", "b"] {
                    #expect(
                        try await fleet.publishAcknowledged(
                            topic: try TopicName("devices/ta-1/commands/\(name)"), payload: Array("{}".utf8)) == 0)
                }
            }
            var seen: [String] = []
            for _ in 1...5 {
                let publish = try await Self.received(mqtt)
                seen.append("\(publish.topic.rawValue)|\(publish.properties.topicAlias.map(String.init) ?? "-")")
            }
            #expect(
                seen == [
                    "devices/ta-1/commands/a|1", "devices/ta-1/commands/b|2", "devices/ta-1/commands/c|-", "|1", "|2",
                ])
        }
        // No Response Information for an operator; an alias from an earlier connection is a protocol error.
        try await MQTTBrokerTests.connect(hub, operatorClient, clientID: "ops", configure: askResponseInformation) {
            mqtt, _ async throws in
            #expect(!mqtt.connackProperties.other.contains { $0.0 == 0x1A })
        }
        let reused = try await MQTTBrokerTests.connect(hub, device) { mqtt, _ async throws -> ReasonCode in
            var alias = Properties()
            alias.topicAlias = 1
            return try await mqtt.publishAcknowledged(
                topic: .unresolvedAlias, payload: Array("{}".utf8), properties: alias)
        }
        #expect(reused == 0x82)
        try await hub.stop()
    }
}
