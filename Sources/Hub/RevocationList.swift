import Synchronization

/// Serials of revoked certificates, checked at every handshake and on every request, so revocation takes effect on
/// the next request of an already-open keep-alive connection. Loaded from the store at start and updated by the
/// revoke route in the same process.
public final class RevocationList: Sendable {
    private let serials: Mutex<Set<String>>

    public init(_ serials: Set<String> = []) { self.serials = Mutex(serials) }

    public func contains(_ serial: String) -> Bool { serials.withLock { $0.contains(serial) } }

    public func insert(_ newSerials: some Sequence<String>) {
        serials.withLock { $0.formUnion(newSerials) }
    }

    /// Only for a pairing certificate, recorded revoked until its device confirmed.
    func remove(_ serial: String) { _ = serials.withLock { $0.remove(serial) } }
}
