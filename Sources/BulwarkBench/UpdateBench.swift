import Agent
import ArgumentParser
import Foundation
import Hub
import HubClient
import Store
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The figures of updates that install themselves (issue: "hub CPU per update check when nothing changed ≤ 1 ms on
/// a kept-alive connection and ≤ 3 ms with a fresh mTLS handshake; agent RSS while downloading a 200 MiB target no
/// higher than idle + 8 MiB; a download killed at 50 % re-fetches ≤ 1 MiB beyond what was not yet on disk; time
/// from publish to 50 agents committed"), against a real `bulwark serve` process with a `bulwark tuf` repository.
struct UpdateBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "updates",
        abstract: "Hub CPU per update check, agent RSS while downloading, a killed download's re-fetch, publish to "
            + "N agents committed.")
    @Option(help: "Update checks measured (each way).") var checks = 400
    @Option(name: .customLong("target-mib"), help: "Size of the large release, MiB.") var targetMiB = 200
    @Option(help: "Agents that install the published release.") var agents = 50
    @Option(help: "The agents' update check interval, seconds.") var interval = 2.0
    @Option(help: "The bulwark binary (default: next to this one).") var bulwark: String?

    func run() async throws {
        guard (10...100_000).contains(checks), (1...4096).contains(targetMiB), (1...1000).contains(agents),
            (0.5...3600).contains(interval)
        else { throw ValidationError("checks 10-100000, target-mib 1-4096, agents 1-1000, interval 0.5-3600") }
        let binary = benchBinary(bulwark)
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("bulwark-updatebench-\(UUID())").path
        try FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: true)
        defer {
            for slots in (try? FileManager.default.contentsOfDirectory(atPath: base)) ?? [] {
                _ = try? Self.capture("/usr/bin/chattr", ["-R", "-i", base + "/" + slots])
            }
            try? FileManager.default.removeItem(atPath: base)
        }
        let started = try BenchHub.start(binary: binary, base: base, environment: BenchHub.unlimitedUpdates)
        let (hub, repository, keys, data) = (started.hub, started.repository, started.keys, started.data)
        defer {
            hub.terminate()
            _ = hub.wait()
        }
        let ports = try await hub.waitForPorts()
        let api = "https://127.0.0.1:\(ports.device)"
        print("bulwark-bench updates: enrolling \(agents + 2) devices …")
        let devices = try await enrollDevices(
            count: agents + 2, prefix: "up", operatorPort: ports.operator, directory: data)
        let pins = try TLSKeyRotation.currentPins(dataDirectory: data)
        func state(_ index: Int) throws -> String {
            let directory = base + "/state-\(index)"
            try AgentBenchmark.writeState(
                directory, devices[index].credentials, pins: pins, root: repository + "/metadata/root.json")
            return directory
        }
        let cli = { (arguments: [String]) throws in
            _ = try Self.capture(
                binary, arguments,
                environment: [
                    "BULWARK_HUB": "https://127.0.0.1:\(ports.operator)", "BULWARK_CREDENTIALS": data + "/operators",
                ])
        }
        func publish(_ name: String, bulkMiB: Int) throws {
            let tree = base + "/build-" + name
            try FileManager.default.createDirectory(atPath: tree + "/bin", withIntermediateDirectories: true)
            try "#!/bin/sh\ntrap 'exit 0' TERM\nwhile :; do sleep 1; done\n".write(
                toFile: tree + "/bin/app", atomically: true, encoding: .utf8)
            chmod(tree + "/bin/app", 0o755)
            let bulk = tree + "/bulk"
            FileManager.default.createFile(atPath: bulk, contents: nil)
            let out = try FileHandle(forWritingTo: URL(fileURLWithPath: bulk))
            let random = try FileHandle(forReadingFrom: URL(fileURLWithPath: "/dev/urandom"))
            for _ in 0..<bulkMiB { try out.write(contentsOf: try random.read(upToCount: 1 << 20) ?? Data()) }
            try out.close()
            try random.close()
            let archive = base + "/\(name).tar"
            _ = try Self.capture("/usr/bin/tar", ["--format=ustar", "-cf", archive, "-C", tree, "."])
            try? FileManager.default.removeItem(atPath: tree)
            try AgentBenchmark.run(binary, ["tuf", "add-target", "--repo", repository, archive])
            try AgentBenchmark.run(binary, ["tuf", "publish", "--repo", repository, "--keys", keys])
            try? FileManager.default.removeItem(atPath: archive)
            try cli(["updates", "default", name + ".tar"])
        }

        // 1. Hub CPU per update check that finds nothing new.
        try publish("small-v1", bulkMiB: 0)
        let checker = try AgentState.load(try state(agents))
        try await DeviceUpdater.checksThatChangeNothing(state: checker, apiURL: api, count: 20, keepAlive: true)
        for keepAlive in [true, false] {
            let before = PairingBenchmark.cpuSeconds(pid: hub.processIdentifier)
            let started = ContinuousClock.now
            try await DeviceUpdater.checksThatChangeNothing(
                state: checker, apiURL: api, count: checks, keepAlive: keepAlive)
            let elapsed = ContinuousClock.now - started
            let perCheck = (PairingBenchmark.cpuSeconds(pid: hub.processIdentifier) - before) / Double(checks) * 1000
            print(
                String(
                    format:
                        "update check, nothing new (GET /v1/updates/check: next root, timestamp, assignment), %@: hub CPU %.2f ms per "
                        + "check, %.1f checks/s from one client",
                    keepAlive ? "kept-alive connection" : "new mTLS connection each", perCheck,
                    Double(checks) / elapsed.seconds))
        }

        // 2. Agent RSS while downloading (and installing) a large release, against the same agent idle.
        let agentState = try state(agents + 1)
        let config = agentState + ".json"
        let configuration: [String: Any] = [
            "mqtt": "127.0.0.1:\(ports.mqtt)", "hub": api, "inventoryIntervalSeconds": 0, "trustRefreshSeconds": 0,
            "agent": [
                "updateIntervalSeconds": 0, "payload": "{slot}/bin/app", "healthIntervalSeconds": 0.2,
                "slotsDirectory": base + "/slots-process",
            ] as [String: Any],
        ]
        try JSONSerialization.data(withJSONObject: configuration).write(to: URL(fileURLWithPath: config))
        func startAgent() throws -> Process {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: binary)
            process.arguments = ["agent", "run", "--state", agentState, "--config", config]
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.runWithDefaultSignalMask()
            return process
        }
        var agentProcess = try startAgent()
        defer {
            agentProcess.terminate()
            agentProcess.waitUntilExit()
        }
        guard try await AgentBenchmark.eventually(30, { Self.connected(agentState) }) else {
            throw ValidationError("the agent process did not connect")
        }
        try await Task.sleep(for: .seconds(3))
        let idle = procStatusKiB(agentProcess.processIdentifier, "VmRSS:") / 1024
        print("publishing a \(targetMiB) MiB release …")
        try publish("big-v2", bulkMiB: targetMiB)
        let peak = Mutex<Double>(0)
        let pid = agentProcess.processIdentifier
        let sampler = Task {
            while !Task.isCancelled {
                let rss = procStatusKiB(pid, "VmRSS:") / 1024
                peak.withLock { $0 = max($0, rss) }
                try? await Task.sleep(for: .milliseconds(20))
            }
        }
        let downloadStart = ContinuousClock.now
        let outcome = try await AgentSocketClient.updateNow(stateDirectory: agentState) { _, _ in } ?? "no agent"
        let downloadTime = ContinuousClock.now - downloadStart
        sampler.cancel()
        let highest = peak.withLock { $0 }
        print(
            String(
                format: "agent RSS: idle %.1f MiB; highest while downloading, installing and trying %d MiB: %.1f MiB "
                    + "(idle + %.1f MiB); %.1f s (%@)",
                idle, targetMiB, highest, highest - idle, downloadTime.seconds, outcome))

        // 3. A download killed at half way: what the restarted agent fetches.
        try publish("big-v3", bulkMiB: targetMiB)
        let length = Int64(targetMiB) << 20
        let trigger = Task { try? await AgentSocketClient.updateNow(stateDirectory: agentState) { _, _ in } }
        var onDisk: Int64 = 0
        let partPath = base + "/slots-process/b.part"
        let deadline = ContinuousClock.now + .seconds(600)
        while ContinuousClock.now < deadline {
            let size = (try? FileManager.default.attributesOfItem(atPath: partPath)[.size] as? Int64) ?? 0
            if size >= length / 2 {
                kill(agentProcess.processIdentifier, SIGKILL)
                agentProcess.waitUntilExit()
                onDisk = (try? FileManager.default.attributesOfItem(atPath: partPath)[.size] as? Int64) ?? 0
                break
            }
            try await Task.sleep(for: .milliseconds(2))
        }
        _ = await trigger.value
        agentProcess = try startAgent()
        // The killed agent's socket file is still there: ask until the new one answers.
        var resumed: String?
        let answerBy = ContinuousClock.now + .seconds(30)
        while resumed == nil, ContinuousClock.now < answerBy {
            resumed = try? await AgentSocketClient.updateNow(stateDirectory: agentState) { _, _ in }
            if resumed == nil { try await Task.sleep(for: .milliseconds(100)) }
        }
        let update =
            FileManager.default.contents(atPath: agentState + "/update.json")
            .flatMap { try? JSONSerialization.jsonObject(with: $0) as? [String: Any] } ?? [:]
        let fetched = Int64(update["lastFetchedBytes"] as? Int ?? -1)
        // The archive's exact length (headers and padding included), as the boot record names it.
        let boot =
            FileManager.default.contents(atPath: base + "/slots-process/boot")
            .flatMap { try? JSONSerialization.jsonObject(with: $0) as? [String: Any] } ?? [:]
        let releases = (boot["releases"] as? [String: Any])?.values.compactMap { $0 as? [String: Any] } ?? []
        let archive = Int64(releases.first { $0["path"] as? String == "big-v3.tar" }?["length"] as? Int ?? 0)
        print(
            String(
                format: "download killed with %.1f of %d MiB on disk: after the restart %.1f MiB fetched, %.3f MiB "
                    + "beyond what was missing (%@)",
                Double(onDisk) / 1_048_576, targetMiB, Double(fetched) / 1_048_576,
                Double(fetched - (archive - onDisk)) / 1_048_576, resumed ?? "no agent"))

        // 4. Publish to N agents committed (library agents in this process, checking every `interval` s).
        var running: [Agent] = []
        var tasks: [Task<Void, any Error>] = []
        for index in 0..<agents {
            var settings = AgentConfiguration(stateDirectory: try state(index))
            settings.mqttPort = ports.mqtt
            settings.apiURL = api
            settings.inventoryIntervalSeconds = 0
            settings.trustRefreshSeconds = 0
            settings.updates.intervalSeconds = interval
            settings.updates.healthIntervalSeconds = 0.2
            let agent = try Agent(configuration: settings)
            running.append(agent)
            tasks.append(Task { try await agent.run() })
        }
        defer { for task in tasks { task.cancel() } }
        // All on small-v1 first (steps 2 and 3 made the big releases the default: small-v1 is assigned again).
        try cli(["updates", "default", "small-v1.tar"])
        _ = try await AgentBenchmark.eventually(120) { try await Self.all(running, on: "small-v1.tar") }
        let publishStart = ContinuousClock.now
        try publish("small-v4", bulkMiB: 1)
        let committed = try await AgentBenchmark.eventually(300) { try await Self.all(running, on: "small-v4.tar") }
        let publishTime = ContinuousClock.now - publishStart
        print(
            String(
                format: "publish (tuf add-target + publish + updates default) to %d agents committed, checking every "
                    + "%.1f s ±20 %%: %.1f s%@",
                agents, interval, publishTime.seconds, committed ? "" : " (NOT ALL)"))
        for agent in running { await agent.stop() }
    }

    static func all(_ agents: [Agent], on target: String) async throws -> Bool {
        for agent in agents {
            let record = await agent.updater.record
            guard let active = record.active, record.release(in: active)?.path == target else { return false }
        }
        return true
    }

    static func connected(_ state: String) -> Bool {
        (try? String(contentsOfFile: state + "/status.json", encoding: .utf8))?.contains(#""connection":"connected""#)
            == true
    }

    @discardableResult
    static func capture(_ executable: String, _ arguments: [String], environment: [String: String] = [:]) throws
        -> String
    {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.runWithDefaultSignalMask()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw ValidationError("\(executable) \(arguments.joined(separator: " ")) failed")
        }
        return String(decoding: data, as: UTF8.self)
    }
}
