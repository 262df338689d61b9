public import Core

/// Nonces seen within the replay window, per device, bounded in memory.
///
/// A signature is accepted only while `created` is within ±skew of now, so a nonce first seen at time t can be
/// replayed successfully only until t + 2·skew: it is kept exactly that long (`retention`). Entries expire in
/// insertion order, so expiry is a FIFO walk: O(1) amortised per request. Both the whole ledger and each device
/// are capped; a device that fills its share is refused (fail closed) rather than old nonces being forgotten early.
/// The hub persists each admitted nonce with the message it came with, and `load` restores them after a restart.
public final class NonceLedger: Sendable {
    public enum Decision: Sendable, Equatable {
        case fresh(expiresAt: Int64)
        case replayed
        case full
    }
    /// A (device, nonce) pair hashed once when it is made: a claim looks its key up in two tables and expiry another
    /// two, and hashing both strings each time was most of a claim's CPU. The tables hash only the stored value
    /// (`Hasher` is seeded per process, so a client cannot choose nonces that collide); equality compares the strings.
    struct Key: Hashable {
        let device: HashedDevice
        let nonce: String
        let hash: Int

        init(device: DeviceID, nonce: String) {
            var hasher = Hasher()
            hasher.combine(device)
            hasher.combine(nonce)
            self.device = HashedDevice(device)
            self.nonce = nonce
            self.hash = hasher.finalize()
        }

        func hash(into hasher: inout Hasher) { hasher.combine(hash) }
        static func == (a: Key, b: Key) -> Bool { a.hash == b.hash && a.nonce == b.nonce && a.device == b.device }
    }
    /// A device hashed once, for the per-device counts.
    struct HashedDevice: Hashable {
        let device: DeviceID
        let hash: Int

        init(_ device: DeviceID) {
            self.device = device
            self.hash = device.hashValue
        }

        func hash(into hasher: inout Hasher) { hasher.combine(hash) }
        static func == (a: HashedDevice, b: HashedDevice) -> Bool { a.hash == b.hash && a.device == b.device }
    }
    struct State {
        var expiry: [Key: Int64] = [:]
        /// Each claim in claim order with the expiry it was given: a nonce released and claimed again has two
        /// slots, and only the one whose expiry is the ledger's current one removes it.
        var order: [(key: Key, expiresAt: Int64)] = []
        var head = 0
        var perDevice: [HashedDevice: Int] = [:]
    }
    public let retention: Int64
    public let capacity: Int
    public let perDeviceCapacity: Int
    private let state = Locked(State())

    public init(retentionSeconds: Int64, capacity: Int = 1_000_000, perDeviceCapacity: Int = 10_000) {
        retention = retentionSeconds
        self.capacity = capacity
        self.perDeviceCapacity = perDeviceCapacity
    }

    /// Claims `nonce` for `device` at `now` (Unix seconds): fresh once, `replayed` every later time until it expires.
    public func claim(device: DeviceID, nonce: String, now: Int64) -> Decision {
        let key = Key(device: device, nonce: nonce)
        return state.withLock { state in
            Self.expire(&state, now: now)
            if state.expiry[key] != nil { return .replayed }
            guard state.expiry.count < capacity, state.perDevice[key.device, default: 0] < perDeviceCapacity else {
                return .full
            }
            let expiresAt = now + retention
            Self.insert(&state, key, expiresAt)
            return .fresh(expiresAt: expiresAt)
        }
    }

    /// Gives a claimed nonce back (the message it came with could not be stored, so nothing was acknowledged).
    public func release(device: DeviceID, nonce: String) {
        state.withLock { state in
            let key = Key(device: device, nonce: nonce)
            if state.expiry.removeValue(forKey: key) != nil {
                state.perDevice[key.device, default: 1] -= 1
            }
        }
    }

    /// Restores nonces persisted before a restart (those already expired are skipped).
    public func load(_ entries: [(device: DeviceID, nonce: String, expiresAt: Int64)], now: Int64) {
        state.withLock { state in
            for entry in entries.sorted(by: { $0.expiresAt < $1.expiresAt }) where entry.expiresAt > now {
                let key = Key(device: entry.device, nonce: entry.nonce)
                if state.expiry[key] == nil { Self.insert(&state, key, entry.expiresAt) }
            }
        }
    }

    public var count: Int { state.withLock { $0.expiry.count } }

    private static func insert(_ state: inout State, _ key: Key, _ expiresAt: Int64) {
        state.expiry[key] = expiresAt
        state.order.append((key, expiresAt))
        state.perDevice[key.device, default: 0] += 1
    }

    private static func expire(_ state: inout State, now: Int64) {
        while state.head < state.order.count {
            let (key, expiresAt) = state.order[state.head]
            guard expiresAt <= now else { break }
            // A slot left by a released nonce (gone, or claimed again with a later expiry) removes nothing and no
            // longer holds up the slots behind it until the new claim expires.
            if state.expiry[key] == expiresAt {
                state.expiry[key] = nil
                let left = state.perDevice[key.device, default: 1] - 1
                state.perDevice[key.device] = left > 0 ? left : nil
            }
            state.head += 1
        }
        if state.head > 1024, state.head * 2 > state.order.count {
            state.order.removeFirst(state.head)
            state.head = 0
        }
    }
}

/// The counter windows of all devices. The hub stores a device's window with each message it admits (in the same
/// transaction), and loads them at start, so a restart never reopens counters already used.
public final class CounterWindows: Sendable {
    private let windows = Locked<[DeviceID: CounterWindow]>([:])

    public init() {}

    /// Checks and records `counter`; returns the decision and, when accepted, the window to persist.
    public func accept(device: DeviceID, counter: UInt64) -> (CounterWindow.Decision, CounterWindow) {
        windows.withLock { windows in
            var window = windows[device] ?? CounterWindow()
            let decision = window.accept(counter)
            if decision == .accepted { windows[device] = window }
            return (decision, window)
        }
    }

    /// Gives an accepted counter back (its message could not be stored), as `NonceLedger.release` does for HTTP.
    public func release(device: DeviceID, counter: UInt64) {
        windows.withLock { windows in windows[device]?.forget(counter) }
    }

    public func load(_ entries: [(DeviceID, CounterWindow)]) {
        windows.withLock { windows in for (device, window) in entries { windows[device] = window } }
    }

    public func window(of device: DeviceID) -> CounterWindow? { windows.withLock { $0[device] } }

    /// Takes up a window stored by another hub node when it is ahead of this node's: the higher `highest` wins,
    /// equal ones combine their marks (a device that moved here from another node).
    public func takeUp(device: DeviceID, _ stored: CounterWindow) {
        windows.withLock { windows in
            guard let current = windows[device], current.highest >= stored.highest else {
                windows[device] = stored
                return
            }
            if current.highest == stored.highest {
                windows[device] = CounterWindow(highest: current.highest, seen: current.seen | stored.seen)
            }
        }
    }
}
