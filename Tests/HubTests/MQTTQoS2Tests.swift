import Core
import Foundation
import HubClient
import MQTT
import Store
import Testing

@testable import Hub

/// QoS 2 end to end (MQTT 3.1.1 §4.3.3, MQTT 5.0 §4.3.3): PUBREC only once the message is stored, a copy of the
/// PUBLISH stored and delivered once (also across a reconnect), exactly one copy to a QoS 2 subscriber with its
/// PUBREL resent after a reconnect, each flow out of order refused, and mosquitto's clients as real peers.
@Suite(.serialized) struct MQTTQoS2Tests {
    static func publish2(_ id: UInt16, _ topic: TopicName, _ payload: String, duplicate: Bool = false) -> Packet {
        .publish(
            PublishPacket(
                topic: topic, payload: Array(payload.utf8), qos: .exactlyOnce, duplicate: duplicate, packetID: id))
    }

    /// The whole QoS 2 flow from the publisher's side; returns the PUBREC's reason code.
    static func publishExactlyOnce(_ mqtt: MQTTClientConnection, _ topic: TopicName, _ payload: String) async throws
        -> ReasonCode
    {
        let id = mqtt.makePacketID()
        try await mqtt.send(publish2(id, topic, payload))
        guard case .pubrec(id, let reason, _) = try await answer(mqtt) else { throw ClientError("no PUBREC") }
        guard reason < 0x80 else { return reason }
        try await mqtt.send(.pubrel(packetID: id, reasonCode: 0, properties: .init()))
        guard case .pubcomp(id, 0, _) = try await answer(mqtt) else { throw ClientError("no PUBCOMP") }
        return reason
    }

    /// The next packet that is not a PUBLISH (deliveries to this connection are set aside).
    static func answer(_ mqtt: MQTTClientConnection) async throws -> Packet {
        while let packet = try await mqtt.next() {
            if case .publish = packet { continue }
            return packet
        }
        throw ClientError("connection closed")
    }

    @Test(.timeLimit(.minutes(3))) func aDeviceMessageIsStoredAndDeliveredExactlyOnce() async throws {
        let hub = try await TestHub.start()
        let device = try await hub.enroll("q2-1")
        let operatorClient = try hub.operatorClient()
        let telemetry = try TopicName("devices/q2-1/telemetry")
        let stored = { try await hub.server.store.telemetryCount(of: try DeviceID("q2-1")) }
        try await MQTTBrokerTests.connect(hub, operatorClient, clientID: "fleet") { fleet, _ async throws in
            #expect(try await MQTTFeatureTests.subscribe(fleet, ["devices/+/telemetry"], qos: .exactlyOnce) == [2])
            try await MQTTBrokerTests.connect(hub, device, configure: MQTTFeatureTests.persistent) {
                mqtt, _ async throws in
                try await mqtt.send(Self.publish2(5, telemetry, #"{"n":5}"#))
                guard case .pubrec(5, 0, _) = try await Self.answer(mqtt) else { throw ClientError("no PUBREC") }
                #expect(try await stored() == 1, "PUBREC only once stored")
                // The same PUBLISH again (DUP) before PUBREL: PUBREC again, nothing stored or delivered twice.
                try await mqtt.send(Self.publish2(5, telemetry, #"{"n":5}"#, duplicate: true))
                guard case .pubrec(5, 0, _) = try await Self.answer(mqtt) else { throw ClientError("no PUBREC") }
                try await mqtt.send(.pubrel(packetID: 5, reasonCode: 0, properties: .init()))
                guard case .pubcomp(5, 0, _) = try await Self.answer(mqtt) else { throw ClientError("no PUBCOMP") }
                // A PUBREL for an id the hub does not hold: PUBCOMP 0x92 Packet Identifier not found.
                try await mqtt.send(.pubrel(packetID: 5, reasonCode: 0, properties: .init()))
                guard case .pubcomp(5, 0x92, _) = try await Self.answer(mqtt) else { throw ClientError("no PUBCOMP") }
                // Id 5 is free again: a new message with it is a new message.
                try await mqtt.send(Self.publish2(5, telemetry, #"{"n":6}"#))
                guard case .pubrec(5, 0, _) = try await Self.answer(mqtt) else { throw ClientError("no PUBREC") }
                // Left before PUBREL: the id stays with the session.
            }
            #expect(try await stored() == 2)
            try await MQTTBrokerTests.connect(hub, device, configure: MQTTFeatureTests.persistent) {
                mqtt, _ async throws in
                #expect(mqtt.sessionPresent)
                try await mqtt.send(Self.publish2(5, telemetry, #"{"n":6}"#, duplicate: true))
                guard case .pubrec(5, 0, _) = try await Self.answer(mqtt) else { throw ClientError("no PUBREC") }
                try await mqtt.send(.pubrel(packetID: 5, reasonCode: 0, properties: .init()))
                guard case .pubcomp(5, 0, _) = try await Self.answer(mqtt) else { throw ClientError("no PUBCOMP") }
            }
            #expect(try await stored() == 2, "the resend after the reconnect was not stored again")
            // The QoS 2 subscriber gets each message once, at QoS 2, and completes the flow.
            var deliveries: [PublishPacket] = []
            for _ in 1...2 { deliveries.append(try await MQTTFeatureTests.received(fleet, acknowledge: false)) }
            #expect(deliveries.map { String(decoding: $0.payload, as: UTF8.self) } == [#"{"n":5}"#, #"{"n":6}"#])
            for delivery in deliveries {
                #expect(delivery.qos == .exactlyOnce)
                let id = try #require(delivery.packetID)
                try await fleet.send(.pubrec(packetID: id, reasonCode: 0, properties: .init()))
                guard case .pubrel(id, 0, _) = try await Self.answer(fleet) else { throw ClientError("no PUBREL") }
                try await fleet.send(.pubcomp(packetID: id, reasonCode: 0, properties: .init()))
            }
            // Nothing else arrives: the next delivery is a new message.
            #expect(
                try await MQTTBrokerTests.connect(hub, device) { mqtt, _ async throws -> ReasonCode in
                    try await mqtt.publishAcknowledged(topic: telemetry, payload: Array(#"{"n":7}"#.utf8))
                } == 0)
            #expect(try await MQTTFeatureTests.received(fleet).payload == Array(#"{"n":7}"#.utf8))
        }
        try await hub.stop()
    }

    /// §4.4: a subscriber that left after PUBREC gets the PUBREL again (not the message); one that left before it
    /// gets the PUBLISH again with DUP.
    @Test(.timeLimit(.minutes(3))) func aSubscriberResumesItsQoS2Flows() async throws {
        let hub = try await TestHub.start()
        let device = try await hub.enroll("q2-2")
        let operatorClient = try hub.operatorClient()
        let telemetry = try TopicName("devices/q2-2/telemetry")
        var first: UInt16 = 0
        try await MQTTBrokerTests.connect(hub, operatorClient, clientID: "sub", configure: MQTTFeatureTests.persistent)
        {
            fleet, _ async throws in
            #expect(try await MQTTFeatureTests.subscribe(fleet, ["devices/+/telemetry"], qos: .exactlyOnce) == [2])
            let codes = try await MQTTBrokerTests.connect(hub, device) { mqtt, _ async throws -> [ReasonCode] in
                [
                    try await Self.publishExactlyOnce(mqtt, telemetry, #"{"n":1}"#),
                    try await Self.publishExactlyOnce(mqtt, telemetry, #"{"n":2}"#),
                ]
            }
            #expect(codes == [0, 0])
            let one = try await MQTTFeatureTests.received(fleet, acknowledge: false)
            _ = try await MQTTFeatureTests.received(fleet, acknowledge: false)
            first = try #require(one.packetID)
            try await fleet.send(.pubrec(packetID: first, reasonCode: 0, properties: .init()))
            guard case .pubrel(first, 0, _) = try await Self.answer(fleet) else { throw ClientError("no PUBREL") }
            // Gone without PUBCOMP for the first and without PUBREC for the second.
        }
        try await MQTTBrokerTests.connect(hub, operatorClient, clientID: "sub", configure: MQTTFeatureTests.persistent)
        {
            fleet, _ async throws in
            #expect(fleet.sessionPresent)
            guard case .pubrel(first, 0, _) = try await fleet.next() else { throw ClientError("no PUBREL again") }
            let again = try await MQTTFeatureTests.received(fleet, acknowledge: false)
            #expect(again.duplicate && again.payload == Array(#"{"n":2}"#.utf8))
            try await fleet.send(.pubcomp(packetID: first, reasonCode: 0, properties: .init()))
            let id = try #require(again.packetID)
            try await fleet.send(.pubrec(packetID: id, reasonCode: 0, properties: .init()))
            guard case .pubrel(id, 0, _) = try await Self.answer(fleet) else { throw ClientError("no PUBREL") }
            try await fleet.send(.pubcomp(packetID: id, reasonCode: 0, properties: .init()))
            try await fleet.send(.disconnect(reasonCode: 0, properties: .init()))
        }
        try await hub.stop()
    }

    /// The QoS 2 flows out of order: a PUBREC to a QoS 1 delivery, a PUBCOMP before the PUBREL, a PUBACK for a
    /// QoS 2 delivery (each a protocol error, DISCONNECT 0x82), a PUBREC for an unknown id (PUBREL 0x92); QoS 2
    /// publishes without PUBREL count against the Receive Maximum (0x93).
    @Test(.timeLimit(.minutes(3))) func flowsOutOfOrderAreRefused() async throws {
        let hub = try await TestHub.start {
            $0.mqttSettings.receiveMaximum = 2
            $0.gateway.deviceBurst = 100
            $0.gateway.routeBurst = 100
        }
        let device = try await hub.enroll("q2-3")
        let operatorClient = try hub.operatorClient()
        let telemetry = try TopicName("devices/q2-3/telemetry")
        /// Subscribes at `qos`, has the device publish one message, and returns the packet the subscriber's
        /// `reply` to that delivery gets.
        func misreply(qos: QoS, _ reply: @escaping @Sendable (UInt16) -> Packet) async throws -> Packet {
            try await MQTTBrokerTests.connect(hub, operatorClient, clientID: "bad") { fleet, _ async throws -> Packet in
                _ = try await MQTTFeatureTests.subscribe(fleet, ["devices/+/telemetry"], qos: qos)
                _ = try await MQTTBrokerTests.connect(hub, device) { mqtt, _ async throws -> ReasonCode in
                    try await Self.publishExactlyOnce(mqtt, telemetry, "{}")
                }
                let delivery = try await MQTTFeatureTests.received(fleet, acknowledge: false)
                try await fleet.send(reply(try #require(delivery.packetID)))
                return try await Self.answer(fleet)
            }
        }
        let pubrecToQoS1 = try await misreply(qos: .atLeastOnce) {
            .pubrec(packetID: $0, reasonCode: 0, properties: .init())
        }
        #expect(pubrecToQoS1 == .disconnect(reasonCode: 0x82, properties: .init()))
        let pubcompEarly = try await misreply(qos: .exactlyOnce) {
            .pubcomp(packetID: $0, reasonCode: 0, properties: .init())
        }
        #expect(pubcompEarly == .disconnect(reasonCode: 0x82, properties: .init()))
        let pubackToQoS2 = try await misreply(qos: .exactlyOnce) {
            .puback(packetID: $0, reasonCode: 0, properties: .init())
        }
        #expect(pubackToQoS2 == .disconnect(reasonCode: 0x82, properties: .init()))
        let unknown = try await misreply(qos: .exactlyOnce) { _ in
            .pubrec(packetID: 999, reasonCode: 0, properties: .init())
        }
        #expect(unknown == .pubrel(packetID: 999, reasonCode: 0x92, properties: .init()))
        // Two QoS 2 messages awaiting PUBREL fill a Receive Maximum of 2; a third is over it.
        let over = try await MQTTBrokerTests.connect(hub, device) { mqtt, _ async throws -> Packet in
            for id: UInt16 in 1...2 {
                try await mqtt.send(Self.publish2(id, telemetry, #"{"n":\#(id)}"#))
                guard case .pubrec(id, 0, _) = try await Self.answer(mqtt) else { throw ClientError("no PUBREC") }
            }
            try await mqtt.send(Self.publish2(3, telemetry, #"{"n":3}"#))
            return try await Self.answer(mqtt)
        }
        #expect(over == .disconnect(reasonCode: 0x93, properties: .init()))
        try await hub.stop()
    }

    /// A store that fails: no PUBREC but DISCONNECT 0x89 and the end of the connection, no id kept, so the client's
    /// new attempt on its next connection is stored (once).
    @Test(.timeLimit(.minutes(3))) func aMessageThatIsNotStoredEndsTheConnectionAndItsNewAttemptIsStored() async throws
    {
        let store = FaultyStore(InMemoryHubStore())
        let hub = try await TestHub.start(store: store)
        let device = try await hub.enroll("q2-4")
        let telemetry = try TopicName("devices/q2-4/telemetry")
        try await MQTTBrokerTests.connect(hub, device) { mqtt, _ async throws in
            store.failNext.store(1, ordering: .relaxed)
            try await mqtt.send(Self.publish2(9, telemetry, #"{"n":1}"#))
            guard case .disconnect(0x89, _) = try await Self.answer(mqtt) else { throw ClientError("no DISCONNECT") }
            #expect(try await mqtt.next() == nil, "the connection ends")
        }
        try await MQTTBrokerTests.connect(hub, device) { mqtt, _ async throws in
            try await mqtt.send(Self.publish2(9, telemetry, #"{"n":1}"#))
            guard case .pubrec(9, 0, _) = try await Self.answer(mqtt) else { throw ClientError("no PUBREC") }
            try await mqtt.send(.pubrel(packetID: 9, reasonCode: 0, properties: .init()))
            guard case .pubcomp(9, 0, _) = try await Self.answer(mqtt) else { throw ClientError("no PUBCOMP") }
        }
        #expect(try await hub.server.store.telemetryCount(of: try DeviceID("q2-4")) == 1)
        try await hub.stop()
    }

    /// Debian's mosquitto_pub and mosquitto_sub at QoS 2, MQTT 3.1.1 and 5.
    @Test(.timeLimit(.minutes(3))) func mosquittoClientsAtQoS2() async throws {
        guard let pub = which("mosquitto_pub"), let sub = which("mosquitto_sub") else {
            Issue.record("mosquitto-clients are required (scripts/test installs them)")
            return
        }
        let hub = try await TestHub.start()
        let device = try await hub.enroll("q2-5")
        async let received = run(
            sub,
            [
                "--cafile", device.caFile, "-h", "127.0.0.1", "-p", "\(hub.mqttPort)", "--cert",
                hub.directory + "/operators/admin.crt", "--key", hub.directory + "/operators/admin.key", "-i", "q2sub",
                "-V", "mqttv5", "-q", "2", "-t", "devices/q2-5/#", "-C", "2", "-W", "40", "-v",
            ])
        // Published once the subscription is in place (the client starts, connects over mutual TLS, subscribes).
        #expect(await AgentTests.eventually(20) { hub.server.broker.hasSubscriptions })
        for (index, version) in ["mqttv311", "mqttv5"].enumerated() {
            let result = try await run(
                pub,
                [
                    "--cafile", device.caFile, "-h", "127.0.0.1", "-p", "\(hub.mqttPort)", "--cert",
                    device.certificateFile, "--key", device.keyFile, "-i", "q2-5", "-V", version, "-q", "2", "-t",
                    "devices/q2-5/telemetry", "-m", #"{"v":\#(index)}"#,
                ])
            #expect(result.status == 0, "\(version): \(result.stderr)")
        }
        let output = try await received
        #expect(output.status == 0, "\(output.stderr)")
        #expect(output.stdout.contains(#"devices/q2-5/telemetry {"v":0}"#))
        #expect(output.stdout.contains(#"devices/q2-5/telemetry {"v":1}"#))
        #expect(try await hub.server.store.telemetryCount(of: try DeviceID("q2-5")) == 2)
        try await hub.stop()
    }

    /// A session taken over while its connection's QoS 2 write is still in progress (the store is slow): the copy
    /// resent on the new connection waits for that write and is not stored again, also when a third connection
    /// took over the second meanwhile (connections wait only for older ones, so none waits for itself).
    @Test(.timeLimit(.minutes(3))) func aTakeOverDuringAQoS2WriteStoresTheMessageOnce() async throws {
        let store = FaultyStore(InMemoryHubStore())
        let hub = try await TestHub.start(store: store)
        let device = try await hub.enroll("q2-6")
        let telemetry = try TopicName("devices/q2-6/telemetry")
        for (id, takeOvers) in [(UInt16(5), 1), (UInt16(6), 2)] {
            store.delayMilliseconds.store(1500, ordering: .relaxed)
            try await MQTTBrokerTests.connect(hub, device, configure: MQTTFeatureTests.persistent) {
                first, _ async throws in
                try await first.send(Self.publish2(id, telemetry, #"{"n":\#(id)}"#))
                try await Task.sleep(for: .milliseconds(100))
                // Taken over (and over again) before the write ends; the last connection resends the PUBLISH.
                for _ in 1..<takeOvers {
                    try await MQTTBrokerTests.connect(hub, device, configure: MQTTFeatureTests.persistent) { _, _ in }
                }
                store.delayMilliseconds.store(0, ordering: .relaxed)
                try await MQTTBrokerTests.connect(hub, device, configure: MQTTFeatureTests.persistent) {
                    last, _ async throws in
                    try await last.send(Self.publish2(id, telemetry, #"{"n":\#(id)}"#, duplicate: true))
                    guard case .pubrec(id, 0, _) = try await Self.answer(last) else { throw ClientError("no PUBREC") }
                    try await last.send(.pubrel(packetID: id, reasonCode: 0, properties: .init()))
                    guard case .pubcomp(id, 0, _) = try await Self.answer(last) else { throw ClientError("no PUBCOMP") }
                }
            }
        }
        // Past the slow writes of the first connections: had a copy been stored too, it would be counted now.
        try await Task.sleep(for: .seconds(2))
        #expect(try await hub.server.store.telemetryCount(of: try DeviceID("q2-6")) == 2, "each message stored once")
        try await hub.stop()
    }

    /// §4.8.2 [MQTT-4.8.2-4]: a QoS 2 message given to a shared-subscription member is completed with that member
    /// only: it is not handed to another when the member leaves, and it is resent to it when it comes back.
    @Test(.timeLimit(.minutes(3))) func aSharedQoS2DeliveryStaysWithItsMember() async throws {
        let hub = try await TestHub.start()
        let device = try await hub.enroll("q2-7")
        let operatorClient = try hub.operatorClient()
        let telemetry = try TopicName("devices/q2-7/telemetry")
        let shared = "$share/g/devices/+/telemetry"
        let publish: @Sendable (String) async throws -> Void = { payload in
            let code = try await MQTTBrokerTests.connect(hub, device) { mqtt, _ async throws -> ReasonCode in
                try await Self.publishExactlyOnce(mqtt, telemetry, payload)
            }
            #expect(code == 0)
        }
        var kept: PublishPacket?
        try await MQTTBrokerTests.connect(hub, operatorClient, clientID: "w2") { w2, _ async throws in
            #expect(try await MQTTFeatureTests.subscribe(w2, [shared], qos: .exactlyOnce) == [2])
            try await MQTTBrokerTests.connect(
                hub, operatorClient, clientID: "w1", configure: MQTTFeatureTests.persistent
            ) { w1, _ async throws in
                #expect(try await MQTTFeatureTests.subscribe(w1, [shared], qos: .exactlyOnce) == [2])
                try await publish(#"{"n":1}"#)
                try await publish(#"{"n":2}"#)
                kept = try await MQTTFeatureTests.received(w1, acknowledge: false)
                let other = try await MQTTFeatureTests.received(w2, acknowledge: false)
                try await w2.send(.pubrec(packetID: try #require(other.packetID), reasonCode: 0, properties: .init()))
                // w1 leaves without PUBREC.
            }
            try await publish(#"{"n":3}"#)
            let next = try await MQTTFeatureTests.received(w2, acknowledge: false)
            #expect(next.payload == Array(#"{"n":3}"#.utf8), "w1's QoS 2 message was not handed to w2")
        }
        try await MQTTBrokerTests.connect(hub, operatorClient, clientID: "w1", configure: MQTTFeatureTests.persistent) {
            w1, _ async throws in
            let again = try await MQTTFeatureTests.received(w1, acknowledge: false)
            #expect(again.duplicate && again.payload == kept?.payload)
        }
        try await hub.stop()
    }
}
