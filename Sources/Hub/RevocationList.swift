import Synchronization

/// Serials of revoked certificates, checked at every handshake and on every request, so revocation takes effect on
/// the next request of an already-open keep-alive connection. Loaded from the store at start and updated by the
/// revoke route in the same process.
public final class RevocationList: Sendable {
    private struct Serials {
        var revoked: Set<String>
        /// Pairing certificates sent but not yet confirmed: refused like revoked ones, kept apart so that the
        /// confirmation lifts only this mark and never an operator's revocation made meanwhile.
        var pending: Set<String> = []
    }
    private let serials: Mutex<Serials>

    public init(_ serials: Set<String> = []) { self.serials = Mutex(Serials(revoked: serials)) }

    public func contains(_ serial: String) -> Bool {
        serials.withLock { $0.revoked.contains(serial) || $0.pending.contains(serial) }
    }

    public func insert(_ newSerials: some Sequence<String>) {
        serials.withLock { $0.revoked.formUnion(newSerials) }
    }

    func insertPending(_ serial: String) { _ = serials.withLock { $0.pending.insert(serial) } }
    func removePending(_ serial: String) { _ = serials.withLock { $0.pending.remove(serial) } }
}
