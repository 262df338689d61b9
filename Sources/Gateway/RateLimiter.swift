import Core

/// A rate with a burst, for the generic cell rate algorithm (GCRA, ITU-T I.371 "virtual scheduling").
///
/// `rate` events per second on average, and up to `burst` events at once after a quiet period.
public struct RateLimit: Sendable, Equatable, CustomStringConvertible {
    public let rate: Double
    public let burst: Int

    public init(rate: Double, burst: Int) {
        precondition(rate > 0 && rate.isFinite && burst >= 1, "a rate limit needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
    }

    /// Time between two events at the sustained rate (the "emission interval" T), in nanoseconds.
    var interval: Int64 { Int64((1e9 / rate).rounded()) }
    /// How far the theoretical arrival time may run ahead of now (τ = T · (burst − 1)).
    var tolerance: Int64 { interval * Int64(burst - 1) }
    /// Seconds for an exhausted allowance to refill completely: the `w` of the RateLimit-Policy header.
    public var windowSeconds: Int { max(1, Int((Double(burst) / rate).rounded(.up))) }

    public var description: String { "\(rate)/s burst \(burst)" }
}

/// What one rate-limit decision says: admitted with `remaining` events left in the burst, or refused until
/// `retryAfterNanos` from now.
public enum RateDecision: Sendable, Equatable {
    case admit(remaining: Int)
    case deny(retryAfterNanos: Int64)
}

/// GCRA state for many keys (devices, device × route, source addresses) under one lock.
///
/// Each key holds one number, its theoretical arrival time (TAT). A key whose TAT is in the past is exactly
/// equivalent to a key never seen, so evicting it loses nothing: memory is bounded by the keys active within
/// one refill window. When the table is full of keys that are all still active, a new key is refused rather than
/// an old one forgotten (fail closed), and `overflowed` counts it.
public final class RateLimiterTable<Key: Hashable & Sendable>: Sendable {
    public let limit: RateLimit
    public let capacity: Int
    private struct State {
        var tat: [Key: Int64] = [:]
        var overflowed = 0
    }
    private let state = Locked(State())

    public init(limit: RateLimit, capacity: Int = 200_000) {
        precondition(capacity > 0)
        self.limit = limit
        self.capacity = capacity
    }

    /// One event for `key` at `now` (monotonic nanoseconds). O(1) except for the occasional sweep of idle keys,
    /// which happens only when the table is full and frees every idle key at once.
    public func decide(_ key: Key, now: Int64) -> RateDecision {
        let interval = limit.interval
        let tolerance = limit.tolerance
        return state.withLock { state in
            let known = state.tat[key]
            let start = max(known ?? now, now)
            // GCRA: admit when TAT − τ ≤ now.
            if start - tolerance > now {
                return .deny(retryAfterNanos: start - tolerance - now)
            }
            if known == nil, state.tat.count >= capacity {
                state.tat = state.tat.filter { $0.value > now }
                if state.tat.count >= capacity {
                    state.overflowed += 1
                    return .deny(retryAfterNanos: interval)
                }
            }
            let next = start + interval
            state.tat[key] = next
            // Events still admissible right now: how far `next` is below the tolerance line, in intervals.
            let remaining = (now + tolerance - next + interval) / interval
            return .admit(remaining: Int(max(0, remaining)))
        }
    }

    /// Keys currently tracked (for tests and the memory figure).
    public var count: Int { state.withLock { $0.tat.count } }
    public var overflowed: Int { state.withLock { $0.overflowed } }

    /// Drops every key that is idle at `now` (their allowance is full again).
    public func evictIdle(now: Int64) {
        state.withLock { state in state.tat = state.tat.filter { $0.value > now } }
    }

    /// Forgets `key` (an operator release lifts its limits too).
    public func reset(_ key: Key) { _ = state.withLock { $0.tat.removeValue(forKey: key) } }
}

/// GCRA state for keys that are small dense integers (interned devices, or device × route): an array of theoretical
/// arrival times indexed by the key, so a decision is one lock, one load and one store, and no hashing. Memory is
/// 8 bytes per slot up to the highest key seen (interned keys are dense, so about 8 bytes per device).
public final class DenseRateTable: Sendable {
    public let limit: RateLimit
    private let tats = Locked<[Int64]>([])

    public init(limit: RateLimit) { self.limit = limit }

    public func decide(_ slot: Int, now: Int64) -> RateDecision {
        let interval = limit.interval
        let tolerance = limit.tolerance
        return tats.withLock { tats in
            if slot >= tats.count {
                tats.append(contentsOf: repeatElement(Int64.min, count: max(slot + 1, tats.count * 2) - tats.count))
            }
            let start = max(tats[slot], now)
            if start - tolerance > now { return .deny(retryAfterNanos: start - tolerance - now) }
            let next = start + interval
            tats[slot] = next
            let remaining = (now + tolerance - next + interval) / interval
            return .admit(remaining: Int(max(0, remaining)))
        }
    }

    /// Forgets `slot` (an operator release lifts its limits too).
    public func reset(_ slot: Int) {
        tats.withLock { if slot < $0.count { $0[slot] = Int64.min } }
    }

    /// Bytes of state (for the memory figure).
    public var bytes: Int { tats.withLock { $0.capacity * MemoryLayout<Int64>.stride } }
}
