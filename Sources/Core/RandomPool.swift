#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Random bytes from the system's CSPRNG, drawn 256 at a time (21 draws of 12 bytes) and handed out in order: for
/// values that must be unpredictable and unique but are not secrets (correlation ids), where a `getrandom` call per
/// value cost more than the rest of making it (two calls per HTTP request, about 1.7 µs of a request's CPU in a
/// profile).
///
/// Each byte is handed out once; the buffer is refilled with `getentropy(3)` (`getrandom(2)` on Linux, at most 256
/// bytes a call) when it runs out. Where that fails it falls back to `SystemRandomNumberGenerator`, one call per
/// value.
public final class RandomPool: Sendable {
    private struct State {
        var bytes = [UInt8](repeating: 0, count: RandomPool.size)
        var next = RandomPool.size
    }

    /// `getentropy(3)` gives at most 256 bytes a call: a larger pool would fail every refill.
    static let size = 256
    private let state = Locked(State())

    /// The process's pool.
    public static let shared = RandomPool()

    public init() {}

    /// Twelve fresh random bytes as (high 64 bits, low 32 bits).
    public func next96() -> (UInt64, UInt32) {
        let drawn: (UInt64, UInt32)? = state.withLock { state in
            if state.next + 12 > Self.size {
                guard Self.fill(&state.bytes) else { return nil }
                state.next = 0
            }
            defer { state.next += 12 }
            return state.bytes.withUnsafeBytes { raw in
                (
                    raw.loadUnaligned(fromByteOffset: state.next, as: UInt64.self),
                    raw.loadUnaligned(fromByteOffset: state.next + 8, as: UInt32.self)
                )
            }
        }
        if let drawn { return drawn }
        var generator = SystemRandomNumberGenerator()
        return (generator.next(), generator.next())
    }

    /// Fills `bytes` from the kernel's CSPRNG; false when it cannot.
    private static func fill(_ bytes: inout [UInt8]) -> Bool {
        assert(bytes.count <= 256, "getentropy refuses more than 256 bytes")
        return bytes.withUnsafeMutableBytes { buffer -> Bool in
            #if canImport(Glibc) || canImport(Darwin)
                getentropy(buffer.baseAddress!, buffer.count) == 0
            #else
                return false
            #endif
        }
    }
}
