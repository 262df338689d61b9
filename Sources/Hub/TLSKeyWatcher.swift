import Foundation
import Logging
import PKI
import ServiceLifecycle
import Store

/// Notices a key rotation in the data directory (`bulwark hub rotate-tls-key` replaces `hub.key`, `hub.crt`,
/// `hub-backup.key`) and swaps the new key in for new connections, without a restart. Only a complete, consistent
/// set is taken (the certificate for the key, from the hub CA, valid now; a backup distinct from it); a half-written
/// rotation is left until it is complete. Each swap is logged and audited (`tls-key-rotated`, with the pins, which are
/// public), and the new certificate recorded in the store.
struct TLSKeyWatcher: Service {
    let files: TLSKeyFiles
    let authority: CertificateAuthority
    let identity: ServerIdentity
    let store: any HubStore
    /// Where this node's pins are recorded for pairing and `publish-pins` on every node.
    var pins: ClusterPins?
    let interval: Duration
    let logger: Logger

    func run() async throws {
        var seen = files.fingerprint()
        var failures = 0
        // The key generation whose pins the store holds (recorded at start), and when they were last recorded: a
        // running node records them again every `ClusterPins.refreshSeconds` (its record stays fresh), and right
        // after a switch; a record that failed is tried again at the next refresh.
        var recorded = identity.current.generation
        var lastRecord = ContinuousClock.now
        var lastFailed = false
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            // At least every refresh, whatever `tls.keyCheckSeconds` says: the record must stay fresh.
            let sleep = min(interval, .milliseconds(Int64(ClusterPins.refreshSeconds * 1000)))
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: sleep) }
            if Task.isShuttingDownGracefully { break }
            let now = files.fingerprint()
            if now != seen {
                if await check() {
                    seen = now
                    failures = 0
                } else {
                    failures += 1
                    if failures == 20 {
                        logger.warning(
                            .init(
                                stringLiteral: "the TLS key files changed but do not make a usable set (unreadable, or "
                                    + "a certificate that is not for the key); still presenting the previous key"))
                    }
                }
            }
            // Only other nodes read the record's age: a single node (SQLite) writes it at a switch alone.
            let due = store.sharedByNodes && ContinuousClock.now - lastRecord >= .seconds(ClusterPins.refreshSeconds)
            if let pins, (recorded != identity.current.generation && !lastFailed) || due {
                let generation = identity.current.generation
                lastRecord = ContinuousClock.now
                do {
                    try await pins.record()
                    recorded = generation
                    lastFailed = false
                } catch {
                    lastFailed = true
                    logger.warning(
                        "this node's pins were not recorded for the other nodes; trying again",
                        metadata: ["error": .string("\(error)")])
                }
            }
        }
    }

    /// Loads the files and swaps them in when they are complete; false when they are not (looked at again later).
    @discardableResult
    func check(now: Date = Date()) async -> Bool {
        let before = files.fingerprint()
        guard let (certificate, key, backup) = files.load(authority: authority, now: now),
            files.fingerprint() == before  // not read across a rename in progress
        else {
            logger.debug("TLS key files incomplete or inconsistent; keeping the key in use")
            return false
        }
        let previous = identity.current
        // Only a key devices already pin: the one in use (a new certificate) or the backup (a rotation).
        guard
            [previous.key.publicKey, previous.backup].map(ServerIdentity.pin).contains(
                ServerIdentity.pin(key.publicKey))
        else {
            logger.error(
                .init(
                    stringLiteral: "refusing to switch to a TLS key that devices do not pin (neither the key in use "
                        + "nor the backup); use bulwark hub rotate-tls-key, or restart the hub to force it"))
            return true
        }
        guard identity.replace(certificate: certificate, key: key, backup: backup) else { return true }
        let pins = identity.current.pins.map { Data($0).base64EncodedString() }
        logger.notice(
            "TLS key switched for new connections",
            metadata: [
                "previous": .string(Data(previous.pins[0]).base64EncodedString()), "active": .string(pins[0]),
                "backup": .string(pins[1]), "serial": .string(certificate.serialHex),
            ])
        try? await store.addCertificate(HubCredentials.record(certificate, deviceID: nil))
        try? await store.recordSecurityEvent(
            SecurityEvent(
                at: now, kind: "tls-key-rotated", identity: nil,
                detail: "active \(pins[0]), backup \(pins[1]), previous \(Data(previous.pins[0]).base64EncodedString())"
            ))
        return true
    }
}
