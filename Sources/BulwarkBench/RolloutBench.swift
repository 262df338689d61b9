import Agent
import ArgumentParser
import Foundation
import Hub

/// The rollout figure (issue: "hub CPU per assignment check with a rollout running for 10,000 devices"): a real
/// `bulwark serve` with N enrolled devices, update checks measured before and during a rollout, and the hub's CPU
/// while the rollout is evaluated (every device's facts each `rollout.evaluateSeconds`).
struct RolloutBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rollout", abstract: "Hub CPU per update check and per evaluation with a rollout of N devices.")
    @Option(help: "Devices enrolled (all in the fleet the rollout covers).") var devices = 10_000
    @Option(help: "Update checks measured (each way).") var checks = 400
    @Option(help: "Seconds between rollout evaluations (rollout.evaluateSeconds).") var evaluate = 5.0
    @Option(help: "Seconds the hub's CPU is read while the rollout runs and nothing else happens.") var idle = 30.0
    @Option(help: "The bulwark binary (default: next to this one).") var bulwark: String?

    func run() async throws {
        guard (10...100_000).contains(devices), (10...100_000).contains(checks), evaluate >= 0.1, idle >= 5 else {
            throw ValidationError("devices 10-100000, checks 10-100000, evaluate ≥ 0.1, idle ≥ 5")
        }
        let binary = benchBinary(bulwark)
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("bulwark-rolloutbench-\(UUID())").path
        try FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: base) }
        let started = try BenchHub.start(
            binary: binary, base: base,
            environment: BenchHub.unlimitedUpdates.merging(["BULWARK_ROLLOUT_EVALUATE_SECONDS": String(evaluate)]) {
                $1
            })
        let (hub, repository, keys, data) = (started.hub, started.repository, started.keys, started.data)
        defer {
            hub.terminate()
            _ = hub.wait()
        }
        let ports = try await hub.waitForPorts()
        let api = "https://127.0.0.1:\(ports.device)"
        print("bulwark-bench rollout: enrolling \(devices) devices …")
        let enrolStart = ContinuousClock.now
        let enrolled = try await enrollDevices(
            count: devices, prefix: "ro", operatorPort: ports.operator, directory: data)
        print(String(format: "  enrolled in %.1f s", (ContinuousClock.now - enrolStart).seconds))
        let pins = try TLSKeyRotation.currentPins(dataDirectory: data)
        let operatorEnvironment = [
            "BULWARK_HUB": "https://127.0.0.1:\(ports.operator)", "BULWARK_CREDENTIALS": data + "/operators",
        ]
        for name in ["app-v1", "app-v2"] {
            let tree = base + "/build-" + name
            try FileManager.default.createDirectory(atPath: tree, withIntermediateDirectories: true)
            try name.write(toFile: tree + "/version", atomically: true, encoding: .utf8)
            _ = try UpdateBenchmark.capture(
                "/usr/bin/tar", ["--format=ustar", "-cf", base + "/\(name).tar", "-C", tree, "."])
            try AgentBenchmark.run(binary, ["tuf", "add-target", "--repo", repository, base + "/\(name).tar"])
        }
        try AgentBenchmark.run(binary, ["tuf", "publish", "--repo", repository, "--keys", keys])
        _ = try UpdateBenchmark.capture(binary, ["updates", "default", "app-v1.tar"], environment: operatorEnvironment)

        // A device in the first stage's cohort makes the checks (it gets the rollout's answer).
        let directory = base + "/state"
        try AgentBenchmark.writeState(
            directory, enrolled[0].credentials, pins: pins, root: repository + "/metadata/root.json")
        let checker = try AgentState.load(directory)
        func measureChecks(_ label: String) async throws {
            try await DeviceUpdater.checksThatChangeNothing(state: checker, apiURL: api, count: 20, keepAlive: true)
            let before = PairingBenchmark.cpuSeconds(pid: hub.processIdentifier)
            try await DeviceUpdater.checksThatChangeNothing(state: checker, apiURL: api, count: checks, keepAlive: true)
            let perCheck = (PairingBenchmark.cpuSeconds(pid: hub.processIdentifier) - before) / Double(checks) * 1000
            print(String(format: "update check, kept-alive, %@: hub CPU %.3f ms per check", label, perCheck))
        }
        try await measureChecks("no rollout")
        _ = try UpdateBenchmark.capture(
            binary,
            ["rollout", "start", "app-v2.tar", "--stages", "100", "--soak", "1d", "--max-failure-rate", "5"],
            environment: operatorEnvironment)
        try await measureChecks("rollout of \(devices) devices running (one stage: 100 %)")

        // Nothing but the rollout's evaluations: each reads every device, its update state and its assignment.
        try await Task.sleep(for: .seconds(evaluate))
        let before = PairingBenchmark.cpuSeconds(pid: hub.processIdentifier)
        let clock = ContinuousClock.now
        try await Task.sleep(for: .seconds(idle))
        let elapsed = (ContinuousClock.now - clock).seconds
        let cpu = PairingBenchmark.cpuSeconds(pid: hub.processIdentifier) - before
        let evaluations = elapsed / evaluate
        print(
            String(
                format:
                    "rollout running, hub otherwise idle for %.0f s: CPU %.2f %% (%.1f ms per evaluation of %d devices, "
                    + "every %.0f s)", elapsed, cpu / elapsed * 100, cpu / evaluations * 1000, devices, evaluate))
    }
}
