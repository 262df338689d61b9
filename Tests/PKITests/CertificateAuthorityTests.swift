import Core
import Crypto
import Foundation
import PKI
import SwiftASN1
import Testing
import X509

@Suite struct CertificateAuthorityTests {
    let now = Date()
    let device = Identity.device(try! DeviceID("sensor-1"))

    func csr(key: P256.Signing.PrivateKey, extensions: Certificate.Extensions = .init()) throws
        -> CertificateSigningRequest
    {
        try CertificateSigningRequest(
            version: .v1, subject: try DistinguishedName { CommonName("whatever the device says") },
            privateKey: Certificate.PrivateKey(key),
            attributes: CertificateSigningRequest.Attributes([.init(ExtensionRequest(extensions: extensions))]),
            signatureAlgorithm: .ecdsaWithSHA256)
    }

    @Test func issuesALeafForClientAuthNamingOnlyTheIdentity() throws {
        let ca = try CertificateAuthority.create(commonName: "test CA", now: now)
        let key = P256.Signing.PrivateKey()
        let certificate = try ca.issueClientCertificate(for: device, csr: try csr(key: key), now: now, days: 30)
        #expect(certificate.publicKey == Certificate.PublicKey(key.publicKey))
        #expect(certificate.bulwarkIdentity == device)
        #expect(try certificate.extensions.basicConstraints == .notCertificateAuthority)
        #expect(try certificate.extensions.extendedKeyUsage == ExtendedKeyUsage([.clientAuth]))
        #expect(
            try certificate.extensions.subjectAlternativeNames
                == SubjectAlternativeNames([
                    .uniformResourceIdentifier("urn:bulwark:device:sensor-1")
                ]))
        #expect(ca.certificate.publicKey.isValidSignature(certificate.signature, for: certificate))
    }

    /// RFC 5280 §4.1.2.2: a positive serial of at most 20 octets. Random 20-byte serials with the top bit set used to
    /// come out as 21 DER octets about half the time (white-box review finding 5); read back from the DER of many
    /// issued certificates.
    @Test func serialsArePositiveAndAtMostTwentyOctetsInDER() throws {
        let ca = try CertificateAuthority.create(commonName: "test CA", now: now)
        let request = try csr(key: P256.Signing.PrivateKey())
        var serials = Set<[UInt8]>()
        for _ in 0..<500 {
            let certificate = try ca.issueClientCertificate(for: device, csr: request, now: now, days: 30)
            // TBSCertificate ::= SEQUENCE { [0] version, serialNumber INTEGER, ... }: read the INTEGER's octets.
            let der = certificate.derBytes
            let root = try DER.parse(der)
            guard case .constructed(let outer) = root.content, let tbs = outer.first(where: { _ in true }),
                case .constructed(let fields) = tbs.content
            else { throw PKIError(.issuance, "unexpected certificate structure") }
            var iterator = fields.makeIterator()
            _ = iterator.next()  // version
            guard let serialNode = iterator.next(), serialNode.identifier == .integer,
                case .primitive(let octets) = serialNode.content
            else { throw PKIError(.issuance, "no serial INTEGER") }
            #expect(octets.count <= 20, "serial of \(octets.count) octets")
            #expect(octets.first.map { $0 & 0x80 == 0 } == true, "serial is positive")
            #expect(octets.first != 0, "minimal encoding")
            serials.insert(Array(octets))
        }
        #expect(serials.count == 500)
        #expect(ca.certificate.serialNumber.bytes.count <= 20)
    }

    @Test func refusesACSRWhoseSignatureIsNotByItsKey() throws {
        let ca = try CertificateAuthority.create(commonName: "test CA", now: now)
        let signed = try csr(key: P256.Signing.PrivateKey())
        let other = P256.Signing.PrivateKey()
        let forged = try CertificateSigningRequest(
            version: signed.version, subject: signed.subject, publicKey: Certificate.PublicKey(other.publicKey),
            attributes: signed.attributes, signatureAlgorithm: signed.signatureAlgorithm, signature: signed.signature)
        #expect(throws: PKIError(.badCSRSignature, "")) {
            try ca.issueClientCertificate(for: device, csr: forged, now: now, days: 30)
        }
    }

    @Test func ignoresEverythingTheCSRAsksFor() throws {
        let ca = try CertificateAuthority.create(commonName: "test CA", now: now)
        let greedy = try csr(
            key: P256.Signing.PrivateKey(),
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: nil))
                KeyUsage(keyCertSign: true)
                try ExtendedKeyUsage([.serverAuth, .codeSigning])
                SubjectAlternativeNames([.uniformResourceIdentifier("urn:bulwark:operator:root"), .dnsName("evil")])
            })
        let certificate = try ca.issueClientCertificate(for: device, csr: greedy, now: now, days: 30)
        #expect(try certificate.extensions.basicConstraints == .notCertificateAuthority)
        #expect(try certificate.extensions.keyUsage == KeyUsage(digitalSignature: true))
        #expect(try certificate.extensions.extendedKeyUsage == ExtendedKeyUsage([.clientAuth]))
        #expect(certificate.bulwarkIdentity == device)
    }

    @Test func refusesKeysOtherThanP256AndP384() throws {
        let ca = try CertificateAuthority.create(commonName: "test CA", now: now)
        let request = try CertificateSigningRequest(
            version: .v1, subject: try DistinguishedName { CommonName("x") },
            privateKey: Certificate.PrivateKey(Curve25519.Signing.PrivateKey()),
            attributes: CertificateSigningRequest.Attributes(), signatureAlgorithm: .ed25519)
        #expect(throws: PKIError(.unsupportedKey, "")) {
            try ca.issueClientCertificate(for: device, csr: request, now: now, days: 30)
        }
    }

    @Test(arguments: [0, 398, -1])
    func refusesValidityOutsideOneTo397Days(_ days: Int) throws {
        let ca = try CertificateAuthority.create(commonName: "test CA", now: now)
        #expect(throws: PKIError(.invalidRequest, "")) {
            try ca.issueClientCertificate(
                for: device, csr: try csr(key: P256.Signing.PrivateKey()), now: now, days: days)
        }
    }

    @Test func refusesGarbageCSRBytes() {
        #expect(throws: PKIError(.malformed, "")) { try CertificateSigningRequest.parse(Array("hello".utf8)) }
        #expect(throws: PKIError(.malformed, "")) {
            try CertificateSigningRequest.parse(Array("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n".utf8))
        }
    }

    @Test func pinIsBase64SHA256OfSPKI() throws {
        let key = P256.Signing.PrivateKey()
        let expected = Data(SHA256.hash(data: key.publicKey.derRepresentation)).base64EncodedString()
        #expect(Certificate.PublicKey(key.publicKey).pinSHA256 == expected)
    }

    @Test func certificateNamingTwoIdentitiesNamesNone() throws {
        let ca = try CertificateAuthority.create(commonName: "test CA", now: now)
        let key = P256.Signing.PrivateKey()
        let name = try DistinguishedName { CommonName("x") }
        let twoNames = try Certificate(
            version: .v3, serialNumber: .init(), publicKey: .init(key.publicKey), notValidBefore: now,
            notValidAfter: now + 3600, issuer: ca.certificate.subject, subject: name,
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                SubjectAlternativeNames([
                    .uniformResourceIdentifier("urn:bulwark:device:a"),
                    .uniformResourceIdentifier("urn:bulwark:device:b"),
                ])
            }, issuerPrivateKey: .init(key))
        #expect(twoNames.bulwarkIdentity == nil)
    }
}
