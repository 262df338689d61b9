import Core
import Crypto
import Foundation
import Logging
import NIOCore
import NIOPosix
import PKI
import Pairing
import ServiceLifecycle
import Store
import Synchronization
import X509

/// Pending claims and failed attempts, kept in the store so that every hub node sees them at once: a claim entered
/// on one node is used on another, once, and a device's lock-out counts its failures on all of them (a restart
/// forgets neither). A claim expires (default 10 minutes) and is consumed by the first successful pairing.
///
/// A label holds the device's setup secret, so it is sealed before it is stored: AES-GCM (the device id as its
/// associated data, so a sealed label moved to another device's row does not open) under a key each node derives
/// from the audit key, which every node holds and the database never does.
struct PairingClaims: Sendable {
    let store: any HubStore
    private let sealing: SymmetricKey
    let lifetime: TimeInterval
    /// Failures after the peer proved the device's identity key (a wrong label secret): per device, in the store.
    let policy: LockoutPolicy
    /// How long a session's hold on a claim lasts at most: the pairing deadline (30 s) plus twice the clock skew
    /// nodes may have (`cluster.maxClockSkewSeconds`, 30 s) and a margin, so a node that dies in the middle of a
    /// pairing frees the claim for another session after it. A session whose hold lapsed cannot use the claim
    /// anyway (`consume` takes only the holder's).
    static let holdTime: TimeInterval = 120
    /// Failures before any proof (anyone can send a hello naming any device): per source address, so a stranger
    /// locks out only itself. Kept per node: it guards the node's accept loop, and it guesses no secret.
    let sources: SourceLockout

    /// Counts pairings, failures and lock-outs.
    let metrics: HubMetrics?

    init(
        store: any HubStore, auditKey: AuditKey, lifetime: TimeInterval = 600, policy: LockoutPolicy = .init(),
        metrics: HubMetrics? = nil
    ) {
        self.store = store
        sealing = auditKey.derivedKey(for: "pairing claims")
        self.metrics = metrics
        self.lifetime = lifetime
        self.policy = policy
        sources = SourceLockout(policy: policy)
    }

    /// Records the operator's claim (replacing the device's earlier one); returns when it expires.
    func add(_ label: PairingLabel, now: Date) async throws -> Date {
        let expires = now.addingTimeInterval(lifetime)
        let sealed = try AES.GCM.seal(
            Array(label.text.utf8), using: sealing,
            authenticating: Self.associatedData(label.deviceID, suite: label.suite.name, expires: expires))
        guard let combined = sealed.combined else { throw PairingError(.invalidLabel, "the label could not be sealed") }
        try await store.putClaim(
            StoredClaim(
                device: label.deviceID, suite: label.suite.name, sealedLabel: Array(combined), expires: expires))
        return expires
    }

    /// The claim for a device, if one is pending and the device is not locked out. Looking it up does not hold it:
    /// anyone can send a hello naming the device, so a session holds the claim only once its peer proved the
    /// device's key (`hold`), and a stranger's silent connection cannot keep the device from pairing.
    func claim(for device: DeviceID, now: Date) async throws -> PairingLabel {
        try await refuseIfLockedOut(device, now: now)
        guard let claim = try await store.claim(of: device, at: now) else {
            throw PairingError(.noClaim, "no pending claim")
        }
        guard let box = try? AES.GCM.SealedBox(combined: claim.sealedLabel),
            let text = try? AES.GCM.open(
                box, using: sealing,
                authenticating: Self.associatedData(device, suite: claim.suite, expires: claim.expires)),
            let label = try? PairingLabel(text: String(decoding: text, as: UTF8.self)), label.deviceID == device
        else { throw PairingError(.noClaim, "the stored claim does not open with this node's key") }
        return label
    }

    private func refuseIfLockedOut(_ device: DeviceID, now: Date) async throws {
        if let failures = try await store.pairingFailures(of: device),
            let until = policy.lockedUntil(failures: failures.count, lastFailure: failures.last.timeIntervalSince1970),
            until > now.timeIntervalSince1970
        {
            metrics?.pairing(.lockedOut)
            throw PairingError(.lockedOut, "locked out for \(Int(until - now.timeIntervalSince1970)) s more")
        }
    }

    /// What a sealed label is bound to: its device, suite and expiry (a row edited in the database, or a sealed label
    /// moved to another device's row or given a longer life, does not open).
    static func associatedData(_ device: DeviceID, suite: String, expires: Date) -> [UInt8] {
        let millis = Int64((expires.timeIntervalSince1970 * 1000).rounded())
        return Array("bulwark claim/1 \(device.rawValue) \(suite) \(millis)".utf8)
    }

    /// The peer proved the device's key: this session (`holder`) holds the claim, one session at a time on all
    /// nodes, if it is still pending and the device is not locked out. The lock-out is read again once the claim is
    /// held: a failed session counts its failure before it releases the claim (`failed`), so a session that got the
    /// claim after it sees that failure, on whichever node it runs.
    func hold(_ device: DeviceID, holder: String, now: Date) async throws {
        guard try await store.holdClaim(of: device, holder: holder, until: now + Self.holdTime, at: now) else {
            guard try await store.claim(of: device, at: now) != nil else {
                throw PairingError(.noClaim, "no pending claim")
            }
            throw PairingError(.claimInUse, "the claim is held by another session of this device")
        }
        do { try await refuseIfLockedOut(device, now: now) } catch {
            try? await store.releaseClaim(of: device, holder: holder)
            throw error
        }
    }

    /// `bulwark device revoke`: a revoked device must not pair back in on a claim made before the revocation.
    func drop(_ device: DeviceID) async throws { try await store.removeClaim(of: device, holder: nil) }

    /// The session that holds the claim uses it up; refused when it no longer holds it (its hold lapsed and another
    /// session took the claim, or the claim was withdrawn).
    func consume(_ device: DeviceID, holder: String) async throws {
        guard try await store.removeClaim(of: device, holder: holder) else {
            throw PairingError(.noClaim, "the claim is no longer held by this session")
        }
    }

    /// Claims not yet used or expired, soonest to expire first (the dashboard).
    func pending(now: Date) async throws -> [(device: DeviceID, suite: String, expires: Date)] {
        try await store.pendingClaims(at: now).map { ($0.device, $0.suite, $0.expires) }
    }

    /// Claims not yet used or expired (for `/metrics`).
    func openClaims(now: Date) async throws -> Int { try await store.pendingClaims(at: now).count }

    /// The device paired (its claim was used up by `consume`): its failures are forgotten.
    func succeeded(_ device: DeviceID) async throws {
        metrics?.pairing(.paired)
        try await store.clearPairingFailures(of: device)
    }

    /// A session failed: count the failure against the device (only once the peer had proved the device's key) or
    /// else against its source address, and then release the claim it held (in that order: see `hold`). A claim
    /// whose release fails is free again when its hold lapses.
    func failed(
        _ device: DeviceID?, holder: String, source: String?, now: Date, countedAgainstDevice: Bool, heldClaim: Bool
    ) async throws {
        if let device, countedAgainstDevice {
            _ = try await store.recordPairingFailure(of: device, at: now)
        } else if let source {
            sources.recordFailure(source, now: now.timeIntervalSince1970)
        }
        if let device, heldClaim { try await store.releaseClaim(of: device, holder: holder) }
    }
}

/// Unauthenticated pairing failures per source address, checked when TCP accepts (synchronously, before the hub
/// says anything), so it lives behind a lock rather than in the claims actor.
final class SourceLockout: Sendable {
    private let limiter: Mutex<AttemptLimiter<String>>

    init(policy: LockoutPolicy) { limiter = Mutex(AttemptLimiter(policy: policy)) }

    func lockedUntil(_ source: String, now: Double) -> Double? {
        limiter.withLock { $0.lockedUntil(source, now: now) }
    }

    func recordFailure(_ source: String, now: Double) { limiter.withLock { $0.recordFailure(source, now: now) } }
}

/// The pairing listener: a TCP port speaking the pairing protocol (Noise XKpsk3 inside 2-byte frames). It needs no
/// TLS: the Noise handshake authenticates both ends with the label's secret and the device's identity key.
struct PairingListener: Service {
    let host: String
    let port: Int
    let credentials: HubCredentials
    let claims: PairingClaims
    let store: any HubStore
    let revocations: RevocationList
    let rids: RIDDirectory
    /// The update repository (`tuf.repository`): its current root goes to every device at pairing, the trust anchor
    /// of its update client.
    var tufRepository: String?
    /// The lifetime of the certificate a paired device gets (`pki.deviceCertificateDays` or `…Seconds`).
    var certificateLifetime: TimeInterval = 90 * 86400
    /// Every node's pins, handed to the device (this node's only when not set).
    var pins: ClusterPins?
    let logger: Logger
    let onBound: @Sendable (Int) -> Void
    /// Connections held at once, in all and per source address (checked before the hub greets).
    let connections: ConnectionCounter
    /// The device's hello must arrive within this time of the hub's: an idle connection is cut early.
    let helloDeadline: Duration
    /// A pairing must finish within this time; a stalled peer is disconnected.
    let deadline: Duration = .seconds(30)

    init(
        host: String, port: Int, credentials: HubCredentials, claims: PairingClaims, store: any HubStore,
        revocations: RevocationList, rids: RIDDirectory, settings: PairingSettings, logger: Logger,
        onBound: @escaping @Sendable (Int) -> Void
    ) {
        self.host = host
        self.port = port
        self.credentials = credentials
        self.claims = claims
        self.store = store
        self.revocations = revocations
        self.rids = rids
        self.logger = logger
        self.onBound = onBound
        connections = ConnectionCounter(total: settings.maxConnections, perSource: settings.maxConnectionsPerSource)
        helloDeadline = .milliseconds(Int64(settings.helloSeconds * 1000))
    }

    func run() async throws {
        let connections = connections
        let sources = claims.sources
        let metrics = claims.metrics
        let logger = logger
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .bind(host: host, port: port) {
                (channel: any Channel) -> EventLoopFuture<NIOAsyncChannel<[UInt8], [UInt8]>> in
                // Before the hub says anything: a source locked out by its own failures, or over its share of the
                // connection slots, is closed at once (a flood from one address cannot deny pairing to others).
                let source = channel.remoteAddress?.ipAddress ?? "unknown"
                if sources.lockedUntil(source, now: Date().timeIntervalSince1970) != nil {
                    metrics?.pairing(.lockedOut)
                    logger.debug("pairing connection refused: source locked out", metadata: ["source": "\(source)"])
                    channel.close(promise: nil)
                    return channel.eventLoop.makeFailedFuture(ChannelError.ioOnClosedChannel)
                }
                if let refused = connections.admit(channel, source: source, logger: logger, listener: "pairing") {
                    return channel.eventLoop.makeFailedFuture(refused)
                }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        ByteToMessageHandler(PairingFrameDecoder(), maximumBufferSize: 2 + 65535))
                    try channel.pipeline.syncOperations.addHandler(MessageToByteHandler(PairingFrameEncoder()))
                    return try NIOAsyncChannel<[UInt8], [UInt8]>(wrappingChannelSynchronously: channel)
                }
            }
        let boundPort = server.channel.localAddress?.port ?? port
        logger.info("listening", metadata: ["address": .string("\(host):\(boundPort)")])
        onBound(boundPort)
        try await withGracefulShutdownHandler {
            try await withThrowingDiscardingTaskGroup { group in
                try await server.executeThenClose { accepted in
                    for try await connection in accepted {
                        group.addTask {
                            let hello = ConnectionFlag()
                            await withDeadlines(hello) { await self.serve(connection, hello: hello) }
                        }
                    }
                }
            }
        } onGracefulShutdown: {
            server.channel.close(promise: nil)
            connections.closeAll()
        }
    }

    /// Runs `body` until it ends, the device's hello has not come within `helloDeadline`, or `deadline` passes.
    private func withDeadlines(_ hello: ConnectionFlag, _ body: @escaping @Sendable () async -> Void) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await body() }
            group.addTask {
                try? await Task.sleep(for: helloDeadline)
                guard hello.value.load(ordering: .relaxed) else { return }
                try? await Task.sleep(for: deadline - helloDeadline)
            }
            await group.next()
            group.cancelAll()
        }
    }

    /// One pairing. Failures are counted per device (lock-out), recorded as security events, and any certificate
    /// issued to the failed session is revoked at once.
    func serve(_ connection: NIOAsyncChannel<[UInt8], [UInt8]>, hello: ConnectionFlag) async {
        var session = HubPairingSession(hubStaticKeys: credentials.pairingKeys)
        var issued: Certificate?
        var irk: [UInt8] = []
        var heldClaim = false
        let holder = UUID().uuidString
        /// The device is paired (activated) even if its acknowledgement is then lost: not a failed attempt.
        var paired = false
        let source = connection.channel.remoteAddress?.ipAddress
        var counted = false
        /// Counts a failed session once: against the device if its peer proved the device's key, else against its
        /// source. Called before the connection closes, so the peer learns of a failure only once it is counted (on
        /// every node): no attempt on another node slips in between.
        func count(_ error: any Error) async {
            guard !counted else { return }
            counted = true
            // The hub's own trouble (the store did not answer) is not the peer's attempt.
            if error is StoreError { return }
            // Attempts refused because of a lock-out do not extend it: hammering the port must not keep the real
            // device locked out for ever. A claim held by another session of the same device (it proved the key) is
            // nobody's offence, and a device that paired (only its acknowledgement was lost) failed nothing.
            let code = (error as? PairingError)?.code
            guard !paired, code != .lockedOut else { return }
            claims.metrics?.pairing(.failed)
            guard code != .claimInUse else { return }
            // In a task of its own: a session cut at its deadline is cancelled, and its failure must count all the
            // same (a peer that stalls after message 3 would otherwise try for free).
            let claims = claims
            let logger = logger
            let (device, proved, held) = (session.pairingDeviceID, session.deviceKeyProved, heldClaim)
            await Task {
                do {
                    try await claims.failed(
                        device, holder: holder, source: source, now: Date(), countedAgainstDevice: proved,
                        heldClaim: held)
                } catch {
                    logger.warning("a failed pairing was not counted", metadata: ["error": .string("\(error)")])
                }
            }.value
        }
        do {
            try await connection.executeThenClose { inbound, outbound in
                do {
                    var frames = inbound.makeAsyncIterator()
                    var action = try session.start()
                    while true {
                        switch action {
                        case .send(let frame):
                            try await outbound.write(frame)
                            guard let next = try await frames.next() else {
                                throw PairingError(.protocolViolation, "peer closed the connection")
                            }
                            action = try session.received(next)
                            if session.deviceKeyProved, !heldClaim, let device = session.pairingDeviceID {
                                // Message 2 decrypted: the peer holds the device's key. Only now does the session hold
                                // the claim, and only now is the short deadline lifted (a stranger that says hello and
                                // then nothing is cut after `pairing.helloSeconds`).
                                try await claims.hold(device, holder: holder, now: Date())
                                heldClaim = true
                                hello.value.store(true, ordering: .relaxed)
                            }
                        case .lookUpClaim(let device, _):
                            let label = try await claims.claim(for: device, now: Date())
                            action = try session.claimFound(label)
                        case .issueCertificate(let device, let operationalKey, let csrDER):
                            let certificate = try issue(device, operationalKey: operationalKey, csrDER: csrDER)
                            // Recorded before it leaves, as revoked until the device confirms: a hub that dies between
                            // here and the confirmation leaves no valid certificate that `device revoke` cannot reach.
                            revocations.insertPending(certificate.serialHex)
                            var pending = HubCredentials.record(certificate, deviceID: nil)
                            pending.revokedAt = Date()
                            try await store.addCertificate(pending)
                            issued = certificate
                            irk = Array(SymmetricKey(size: .bits128).withUnsafeBytes { Array($0) })
                            let pins = await self.pins?.forDevice() ?? credentials.identity.current.pins
                            action = try session.issued(
                                PairingCredentials(
                                    certificateDER: certificate.derBytes,
                                    caCertificateDER: credentials.authority.certificate.derBytes,
                                    pins: pins,
                                    irk: irk, tufRoot: currentTUFRoot()))
                        case .paired(let device, let acknowledgement):
                            guard let certificate = issued else {
                                throw PairingError(.protocolViolation, "no certificate")
                            }
                            // The claim is used up before the device is activated, and only by the session that
                            // holds it: two sessions never both pair on one claim, on any nodes, and a claim never
                            // outlives its pairing (if the activation fails now, the operator claims again).
                            try await claims.consume(device, holder: holder)
                            heldClaim = false
                            try await store.activatePendingCertificate(
                                certificate.serialHex, device: device, irk: irk, at: Date())
                            revocations.removePending(certificate.serialHex)
                            rids.insert(device, irk: irk)
                            paired = true
                            do { try await claims.succeeded(device) } catch {
                                logger.warning(
                                    "the failures of a paired device were not cleared",
                                    metadata: ["device": .string(device.rawValue), "error": .string("\(error)")])
                            }
                            try? await store.recordSecurityEvent(
                                SecurityEvent(
                                    at: Date(), kind: "device-paired", identity: Identity.device(device).uri,
                                    source: source,
                                    detail: "serial \(certificate.serialHex)"))
                            logger.info("device paired", metadata: ["device": .string(device.rawValue)])
                            try await outbound.write(acknowledgement)
                            return
                        }
                    }
                } catch {
                    await count(error)
                    throw error
                }
            }
        } catch {
            let device = session.pairingDeviceID
            await count(error)
            // Issued but never confirmed: it was recorded as revoked before it was sent and stays so. Once activated
            // (the device, its certificate and its IRK in one transaction) only the acknowledgement can have failed:
            // the device then keeps nothing, and the certificate is an enrolled device's, revocable like any other.
            let reason = (error as? PairingError)?.description ?? "connection failed: \(error)"
            logger.notice(
                "pairing failed", metadata: ["device": .string(device?.rawValue ?? "-"), "reason": .string(reason)])
            try? await store.recordSecurityEvent(
                SecurityEvent(
                    at: Date(), kind: "pairing-failed", identity: device.map { Identity.device($0).uri },
                    source: source,
                    detail: reason))
        }
    }

    /// The published `metadata/root.json` (the newest root), or nil without a repository. Its signatures are the
    /// device's to check from then on; what the hub hands over here travels inside the authenticated Noise channel.
    func currentTUFRoot() -> [UInt8]? {
        guard let tufRepository, let data = FileManager.default.contents(atPath: tufRepository + "/metadata/root.json"),
            data.count <= 48 * 1024
        else { return nil }
        return Array(data)
    }

    /// The CSR must be signed by the key the device bound to the handshake; the hub decides every extension.
    private func issue(_ device: DeviceID, operationalKey: [UInt8], csrDER: [UInt8]) throws -> Certificate {
        let csr = try CertificateSigningRequest.parse(csrDER)
        guard let key = try? P256.Signing.PublicKey(x963Representation: operationalKey),
            csr.publicKey == Certificate.PublicKey(key)
        else { throw PairingError(.badProofOfPossession, "CSR key differs from the key bound to the handshake") }
        return try credentials.authority.issueClientCertificate(
            for: .device(device), csr: csr, now: Date(), lifetime: certificateLifetime)
    }
}

final class ConnectionFlag: Sendable {
    let value = Atomic<Bool>(false)
}
