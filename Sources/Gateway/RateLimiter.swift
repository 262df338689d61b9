import Core
import Synchronization

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

/// How many locks a rate table's keys are spread over. Every message takes three tables' locks on whichever event
/// loop reads it: under one lock per table the loops waited for each other there, a third of the hub's `futex` calls
/// under a QoS 0 load (`perf record -e syscalls:sys_enter_futex`, 2026-12-07). A power of two.
let rateTableStripes = 16

/// GCRA state for many keys (devices, device × route, source addresses), spread over `rateTableStripes` locks by
/// the key's hash.
///
/// Each key holds one number, its theoretical arrival time (TAT). A key whose TAT is in the past is exactly
/// equivalent to a key never seen, so evicting it loses nothing: memory is bounded by the keys active within
/// one refill window. When the table is full of keys that are all still active, a new key is refused rather than
/// an old one forgotten (fail closed), and `overflowed` counts it. The bound is the whole table's: a new key is
/// counted in before it is stored, and a full table sweeps every stripe (one at a time) before it refuses one.
public final class RateLimiterTable<Key: Hashable & Sendable>: Sendable {
    public let limit: RateLimit
    public let capacity: Int
    private let stripes: [Locked<[Key: Int64]>]
    /// Keys stored over all stripes (at most `capacity`).
    private let tracked = Atomic(0)
    private let overflows = Atomic(0)

    public init(limit: RateLimit, capacity: Int = 200_000) {
        precondition(capacity > 0)
        self.limit = limit
        self.capacity = capacity
        stripes = (0..<rateTableStripes).map { _ in Locked([:]) }
    }

    private func stripe(_ key: Key) -> Locked<[Key: Int64]> { stripes[key.hashValue & (rateTableStripes - 1)] }

    /// One event for `key` at `now` (monotonic nanoseconds). O(1) except for the occasional sweep of idle keys,
    /// which happens only when the table is full and frees every idle key at once.
    public func decide(_ key: Key, now: Int64) -> RateDecision {
        let interval = limit.interval
        let tolerance = limit.tolerance
        let stripe = stripe(key)
        for attempt in 0..<2 {
            let decision = stripe.withLock { tat -> RateDecision? in
                let known = tat[key]
                let start = max(known ?? now, now)
                // GCRA: admit when TAT − τ ≤ now.
                if start - tolerance > now {
                    return .deny(retryAfterNanos: start - tolerance - now)
                }
                if known == nil, tracked.add(1, ordering: .relaxed).newValue > capacity {
                    tracked.subtract(1, ordering: .relaxed)
                    return nil  // full
                }
                let next = start + interval
                tat[key] = next
                // Events still admissible right now: how far `next` is below the tolerance line, in intervals.
                let remaining = (now + tolerance - next + interval) / interval
                return .admit(remaining: Int(max(0, remaining)))
            }
            if let decision { return decision }
            if attempt == 0 { evictIdle(now: now) }  // outside the stripe's lock: one lock at a time
        }
        overflows.add(1, ordering: .relaxed)
        return .deny(retryAfterNanos: interval)
    }

    /// Keys currently tracked (for tests and the memory figure).
    public var count: Int { tracked.load(ordering: .relaxed) }
    public var overflowed: Int { overflows.load(ordering: .relaxed) }

    /// Drops every key that is idle at `now` (their allowance is full again).
    public func evictIdle(now: Int64) {
        for stripe in stripes {
            stripe.withLock { tat in
                let before = tat.count
                tat = tat.filter { $0.value > now }
                tracked.subtract(before - tat.count, ordering: .relaxed)
            }
        }
    }

    /// Forgets `key` (an operator release lifts its limits too).
    public func reset(_ key: Key) {
        stripe(key).withLock { if $0.removeValue(forKey: key) != nil { tracked.subtract(1, ordering: .relaxed) } }
    }
}

/// GCRA state for keys that are small dense integers (interned devices, or device × route): arrays of theoretical
/// arrival times indexed by the key, spread over `rateTableStripes` locks (`place`), so a decision is one
/// lock, one load and one store, and no hashing. Memory is 8 bytes per slot up to the highest key seen (interned
/// keys are dense, so about 8 bytes per device).
public final class DenseRateTable: Sendable {
    public let limit: RateLimit
    private let stripes: [Locked<[Int64]>]

    public init(limit: RateLimit) {
        self.limit = limit
        stripes = (0..<rateTableStripes).map { _ in Locked([]) }
    }

    /// The stripe and the index in it of `slot`: the index is its high bits, the stripe its low four mixed with the
    /// next twelve, so that slots a multiple of 16 apart (one route's devices, `key × sharedRoutes + route`) still
    /// spread over every stripe. One slot, one (stripe, index), as the low bits come back from the stripe and the
    /// index.
    @inline(__always) static func place(_ slot: Int) -> (stripe: Int, index: Int) {
        precondition(slot >= 0, "a rate table slot is never negative")
        return ((slot ^ (slot >> 4) ^ (slot >> 8) ^ (slot >> 12)) & (rateTableStripes - 1), slot >> 4)
    }

    public func decide(_ slot: Int, now: Int64) -> RateDecision {
        let interval = limit.interval
        let tolerance = limit.tolerance
        let (stripe, index) = Self.place(slot)
        return stripes[stripe].withLock { tats in
            if index >= tats.count {
                tats.append(contentsOf: repeatElement(Int64.min, count: max(index + 1, tats.count * 2) - tats.count))
            }
            let start = max(tats[index], now)
            if start - tolerance > now { return .deny(retryAfterNanos: start - tolerance - now) }
            let next = start + interval
            tats[index] = next
            let remaining = (now + tolerance - next + interval) / interval
            return .admit(remaining: Int(max(0, remaining)))
        }
    }

    /// Forgets `slot` (an operator release lifts its limits too).
    public func reset(_ slot: Int) {
        let (stripe, index) = Self.place(slot)
        stripes[stripe].withLock { if index < $0.count { $0[index] = Int64.min } }
    }

    /// Bytes of state (for the memory figure).
    public var bytes: Int {
        stripes.reduce(0) { total, stripe in total + stripe.withLock { $0.capacity * MemoryLayout<Int64>.stride } }
    }
}
