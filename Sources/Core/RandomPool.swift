#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
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
///
/// Each thread draws from a buffer of its own, without a lock: every HTTP request and MQTT message takes an id, and
/// with one buffer behind a lock the event loops waited for each other on it (its wake-ups and the id's making were
/// 3 % of the hub's CPU for a QoS 0 message in a profile, 2026-12-07).
public final class RandomPool: Sendable {
    /// One thread's bytes, read and refilled only by that thread.
    private final class Bytes {
        var storage = [UInt8](repeating: 0, count: RandomPool.size)
        var next = RandomPool.size
    }

    /// `getentropy(3)` gives at most 256 bytes a call: a larger pool would fail every refill.
    static let size = 256

    /// The pool correlation ids draw from. (The bytes are per thread: every instance draws from the calling
    /// thread's.)
    public static let shared = RandomPool()

    public init() {}

    /// The thread-specific slot of each thread's `Bytes` (released when the thread exits); nil when the process has
    /// no key left (every draw then falls back).
    private static let key: pthread_key_t? = {
        var key = pthread_key_t()
        #if canImport(Darwin)
            let created = pthread_key_create(&key) { Unmanaged<Bytes>.fromOpaque($0).release() }
        #else
            let created = pthread_key_create(&key) { pointer in
                if let pointer { Unmanaged<Bytes>.fromOpaque(pointer).release() }
            }
        #endif
        return created == 0 ? key : nil
    }()

    /// The calling thread's bytes, made at its first draw.
    private static func threadBytes() -> Bytes? {
        guard let key else { return nil }
        if let pointer = pthread_getspecific(key) { return Unmanaged<Bytes>.fromOpaque(pointer).takeUnretainedValue() }
        let bytes = Bytes()
        let retained = Unmanaged.passRetained(bytes)
        guard pthread_setspecific(key, retained.toOpaque()) == 0 else {
            retained.release()
            return nil
        }
        return bytes
    }

    /// Twelve fresh random bytes as (high 64 bits, low 32 bits).
    public func next96() -> (UInt64, UInt32) {
        if let bytes = Self.threadBytes(), bytes.next + 12 <= Self.size || Self.refill(bytes) {
            defer { bytes.next += 12 }
            return bytes.storage.withUnsafeBytes { raw in
                (
                    raw.loadUnaligned(fromByteOffset: bytes.next, as: UInt64.self),
                    raw.loadUnaligned(fromByteOffset: bytes.next + 8, as: UInt32.self)
                )
            }
        }
        var generator = SystemRandomNumberGenerator()
        return (generator.next(), generator.next())
    }

    /// Refills a thread's bytes; false when the kernel gave none.
    private static func refill(_ bytes: Bytes) -> Bool {
        guard fill(&bytes.storage) else { return false }
        bytes.next = 0
        return true
    }

    /// Fills `bytes` from the kernel's CSPRNG; false when it cannot.
    private static func fill(_ bytes: inout [UInt8]) -> Bool {
        assert(bytes.count <= 256, "getentropy refuses more than 256 bytes")
        return bytes.withUnsafeMutableBytes { buffer -> Bool in
            #if canImport(Glibc) || canImport(Musl) || canImport(Darwin)
                getentropy(buffer.baseAddress!, buffer.count) == 0
            #else
                return false
            #endif
        }
    }
}
