public import Core
import Synchronization

/// What a device did wrong, counted toward quarantine.
public enum Offence: String, Sendable, CaseIterable {
    case rateLimited = "rate-limited"
    case invalidMessage = "invalid-message"
    case replay = "replay"
    case badSignature = "bad-signature"
    /// A destination outside the device class's egress policy (counted only when `gateway.quarantine.egress` is set).
    case egress = "egress-violation"
}

/// Thresholds per minute and how long a quarantine lasts.
public struct QuarantinePolicy: Sendable, Equatable {
    public var thresholds: [Offence: Int]
    public var durationSeconds: Int64

    public init(
        thresholds: [Offence: Int] = [.rateLimited: 100, .invalidMessage: 20, .replay: 5, .badSignature: 5],
        durationSeconds: Int64 = 900
    ) {
        self.thresholds = thresholds
        self.durationSeconds = durationSeconds
    }
}

/// Offence counts per device in fixed one-minute windows, and the devices in quarantine.
public final class QuarantineBook: Sendable {
    public struct Record: Sendable {
        /// How many of this offence the device committed in the current minute (1 for the first).
        public let countThisMinute: Int
        /// Set when this offence crossed the threshold: the quarantine ends then (Unix seconds).
        public let quarantinedUntil: Int64?
    }
    struct Tally {
        var minute: Int64
        var counts: [Offence: Int]
    }
    struct State {
        var tallies: [DeviceID: Tally] = [:]
        var until: [DeviceID: Int64] = [:]
        /// The second `until` was last swept of its ended quarantines (`isQuarantined`).
        var swept: Int64 = 0
    }
    public let policy: QuarantinePolicy
    private let state = Locked(State())
    /// How many devices `until` holds, stored under the lock whenever it changes: every message asks
    /// `isQuarantined`, and with no device in quarantine (the common case) it answers from this without the lock,
    /// which both event loops otherwise took for every message (a quarter of the hub's `futex` calls under a QoS 0
    /// load once the rate tables' and the telemetry queue's had gone, 2026-12-07). A quarantine recorded before a
    /// message is checked is seen by it, as under the lock.
    private let quarantinedCount = Atomic(0)

    public init(policy: QuarantinePolicy) { self.policy = policy }

    public func isQuarantined(_ device: DeviceID, now: Int64) -> Bool {
        guard quarantinedCount.load(ordering: .acquiring) > 0 else { return false }
        return state.withLock { state in
            // Ended quarantines go at most once a second, so that a device that never sends again does not keep
            // every other message on this path.
            if state.swept != now {
                state.swept = now
                let before = state.until.count
                state.until = state.until.filter { $0.value > now }
                if state.until.count != before { quarantinedCount.store(state.until.count, ordering: .releasing) }
            }
            guard let until = state.until[device] else { return false }
            return until > now
        }
    }

    public func record(_ offence: Offence, device: DeviceID, now: Int64) -> Record {
        state.withLock { state in
            let minute = now / 60
            if state.tallies.count > 100_000 { state.tallies = state.tallies.filter { $0.value.minute == minute } }
            var tally = state.tallies[device] ?? Tally(minute: minute, counts: [:])
            if tally.minute != minute { tally = Tally(minute: minute, counts: [:]) }
            let count = tally.counts[offence, default: 0] + 1
            tally.counts[offence] = count
            state.tallies[device] = tally
            guard let threshold = policy.thresholds[offence], count >= threshold, (state.until[device] ?? 0) <= now
            else { return Record(countThisMinute: count, quarantinedUntil: nil) }
            let until = now + policy.durationSeconds
            state.until[device] = until
            quarantinedCount.store(state.until.count, ordering: .releasing)
            return Record(countThisMinute: count, quarantinedUntil: until)
        }
    }

    /// Lifts a quarantine (operator act) and forgets the device's offences this minute.
    @discardableResult
    public func release(_ device: DeviceID) -> Bool {
        state.withLock { state in
            state.tallies[device] = nil
            let released = state.until.removeValue(forKey: device) != nil
            quarantinedCount.store(state.until.count, ordering: .releasing)
            return released
        }
    }

    /// Restores quarantines persisted before a restart.
    public func load(_ entries: [(DeviceID, Int64)], now: Int64) {
        state.withLock { state in
            for (device, until) in entries where until > now { state.until[device] = until }
            quarantinedCount.store(state.until.count, ordering: .releasing)
        }
    }

    public func quarantined(now: Int64) -> [(DeviceID, Int64)] {
        state.withLock { state in state.until.filter { $0.value > now }.map { ($0.key, $0.value) } }
    }
}
