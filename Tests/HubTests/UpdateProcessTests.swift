import Core
import Foundation
import HubClient
import Store
import Testing

@testable import Agent
@testable import Hub

#if canImport(Glibc)
    import Glibc
#endif

/// Updates with real processes: agents paired by label and run as `bulwark agent run --config`, releases made with
/// `bulwark tuf` and assigned with `bulwark updates default`, and `kill -9` of an agent mid-download and mid-trial.
@Suite(.serialized) struct UpdateProcessTests {
    typealias Repository = PinRotationTests.Repository

    /// An agent process and what it was started with.
    final class AgentProcess: @unchecked Sendable {
        let state: String
        let config: String
        let marker: String
        /// Its output, in a temporary directory of its own (with its configuration and payload marker), which the
        /// tests' at-exit removal covers.
        let log: String
        private(set) var process: Process?

        init(state: String, config: String, marker: String, log: String) {
            self.state = state
            self.config = config
            self.marker = marker
            self.log = log
        }

        func start() throws {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: try HubProcessTests.binary)
            process.arguments = ["agent", "run", "--state", state, "--config", config]
            // Its log, kept for a failing test to read.
            FileManager.default.createFile(atPath: self.log, contents: nil)
            let log = try FileHandle(forWritingTo: URL(fileURLWithPath: self.log))
            try log.seekToEnd()
            process.standardOutput = log
            process.standardError = log
            try process.runWithDefaultSignalMask()
            self.process = process
        }

        func kill9() async {
            guard let process else { return }
            kill(process.processIdentifier, SIGKILL)
            _ = await process.exitStatus()
        }

        /// SIGTERM: the agent stops its payload and exits 0.
        func stop() async -> Int32? {
            guard let process, process.isRunning else { return nil }
            kill(process.processIdentifier, SIGTERM)
            return await process.exitStatus()
        }

        /// `stop()` for a `defer`, which cannot await: it holds its thread for at most 30 s (SIGKILL then), and an
        /// agent that needed SIGKILL fails the test with the end of its log.
        func stopBlocking() {
            guard let process, process.isRunning else { return }
            if !process.stop(within: 30) {
                let log = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
                Issue.record("the agent did not exit within 30 s of SIGTERM; its log ends: \(log.suffix(1500))")
            }
        }

        var update: [String: Any] {
            FileManager.default.contents(atPath: state + "/update.json")
                .flatMap { try? JSONSerialization.jsonObject(with: $0) as? [String: Any] } ?? [:]
        }
    }

    static func configure(
        _ hub: TestHub, state: String, interval: Double, attempts: Int = 2, extra: [String: Any] = [:]
    ) throws -> AgentProcess {
        let files = try temporaryDirectory("agent-files")
        let (marker, config) = (files + "/running", files + "/agent.json")
        var agent: [String: Any] = [
            "updateIntervalSeconds": interval, "payload": ["{slot}/bin/app", marker],
            "healthCommand": "{slot}/bin/health", "healthTimeoutSeconds": 3, "healthIntervalSeconds": 0.2,
            "healthWindowSeconds": 30, "trialAttempts": attempts,
        ]
        agent.merge(extra) { $1 }
        let object: [String: Any] = [
            "mqtt": "127.0.0.1:\(hub.mqttPort)", "hub": "https://127.0.0.1:\(hub.devicePort)",
            "inventoryIntervalSeconds": 0, "trustRefreshSeconds": 0, "reconnectMaxSeconds": 1, "agent": agent,
        ]
        try JSONSerialization.data(withJSONObject: object).write(to: URL(fileURLWithPath: config))
        return AgentProcess(state: state, config: config, marker: marker, log: files + "/agent.log")
    }

    @Test func twoAgentsPairedByLabelCommitV2AndRollBackV3AndTheHubShowsIt() async throws {
        let repository = try await Repository.make("fleet")
        let hub = try await PinRotationTests.hub(repository)
        let cli = PairingEndToEndTests.CLI(binary: try HubProcessTests.binary, hub: hub)
        let work = try temporaryDirectory("fleet")
        var agents: [AgentProcess] = []
        for name in ["cam-a", "cam-b"] {
            #expect(try await cli.run(["device", "label", "--id", name, "--out", work + "/" + name]).status == 0)
            #expect(try await cli.run(["pair", "claim", "@\(work)/\(name)/label.txt"]).status == 0)
            let paired = try await cli.run([
                "agent", "pair", "--hub", "127.0.0.1:\(hub.pairingPort)", "--label-dir", work + "/" + name,
            ])
            #expect(paired.status == 0, "\(paired.stderr)")
            let agent = try Self.configure(hub, state: work + "/\(name)/state", interval: 1)
            try agent.start()
            agents.append(agent)
        }
        defer {
            for agent in agents {
                agent.stopBlocking()
                UpdateAgentTests.release(agent.state)
            }
        }
        // A misspelt setting is refused, not ignored.
        try #"{"agent":{"payloadd":"x"}}"#.write(toFile: work + "/typo.json", atomically: true, encoding: .utf8)
        let typo = try await cli.run(["agent", "run", "--state", agents[0].state, "--config", work + "/typo.json"])
        #expect(typo.status != 0 && typo.stderr.contains("unknown setting agent.payloadd"), "\(typo.stderr)")
        // The agent's settings under `agent.` are the same settings: read (and checked), never given twice.
        try #"{"agent":{"commandTimeoutSeconds":0}}"#.write(
            toFile: work + "/zero.json", atomically: true, encoding: .utf8)
        let zero = try await cli.run(["agent", "run", "--state", agents[0].state, "--config", work + "/zero.json"])
        #expect(zero.status != 0 && zero.stderr.contains("commandTimeoutSeconds must be 0.1-86400"), "\(zero.stderr)")
        try #"{"agent":{"inventoryIntervalSeconds":60},"inventoryIntervalSeconds":30}"#.write(
            toFile: work + "/twice.json", atomically: true, encoding: .utf8)
        let twice = try await cli.run(["agent", "run", "--state", agents[0].state, "--config", work + "/twice.json"])
        #expect(
            twice.status != 0 && twice.stderr.contains("inventoryIntervalSeconds is given twice"), "\(twice.stderr)")

        try await UpdateAgentTests.publish(repository, "app-v2", security: 2)
        #expect(try await cli.run(["updates", "default", "app-v2.tar"]).status == 0)
        #expect(
            await AgentTests.eventually(60) {
                agents.allSatisfy { UpdateAgentTests.running($0.marker)?.release == "app-v2" }
            })
        #expect(
            try await AgentTests.eventually(15) {
                try await hub.server.store.updateStates().filter {
                    $0.installedTarget == "app-v2.tar" && $0.lastStep == "committed"
                }.count == 2
            })
        let status = try await cli.run(["updates", "status"])
        #expect(status.status == 0)
        let v2Line = status.stdout.split(separator: "\n").first { $0.hasPrefix("app-v2.tar") } ?? ""
        #expect(v2Line.split(separator: " ").dropFirst().first == "2", "two devices run v2: \(status.stdout)")

        try await UpdateAgentTests.publish(repository, "app-v3", security: 3, health: .failing)
        #expect(try await cli.run(["updates", "default", "app-v3.tar"]).status == 0)
        #expect(
            try await AgentTests.eventually(60) {
                try await hub.server.store.updateStates().filter {
                    $0.installedTarget == "app-v2.tar" && $0.lastStep == "rolled-back" && $0.stepTarget == "app-v3.tar"
                }.count == 2
            })
        // The report of the rollback can reach the hub before the payload of v2 has started again.
        #expect(
            await AgentTests.eventually(30) {
                agents.allSatisfy { UpdateAgentTests.running($0.marker)?.release == "app-v2" }
            })
        let after = try await cli.run(["updates", "status"])
        let v3Line = after.stdout.split(separator: "\n").first { $0.hasPrefix("app-v3.tar") } ?? ""
        #expect(v3Line.split(separator: " ").last == "2", "two devices rolled v3 back: \(after.stdout)")
        // Its next check may already have reported v3 refused ("rolled back on this device before"): either says so.
        let shown = try await cli.run(["device", "show", "cam-a"])
        #expect(
            shown.stdout.contains("app-v2.tar")
                && (shown.stdout.contains("rolled-back") || shown.stdout.contains("rolled back on this device")),
            "\(shown.stdout)")

        // The device's own view, and update-now through the running agent.
        let agentStatus = try await cli.run(["agent", "status", "--state", agents[0].state])
        #expect(agentStatus.stdout.contains("slot          a: app-v2.tar, floor 2"), "\(agentStatus.stdout)")
        let now = try await cli.run(["agent", "update-now", "--state", agents[0].state])
        #expect(now.status == 1 && now.stdout.contains("rolled back on this device before"), "\(now.stdout)")

        // SIGTERM: the agent stops its payload and exits cleanly.
        let payload = UpdateAgentTests.running(agents[1].marker)?.pid
        #expect(await agents[1].stop() == 0)
        if let payload { #expect(await AgentTests.eventually(20) { kill(payload, 0) != 0 }) }
        try await hub.stop()
    }

    @Test func killMinusNineMidDownloadResumesAndMidTrialDecidesRightOnRestart() async throws {
        let repository = try await Repository.make("killed")
        let hub = try await PinRotationTests.hub(repository)
        let state = try AgentTests.stateDirectory(hub, try await hub.enroll("upd-kill"))
        try FileManager.default.createDirectory(atPath: state + "/trust", withIntermediateDirectories: false)
        chmod(state + "/trust", 0o700)
        try FileManager.default.copyItem(
            atPath: repository.path + "/metadata/root.json", toPath: state + "/trust/root.json")
        let agent = try Self.configure(hub, state: state, interval: 1)
        defer {
            agent.stopBlocking()
            UpdateAgentTests.release(state)
        }

        // A 96 MiB release; the agent is killed once a third of it is on disk.
        let v2 = try await UpdateAgentTests.publish(repository, "big-v2", security: 2, bulk: 96 << 20)
        try await hub.server.store.setAssignment(.fleet, target: "big-v2.tar")
        try agent.start()
        var onDisk: Int64 = 0
        let deadline = ContinuousClock.now + .seconds(60)
        while ContinuousClock.now < deadline {
            let size =
                (try? FileManager.default.attributesOfItem(atPath: state + "/slots/a.part")[.size] as? Int64) ?? 0
            if size >= Int64(v2.count / 3) {
                await agent.kill9()
                onDisk =
                    (try? FileManager.default.attributesOfItem(atPath: state + "/slots/a.part")[.size] as? Int64) ?? 0
                break
            }
            try await Task.sleep(for: .milliseconds(2))
        }
        #expect(onDisk > 0 && onDisk < Int64(v2.count), "the agent was killed mid-download (\(onDisk) bytes on disk)")
        try agent.start()
        #expect(await AgentTests.eventually(90) { UpdateAgentTests.running(agent.marker)?.release == "big-v2" })
        let fetched = agent.update["lastFetchedBytes"] as? Int ?? -1
        #expect(
            fetched >= 0 && Int64(fetched) <= Int64(v2.count) - onDisk + (1 << 20),
            "after the restart only what was missing is fetched: \(fetched) of \(v2.count), \(onDisk) on disk")

        // v3 passes its gate slowly; the agent is killed during the trial: the restart uses its second attempt,
        // stops the payload the killed agent left, and commits.
        try await UpdateAgentTests.publish(repository, "app-v3", security: 3, health: .slow)
        try await hub.server.store.setAssignment(.fleet, target: "app-v3.tar")
        #expect(await AgentTests.eventually(60) { agent.update["trial"] as? String == "b" })
        #expect(await AgentTests.eventually(10) { UpdateAgentTests.running(agent.marker)?.release == "app-v3" })
        let orphan = UpdateAgentTests.running(agent.marker)?.pid
        await agent.kill9()
        try agent.start()
        #expect(await AgentTests.eventually(60) { agent.update["activeVersion"] as? String == "app-v3.tar" })
        // Gone, or a zombie its new parent has yet to reap (exited all the same).
        if let orphan, let started = PayloadProcess.startTime(orphan) {
            #expect(
                !PayloadProcess.isRunning(orphan, started: started), "the payload the killed agent left was stopped")
        }
        #expect(await AgentTests.eventually(10) { UpdateAgentTests.running(agent.marker)?.release == "app-v3" })
        #expect(agent.update["floor"] as? Int == 3)

        // v4 with one attempt only: killed during its trial, the restart rolls back to v3.
        _ = await agent.stop()
        let single = try Self.configure(hub, state: state, interval: 1, attempts: 1)
        defer { single.stopBlocking() }
        try await UpdateAgentTests.publish(repository, "app-v4", security: 4, health: .slow)
        try await hub.server.store.setAssignment(.fleet, target: "app-v4.tar")
        try single.start()
        #expect(await AgentTests.eventually(60) { single.update["trial"] as? String == "a" })
        await single.kill9()
        try single.start()
        // (The check that follows the start then refuses v4 as rolled back before: the audit log keeps both.)
        #expect(
            try await AgentTests.eventually(30) {
                try await hub.securityEvents().contains {
                    $0.kind == "update-rolled-back" && $0.detail.contains("app-v4.tar")
                        && $0.detail.contains("no attempts left")
                }
            }, "\(single.update)")
        #expect(await AgentTests.eventually(10) { UpdateAgentTests.running(single.marker)?.release == "app-v3" })
        #expect(single.update["active"] as? String == "b")
        #expect(single.update["floor"] as? Int == 3, "the floor is raised at commit, never at a trial")
        try await hub.stop()
    }
}
