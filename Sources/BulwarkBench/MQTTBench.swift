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
    @Option(help: "Idle connections for the memory figure.") var idle = 1000
    @Option(help: "Connections for the set-up rate.") var connects = 500
    @Option(help: "The bulwark binary (default: next to this one).") var bulwark: String?
    @Option(help: "The mosquitto binary.") var mosquitto = "/usr/sbin/mosquitto"

    func run() async throws {
        guard (1...500).contains(connections), (1...120).contains(seconds), (1...5000).contains(idle),
            (1...5000).contains(connects)
        else { throw ValidationError("connections 1-500, seconds 1-120, idle and connects 1-5000") }
        let binary = benchBinary(bulwark)
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("bulwark-mqttbench-\(UUID())")
            .path
        // The gateway pipeline runs in full; its limits are raised so that the load is measured, not refused.
        let unlimited = "1000000"
        let hub = try HubProcess(
            binary: binary, directory: directory,
            environment: [
                "BULWARK_GATEWAY_DEVICE_RATE": unlimited, "BULWARK_GATEWAY_DEVICE_BURST": unlimited,
                "BULWARK_GATEWAY_ROUTE_RATE": unlimited, "BULWARK_GATEWAY_ROUTE_BURST": unlimited,
                "BULWARK_GATEWAY_SOURCE_RATE": unlimited, "BULWARK_GATEWAY_SOURCE_BURST": unlimited,
                "BULWARK_GATEWAY_CONNECTION_RATE": unlimited, "BULWARK_GATEWAY_CONNECTION_BURST": unlimited,
                "BULWARK_MQTT_MAX_CONNECTIONS_PER_SOURCE": unlimited, "BULWARK_MQTT_MAX_CONNECTIONS": unlimited,
            ])
        defer {
            hub.terminate()
            _ = hub.wait()
        }
        let ports = try await hub.waitForPorts()

        // One device certificate per connection (each publishes under its own topic, as the ACL requires, and one
        // client id is one session: a second connection with it takes the session over).
        let devices = try await enrollDevices(
            count: max(connections, idle), prefix: "b", operatorPort: ports.operator, directory: directory
        ).map(\.credentials)

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
            max_queued_messages 100000
            persistence false
            log_dest none
            user \(String(cString: getpwuid(getuid()).pointee.pw_name))
            """
        try config.write(toFile: directory + "/mosquitto.conf", atomically: true, encoding: .utf8)
        let broker = Process()
        broker.executableURL = URL(fileURLWithPath: mosquitto)
        broker.arguments = ["-c", directory + "/mosquitto.conf"]
        try broker.runWithDefaultSignalMask()
        defer {
            broker.terminate()
            broker.waitUntilExit()
        }
        try await Task.sleep(for: .milliseconds(500))

        let prefix = #"{"temperature":21.5,"humidity":40.25,"battery":3.71,"rssi":-67,"firmware":"1.4.2","note":""#
        let payload = Array((prefix + String(repeating: "x", count: 200 - prefix.utf8.count - 2) + #""}"#).utf8)
        precondition(payload.count == 200)
        let devicesCopy = devices
        emit(
            "bulwark-bench mqtt: \(connections) clients, \(seconds) s per measure, 200-byte JSON, TLS 1.3 mutual TLS, "
                + "MQTT 3.1.1, loopback; QoS 1 with \(window) in flight per client")
        emit("measure                                  bulwark        mosquitto      ratio")
        let targets: [(String, Int, Int32)] = [
            ("bulwark", ports.mqtt, hub.processIdentifier), ("mosquitto", mosquittoPort, broker.processIdentifier),
        ]
        for qos in [QoS.atLeastOnce, .atMostOnce] {
            var rates: [Double] = []
            var cpu: [Double] = []
            for (name, port, pid) in targets {
                let before = Self.cpuSeconds(pid)
                let result = await MQTTLoad.run(
                    host: "127.0.0.1", port: port, tls: { try devicesCopy[$0].tlsConfiguration() },
                    clientID: { name == "bulwark" ? "b\($0)" : "bench-\($0)" }, topic: { "devices/b\($0)/telemetry" },
                    connections: connections, qos: qos, window: window, duration: .seconds(seconds), payload: payload)
                let used = Self.cpuSeconds(pid) - before
                rates.append(result.perSecond)
                cpu.append(result.messages > 0 ? used / Double(result.messages) * 1e6 : .nan)
                if result.failures > 0 { emit("  (\(name): \(result.failures) connections failed)") }
            }
            let label = qos == .atLeastOnce ? "QoS 1 msg/s (stored before PUBACK)" : "QoS 0 msg/s"
            emit(Self.row(label, rates[0], rates[1], "%.0f"))
            emit(Self.row("  broker CPU µs per message", cpu[0], cpu[1], "%.1f"))
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

        // Resident memory per 1,000 idle connections.
        var memory: [Double] = []
        for (name, port, pid) in targets {
            let before = Self.rssKiB(pid)
            let (ready, readyContinuation) = AsyncStream.makeStream(of: Bool.self)
            let idleCount = idle
            let holder = Task {
                await withTaskGroup(of: Void.self) { group in
                    for index in 0..<idleCount {
                        group.addTask {
                            var held = false
                            _ = try? await MQTTClientConnection.withConnection(
                                host: "127.0.0.1", port: port,
                                tls: try devicesCopy[index % devicesCopy.count].tlsConfiguration(),
                                clientID: name == "bulwark" ? "" : "idle-\(index)", keepAlive: 600
                            ) { _, reason in
                                guard reason == 0 else { return }
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
            for await connected in ready {
                settled += 1
                if !connected { failed += 1 }
                if settled == idleCount { break }
            }
            if failed > 0 { emit("  (\(name): \(failed) idle connections failed)") }
            try await Task.sleep(for: .seconds(1))
            memory.append((Self.rssKiB(pid) - before) / 1024 / Double(max(1, idleCount - failed)) * 1000)
            holder.cancel()
            _ = await holder.value
        }
        emit(Self.row("RSS MiB per 1,000 idle connections", memory[0], memory[1], "%.1f"))
    }

    /// Unbuffered, so each figure shows as soon as it is measured.
    func emit(_ line: String) { FileHandle.standardOutput.write(Data((line + "\n").utf8)) }

    static func row(_ label: String, _ a: Double, _ b: Double, _ format: String) -> String {
        label.padding(toLength: 40, withPad: " ", startingAt: 0)
            + String(format: " " + format, a)
            .padding(toLength: 15, withPad: " ", startingAt: 0)
            + String(format: format, b)
            .padding(toLength: 15, withPad: " ", startingAt: 0) + String(format: "%.2f", a / b)
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
