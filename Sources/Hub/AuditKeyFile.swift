import Foundation
public import Store

/// The audit MAC key's file (`audit.keyFile`, default `<data>/audit.key`): created 0600 through `SecretFiles` on
/// first start and refused when group or others can read it. It may live off the data disk, so that a copy of the
/// data directory alone cannot rewrite the audit log unnoticed. Errors name the path, never the key.
public enum AuditKeyFile {
    /// Loads the key, or creates it when missing. A key created here records the first record it protects (the
    /// record after the current `logLength`), so that stripping later MACs is caught without an anchor.
    public static func loadOrCreate(_ path: String, logLength: Int64) throws -> AuditKey {
        if FileManager.default.fileExists(atPath: path) { return try load(path) }
        let (key, fileText) = AuditKey.generate(keyedFrom: logLength + 1)
        try SecretFiles.create(path, contents: fileText)
        return key
    }

    /// Reads an existing key file (mode checked first).
    public static func load(_ path: String) throws -> AuditKey {
        let text = try SecretFiles.read(path)
        do { return try AuditKey(fileText: text) } catch {
            throw HubStartupError(
                "\(path) is not an audit key (a base64 key of at least 32 bytes, optionally a keyed-from line)")
        }
    }
}
