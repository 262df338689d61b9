import Core
import Foundation
import HubClient
import MQTT
import Store
import Testing

/// A device's QoS 0 PUBLISH handled at once on the event loop that read it (`MQTTConnection.handleNow`): the same
/// checks and the same order as a turn of the connection's task gives it.
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
        let closed = try await MQTTClientConnection.withConnection(
            host: "127.0.0.1", port: hub.mqttPort, tls: tls, clientID: "at-a", version: .v311
        ) { mqtt, _ in
            try await Self.publish(mqtt, "devices/at-b/telemetry", #"{"n":6}"#)
            return try await !Self.settled(mqtt)
        }
        #expect(closed, "the connection is closed")
        #expect(try await hub.server.store.telemetryCount(of: try DeviceID("at-b")) == 0)
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
}
