import Core
import Synchronization

/// A rate with a burst, for the generic cell rate algorithm (GCRA, ITU-T I.371 "virtual scheduling").
///
/// `rate` events per second on average, and up to `burst` events at once after a quiet period.
public struct RateLimit: Sendable, Equatable, CustomStringConvertible {
    public let rate: Double
    public let burst: Int
    /// Time between two events at the sustained rate (the "emission interval" T), in nanoseconds.
    let interval: Int64
    /// How far the theoretical arrival time may run ahead of now (τ = T · (burst − 1)).
    let tolerance: Int64

    public init(rate: Double, burst: Int) {
        precondition(rate > 0 && rate.isFinite && burst >= 1, "a rate limit needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        interval = Int64((1e9 / rate).rounded())
        tolerance = interval * Int64(burst - 1)
    }

    /// One GCRA step (ITU-T I.371 virtual scheduling): the decision for an event at `now` (nanoseconds) on a key
    /// whose theoretical arrival time is `tat` (`Int64.min` for a key never seen, or idle), and the key's next TAT
    /// when the event is admitted (nil when refused: the TAT stays). The only statement of the algorithm: every
    /// table (`RateLimiterTable` by key and by cell, `DenseRateTable`) stores what it returns.
    @inline(__always)
    func step(tat: Int64, now: Int64) -> (decision: RateDecision, next: Int64?) {
        let start = max(tat, now)
        // Admit when TAT − τ ≤ now.
        if start - tolerance > now { return (.deny(retryAfterNanos: start - tolerance - now), nil) }
        let next = start + interval
        // Events still admissible right now: how far `next` is below the tolerance line, in intervals.
        return (.admit(remaining: Int(max(0, (now + tolerance - next + interval) / interval))), next)
    }
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

/// An object whose identity stands for its owner's (a rate table's, a pipeline's), held by what the owner hands
/// out so that the owner's address cannot be reused for another while it is held.
final class Owner: Sendable {}

/// GCRA state for many keys (devices, device × route, source addresses), spread over `rateTableStripes` locks by
/// the key's hash.
///
/// Each key holds one number, its theoretical arrival time (TAT). A key whose TAT is in the past is exactly
/// equivalent to a key never seen, so evicting it loses nothing: memory is bounded by the keys active within
/// one refill window. When the table is full of keys that are all still active, a new key is refused rather than
/// an old one forgotten (fail closed), and `overflowed` counts it. The bound is the whole table's: a new key is
/// counted in before it is stored, and a full table sweeps every stripe (one at a time) before it refuses one.
///
/// A key that many threads decide for at once (one source address behind which every device connects: a NAT, a
/// gateway, the benchmark's loopback) can be `pin`ned by a caller that decides for it again and again (a
/// connection, for its source): its TAT moves into a `Cell` that the caller keeps and decides with
/// (`decide(_:now:)` on the cell), a compare-and-swap with no lock. Under its stripe's lock both event loops waited
/// for each other on every message: 38 % of the hub's `futex` calls under a QoS 0 load came from this table (`perf
/// record -e syscalls:sys_enter_futex`, 2026-12-07). A pinned key stays one key: its cell is the table's, and
/// deciding by key reaches the same cell. A cell counts against the capacity as any key, and is swept as any key
/// once idle, held or not: it is then retired, and deciding with it decides by key (its holder pins again).
public final class RateLimiterTable<Key: Hashable & Sendable>: Sendable {
    /// A pinned key's TAT, decided on without the table's lock. Its holder keeps it for as long as it decides
    /// for the key (a connection's topic decision), and decides only for `key` with it.
    public final class Cell: Sendable {
        public let key: Key
        /// The table's, held so that its address cannot be another table's while the cell lives.
        fileprivate let owner: Owner
        fileprivate let tat: Atomic<Int64>
        fileprivate let retired = Atomic(false)

        fileprivate init(_ key: Key, owner: Owner, tat: Int64) {
            self.key = key
            self.owner = owner
            self.tat = Atomic(tat)
        }

        /// Swept from its table (it was idle): deciding with it decides by key; its holder should pin again.
        public var isRetired: Bool { retired.load(ordering: .acquiring) }
    }

    private struct Stripe {
        var tats: [Key: Int64] = [:]
        var cells: [Key: Cell] = [:]
    }

    /// What a decision under a stripe's lock found.
    private enum Step {
        case decided(RateDecision)
        case pinned(Cell)
        case full
    }

    public let limit: RateLimit
    public let capacity: Int
    private let owner = Owner()
    private let stripes: [Locked<Stripe>]
    /// Keys stored over all stripes, pinned ones included (at most `capacity`).
    private let tracked = Atomic(0)
    private let overflows = Atomic(0)

    public init(limit: RateLimit, capacity: Int = 200_000) {
        precondition(capacity > 0)
        self.limit = limit
        self.capacity = capacity
        stripes = (0..<rateTableStripes).map { _ in Locked(Stripe()) }
    }

    private func stripe(_ key: Key) -> Locked<Stripe> { stripes[key.hashValue & (rateTableStripes - 1)] }

    /// One event for `key` at `now` (monotonic nanoseconds). O(1) except for the occasional sweep of idle keys,
    /// which happens only when the table is full and frees every idle key at once.
    public func decide(_ key: Key, now: Int64) -> RateDecision {
        let stripe = stripe(key)
        for attempt in 0..<2 {
            let step = stripe.withLock { [limit] stripe -> Step in
                if !stripe.cells.isEmpty, let cell = stripe.cells[key] { return .pinned(cell) }
                let known = stripe.tats[key]
                let (decision, next) = limit.step(tat: known ?? Int64.min, now: now)
                guard let next else { return .decided(decision) }
                if known == nil, tracked.add(1, ordering: .relaxed).newValue > capacity {
                    tracked.subtract(1, ordering: .relaxed)
                    return .full
                }
                stripe.tats[key] = next
                return .decided(decision)
            }
            switch step {
            case .decided(let decision): return decision
            case .pinned(let cell): return decide(cell, now: now)
            case .full: if attempt == 0 { evictIdle(now: now) }  // outside the stripe's lock: one lock at a time
            }
        }
        overflows.add(1, ordering: .relaxed)
        return .deny(retryAfterNanos: limit.interval)
    }

    /// One event for the cell's key at `now`, without the table's lock: the same GCRA step as `decide(key:)`, its
    /// TAT read and replaced with one compare-and-swap (again when another thread replaced it meanwhile). A retired
    /// cell decides by key. A sweep that retires a cell while its holder decides with it can lose that one event's
    /// cost (the cell was idle, so the event is admitted as the key's fresh entry would admit it): at most one event
    /// per holder per sweep, and sweeps run only when the table is full.
    public func decide(_ cell: Cell, now: Int64) -> RateDecision {
        precondition(cell.owner === owner, "a rate cell decided on by another table")
        if cell.isRetired { return decide(cell.key, now: now) }
        var known = cell.tat.load(ordering: .relaxed)
        while true {
            let (decision, next) = limit.step(tat: known, now: now)
            guard let next else { return decision }
            let (exchanged, found) = cell.tat.compareExchange(expected: known, desired: next, ordering: .relaxed)
            if exchanged { return decision }
            known = found
        }
    }

    /// The cell of `key`, which its caller keeps and decides with (`decide(_:now:)`): the key's TAT moves into it.
    /// Nil when the table is full (deciding by key then sweeps, or refuses).
    public func pin(_ key: Key) -> Cell? {
        stripe(key).withLock { stripe -> Cell? in
            if let cell = stripe.cells[key] { return cell }
            let known = stripe.tats.removeValue(forKey: key)
            if known == nil, tracked.add(1, ordering: .relaxed).newValue > capacity {
                tracked.subtract(1, ordering: .relaxed)
                return nil
            }
            let cell = Cell(key, owner: owner, tat: known ?? Int64.min)
            stripe.cells[key] = cell
            return cell
        }
    }

    /// Whether `cell` is this table's cell for `key` (a retired one is decided by key).
    public func holds(_ cell: Cell, for key: Key) -> Bool { cell.owner === owner && cell.key == key }

    /// Keys currently tracked (for tests and the memory figure).
    public var count: Int { tracked.load(ordering: .relaxed) }
    public var overflowed: Int { overflows.load(ordering: .relaxed) }
    /// Keys pinned (for tests: it takes every stripe's lock).
    var pinned: Int { stripes.reduce(0) { total, stripe in total + stripe.withLock { $0.cells.count } } }

    /// Drops every key that is idle at `now` (their allowance is full again), a pinned key's cell too, which is
    /// retired (its holders then decide by key, and pin again).
    public func evictIdle(now: Int64) {
        for stripe in stripes {
            stripe.withLock { stripe in
                let before = stripe.tats.count
                stripe.tats = stripe.tats.filter { $0.value > now }
                var dropped = before - stripe.tats.count
                if !stripe.cells.isEmpty {
                    let idle = stripe.cells.filter { $0.value.tat.load(ordering: .acquiring) <= now }
                    for (key, cell) in idle {
                        cell.retired.store(true, ordering: .releasing)
                        stripe.cells.removeValue(forKey: key)
                    }
                    dropped += idle.count
                }
                tracked.subtract(dropped, ordering: .relaxed)
            }
        }
    }

    /// Forgets `key` (an operator release lifts its limits too): a pinned key's allowance is made full again.
    public func reset(_ key: Key) {
        stripe(key).withLock { stripe in
            if let cell = stripe.cells[key] {
                cell.tat.store(Int64.min, ordering: .relaxed)
            } else if stripe.tats.removeValue(forKey: key) != nil {
                tracked.subtract(1, ordering: .relaxed)
            }
        }
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
        let (stripe, index) = Self.place(slot)
        // The stripe used without a reference count of its own: `stripes` is a constant, so each lives as long as
        // the table (read from the array, it was retained and released around `withLock`: twice per message).
        return Unmanaged.passUnretained(stripes[stripe])._withUnsafeGuaranteedRef { stripe in
            stripe.withLock { [limit] tats in
                if index >= tats.count {
                    tats.append(
                        contentsOf: repeatElement(Int64.min, count: max(index + 1, tats.count * 2) - tats.count))
                }
                let (decision, next) = limit.step(tat: tats[index], now: now)
                if let next { tats[index] = next }
                return decision
            }
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
