import Core

/// A device id interned to a small integer, once, when the connection's certificate names the device: the rate
/// limits then index arrays by it instead of hashing the id's `String` on every message.
public struct DeviceKey: Hashable, Sendable {
    public let rawValue: UInt32
}

/// The interning table: ids get keys 0, 1, 2… in the order they are first seen and keep them for the process's life.
/// Only identities from certificates the hub issued reach it, so its size is bounded by the fleet.
public final class DeviceKeys: Sendable {
    private struct State {
        var keys: [DeviceID: UInt32] = [:]
        var ids: [DeviceID] = []
    }
    private let state = Locked(State())

    public init() {}

    public func key(for device: DeviceID) -> DeviceKey {
        state.withLock { state in
            if let known = state.keys[device] { return DeviceKey(rawValue: known) }
            let key = UInt32(truncatingIfNeeded: state.ids.count)
            state.keys[device] = key
            state.ids.append(device)
            return DeviceKey(rawValue: key)
        }
    }

    /// The id a key was given to.
    public func device(of key: DeviceKey) -> DeviceID? {
        state.withLock { Int(key.rawValue) < $0.ids.count ? $0.ids[Int(key.rawValue)] : nil }
    }

    public var count: Int { state.withLock { $0.ids.count } }
}

/// A source address as a fixed-width key (IPv4 as `::ffff:a.b.c.d`), so the per-source limit hashes 16 bytes
/// instead of the address's text on every message.
public struct SourceAddress: Hashable, Sendable {
    public let high: UInt64
    public let low: UInt64

    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// An IPv4 address (host byte order).
    public init(ipv4: UInt32) { self.init(high: 0, low: 0x0000_FFFF_0000_0000 | UInt64(ipv4)) }

    /// From the address's text, when no socket address is at hand (tests, and `unknown`): two 64-bit digests of it
    /// with the process's random seed (Hasher), the top bit set. A real address could in principle share the key, as
    /// any 128-bit digest could; no one can aim for it without the seed.
    public init(text: String) {
        var first = Hasher()
        first.combine(text)
        var second = Hasher()
        second.combine(1 as UInt8)
        second.combine(text)
        self.init(
            high: UInt64(UInt(bitPattern: first.finalize())) | 1 << 63, low: UInt64(UInt(bitPattern: second.finalize()))
        )
    }
}
