import ArgumentParser
import Crypto
import Foundation
import HubClient
import MQTT
import NIOSSL
import X509

#if canImport(Glibc)
    import Glibc
#endif

/// Bulwark's MQTT listener against mosquitto 2, with one load generator, the same TLS 1.3 mutual-TLS setup
/// (mosquitto is given the hub's CA and server certificate) and 200-byte JSON, in one run on loopback.
struct MQTTBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mqtt", abstract: "QoS 0/1 throughput, connection rate and idle memory: Bulwark vs mosquitto.")
    @Option var connections = 50
    @Option var seconds = 10
    @Option(help: "QoS 1 messages in flight per connection.") var window = 10
    @Option(help: "Devices held connected and subscribed (memory, connect time and QoS 1 throughput meanwhile).")
    var idle = 1000
    @Option(help: "Connections for the set-up rate.") var connects = 500
    @Option(
        help: """
            Rounds of the QoS 1 and QoS 0 measures, the broker that goes first alternating; each row then gives each \
            broker's median and the median of the rounds' ratios (the host's speed drifts between rounds, not within).
            """)
    var rounds = 1
    @Flag(
        help: """
            Also QoS 1 with an application subscribed to every device's telemetry at QoS 1, its session kept (MQTT 5, \
            expiry 600 s, Receive Maximum 1,024), acknowledging each message; measured last.
            """)
    var subscriber = false
    @Option(help: "The bulwark binary (default: next to this one).") var bulwark: String?
    @Option(help: "The mosquitto binary.") var mosquitto = "/usr/sbin/mosquitto"

    func run() async throws {
        guard (1...500).contains(connections), (1...120).contains(seconds), (1...10_000).contains(idle),
            (1...5000).contains(connects), (1...15).contains(rounds)
        else { throw ValidationError("connections 1-500, seconds 1-120, idle 1-10000, connects 1-5000, rounds 1-15") }
        // Each held connection is a descriptor here and in the broker (which inherits this limit).
        Self.raiseFileLimit()
        let binary = benchBinary(bulwark)
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("bulwark-mqttbench-\(UUID())")
            .path
        // Both brokers' allocations, counted by a library preloaded into each (built here with clang from the
        // package's scripts/allocation-counts.c; without it, the rows say so and the rest is measured).
        let countsDirectory = directory + "-allocations"
        // The hub's data (its CA key, hundreds of MB of stored messages) and its log go when the run ends, after the
        // hub has stopped (defers run last to first), and on SIGTERM or SIGINT too (`Interruption`: registered
        // before anything is made, so that it runs after the brokers are stopped).
        let removeFiles = Interruption.register {
            for path in [countsDirectory, directory, directory + ".log"] {
                try? FileManager.default.removeItem(atPath: path)
            }
        }
        defer { Interruption.run(removeFiles) }
        let allocations: [ChildAllocationCounts?]
        do {
            try FileManager.default.createDirectory(atPath: countsDirectory, withIntermediateDirectories: true)
            let library = try ChildAllocationCounts.buildLibrary(into: countsDirectory)
            allocations = ["bulwark", "mosquitto"].map {
                ChildAllocationCounts(library: library, file: countsDirectory + "/\($0).counts")
            }
        } catch {
            emit("(allocations not counted: \(error))")
            allocations = [nil, nil]
        }
        let environment = unlimitedHubLimits.merging([
            // As mosquitto's max_queued_messages below (`--subscriber`: a subscriber that falls behind).
            "BULWARK_MQTT_MAX_QUEUED_MESSAGES": "1000"
        ]) { $1 }.merging(allocations[0]?.environment ?? [:]) { $1 }
        let (hub, stopHub) = try Interruption.start {
            try HubProcess(binary: binary, directory: directory, environment: environment)
        } undo: { hub in
            hub.stop(within: 20)
        }
        defer { Interruption.run(stopHub) }
        let ports = try await hub.waitForPorts()

        // One device certificate per connection (each publishes under its own topic, as the ACL requires, and one
        // client id is one session: a second connection with it takes the session over): the publishers, then the
        // held devices, then 20 that connect (each once) while they are held.
        let enrolling = ContinuousClock.now
        let devices = try await enrollDevices(
            count: connections + idle + 20, prefix: "b", operatorPort: ports.operator, directory: directory
        ).map(\.credentials)
        emit(
            "(\(devices.count) devices enrolled in \(String(format: "%.1f", (ContinuousClock.now - enrolling).seconds)) s)"
        )

        // mosquitto with the hub's CA and server certificate: TLS 1.3, client certificate required.
        let mosquittoPort = Self.freePort()
        let config = """
            listener \(mosquittoPort) 127.0.0.1
            cafile \(directory)/ca.crt
            certfile \(directory)/hub.crt
            keyfile \(directory)/hub.key
            require_certificate true
            tls_version tlsv1.3
            allow_anonymous true
            set_tcp_nodelay true
            max_inflight_messages 0
            max_queued_messages 1000
            persistence false
            log_dest none
            user \(String(cString: getpwuid(getuid()).pointee.pw_name))
            """
        try config.write(toFile: directory + "/mosquitto.conf", atomically: true, encoding: .utf8)
        let broker = Process()
        broker.executableURL = URL(fileURLWithPath: mosquitto)
        broker.arguments = ["-c", directory + "/mosquitto.conf"]
        broker.environment = ProcessInfo.processInfo.environment.merging(allocations[1]?.environment ?? [:]) { $1 }
        let (_, stopBroker) = try Interruption.start {
            try broker.runWithDefaultSignalMask()
            return StoppableProcess(broker)
        } undo: { broker in
            broker.stop()
        }
        defer { Interruption.run(stopBroker) }
        try await Task.sleep(for: .milliseconds(500))

        let prefix = #"{"temperature":21.5,"humidity":40.25,"battery":3.71,"rssi":-67,"firmware":"1.4.2","note":""#
        let payload = Array((prefix + String(repeating: "x", count: 200 - prefix.utf8.count - 2) + #""}"#).utf8)
        precondition(payload.count == 200)
        let devicesCopy = devices
        emit(
            "bulwark-bench mqtt: \(connections) clients, \(seconds) s per measure, 200-byte JSON, TLS 1.3 mutual TLS, "
                + "MQTT 3.1.1, loopback; QoS 1 with \(window) in flight per client"
                + (rounds > 1 ? "; QoS 1 and 0 in \(rounds) rounds (medians)" : ""))
        emit("measure                                  bulwark        mosquitto      ratio")
        let targets: [(String, Int, Int32)] = [
            ("bulwark", ports.mqtt, hub.processIdentifier), ("mosquitto", mosquittoPort, broker.processIdentifier),
        ]
        /// The publishers' load at `qos` on one broker (`name`, `port`) for `seconds`: each device under its own topic,
        /// its client id the hub's session key (mosquitto's its own).
        func load(_ name: String, _ port: Int, qos: QoS) async -> MQTTLoad.Result {
            await MQTTLoad.run(
                host: "127.0.0.1", port: port, tls: { try devicesCopy[$0].tlsConfiguration() },
                clientID: { name == "bulwark" ? "b\($0)" : "bench-\($0)" }, topic: { "devices/b\($0)/telemetry" },
                connections: connections, qos: qos, window: window, duration: .seconds(seconds), payload: payload)
        }
        /// Allocations per message of the broker `index` since `before` (nan when not counted).
        func allocationsPerMessage(_ index: Int, since before: UInt64?, messages: Int) -> Double {
            guard let before, let after = allocations[index]?.total(), messages > 0 else { return .nan }
            return Double(after &- before) / Double(messages)
        }
        for qos in [QoS.atLeastOnce, .atMostOnce] {
            // Per broker, per round: messages a second, CPU µs and allocations per message.
            var rates: [[Double]] = [[], []]
            var cpu: [[Double]] = [[], []]
            var allocated: [[Double]] = [[], []]
            for round in 0..<rounds {
                for index in round % 2 == 0 ? [0, 1] : [1, 0] {
                    let (name, port, pid) = targets[index]
                    let allocationsBefore = allocations[index]?.total()
                    let before = Self.cpuSeconds(pid)
                    let result = await load(name, port, qos: qos)
                    let used = Self.cpuSeconds(pid) - before
                    rates[index].append(result.perSecond)
                    cpu[index].append(result.messages > 0 ? used / Double(result.messages) * 1e6 : .nan)
                    allocated[index].append(
                        allocationsPerMessage(index, since: allocationsBefore, messages: result.messages))
                    if result.failures > 0 { emit("  (\(name): \(result.failures) connections failed)") }
                }
            }
            let label = qos == .atLeastOnce ? "QoS 1 msg/s (stored before PUBACK)" : "QoS 0 msg/s"
            emit(Self.row(label, rates, "%.0f"))
            emit(Self.row("  broker CPU µs per message", cpu, "%.1f"))
            emit(Self.row("  broker allocations per message", allocated, "%.1f"))
            if rounds > 1 {
                for (what, values, format) in [("msg/s", rates, "%.2f"), ("CPU", cpu, "%.2f")] {
                    let ratios = zip(values[0], values[1]).map { String(format: format, $0 / $1) }
                    emit("  \(what) ratio by round: " + ratios.joined(separator: " "))
                }
            }
        }

        // Connection set-up: TLS 1.3 mutual TLS + CONNECT/CONNACK, 16 at a time.
        var setup: [Double] = []
        for (name, port, _) in targets {
            let start = ContinuousClock.now
            let count = connects
            await withTaskGroup(of: Void.self) { group in
                var next = 0
                func add() {
                    let index = next
                    next += 1
                    group.addTask {
                        _ = try? await MQTTClientConnection.withConnection(
                            host: "127.0.0.1", port: port,
                            tls: try devicesCopy[index % devicesCopy.count].tlsConfiguration(),
                            clientID: name == "bulwark" ? "" : "c-\(index)"
                        ) { _, _ in () }
                    }
                }
                for _ in 0..<16 { add() }
                for await _ in group where next < count { add() }
            }
            let elapsed = ContinuousClock.now - start
            setup.append(
                Double(count) / elapsed.seconds)
        }
        emit(Self.row("connections set up per second", setup[0], setup[1], "%.0f"))

        // Devices held connected, each subscribed to its commands as the agent is: the broker's memory for them, how
        // long a new device then takes to connect, and QoS 1 throughput of the publishers meanwhile (every message
        // is routed among all those subscriptions).
        var memory: [Double] = []
        var total: [Double] = []
        var connectMedian: [Double] = []
        var connectWorst: [Double] = []
        var heldRates: [Double] = []
        var heldCPU: [Double] = []
        var heldAllocations: [Double] = []
        let idleCount = idle
        let firstIdle = connections
        let firstProbe = connections + idle
        for (index, (name, port, pid)) in targets.enumerated() {
            let before = Self.rssKiB(pid)
            let (ready, readyContinuation) = AsyncStream.makeStream(of: Bool.self)
            // At most 64 handshakes at a time (a real fleet does not connect all at once either).
            let (permits, permitContinuation) = AsyncStream.makeStream(of: Void.self)
            for _ in 0..<64 { permitContinuation.yield() }
            let holder = Task {
                await withTaskGroup(of: Void.self) { group in
                    var permit = permits.makeAsyncIterator()
                    for index in 0..<idleCount {
                        guard await permit.next() != nil, !Task.isCancelled else { break }
                        group.addTask {
                            var held = false
                            let device = firstIdle + index
                            _ = try? await MQTTClientConnection.withConnection(
                                host: "127.0.0.1", port: port, tls: try devicesCopy[device].tlsConfiguration(),
                                clientID: name == "bulwark" ? "" : "idle-\(index)", keepAlive: 600
                            ) { connection, reason in
                                guard reason == 0 else { return }
                                try await connection.send(
                                    .subscribe(
                                        packetID: 1,
                                        subscriptions: [
                                            Subscription(
                                                filter: try TopicFilter("devices/b\(device)/commands/#"),
                                                qos: .atLeastOnce)
                                        ], properties: .init()))
                                guard case .suback(_, let codes, _) = try await connection.next(), codes == [1]
                                else { return }
                                held = true
                                readyContinuation.yield(true)
                                try? await Task.sleep(for: .seconds(3600))  // until the holder is cancelled
                            }
                            if !held { readyContinuation.yield(false) }
                        }
                    }
                }
            }
            var settled = 0
            var failed = 0
            let holding = ContinuousClock.now
            for await connected in ready {
                settled += 1
                if !connected { failed += 1 }
                permitContinuation.yield()
                if settled == idleCount { break }
            }
            let took = (ContinuousClock.now - holding).seconds
            emit(
                "  (\(name): \(idleCount - failed) devices connected and subscribed in \(String(format: "%.1f", took)) s)"
            )
            if failed > 0 { emit("  (\(name): \(failed) held connections failed)") }
            try await Task.sleep(for: .seconds(1))
            let rss = Self.rssKiB(pid)
            memory.append((rss - before) / 1024 / Double(max(1, idleCount - failed)) * 1000)
            total.append(rss / 1024)

            // New devices connecting meanwhile (each for the first time): TLS 1.3 mutual TLS + CONNECT to CONNACK,
            // one after another.
            var times: [Double] = []
            for attempt in 0..<20 {
                let start = ContinuousClock.now
                let answered = try? await MQTTClientConnection.withConnection(
                    host: "127.0.0.1", port: port, tls: try devicesCopy[firstProbe + attempt].tlsConfiguration(),
                    clientID: name == "bulwark" ? "" : "probe-\(attempt)"
                ) { _, reason in reason == 0 ? (ContinuousClock.now - start).seconds * 1000 : nil }
                if let answered { times.append(answered) }
            }
            times.sort()
            connectMedian.append(times.isEmpty ? .nan : times[times.count / 2])
            connectWorst.append(times.last ?? .nan)
            if times.count < 20 { emit("  (\(name): \(20 - times.count) of 20 new connections failed)") }

            let allocationsBefore = allocations[index]?.total()
            let cpuBefore = Self.cpuSeconds(pid)
            let result = await load(name, port, qos: .atLeastOnce)
            heldRates.append(result.perSecond)
            heldCPU.append(
                result.messages > 0 ? (Self.cpuSeconds(pid) - cpuBefore) / Double(result.messages) * 1e6 : .nan)
            heldAllocations.append(allocationsPerMessage(index, since: allocationsBefore, messages: result.messages))
            permitContinuation.finish()
            holder.cancel()
            _ = await holder.value
        }
        emit("with \(idleCount) devices held (each subscribed to its commands):")
        emit(Self.row("  RSS MiB (whole process)", total[0], total[1], "%.0f"))
        emit(Self.row("  RSS MiB per 1,000 held connections", memory[0], memory[1], "%.1f"))
        emit(Self.row("  new device connected in, ms (median)", connectMedian[0], connectMedian[1], "%.1f"))
        emit(Self.row("  new device connected in, ms (worst)", connectWorst[0], connectWorst[1], "%.1f"))
        emit(Self.row("  QoS 1 msg/s meanwhile", heldRates[0], heldRates[1], "%.0f"))
        emit(Self.row("    broker CPU µs per message", heldCPU[0], heldCPU[1], "%.1f"))
        emit(Self.row("    broker allocations per message", heldAllocations[0], heldAllocations[1], "%.1f"))

        // Last: the subscriber's backlog must not weigh on the RSS rows above.
        if subscriber {
            // The operator's credential stands for an application's (the hub lets it read the fleet).
            let application = try ClientCredentials(
                certificateFile: directory + "/operators/admin.crt", keyFile: directory + "/operators/admin.key",
                caFile: directory + "/ca.crt"
            ).tlsConfiguration()
            var rates: [[Double]] = [[], []]
            var cpu: [[Double]] = [[], []]
            var delivered: [[Double]] = [[], []]
            var deliveredRates: [[Double]] = [[], []]
            var cpuPerDelivered: [[Double]] = [[], []]
            for round in 0..<rounds {
                for index in round % 2 == 0 ? [0, 1] : [1, 0] {
                    let (name, port, pid) = targets[index]
                    let received = MQTTLoad.Received()
                    let subscription = Task {
                        try await MQTTLoad.subscribe(
                            host: "127.0.0.1", port: port, tls: application, clientID: "application",
                            filter: try TopicFilter("devices/+/telemetry"), received: received)
                    }
                    let waitStart = ContinuousClock.now
                    while !received.subscribed, ContinuousClock.now - waitStart < .seconds(10) {
                        try await Task.sleep(for: .milliseconds(10))
                    }
                    guard received.subscribed else {
                        subscription.cancel()
                        emit("  (\(name): the subscriber did not subscribe: \(await subscription.result))")
                        continue
                    }
                    let start = received.messages
                    let before = Self.cpuSeconds(pid)
                    let loadStart = ContinuousClock.now
                    let result = await load(name, port, qos: .atLeastOnce)
                    // What the subscriber is still owed arrives within moments: counted until it stops coming.
                    var last = -1
                    var lastSeen = ContinuousClock.now
                    while received.messages != last {
                        last = received.messages
                        lastSeen = .now
                        try await Task.sleep(for: .milliseconds(300))
                    }
                    let used = Self.cpuSeconds(pid) - before
                    let took = (lastSeen - loadStart).seconds
                    subscription.cancel()
                    if case .failure(let error) = await subscription.result, !(error is CancellationError) {
                        emit("  (\(name): the subscriber's connection ended: \(error))")
                    }
                    // Its session goes (a clean start, expiry 0): the next round finds no backlog.
                    do {
                        try await MQTTClientConnection.withConnection(
                            host: "127.0.0.1", port: port, tls: application, clientID: "application", version: .v5,
                            configure: { $0.cleanStart = true }, { _, _ in () })
                    } catch {
                        emit("  (\(name): the subscriber's session was not removed: \(error))")
                    }
                    let count = Double(received.messages - start)
                    rates[index].append(result.perSecond)
                    cpu[index].append(result.messages > 0 ? used / Double(result.messages) * 1e6 : .nan)
                    delivered[index].append(result.messages > 0 ? count / Double(result.messages) : .nan)
                    deliveredRates[index].append(count / took)
                    cpuPerDelivered[index].append(count > 0 ? used / count * 1e6 : .nan)
                    if result.failures > 0 { emit("  (\(name): \(result.failures) connections failed)") }
                }
            }
            emit("with an application subscribed to all telemetry (QoS 1, its session kept, Receive Maximum 1,024):")
            emit(Self.row("  QoS 1 msg/s from the devices", rates, "%.0f"))
            emit(Self.row("    broker CPU µs per message", cpu, "%.1f"))
            emit(Self.row("  share the subscriber received", delivered, "%.3f"))
            emit(Self.row("  msg/s the subscriber received", deliveredRates, "%.0f"))
            emit(Self.row("    broker CPU µs per message received", cpuPerDelivered, "%.1f"))
        }
    }

    /// Descriptors up to the hard limit (one per held connection, here and in the brokers started from here).
    static func raiseFileLimit() {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < limit.rlim_max else { return }
        limit.rlim_cur = limit.rlim_max
        _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    }

    /// Unbuffered, so each figure shows as soon as it is measured.
    func emit(_ line: String) { FileHandle.standardOutput.write(Data((line + "\n").utf8)) }

    /// A row of rounds: each broker's median and the median of the rounds' ratios.
    static func row(_ label: String, _ rounds: [[Double]], _ format: String) -> String {
        let ratios = zip(rounds[0], rounds[1]).map { $0 / $1 }
        return row(label, median(rounds[0]), median(rounds[1]), format, ratio: median(ratios))
    }

    static func row(_ label: String, _ a: Double, _ b: Double, _ format: String, ratio: Double? = nil) -> String {
        label.padding(toLength: 40, withPad: " ", startingAt: 0)
            + String(format: " " + format, a)
            .padding(toLength: 15, withPad: " ", startingAt: 0)
            + String(format: format, b)
            .padding(toLength: 15, withPad: " ", startingAt: 0) + String(format: "%.2f", ratio ?? a / b)
    }

    static func freePort() -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
        }
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    static func cpuSeconds(_ pid: Int32) -> Double { PairingBenchmark.cpuSeconds(pid: pid) }

    static func rssKiB(_ pid: Int32) -> Double { procStatusKiB(pid, "VmRSS:") }
}

/// Enrols `count` devices `PREFIX0`, `PREFIX1`, … through the operator API of the hub whose data directory is
/// `directory` (the first operator's credential is there), each with its own P-256 key.
func enrollDevices(count: Int, prefix: String, operatorPort: Int, directory: String) async throws -> [(
    id: String, credentials: ClientCredentials
)] {
    let operatorCredentials = try ClientCredentials(
        certificateFile: directory + "/operators/admin.crt", keyFile: directory + "/operators/admin.key",
        caFile: directory + "/ca.crt")
    var devices: [(id: String, credentials: ClientCredentials)] = []
    try await HTTPSClient.withConnection(
        host: "127.0.0.1", port: operatorPort, tls: try operatorCredentials.tlsConfiguration()
    ) { connection in
        for index in 0..<count {
            let id = "\(prefix)\(index)"
            let key = P256.Signing.PrivateKey()
            let csr = try CertificateSigningRequest(
                version: .v1, subject: try DistinguishedName { CommonName(id) },
                privateKey: Certificate.PrivateKey(key), attributes: CertificateSigningRequest.Attributes(),
                signatureAlgorithm: .ecdsaWithSHA256)
            let body = try JSONSerialization.data(withJSONObject: ["id": id, "csr": try csr.serializeAsPEM().pemString])
            let result = try await connection.send(
                method: "POST", path: "/v1/devices", headers: [("Content-Type", "application/json")],
                body: [UInt8](body))
            guard
                let pem = (try JSONSerialization.jsonObject(with: Data(result.body)) as? [String: Any])?["certificate"]
                    as? String
            else { throw ClientError("enroll failed: \(result.status)") }
            devices.append(
                (
                    id,
                    ClientCredentials(
                        certificatePEM: Array(pem.utf8), keyPEM: Array(key.pemRepresentation.utf8),
                        caPEM: operatorCredentials.caPEM)
                ))
        }
    }
    return devices
}
