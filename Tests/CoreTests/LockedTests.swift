import Core
import Foundation
import Testing

/// `Locked`: one thread at a time in `withLock`, whatever the contention; a throw leaves the lock free.
@Suite struct LockedTests {
    struct Refused: Error {}

    @Test(.timeLimit(.minutes(1))) func threadsThatContendLoseNoUpdate() {
        let counter = Locked((count: 0, inside: 0, overlapped: false))
        let (threads, rounds) = (4, 50_000)
        DispatchQueue.concurrentPerform(iterations: threads) { _ in
            for _ in 0..<rounds {
                counter.withLock { state in
                    // A second thread inside at once would see `inside` raised (and `count` lose updates).
                    state.inside += 1
                    if state.inside != 1 { state.overlapped = true }
                    state.count += 1
                    state.inside -= 1
                }
            }
        }
        let (count, _, overlapped) = counter.withLock { $0 }
        #expect(count == threads * rounds)
        #expect(!overlapped)
    }

    @Test func aThrowLeavesTheValueAndTheLockUsable() {
        let value = Locked([1, 2])
        #expect(throws: Refused.self) {
            try value.withLock { values in
                values.append(3)
                throw Refused()
            }
        }
        #expect(value.withLock { $0 } == [1, 2, 3], "what the body changed before it threw stays")
        #expect(value.withLock { $0.count } == 3, "and the lock was released")
    }
}
