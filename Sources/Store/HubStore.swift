public import Advisories
public import Core
public import Foundation
import Synchronization

/// Everything the hub keeps. Two backends implement it (in memory, SQLite) and pass the same tests; a PostgreSQL
/// backend for several hub nodes goes behind the same protocol.
public protocol HubStore: Sendable {
    /// Creates the device if it is new (or re-activates a revoked one: an explicit operator act) and records its
    /// certificate, in one transaction.
    func enroll(device: DeviceID, certificate: CertificateRecord, at: Date) async throws
    /// Records a certificate that belongs to no device (the hub's own, operators'), or one issued by pairing and
    /// recorded revoked until the device confirms it.
    func addCertificate(_ certificate: CertificateRecord) async throws
    /// The device confirmed its pairing: creates or re-activates it, and gives it the certificate recorded as pending
    /// (no device yet, revoked, its subject the device's identity), clearing that revocation, in one transaction.
    /// Throws `notFound` when no such pending certificate is recorded.
    /// The device's identity resolving key is stored in the same transaction. Refused (`conflict`) when the device
    /// was revoked after the certificate was marked pending: a revocation during a pairing wins.
    func activatePendingCertificate(_ serialHex: String, device: DeviceID, irk: [UInt8], at: Date) async throws
    /// A renewal: records the device's new certificate and which certificate it replaces, in one transaction. An
    /// earlier renewal of the same certificate that was never used (its answer was lost, the device asked again) is
    /// superseded: its certificate is revoked and its serial returned. Throws `notFound` unless the device is active.
    func recordRenewal(certificate: CertificateRecord, renewal: PendingRenewal) async throws -> [String]
    /// Renewals whose previous certificate is not revoked yet.
    func pendingRenewals() async throws -> [PendingRenewal]
    /// Revokes the certificate a renewal replaced and forgets the renewal, in one transaction; returns the revoked
    /// serial, or nil when the renewal was already completed.
    func completeRenewal(newSerialHex: String, at: Date) async throws -> String?
    /// The target (a path in the signed targets metadata) a scope should run; nil removes the assignment.
    func setAssignment(_ scope: AssignmentScope, target: String?) async throws
    func assignment(_ scope: AssignmentScope) async throws -> String?
    /// The assignment that applies to a device, in one read: its own, else its class's (`defaultClass` when it has
    /// none), else the fleet's. Returns the scope that won (`device`, `class`, `fleet`) and the target.
    func effectiveAssignment(_ device: DeviceID, defaultClass: String) async throws -> (scope: String, target: String)?
    /// The devices whose own assignment or whose class's (`defaultClass` when they have none) applies, in one read:
    /// a staged rollout leaves them alone.
    func devicesWithOwnAssignment(defaultClass: String) async throws -> Set<DeviceID>
    /// A device's class (for its egress policy); nil removes it.
    func setDeviceClass(_ device: DeviceID, class: String?) async throws
    func deviceClass(_ device: DeviceID) async throws -> String?
    /// Egress rules per device class; add and remove say whether anything changed.
    func addEgressRule(class: String, rule: String) async throws -> Bool
    func removeEgressRule(class: String, rule: String) async throws -> Bool
    func egressRules() async throws -> [String: [String]]
    /// Records the destinations of one connection report (at most `DestinationRecord` per device: 1,024 kept).
    func recordDestinations(
        _ device: DeviceID, _ seen: [(listening: Bool, proto: String, address: String, port: Int)], at: Date
    ) async throws
    func destinations(of device: DeviceID) async throws -> [DestinationRecord]
    /// Replaces the device's update state with its latest report, unless the stored one has a higher or equal
    /// sequence (a late or resent report never overwrites a newer one).
    func recordUpdateState(_ state: DeviceUpdateState) async throws
    func updateState(of device: DeviceID) async throws -> DeviceUpdateState?
    func updateStates() async throws -> [DeviceUpdateState]
    /// Stores a staged rollout (inserted or replaced by its id).
    func saveRollout(_ rollout: Rollout) async throws
    /// The rollout started last, whatever its state; nil when there was none.
    func latestRollout() async throws -> Rollout?
    /// Records a vulnerability waiver (kept after it expires: the gate reports say which ones they used).
    func addWaiver(_ waiver: Waiver) async throws
    func waivers() async throws -> [Waiver]
    /// Records a gated release, replacing an earlier gate run of the same target bytes.
    func recordRelease(_ release: ReleaseRecord) async throws
    /// Every gated release, oldest first.
    func releases() async throws -> [ReleaseRecord]
    func device(_ id: DeviceID) async throws -> DeviceRecord?
    func devices() async throws -> [DeviceRecord]
    func certificates(of device: DeviceID) async throws -> [CertificateRecord]
    func certificate(serialHex: String) async throws -> CertificateRecord?
    /// Revokes one certificate (an earlier revocation date is kept); returns it. Throws `notFound`.
    func revokeCertificate(serialHex: String, at: Date) async throws -> CertificateRecord
    /// Marks the device and all its certificates revoked; returns the serials revoked. Throws `notFound`.
    func revoke(device: DeviceID, at: Date) async throws -> [String]
    func revokedSerials() async throws -> Set<String>
    /// Every revoked certificate with its revocation date, in serial order (the hub's CRL).
    func revokedCertificates() async throws -> [RevokedCertificate]
    /// Returns only once the message is durable: the caller acknowledges it after this returns.
    func appendTelemetry(_ message: NewTelemetry) async throws -> Int64
    /// Queues the message for storage now, in the caller's order, and returns what waits for it to be durable (as
    /// `appendTelemetry`). One connection's messages are stored, and handed to other nodes, in the order it queued
    /// them, even when it waits for each in a task of its own.
    func queueTelemetry(_ message: consuming NewTelemetry) -> TelemetryWrite
    /// As `queueTelemetry(_:)`, its outcome handed to `reader` with the message's entry, on the thread that commits
    /// its batch (so `reader` must be short and must not block): no `TelemetryWrite`, no closure, and no lock taken
    /// to meet the reader, per message.
    func queueTelemetry(_ message: consuming NewTelemetry, reader: any PendingResultReader)
    func telemetry(of device: DeviceID, limit: Int) async throws -> [TelemetryRecord]
    func telemetryCount(of device: DeviceID?) async throws -> Int
    /// Appends to the tamper-evident audit log.
    func recordSecurityEvent(_ event: SecurityEvent) async throws
    /// The key that MACs every audit record appended from now on (kept outside the store; see `AuditKey`).
    func setAuditKey(_ key: AuditKey) async throws
    /// The newest `limit` audit records, newest first. Each event's `id` is its sequence number in the audit log:
    /// 1, 2, 3, … with no gaps (the chain's verification refuses a gap), which the dashboard's live events rely on
    /// to count the records it does not show.
    func securityEvents(limit: Int) async throws -> [SecurityEvent]
    /// Fleet-wide counts for monitoring (`/metrics`), in one read: no device id leaves in it.
    func fleetSummary(now: Date, expiringBefore: Date) async throws -> FleetSummary
    /// One page of the dashboard's fleet overview: devices matching the query, sorted, with how many match in all.
    func devicePage(_ query: DeviceQuery) async throws -> (total: Int, devices: [DeviceOverview])
    /// The newest audit records about one identity (its URI), newest first.
    func securityEvents(identity: String, limit: Int) async throws -> [SecurityEvent]
    /// The identity resolving key given to a device at pairing (a secret: never logged or returned by the API).
    func setIdentityResolvingKey(_ irk: [UInt8], for device: DeviceID) async throws
    /// Every active device's IRK, to build the rotating-identifier resolver.
    func identityResolvingKeys() async throws -> [(DeviceID, [UInt8])]
    /// The audit log in order, from the record after `sequence` (hash-chained: see `AuditChain`).
    func auditRecords(after sequence: Int64, limit: Int) async throws -> [AuditRecord]
    /// A nonce admitted without a message to carry it (a signed read).
    func recordNonce(device: DeviceID, nonce: StoredNonce) async throws
    /// Nonces that may still be replayed at `now` (Unix seconds), to reload the replay check after a restart.
    func liveNonces(now: Int64) async throws -> [(DeviceID, StoredNonce)]
    func counterWindows() async throws -> [(DeviceID, StoredCounterWindow)]
    /// Quarantines until `until` (Unix seconds); nil lifts it.
    func setQuarantine(_ device: DeviceID, until: Int64?) async throws
    func quarantines() async throws -> [(DeviceID, Int64)]
    /// Registers (or replaces) the JSON Schema of a message type; the caller has validated it.
    func putSchema(name: String, body: [UInt8], at: Date) async throws
    func schemas() async throws -> [(String, [UInt8])]
    func close() async throws

    // Pairing claims and lock-outs, shared by every hub node: a claim entered on one is used on another, once.

    /// Records a claim, replacing the device's earlier one (and any session's hold on it); expired claims go.
    func putClaim(_ claim: StoredClaim) async throws
    /// The device's claim, unless it has expired at `at`.
    func claim(of device: DeviceID, at: Date) async throws -> StoredClaim?
    /// A pairing session (`holder`) takes the device's pending claim until `until`: one session at a time, on any
    /// node. False when there is no pending claim, or another session's hold has not lapsed at `at`.
    func holdClaim(of device: DeviceID, holder: String, until: Date, at: Date) async throws -> Bool
    /// The session ended without pairing: the claim is free again (only `holder`'s own hold is released).
    func releaseClaim(of device: DeviceID, holder: String) async throws
    /// Removes the device's claim: only `holder`'s, when given (a pairing uses the claim it holds, before it
    /// activates the device; false when it no longer holds it), else whoever holds it (a revocation withdraws it).
    /// True when a claim was removed.
    @discardableResult func removeClaim(of device: DeviceID, holder: String?) async throws -> Bool
    /// Forgets the device's failed attempts (it paired).
    func clearPairingFailures(of device: DeviceID) async throws
    /// Claims pending at `at`, soonest to expire first.
    func pendingClaims(at: Date) async throws -> [StoredClaim]
    /// Counts a failed attempt against the device; returns its failures so far, this one included.
    func recordPairingFailure(of device: DeviceID, at: Date) async throws -> PairingFailures
    func pairingFailures(of device: DeviceID) async throws -> PairingFailures?
    /// Changes recorded by any node after `id`, oldest first, for `ClusterSync` (see `ClusterEvent`).
    func clusterEvents(after id: Int64) async throws -> [ClusterEvent]
    func latestClusterEvent() async throws -> Int64
    func clusterNotifications() -> AsyncStream<Void>
    /// A value every hub node sharing this store must agree on (`audit-key`: the audit key's fingerprint,
    /// `ca-certificate`: the SHA-256 of the CA certificate): records `proposing` when none is recorded yet and returns
    /// what is recorded (nil when nothing is and nothing was proposed). A single-node store returns `proposing`.
    func agreedSetting(_ name: String, proposing: [UInt8]?) async throws -> [UInt8]?
    /// The device's stored counter window, where other nodes may have moved it (nil for a single-node store, whose
    /// node's own window in memory is ahead of it). A node takes it up when the device connects.
    func counterWindow(of device: DeviceID) async throws -> StoredCounterWindow?
    /// The database server's clock, for nodes to check their own against (nil for an embedded store).
    func databaseTime() async throws -> Date?
    /// Hands an MQTT message that is not stored (an operator's or application's publish, a will) to the other hub
    /// nodes. A device's message goes with its telemetry (`NewTelemetry.relay`).
    func relayMessage(_ message: RelayedMessage) async throws
    /// Whether other hub nodes share this store (they then hand MQTT messages to each other through it).
    var sharedByNodes: Bool { get }

    // A single node's MQTT message log: a device's message that reached a session kept for its client is logged in
    // the transaction that stores it (`NewTelemetry.relay`), under the message's id, until the sessions it reached
    // are saved; a node killed before that replays it into them when it starts (as nodes replay `cluster_events`).

    /// Whether this store keeps the log: a single node's store only (a store of several nodes, `sharedByNodes`,
    /// hands messages on as cluster events instead, and keeps none).
    var keepsMessageLog: Bool { get }
    /// Logged messages with an id above `id`, oldest first, at most `limit`.
    func loggedMessages(after id: Int64, limit: Int) async throws -> [(id: Int64, message: RelayedMessage)]
    /// The newest stored message's id (0 when none): a message logged later has a larger id.
    func messageLogHead() async throws -> Int64
    /// Drops the logged messages up to `id` (every session they reached is saved past them), and any beyond the
    /// newest `keeping`.
    func pruneMessageLog(through id: Int64, keeping: Int) async throws

    // MQTT sessions and retained messages (MQTT 5.0 §4.1, §3.3.1.3): a restart keeps them, another node takes them.

    /// Saves the sessions that `holder` (a node's run) holds in memory, and with `release` lets go of them (any node
    /// may then adopt them); a change without a session removes one that ended, unless another node holds it now.
    /// One transaction: a message that reached many sessions costs one commit (one fsync), and a failure writes
    /// nothing. Returns the keys of the sessions not written because another node has taken them meanwhile (or, for
    /// a change marked `stored`, removed them).
    func saveMQTTSessions(_ changes: [MQTTSessionChange], holder: String, release: Bool) async throws -> Set<String>
    /// Whether the session is stored, and which node holds it (nil: none does).
    func mqttSessionHolder(key: String) async throws -> (stored: Bool, holder: String?)
    /// Takes the session for `holder`, whoever held it, and returns it (nil: none is stored).
    func takeMQTTSession(key: String, holder: String) async throws -> StoredMQTTSession?
    /// Takes the sessions no node holds, and with `all` every session (one node, starting: the holders recorded are
    /// its own earlier runs), for `holder`. With `silentFor`, also the sessions whose client is away held by a node
    /// that has not said it is alive (`markAlive`) for that many seconds: it died with them. (A session whose
    /// client was connected is taken over when the client reconnects.) The store's clock judges, not the nodes'.
    func adoptMQTTSessions(holder: String, all: Bool, silentFor: TimeInterval?) async throws -> [StoredMQTTSession]
    /// Records that the node is alive now, with what it says of itself (several nodes: the others take up the
    /// sessions of one that falls silent). Records not heard from for a day are removed.
    func markAlive(_ node: HubNodeRecord) async throws
    /// Records that the node `holder` stopped cleanly.
    func markStopped(holder: String) async throws
    /// The nodes heard from in the last day, most recently started first, judged by the store's clock.
    func hubNodes() async throws -> [HubNodeStatus]
    /// Asks the node holding the session to save and hand it over (a cluster event; a single node holds them all).
    func requestMQTTSession(key: String, by holder: String) async throws
    /// Tells the other nodes that what this node says of itself changed (its shared subscriptions): a cluster event
    /// on which they read `hubNodes` again (a single node has no one to tell).
    func announceNodeChange(holder: String) async throws
    /// Records the TLS pins of a node's data directory (each node at start, and when its key rotates).
    func setNodePins(_ record: NodePinsRecord) async throws
    /// `bulwark node forget`: a node taken out of service; false when no such node is recorded.
    func removeNodePins(node: String) async throws -> Bool
    /// Every node's pins, by node id.
    func nodePins() async throws -> [NodePinsRecord]
    /// Sets the topic's retained message.
    func putRetainedMessage(_ message: StoredRetainedMessage) async throws
    /// Removes the topic's retained message; with `savedAt`, only the copy saved then (a node dropping the expired
    /// copy it read must not drop a newer one another node saved meanwhile).
    func removeRetainedMessage(topic: String, savedAt: Date?) async throws
    func retainedMessages() async throws -> [StoredRetainedMessage]
}

/// A change one hub node made that every other node on the same database must apply to what it holds in memory
/// (the revocation list, the gateway's quarantines and schemas). Recorded in the change's own transaction.
public struct ClusterEvent: Sendable, Equatable {
    public enum Change: Sendable, Equatable {
        case revoked([String])
        /// A pairing certificate the device confirmed: no longer refused as pending (nodes that started while it was
        /// pending loaded it with the revoked ones).
        case activated(String)
        case quarantined(DeviceID, until: Int64)
        case released(DeviceID)
        case schema(String)
        /// An MQTT message admitted by a node (`RelayedMessage.origin`), for the subscribers of the others.
        case message(RelayedMessage)
        /// A node (`by`) asks whichever node holds an MQTT session to hand it over: its client connected there.
        case sessionWanted(key: String, by: String)
        /// A node (its run's id) changed what it says of itself (`HubNodeRecord.shares`).
        case nodeChanged(String)
    }
    public var id: Int64
    public var change: Change
    public init(id: Int64, change: Change) {
        self.id = id
        self.change = change
    }
}

extension HubStore {
    /// Saves one session as `saveMQTTSessions` does; false, with nothing written, when another node has taken it
    /// (or, `stored`, removed it).
    public func saveMQTTSession(_ session: StoredMQTTSession, holder: String, release: Bool, stored: Bool = false)
        async throws -> Bool
    {
        try await saveMQTTSessions(
            [MQTTSessionChange(key: session.key, session: session, stored: stored)], holder: holder, release: release
        ).isEmpty
    }

    /// Removes a session that ended, unless another node holds it now.
    public func removeMQTTSession(key: String, holder: String) async throws {
        _ = try await saveMQTTSessions([MQTTSessionChange(key: key, session: nil)], holder: holder, release: false)
    }

    /// Events after `id`, oldest first (a single-node backend records none).
    public func clusterEvents(after id: Int64) async throws -> [ClusterEvent] { [] }
    /// The newest event's id (0 when none): where a node starting now begins to follow.
    public func latestClusterEvent() async throws -> Int64 { 0 }
    /// Yields when another node may have recorded events (PostgreSQL: LISTEN/NOTIFY). A single node never does; the
    /// stream ends when the store closes.
    public func clusterNotifications() -> AsyncStream<Void> { AsyncStream { _ in } }
    public func agreedSetting(_ name: String, proposing: [UInt8]?) async throws -> [UInt8]? { proposing }
    public func databaseTime() async throws -> Date? { nil }
    /// One node: no other node to hand a message to.
    public func relayMessage(_ message: RelayedMessage) async throws {}
    /// One node: the order messages reach the store in is not seen by any other node.
    public func queueTelemetry(_ message: consuming NewTelemetry) -> TelemetryWrite {
        let message = message
        return TelemetryWrite { try await self.appendTelemetry(message) }
    }
    /// Written in a task of its own (as `queueTelemetry(_:)`'s write once it is read).
    public func queueTelemetry(_ message: consuming NewTelemetry, reader: any PendingResultReader) {
        writeUnqueued(message, reader: reader)
    }

    /// The default `queueTelemetry(_:reader:)`, for a store that writes each message itself (and a test's store
    /// that sometimes does): the message in an entry of its own, written by `appendTelemetry` in a task.
    public func writeUnqueued(_ message: consuming NewTelemetry, reader: any PendingResultReader) {
        let entry = TelemetryQueue.Entry(unqueued: message, reader: reader)
        Task {
            do { entry.resolve(.success(try await self.appendTelemetry(entry.message))) } catch {
                entry.resolve(.failure(error))
            }
        }
    }
    public func requestMQTTSession(key: String, by holder: String) async throws {}
    public func announceNodeChange(holder: String) async throws {}
    /// Removes the topic's retained message, whichever copy (a clear: the newest write wins).
    public func removeRetainedMessage(topic: String) async throws {
        try await removeRetainedMessage(topic: topic, savedAt: nil)
    }
    public var sharedByNodes: Bool { false }
    public var keepsMessageLog: Bool { false }
    public func loggedMessages(after id: Int64, limit: Int) async throws -> [(id: Int64, message: RelayedMessage)] {
        []
    }
    public func messageLogHead() async throws -> Int64 { 0 }
    public func pruneMessageLog(through id: Int64, keeping: Int) async throws {}
    public func counterWindow(of device: DeviceID) async throws -> StoredCounterWindow? { nil }

    /// The whole audit log in order, read in pages (for `AuditChain.verify`).
    public func allAuditRecords() async throws -> [AuditRecord] {
        var records: [AuditRecord] = []
        while true {
            let page = try await auditRecords(after: records.last?.sequence ?? 0, limit: 10_000)
            if page.isEmpty { return records }
            records += page
        }
    }
}

/// A telemetry write queued with the store (`HubStore.queueTelemetry`): awaiting it returns the message's id once it
/// is durable, or throws what `appendTelemetry` would. Read it once: with `value()` or with `whenComplete`.
public struct TelemetryWrite: Sendable {
    private enum Source: Sendable {
        case wait(@Sendable () async throws -> Int64)
        case pending(PendingResult)
    }

    private let source: Source

    /// A write that starts when it is awaited (the protocol's default `queueTelemetry`).
    public init(_ wait: @escaping @Sendable () async throws -> Int64) { source = .wait(wait) }

    /// A write already in the store's queue, answered when its batch commits.
    public init(_ pending: PendingResult) { source = .pending(pending) }

    public func value() async throws -> Int64 {
        switch source {
        case .wait(let wait): try await wait()
        case .pending(let pending): try await pending.value()
        }
    }

    /// Calls `body` once with the outcome: for a queued write on the thread that commits its batch, without a task
    /// (so `body` must be short and must not block); for a write that starts when awaited, from a task.
    public func whenComplete(_ body: @escaping @Sendable (Result<Int64, any Error>) -> Void) {
        switch source {
        case .pending(let pending): pending.whenComplete(body)
        case .wait(let wait):
            Task {
                do { body(.success(try await wait())) } catch { body(.failure(error)) }
            }
        }
    }

}

/// Hears a queued telemetry write's outcome (`HubStore.queueTelemetry(_:reader:)`), as `whenComplete`'s closure
/// would: for a caller that already has an object to hand it to (a QoS 1 message's `StoreOutcome`; one for all of a
/// connection's QoS 0 writes to a topic), which spares a closure per write. `entry` is the write's, with its message,
/// so one reader can serve many writes and read each one's message.
public protocol PendingResultReader: AnyObject, Sendable {
    func resolved(_ result: Result<Int64, any Error>, of entry: TelemetryQueue.Entry)
}

/// A result one party sets once and another awaits, however their order falls: the bridge between a store's
/// queue (which answers a batch at a time) and a `TelemetryWrite`. Not generic: the group commit's writer resolves
/// one per message, and a generic class of this module ran there through value witnesses (its state copied and
/// destroyed by generic code: a tenth of the writer's time under QoS 0). Not final: a telemetry queue's entry is one
/// (one allocation per queued message, not two); its methods are final. Unchecked: its state is in a `Mutex`; its
/// named reader is written only by the one `resolve` that wins `claimed`; a subclass adds only constants of
/// Sendable types (`TelemetryQueue.Entry`: its message; and its link in the queue's stack, which the queue orders).
///
/// A result made with its reader (a telemetry queue's entry, `TelemetryQueue.append(_:reader:)`) is read by that
/// reader alone: `resolve` hands it the result without the lock (one atomic exchange), then lets it go; `value` and
/// `whenComplete` are not for it.
public class PendingResult: @unchecked Sendable {
    public typealias Value = Int64

    /// The reader named when this was made (only a `TelemetryQueue.Entry` names one), until `resolve` calls it.
    private var reader: (any PendingResultReader)?
    private let named: Bool
    /// Set by the first `resolve` of a result with a named reader: a later one is ignored.
    private let claimed = Atomic(false)

    /// Who waits, and the result once it is set: each part an optional of its own rather than enums of enums. The
    /// writer resolves one per message, and copying and destroying an enum of `Result`s and waiters went through
    /// the runtime's multi-payload enum functions (2.9 % of the hub's CPU per QoS 0 message, 2026-12-06); these
    /// parts are moved out with `take()`, never copied.
    private struct State {
        /// Unsafe, not checked: it is resumed once by this class's own rule (stored only while no result is set,
        /// taken out under the lock when one is). A `CheckedContinuation` is not of a size known when compiling
        /// (`_Concurrency` is a resilient library), and a class holding one made every subclass's initializer copy
        /// its arguments rather than move them: a telemetry queue's entry copied and destroyed its message, 10
        /// reference-count operations per queued message (`scripts/count-references`, 2026-12-07).
        var continuation: UnsafeContinuation<Value, any Error>?
        /// In a struct: a function stored in an `Optional` is kept at the generic abstraction, so storing one
        /// wrapped it in a thunk, an allocation per message (counted: 9.8 allocations per QoS 0 message, not 7.9).
        var callback: Callback?
        var resolved = false
        var value: Value = 0
        var error: (any Error)?

        var hasWaiter: Bool { continuation != nil || callback != nil }

        var result: Result<Value, any Error> {
            if let error { .failure(error) } else { .success(value) }
        }
    }

    private struct Callback {
        let body: @Sendable (Result<Value, any Error>) -> Void
    }

    private let state = Mutex(State())

    public init() {
        reader = nil
        named = false
    }

    /// A result its reader alone hears (`TelemetryQueue.Entry`'s initializer: `resolve` hands the reader the entry).
    init(reader: (any PendingResultReader)?) {
        self.reader = reader
        named = reader != nil
        // `resolve` hands a named reader this object as an entry, unchecked: an isa comparison here, once per entry.
        precondition(!named || type(of: self) == TelemetryQueue.Entry.self, "only a queue's entry names its reader")
    }

    /// Sets the result (once; later calls are ignored) and resumes whoever waits, or hands it to the named reader.
    public final func resolve(_ result: Result<Value, any Error>) {
        if named {
            guard !claimed.exchange(true, ordering: .acquiringAndReleasing) else { return }
            // Only this call gets here: the reader is taken out (let go now, not with the entry, which its thread
            // may keep for a while: `TelemetryQueue.Returns`).
            guard let reader = reader.take() else { return }
            // Only `TelemetryQueue.Entry`'s initializer names a reader.
            reader.resolved(result, of: unsafeDowncast(self, to: TelemetryQueue.Entry.self))
            return
        }
        let waiting = state.withLock { state -> (UnsafeContinuation<Value, any Error>?, Callback?)? in
            guard !state.resolved else { return nil }
            state.resolved = true
            switch result {
            case .success(let value): state.value = value
            case .failure(let error): state.error = error
            }
            guard state.hasWaiter else { return nil }
            return (state.continuation.take(), state.callback.take())
        }
        guard let (continuation, callback) = waiting else { return }
        continuation?.resume(with: result)
        callback?.body(result)
    }

    /// The result, once it is set. One reader: this or `whenComplete`, once.
    public final func value() async throws -> Value {
        try await withUnsafeThrowingContinuation { continuation in
            guard let ready = readyOrWait({ $0.continuation = continuation }) else { return }
            continuation.resume(with: ready)
        }
    }

    /// Calls `body` with the result: at once if it is set, else on the thread that sets it.
    public final func whenComplete(_ body: @escaping @Sendable (Result<Value, any Error>) -> Void) {
        guard let ready = readyOrWait({ $0.callback = Callback(body: body) }) else { return }
        body(ready)
    }

    /// The result if it is set; else `wait` registers the one reader and nil is returned.
    private final func readyOrWait(_ wait: (inout State) -> Void) -> Result<Value, any Error>? {
        precondition(!named, "a PendingResult with a named reader is read by it alone")
        return state.withLock { state in
            if state.resolved { return state.result }
            precondition(!state.hasWaiter, "a PendingResult has one reader")
            wait(&state)
            return nil
        }
    }
}
