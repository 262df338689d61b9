import Foundation
import Logging
import PKI
import ServiceLifecycle
import Store
import X509

/// Publishes the hub CA's revocations as a CRL (RFC 5280 §5), so relying parties other than the hub can learn of them.
///
/// The CRL is re-issued from the store at start, after every revocation (`publish`), and by `CRLRefreshService`
/// before `nextUpdate`. It is held here for the routes (`GET /v1/crl` and the plain `GET /crl` listener) and written
/// to `<data>/crl.pem` by rename, so a reader never sees half a file.
///
/// What it lists: every certificate the store records as revoked, with the date it was revoked. A certificate issued
/// by pairing is recorded revoked, without a device, until the device confirms it; it is listed with the reason
/// `certificateHold` (§5.3.1), the one reason that may be lifted, because a confirmed pairing lifts it. A certificate
/// whose pairing failed stays on hold until it expires. Entries leave the CRL once the certificate has been expired
/// for a whole CRL validity period: by then a CRL issued after its expiry has listed it (§3.3).
public actor CRLPublisher {
    let authority: CertificateAuthority
    let store: any HubStore
    let path: String
    /// From `thisUpdate` to `nextUpdate`.
    let validity: TimeInterval
    let logger: Logger
    public private(set) var current: CertificateRevocationList?
    private var lastNumber: UInt64 = 0
    /// Each publication is numbered when it starts; one that started before the one already published is dropped,
    /// so a slow read of the store never replaces a newer list (this actor is re-entered while it awaits the store).
    private var started = 0
    private var published = 0

    public init(
        authority: CertificateAuthority, store: any HubStore, dataDirectory: String, validityDays: Int, logger: Logger
    ) {
        self.authority = authority
        self.store = store
        self.path = dataDirectory + "/crl.pem"
        self.validity = TimeInterval(validityDays) * 86400
        self.logger = logger
        // The CRL number must grow across restarts too (§5.2.3): start above the last one published.
        if let text = try? String(contentsOfFile: path, encoding: .utf8),
            let previous = try? CertificateRevocationList(pemEncoded: text),
            previous.isSignatureValid(for: authority.certificate.publicKey)
        {
            lastNumber = previous.number
        }
    }

    /// Re-issues the CRL from the store's revocations now.
    @discardableResult
    public func publish(now: Date = Date()) async throws -> CertificateRevocationList {
        started += 1
        let generation = started
        let revoked = try await store.revokedCertificates()
        if generation < published, let current { return current }
        // Milliseconds since the epoch, and always above the last number: increasing even if the clock steps back or
        // `crl.pem` was lost.
        let number = max(lastNumber + 1, UInt64(max(0, now.timeIntervalSince1970 * 1000)))
        let crl = try authority.issueRevocationList(
            entries: Self.entries(revoked, now: now, validity: validity), number: number, thisUpdate: now,
            nextUpdate: now + validity)
        lastNumber = number
        published = generation
        current = crl
        do { try SecretFiles.writePublic(path, contents: crl.pem) } catch {
            logger.error("cannot write the CRL file", metadata: ["path": .string(path), "error": .string("\(error)")])
        }
        logger.info(
            "CRL published",
            metadata: ["number": .stringConvertible(number), "entries": .stringConvertible(crl.entries.count)])
        return crl
    }

    /// After a revocation: re-issues at once. A failure is logged, and the revocation stands on the hub; the refresh
    /// service tries again within its interval, because the store's list then differs from the published one.
    public func revocationsChanged() async {
        do { try await publish() } catch {
            logger.error("CRL re-issue after a revocation failed", metadata: ["error": .string("\(error)")])
        }
    }

    /// Re-issues when half the validity is gone (so a relying party that fetches late still finds a current one), or
    /// when the store's revocations differ from the published ones (a pairing that failed or was confirmed).
    public func refreshIfDue(now: Date = Date()) async throws {
        guard let current else {
            try await publish(now: now)
            return
        }
        let halfGone = now >= current.thisUpdate + validity / 2
        let listed = Self.entries(try await store.revokedCertificates(), now: now, validity: validity)
        if halfGone || Set(listed) != Set(current.entries) { try await publish(now: now) }
    }

    /// The CRL entries for the store's revocations, at whole seconds as the CRL encodes them.
    static func entries(_ revoked: [RevokedCertificate], now: Date, validity: TimeInterval)
        -> [CertificateRevocationList.Entry]
    {
        revoked.compactMap { record in
            guard record.notAfter + validity >= now, let bytes = Self.bytes(hex: record.serialHex) else { return nil }
            return CertificateRevocationList.Entry(
                serialNumber: Certificate.SerialNumber(bytes: bytes),
                revocationDate: Date(timeIntervalSince1970: record.revokedAt.timeIntervalSince1970.rounded(.down)),
                reason: record.deviceID == nil ? .certificateHold : nil)
        }
    }

    private static func bytes(hex: String) -> [UInt8]? {
        let digits = Array(hex.utf8)
        guard !digits.isEmpty, digits.count.isMultiple(of: 2) else { return nil }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(digits.count / 2)
        for index in stride(from: 0, to: digits.count, by: 2) {
            guard let byte = UInt8(String(decoding: digits[index...index + 1], as: UTF8.self), radix: 16) else {
                return nil
            }
            bytes.append(byte)
        }
        return bytes
    }
}

/// Re-issues the CRL before `nextUpdate`: it looks every `interval` (an hour) and re-issues when half the validity
/// is gone or the revocations changed (see `CRLPublisher.refreshIfDue`).
struct CRLRefreshService: Service {
    let publisher: CRLPublisher
    let interval: Duration
    let logger: Logger

    func run() async throws {
        try await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                // Cancelled at graceful shutdown: end quietly.
                do { try await Task.sleep(for: interval) } catch { return }
                do { try await publisher.refreshIfDue() } catch {
                    logger.error("CRL re-issue failed", metadata: ["error": .string("\(error)")])
                }
            }
        }
    }
}
