import Core
import Foundation
import Logging
import PostgresNIO
import PostgresStore
import PostgresTestSupport
import Store
import Synchronization
import Testing

/// The PostgreSQL backend's own concerns: where it is (the URL's rules), TLS to the server, migrations. Its behaviour
/// as a `HubStore` is the shared table of `HubStoreTests`.
@Suite struct PostgresStoreTests {
    @Test(arguments: [
        ("postgres://bulwark:pw@db.example/hub", "password"),
        ("postgres://db.example/hub", "no user"),
        ("postgres://bulwark@db.example", "no database"),
        ("postgres://bulwark@db.example/hub?sslmode=require", "verify-full"),
        ("postgres://bulwark@db.example/hub?sslmode=prefer", "verify-full"),
        ("postgres://bulwark@db.example/hub?sslmode=disable", "loopback"),
        ("postgres://bulwark@db.example/hub?password=pw", "unknown parameter"),
        ("mysql://bulwark@db.example/hub", "postgres://"),
    ])
    func refusesURLsThatWouldLeakOrTrustBlindly(_ url: String, _ why: String) {
        #expect {
            _ = try PostgresLocation(url: url, passwordFile: nil, caFile: "/etc/db-ca.crt")
        } throws: { error in
            "\(error)".contains(why) && !"\(error)".contains("pw")
        }
    }

    /// With the system's public roots NIOSSL would also accept a certificate for the IP address a name resolved to:
    /// verify-full needs the database's own CA.
    @Test func verifyFullNeedsTheDatabasesCA() {
        #expect {
            _ = try PostgresLocation(url: "postgres://hub@db.example/fleet", passwordFile: nil, caFile: nil)
        } throws: { error in
            "\(error)".contains("database.caFile is required")
        }
    }

    @Test func readsTheURLsItAccepts() throws {
        let full = try PostgresLocation(
            url: "postgres://hub@db.example:6543/fleet", passwordFile: nil, caFile: "/etc/db-ca.crt")
        #expect(full.host == "db.example" && full.port == 6543 && full.user == "hub" && full.database == "fleet")
        #expect(full.verifyTLS)
        let local = try PostgresLocation(
            url: "postgresql://hub@127.0.0.1/fleet?sslmode=disable", passwordFile: nil, caFile: nil)
        #expect(!local.verifyTLS && local.port == 5432)
    }

    /// verify-full means it: a server whose certificate another CA signed is refused, and so is a wrong password;
    /// neither error carries the password.
    @Test func aServerFromAnotherCAOrAWrongPasswordIsRefused() async throws {
        let location = try await PostgresTestServer.freshDatabase()
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("bulwark-pgca-\(UUID())").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let otherCA = Process()
        otherCA.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        otherCA.arguments = [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
            "-subj", "/CN=Another CA", "-keyout", directory + "/other.key", "-out", directory + "/other.crt",
        ]
        otherCA.standardError = FileHandle.nullDevice
        try otherCA.run()
        otherCA.waitUntilExit()
        #expect(otherCA.terminationStatus == 0)
        var wrongCA = location
        wrongCA.caFile = directory + "/other.crt"
        await #expect {
            try await PostgresHubStore(location: wrongCA)
        } throws: { error in
            "\(error)".contains("CERTIFICATE_VERIFY_FAILED")
        }

        let password = "not-the-password-\(UUID())"
        try password.write(toFile: directory + "/password", atomically: true, encoding: .utf8)
        var wrongPassword = location
        wrongPassword.passwordFile = directory + "/password"
        do {
            _ = try await PostgresHubStore(location: wrongPassword)
            Issue.record("a wrong password was accepted")
        } catch {
            #expect(!"\(error)".contains(password))
            #expect("\(error)".contains("28P01"), "PostgreSQL's 'invalid password' is named: \(error)")
        }
    }

    /// Nodes opening one database at once apply each migration once (under the advisory lock), and a database from
    /// a newer hub is refused rather than written with an older schema's assumptions.
    @Test func migrationsRunOnceAndANewerSchemaIsRefused() async throws {
        let location = try await PostgresTestServer.freshDatabase()
        let stores = try await withThrowingTaskGroup(of: PostgresHubStore.self) { group in
            for _ in 0..<4 {
                group.addTask { try await PostgresHubStore(location: location) }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        for store in stores {
            #expect(try await store.schemaVersion() == PostgresHubStore.latestSchemaVersion)
        }
        try await PostgresTestServer.execute(
            "INSERT INTO bulwark_migrations (version, name) VALUES (999, 'from the future')", on: location)
        for store in stores { try await store.close() }
        await #expect {
            try await PostgresHubStore(location: location)
        } throws: { error in
            "\(error)".contains("newer than this hub")
        }
    }

    /// Two stores on one database (two hub nodes) writing at once: the audit log stays one chain without gaps, and
    /// telemetry batches that touch the same devices in opposite orders neither deadlock nor move a counter window
    /// backwards.
    /// An acknowledged message is on disk in PostgreSQL (#14): every connection the store makes asks for
    /// `synchronous_commit = on` in its startup message, which beats a database (or server) set to off.
    @Test func theStoresConnectionsCommitSynchronouslyWhateverTheDatabaseSays() async throws {
        let location = try await PostgresTestServer.freshDatabase()
        try await PostgresTestServer.execute(
            "ALTER DATABASE \(location.database) SET synchronous_commit = off", on: location)
        func show(_ configuration: PostgresConnection.Configuration) async throws -> String? {
            let connection = try await PostgresConnection.connect(
                configuration: configuration, id: 1,
                logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
            defer { Task { try? await connection.close() } }
            var value: String?
            for try await (setting) in try await connection.query("SHOW synchronous_commit", logger: Self.quiet)
                .decode(String.self)
            {
                value = setting
            }
            return value
        }
        var plain = try location.connectionConfiguration()
        plain.options.additionalStartupParameters = []
        #expect(try await show(plain) == "off", "the database's own setting, which the store's must beat")
        #expect(try await show(try location.connectionConfiguration()) == "on")
        // The pool's connections (the store's writes go through them).
        let client = PostgresClient(configuration: try location.clientConfiguration())
        let pooled = try await withThrowingTaskGroup(of: String?.self) { group in
            group.addTask {
                await client.run()
                return nil
            }
            var value: String?
            for try await setting in try await client.query("SHOW synchronous_commit", logger: Self.quiet).decode(
                String.self)
            {
                value = setting
            }
            group.cancelAll()
            return value
        }
        #expect(pooled == "on")
    }

    static let quiet = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

    /// A session a node holds (its change marked `stored`) that another node removes while the save is on its way:
    /// the save's statement locks the row before writing it, so it waits for the removal and then finds the row
    /// gone: nothing is written, and the key comes back as held. (A statement that only looked for the row in its
    /// snapshot would insert it again once the removal committed.)
    @Test func aStoredSessionRemovedDuringItsSaveIsNotBroughtBack() async throws {
        let location = try await PostgresTestServer.freshDatabase()
        let store = try await PostgresHubStore(location: location)
        let session = StoredMQTTSession(
            key: "k", owner: "urn:o", expirySeconds: 60, disconnectedAt: nil, state: [1],
            savedAt: Date(timeIntervalSince1970: 1_800_000_000))
        let first = [MQTTSessionChange(key: "k", session: session)]
        #expect(try await store.saveMQTTSessions(first, holder: "a", release: false) == [])
        let other = try await PostgresConnection.connect(
            configuration: try location.connectionConfiguration(), id: 2, logger: Self.quiet)
        var changed = session
        changed.state = [2]
        let stale = [MQTTSessionChange(key: "k", session: changed, stored: true)]
        var saving: Task<Set<String>, any Error>?
        do {
            try await other.query("BEGIN", logger: Self.quiet)
            try await other.query("DELETE FROM mqtt_sessions WHERE session_key = 'k'", logger: Self.quiet)
            saving = Task { try await store.saveMQTTSessions(stale, holder: "a", release: false) }
            // Until the save waits for the removal's row lock (a save that never does cannot show the lock).
            var waiting = false
            for _ in 0..<500 where !waiting {
                try await Task.sleep(for: .milliseconds(20))
                // Within a transaction the activity view is read once and kept; each look takes it afresh.
                try await other.query("SELECT pg_stat_clear_snapshot()", logger: Self.quiet)
                for try await count in try await other.query(
                    """
                    SELECT count(*) FROM pg_stat_activity
                    WHERE wait_event_type = 'Lock' AND datname = current_database()
                    """, logger: Self.quiet
                ).decode(Int64.self) {
                    waiting = count > 0
                }
            }
            #expect(waiting, "the save never waited for the removal")
            try await other.query("COMMIT", logger: Self.quiet)
            #expect(try await saving?.value == ["k"])
            #expect(try await store.mqttSessionHolder(key: "k") == (false, nil), "brought back")
        } catch {
            saving?.cancel()
            try? await other.close()
            try? await store.close()
            throw error
        }
        try await other.close()
        try await store.close()
    }

    /// `queueTelemetry` takes its place in the store's queue when it is called, not when it is awaited: messages
    /// queued in order and awaited in the reverse order (as tasks may be scheduled) are stored, and handed to the
    /// other nodes, in the order they were queued. (`appendTelemetry` from tasks started in that reverse order would
    /// store them reversed.)
    @Test func queuedTelemetryKeepsItsOrderHoweverItIsAwaited() async throws {
        let store = try await PostgresTestServer.freshStore()
        let device = try DeviceID("q-1")
        try await store.enroll(device: device, certificate: HubStoreTests.certificate("q1", device: device), at: Date())
        let first = try await store.latestClusterEvent()
        let writes = (1...60).map { n in
            var message = NewTelemetry(deviceID: device, receivedAt: Date(), correlationID: "c\(n)", body: [UInt8(n)])
            message.relay = RelayedMessage(origin: "node", publisher: nil, packet: [UInt8(n)])
            return store.queueTelemetry(message)
        }
        let ids = try await withThrowingTaskGroup(of: (Int, Int64).self) { group in
            for (index, write) in writes.enumerated().reversed() {
                group.addTask { (index, try await write.value()) }
                await Task.yield()
            }
            var ids = [Int64](repeating: 0, count: writes.count)
            for try await (index, id) in group { ids[index] = id }
            return ids
        }
        #expect(ids == ids.sorted() && Set(ids).count == 60, "stored in the order queued")
        let relayed = try await store.clusterEvents(after: first).compactMap { event -> UInt8? in
            guard case .message(let message) = event.change else { return nil }
            return message.packet.first
        }
        #expect(relayed == Array(1...60), "handed on in the order queued")
        try await store.close()
    }

    /// A batch is written in a few statements: replays inside one batch are still refused (a nonce used twice, a
    /// counter already taken by an earlier message of the batch or stored before), each device's messages keep their
    /// order, the windows end as one message at a time would leave them, and only stored messages are handed on.
    @Test func oneBatchRefusesTheReplaysInsideIt() async throws {
        let batches = Batches()
        // While set, a committed batch waits (at most 10 s) before the committer takes the next one: the messages
        // queued meanwhile then share that next batch however loaded the machine is (a busy run could otherwise
        // commit the gate below between two of them, and split them).
        let holding = Mutex(false)
        let store = try await PostgresHubStore(
            location: try await PostgresTestServer.freshDatabase(),
            onCommit: { messages, _ in
                batches.sizes.withLock { $0.append(messages) }
                let deadline = ContinuousClock.now + .seconds(10)
                while holding.withLock({ $0 }), ContinuousClock.now < deadline { usleep(1_000) }
            })
        let a = try DeviceID("b-a")
        let b = try DeviceID("b-b")
        for device in [a, b] {
            try await store.enroll(
                device: device, certificate: HubStoreTests.certificate(device.rawValue, device: device), at: Date())
        }
        var stored = NewTelemetry(deviceID: a, receivedAt: Date(), correlationID: "c0", body: [0])
        stored.counter = 5
        _ = try await store.appendTelemetry(stored)
        let first = try await store.latestClusterEvent()
        let expires = Int64(Date().timeIntervalSince1970) + 300
        func message(_ n: UInt8, _ device: DeviceID, counter: UInt64? = nil, nonce: String? = nil) -> NewTelemetry {
            var message = NewTelemetry(deviceID: device, receivedAt: Date(), correlationID: "c\(n)", body: [n])
            message.counter = counter
            message.nonce = nonce.map { StoredNonce(nonce: $0, expiresAt: expires) }
            message.relay = RelayedMessage(origin: "node", publisher: n % 2 == 0 ? nil : "p", packet: [n])
            return message
        }
        // A first message takes the committer's first batch; the others, queued while it commits, share the next.
        holding.withLock { $0 = true }
        let gate = store.queueTelemetry(NewTelemetry(deviceID: b, receivedAt: Date(), correlationID: "g", body: [9]))
        // The gate's batch is committed and held before the others are queued: a committer that took its batch
        // late (a loaded machine) took some of them with the gate (a CI run saw batches of 1, 6 and 3).
        for _ in 0..<2000 where batches.sizes.withLock({ $0.count }) < 2 { try await Task.sleep(for: .milliseconds(5)) }
        try #require(batches.sizes.withLock { $0 } == [1, 1], "the gate's batch, alone, is held")
        let writes = [
            message(1, a, counter: 6), message(2, b, nonce: "n1"), message(3, a, counter: 6),
            message(4, a, counter: 5), message(5, b, nonce: "n1"), message(6, a, counter: 7),
            message(7, b, nonce: "n2"), message(8, a, counter: 7),
        ].map { store.queueTelemetry($0) }
        holding.withLock { $0 = false }
        _ = try await gate.value()
        var outcomes: [Int64?] = []
        for write in writes {
            do { outcomes.append(try await write.value()) } catch let error as StoreError where error.code == .replayed
            {
                outcomes.append(nil)
            }
        }
        let accepted = outcomes.indices.filter { outcomes[$0] != nil }.map { $0 + 1 }
        #expect(accepted == [1, 2, 6, 7], "3, 4 and 8 reuse counters, 5 a nonce: \(outcomes)")
        #expect(batches.sizes.withLock { $0 }.contains { $0 >= 8 }, "one batch: \(batches.sizes.withLock { $0 })")
        // Each device's messages in the order queued (a batch writes device by device).
        for device in [[1, 6], [2, 7]] {
            let ids = device.map { outcomes[$0 - 1] ?? 0 }
            #expect(ids == ids.sorted(), "stored in the order queued: \(outcomes)")
        }
        let window = try #require(try await store.counterWindow(of: a))
        #expect(window.highest == 7, "\(window)")
        let relayed = try await store.clusterEvents(after: first).compactMap { event -> (UInt8, String?)? in
            guard case .message(let message) = event.change else { return nil }
            return (message.packet[0], message.publisher)
        }
        #expect(relayed.map(\.0).sorted() == [1, 2, 6, 7], "only what was stored is handed on")
        #expect(relayed.filter { [1, 6].contains($0.0) }.map(\.0) == [1, 6], "in each device's order")
        #expect(relayed.filter { [2, 7].contains($0.0) }.map(\.0) == [2, 7])
        #expect(relayed.first { $0.0 == 7 }?.1 == "p" && relayed.first { $0.0 == 2 }?.1 == nil)
        try await store.close()
    }

    @Test func twoNodesWritingAtOnceKeepOneChainAndOneWindow() async throws {
        let location = try await PostgresTestServer.freshDatabase()
        let nodes = [
            try await PostgresHubStore(location: location), try await PostgresHubStore(location: location),
        ]
        let devices = try ["n-a", "n-b", "n-c"].map { try DeviceID($0) }
        for (index, device) in devices.enumerated() {
            try await nodes[0].enroll(
                device: device, certificate: HubStoreTests.certificate("c\(index)", device: device), at: Date())
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (index, node) in nodes.enumerated() {
                for writer in 0..<8 {
                    group.addTask {
                        for n in 0..<10 {
                            try await node.recordSecurityEvent(
                                SecurityEvent(at: Date(), kind: "test", detail: "node \(index) writer \(writer) #\(n)"))
                        }
                    }
                    group.addTask {
                        // Each node sends the devices in its own order; counters grow per writer.
                        let order = index == 0 ? devices : devices.reversed()
                        for n in 1...10 {
                            for device in order {
                                let counter = UInt64(writer * 10 + n)
                                _ = try await node.appendTelemetry(
                                    NewTelemetry(
                                        deviceID: device, receivedAt: Date(), correlationID: "c", body: [1],
                                        counterWindow: StoredCounterWindow(highest: counter, seen: 1)))
                            }
                        }
                    }
                }
            }
            try await group.waitForAll()
        }
        let records = try await nodes[1].allAuditRecords()
        #expect(records.count == 160)
        #expect(records.map(\.sequence) == Array(1...160))
        #expect(AuditChain.verify(records) == nil)
        #expect(try await nodes[0].telemetryCount(of: nil) == 2 * 8 * 10 * 3)
        let windows = try await nodes[1].counterWindows()
        #expect(windows.count == 3 && windows.allSatisfy { $0.1.highest == 80 }, "\(windows)")
        for node in nodes { try await node.close() }
    }
}

/// The sizes of the group commits a store reported.
final class Batches: Sendable {
    let sizes = Mutex<[Int]>([])
}
