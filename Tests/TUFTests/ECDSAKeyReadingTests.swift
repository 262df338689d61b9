import Crypto
import Foundation
import JSON
import Testing

@testable import TUF

/// Named-curve ECDSA keys are read from their point without swift-crypto's general PEM reader; both ways must give
/// the same key, and what the short way cannot read must still go the long way or be refused.
@Suite struct ECDSAKeyReadingTests {
    @Test func theShortWayReadsTheSameKeys() throws {
        for _ in 0..<20 {
            let p256 = P256.Signing.PrivateKey().publicKey
            #expect(
                SignatureVerifier.namedCurvePoint(
                    p256.pemRepresentation, prefix: SignatureVerifier.p256Prefix, pointBytes: 65) != nil)
            #expect(SignatureVerifier.p256Key(p256.pemRepresentation)?.rawRepresentation == p256.rawRepresentation)
            let p384 = P384.Signing.PrivateKey().publicKey
            #expect(
                SignatureVerifier.namedCurvePoint(
                    p384.pemRepresentation, prefix: SignatureVerifier.p384Prefix, pointBytes: 97) != nil)
            #expect(SignatureVerifier.p384Key(p384.pemRepresentation)?.rawRepresentation == p384.rawRepresentation)
            // A P-384 key is not a P-256 key, either way.
            #expect(SignatureVerifier.p256Key(p384.pemRepresentation) == nil)
        }
    }

    @Test func aPointOffTheCurveIsRefused() {
        var der = SignatureVerifier.p256Prefix + [0x04] + [UInt8](repeating: 0x01, count: 64)
        let pem = { (der: [UInt8]) in
            "-----BEGIN PUBLIC KEY-----\n\(Data(der).base64EncodedString())\n-----END PUBLIC KEY-----\n"
        }
        #expect(
            SignatureVerifier.namedCurvePoint(pem(der), prefix: SignatureVerifier.p256Prefix, pointBytes: 65) != nil)
        #expect(SignatureVerifier.p256Key(pem(der)) == nil)
        der[SignatureVerifier.p256Prefix.count] = 0x02  // a compressed-point tag with the uncompressed length
        #expect(SignatureVerifier.p256Key(pem(der)) == nil)
    }

    @Test(arguments: [
        "", "-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----",
        "-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----", "not a key",
    ])
    func malformedPEMIsRefused(_ pem: String) {
        #expect(SignatureVerifier.p256Key(pem) == nil)
        #expect(SignatureVerifier.p384Key(pem) == nil)
    }
}

extension ECDSAKeyReadingTests {
    /// The short way's key material (what makes two spellings of one key count once) is the DER swift-crypto writes.
    @Test func keyMaterialIsTheCanonicalDER() throws {
        for _ in 0..<10 {
            let p256 = P256.Signing.PrivateKey().publicKey
            let p384 = P384.Signing.PrivateKey().publicKey
            let cases = [
                ("ecdsa-sha2-nistp256", p256.pemRepresentation, p256.derRepresentation),
                ("ecdsa-sha2-nistp384", p384.pemRepresentation, p384.derRepresentation),
            ]
            for (scheme, pem, der) in cases {
                let key = try Key(
                    json: JSONObject(members: [
                        ("keytype", .string("ecdsa")), ("scheme", .string(scheme)),
                        ("keyval", .object(try JSONObject(members: [("public", .string(pem))]))),
                    ]))
                #expect(SignatureVerifier.material(of: key) == Array("ecdsa:".utf8) + Array(der))
            }
        }
    }
}
