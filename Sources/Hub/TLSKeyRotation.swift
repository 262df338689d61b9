import Crypto
import Foundation
public import HubClient
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import PKI
import Synchronization
import TUF
public import TUFRepository
import X509

#if canImport(Glibc)
    import Glibc
#endif

/// The TLS key files in the data directory and the order a rotation changes them in, so that a crash at any point
/// leaves a state the next start (or the next rotation) finishes, never a hub without a key devices pin.
struct TLSKeyFiles {
    let directory: String

    init(_ directory: String) { self.directory = directory }

    var active: String { directory + "/hub.key" }
    var certificate: String { directory + "/hub.crt" }
    var backup: String { directory + "/hub-backup.key" }
    /// The key that becomes the backup, made (and its pin published) before the switch.
    var next: String { directory + "/hub-next.key" }
    var nextCertificate: String { directory + "/hub.crt.next" }

    /// The CLI works on a data directory the hub has initialised (it never makes a hub's first keys).
    func requireHub() throws {
        guard FileManager.default.fileExists(atPath: active),
            FileManager.default.fileExists(atPath: directory + "/ca.key")
        else { throw HubStartupError("\(directory) holds no hub keys: start the hub once first (bulwark serve)") }
    }

    /// Completes a switch a crash interrupted: the backup key moved to `hub.key` but `hub-next.key` not yet to
    /// `hub-backup.key`, or the new certificate not yet in place. A stale `hub.crt.next` is removed.
    func finishRotation() {
        let manager = FileManager.default
        if !manager.fileExists(atPath: backup), manager.fileExists(atPath: next) { rename(next, backup) }
        guard manager.fileExists(atPath: nextCertificate) else { return }
        if let key = try? HubCredentials.loadOrCreateSigningKey(active),
            let text = try? String(contentsOfFile: nextCertificate, encoding: .utf8),
            let issued = try? Certificate(pemEncoded: text), issued.publicKey == Certificate.PublicKey(key.publicKey)
        {
            rename(nextCertificate, certificate)
        } else {
            unlink(nextCertificate)
        }
    }

    /// The key, certificate and backup key on disk, when they belong together and the certificate comes from
    /// `authority` and is valid at `now`; nil in the middle of a switch (the caller keeps what it has).
    func load(authority: CertificateAuthority, now: Date) -> (
        Certificate, P256.Signing.PrivateKey, P256.Signing.PublicKey
    )? {
        guard let keyText = try? SecretFiles.read(active),
            let key = try? P256.Signing.PrivateKey(pemRepresentation: keyText),
            let backupText = try? SecretFiles.read(backup),
            let backupKey = try? P256.Signing.PrivateKey(pemRepresentation: backupText),
            backupKey.publicKey.derRepresentation != key.publicKey.derRepresentation,
            let text = try? String(contentsOfFile: certificate, encoding: .utf8),
            let issued = try? Certificate(pemEncoded: text),
            issued.publicKey == Certificate.PublicKey(key.publicKey),
            issued.issuer == authority.certificate.subject,
            authority.certificate.publicKey.isValidSignature(issued.signature, for: issued),
            issued.notValidBefore <= now, now < issued.notValidAfter
        else { return nil }
        return (issued, key, backupKey.publicKey)
    }

    /// A file's identity and change time, to notice a replacement cheaply.
    func fingerprint() -> [Int] {
        [active, certificate, backup].flatMap { path -> [Int] in
            var info = stat()
            guard stat(path, &info) == 0 else { return [0, 0, 0] }
            return [Int(info.st_ino), Int(info.st_mtim.tv_sec), Int(info.st_mtim.tv_nsec)]
        }
    }
}

/// Publishes the hub's pin set through TUF and rotates the hub's TLS key (`bulwark hub publish-pins`,
/// `bulwark hub rotate-tls-key`).
///
/// A rotation, with A the key in use, B the backup and C a new key:
/// 1. C is made (`hub-next.key`) and the pin set {A, B, C} is published: devices that refresh now keep connecting
///    to A and will accept B and C.
/// 2. B becomes the key in use with a new certificate, C the backup; the running hub picks them up
///    (`TLSKeyWatcher`) and presents B to new connections.
/// 3. Once the hub presents B (or no hub runs), {B, C} is published: A, perhaps compromised, is pinned no more.
/// Every device that held {A, B} or {A, B, C} trusts B throughout, so none is stranded; each new set shares a key
/// with the one before, which the agent requires (`PinSet.evaluate`).
public enum TLSKeyRotation {
    public struct Result: Sendable {
        public var previousPin: [UInt8]
        public var pins: [[UInt8]]
        public var versions: [Int]
    }

    /// Publishes `pins` as the next version of `bulwark/pins.json`, signed by the targets role (and a new snapshot
    /// and timestamp) with `keyring`. Refused when other edits are staged: they are not this command's to publish.
    @discardableResult
    public static func publish(_ pins: [[UInt8]], repository: String, keyring: Keyring) async throws -> Int {
        let lock = try RepositoryLock(directory: repository)
        defer { lock.release() }
        var editor = try RepositoryEditor.open(at: repository)
        guard editor.stagedRoles.isEmpty else {
            throw HubStartupError(
                "\(repository) has staged edits (\(editor.stagedRoles.joined(separator: ", "))): publish or discard "
                    + "them first")
        }
        let version = (currentVersion(editor) ?? 0) + 1
        var custom = JSONObject()
        custom.set("pinSetVersion", .integer(Int64(version)))
        try editor.addTarget(
            path: PinSet.targetPath, contents: PinSet(version: version, pins: pins).json, role: "targets",
            custom: .object(custom))
        do { try await editor.publish(keyring: keyring) } catch {
            throw HubStartupError(
                "cannot publish the pin set: \(error) (do --keys hold the targets, snapshot and "
                    + "timestamp keys?)")
        }
        return version
    }

    /// The pins of the key in use and of the backup key, from the data directory.
    public static func currentPins(dataDirectory: String) throws -> [[UInt8]] {
        let files = TLSKeyFiles(dataDirectory)
        try files.requireHub()
        files.finishRotation()
        return try [files.active, files.backup].map {
            ServerIdentity.pin(try HubCredentials.loadOrCreateSigningKey($0).publicKey)
        }
    }

    /// The version of the published pin set, if there is one.
    static func currentVersion(_ editor: RepositoryEditor) -> Int? {
        guard case .object(let entry)? = editor.targets(of: "targets")[PinSet.targetPath],
            case .object(let custom)? = entry["custom"], let version = custom["pinSetVersion"]?.integerValue
        else { return nil }
        return Int(version)
    }

    /// Rotates the hub's TLS key as described above. `presentedPin` asks the running hub which key it presents
    /// (nil: no hub answers); the final publication waits up to `wait` for it to present the new key.
    public static func rotate(
        dataDirectory: String, hubNames: [String], crlDistributionPoints: CRLDistributionPoints?,
        repository: String, keyring: Keyring, wait: Duration, now: Date = Date(),
        presentedPin: @Sendable () async -> [UInt8]?
    ) async throws -> Result {
        let files = TLSKeyFiles(dataDirectory)
        try files.requireHub()
        files.finishRotation()
        var authority = try HubCredentials.loadAuthority(dataDirectory)
        authority.crlDistributionPoints = crlDistributionPoints
        let active = try HubCredentials.loadOrCreateSigningKey(files.active)
        let backup = try HubCredentials.loadOrCreateSigningKey(files.backup)
        // An earlier rotation stopped after step 1: its new key was published, so it is the one to use.
        let next = try HubCredentials.loadOrCreateSigningKey(files.next)
        let (a, b, c) = (
            ServerIdentity.pin(active.publicKey), ServerIdentity.pin(backup.publicKey),
            ServerIdentity.pin(next.publicKey)
        )
        let first = try await publish([a, b, c], repository: repository, keyring: keyring)

        let issued = try authority.issueServerCertificate(
            publicKey: backup.publicKey, dnsNames: ["localhost"] + hubNames, ipAddresses: [[127, 0, 0, 1]], now: now)
        try SecretFiles.writePublic(files.nextCertificate, contents: issued.pem)
        guard rename(files.backup, files.active) == 0, rename(files.next, files.backup) == 0,
            rename(files.nextCertificate, files.certificate) == 0
        else { throw HubStartupError("cannot put the new TLS key in place in \(dataDirectory)") }

        let deadline = ContinuousClock.now + wait
        while let presented = await presentedPin(), presented != b, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(200))
        }
        if let presented = await presentedPin(), presented != b {
            throw HubStartupError(
                "the running hub still presents the previous key after \(wait); the pin set with it stays published "
                    + "(version \(first)); run the command again once the hub has the new key")
        }
        let second = try await publish([b, c], repository: repository, keyring: keyring)
        return Result(previousPin: a, pins: [b, c], versions: [first, second])
    }

    /// The pin of the key a hub listener presents (nil when nothing answers): a TLS handshake that reads the
    /// server's certificate and ends before any client certificate is sent.
    public static func presentedPin(host: String, port: Int) async -> [UInt8]? {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.minimumTLSVersion = .tlsv13
        tls.certificateVerification = .none
        guard let context = try? NIOSSLContext(configuration: tls) else { return nil }
        let group = MultiThreadedEventLoopGroup.singleton
        let promise = group.next().makePromise(of: [UInt8]?.self)
        let once = Mutex(false)
        let complete: @Sendable ([UInt8]?) -> Void = { pin in
            guard
                once.withLock({ done in
                    defer { done = true }
                    return !done
                })
            else { return }
            promise.succeed(pin)
        }
        let bootstrap = ClientBootstrap(group: group).connectTimeout(.seconds(3)).channelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(
                    NIOSSLClientHandler(
                        context: context, serverHostname: nil,
                        customVerificationCallback: { certificates, verification in
                            let spki = try? certificates.first?.extractPublicKey().toSPKIBytes()
                            complete(spki.map { Array(SHA256.hash(data: $0)) })
                            verification.succeed(.failed)
                        }))
            }
        }
        guard let channel = try? await bootstrap.connect(host: host, port: port).get() else {
            complete(nil)
            return nil
        }
        let timeout = channel.eventLoop.scheduleTask(in: .seconds(5)) { complete(nil) }
        let pin = try? await promise.futureResult.get()
        timeout.cancel()
        try? await channel.close()
        return pin ?? nil
    }
}
