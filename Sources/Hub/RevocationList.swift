import Synchronization

/// Serials of revoked certificates, checked at every handshake and on every request, so revocation takes effect on
/// the next request of an already-open keep-alive connection. Loaded from the store at start and updated by the
/// revoke route in the same process. Open connections that only read (an MQTT subscriber) are cut off the moment
/// their serial is inserted, through `watch`.
public final class RevocationList: Sendable {
    public typealias Watch = UInt64
    private struct Serials {
        var revoked: Set<String>
        /// Pairing certificates sent but not yet confirmed: refused like revoked ones, kept apart so that the
        /// confirmation lifts only this mark and never an operator's revocation made meanwhile.
        var pending: Set<String> = []
        var watchers: [String: [Watch: @Sendable () -> Void]] = [:]
        var nextWatch: Watch = 0
    }
    private let serials: Mutex<Serials>

    public init(_ serials: Set<String> = []) { self.serials = Mutex(Serials(revoked: serials)) }

    public func contains(_ serial: String) -> Bool {
        serials.withLock { $0.revoked.contains(serial) || $0.pending.contains(serial) }
    }

    public func insert(_ newSerials: some Sequence<String>) {
        let actions = serials.withLock { serials in
            var actions: [@Sendable () -> Void] = []
            for serial in newSerials {
                serials.revoked.insert(serial)
                if let watching = serials.watchers.removeValue(forKey: serial) { actions += watching.values }
            }
            return actions
        }
        for action in actions { action() }
    }

    /// Runs `action` once when `serial` is revoked: at once (on this thread) if it already is. The action runs on the
    /// revoking thread, so it must only schedule work (close a channel), never block.
    public func watch(_ serial: String, _ action: @escaping @Sendable () -> Void) -> Watch {
        let token: Watch? = serials.withLock { serials in
            guard !serials.revoked.contains(serial) else { return nil }
            serials.nextWatch += 1
            serials.watchers[serial, default: [:]][serials.nextWatch] = action
            return serials.nextWatch
        }
        guard let token else {
            action()
            return 0
        }
        return token
    }

    public func unwatch(_ serial: String, _ token: Watch) {
        serials.withLock { serials in
            serials.watchers[serial]?[token] = nil
            if serials.watchers[serial]?.isEmpty == true { serials.watchers[serial] = nil }
        }
    }

    /// A pending pairing certificate another hub node activated: this node may have loaded it with the revoked
    /// ones (the store keeps it revoked until the confirmation), so both marks go.
    func activated(_ serial: String) {
        serials.withLock { serials in
            serials.pending.remove(serial)
            serials.revoked.remove(serial)
        }
    }

    func insertPending(_ serial: String) { _ = serials.withLock { $0.pending.insert(serial) } }
    func removePending(_ serial: String) { _ = serials.withLock { $0.pending.remove(serial) } }
}
