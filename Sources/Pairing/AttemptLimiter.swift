public import Core

/// Failed pairing attempts per device, with exponential lock-out: after `freeAttempts` failures each further
/// failure locks the device out for `baseLockout × 2^(failures − freeAttempts)`, at most `maximumLockout`.
/// A success clears the count. Time is a parameter (seconds on any monotonic clock).
public struct AttemptLimiter: Sendable {
    public struct Policy: Sendable {
        public var freeAttempts: Int
        public var baseLockout: Double
        public var maximumLockout: Double

        public init(freeAttempts: Int = 5, baseLockout: Double = 30, maximumLockout: Double = 3600) {
            self.freeAttempts = freeAttempts
            self.baseLockout = baseLockout
            self.maximumLockout = maximumLockout
        }
    }

    struct Entry {
        var failures = 0
        var lockedUntil: Double = -.infinity
    }

    public let policy: Policy
    private var entries: [DeviceID: Entry] = [:]
    /// Entries beyond this many are dropped oldest-unlocked-first by `recordFailure`.
    private let capacity = 100_000

    public init(policy: Policy = Policy()) { self.policy = policy }

    /// Nil when an attempt may start now, else the time when it may.
    public func lockedUntil(_ device: DeviceID, now: Double) -> Double? {
        guard let entry = entries[device], entry.lockedUntil > now else { return nil }
        return entry.lockedUntil
    }

    public mutating func recordFailure(_ device: DeviceID, now: Double) {
        if entries.count >= capacity, entries[device] == nil {
            entries = entries.filter { $0.value.lockedUntil > now }
        }
        var entry = entries[device] ?? Entry()
        entry.failures += 1
        let excess = entry.failures - policy.freeAttempts
        if excess >= 0 {
            let lockout = min(policy.maximumLockout, policy.baseLockout * Double(1 << min(excess, 30)))
            entry.lockedUntil = now + lockout
        }
        entries[device] = entry
    }

    public mutating func recordSuccess(_ device: DeviceID) { entries[device] = nil }

    public func failures(_ device: DeviceID) -> Int { entries[device]?.failures ?? 0 }
}
