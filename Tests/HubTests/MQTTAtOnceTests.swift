import Core
import Foundation
import Gateway
import HubClient
import MQTT
import NIOCore
import PKI
import Store
import Testing
import X509

@testable import Hub

/// A device's QoS 0 and QoS 1 PUBLISH handled at once on the event loop that read it (`MQTTConnection.handleNow`):
/// the same checks, answers and order as a turn of the connection's task gives it.
@Suite(.serialized) struct MQTTAtOnceTests {
    static func publish(
        _ mqtt: MQTTClientConnection, _ topic: String, _ body: String, qos: QoS = .atMostOnce, id: UInt16? = nil,
        properties: Properties = Properties()
    ) async throws {
        try await mqtt.send(
            .publish(
                PublishPacket(
                    topic: try TopicName(topic), payload: Array(body.utf8), qos: qos, packetID: id,
                    properties: properties)))
    }

    /// A PINGREQ answered: every packet sent before it has been handled (a turn handles its queue in order, and a
    /// packet handled at once is handled before the read after it).
    static func settled(_ mqtt: MQTTClientConnection) async throws -> Bool {
        try await mqtt.send(.pingreq)
        while let packet = try await mqtt.next() {
            if case .pingresp = packet { return true }
        }
        return false
    }

    /// Waits until `device` has `count` stored messages (or 10 s), then returns what it has.
    static func stored(_ hub: TestHub, _ device: String, count: Int) async throws -> [TelemetryRecord] {
        let id = try DeviceID(device)
        let deadline = ContinuousClock.now + .seconds(10)
        var records = try await hub.server.store.telemetry(of: id, limit: 1000)
        while records.count < count, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
            records = try await hub.server.store.telemetry(of: id, limit: 1000)
        }
        return records
    }

    @Test func aQoS0PublishOutsideTheDevicesTopicsIsRefused() async throws {
        let hub = try await TestHub.start()
        let device = try await hub.enroll("at-a")
        _ = try await hub.enroll("at-b")
        let tls = try device.credentials.tlsConfiguration()
        var outsideReply = Properties()
        outsideReply.other = [(PropertyIdentifier.responseTopic, Array("devices/at-b/replies".utf8))]
        // MQTT 5: each refused QoS 0 message is dropped (§3.3.4: no acknowledgement to carry a code), and the
        // connection goes on: the next message to the device's own topic is stored.
        let settled = try await MQTTClientConnection.withConnection(
            host: "127.0.0.1", port: hub.mqttPort, tls: tls, clientID: "at-a", version: .v5
        ) { mqtt, _ in
            try await Self.publish(mqtt, "devices/at-a/telemetry", #"{"n":1}"#)
            try await Self.publish(mqtt, "devices/at-b/telemetry", #"{"n":2}"#)
            try await Self.publish(mqtt, "elsewhere/at-a", #"{"n":3}"#)
            try await Self.publish(mqtt, "devices/at-a/telemetry", #"{"n":4}"#, properties: outsideReply)
            try await Self.publish(mqtt, "devices/at-a/telemetry", #"{"n":5}"#)
            return try await Self.settled(mqtt)
        }
        #expect(settled, "the connection stays open")
        let stored = try await Self.stored(hub, "at-a", count: 2)
        try await Task.sleep(for: .milliseconds(200))
        #expect(
            Set(try await Self.stored(hub, "at-a", count: 2).map { String(decoding: $0.body, as: UTF8.self) })
                == [#"{"n":1}"#, #"{"n":5}"#], "only the messages to its own topic (\(stored.count))")
        #expect(try await hub.server.store.telemetryCount(of: try DeviceID("at-b")) == 0)
        #expect(try await hub.securityEvents().contains { $0.kind == "mqtt-publish-refused" })
        // MQTT 3.1.1 has no way to refuse a message: the connection closes (§4.8), and nothing is stored.
        let closed =
            await
            (try? MQTTClientConnection.withConnection(
                host: "127.0.0.1", port: hub.mqttPort, tls: tls, clientID: "at-a", version: .v311
            ) { mqtt, _ in
                try await Self.publish(mqtt, "devices/at-b/telemetry", #"{"n":6}"#)
                return await Self.closedByHub(mqtt)
            }) ?? true
        #expect(closed, "the connection is closed")
        #expect(try await hub.server.store.telemetryCount(of: try DeviceID("at-b")) == 0)
        try await hub.stop()
    }

    /// Whether the hub closed the connection: a PINGREQ gets no answer (or the send or the read fails).
    static func closedByHub(_ mqtt: MQTTClientConnection) async -> Bool {
        (try? await settled(mqtt)) != true
    }

    /// The gateway's refusals of messages handled at once: each recorded once, with the correlation id the message
    /// was given, by the turn it resumes; MQTT 5 drops a refused QoS 0 message and goes on (a QoS 1 one gets its
    /// code), 3.1.1 closes. No byte of a refused message stays counted against the QoS 0 writes outstanding.
    @Test func theGatewaysRefusalsOfAMessageHandledAtOnceAreRecordedOnceAndAnswered() async throws {
        let hub = try await TestHub.start {
            $0.gateway.quarantineInvalid = 100
            $0.gateway.quarantineReplay = 100
        }
        let device = try await hub.enroll("at-g")
        let tls = try device.credentials.tlsConfiguration()
        let topic = "devices/at-g/telemetry"
        var counter = Properties()
        counter.userProperties = [(GatewayPipeline.counterProperty, "5")]
        let settled = try await MQTTClientConnection.withConnection(
            host: "127.0.0.1", port: hub.mqttPort, tls: tls, clientID: "at-g", version: .v5
        ) { mqtt, _ in
            #expect(try await Self.settled(mqtt), "the session is parked: what follows is handled at once")
            for (body, properties) in [
                (#"{"n":1}"#, Properties()), ("{", Properties()), (#"{"n":2}"#, counter), (#"{"n":3}"#, counter),
                (#"{"n":4}"#, Properties()),
            ] {
                try await Self.publish(mqtt, topic, body, properties: properties)
                // Each in a read of its own (a refusal resumes a turn; the next read finds the session parked).
                #expect(try await Self.settled(mqtt))
            }
            // QoS 1: the refusal is said in the PUBACK (0x99), with the correlation id.
            let refused = try await mqtt.publishAcknowledgedWithProperties(
                topic: try TopicName(topic), payload: Array("[2]".utf8))
            #expect(refused.reason == 0x99)
            #expect(refused.properties.userProperties.first?.0 == "correlation-id")
            return try await Self.settled(mqtt)
        }
        #expect(settled, "MQTT 5 drops the refused QoS 0 messages and goes on")
        let stored = try await Self.stored(hub, "at-g", count: 3)
        #expect(
            stored.sorted { $0.id < $1.id }.map { String(decoding: $0.body, as: UTF8.self) }
                == [#"{"n":1}"#, #"{"n":2}"#, #"{"n":4}"#])
        var events = try await hub.securityEvents().filter { $0.identity?.contains("at-g") == true }
        #expect(events.filter { $0.kind == "invalid-message" }.count == 2, "\(events.map(\.kind))")
        #expect(events.filter { $0.kind == "replay" }.count == 1, "\(events.map(\.kind))")
        #expect(events.allSatisfy { $0.correlationID?.isEmpty == false })
        // MQTT 3.1.1: the same refusal closes the connection.
        let closed =
            await
            (try? MQTTClientConnection.withConnection(
                host: "127.0.0.1", port: hub.mqttPort, tls: tls, clientID: "at-g", version: .v311
            ) { mqtt, _ in
                #expect(try await Self.settled(mqtt))
                try await Self.publish(mqtt, topic, "[1]")
                return await Self.closedByHub(mqtt)
            }) ?? true
        #expect(closed, "the connection is closed")
        events = try await hub.securityEvents().filter { $0.identity?.contains("at-g") == true }
        #expect(events.filter { $0.kind == "invalid-message" }.count == 3)
        #expect(try await hub.server.store.telemetryCount(of: try DeviceID("at-g")) == 3)
        let deadline = ContinuousClock.now + .seconds(10)
        while hub.server.mqttPendingQoS0.outstanding != 0, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(hub.server.mqttPendingQoS0.outstanding == 0)
        try await hub.stop()
    }

    /// A run of QoS 0 messages and one of QoS 1 messages, each in a read of its own, start no turn of the
    /// connection's task: they are handled at once (without that, each read resumes a turn), and each QoS 1 message
    /// is acknowledged once stored.
    @Test func runsOfQoS0AndQoS1MessagesNeedNoTurn() async throws {
        let hub = try await TestHub.start {
            $0.gateway.deviceBurst = 100
            $0.gateway.routeBurst = 100
        }
        let device = try await hub.enroll("at-r")
        let count = 12
        let topic = try TopicName("devices/at-r/telemetry")
        let (turns, acknowledgements) = try await MQTTClientConnection.withConnection(
            host: "127.0.0.1", port: hub.mqttPort, tls: try device.credentials.tlsConfiguration(), clientID: "at-r",
            version: .v5
        ) { mqtt, _ in
            #expect(try await Self.settled(mqtt))
            let before = hub.server.mqttSessions.turnsStarted
            for n in 1...count {
                try await Self.publish(mqtt, topic.rawValue, #"{"n":\#(n)}"#)
                try await Task.sleep(for: .milliseconds(5))
            }
            var acknowledgements: [ReasonCode] = []
            for n in 1...count {
                acknowledgements.append(
                    try await mqtt.publishAcknowledged(topic: topic, payload: Array(#"{"q":\#(n)}"#.utf8)))
            }
            let turns = hub.server.mqttSessions.turnsStarted - before
            #expect(try await Self.settled(mqtt))
            return (turns, acknowledgements)
        }
        #expect(turns == 0, "\(turns) turns for \(2 * count) messages")
        #expect(acknowledgements == Array(repeating: 0, count: count))
        #expect(try await Self.stored(hub, "at-r", count: 2 * count).count == 2 * count)
        try await hub.stop()
    }

    /// A PINGREQ is answered without a turn of the connection's task (a held fleet pings once per keep-alive), also
    /// in the read of a message handled at once.
    @Test func aPingIsAnsweredWithoutATurn() async throws {
        let hub = try await TestHub.start()
        let device = try await hub.enroll("at-p")
        let topic = try TopicName("devices/at-p/telemetry")
        let turns = try await MQTTClientConnection.withConnection(
            host: "127.0.0.1", port: hub.mqttPort, tls: try device.credentials.tlsConfiguration(), clientID: "at-p",
            version: .v5
        ) { mqtt, _ in
            #expect(try await Self.settled(mqtt))
            let before = hub.server.mqttSessions.turnsStarted
            for _ in 0..<5 {
                #expect(try await Self.settled(mqtt))
                try await Task.sleep(for: .milliseconds(5))
            }
            // A QoS 1 message, then a ping in the same read: both answered (the PUBACK once the message is stored, so
            // it may come after the PINGRESP: MQTT orders acknowledgements among themselves, not with PINGRESP).
            var both = ByteBuffer()
            Packet.publish(
                PublishPacket(
                    topic: topic, payload: Array(#"{"n":1}"#.utf8), qos: .atLeastOnce, packetID: 7,
                    properties: .init())
            ).encode(into: &both, version: .v5)
            Packet.pingreq.encode(into: &both, version: .v5)
            try await mqtt.write(both)
            var answers: [String] = []
            while answers.count < 2, let packet = try await mqtt.next() {
                switch packet {
                case .puback(let id, let code, _): answers.append("puback \(id) \(code)")
                case .pingresp: answers.append("pingresp")
                default: break
                }
            }
            #expect(answers.sorted() == ["pingresp", "puback 7 0x00"])
            return hub.server.mqttSessions.turnsStarted - before
        }
        #expect(turns == 0, "\(turns) turns for 5 pings and a message")
        try await hub.stop()
    }

    /// A PINGREQ, or a QoS 1 PUBLISH, from a certificate that `contains` reports revoked is not answered at once:
    /// the turn closes the connection with Not Authorized (0x87) and nothing is stored. The serial is marked as a
    /// pending pairing certificate, which `contains` reports and which fires no watch, so the revocation watch does
    /// not close the connection first and only the check in `handlesNow` stands in the way.
    @Test(arguments: ["ping", "publish"]) func aRevokedCertificateGetsNoAnswerAtOnce(_ packet: String) async throws {
        let hub = try await TestHub.start()
        let name = "at-r\(packet.count)"
        let device = try await hub.enroll(name)
        let pem = String(decoding: device.credentials.certificatePEM, as: UTF8.self)
        let certificate = try Certificate(pemEncoded: pem)
        let answer = try await MQTTClientConnection.withConnection(
            host: "127.0.0.1", port: hub.mqttPort, tls: try device.credentials.tlsConfiguration(), clientID: name,
            version: .v5
        ) { mqtt, _ in
            #expect(try await Self.settled(mqtt))
            hub.server.revocationList.insertPending(certificate.serialHex)
            if packet == "ping" {
                try await mqtt.send(.pingreq)
            } else {
                try await Self.publish(mqtt, "devices/\(name)/telemetry", #"{"n":1}"#, qos: .atLeastOnce, id: 1)
            }
            // The first answer only: answered at once, the connection would stay open.
            switch try await mqtt.next() {
            case .pingresp: return "pingresp"
            case .puback: return "puback"
            case .disconnect(let code, _): return "disconnect \(code)"
            case nil: return "closed"
            default: return "other"
            }
        }
        #expect(answer == "disconnect 0x87")
        try await Task.sleep(for: .milliseconds(100))
        #expect(try await hub.server.store.telemetry(of: try DeviceID(name), limit: 10).isEmpty)
        try await hub.stop()
    }

    /// A schema registered while a device is connected applies to its next message on the same topic: the schema
    /// look-up its connection keeps (`GatewayPipeline.SchemaHint`) is not used once a schema has been registered.
    @Test func aSchemaRegisteredMeanwhileAppliesToTheNextMessage() async throws {
        let hub = try await TestHub.start()
        let device = try await hub.enroll("at-s")
        let codes = try await MQTTClientConnection.withConnection(
            host: "127.0.0.1", port: hub.mqttPort, tls: try device.credentials.tlsConfiguration(), clientID: "at-s",
            version: .v5
        ) { mqtt, _ in
            func send(_ id: UInt16, _ body: String) async throws -> String {
                try await Self.publish(mqtt, "devices/at-s/telemetry", body, qos: .atLeastOnce, id: id)
                while let packet = try await mqtt.next() {
                    if case .puback(let acknowledged, let code, _) = packet, acknowledged == id { return "\(code)" }
                }
                return "closed"
            }
            var codes = [try await send(1, #"{"t":"warm"}"#)]
            let schema = Array(#"{"type":"object","required":["t"],"properties":{"t":{"type":"number"}}}"#.utf8)
            #expect(try await hub.operatorRequest("PUT", "/v1/schemas/telemetry", raw: schema).status == 201)
            codes.append(try await send(2, #"{"t":"warm"}"#))
            codes.append(try await send(3, #"{"t":21.5}"#))
            return codes
        }
        #expect(codes == ["0x00", "0x99", "0x00"])
        try await hub.stop()
    }

    /// One device's messages are stored in the order it sent them, whether a message was handled at once (QoS 0)
    /// or by a turn (QoS 1, waiting for its store write, and QoS 0 sent while that turn ran).
    @Test func qoS0AndQoS1MessagesAreStoredInTheOrderSent() async throws {
        let hub = try await TestHub.start {
            $0.gateway.deviceRate = 10_000
            $0.gateway.deviceBurst = 10_000
            $0.gateway.routeRate = 10_000
            $0.gateway.routeBurst = 10_000
        }
        let device = try await hub.enroll("at-o")
        let count = 300
        let settled = try await MQTTClientConnection.withConnection(
            host: "127.0.0.1", port: hub.mqttPort, tls: try device.credentials.tlsConfiguration(), clientID: "at-o",
            version: .v5
        ) { mqtt, _ in
            for n in 1...count {
                // Runs of QoS 0, one QoS 1 after every seventh.
                let qos: QoS = n % 7 == 0 ? .atLeastOnce : .atMostOnce
                try await Self.publish(
                    mqtt, "devices/at-o/telemetry", #"{"n":\#(n)}"#, qos: qos, id: qos == .atMostOnce ? nil : UInt16(n))
                if n % 50 == 0 { try await Task.sleep(for: .milliseconds(5)) }
            }
            return try await Self.settled(mqtt)
        }
        #expect(settled)
        let records = try await Self.stored(hub, "at-o", count: count)
        let order = records.sorted { $0.id < $1.id }.map { String(decoding: $0.body, as: UTF8.self) }
        #expect(order == (1...count).map { #"{"n":\#($0)}"# })
        try await hub.stop()
    }

    /// What `handleNow` may leave for a turn costs every held connection's state one reference, not the refusal and
    /// the packet inline.
    @Test func whatIsLeftForATurnIsOneReference() {
        #expect(MemoryLayout<MQTTConnection.LeftForTurn?>.size == 8)
    }

    /// A QoS 1 message handled at once is acknowledged only once its store write has committed (a store that takes
    /// 300 ms), and still without a turn.
    @Test func aQoS1MessageHandledAtOnceIsAcknowledgedOnlyOnceStored() async throws {
        let store = FaultyStore(InMemoryHubStore(), queued: true)
        let hub = try await TestHub.start(store: store)
        let device = try await hub.enroll("at-w")
        let (reason, waited, turns) = try await MQTTClientConnection.withConnection(
            host: "127.0.0.1", port: hub.mqttPort, tls: try device.credentials.tlsConfiguration(), clientID: "at-w",
            version: .v5
        ) { mqtt, _ in
            #expect(try await Self.settled(mqtt))
            store.delayMilliseconds.store(300, ordering: .relaxed)
            let before = hub.server.mqttSessions.turnsStarted
            let sent = ContinuousClock.now
            let reason = try await mqtt.publishAcknowledged(
                topic: try TopicName("devices/at-w/telemetry"), payload: Array(#"{"n":1}"#.utf8))
            return (reason, ContinuousClock.now - sent, hub.server.mqttSessions.turnsStarted - before)
        }
        #expect(reason == 0)
        #expect(waited >= .milliseconds(290), "the PUBACK came \(waited) after the PUBLISH")
        #expect(turns == 0)
        #expect(try await hub.server.store.telemetryCount(of: try DeviceID("at-w")) == 1)
        try await hub.stop()
    }

    /// QoS 1 messages handed from the event loop to a turn (a topic outside the device's patterns: 0x87; a body
    /// over 8 KiB: stored) are counted against the Receive Maximum once: more of them one after another than the
    /// Receive Maximum never bring DISCONNECT 0x93.
    @Test func qoS1MessagesHandedToATurnAreCountedOnce() async throws {
        let hub = try await TestHub.start {
            $0.mqttSettings.receiveMaximum = 4
            $0.gateway.deviceBurst = 100
            $0.gateway.routeBurst = 100
        }
        let device = try await hub.enroll("at-c")
        let large = #"{"pad":""# + String(repeating: "x", count: 9000) + #""}"#
        let (outside, big) = try await MQTTClientConnection.withConnection(
            host: "127.0.0.1", port: hub.mqttPort, tls: try device.credentials.tlsConfiguration(), clientID: "at-c",
            version: .v5
        ) { mqtt, _ in
            #expect(try await Self.settled(mqtt))
            var outside: [ReasonCode] = []
            var big: [ReasonCode] = []
            for _ in 1...6 {
                outside.append(
                    try await mqtt.publishAcknowledged(
                        topic: try TopicName("devices/at-other/telemetry"), payload: Array("{}".utf8)))
            }
            for _ in 1...6 {
                big.append(
                    try await mqtt.publishAcknowledged(
                        topic: try TopicName("devices/at-c/telemetry"), payload: Array(large.utf8)))
            }
            return (outside, big)
        }
        #expect(outside == Array(repeating: 0x87, count: 6))
        #expect(big == Array(repeating: 0, count: 6))
        #expect(try await hub.server.store.telemetryCount(of: try DeviceID("at-c")) == 6)
        try await hub.stop()
    }
}
