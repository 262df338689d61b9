import Core
public import Crypto
public import Foundation
public import PKCS11
public import PKI
public import Pairing
import Store
public import X509

/// The hub's key material in the data directory:
///
///     ca.crt  ca.key            the hub certificate authority (P-256)
///     ca.key.uri                instead of ca.key: the CA key on a PKCS#11 token (`ca.key` in the configuration)
///     hub.crt hub.key           the TLS server certificate of both listeners (the key is kept across renewals)
///     hub-backup.key            a TLS key not in use, pinned by devices as the backup
///     hub-next.key              during a key rotation only: the key that becomes the backup
///     hub-pair-*.key            the Noise static keys for pairing (P-256 and X25519)
///     operators/admin.{crt,key} the first operator credential, plus operators/ca.crt
///
/// Key files are created 0600 and every `*.key` below the data directory is checked at each start.
public struct HubCredentials: Sendable {
    public let authority: CertificateAuthority
    /// The TLS key and certificate presented now (replaced, without a restart, by a key rotation).
    public let identity: ServerIdentity
    public var serverCertificate: Certificate { identity.current.certificate }
    public var serverKey: P256.Signing.PrivateKey { identity.current.key }
    /// The hub's Noise static keys for pairing, per suite.
    public let pairingKeys: [PairingLabel.Suite: NoiseKeyPair]

    public static let firstOperator = "admin"

    /// Loads the credentials, creating them on first start. Re-issues the server certificate when it has fewer
    /// than 30 days left, or names another CRL distribution point than `crlDistributionPoints`, which every
    /// certificate issued from here on names (RFC 5280 §4.2.1.13).
    public static func loadOrCreate(
        dataDirectory: String, hubNames: [String], store: any HubStore, now: Date,
        crlDistributionPoints: CRLDistributionPoints? = nil, caKeyURI: String? = nil
    ) async throws -> HubCredentials {
        try SecretFiles.makePrivateDirectory(dataDirectory)
        try checkKeyFilePermissions(below: dataDirectory)
        let caKeyPath = dataDirectory + "/ca.key"
        let caURIPath = dataDirectory + "/ca.key.uri"
        if let caKeyURI {
            // The token key replaces the file: a hub that has a CA key file keeps it (moving a CA is a migration).
            guard !FileManager.default.fileExists(atPath: caKeyPath) else {
                throw HubStartupError(
                    "ca.key names a PKCS#11 key but \(caKeyPath) holds a CA key file: a hub's CA stays where it was "
                        + "made (start a new data directory to put the CA on the token)")
            }
            let canonical: String
            do { canonical = try PKCS11URI(caKeyURI).description } catch { throw HubStartupError("ca.key: \(error)") }
            if let existing = try? String(contentsOfFile: caURIPath, encoding: .utf8) {
                guard existing.trimmingCharacters(in: .whitespacesAndNewlines) == canonical else {
                    throw HubStartupError(
                        "ca.key names another token key than the one this hub's CA was made with (\(caURIPath))")
                }
            } else if FileManager.default.fileExists(atPath: dataDirectory + "/ca.crt") {
                throw HubStartupError("\(dataDirectory)/ca.crt exists without a CA key: restore ca.key or ca.key.uri")
            }
        }
        var authority: CertificateAuthority
        if FileManager.default.fileExists(atPath: caKeyPath) || FileManager.default.fileExists(atPath: caURIPath) {
            authority = try loadAuthority(dataDirectory)
            authority.crlDistributionPoints = crlDistributionPoints
        } else {
            if let caKeyURI {
                let key: PKCS11PrivateKey
                do { key = try PKCS11PrivateKey.open(caKeyURI) } catch { throw HubStartupError("ca.key: \(error)") }
                authority = try CertificateAuthority.create(commonName: "Bulwark hub CA", now: now, tokenKey: key)
                try SecretFiles.writePublic(caURIPath, contents: key.uri.description + "\n")
            } else {
                authority = try CertificateAuthority.create(commonName: "Bulwark hub CA", now: now)
                try SecretFiles.create(caKeyPath, contents: authority.keyPEM)
            }
            authority.crlDistributionPoints = crlDistributionPoints
            try SecretFiles.writePublic(dataDirectory + "/ca.crt", contents: authority.certificate.pem)
            try await createOperatorCredential(
                name: try OperatorName(firstOperator), directory: dataDirectory + "/operators", authority: authority,
                store: store, now: now)
        }

        // The TLS key is kept across certificate renewals: devices pin it (with a backup key not in use).
        let files = TLSKeyFiles(dataDirectory)
        files.finishRotation()
        let serverKey = try loadOrCreateSigningKey(files.active)
        let backupKey = try loadOrCreateSigningKey(files.backup)
        let serverCertPath = files.certificate
        var certificate = try? Certificate(pemEncoded: String(contentsOfFile: serverCertPath, encoding: .utf8))
        if let current = certificate,
            current.publicKey != Certificate.PublicKey(serverKey.publicKey)
                || current.notValidAfter.timeIntervalSince(now) < 30 * 86400
                || (try? current.extensions.crlDistributionPoints) != crlDistributionPoints
        {
            certificate = nil
        }
        if certificate == nil {
            let issued = try authority.issueServerCertificate(
                publicKey: serverKey.publicKey, dnsNames: ["localhost"] + hubNames, ipAddresses: [[127, 0, 0, 1]],
                now: now)
            try SecretFiles.writePublic(serverCertPath, contents: issued.pem)
            try await store.addCertificate(record(issued, deviceID: nil))
            certificate = issued
        }
        var pairingKeys: [PairingLabel.Suite: NoiseKeyPair] = [:]
        for suite in PairingLabel.Suite.allCases {
            pairingKeys[suite] = try loadOrCreateNoiseKey(
                dataDirectory + "/hub-pair-\(suite.dh.rawValue.lowercased()).key", suite.dh)
        }
        guard let certificate else { throw HubStartupError("cannot issue the hub certificate") }
        return HubCredentials(
            authority: authority,
            identity: ServerIdentity(certificate: certificate, key: serverKey, backup: backupKey.publicKey),
            pairingKeys: pairingKeys)
    }

    /// `pin-sha256` values (SHA-256 of the SPKI) of the key in use and of the backup key, in that order.
    public var pins: [[UInt8]] { identity.current.pins }

    static func loadOrCreateSigningKey(_ path: String) throws -> P256.Signing.PrivateKey {
        if FileManager.default.fileExists(atPath: path) {
            guard let key = try? P256.Signing.PrivateKey(pemRepresentation: try SecretFiles.read(path)) else {
                throw HubStartupError("\(path) is not a P-256 private key")
            }
            return key
        }
        let key = P256.Signing.PrivateKey()
        try SecretFiles.create(path, contents: key.pemRepresentation)
        return key
    }

    /// A Noise static key for pairing, stored as base64 of the raw private key (0600).
    static func loadOrCreateNoiseKey(_ path: String, _ dh: NoiseDH) throws -> NoiseKeyPair {
        if FileManager.default.fileExists(atPath: path) {
            let text = try SecretFiles.read(path).trimmingCharacters(in: .whitespacesAndNewlines)
            guard let raw = Data(base64Encoded: text), let pair = try? dh.keyPair(privateKey: [UInt8](raw)) else {
                throw HubStartupError("\(path) is not a \(dh.rawValue) private key")
            }
            return pair
        }
        let pair = dh.generateKeyPair()
        try SecretFiles.create(path, contents: Data(pair.privateKey).base64EncodedString() + "\n")
        return pair
    }

    static func loadAuthority(_ dataDirectory: String) throws -> CertificateAuthority {
        if let uri = try? String(contentsOfFile: dataDirectory + "/ca.key.uri", encoding: .utf8) {
            // It names the module the hub loads (dlopen): only the hub's user may change it.
            var info = stat()
            guard stat(dataDirectory + "/ca.key.uri", &info) == 0, info.st_uid == geteuid(), info.st_mode & 0o022 == 0
            else {
                throw HubStartupError(
                    "\(dataDirectory)/ca.key.uri must belong to the hub's user and not be writable by group or others")
            }
            let key: PKCS11PrivateKey
            do {
                key = try PKCS11PrivateKey.open(uri.trimmingCharacters(in: .whitespacesAndNewlines))
            } catch {
                throw HubStartupError("the CA key (\(dataDirectory)/ca.key.uri): \(error)")
            }
            guard let text = try? String(contentsOfFile: dataDirectory + "/ca.crt", encoding: .utf8),
                let certificate = try? Certificate(pemEncoded: text)
            else { throw HubStartupError("\(dataDirectory)/ca.crt is missing or not a certificate") }
            do { return try CertificateAuthority(certificate: certificate, tokenKey: key) } catch {
                throw HubStartupError("\(dataDirectory)/ca.crt does not belong to the token key in ca.key.uri")
            }
        }
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
