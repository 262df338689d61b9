import CTLSPolicy
public import Core
public import NIOSSL

/// The TLS side of `crypto.profile` for every listener and client Bulwark makes (hub, agent, CLI).
///
/// `fips` means TLS 1.3 with `TLS_AES_128_GCM_SHA256` or `TLS_AES_256_GCM_SHA384` only and key exchange on P-256 or
/// P-384 only (SP 800-52r2 §3.3.1). swift-nio-ssl exposes the groups but not the TLS 1.3 cipher suites, so the
/// context is also put under BoringSSL's `ssl_compliance_policy_fips_202205` (AES-GCM only in TLS 1.3, P-256/P-384
/// only, approved handshake signatures), applied to the context's `SSL_CTX` before it makes any connection. That
/// `SSL_CTX` is a private field of `NIOSSLContext`, reached by reflection: if a swift-nio-ssl release moves it, making
/// a `fips` context fails (it never silently runs without the policy), and the tests that offer ChaCha20 and X25519
/// with `openssl s_client` catch it.
public enum TLSProfile {
    /// Sets what `TLSConfiguration` can express: TLS 1.3 only, the profile's groups (`CryptoProfile.tlsGroups`, the
    /// list `bulwark crypto report` prints), and in `fips` the signature algorithms.
    public static func configure(_ tls: inout TLSConfiguration, profile: CryptoProfile) {
        tls.minimumTLSVersion = .tlsv13
        let curves: [String: NIOTLSCurve] = [
            "X25519MLKEM768": .x25519_MLKEM768, "X25519": .x25519, "P-256": .secp256r1, "P-384": .secp384r1,
        ]
        tls.curves = profile.tlsGroups.compactMap { curves[$0] }
        guard profile == .fips else { return }
        let signatures: [SignatureAlgorithm] = [
            .ecdsaSecp256R1Sha256, .ecdsaSecp384R1Sha384, .rsaPssRsaeSha256, .rsaPssRsaeSha384, .rsaPssRsaeSha512,
        ]
        tls.verifySignatureAlgorithms = signatures
        tls.signingSignatureAlgorithms = signatures
    }

    /// A context for `tls` under `profile` (`configure` is applied first).
    public static func makeContext(_ tls: TLSConfiguration, profile: CryptoProfile) throws -> NIOSSLContext {
        var tls = tls
        configure(&tls, profile: profile)
        let context = try NIOSSLContext(configuration: tls)
        guard profile == .fips else { return context }
        guard let pointer = sslContext(of: context) else {
            throw CryptoProfileError(
                "crypto.profile fips: this swift-nio-ssl does not let the TLS 1.3 cipher suites be restricted")
        }
        switch bulwark_tls_fips_policy(UnsafeMutableRawPointer(pointer)) {
        case 0: break
        case 1: throw CryptoProfileError("crypto.profile fips: BoringSSL refused its FIPS compliance policy")
        default: throw CryptoProfileError("crypto.profile fips: cannot keep TLS 1.3 only under the FIPS policy")
        }
        return context
    }

    static func sslContext(of context: NIOSSLContext) -> OpaquePointer? {
        for child in Mirror(reflecting: context).children where child.label == "sslContext" {
            return child.value as? OpaquePointer
        }
        return nil
    }
}
