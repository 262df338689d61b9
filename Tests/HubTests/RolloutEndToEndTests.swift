import Agent
import Core
import Foundation
import Hub
import Store
import Synchronization
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// A slot store that installs nothing: the boot record in memory, each slot "holding" a release whose files are a
/// directory made beforehand (`trees`, by target path). For many simulated agents in one test process; the real
/// `DirectorySlotStore` has its own tests.
final class FakeSlotStore: SlotStore {
    let root: String
    let trees: [String: String]
    private let state = Mutex<(record: BootRecord, installed: [Slot: String])>((BootRecord(), [:]))

    init(root: String, trees: [String: String]) {
        self.root = root
        self.trees = trees
    }

    func bootRecord() throws -> BootRecord { state.withLock { $0.record } }
    func write(_ record: BootRecord) throws { state.withLock { $0.record = record } }
    func clear(_ slot: Slot) throws { _ = state.withLock { $0.installed.removeValue(forKey: slot) } }
    func install(_ slot: Slot, from artifact: String, verifying release: Release) throws -> String {
        state.withLock { $0.installed[slot] = release.path }
        return "fake slot store"
    }
    func verify(_ slot: Slot) throws {}
    func directory(of slot: Slot) -> String { trees[state.withLock { $0.installed[slot] } ?? ""] ?? root }
    func ensureDirectories() throws {
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
    }
}

/// Staged rollouts against the real engine: 100 agents (library instances with a fake slot store) of which 10 % fail
/// their health gate. The rollout advances while its stages stay under the threshold and pauses by itself at the
/// first stage whose cohort crosses it; devices beyond that stage never receive the release.
@Suite(.serialized) struct RolloutEndToEndTests {
    @Test func aRolloutOfAHundredAgentsStopsAtTheFirstStageThatCrossesTheThreshold() async throws {
        let repository = try await PinRotationTests.Repository.make("rollout")
        let hub = try await TestHub.start {
            $0.tufRepository = repository.path
            $0.tufOnlineKeys = repository.online
            $0.rolloutEvaluateSeconds = 0.25
            $0.gateway.connectionRate = 100_000
            $0.gateway.connectionBurst = 100_000
            $0.gateway.routeRate = 10_000
            $0.gateway.routeBurst = 10_000
            $0.gateway.deviceRate = 10_000
            $0.gateway.deviceBurst = 10_000
        }
        _ = try await UpdateAgentTests.publish(repository, "app-v2", security: 2)
        let trees = ["app-v2.tar": repository.base + "/build-app-v2"]
        let count = 100
        let failing = Set((0..<count).filter { $0 % 10 == 3 })  // 10 %
        var agents: [Agent] = []
        var tasks: [Task<Void, any Error>] = []
        for index in 0..<count {
            let slots = try temporaryDirectory("fake-slots")
            let (agent, _, _) = try await UpdateAgentTests.agent(hub, repository, "ro-\(index)") { updates in
                updates.slotStore = FakeSlotStore(root: slots, trees: trees)
                // Every 4 s (±20 %): 100 agents checking every second would load the test process's hub and slow the
                // other suites running beside this one.
                updates.intervalSeconds = 4
                updates.payload = ["/bin/sleep", "600"]
                updates.healthCommand = [failing.contains(index) ? "/bin/false" : "/bin/true"]
                updates.healthProbes = 2
                updates.healthIntervalSeconds = 0.1
                // A healthy device must not fail for the load of the run: 100 agents and the other suites beside
                // them have made `/bin/true` take longer than the helper's 1-s probe timeout in CI.
                updates.healthTimeoutSeconds = 30
                updates.healthWindowSeconds = 120
                updates.trialAttempts = 1
            }
            agents.append(agent)
            tasks.append(Task { try await agent.run() })
        }
        defer {
            for task in tasks { task.cancel() }
        }
        #expect(
            await AgentTests.eventually(60) {
                for agent in agents where await agent.connection != .connected { return false }
                return true
            })

        // Through the CLI, as an operator would; it says first that an abort cannot take everyone back.
        let cli = PairingEndToEndTests.CLI(binary: try HubProcessTests.binary, hub: hub)
        let started = try await cli.run([
            "rollout", "start", "app-v2.tar", "--stages", "1,10,50,100", "--soak", "8s", "--max-failure-rate", "5",
            "--min-reported", "100",
        ])
        #expect(started.status == 0, "\(started.stderr)")
        #expect(started.stdout.hasPrefix("note: app-v2.tar raises the security version"), "\(started.stdout)")
        let current = try await hub.operatorRequest("GET", "/v1/rollouts/current")
        let answer = try JSONSerialization.jsonObject(with: Data(current.body)) as? [String: Any] ?? [:]
        let id = try #require(answer["id"] as? String)
        #expect(started.stdout.contains("rollout \(id) of app-v2.tar: running"))

        // The stage that must stop it, from the same rules the hub applies.
        var model = try Rollout(
            id: id, target: "app-v2.tar", previous: nil, stages: [1, 10, 50, 100], soakSeconds: 8, maxFailureRate: 5,
            now: 0)
        let devices = try (0..<count).map { try DeviceID("ro-\($0)") }
        var expectedStage = 3
        for stage in 0..<4 {
            model.stage = stage
            let cohort = (0..<count).filter { model.includes(devices[$0]) }
            let failed = cohort.filter { failing.contains($0) }.count
            if !cohort.isEmpty, Double(failed) * 100 / Double(cohort.count) > 5 {
                expectedStage = stage
                break
            }
        }
        model.stage = expectedStage

        var status: [String: Any] = [:]
        let paused = try await AgentTests.eventually(120) {
            let response = try await hub.operatorRequest("GET", "/v1/rollouts/current")
            status = try JSONSerialization.jsonObject(with: Data(response.body)) as? [String: Any] ?? [:]
            return status["state"] as? String == "paused"
        }
        #expect(paused, "\(status)")
        #expect(status["stage"] as? Int == expectedStage + 1, "paused at the first stage over 5 %: \(status)")
        let reason = status["reason"] as? String ?? ""
        #expect(reason.contains("rolled back"), "\(reason)")
        // The pause is audited just after the state the route shows is set.
        let pauseAudited = try await AgentTests.eventually(10) {
            try await hub.securityEvents().contains { $0.kind == "rollout-paused" }
        }
        #expect(pauseAudited)
        let events = try await hub.securityEvents()
        #expect(events.filter { $0.kind == "rollout-advanced" }.count == expectedStage)

        // Beyond the paused stage, no device was offered the release.
        let states = try await hub.server.store.updateStates()
        for state in states where !model.includes(state.deviceID) {
            #expect(state.installedTarget != "app-v2.tar" && state.stepTarget != "app-v2.tar", "\(state)")
        }
        // The stages before the paused one advanced only once their whole cohort reported, so their healthy devices
        // committed. (The rollout id is random, and with it the cohorts: when the very first stage holds only a
        // failing device, nobody has committed yet; when the stages before the paused one hold no device at all, as
        // a 1 % stage of 100 devices may, they advanced with nobody.)
        let committed = states.filter { $0.installedTarget == "app-v2.tar" }.count
        var healthyBefore: [Int] = []
        if expectedStage > 0 {
            model.stage = expectedStage - 1
            healthyBefore = (0..<count).filter { model.includes(devices[$0]) && !failing.contains($0) }
            model.stage = expectedStage
        }
        if !healthyBefore.isEmpty { #expect(committed > 0, "healthy devices of the stages before: \(healthyBefore)") }
        let healthyRolledBack = states.filter {
            $0.lastStep == "rolled-back" && $0.stepTarget == "app-v2.tar"
                && !failing.contains(Int($0.deviceID.rawValue.dropFirst(3)) ?? -1)
        }
        #expect(
            healthyRolledBack.isEmpty,
            "healthy devices rolled back: \(healthyRolledBack.map { "\($0.deviceID.rawValue): \($0.reason ?? "")" })")

        // The CLI's status exits 1 (it paused by itself) and says why.
        let shown = try await cli.run(["rollout", "status"])
        #expect(shown.status == 1 && shown.stdout.contains("paused") && shown.stdout.contains("rolled back"))

        // An operator aborts: the cohort goes back to no assignment, except devices whose floor now forbids it.
        let aborted = try await cli.run(["rollout", "abort"])
        #expect(aborted.status == 0 && aborted.stdout.contains("aborted"), "\(aborted.stdout)\(aborted.stderr)")
        #expect(try await hub.operatorRequest("POST", "/v1/rollouts/current/resume").status == 409)

        for agent in agents { await agent.stop() }
        for task in tasks { _ = await task.result }
        try await hub.stop()
    }
}
