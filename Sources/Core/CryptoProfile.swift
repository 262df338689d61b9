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

    /// Whether a TUF key (TUF §4.3 keytype/scheme) may sign or count towards a threshold: in `fips`, ECDSA P-256 and
    /// P-384, RSASSA-PSS with a modulus of at least 3072 bits, and Ed25519 (FIPS 186-5 §5, §6, §7.8).
    public func allowsTUFKey(keytype: String, scheme: String, rsaModulusBits: Int?) -> Bool {
        guard self == .fips else { return true }
        switch (keytype, scheme) {
        case ("ecdsa", "ecdsa-sha2-nistp256"), ("ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256"),
            ("ecdsa", "ecdsa-sha2-nistp384"), ("ecdsa-sha2-nistp384", "ecdsa-sha2-nistp384"),
            ("ed25519", "ed25519"):
            return true
        case ("rsa", "rsassa-pss-sha256"), ("rsa", "rsassa-pss-sha384"), ("rsa", "rsassa-pss-sha512"):
            return (rsaModulusBits ?? 0) >= 3072
        default:
            return false
        }
    }

    /// Hash algorithms of TUF HASHES objects (TUF §4.4) and everything else hashed: SHA-2 (FIPS 180-4).
    public func allowsHash(_ name: String) -> Bool {
        ["sha256", "sha384", "sha512"].contains(name) || self == .standard && name == "sha512_256"
    }
}

/// A profile that cannot be parsed or applied: one line naming the setting.
public struct CryptoProfileError: Error, Equatable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
