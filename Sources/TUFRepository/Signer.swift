import Crypto
import Foundation
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

/// Signers by key id.
public struct Keyring: Sendable {
    public private(set) var signers: [String: any Signer] = [:]

    public init(_ signers: [any Signer] = []) {
        for s in signers { add(s) }
    }

    public mutating func add(_ signer: any Signer) { signers[signer.keyid] = signer }

    public subscript(keyid: String) -> (any Signer)? { signers[keyid] }
}

/// A directory of private keys, `NAME.pem`, each mode 0600, the directory 0700.
///
/// Keep it outside the published repository: nothing under it is ever served.
public struct KeyDirectory: Sendable {
    public let path: String

    public init(path: String) { self.path = path }

    func file(_ name: String) -> String { path + "/" + name + ".pem" }

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

    /// Loads the named key, or generates it when it does not exist yet.
    public func loadOrGenerate(name: String, type: KeyType) throws(RepositoryError) -> FileSigner {
        FileManager.default.fileExists(atPath: file(name)) ? try load(name: name) : try generate(name: name, type: type)
    }

    /// Names of the keys present.
    public func names() -> [String] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
        return entries.filter { $0.hasSuffix(".pem") }.map { String($0.dropLast(4)) }.sorted()
    }

    /// Every key in the directory as a keyring.
    public func keyring() throws(RepositoryError) -> Keyring {
        var ring = Keyring()
        for name in names() { ring.add(try load(name: name)) }
        return ring
    }
}
