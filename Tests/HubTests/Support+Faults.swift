import Advisories
import Core
import Foundation
import HubClient
import NIOCore
import NIOPosix
import NIOSSL
import Store
import Synchronization

/// A store that forwards to a real one and fails `appendTelemetry` while `failing` is set: the store write that does
/// not happen, for the "never acknowledge what was not stored" tests.
final class FaultyStore: HubStore {
    let base: any HubStore
    let failing = Atomic<Bool>(false)
    /// Fail this many writes from now on (after `delayMilliseconds`), then work again.
    let failNext = Atomic<Int>(0)
    let delayMilliseconds = Atomic<Int>(0)
    /// Fails a `saveMQTTSessions` that saves the session with this key, while set (a session that cannot be saved).
    let failingSession = Mutex<String?>(nil)
    /// The keys of each `saveMQTTSessions` call, as it starts.
    let sessionWriteLog = Mutex<[[String]]>([])
    /// Calls of `saveMQTTSessions` (each one transaction), failed ones included.
    var sessionWrites: Int { sessionWriteLog.withLock(\.count) }
    /// Keys `saveMQTTSessions` was asked to remove.
    let sessionRemovals = Mutex<[String]>([])
    /// While set, each `saveMQTTSessions` waits (its keys in `pausedSessionWrites`) until `resumeSessionWrites`.
    let pauseSessionWrites = Atomic<Bool>(false)
    private let paused = Mutex<[(keys: [String], resume: CheckedContinuation<Void, Never>)]>([])
    /// The keys of each write waiting now.
    var pausedSessionWrites: [[String]] { paused.withLock { $0.map(\.keys) } }
    func resumeSessionWrites() {
        let waiting = paused.withLock { paused in
            defer { paused = [] }
            return paused
        }
        for write in waiting { write.resume.resume() }
    }
    /// The next this many `saveMQTTSessions` calls commit in `base`, then throw: a commit whose answer is lost.
    let loseSessionCommits = Atomic<Int>(0)
    /// The next this many `mqttSessionHolder` calls throw (a look at a row that fails midway through a write).
    let failHolderLooks = Atomic<Int>(0)
    /// Takes one from `counter` if it is above zero, in one atomic step: true when one was taken. (A load then a
    /// subtraction let two callers racing at 1 leave it at -1.)
    private static func takeOne(_ counter: borrowing Atomic<Int>) -> Bool {
        var current = counter.load(ordering: .relaxed)
        while current > 0 {
            let (exchanged, original) = counter.compareExchange(
                expected: current, desired: current - 1, ordering: .relaxed)
            if exchanged { return true }
            current = original
        }
        return false
    }
    /// Each write waits for the one before it and then this long: acknowledgements trickle in one at a time.
    let serialDelayMilliseconds = Atomic<Int>(0)
    private let lastWrite = Mutex<Task<Void, Never>?>(nil)
    /// Writes go through a `TelemetryQueue`, as the SQL stores' do: a write's reader is handed the queue's entry.
    let queued: Bool
    private let queue = TelemetryQueue(maximumCount: 1)

    /// Says the store is shared by several nodes whatever `base` says (the persistence's take-over paths, tested
    /// without a PostgreSQL server).
    let shared: Bool?

    init(_ base: any HubStore, queued: Bool = false, sharedByNodes shared: Bool? = nil) {
        self.base = base
        self.queued = queued
        self.shared = shared
    }

    func queueTelemetry(_ message: consuming NewTelemetry) -> TelemetryWrite {
        let message = message
        guard queued else { return TelemetryWrite { try await self.appendTelemetry(message) } }
        let (pending, _) = queue.append(message)
        _ = queue.nextBatch()  // this store writes each message itself, below
        Task {
            do { pending.resolve(.success(try await appendTelemetry(message))) } catch {
                pending.resolve(.failure(error))
            }
        }
        return TelemetryWrite(pending)
    }

    /// As `queueTelemetry(_:)`: through the queue when `queued` (an entry with its thread, as the SQL stores'), else
    /// the protocol's default (`writeUnqueued`).
    func queueTelemetry(_ message: consuming NewTelemetry, reader: any PendingResultReader) {
        guard queued else { return writeUnqueued(message, reader: reader) }
        let entry = queue.append(message, reader: reader).result
        _ = queue.nextBatch()  // this store writes each message itself, below
        Task {
            do { entry.resolve(.success(try await appendTelemetry(entry.message))) } catch {
                entry.resolve(.failure(error))
            }
        }
    }

    func appendTelemetry(_ message: NewTelemetry) async throws -> Int64 {
        let delay = delayMilliseconds.load(ordering: .relaxed)
        if delay > 0 { try await Task.sleep(for: .milliseconds(delay)) }
        let serial = serialDelayMilliseconds.load(ordering: .relaxed)
        if serial > 0 {
            let turn = lastWrite.withLock { last -> Task<Void, Never> in
                let previous = last
                let turn = Task {
                    await previous?.value
                    try? await Task.sleep(for: .milliseconds(serial))
                }
                last = turn
                return turn
            }
            await turn.value
        }
        if failing.load(ordering: .relaxed) { throw StoreError(.unavailable, "injected store failure") }
        if Self.takeOne(failNext) {
            throw StoreError(.unavailable, "injected store failure")
        }
        return try await base.appendTelemetry(message)
    }

    func enroll(device: DeviceID, certificate: CertificateRecord, at: Date) async throws {
        try await base.enroll(device: device, certificate: certificate, at: at)
    }
    func addCertificate(_ certificate: CertificateRecord) async throws { try await base.addCertificate(certificate) }
    func activatePendingCertificate(_ serialHex: String, device: DeviceID, irk: [UInt8], at: Date) async throws {
        try await base.activatePendingCertificate(serialHex, device: device, irk: irk, at: at)
    }
    func recordRenewal(certificate: CertificateRecord, renewal: PendingRenewal) async throws -> [String] {
        try await base.recordRenewal(certificate: certificate, renewal: renewal)
    }
    func pendingRenewals() async throws -> [PendingRenewal] { try await base.pendingRenewals() }
    func completeRenewal(newSerialHex: String, at: Date) async throws -> String? {
        try await base.completeRenewal(newSerialHex: newSerialHex, at: at)
    }
    func setAssignment(_ scope: AssignmentScope, target: String?) async throws {
        try await base.setAssignment(scope, target: target)
    }
    func assignment(_ scope: AssignmentScope) async throws -> String? { try await base.assignment(scope) }
    func effectiveAssignment(_ device: DeviceID, defaultClass: String) async throws -> (scope: String, target: String)?
    { try await base.effectiveAssignment(device, defaultClass: defaultClass) }
    func setDeviceClass(_ device: DeviceID, class name: String?) async throws {
        try await base.setDeviceClass(device, class: name)
    }
    func deviceClass(_ device: DeviceID) async throws -> String? { try await base.deviceClass(device) }
    func addEgressRule(class name: String, rule: String) async throws -> Bool {
        try await base.addEgressRule(class: name, rule: rule)
    }
    func removeEgressRule(class name: String, rule: String) async throws -> Bool {
        try await base.removeEgressRule(class: name, rule: rule)
    }
    func egressRules() async throws -> [String: [String]] { try await base.egressRules() }
    func recordDestinations(
        _ device: DeviceID, _ seen: [(listening: Bool, proto: String, address: String, port: Int)], at: Date
    ) async throws {
        try await base.recordDestinations(device, seen, at: at)
    }
    func destinations(of device: DeviceID) async throws -> [DestinationRecord] {
        try await base.destinations(of: device)
    }
    func recordUpdateState(_ state: DeviceUpdateState) async throws { try await base.recordUpdateState(state) }
    func updateState(of device: DeviceID) async throws -> DeviceUpdateState? {
        try await base.updateState(of: device)
    }
    func updateStates() async throws -> [DeviceUpdateState] { try await base.updateStates() }
    func saveRollout(_ rollout: Rollout) async throws { try await base.saveRollout(rollout) }
    func latestRollout() async throws -> Rollout? { try await base.latestRollout() }
    func addWaiver(_ waiver: Waiver) async throws { try await base.addWaiver(waiver) }
    func waivers() async throws -> [Waiver] { try await base.waivers() }
    func recordRelease(_ release: ReleaseRecord) async throws { try await base.recordRelease(release) }
    func releases() async throws -> [ReleaseRecord] { try await base.releases() }
    func devicesWithOwnAssignment(defaultClass: String) async throws -> Set<DeviceID> {
        try await base.devicesWithOwnAssignment(defaultClass: defaultClass)
    }
    func device(_ id: DeviceID) async throws -> DeviceRecord? { try await base.device(id) }
    func devices() async throws -> [DeviceRecord] { try await base.devices() }
    func certificates(of device: DeviceID) async throws -> [CertificateRecord] {
        try await base.certificates(of: device)
    }
    func revoke(device: DeviceID, at: Date) async throws -> [String] { try await base.revoke(device: device, at: at) }
    func revokedSerials() async throws -> Set<String> { try await base.revokedSerials() }
    func revokedCertificates() async throws -> [RevokedCertificate] { try await base.revokedCertificates() }
    func telemetry(of device: DeviceID, limit: Int) async throws -> [TelemetryRecord] {
        try await base.telemetry(of: device, limit: limit)
    }
    func telemetryCount(of device: DeviceID?) async throws -> Int { try await base.telemetryCount(of: device) }
    func recordSecurityEvent(_ event: SecurityEvent) async throws { try await base.recordSecurityEvent(event) }
    func setAuditKey(_ key: AuditKey) async throws { try await base.setAuditKey(key) }
    func securityEvents(limit: Int) async throws -> [SecurityEvent] { try await base.securityEvents(limit: limit) }
    func certificate(serialHex: String) async throws -> CertificateRecord? {
        try await base.certificate(serialHex: serialHex)
    }
    func revokeCertificate(serialHex: String, at: Date) async throws -> CertificateRecord {
        try await base.revokeCertificate(serialHex: serialHex, at: at)
    }
    func devicePage(_ query: DeviceQuery) async throws -> (total: Int, devices: [DeviceOverview]) {
        try await base.devicePage(query)
    }
    func securityEvents(identity: String, limit: Int) async throws -> [SecurityEvent] {
        try await base.securityEvents(identity: identity, limit: limit)
    }
    func fleetSummary(now: Date, expiringBefore: Date) async throws -> FleetSummary {
        try await base.fleetSummary(now: now, expiringBefore: expiringBefore)
    }
    func setIdentityResolvingKey(_ irk: [UInt8], for device: DeviceID) async throws {
        try await base.setIdentityResolvingKey(irk, for: device)
    }
    func identityResolvingKeys() async throws -> [(DeviceID, [UInt8])] { try await base.identityResolvingKeys() }
    func auditRecords(after sequence: Int64, limit: Int) async throws -> [AuditRecord] {
        try await base.auditRecords(after: sequence, limit: limit)
    }
    func recordNonce(device: DeviceID, nonce: StoredNonce) async throws {
        try await base.recordNonce(device: device, nonce: nonce)
    }
    func liveNonces(now: Int64) async throws -> [(DeviceID, StoredNonce)] { try await base.liveNonces(now: now) }
    func counterWindows() async throws -> [(DeviceID, StoredCounterWindow)] { try await base.counterWindows() }
    func setQuarantine(_ device: DeviceID, until: Int64?) async throws {
        try await base.setQuarantine(device, until: until)
    }
    func quarantines() async throws -> [(DeviceID, Int64)] { try await base.quarantines() }
    func putSchema(name: String, body: [UInt8], at: Date) async throws {
        try await base.putSchema(name: name, body: body, at: at)
    }
    func schemas() async throws -> [(String, [UInt8])] { try await base.schemas() }
    func close() async throws { try await base.close() }
    func relayMessage(_ message: RelayedMessage) async throws { try await base.relayMessage(message) }
    var sharedByNodes: Bool { shared ?? base.sharedByNodes }
    func putClaim(_ claim: StoredClaim) async throws { try await base.putClaim(claim) }
    func saveMQTTSessions(_ changes: [MQTTSessionChange], holder: String, release: Bool) async throws
        -> Set<String>
    {
        sessionWriteLog.withLock { $0.append(changes.map(\.key)) }
        sessionRemovals.withLock { $0 += changes.filter { $0.session == nil }.map(\.key) }
        if pauseSessionWrites.load(ordering: .relaxed) {
            await withCheckedContinuation { resume in paused.withLock { $0.append((changes.map(\.key), resume)) } }
        }
        let failing = failingSession.withLock { $0 }
        if changes.contains(where: { $0.session != nil && $0.key == failing }) {
            throw StoreError(.unavailable, "injected session save failure")
        }
        let held = try await base.saveMQTTSessions(changes, holder: holder, release: release)
        if Self.takeOne(loseSessionCommits) {
            throw StoreError(.unavailable, "injected loss of a committed session save's answer")
        }
        return held
    }
    func mqttSessionHolder(key: String) async throws -> (stored: Bool, holder: String?) {
        if Self.takeOne(failHolderLooks) {
            throw StoreError(.unavailable, "injected failure of a session holder look")
        }
        return try await base.mqttSessionHolder(key: key)
    }
    func takeMQTTSession(key: String, holder: String) async throws -> StoredMQTTSession? {
        try await base.takeMQTTSession(key: key, holder: holder)
    }
    func adoptMQTTSessions(holder: String, all: Bool, silentFor: TimeInterval?) async throws -> [StoredMQTTSession] {
        try await base.adoptMQTTSessions(holder: holder, all: all, silentFor: silentFor)
    }
    func markAlive(_ node: HubNodeRecord) async throws { try await base.markAlive(node) }
    func markStopped(holder: String) async throws { try await base.markStopped(holder: holder) }
    func hubNodes() async throws -> [HubNodeStatus] { try await base.hubNodes() }
    func announceNodeChange(holder: String) async throws { try await base.announceNodeChange(holder: holder) }
    func setNodePins(_ record: NodePinsRecord) async throws { try await base.setNodePins(record) }
    func removeNodePins(node: String) async throws -> Bool { try await base.removeNodePins(node: node) }
    func nodePins() async throws -> [NodePinsRecord] { try await base.nodePins() }
    func requestMQTTSession(key: String, by holder: String) async throws {
        try await base.requestMQTTSession(key: key, by: holder)
    }
    func putRetainedMessage(_ message: StoredRetainedMessage) async throws {
        try await base.putRetainedMessage(message)
    }
    func removeRetainedMessage(topic: String, savedAt: Date?) async throws {
        try await base.removeRetainedMessage(topic: topic, savedAt: savedAt)
    }
    func retainedMessages() async throws -> [StoredRetainedMessage] { try await base.retainedMessages() }
    func claim(of device: DeviceID, at: Date) async throws -> StoredClaim? { try await base.claim(of: device, at: at) }
    func holdClaim(of device: DeviceID, holder: String, until: Date, at: Date) async throws -> Bool {
        try await base.holdClaim(of: device, holder: holder, until: until, at: at)
    }
    func releaseClaim(of device: DeviceID, holder: String) async throws {
        try await base.releaseClaim(of: device, holder: holder)
    }
    func removeClaim(of device: DeviceID, holder: String?) async throws -> Bool {
        try await base.removeClaim(of: device, holder: holder)
    }
    func clearPairingFailures(of device: DeviceID) async throws { try await base.clearPairingFailures(of: device) }
    func pendingClaims(at: Date) async throws -> [StoredClaim] { try await base.pendingClaims(at: at) }
    func recordPairingFailure(of device: DeviceID, at: Date) async throws -> PairingFailures {
        try await base.recordPairingFailure(of: device, at: at)
    }
    func pairingFailures(of device: DeviceID) async throws -> PairingFailures? {
        try await base.pairingFailures(of: device)
    }
}

/// Raw bytes over TLS (or plain TCP), written in pieces at the times a test chooses, and whatever comes back: for
/// the slow-body, framing and KeyUpdate attacks that a well-behaved client cannot send.
final class RawConnection: Sendable {
    let channel: NIOAsyncChannel<ByteBuffer, ByteBuffer>
    private final class Inbox: Sendable {
        let bytes = Mutex<[UInt8]>([])
        let closed = Atomic<Bool>(false)
    }
    private let inbox = Inbox()
    private let reader: Task<Void, Never>

    static func open(
        port: Int, tls: TLSConfiguration?, localAddress: String? = nil, host: String = "127.0.0.1"
    ) async throws -> RawConnection {
        let context = try tls.map { try NIOSSLContext(configuration: $0) }
        var bootstrap = ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(5))
        if let localAddress { bootstrap = bootstrap.bind(to: try SocketAddress(ipAddress: localAddress, port: 0)) }
        let channel = try await bootstrap.connect(host: host, port: port) { channel in
            channel.eventLoop.makeCompletedFuture {
                if let context {
                    try channel.pipeline.syncOperations.addHandler(
                        NIOSSLClientHandler(context: context, serverHostname: "localhost"))
                }
                return try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
            }
        }
        return RawConnection(channel)
    }

    private init(_ channel: NIOAsyncChannel<ByteBuffer, ByteBuffer>) {
        self.channel = channel
        let inbox = inbox
        reader = Task { [channel] in
            do {
                for try await buffer in channel.inbound {
                    inbox.bytes.withLock { $0 += buffer.readableBytesView }
                }
            } catch {}
            inbox.closed.store(true, ordering: .relaxed)
        }
    }

    func send(_ text: String) async throws { try await send(Array(text.utf8)) }

    func send(_ bytes: [UInt8]) async throws { try await channel.outbound.write(ByteBuffer(bytes: bytes)) }

    var text: String { inbox.bytes.withLock { String(decoding: $0, as: UTF8.self) } }
    var bytes: [UInt8] { inbox.bytes.withLock { $0 } }
    var isClosed: Bool { inbox.closed.load(ordering: .relaxed) }

    /// Waits until `condition` holds on what arrived (or the peer closed), at most `timeout`.
    @discardableResult
    func wait(
        upTo timeout: Duration = .seconds(5), until condition: @escaping @Sendable (String) -> Bool = { _ in false }
    ) async -> String {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline, !condition(text), !isClosed {
            try? await Task.sleep(for: .milliseconds(20))
        }
        return text
    }

    func close() async {
        try? await channel.channel.close()
        await reader.value
    }
}
