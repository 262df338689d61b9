import Core
import Crypto
import Foundation
import FuzzSupport
import PKI
import SwiftASN1
import X509

/// The hub's CSR path: `CertificateSigningRequest.parse` (PEM or DER, as the operator API and pairing receive it),
/// then `CertificateAuthority.issueClientCertificate` (proof of possession, key type, the hub's own extensions) and
/// the pairing check that the CSR key is the P-256 key bound to the handshake. Bit 0 of the first byte picks a device
/// or an operator identity; the rest is the CSR. The CA is made at start (a fresh key each run).
/// Invariants: a parsed CSR serialises to DER that parses to an equal CSR; an issued certificate names exactly the
/// identity asked for, carries the CSR's key, is a clientAuth leaf that is not a CA, and parses back from its DER.
let now = Date(timeIntervalSince1970: 1_800_000_000)
let authority = try! CertificateAuthority.create(commonName: "Bulwark fuzz CA", now: now)
let device = Identity.device(try! DeviceID("dev-fuzz-1"))
let operatorIdentity = Identity.operator(try! OperatorName("alice"))

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = FuzzSupport.bytes(data, size)
    guard let mode = input.first else { return 0 }
    guard let csr = try? CertificateSigningRequest.parse(Array(input.dropFirst())) else { return 0 }
    var serializer = DER.Serializer()
    guard (try? serializer.serialize(csr)) != nil else {
        FuzzSupport.violated("a parsed CSR does not serialise")
    }
    guard let reparsed = try? CertificateSigningRequest(derEncoded: serializer.serializedBytes), reparsed == csr else {
        FuzzSupport.violated("a parsed CSR does not round-trip through DER")
    }
    FuzzSupport.trace("CSR parsed")
    _ = try? csr.attributes.extensionRequest?.extensions.subjectAlternativeNames
    let identity = mode & 1 == 0 ? device : operatorIdentity
    guard let certificate = try? authority.issueClientCertificate(for: identity, csr: csr, now: now, days: 90) else {
        return 0
    }
    FuzzSupport.trace("certificate issued")
    guard csr.publicKey.isValidSignature(csr.signature, for: csr) else {
        FuzzSupport.violated("a certificate was issued for a CSR whose signature does not verify")
    }
    guard certificate.bulwarkIdentity == identity, certificate.publicKey == csr.publicKey,
        (try? certificate.extensions.basicConstraints) != .isCertificateAuthority(maxPathLength: nil),
        (try? certificate.extensions.extendedKeyUsage)?.contains(.clientAuth) == true,
        (try? Certificate(derEncoded: certificate.derBytes)) == certificate
    else { FuzzSupport.violated("the issued certificate does not say what the hub decided") }
    // Pairing: the CSR key must equal the operational key (x963) the device bound to the handshake.
    if let key = P256.Signing.PublicKey(csr.publicKey) {
        guard Certificate.PublicKey(key) == csr.publicKey,
            let again = try? P256.Signing.PublicKey(x963Representation: key.x963Representation),
            Certificate.PublicKey(again) == csr.publicKey
        else { FuzzSupport.violated("the CSR key does not survive the x963 form the pairing uses") }
    }
    return 0
}

@_cdecl("LLVMFuzzerInitialize")
public func initialize(_ argc: FuzzArgc, _ argv: FuzzArgv) -> CInt {
    FuzzSupport.writeSeedsIfRequested {
        var seeds: [[UInt8]] = []
        let p256 = try! P256.Signing.PrivateKey(rawRepresentation: FuzzSupport.testBytes("csr-p256"))
        let p384 = try! P384.Signing.PrivateKey(rawRepresentation: FuzzSupport.testBytes("csr-p384", count: 48))
        let ed = try! Curve25519.Signing.PrivateKey(rawRepresentation: FuzzSupport.testBytes("csr-ed25519"))
        let keys: [(Certificate.PrivateKey, Certificate.SignatureAlgorithm)] = [
            (Certificate.PrivateKey(p256), .ecdsaWithSHA256), (Certificate.PrivateKey(p384), .ecdsaWithSHA384),
            (Certificate.PrivateKey(ed), .ed25519),
        ]
        for (index, (key, algorithm)) in keys.enumerated() {
            let subject = try! DistinguishedName {
                OrganizationName("Bulwark")
                CommonName("device \(index)")
            }
            let extensions = try! Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: nil))
                SubjectAlternativeNames([
                    .uniformResourceIdentifier("urn:bulwark:operator:root"), .dnsName("hub.example"),
                ])
                try ExtendedKeyUsage([.serverAuth, .clientAuth])
            }
            let attributes =
                index == 0
                ? CertificateSigningRequest.Attributes()
                : CertificateSigningRequest.Attributes([try! .init(ExtensionRequest(extensions: extensions))])
            let csr = try! CertificateSigningRequest(
                version: .v1, subject: subject, privateKey: key, attributes: attributes, signatureAlgorithm: algorithm)
            var serializer = DER.Serializer()
            try! serializer.serialize(csr)
            seeds.append([0] + serializer.serializedBytes)
            seeds.append([1] + serializer.serializedBytes)
            seeds.append([0] + Array(try! csr.serializeAsPEM().pemString.utf8))
            // A near miss: the last signature byte changed.
            var tampered = serializer.serializedBytes
            tampered[tampered.count - 1] ^= 1
            seeds.append([0] + tampered)
        }
        return seeds
    }
    return 0
}
