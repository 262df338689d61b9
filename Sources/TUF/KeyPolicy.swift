import _CryptoExtras

/// Which keys may count towards a role's threshold (TUF §5.3.4, §5.4.2, §5.5.3, §5.6.3): the TUF side of
/// `crypto.profile`. A signature by a key outside the policy is not counted, as if it were missing; metadata that
/// then falls short of its threshold is refused, and the error says how many keys the policy excluded.
public enum KeyPolicy: String, Sendable, Equatable {
    /// Every key the verifier supports.
    case any
    /// FIPS 186-5 signatures only: ECDSA on P-256 or P-384 (`ecdsa-sha2-nistp256`, `ecdsa-sha2-nistp384`),
    /// RSASSA-PSS with a modulus of at least 3072 bits, and Ed25519. RSA PKCS#1 v1.5 and shorter RSA keys do not count.
    case fips

    public func allows(_ key: Key) -> Bool {
        guard self == .fips else { return true }
        switch (key.keytype, key.scheme) {
        case ("ecdsa", "ecdsa-sha2-nistp256"), ("ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256"),
            ("ecdsa", "ecdsa-sha2-nistp384"), ("ecdsa-sha2-nistp384", "ecdsa-sha2-nistp384"), ("ed25519", "ed25519"):
            return true
        case ("rsa", "rsassa-pss-sha256"):
            guard let pem = key.publicValue, let rsa = try? _RSA.Signing.PublicKey(pemRepresentation: pem) else {
                return false
            }
            return rsa.keySizeInBits >= 3072
        default:
            return false
        }
    }

    /// For messages: "the FIPS profile".
    public var name: String { self == .fips ? "the FIPS profile" : "the policy" }
}
