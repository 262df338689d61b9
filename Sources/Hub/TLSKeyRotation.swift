import Core
import Crypto
import Foundation
public import HubClient
import JSON
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import PKI
import Synchronization
public import TUF
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

    /// The CLI works on a data directory the hub has initialised (it never makes a hub's first keys), as the user
    /// that owns it: keys written by another user (root) would be unreadable to the hub, which would keep its old key
    /// and then fail to start.
    func requireHub() throws {
        guard FileManager.default.fileExists(atPath: active),
            FileManager.default.fileExists(atPath: directory + "/ca.key")
                || FileManager.default.fileExists(atPath: directory + "/ca.key.uri")
        else { throw HubStartupError("\(directory) holds no hub keys: start the hub once first (bulwark serve)") }
        var info = stat()
        guard stat(directory, &info) == 0, info.st_uid == geteuid() else {
            throw HubStartupError("run this as the user that owns \(directory) (the hub's user)")
        }
    }

    /// Completes a switch a crash interrupted: the backup key moved to `hub.key` but `hub-next.key` not yet to
    /// `hub-backup.key`, or the new certificate not yet in place. A stale `hub.crt.next` is removed. What it changed
    /// is synced (best effort: a rename lost to a power loss after all is done again from the same files at the next
    /// start).
    func finishRotation() {
        let manager = FileManager.default
        var changed = false
        if !manager.fileExists(atPath: backup), manager.fileExists(atPath: next) { changed = rename(next, backup) == 0 }
        defer { if changed { _ = DirectorySync.sync(directory) } }
        guard manager.fileExists(atPath: nextCertificate) else { return }
        if let key = try? HubCredentials.loadOrCreateSigningKey(active),
            let text = try? String(contentsOfFile: nextCertificate, encoding: .utf8),
            let issued = try? Certificate(pemEncoded: text), issued.publicKey == Certificate.PublicKey(key.publicKey)
        {
            changed = rename(nextCertificate, certificate) == 0 || changed
        } else {
            changed = unlink(nextCertificate) == 0 || changed
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

    var journal: String { directory + "/hub-rotation.json" }

    /// One key operation at a time on this data directory (`flock`, released with the returned lock).
    func lock() throws -> RepositoryLock {
        do { return try RepositoryLock(directory: directory, name: "tls.lock") } catch {
            throw HubStartupError("cannot lock \(directory) for a key operation: \(error)")
        }
    }

    func certificateMatches(_ key: P256.Signing.PrivateKey) -> Bool {
        guard let text = try? String(contentsOfFile: certificate, encoding: .utf8),
            let issued = try? Certificate(pemEncoded: text)
        else { return false }
        return issued.publicKey == Certificate.PublicKey(key.publicKey)
    }

    /// Makes the renames durable before the final pin set is published: a directory that cannot be synced stops the
    /// rotation there (the journal resumes it at the next start), rather than publish a pin set without the key a
    /// power loss could bring back.
    func syncDirectory() throws { try SecretFiles.syncDirectory(directory) }

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
/// With several nodes, each set also holds the other nodes' pins (`ClusterPins`): one node's rotation leaves theirs.
/// Every device that held {A, B} or {A, B, C} trusts B throughout, so none is stranded; each new set shares a key
/// with the one before, which the agent requires (`PinSet.evaluate`).
public enum TLSKeyRotation {
    public struct Result: Sendable {
        public var previousPin: [UInt8]
        public var pins: [[UInt8]]
        public var versions: [Int]
    }

    /// Publishes `pins` as the next version of `bulwark/pins.json` as they are, without the rules below (a test's
    /// attacker, who holds the repository's keys, publishes what they like).
    @discardableResult
    public static func publish(
        _ pins: [[UInt8]], repository: String, keyring: Keyring, dataDirectory: String, keyPolicy: KeyPolicy = .any,
        now: Date = Date()
    ) async throws -> Int {
        try await publish(
            repository: repository, keyring: keyring, dataDirectory: dataDirectory, keyPolicy: keyPolicy, now: now,
            rules: nil, select: { _ in pins }
        ).version
    }

    /// What the repository publishes now: the set, read back from its target file and checked against the hash the
    /// signed metadata lists, and when a set last added keys (`keysAddedAt`, signed with it).
    struct Published {
        var pins: [[UInt8]]
        var keysAddedAt: Date?
    }

    /// The rules a set follows so that no device is stranded (`PinSet.evaluate`: a device takes a set that adds at
    /// most two keys to what it holds, and one that skipped a set adds up the keys of both): a set adds at most two
    /// keys to the published one (to `baseline` when none is published yet: what devices hold since pairing), and a
    /// set that adds keys waits `settle` seconds after the last one that did (devices refresh every 6 hours).
    struct Rules {
        var baseline: [[UInt8]]
        var settle: TimeInterval
    }

    /// Publishes the set `select` makes from what is published now as the next version of `bulwark/pins.json`,
    /// signed by the targets role (and a new snapshot and timestamp) with `keyring`, all under the repository's lock,
    /// following `rules`. Refused when other edits are staged: they are not this command's to publish. The version
    /// is above both the repository's and the hub's own record (`DATA/pins.version`), so a repository rebuilt or a
    /// target removed by hand never makes devices refuse every later set as older.
    static func publish(
        repository: String, keyring: Keyring, dataDirectory: String, keyPolicy: KeyPolicy, now: Date, rules: Rules?,
        select: (Published?) throws -> [[UInt8]]
    ) async throws -> (version: Int, pins: [[UInt8]]) {
        let lock = try RepositoryLock(directory: repository)
        defer { lock.release() }
        let files = FileRepository(directory: repository)
        var editor = try files.open()
        // Under `crypto.profile: fips`, the pin set is signed only by FIPS 186-5 keys, like every other publish.
        editor.keyPolicy = keyPolicy
        guard editor.stagedRoles.isEmpty else {
            throw HubStartupError(
                "\(repository) has staged edits (\(editor.stagedRoles.joined(separator: ", "))): publish or discard "
                    + "them first")
        }
        // Without rules (a test's attacker) a set that cannot be read is no obstacle.
        let published =
            rules == nil
            ? (try? publishedSet(editor, repository: repository)) ?? nil
            : try publishedSet(editor, repository: repository)
        let pins = try select(published)
        let baseline = published?.pins ?? rules?.baseline ?? pins
        let added = pins.filter { !baseline.contains($0) }.count
        if let rules {
            guard added <= 2 else {
                throw HubStartupError(
                    "this set would add \(added) keys to what devices hold: they take at most two at a time (if this "
                        + "node's own pins are not published yet, run bulwark hub publish-pins first)")
            }
            if added > 0, let last = published?.keysAddedAt, now.timeIntervalSince(last) < rules.settle {
                throw HubStartupError(
                    "the last pin set that added keys was published at \(last.formatted(.iso8601)) (perhaps by another "
                        + "node); devices may not hold it yet: publish a set that adds keys after "
                        + "\(last.addingTimeInterval(rules.settle).formatted(.iso8601)) (--settle)")
            }
        }
        let recorded = (try? String(contentsOfFile: dataDirectory + "/pins.version", encoding: .utf8)).flatMap {
            Int($0.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        let version = max(currentVersion(editor) ?? 0, recorded ?? 0) + 1
        var custom = JSONObject()
        custom.set("pinSetVersion", .integer(Int64(version)))
        if let addedAt = added > 0 ? now : published?.keysAddedAt {
            custom.set("keysAddedAt", .integer(Int64(addedAt.timeIntervalSince1970)))
        }
        try editor.addTarget(
            path: PinSet.targetPath, contents: PinSet(version: version, pins: pins).json, role: "targets",
            custom: .object(custom))
        do { try await files.publish(&editor, keyring: keyring) } catch {
            throw HubStartupError(
                "cannot publish the pin set: \(error) (do --keys hold the targets, snapshot and timestamp keys?)")
        }
        try SecretFiles.replace(dataDirectory + "/pins.version", contents: "\(version)\n", secret: false)
        return (version, pins)
    }

    /// `bulwark hub publish-pins`: the current set {key in use, backup} with the other nodes' pins (several nodes:
    /// each has keys of its own), unless a rotation is unfinished, following `Rules`. A node whose pins would add
    /// more than two keys waits (named in `waiting`), and so does one whose record is not fresh (a node not running
    /// now adds no key; what of it is published already stays). A set that only keeps or drops keys goes out at once.
    public static func publishCurrent(
        dataDirectory: String, repository: String, keyring: Keyring, keyPolicy: KeyPolicy = .any,
        otherNodes: [ClusterPins.Node] = [], settle: TimeInterval = 0, now: Date = Date()
    ) async throws -> (version: Int, pins: [[UInt8]], waiting: [String]) {
        let files = TLSKeyFiles(dataDirectory)
        try files.requireHub()
        let lock = try files.lock()
        defer { lock.release() }
        if let journal = RotationJournal.load(files), journal.stage != .done {
            throw HubStartupError("a key rotation is unfinished: run bulwark hub rotate-tls-key to finish it")
        }
        let own = try currentPins(dataDirectory: dataDirectory)
        var waiting: [String] = []
        let result = try await publish(
            repository: repository, keyring: keyring, dataDirectory: dataDirectory, keyPolicy: keyPolicy, now: now,
            rules: Rules(baseline: own, settle: settle)
        ) { published in
            waiting = []
            let baseline = published?.pins ?? own
            func added(_ pins: [[UInt8]]) -> Int { pins.filter { !baseline.contains($0) }.count }
            var pins = own
            for node in otherNodes {
                let kept = node.pins.filter { baseline.contains($0) }
                let candidate = try withOtherNodes(pins, node.fresh ? node.pins : kept)
                if node.fresh, added(candidate) <= 2 {
                    pins = candidate
                } else {
                    pins = try withOtherNodes(pins, kept)
                    if kept.count < node.pins.count { waiting.append(node.name) }
                }
            }
            return pins
        }
        return (result.version, result.pins, waiting)
    }

    /// The pin set the repository publishes now; nil when none is listed. A set listed whose file is missing or does
    /// not match the hash the metadata lists is refused: the rules must never pass for want of a baseline.
    static func publishedSet(_ editor: RepositoryEditor, repository: String) throws -> Published? {
        guard case .object(let entry)? = editor.targets(of: "targets")[PinSet.targetPath] else { return nil }
        do { try editor.verifySignatures(role: "targets") } catch {
            throw HubStartupError("the repository's targets metadata does not verify: \(error)")
        }
        guard case .object(let hashes)? = entry["hashes"], let digest = hashes["sha256"]?.stringValue else {
            throw HubStartupError("the published pin set lists no SHA-256")
        }
        var addedAt: Date?
        if case .object(let custom)? = entry["custom"], let seconds = custom["keysAddedAt"]?.integerValue {
            addedAt = Date(timeIntervalSince1970: Double(seconds))
        }
        for name in [digest + ".pins.json", "pins.json"] {
            guard let data = FileManager.default.contents(atPath: repository + "/targets/bulwark/" + name),
                SHA256.hash(data: data).map({ String(format: "%02x", $0) }).joined() == digest,
                let set = try? PinSet(json: Array(data))
            else { continue }
            return Published(pins: set.pins, keysAddedAt: addedAt)
        }
        throw HubStartupError(
            "the published pin set's file (targets/bulwark/\(digest).pins.json) is missing or does not match its hash")
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

    /// This node's pins first, then the other nodes' not among them; refused beyond what a device holds.
    static func withOtherNodes(_ own: [[UInt8]], _ others: [[UInt8]]) throws -> [[UInt8]] {
        let pins = ClusterPins.distinct(own + others)
        guard pins.count <= PinSet.maximumPins else {
            throw HubStartupError(
                "the nodes hold \(pins.count) pins, more than a device keeps (\(PinSet.maximumPins)): take nodes no "
                    + "longer in service out with bulwark node forget")
        }
        return pins
    }

    /// The version of the published pin set, if there is one.
    static func currentVersion(_ editor: RepositoryEditor) -> Int? {
        guard case .object(let entry)? = editor.targets(of: "targets")[PinSet.targetPath],
            case .object(let custom)? = entry["custom"], let version = custom["pinSetVersion"]?.integerValue
        else { return nil }
        return Int(version)
    }

    /// Rotates the hub's TLS key as described above, under a lock on the data directory, with its progress in
    /// `DATA/hub-rotation.json`: run again after a failure (the hub did not switch in time, a crash), it resumes
    /// where it stopped instead of starting another rotation. A new rotation is refused until the last one's final
    /// set has been published for `settle` seconds (devices refresh every few hours; a second rotation before they
    /// hold the first one's set would strand those that hold only its predecessor). `presentedPin` asks the running
    /// hub which key it presents; the final set is published only once it answers with the new key, or at once
    /// when `hubRunning` is false (the hub is stopped and presents the new key when it starts).
    public static func rotate(
        dataDirectory: String, hubNames: [String], crlDistributionPoints: CRLDistributionPoints?,
        repository: String, keyring: Keyring, wait: Duration, settle: TimeInterval, hubRunning: Bool = true,
        now: Date = Date(), keyPolicy: KeyPolicy = .any, otherNodes: [ClusterPins.Node] = [],
        presentedPin: @Sendable () async -> [UInt8]?
    ) async throws -> Result {
        /// Each set keeps the other nodes' published pins; a node whose pins are not all published (a node that
        /// joined and waits for `publish-pins`) stops the rotation, which would otherwise leave it out of every set.
        /// (Checked when a rotation starts: one that is under way finishes, and the node waits for the next publish.)
        func withOthers(_ own: [[UInt8]], _ published: Published?, starting: Bool) throws -> [[UInt8]] {
            let unpublished = otherNodes.filter { node in
                node.fresh && node.pins.contains { published?.pins.contains($0) != true }
            }
            guard !starting || unpublished.isEmpty else {
                throw HubStartupError(
                    "the pins of \(unpublished.map(\.name).joined(separator: ", ")) are not published yet: run bulwark "
                        + "hub publish-pins first")
            }
            return try withOtherNodes(own, otherNodes.flatMap(\.pins).filter { published?.pins.contains($0) == true })
        }
        let files = TLSKeyFiles(dataDirectory)
        try files.requireHub()
        let lock = try files.lock()
        defer { lock.release() }
        files.finishRotation()
        var journal: RotationJournal
        var versions: [Int] = []
        if let unfinished = RotationJournal.load(files), unfinished.stage != .done {
            journal = unfinished
        } else {
            if let last = RotationJournal.load(files), let completed = last.completedAt,
                now.timeIntervalSince(completed) < settle
            {
                throw HubStartupError(
                    "the last rotation finished at \(completed.formatted(.iso8601)); devices may not hold its pin set "
                        + "yet: rotate again after \(completed.addingTimeInterval(settle).formatted(.iso8601)) "
                        + "(--settle)")
            }
            // A `hub-next.key` left by a run that stopped before publishing is as good as a new one.
            let active = try HubCredentials.loadOrCreateSigningKey(files.active)
            let backup = try HubCredentials.loadOrCreateSigningKey(files.backup)
            let next = try HubCredentials.loadOrCreateSigningKey(files.next)
            journal = RotationJournal(
                previous: ServerIdentity.pin(active.publicKey), active: ServerIdentity.pin(backup.publicKey),
                backup: ServerIdentity.pin(next.publicKey), stage: .published, completedAt: nil)
            // The first step adds a key, so it follows the rules of any set that adds keys (`Rules`).
            let previous = journal
            versions.append(
                try await publish(
                    repository: repository, keyring: keyring, dataDirectory: dataDirectory, keyPolicy: keyPolicy,
                    now: now, rules: Rules(baseline: [previous.previous, previous.active], settle: settle)
                ) { published in
                    try withOthers([previous.previous, previous.active, previous.backup], published, starting: true)
                }.version)
            try journal.save(files)
        }
        if journal.stage == .published {
            try switchKeys(files, journal, hubNames: hubNames, crlDistributionPoints: crlDistributionPoints, now: now)
            journal.stage = .switched
            try journal.save(files)
        }
        if hubRunning {
            let deadline = ContinuousClock.now + wait
            var presented = await presentedPin()
            while presented != journal.active, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(200))
                presented = await presentedPin()
            }
            guard presented == journal.active else {
                throw HubStartupError(
                    (presented == nil ? "no hub answered" : "the hub still presents another key")
                        + " after \(wait); the set that keeps the previous key stays published. Run the command again "
                        + "to finish (it resumes), or with --no-hub if the hub is stopped")
            }
        }
        let switched = journal
        versions.append(
            try await publish(
                repository: repository, keyring: keyring, dataDirectory: dataDirectory, keyPolicy: keyPolicy, now: now,
                rules: Rules(baseline: [switched.previous, switched.active], settle: settle)
            ) { published in try withOthers([switched.active, switched.backup], published, starting: false) }.version)
        journal.stage = .done
        journal.completedAt = now
        try journal.save(files)
        return Result(previousPin: journal.previous, pins: [journal.active, journal.backup], versions: versions)
    }

    /// B (the backup) becomes the key in use with a new certificate and C (`hub-next.key`) the backup: the
    /// certificate is written and synced first, then three renames, then the directory is synced. Already done (a
    /// resumed run) when `hub.key` is B.
    static func switchKeys(
        _ files: TLSKeyFiles, _ journal: RotationJournal, hubNames: [String],
        crlDistributionPoints: CRLDistributionPoints?, now: Date
    ) throws {
        let active = try HubCredentials.loadOrCreateSigningKey(files.active)
        if ServerIdentity.pin(active.publicKey) == journal.active {
            // Switched already; a certificate that does not match (a crash before its rename) is issued again.
            if !files.certificateMatches(active) {
                try issueCertificate(
                    for: active, files, hubNames: hubNames, crlDistributionPoints: crlDistributionPoints, now: now)
                guard rename(files.nextCertificate, files.certificate) == 0 else {
                    throw HubStartupError("cannot put the new TLS certificate in place in \(files.directory)")
                }
            }
            // The earlier run's renames may not have been synced (it stopped before, or its sync failed).
            try files.syncDirectory()
            return
        }
        let backup = try HubCredentials.loadOrCreateSigningKey(files.backup)
        let next = try HubCredentials.loadOrCreateSigningKey(files.next)
        guard ServerIdentity.pin(active.publicKey) == journal.previous,
            ServerIdentity.pin(backup.publicKey) == journal.active,
            ServerIdentity.pin(next.publicKey) == journal.backup
        else {
            throw HubStartupError(
                "the TLS keys in \(files.directory) are not the ones this rotation published (hub-rotation.json); "
                    + "restore them or remove hub-rotation.json after checking which keys devices pin")
        }
        try issueCertificate(
            for: backup, files, hubNames: hubNames, crlDistributionPoints: crlDistributionPoints, now: now)
        guard rename(files.backup, files.active) == 0, rename(files.next, files.backup) == 0,
            rename(files.nextCertificate, files.certificate) == 0
        else { throw HubStartupError("cannot put the new TLS key in place in \(files.directory)") }
        try files.syncDirectory()
    }

    static func issueCertificate(
        for key: P256.Signing.PrivateKey, _ files: TLSKeyFiles, hubNames: [String],
        crlDistributionPoints: CRLDistributionPoints?, now: Date
    ) throws {
        var authority = try HubCredentials.loadAuthority(files.directory)
        authority.crlDistributionPoints = crlDistributionPoints
        let issued = try authority.issueServerCertificate(
            publicKey: key.publicKey, dnsNames: ["localhost"] + hubNames, ipAddresses: [[127, 0, 0, 1]], now: now)
        try SecretFiles.replace(files.nextCertificate, contents: issued.pem, secret: false)
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
                            complete(PinnedServer.pin(of: certificates.first))
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

/// `DATA/hub-rotation.json`: where a key rotation stands, so that running the command again resumes it.
struct RotationJournal: Equatable {
    enum Stage: String { case published, switched, done }
    var previous: [UInt8]
    var active: [UInt8]
    var backup: [UInt8]
    var stage: Stage
    var completedAt: Date?

    static func load(_ files: TLSKeyFiles) -> RotationJournal? {
        guard let data = FileManager.default.contents(atPath: files.journal),
            let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
            let previous = (object["previous"] as? String).flatMap({ Data(base64Encoded: $0) }),
            let active = (object["active"] as? String).flatMap({ Data(base64Encoded: $0) }),
            let backup = (object["backup"] as? String).flatMap({ Data(base64Encoded: $0) }),
            let stage = (object["stage"] as? String).flatMap(Stage.init(rawValue:))
        else { return nil }
        let completed = (object["completedAt"] as? Double).map { Date(timeIntervalSince1970: $0) }
        return RotationJournal(
            previous: [UInt8](previous), active: [UInt8](active), backup: [UInt8](backup), stage: stage,
            completedAt: completed)
    }

    func save(_ files: TLSKeyFiles) throws {
        var object: [String: Any] = [
            "previous": Data(previous).base64EncodedString(), "active": Data(active).base64EncodedString(),
            "backup": Data(backup).base64EncodedString(), "stage": stage.rawValue,
        ]
        if let completedAt { object["completedAt"] = completedAt.timeIntervalSince1970 }
        let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
        try SecretFiles.replace(files.journal, contents: String(decoding: data, as: UTF8.self), secret: false)
    }
}
