public import Crypto
import Foundation

/// Noise §5.1 CipherState: a key (or none) and a 64-bit nonce.
public struct CipherState: Sendable {
    let cipher: NoiseCipher
    var key: SymmetricKey?
    var nonce: UInt64 = 0

    init(cipher: NoiseCipher, key: [UInt8]? = nil) {
        self.cipher = cipher
        self.key = key.map { SymmetricKey(data: $0) }
    }

    var hasKey: Bool { key != nil }

    /// EncryptWithAd: with no key, the plaintext is returned unchanged (Noise §5.1).
    mutating func encrypt(ad: [UInt8], _ plaintext: [UInt8]) throws(NoiseError) -> [UInt8] {
        guard let key else { return plaintext }
        // Noise §5.1: 2^64-1 is reserved; using it is an error.
        guard nonce < UInt64.max else { throw NoiseError(.nonceExhausted, "nonce exhausted") }
        let ciphertext = try cipher.encrypt(key: key, nonce: nonce, ad: ad, plaintext: plaintext)
        nonce += 1
        return ciphertext
    }

    /// DecryptWithAd: the nonce advances only when authentication succeeds (Noise §5.1).
    mutating func decrypt(ad: [UInt8], _ ciphertext: [UInt8]) throws(NoiseError) -> [UInt8] {
        guard let key else { return ciphertext }
        guard nonce < UInt64.max else { throw NoiseError(.nonceExhausted, "nonce exhausted") }
        let plaintext = try cipher.decrypt(key: key, nonce: nonce, ad: ad, ciphertext: ciphertext)
        nonce += 1
        return plaintext
    }
}

/// Noise §5.2 SymmetricState with SHA-256 (HASHLEN 32, Noise §12.5).
struct SymmetricState: Sendable {
    private(set) var chainingKey: [UInt8]
    private(set) var handshakeHash: [UInt8]
    var cipherState: CipherState

    /// InitializeSymmetric(protocol_name): h is the name zero-padded to 32 bytes, or its hash if longer.
    init(protocolName: String, cipher: NoiseCipher) {
        let name = Array(protocolName.utf8)
        handshakeHash = name.count <= 32 ? name + [UInt8](repeating: 0, count: 32 - name.count) : Self.hash(name)
        chainingKey = handshakeHash
        cipherState = CipherState(cipher: cipher)
    }

    static func hash(_ data: [UInt8]) -> [UInt8] { Array(SHA256.hash(data: data)) }

    static func hmac(key: [UInt8], _ data: [UInt8]) -> [UInt8] {
        Array(HMAC<SHA256>.authenticationCode(for: data, using: SymmetricKey(data: key)))
    }

    /// Noise §4.3 HKDF(chaining_key, input_key_material, num_outputs) (RFC 5869 with an empty info).
    static func hkdf(_ chainingKey: [UInt8], _ inputKeyMaterial: [UInt8], outputs: Int) -> [[UInt8]] {
        let tempKey = hmac(key: chainingKey, inputKeyMaterial)
        var results: [[UInt8]] = []
        var previous: [UInt8] = []
        for index in 1...outputs {
            previous = hmac(key: tempKey, previous + [UInt8(index)])
            results.append(previous)
        }
        return results
    }

    mutating func mixKey(_ inputKeyMaterial: [UInt8]) {
        let outputs = Self.hkdf(chainingKey, inputKeyMaterial, outputs: 2)
        chainingKey = outputs[0]
        cipherState = CipherState(cipher: cipherState.cipher, key: outputs[1])
    }

    mutating func mixHash(_ data: [UInt8]) {
        handshakeHash = Self.hash(handshakeHash + data)
    }

    /// Noise §5.2, used for the "psk" token (§9.2).
    mutating func mixKeyAndHash(_ inputKeyMaterial: [UInt8]) {
        let outputs = Self.hkdf(chainingKey, inputKeyMaterial, outputs: 3)
        chainingKey = outputs[0]
        mixHash(outputs[1])
        cipherState = CipherState(cipher: cipherState.cipher, key: outputs[2])
    }

    mutating func encryptAndHash(_ plaintext: [UInt8]) throws(NoiseError) -> [UInt8] {
        let ciphertext = try cipherState.encrypt(ad: handshakeHash, plaintext)
        mixHash(ciphertext)
        return ciphertext
    }

    mutating func decryptAndHash(_ ciphertext: [UInt8]) throws(NoiseError) -> [UInt8] {
        let plaintext = try cipherState.decrypt(ad: handshakeHash, ciphertext)
        mixHash(ciphertext)
        return plaintext
    }

    func exportKey(label: [UInt8]) -> [UInt8] { Self.hkdf(chainingKey, label, outputs: 2)[1] }

    /// Split(): the initiator-to-responder and responder-to-initiator cipher states.
    func split() -> (CipherState, CipherState) {
        let outputs = Self.hkdf(chainingKey, [], outputs: 2)
        return (
            CipherState(cipher: cipherState.cipher, key: outputs[0]),
            CipherState(cipher: cipherState.cipher, key: outputs[1])
        )
    }
}
