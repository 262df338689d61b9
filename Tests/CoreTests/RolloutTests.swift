import Core
import Testing

/// The staged-rollout rules without a hub: cohorts, the failure signals and each decision, with time passed in.
@Suite struct RolloutTests {
    static func rollout(stages: [Int] = [1, 10, 50, 100], soak: Double = 600, rate: Double = 5) throws -> Rollout {
        try Rollout(
            id: "r1", target: "app-v2.tar", previous: "app-v1.tar", stages: stages, soakSeconds: soak,
            maxFailureRate: rate, now: 1000)
    }

    @Test(arguments: [[], [1, 10, 50], [10, 5, 100], [0, 100], [50, 50, 100], [1, 101]])
    func stagesMustRiseTo100(_ stages: [Int]) {
        #expect(throws: RolloutError.self) { try Self.rollout(stages: stages) }
    }

    @Test func cohortsAreStableUniformAndGrowWithTheStages() throws {
        var rollout = try Self.rollout()
        let devices = try (0..<10_000).map { try DeviceID("dev-\($0)") }
        let first = devices.filter { rollout.includes($0) }
        #expect((60...140).contains(first.count), "about 1 % in stage 1: \(first.count)")
        #expect(devices.filter { rollout.includes($0) } == first, "the same devices every time")
        rollout.apply(.advance(to: 1), now: 2000)
        let second = devices.filter { rollout.includes($0) }
        #expect((850...1150).contains(second.count), "about 10 %: \(second.count)")
        #expect(Set(first).isSubset(of: Set(second)), "a stage keeps the devices of the one before")
        var other = rollout
        other.id = "r2"
        #expect(devices.filter { other.includes($0) } != second, "another rollout picks other devices first")
        rollout.apply(.complete, now: 3000)
        #expect(devices.allSatisfy { rollout.includes($0) })
        rollout.state = .aborted
        #expect(!devices.contains { rollout.includes($0) })
    }

    @Test func aStageAdvancesOnlyAfterItsSoakAndCompletesAtTheEnd() throws {
        var rollout = try Self.rollout(stages: [50, 100], soak: 600)
        let healthy = [RolloutDeviceFacts(device: try DeviceID("a"), step: "committed", committedAt: 1100)]
        #expect(rollout.evaluate(cohort: healthy, now: 1599) == .hold)
        #expect(rollout.evaluate(cohort: healthy, now: 1600) == .advance(to: 1))
        rollout.apply(.advance(to: 1), now: 1600)
        #expect(rollout.evaluate(cohort: healthy, now: 2199) == .hold)
        #expect(rollout.evaluate(cohort: healthy, now: 2200) == .complete)
        rollout.apply(.complete, now: 2200)
        #expect(rollout.state == .completed)
        #expect(rollout.evaluate(cohort: healthy, now: 9999) == .hold, "nothing after completion")
    }

    @Test func reportedRollbacksAndRefusalsPauseItOnceTheRateCrossesTheThreshold() throws {
        let rollout = try Self.rollout(rate: 10)
        var cohort = try (0..<20).map {
            RolloutDeviceFacts(device: try DeviceID("d\($0)"), step: "committed", committedAt: 1010)
        }
        cohort[0].step = "rolled-back"
        cohort[1].step = "refused"
        #expect(rollout.evaluate(cohort: cohort, now: 1020) == .hold, "2 of 20 = 10 % is not above 10 %")
        cohort[2].step = "rolled-back"
        guard case .pause(let reason) = rollout.evaluate(cohort: cohort, now: 1020) else {
            Issue.record("3 of 20 = 15 % pauses it")
            return
        }
        #expect(reason.contains("3 of 20 devices failed") && reason.contains("d0 rolled back"), "\(reason)")
        #expect(reason.contains("d1 refused the release"))
    }

    @Test func aDeviceSilentSinceItCommittedFailsOnlyAfterTheSilenceWindow() throws {
        let rollout = try Self.rollout(soak: 600)  // silence window: 300 s
        #expect(rollout.silenceSeconds == 300)
        var facts = RolloutDeviceFacts(
            device: try DeviceID("quiet"), step: "committed", committedAt: 2000, telemetryBeforeCommit: true,
            lastTelemetryAt: 1990)
        #expect(rollout.failure(facts, now: 2299) == nil)
        #expect(rollout.failure(facts, now: 2300) == "silent since it committed")
        facts.lastTelemetryAt = 2100
        #expect(rollout.failure(facts, now: 2300) == nil, "it spoke after committing")
        facts.lastTelemetryAt = 1990
        facts.telemetryBeforeCommit = false
        #expect(rollout.failure(facts, now: 5000) == nil, "a device that never sent telemetry is not judged by it")
    }

    @Test func gatewayRefusalsThatJumpAfterTheCommitCount() throws {
        let rollout = try Self.rollout()
        var facts = RolloutDeviceFacts(
            device: try DeviceID("noisy"), step: "committed", committedAt: 2000, refusalsBefore: 0, refusalsSince: 4)
        #expect(rollout.failure(facts, now: 2010) == nil, "fewer than 5")
        facts.refusalsSince = 5
        #expect(rollout.failure(facts, now: 2010)?.contains("refusals jumped") == true)
        facts.refusalsBefore = 2
        #expect(rollout.failure(facts, now: 2010) == nil, "5 is not above 3× its 2 before")
        facts.refusalsSince = 7
        #expect(rollout.failure(facts, now: 2010) != nil)
    }

    /// A stage nobody has tried proves nothing: after its soak it waits until the required share of its cohort
    /// committed or failed.
    @Test func aStageWaitsForItsCohortToReport() throws {
        var rollout = try Rollout(
            id: "r", target: "t", previous: nil, stages: [50, 100], soakSeconds: 10, maxFailureRate: 50,
            minimumReported: 100, now: 0)
        var cohort = try (0..<4).map { RolloutDeviceFacts(device: try DeviceID("w\($0)"), step: nil) }
        cohort[0].step = "committed"
        cohort[1].step = "committed"
        cohort[2].step = "rolled-back"
        #expect(rollout.evaluate(cohort: cohort, now: 100) == .hold, "one device has not reported")
        cohort[3].step = "committed"
        #expect(rollout.evaluate(cohort: cohort, now: 100) == .advance(to: 1))
        rollout.minimumReported = 75
        cohort[3].step = "downloading"
        #expect(rollout.evaluate(cohort: cohort, now: 100) == .advance(to: 1), "3 of 4 is enough at 75 %")
    }

    @Test func aPausedRolloutHoldsAndAnEmptyCohortFailsNothing() throws {
        var rollout = try Self.rollout(soak: 10)
        #expect(rollout.evaluate(cohort: [], now: 1011) == .advance(to: 1))
        rollout.apply(.pause(reason: "x"), now: 1011)
        #expect(rollout.evaluate(cohort: [], now: 9999) == .hold)
    }
}
