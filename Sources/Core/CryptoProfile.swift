/// The algorithm profile of a hub, an agent or the CLI (`crypto.profile`).
///
/// `fips` restricts every algorithm Bulwark uses to ones FIPS 140-3 approves (FIPS 186-5 signatures, SP 800-52r2
/// TLS, SP 800-56A key agreement); `standard` (the default) also allows X25519, ChaCha20-Poly1305 and the others in
/// `approvals` marked not approved. This is a profile of approved *algorithms*: the implementations are
/// BoringSSL and swift-crypto as built by SwiftPM, not a FIPS 140-3 *validated module*.
public enum CryptoProfile: String, Sendable, CaseIterable {
    case standard
    case fips

    /// Parses `standard` or `fips`.
    public init(parsing text: String) throws(CryptoProfileError) {
        guard let profile = CryptoProfile(rawValue: text) else {
            throw CryptoProfileError("crypto.profile must be standard or fips, not \(text)")
        }
        self = profile
    }

    /// TLS 1.3 cipher suites a listener or client accepts (RFC 8446 §B.4; SP 800-52r2 §3.3.1.2).
    public var tls13CipherSuites: [String] {
        switch self {
        case .standard: return ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"]
        case .fips: return ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384"]
        }
    }

    /// TLS key-exchange groups (RFC 8446 §4.2.7; SP 800-52r2 §3.3.1.3: P-256 and P-384).
    public var tlsGroups: [String] {
        switch self {
        case .standard: return ["X25519MLKEM768", "X25519", "P-256", "P-384"]
        case .fips: return ["P-256", "P-384"]
        }
    }

    /// Pairing suites (the label's suite) this profile accepts at claim.
    public func allowsPairingSuite(_ name: String) -> Bool {
        switch self {
        case .standard: return true
        case .fips: return name == "P256_AESGCM_SHA256"
        }
    }
}

/// A profile that cannot be parsed or applied: one line naming the setting.
public struct CryptoProfileError: Error, Equatable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
