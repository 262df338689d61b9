public import Core
public import Crypto
import Foundation
public import HubClient
import PKI
public import TUFClient
public import X509

#if canImport(Glibc)
    import Glibc
#endif

/// Why the agent cannot go on: a short line that names the file or the peer and what to do. Keys never appear in it.
public struct AgentError: Error, Equatable, CustomStringConvertible {
    public enum Code: String, Sendable {
        /// The state directory or a file in it is missing, corrupted or truncated.
        case stateInvalid
        /// The state directory or the key is readable by group or others.
        case stateInsecure
        /// The hub's certificate failed the pin or chain check.
        case hubNotTrusted
        /// The hub refused this device (revoked, quarantined, unknown): retrying fast would not help.
        case refusedByHub
        /// The connection failed or ended.
        case connection
        /// The outbox could not be written.
        case outbox
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }
    public static func == (lhs: AgentError, rhs: AgentError) -> Bool { lhs.code == rhs.code }
}

/// What `bulwark agent pair` left in the state directory (all checked at load):
///
///     device.key  the operational P-256 key (0600)        device.crt  its certificate, issued by the hub
///     ca.crt      the hub CA                             pins        base64 SHA-256 SPKI pins of the hub, one a line
///     irk         the identity resolving key (0600)      paired      marks a paired device (one owner)
///     pins.version  the version of the published pin set the pins came from (absent: as given at pairing)
///     trust/      the update repository's TUF metadata, from root.json given at pairing (TrustRefresh)
///
/// The directory itself must be 0700: it holds the device's keys.
public struct AgentState: Sendable {
    public let directory: String
    public let deviceID: DeviceID
    public let certificate: Certificate
    public let credentials: ClientCredentials
    public let pinned: PinnedServer
    /// The version of the published pin set in use (`bulwark/pins.json`); 0 for the pins given at pairing.
    public let pinSetVersion: Int

    public var keyFile: String { directory + "/device.key" }
    public var certificateFile: String { directory + "/device.crt" }

    /// The TUF client's settings under this device's profile (`KeyPolicy.fips` under `crypto.profile: fips`).
    public var updaterConfig: UpdaterConfig {
        var config = UpdaterConfig()
        config.keyPolicy = credentials.profile == .fips ? .fips : .any
        return config
    }

    public static func load(_ directory: String, profile: CryptoProfile = .standard) throws(AgentError) -> AgentState {
        try checkPrivate(directory, what: "the state directory", fix: "chmod 700")
        try finishReplacement(directory)
        let keyFile = directory + "/device.key"
        try checkPrivate(keyFile, what: "the device key", fix: "chmod 600")
        let keyPEM = try read(keyFile)
        guard let key = try? P256.Signing.PrivateKey(pemRepresentation: keyPEM) else {
            throw AgentError(
                .stateInvalid,
                "\(keyFile) is not a P-256 private key (corrupted or truncated): restore it from a backup, or reset "
                    + "and pair again (bulwark agent pair --reset)")
        }
        let certificatePEM = try read(directory + "/device.crt")
        guard let certificate = try? Certificate(pemEncoded: certificatePEM) else {
            throw AgentError(
                .stateInvalid,
                "\(directory)/device.crt is not a certificate (corrupted or truncated): renew or pair again")
        }
        guard certificate.publicKey == Certificate.PublicKey(key.publicKey) else {
            throw AgentError(
                .stateInvalid, "\(directory)/device.crt does not belong to \(keyFile): renew or pair again")
        }
        guard let deviceID = certificate.bulwarkIdentity?.deviceID else {
            throw AgentError(.stateInvalid, "\(directory)/device.crt names no device")
        }
        let caPEM = try read(directory + "/ca.crt")
        guard let ca = try? Certificate(pemEncoded: caPEM) else {
            throw AgentError(.stateInvalid, "\(directory)/ca.crt is not a certificate: pair again")
        }
        let pinLines = try read(directory + "/pins").split(whereSeparator: \.isNewline)
        let pins = pinLines.compactMap { Data(base64Encoded: String($0)).map { [UInt8]($0) } }
        guard !pins.isEmpty, pins.count == pinLines.count, pins.allSatisfy({ $0.count == 32 }) else {
            throw AgentError(.stateInvalid, "\(directory)/pins does not hold SHA-256 pins: pair again")
        }
        var pinSetVersion = 0
        if let text = try? String(contentsOfFile: directory + "/pins.version", encoding: .utf8) {
            guard let version = Int(text.trimmingCharacters(in: .whitespacesAndNewlines)), version >= 0 else {
                throw AgentError(
                    .stateInvalid,
                    "\(directory)/pins.version is not a version number: remove it (the next refresh "
                        + "writes it again)")
            }
            pinSetVersion = version
        }
        var credentials = ClientCredentials(
            certificatePEM: Array(certificatePEM.utf8), keyPEM: Array(keyPEM.utf8), caPEM: Array(caPEM.utf8))
        credentials.profile = profile
        return AgentState(
            directory: directory, deviceID: deviceID, certificate: certificate,
            credentials: credentials,
            pinned: PinnedServer(caCertificateDER: ca.derBytes, pins: pins), pinSetVersion: pinSetVersion)
    }

    /// A renewal writes `device.key.new` and `device.crt.new`, then renames both. If both are there and belong
    /// together, the renames are (re)done; a lone or mismatched `.new` file (a crash while writing them) is removed.
    /// Either is synced (best effort: what a power loss takes back after all is done again at the next start).
    static func finishReplacement(_ directory: String) throws(AgentError) {
        let key = directory + "/device.key"
        let certificate = directory + "/device.crt"
        let keyExists = FileManager.default.fileExists(atPath: key + ".new")
        let certificateExists = FileManager.default.fileExists(atPath: certificate + ".new")
        guard keyExists || certificateExists else { return }
        defer { _ = DirectorySync.sync(directory) }
        // The pair as it will be once the renames are done (a crash may have come between the two renames).
        let keyPath = keyExists ? key + ".new" : key
        let certificatePath = certificateExists ? certificate + ".new" : certificate
        if let keyText = try? String(contentsOfFile: keyPath, encoding: .utf8),
            let newKey = try? P256.Signing.PrivateKey(pemRepresentation: keyText),
            let certificateText = try? String(contentsOfFile: certificatePath, encoding: .utf8),
            let issued = try? Certificate(pemEncoded: certificateText),
            issued.publicKey == Certificate.PublicKey(newKey.publicKey)
        {
            guard !keyExists || rename(key + ".new", key) == 0,
                !certificateExists || rename(certificate + ".new", certificate) == 0
            else {
                throw AgentError(.stateInvalid, "cannot put the renewed key and certificate in place in \(directory)")
            }
            return
        }
        unlink(key + ".new")
        unlink(certificate + ".new")
    }

    static func read(_ path: String) throws(AgentError) -> String {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw AgentError(
                .stateInvalid, "\(path) is missing or unreadable: is this a paired device's state directory?")
        }
        return text
    }

    /// Refuses a file or directory that group or others can read, as the hub refuses its own keys.
    static func checkPrivate(_ path: String, what: String, fix: String) throws(AgentError) {
        var info = stat()
        guard stat(path, &info) == 0 else {
            throw AgentError(.stateInvalid, "\(path) (\(what)) does not exist: pair first (bulwark agent pair)")
        }
        let mode = info.st_mode & 0o777
        if mode & 0o077 != 0 {
            throw AgentError(
                .stateInsecure,
                "refusing to start: \(path) (\(what)) is open to group or others (mode \(String(mode, radix: 8))); "
                    + "run: \(fix) \(path)")
        }
    }
}
