import Crypto
import Foundation
import _CryptoExtras

/// What a new hub node needs from an existing one to be the same hub: the CA (its certificate and key, or the
/// PKCS#11 URI of a key on an HSM), the audit key and the pairing keys (a device pairs with any node). Never the
/// store, never an operator's own credential, and never the TLS keys: each node makes its own at its first start,
/// and devices learn them through the pin set (`ClusterPins`), so one node's key can be rotated or withdrawn alone.
///
/// `seal` encrypts these files for the trip with AES-256-GCM under a key derived from a passphrase with scrypt
/// (N = 2^15, r = 8, p = 1; RFC 7914), the format name and version authenticated with them. A wrong passphrase or a
/// changed byte is refused by the GCM tag. `install` writes them into an empty data directory, keys 0600.
public enum NodeBundle {
    /// The data directory's files a node shares (those present are taken; the CA and the audit key are required).
    static let sharedFiles = [
        "ca.crt", "ca.key", "ca.key.uri", "audit.key", "hub-pair-25519.key", "hub-pair-p256.key", "operators/ca.crt",
    ]
    static let format = "bulwark-node-bundle-1"
    /// The TLS keys a bundle made by 0.9 carried: left out, the node makes its own.
    static let formerlyShared = ["hub.crt", "hub.key", "hub-backup.key"]

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
        public init(_ description: String) { self.description = description }
    }

    /// Reads the shared files of a node's data directory (the audit key from `auditKeyPath` when it lives elsewhere).
    public static func files(in dataDirectory: String, auditKeyPath: String? = nil) throws -> [String: String] {
        var files: [String: String] = [:]
        for name in sharedFiles {
            let path = name == "audit.key" ? (auditKeyPath ?? dataDirectory + "/audit.key") : dataDirectory + "/" + name
            guard FileManager.default.fileExists(atPath: path) else { continue }
            // Keys are read only if no one else can read them (SecretFiles); certificates are public.
            files[name] =
                name.hasSuffix(".crt") ? try String(contentsOfFile: path, encoding: .utf8) : try SecretFiles.read(path)
        }
        guard files["ca.crt"] != nil, files["ca.key"] != nil || files["ca.key.uri"] != nil else {
            throw Failure("\(dataDirectory) holds no hub CA (ca.crt with ca.key or ca.key.uri)")
        }
        guard files["audit.key"] != nil else {
            throw Failure("no audit key at \(auditKeyPath ?? dataDirectory + "/audit.key") (audit.keyFile)")
        }
        return files
    }

    /// Encrypts `files` under `passphrase` (JSON: the format, the scrypt salt, the sealed box).
    public static func seal(_ files: [String: String], passphrase: String) throws -> [UInt8] {
        guard passphrase.utf8.count >= 12 else {
            throw Failure("the bundle passphrase must have at least 12 characters")
        }
        let salt = (0..<16).map { _ in UInt8.random(in: 0...255) }
        let plaintext = try JSONSerialization.data(withJSONObject: files, options: [.sortedKeys])
        let box = try AES.GCM.seal(plaintext, using: try key(passphrase, salt), authenticating: Array(format.utf8))
        guard let combined = box.combined else { throw Failure("cannot seal the bundle") }
        let document: [String: Any] = [
            "format": format, "salt": Data(salt).base64EncodedString(), "sealed": combined.base64EncodedString(),
        ]
        return Array(try JSONSerialization.data(withJSONObject: document, options: [.sortedKeys]))
    }

    /// Decrypts a bundle; a wrong passphrase or any change to it is refused.
    public static func open(_ bundle: [UInt8], passphrase: String) throws -> [String: String] {
        guard let document = try? JSONSerialization.jsonObject(with: Data(bundle)) as? [String: Any],
            document["format"] as? String == format,
            let salt = (document["salt"] as? String).flatMap({ Data(base64Encoded: $0) }), salt.count == 16,
            let sealed = (document["sealed"] as? String).flatMap({ Data(base64Encoded: $0) })
        else { throw Failure("not a node bundle (\(format))") }
        let plaintext: Data
        do {
            plaintext = try AES.GCM.open(
                try AES.GCM.SealedBox(combined: sealed), using: try key(passphrase, Array(salt)),
                authenticating: Array(format.utf8))
        } catch { throw Failure("the bundle does not open: wrong passphrase, or it was changed") }
        guard let files = try? JSONSerialization.jsonObject(with: plaintext) as? [String: String] else {
            throw Failure("the bundle's contents are not a node's files")
        }
        return files
    }

    /// Writes the files into `dataDirectory`, which must not hold a hub yet (a node's own CA is never replaced).
    public static func install(_ files: [String: String], into dataDirectory: String) throws {
        guard !FileManager.default.fileExists(atPath: dataDirectory + "/ca.crt") else {
            throw Failure("\(dataDirectory) already holds a hub (ca.crt): join into an empty data directory")
        }
        for name in files.keys where !sharedFiles.contains(name) && !formerlyShared.contains(name) {
            throw Failure("the bundle holds \(name), which is not a node's shared file")
        }
        _ = try SecretFiles.makePrivateDirectory(dataDirectory)
        _ = try SecretFiles.makePrivateDirectory(dataDirectory + "/operators")
        for (name, contents) in files.sorted(by: { $0.key < $1.key }) where !formerlyShared.contains(name) {
            try SecretFiles.create(dataDirectory + "/" + name, contents: contents)
        }
    }

    private static func key(_ passphrase: String, _ salt: [UInt8]) throws -> SymmetricKey {
        try KDF.Scrypt.deriveKey(
            from: Array(passphrase.utf8), salt: salt, outputByteCount: 32, rounds: 1 << 15, blockSize: 8,
            parallelism: 1)
    }
}
