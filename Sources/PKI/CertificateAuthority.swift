import Core
public import Crypto
import Foundation
public import PKCS11
import SwiftASN1
public import X509

/// The hub's own certificate authority (ECDSA P-256). It signs the hub's TLS server certificate, device certificates
/// and operator certificates. Every extension of an issued certificate is decided here, never copied from a CSR.
public struct CertificateAuthority: Sendable {
    public let certificate: Certificate
    private let key: SigningKey
    /// Where the CA publishes its CRL, written into every certificate it issues (not into its own): RFC 5280
    /// §4.2.1.13. Passed in by the hub, which knows its listeners; nil issues certificates without the extension.
    public var crlDistributionPoints: CRLDistributionPoints?

    /// The CA's private key: a PKCS#8 file's P-256 key, or a P-256/P-384 key on a PKCS#11 token that never leaves it.
    enum SigningKey: Sendable {
        case file(P256.Signing.PrivateKey)
        case token(PKCS11PrivateKey)

        var publicKey: Certificate.PublicKey? {
            switch self {
            case .file(let key): return Certificate.PublicKey(key.publicKey)
            case .token(let key): return try? Certificate.PublicKey(derEncoded: key.publicKeySPKI)
            }
        }

        var certificateKey: Certificate.PrivateKey {
            switch self {
            case .file(let key): return Certificate.PrivateKey(key)
            case .token(let key): return Certificate.PrivateKey(TokenCertificateKey(key: key))
            }
        }

        var signatureAlgorithm: Certificate.SignatureAlgorithm {
            switch self {
            case .file: return .ecdsaWithSHA256
            case .token(let key): return key.curve == .p256 ? .ecdsaWithSHA256 : .ecdsaWithSHA384
            }
        }

        func signatureDER(_ bytes: [UInt8]) throws -> [UInt8] {
            switch self {
            case .file(let key): return Array(try key.signature(for: bytes).derRepresentation)
            case .token(let key): return try key.signatureDER(for: bytes)
            }
        }
    }

    public init(certificate: Certificate, key: P256.Signing.PrivateKey) throws(PKIError) {
        try self.init(certificate: certificate, signingKey: .file(key))
    }

    /// A CA whose key is on a PKCS#11 token: certificates and CRLs are signed through `C_Sign`.
    public init(certificate: Certificate, tokenKey: PKCS11PrivateKey) throws(PKIError) {
        try self.init(certificate: certificate, signingKey: .token(tokenKey))
    }

    init(certificate: Certificate, signingKey: SigningKey) throws(PKIError) {
        // The CA signs with ECDSA P-256 and SHA-256 only: its CRLs name ecdsa-with-SHA256 (RFC 5280 §5.1.1.2).
        if case .token(let key) = signingKey, key.curve != .p256 {
            throw PKIError(.unsupportedKey, "the CA key must be a P-256 key (bulwark hsm keygen --curve p256)")
        }
        guard certificate.publicKey == signingKey.publicKey else {
            throw PKIError(.keyMismatch, "CA certificate does not match the CA key")
        }
        self.certificate = certificate
        self.key = signingKey
    }

    /// The CA's key when it lives on a token.
    public var tokenKey: PKCS11PrivateKey? {
        if case .token(let key) = key { return key }
        return nil
    }

    /// Creates a new self-signed CA valid for `years`: basicConstraints CA with path length 0 (it signs leaves only),
    /// keyUsage keyCertSign and cRLSign, both critical (RFC 5280 §4.2.1.9, §4.2.1.3).
    public static func create(commonName: String, now: Date, years: Int = 10) throws(PKIError) -> CertificateAuthority {
        try create(commonName: commonName, now: now, years: years, signingKey: .file(P256.Signing.PrivateKey()))
    }

    /// As `create`, with a key made beforehand on a PKCS#11 token (`bulwark hsm keygen`).
    public static func create(
        commonName: String, now: Date, years: Int = 10, tokenKey: PKCS11PrivateKey
    ) throws(PKIError) -> CertificateAuthority {
        try create(commonName: commonName, now: now, years: years, signingKey: .token(tokenKey))
    }

    static func create(
        commonName: String, now: Date, years: Int, signingKey key: SigningKey
    ) throws(PKIError) -> CertificateAuthority {
        if case .token(let token) = key, token.curve != .p256 {
            throw PKIError(.unsupportedKey, "the CA key must be a P-256 key (bulwark hsm keygen --curve p256)")
        }
        do {
            let name = try DistinguishedName {
                OrganizationName("Bulwark")
                CommonName(commonName)
            }
            guard let publicKey = key.publicKey else {
                throw PKIError(.unsupportedKey, "the CA key's public key is not P-256 or P-384")
            }
            let certificate = try Certificate(
                version: .v3,
                serialNumber: .positive20Octets(),
                publicKey: publicKey,
                notValidBefore: now.addingTimeInterval(-300),
                notValidAfter: now.addingTimeInterval(Double(years) * 365 * 86400),
                issuer: name,
                subject: name,
                signatureAlgorithm: key.signatureAlgorithm,
                extensions: try Certificate.Extensions {
                    Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                    Critical(KeyUsage(keyCertSign: true, cRLSign: true))
                    SubjectKeyIdentifier(hash: publicKey)
                },
                issuerPrivateKey: key.certificateKey
            )
            return try CertificateAuthority(certificate: certificate, signingKey: key)
        } catch let error as PKIError {
            throw error
        } catch {
            throw PKIError(.issuance, "creating the CA failed: \(error)")
        }
    }

    /// PEM of the CA private key (PKCS#8). Only for writing the key file with mode 0600; empty for a token key, which
    /// cannot leave the token.
    public var keyPEM: String {
        if case .file(let key) = key { return key.pemRepresentation }
        return ""
    }

    /// Issues the hub's TLS server certificate for the given DNS names and IP addresses (serverAuth only).
    public func issueServerCertificate(
        publicKey: P256.Signing.PublicKey,
        dnsNames: [String],
        ipAddresses: [[UInt8]],
        now: Date,
        days: Int = 397
    ) throws(PKIError) -> Certificate {
        var names: [GeneralName] = dnsNames.map { .dnsName($0) }
        names += ipAddresses.map { .ipAddress(ASN1OctetString(contentBytes: ArraySlice($0))) }
        return try issue(
            publicKey: Certificate.PublicKey(publicKey),
            commonName: dnsNames.first ?? "bulwark-hub",
            extendedKeyUsage: .serverAuth,
            subjectAlternativeNames: names,
            now: now,
            lifetime: Double(days) * 86400
        )
    }

    /// Issues a client certificate for `identity` from a PKCS#10 request.
    ///
    /// Proof of possession (RFC 2986 §3): the request must be signed by the key it carries. Only ECDSA P-256 and
    /// P-384 keys are accepted (FIPS 186-5 curves). Whatever the request asks for (CA basic constraints, other SANs,
    /// other key usages) is ignored: the result is always a leaf with digitalSignature, clientAuth and exactly one
    /// SAN URI naming `identity`.
    public func issueClientCertificate(
        for identity: Identity,
        csr: CertificateSigningRequest,
        now: Date,
        days: Int
    ) throws(PKIError) -> Certificate {
        guard (1...397).contains(days) else {
            throw PKIError(.invalidRequest, "validity must be between 1 and 397 days")
        }
        return try issueClientCertificate(for: identity, csr: csr, now: now, lifetime: Double(days) * 86400)
    }

    /// As `issueClientCertificate(for:csr:now:days:)`, for a lifetime in seconds (60 s to 397 days): short-lived
    /// device certificates, renewed by the agent at two thirds of their life.
    public func issueClientCertificate(
        for identity: Identity,
        csr: CertificateSigningRequest,
        now: Date,
        lifetime: TimeInterval
    ) throws(PKIError) -> Certificate {
        guard csr.publicKey.isValidSignature(csr.signature, for: csr) else {
            throw PKIError(.badCSRSignature, "CSR signature does not verify with the CSR's own public key")
        }
        guard P256.Signing.PublicKey(csr.publicKey) != nil || P384.Signing.PublicKey(csr.publicKey) != nil else {
            throw PKIError(.unsupportedKey, "CSR key must be ECDSA P-256 or P-384")
        }
        guard (60...(397 * 86400)).contains(lifetime) else {
            throw PKIError(.invalidRequest, "validity must be between 60 seconds and 397 days")
        }
        return try issue(
            publicKey: csr.publicKey,
            commonName: identity.uri,
            extendedKeyUsage: .clientAuth,
            subjectAlternativeNames: [.uniformResourceIdentifier(identity.uri)],
            now: now,
            lifetime: lifetime
        )
    }

    /// Signs a version 2 CRL (RFC 5280 §5) listing `entries`, with this CA's name as issuer and its key identifier in
    /// the AuthorityKeyIdentifier (§5.2.1). `number` must exceed that of every CRL issued before (§5.2.3); the caller
    /// keeps that count, this type keeps no state.
    public func issueRevocationList(
        entries: [CertificateRevocationList.Entry], number: UInt64, thisUpdate: Date, nextUpdate: Date
    ) throws(PKIError) -> CertificateRevocationList {
        guard nextUpdate > thisUpdate else { throw PKIError(.invalidRequest, "nextUpdate must follow thisUpdate") }
        let list: [UInt8]
        do {
            let tbs = try CertificateRevocationList.tbsCertList(
                issuer: certificate.subject, thisUpdate: thisUpdate, nextUpdate: nextUpdate, entries: entries,
                number: number, authorityKeyIdentifier: try certificate.extensions.subjectKeyIdentifier?.keyIdentifier)
            let signature = try key.signatureDER(tbs)
            list = try CertificateRevocationList.certificateList(tbs: tbs, signature: signature)
        } catch let error as PKIError {
            throw error
        } catch let error as PKCS11Error {
            throw PKIError(.keyUnavailable, "the CA key did not sign the CRL: \(error)")
        } catch {
            throw PKIError(.issuance, "signing the CRL failed: \(error)")
        }
        return try CertificateRevocationList(derEncoded: list)
    }

    private func issue(
        publicKey: Certificate.PublicKey,
        commonName: String,
        extendedKeyUsage: ExtendedKeyUsage.Usage,
        subjectAlternativeNames: [GeneralName],
        now: Date,
        lifetime: TimeInterval
    ) throws(PKIError) -> Certificate {
        do {
            let subject = try DistinguishedName {
                OrganizationName("Bulwark")
                CommonName(commonName)
            }
            let caKeyID = try certificate.extensions.subjectKeyIdentifier?.keyIdentifier
            return try Certificate(
                version: .v3,
                serialNumber: .positive20Octets(),
                publicKey: publicKey,
                // Back-dated for clocks running behind, by at most a tenth of the lifetime (a short-lived
                // certificate's renewal point is computed from notBefore).
                notValidBefore: now.addingTimeInterval(-min(300, lifetime / 10)),
                notValidAfter: now.addingTimeInterval(lifetime),
                issuer: certificate.subject,
                subject: subject,
                signatureAlgorithm: key.signatureAlgorithm,
                extensions: try Certificate.Extensions {
                    Critical(BasicConstraints.notCertificateAuthority)
                    Critical(KeyUsage(digitalSignature: true))
                    try ExtendedKeyUsage([extendedKeyUsage])
                    SubjectAlternativeNames(subjectAlternativeNames)
                    SubjectKeyIdentifier(hash: publicKey)
                    if let caKeyID { AuthorityKeyIdentifier(keyIdentifier: caKeyID) }
                    if let crlDistributionPoints { crlDistributionPoints }
                },
                issuerPrivateKey: key.certificateKey
            )
        } catch let error as PKIError {
            throw error
        } catch let error as PKCS11Error {
            throw PKIError(.keyUnavailable, "the CA key did not sign: \(error)")
        } catch {
            throw PKIError(.issuance, "issuing a certificate failed: \(error)")
        }
    }
}

/// A token-held key as swift-certificates' custom private key: certificates are signed through PKCS#11 `C_Sign`
/// (ECDSA with SHA-256 on P-256, SHA-384 on P-384). It cannot be serialised: the key never leaves the token.
struct TokenCertificateKey: CustomPrivateKey {
    let key: PKCS11PrivateKey

    var publicKey: Certificate.PublicKey {
        // Checked when the CA was made (its certificate matches this key), so this cannot fail in practice.
        (try? Certificate.PublicKey(derEncoded: key.publicKeySPKI))
            ?? Certificate.PublicKey(P256.Signing.PrivateKey().publicKey)
    }

    var defaultSignatureAlgorithm: Certificate.SignatureAlgorithm {
        key.curve == .p256 ? .ecdsaWithSHA256 : .ecdsaWithSHA384
    }

    var supportedSignatureAlgorithms: [Certificate.SignatureAlgorithm] { [defaultSignatureAlgorithm] }

    func signSynchronously(
        bytes: some DataProtocol, signatureAlgorithm: Certificate.SignatureAlgorithm
    ) throws -> Certificate.Signature {
        guard signatureAlgorithm == defaultSignatureAlgorithm else {
            throw PKIError(.unsupportedKey, "the token key signs with \(defaultSignatureAlgorithm) only")
        }
        let der = try key.signatureDER(for: Array(bytes))
        return try Certificate.Signature(
            signatureAlgorithm: signatureAlgorithm, signatureBytes: ASN1BitString(bytes: ArraySlice(der)))
    }

    static var defaultPEMDiscriminator: String { "PRIVATE KEY" }

    func serialize(into coder: inout DER.Serializer) throws {
        throw PKIError(.unsupportedKey, "a key on a PKCS#11 token cannot be exported")
    }

    init(key: PKCS11PrivateKey) { self.key = key }

    init(derEncoded rootNode: ASN1Node) throws {
        throw PKIError(.unsupportedKey, "a key on a PKCS#11 token cannot be imported")
    }

    static func == (lhs: TokenCertificateKey, rhs: TokenCertificateKey) -> Bool {
        lhs.key.publicKeyX963 == rhs.key.publicKeyX963
    }

    func hash(into hasher: inout Hasher) { hasher.combine(key.publicKeyX963) }
}

extension Certificate.SerialNumber {
    /// RFC 5280 §4.1.2.2: a positive serial of at most 20 octets. Twenty random bytes with the top bit set gain a
    /// leading zero octet in DER (21 octets, which some device TLS stacks refuse), so the top bit is cleared and the
    /// next one set: always exactly 20 octets, 158 random bits (CA/Browser Forum asks for at least 64).
    public static func positive20Octets() -> Certificate.SerialNumber {
        var generator = SystemRandomNumberGenerator()
        var bytes = (0..<20).map { _ in UInt8.random(in: 0...255, using: &generator) }
        bytes[0] = (bytes[0] & 0x3F) | 0x40
        return Certificate.SerialNumber(bytes: bytes)
    }
}

extension SubjectKeyIdentifier {
    /// RFC 5280 §4.2.1.2 method (1): SHA-1 of the subjectPublicKey BIT STRING. SHA-1 is used as a key identifier
    /// here, not as a signature or security function.
    init(hash publicKey: Certificate.PublicKey) {
        self.init(keyIdentifier: ArraySlice(Insecure.SHA1.hash(data: publicKey.subjectPublicKeyInfoBytes)))
    }
}
