import ArgumentParser
import Foundation
import Hub
import HubClient
import MQTT
import NIOSSL
import PostgresStore
import PostgresTestSupport
import Synchronization

/// Several hub nodes on one PostgreSQL database beside one node on SQLite, as real `bulwark serve` processes on this
/// machine, driven by one load generator: signed telemetry and MQTT QoS 1 throughput with 1, 2 and 3 nodes, then,
/// on two nodes, how fast a revocation bites on the other node, how long a message takes to reach a subscriber on
/// the other node, and how long a session take-over across nodes takes (each beside its one-node counterpart).
///
/// PostgreSQL: the server `scripts/test` or `scripts/postgres start` describes in `BULWARK_TEST_POSTGRES_*`, or one
/// this run starts in a temp dir (`scripts/postgres`) and stops at exit. Each configuration gets a fresh database.
struct ClusterBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cluster",
        abstract: "Throughput with 1-3 nodes on PostgreSQL vs 1 on SQLite; revocation, delivery and take-over times.")
    @Option(help: "Connections (HTTP and MQTT), spread evenly over the nodes.") var connections = 48
    @Option(help: "Seconds of load per measure.") var seconds = 10
    @Option(help: "Seconds of warm-up per measure (not counted).") var warmup = 2
    @Option(help: "QoS 1 messages in flight per MQTT connection.") var window = 10
    @Option(help: "Samples for each latency figure.") var samples = 50
    @Option(help: "The bulwark binary (default: next to this one).") var bulwark: String?

    func run() async throws {
        guard (1...300).contains(connections), (1...120).contains(seconds), (0...30).contains(warmup),
            (1...1000).contains(window), (5...1000).contains(samples)
        else { throw ValidationError("connections 1-300, seconds 1-120, warmup 0-30, window 1-1000, samples 5-1000") }
        let binary = benchBinary(bulwark)
        _ = try PostgresTestServer.location.get()
        emit(
            "bulwark-bench cluster: real bulwark processes on one machine (2 cores shared by the nodes, PostgreSQL and "
                + "the load generator); \(connections) connections spread over the nodes, \(seconds) s per measure "
                + "after \(warmup) s warm-up; HTTP: signed telemetry (hmac-sha256 session keys), 200-byte JSON; MQTT "
                + "3.1.1 QoS 1, \(window) in flight per connection, 200-byte JSON")
        emit(
            "configuration                    HTTP req/s  p50 ms  p99 ms  CPU µs/req (nodes+PG)   MQTT msg/s  "
                + "CPU µs/msg (nodes+PG)")
        for (name, nodes, postgres) in [
            ("1 node, SQLite", 1, false), ("1 node, PostgreSQL", 1, true), ("2 nodes, PostgreSQL", 2, true),
            ("3 nodes, PostgreSQL", 3, true),
        ] {
            let cluster = try await BenchCluster.start(binary: binary, nodes: nodes, postgres: postgres)
            defer { cluster.stop() }
            let devices = try await enrollDevices(
                count: connections, prefix: "c", operatorPort: cluster.ports[0].operator,
                directory: cluster.directories[0]
            ).map(\.credentials)
            let http = try await httpLoad(cluster, devices[0])
            let mqtt = await mqttLoad(cluster, devices)
            emit(
                name.padding(toLength: 32, withPad: " ", startingAt: 0)
                    + String(
                        format: "%10.0f %7.2f %7.2f %12.0f+%-10.0f %12.0f %12.0f+%-10.0f", http.rate, http.p50,
                        http.p99, http.cpu.nodes, http.cpu.postgres, mqtt.rate, mqtt.cpu.nodes, mqtt.cpu.postgres)
                    + (http.failures + mqtt.failures > 0
                        ? "  (\(http.failures) HTTP / \(mqtt.failures) MQTT failures)" : ""))
            if nodes == 2 {
                try await latencies(cluster, operatorDirectory: cluster.directories[0])
            }
        }
    }

    /// Signed telemetry (one device's hmac session per connection: the device limits are lifted) to every node.
    func httpLoad(_ cluster: BenchCluster, _ device: ClientCredentials) async throws -> (
        rate: Double, p50: Double, p99: Double, cpu: (nodes: Double, postgres: Double), failures: Int
    ) {
        let tls = try device.tlsConfiguration()
        let signer = try device.signer()
        func load(_ duration: Int) async -> LoadGenerator.Result {
            await withTaskGroup(of: LoadGenerator.Result.self) { group in
                for (index, ports) in cluster.ports.enumerated() {
                    let share = cluster.share(of: connections, node: index)
                    group.addTask {
                        await LoadGenerator.run(
                            host: "127.0.0.1", port: ports.device, tls: tls, connections: share,
                            duration: .seconds(duration), path: "/v1/telemetry",
                            headers: [("Content-Type", "application/json")], body: telemetryBody, expectedStatus: 202,
                            signer: signer, session: true)
                    }
                }
                var merged = LoadGenerator.Result()
                for await part in group {
                    merged.successes += part.successes
                    merged.failures += part.failures
                    merged.elapsed = max(merged.elapsed, part.elapsed)
                    merged.latencies += part.latencies
                }
                merged.latencies.sort()
                return merged
            }
        }
        if warmup > 0 { _ = await load(warmup) }
        let before = cluster.cpuSeconds()
        let result = await load(seconds)
        let after = cluster.cpuSeconds()
        let per = 1e6 / Double(max(1, result.successes))
        return (
            result.requestsPerSecond, result.percentile(50), result.percentile(99),
            ((after.nodes - before.nodes) * per, (after.postgres - before.postgres) * per), result.failures
        )
    }

    /// MQTT QoS 1: each connection a device of its own, publishing under its own topic, stored before its PUBACK.
    func mqttLoad(_ cluster: BenchCluster, _ devices: [ClientCredentials]) async -> (
        rate: Double, cpu: (nodes: Double, postgres: Double), failures: Int
    ) {
        func load(_ duration: Int) async -> MQTTLoad.Result {
            await withTaskGroup(of: MQTTLoad.Result.self) { group in
                var first = 0
                for (index, ports) in cluster.ports.enumerated() {
                    let share = cluster.share(of: connections, node: index)
                    let offset = first
                    first += share
                    group.addTask {
                        await MQTTLoad.run(
                            host: "127.0.0.1", port: ports.mqtt, tls: { try devices[offset + $0].tlsConfiguration() },
                            clientID: { "c\(offset + $0)" }, topic: { "devices/c\(offset + $0)/telemetry" },
                            connections: share, qos: .atLeastOnce, window: window, duration: .seconds(duration),
                            payload: telemetryBody)
                    }
                }
                var merged = MQTTLoad.Result()
                for await part in group {
                    merged.messages += part.messages
                    merged.failures += part.failures
                    merged.seconds = max(merged.seconds, part.seconds)
                }
                return merged
            }
        }
        if warmup > 0 { _ = await load(warmup) }
        let before = cluster.cpuSeconds()
        let result = await load(seconds)
        let after = cluster.cpuSeconds()
        let per = 1e6 / Double(max(1, result.messages))
        return (
            result.perSecond, ((after.nodes - before.nodes) * per, (after.postgres - before.postgres) * per),
            result.failures
        )
    }

    /// On two nodes, each beside the same thing on one node: a revocation made through node 1 closing the device's
    /// MQTT connection on node 2; a device's QoS 1 message on node 1 reaching a subscriber on node 2; a persistent
    /// session taken over from one node by a connection to the other.
    func latencies(_ cluster: BenchCluster, operatorDirectory: String) async throws {
        let operatorCredentials = try ClientCredentials(
            certificateFile: operatorDirectory + "/operators/admin.crt",
            keyFile: operatorDirectory + "/operators/admin.key", caFile: operatorDirectory + "/ca.crt")
        let devices = try await enrollDevices(
            count: samples * 2 + 2, prefix: "l", operatorPort: cluster.ports[0].operator,
            directory: operatorDirectory)
        emit("two nodes on PostgreSQL, \(samples) samples each         p50 ms    p99 ms    max ms")

        // Revocation: through node 1's operator API, from the request until the device's connection closes.
        for (label, node, range) in [
            ("revocation, device on the same node", 0, 0..<samples),
            ("revocation, device on the other node", 1, samples..<(samples * 2)),
        ] {
            var times: [Double] = []
            for index in range {
                let (id, credentials) = devices[index]
                let (connected, connectedContinuation) = AsyncStream.makeStream(of: Void.self)
                let closed = Task {
                    try await MQTTClientConnection.withConnection(
                        host: "127.0.0.1", port: cluster.ports[node].mqtt, tls: try credentials.tlsConfiguration(),
                        clientID: id, keepAlive: 60
                    ) { mqtt, _ -> ContinuousClock.Instant in
                        connectedContinuation.yield()
                        while (try? await mqtt.next()) != nil {}
                        return .now
                    }
                }
                for await _ in connected { break }
                let start = ContinuousClock.now
                let answer = try await HTTPSClient.request(
                    host: "127.0.0.1", port: cluster.ports[0].operator, tls: try operatorCredentials.tlsConfiguration(),
                    method: "POST", path: "/v1/devices/\(id)/revoke", headers: [], body: [])
                guard answer.status == 200 else { throw ClientError("revoke answered \(answer.status)") }
                let end = try await closed.value
                times.append((end - start).seconds * 1000)
            }
            emit(Self.latencyRow(label, times))
        }

        // Delivery: a device on node 1 publishes QoS 1 (one at a time, 10 ms apart); subscribers on node 1 and 2.
        let publisher = devices[samples * 2]
        let received = Shared<[Int: (ContinuousClock.Instant?, ContinuousClock.Instant?)]>([:])
        let sent = Shared<[Int: ContinuousClock.Instant]>([:])
        let subscribed = AsyncStream.makeStream(of: Void.self)
        let subscribers = (0..<2).map { node in
            Task {
                try await MQTTClientConnection.withConnection(
                    host: "127.0.0.1", port: cluster.ports[node].mqtt, tls: try operatorCredentials.tlsConfiguration(),
                    clientID: "fleet-\(node)", version: .v5, keepAlive: 60
                ) { fleet, _ in
                    try await fleet.send(
                        .subscribe(
                            packetID: 1,
                            subscriptions: [
                                Subscription(
                                    filter: try TopicFilter("devices/\(publisher.id)/telemetry"), qos: .atLeastOnce)
                            ], properties: .init()))
                    guard case .suback = try await fleet.next() else { throw ClientError("no SUBACK") }
                    subscribed.continuation.yield()
                    var count = 0
                    while count < samples, let packet = try await fleet.next() {
                        guard case .publish(let message) = packet else { continue }
                        if let id = message.packetID {
                            try await fleet.send(.puback(packetID: id, reasonCode: 0, properties: .init()))
                        }
                        let text = String(decoding: message.payload, as: UTF8.self)
                        guard let n = Int(text.dropFirst(5).dropLast()) else { continue }
                        let now = ContinuousClock.now
                        received.value.withLock {
                            if node == 0 {
                                $0[n, default: (nil, nil)].0 = now
                            } else {
                                $0[n, default: (nil, nil)].1 = now
                            }
                        }
                        count += 1
                    }
                }
            }
        }
        var ready = 0
        for await _ in subscribed.stream {
            ready += 1
            if ready == 2 { break }
        }
        let topic = try TopicName("devices/\(publisher.id)/telemetry")
        try await MQTTClientConnection.withConnection(
            host: "127.0.0.1", port: cluster.ports[0].mqtt, tls: try publisher.credentials.tlsConfiguration(),
            clientID: publisher.id
        ) { mqtt, _ in
            for n in 0..<samples {
                let start = ContinuousClock.now
                sent.value.withLock { $0[n] = start }
                guard try await mqtt.publishAcknowledged(topic: topic, payload: Array(#"{"n":\#(n)}"#.utf8)) == 0
                else { throw ClientError("PUBACK refused") }
                try await Task.sleep(for: .milliseconds(10))
            }
        }
        for subscriber in subscribers { try await subscriber.value }
        let arrivals = received.value.withLock { $0 }
        let starts = sent.value.withLock { $0 }
        for (label, pick) in [
            ("QoS 1 delivery, subscriber on the same node", 0), ("QoS 1 delivery, subscriber on the other node", 1),
        ] {
            emit(
                Self.latencyRow(
                    label,
                    starts.compactMap { n, start in
                        (pick == 0 ? arrivals[n]?.0 : arrivals[n]?.1).map { ($0 - start).seconds * 1000 }
                    }))
        }

        // Take-over: a persistent session (MQTT 5, expiry 300 s, one subscription) connecting again, from the start
        // of the TCP connection to the CONNACK with Session Present: to the node that holds it after a clean
        // disconnect, then from the other node while its connection is still open (that one gets DISCONNECT 0x8E).
        let mover = devices[samples * 2 + 1]
        func connect(_ node: Int, hold: Bool) async throws -> (Double, Task<ReasonCode?, any Error>) {
            let (acked, ackedContinuation) = AsyncStream.makeStream(of: Double.self)
            let start = ContinuousClock.now
            let connection = Task {
                try await MQTTClientConnection.withConnection(
                    host: "127.0.0.1", port: cluster.ports[node].mqtt, tls: try mover.credentials.tlsConfiguration(),
                    clientID: mover.id, version: .v5, keepAlive: 60,
                    configure: {
                        $0.cleanStart = false
                        $0.properties.sessionExpiryInterval = 300
                    }
                ) { mqtt, reason -> ReasonCode? in
                    guard reason == 0, mqtt.sessionPresent else { throw ClientError("CONNACK \(reason)") }
                    ackedContinuation.yield((ContinuousClock.now - start).seconds * 1000)
                    guard hold else {
                        try await mqtt.send(.disconnect(reasonCode: 0, properties: .init()))
                        return nil
                    }
                    while let packet = try await mqtt.next() {
                        if case .disconnect(let code, _) = packet { return code }
                    }
                    return nil
                }
            }
            for await time in acked { return (time, connection) }
            _ = try await connection.value
            throw ClientError("no CONNACK")
        }
        try await MQTTClientConnection.withConnection(
            host: "127.0.0.1", port: cluster.ports[0].mqtt, tls: try mover.credentials.tlsConfiguration(),
            clientID: mover.id, version: .v5, keepAlive: 60, configure: Self.newSession
        ) { mqtt, _ in
            try await mqtt.send(
                .subscribe(
                    packetID: 1,
                    subscriptions: [Subscription(filter: try TopicFilter("devices/+/events/#"), qos: .atLeastOnce)],
                    properties: .init()))
            _ = try await mqtt.next()
            try await mqtt.send(.disconnect(reasonCode: 0, properties: .init()))
        }
        var same: [Double] = []
        for _ in 0..<samples {
            let (time, connection) = try await connect(0, hold: false)
            _ = try await connection.value
            same.append(time)
        }
        emit(Self.latencyRow("session resumed on the node holding it", same))
        var moved: [Double] = []
        var (_, held) = try await connect(0, hold: true)
        for index in 0..<samples {
            let (time, connection) = try await connect((index + 1) % 2, hold: true)
            guard try await held.value == 0x8E else { throw ClientError("the old connection got no DISCONNECT 0x8E") }
            moved.append(time)
            held = connection
        }
        held.cancel()
        emit(Self.latencyRow("session taken over from the other node", moved))
    }

    /// A new session kept 300 s after its connection ends.
    static func newSession(_ connect: inout ConnectPacket) {
        connect.cleanStart = true
        connect.properties.sessionExpiryInterval = 300
    }

    static func latencyRow(_ label: String, _ milliseconds: [Double]) -> String {
        let sorted = milliseconds.sorted()
        func percentile(_ p: Double) -> Double {
            guard !sorted.isEmpty else { return .nan }
            return sorted[max(0, min(sorted.count - 1, Int((Double(sorted.count) * p / 100).rounded(.up)) - 1))]
        }
        return label.padding(toLength: 52, withPad: " ", startingAt: 0)
            + String(format: "%9.2f %9.2f %9.2f", percentile(50), percentile(99), sorted.last ?? .nan)
            + (sorted.count < 5 ? " (\(sorted.count) samples)" : "")
    }

    /// Unbuffered, so each figure shows as soon as it is measured.
    func emit(_ line: String) { FileHandle.standardOutput.write(Data((line + "\n").utf8)) }
}

/// `bulwark serve` processes: node 1 makes the hub's keys; the others join with them (`NodeBundle`), on a fresh
/// database of the PostgreSQL server, or node 1 alone on SQLite.
struct BenchCluster: Sendable {
    let processes: [HubProcess]
    let ports: [HubProcess.Ports]
    let directories: [String]

    static func start(binary: String, nodes: Int, postgres: Bool) async throws -> BenchCluster {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("bulwark-clusterbench-\(UUID())").path
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        var environment = unlimitedHubLimits
        if postgres {
            let location = try await PostgresTestServer.freshDatabase()
            environment["BULWARK_DATABASE_URL"] =
                "postgres://\(location.user)@\(location.host):\(location.port)/\(location.database)?sslmode=verify-full"
            environment["BULWARK_DATABASE_PASSWORD_FILE"] = location.passwordFile
            environment["BULWARK_DATABASE_CA_FILE"] = location.caFile
        }
        var processes: [HubProcess] = []
        var ports: [HubProcess.Ports] = []
        var directories: [String] = []
        do {
            for index in 0..<nodes {
                let directory = root + "/node-\(index + 1)"
                if index > 0 { try NodeBundle.install(try NodeBundle.files(in: directories[0]), into: directory) }
                let process = try HubProcess(
                    binary: binary, directory: directory,
                    environment: environment.merging(["BULWARK_CLUSTER_NODE_NAME": "node-\(index + 1)"]) { $1 })
                processes.append(process)
                directories.append(directory)
                ports.append(try await process.waitForPorts())
            }
        } catch {
            for process in processes { process.terminate() }
            throw error
        }
        return BenchCluster(processes: processes, ports: ports, directories: directories)
    }

    /// Node `node`'s part of `total` connections.
    func share(of total: Int, node: Int) -> Int {
        total / ports.count + (node < total % ports.count ? 1 : 0)
    }

    /// The CPU all nodes used so far (user + system), and the PostgreSQL server's (its processes running now).
    func cpuSeconds() -> (nodes: Double, postgres: Double) {
        (
            processes.map { PairingBenchmark.cpuSeconds(pid: $0.processIdentifier) }.reduce(0, +),
            Self.postgresCPUSeconds()
        )
    }

    /// The CPU of the processes named `postgres` on this machine (the server and its backends).
    static func postgresCPUSeconds() -> Double {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        var total = 0.0
        for entry in entries where entry.allSatisfy(\.isNumber) {
            guard let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
                stat.contains("(postgres)"), let pid = Int32(entry)
            else { continue }
            total += PairingBenchmark.cpuSeconds(pid: pid)
        }
        return total
    }

    /// Stops the nodes and removes their data directories (they hold the CA's key).
    func stop() {
        for process in processes { process.terminate() }
        for process in processes { _ = process.wait() }
        if let first = directories.first {
            try? FileManager.default.removeItem(atPath: (first as NSString).deletingLastPathComponent)
        }
    }
}

/// A value shared between tasks.
final class Shared<Value: Sendable>: Sendable {
    let value: Mutex<Value>
    init(_ initial: Value) { value = Mutex(initial) }
}
