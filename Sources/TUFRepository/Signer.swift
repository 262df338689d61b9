import Crypto
import Foundation
import JSON
import PKCS11
import TUF
import _CryptoExtras

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Something that can sign TUF metadata (TUF §4.2 `signatures`). Asynchronous so a signer
/// backed by an HSM, PKCS#11 token or remote KMS can plug in without blocking.
public protocol Signer: Sendable {
    /// The public key as a TUF KEY object (TUF §4.3).
    var publicKey: Key { get }
    /// Signs `message` (the canonical JSON of `signed`) and returns the signature bytes in the
    /// encoding securesystemslib uses for the key's scheme (raw for ed25519 and RSA, DER for ECDSA).
    func sign(_ message: [UInt8]) async throws -> [UInt8]
}

extension Signer {
    /// TUF §4.3 KEYID: hex SHA-256 of the canonical JSON of the public key object.
    public var keyid: String { KeyID.of(publicKey) }
}

/// Key ids (TUF §4.3).
public enum KeyID {
    public static func of(_ key: Key) -> String {
        hexEncode(SHA256.hash(data: (try? CanonicalJSON.encode(key.jsonValue)) ?? []))
    }
}

/// Signing key types supported for repository keys.
public enum KeyType: String, Sendable, CaseIterable {
    /// ECDSA P-256 with SHA-256 (FIPS 186-5); keytype `ecdsa`, scheme `ecdsa-sha2-nistp256`. Default.
    case ecdsaP256 = "ecdsa"
    /// Ed25519; keytype and scheme `ed25519`.
    case ed25519
    /// RSA 3072 with RSASSA-PSS and SHA-256; keytype `rsa`, scheme `rsassa-pss-sha256`.
    case rsaPSS = "rsa"
}

/// A signer whose private key lives in a PEM file (PKCS#8) with mode 0600.
public struct FileSigner: Signer {
    enum Backing: Sendable {
        case p256(P256.Signing.PrivateKey)
        case ed25519(Curve25519.Signing.PrivateKey)
        case rsa(_RSA.Signing.PrivateKey)
    }

    let backing: Backing
    public let publicKey: Key
    /// The file name without `.pem`, as given when the key was created.
    public let name: String

    public var keyType: KeyType {
        switch backing {
        case .p256: return .ecdsaP256
        case .ed25519: return .ed25519
        case .rsa: return .rsaPSS
        }
    }

    init(name: String, backing: Backing) throws(RepositoryError) {
        self.name = name
        self.backing = backing
        let keytype: String
        let scheme: String
        let publicValue: String
        switch backing {
        case .p256(let k):
            (keytype, scheme, publicValue) = ("ecdsa", "ecdsa-sha2-nistp256", k.publicKey.pemRepresentation + "\n")
        case .ed25519(let k):
            (keytype, scheme, publicValue) = ("ed25519", "ed25519", hexEncode(k.publicKey.rawRepresentation))
        case .rsa(let k):
            (keytype, scheme, publicValue) = ("rsa", "rsassa-pss-sha256", k.publicKey.pemRepresentation + "\n")
        }
        var keyval = JSONObject()
        keyval.set("public", .string(publicValue))
        var o = JSONObject()
        o.set("keytype", .string(keytype))
        o.set("scheme", .string(scheme))
        o.set("keyval", .object(keyval))
        do {
            publicKey = try Key(json: o)
        } catch {
            throw RepositoryError(.key, "cannot build the public key of \(name)")
        }
    }

    /// Generates a new key in memory.
    public static func generate(name: String, type: KeyType) throws(RepositoryError) -> FileSigner {
        switch type {
        case .ecdsaP256: return try FileSigner(name: name, backing: .p256(P256.Signing.PrivateKey()))
        case .ed25519: return try FileSigner(name: name, backing: .ed25519(Curve25519.Signing.PrivateKey()))
        case .rsaPSS:
            do {
                return try FileSigner(name: name, backing: .rsa(_RSA.Signing.PrivateKey(keySize: .bits3072)))
            } catch let e as RepositoryError {
                throw e
            } catch {
                throw RepositoryError(.key, "RSA key generation failed")
            }
        }
    }

    /// Reads a PKCS#8 PEM private key (P-256, Ed25519 or RSA). Errors name the file, never its content.
    public init(pem: String, name: String) throws(RepositoryError) {
        if let k = try? P256.Signing.PrivateKey(pemRepresentation: pem) {
            try self.init(name: name, backing: .p256(k))
        } else if let k = try? Curve25519.Signing.PrivateKey(pemRepresentation: pem) {
            try self.init(name: name, backing: .ed25519(k))
        } else if let k = try? _RSA.Signing.PrivateKey(pemRepresentation: pem) {
            try self.init(name: name, backing: .rsa(k))
        } else {
            throw RepositoryError(.key, "key \(name): not a P-256, Ed25519 or RSA private key")
        }
    }

    /// PKCS#8 PEM of the private key; only `KeyDirectory` writes it, to a 0600 file.
    var privatePEM: String {
        switch backing {
        case .p256(let k): return k.pemRepresentation
        case .ed25519(let k): return k.pemRepresentation
        case .rsa(let k): return k.pkcs8PEMRepresentation
        }
    }

    public func sign(_ message: [UInt8]) async throws -> [UInt8] {
        do {
            switch backing {
            case .p256(let k): return Array(try k.signature(for: message).derRepresentation)
            case .ed25519(let k): return Array(try k.signature(for: message))
            case .rsa(let k): return Array(try k.signature(for: message, padding: .PSS).rawRepresentation)
            }
        } catch {
            throw RepositoryError(.key, "signing with key \(name) failed")
        }
    }
}

/// A signer whose private key stays on a PKCS#11 token (an HSM; SoftHSM2 in the tests), addressed by an RFC 7512 URI.
/// ECDSA P-256 (`ecdsa-sha2-nistp256`) or P-384 (`ecdsa-sha2-nistp384`), DER signatures as securesystemslib writes
/// them (TUF §4.2, §4.3). Each signature is checked against the public key before it is returned.
public struct PKCS11Signer: Signer {
    public let key: PKCS11PrivateKey
    public let publicKey: Key
    /// The key's name in a key directory (its `object` label when opened from a URI).
    public let name: String

    public init(key: PKCS11PrivateKey, name: String) throws(RepositoryError) {
        self.key = key
        self.name = name
        let scheme = key.curve == .p256 ? "ecdsa-sha2-nistp256" : "ecdsa-sha2-nistp384"
        let pem: String
        switch key.curve {
        case .p256:
            guard let k = try? P256.Signing.PublicKey(x963Representation: key.publicKeyX963) else {
                throw RepositoryError(.key, "key \(name): the token's public key is not a P-256 point")
            }
            pem = k.pemRepresentation
        case .p384:
            guard let k = try? P384.Signing.PublicKey(x963Representation: key.publicKeyX963) else {
                throw RepositoryError(.key, "key \(name): the token's public key is not a P-384 point")
            }
            pem = k.pemRepresentation
        }
        var keyval = JSONObject()
        keyval.set("public", .string(pem + "\n"))
        var o = JSONObject()
        o.set("keytype", .string("ecdsa"))
        o.set("scheme", .string(scheme))
        o.set("keyval", .object(keyval))
        do { publicKey = try Key(json: o) } catch {
            throw RepositoryError(.key, "cannot build the public key of \(name)")
        }
    }

    /// Opens the token key a URI names.
    public init(uri: String, name: String? = nil) throws(RepositoryError) {
        let key: PKCS11PrivateKey
        do { key = try PKCS11PrivateKey.open(uri) } catch { throw RepositoryError(.key, error.message) }
        try self.init(key: key, name: name ?? key.uri.object ?? "pkcs11")
    }

    public func sign(_ message: [UInt8]) async throws -> [UInt8] {
        do { return try key.signatureDER(for: message) } catch { throw RepositoryError(.key, error.message) }
    }
}

/// Signers by key id.
public struct Keyring: Sendable {
    public private(set) var signers: [String: any Signer] = [:]

    public init(_ signers: [any Signer] = []) {
        for s in signers { add(s) }
    }

    public mutating func add(_ signer: any Signer) { signers[signer.keyid] = signer }

    public subscript(keyid: String) -> (any Signer)? { signers[keyid] }
}

/// A directory of private keys, `NAME.pem`, each mode 0600, the directory 0700; or references to keys on a PKCS#11
/// token, `NAME.uri` (one RFC 7512 URI, no PIN in it), which `bulwark tuf` writes when given a `pkcs11:` URI for a key.
/// Every command and the hub's re-signer find both kinds by name.
///
/// Keep it outside the published repository: nothing under it is ever served.
public struct KeyDirectory: Sendable {
    public let path: String

    public init(path: String) { self.path = path }

    func file(_ name: String) -> String { path + "/" + name + ".pem" }
    func uriFile(_ name: String) -> String { path + "/" + name + ".uri" }

    static func validName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= 128
            && name.utf8.allSatisfy {
                (0x30...0x39).contains($0) || (0x41...0x5A).contains($0) || (0x61...0x7A).contains($0)
                    || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: ".")
            } && !name.hasPrefix(".")
    }

    /// Generates a key and writes it to `NAME.pem` with mode 0600; refuses to overwrite a key.
    @discardableResult
    public func generate(name: String, type: KeyType = .ecdsaP256) throws(RepositoryError) -> FileSigner {
        guard KeyDirectory.validName(name) else { throw RepositoryError(.usage, "invalid key name '\(name)'") }
        try Files.makeDirectory(path, mode: 0o700)
        let signer = try FileSigner.generate(name: name, type: type)
        let fd = open(file(name), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw RepositoryError(.key, "key \(name) already exists or cannot be created") }
        let bytes = Array(signer.privatePEM.utf8)
        var offset = 0
        var ok = true
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n <= 0 {
                if n < 0, errno == EINTR { continue }
                ok = false
                break
            }
            offset += n
        }
        if ok, fsync(fd) != 0 { ok = false }
        close(fd)
        guard ok else {
            unlink(file(name))
            throw RepositoryError(.io, "cannot write key \(name)")
        }
        // The new name survives a power loss only once the directory is synced.
        try Files.syncDirectory(path)
        return signer
    }

    /// Loads `NAME.pem`. Refuses files readable by group or others.
    public func load(name: String) throws(RepositoryError) -> FileSigner {
        guard KeyDirectory.validName(name) else { throw RepositoryError(.usage, "invalid key name '\(name)'") }
        var st = stat()
        guard stat(file(name), &st) == 0 else { throw RepositoryError(.key, "no key named \(name) in \(path)") }
        guard st.st_mode & 0o077 == 0 else {
            throw RepositoryError(.key, "key \(name) must not be readable by group or others (chmod 600)")
        }
        guard let bytes = try Files.read(file(name)) else { throw RepositoryError(.key, "cannot read key \(name)") }
        return try FileSigner(pem: String(decoding: bytes, as: UTF8.self), name: name)
    }

    /// The named key: `NAME.uri` (a token key) or `NAME.pem`.
    public func signer(name: String) throws(RepositoryError) -> any Signer {
        guard KeyDirectory.validName(name) else { throw RepositoryError(.usage, "invalid key name '\(name)'") }
        if FileManager.default.fileExists(atPath: uriFile(name)) {
            // The URI names the module the process loads (dlopen): only its owner may change it.
            var info = stat()
            guard stat(uriFile(name), &info) == 0, info.st_uid == geteuid(), info.st_mode & 0o022 == 0 else {
                throw RepositoryError(
                    .key, "\(uriFile(name)) must belong to this user and not be writable by group or others")
            }
            guard let bytes = try Files.read(uriFile(name)) else {
                throw RepositoryError(.key, "cannot read key \(name)")
            }
            let uri = String(decoding: bytes, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            return try PKCS11Signer(uri: uri, name: name)
        }
        return try load(name: name)
    }

    /// A key given as a name in this directory or as a `pkcs11:` URI. A URI is remembered as `NAME.uri` (NAME: its
    /// `object` label) so that later commands, `publish` and the hub find the key by name; a different key already
    /// under that name is refused.
    public func signer(nameOrURI text: String) throws(RepositoryError) -> any Signer {
        guard PKCS11URI.isURI(text) else { return try signer(name: text) }
        let uri: PKCS11URI
        do { uri = try PKCS11URI(text) } catch { throw RepositoryError(.usage, error.message) }
        guard let name = uri.object, KeyDirectory.validName(name) else {
            throw RepositoryError(.usage, "a token key's URI needs object=NAME (letters, digits, - _ .)")
        }
        let signer = try PKCS11Signer(uri: text, name: name)
        let canonical = uri.description + "\n"
        if let existing = try Files.read(uriFile(name)) {
            guard existing == Array(canonical.utf8) else {
                throw RepositoryError(.usage, "key \(name) already refers to another token key in \(path)")
            }
            return signer
        }
        guard !FileManager.default.fileExists(atPath: file(name)) else {
            throw RepositoryError(.usage, "key \(name) already exists as a file key in \(path)")
        }
        try Files.makeDirectory(path, mode: 0o700)
        try Files.writeAtomically(Array(canonical.utf8), to: uriFile(name), mode: 0o600)
        return signer
    }

    /// Loads the named key, or generates it when it does not exist yet; `nameOrURI` may be a `pkcs11:` URI.
    public func loadOrGenerate(name nameOrURI: String, type: KeyType) throws(RepositoryError) -> any Signer {
        if PKCS11URI.isURI(nameOrURI) || FileManager.default.fileExists(atPath: uriFile(nameOrURI)) {
            return try signer(nameOrURI: nameOrURI)
        }
        return FileManager.default.fileExists(atPath: file(nameOrURI))
            ? try load(name: nameOrURI) : try generate(name: nameOrURI, type: type)
    }

    /// Names of the keys present (files and token references).
    public func names() -> [String] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
        let files = entries.filter { $0.hasSuffix(".pem") || $0.hasSuffix(".uri") }.map { String($0.dropLast(4)) }
        return Array(Set(files)).sorted()
    }

    /// Every key in the directory as a keyring.
    public func keyring() throws(RepositoryError) -> Keyring {
        var ring = Keyring()
        for name in names() { ring.add(try signer(name: name)) }
        return ring
    }
}
