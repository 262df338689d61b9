/// How many failures are free and how long the lock-outs after them last (seconds).
public struct LockoutPolicy: Sendable {
    public var freeAttempts: Int
    public var baseLockout: Double
    public var maximumLockout: Double

    public init(freeAttempts: Int = 5, baseLockout: Double = 30, maximumLockout: Double = 3600) {
        self.freeAttempts = freeAttempts
        self.baseLockout = baseLockout
        self.maximumLockout = maximumLockout
    }

    /// When a key with `failures` failures, the last at `lastFailure`, may try again: nil while failures are free,
    /// else `lastFailure + baseLockout × 2^(failures − freeAttempts)`, the lock-out at most `maximumLockout`. The one
    /// rule for the per-source limiter below and the per-device count kept in the store (shared by hub nodes).
    public func lockedUntil(failures: Int, lastFailure: Double) -> Double? {
        let excess = failures - freeAttempts
        guard excess >= 0 else { return nil }
        return lastFailure + min(maximumLockout, baseLockout * Double(1 << min(excess, 30)))
    }
}

/// Failed pairing attempts per key (a device id, or a source address), with exponential lock-out: after
/// `freeAttempts` failures each further failure locks the key out for `baseLockout × 2^(failures − freeAttempts)`,
/// at most `maximumLockout`. A success clears the count. Time is a parameter (seconds on any monotonic clock).
public struct AttemptLimiter<Key: Hashable & Sendable>: Sendable {
    public typealias Policy = LockoutPolicy

    struct Entry {
        var failures = 0
        var lockedUntil: Double = -.infinity
    }

    public let policy: Policy
    private var entries: [Key: Entry] = [:]
    /// Entries beyond this many are dropped oldest-unlocked-first by `recordFailure`.
    private let capacity = 100_000

    public init(policy: Policy = Policy()) { self.policy = policy }

    /// Nil when an attempt may start now, else the time when it may.
    public func lockedUntil(_ device: Key, now: Double) -> Double? {
        guard let entry = entries[device], entry.lockedUntil > now else { return nil }
        return entry.lockedUntil
    }

    public mutating func recordFailure(_ device: Key, now: Double) {
        if entries.count >= capacity, entries[device] == nil {
            entries = entries.filter { $0.value.lockedUntil > now }
        }
        var entry = entries[device] ?? Entry()
        entry.failures += 1
        if let until = policy.lockedUntil(failures: entry.failures, lastFailure: now) { entry.lockedUntil = until }
        entries[device] = entry
    }

    public mutating func recordSuccess(_ device: Key) { entries[device] = nil }

    public func failures(_ device: Key) -> Int { entries[device]?.failures ?? 0 }
}
