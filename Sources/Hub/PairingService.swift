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

/// Pending claims and failed attempts. A claim names a label the operator entered; it expires (default 10
/// minutes) and is consumed by the first successful pairing.
actor PairingClaims {
    struct Claim {
        let label: PairingLabel
        let expires: Date
    }

    private var claims: [DeviceID: Claim] = [:]
    /// Devices whose claim a pairing session holds right now: one session per claim at a time.
    private var inUse: Set<DeviceID> = []
    private var limiter: AttemptLimiter
    let lifetime: TimeInterval

    init(lifetime: TimeInterval = 600, policy: AttemptLimiter.Policy = .init()) {
        self.lifetime = lifetime
        limiter = AttemptLimiter(policy: policy)
    }

    func add(_ label: PairingLabel, now: Date) -> Date {
        claims = claims.filter { $0.value.expires > now }
        let expires = now.addingTimeInterval(lifetime)
        claims[label.deviceID] = Claim(label: label, expires: expires)
        return expires
    }

    /// The claim for a device, if one is pending and the device is not locked out.
    func claim(for device: DeviceID, now: Date) throws(PairingError) -> PairingLabel {
        if let until = limiter.lockedUntil(device, now: now.timeIntervalSince1970) {
            throw PairingError(.lockedOut, "locked out for \(Int(until - now.timeIntervalSince1970)) s more")
        }
        guard let claim = claims[device], claim.expires > now else {
            throw PairingError(.noClaim, "no pending claim")
        }
        guard inUse.insert(device).inserted else {
            throw PairingError(.noClaim, "the claim is in use by another session")
        }
        return claim.label
    }

    func succeeded(_ device: DeviceID) {
        claims[device] = nil
        inUse.remove(device)
        limiter.recordSuccess(device)
    }

    /// A session that held the claim failed: release it and count the failure (unless `counted` is false).
    func failed(_ device: DeviceID, now: Date, counted: Bool = true, heldClaim: Bool) {
        if heldClaim { inUse.remove(device) }
        if counted { limiter.recordFailure(device, now: now.timeIntervalSince1970) }
    }
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
    let logger: Logger
    let onBound: @Sendable (Int) -> Void
    /// A pairing must finish within this time; a stalled peer is disconnected.
    let deadline: Duration = .seconds(30)
    let maximumConnections = 128

    func run() async throws {
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .bind(host: host, port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        ByteToMessageHandler(PairingFrameDecoder(), maximumBufferSize: 2 + 65535))
                    try channel.pipeline.syncOperations.addHandler(MessageToByteHandler(PairingFrameEncoder()))
                    return try NIOAsyncChannel<[UInt8], [UInt8]>(wrappingChannelSynchronously: channel)
                }
            }
        let boundPort = server.channel.localAddress?.port ?? port
        logger.info("listening", metadata: ["address": .string("\(host):\(boundPort)")])
        onBound(boundPort)
        let active = ConnectionCount()
        try await withGracefulShutdownHandler {
            try await withThrowingDiscardingTaskGroup { group in
                try await server.executeThenClose { connections in
                    for try await connection in connections {
                        guard active.value.add(1, ordering: .relaxed).newValue <= maximumConnections else {
                            active.value.subtract(1, ordering: .relaxed)
                            try? await connection.channel.close()
                            continue
                        }
                        group.addTask {
                            await withDeadline { await self.serve(connection) }
                            active.value.subtract(1, ordering: .relaxed)
                        }
                    }
                }
            }
        } onGracefulShutdown: {
            server.channel.close(promise: nil)
        }
    }

    private func withDeadline(_ body: @escaping @Sendable () async -> Void) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await body() }
            group.addTask { try? await Task.sleep(for: deadline) }
            await group.next()
            group.cancelAll()
        }
    }

    /// One pairing. Failures are counted per device (lock-out), recorded as security events, and any certificate
    /// issued to the failed session is revoked at once.
    func serve(_ connection: NIOAsyncChannel<[UInt8], [UInt8]>) async {
        var session = HubPairingSession(hubStaticKeys: credentials.pairingKeys)
        var issued: Certificate?
        var irk: [UInt8] = []
        var heldClaim = false
        let source = connection.channel.remoteAddress?.ipAddress
        do {
            try await connection.executeThenClose { inbound, outbound in
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
                    case .lookUpClaim(let device, _):
                        let label = try await claims.claim(for: device, now: Date())
                        heldClaim = true
                        action = try session.claimFound(label)
                    case .issueCertificate(let device, let operationalKey, let csrDER):
                        let certificate = try issue(device, operationalKey: operationalKey, csrDER: csrDER)
                        issued = certificate
                        irk = Array(SymmetricKey(size: .bits128).withUnsafeBytes { Array($0) })
                        action = try session.issued(
                            PairingCredentials(
                                certificateDER: certificate.derBytes,
                                caCertificateDER: credentials.authority.certificate.derBytes, pins: credentials.pins,
                                irk: irk, tufRoot: nil))
                    case .paired(let device, let acknowledgement):
                        guard let certificate = issued else { throw PairingError(.protocolViolation, "no certificate") }
                        try await store.enroll(
                            device: device, certificate: HubCredentials.record(certificate, deviceID: device),
                            at: Date())
                        try await store.setIdentityResolvingKey(irk, for: device)
                        rids.insert(device, irk: irk)
                        await claims.succeeded(device)
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
            }
        } catch {
            let device = session.pairingDeviceID
            // Attempts refused because of a lock-out do not extend it: hammering the port must not keep the real
            // device locked out for ever.
            if let device {
                let code = (error as? PairingError)?.code
                let counted = code != .lockedOut && !(code == .noClaim && !heldClaim)
                await claims.failed(device, now: Date(), counted: counted, heldClaim: heldClaim)
            }
            if let certificate = issued {
                // Issued but never confirmed: the certificate must not work.
                revocations.insert([certificate.serialHex])
                var record = HubCredentials.record(certificate, deviceID: nil)
                record.revokedAt = Date()
                try? await store.addCertificate(record)
            }
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

    /// The CSR must be signed by the key the device bound to the handshake; the hub decides every extension.
    private func issue(_ device: DeviceID, operationalKey: [UInt8], csrDER: [UInt8]) throws -> Certificate {
        let csr = try CertificateSigningRequest.parse(csrDER)
        guard let key = try? P256.Signing.PublicKey(x963Representation: operationalKey),
            csr.publicKey == Certificate.PublicKey(key)
        else { throw PairingError(.badProofOfPossession, "CSR key differs from the key bound to the handshake") }
        return try credentials.authority.issueClientCertificate(for: .device(device), csr: csr, now: Date(), days: 90)
    }
}

final class ConnectionCount: Sendable {
    let value = Atomic<Int>(0)
}
