public import Crypto
public import Foundation

/// The secret that keys the audit chain. Kept outside the database (`audit.key`, 0600; later the HSM), so an
/// attacker who can rewrite the database can recompute every hash but not a single MAC.
///
/// Record n's MAC is HMAC-SHA256(key, "bulwark-audit-mac/1" ‖ record n's chain hash): the chain hash already covers
/// every field and the previous hash, so the MAC binds the record and everything before it.
public struct AuditKey: Sendable, CustomStringConvertible {
    private let key: SymmetricKey
    /// The first record the key protects, when the hub created the key file itself: records from here on must carry
    /// a MAC, so stripping them (to pass them off as written before the key existed) is refused without an anchor.
    public let keyedFrom: Int64?

    static let macLabel = Array("bulwark-audit-mac/1".utf8)

    /// `bytes` must be at least 32 bytes (a full SHA-256 block's worth of entropy is the point of the key).
    public init(bytes: [UInt8], keyedFrom: Int64? = nil) throws(StoreError) {
        guard bytes.count >= 32 else { throw StoreError(.invalid, "an audit key has at least 32 bytes") }
        self.init(unchecked: SymmetricKey(data: bytes), keyedFrom: keyedFrom)
    }

    private init(unchecked key: SymmetricKey, keyedFrom: Int64?) {
        self.key = key
        self.keyedFrom = keyedFrom
    }

    /// A fresh random key.
    public static func generate(keyedFrom: Int64?) -> (key: AuditKey, fileText: String) {
        let secret = SymmetricKey(size: .bits256)
        let key = AuditKey(unchecked: secret, keyedFrom: keyedFrom)
        return (key, key.fileText(bytes: secret.withUnsafeBytes { Array($0) }))
    }

    /// The key file: the key in base64 on the first line, then an optional `keyed-from N` line. An operator may write
    /// one with `openssl rand -base64 32` (then without `keyed-from`).
    public init(fileText: String) throws(StoreError) {
        let lines = fileText.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }
        guard let first = lines.first, let raw = Data(base64Encoded: first) else {
            throw StoreError(.invalid, "the audit key file does not start with a base64 key")
        }
        var keyedFrom: Int64?
        for line in lines.dropFirst() where !line.isEmpty {
            guard line.hasPrefix("keyed-from "), let value = Int64(line.dropFirst("keyed-from ".count)), value >= 1
            else { throw StoreError(.invalid, "the audit key file has an unknown line") }
            keyedFrom = value
        }
        try self.init(bytes: Array(raw), keyedFrom: keyedFrom)
    }

    private func fileText(bytes: [UInt8]) -> String {
        Data(bytes).base64EncodedString() + "\n" + (keyedFrom.map { "keyed-from \($0)\n" } ?? "")
    }

    /// The MAC of the record whose chain hash is `hash`.
    public func mac(for hash: [UInt8]) -> [UInt8] {
        Array(HMAC<SHA256>.authenticationCode(for: Self.macLabel + hash, using: key))
    }

    /// A key for another purpose, derived from this one (HKDF-SHA256, RFC 5869, with `purpose` as its info): every
    /// hub node holds the audit key, so each derives the same key, and the database never holds it.
    public func derivedKey(for purpose: String) -> SymmetricKey {
        HKDF<SHA256>.deriveKey(
            inputKeyMaterial: key, info: Array("bulwark derived key/1: \(purpose)".utf8), outputByteCount: 32)
    }

    /// Names the key without revealing it (a MAC of a fixed label): hub nodes sharing one store compare these.
    public var fingerprint: [UInt8] { mac(for: Array("bulwark audit key fingerprint".utf8)) }

    /// Constant-time comparison (swift-crypto's `isValidAuthenticationCode`).
    public func isValid(mac: [UInt8], for hash: [UInt8]) -> Bool {
        HMAC<SHA256>.isValidAuthenticationCode(mac, authenticating: Self.macLabel + hash, using: key)
    }

    /// Never the key itself: this value may end up in a log line or an error.
    public var description: String { "AuditKey(redacted\(keyedFrom.map { ", keyed from \($0)" } ?? ""))" }
}
