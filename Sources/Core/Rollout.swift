/// A staged rollout (hawkBit's and AWS IoT Jobs' idea, with hub-side signals they lack): a release goes to a growing
/// share of the fleet, stage by stage, and a stage advances only after its soak time with a failure rate under the
/// threshold. It pauses by itself when the rate crosses the threshold, counting what agents report (rollbacks,
/// refusals) and what the hub sees that a device did not report itself (a device silent since it committed, a device
/// whose gateway refusals jumped after it committed).
///
/// Pure: the hub's `RolloutController` feeds it facts and the time, and applies what `evaluate` returns.
public struct Rollout: Sendable, Equatable {
    public enum State: String, Sendable {
        case running, paused, aborted, completed
    }

    public var id: String
    /// The target path in the signed targets metadata.
    public var target: String
    /// The fleet's assignment when the rollout started: what devices outside the cohort keep running, and what an
    /// abort goes back to.
    public var previous: String?
    /// Cumulative shares of the fleet in percent, ascending, ending at 100 (e.g. 1, 10, 50, 100).
    public var stages: [Int]
    public var soakSeconds: Double
    /// A stage fails when more than this percentage of its cohort failed.
    public var maxFailureRate: Double
    /// A stage advances only when at least this percentage of its cohort reported an outcome for the target
    /// (committed, or failed): a stage nobody has tried yet proves nothing, whatever its soak time (hawkBit's success
    /// threshold). 100 waits for every device, so an offline device holds the rollout until an operator acts.
    public var minimumReported: Double
    public var state: State
    /// The index of the current stage in `stages`.
    public var stage: Int
    public var startedAt: Double
    public var stageStartedAt: Double
    /// Why it paused, aborted or completed.
    public var reason: String?

    public init(
        id: String, target: String, previous: String?, stages: [Int], soakSeconds: Double, maxFailureRate: Double,
        minimumReported: Double = 90, now: Double
    ) throws(RolloutError) {
        guard !stages.isEmpty, stages.last == 100, stages.allSatisfy({ (1...100).contains($0) }),
            zip(stages, stages.dropFirst()).allSatisfy({ $0 < $1 })
        else { throw RolloutError("stages must rise from 1 to 100 percent (e.g. 1,10,50,100)") }
        guard soakSeconds >= 1, soakSeconds <= 30 * 86400 else {
            throw RolloutError("the soak time must be between 1 second and 30 days")
        }
        guard maxFailureRate >= 0, maxFailureRate <= 100 else {
            throw RolloutError("the maximum failure rate is a percentage (0-100)")
        }
        guard minimumReported >= 0, minimumReported <= 100 else {
            throw RolloutError("the share of the cohort that must have reported is a percentage (0-100)")
        }
        self.minimumReported = minimumReported
        self.id = id
        self.target = target
        self.previous = previous
        self.stages = stages
        self.soakSeconds = soakSeconds
        self.maxFailureRate = maxFailureRate
        self.state = .running
        self.stage = 0
        self.startedAt = now
        self.stageStartedAt = now
    }

    /// A device's place in the fleet for this rollout, 0..<10,000 (basis points): FNV-1a of the rollout id and the
    /// device id, so cohorts are stable for a rollout, uniform, and different from one rollout to the next (the same
    /// devices are not always first). Not a security decision: a device cannot choose its id.
    public func bucket(of device: DeviceID) -> Int {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in Array(id.utf8) + [0] + Array(device.rawValue.utf8) {
            hash ^= UInt64(byte)
            hash = hash &* 0x0000_0100_0000_01b3
        }
        return Int(hash % 10_000)
    }

    /// The share of the fleet in the current stage, in basis points.
    public var share: Int { state == .completed ? 10_000 : stages[min(stage, stages.count - 1)] * 100 }

    /// Whether `device` should run `target` now: in the cohort of the current stage (running or paused), everyone
    /// when completed, nobody when aborted (the abort's own rule decides who cannot go back).
    public func includes(_ device: DeviceID) -> Bool {
        switch state {
        case .aborted: return false
        case .completed: return true
        case .running, .paused: return bucket(of: device) < share
        }
    }
}

/// What the hub knows about one device of the cohort, for `Rollout.evaluate`.
public struct RolloutDeviceFacts: Sendable, Equatable {
    public var device: DeviceID
    /// The device's last update step for this rollout's target: `committed`, `rolled-back`, `refused`, … (nil: none).
    public var step: String?
    /// When the hub first saw the device committed to the target.
    public var committedAt: Double?
    /// The last telemetry before and after `committedAt` (nil: none).
    public var telemetryBeforeCommit: Bool
    public var lastTelemetryAt: Double?
    /// Gateway refusals of this device in the `window` before it committed, and since.
    public var refusalsBefore: Int
    public var refusalsSince: Int

    public init(
        device: DeviceID, step: String?, committedAt: Double? = nil, telemetryBeforeCommit: Bool = false,
        lastTelemetryAt: Double? = nil, refusalsBefore: Int = 0, refusalsSince: Int = 0
    ) {
        self.device = device
        self.step = step
        self.committedAt = committedAt
        self.telemetryBeforeCommit = telemetryBeforeCommit
        self.lastTelemetryAt = lastTelemetryAt
        self.refusalsBefore = refusalsBefore
        self.refusalsSince = refusalsSince
    }
}

extension Rollout {
    /// What to do next.
    public enum Decision: Sendable, Equatable {
        case hold
        case advance(to: Int)
        case complete
        case pause(reason: String)
    }

    /// How long after committing a device that was sending telemetry may stay silent before it counts as failed:
    /// half the soak, at least 1 s and at most 10 minutes.
    public var silenceSeconds: Double { min(600, max(1, soakSeconds / 2)) }

    /// Refusals after a commit count as a failure from this many on, and when more than 3× those before it.
    public static let refusalJump = 5

    /// Why a device of the cohort counts as failed, or nil.
    public func failure(_ facts: RolloutDeviceFacts, now: Double) -> String? {
        switch facts.step {
        case "rolled-back": return "rolled back"
        case "refused": return "refused the release"
        case "slot-tampered": return "slot tampered"
        default: break
        }
        guard let committed = facts.committedAt else { return nil }
        if facts.telemetryBeforeCommit, now - committed >= silenceSeconds,
            (facts.lastTelemetryAt ?? -Double.infinity) < committed
        {
            return "silent since it committed"
        }
        if facts.refusalsSince >= Self.refusalJump, facts.refusalsSince > 3 * facts.refusalsBefore {
            return "gateway refusals jumped after it committed (\(facts.refusalsBefore) → \(facts.refusalsSince))"
        }
        return nil
    }

    /// The decision for the current stage, given the facts of every device in its cohort.
    public func evaluate(cohort: [RolloutDeviceFacts], now: Double) -> Decision {
        guard state == .running else { return .hold }
        let failures = cohort.compactMap { facts in failure(facts, now: now).map { (facts.device, $0) } }
        let rate = cohort.isEmpty ? 0 : Double(failures.count) * 100 / Double(cohort.count)
        if !failures.isEmpty, rate > maxFailureRate {
            let named = failures.prefix(3).map { "\($0.0) \($0.1)" }.joined(separator: "; ")
            return .pause(
                reason: "stage \(stage + 1) (\(stages[stage]) %): \(failures.count) of \(cohort.count) devices failed "
                    + "(\(Self.percent(rate)) % > \(Self.percent(maxFailureRate)) %): \(named)"
                    + (failures.count > 3 ? "; …" : ""))
        }
        guard now - stageStartedAt >= soakSeconds else { return .hold }
        let reported = cohort.filter { $0.step == "committed" || failure($0, now: now) != nil }.count
        guard cohort.isEmpty || Double(reported) * 100 >= minimumReported * Double(cohort.count) else { return .hold }
        return stage + 1 < stages.count ? .advance(to: stage + 1) : .complete
    }

    /// Applies a decision (time passed in); returns whether anything changed.
    @discardableResult
    public mutating func apply(_ decision: Decision, now: Double) -> Bool {
        switch decision {
        case .hold: return false
        case .advance(let next):
            stage = next
            stageStartedAt = now
        case .complete:
            state = .completed
            reason = "all \(stages.count) stages passed"
        case .pause(let why):
            state = .paused
            reason = why
        }
        return true
    }

    static func percent(_ value: Double) -> String {
        let tenths = Int((value * 10).rounded())
        return "\(tenths / 10).\(tenths % 10)"
    }
}

/// A rollout that cannot start or change: one line saying why.
public struct RolloutError: Error, Equatable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
