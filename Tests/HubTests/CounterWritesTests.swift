import Core
import Testing

@testable import Hub

/// The store writes of one (device, counter) in progress: a DUP waits for all of them, and hears whether any stored.
@Suite struct CounterWritesTests {
    @Test(.timeLimit(.minutes(1))) func aWaiterHearsOnceTheLastOverlappingWriteEnds() async throws {
        let writes = CounterWrites()
        let device = try DeviceID("cw-1")
        #expect(await writes.outcome(device, 7) == nil, "no write in progress")
        writes.begin(device, 7)
        let waiter = Task { await writes.outcome(device, 7) }
        // The waiter is registered before the second write begins (it waits on the first).
        while await Self.pending(writes, device, 7) == false { await Task.yield() }
        writes.begin(device, 7)  // a resend admitted after the first write gave its counter back
        writes.end(device, 7)  // the first write fails
        writes.succeeded(device, 7)
        writes.end(device, 7)  // the second stores it
        #expect(await waiter.value == true)
        #expect(await writes.outcome(device, 7) == nil, "both ended")
        // Both failing: the waiter hears false, and a later begin starts afresh.
        writes.begin(device, 8)
        let second = Task { await writes.outcome(device, 8) }
        while await Self.pending(writes, device, 8) == false { await Task.yield() }
        writes.end(device, 8)
        #expect(await second.value == false)
    }

    /// Whether a waiter is registered (a write is in progress and someone waits): a probe that never blocks.
    static func pending(_ writes: CounterWrites, _ device: DeviceID, _ counter: UInt64) async -> Bool {
        writes.waiterCount(device, counter) > 0
    }
}
