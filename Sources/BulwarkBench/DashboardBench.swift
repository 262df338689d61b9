import ArgumentParser
import Crypto
import Foundation
import HubClient
import MQTT
import X509

/// The dashboard's and `/metrics`' figures (issue: "Dashboard overview of 10,000 devices: server time per page
/// ≤ 20 ms; `/metrics` scrape ≤ 5 ms and its size with 10,000 devices connected; the hub's CPU with one live-events
/// client during a 1,000 msg/s flood of refusals").
struct DashboardBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dashboard",
        abstract: "Overview pages over N devices, /metrics with M connected, a refusal flood with a live-events client."
    )
    @Option(help: "Devices enrolled (the overview pages over them).") var devices = 10_000
    @Option(help: "Devices holding an MQTT connection while /metrics is scraped.") var connected = 10_000
    @Option(help: "Refusals per second in the flood.") var rate = 1000
    @Option(help: "Seconds of flood, once without and once with a live-events client.") var floodSeconds = 10
    @Option(help: "The bulwark binary (default: next to this one).") var bulwark: String?

    func emit(_ line: String) { FileHandle.standardOutput.write(Data((line + "\n").utf8)) }

    /// Milliseconds of each request over one kept-alive connection (client clock: an upper bound on server time),
    /// and the hub's own time for it when it says (`Server-Timing: app;dur=…`, W3C Server Timing).
    static func timings(_ count: Int, _ request: () async throws -> HTTPResult) async throws -> (
        median: Double, p99: Double, bytes: Int, server: (median: Double, p99: Double)?
    ) {
        var samples: [Double] = []
        var server: [Double] = []
        var bytes = 0
        for _ in 0..<count {
            let start = ContinuousClock.now
            let result = try await request()
            samples.append((ContinuousClock.now - start).seconds * 1000)
            guard result.status == 200 else { throw ValidationError("status \(result.status)") }
            bytes = result.body.count
            if let timing = result.header("Server-Timing"), let value = timing.split(separator: "=").last,
                let milliseconds = Double(value)
            {
                server.append(milliseconds)
            }
        }
        func summary(_ values: [Double]) -> (Double, Double) {
            let sorted = values.sorted()
            return (sorted[sorted.count / 2], sorted[min(sorted.count - 1, sorted.count * 99 / 100)])
        }
        let (median, p99) = summary(samples)
        return (median, p99, bytes, server.count == samples.count ? summary(server) : nil)
    }

    func run() async throws {
        guard (100...100_000).contains(devices), (0...20_000).contains(connected), connected <= devices,
            (10...10_000).contains(rate), (2...120).contains(floodSeconds)
        else { throw ValidationError("devices 100-100000, connected 0-20000 and ≤ devices, rate 10-10000") }
        let binary = benchBinary(bulwark)
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("bulwark-dashbench-\(UUID())").path
        try FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: base) }
        var environment = BenchHub.unlimitedUpdates
        environment["BULWARK_GATEWAY_QUARANTINE_INVALID"] = "100000000"
        environment["BULWARK_GATEWAY_ROUTE_RATE"] = "1000000"
        environment["BULWARK_GATEWAY_ROUTE_BURST"] = "1000000"
        environment["BULWARK_MQTT_MAX_CONNECTIONS"] = "100000"
        let benchHub = try BenchHub.start(binary: binary, base: base, environment: environment)
        let hub = benchHub.hub
        defer {
            hub.terminate()
            _ = hub.wait()
        }
        let ports = try await hub.waitForPorts()
        emit("bulwark-bench dashboard: enrolling \(devices) devices …")
        let enrolled = try await enrollDevices(
            count: devices, prefix: "dash-", operatorPort: ports.operator, directory: benchHub.data)
        let operatorCredentials = try ClientCredentials(
            certificateFile: benchHub.data + "/operators/admin.crt", keyFile: benchHub.data + "/operators/admin.key",
            caFile: benchHub.data + "/ca.crt")

        emit("| measure | median | p99 | aim |")
        emit("|---|---|---|---|")
        // 1. /metrics with every device connected, each having stored one message.
        let key = P256.Signing.PrivateKey()
        let csr = try CertificateSigningRequest(
            version: .v1, subject: try DistinguishedName { CommonName("bench") },
            privateKey: Certificate.PrivateKey(key),
            attributes: CertificateSigningRequest.Attributes(), signatureAlgorithm: .ecdsaWithSHA256)
        let issued = try await HTTPSClient.request(
            host: "127.0.0.1", port: ports.operator, tls: try operatorCredentials.tlsConfiguration(), method: "POST",
            path: "/v1/monitors", headers: [("Content-Type", "application/json")],
            body: Array(
                try JSONSerialization.data(withJSONObject: ["name": "bench", "csr": try csr.serializeAsPEM().pemString])
            ))
        guard
            let pem = (try JSONSerialization.jsonObject(with: Data(issued.body)) as? [String: Any])?["certificate"]
                as? String
        else { throw ValidationError("no monitor certificate: \(issued.status)") }
        let monitor = ClientCredentials(
            certificatePEM: Array(pem.utf8), keyPEM: Array(key.pemRepresentation.utf8),
            caPEM: operatorCredentials.caPEM)
        emit("bulwark-bench dashboard: connecting \(connected) devices over MQTT …")
        let (ready, readyContinuation) = AsyncStream.makeStream(of: Bool.self)
        let holders = Array(enrolled.prefix(connected))
        // In batches of 200: ten thousand TLS handshakes at once on two cores would pass the connect deadline.
        let (batches, batchContinuation) = AsyncStream.makeStream(of: Int.self)
        let holder = Task {
            await withTaskGroup(of: Void.self) { group in
                var next = batches.makeAsyncIterator()
                for (index, device) in holders.enumerated() {
                    if index > 0, index % 200 == 0 { _ = await next.next() }
                    group.addTask {
                        var held = false
                        _ = try? await MQTTClientConnection.withConnection(
                            host: "127.0.0.1", port: ports.mqtt, tls: try device.credentials.tlsConfiguration(),
                            clientID: device.id, version: .v5, keepAlive: 600
                        ) { mqtt, reason in
                            guard reason == 0 else { return }
                            _ = try? await mqtt.publishAcknowledged(
                                topic: try TopicName("devices/\(device.id)/telemetry"), payload: Array(#"{"t":1}"#.utf8)
                            )
                            held = true
                            readyContinuation.yield(true)
                            try? await Task.sleep(for: .seconds(3600))
                        }
                        if !held { readyContinuation.yield(false) }
                    }
                }
            }
        }
        var settled = 0
        var failed = 0
        if connected > 0 {
            for await success in ready {
                settled += 1
                if !success { failed += 1 }
                if settled % 200 == 0 { batchContinuation.yield(settled) }
                if settled == connected { break }
            }
        }
        batchContinuation.finish()
        // The last connections' messages are still being committed: the scrapes measure the connected fleet at rest
        // (Prometheus scrapes every 15 s or so, not during a reconnection storm).
        try await Task.sleep(for: .seconds(5))
        try await HTTPSClient.withConnection(
            host: "127.0.0.1", port: ports.operator, tls: try monitor.tlsConfiguration()
        ) { connection in
            let figures = try await Self.timings(50) { try await connection.send(method: "GET", path: "/metrics") }
            emit(
                String(
                    format:
                        "| /metrics scrape, %d devices enrolled, %d connected (%d failed), %.1f KB | %.1f ms | %.1f ms | ≤ 5 ms |",
                    devices, connected - failed, failed, Double(figures.bytes) / 1024, figures.median, figures.p99))
        }
        holder.cancel()
        _ = await holder.value
        // The hub settles after 10,000 disconnects before anything else is timed.
        try await Task.sleep(for: .seconds(5))

        // 2. Overview pages (first, middle, last; by id, last seen and expiry; a search; a status filter), after the
        // connected devices each stored a message (so "last seen" is filled in).
        try await HTTPSClient.withConnection(
            host: "127.0.0.1", port: ports.operator, tls: try operatorCredentials.tlsConfiguration()
        ) { connection in
            let last = (devices + 49) / 50
            for (sort, page, filter) in [
                ("id", 1, ""), ("id", last / 2, ""), ("id", last, ""), ("lastSeen", 1, ""), ("lastSeen", last, ""),
                ("expiry", last, ""), ("lastSeen", 1, "&q=dash-12&status=active"),
            ] {
                let path = "/ui?sort=\(sort)&desc=1&page=\(page)\(filter)"
                let figures = try await Self.timings(40) {
                    try await connection.send(method: "GET", path: path)
                }
                let what =
                    filter.isEmpty
                    ? "sort \(sort), page \(page) of \(last)"
                    : "id containing dash-12, active, sort \(sort), first page"
                emit(
                    "| overview of \(devices) devices, \(what) (\(figures.bytes / 1024) KB) | "
                        + String(format: "%.1f ms | %.1f ms", figures.median, figures.p99) + " | ≤ 20 ms |")
                if let server = figures.server {
                    emit(
                        "| … the hub's own time (Server-Timing) | "
                            + String(format: "%.1f ms | %.1f ms", server.median, server.p99) + " | ≤ 20 ms |")
                }
            }
        }

        // 3. A flood of refusals (invalid JSON at QoS 1: PUBACK 0x99 each, every one audited; QoS 0 would be cut
        // after 20 refusals in a row), without and with a live-events client.
        let flooders = Array(enrolled.suffix(20))
        // The hub idle, then each condition twice, alternating (one run each, in a fixed order, would credit the
        // order to the client).
        let idleBefore = PairingBenchmark.cpuSeconds(pid: hub.processIdentifier)
        try await Task.sleep(for: .seconds(3))
        emit(
            String(
                format: "| hub idle (after the above) | hub CPU %.0f %% | |",
                (PairingBenchmark.cpuSeconds(pid: hub.processIdentifier) - idleBefore) / 3 * 100))
        for withClient in [false, true, false, true] {
            var stream: Process?
            let received = base + "/stream-\(withClient)"
            if withClient {
                let curl = Process()
                curl.executableURL = URL(fileURLWithPath: "/usr/bin/env")
                curl.arguments = [
                    "curl", "-s", "-N", "--cacert", benchHub.data + "/ca.crt", "--cert",
                    benchHub.data + "/operators/admin.crt", "--key", benchHub.data + "/operators/admin.key",
                    "-o", received, "https://localhost:\(ports.operator)/ui/events/stream",
                ]
                try curl.runWithDefaultSignalMask()
                stream = curl
                try await Task.sleep(for: .seconds(1))
            }
            let cpuBefore = PairingBenchmark.cpuSeconds(pid: hub.processIdentifier)
            let start = ContinuousClock.now
            let perConnection = Double(rate) / Double(flooders.count)
            let seconds = floodSeconds
            let results = await withTaskGroup(of: (Int, String).self) { group in
                for device in flooders {
                    group.addTask {
                        var count = 0
                        var stop = "time"
                        do {
                            try await MQTTClientConnection.withConnection(
                                host: "127.0.0.1", port: ports.mqtt, tls: try device.credentials.tlsConfiguration(),
                                clientID: device.id, version: .v5
                            ) { mqtt, reason in
                                guard reason == .success else {
                                    stop = "CONNACK \(reason)"
                                    return
                                }
                                let topic = try TopicName("devices/\(device.id)/telemetry")
                                let begin = ContinuousClock.now
                                while ContinuousClock.now - begin < .seconds(seconds) {
                                    count += 1
                                    let code = try await mqtt.publishAcknowledged(
                                        topic: topic, payload: Array("not json".utf8))
                                    guard code == .payloadFormatInvalid else {
                                        stop = "PUBACK \(code)"
                                        return
                                    }
                                    let due = begin + .milliseconds(Int64(Double(count) * 1000 / perConnection))
                                    if due > ContinuousClock.now { try await Task.sleep(until: due) }
                                }
                            }
                        } catch { stop = "error: \(error)" }
                        return (count, stop)
                    }
                }
                return await group.reduce(into: [(Int, String)]()) { $0.append($1) }
            }
            let sent = results.map(\.0).reduce(0, +)
            let stops = Dictionary(grouping: results.map(\.1), by: { $0 }).mapValues(\.count)
            if Set(stops.keys) != ["time"] { emit("  (flood connections ended by: \(stops))") }
            let elapsed = (ContinuousClock.now - start).seconds
            let cpu = (PairingBenchmark.cpuSeconds(pid: hub.processIdentifier) - cpuBefore) / elapsed * 100
            var line = String(
                format: "| refusal flood %.0f msg/s for %.0f s, %@ | hub CPU %.0f %% |", Double(sent) / elapsed,
                elapsed,
                withClient ? "one live-events client" : "no live-events client", cpu)
            if let stream {
                stream.terminate()
                stream.waitUntilExit()
                let text = (try? String(contentsOfFile: received, encoding: .utf8)) ?? ""
                let records = text.components(separatedBy: "event: record").count - 1
                let dropped = text.components(separatedBy: "\n").filter { $0.hasPrefix("data: {\"count\":") }
                    .compactMap { Int($0.dropFirst(15).dropLast()) }.reduce(0, +)
                line += " client got \(records) records, \(dropped) counted as not shown |"
            } else {
                line += " |"
            }
            emit(line)
        }
    }
}
