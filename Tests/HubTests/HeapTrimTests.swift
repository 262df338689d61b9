import Testing

@testable import Hub

@Suite struct HeapTrimTests {
    /// Once after each burst of writes: not while batches are being asked for, once when they stop, not again while
    /// the hub stays idle, and not at all when nothing was written.
    @Test func trimsOnceAfterEachBurst() {
        var rule = HeapTrimRule()
        // Idle from the start, writing, writing, stopped, still idle, writing again, stopped again.
        let answers = [0, 5, 9, 9, 9, 12, 12].map { rule.check(batches: $0) }
        #expect(answers == [false, false, false, true, false, false, true])
    }

    /// glibc's `malloc_trim` is found and called (the hub's builds are for Linux with glibc).
    @Test func trimReachesGlibc() {
        #if os(Linux) && canImport(Glibc)
            #expect(HeapTrimService.trim())
        #endif
    }
}
