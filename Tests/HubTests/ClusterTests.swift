import Agent
import Core
import Foundation
import HubClient
import MQTT
import Pairing
import PostgresStore
import PostgresTestSupport
import Store
import TUFRepository
import Testing

@testable import Hub

/// Two hub nodes on one PostgreSQL database (the second started from a copy of the first's data directory: the same
/// CA, TLS key and audit key). What an operator does on one node bites on the other within a second.
@Suite(.serialized) struct ClusterTests {
    /// Node 2 joins from an encrypted bundle of node 1's files (`bulwark node bundle` / `node join`).
    static func twoNodes(
        configure: @escaping (inout HubConfiguration) -> Void = { _ in }
    ) async throws -> (TestHub, TestHub, PostgresLocation) {
        let location = try await PostgresTestServer.freshDatabase()
        let (first, second) = try await twoNodes(
            joining: try await TestHub.start(
                store: try await PostgresHubStore(location: location), configure: configure),
            location: location, configure: configure)
        return (first, second, location)
    }

    /// The hub's settings (`BULWARK_DATABASE_*`) that name the database at `location`.
    static func environment(of location: PostgresLocation) -> [String: String] {
        var environment = [
            "BULWARK_DATABASE_URL":
                "postgres://\(location.user)@\(location.host):\(location.port)/\(location.database)?sslmode=verify-full"
        ]
        environment["BULWARK_DATABASE_PASSWORD_FILE"] = location.passwordFile
        environment["BULWARK_DATABASE_CA_FILE"] = location.caFile
        return environment
    }

    static func twoNodes(
        joining first: TestHub, location: PostgresLocation, configure: (inout HubConfiguration) -> Void = { _ in }
    ) async throws -> (TestHub, TestHub) {
        let passphrase = "correct horse battery staple"
        let bundle = try NodeBundle.seal(try NodeBundle.files(in: first.directory), passphrase: passphrase)
        let joined = try temporaryDirectory("node-2") + "/data"
        try NodeBundle.install(try NodeBundle.open(bundle, passphrase: passphrase), into: joined)
        let second = try await TestHub.start(
            directory: joined, store: try await PostgresHubStore(location: location), configure: configure)
        return (first, second)
    }

    /// The operator's key never travels in a node bundle: the test's operator uses node 1's on node 2 too.
    static func shareOperatorKey(from one: TestHub, to two: TestHub) throws {
        for file in ["admin.key", "admin.crt"] {
            try? FileManager.default.removeItem(atPath: two.directory + "/operators/" + file)
            try FileManager.default.copyItem(
                atPath: one.directory + "/operators/" + file, toPath: two.directory + "/operators/" + file)
        }
    }

    /// Polls `condition` every 10 ms for up to `seconds`; returns how long it took to hold, nil if it never did.
    static func within(_ seconds: Double, _ condition: () async throws -> Bool) async throws -> Duration? {
        let clock = ContinuousClock()
        let start = clock.now
        while clock.now - start < .seconds(seconds) {
            if try await condition() { return clock.now - start }
            try await Task.sleep(for: .milliseconds(10))
        }
        return nil
    }

    /// Claims a new device `name` on `claimOn` and pairs it on `pairOn`: what the device is given.
    static func pair(_ name: String, claimOn: TestHub, pairOn: TestHub) async throws -> PairingClient.Result {
        let identity = NoiseDH.p256.generateKeyPair()
        let label = try PairingLabel(
            suite: .p256AESGCMSHA256, deviceID: try DeviceID(name), publicKey: identity.publicKey,
            setupSecret: [UInt8](repeating: 6, count: 16))
        #expect(
            try await claimOn.operatorRequest("POST", "/v1/pairing/claims", json: ["label": label.text]).status == 201)
        return try await PairingClient.pair(
            host: "127.0.0.1", port: pairOn.pairingPort, label: label, identityKey: identity, timeout: .seconds(20))
    }

    /// The device, connected to `deviceOn` over MQTT 5, subscribes to its commands; the operator sends `reboot` with
    /// `delay` through `sentThrough`: the topic and body the device received (nil: none).
    static func command(
        to device: TestDevice, id: String, on deviceOn: TestHub, through sentThrough: TestHub, delay: Int
    ) async throws -> String? {
        try await MQTTClientConnection.withConnection(
            host: "127.0.0.1", port: deviceOn.mqttPort, tls: try device.credentials.tlsConfiguration(), clientID: id,
            version: .v5, keepAlive: 120
        ) { mqtt, _ -> String? in
            try await mqtt.send(
                .subscribe(
                    packetID: 1,
                    subscriptions: [
                        Subscription(filter: try TopicFilter("devices/\(id)/commands/#"), qos: .atLeastOnce)
                    ],
                    properties: .init()))
            guard case .suback(1, [1], _) = try await mqtt.next() else { return nil }
            let sent = try await sentThrough.operatorRequest(
                "POST", "/v1/devices/\(id)/commands/reboot", json: ["delay": delay])
            #expect(sent.status == 202)
            while let packet = try await mqtt.next() {
                guard case .publish(let message) = packet else { continue }
                if let packetID = message.packetID {
                    try await mqtt.send(.puback(packetID: packetID, reasonCode: 0, properties: .init()))
                }
                return "\(message.topic.rawValue) \(String(decoding: message.payload, as: UTF8.self))"
            }
            return nil
        }
    }

    /// The nodes reconcile only once an hour here, so whatever node 2 sees in time came by the database's
    /// notification (the bounds leave room for a loaded run: 10 s, against the hour).
    @Test func revocationQuarantineReleaseAndSchemasOnOneNodeBiteOnTheOther() async throws {
        let (one, two, location) = try await Self.twoNodes { $0.clusterReconcileSeconds = 3600 }
        let device = try await one.enroll("cl-1")
        let id = try DeviceID("cl-1")

        // Quarantined by node 1's gateway (it stores the quarantine, as GatewayWiring does): node 2 refuses the
        // device's MQTT CONNECT.
        let now = Int64(Date().timeIntervalSince1970)
        try await one.server.store.setQuarantine(id, until: now + 600)
        let quarantined = try await Self.within(10) { two.server.gateway.quarantine.isQuarantined(id, now: now) }
        #expect(
            quarantined != nil,
            "node 2 saw the quarantine after \(String(describing: quarantined))")
        #expect(try await MQTTBrokerTests.connect(two, device, version: .v311) { _, reason in reason } == 0x05)

        // Released through node 1's operator API: node 2 lets the device in again.
        #expect(try await one.operatorRequest("POST", "/v1/devices/cl-1/release").status == 200)
        let released = try await Self.within(10) { !two.server.gateway.quarantine.isQuarantined(id, now: now) }
        #expect(
            released != nil, "node 2 saw the release after \(String(describing: released))")

        // A schema registered on node 1 is enforced by node 2.
        let schema = Array(#"{"type":"object","required":["t"],"properties":{"t":{"type":"number"}}}"#.utf8)
        #expect(try await one.operatorRequest("PUT", "/v1/schemas/env", raw: schema).status == 201)
        let enforced = try await Self.within(10) { two.server.gateway.schema(for: "env") != nil }
        #expect(
            enforced != nil, "node 2 had the schema after \(String(describing: enforced))")

        // Revoked on node 1 while connected to node 2: node 2 closes the connection once notified.
        let clock = ContinuousClock()
        let closedAfter = try await MQTTBrokerTests.connect(two, device, version: .v311) { mqtt, reason in
            #expect(reason == 0)
            let revoked = try await one.operatorRequest("POST", "/v1/devices/cl-1/revoke")
            let answered = clock.now
            #expect(revoked.status == 200)
            while (try? await mqtt.next()) != nil {}
            return clock.now - answered
        }
        print(
            "cluster: node 2 saw the quarantine after \(String(describing: quarantined)), the release after "
                + "\(String(describing: released)), the schema after \(String(describing: enforced)); closed the "
                + "revoked device's connection \(closedAfter) after the answer")
        #expect(closedAfter < .seconds(10), "node 2 closed the revoked device's connection after \(closedAfter)")

        // Both nodes wrote to one audit chain; `bulwark audit verify` reads it from PostgreSQL and checks every MAC.
        let verified = try await run(
            try HubProcessTests.binary, ["audit", "verify", "--data", one.directory],
            environment: Self.environment(of: location), timeout: 60)
        #expect(verified.status == 0, "\(verified.stdout)\(verified.stderr)")
        #expect(verified.stdout.contains("intact"), "\(verified.stdout)")
        for certificate in try await two.server.store.certificates(of: id) {
            #expect(two.server.revocationList.contains(certificate.serialHex))
        }
        try await two.stop()
        try await one.stop()
    }

    /// A notification missed is caught by the next reconcile (`cluster.reconcileSeconds`, 0.5 s here): a quarantine's
    /// row written as the store writes it but without its NOTIFY (as when a node's LISTEN connection was down at that
    /// moment) bites on both nodes within a second or two. Without the reconcile it never would.
    @Test func aMissedNotificationIsCaughtByTheReconcile() async throws {
        let (one, two, location) = try await Self.twoNodes { $0.clusterReconcileSeconds = 0.5 }
        _ = try await one.enroll("cl-rc")
        let id = try DeviceID("cl-rc")
        let now = Int64(Date().timeIntervalSince1970)
        // Under the events lock, as `recordEvent` takes it (event ids commit in order), in one statement.
        try await PostgresTestServer.execute(
            """
            WITH locked AS (SELECT pg_advisory_xact_lock(\(0x6275_6c77_0003))),
            quarantined AS (
                INSERT INTO quarantines (device_id, until) VALUES ('cl-rc', \(now + 600))
                ON CONFLICT (device_id) DO UPDATE SET until = excluded.until RETURNING device_id)
            INSERT INTO cluster_events (kind, subject, until, at)
            SELECT 'quarantined', device_id, \(now + 600), \(Int64(Date().timeIntervalSince1970 * 1000))
            FROM locked, quarantined
            """, on: location)
        for node in [one, two] {
            let seen = try await Self.within(10) { node.server.gateway.quarantine.isQuarantined(id, now: now) }
            // (Within 0.5 s plus a read; a loaded two-core run is given more.)
            #expect(seen.map { $0 < .seconds(5) } == true, "applied after \(String(describing: seen))")
        }
        try await two.stop()
        try await one.stop()
    }

    /// Each node's replay check is in memory; the database is the check they share. A signed request accepted by
    /// node 1 and replayed to node 2 is refused there, and so is an MQTT message whose counter node 1 stored, unless
    /// it is the DUP resend of that message (a PUBACK lost with a node): acknowledged, stored once.
    @Test func aMessageReplayedToAnotherNodeIsRefused() async throws {
        let (one, two, _) = try await Self.twoNodes()
        let device = try await one.enroll("cl-r")
        let id = try DeviceID("cl-r")
        let body = Array(#"{"temperature":21}"#.utf8)
        let captured = try device.credentials.signer().sign(
            method: "POST", path: "/v1/telemetry", body: body, created: Int64(Date().timeIntervalSince1970),
            contentType: "application/json")
        func send(to hub: TestHub) async throws -> HTTPResult {
            try await device.request(
                port: hub.devicePort, "POST", "/v1/telemetry", body: body,
                headers: [("Content-Type", "application/json")] + captured.map { ($0.name, $0.value) }, signed: false)
        }
        #expect(try await send(to: one).status == 202)
        let replayed = try await send(to: two)
        #expect(replayed.status == 401, "\(replayed.status) \(String(decoding: replayed.body, as: UTF8.self))")
        #expect(try await one.server.store.telemetryCount(of: id) == 1)

        let topic = try TopicName("devices/cl-r/telemetry")
        func payload(_ counter: Int) -> [UInt8] { Array(#"{"$counter":\#(counter),"temperature":20}"#.utf8) }
        let first = try await MQTTBrokerTests.connect(one, device) { mqtt, _ in
            [
                try await mqtt.publishAcknowledged(topic: topic, payload: payload(7)),
                try await mqtt.publishAcknowledged(topic: topic, payload: payload(8)),
            ]
        }
        #expect(first == [0, 0])
        let (resent, again) = try await MQTTBrokerTests.connect(two, device) { mqtt, _ in
            try await mqtt.send(
                .publish(
                    PublishPacket(topic: topic, payload: payload(7), qos: .atLeastOnce, duplicate: true, packetID: 99)))
            var resent = ReasonCode(0xFF)
            while let packet = try await mqtt.next() {
                if case .puback(99, let reason, _) = packet {
                    resent = reason
                    break
                }
            }
            return (resent, try await mqtt.publishAcknowledged(topic: topic, payload: payload(8)))
        }
        #expect(resent == 0, "the DUP resend of a message node 1 stored is acknowledged")
        #expect(again == 0x87, "a counter node 1 stored is a replay on node 2")
        #expect(try await one.server.store.telemetryCount(of: id) == 3)
        let kinds = try await two.server.store.securityEvents(identity: "urn:bulwark:device:cl-r", limit: 20).map(
            \.kind)
        #expect(kinds.filter { $0 == "replay" }.count == 2, "\(kinds)")
        try await two.stop()
        try await one.stop()
    }

    /// A node started on the database with its own data directory would key audit records with a key of its own,
    /// which the other nodes' records do not verify under: it refuses to start and says what to copy. So does a node
    /// whose audit key is not the log's.
    @Test func aNodeWithoutTheLogsAuditKeyRefusesToStart() async throws {
        let location = try await PostgresTestServer.freshDatabase()
        let first = try await TestHub.start(store: try await PostgresHubStore(location: location))
        await #expect {
            _ = try await TestHub.start(store: try await PostgresHubStore(location: location))
        } throws: { error in
            "\(error)".contains("audit key")
        }
        let other = try temporaryDirectory("node-foreign-key")
        try AuditKey.generate(keyedFrom: 1).fileText.write(
            toFile: other + "/audit.key", atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: other + "/audit.key")
        await #expect {
            _ = try await TestHub.start(directory: other, store: try await PostgresHubStore(location: location))
        } throws: { error in
            "\(error)".contains("is not the key of this audit log")
        }
        // The refused node recorded nothing that locks out the right key: a node with it starts.
        let (_, right) = try await Self.twoNodes(joining: first, location: location)
        try await right.stop()
        try await first.stop()
    }

    /// Nodes on one database are one hub with one CA: a node without the CA, or with a CA of its own, refuses to
    /// start (devices enrolled by one would not be trusted by the other).
    @Test func aNodeWithAnotherCARefusesToStart() async throws {
        let location = try await PostgresTestServer.freshDatabase()
        let first = try await TestHub.start(store: try await PostgresHubStore(location: location))
        let bare = try temporaryDirectory("node-no-ca")
        try FileManager.default.copyItem(atPath: first.directory + "/audit.key", toPath: bare + "/audit.key")
        await #expect {
            _ = try await TestHub.start(directory: bare, store: try await PostgresHubStore(location: location))
        } throws: { error in
            "\(error)".contains("a CA this data directory does not have")
        }
        #expect(!FileManager.default.fileExists(atPath: bare + "/ca.key"), "no CA of its own was made")

        let foreign = try await TestHub.start()  // another hub, another CA
        try await foreign.stop(keepData: true)
        try FileManager.default.removeItem(atPath: foreign.directory + "/audit.key")
        try FileManager.default.copyItem(
            atPath: first.directory + "/audit.key", toPath: foreign.directory + "/audit.key")
        await #expect {
            _ = try await TestHub.start(
                directory: foreign.directory, store: try await PostgresHubStore(location: location))
        } throws: { error in
            "\(error)".contains("is not the CA of the other hub nodes")
        }
        try await first.stop()
    }

    /// Three nodes, one hub (#14's own example): a device enrolled on node 1 sends through node 2; a claim made on
    /// node 1 is paired on node 3; a command sent through node 3 reaches the device connected to node 1 over MQTT.
    @Test func threeNodesServeAnyDeviceAndOperator() async throws {
        let (one, two, location) = try await Self.twoNodes()
        let (_, three) = try await Self.twoNodes(joining: one, location: location)
        try Self.shareOperatorKey(from: one, to: three)
        let device = try await one.enroll("cl3-dev")
        let sent = try await device.request(
            port: two.devicePort, "POST", "/v1/telemetry", body: Array(#"{"through":"node 2"}"#.utf8))
        #expect(sent.status == 202)
        #expect(
            try await one.server.store.telemetry(of: try DeviceID("cl3-dev"), limit: 10).map {
                String(decoding: $0.body, as: UTF8.self)
            } == [#"{"through":"node 2"}"#])

        let paired = try await Self.pair("cl3-paired", claimOn: one, pairOn: three)
        #expect(!paired.credentials.certificateDER.isEmpty, "claimed on node 1, paired on node 3")
        #expect(Set(paired.credentials.pins).count == 6, "the three nodes' pins")
        #expect(try await two.server.store.device(try DeviceID("cl3-paired"))?.status == .active)

        let command = try await Self.command(to: device, id: "cl3-dev", on: one, through: three, delay: 3)
        #expect(command == #"devices/cl3-dev/commands/reboot {"delay":3}"#, "sent through node 3, delivered on node 1")
        try await three.stop()
        try await two.stop()
        try await one.stop()
    }

    /// Each node has TLS keys of its own. A device paired on either node pins both; a device that pinned node 1 alone
    /// (paired before node 2 joined) refuses node 2 until the pin set published through TUF names node 2's keys, and
    /// then connects to it. A forgotten node's pins are handed out no more.
    @Test func eachNodeHasItsOwnKeyAndDevicesLearnEveryNodesPins() async throws {
        let repository = try await PinRotationTests.Repository.make("cluster-pins")
        let (one, two, location) = try await Self.twoNodes {
            $0.tufRepository = repository.path
            $0.tufOnlineKeys = repository.online
        }
        let (pins1, pins2) = (one.server.credentials.pins, two.server.credentials.pins)
        #expect(Set(pins1).isDisjoint(with: pins2), "node 2 made keys of its own")
        #expect(await PinRotationTests.presented(two) == pins2[0])
        let recorded = try await one.server.store.nodePins()
        #expect(Set(recorded.map(\.pins)) == [pins1, pins2], "each node recorded its pins")

        func pinsGivenAtPairing(_ name: String, on node: TestHub) async throws -> [[UInt8]] {
            try await Self.pair(name, claimOn: one, pairOn: node).credentials.pins
        }
        // Pairing on node 2 on node 1's claim: the device gets both nodes' pins, node 2's first.
        #expect(try await pinsGivenAtPairing("cl-pins-1", on: two) == pins2 + pins1)

        // A device that pins node 1 only refuses node 2.
        let state = try AgentTests.stateDirectory(one, try await one.enroll("cl-pins-2"))
        try FileManager.default.createDirectory(atPath: state + "/trust", withIntermediateDirectories: false)
        try FileManager.default.copyItem(
            atPath: repository.path + "/metadata/root.json", toPath: state + "/trust/root.json")
        func agent(_ hub: TestHub) throws -> Agent {
            var configuration = AgentTests.configuration(hub, state)
            configuration.trustRefreshSeconds = 1
            configuration.renews = false
            return try Agent(configuration: configuration)
        }
        let stranger = try agent(two)
        let strangerRun = Task { try await stranger.run() }
        #expect(await AgentTests.eventually(20) { await stranger.status.connection == "untrusted" }, "pin refused")
        strangerRun.cancel()
        _ = try? await strangerRun.value

        // The pin set both nodes' pins are published in, by node 1 as `bulwark hub publish-pins` does it (the other
        // nodes' pins read from the store by `ClusterPins.syncAndReadOthers`): the device takes it from node 1 (two
        // keys added: one node's pair).
        var configuration = one.server.configuration
        let database = Self.environment(of: location)
        configuration.databaseURL = database["BULWARK_DATABASE_URL"]
        configuration.databasePasswordFile = database["BULWARK_DATABASE_PASSWORD_FILE"]
        configuration.databaseCAFile = database["BULWARK_DATABASE_CA_FILE"]
        let others = try await ClusterPins.syncAndReadOthers(configuration)
        #expect(others.map(\.pins) == [pins2])
        func publish(settle: TimeInterval = 0) async throws -> (version: Int, pins: [[UInt8]], waiting: [String]) {
            try await TLSKeyRotation.publishCurrent(
                dataDirectory: one.directory, repository: repository.path, keyring: try repository.keyring,
                otherNodes: try await ClusterPins.syncAndReadOthers(configuration), settle: settle)
        }
        let published = try await publish()
        #expect(published.pins == pins1 + pins2)
        let follower = try agent(one)
        let followerRun = Task { try await follower.run() }
        let followed = await AgentTests.eventually(30) { await Set(follower.state.pinned.pins) == Set(pins1 + pins2) }
        let trustError = await follower.status.trustError ?? "-"
        #expect(followed, "the device holds both nodes' pins: \(trustError)")
        followerRun.cancel()
        _ = try? await followerRun.value
        let moved = try agent(two)
        let movedRun = Task { try await moved.run() }
        #expect(await AgentTests.eventually(20) { await moved.status.connection == "connected" }, "node 2 trusted")
        movedRun.cancel()
        _ = try? await movedRun.value

        // Two more nodes at once: a set adds one node's pair (a device takes two new keys at a time), the other
        // waits and is named (the command exits 75); a set that adds keys within `settle` of the last one that did
        // is refused; once settled, the other goes out.
        let key = ClusterPins.key(try AuditKey(fileText: try SecretFiles.read(configuration.auditKeyPath)))
        func node(_ digit: Character) -> String { String(repeating: digit, count: 32) }
        func pair(_ byte: UInt8) -> [[UInt8]] { [PinSetTests.pin(byte), PinSetTests.pin(byte + 1)] }
        let (three, four, five) = (pair(0x33), pair(0x43), pair(0x53))
        for (id, name, pins) in [(node("3"), "node-3", three), (node("4"), "node-4", four)] {
            try await one.server.store.setNodePins(
                ClusterPins.sealed(node: id, name: name, pins: pins, now: Date(), key: key))
        }
        // This one through the command itself: it publishes, names node 4 and exits 75.
        let command = try await run(
            try HubProcessTests.binary,
            [
                "hub", "publish-pins", "--data", one.directory, "--repo", repository.path, "--keys", repository.keys,
                "--settle", "0",
            ], environment: ProcessInfo.processInfo.environment.merging(database) { $1 })
        #expect(command.status == 75 && command.stderr.contains("node-4"), "\(command.stderr)")
        let limited = try #require(
            try TLSKeyRotation.publishedSet(
                try FileRepository(directory: repository.path).open(), repository: repository.path))
        #expect(Set(limited.pins) == Set(pins1 + pins2 + three))
        await #expect("node 4's pins within the settle time") {
            try await publish(settle: 3600)
        } throws: { "\($0)".contains("devices may not hold it yet") }
        let settled = try await publish()
        #expect(Set(settled.pins) == Set(pins1 + pins2 + three + four) && settled.waiting.isEmpty)

        // A node running now whose pins are not published: a rotation elsewhere does not start (its sets would leave
        // that node out).
        try await one.server.store.setNodePins(
            ClusterPins.sealed(node: node("7"), name: "node-7", pins: pair(0x83), now: Date(), key: key))
        await #expect {
            try await TLSKeyRotation.rotate(
                dataDirectory: one.directory, hubNames: [], crlDistributionPoints: nil, repository: repository.path,
                keyring: try repository.keyring, wait: .seconds(1), settle: 0, hubRunning: false,
                otherNodes: try await ClusterPins.syncAndReadOthers(configuration), presentedPin: { nil })
        } throws: { "\($0)".contains("node-7 are not published yet") }
        #expect(try await one.server.store.removeNodePins(node: node("7")))

        // A record put back from 20 minutes ago (its MAC is a node's, but it is not fresh: a node that stopped, or a
        // replay by someone who can write the database): its pins are neither given to a device nor added.
        try await one.server.store.setNodePins(
            ClusterPins.sealed(node: node("5"), name: "node-5", pins: five, now: Date() - 1200, key: key))
        #expect(!(try await pinsGivenAtPairing("cl-pins-5", on: one)).contains(five[0]))
        let stale = try await publish()
        #expect(!stale.pins.contains(five[0]) && stale.waiting == ["node-5"])

        // A record someone wrote into the database without the audit key (a valid node's id and pins, a MAC that is
        // not the key's): never given to a device, and publishing is refused while it is there.
        var forged = ClusterPins.sealed(node: node("6"), name: "node-6", pins: pair(0x63), now: Date(), key: key)
        forged.pins = pair(0x73)
        try await one.server.store.setNodePins(forged)
        let given = try await pinsGivenAtPairing("cl-pins-4", on: one)
        #expect(!given.contains(pair(0x73)[0]) && !given.contains(pair(0x63)[0]) && given.contains(three[0]))
        await #expect(throws: TamperedPins.self) { try await ClusterPins.syncAndReadOthers(configuration) }
        for id in [node("3"), node("4"), node("5"), node("6")] {
            #expect(try await one.server.store.removeNodePins(node: id))
        }

        // Node 2 taken out of service: its pins are handed out no more.
        #expect(try await one.server.store.removeNodePins(node: try #require(recorded.first { $0.pins == pins2 }).node))
        #expect(try await pinsGivenAtPairing("cl-pins-3", on: one) == pins1)
        try await two.stop()
        try await one.stop()
    }

    /// A claim entered on one node is used on the other, once; wrong label secrets tried on one node lock the device
    /// out on the other; the lock-out ends on both. The database holds no setup secret in the clear.
    @Test func claimsAndLockOutsHoldAcrossNodes() async throws {
        let (one, two, location) = try await Self.twoNodes {
            $0.pairingFreeAttempts = 2
            $0.pairingLockoutSeconds = 15  // long enough for a loaded run to try within it (see ReviewFindingsTests)
        }
        let identity = NoiseDH.p256.generateKeyPair()
        let id = try DeviceID("cl-pair-1")
        let secret = [UInt8](repeating: 8, count: 16)
        let label = try PairingLabel(
            suite: .p256AESGCMSHA256, deviceID: id, publicKey: identity.publicKey, setupSecret: secret)
        let wrongSecret = try PairingLabel(
            suite: .p256AESGCMSHA256, deviceID: id, publicKey: identity.publicKey,
            setupSecret: [UInt8](repeating: 3, count: 16))
        #expect(try await one.operatorRequest("POST", "/v1/pairing/claims", json: ["label": label.text]).status == 201)
        #expect(try await two.server.store.pendingClaims(at: Date()).map(\.device) == [id], "node 2 sees the claim")
        let sealed = try #require(try await two.server.store.claim(of: id, at: Date())).sealedLabel
        #expect(
            !(0...(sealed.count - secret.count)).contains { Array(sealed[$0..<$0 + secret.count]) == secret }
                && !String(decoding: sealed, as: UTF8.self).contains(label.text),
            "the setup secret is sealed in the database")

        // The device learns of a wrong secret first (it cannot open message 3); node 1 counts it once the device
        // closes the connection, and only then releases the claim. A second attempt made before the release finds
        // the claim held (refused, and no offence of its own), so each attempt waits for its count and then for the
        // claim to be free (probed by holding and releasing it). The client waits long enough for node 1 to reach the
        // failed proof on a loaded machine: a client that gives up first has proved nothing, which is not counted.
        for attempt in 1...2 {
            let result = try? await PairingClient.pair(
                host: "127.0.0.1", port: one.pairingPort, label: wrongSecret, identityKey: identity,
                timeout: .seconds(60), localAddress: "127.0.0.3")
            #expect(result == nil)
            let counted = try await Self.within(10) {
                try await two.server.store.pairingFailures(of: id)?.count == attempt
            }
            #expect(counted != nil, "failure \(attempt) counted where every node reads it")
            let released = try await Self.within(10) {
                guard try await two.server.store.holdClaim(of: id, holder: "probe", until: Date() + 5, at: Date())
                else { return false }
                try await two.server.store.releaseClaim(of: id, holder: "probe")
                return true
            }
            #expect(released != nil, "failure \(attempt) released the claim")
        }
        let locked = try? await PairingClient.pair(
            host: "127.0.0.1", port: two.pairingPort, label: label, identityKey: identity, timeout: .seconds(12))
        #expect(locked == nil, "two failures on node 1 lock the device out on node 2")
        let refusal = try await Self.within(5) {
            try await two.securityEvents().contains { $0.kind == "pairing-failed" && $0.detail.contains("lockedOut") }
        }
        #expect(refusal != nil, "node 2 recorded the lock-out refusal")

        try await Task.sleep(for: .milliseconds(15_300))
        let paired = try await PairingClient.pair(
            host: "127.0.0.1", port: two.pairingPort, label: label, identityKey: identity)
        #expect(!paired.credentials.certificateDER.isEmpty, "node 2 pairs on node 1's claim once the lock-out ends")
        let again = try? await PairingClient.pair(
            host: "127.0.0.1", port: one.pairingPort, label: label, identityKey: identity, timeout: .seconds(5))
        #expect(again == nil, "the claim was used: node 1 refuses it")
        #expect(try await one.server.store.pendingClaims(at: Date()).isEmpty)
        #expect(try await one.server.store.pairingFailures(of: id) == nil, "a pairing clears the failures")
        #expect(try await one.server.store.device(id)?.status == .active)
        _ = location
        try await two.stop()
        try await one.stop()
    }

    /// MQTT across nodes: a fleet subscriber on node 2 receives what a device publishes on node 1 (QoS 1, in the
    /// publisher's order), and a command sent through node 2's operator API reaches the device connected to node 1.
    /// The subscribers use a 10 s keep-alive and stay silent: a message that never comes ends the wait at 15 s.
    @Test func mqttMessagesAndCommandsCrossNodes() async throws {
        let (one, two, _) = try await Self.twoNodes()
        let device = try await one.enroll("cl-mq")
        try ClusterTests.shareOperatorKey(from: one, to: two)
        let fleetClient = try two.operatorClient()
        let topic = try TopicName("devices/cl-mq/telemetry")
        let received = try await MQTTClientConnection.withConnection(
            host: "127.0.0.1", port: two.mqttPort, tls: try fleetClient.credentials.tlsConfiguration(),
            clientID: "fleet", version: .v5, keepAlive: 120
        ) { fleet, reason -> [String] in
            #expect(reason == 0)
            try await fleet.send(
                .subscribe(
                    packetID: 1,
                    subscriptions: [Subscription(filter: try TopicFilter("devices/+/telemetry"), qos: .atLeastOnce)],
                    properties: .init()))
            guard case .suback(1, [1], _) = try await fleet.next() else {
                Issue.record("no SUBACK")
                return []
            }
            // A subscriber on node 1 too: it gets each message once (node 1 does not deliver its own again).
            let local = try await MQTTClientConnection.withConnection(
                host: "127.0.0.1", port: one.mqttPort, tls: try fleetClient.credentials.tlsConfiguration(),
                clientID: "fleet-1", version: .v5, keepAlive: 120
            ) { fleet1, _ -> [String] in
                try await fleet1.send(
                    .subscribe(
                        packetID: 1,
                        subscriptions: [
                            Subscription(filter: try TopicFilter("devices/+/telemetry"), qos: .atLeastOnce)
                        ],
                        properties: .init()))
                guard case .suback(1, [1], _) = try await fleet1.next() else { return [] }
                let acknowledged = try await MQTTBrokerTests.connect(one, device) { mqtt, _ in
                    var codes: [ReasonCode] = []
                    for n in 1...20 {
                        codes.append(
                            try await mqtt.publishAcknowledged(topic: topic, payload: Array(#"{"n":\#(n)}"#.utf8)))
                    }
                    return codes
                }
                #expect(acknowledged == Array(repeating: 0, count: 20))
                var received: [String] = []
                while received.count < 21, let packet = try await fleet1.next() {
                    guard case .publish(let message) = packet else { continue }
                    if let id = message.packetID {
                        try await fleet1.send(.puback(packetID: id, reasonCode: 0, properties: .init()))
                    }
                    received.append(String(decoding: message.payload, as: UTF8.self))
                    if received.count == 20 {
                        // Then the stream ends: a duplicate already sent is read first and counted.
                        try await fleet1.send(.disconnect(reasonCode: 0, properties: .init()))
                    }
                }
                return received
            }
            #expect(local == (1...20).map { #"{"n":\#($0)}"# }, "node 1's subscriber: each once, in order")
            var received: [String] = []
            while received.count < 20, let packet = try await fleet.next() {
                guard case .publish(let message) = packet else { continue }
                if let id = message.packetID {
                    try await fleet.send(.puback(packetID: id, reasonCode: 0, properties: .init()))
                }
                #expect(message.topic == topic && message.qos == .atLeastOnce)
                received.append(String(decoding: message.payload, as: UTF8.self))
            }
            return received
        }
        #expect(received == (1...20).map { #"{"n":\#($0)}"# }, "each once, in the publisher's order")

        // The device, on node 1, subscribes to its commands; the operator sends one through node 2.
        let command = try await Self.command(to: device, id: "cl-mq", on: one, through: two, delay: 5)
        #expect(command == #"devices/cl-mq/commands/reboot {"delay":5}"#)
        try await two.stop()
        try await one.stop()
    }

    /// MQTT 5.0 §4.8.2 across nodes: a shared subscription with a member on each node gets each message once,
    /// whichever node it was published on, the nodes taking turns (the messages published on either node reach both
    /// members); once the member on node 2 has left, node 2's messages go to the member on node 1. (Without the
    /// placement each node gives every message to its own member: each arrives twice; without what a node knows of
    /// the other's group, each keeps its own messages.)
    @Test(.timeLimit(.minutes(4))) func aSharedSubscriptionAcrossNodesGetsEachMessageOnce() async throws {
        let (one, two, location) = try await Self.twoNodes {
            $0.gateway.deviceBurst = 100
            $0.gateway.routeBurst = 100
        }
        let device = try await one.enroll("cl-sh")
        try Self.shareOperatorKey(from: one, to: two)
        let client = try one.operatorClient()
        let shared = try TopicFilter("$share/workers/devices/+/telemetry")
        let store = try await PostgresHubStore(location: location)
        /// How many live nodes announced a member of the group.
        func announcing() async throws -> Int {
            try await store.hubNodes().filter { !$0.stopped && $0.node.shares.contains("$share/workers/") }.count
        }
        /// Whether `node` knows the other node's group (it read the announcement).
        func knowsTheOther(_ node: TestHub, _ count: Int) async -> Bool {
            await node.server.broker.othersShared.values.filter { $0[shared] != nil }.count == count
        }
        /// Reads (acknowledging) until both end markers came, one published through each node after the messages:
        /// every message routed before them has arrived. The telemetry payloads read.
        func readToTheEnd(_ mqtt: MQTTClientConnection, markers: Int) async throws -> [String] {
            var payloads: [String] = []
            var ends = Set<String>()
            while ends.count < markers, payloads.count < 100,
                let payload = try await MQTTPersistenceTests.receive(1, mqtt).first
            {
                if payload.hasPrefix(#"{"end""#) { ends.insert(payload) } else { payloads.append(payload) }
            }
            return payloads
        }
        func publishThenMark(_ range: ClosedRange<Int>, on nodes: [TestHub], round: Int) async throws {
            let each = range.count / nodes.count
            for (index, node) in nodes.enumerated() {
                let first = range.lowerBound + index * each
                try await MQTTPersistenceTests.publish(node, device, (first..<(first + each)).map { #"{"n":\#($0)}"# })
            }
            for (index, node) in [one, two].enumerated() {
                let code = try await MQTTBrokerTests.connect(node, device) { mqtt, _ in
                    try await mqtt.publishAcknowledged(
                        topic: try TopicName("devices/cl-sh/state"),
                        payload: Array(#"{"end":"\#(round)-\#(index)"}"#.utf8))
                }
                #expect(code == 0)
            }
        }
        let state = try TopicFilter("devices/+/state")
        try await MQTTPersistenceTests.fleet(one, client, clientID: "w1", cleanStart: true, expiry: 0) { w1, _ in
            try await MQTTPersistenceTests.subscribe(w1, shared)
            try await MQTTPersistenceTests.subscribe(w1, state)
            let (first, second) = try await MQTTPersistenceTests.fleet(
                two, client, clientID: "w2", cleanStart: true, expiry: 0
            ) { w2, _ -> ([String], [String]) in
                try await MQTTPersistenceTests.subscribe(w2, shared)
                try await MQTTPersistenceTests.subscribe(w2, state)
                #expect(try await Self.within(20) { try await announcing() == 2 } != nil, "both nodes announce")
                #expect(
                    try await Self.within(20) {
                        let first = await knowsTheOther(one, 1)
                        let second = await knowsTheOther(two, 1)
                        return first && second
                    } != nil, "each node knows the other's group")
                try await publishThenMark(1...10, on: [one], round: 1)
                try await publishThenMark(11...20, on: [two], round: 2)
                return (try await readToTheEnd(w1, markers: 4), try await readToTheEnd(w2, markers: 4))
            }
            let all = (1...20).map { #"{"n":\#($0)}"# }
            #expect((first + second).sorted() == all.sorted(), "each message once: \(first) \(second)")
            for published in [Set(all.prefix(10)), Set(all.suffix(10))] {
                #expect(
                    !published.isDisjoint(with: first) && !published.isDisjoint(with: second),
                    "each node's messages reach both members in turn: \(first) \(second)")
            }
            // w2 left: node 2 says so, and the messages published there go to w1.
            #expect(try await Self.within(20) { try await announcing() == 1 } != nil, "node 2 no longer announces")
            #expect(try await Self.within(20) { await knowsTheOther(one, 0) } != nil, "node 1 hears of it")
            try await publishThenMark(21...30, on: [two, one], round: 3)
            #expect(try await readToTheEnd(w1, markers: 2).sorted() == (21...30).map { #"{"n":\#($0)}"# }.sorted())
        }
        try await store.close()
        try await one.stop()
        try await two.stop()
    }

    /// One node on SQLite writes no heartbeat while it runs, and still lists itself up, with its listeners.
    @Test func aSingleNodeListsItselfUp() async throws {
        let hub = try await TestHub.start { $0.clusterNodeName = "solo" }
        let result = try await hub.operatorRequest("GET", "/v1/nodes")
        #expect(result.status == 200)
        let nodes = try JSONSerialization.jsonObject(with: Data(result.body)) as? [[String: Any]] ?? []
        #expect(nodes.count == 1)
        #expect(nodes.first?["name"] as? String == "solo" && nodes.first?["status"] as? String == "up")
        #expect(nodes.first?["thisNode"] as? Bool == true)
        #expect((nodes.first?["addresses"] as? String)?.contains("mqtt=127.0.0.1:\(hub.mqttPort)") == true)
        try await hub.stop()
    }

    /// A node started with a configured name (`cluster.nodeName`) ends its earlier runs that never said they stopped
    /// (it was killed): the other nodes stop counting on them at once, not after 10 s of silence. Other nodes' runs
    /// are left alone.
    @Test func aNamedNodeEndsItsEarlierKilledRun() async throws {
        let location = try await PostgresTestServer.freshDatabase()
        let store = try await PostgresHubStore(location: location)
        func run(_ holder: String, _ name: String) -> HubNodeRecord {
            HubNodeRecord(holder: holder, name: name, addresses: "", version: "0", startedAt: Date())
        }
        try await store.markAlive(run("killed", "node-x"))
        try await store.markAlive(run("other", "node-y"))
        let hub = try await TestHub.start(store: try await PostgresHubStore(location: location)) {
            $0.clusterNodeName = "node-x"
        }
        let nodes = Dictionary(
            uniqueKeysWithValues: try await store.hubNodes().map { ($0.node.holder, ($0.node.name, $0.stopped)) })
        #expect(nodes["killed"]?.1 == true, "the earlier run of node-x is over")
        #expect(nodes["other"]?.1 == false, "another node's run is left alone")
        #expect(nodes.values.filter { $0.0 == "node-x" && !$0.1 }.count == 1, "the new run is up: \(nodes)")
        try await hub.stop()
        try await store.close()
    }

    /// A publisher that pipelines QoS 1 messages (many in flight, up to the hub's Receive Maximum) on node 1: a
    /// subscriber on node 2 gets them in the order they were sent (MQTT 5.0 §4.6), not in the order their store
    /// writes happened to be scheduled.
    @Test func pipelinedMessagesReachAnotherNodeInTheirOrder() async throws {
        let (one, two, _) = try await Self.twoNodes {
            $0.gateway.deviceRate = 10_000
            $0.gateway.deviceBurst = 10_000
            $0.gateway.routeRate = 10_000
            $0.gateway.routeBurst = 10_000
        }
        let device = try await one.enroll("cl-pipe")
        try ClusterTests.shareOperatorKey(from: one, to: two)
        let topic = try TopicName("devices/cl-pipe/telemetry")
        let count = 400
        let received = try await MQTTClientConnection.withConnection(
            host: "127.0.0.1", port: two.mqttPort, tls: try two.operatorClient().credentials.tlsConfiguration(),
            clientID: "fleet-pipe", version: .v5, keepAlive: 120
        ) { fleet, _ -> [Int] in
            try await fleet.send(
                .subscribe(
                    packetID: 1,
                    subscriptions: [Subscription(filter: try TopicFilter("devices/+/telemetry"), qos: .atLeastOnce)],
                    properties: .init()))
            guard case .suback(1, [1], _) = try await fleet.next() else { return [] }
            let codes = try await MQTTBrokerTests.connect(one, device) { mqtt, _ -> [ReasonCode] in
                var codes: [ReasonCode] = []
                // Windows of 32 PUBLISH packets written back to back, then their PUBACKs.
                for start in stride(from: 1, through: count, by: 32) {
                    let window = start...min(count, start + 31)
                    for n in window {
                        try await mqtt.send(
                            .publish(
                                PublishPacket(
                                    topic: topic, payload: Array(#"{"n":\#(n)}"#.utf8), qos: .atLeastOnce,
                                    packetID: UInt16(n))))
                    }
                    var answered = 0
                    while answered < window.count, let packet = try await mqtt.next() {
                        if case .puback(_, let code, _) = packet {
                            codes.append(code)
                            answered += 1
                        }
                    }
                }
                return codes
            }
            #expect(codes.count == count && codes.allSatisfy { $0 == 0 }, "\(Set(codes))")
            var numbers: [Int] = []
            while numbers.count < count, let packet = try await fleet.next() {
                guard case .publish(let message) = packet else { continue }
                if let id = message.packetID {
                    try await fleet.send(.puback(packetID: id, reasonCode: 0, properties: .init()))
                }
                let text = String(decoding: message.payload, as: UTF8.self)
                numbers.append(Int(text.dropFirst(5).dropLast()) ?? -1)
            }
            return numbers
        }
        #expect(
            received == Array(1...count),
            "out of order at \(zip(received, 1...).first { $0 != $1 }.map { "\($0)" } ?? "-")")
        try await two.stop()
        try await one.stop()
    }

    /// A node whose clock is minutes off the database server's refuses to start and says why; one on time starts.
    @Test func aNodeWhoseClockIsOffRefusesToServe() async throws {
        let store = try await PostgresHubStore(location: try await PostgresTestServer.freshDatabase())
        try await HubServer.checkClock(store: store, now: Date(), limit: 30)
        for offset in [300.0, -300.0] {
            await #expect {
                try await HubServer.checkClock(store: store, now: Date() + offset, limit: 30)
            } throws: { error in
                "\(error)".contains("clock is \(Int(offset)) s off")
                    || "\(error)".contains("clock is \(Int(offset) + 1) s off")
                    || "\(error)".contains("clock is \(Int(offset) - 1) s off")
            }
        }
        try await store.close()
    }
}

/// The node bundle: what it carries, and what it refuses.
@Suite struct NodeBundleTests {
    @Test func aBundleOpensOnlyWithItsPassphraseAndUnchanged() async throws {
        let hub = try await TestHub.start()
        try await hub.stop(keepData: true)
        let files = try NodeBundle.files(in: hub.directory)
        #expect(Set(files.keys).isSuperset(of: ["ca.crt", "ca.key", "audit.key", "hub-pair-p256.key"]))
        #expect(
            files["hub.key"] == nil && files["hub-backup.key"] == nil && files["node.id"] == nil,
            "each node makes its own TLS keys and id")
        #expect(files["operators/admin.key"] == nil, "an operator's own key never travels")
        let bundle = try NodeBundle.seal(files, passphrase: "a long enough passphrase")
        let text = String(decoding: bundle, as: UTF8.self)
        #expect(!text.contains("PRIVATE KEY") && !text.contains(files["audit.key"] ?? "-"), "the keys are encrypted")
        #expect(try NodeBundle.open(bundle, passphrase: "a long enough passphrase") == files)
        #expect(throws: NodeBundle.Failure.self) { try NodeBundle.open(bundle, passphrase: "another passphrase!") }
        var changed = bundle
        let sealedStart = try #require(text.range(of: "\"sealed\":\"")).upperBound.utf16Offset(in: text)
        changed[sealedStart + 20] =
            changed[sealedStart + 20] == UInt8(ascii: "A") ? UInt8(ascii: "B") : UInt8(ascii: "A")
        #expect(throws: NodeBundle.Failure.self) {
            try NodeBundle.open(changed, passphrase: "a long enough passphrase")
        }
        #expect(throws: NodeBundle.Failure.self) { try NodeBundle.seal(files, passphrase: "short") }
        // A node's own CA is never replaced; a bundle with other files is refused.
        #expect(throws: NodeBundle.Failure.self) { try NodeBundle.install(files, into: hub.directory) }
        let target = try temporaryDirectory("join") + "/node"
        #expect(throws: NodeBundle.Failure.self) {
            try NodeBundle.install(files.merging(["../evil": "x"]) { a, _ in a }, into: target)
        }
        // A bundle made by 0.9 carried the TLS keys: they are left out.
        try NodeBundle.install(files.merging(["hub.key": "an old node's key"]) { a, _ in a }, into: target)
        #expect(!FileManager.default.fileExists(atPath: target + "/hub.key"))
        var info = stat()
        #expect(stat(target + "/ca.key", &info) == 0 && info.st_mode & 0o777 == 0o600)
        #expect(stat(target, &info) == 0 && info.st_mode & 0o777 == 0o700)
    }
}

/// What a hub does when PostgreSQL goes away under it, with a real server stopped and started again.
@Suite(.serialized) struct DatabaseOutageTests {
    @Test func aStoppedDatabaseGets503NothingIsAcknowledgedAndTheHubRecovers() async throws {
        let (directory, location) = try PostgresTestServer.privateServer()
        defer {
            _ = PostgresTestServer.stop(directory)
            try? FileManager.default.removeItem(atPath: directory)
        }
        let hub = try await TestHub.start(store: try await PostgresHubStore(location: location))
        let device = try await hub.enroll("outage-1")
        let other = try await hub.enroll("outage-2")
        func send(_ n: Int) async throws -> HTTPResult {
            try await device.request(port: hub.devicePort, "POST", "/v1/telemetry", body: Array(#"{"n":\#(n)}"#.utf8))
        }
        #expect(try await send(1).status == 202)

        // A connection open when the database goes: its PUBLISH is not acknowledged, and DISCONNECT 0x89 Server busy
        // ends the connection (the client keeps the message and sends it again once connected). Another
        // device's new connection is refused (CONNACK 0x88 Server unavailable): a session of its that may be stored
        // cannot be taken up, and it is not handed an empty one in its place.
        let (mqtt, connectRefused) = try await MQTTBrokerTests.connect(hub, device) { mqtt, _ in
            #expect(PostgresTestServer.stop(directory))
            let refusedAt = ContinuousClock.now
            let refused = try await send(2)
            let answeredAfter = ContinuousClock.now - refusedAt
            print("503 after \(answeredAfter)")
            #expect(answeredAfter < .seconds(15), "the pool's own retries would take a minute or more")
            #expect(refused.status == 503, "\(refused.status) \(String(decoding: refused.body, as: UTF8.self))")
            #expect(refused.header("Content-Type")?.hasPrefix("application/problem+json") == true)
            let published = try await mqtt.publishAcknowledged(
                topic: try TopicName("devices/outage-1/telemetry"), payload: Array(#"{"n":3}"#.utf8))
            let connected = try await MQTTBrokerTests.connect(
                hub, other, configure: MQTTBrokerTests.persistent, MQTTBrokerTests.reason)
            return (published, connected)
        }
        #expect(mqtt == 0x89, "a PUBLISH that was not stored is not acknowledged; the connection ends")
        #expect(connectRefused == .serverUnavailable)

        // The database returns: the hub, still up, stores again without a restart.
        #expect(PostgresTestServer.resume(directory))
        let clock = ContinuousClock()
        let start = clock.now
        var status = 0
        while clock.now - start < .seconds(30) {
            status = try await send(4).status
            if status == 202 { break }
            try await Task.sleep(for: .milliseconds(200))
        }
        #expect(status == 202, "the hub did not recover within 30 s")
        print("recovered \(clock.now - start) after the database returned")
        let stored = try await hub.server.store.telemetry(of: try DeviceID("outage-1"), limit: 10).map {
            String(decoding: $0.body, as: UTF8.self)
        }
        #expect(!stored.contains(#"{"n":2}"#) && !stored.contains(#"{"n":3}"#))
        #expect(stored.contains(#"{"n":1}"#) && stored.contains(#"{"n":4}"#))
        try await hub.stop()
    }
}
