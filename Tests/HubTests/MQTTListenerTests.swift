import Core
import Foundation
import HubClient
import MQTT
import Store
import Synchronization
import Testing

@testable import Hub

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
                "-V", "mqttv5", "-t", "devices/mq-a/#", "-C", "1", "-W", "40", "-v",
            ])
        // Published once the subscription is in place (the client starts, connects over mutual TLS, subscribes).
        #expect(await AgentTests.eventually(20) { hub.server.broker.hasSubscriptions })
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
            sub, common + ["-i", "mq-a", "-V", "mqttv311", "-t", "devices/mq-b/#", "-C", "1", "-W", "15"])
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
        // Recorded when the connection's task sees the failed handshake, after the client has its alert.
        #expect(
            try await AgentTests.eventually(10) {
                try await hub.securityEvents().contains {
                    $0.kind == "tls-client-refused" && $0.detail.contains("no client certificate")
                }
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
        var killed = try await KilledHub.start("command-kill", devices: ["cmd-kill-a", "cmd-kill-b"])
        defer { killed.stop() }
        let operatorCredentials = killed.operatorCredentials
        // Each device subscribes to its commands and goes away; its session stays.
        for id in ["cmd-kill-a", "cmd-kill-b"] {
            try await killed.connect(id, cleanStart: true) { mqtt, reason in
                #expect(reason == 0)
                try await MQTTPersistenceTests.subscribe(mqtt, try TopicFilter("devices/\(id)/commands/#"))
                try await mqtt.send(.disconnect(reasonCode: 0, properties: .init()))
            }
        }
        let commands = (1...10).map { #"{"n":\#($0)}"# }
        let lastID = try await killed.connect("ops", cleanStart: true) { mqtt, _ -> UInt16 in
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
        try await killed.restart()
        let completed = try await killed.connect("ops", cleanStart: false) { mqtt, _ -> Packet? in
            #expect(mqtt.sessionPresent)
            try await mqtt.send(.pubrel(packetID: lastID, reasonCode: 0, properties: .init()))
            return try await mqtt.next()
        }
        if case .pubcomp(lastID, 0, _) = completed {
        } else {
            Issue.record("the QoS 2 id acknowledged before the kill was not kept: \(String(describing: completed))")
        }
        let accepted = try await HTTPSClient.request(
            host: "127.0.0.1", port: killed.ports.operator, tls: try operatorCredentials.tlsConfiguration(),
            method: "POST",
            path: "/v1/devices/cmd-kill-b/commands/reboot", headers: [("Content-Type", "application/json")],
            body: Array(#"{"http":1}"#.utf8))
        #expect(accepted.status == 202, "\(accepted.status)")
        try await killed.restart()
        #expect(await killed.received("cmd-kill-a", until: commands[9]) == commands, "acknowledged, then lost, doubled")
        #expect(await killed.received("cmd-kill-b", until: #"{"http":1}"#) == [#"{"http":1}"#], "accepted, then lost")
    }

    /// A device's QoS 1 messages reach a subscriber's kept session even when the hub is killed right after their
    /// PUBACKs, before that session's next save (every 250 ms): a single node logs each with the message, and replays
    /// the log into the session when it starts. A session saved after it had messages gets none of them again, and
    /// a session made after a restart gets none of the messages from before it. At least once: a save made during
    /// the last burst may leave some of it to the replay again, so those may come twice (never the earlier ones).
    @Test func sigkillRightAfterADevicesMessagesReachedAKeptSessionLosesNone() async throws {
        var killed = try await KilledHub.start("log-kill", devices: ["log-kill-1", "log-kill-2"])
        defer { killed.stop() }
        let filter = try TopicFilter("devices/+/telemetry")
        func subscribe(_ clientID: String) async throws {
            try await killed.connect("ops", clientID: clientID, cleanStart: true) { mqtt, reason in
                #expect(reason == 0)
                try await MQTTPersistenceTests.subscribe(mqtt, filter)
                try await mqtt.send(.disconnect(reasonCode: 0, properties: .init()))
            }
        }
        func publish(_ device: String, _ payloads: [String]) async throws {
            try await killed.connect(device, cleanStart: true) { mqtt, _ in
                for payload in payloads {
                    let code = try await mqtt.publishAcknowledged(
                        topic: try TopicName("devices/\(device)/telemetry"), payload: Array(payload.utf8))
                    #expect(code == 0, "\(payload)")
                }
            }
        }
        func received(_ clientID: String, until last: String) async -> [String] {
            await killed.received("ops", clientID: clientID, until: last)
        }
        let first = (1...10).map { #"{"first":\#($0)}"# }
        let second = (1...10).map { #"{"second":\#($0)}"# }
        try await subscribe("fleet-a")
        // fleet-b receives the first ten while connected, and is saved with them acknowledged.
        try await subscribe("fleet-b")
        try await killed.connect("ops", clientID: "fleet-b", cleanStart: false) { mqtt, _ in
            try await publish("log-kill-1", first)
            #expect(try await MQTTPersistenceTests.receive(10, mqtt) == first)
            try await mqtt.send(.disconnect(reasonCode: 0, properties: .init()))
        }
        try await Task.sleep(for: .seconds(3))
        // Killed right after the last PUBACK: fleet-a's and fleet-b's sessions are not saved with these.
        try await publish("log-kill-2", second)
        try await killed.restart()
        let a = await received("fleet-a", until: second[9])
        #expect(MQTTPersistenceTests.firstOccurrences(a) == first + second, "acknowledged, then lost: \(a)")
        #expect(a.filter(first.contains) == first, "the first ten once each: \(a)")
        let b = await received("fleet-b", until: second[9])
        #expect(MQTTPersistenceTests.firstOccurrences(b) == second, "lost, or the first ten again: \(b)")
        // A new session, saved with its subscription; the others' acknowledgements saved too (well past 250 ms).
        try await subscribe("fleet-c")
        try await Task.sleep(for: .seconds(3))
        try await killed.restart()
        let marker = #"{"marker":1}"#
        try await publish("log-kill-1", [marker])
        #expect(await received("fleet-c", until: marker) == [marker], "messages from before its subscription")
        #expect(await received("fleet-a", until: marker) == [marker], "delivered twice")
        #expect(await received("fleet-b", until: marker) == [marker], "delivered twice")
        // Every session saved past them: the log keeps none of the messages.
        killed.stop()
        let store = try SQLiteHubStore(path: killed.directory + "/bulwark.sqlite")
        #expect(try await store.loggedMessages(after: 0, limit: 100).isEmpty, "logged messages never pruned")
        try await store.close()
    }

    /// The same for a device's QoS 2 messages (stored before their PUBREC, MQTT 5.0 §4.3.3): killed right after the
    /// last one's PUBREC, before its PUBREL, the hub replays every message into the kept session after the restart.
    /// Exactly once from the device's side too: a message without a counter has its id saved with the device's
    /// session before the PUBREC goes out, so the PUBREL sent after the restart completes it (PUBCOMP 0), and a
    /// PUBLISH resent after a kill (its PUBREC lost) is known as a copy: answered, not stored or delivered again.
    @Test func sigkillRightAfterADevicesQoS2MessagesWereReceivedLosesNone() async throws {
        var killed = try await KilledHub.start("log-kill2", devices: ["log-kill2"])
        defer { killed.stop() }
        try await killed.connect("ops", clientID: "fleet-q2", cleanStart: true) { mqtt, _ in
            try await MQTTPersistenceTests.subscribe(mqtt, try TopicFilter("devices/+/telemetry"))
            try await mqtt.send(.disconnect(reasonCode: 0, properties: .init()))
        }
        let topic = try TopicName("devices/log-kill2/telemetry")
        /// Sends a QoS 2 PUBLISH and reads its PUBREC, leaving the flow there.
        func received(_ id: UInt16, _ payload: String, duplicate: Bool = false, _ mqtt: MQTTClientConnection)
            async throws
        {
            try await mqtt.send(MQTTQoS2Tests.publish2(id, topic, payload, duplicate: duplicate))
            guard case .pubrec(id, 0, _) = try await MQTTQoS2Tests.answer(mqtt) else {
                throw ClientError("no PUBREC for \(payload)")
            }
        }
        func completed(_ id: UInt16, _ mqtt: MQTTClientConnection) async throws {
            try await mqtt.send(.pubrel(packetID: id, reasonCode: 0, properties: .init()))
            let answer = try await MQTTQoS2Tests.answer(mqtt)
            guard case .pubcomp(id, 0, _) = answer else {
                throw ClientError("the id received before the kill was not kept: \(answer)")
            }
        }
        let payloads = (1...10).map { #"{"q2":\#($0)}"# }
        let lastID = try await killed.connect("log-kill2", cleanStart: true) { mqtt, _ in
            for payload in payloads.dropLast() {
                let code = try await MQTTQoS2Tests.publishExactlyOnce(mqtt, topic, payload)
                #expect(code == 0, "\(payload)")
            }
            let id = mqtt.makePacketID()
            try await received(id, payloads[9], mqtt)
            return id
        }
        try await killed.restart()
        let fleet = await killed.received("ops", clientID: "fleet-q2", until: payloads[9])
        #expect(MQTTPersistenceTests.firstOccurrences(fleet) == payloads, "received, then lost: \(fleet)")
        try await killed.connect("log-kill2", cleanStart: false) { mqtt, _ in
            #expect(mqtt.sessionPresent)
            try await completed(lastID, mqtt)
        }

        // A PUBLISH whose PUBREC the device never saw (the hub killed meanwhile) comes again, with DUP.
        let copy = #"{"copy":1}"#
        let copyID = try await killed.connect("log-kill2", cleanStart: false) { mqtt, _ in
            let id = mqtt.makePacketID()
            try await received(id, copy, mqtt)
            return id
        }
        try await killed.restart()
        try await killed.connect("log-kill2", cleanStart: false) { mqtt, _ in
            try await received(copyID, copy, duplicate: true, mqtt)
            try await completed(copyID, mqtt)
        }
        let marker = #"{"marker":2}"#
        try await killed.connect("log-kill2", cleanStart: false) { mqtt, _ in
            let code = try await MQTTQoS2Tests.publishExactlyOnce(mqtt, topic, marker)
            #expect(code == 0)
        }
        let after = await killed.received("ops", clientID: "fleet-q2", until: marker)
        #expect(MQTTPersistenceTests.firstOccurrences(after) == [copy, marker], "lost: \(after)")
        killed.stop()
        let store = try SQLiteHubStore(path: killed.directory + "/bulwark.sqlite")
        #expect(try await store.telemetryCount(of: try DeviceID("log-kill2")) == 12, "each message stored once")
        try await store.close()
    }

    /// A connection that published to a topic nobody replayable subscribed to sees a subscription made meanwhile:
    /// its next messages are logged for it (the connection's cached answer is asked again once the index changed),
    /// so a kill right after their PUBACKs loses none of them for the new session.
    @Test func aSubscriptionMadeWhileADeviceIsConnectedGetsItsNextMessagesLogged() async throws {
        var killed = try await KilledHub.start("log-late", devices: ["log-late"])
        defer { killed.stop() }
        let topic = try TopicName("devices/log-late/telemetry")
        let later = (1...5).map { #"{"later":\#($0)}"# }
        try await killed.connect("log-late", cleanStart: true) { mqtt, _ in
            #expect(try await mqtt.publishAcknowledged(topic: topic, payload: Array(#"{"first":1}"#.utf8)) == 0)
            try await killed.connect("ops", clientID: "fleet-late", cleanStart: true) { fleet, _ in
                try await MQTTPersistenceTests.subscribe(fleet, try TopicFilter("devices/+/telemetry"))
                try await fleet.send(.disconnect(reasonCode: 0, properties: .init()))
            }
            for payload in later {
                let code = try await mqtt.publishAcknowledged(topic: topic, payload: Array(payload.utf8))
                #expect(code == 0, "\(payload)")
            }
        }
        try await killed.restart()
        // At least once (see above): the messages of the burst may come twice.
        let received = await killed.received("ops", clientID: "fleet-late", until: later[4])
        #expect(MQTTPersistenceTests.firstOccurrences(received) == later, "lost: \(received)")
    }
}

/// A real hub process that a test kills (-9) and starts again on the same directory, with the operator's and some
/// enrolled devices' credentials, and MQTT 5 clients whose sessions outlive them (expiry 600 s).
struct KilledHub {
    let directory: String
    private var hub: HubProcess
    private(set) var ports: HubProcess.Ports
    let operatorCredentials: ClientCredentials
    private(set) var devices: [String: ClientCredentials] = [:]

    static func start(_ name: String, devices ids: [String]) async throws -> KilledHub {
        let directory = try temporaryDirectory(name)
        let hub = try HubProcess(binary: try HubProcessTests.binary, directory: directory)
        var killed = KilledHub(
            directory: directory, hub: hub, ports: try await hub.waitForPorts(),
            operatorCredentials: try ClientCredentials(
                certificateFile: directory + "/operators/admin.crt", keyFile: directory + "/operators/admin.key",
                caFile: directory + "/ca.crt"))
        // The devices' keys outside the hub's directory (the hub refuses to start beside a key others can read).
        let keys = try temporaryDirectory(name + "-keys")
        for id in ids {
            killed.devices[id] = try await HubProcessTests().enroll(
                id, operatorPort: killed.ports.operator, killed.operatorCredentials, keys)
        }
        return killed
    }

    private init(
        directory: String, hub: HubProcess, ports: HubProcess.Ports, operatorCredentials: ClientCredentials
    ) {
        self.directory = directory
        self.hub = hub
        self.ports = ports
        self.operatorCredentials = operatorCredentials
    }

    /// Connects as the device `id` (or the operator, "ops"), with client id `clientID` (by default `id`).
    func connect<R: Sendable>(
        _ id: String, clientID: String? = nil, cleanStart: Bool,
        _ body: (MQTTClientConnection, ReasonCode) async throws -> R
    ) async throws -> R {
        let credentials = try #require(id == "ops" ? operatorCredentials : devices[id])
        return try await MQTTClientConnection.withConnection(
            host: "127.0.0.1", port: ports.mqtt, tls: try credentials.tlsConfiguration(), clientID: clientID ?? id,
            version: .v5, keepAlive: 5,
            configure: {
                $0.cleanStart = cleanStart
                $0.properties.sessionExpiryInterval = 600
            }, body)
    }

    /// What a session (resumed) receives until `last`, acknowledging each, or until the hub ends a connection that
    /// waits for more (keep-alive).
    func received(_ id: String, clientID: String? = nil, until last: String) async -> [String] {
        let payloads = Mutex<[String]>([])
        _ = try? await connect(id, clientID: clientID, cleanStart: false) { mqtt, reason in
            #expect(reason == 0 && mqtt.sessionPresent)
            while payloads.withLock({ $0.last != last && $0.count < 100 }),
                let payload = try await MQTTPersistenceTests.receive(1, mqtt).first
            {
                payloads.withLock { $0.append(payload) }
            }
        }
        return payloads.withLock { $0 }
    }

    /// Kills the hub with SIGKILL and starts it again on the same directory.
    mutating func restart() async throws {
        hub.kill()
        _ = await hub.exitStatus()
        hub = try HubProcess(binary: try HubProcessTests.binary, directory: directory)
        ports = try await hub.waitForPorts()
    }

    func stop() { _ = hub.stop(within: 10) }
}
