import Agent
import ArgumentParser
import Crypto
import Foundation
import Hub
import HubClient
import TUFRepository

#if canImport(Glibc)
    import Glibc
#endif

/// The device agent's figures (issue: "agent idle RSS ≤ 15 MiB and CPU ≤ 0.1 %; 1,000 agents held by one hub with
/// renewals spread so that no more than 1 % renew in the same minute; time for 100 agents to follow a hub key
/// rotation"), against a real `bulwark serve` process with an update repository.
struct AgentBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agent",
        abstract: "Idle RSS and CPU of `bulwark agent run`, 1,000 agents on one hub, 100 agents through a key rotation."
    )
    @Option(help: "Seconds the agent process is measured while connected and idle.") var idleSeconds = 60
    @Option(help: "Agents (library instances in this process) held by one hub.") var agents = 1000
    @Option(help: "Agents that follow the key rotation.") var rotationAgents = 100
    @Option(help: "The rotating agents' trust refresh interval, seconds.") var trustRefresh = 5.0
    @Option(help: "The bulwark binary (default: next to this one).") var bulwark: String?

    func run() async throws {
        guard (10...3600).contains(idleSeconds), (1...5000).contains(agents), (1...1000).contains(rotationAgents) else {
            throw ValidationError("idle-seconds 10-3600, agents 1-5000, rotation-agents 1-1000")
        }
        let binary = benchBinary(bulwark)
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("bulwark-agentbench-\(UUID())").path
        try FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: base) }
        let benchHub = try BenchHub.start(
            binary: binary, base: base, environment: ["BULWARK_TLS_KEY_CHECK_SECONDS": "0.5"])
        let (hub, repository, keys, data) = (benchHub.hub, benchHub.repository, benchHub.keys, benchHub.data)
        defer {
            hub.terminate()
            _ = hub.wait()
        }
        let ports = try await hub.waitForPorts()
        let keyring = try KeyDirectory(path: keys).keyring()
        _ = try await TLSKeyRotation.publishCurrent(dataDirectory: data, repository: repository, keyring: keyring)
        let count = max(agents, rotationAgents) + 1
        print("bulwark-bench agent: enrolling \(count) devices …")
        let devices = try await enrollDevices(count: count, prefix: "ag", operatorPort: ports.operator, directory: data)
        let pins = try TLSKeyRotation.currentPins(dataDirectory: data)
        func state(_ index: Int) throws -> String {
            let directory = base + "/state-\(index)"
            try Self.writeState(
                directory, devices[index].credentials, pins: pins, root: repository + "/metadata/root.json")
            return directory
        }
        func configuration(_ directory: String) -> AgentConfiguration {
            var configuration = AgentConfiguration(stateDirectory: directory)
            configuration.mqttPort = ports.mqtt
            configuration.apiURL = "https://127.0.0.1:\(ports.device)"
            configuration.inventoryIntervalSeconds = 0
            return configuration
        }

        // 1. One `bulwark agent run` process, connected and idle.
        let agentState = try state(count - 1)
        // On a device the agent is the only process that runs this program; here the hub runs it too, and the kernel
        // pages out no page another process maps (the agent's trim, `WorkingSet`). The agent runs from a copy of the
        // binary, as it would alone, owned by the user running it (the kernel pages out file pages only for their
        // owner or a writer). The Swift runtime's libraries stay shared with the hub and this process. The copy is
        // written to storage first, so that paged-out pages are freed, not waiting for writeback.
        let agentBinary = base + "/bulwark-agent"
        try FileManager.default.copyItem(atPath: binary, toPath: agentBinary)
        sync()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: agentBinary)
        process.arguments = [
            "agent", "run", "--state", agentState, "--mqtt", "127.0.0.1:\(ports.mqtt)", "--hub",
            "https://127.0.0.1:\(ports.device)",
        ]
        process.standardError = FileHandle.nullDevice
        try process.runWithDefaultSignalMask()
        defer {
            process.terminate()
            process.waitUntilExit()
        }
        guard
            try await Self.eventually(
                30,
                {
                    (try? String(contentsOfFile: agentState + "/status.json", encoding: .utf8))?.contains(
                        #""connection":"connected""#) == true
                })
        else { throw ValidationError("the agent process did not connect") }
        try await Task.sleep(for: .seconds(5))  // its first trust refresh and the TLS session settle
        let pid = process.processIdentifier
        let cpuBefore = PairingBenchmark.cpuSeconds(pid: pid)
        let majorBefore = Self.majorFaults(pid)
        let started = ContinuousClock.now
        try await Task.sleep(for: .seconds(idleSeconds))
        let elapsed = ContinuousClock.now - started
        let cpu = (PairingBenchmark.cpuSeconds(pid: pid) - cpuBefore) / elapsed.seconds * 100
        let rss = MQTTBenchmark.rssKiB(pid) / 1024
        let peak = procStatusKiB(pid, "VmHWM:") / 1024
        let major = Self.majorFaults(pid) - majorBefore
        print(
            String(
                format:
                    "agent process, connected and idle for %d s: RSS %.1f MiB (peak %.1f MiB), CPU %.3f %%, "
                    + "%d major page faults (pages read from storage again)",
                idleSeconds, rss, peak, cpu, major))
        process.terminate()
        process.waitUntilExit()

        // 2. `agents` library instances held by the hub.
        let hubRSSBefore = MQTTBenchmark.rssKiB(hub.processIdentifier) / 1024
        var running: [Agent] = []
        var tasks: [Task<Void, any Error>] = []
        let connectStart = ContinuousClock.now
        for index in 0..<agents {
            var settings = configuration(try state(index))
            settings.trustRefreshSeconds = 6 * 3600
            let agent = try Agent(configuration: settings)
            running.append(agent)
            tasks.append(Task { try await agent.run() })
        }
        let allConnected = try await Self.eventually(300) {
            for agent in running where await agent.connection != .connected { return false }
            return true
        }
        let connectTime = ContinuousClock.now - connectStart
        try await Task.sleep(for: .seconds(10))
        let hubCPUBefore = PairingBenchmark.cpuSeconds(pid: hub.processIdentifier)
        try await Task.sleep(for: .seconds(30))
        let hubCPU = (PairingBenchmark.cpuSeconds(pid: hub.processIdentifier) - hubCPUBefore) / 30 * 100
        let hubRSS = MQTTBenchmark.rssKiB(hub.processIdentifier) / 1024
        var perMinute: [Int: Int] = [:]
        for agent in running {
            guard let point = await agent.renewalPoint() else { continue }
            perMinute[Int(point.timeIntervalSince1970 / 60), default: 0] += 1
        }
        let busiest = perMinute.values.max() ?? 0
        let window = ((perMinute.keys.max() ?? 0) - (perMinute.keys.min() ?? 0)) / 60
        print(
            "\(agents) agents: \(allConnected ? "all connected" : "NOT all connected")"
                + String(
                    format: " in %.1f s; hub RSS %.1f → %.1f MiB, hub CPU while they idle %.2f %%",
                    connectTime.seconds, hubRSSBefore, hubRSS, hubCPU))
        print(
            String(
                format:
                    "renewals (90-day certificates, at 2/3 of the lifetime ±5 %%): spread over %d hours, at most %d "
                    + "(%.2f %%) in any one minute", window, busiest, Double(busiest) / Double(max(agents, 1)) * 100))
        for agent in running { await agent.stop() }
        for task in tasks { task.cancel() }
        running = []

        // 3. `rotationAgents` agents through a hub key rotation.
        for index in 0..<rotationAgents {
            var settings = configuration(base + "/state-\(index)")
            settings.trustRefreshSeconds = trustRefresh
            let agent = try Agent(configuration: settings)
            running.append(agent)
            tasks.append(Task { try await agent.run() })
        }
        _ = try await Self.eventually(120) {
            for agent in running where await agent.connection != .connected { return false }
            return true
        }
        let rotationStart = ContinuousClock.now
        let result = try await TLSKeyRotation.rotate(
            dataDirectory: data, hubNames: [], crlDistributionPoints: nil, repository: repository, keyring: keyring,
            wait: .seconds(60), settle: 0,
            presentedPin: { await TLSKeyRotation.presentedPin(host: "127.0.0.1", port: ports.device) })
        let commandTime = ContinuousClock.now - rotationStart
        let followed = try await Self.eventually(300) {
            for agent in running where await Set(agent.state.pinned.pins) != Set(result.pins) { return false }
            return true
        }
        let followTime = ContinuousClock.now - rotationStart
        for agent in running { await agent.reconnect() }
        let reconnected = try await Self.eventually(120) {
            for agent in running where await agent.connection != .connected { return false }
            return true
        }
        let reconnectTime = ContinuousClock.now - rotationStart
        var stranded = 0
        for agent in running where await agent.connection != .connected { stranded += 1 }
        print(
            String(
                format: "key rotation, %d agents refreshing every %.0f s: command %.1f s; all holding the new pin set "
                    + "%.1f s after it started", rotationAgents, trustRefresh, commandTime.seconds,
                followTime.seconds)
                + (followed ? "" : " (NOT ALL)")
                + String(format: "; all reconnected to the new key at %.1f s", reconnectTime.seconds)
                + (reconnected ? "" : " (NOT ALL)") + "; stranded: \(stranded)")
        for agent in running { await agent.stop() }
        for task in tasks { task.cancel() }
    }

    /// A device's state directory as `bulwark agent pair` writes it when the hub has an update repository.
    static func writeState(_ directory: String, _ credentials: ClientCredentials, pins: [[UInt8]], root: String) throws
    {
        try FileManager.default.createDirectory(
            atPath: directory + "/trust", withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        guard chmod(directory, 0o700) == 0 else { throw ValidationError("cannot chmod \(directory)") }
        try SecretFiles.create(directory + "/device.key", contents: String(decoding: credentials.keyPEM, as: UTF8.self))
        try Data(credentials.certificatePEM).write(to: URL(fileURLWithPath: directory + "/device.crt"))
        try Data(credentials.caPEM).write(to: URL(fileURLWithPath: directory + "/ca.crt"))
        try pins.map { Data($0).base64EncodedString() + "\n" }.joined().write(
            toFile: directory + "/pins", atomically: true, encoding: .utf8)
        try FileManager.default.copyItem(atPath: root, toPath: directory + "/trust/root.json")
    }

    static func run(_ binary: String, _ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        try process.runWithDefaultSignalMask()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw ValidationError("\(binary) \(arguments.joined(separator: " ")) failed")
        }
    }

    /// The page faults of `pid` that read from storage (`majflt`, field 12 of `/proc/PID/stat`, proc_pid_stat(5)).
    static func majorFaults(_ pid: Int32) -> Int {
        let fields = PairingBenchmark.statFields(pid: pid)
        return fields.count > 9 ? Int(fields[9]) ?? 0 : 0
    }

    static func eventually(_ seconds: Double, _ condition: () async throws -> Bool) async throws -> Bool {
        let deadline = ContinuousClock.now + .milliseconds(Int64(seconds * 1000))
        while ContinuousClock.now < deadline {
            if try await condition() { return true }
            try await Task.sleep(for: .milliseconds(200))
        }
        return try await condition()
    }
}

/// A `bulwark serve` process for the benchmarks: a `bulwark tuf` repository whose timestamp and snapshot keys it
/// holds online, and the per-source limits lifted (every simulated device connects from 127.0.0.1).
/// The bulwark binary a benchmark runs: `--bulwark`, or the one next to bulwark-bench.
/// The hub's settings that lift its gateway's rate limits and its MQTT connection caps, so that a benchmark measures
/// its load rather than refusals (`bulwark-bench mqtt`, `bulwark-bench cluster`).
let unlimitedHubLimits: [String: String] = {
    let unlimited = "1000000"
    return [
        "BULWARK_GATEWAY_DEVICE_RATE": unlimited, "BULWARK_GATEWAY_DEVICE_BURST": unlimited,
        "BULWARK_GATEWAY_ROUTE_RATE": unlimited, "BULWARK_GATEWAY_ROUTE_BURST": unlimited,
        "BULWARK_GATEWAY_SOURCE_RATE": unlimited, "BULWARK_GATEWAY_SOURCE_BURST": unlimited,
        "BULWARK_GATEWAY_CONNECTION_RATE": unlimited, "BULWARK_GATEWAY_CONNECTION_BURST": unlimited,
        "BULWARK_MQTT_MAX_CONNECTIONS_PER_SOURCE": unlimited, "BULWARK_MQTT_MAX_CONNECTIONS": unlimited,
    ]
}()

func benchBinary(_ option: String?) -> String {
    option
        ?? URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("bulwark")
        .path
}

struct BenchHub {
    /// One simulated device makes every update check: its rate limits are not what the benchmark measures.
    static let unlimitedUpdates: [String: String] = [
        "BULWARK_GATEWAY_DEVICE_RATE": "1000000", "BULWARK_GATEWAY_DEVICE_BURST": "1000000",
        "BULWARK_GATEWAY_UPDATES_RATE": "1000000", "BULWARK_GATEWAY_UPDATES_BURST": "1000000",
    ]

    let hub: HubProcess
    let repository: String
    let keys: String
    let data: String

    static func start(binary: String, base: String, environment: [String: String] = [:]) throws -> BenchHub {
        let repository = base + "/repo"
        let keys = base + "/keys"
        let online = base + "/online"
        try AgentBenchmark.run(binary, ["tuf", "init", "--repo", repository, "--keys", keys])
        try FileManager.default.createDirectory(
            atPath: online, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        for role in ["timestamp", "snapshot"] {
            try FileManager.default.copyItem(atPath: "\(keys)/\(role).pem", toPath: "\(online)/\(role).pem")
        }
        let unlimited = "1000000"
        let data = base + "/hub"
        var settings = [
            "BULWARK_TUF_REPOSITORY": repository, "BULWARK_TUF_ONLINE_KEYS": online,
            "BULWARK_GATEWAY_CONNECTION_RATE": unlimited, "BULWARK_GATEWAY_CONNECTION_BURST": unlimited,
            "BULWARK_GATEWAY_SOURCE_RATE": unlimited, "BULWARK_GATEWAY_SOURCE_BURST": unlimited,
            "BULWARK_MQTT_MAX_CONNECTIONS_PER_SOURCE": unlimited,
            "BULWARK_HTTP_MAX_CONNECTIONS_PER_SOURCE": unlimited,
        ]
        settings.merge(environment) { $1 }
        let hub = try HubProcess(binary: binary, directory: data, environment: settings)
        return BenchHub(hub: hub, repository: repository, keys: keys, data: data)
    }
}
