public import Crypto
import Foundation

/// A key pair for a Noise DH function, as raw bytes in the suite's encoding.
public struct NoiseKeyPair: Sendable {
    public let privateKey: [UInt8]
    public let publicKey: [UInt8]

    public init(privateKey: [UInt8], publicKey: [UInt8]) {
        self.privateKey = privateKey
        self.publicKey = publicKey
    }
}

/// The DH functions (Noise §12).
///
/// - `x25519`: Noise §12.1 exactly: 32-byte keys and DH output (RFC 7748).
/// - `p256`: our suite for FIPS-approved primitives. Public keys are SEC1 uncompressed points (`04‖X‖Y`, 65 bytes),
///   private keys 32-byte big-endian scalars; the DH output is the 32-byte big-endian x-coordinate of the shared
///   point (SEC1 §3.3.1, as NIST SP 800-56A ECC CDH). Points not on the curve are refused when decoded.
public enum NoiseDH: String, Sendable, CaseIterable {
    case x25519 = "25519"
    case p256 = "P256"

    public var publicKeyLength: Int { self == .x25519 ? 32 : 65 }

    public func generateKeyPair() -> NoiseKeyPair {
        switch self {
        case .x25519:
            let key = Curve25519.KeyAgreement.PrivateKey()
            return NoiseKeyPair(
                privateKey: Array(key.rawRepresentation), publicKey: Array(key.publicKey.rawRepresentation))
        case .p256:
            let key = P256.KeyAgreement.PrivateKey()
            return NoiseKeyPair(
                privateKey: Array(key.rawRepresentation), publicKey: Array(key.publicKey.x963Representation))
        }
    }

    /// Rebuilds a key pair from its private key (for fixed test keys and stored identities).
    public func keyPair(privateKey: [UInt8]) throws(NoiseError) -> NoiseKeyPair {
        do {
            switch self {
            case .x25519:
                let key = try Curve25519.KeyAgreement.PrivateKey(rawRepresentation: privateKey)
                return NoiseKeyPair(privateKey: privateKey, publicKey: Array(key.publicKey.rawRepresentation))
            case .p256:
                let key = try P256.KeyAgreement.PrivateKey(rawRepresentation: privateKey)
                return NoiseKeyPair(privateKey: privateKey, publicKey: Array(key.publicKey.x963Representation))
            }
        } catch {
            throw NoiseError(.missingKey, "not a valid \(rawValue) private key")
        }
    }

    /// DH(key_pair, public_key). Refuses invalid points and an all-zero output (a small-order or identity point).
    func dh(_ keyPair: NoiseKeyPair, _ publicKey: [UInt8]) throws(NoiseError) -> [UInt8] {
        let output: [UInt8]
        do {
            switch self {
            case .x25519:
                let secret = try Curve25519.KeyAgreement.PrivateKey(rawRepresentation: keyPair.privateKey)
                    .sharedSecretFromKeyAgreement(with: .init(rawRepresentation: publicKey))
                output = secret.withUnsafeBytes { Array($0) }
            case .p256:
                let secret = try P256.KeyAgreement.PrivateKey(rawRepresentation: keyPair.privateKey)
                    .sharedSecretFromKeyAgreement(with: .init(x963Representation: publicKey))
                output = secret.withUnsafeBytes { Array($0) }
            }
        } catch {
            throw NoiseError(.invalidPublicKey, "peer public key is not a valid \(rawValue) point")
        }
        guard output.contains(where: { $0 != 0 }) else {
            throw NoiseError(.invalidPublicKey, "DH output is all zeros")
        }
        return output
    }
}

/// The cipher functions (Noise §12.3, §12.4) with a 32-byte key and 64-bit counter nonce.
public enum NoiseCipher: String, Sendable, CaseIterable {
    case aesGCM = "AESGCM"
    case chaChaPoly = "ChaChaPoly"

    static let tagLength = 16

    /// AESGCM: 32 zero bits then the big-endian counter; ChaChaPoly: 32 zero bits then the little-endian counter.
    private func nonceBytes(_ n: UInt64) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 12)
        for i in 0..<8 {
            let byte = UInt8(truncatingIfNeeded: n >> (8 * UInt64(i)))
            if self == .aesGCM { bytes[11 - i] = byte } else { bytes[4 + i] = byte }
        }
        return bytes
    }

    func encrypt(key: SymmetricKey, nonce: UInt64, ad: [UInt8], plaintext: [UInt8]) throws(NoiseError) -> [UInt8] {
        do {
            switch self {
            case .aesGCM:
                let box = try AES.GCM.seal(
                    plaintext, using: key, nonce: try AES.GCM.Nonce(data: nonceBytes(nonce)), authenticating: ad)
                return Array(box.ciphertext) + Array(box.tag)
            case .chaChaPoly:
                let box = try ChaChaPoly.seal(
                    plaintext, using: key, nonce: try ChaChaPoly.Nonce(data: nonceBytes(nonce)), authenticating: ad)
                return Array(box.ciphertext) + Array(box.tag)
            }
        } catch {
            throw NoiseError(.wrongState, "encryption failed")
        }
    }

    func decrypt(key: SymmetricKey, nonce: UInt64, ad: [UInt8], ciphertext: [UInt8]) throws(NoiseError) -> [UInt8] {
        guard ciphertext.count >= Self.tagLength else {
            throw NoiseError(.malformedMessage, "ciphertext shorter than the tag")
        }
        let body = ciphertext.prefix(ciphertext.count - Self.tagLength)
        let tag = ciphertext.suffix(Self.tagLength)
        do {
            switch self {
            case .aesGCM:
                let box = try AES.GCM.SealedBox(
                    nonce: try AES.GCM.Nonce(data: nonceBytes(nonce)), ciphertext: body, tag: tag)
                return Array(try AES.GCM.open(box, using: key, authenticating: ad))
            case .chaChaPoly:
                let box = try ChaChaPoly.SealedBox(
                    nonce: try ChaChaPoly.Nonce(data: nonceBytes(nonce)), ciphertext: body, tag: tag)
                return Array(try ChaChaPoly.open(box, using: key, authenticating: ad))
            }
        } catch {
            throw NoiseError(.decryptionFailed, "AEAD authentication failed")
        }
    }
}
