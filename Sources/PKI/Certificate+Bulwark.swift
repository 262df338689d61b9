public import Core
public import Crypto
import Foundation
import SwiftASN1
public import X509

extension Certificate.PublicKey {
    /// DER of the SubjectPublicKeyInfo (RFC 5280 §4.1.2.7), the input of `pin-sha256` (RFC 7469 §2.4).
    public var subjectPublicKeyInfoBytes: [UInt8] {
        var serializer = DER.Serializer()
        // Serializing an already-parsed public key cannot fail; an empty result would only make pins not match.
        try? serializer.serialize(self)
        return serializer.serializedBytes
    }

    /// `pin-sha256` value: base64 of SHA-256 over the SPKI DER (RFC 7469 §2.4).
    public var pinSHA256: String {
        Data(SHA256.hash(data: subjectPublicKeyInfoBytes)).base64EncodedString()
    }

    /// Lowercase hex SHA-256 of the SPKI DER, as stored in the certificates table.
    public var spkiSHA256Hex: String {
        SHA256.hash(data: subjectPublicKeyInfoBytes).map { String(format: "%02x", $0) }.joined()
    }
}

extension Certificate {
    /// The Bulwark identity named by the certificate's SAN URI. Exactly one Bulwark URI must be present: a
    /// certificate naming two identities names none.
    public var bulwarkIdentity: Identity? {
        guard let names = try? extensions.subjectAlternativeNames else { return nil }
        var found: [Identity] = []
        for name in names {
            if case .uniformResourceIdentifier(let uri) = name, let identity = Identity(uri: uri) {
                found.append(identity)
            }
        }
        return found.count == 1 ? found[0] : nil
    }

    /// Serial number as lowercase hex, the key of the certificates table and of the revocation set.
    public var serialHex: String {
        serialNumber.bytes.map { String(format: "%02x", $0) }.joined()
    }

    public var derBytes: [UInt8] {
        var serializer = DER.Serializer()
        try? serializer.serialize(self)
        return serializer.serializedBytes
    }

    public var pem: String {
        (try? serializeAsPEM().pemString) ?? ""
    }
}

extension CertificateSigningRequest {
    /// Parses a PEM or DER PKCS#10 request.
    public static func parse(_ bytes: [UInt8]) throws(PKIError) -> CertificateSigningRequest {
        if let text = String(bytes: bytes, encoding: .utf8), text.contains("-----BEGIN") {
            do { return try CertificateSigningRequest(pemEncoded: text) } catch {
                throw PKIError(.malformed, "CSR PEM does not parse: \(error)")
            }
        }
        do { return try CertificateSigningRequest(derEncoded: bytes) } catch {
            throw PKIError(.malformed, "CSR DER does not parse: \(error)")
        }
    }
}
