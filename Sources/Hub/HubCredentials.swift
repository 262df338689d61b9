import Core
public import Crypto
public import Foundation
public import PKI
import Store
public import X509

/// The hub's key material in the data directory:
///
///     ca.crt  ca.key            the hub certificate authority (P-256)
///     hub.crt hub.key           the TLS server certificate of both listeners
///     operators/admin.{crt,key} the first operator credential, plus operators/ca.crt
///
/// Key files are created 0600 and every `*.key` below the data directory is checked at each start.
public struct HubCredentials: Sendable {
    public let authority: CertificateAuthority
    public let serverCertificate: Certificate
    public let serverKey: P256.Signing.PrivateKey

    public static let firstOperator = "admin"

    /// Loads the credentials, creating them on first start. Re-issues the server certificate when it has fewer
    /// than 30 days left.
    public static func loadOrCreate(
        dataDirectory: String, hubNames: [String], store: any HubStore, now: Date
    ) async throws -> HubCredentials {
        try SecretFiles.makePrivateDirectory(dataDirectory)
        try checkKeyFilePermissions(below: dataDirectory)
        let caKeyPath = dataDirectory + "/ca.key"
        let authority: CertificateAuthority
        if FileManager.default.fileExists(atPath: caKeyPath) {
            authority = try loadAuthority(dataDirectory)
        } else {
            authority = try CertificateAuthority.create(commonName: "Bulwark hub CA", now: now)
            try SecretFiles.create(caKeyPath, contents: authority.keyPEM)
            try SecretFiles.writePublic(dataDirectory + "/ca.crt", contents: authority.certificate.pem)
            try await createOperatorCredential(
                name: try OperatorName(firstOperator), directory: dataDirectory + "/operators", authority: authority,
                store: store, now: now)
        }

        let serverKeyPath = dataDirectory + "/hub.key"
        let serverCertPath = dataDirectory + "/hub.crt"
        if FileManager.default.fileExists(atPath: serverKeyPath),
            let key = try? P256.Signing.PrivateKey(pemRepresentation: try SecretFiles.read(serverKeyPath)),
            let certificate = try? Certificate(pemEncoded: String(contentsOfFile: serverCertPath, encoding: .utf8)),
            certificate.publicKey == Certificate.PublicKey(key.publicKey),
            certificate.notValidAfter.timeIntervalSince(now) > 30 * 86400
        {
            return HubCredentials(authority: authority, serverCertificate: certificate, serverKey: key)
        }
        let key = P256.Signing.PrivateKey()
        let certificate = try authority.issueServerCertificate(
            publicKey: key.publicKey, dnsNames: ["localhost"] + hubNames, ipAddresses: [[127, 0, 0, 1]], now: now)
        try? FileManager.default.removeItem(atPath: serverKeyPath)
        try SecretFiles.create(serverKeyPath, contents: key.pemRepresentation)
        try SecretFiles.writePublic(serverCertPath, contents: certificate.pem)
        try await store.addCertificate(record(certificate, deviceID: nil))
        return HubCredentials(authority: authority, serverCertificate: certificate, serverKey: key)
    }

    static func loadAuthority(_ dataDirectory: String) throws -> CertificateAuthority {
        let keyText = try SecretFiles.read(dataDirectory + "/ca.key")
        guard let key = try? P256.Signing.PrivateKey(pemRepresentation: keyText) else {
            throw HubStartupError("\(dataDirectory)/ca.key is not a P-256 private key")
        }
        guard let text = try? String(contentsOfFile: dataDirectory + "/ca.crt", encoding: .utf8),
            let certificate = try? Certificate(pemEncoded: text)
        else { throw HubStartupError("\(dataDirectory)/ca.crt is missing or not a certificate") }
        do { return try CertificateAuthority(certificate: certificate, key: key) } catch {
            throw HubStartupError("\(dataDirectory)/ca.crt does not belong to \(dataDirectory)/ca.key")
        }
    }

    /// Every `*.key` file under the data directory must be private to its owner.
    static func checkKeyFilePermissions(below directory: String) throws {
        guard let entries = FileManager.default.enumerator(atPath: directory) else { return }
        for case let entry as String in entries where entry.hasSuffix(".key") {
            _ = try SecretFiles.read(directory + "/" + entry)
        }
    }

    /// Generates an operator key locally, issues its certificate and writes `<name>.key` (0600), `<name>.crt` and
    /// `ca.crt` into `directory`. The private key never leaves this machine.
    static func createOperatorCredential(
        name: OperatorName, directory: String, authority: CertificateAuthority, store: any HubStore, now: Date
    ) async throws {
        try SecretFiles.makePrivateDirectory(directory)
        let key = P256.Signing.PrivateKey()
        let csr = try CertificateSigningRequest(
            version: .v1, subject: try DistinguishedName { CommonName(name.rawValue) },
            privateKey: Certificate.PrivateKey(key), attributes: CertificateSigningRequest.Attributes(),
            signatureAlgorithm: .ecdsaWithSHA256)
        let certificate = try authority.issueClientCertificate(for: .operator(name), csr: csr, now: now, days: 397)
        try SecretFiles.create("\(directory)/\(name.rawValue).key", contents: key.pemRepresentation)
        try SecretFiles.writePublic("\(directory)/\(name.rawValue).crt", contents: certificate.pem)
        try SecretFiles.writePublic("\(directory)/ca.crt", contents: authority.certificate.pem)
        try await store.addCertificate(record(certificate, deviceID: nil))
    }

    static func record(_ certificate: Certificate, deviceID: DeviceID?) -> CertificateRecord {
        CertificateRecord(
            serialHex: certificate.serialHex,
            subject: certificate.bulwarkIdentity?.uri ?? certificate.subject.description,
            deviceID: deviceID,
            spkiSHA256Hex: certificate.publicKey.spkiSHA256Hex,
            notBefore: certificate.notValidBefore,
            notAfter: certificate.notValidAfter,
            der: certificate.derBytes)
    }
}
