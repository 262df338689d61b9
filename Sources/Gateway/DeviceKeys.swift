import Core
import Synchronization

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
    private let state = Mutex(State())

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
