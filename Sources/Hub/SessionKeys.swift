import Gateway
import NIOCore
import Synchronization

/// The HMAC session keys the hub issued, one per device connection at most (`POST /v1/device/session`). A key is
/// found by the connection a request arrives on, never by anything the request says, and is forgotten when that
/// connection closes; a new issue on the same connection replaces the old key.
final class SessionKeys: Sendable {
    private struct Entry {
        let device: String
        let key: SessionKey
    }

    private let entries = Mutex<[ObjectIdentifier: Entry]>([:])
    /// Seconds a key lives (`gateway.sessionKeySeconds`); 0: sessions are not offered.
    let lifetimeSeconds: Int64

    init(lifetimeSeconds: Int64) { self.lifetimeSeconds = lifetimeSeconds }

    /// Issues a fresh key for `device` on `channel`, replacing any earlier one there; nil when the connection has
    /// closed meanwhile (no key outlives its connection).
    func issue(device: String, on channel: any Channel, now: Int64) -> SessionKey? {
        guard channel.isActive else { return nil }
        let key = SessionKey.generate(now: now, lifetimeSeconds: lifetimeSeconds)
        let id = ObjectIdentifier(channel)
        let first = entries.withLock { entries in
            defer { entries[id] = Entry(device: device, key: key) }
            return entries[id] == nil
        }
        if first {
            // The callback holds the channel, so its identifier cannot be reused by another connection before the
            // entry is gone (also when the channel closed between the check above and this registration).
            channel.closeFuture.whenComplete { [weak self] _ in
                withExtendedLifetime(channel) { _ = self?.entries.withLock { $0.removeValue(forKey: id) } }
            }
        }
        return key
    }

    /// The key issued on `channel` to `device` (the certificate's device: a connection has one identity).
    func key(on channel: any Channel, device: String) -> SessionKey? {
        guard lifetimeSeconds > 0 else { return nil }
        return entries.withLock { entries in
            guard let entry = entries[ObjectIdentifier(channel)], entry.device == device else { return nil }
            return entry.key
        }
    }
}
