import ArgumentParser
import Core
import Crypto
import Foundation
import HubClient
import Pairing

#if canImport(Glibc)
    import Glibc
#endif

/// Complete pairings per second against the real hub binary (handshake + CSR + certificate + activation), the
/// hub's CPU per pairing read from /proc, and the RID resolution batch.
struct PairingBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pairing", abstract: "Pairings per second and hub CPU per pairing; RID resolution for 10,000.")
    @Option(help: "Pairings to run.") var count = 500
    @Option(help: "Pairings in flight at once.") var concurrency = 16
    @Option(help: "Suite: p256 or 25519.") var suite = "p256"
    @Option(help: "The bulwark binary (default: next to this one).") var bulwark: String?

    func run() async throws {
        guard (1...20_000).contains(count), (1...256).contains(concurrency) else {
            throw ValidationError("count must be 1-20000 and concurrency 1-256")
        }
        let chosen: PairingLabel.Suite = suite == "25519" ? .x25519AESGCMSHA256 : .p256AESGCMSHA256
        let binary = benchBinary(bulwark)
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("bulwark-pairbench-\(UUID())")
            .path
        let hub = try HubProcess(binary: binary, directory: directory)
        defer {
            hub.terminate()
            _ = hub.wait()
            try? FileManager.default.removeItem(atPath: directory)
            try? FileManager.default.removeItem(atPath: hub.logFile)
        }
        let ports = try await hub.waitForPorts()

        // Devices, made and claimed before the clock starts.
        var devices: [(PairingLabel, NoiseKeyPair)] = []
        for index in 0..<count {
            let identity = chosen.dh.generateKeyPair()
            let secret = SymmetricKey(size: .bits128).withUnsafeBytes { Array($0) }
            devices.append(
                (
                    try PairingLabel(
                        suite: chosen, deviceID: try DeviceID("bench-\(index)"), publicKey: identity.publicKey,
                        setupSecret: secret), identity
                ))
        }
        let operatorCredentials = try ClientCredentials(
            certificateFile: directory + "/operators/admin.crt", keyFile: directory + "/operators/admin.key",
            caFile: directory + "/ca.crt")
        let labels = devices.map(\.0.text)
        try await HTTPSClient.withConnection(
            host: "127.0.0.1", port: ports.operator, tls: try operatorCredentials.tlsConfiguration()
        ) { connection in
            for text in labels {
                let body = [UInt8](try JSONSerialization.data(withJSONObject: ["label": text]))
                let result = try await connection.send(
                    method: "POST", path: "/v1/pairing/claims", headers: [("Content-Type", "application/json")],
                    body: body)
                guard result.status == 201 else { throw ClientError("claim failed: \(result.status)") }
            }
        }

        let cpuBefore = Self.cpuSeconds(pid: hub.processIdentifier)
        let clock = ContinuousClock()
        let start = clock.now
        let pairs = devices
        let port = ports.pairing
        let failures = await withTaskGroup(of: Int.self) { group in
            var next = 0
            var failures = 0
            func add() {
                let (label, identity) = pairs[next]
                next += 1
                group.addTask {
                    do {
                        _ = try await PairingClient.pair(
                            host: "127.0.0.1", port: port, label: label, identityKey: identity)
                        return 0
                    } catch {
                        return 1
                    }
                }
            }
            for _ in 0..<min(concurrency, pairs.count) { add() }
            for await failed in group {
                failures += failed
                if next < pairs.count { add() }
            }
            return failures
        }
        let elapsed = clock.now - start
        let cpuAfter = Self.cpuSeconds(pid: hub.processIdentifier)
        let seconds = elapsed.seconds
        let succeeded = count - failures
        print(
            "bulwark-bench pairing: \(count) pairings (\(chosen.name)), \(concurrency) in flight, real hub binary on "
                + "loopback, SQLite store")
        print(String(format: "pairings per second:        %.0f", Double(succeeded) / seconds))
        print(
            String(
                format: "hub CPU per pairing:        %.2f ms", (cpuAfter - cpuBefore) * 1000 / Double(max(1, succeeded))
            ))
        print("failed pairings:            \(failures)")

        // RID resolution: a table for 10,000 devices, then one batch of 10,000 lookups.
        let irks = try (0..<10_000).map { index in
            (try DeviceID("d\(index)"), irk: SymmetricKey(size: .bits128).withUnsafeBytes { Array($0) })
        }
        let epoch = RotatingIdentifier.epoch(unixSeconds: Int64(Date().timeIntervalSince1970))
        let buildStart = clock.now
        let resolver = RIDResolver(devices: irks, epoch: epoch)
        let build = clock.now - buildStart
        let rids = irks.map { RotatingIdentifier.rid(irk: $0.irk, epoch: epoch) }
        let lookupStart = clock.now
        var resolved = 0
        for rid in rids where resolver.resolve(rid) != nil { resolved += 1 }
        let lookup = clock.now - lookupStart
        print("RID table for 10,000 devices (3 epochs):  \(Self.milliseconds(build)) ms to build")
        print("RID batch of 10,000 lookups:             \(Self.milliseconds(lookup)) ms (\(resolved) resolved)")
    }

    static func milliseconds(_ duration: Duration) -> String {
        String(
            format: "%.2f",
            Double(duration.components.seconds) * 1000 + Double(duration.components.attoseconds) / 1e15)
    }

    /// utime + stime of a process, from /proc/PID/stat (fields 14 and 15, in clock ticks).
    /// The fields of `/proc/PID/stat` after the command name (proc_pid_stat(5): index 0 is field 3, the state).
    static func statFields(pid: Int32) -> [Substring] {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = text.lastIndex(of: ")")
        else { return [] }
        return text[text.index(after: close)...].split(separator: " ")
    }

    static func cpuSeconds(pid: Int32) -> Double {
        let fields = statFields(pid: pid)
        guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }
}
