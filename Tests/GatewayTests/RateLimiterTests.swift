import Core
import Foundation
import Synchronization
import Testing

@testable import Gateway

@Suite struct RateLimiterTests {
    @Test func burstThenRefusedThenRefilled() {
        let table = RateLimiterTable<String>(limit: RateLimit(rate: 10, burst: 5))
        for expected in (0..<5).reversed() {
            #expect(table.decide("a", now: 0) == .admit(remaining: expected))
        }
        // The sixth at the same instant waits one interval (100 ms).
        #expect(table.decide("a", now: 0) == .deny(retryAfterNanos: 100_000_000))
        // Another key is unaffected.
        #expect(table.decide("b", now: 0) == .admit(remaining: 4))
        // After 100 ms exactly one more is allowed.
        #expect(table.decide("a", now: 100_000_000) == .admit(remaining: 0))
        #expect(table.decide("a", now: 100_000_000) != .admit(remaining: 0))
        // After a full window the whole burst is back.
        #expect(table.decide("a", now: 2_000_000_000) == .admit(remaining: 4))
    }

    /// The dense table (interned keys) decides exactly as the hashed one, on slots far apart and after a reset.
    @Test func denseTableDecidesLikeTheHashedOne() {
        let limit = RateLimit(rate: 10, burst: 5)
        let dense = DenseRateTable(limit: limit)
        let hashed = RateLimiterTable<Int>(limit: limit)
        for step in 0..<400 {
            let slot = [0, 7, 100_000][step % 3]
            let now = Int64(step) * 7_000_000
            #expect(dense.decide(slot, now: now) == hashed.decide(slot, now: now), "step \(step)")
        }
        for _ in 0..<5 { _ = dense.decide(3, now: 0) }
        #expect(dense.decide(3, now: 0) == .deny(retryAfterNanos: 100_000_000))
        dense.reset(3)
        #expect(dense.decide(3, now: 0) == .admit(remaining: 4))
    }

    /// Each slot has a place of its own; slots 16 apart (one route's devices) spread over every stripe; slots that
    /// share a stripe keep states of their own.
    @Test func denseSlotsHavePlacesOfTheirOwn() {
        var places = Set<[Int]>()
        for slot in 0..<70_000 {
            let (stripe, index) = DenseRateTable.place(slot)
            places.insert([stripe, index])
        }
        #expect(places.count == 70_000)
        #expect(Set((0..<64).map { DenseRateTable.place($0 * 16 + 3).stripe }).count == 16)
        let neighbours = (1..<1_000).filter { DenseRateTable.place($0).stripe == DenseRateTable.place(0).stripe }
        #expect(neighbours.count >= 2)
        let dense = DenseRateTable(limit: RateLimit(rate: 1, burst: 2))
        let (a, b) = (neighbours[0], neighbours[1])
        for slot in [0, a, b, 1] { #expect(dense.decide(slot, now: 0) == .admit(remaining: 1)) }
        #expect(dense.decide(a, now: 0) == .admit(remaining: 0))
        #expect(dense.decide(a, now: 0) == .deny(retryAfterNanos: 1_000_000_000))
        #expect(dense.decide(0, now: 0) == .admit(remaining: 0))  // its neighbour's refusal took nothing from it
        dense.reset(a)
        #expect(dense.decide(a, now: 0) == .admit(remaining: 1))
        #expect(dense.decide(b, now: 0) == .admit(remaining: 0))
    }

    /// Threads deciding at once over keys spread on every stripe: the table never holds more keys than its
    /// capacity, refuses the overflow, and each key is held to its rate (one admitted per key at one instant).
    @Test func concurrentDecisionsKeepTheWholeTablesBound() async {
        let table = RateLimiterTable<Int>(limit: RateLimit(rate: 1, burst: 1), capacity: 300)
        let admitted = await withTaskGroup(of: Int.self) { group in
            for thread in 0..<4 {
                group.addTask {
                    var admitted = 0
                    for step in 0..<2_000 {
                        if case .admit = table.decide((step * 7 + thread) % 1_000, now: 0) { admitted += 1 }
                    }
                    return admitted
                }
            }
            return await group.reduce(0, +)
        }
        #expect(table.count == 300)
        #expect(admitted == 300)  // each admitted key once, then refused until its interval has passed
        #expect(table.overflowed > 0)
        #expect(table.count <= table.capacity)
        table.evictIdle(now: 1_000_000_000)
        #expect(table.count == 0)
    }

    /// Interned keys are dense, stable, and name their device.
    @Test func devicesAreInternedOnce() throws {
        let keys = DeviceKeys()
        let a = try DeviceID("a")
        let b = try DeviceID("b")
        #expect(keys.key(for: a).rawValue == 0 && keys.key(for: b).rawValue == 1 && keys.key(for: a).rawValue == 0)
        #expect(keys.device(of: keys.key(for: b)) == b && keys.count == 2)
    }

    /// Source keys: IPv4 mapped into IPv6 space, text digests stable and distinct.
    @Test func sourceAddressesAreFixedWidthKeys() {
        #expect(SourceAddress(ipv4: 0x7F00_0001) == SourceAddress(high: 0, low: 0x0000_FFFF_7F00_0001))
        #expect(SourceAddress(text: "192.0.2.1") == SourceAddress(text: "192.0.2.1"))
        #expect(SourceAddress(text: "192.0.2.1") != SourceAddress(text: "192.0.2.2"))
    }

    @Test func sustainedRateIsHeld() {
        let table = RateLimiterTable<String>(limit: RateLimit(rate: 100, burst: 1))
        var admitted = 0
        // 10× the rate for one second: 100 admitted (plus the first).
        for step in 0..<1000 {
            if case .admit = table.decide("d", now: Int64(step) * 1_000_000) { admitted += 1 }
        }
        #expect(admitted == 100)
    }

    @Test func evictingIdleKeysLosesNothing() {
        let table = RateLimiterTable<Int>(limit: RateLimit(rate: 1, burst: 2))
        for key in 0..<100 { _ = table.decide(key, now: 0) }
        #expect(table.count == 100)
        table.evictIdle(now: 500_000_000)
        #expect(table.count == 100)  // still inside their interval
        table.evictIdle(now: 1_000_000_000)
        #expect(table.count == 0)
        // An evicted key starts with its full burst, which is what it had earned anyway.
        #expect(table.decide(1, now: 1_000_000_000) == .admit(remaining: 1))
    }

    @Test func fullTableFailsClosedForNewKeys() {
        let table = RateLimiterTable<Int>(limit: RateLimit(rate: 1, burst: 1), capacity: 10)
        for key in 0..<10 { #expect(table.decide(key, now: 0) == .admit(remaining: 0)) }
        guard case .deny = table.decide(99, now: 0) else {
            Issue.record("a new key was admitted into a full table")
            return
        }
        #expect(table.overflowed == 1)
        // Once the old keys are idle they are swept and the newcomer gets in.
        #expect(table.decide(99, now: 2_000_000_000) == .admit(remaining: 0))
        #expect(table.count == 1)
    }

    /// A pinned key is still one key: its cell and deciding by key draw on one budget, whichever decides first, and
    /// the TAT it had before it was pinned moves into the cell.
    @Test func aPinnedKeyKeepsOneBudget() throws {
        let table = RateLimiterTable<String>(limit: RateLimit(rate: 10, burst: 5))
        #expect(table.decide("nat", now: 0) == .admit(remaining: 4))
        let cell = try #require(table.pin("nat"))
        #expect(table.pin("nat") === cell && table.count == 1 && table.pinned == 1)
        #expect(table.decide(cell, now: 0) == .admit(remaining: 3))
        #expect(table.decide("nat", now: 0) == .admit(remaining: 2))
        #expect(table.decide(cell, now: 0) == .admit(remaining: 1))
        #expect(table.decide("nat", now: 0) == .admit(remaining: 0))
        #expect(table.decide(cell, now: 0) == .deny(retryAfterNanos: 100_000_000))
        #expect(table.decide("nat", now: 0) == .deny(retryAfterNanos: 100_000_000))
        #expect(table.decide(cell, now: 100_000_000) == .admit(remaining: 0))
        // An operator's release makes the allowance full again, for the cell's holder too.
        table.reset("nat")
        #expect(table.decide(cell, now: 100_000_000) == .admit(remaining: 4))
        // The same table answers whether a cell is its own for a key; another table's cell is refused.
        let other = RateLimiterTable<String>(limit: RateLimit(rate: 10, burst: 5))
        #expect(table.holds(cell, for: "nat") && !table.holds(cell, for: "elsewhere") && !other.holds(cell, for: "nat"))
    }

    /// Threads deciding at once on one pinned key, some by its cell and some by key: none of the compare-and-swap
    /// updates is lost, so exactly the burst is admitted at one instant.
    @Test func concurrentDecisionsOnAPinnedKeyLoseNothing() throws {
        let table = RateLimiterTable<Int>(limit: RateLimit(rate: 1, burst: 20_000))
        let cell = try #require(table.pin(7))
        // Threads, not tasks: four at once whatever the concurrency pool's width.
        let admitted = Atomic(0)
        let done = DispatchSemaphore(value: 0)
        for thread in 0..<4 {
            Thread {
                var count = 0
                for _ in 0..<10_000 {
                    let decision = thread == 3 ? table.decide(7, now: 0) : table.decide(cell, now: 0)
                    if case .admit = decision { count += 1 }
                }
                admitted.add(count, ordering: .relaxed)
                done.signal()
            }.start()
        }
        for _ in 0..<4 { done.wait() }
        #expect(admitted.load(ordering: .relaxed) == 20_000)
    }

    /// A pin counts against the table's capacity like any key, and a full table pins nothing. A busy cell is kept
    /// by a sweep; an idle one is swept like any idle key, even while held: it is retired, and its holder's
    /// decisions then go by key, to the key's one new entry (one budget still), until it pins again.
    @Test func pinsCountAgainstCapacityAndIdleCellsAreSweptEvenWhenHeld() throws {
        let table = RateLimiterTable<Int>(limit: RateLimit(rate: 1, burst: 2), capacity: 3)
        let cell = try #require(table.pin(1))
        #expect(table.decide(cell, now: 0) == .admit(remaining: 1))
        _ = table.decide(2, now: 0)
        _ = table.decide(3, now: 0)
        #expect(table.count == 3 && table.pin(4) == nil)
        table.evictIdle(now: 500_000_000)
        #expect(table.count == 3 && !cell.isRetired, "busy: kept")
        table.evictIdle(now: 10_000_000_000)
        #expect(table.count == 0 && table.pinned == 0 && cell.isRetired, "idle: swept though held")
        #expect(table.holds(cell, for: 1), "still this table's: the pipeline hands it on, and it decides by key")
        #expect(table.decide(cell, now: 10_000_000_000) == .admit(remaining: 1))
        #expect(table.decide(1, now: 10_000_000_000) == .admit(remaining: 0))
        #expect(table.decide(cell, now: 10_000_000_000) == .deny(retryAfterNanos: 1_000_000_000))
        let again = try #require(table.pin(1))
        #expect(again !== cell && !again.isRetired && table.count == 1)
        #expect(table.decide(again, now: 10_000_000_000) == .deny(retryAfterNanos: 1_000_000_000))
    }
}
