import Core
import Crypto
import Foundation
import PKI
import SwiftASN1
import Testing
import X509

@Suite struct CertificateRevocationListTests {
    let now = Date(timeIntervalSince1970: 1_800_000_000.75)
    let device = Identity.device(try! DeviceID("sensor-1"))

    func csr() throws -> CertificateSigningRequest {
        try CertificateSigningRequest(
            version: .v1, subject: try DistinguishedName { CommonName("x") },
            privateKey: Certificate.PrivateKey(P256.Signing.PrivateKey()),
            attributes: CertificateSigningRequest.Attributes(), signatureAlgorithm: .ecdsaWithSHA256)
    }

    /// The children of TBSCertList, read with SwiftASN1 alone (not with the type under test).
    func tbsFields(_ der: [UInt8]) throws -> [ASN1Node] {
        let root = try DER.parse(der)
        guard case .constructed(let outer) = root.content, let tbs = Array(outer).first,
            case .constructed(let fields) = tbs.content
        else { throw PKIError(.malformed, "not a SEQUENCE of SEQUENCE") }
        return Array(fields)
    }

    @Test func roundTripsEveryFieldAndVerifiesWithTheCAKey() throws {
        let ca = try CertificateAuthority.create(commonName: "test CA", now: now)
        let revoked = try ca.issueClientCertificate(for: device, csr: try csr(), now: now, days: 30)
        let held = try ca.issueClientCertificate(for: device, csr: try csr(), now: now, days: 30)
        let crl = try ca.issueRevocationList(
            entries: [
                .init(serialNumber: revoked.serialNumber, revocationDate: now - 60),
                .init(serialNumber: held.serialNumber, revocationDate: now - 30, reason: .certificateHold),
            ], number: 42, thisUpdate: now, nextUpdate: now + 7 * 86400)

        for parsed in [try CertificateRevocationList(derEncoded: crl.derBytes), try .init(pemEncoded: crl.pem)] {
            #expect(parsed == crl)
            #expect(parsed.issuer == ca.certificate.subject)
            #expect(parsed.number == 42)
            // Whole seconds in the encoding (RFC 5280 §5.1.2.4).
            #expect(parsed.thisUpdate == Date(timeIntervalSince1970: 1_800_000_000))
            #expect(parsed.nextUpdate == Date(timeIntervalSince1970: 1_800_000_000 + 7 * 86400))
            #expect(
                try parsed.authorityKeyIdentifier
                    == ca.certificate.extensions.subjectKeyIdentifier.map { Array($0.keyIdentifier) })
            #expect(parsed.lists(revoked.serialNumber) && parsed.lists(held.serialNumber))
            #expect(!parsed.lists(ca.certificate.serialNumber))
            #expect(Set(parsed.entries.map(\.reason)) == [nil, .certificateHold])
            #expect(parsed.isSignatureValid(for: ca.certificate.publicKey))
        }
        #expect(crl.pem.hasPrefix("-----BEGIN X509 CRL-----\n"))
        let other = try CertificateAuthority.create(commonName: "test CA", now: now)
        #expect(!crl.isSignatureValid(for: other.certificate.publicKey))
    }

    @Test func aChangedByteInTheSignedPartBreaksTheSignature() throws {
        let ca = try CertificateAuthority.create(commonName: "test CA", now: now)
        let crl = try ca.issueRevocationList(
            entries: [.init(serialNumber: .positive20Octets(), revocationDate: now)], number: 7, thisUpdate: now,
            nextUpdate: now + 86400)
        var bytes = crl.derBytes
        // The CRL number's extension value, OCTET STRING { INTEGER 7 }, inside the signed part: 7 becomes 6.
        let pattern: [UInt8] = [0x04, 0x03, 0x02, 0x01, 0x07]
        let start = try #require(
            bytes.indices.dropLast(pattern.count).first { Array(bytes[$0..<($0 + pattern.count)]) == pattern })
        #expect(start < crl.tbsBytes.count + 4)
        bytes[start + 4] = 0x06
        let tampered = try CertificateRevocationList(derEncoded: bytes)
        #expect(tampered.number == 6)
        #expect(!tampered.isSignatureValid(for: ca.certificate.publicKey))
    }

    /// RFC 5280 §5.1: version v2, ecdsa-with-SHA256 in TBSCertList and outside it, and an empty list left out
    /// (§5.1.2.6), so the TBSCertList holds version, signature, issuer, thisUpdate, nextUpdate and crlExtensions.
    @Test func anEmptyCRLLeavesTheListOutAndIsVersion2() throws {
        let ca = try CertificateAuthority.create(commonName: "test CA", now: now)
        let crl = try ca.issueRevocationList(entries: [], number: 1, thisUpdate: now, nextUpdate: now + 86400)
        let fields = try tbsFields(crl.derBytes)
        #expect(fields.map(\.identifier.tagNumber) == [2, 16, 16, 23, 23, 0])
        #expect(try Int(derEncoded: fields[0]) == 1)
        let algorithm = try DER.sequence(fields[1], identifier: .sequence) { try ASN1ObjectIdentifier(derEncoded: &$0) }
        #expect(algorithm == [1, 2, 840, 10045, 4, 3, 2])
        #expect(crl.entries.isEmpty)
        #expect(crl.isSignatureValid(for: ca.certificate.publicKey))
    }

    /// §4.1.2.5 (by §5.1.2.4): UTCTime through 2049, GeneralizedTime from 2050.
    @Test func datesThrough2049AreUTCTimeAndLaterOnesGeneralizedTime() throws {
        let ca = try CertificateAuthority.create(commonName: "test CA", now: now)
        let lastUTC = Date(timeIntervalSince1970: 2_524_607_999)  // 2049-12-31T23:59:59Z
        let crl = try ca.issueRevocationList(
            entries: [.init(serialNumber: .positive20Octets(), revocationDate: lastUTC)], number: 1,
            thisUpdate: lastUTC, nextUpdate: lastUTC + 1)
        let fields = try tbsFields(crl.derBytes)
        #expect(fields[3].identifier == .utcTime)
        #expect(fields[4].identifier == .generalizedTime)
        #expect(crl.thisUpdate == lastUTC && crl.nextUpdate == lastUTC + 1)
        #expect(crl.entries.first?.revocationDate == lastUTC)
    }

    @Test func refusesANextUpdateThatDoesNotFollowThisUpdate() throws {
        let ca = try CertificateAuthority.create(commonName: "test CA", now: now)
        #expect(throws: PKIError(.invalidRequest, "")) {
            try ca.issueRevocationList(entries: [], number: 1, thisUpdate: now, nextUpdate: now)
        }
    }

    @Test func refusesGarbageAndOtherPEMLabels() throws {
        let ca = try CertificateAuthority.create(commonName: "test CA", now: now)
        #expect(throws: PKIError(.malformed, "")) { try CertificateRevocationList(derEncoded: [0x30, 0x00]) }
        #expect(throws: PKIError(.malformed, "")) { try CertificateRevocationList(pemEncoded: ca.certificate.pem) }
        #expect(throws: PKIError(.malformed, "")) { try CertificateRevocationList(derEncoded: ca.certificate.derBytes) }
    }

    /// RFC 5280 §4.2.1.13: one DistributionPoint whose fullName is the URI, non-critical, in every certificate the
    /// CA issues and not in the CA's own.
    @Test func issuedCertificatesNameTheDistributionPoint() throws {
        var ca = try CertificateAuthority.create(commonName: "test CA", now: now)
        let without = try ca.issueClientCertificate(for: device, csr: try csr(), now: now, days: 30)
        #expect(try without.extensions.crlDistributionPoints == nil)

        ca.crlDistributionPoints = try CRLDistributionPoints(uri: "http://hub.example:8080/crl")
        let client = try ca.issueClientCertificate(for: device, csr: try csr(), now: now, days: 30)
        let server = try ca.issueServerCertificate(
            publicKey: P256.Signing.PrivateKey().publicKey, dnsNames: ["hub.example"], ipAddresses: [], now: now)
        for certificate in [client, server] {
            #expect(try certificate.extensions.crlDistributionPoints?.uris == ["http://hub.example:8080/crl"])
            let ext = try #require(certificate.extensions[oid: [2, 5, 29, 31]])
            #expect(!ext.critical)
            // SEQUENCE { SEQUENCE { [0] { [0] { [6] "http://…" } } } }, as openssl and RFC 5280's examples write it.
            let uri = Array("http://hub.example:8080/crl".utf8)
            let n = UInt8(uri.count)
            #expect(Array(ext.value) == [0x30, n + 8, 0x30, n + 6, 0xA0, n + 4, 0xA0, n + 2, 0x86, n] + uri)
        }
        #expect(try ca.certificate.extensions.crlDistributionPoints == nil)
    }

    @Test(arguments: ["ftp://hub/crl", "http://hub/c rl", "http://hüb/crl", "hub/crl", ""])
    func refusesDistributionPointsThatAreNotHTTPURLsOfPrintableASCII(_ uri: String) {
        #expect(throws: PKIError(.invalidRequest, "")) { try CRLDistributionPoints(uri: uri) }
    }
}
