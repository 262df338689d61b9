import Core
import Foundation
import Logging
import PKI
import ServiceLifecycle
import Store
import Synchronization

/// Device certificates renewed with a new key, whose predecessor is still valid: it is revoked as soon as the device
/// presents the new certificate (on HTTPS or MQTT), or when the grace period (`pki.renewalGraceSeconds`) ends,
/// whichever comes first. Until then a device that never received the answer to its renewal keeps working with the
/// old one and can ask again.
final class CertificateRenewals: Sendable {
    private let store: any HubStore
    private let revocations: RevocationList
    private let crl: CRLPublisher
    private let logger: Logger
    /// By the new certificate's serial: one lock-protected lookup per request, I/O only on a hit.
    private let pending = Mutex<[String: PendingRenewal]>([:])

    init(store: any HubStore, revocations: RevocationList, crl: CRLPublisher, logger: Logger) {
        self.store = store
        self.revocations = revocations
        self.crl = crl
        self.logger = logger
    }

    func load() async throws {
        let renewals = try await store.pendingRenewals()
        pending.withLock { pending in for renewal in renewals { pending[renewal.newSerialHex] = renewal } }
    }

    /// A new renewal; `superseded` are the serials of earlier renewals of the same certificate that the store has
    /// just revoked (never used: the device asked again).
    func add(_ renewal: PendingRenewal, superseding superseded: [String]) async {
        if !superseded.isEmpty { revocations.insert(superseded) }
        pending.withLock { pending in
            for serial in superseded { pending[serial] = nil }
            pending[renewal.newSerialHex] = renewal
        }
        if !superseded.isEmpty { await crl.revocationsChanged() }
    }

    /// The device presented the certificate with `serialHex`: when it is a renewed one, its predecessor is revoked.
    func used(_ serialHex: String) async {
        guard pending.withLock({ $0[serialHex] }) != nil else { return }
        await complete(serialHex, why: "the device used its new certificate")
    }

    /// Revokes the predecessors whose grace period has ended.
    func expire(now: Date) async {
        let due = pending.withLock { $0.values.filter { $0.graceUntil <= now }.map(\.newSerialHex) }
        for serial in due { await complete(serial, why: "the renewal's grace period ended") }
    }

    private func complete(_ newSerial: String, why: String) async {
        guard let renewal = pending.withLock({ $0.removeValue(forKey: newSerial) }) else { return }
        do {
            guard let previous = try await store.completeRenewal(newSerialHex: newSerial, at: Date()) else { return }
            revocations.insert([previous])
            try await store.recordSecurityEvent(
                SecurityEvent(
                    at: Date(), kind: "certificate-superseded", identity: Identity.device(renewal.deviceID).uri,
                    source: nil, detail: "serial \(previous) revoked: renewed as \(newSerial); \(why)"))
            await crl.revocationsChanged()
        } catch {
            // Kept for the next attempt (the grace sweep retries): the old certificate must not stay valid for ever.
            pending.withLock { $0[newSerial] = renewal }
            logger.error(
                "cannot revoke a renewed certificate's predecessor",
                metadata: ["device": .string(renewal.deviceID.rawValue), "error": .string("\(error)")])
        }
    }
}

/// What the renewal route needs besides the gateway.
struct RenewalSettings: Sendable {
    let authority: CertificateAuthority
    let renewals: CertificateRenewals
    let revocations: RevocationList
    let certificateLifetime: TimeInterval
    let graceSeconds: Double
}

/// Sweeps renewals whose grace period ended.
struct RenewalSweepService: Service {
    let renewals: CertificateRenewals
    let interval: Duration

    func run() async throws {
        try await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                await renewals.expire(now: Date())
                // Cancelled at graceful shutdown: end quietly.
                do { try await Task.sleep(for: interval) } catch { return }
            }
        }
    }
}
