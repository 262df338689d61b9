import Core
import Foundation
import Hub
import HubClient
import MQTT
import PostgresStore
import PostgresTestSupport
import Store
import Synchronization
import Testing

/// Tests of the real `bulwark` binary: start-up refusals, signals, and durability across SIGKILL.
@Suite(.serialized) struct HubProcessTests {
    /// `BULWARK_BIN`, or the debug build next to this package (scripts/test builds it first).
    static var binary: String {
        get throws {
            if let path = ProcessInfo.processInfo.environment["BULWARK_BIN"] { return path }
            let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                .deletingLastPathComponent()
            let path = root.appendingPathComponent(".build/debug/bulwark").path
            guard FileManager.default.isExecutableFile(atPath: path) else {
                throw ClientError("no bulwark binary at \(path): run `swift build` first or set BULWARK_BIN")
            }
            return path
        }
    }

    @Test func refusesADatabaseURLWithAPasswordWithoutEchoingIt() async throws {
        let directory = try temporaryDirectory("refuse-url")
        let result = try await run(
            try Self.binary, ["serve", "--data", directory],
            environment: ["BULWARK_DATABASE_URL": "postgres://bulwark:s3cr3t-pw@db.internal/bulwark"], timeout: 20)
        #expect(result.status == 78)
        #expect(result.stderr.contains("database.passwordFile"))
        #expect(!result.stderr.contains("s3cr3t-pw") && !result.stdout.contains("s3cr3t-pw"))
    }

    @Test func refusesAConfigFileWhoseDatabaseURLHoldsAPassword() async throws {
        let directory = try temporaryDirectory("refuse-file")
        let config = directory + "/hub.json"
        try #"{"database":{"url":"postgres://u:hunter2@127.0.0.1/db"}}"#.write(
            toFile: config, atomically: true, encoding: .utf8)
        let result = try await run(
            try Self.binary, ["serve", "--data", directory + "/data", "--config", config], timeout: 20)
        #expect(result.status == 78)
        #expect(result.stderr.contains("BULWARK_DATABASE_PASSWORD_FILE"))
        #expect(!result.stderr.contains("hunter2"))
    }

    @Test(arguments: [
        "postgres://bulwark@db.internal/bulwark?password=s3cr3t-pw",
        "postgresql://db.internal/bulwark?sslmode=require&PASSWORD=s3cr3t-pw",
        "postgres://:s3cr3t-pw@db.internal/bulwark",
    ])
    func refusesPasswordsAnywhereInTheDatabaseURL(_ url: String) async throws {
        let directory = try temporaryDirectory("refuse-url-forms")
        let result = try await run(
            try Self.binary, ["serve", "--data", directory], environment: ["BULWARK_DATABASE_URL": url], timeout: 20)
        #expect(result.status == 78)
        #expect(result.stderr.contains("database.passwordFile"))
        #expect(!result.stderr.contains("s3cr3t-pw"))
    }

    @Test func refusesAKeyFileReadableByOthersAndSaysHowToFixIt() async throws {
        let directory = try temporaryDirectory("refuse-mode")
        let hub = try HubProcess(binary: try Self.binary, directory: directory)
        _ = try await hub.waitForPorts()
        hub.terminate()
        #expect(await hub.exitStatus() == 0)
        chmod(directory + "/ca.key", 0o644)
        let result = try await run(try Self.binary, ["serve", "--data", directory], timeout: 20)
        #expect(result.status == 78)
        #expect(result.stderr.contains("chmod 600 \(directory)/ca.key"))
        chmod(directory + "/ca.key", 0o600)
        chmod(directory + "/operators/admin.key", 0o640)
        let operatorKey = try await run(try Self.binary, ["serve", "--data", directory], timeout: 20)
        #expect(operatorKey.status == 78)
        #expect(operatorKey.stderr.contains("operators/admin.key"))
    }

    @Test func sigtermStopsCleanly() async throws {
        let directory = try temporaryDirectory("sigterm")
        let hub = try HubProcess(binary: try Self.binary, directory: directory)
        _ = try await hub.waitForPorts()
        hub.terminate()
        #expect(await hub.exitStatus() == 0)
        #expect(hub.log.contains("hub stopped"))
    }

    @Test func sigkillLosesNoAcknowledgedTelemetry() async throws {
        try await streamThenStop(signal: SIGKILL, expectCleanExit: false)
    }

    /// The same on PostgreSQL (`database.url` with TLS verify-full, the password in a file): a 202 is a committed
    /// transaction in PostgreSQL, so kill -9 of the hub loses none.
    @Test func sigkillOnPostgreSQLLosesNoAcknowledgedTelemetry() async throws {
        try await streamThenStop(signal: SIGKILL, expectCleanExit: false, database: try await Self.postgres())
    }

    /// A hub whose database refuses it (a wrong password, a server certificate from another CA) does not start,
    /// says why in one line, and never prints the password.
    @Test func aHubThatPostgreSQLRefusesSaysWhyAndStops() async throws {
        let (location, environment) = try await Self.postgres()
        let directory = try temporaryDirectory("pg-refused")
        let password = "wrong-\(UUID())"
        try password.write(toFile: directory + "/pw", atomically: true, encoding: .utf8)
        var wrongPassword = environment
        wrongPassword["BULWARK_DATABASE_PASSWORD_FILE"] = directory + "/pw"
        let refused = try await run(
            try Self.binary, ["serve", "--data", directory + "/a"], environment: wrongPassword, timeout: 30)
        #expect(refused.status == 78, "\(refused.stderr)")
        #expect(refused.stderr.contains("PostgreSQL at \(location.host):\(location.port)"), "\(refused.stderr)")
        #expect(refused.stderr.contains("28P01"), "\(refused.stderr)")
        #expect(!(refused.stderr + refused.stdout).contains(password))

        let otherCA = try await run(
            "/usr/bin/env",
            [
                "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days",
                "1", "-subj", "/CN=Another CA", "-keyout", directory + "/other.key", "-out", directory + "/other.crt",
            ])
        #expect(otherCA.status == 0)
        var wrongCA = environment
        wrongCA["BULWARK_DATABASE_CA_FILE"] = directory + "/other.crt"
        let untrusted = try await run(
            try Self.binary, ["serve", "--data", directory + "/a"], environment: wrongCA, timeout: 30)
        #expect(untrusted.status == 78, "\(untrusted.stderr)")
        #expect(untrusted.stderr.lowercased().contains("certificate"), "\(untrusted.stderr)")
    }

    /// `bulwark node bundle` and `node join`: the commands a second node is made with.
    @Test func nodeBundleAndJoinMakeASecondNodesDataDirectory() async throws {
        let hub = try await TestHub.start()
        try await hub.stop(keepData: true)
        let work = try temporaryDirectory("node-cli")
        try "a passphrase for the bundle\n".write(toFile: work + "/pass", atomically: true, encoding: .utf8)
        let bundled = try await run(
            try Self.binary,
            [
                "node", "bundle", "--data", hub.directory, "--out", work + "/node.bundle", "--passphrase-file",
                work + "/pass",
            ])
        #expect(bundled.status == 0, "\(bundled.stderr)")
        let joined = try await run(
            try Self.binary,
            [
                "node", "join", "--data", work + "/node2", "--from", work + "/node.bundle", "--passphrase-file",
                work + "/pass",
            ])
        #expect(joined.status == 0, "\(joined.stderr)")
        #expect(
            FileManager.default.contents(atPath: work + "/node2/ca.key")
                == FileManager.default.contents(atPath: hub.directory + "/ca.key"))
        try "the wrong passphrase\n".write(toFile: work + "/wrong", atomically: true, encoding: .utf8)
        let refused = try await run(
            try Self.binary,
            [
                "node", "join", "--data", work + "/node3", "--from", work + "/node.bundle", "--passphrase-file",
                work + "/wrong",
            ])
        #expect(refused.status == 1 && refused.stderr.contains("wrong passphrase"), "\(refused.stderr)")
        #expect(!FileManager.default.fileExists(atPath: work + "/node3/ca.key"))
    }

    /// Two real `bulwark` processes on one database, the second made with `node bundle` / `node join`. Devices
    /// stream to node 1 (HTTP and MQTT, each told both nodes' addresses); node 1 is killed with SIGKILL under that
    /// load; every device goes on through node 2, and every message either node acknowledged is in the database.
    @Test func killMinusNineOfOneNodeMovesItsDevicesToTheOtherAndLosesNothing() async throws {
        let (location, database) = try await Self.postgres()
        let work = try temporaryDirectory("two-nodes")
        // The nodes are made with `node init` and `node join --database`: their DATA/node.json names the database and
        // their names, and `serve --data DIR` needs nothing else.
        let unlimited = Self.unlimitedRates
        func databaseOptions(_ name: String) -> [String] {
            [
                "--database", database["BULWARK_DATABASE_URL"] ?? "", "--database-password-file",
                database["BULWARK_DATABASE_PASSWORD_FILE"] ?? "", "--database-ca-file",
                database["BULWARK_DATABASE_CA_FILE"] ?? "", "--name", name,
            ]
        }
        let initialized = try await run(
            try Self.binary, ["node", "init", "--data", work + "/one"] + databaseOptions("node-one"))
        #expect(initialized.status == 0, "\(initialized.stderr)")
        let again = try await run(
            try Self.binary, ["node", "init", "--data", work + "/other"] + databaseOptions("node-other"))
        #expect(again.status == 1 && again.stderr.contains("already belongs to a hub"), "\(again.stderr)")
        #expect(!FileManager.default.fileExists(atPath: work + "/other"), "what the refused init made is removed")
        let one = try HubProcess(binary: try Self.binary, directory: work + "/one", environment: unlimited)
        let onePorts = try await one.waitForPorts()
        try "a passphrase for the bundle\n".write(toFile: work + "/pass", atomically: true, encoding: .utf8)
        for arguments in [
            ["node", "bundle", "--data", work + "/one", "--out", work + "/node.bundle"],
            ["node", "join", "--data", work + "/two", "--from", work + "/node.bundle"] + databaseOptions("node-two"),
        ] {
            let result = try await run(try Self.binary, arguments + ["--passphrase-file", work + "/pass"])
            #expect(result.status == 0, "\(result.stderr)")
        }
        let two = try HubProcess(binary: try Self.binary, directory: work + "/two", environment: unlimited)
        let twoPorts = try await two.waitForPorts()
        // Node 2 made TLS keys of its own; both nodes' pins are in the store (`bulwark node pins`).
        let presented = (
            await TLSKeyRotation.presentedPin(host: "127.0.0.1", port: onePorts.device),
            await TLSKeyRotation.presentedPin(host: "127.0.0.1", port: twoPorts.device)
        )
        #expect(presented.0 != nil && presented.1 != nil && presented.0 != presented.1, "a key of each node's own")
        let pinsListing = try await run(try Self.binary, ["node", "pins", "--data", work + "/one"])
        #expect(pinsListing.status == 0, "\(pinsListing.stderr)")
        let pinRows = pinsListing.stdout.split(separator: "\n").map(String.init)
        for (name, pin) in [("node-one", presented.0), ("node-two", presented.1)] {
            #expect(
                pinRows.contains { $0.contains("  \(name)  ") && $0.contains(Data(pin ?? []).base64EncodedString()) },
                "\(pinsListing.stdout)")
        }
        let unknown = try await run(
            try Self.binary, ["node", "forget", "--data", work + "/one", "0123"], environment: database)
        #expect(unknown.status == 1 && unknown.stderr.contains("no node 0123"), "\(unknown.stderr)")
        let operatorCredentials = try ClientCredentials(
            certificateFile: work + "/one/operators/admin.crt", keyFile: work + "/one/operators/admin.key",
            caFile: work + "/one/ca.crt")
        /// `GET /v1/nodes` on node 2: name → (status, addresses, this node).
        func listedNodes() async throws -> [String: (status: String, addresses: String, this: Bool)] {
            try await Task.sleep(for: .milliseconds(200))  // polled: a new connection each time, within the limits
            return try await HTTPSClient.withConnection(
                host: "127.0.0.1", port: twoPorts.operator, tls: try operatorCredentials.tlsConfiguration()
            ) { connection in
                let result = try await connection.send(method: "GET", path: "/v1/nodes", headers: [], body: [])
                var nodes: [String: (status: String, addresses: String, this: Bool)] = [:]
                for case let node as [String: Any] in try JSONSerialization.jsonObject(with: Data(result.body))
                    as? [Any] ?? []
                {
                    nodes[node["name"] as? String ?? "?"] = (
                        node["status"] as? String ?? "?", node["addresses"] as? String ?? "",
                        node["thisNode"] as? Bool ?? false
                    )
                }
                return nodes
            }
        }
        // Both nodes say they are up, with their listeners (recorded with the heartbeat after they bound).
        let listedInTime = try await ClusterTests.within(20) {
            let listed = try await listedNodes()
            return listed["node-one"]?.addresses.contains("mqtt=127.0.0.1:\(onePorts.mqtt)") == true
                && listed["node-two"]?.addresses.contains("device=127.0.0.1:\(twoPorts.device)") == true
        }
        #expect(listedInTime != nil, "both nodes are listed with their addresses")
        let listedBefore = try await listedNodes()
        #expect(listedBefore["node-one"]?.status == "up" && listedBefore["node-one"]?.this == false)
        #expect(listedBefore["node-two"]?.status == "up" && listedBefore["node-two"]?.this == true)
        var devices: [(String, ClientCredentials)] = []
        for index in 0..<4 {
            let id = "moving-\(index)"
            devices.append((id, try await enroll(id, operatorPort: onePorts.operator, operatorCredentials, work)))
        }

        let progress = FailoverProgress()
        let nodes = [(http: onePorts.device, mqtt: onePorts.mqtt), (http: twoPorts.device, mqtt: twoPorts.mqtt)]
        let deviceCount = devices.count
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (index, (id, credentials)) in devices.enumerated() {
                group.addTask {
                    // Each device starts on node 1 and, when its connection fails, tries the next address.
                    var node = 0
                    var sequence = 0
                    while !progress.stop.load(ordering: .relaxed) {
                        do {
                            if index % 2 == 0 {
                                try await HTTPSClient.withConnection(
                                    host: "127.0.0.1", port: nodes[node].http, tls: try credentials.tlsConfiguration()
                                ) { connection in
                                    while !progress.stop.load(ordering: .relaxed) {
                                        sequence += 1
                                        let body = #"{"n":\#(sequence)}"#
                                        let result = try await connection.send(
                                            method: "POST", path: "/v1/telemetry",
                                            headers: [("Content-Type", "application/json")], body: Array(body.utf8),
                                            signer: try credentials.signer())
                                        guard result.status == 202 else { throw ClientError("\(result.status)") }
                                        progress.acked(id, body)
                                    }
                                }
                            } else {
                                let topic = try TopicName("devices/\(id)/telemetry")
                                try await MQTTClientConnection.withConnection(
                                    host: "127.0.0.1", port: nodes[node].mqtt, tls: try credentials.tlsConfiguration(),
                                    clientID: id, version: .v5
                                ) { mqtt, reason in
                                    guard reason == 0 else { throw ClientError("CONNACK \(reason)") }
                                    while !progress.stop.load(ordering: .relaxed) {
                                        sequence += 1
                                        let body = #"{"n":\#(sequence)}"#
                                        let reason = try await mqtt.publishAcknowledged(
                                            topic: topic, payload: Array(body.utf8))
                                        guard reason == 0 else { throw ClientError("PUBACK \(reason)") }
                                        progress.acked(id, body)
                                    }
                                }
                            }
                        } catch {
                            node = (node + 1) % nodes.count
                            try await Task.sleep(for: .milliseconds(100))
                        }
                    }
                }
            }
            group.addTask {
                // Kill node 1 once it acknowledged a few hundred messages, then let every device send 20 more
                // through node 2 (each phase bounded to 60 s).
                let start = ContinuousClock.now
                func total() -> Int { progress.acknowledged.withLock { $0.values.map(\.all.count).reduce(0, +) } }
                while total() < 300 && ContinuousClock.now - start < .seconds(60) {
                    try await Task.sleep(for: .milliseconds(20))
                }
                one.kill()
                _ = await one.exitStatus()
                progress.killed.store(true, ordering: .relaxed)
                let killedAt = ContinuousClock.now
                progress.killedAt.withLock { $0 = killedAt }
                while ContinuousClock.now - killedAt < .seconds(60) {
                    let moved = progress.acknowledged.withLock { $0.values.filter { $0.afterKill >= 20 }.count }
                    if moved == deviceCount { break }
                    try await Task.sleep(for: .milliseconds(50))
                }
                progress.stop.store(true, ordering: .relaxed)
            }
            try await group.waitForAll()
        }
        _ = await one.exitStatus()
        // The killed node stops saying it is alive: it is listed down within 10 s (it beat every 5 s, and is down
        // after 10 s of silence); a little more is allowed for this poll. `bulwark node list` shows the same.
        let killedAt = try #require(progress.killedAt.withLock { $0 })
        // Each poll's start is noted: none begun 10.5 s or more after the kill may still say up (how long a poll
        // takes under load does not count against the node).
        var stillUpLate: [Duration] = []
        let down = try await ClusterTests.within(30) {
            let asked = ContinuousClock.now
            let status = try await listedNodes()["node-one"]?.status
            if status == "up", asked - killedAt >= .milliseconds(10_500) { stillUpLate.append(asked - killedAt) }
            return status == "down"
        }
        #expect(down != nil, "node 1 is listed down")
        #expect(stillUpLate.isEmpty, "node 1 still listed up \(stillUpLate) after the kill")
        #expect(try await listedNodes()["node-two"]?.status == "up")
        let listing = try await run(
            try Self.binary,
            [
                "node", "list", "--hub", "https://127.0.0.1:\(twoPorts.operator)", "--cert",
                work + "/one/operators/admin.crt", "--key", work + "/one/operators/admin.key", "--cacert",
                work + "/one/ca.crt",
            ])
        #expect(listing.status == 0, "\(listing.stderr)")
        let lines = listing.stdout.split(separator: "\n")
        #expect(lines.first?.contains("VERSION  LAST SEEN") == true, "\(listing.stdout)")
        // Node 2 beats every 5 s: its version, and a last heartbeat seconds ago.
        #expect(
            lines.contains {
                $0.hasPrefix("node-two *") && $0.contains(" \(BulwarkVersion.current) ")
                    && $0.range(of: #" [0-9]+ s ago "#, options: .regularExpression) != nil
            }, "\(listing.stdout)")
        #expect(lines.contains { $0.hasPrefix("node-two *") && $0.contains(" up ") }, "\(listing.stdout)")
        #expect(lines.contains { $0.hasPrefix("node-one ") && $0.contains(" down ") }, "\(listing.stdout)")
        two.terminate()
        #expect(await two.exitStatus() == 0)
        // Node 2 out of service: `node forget` withdraws its pins.
        let twoID = try String(contentsOfFile: work + "/two/node.id", encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let forgot = try await run(
            try Self.binary, ["node", "forget", "--data", work + "/one", twoID], environment: database)
        #expect(forgot.status == 0, "\(forgot.stderr)")
        let remaining = try await run(
            try Self.binary, ["node", "pins", "--data", work + "/one"], environment: database)
        #expect(remaining.stdout.split(separator: "\n").map { $0.contains("  node-one  ") } == [true])
        let sent = progress.acknowledged.withLock { $0 }
        let store = try await PostgresHubStore(location: location)
        for (id, _) in devices {
            let acked = sent[id]?.all ?? []
            #expect(acked.count - (sent[id]?.afterKill ?? 0) > 0, "\(id) was served by node 1 before the kill")
            #expect((sent[id]?.afterKill ?? 0) >= 20, "\(id) went on through node 2")
            let stored = Set(
                try await store.telemetry(of: try DeviceID(id), limit: 1_000_000).map {
                    String(decoding: $0.body, as: UTF8.self)
                })
            let lost = acked.subtracting(stored)
            #expect(lost.isEmpty, "\(id): \(lost.count) of \(acked.count) acknowledged messages lost")
        }
        let total = sent.values.map(\.all.count).reduce(0, +)
        print("acknowledged \(total), after the kill \(sent.values.map(\.afterKill).reduce(0, +))")
        try await store.close()
    }

    /// A fresh database on the tests' PostgreSQL server, and the hub's settings that name it.
    static func postgres() async throws -> (PostgresLocation, [String: String]) {
        let location = try await PostgresTestServer.freshDatabase()
        return (location, Self.settings(location))
    }

    /// The hub's settings that name a database (URL with verify-full, password file, CA file).
    static func settings(_ location: PostgresLocation) -> [String: String] {
        var environment = [
            "BULWARK_DATABASE_URL":
                "postgres://\(location.user)@\(location.host):\(location.port)/\(location.database)?sslmode=verify-full"
        ]
        environment["BULWARK_DATABASE_PASSWORD_FILE"] = location.passwordFile
        environment["BULWARK_DATABASE_CA_FILE"] = location.caFile
        return environment
    }

    /// PostgreSQL stopped while devices stream to a real hub process over HTTP, MQTT 5 and MQTT 3.1.1 (#14, faults):
    /// HTTP is answered 503 with a problem document; an open MQTT connection ends (DISCONNECT 0x89 Server busy on
    /// MQTT 5, a close on 3.1.1) and a new one is refused (CONNACK 0x88 / 0x03 Server unavailable); nothing that was
    /// not stored is acknowledged; the hub stays up and serves again by itself once the database is back, and every
    /// message it acknowledged, before, during or after, is in the database.
    @Test func postgreSQLStoppedUnderLoadIsRefusedLosesNothingAndTheHubRecovers() async throws {
        let (server, location) = try PostgresTestServer.privateServer()
        defer {
            _ = PostgresTestServer.stop(server)
            try? FileManager.default.removeItem(atPath: server)
        }
        let work = try temporaryDirectory("db-outage")
        let hub = try HubProcess(
            binary: try Self.binary, directory: work,
            environment: Self.unlimitedRates.merging(Self.settings(location)) { $1 })
        defer { #expect(hub.stop(within: 30), "the hub exits within 30 s of SIGTERM") }
        let ports = try await hub.waitForPorts()
        let operatorCredentials = try ClientCredentials(
            certificateFile: work + "/operators/admin.crt", keyFile: work + "/operators/admin.key",
            caFile: work + "/ca.crt")
        let kinds: [(id: String, version: ProtocolVersion?)] = [
            ("outage-http-0", nil), ("outage-http-1", nil), ("outage-mqtt5", .v5), ("outage-mqtt311", .v311),
        ]
        var devices: [(id: String, version: ProtocolVersion?, credentials: ClientCredentials)] = []
        for (id, version) in kinds {
            devices.append((id, version, try await enroll(id, operatorPort: ports.operator, operatorCredentials, work)))
        }
        let newcomerCredentials = try await enroll(
            "outage-new", operatorPort: ports.operator, operatorCredentials, work)
        let outage = OutageProgress()
        let ids = devices.map(\.id)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for device in devices {
                let device = device
                group.addTask {
                    var sequence = 0
                    while !outage.stop.load(ordering: .relaxed) {
                        do {
                            if let version = device.version {
                                try await Self.streamMQTT(device.id, version, device.credentials, ports.mqtt, outage) {
                                    sequence += 1
                                    return sequence
                                }
                            } else {
                                try await HTTPSClient.withConnection(
                                    host: "127.0.0.1", port: ports.device,
                                    tls: try device.credentials.tlsConfiguration()
                                ) { connection in
                                    while !outage.stop.load(ordering: .relaxed) {
                                        sequence += 1
                                        let body = #"{"n":\#(sequence)}"#
                                        let result = try await connection.send(
                                            method: "POST", path: "/v1/telemetry",
                                            headers: [("Content-Type", "application/json")], body: Array(body.utf8),
                                            signer: try device.credentials.signer())
                                        if result.status == 202 {
                                            outage.acked(device.id, body)
                                        } else {
                                            let problem =
                                                result.header("Content-Type")?.hasPrefix("application/problem+json")
                                                == true
                                            outage.saw(device.id, "HTTP \(result.status)\(problem ? " problem" : "")")
                                            try await Task.sleep(for: .milliseconds(100))
                                        }
                                    }
                                }
                            }
                        } catch {
                            try await Task.sleep(for: .milliseconds(100))
                        }
                    }
                }
            }
            group.addTask {
                defer { outage.stop.store(true, ordering: .relaxed) }
                func each(_ condition: (String) -> Bool, within seconds: Int) async throws -> Bool {
                    let end = ContinuousClock.now + .seconds(seconds)
                    while ContinuousClock.now < end {
                        if ids.allSatisfy(condition) { return true }
                        try await Task.sleep(for: .milliseconds(50))
                    }
                    return false
                }
                #expect(try await each({ outage.count($0, phase: 0) >= 20 }, within: 60), "every device streams")
                #expect(PostgresTestServer.stop(server))
                outage.phase.store(1, ordering: .relaxed)
                // Every device has been refused as its protocol says, and the hub is still running.
                // (A client the node holds the session of may connect again meanwhile: the node needs no database
                // for that. Its next PUBLISH ends the connection again.)
                let expected: [String: [String]] = [
                    "outage-http-0": ["HTTP 503 problem"], "outage-http-1": ["HTTP 503 problem"],
                    "outage-mqtt5": ["DISCONNECT 0x89"], "outage-mqtt311": ["closed before PUBACK"],
                ]
                let refused = try await each(
                    { id in expected[id, default: []].allSatisfy { outage.seen(id).contains($0) } }, within: 60)
                #expect(refused, "refusals seen: \(ids.map { "\($0): \(outage.seen($0).sorted())" })")
                #expect(hub.isRunning, "the hub stays up while the database is away")
                // A client whose session only the store could have is refused: CONNACK 0x88 Server unavailable.
                let newcomer = try await MQTTClientConnection.withConnection(
                    host: "127.0.0.1", port: ports.mqtt, tls: try newcomerCredentials.tlsConfiguration(),
                    clientID: "outage-new", version: .v5, configure: MQTTBrokerTests.persistent
                ) { _, reason in reason }
                #expect(newcomer == .serverUnavailable, "CONNACK \(newcomer)")
                #expect(PostgresTestServer.resume(server))
                let resumed = ContinuousClock.now
                outage.phase.store(2, ordering: .relaxed)
                // It serves again by itself, on every protocol.
                let recovered = try await each({ outage.count($0, phase: 2) >= 10 }, within: 60)
                #expect(recovered, "every device is served again after the database returned")
                print("outage: every device served again \(ContinuousClock.now - resumed) after the database returned")
            }
            try await group.waitForAll()
        }
        let acknowledged = outage.acknowledged.withLock { $0 }
        // (An answer counted "during" left before the stop finished: what matters is that it is stored.)
        print("outage: acknowledged \(acknowledged.mapValues(\.byPhase))")
        let store = try await PostgresHubStore(location: location)
        for device in devices {
            let acked = acknowledged[device.id]?.all ?? []
            let stored = Set(
                try await store.telemetry(of: try DeviceID(device.id), limit: 1_000_000).map {
                    String(decoding: $0.body, as: UTF8.self)
                })
            let lost = acked.subtracting(stored)
            #expect(lost.isEmpty, "\(device.id): \(lost.count) of \(acked.count) acknowledged messages lost")
        }
        try await store.close()
    }

    /// Rate limits lifted: streams measure durability, not the limits (they have tests of their own).
    static let unlimitedRates = [
        "BULWARK_GATEWAY_DEVICE_RATE": "1000000", "BULWARK_GATEWAY_DEVICE_BURST": "1000000",
        "BULWARK_GATEWAY_ROUTE_RATE": "1000000", "BULWARK_GATEWAY_ROUTE_BURST": "1000000",
    ]

    /// `bulwark node init --data DATA` on the database `settings` name (`Self.settings`).
    static func nodeInit(_ data: String, _ settings: [String: String], name: String) async throws -> (
        status: Int32, stdout: String, stderr: String
    ) {
        try await run(
            try binary,
            [
                "node", "init", "--data", data, "--database", settings["BULWARK_DATABASE_URL"] ?? "",
                "--database-password-file", settings["BULWARK_DATABASE_PASSWORD_FILE"] ?? "", "--database-ca-file",
                settings["BULWARK_DATABASE_CA_FILE"] ?? "", "--name", name,
            ], timeout: 60)
    }

    /// Two refusals at start, with real processes on one database (#14, faults): a node with a CA of its own, and a
    /// node whose clock is 5 minutes off the database server's (libfaketime). Each exits 78 and says why.
    @Test func aNodeWithAnotherCAOrAClockFiveMinutesOffRefusesToStart() async throws {
        let (_, database) = try await Self.postgres()
        let work = try temporaryDirectory("refused-nodes")
        let first = try await Self.nodeInit(work + "/one", database, name: "node-one")
        #expect(first.status == 0, "\(first.stderr)")
        // A fresh data directory does not make a CA of its own on a database that has one (the nodes' audit key
        // given, which is checked first).
        try FileManager.default.createDirectory(atPath: work + "/fresh", withIntermediateDirectories: false)
        chmod(work + "/fresh", 0o700)
        try FileManager.default.copyItem(atPath: work + "/one/audit.key", toPath: work + "/fresh/audit.key")
        let fresh = try await run(
            try Self.binary, ["serve", "--data", work + "/fresh"], environment: database, timeout: 60)
        #expect(fresh.status == 78, "\(fresh.stderr)")
        #expect(fresh.stderr.contains("belongs to hub nodes with a CA this data directory does not have"))
        // A node made on another database has a CA of its own: refused, and the database keeps the first CA. (It is
        // given the nodes' audit key, which is checked first.)
        let elsewhere = Self.settings(try await PostgresTestServer.freshDatabase())
        let made = try await Self.nodeInit(work + "/other", elsewhere, name: "node-other")
        #expect(made.status == 0, "\(made.stderr)")
        try FileManager.default.removeItem(atPath: work + "/other/audit.key")
        try FileManager.default.copyItem(atPath: work + "/one/audit.key", toPath: work + "/other/audit.key")
        let otherCA = try await run(
            try Self.binary, ["serve", "--data", work + "/other"], environment: database, timeout: 60)
        #expect(otherCA.status == 78, "\(otherCA.stderr)")
        #expect(otherCA.stderr.contains("is not the CA of the other hub nodes"), "\(otherCA.stderr)")

        let faketime = ((try? FileManager.default.contentsOfDirectory(atPath: "/usr/lib")) ?? []).sorted()
            .map { "/usr/lib/\($0)/faketime/libfaketime.so.1" }
            .first { FileManager.default.fileExists(atPath: $0) }
        guard let faketime else {
            Issue.record("libfaketime is required (scripts/install-deps installs the faketime package)")
            return
        }
        // Through timeout(1): a Swift program exec'd straight under libfaketime's preload was seen to start without
        // its arguments (printing its usage), one started by timeout(1) with them.
        let skewed = try await run(
            "/usr/bin/timeout", ["50", try Self.binary, "serve", "--data", work + "/one"],
            environment: [
                "LD_PRELOAD": faketime, "FAKETIME": "+5m", "FAKETIME_DONT_FAKE_MONOTONIC": "1",
                "FAKETIME_DONT_RESET": "1",
            ], timeout: 60)
        #expect(skewed.status == 78, "\(skewed.status) \(skewed.stdout) \(skewed.stderr)")
        #expect(
            skewed.stderr.range(
                of: #"clock is (29[89]|30[012]) s off the database server's"#, options: .regularExpression)
                != nil, "\(skewed.stderr)")
        // The same node with the right time starts.
        let node = try HubProcess(binary: try Self.binary, directory: work + "/one")
        defer { #expect(node.stop(within: 30), "the hub exits within 30 s of SIGTERM") }
        _ = try await node.waitForPorts()
    }

    /// One MQTT connection with a persistent session, publishing QoS 1 until the outage test stops it; what the
    /// hub answers other than PUBACK 0 is noted, and the connection given up (the caller connects again).
    static func streamMQTT(
        _ id: String, _ version: ProtocolVersion, _ credentials: ClientCredentials, _ port: Int,
        _ outage: OutageProgress, next: () -> Int
    ) async throws {
        let topic = try TopicName("devices/\(id)/telemetry")
        try await MQTTClientConnection.withConnection(
            host: "127.0.0.1", port: port, tls: try credentials.tlsConfiguration(), clientID: id, version: version,
            configure: MQTTBrokerTests.persistent
        ) { mqtt, reason in
            guard reason == 0 else {
                outage.saw(id, "CONNACK " + String(format: "0x%02X", Int(reason.rawValue)))
                throw ClientError("CONNACK \(reason)")
            }
            while !outage.stop.load(ordering: .relaxed) {
                let body = #"{"n":\#(next())}"#
                let answer: ReasonCode
                do {
                    answer = try await mqtt.publishAcknowledged(topic: topic, payload: Array(body.utf8))
                } catch {
                    outage.saw(id, "closed before PUBACK")
                    throw error
                }
                guard answer == 0 else {
                    // MQTT 5: a DISCONNECT's reason comes back in the PUBACK's place.
                    outage.saw(id, "DISCONNECT " + String(format: "0x%02X", Int(answer.rawValue)))
                    throw ClientError("refused \(answer)")
                }
                outage.acked(id, body)
            }
        }
    }

    /// SIGTERM while requests are in flight: they finish, the store closes, and every 202 is in the database.
    @Test func sigtermMidStreamFinishesInFlightRequestsAndLosesNothing() async throws {
        try await streamThenStop(signal: SIGTERM, expectCleanExit: true)
    }

    func streamThenStop(
        signal: Int32, expectCleanExit: Bool, database: (PostgresLocation, [String: String])? = nil
    ) async throws {
        let directory = try temporaryDirectory("stop-\(signal)")
        // One device streams as fast as it can: lift its rate limits (they have their own tests).
        let hub = try HubProcess(
            binary: try Self.binary, directory: directory,
            environment: Self.unlimitedRates.merging(database?.1 ?? [:]) { $1 })
        let ports = try await hub.waitForPorts()
        let operatorCredentials = try ClientCredentials(
            certificateFile: directory + "/operators/admin.crt", keyFile: directory + "/operators/admin.key",
            caFile: directory + "/ca.crt")
        let device = try await enroll("durable-1", operatorPort: ports.operator, operatorCredentials, directory)

        // 8 keep-alive connections post as fast as they can; the hub is signalled while they are in flight.
        let progress = Progress()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for connectionIndex in 0..<8 {
                group.addTask {
                    try? await HTTPSClient.withConnection(
                        host: "127.0.0.1", port: ports.device, tls: try device.tlsConfiguration()
                    ) { connection in
                        var sequence = 0
                        while !progress.stop.load(ordering: .relaxed) && sequence < 5_000 {
                            sequence += 1
                            let body = Array(#"{"c":\#(connectionIndex),"n":\#(sequence)}"#.utf8)
                            let result = try await connection.send(
                                method: "POST", path: "/v1/telemetry", headers: [("Content-Type", "application/json")],
                                body: body, signer: try device.signer())
                            guard result.status == 202, let id = jsonObject(result)["id"] as? Int else { return }
                            progress.acknowledged.withLock { $0.append(id) }
                        }
                    }
                }
            }
            group.addTask {
                // Signal once a few hundred messages were acknowledged (bounded to 20 s).
                let start = ContinuousClock.now
                while progress.acknowledged.withLock({ $0.count }) < 300 && ContinuousClock.now - start < .seconds(20) {
                    try await Task.sleep(for: .milliseconds(20))
                }
                _ = Foundation.kill(hub.processIdentifier, signal)
                if signal == SIGKILL { progress.stop.store(true, ordering: .relaxed) }
                // After SIGTERM the clients keep going until the hub closes their connections.
                try await Task.sleep(for: .seconds(2))
                progress.stop.store(true, ordering: .relaxed)
            }
            try await group.waitForAll()
        }
        let status = await hub.exitStatus()
        if expectCleanExit {
            #expect(status == 0, "graceful shutdown exits 0")
            #expect(hub.log.contains("hub stopped"))
        }
        let acked = progress.acknowledged.withLock { $0 }
        #expect(acked.count >= 300)

        let store: any HubStore =
            if let location = database?.0 {
                try await PostgresHubStore(location: location)
            } else {
                try SQLiteHubStore(path: directory + "/bulwark.sqlite")
            }
        #expect(database == nil || !FileManager.default.fileExists(atPath: directory + "/bulwark.sqlite"))
        let stored = Set(try await store.telemetry(of: try DeviceID("durable-1"), limit: 1_000_000).map { Int($0.id) })
        let lost = Set(acked).subtracting(stored)
        #expect(lost.isEmpty, "\(lost.count) acknowledged messages lost")
        try await store.close()
    }

    func enroll(
        _ id: String, operatorPort: Int, _ credentials: ClientCredentials, _ directory: String
    ) async throws -> ClientCredentials {
        let key = try await run("/usr/bin/env", ["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout"])
            .stdout
        let keyFile = directory + "/\(id).key"
        try key.write(toFile: keyFile, atomically: true, encoding: .utf8)
        let csr = try await run("/usr/bin/env", ["openssl", "req", "-new", "-key", keyFile, "-subj", "/CN=\(id)"])
            .stdout
        let result = try await HTTPSClient.request(
            host: "127.0.0.1", port: operatorPort, tls: try credentials.tlsConfiguration(), method: "POST",
            path: "/v1/devices", headers: [("Content-Type", "application/json")],
            body: [UInt8](try JSONSerialization.data(withJSONObject: ["id": id, "csr": csr])))
        let pem = try #require(jsonObject(result)["certificate"] as? String)
        return ClientCredentials(certificatePEM: Array(pem.utf8), keyPEM: Array(key.utf8), caPEM: credentials.caPEM)
    }
}

/// What the outage test's devices were acknowledged (per phase: 0 before, 1 during, 2 after the outage) and what
/// else they were answered.
final class OutageProgress: Sendable {
    let acknowledged = Mutex<[String: (all: Set<String>, byPhase: [Int: Int], during: Int)]>([:])
    let answers = Mutex<[String: Set<String>]>([:])
    let phase = Atomic<Int>(0)
    let stop = Atomic<Bool>(false)

    func acked(_ device: String, _ body: String) {
        let phase = phase.load(ordering: .relaxed)
        acknowledged.withLock {
            $0[device, default: ([], [:], 0)].all.insert(body)
            $0[device, default: ([], [:], 0)].byPhase[phase, default: 0] += 1
            if phase == 1 { $0[device, default: ([], [:], 0)].during += 1 }
        }
    }

    func count(_ device: String, phase: Int) -> Int { acknowledged.withLock { $0[device]?.byPhase[phase] ?? 0 } }

    /// Only what is answered while the database is away counts.
    func saw(_ device: String, _ answer: String) {
        guard phase.load(ordering: .relaxed) == 1 else { return }
        _ = answers.withLock { $0[device, default: []].insert(answer) }
    }

    func seen(_ device: String) -> Set<String> { answers.withLock { $0[device] ?? [] } }
}

/// Bodies a node acknowledged per device, and how many after node 1 was killed; shared with the killer task.
final class FailoverProgress: Sendable {
    let acknowledged = Mutex<[String: (all: Set<String>, afterKill: Int)]>([:])
    let killed = Atomic<Bool>(false)
    let stop = Atomic<Bool>(false)
    let killedAt = Mutex<ContinuousClock.Instant?>(nil)

    func acked(_ device: String, _ body: String) {
        let afterKill = killed.load(ordering: .relaxed)
        acknowledged.withLock {
            $0[device, default: ([], 0)].all.insert(body)
            if afterKill { $0[device, default: ([], 0)].afterKill += 1 }
        }
    }
}

/// Shared between the sending tasks and the killer task.
final class Progress: Sendable {
    let acknowledged = Mutex<[Int]>([])
    let stop = Atomic<Bool>(false)
}
