import ServiceLifecycle
import Store
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// When to give the heap's free pages back to the system: once after each burst of telemetry writes, when a check
/// finds no batch asked for since the one before and some since the last trim. Pure: the count of batches asked
/// for (`TelemetryQueue.batchesTaken`) is passed in.
struct HeapTrimRule: Equatable {
    private var seen = 0
    private var trimmedAt = 0

    /// Whether to trim now, given the batches asked for so far.
    mutating func check(batches: Int) -> Bool {
        defer { seen = batches }
        guard batches == seen, batches != trimmedAt else { return false }
        trimmedAt = batches
        return true
    }
}

/// Gives the heap's free pages back after a burst (`HeapTrimRule`, checked every `interval`). glibc keeps what a
/// burst freed in its arenas: after the benchmark's QoS 0 measure about 8 MB of the hub's resident memory was free
/// heap (`malloc_trim(0)` from gdb: 71.5 → 63.7 MB, 2026-12-07), counted in its RSS for as long as it ran. One call
/// per burst, after it: `malloc_trim` walks the arenas under their locks (glibc only; elsewhere nothing).
struct HeapTrimService: Service {
    let interval: Duration

    func run() async throws {
        try await cancelWhenGracefulShutdown {
            var rule = HeapTrimRule()
            while !Task.isCancelled {
                do { try await Task.sleep(for: interval) } catch { return }
                if rule.check(batches: TelemetryQueue.batchesTaken) { Self.trim() }
            }
        }
    }

    /// glibc's `malloc_trim(0)` (malloc.h, which the Glibc module does not export); false where it is absent.
    @discardableResult
    static func trim() -> Bool {
        #if os(Linux) && canImport(Glibc)
            guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "malloc_trim") else { return false }
            _ = unsafeBitCast(symbol, to: (@convention(c) (Int) -> Int32).self)(0)
            return true
        #else
            return false
        #endif
    }
}
