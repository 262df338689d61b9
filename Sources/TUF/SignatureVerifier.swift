import CCryptoBoringSSL
import Crypto
import _CryptoExtras

/// Verifies one TUF signature (TUF §4.2, §4.3 KEY formats as securesystemslib defines them):
///
/// | keytype                                   | scheme                 | public key        | signature      |
/// |-------------------------------------------|------------------------|-------------------|----------------|
/// | `ed25519`                                 | `ed25519`              | 32-byte hex       | 64-byte hex    |
/// | `ecdsa`, `ecdsa-sha2-nistp256`            | `ecdsa-sha2-nistp256`  | PEM SPKI          | DER hex        |
/// | `ecdsa`, `ecdsa-sha2-nistp384`            | `ecdsa-sha2-nistp384`  | PEM SPKI          | DER hex        |
/// | `rsa`                                     | `rsassa-pss-sha256`    | PEM SPKI          | hex, any salt  |
/// | `rsa`                                     | `rsa-pkcs1v15-sha256`  | PEM SPKI          | hex            |
public enum SignatureVerifier {
    /// Returns whether `signature` (hex, as in metadata) is valid for `data` under `key`.
    /// Throws `unsupportedKey` when the key itself cannot be used; a malformed or wrong
    /// signature simply returns `false`.
    public static func isValid(key: Key, signatureHex: String, data: [UInt8]) throws(TUFError) -> Bool {
        guard let publicValue = key.publicValue else { throw TUFError(.unsupportedKey, "keyval has no public value") }
        guard let sig = hexDecode(signatureHex) else { return false }
        switch (key.keytype, key.scheme) {
        case ("ed25519", "ed25519"):
            guard let raw = hexDecode(publicValue), raw.count == 32,
                let pk = try? Curve25519.Signing.PublicKey(rawRepresentation: raw)
            else { throw TUFError(.unsupportedKey, "invalid ed25519 public key") }
            return pk.isValidSignature(sig, for: data)
        case ("ecdsa", "ecdsa-sha2-nistp256"), ("ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256"):
            if let point = namedCurvePoint(publicValue, prefix: p256Prefix, pointBytes: 65) {
                guard let valid = P256Direct.isValid(point: point, derSignature: sig, message: data) else {
                    throw TUFError(.unsupportedKey, "invalid P-256 public key")
                }
                return valid
            }
            guard let pk = p256Key(publicValue) else { throw TUFError(.unsupportedKey, "invalid P-256 public key") }
            guard let s = try? P256.Signing.ECDSASignature(derRepresentation: sig) else { return false }
            return pk.isValidSignature(s, for: data)
        case ("ecdsa", "ecdsa-sha2-nistp384"), ("ecdsa-sha2-nistp384", "ecdsa-sha2-nistp384"):
            guard let pk = p384Key(publicValue) else { throw TUFError(.unsupportedKey, "invalid P-384 public key") }
            guard let s = try? P384.Signing.ECDSASignature(derRepresentation: sig) else { return false }
            return pk.isValidSignature(s, for: data)
        case ("rsa", "rsassa-pss-sha256"):
            let pk = try rsaKey(publicValue)
            return RSAPSS.verifyAnySaltLength(spkiDER: Array(pk.derRepresentation), message: data, signature: sig)
        case ("rsa", "rsa-pkcs1v15-sha256"):
            let pk = try rsaKey(publicValue)
            return pk.isValidSignature(
                _RSA.Signing.RSASignature(rawRepresentation: sig),
                for: data,
                padding: .insecurePKCS1v1_5
            )
        default:
            throw TUFError(.unsupportedKey, "unsupported keytype/scheme \(key.keytype)/\(key.scheme)")
        }
    }

    /// The key itself, whatever its spelling: raw Ed25519 bytes, or the SubjectPublicKeyInfo DER of an ECDSA or RSA
    /// key, tagged with the algorithm family (`ecdsa` and `ecdsa-sha2-nistp256` name one family). Hex in either case
    /// and PEM with any line wrapping give the same value, so one key listed twice in other spellings is one key
    /// (TUF §4.3: each key contributes one signature toward a threshold). Nil when the key cannot be used.
    public static func material(of key: Key) -> [UInt8]? {
        guard let publicValue = key.publicValue else { return nil }
        switch (key.keytype, key.scheme) {
        case ("ed25519", "ed25519"):
            guard let raw = hexDecode(publicValue), raw.count == 32 else { return nil }
            return Array("ed25519:".utf8) + raw
        case ("ecdsa", "ecdsa-sha2-nistp256"), ("ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256"):
            // The canonical SPKI as it was sent (whether the point is on the curve is `isValid`'s to find out).
            if let point = namedCurvePoint(publicValue, prefix: p256Prefix, pointBytes: 65) {
                return Array("ecdsa:".utf8) + p256Prefix + point
            }
            guard let pk = p256Key(publicValue) else { return nil }
            return Array("ecdsa:".utf8) + Array(pk.derRepresentation)
        case ("ecdsa", "ecdsa-sha2-nistp384"), ("ecdsa-sha2-nistp384", "ecdsa-sha2-nistp384"):
            if let point = namedCurvePoint(publicValue, prefix: p384Prefix, pointBytes: 97) {
                return Array("ecdsa:".utf8) + p384Prefix + point
            }
            guard let pk = p384Key(publicValue) else { return nil }
            return Array("ecdsa:".utf8) + Array(pk.derRepresentation)
        case ("rsa", "rsassa-pss-sha256"), ("rsa", "rsa-pkcs1v15-sha256"):
            guard let pk = try? _RSA.Signing.PublicKey(pemRepresentation: publicValue) else { return nil }
            return Array("rsa:".utf8) + Array(pk.derRepresentation)
        default:
            return nil
        }
    }

    /// The SubjectPublicKeyInfo prefixes of a named-curve ECDSA key with an uncompressed point (RFC 5480 §2): what
    /// securesystemslib and every signer here write. Such a key is read from its point directly; anything else goes
    /// through swift-crypto's general PEM and DER reader.
    static let p256Prefix: [UInt8] = [
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01, 0x06, 0x08, 0x2A, 0x86, 0x48,
        0xCE, 0x3D, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ]
    static let p384Prefix: [UInt8] = [
        0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01, 0x06, 0x05, 0x2B, 0x81, 0x04,
        0x00, 0x22, 0x03, 0x62, 0x00,
    ]

    static func p256Key(_ pem: String) -> P256.Signing.PublicKey? {
        if let point = namedCurvePoint(pem, prefix: p256Prefix, pointBytes: 65),
            let key = try? P256.Signing.PublicKey(x963Representation: point)
        {
            return key
        }
        return try? P256.Signing.PublicKey(pemRepresentation: pem)
    }

    static func p384Key(_ pem: String) -> P384.Signing.PublicKey? {
        if let point = namedCurvePoint(pem, prefix: p384Prefix, pointBytes: 97),
            let key = try? P384.Signing.PublicKey(x963Representation: point)
        {
            return key
        }
        return try? P384.Signing.PublicKey(pemRepresentation: pem)
    }

    /// The uncompressed point of a `PUBLIC KEY` PEM block (RFC 7468 §13) whose DER is `prefix` followed by the point;
    /// nil for anything else. The base64 is decoded by BoringSSL; the point is checked on the curve by the caller
    /// (`EC_KEY_oct2key` in `P256Direct`, the `x963Representation` initializers otherwise).
    static func namedCurvePoint(_ pem: String, prefix: [UInt8], pointBytes: Int) -> ArraySlice<UInt8>? {
        let begin = "-----BEGIN PUBLIC KEY-----"
        let end = "-----END PUBLIC KEY-----"
        var text = Array(pem.utf8)[...]
        while let last = text.last, last == 0x0A || last == 0x0D || last == 0x20 { text = text.dropLast() }
        guard text.starts(with: begin.utf8), text.reversed().starts(with: end.utf8.reversed()),
            text.count > begin.utf8.count + end.utf8.count
        else { return nil }
        let base64 = text.dropFirst(begin.utf8.count).dropLast(end.utf8.count).filter { $0 != 0x0A && $0 != 0x0D }
        var capacity = 0
        guard CCryptoBoringSSL_EVP_DecodedLength(&capacity, base64.count) == 1, capacity <= 512 else { return nil }
        var der = [UInt8](repeating: 0, count: capacity)
        var length = 0
        let decoded = base64.withUnsafeBufferPointer { input in
            der.withUnsafeMutableBufferPointer { out in
                CCryptoBoringSSL_EVP_DecodeBase64(out.baseAddress, &length, out.count, input.baseAddress, input.count)
            }
        }
        guard decoded == 1, length == prefix.count + pointBytes, der.starts(with: prefix), der[prefix.count] == 0x04
        else { return nil }
        return der[prefix.count..<length]
    }

    private static func rsaKey(_ pem: String) throws(TUFError) -> _RSA.Signing.PublicKey {
        do {
            return try _RSA.Signing.PublicKey(pemRepresentation: pem)
        } catch {
            throw TUFError(.unsupportedKey, "invalid RSA public key")
        }
    }
}

/// ECDSA P-256 with SHA-256 (FIPS 186-5) over BoringSSL's C API, the code swift-crypto calls, for a key given by its
/// uncompressed point: swift-crypto's generic layers (its DER reader over `ArraySlice`, `Data`, hashing generic over
/// `DataProtocol`) each cost a process that verifies a handful of files a scan of the runtime's conformance records
/// on first use. `ECDSA_verify` takes the signature as strict DER (no trailing bytes, minimal integers, as swift-crypto's
/// reader) and refuses r or s outside [1, n-1].
enum P256Direct {
    /// Nil when the key cannot be made (the point is not on the curve, or no memory); otherwise whether the signature
    /// is valid.
    static func isValid(point: ArraySlice<UInt8>, derSignature: [UInt8], message: [UInt8]) -> Bool? {
        defer { CCryptoBoringSSL_ERR_clear_error() }
        guard let key = CCryptoBoringSSL_EC_KEY_new_by_curve_name(NID_X9_62_prime256v1) else { return nil }
        defer { CCryptoBoringSSL_EC_KEY_free(key) }
        let onCurve = point.withUnsafeBufferPointer {
            CCryptoBoringSSL_EC_KEY_oct2key(key, $0.baseAddress, $0.count, nil) == 1
        }
        guard onCurve else { return nil }
        var digest = [UInt8](repeating: 0, count: 32)
        message.withUnsafeBufferPointer { m in
            digest.withUnsafeMutableBufferPointer {
                _ = CCryptoBoringSSL_SHA256(m.baseAddress, m.count, $0.baseAddress)
            }
        }
        return derSignature.withUnsafeBufferPointer { s in
            CCryptoBoringSSL_ECDSA_verify(0, digest, digest.count, s.baseAddress, s.count, key) == 1
        }
    }
}

/// RSASSA-PSS verification that accepts any salt length.
///
/// swift-crypto's `_RSA.Signing.PublicKey.isValidSignature(_:for:padding: .PSS)` passes the
/// digest length as the expected salt length, but securesystemslib verifies with
/// `PSS.AUTO` and signers may use the maximum salt length. BoringSSL's
/// `RSA_verify_pss_mgf1` with `RSA_PSS_SALTLEN_AUTO` (-2) recovers the salt length from the
/// signature, which is the same acceptance rule.
enum RSAPSS {
    static func verifyAnySaltLength(spkiDER: [UInt8], message: [UInt8], signature: [UInt8]) -> Bool {
        let digest = Array(SHA256.hash(data: message))
        defer { CCryptoBoringSSL_ERR_clear_error() }
        return spkiDER.withUnsafeBufferPointer { der -> Bool in
            var cursor: UnsafePointer<UInt8>? = der.baseAddress
            guard let pkey = CCryptoBoringSSL_d2i_PUBKEY(nil, &cursor, der.count) else { return false }
            defer { CCryptoBoringSSL_EVP_PKEY_free(pkey) }
            guard let rsa = CCryptoBoringSSL_EVP_PKEY_get0_RSA(pkey) else { return false }
            return digest.withUnsafeBufferPointer { d in
                signature.withUnsafeBufferPointer { s in
                    CCryptoBoringSSL_RSA_verify_pss_mgf1(
                        rsa,
                        d.baseAddress,
                        d.count,
                        CCryptoBoringSSL_EVP_sha256(),
                        nil,
                        -2,
                        s.baseAddress,
                        s.count
                    ) == 1
                }
            }
        }
    }
}

/// Byte strings seen: a list searched while short; past 16 a hashed set (a delegator may set a threshold of
/// thousands). The set is boxed, created only then: a `Set<[UInt8]>` met on every path (even empty, even to destroy it)
/// costs the process a scan of the runtime's conformance records, for `[UInt8]: Hashable`, on first use.
struct SeenBytes {
    private var list: [[UInt8]] = []
    private var hashed: Hashed?

    private final class Hashed {
        var set: Set<[UInt8]>
        init(_ list: [[UInt8]]) { set = Set(list) }
    }

    var count: Int { hashed?.set.count ?? list.count }

    func contains(_ bytes: [UInt8]) -> Bool { hashed?.set.contains(bytes) ?? list.contains(bytes) }

    /// Not copied while in use (a local of one function), so the box is never shared.
    mutating func insert(_ bytes: [UInt8]) {
        if let hashed {
            hashed.set.insert(bytes)
        } else {
            list.append(bytes)
            if list.count > 16 {
                hashed = Hashed(list)
                list = []
            }
        }
    }
}

/// TUF §5.3.4 / §5.4.2 / §5.5.3 / §5.6.3 threshold check.
public enum Threshold {
    /// Counts each distinct trusted keyid at most once: a keyid in `keyids` counts when `keys`
    /// has its key and `signatures` has a valid signature by it. Keys that cannot be used and
    /// invalid signatures do not count, so metadata with extra bad signatures still verifies
    /// when enough good ones are present.
    public static func verify(
        signedBytes: [UInt8],
        signatures: [Signature],
        keyids: [String],
        threshold: Int64,
        keys: [String: Key],
        role: String,
        policy: KeyPolicy = .any
    ) throws(TUFError) {
        // Keyids compare by their bytes. The signatures, sorted by keyid, are searched by halving: no hashing (a hashed
        // table keyed by bytes costs the process a scan of the runtime's conformance records on first use), and a long
        // list (an attacker's) costs n log n.
        let byKeyid = signatures.map { (id: Array($0.keyid.utf8), signature: $0) }
            .sorted { $0.id.lexicographicallyPrecedes($1.id) }
        for i in byKeyid.indices.dropFirst() where byKeyid[i].id == byKeyid[i - 1].id {
            throw TUFError(.invalidMetadata, "duplicate keyid in signatures")
        }
        func signature(by id: [UInt8]) -> Signature? {
            var low = 0
            var high = byKeyid.count
            while low < high {
                let middle = (low + high) / 2
                if byKeyid[middle].id.lexicographicallyPrecedes(id) { low = middle + 1 } else { high = middle }
            }
            return low < byKeyid.count && byKeyid[low].id == id ? byKeyid[low].signature : nil
        }
        // Counting stops at the threshold, so these stay as short as it is.
        var counted = SeenBytes()
        // TUF §4.3: each key contributes one signature. Keyids are not recomputed, so the same key listed under two
        // keyids (in the same or another spelling: hex case, keytype alias, PEM wrapping) would count twice: count
        // the parsed key material once too.
        var countedKeys = SeenBytes()
        var excluded = 0
        for keyid in keyids where counted.count < threshold {
            let id = Array(keyid.utf8)
            guard !counted.contains(id), let key = keys[keyid], let sig = signature(by: id),
                let material = SignatureVerifier.material(of: key)
            else { continue }
            guard policy.allows(key) else {
                excluded += 1
                continue
            }
            guard !countedKeys.contains(material) else { continue }
            if (try? SignatureVerifier.isValid(key: key, signatureHex: sig.sig, data: signedBytes)) == true {
                counted.insert(id)
                countedKeys.insert(material)
            }
        }
        guard counted.count >= threshold else {
            throw TUFError(
                .thresholdNotReached,
                "\(role): \(counted.count) of \(threshold) required signatures are valid"
                    + (excluded > 0 ? " (\(excluded) by keys outside \(policy.name) not counted)" : "")
            )
        }
    }
}
