import ArgumentParser
import Crypto
import Foundation
import Gateway
import Hub
import HubClient
import Hummingbird
import HummingbirdTLS
import Logging
import NIOSSL
import PKI
import ServiceLifecycle
import Store
import Synchronization
import X509

@main
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bulwark-bench",
        abstract: "Benchmarks and a mutual-TLS load generator for Bulwark.",
        subcommands: [
            Telemetry.self, PairingBenchmark.self, MQTTBenchmark.self, GatewayBenchmark.self, AgentBenchmark.self,
            UpdateBenchmark.self, HSMBenchmark.self, RolloutBenchmark.self, AdvisoriesBenchmark.self,
            AdvisoriesMatch.self, Load.self, DashboardBenchmark.self, JSONBenchmark.self, ClusterBenchmark.self,
            StoreBenchmark.self,
        ])
}

/// 200 bytes of JSON, like a small sensor reading.
let telemetryBody: [UInt8] = {
    var text = #"{"temperature":21.5,"humidity":40.25,"battery":3.71,"rssi":-67,"firmware":"1.4.2","uptime":86400,"#
    text += #""note":""#
    text += String(repeating: "x", count: 200 - text.utf8.count - 2) + #""}"#
    return Array(text.utf8)
}()

struct Telemetry: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "POST /v1/telemetry on the real hub vs a bare Hummingbird mTLS handler, same load generator.")
    @Option(help: "Concurrent keep-alive connections.") var connections = 50
    @Option(help: "Seconds of load per target.") var seconds = 10
    @Option(help: "Seconds of warm-up per target (not counted).") var warmup = 2
    @Option(help: "The three targets in turn this many times (the machine's speed drifts: read the median ratio).")
    var rounds = 1

    func run() async throws {
        precondition(telemetryBody.count == 200)
        guard (1...20).contains(rounds) else { throw ValidationError("--rounds must be 1-20") }
        let logger = Logger(label: "bench", factory: { _ in SwiftLogNoOpLogHandler() })
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("bulwark-bench-\(UUID())").path
        var configuration = HubConfiguration(dataDirectory: directory)
        configuration.device.port = 0
        configuration.operatorAPI.port = 0
        configuration.pairing.port = 0
        configuration.mqtt.port = 0
        // One device on 50 connections measures throughput, not the per-device limits: lift them.
        configuration.gateway.deviceRate = 1e6
        configuration.gateway.deviceBurst = 1_000_000
        configuration.gateway.routeRate = 1e6
        configuration.gateway.routeBurst = 1_000_000
        configuration.gateway.sourceRate = 1e6
        configuration.gateway.sourceBurst = 1_000_000
        configuration.gateway.connectionBurst = 1000  // all 50 connections open at once
        // The store is opened here to count its group commits (how many messages share one transaction and fsync).
        let commits = Mutex((count: 0, messages: 0, seconds: 0.0))
        _ = try SecretFiles.makePrivateDirectory(directory)
        try SecretFiles.prepareStoreFile(configuration.sqlitePath)
        let store = try SQLiteHubStore(path: configuration.sqlitePath) { messages, duration in
            commits.withLock {
                $0.count += 1
                $0.messages += messages
                $0.seconds += Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
            }
        }
        let hub = try await HubServer.make(
            configuration: configuration, store: store, logger: logger, gracefulShutdownSignals: [])
        let hubTask = Task { try await hub.run() }
        let ports = await hub.listeningPorts()
        guard
            let device = try await enrollDevices(
                count: 1, prefix: "bench-", operatorPort: ports.operator, directory: directory
            ).first?.credentials
        else { throw ClientError("enrolling the bench device failed") }
        let tls = try device.tlsConfiguration()
        let signer = try device.signer()

        let (bare, barePort) = try await startBareServer(credentials: hub.credentials, logger: logger)

        print(
            "bulwark-bench telemetry: \(connections) connections, \(seconds) s per target after \(warmup) s warm-up, "
                + "200-byte JSON, TLS 1.3 mutual TLS, keep-alive, loopback")
        var ratios: [(ecdsa: Double, hmac: Double)] = []
        for round in 1...rounds {
            if rounds > 1 { print("round \(round) of \(rounds)") }
            var results: [(String, LoadGenerator.Result, Double)] = []
            var commitLines: [String] = []
            for (name, port, signed, session) in [
                ("bulwark hub: signed ecdsa-p256-sha256, SQLite", ports.device, true, false),
                ("bulwark hub: signed hmac-sha256 session, SQLite", ports.device, true, true),
                ("bare Hummingbird mTLS handler (stores nothing)", barePort, false, false),
            ] {
                _ = await load(port: port, tls: tls, seconds: warmup, signer: signed ? signer : nil, session: session)
                let before = processCPUSeconds()
                let committedBefore = commits.withLock { $0 }
                let result = await load(
                    port: port, tls: tls, seconds: seconds, signer: signed ? signer : nil, session: session)
                results.append((name, result, (processCPUSeconds() - before) / Double(max(1, result.successes)) * 1e6))
                let committed = commits.withLock { $0 }
                let count = committed.count - committedBefore.count
                if count > 0 {
                    commitLines.append(
                        "\(name): \(count) group commits, "
                            + String(
                                format: "%.1f messages and %.2f ms each",
                                Double(committed.messages - committedBefore.messages) / Double(count),
                                (committed.seconds - committedBefore.seconds) / Double(count) * 1000))
                }
            }
            print(
                "target".padding(toLength: 50, withPad: " ", startingAt: 0)
                    + "   req/s      p50 ms   p99 ms   requests  errors  CPU µs/req")
            for (name, result, cpu) in results {
                print(
                    name.padding(toLength: 50, withPad: " ", startingAt: 0)
                        + String(
                            format: "%8.0f   %8.2f %8.2f %10d %7d %11.0f", result.requestsPerSecond,
                            result.percentile(50),
                            result.percentile(99), result.successes, result.failures, cpu))
            }
            let bareRate = results[2].1.requestsPerSecond
            print(
                String(
                    format: "ratio hub / bare: ecdsa %.2f, hmac session %.2f",
                    results[0].1.requestsPerSecond / bareRate,
                    results[1].1.requestsPerSecond / bareRate))
            print(
                String(
                    format:
                        "CPU per request is the whole process (hub and load generator, 2 cores): ecdsa adds %.0f µs "
                        + "over the bare handler, hmac %.0f µs",
                    results[0].2 - results[2].2, results[1].2 - results[2].2))
            for line in commitLines { print(line) }
            ratios.append((results[0].1.requestsPerSecond / bareRate, results[1].1.requestsPerSecond / bareRate))
        }
        if rounds > 1 {
            print(
                String(
                    format: "median ratio hub / bare over %d rounds: ecdsa %.2f, hmac session %.2f", rounds,
                    median(ratios.map(\.ecdsa)), median(ratios.map(\.hmac)))
                    + " (hmac per round: " + ratios.map { String(format: "%.2f", $0.hmac) }.joined(separator: " ") + ")"
            )
        }
        if let verify = opensslVerifyMicroseconds() {
            print(String(format: "openssl speed ecdsap256, same run: %.0f µs per verify, one core", verify))
        }
        let stored = try await hub.store.telemetryCount(of: nil)
        print("telemetry rows stored by the hub: \(stored)")

        await bare.triggerGracefulShutdown()
        await hub.shutdown()
        try await hubTask.value
        try? FileManager.default.removeItem(atPath: directory)
    }

    func load(
        port: Int, tls: TLSConfiguration, seconds: Int, signer: MessageSigner?, session: Bool
    ) async -> LoadGenerator.Result {
        await LoadGenerator.run(
            host: "127.0.0.1", port: port, tls: tls, connections: connections, duration: .seconds(seconds),
            path: "/v1/telemetry", headers: [("Content-Type", "application/json")], body: telemetryBody,
            expectedStatus: 202, signer: signer, session: session)
    }

    /// User + system CPU of this process so far (getrusage).
    func processCPUSeconds() -> Double {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec)
            + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
    }

    /// `openssl speed -seconds 2 ecdsap256`: microseconds per verification, or nil without openssl. Started with the
    /// default signal mask: openssl times its loops with SIGALRM, which the hub's threads block.
    func opensslVerifyMicroseconds() -> Double? {
        guard let output = try? UpdateBenchmark.capture("/usr/bin/openssl", ["speed", "-seconds", "2", "ecdsap256"])
        else { return nil }
        // The summary line: " 256 bits ecdsa (nistp256)   0.0000s   0.0001s  40000.0  12000.0" (sign/s, verify/s).
        guard let line = output.split(separator: "\n").last(where: { $0.contains("nistp256") && $0.contains("bits") }),
            let verifies = line.split(separator: " ").last.flatMap({ Double($0) }), verifies > 0
        else { return nil }
        return 1e6 / verifies
    }

    /// The baseline: Hummingbird with TLS 1.3 and a required client certificate (verified by BoringSSL against the
    /// same CA), a handler that reads the body and answers 202. No identity, no validation, no storage.
    func startBareServer(credentials: HubCredentials, logger: Logger) async throws -> (ServiceGroup, Int) {
        var tls = TLSConfiguration.makeServerConfigurationWithMTLS(
            certificateChain: [
                .certificate(try NIOSSLCertificate(bytes: credentials.serverCertificate.derBytes, format: .der))
            ],
            privateKey: .privateKey(
                try NIOSSLPrivateKey(bytes: Array(credentials.serverKey.pemRepresentation.utf8), format: .pem)),
            trustRoots: .certificates([
                try NIOSSLCertificate(bytes: credentials.authority.certificate.derBytes, format: .der)
            ]))
        tls.minimumTLSVersion = .tlsv13
        let router = Router()
        router.post("/v1/telemetry") { request, _ -> Response in
            var request = request
            _ = try await request.collectBody(upTo: 64 * 1024)
            return Response(status: .accepted, body: .init(byteBuffer: ByteBuffer(string: #"{"id":1}"#)))
        }
        let (ports, continuation) = AsyncStream.makeStream(of: Int.self)
        let app = Application(
            router: router, server: try .tls(.http1(), tlsConfiguration: tls),
            configuration: .init(address: .hostname("127.0.0.1", port: 0)),
            onServerRunning: { continuation.yield($0.localAddress?.port ?? 0) }, logger: logger)
        let group = ServiceGroup(configuration: .init(services: [app], gracefulShutdownSignals: [], logger: logger))
        Task { try await group.run() }
        var port = 0
        for await bound in ports {
            port = bound
            break
        }
        return (group, port)
    }
}

struct Load: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Send 200-byte telemetry to any hub with a device certificate and report req/s and latency.")
    @Option(help: "Hub device API, e.g. https://127.0.0.1:8443") var hub = "https://127.0.0.1:8443"
    @Option(help: "Device certificate (PEM).") var cert: String
    @Option(help: "Device key (PEM).") var key: String
    @Option(help: "Hub CA certificate (PEM).") var cacert: String
    @Option var connections = 50
    @Option var seconds = 10

    func run() async throws {
        guard let url = URLComponents(string: hub), let host = url.host else { throw ValidationError("bad --hub") }
        guard (1...1000).contains(connections), (1...600).contains(seconds) else {
            throw ValidationError("connections must be 1-1000 and seconds 1-600")
        }
        let credentials = try ClientCredentials(certificateFile: cert, keyFile: key, caFile: cacert)
        let result = await LoadGenerator.run(
            host: host, port: url.port ?? 8443, tls: try credentials.tlsConfiguration(), connections: connections,
            duration: .seconds(seconds), path: "/v1/telemetry", headers: [("Content-Type", "application/json")],
            body: telemetryBody, expectedStatus: 202, signer: try credentials.signer())
        print(
            String(
                format: "%.0f req/s, p50 %.2f ms, p99 %.2f ms, %d ok, %d errors", result.requestsPerSecond,
                result.percentile(50), result.percentile(99), result.successes, result.failures))
    }
}

extension Duration {
    /// The duration in seconds, for rates and percentages.
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}

/// A `/proc/PID/status` field in KiB (`VmRSS:`, `VmHWM:`), 0 when the process is gone.
func procStatusKiB(_ pid: Int32, _ field: String) -> Double {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
        let line = text.split(separator: "\n").first(where: { $0.hasPrefix(field) })
    else { return 0 }
    return Double(line.split(separator: " ").dropFirst().first ?? "0") ?? 0
}
