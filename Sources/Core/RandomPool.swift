import CRandom

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// Random bytes from the system's CSPRNG, drawn 4,096 at a time (341 draws of 12 bytes) and handed out in order:
/// for values that must be unpredictable and unique but are not secrets (correlation ids), where a `getrandom` call
/// per value cost more than the rest of making it (two calls per HTTP request, about 1.7 µs of a request's CPU in a
/// profile).
///
/// Each byte is handed out once; the buffer is refilled when it runs out, with one `getrandom(2)` call (Linux): the
/// kernel's CSPRNG, blocking until it is seeded, without `getentropy(3)`'s limit of 256 bytes a call. At 256 bytes a
/// refill, the system call was 1.5 % of the event loops' CPU per QoS 0 message (a profile, 2026-12-08). Not
/// `/dev/urandom`: a descriptor kept open could be closed by other code and its number reused (reading a socket's
/// bytes as random ones), and before Linux 5.18 it does not wait for the kernel's generator to be seeded. Where
/// `getrandom` is missing or fails, `getentropy` fills the buffer 256 bytes at a time; where that fails too,
/// `SystemRandomNumberGenerator` gives each value (one call per value).
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

    static let size = 4096

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
        bytes.withUnsafeMutableBytes { buffer -> Bool in
            var filled = 0
            while filled < buffer.count {
                let rest = UnsafeMutableRawBufferPointer(rebasing: buffer[filled...])
                // A request above 256 bytes may come back short when a signal interrupts it: the rest is asked again.
                let count = bulwark_getrandom(rest.baseAddress, rest.count)
                if count > 0 {
                    filled += count
                    continue
                }
                if count < 0, errno == EINTR { continue }
                // `getentropy(3)` gives at most 256 bytes a call.
                let chunk = min(rest.count, 256)
                #if canImport(Glibc) || canImport(Musl) || canImport(Darwin)
                    guard getentropy(rest.baseAddress!, chunk) == 0 else { return false }
                #else
                    return false
                #endif
                filled += chunk
            }
            return true
        }
    }
}
