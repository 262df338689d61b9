import Core
import Crypto
import Foundation
import HubClient
import HummingbirdCore
import Logging
import NIOCore
public import NIOSSL
import PKI
import Store
import X509

/// TLS for both listeners: TLS 1.3 only, a client certificate required. BoringSSL's own verification is replaced by
/// a callback that runs swift-certificates' RFC 5280 path validation against the hub CA alone, plus
/// `ClientCertificatePolicy` (EKU clientAuth, not a CA, the listener's role, not revoked).
enum HubTLS {
    /// The listener's TLS contexts (rebuilt when the key rotates) and its client-certificate check.
    static func serverContexts(
        credentials: HubCredentials, role: ClientCertificatePolicy.Role, revocations: RevocationList,
        store: any HubStore, logger: Logger, applicationProtocols: [String] = ["http/1.1"],
        profile: CryptoProfile = .standard
    ) throws -> (TLSContextSource, @Sendable ([NIOSSLCertificate], EventLoopPromise<NIOSSLVerificationResult>) -> Void)
    {
        let caCertificate = credentials.authority.certificate
        let source = try TLSContextSource(identity: credentials.identity, logger: logger) { keys in
            try TLSProfile.makeContext(
                configuration(keys: keys, ca: caCertificate, applicationProtocols: applicationProtocols),
                profile: profile)
        }
        return (
            source,
            verification(
                caCertificate: caCertificate, role: role, revocations: revocations, store: store, logger: logger)
        )
    }

    static func configuration(keys: ServerIdentity.Keys, ca: Certificate, applicationProtocols: [String]) throws
        -> TLSConfiguration
    {
        var tls = TLSConfiguration.makeServerConfigurationWithMTLS(
            certificateChain: [.certificate(try NIOSSLCertificate(bytes: keys.certificate.derBytes, format: .der))],
            privateKey: .privateKey(
                try NIOSSLPrivateKey(bytes: Array(keys.key.pemRepresentation.utf8), format: .pem)),
            trustRoots: .certificates([try NIOSSLCertificate(bytes: ca.derBytes, format: .der)]))
        tls.minimumTLSVersion = .tlsv13
        tls.maximumTLSVersion = .tlsv13
        tls.certificateVerification = .noHostnameVerification
        tls.applicationProtocols = applicationProtocols
        return tls
    }

    static func verification(
        caCertificate: Certificate, role: ClientCertificatePolicy.Role, revocations: RevocationList,
        store: any HubStore, logger: Logger
    ) -> @Sendable ([NIOSSLCertificate], EventLoopPromise<NIOSSLVerificationResult>) -> Void {
        let verify: @Sendable ([NIOSSLCertificate]) async -> NIOSSLVerificationResult = { certificates in
            let ders = certificates.compactMap { try? $0.toDERBytes() }
            guard let leafDER = ders.first, let leaf = try? Certificate(derEncoded: leafDER) else {
                return .failed
            }
            let intermediates = CertificateStore(ders.dropFirst().compactMap { try? Certificate(derEncoded: $0) })
            var verifier = Verifier(rootCertificates: CertificateStore([caCertificate])) {
                RFC5280Policy()
                ClientCertificatePolicy(role: role, isRevoked: { revocations.contains($0) })
            }
            switch await verifier.validate(leaf: leaf, intermediates: intermediates) {
            case .validCertificate:
                return .certificateVerified
            case .couldNotValidate(let failures):
                // An empty list means no path to the hub CA (a foreign or self-signed certificate).
                let reason =
                    failures.isEmpty
                    ? "no chain to the hub CA" : failures.map { "\($0.policyFailureReason)" }.joined(separator: "; ")
                let subject = leaf.bulwarkIdentity?.uri ?? "unknown"
                logger.warning(
                    "TLS client certificate refused",
                    metadata: [
                        "subject": .string(subject), "serial": .string(leaf.serialHex), "reason": .string(reason),
                    ])
                try? await store.recordSecurityEvent(
                    SecurityEvent(
                        at: Date(), kind: "tls-client-refused", identity: subject,
                        detail: "serial \(leaf.serialHex): \(reason)"))
                return .failed
            }
        }
        return { certificates, promise in promise.completeWithTask { await verify(certificates) } }
    }
}

/// HummingbirdTLS's `TLSChannel`, with the context taken per connection from the listener's `TLSContextSource`, so a
/// rotated key is presented from the next connection on.
struct RotatingTLSChannel<Base: ServerChildChannel>: ServerChildChannel {
    typealias Value = Base.Value
    let base: Base
    let contexts: TLSContextSource
    let verify: @Sendable ([NIOSSLCertificate], EventLoopPromise<NIOSSLVerificationResult>) -> Void
    /// Counts failed handshakes on this listener.
    var observer: (HubMetrics, HubMetrics.Listener)?

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.addHandler(
                NIOSSLServerHandler(context: contexts.context, customVerificationCallback: verify))
            if let (metrics, listener) = observer {
                try channel.pipeline.syncOperations.addHandler(HandshakeObserver(metrics: metrics, listener: listener))
            }
        }.flatMap { base.setup(channel: channel, logger: logger) }
    }

    func handle(value: Value, logger: Logger) async { await base.handle(value: value, logger: logger) }
}
