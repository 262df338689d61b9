import Core
import Foundation
import Logging
import Store
import Synchronization
import TUF

/// What the hub sees of each device that the device does not report itself: when its telemetry arrived (its own
/// messages, not its update and connection reports) and when the gateway refused it. Kept in memory (a restart starts afresh), bounded per device; read by staged rollouts.
final class DeviceSignals: Sendable {
    struct Seen: Sendable {
        var firstTelemetry: Double?
        var lastTelemetry: Double?
        /// The most recent refusals (at most 64).
        var refusals: [Double] = []

        mutating func telemetry(at now: Double) {
            lastTelemetry = now
            if firstTelemetry == nil { firstTelemetry = now }
        }
    }

    private let seen = Mutex<[DeviceID: Seen]>([:])

    /// Called for every stored message, on the thread that committed it: one lookup of the device, not three.
    func telemetry(_ device: DeviceID, at now: Double = Date().timeIntervalSince1970) {
        seen.withLock { $0[device, default: Seen()].telemetry(at: now) }
    }

    func refusal(_ device: DeviceID, at now: Double = Date().timeIntervalSince1970) {
        seen.withLock {
            $0[device, default: Seen()].refusals.append(now)
            if let count = $0[device]?.refusals.count, count > 64 { $0[device]?.refusals.removeFirst(count - 64) }
        }
    }

    func snapshot(_ device: DeviceID) -> Seen? { seen.withLock { $0[device] } }
}

/// Staged rollouts on the assignment route (`Rollout` holds the rules): starts, pauses, resumes and aborts them, and
/// every `interval` evaluates the current stage's cohort from the devices' update reports and the hub's own signals,
/// applying what `Rollout.evaluate` decides. Every change is audited (`rollout-*`).
///
/// While a rollout runs, the fleet's assignment stays the previous target: devices in the stage's cohort get the
/// rollout's target instead (a device's own or its class's assignment still wins). When it completes, the fleet's
/// assignment becomes the target. After an abort, the cohort goes back to the previous target, except devices that
/// committed the target and whose anti-rollback floor is now above the previous target's security version: their
/// agents would refuse it, so they stay on the target.
actor RolloutController {
    let store: any HubStore
    let signals: DeviceSignals
    let assignments: UpdateAssignments
    let logger: Logger
    /// The latest rollout, for the assignment route's reads (no actor hop per update check).
    nonisolated let current = Mutex<Rollout?>(nil)
    /// When a cohort device was first seen committed to the target (from its report time).
    private var commits: [DeviceID: Double] = [:]

    init(store: any HubStore, signals: DeviceSignals, assignments: UpdateAssignments, logger: Logger) {
        self.store = store
        self.signals = signals
        self.assignments = assignments
        self.logger = logger
    }

    func load() async throws {
        let latest = try await store.latestRollout()
        current.withLock { $0 = latest }
    }

    /// The security version a published target carries (its signed `custom.securityVersion`), 0 when none.
    nonisolated func securityVersion(_ target: String?) -> Int {
        guard let target, let custom = assignments.published(target)?.custom?.objectValue,
            let value = custom["securityVersion"]?.integerValue
        else { return 0 }
        return Int(value)
    }

    /// Starts a rollout; returns it with a note for the operator when an abort could not take every device back.
    func start(
        target: String, stages: [Int], soakSeconds: Double, maxFailureRate: Double, minimumReported: Double,
        by: String, correlationID: String
    ) async throws -> (Rollout, note: String?) {
        if let running = current.withLock({ $0 }), running.state == .running || running.state == .paused {
            throw HubError(
                .conflict, "rollout-active",
                message: "rollout \(running.id) of \(running.target) is \(running.state.rawValue)",
                detail: "rollout start", event: nil)
        }
        guard assignments.published(target) != nil else {
            throw HubError(
                .badRequest, "invalid-request",
                message: "\(target) is not a target in the published targets metadata", detail: "rollout start",
                event: nil)
        }
        let previous = try await store.assignment(.fleet)
        let now = Date().timeIntervalSince1970
        var random = SystemRandomNumberGenerator()
        let id = "r\(Int(now))-\(String(UInt16.random(in: 0...UInt16.max, using: &random), radix: 16))"
        let rollout: Rollout
        do {
            rollout = try Rollout(
                id: id, target: target, previous: previous, stages: stages, soakSeconds: soakSeconds,
                maxFailureRate: maxFailureRate, minimumReported: minimumReported, now: now)
        } catch {
            throw HubError(
                .badRequest, "invalid-request", message: error.description, detail: "rollout start", event: nil)
        }
        var note: String?
        let (from, to) = (securityVersion(previous), securityVersion(target))
        if to > from {
            note =
                "\(target) raises the security version from \(from) to \(to): after an abort, devices that committed "
                + "it keep it (their floor refuses \(previous ?? "the previous release")); only the others go back"
        }
        try await store.saveRollout(rollout)
        commits = [:]
        current.withLock { $0 = rollout }
        try await audit(
            "rollout-started",
            "\(rollout.id): \(target) in stages \(stages.map(String.init).joined(separator: ",")) %, soak "
                + "\(Int(soakSeconds)) s, at most \(maxFailureRate) % failing, from \(previous ?? "no release") by \(by)",
            correlationID: correlationID)
        return (rollout, note)
    }

    /// Pauses, resumes or aborts the current rollout.
    func change(_ action: String, by: String, correlationID: String) async throws -> Rollout {
        guard var rollout = current.withLock({ $0 }) else {
            throw HubError(.notFound, "not-found", message: "no rollout", detail: "rollout \(action)", event: nil)
        }
        let now = Date().timeIntervalSince1970
        switch (action, rollout.state) {
        case ("pause", .running):
            rollout.state = .paused
            rollout.reason = "paused by \(by)"
        case ("resume", .paused):
            rollout.state = .running
            rollout.stageStartedAt = now  // the stage soaks again from now
            rollout.reason = nil
        case ("abort", .running), ("abort", .paused):
            rollout.state = .aborted
            rollout.reason = "aborted by \(by)"
        default:
            throw HubError(
                .conflict, "rollout-state", message: "cannot \(action) a rollout that is \(rollout.state.rawValue)",
                detail: "rollout \(action)", event: nil)
        }
        try await store.saveRollout(rollout)
        current.withLock { $0 = rollout }
        try await audit(
            "rollout-\(action == "pause" ? "paused" : action == "resume" ? "resumed" : "aborted")",
            "\(rollout.id) of \(rollout.target) at stage \(rollout.stage + 1) by \(by)", correlationID: correlationID)
        return rollout
    }

    /// The cohort of the current stage with each device's facts and failure (for `status` and `evaluate`).
    func cohort(of rollout: Rollout, now: Double) async throws -> [(RolloutDeviceFacts, String?)] {
        let states = Dictionary(
            try await store.updateStates().map { ($0.deviceID, $0) }, uniquingKeysWith: { a, _ in a })
        // A device's own or its class's assignment wins over the rollout: it is not in the cohort.
        let own = try await store.devicesWithOwnAssignment(defaultClass: EgressMonitor.defaultClass)
        var result: [(RolloutDeviceFacts, String?)] = []
        for record in try await store.devices()
        where record.status == .active && !own.contains(record.id) && rollout.includes(record.id) {
            let state = states[record.id]
            var step: String?
            if let state, state.stepTarget == rollout.target || state.installedTarget == rollout.target {
                step = state.stepTarget == rollout.target ? state.lastStep : "committed"
                if state.installedTarget == rollout.target, commits[record.id] == nil {
                    commits[record.id] = state.lastStep == "committed" ? state.updatedAt.timeIntervalSince1970 : now
                }
            }
            var facts = RolloutDeviceFacts(device: record.id, step: step, committedAt: commits[record.id])
            if let seen = signals.snapshot(record.id), let committed = commits[record.id] {
                facts.telemetryBeforeCommit = (seen.firstTelemetry ?? .infinity) < committed
                facts.lastTelemetryAt = seen.lastTelemetry
                facts.refusalsBefore =
                    seen.refusals.filter { $0 < committed && $0 >= committed - rollout.soakSeconds }
                    .count
                facts.refusalsSince = seen.refusals.filter { $0 >= committed }.count
            }
            result.append((facts, rollout.failure(facts, now: now)))
        }
        return result
    }

    /// One evaluation of the running rollout: advance, complete or pause.
    func evaluate(now: Double = Date().timeIntervalSince1970) async throws {
        guard var rollout = current.withLock({ $0 }), rollout.state == .running else { return }
        let cohort = try await cohort(of: rollout, now: now).map(\.0)
        let decision = rollout.evaluate(cohort: cohort, now: now)
        guard rollout.apply(decision, now: now) else { return }
        if case .complete = decision { try await store.setAssignment(.fleet, target: rollout.target) }
        try await store.saveRollout(rollout)
        current.withLock { $0 = rollout }
        switch decision {
        case .hold: break
        case .advance(let next):
            try await audit(
                "rollout-advanced",
                "\(rollout.id) of \(rollout.target) to stage \(next + 1) (\(rollout.stages[next]) %)",
                correlationID: "-")
        case .complete:
            try await audit("rollout-completed", "\(rollout.id): \(rollout.target) is the fleet's", correlationID: "-")
        case .pause(let reason):
            logger.warning("rollout paused", metadata: ["rollout": .string(rollout.id), "reason": .string(reason)])
            try await audit("rollout-paused", "\(rollout.id) of \(rollout.target): \(reason)", correlationID: "-")
        }
    }

    /// Evaluates every `interval` until cancelled; a failed evaluation is logged and retried.
    func run(interval: Duration) async {
        while !Task.isCancelled {
            do { try await evaluate() } catch {
                logger.error("rollout evaluation failed", metadata: ["error": .string("\(error)")])
            }
            do { try await Task.sleep(for: interval) } catch { return }
        }
    }

    /// The assignment a device gets, given the one that applies without a rollout (`base`).
    nonisolated func resolve(_ device: DeviceID, base: (scope: String, target: String)?) async throws
        -> (scope: String, target: String)?
    {
        guard let rollout = current.withLock({ $0 }) else { return base }
        if let base, base.scope != "fleet" { return base }
        switch rollout.state {
        case .running, .paused:
            return rollout.includes(device) ? ("rollout", rollout.target) : base
        case .completed:
            return base
        case .aborted:
            // Devices that committed the target and whose floor the previous target is below stay on the target.
            guard rollout.bucket(of: device) < rollout.share, let state = try await store.updateState(of: device),
                state.installedTarget == rollout.target, state.floor > securityVersion(rollout.previous)
            else { return base }
            return ("rollout", rollout.target)
        }
    }

    private func audit(_ kind: String, _ detail: String, correlationID: String) async throws {
        try await store.recordSecurityEvent(
            SecurityEvent(at: Date(), kind: kind, identity: nil, correlationID: correlationID, detail: detail))
    }
}
