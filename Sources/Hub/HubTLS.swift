import Core
import Crypto
import Foundation
import HummingbirdTLS
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
    static func channelConfiguration(
        credentials: HubCredentials, role: ClientCertificatePolicy.Role, revocations: RevocationList,
        store: any HubStore, logger: Logger
    ) throws -> TLSChannelConfiguration {
        let (tls, verify) = try serverConfiguration(
            credentials: credentials, role: role, revocations: revocations, store: store, logger: logger)
        return TLSChannelConfiguration(tlsConfiguration: tls, customVerificationCallback: verify)
    }

    /// The TLS configuration and the verification callback, for listeners built directly on NIO (MQTT).
    static func serverConfiguration(
        credentials: HubCredentials, role: ClientCertificatePolicy.Role, revocations: RevocationList,
        store: any HubStore, logger: Logger, applicationProtocols: [String] = ["http/1.1"]
    ) throws -> (TLSConfiguration, @Sendable ([NIOSSLCertificate], EventLoopPromise<NIOSSLVerificationResult>) -> Void)
    {
        let caCertificate = credentials.authority.certificate
        var tls = TLSConfiguration.makeServerConfigurationWithMTLS(
            certificateChain: [
                .certificate(try NIOSSLCertificate(bytes: credentials.serverCertificate.derBytes, format: .der))
            ],
            privateKey: .privateKey(
                try NIOSSLPrivateKey(bytes: Array(credentials.serverKey.pemRepresentation.utf8), format: .pem)),
            trustRoots: .certificates([try NIOSSLCertificate(bytes: caCertificate.derBytes, format: .der)]))
        tls.minimumTLSVersion = .tlsv13
        tls.maximumTLSVersion = .tlsv13
        tls.certificateVerification = .noHostnameVerification
        tls.applicationProtocols = applicationProtocols

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
        return (
            tls,
            { certificates, promise in promise.completeWithTask { await verify(certificates) } }
        )
    }
}
