import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// `bulwark serve` as a child process on ephemeral ports; its log goes to a file we read for the ports.
public final class HubProcess: Sendable {
    let process: Process
    public let logFile: String

    public init(binary: String, directory: String, environment: [String: String] = [:]) throws {
        logFile = directory + ".log"
        FileManager.default.createFile(atPath: logFile, contents: nil)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["serve", "--data", directory]
        process.environment = ProcessInfo.processInfo.environment.merging([
            "BULWARK_DEVICE_PORT": "0", "BULWARK_OPERATOR_PORT": "0", "BULWARK_PAIRING_PORT": "0",
            "BULWARK_MQTT_PORT": "0",
        ]) { $1 }.merging(environment) { $1 }
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: logFile))
        process.standardError = handle
        process.standardOutput = handle
        try process.runWithDefaultSignalMask()
        self.process = process
    }

    public var log: String { (try? String(contentsOfFile: logFile, encoding: .utf8)) ?? "" }

    /// Reads `listening address=127.0.0.1:PORT listener=NAME` lines (bounded to 30 s).
    public struct Ports: Sendable {
        public let device: Int
        public let `operator`: Int
        public let pairing: Int
        public let mqtt: Int
    }

    public func waitForPorts() async throws -> Ports {
        let start = ContinuousClock.now
        while ContinuousClock.now - start < .seconds(30) {
            var ports: [String: Int] = [:]
            for line in log.split(separator: "\n") where line.contains("[Hub] listening") {
                let fields = line.split(separator: " ")
                guard let address = fields.first(where: { $0.hasPrefix("address=") }),
                    let listener = fields.first(where: { $0.hasPrefix("listener=") }),
                    let port = Int(address.split(separator: ":").last ?? "")
                else { continue }
                ports[String(listener.dropFirst("listener=".count))] = port
            }
            if let device = ports["device"], let operatorPort = ports["operator"], let pairing = ports["pairing"],
                let mqtt = ports["mqtt"]
            {
                return Ports(device: device, operator: operatorPort, pairing: pairing, mqtt: mqtt)
            }
            guard process.isRunning else { throw ClientError("hub exited: \(log)") }
            try await Task.sleep(for: .milliseconds(50))
        }
        kill()
        throw ClientError("hub did not start within 30 s: \(log)")
    }

    public var processIdentifier: Int32 { process.processIdentifier }

    public var isRunning: Bool { process.isRunning }

    public func terminate() { process.terminate() }

    public func kill() {
        if process.isRunning { _ = Foundation.kill(process.processIdentifier, SIGKILL) }
    }

    public func wait() -> Int32 {
        process.waitUntilExit()
        return process.terminationStatus
    }

    /// SIGTERM, then at most `grace` seconds for the exit, then SIGKILL (see `Process.stop(within:)`). For a `defer`,
    /// which cannot await: it holds its thread for a bounded time. True when the hub exited on its own.
    @discardableResult
    public func stop(within grace: TimeInterval) -> Bool { process.stop(within: grace) }

    /// Waits for the exit without blocking a thread of the concurrency pool (a hub stopping after SIGTERM can take
    /// seconds, and the pool has as many threads as cores).
    public func exitStatus() async -> Int32 { await process.exitStatus() }
}

extension Process {
    /// SIGTERM, then at most `grace` seconds for the exit, then SIGKILL and at most 10 s more. True when the process
    /// exited within the grace, false when it needed SIGKILL (or never went).
    ///
    /// Blocking, for a `defer` (which cannot await), and bounded: an unbounded wait there holds a thread of Swift's
    /// concurrency pool, which has as many threads as cores, and a process that ignores SIGTERM would stall every test.
    @discardableResult
    public func stop(within grace: TimeInterval) -> Bool {
        guard isRunning else { return true }
        let pid = processIdentifier
        Foundation.kill(pid, SIGTERM)
        let end = Date().addingTimeInterval(grace)
        while isRunning, Date() < end { usleep(20_000) }
        guard isRunning else { return true }
        Foundation.kill(pid, SIGKILL)
        let killed = Date().addingTimeInterval(10)
        while isRunning, Date() < killed { usleep(20_000) }
        return false
    }

    /// The termination status, awaited by polling: `waitUntilExit` would hold a thread of the concurrency pool.
    public func exitStatus() async -> Int32 {
        while isRunning {
            guard (try? await Task.sleep(for: .milliseconds(10))) != nil else { break }
        }
        waitUntilExit()
        return terminationStatus
    }
}

extension Process {
    /// Starts the process with no signal blocked. Swift's worker threads block most signals and a spawned child
    /// inherits the spawning thread's mask, so a child started from async code would ignore SIGTERM or never see
    /// its own SIGALRM (mosquitto would not stop; `openssl speed` would never end).
    public func runWithDefaultSignalMask() throws {
        var empty = sigset_t()
        var previous = sigset_t()
        sigemptyset(&empty)
        pthread_sigmask(SIG_SETMASK, &empty, &previous)
        defer { pthread_sigmask(SIG_SETMASK, &previous, nil) }
        try run()
    }
}
