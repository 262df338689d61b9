import Core
import Foundation
import HubClient
import MQTT
import Store
import Synchronization
import Testing

/// The MQTT listener with real clients (Debian's mosquitto-clients), MQTT 3.1.1 and 5.
@Suite(.serialized) struct MQTTListenerTests {
    @Test func mosquittoClientsPublishAndSubscribeOnlyUnderTheirOwnTopics() async throws {
        guard let pub = which("mosquitto_pub"), let sub = which("mosquitto_sub") else {
            Issue.record("mosquitto-clients are required (scripts/test installs them)")
            return
        }
        let hub = try await TestHub.start()
        let a = try await hub.enroll("mq-a")
        _ = try await hub.enroll("mq-b")
        let common = [
            "--cafile", a.caFile, "-h", "127.0.0.1", "-p", "\(hub.mqttPort)", "--cert", a.certificateFile, "--key",
            a.keyFile,
        ]

        // A fleet subscriber (an operator certificate) receives the device's QoS 1 publish. (The device itself
        // has one session: a second connection with its client id would take the first over.)
        async let received = run(
            sub,
            [
                "--cafile", a.caFile, "-h", "127.0.0.1", "-p", "\(hub.mqttPort)", "--cert",
                hub.directory + "/operators/admin.crt", "--key", hub.directory + "/operators/admin.key", "-i", "fleet",
                "-V", "mqttv5", "-t", "devices/mq-a/#", "-C", "1", "-W", "10", "-v",
            ])
        try await Task.sleep(for: .milliseconds(700))
        for version in ["mqttv311", "mqttv5"] {
            let result = try await run(
                pub,
                common + ["-i", "mq-a", "-V", version, "-q", "1", "-t", "devices/mq-a/telemetry", "-m", #"{"t":1}"#])
            #expect(result.status == 0, "\(version): \(result.stderr)")
        }
        #expect(try await received.stdout.contains(#"devices/mq-a/telemetry {"t":1}"#))
        #expect(
            try await hub.server.store.telemetryCount(of: try DeviceID("mq-a")) == 2, "QoS 1 is stored before PUBACK")

        // Another device's topics: publish refused (MQTT 5 PUBACK 0x87; 3.1.1 disconnect), subscribe refused (SUBACK failure).
        let other5 = try await run(
            pub, common + ["-i", "mq-a", "-V", "mqttv5", "-q", "1", "-t", "devices/mq-b/telemetry", "-m", "{}"])
        #expect(other5.stderr.contains("Not authorized"))
        let otherSub = try await run(
            sub, common + ["-i", "mq-a", "-V", "mqttv311", "-t", "devices/mq-b/#", "-C", "1", "-W", "3"])
        #expect(otherSub.stderr.contains("denied"))
        // A client id naming another device is refused at CONNECT.
        let stolenID = try await run(
            pub, common + ["-i", "mq-b", "-V", "mqttv5", "-q", "1", "-t", "devices/mq-a/t", "-m", "{}"])
        #expect(stolenID.status != 0)
        #expect(stolenID.stderr.contains("Client Identifier not valid"))
        #expect(try await hub.server.store.telemetryCount(of: try DeviceID("mq-b")) == 0)

        let kinds = Set(try await hub.securityEvents().map(\.kind))
        #expect(kinds.isSuperset(of: ["mqtt-publish-refused", "mqtt-subscribe-refused", "mqtt-client-id-refused"]))

        // No client certificate and a foreign CA are refused at the handshake.
        let anonymous = try await run(
            pub,
            [
                "--cafile", a.caFile, "-h", "127.0.0.1", "-p", "\(hub.mqttPort)", "-i", "x", "-t", "devices/x/t", "-m",
                "{}",
            ])
        #expect(anonymous.status != 0)
        try await Task.sleep(for: .milliseconds(200))
        #expect(
            try await hub.securityEvents().contains {
                $0.kind == "tls-client-refused" && $0.detail.contains("no client certificate")
            })
        let foreign = try TestDevice.foreign(id: "mq-a", directory: hub.directory)
        let foreignResult = try await run(
            pub,
            [
                "--cafile", a.caFile, "-h", "127.0.0.1", "-p", "\(hub.mqttPort)", "--cert", foreign.certificateFile,
                "--key", foreign.keyFile, "-i", "mq-a", "-t", "devices/mq-a/t", "-m", "{}",
            ])
        #expect(foreignResult.status != 0)
        #expect(try await hub.server.store.telemetryCount(of: try DeviceID("mq-a")) == 2)
        try await hub.stop()
    }

    /// MQTT issue acceptance: SIGKILL of the hub during a QoS 1 stream; every PUBACKed message is in the store.
    @Test func sigkillDuringAQoS1StreamLosesNoAcknowledgedMessage() async throws {
        let directory = try temporaryDirectory("mqtt-kill")
        // The stream is measured, not rate limited; each connection is its own device (one client id, one session).
        let hub = try HubProcess(
            binary: try HubProcessTests.binary, directory: directory,
            environment: [
                "BULWARK_GATEWAY_DEVICE_RATE": "100000", "BULWARK_GATEWAY_DEVICE_BURST": "100000",
                "BULWARK_GATEWAY_ROUTE_RATE": "100000", "BULWARK_GATEWAY_ROUTE_BURST": "100000",
            ])
        let ports = try await hub.waitForPorts()
        let operatorCredentials = try ClientCredentials(
            certificateFile: directory + "/operators/admin.crt", keyFile: directory + "/operators/admin.key",
            caFile: directory + "/ca.crt")
        var devices: [ClientCredentials] = []
        for index in 0..<8 {
            devices.append(
                try await HubProcessTests().enroll(
                    "mq-kill-\(index)", operatorPort: ports.operator, operatorCredentials, directory))
        }
        let enrolled = devices
        let progress = Progress()
        await withTaskGroup(of: Void.self) { group in
            for connectionIndex in 0..<8 {
                group.addTask {
                    _ = try? await MQTTClientConnection.withConnection(
                        host: "127.0.0.1", port: ports.mqtt, tls: try enrolled[connectionIndex].tlsConfiguration(),
                        clientID: "mq-kill-\(connectionIndex)"
                    ) { connection, reason in
                        let topic = try TopicName("devices/mq-kill-\(connectionIndex)/telemetry")
                        guard reason == 0 else { return }
                        var sequence = 0
                        while !progress.stop.load(ordering: .relaxed) && sequence < 5_000 {
                            sequence += 1
                            let payload = Array(#"{"c":\#(connectionIndex),"n":\#(sequence)}"#.utf8)
                            guard try await connection.publishAcknowledged(topic: topic, payload: payload) == 0 else {
                                return
                            }
                            progress.acknowledged.withLock { $0.append(connectionIndex * 100_000 + sequence) }
                        }
                    }
                }
            }
            group.addTask {
                let start = ContinuousClock.now
                while progress.acknowledged.withLock({ $0.count }) < 300 && ContinuousClock.now - start < .seconds(20) {
                    try? await Task.sleep(for: .milliseconds(20))
                }
                hub.kill()
                progress.stop.store(true, ordering: .relaxed)
            }
        }
        _ = await hub.exitStatus()
        let acked = progress.acknowledged.withLock { $0 }
        #expect(acked.count >= 300)
        let store = try SQLiteHubStore(path: directory + "/bulwark.sqlite")
        var stored = Set<Int>()
        var records: [TelemetryRecord] = []
        for index in 0..<8 {
            records += try await store.telemetry(of: try DeviceID("mq-kill-\(index)"), limit: 1_000_000)
        }
        for record in records {
            if let object = try? JSONSerialization.jsonObject(with: Data(record.body)) as? [String: Int],
                let c = object["c"], let n = object["n"]
            {
                stored.insert(c * 100_000 + n)
            }
        }
        let lost = Set(acked).subtracting(stored)
        #expect(lost.isEmpty, "\(lost.count) PUBACKed messages lost")
        try await store.close()
    }

    /// One node (SQLite: no log to replay from): commands the fleet published at QoS 1 over MQTT and one accepted by
    /// `POST /v1/devices/:id/commands/:name`, all queued for a device that is away, are in its saved session before
    /// they are acknowledged, so SIGKILL right after the last acknowledgement loses none of them (a session's
    /// changes are otherwise saved every 250 ms).
    @Test func sigkillRightAfterCommandsAreAcknowledgedLosesNone() async throws {
        let directory = try temporaryDirectory("command-kill")
        var hub = try HubProcess(binary: try HubProcessTests.binary, directory: directory)
        var ports = try await hub.waitForPorts()
        let operatorCredentials = try ClientCredentials(
            certificateFile: directory + "/operators/admin.crt", keyFile: directory + "/operators/admin.key",
            caFile: directory + "/ca.crt")
        // The device's key outside the hub's directory (the hub refuses to start beside a key others can read).
        let device = try await HubProcessTests().enroll(
            "cmd-kill", operatorPort: ports.operator, operatorCredentials, try temporaryDirectory("command-kill-key"))
        func persistent(_ cleanStart: Bool) -> (inout ConnectPacket) -> Void {
            {
                $0.cleanStart = cleanStart
                $0.properties.sessionExpiryInterval = 600
            }
        }
        // The device subscribes to its commands and goes away; its session stays.
        try await MQTTClientConnection.withConnection(
            host: "127.0.0.1", port: ports.mqtt, tls: try device.tlsConfiguration(), clientID: "cmd-kill",
            version: .v5, configure: persistent(true)
        ) { mqtt, reason in
            #expect(reason == 0)
            try await MQTTPersistenceTests.subscribe(mqtt, try TopicFilter("devices/cmd-kill/commands/#"))
            try await mqtt.send(.disconnect(reasonCode: 0, properties: .init()))
        }
        let codes = try await MQTTClientConnection.withConnection(
            host: "127.0.0.1", port: ports.mqtt, tls: try operatorCredentials.tlsConfiguration(), clientID: "ops"
        ) { mqtt, _ -> [ReasonCode] in
            var codes: [ReasonCode] = []
            for n in 1...10 {
                codes.append(
                    try await mqtt.publishAcknowledged(
                        topic: try TopicName("devices/cmd-kill/commands/c\(n)"), payload: Array(#"{"n":\#(n)}"#.utf8)))
            }
            return codes
        }
        #expect(codes == Array(repeating: 0, count: 10))
        let accepted = try await HTTPSClient.request(
            host: "127.0.0.1", port: ports.operator, tls: try operatorCredentials.tlsConfiguration(), method: "POST",
            path: "/v1/devices/cmd-kill/commands/reboot", headers: [("Content-Type", "application/json")],
            body: Array(#"{"n":11}"#.utf8))
        #expect(accepted.status == 202, "\(accepted.status)")
        hub.kill()
        _ = await hub.exitStatus()

        hub = try HubProcess(binary: try HubProcessTests.binary, directory: directory)
        defer { _ = hub.stop(within: 10) }
        ports = try await hub.waitForPorts()
        // What arrives until the last command, or until the hub ends a connection that waits for more (keep-alive).
        let received = Mutex<[String]>([])
        _ = try? await MQTTClientConnection.withConnection(
            host: "127.0.0.1", port: ports.mqtt, tls: try device.tlsConfiguration(), clientID: "cmd-kill",
            version: .v5, keepAlive: 5, configure: persistent(false)
        ) { mqtt, reason in
            #expect(reason == 0 && mqtt.sessionPresent)
            while received.withLock({ $0.last != #"{"n":11}"# && $0.count < 100 }),
                let payload = try await MQTTPersistenceTests.receive(1, mqtt).first
            {
                received.withLock { $0.append(payload) }
            }
        }
        #expect(
            MQTTPersistenceTests.firstOccurrences(received.withLock { $0 }) == (1...11).map { #"{"n":\#($0)}"# },
            "commands acknowledged before the kill and not delivered after it")
    }
}
