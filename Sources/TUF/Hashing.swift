import Crypto

/// Hash checks for TUF §4.4 HASHES objects. Every listed algorithm must be supported and
/// must match: an unknown algorithm is a failure, never skipped.
public enum Hashing {
    public static let supportedAlgorithms = ["sha256", "sha384", "sha512"]

    public static func digest(_ algorithm: String, _ data: [UInt8]) -> [UInt8]? {
        switch algorithm {
        case "sha256": return Array(SHA256.hash(data: data))
        case "sha384": return Array(SHA384.hash(data: data))
        case "sha512": return Array(SHA512.hash(data: data))
        default: return nil
        }
    }

    public static func verify(_ data: [UInt8], _ hashes: [(algorithm: String, digest: String)]) throws(TUFError) {
        guard !hashes.isEmpty else { throw TUFError(.lengthOrHashMismatch, "no hashes listed") }
        for h in hashes {
            guard let actual = digest(h.algorithm, data) else {
                throw TUFError(.lengthOrHashMismatch, "unsupported hash algorithm '\(h.algorithm)'")
            }
            guard let expected = hexDecode(h.digest), expected == actual else {
                throw TUFError(.lengthOrHashMismatch, "\(h.algorithm) hash does not match")
            }
        }
    }
}
