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

    /// One node (SQLite: no log to replay from): what the fleet was told is accepted survives SIGKILL right after.
    /// Commands queued for a device that is away: five at QoS 1 and five at QoS 2 over MQTT (the hub killed right
    /// after the last one's PUBREC, before its PUBREL), then, in a second run, one accepted by
    /// `POST /v1/devices/:id/commands/:name` for another device (killed right after the 202). After the restarts
    /// the operator's PUBREL still finds its QoS 2 id (PUBCOMP 0, not 0x92), and each device receives its commands
    /// once each, in order. The sessions are otherwise saved every 250 ms.
    @Test func sigkillRightAfterCommandsAreAcknowledgedLosesNone() async throws {
        let directory = try temporaryDirectory("command-kill")
        let keys = try temporaryDirectory("command-kill-keys")
        var hub = try HubProcess(binary: try HubProcessTests.binary, directory: directory)
        var ports = try await hub.waitForPorts()
        let operatorCredentials = try ClientCredentials(
            certificateFile: directory + "/operators/admin.crt", keyFile: directory + "/operators/admin.key",
            caFile: directory + "/ca.crt")
        // The devices' keys outside the hub's directory (the hub refuses to start beside a key others can read).
        var devices: [String: ClientCredentials] = [:]
        for id in ["cmd-kill-a", "cmd-kill-b"] {
            devices[id] = try await HubProcessTests().enroll(
                id, operatorPort: ports.operator, operatorCredentials, keys)
        }
        func persistent(_ cleanStart: Bool) -> (inout ConnectPacket) -> Void {
            {
                $0.cleanStart = cleanStart
                $0.properties.sessionExpiryInterval = 600
            }
        }
        func connect<R: Sendable>(
            _ id: String, cleanStart: Bool, _ body: (MQTTClientConnection, ReasonCode) async throws -> R
        ) async throws -> R {
            let credentials = try #require(id == "ops" ? operatorCredentials : devices[id])
            return try await MQTTClientConnection.withConnection(
                host: "127.0.0.1", port: ports.mqtt, tls: try credentials.tlsConfiguration(), clientID: id,
                version: .v5, keepAlive: 5, configure: persistent(cleanStart), body)
        }
        func restart() async throws {
            hub.kill()
            _ = await hub.exitStatus()
            hub = try HubProcess(binary: try HubProcessTests.binary, directory: directory)
            ports = try await hub.waitForPorts()
        }
        // Each device subscribes to its commands and goes away; its session stays.
        for id in ["cmd-kill-a", "cmd-kill-b"] {
            try await connect(id, cleanStart: true) { mqtt, reason in
                #expect(reason == 0)
                try await MQTTPersistenceTests.subscribe(mqtt, try TopicFilter("devices/\(id)/commands/#"))
                try await mqtt.send(.disconnect(reasonCode: 0, properties: .init()))
            }
        }
        let commands = (1...10).map { #"{"n":\#($0)}"# }
        let lastID = try await connect("ops", cleanStart: true) { mqtt, _ -> UInt16 in
            var id: UInt16 = 0
            for (index, command) in commands.enumerated() {
                let topic = try TopicName("devices/cmd-kill-a/commands/c\(index)")
                if index < 5 {
                    #expect(try await mqtt.publishAcknowledged(topic: topic, payload: Array(command.utf8)) == 0)
                    continue
                }
                id = mqtt.makePacketID()
                try await mqtt.send(
                    .publish(PublishPacket(topic: topic, payload: Array(command.utf8), qos: .exactlyOnce, packetID: id))
                )
                guard case .pubrec(id, 0, _) = try await mqtt.next() else {
                    Issue.record("no PUBREC 0 for \(command)")
                    return id
                }
                if index == commands.count - 1 { break }  // killed before its PUBREL
                try await mqtt.send(.pubrel(packetID: id, reasonCode: 0, properties: .init()))
                guard case .pubcomp(id, 0, _) = try await mqtt.next() else {
                    Issue.record("no PUBCOMP 0 for \(command)")
                    return id
                }
            }
            return id
        }
        try await restart()
        let completed = try await connect("ops", cleanStart: false) { mqtt, _ -> Packet? in
            #expect(mqtt.sessionPresent)
            try await mqtt.send(.pubrel(packetID: lastID, reasonCode: 0, properties: .init()))
            return try await mqtt.next()
        }
        if case .pubcomp(lastID, 0, _) = completed {
        } else {
            Issue.record("the QoS 2 id acknowledged before the kill was not kept: \(String(describing: completed))")
        }
        let accepted = try await HTTPSClient.request(
            host: "127.0.0.1", port: ports.operator, tls: try operatorCredentials.tlsConfiguration(), method: "POST",
            path: "/v1/devices/cmd-kill-b/commands/reboot", headers: [("Content-Type", "application/json")],
            body: Array(#"{"http":1}"#.utf8))
        #expect(accepted.status == 202, "\(accepted.status)")
        try await restart()
        defer { _ = hub.stop(within: 10) }
        // What arrives until the last command, or until the hub ends a connection that waits for more (keep-alive).
        func received(_ id: String, until last: String) async -> [String] {
            let payloads = Mutex<[String]>([])
            _ = try? await connect(id, cleanStart: false) { mqtt, reason in
                #expect(reason == 0 && mqtt.sessionPresent)
                while payloads.withLock({ $0.last != last && $0.count < 100 }),
                    let payload = try await MQTTPersistenceTests.receive(1, mqtt).first
                {
                    payloads.withLock { $0.append(payload) }
                }
            }
            return payloads.withLock { $0 }
        }
        #expect(await received("cmd-kill-a", until: commands[9]) == commands, "acknowledged, then lost or doubled")
        #expect(await received("cmd-kill-b", until: #"{"http":1}"#) == [#"{"http":1}"#], "accepted, then lost")
    }
}
