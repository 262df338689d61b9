import Core
import Foundation
import Gateway
import JSON
import Logging
import MQTT
import NIOCore
import NIOPosix
import NIOSSL
import PKI
import Pairing
import ServiceLifecycle
import Store
import Synchronization
import X509

/// The MQTT listener: MQTT 3.1.1 and 5.0 over TLS 1.3 with a required client certificate (the same verification as
/// the HTTPS listeners). Identity is the certificate: a device publishes and subscribes within its own topics
/// (`mqtt.device*` patterns), an operator (or an application holding an operator certificate) reads the fleet and
/// sends commands (`mqtt.fleet*`). Every device PUBLISH passes the gateway pipeline (rate limits → size → strict
/// JSON → schema chosen by topic → counter window → store); a QoS 1 PUBLISH is acknowledged only once durable.
struct MQTTListener: Service {
    let host: String
    let cryptoProfile: CryptoProfile
    let port: Int
    let credentials: HubCredentials
    let revocations: RevocationList
    let store: any HubStore
    let rids: RIDDirectory
    let broker: MQTTBroker
    let gateway: GatewayPipeline
    let settings: MQTTSettings
    let renewals: CertificateRenewals
    let events: DeviceEvents
    let logger: Logger
    let onBound: @Sendable (Int) -> Void
    let connections: ConnectionCounter
    /// Admissions, refusals and failed handshakes (`/metrics`); nil in tests that build a listener alone.
    let metrics: HubMetrics?
    /// The largest packet accepted: a maximum-size body plus room for the topic and properties. Anything larger is
    /// refused by the decoder before it is buffered (MQTT 5: DISCONNECT 0x95).
    let maximumPacketSize: Int
    /// QoS 0 writes in flight (tests read it through the hub).
    let pendingQoS0: PendingWrites
    /// Where the store writes of its messages report (one object for the listener, held by each write).
    let writeOutcomes: MQTTWriteOutcomes
    /// Records refusals in the audit log (and its metrics) for this listener.
    let recorder: GatewayRecorder
    /// QoS 1 messages with a counter whose store write has not finished: a DUP resend of one waits for the outcome.
    let counterWrites = CounterWrites()
    /// Hands what this node admits to the other hub nodes (several nodes on one database); nil on one node.
    var relay: MessageRelay?
    /// A single node whose store keeps a message log (`HubStore.keepsMessageLog`): a device's QoS 1 or 2 message that
    /// a replayable subscription matches (a kept session's, QoS 1 or 2, unshared) is logged with it, so that a kill
    /// before that session is saved does not lose it there (`MQTTPersistence` replays the log at start). Nil with
    /// several nodes (their relay does this) or no store.
    var messageLog: MessageRelay?
    /// Keeps sessions in the store and takes up those held by another node (nil: in memory only).
    var persistence: MQTTPersistence?
    let missingCertificate = OncePerWindow()
    /// Connections whose session has not concluded (a parked one has no task): shutdown waits for them.
    let sessions: SessionTally
    /// Wills waiting out their delay, cancelled at shutdown (the session ends with the process).
    let delayedWills = DelayedWillTasks()
    /// The keep-alive sweeps of the listener's event loops (one per loop, not a timer per connection).
    let keepAliveSweeps = KeepAliveSweeps()
    /// The topic patterns of devices and of operators and applications, parsed once for every connection.
    let deviceACL: PreparedTopicACL
    let fleetACL: PreparedTopicACL
    /// Topic refusals are recorded once per identity, kind and minute: a device cannot turn them into a disk flood.
    let refusalsThisMinute = OncePerWindow()

    init(
        host: String, port: Int, credentials: HubCredentials, revocations: RevocationList, store: any HubStore,
        rids: RIDDirectory, broker: MQTTBroker, gateway: GatewayPipeline, settings: MQTTSettings,
        renewals: CertificateRenewals, events: DeviceEvents, cryptoProfile: CryptoProfile = .standard,
        metrics: HubMetrics? = nil, sessions: SessionTally = SessionTally(),
        pendingQoS0: PendingWrites = PendingWrites(), logger: Logger,
        onBound: @escaping @Sendable (Int) -> Void
    ) {
        self.metrics = metrics
        self.sessions = sessions
        self.pendingQoS0 = pendingQoS0
        self.cryptoProfile = cryptoProfile
        self.host = host
        self.port = port
        self.credentials = credentials
        self.revocations = revocations
        self.store = store
        self.rids = rids
        self.broker = broker
        self.gateway = gateway
        self.settings = settings
        self.deviceACL = PreparedTopicACL(settings.deviceACL)
        self.fleetACL = PreparedTopicACL(settings.fleetACL)
        self.renewals = renewals
        self.events = events
        self.logger = logger
        self.onBound = onBound
        self.connections = ConnectionCounter(
            total: settings.maxConnections, perSource: settings.maxConnectionsPerSource)
        self.maximumPacketSize = settings.largestPayload(maxBodyBytes: gateway.policy.maxBodyBytes) + 4096
        let recorder = GatewayRecorder(
            store: store, logger: logger, signals: events.signals, metrics: metrics, interface: .mqtt)
        self.recorder = recorder
        self.writeOutcomes = MQTTWriteOutcomes(
            pending: pendingQoS0, writes: counterWrites, events: events, gateway: gateway, recorder: recorder,
            logger: logger)
    }

    func run() async throws {
        let (contexts, verify) = try HubTLS.serverContexts(
            credentials: credentials, role: .anyIdentity, revocations: revocations, store: store, logger: logger,
            applicationProtocols: ["mqtt"], profile: cryptoProfile)
        let maximumPacketSize = maximumPacketSize
        let gateway = gateway
        let connections = connections
        let metrics = metrics
        let logger = logger
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            // Dead peers (a NAT that forgot them, keep-alive 0) eventually free their connection slots.
            .childChannelOption(.socketOption(.so_keepalive), value: 1)
            // TLS's per-connection buffers as mappings, resident only where written (`PageBackedAllocator`).
            .childChannelOption(.allocator, value: PageBackedAllocator.allocator)
            // Each connection keeps its receive buffer at the largest size it ever read into (NIO's default starts
            // at 2 KB and NIO never shrinks it): the handshake (the client's certificate) is read 512 bytes at a
            // time, so a held device keeps 512 bytes; after it the buffer adapts to the traffic (`ConnectionInbox`).
            .childChannelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: 512))
            .bind(host: host, port: port) {
                (channel: any Channel) -> EventLoopFuture<AcceptedChannel> in
                // Connection limits before any TLS work: the pipeline's per-source connection rate, then the open
                // connections in all and per source.
                let source = channel.remoteAddress?.ipAddress ?? "unknown"
                if let refusal = gateway.admitConnection(source: "mqtt \(source)", now: .now()) {
                    metrics?.refused(.mqtt, refusal)
                    logger.debug("MQTT connection refused before TLS", metadata: ["detail": .string(refusal.detail)])
                    channel.close(promise: nil)
                    return channel.eventLoop.makeFailedFuture(GatewayError(refusal: refusal, identity: nil))
                }
                if let refused = connections.admit(channel, source: source, logger: logger, listener: "MQTT") {
                    return channel.eventLoop.makeFailedFuture(refused)
                }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        NIOSSLServerHandler(context: contexts.context, customVerificationCallback: verify))
                    // Between TLS and everything that writes: one record per flush, not one per packet.
                    try channel.pipeline.syncOperations.addHandler(WriteCoalescingHandler())
                    if let metrics {
                        try channel.pipeline.syncOperations.addHandler(
                            HandshakeObserver(metrics: metrics, listener: .mqtt))
                    }
                    // Every complete packet of a read, decoded and queued in the connection's inbox, which holds the
                    // channel's reads while a packet waits: at most the packets the connection handles and the read
                    // (up to NIO's four socket reads of 64 KiB) that filled the queue.
                    let inbox = ConnectionInbox(
                        eventLoop: channel.eventLoop,
                        decoder: MQTTDecoder(role: .server, maximumPacketSize: maximumPacketSize),
                        maximumBufferSize: maximumPacketSize * 2)
                    try channel.pipeline.syncOperations.addHandler(inbox)
                    return AcceptedChannel(channel: channel, inbox: inbox)
                }
            }
        let boundPort = server.channel.localAddress?.port ?? port
        logger.info("listening", metadata: ["address": .string("\(host):\(boundPort)")])
        onBound(boundPort)
        // Stop accepting, then end every connection (a client with keep-alive 0 would otherwise hold the hub open):
        // each parked session gets a turn that finds the end and concludes. Acknowledged messages are already
        // durable; sessions are in memory and end with the process.
        let delayedWills = delayedWills
        let endAll: @Sendable () -> Void = {
            server.channel.close(promise: nil)
            connections.closeAll()
            delayedWills.cancelAll()
        }
        try await withGracefulShutdownHandler {
            try await withTaskCancellationHandler {
                // One reference for every connection: the listener is 1.2 KB, and a copy in a connection would sit
                // in each of its async frames.
                let shared = MQTTListener.Shared(self)
                do {
                    try await withThrowingDiscardingTaskGroup { group in
                        do {
                            try await server.executeThenClose { connections in
                                for try await accepted in connections {
                                    group.addTask {
                                        await MQTTConnection(
                                            shared: shared, channel: accepted.channel, inbox: accepted.inbox
                                        ).serve()
                                    }
                                }
                            }
                        } catch {
                            // Before the group waits for its tasks: an opening task waits for its CONNECT until
                            // its channel closes.
                            endAll()
                            throw error
                        }
                    }
                } catch {
                    // The accept loop failed (and ended every connection, above): the sessions still conclude.
                    await sessions.concluded()
                    throw error
                }
                // A session's later turns are tasks of their own (none while it is parked): the listener ends once
                // every session has concluded (its acknowledgements sent, detached from the broker).
                await sessions.concluded()
            } onCancel: {
                endAll()
            }
        } onGracefulShutdown: {
            endAll()
        }
    }
}

/// A connection the listener accepted: its channel, and the inbox its packets queue in.
struct AcceptedChannel: Sendable {
    let channel: any Channel
    let inbox: ConnectionInbox
}

/// Connections whose session has not concluded. A parked session has no task, so the listener's task group no
/// longer waits for it: at shutdown the listener waits here until each has sent its acknowledgements and detached.
final class SessionTally: Sendable {
    private struct State {
        var open = 0
        var waiters: [CheckedContinuation<Void, Never>] = []
    }

    private let state = Mutex(State())
    private let tasks = Atomic(0)
    private let turns = Atomic(0)

    func opened() {
        state.withLock { $0.open += 1 }
    }

    /// A connection's task began (its opening, or a turn) or ended: a held connection has none (`tasksRunning`).
    func taskStarted() { tasks.add(1, ordering: .relaxed) }
    func taskEnded() { tasks.subtract(1, ordering: .relaxed) }
    var tasksRunning: Int { tasks.load(ordering: .relaxed) }
    /// A parked session was resumed for a turn; how many were, since the listener started (tests read it).
    func turnStarted() { turns.add(1, ordering: .relaxed) }
    var turnsStarted: Int { turns.load(ordering: .relaxed) }

    /// One session concluded (or its connection ended before it was attached).
    func concluded(one: Void) {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.open -= 1
            guard state.open == 0 else { return [] }
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Returns once no session is open, or when the waiting task is cancelled (a turn stuck in a write must not
    /// hold a hub that its supervisor gave up on).
    func concluded() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { waiter in
                let now = state.withLock { state in
                    guard state.open > 0, !Task.isCancelled else { return true }
                    state.waiters.append(waiter)
                    return false
                }
                if now { waiter.resume() }
            }
        } onCancel: {
            let waiters = state.withLock { state in
                defer { state.waiters = [] }
                return state.waiters
            }
            for waiter in waiters { waiter.resume() }
        }
    }

    var open: Int { state.withLock { $0.open } }
}

/// Wills waiting out their delay (MQTT 5.0 §3.1.3.2.2), each in a task of its own; cancelled at shutdown, so a will
/// is not published while the hub stops (the session ends with the process).
final class DelayedWillTasks: Sendable {
    private struct State {
        var tasks: [Int: Task<Void, Never>] = [:]
        var next = 0
        var cancelled = false
    }

    private let state = Mutex(State())

    func run(_ operation: @escaping @Sendable () async -> Void) async {
        // The task is made and registered under the lock: one made after `cancelAll` would never be cancelled.
        let registered = state.withLock { state -> (Int, Task<Void, Never>)? in
            guard !state.cancelled else { return nil }
            state.next += 1
            let task = Task { await operation() }
            state.tasks[state.next] = task
            return (state.next, task)
        }
        guard let (id, task) = registered else { return }
        await withTaskCancellationHandler {
            await task.value
        } onCancel: {
            task.cancel()
        }
        _ = state.withLock { $0.tasks.removeValue(forKey: id) }
    }

    func cancelAll() {
        let tasks = state.withLock { state in
            state.cancelled = true
            return Array(state.tasks.values)
        }
        for task in tasks { task.cancel() }
    }
}

/// Open connections in all and per source address, and the channels themselves (closed at shutdown).
final class ConnectionCounter: Sendable {
    private struct State {
        var total = 0
        var perSource: [String: Int] = [:]
        var channels: [ObjectIdentifier: any Channel] = [:]
        /// After `closeAll`: no channel is admitted (one accepted while the listener stops would be left open).
        var closed = false
    }

    private let state = Mutex(State())
    let total: Int
    let perSource: Int

    init(total: Int, perSource: Int) {
        self.total = total
        self.perSource = perSource
    }

    /// Takes a slot for a channel just accepted, given back when it closes; or closes it at once (before any TLS
    /// work) and returns the error its channel initializer fails with.
    func admit(_ channel: any Channel, source: String, logger: Logger, listener: String) -> (any Error)? {
        guard acquire(source, channel) else {
            logger.debug("\(listener) connection refused: connection limit", metadata: ["source": .string(source)])
            channel.close(promise: nil)
            return ChannelError.ioOnClosedChannel
        }
        channel.closeFuture.whenComplete { _ in self.release(source, channel) }
        return nil
    }

    func acquire(_ source: String, _ channel: any Channel) -> Bool {
        state.withLock { state in
            guard !state.closed, state.total < total, state.perSource[source, default: 0] < perSource else {
                return false
            }
            state.total += 1
            state.perSource[source, default: 0] += 1
            state.channels[ObjectIdentifier(channel)] = channel
            return true
        }
    }

    func release(_ source: String, _ channel: any Channel) {
        state.withLock { state in
            state.total -= 1
            let left = state.perSource[source, default: 1] - 1
            state.perSource[source] = left > 0 ? left : nil
            state.channels[ObjectIdentifier(channel)] = nil
        }
    }

    func closeAll() {
        let channels = state.withLock { state in
            state.closed = true
            return Array(state.channels.values)
        }
        for channel in channels { channel.close(promise: nil) }
    }

    var open: Int { state.withLock { $0.total } }
}

/// Writes that many tasks produce for one connection (the PUBACKs of one group commit) go out with one flush: one
/// TLS write and one system call instead of one per packet. All its state lives on the channel's event loop.
final class FlushCoalescer: Sendable {
    let channel: any Channel
    /// The channel's event loop, held here: read through the channel (`any Channel`), it was retained and released
    /// around every use, two reference counts per PUBACK.
    let eventLoop: any EventLoop
    /// nil or false: no flush queued. (An empty box may be made off the loop.)
    private let scheduled: NIOLoopBoundBox<Bool?>
    /// Packets encoded on the loop since the last flush (`write(encoding:)`), written as one buffer before any later
    /// write or the flush.
    private let encoded: NIOLoopBoundBox<ByteBuffer?>
    /// Writes handed to the event loop from another thread and not yet made.
    private let queued = Atomic(0)

    init(_ channel: any Channel) {
        self.channel = channel
        eventLoop = channel.eventLoop
        scheduled = NIOLoopBoundBox.makeEmptyBox(valueType: Bool.self, eventLoop: channel.eventLoop)
        encoded = NIOLoopBoundBox.makeEmptyBox(valueType: ByteBuffer.self, eventLoop: channel.eventLoop)
    }

    /// As `write(_:)`, for a packet `encode` writes into a buffer: on the event loop with none of this coalescer's
    /// writes queued, into the buffer the packets encoded since the last flush share (the PUBACKs of a batch: one
    /// buffer and one write for all of them, not one each).
    func write(encoding encode: (inout ByteBuffer) -> Void) {
        if eventLoop.inEventLoop, queued.load(ordering: .acquiring) == 0 {
            // Taken out of the box while it is written: `encode(&encoded.value!)` went through the box's getter and
            // setter, so the buffer was never unique and each packet copied it (two allocations per PUBACK). Moved
            // out (`take`, through the box's `_modify`): read and then set to nil, its storage was retained and
            // released once more.
            var buffer = encoded.value.take() ?? channel.allocator.buffer(capacity: 64)
            encode(&buffer)
            encoded.value = buffer
            scheduleFlush()
            return
        }
        var buffer = ByteBuffer()
        encode(&buffer)
        write(buffer)
    }

    /// On the event loop, writes what was encoded since the last flush into the channel (unflushed); elsewhere,
    /// nothing (what was encoded waits for the flush already queued).
    func writeEncodedOnLoop() {
        if eventLoop.inEventLoop { writeEncoded() }
    }

    /// Writes what was encoded on the loop since the last flush (before any other write, which must follow it).
    private func writeEncoded() {
        guard let buffer = encoded.value.take() else { return }
        if buffer.readableBytes > 0 { channel.write(buffer, promise: nil) }
    }

    /// Flushes what was written so far, before the connection closes (a queued flush could come after the close).
    func flush() async {
        try? await eventLoop.submit {
            self.writeEncoded()
            self.channel.flush()
        }.get()
    }

    /// Writes `buffer` after every write made through this coalescer before it. On the event loop (the PUBACKs of a
    /// batch are answered there) with none of its writes still queued, the write is made at once: no second trip
    /// through the loop's queue per packet.
    func write(_ buffer: ByteBuffer) {
        if eventLoop.inEventLoop, queued.load(ordering: .acquiring) == 0 {
            writeOnLoop(buffer)
            return
        }
        queued.add(1, ordering: .relaxed)
        eventLoop.execute {
            self.writeOnLoop(buffer)
            self.queued.subtract(1, ordering: .releasing)
        }
    }

    /// Writes `last` (if any) after every write made through this coalescer before it, flushes and closes the
    /// channel: a write called after this one is not sent (the channel is closed when it is made). A close that
    /// bypassed the coalescer could be overtaken by a later write made at once on the loop: a PUBACK for a later
    /// message sent before the close that a refused earlier message asked for (MQTT 5.0 §4.6). The close is always
    /// queued on the loop, even from the loop, so writes other code queued there before it (a SUBACK, a delivery)
    /// still go out first; the coalescer's writes after it wait behind it.
    func close(after last: ByteBuffer? = nil) {
        queued.add(1, ordering: .relaxed)
        eventLoop.execute {
            self.closeOnLoop(last)
            self.queued.subtract(1, ordering: .releasing)
        }
    }

    private func closeOnLoop(_ last: ByteBuffer?) {
        writeEncoded()
        if let last, last.readableBytes > 0 { channel.write(last, promise: nil) }
        channel.flush()
        channel.close(promise: nil)
    }

    private func writeOnLoop(_ buffer: ByteBuffer) {
        writeEncoded()
        channel.write(buffer, promise: nil)
        scheduleFlush()
    }

    private func scheduleFlush() {
        guard scheduled.value != true else { return }
        scheduled.value = true
        // Runs after every write already queued on the loop: they share this flush.
        eventLoop.execute {
            self.scheduled.value = false
            self.writeEncoded()
            self.channel.flush()
        }
    }
}

/// What the store writes of MQTT messages report to: the listener's parts they need, held once, so that each write's
/// outcome (QoS 1 and 2) or callback (QoS 0) holds this object and its own message's few values (they run on the
/// store's thread, where each reference they hold is released).
final class MQTTWriteOutcomes: Sendable {
    /// A message's values that its outcome needs.
    struct Message: Sendable {
        let device: DeviceID
        let counter: UInt64?
        let correlationID: String
        /// A report the hub reads once stored (connections, update progress): its type and body. QoS 1 and 2 only.
        let report: (messageType: String?, body: [UInt8])?
        let duplicate: Bool
        let identity: Identity
        let source: String?
        let topic: String
    }

    /// QoS 0 writes still in flight (back-pressure on a flooding publisher).
    let pending: PendingWrites
    /// QoS 1 messages with a counter whose store write has not finished: a DUP resend of one waits for the outcome.
    let writes: CounterWrites
    let events: DeviceEvents
    let gateway: GatewayPipeline
    let recorder: GatewayRecorder
    let logger: Logger

    init(
        pending: PendingWrites, writes: CounterWrites, events: DeviceEvents, gateway: GatewayPipeline,
        recorder: GatewayRecorder, logger: Logger
    ) {
        self.pending = pending
        self.writes = writes
        self.events = events
        self.gateway = gateway
        self.recorder = recorder
        self.logger = logger
    }

    /// A message to acknowledge (QoS 1 and 2), on the thread that committed the batch: settles `write` at once, or
    /// from a task when something must be awaited first (a report the hub reads, an audit record, a log line).
    func settle(_ write: StoreOutcome, _ message: Message, _ result: Result<Int64, any Error>) {
        @Sendable func settle(_ outcome: StoreWrite) {
            if let counter = message.counter { writes.end(message.device, counter) }
            write.settle(outcome)
        }
        switch result {
        case .success:
            writes.succeeded(message.device, message.counter)
            guard let report = message.report else {
                events.signals.telemetry(message.device)
                return settle(.stored)
            }
            Task {
                await self.events.observe(
                    message.device, messageType: report.messageType, body: report.body,
                    correlationID: message.correlationID)
                settle(.stored)
            }
        case .failure(let error as StoreError) where error.code == .replayed:
            // Another hub node stored this counter first. Its resend (DUP, after a PUBACK lost with a
            // node) is acknowledged and neither stored nor delivered again; anything else is a replay.
            if message.duplicate { return settle(.storedElsewhere) }
            let refusal = replayedElsewhere(message)
            Task {
                await self.record(refusal, message)
                settle(.replayed)
            }
        case .failure(let error):
            // A failed batch fails every message in it: the counters given back and the errors logged in
            // a task, off the store's thread. A message that is not stored gives its counter back: nothing was
            // acknowledged (the connection ends, after DISCONNECT 0x89 on MQTT 5), so the device's resend must be
            // stored, not refused or waved through as a duplicate (as HTTP gives its nonce back).
            Task {
                self.release(message)
                self.logger.error(
                    "MQTT message not stored",
                    metadata: ["error": "\(error)", "correlation_id": "\(message.correlationID)"])
                settle((error as? StoreError)?.code == .unavailable ? .unavailable : .failed)
            }
        }
    }

    /// A stored QoS 0 message signals its device's telemetry (`signal`: not an update or egress report) at the time
    /// it was received (no clock read on the store's thread).
    func stored(_ device: DeviceID, signal: Bool, receivedAt: Date) {
        if signal { events.signals.telemetry(device, at: receivedAt.timeIntervalSince1970) }
    }

    /// A QoS 0 message whose write failed.
    func failed(_ error: any Error, _ message: Message) async {
        if let error = error as? StoreError, error.code == .replayed {
            // Another hub node stored this counter first: a replay (the counter stays taken here too).
            await record(replayedElsewhere(message), message)
        } else {
            // Not stored: the counter is given back, so the device's resend is stored, not refused as a replay.
            release(message)
            logger.error("MQTT QoS 0 message not stored", metadata: ["error": "\(error)"])
        }
    }

    private func replayedElsewhere(_ message: Message) -> Refusal {
        gateway.replayedElsewhere(
            message.device, detail: "counter \(message.counter ?? 0) already stored (by another hub node)",
            now: GatewayTime.now())
    }

    private func record(_ refusal: Refusal, _ message: Message) async {
        await recorder.record(
            refusal, identity: message.identity.uri, source: message.source, correlationID: message.correlationID,
            what: "MQTT PUBLISH \(MessageSignatureProfile.printable(message.topic, limit: 120))")
    }

    private func release(_ message: Message) {
        if let counter = message.counter { gateway.counters.release(device: message.device, counter: counter) }
    }
}

/// Writes of QoS 0 messages still in flight to the store, counted in bytes: QoS 0 is not acknowledged, so the
/// connection does not wait for its write unless too much is outstanding (then it does, which slows a flooding
/// publisher). Each write counts its body and `overhead` (its queue entry and row, about), so the bound holds the
/// memory of queued messages whatever their size. The default, 4 MiB, is about 9,000 messages of 200 bytes. The
/// store's writer commits in batches with an fsync each, so at 200,000 messages a second many are in flight: under
/// the former bound of 1,024 messages, about 40 % of the benchmark's QoS 0 samples were in the path that waits; under
/// this one, 1 % (`perf`, 2026-12-06).
final class PendingWrites: Sendable {
    private let bytes = Atomic<Int>(0)
    /// The bound, in bytes.
    let limit: Int
    static let overhead = 256
    static let defaultLimit = 4 << 20

    init(limit: Int = PendingWrites.defaultLimit) { self.limit = limit }

    /// Counts a write of `body` bytes in, unless the bound would be passed (then nothing is counted).
    func tryStart(body: Int) -> Bool {
        let cost = body + Self.overhead
        if bytes.add(cost, ordering: .relaxed).newValue <= limit { return true }
        bytes.subtract(cost, ordering: .relaxed)
        return false
    }

    /// Counts out a write `tryStart` counted in.
    func finish(body: Int) { bytes.subtract(body + Self.overhead, ordering: .relaxed) }

    /// Bytes of writes started and not finished.
    var outstanding: Int { bytes.load(ordering: .relaxed) }
}

extension MQTTListener {
    /// The listener, shared by reference with its connections.
    final class Shared: Sendable {
        let listener: MQTTListener
        init(_ listener: MQTTListener) { self.listener = listener }
    }
}

/// One MQTT connection.
struct MQTTConnection {
    let shared: MQTTListener.Shared
    let channel: any Channel
    /// The packets the channel read, queued for the connection (`ConnectionInbox`).
    let inbox: ConnectionInbox
    /// Read in place: never copied into a frame.
    var listener: MQTTListener { _read { yield shared.listener } }

    /// Who is connected, from the certificate alone.
    struct Peer {
        let identity: Identity
        let serial: String
        let source: String?
        /// The device's interned key in the gateway, and the source as a key, once for the connection.
        var deviceKey: DeviceKey?
        var sourceAddress: SourceAddress?
        var device: DeviceID? { identity.deviceID }
        /// The value of `{device}` in topic patterns (operators have none; their patterns use wildcards).
        var deviceLevel: String { device?.rawValue ?? "" }
    }

    /// The state of a session's connection that the packet loop changes. A reference: each async function of the
    /// connection holds 8 bytes for it, not a copy of all of it.
    final class State {
        init(
            rules: ServerSession, acl: BoundTopicACL, payloads: BoundPayloadRules,
            acknowledgements: AcknowledgementQueue<Acknowledgement>
        ) {
            self.rules = rules
            self.acl = acl
            self.payloads = payloads
            self.acknowledgements = acknowledgements
        }

        /// The protocol's rules for this connection (topic aliases, Receive Maximum, expiry, refusals).
        var rules: ServerSession
        // The session, the connection's number and its writer are the acknowledger's (held once per connection).
        var sessionKey: String { acknowledger.sessionKey }
        var connectionNumber: Int { acknowledger.connectionNumber }
        var output: FlushCoalescer { acknowledger.output }
        /// The identity's topic patterns, bound once for the connection.
        let acl: BoundTopicACL
        /// The identity's payload rules (`mqtt.payloads`), bound once for the connection.
        let payloads: BoundPayloadRules
        /// The acknowledgements not yet sent, in arrival order (see `acknowledge`).
        let acknowledgements: AcknowledgementQueue<Acknowledgement>
        /// What the acknowledgements share: among it, the QoS 1 PUBLISH packets received whose PUBACK has not been
        /// sent (`unacknowledged`).
        var acknowledger: Acknowledger { acknowledgements.connection }
        var version: ProtocolVersion { rules.version }
        var v5: Bool { rules.v5 }
        var expirySeconds: Int { rules.expirySeconds }
        /// MQTT 5.0 §3.1.2.11.7: a client that sets Request Problem Information to 0 gets no Reason String or User
        /// Properties on any packet but PUBLISH, CONNACK and DISCONNECT (so no correlation id on a PUBACK).
        var problemInformation: Bool { rules.problemInformation }
        /// What `handleNow` left for the next turn (which it resumes at once): a refusal to record and answer, or the
        /// session rules' action to perform. 8 bytes in every held connection's state (`LeftForTurn` is indirect).
        var leftForTurn: LeftForTurn?
        /// What was decided for the topic published to last (nil until the first PUBLISH: a held connection that
        /// never publishes keeps 8 bytes for it).
        private var lastTopic: TopicDecision?

        /// The ACL's answer, the payload rule, the route and the message type for `topic`: functions of the topic
        /// and of the identity's patterns and rules (bound once for the connection), so the last topic's are
        /// reused while a device publishes to it again (matching the patterns twice and the rules once was 4.7 % of
        /// the hub's CPU per QoS 0 message, 2026-12-06). The same bytes, not `==`: Swift's `String` equality is
        /// canonical equivalence (`\u{212A}` KELVIN SIGN equals `K`), and the ACL compares topics byte for byte, so
        /// an equivalent spelling of an allowed topic must be decided afresh (a review found it).
        func decision(for topic: TopicName) -> TopicDecision {
            if let last = lastTopic, TopicKey.sameBytes(last.topic, topic.rawValue) { return last }
            let decision = TopicDecision(topic, acl: acl, payloads: payloads)
            lastTopic = decision
            return decision
        }
    }

    /// See `State.leftForTurn`. Indirect: one reference, so 8 bytes in the state (optional included).
    indirect enum LeftForTurn {
        /// The gateway refused the PUBLISH: recorded and answered as a turn does (`refused`).
        case refusal(Refusal, PublishPacket, correlationID: String)
        /// The session rules' action, which `handleNow` could not finish without waiting (`perform`).
        case action(ServerSession.Action)
    }

    /// See `State.decision(for:)`.
    final class TopicDecision {
        let topic: String
        /// Nil when the identity may not publish to the topic.
        let permission: PublishPermission?
        let check: PayloadCheck
        /// The route and message type (`classify`); meaningful for a device's topic only.
        let route: String
        let messageType: String?

        /// The reader of this connection's QoS 0 writes to the topic, made at the first (`qos0Reports`). Set and read
        /// by the connection's turns and `handleNow`, one at a time (as the rest of `State`).
        private var reports: QoS0Reports?

        /// Whether a replayable subscription matched the topic (`MQTTBroker.hasReplayableSubscriber`), and the
        /// index's generation then: asked for every QoS 1 message, answered again only once the index changed.
        private var replayable: (generation: Int, answer: Bool)?

        func hasReplayableSubscriber(_ broker: MQTTBroker, _ topic: TopicName) -> Bool {
            let generation = broker.indexGeneration
            if let replayable, replayable.generation == generation { return replayable.answer }
            let answer = broker.hasReplayableSubscriber(topic)
            replayable = (generation, answer)
            return answer
        }

        /// The connection's cell in the gateway's source limiter (`GatewayPipeline.pinSource`), asked for at the
        /// topic's first message, and again once the table swept it (idle); `.some(nil)` when the table was full
        /// (the pipeline then decides by the key).
        private var source: RateLimiterTable<SourceAddress>.Cell??

        func sourceCell(_ gateway: GatewayPipeline, _ peer: Peer) -> RateLimiterTable<SourceAddress>.Cell? {
            if let source, source?.isRetired != true { return source }
            let pinned = gateway.pinSource(peer.sourceAddress, source: peer.source ?? "unknown")
            source = .some(pinned)
            return pinned
        }

        /// The gateway's look-up of the topic's schema (`GatewayPipeline.schemaHint`), made again only once a schema
        /// has been registered since.
        private var schema: GatewayPipeline.SchemaHint?

        func schemaHint(_ gateway: GatewayPipeline) -> GatewayPipeline.SchemaHint {
            let hint = gateway.schemaHint(for: messageType, current: schema)
            if hint !== schema { schema = hint }
            return hint
        }

        func qos0Reports(peer: Peer, _ outcomes: MQTTWriteOutcomes) -> QoS0Reports {
            if let reports { return reports }
            let made = QoS0Reports(outcomes: outcomes, identity: peer.identity, source: peer.source, topic: topic)
            reports = made
            return made
        }

        init(_ topic: TopicName, acl: BoundTopicACL, payloads: BoundPayloadRules) {
            self.topic = topic.rawValue
            let split = TopicName.Split(topic)
            permission = acl.publishing(split)
            check = payloads.check(for: split)
            (route, messageType) = MQTTConnection.classify(split, deviceLevel: permission?.deviceLevel ?? nil)
        }
    }

    enum End {
        case disconnected(withWill: Bool)
        case closed
    }

    // Memory: once its session is attached, a connection has a task only while its inbox holds something (a
    // *turn*): a held connection that sends nothing keeps no task, no async frames and no stream (with 10,000
    // devices held, each kilobyte per connection is 10 MB). The steps of the opening are functions of their own,
    // never inlined, so their locals live only while they run.
    /// The opening (the CONNECT, the identity's checks, the session attached), then the first turn.
    @inline(never)
    func serve() async {
        listener.sessions.opened()
        listener.sessions.taskStarted()
        defer { listener.sessions.taskEnded() }
        guard let (live, connack) = await open() else {
            listener.sessions.concluded(one: ())
            return
        }
        await turn(live, connack: connack)
    }

    /// The session attached, or nil when the connection was refused or ended first (closed by then).
    @inline(never)
    private func open() async -> (Live, connack: Packet)? {
        let source = channel.remoteAddress?.ipAddress
        do {
            if let opened = try await opening(source: source), let attached = try await attached(opened) {
                return attached
            }
        } catch {
            await ended(by: error, source: source)
        }
        channel.close(promise: nil)
        return nil
    }

    /// A session between its turns: what each turn handles packets with. Parked in the inbox while nothing is
    /// queued; the inbox resumes it (once) when something arrives, so one turn at a time uses it (the inbox's lock
    /// orders a turn's end before the next one's start).
    final class Live: ParkedSession, @unchecked Sendable {
        init(
            connection: MQTTConnection, connect: ConnectPacket, peer: Peer, state: State,
            revocationWatch: RevocationList.Watch
        ) {
            self.connection = connection
            self.connect = connect
            self.peer = peer
            self.state = state
            self.revocationWatch = revocationWatch
        }

        let connection: MQTTConnection
        let connect: ConnectPacket
        let peer: Peer
        let state: State
        let revocationWatch: RevocationList.Watch

        func resume() {
            let connection = connection
            connection.listener.sessions.turnStarted()
            connection.listener.sessions.taskStarted()
            Task {
                await connection.turn(self)
                connection.listener.sessions.taskEnded()
            }
        }

        func handlesNow(_ packet: PacketGlance) -> Bool { connection.handlesNow(packet, self) }
        func handleNow(_ packet: consuming Packet) -> HandledNow { connection.handleNow(packet, self) }
    }

    /// One turn: the packets queued (after the CONNACK, on the first), until none is (the session parks, and this
    /// task ends) or the connection ends (`conclude`).
    @inline(never)
    func turn(_ live: Live, connack: Packet? = nil) async {
        let end: End
        do {
            if let connack { try await start(connack: connack, state: live.state) }
            guard let ended = try await handleQueued(live) else { return }
            end = ended
        } catch let error as MQTTError {
            await malformed(error, peer: live.peer, state: live.state)
            end = .closed
        } catch {
            end = .closed
        }
        await conclude(live, end)
    }

    /// Handles the queued packets: nil once none is left (parked), or how the connection ended. First what
    /// `handleNow` left for this turn.
    private func handleQueued(_ live: Live) async throws -> End? {
        if let left = live.state.leftForTurn {
            live.state.leftForTurn = nil
            switch left {
            case .refusal(let refusal, let publish, let correlationID):
                guard
                    await refused(
                        refusal, publish, peer: live.peer, state: live.state, respond: true, correlationID)
                else { return .closed }
            case .action(let action):
                // As `handle` checks each packet: the certificate may have been revoked since `handleNow` looked.
                guard !listener.revocations.contains(live.peer.serial) else {
                    return await revoked(peer: live.peer, state: live.state)
                }
                if let end = try await perform(action, peer: live.peer, state: live.state) { return end }
            }
        }
        while true {
            switch try inbox.take(orPark: live) {
            case .packet(let packet):
                if let end = try await handle(packet, peer: live.peer, state: live.state) { return end }
            case .parked:
                return nil
            case .ended:
                return .closed
            }
        }
    }

    /// The connection has ended: `finish`, the revocation watch dropped, the channel closed, then a delayed will
    /// waits out its delay (cancelled at shutdown), and only then is the session counted as concluded.
    @inline(never)
    private func conclude(_ live: Live, _ end: End) async {
        let delayedWill = await finish(end, connect: live.connect, peer: live.peer, state: live.state)
        listener.revocations.unwatch(live.peer.serial, live.revocationWatch)
        channel.close(promise: nil)
        if let delayedWill {
            let connection = self
            await listener.delayedWills.run { await connection.publish(delayedWill) }
        }
        // After the will: the listener does not stop while a will it let through is still being stored.
        listener.sessions.concluded(one: ())
    }

    /// The CONNECT, within the deadline (the TLS handshake happens while we wait), or the connection closes (MQTT
    /// 3.1.1 §3.1.4 lets the server close a connection that sends no CONNECT); and who sent it, from the certificate.
    @inline(never)
    private func opening(source: String?) async throws -> Opened? {
        guard let connect = try await firstConnect() else { return nil }
        return await identify(connect, source: source)
    }

    /// Who sent the CONNECT, from the certificate; nil for a certificate without an identity or revoked meanwhile.
    @inline(never)
    private func identify(_ connect: ConnectPacket, source: String?) async -> Opened? {
        guard let peer = try? await peerIdentity(source: source), !listener.revocations.contains(peer.serial)
        else { return nil }
        let opened = Opened(connect: connect, peer: peer)
        await listener.renewals.used(peer.serial)
        // Every later write goes through the channel, in order with the broker's deliveries.
        return opened
    }

    /// The CONNECT and who sent it. A reference: the async functions that hold it for the whole connection hold
    /// 8 bytes.
    final class Opened {
        init(connect: ConnectPacket, peer: Peer) {
            self.connect = connect
            self.peer = peer
        }

        let connect: ConnectPacket
        let peer: Peer
    }

    /// The first packet, if it is a CONNECT within the deadline. A CONNECT of a protocol version the hub does not
    /// speak is answered (`unsupportedVersion`).
    @inline(never)
    private func firstConnect() async throws -> ConnectPacket? {
        let nioChannel = channel
        let deadline = nioChannel.eventLoop.scheduleTask(
            in: .nanoseconds(Int64(listener.settings.connectDeadlineSeconds * 1e9))
        ) {
            nioChannel.close(promise: nil)
        }
        let first: Packet?
        do { first = try await inbox.next() } catch let error as MQTTError
            where error.code == .unsupportedProtocolVersion
        {
            deadline.cancel()
            await unsupportedVersion(error)
            return nil
        }
        deadline.cancel()
        guard case .connect(let connect) = first else { return nil }
        return connect
    }

    /// MQTT 3.1.1 §3.1.2.2: CONNACK return code 0x01 and close; MQTT 5.0 §3.1.2.2: 0x84 and close.
    @inline(never)
    private func unsupportedVersion(_ error: MQTTError) async {
        let level = error.protocolLevel ?? 0
        let form: ProtocolVersion = level > 5 ? .v5 : .v311
        var connack = ByteBuffer()
        ServerSession.refusal(.unsupportedProtocolVersion, form).encode(into: &connack, version: form)
        listener.logger.notice("MQTT CONNECT refused", metadata: ["detail": .string(error.detail)])
        try? await channel.writeAndFlush(connack).get()
    }

    /// A connection that ended with an error: logged; one that sent no certificate is recorded.
    @inline(never)
    private func ended(by error: any Error, source: String?) async {
        listener.logger.debug("MQTT connection ended", metadata: ["error": "\(error)"])
        // A certificate that fails verification is recorded by the verification callback; a client that sends none
        // never reaches it, so its refusal is recorded here (once per source and minute: no disk flood).
        if "\(error)".contains("PEER_DID_NOT_RETURN_A_CERTIFICATE"),
            listener.missingCertificate.first(source ?? "unknown", now: Int64(Date().timeIntervalSince1970) / 60)
        {
            try? await listener.store.recordSecurityEvent(
                SecurityEvent(
                    at: Date(), kind: "tls-client-refused", identity: nil, source: source,
                    detail: "MQTT: no client certificate"))
        }
    }

    private func peerIdentity(source: String?) async throws -> Peer? {
        guard let certificate = try await channel.nioSSL_peerCertificate().get() else { return nil }
        return peer(certificate, source: source)
    }

    /// The parsed certificate (a large value) lives only in this synchronous function.
    @inline(never)
    private func peer(_ certificate: NIOSSLCertificate, source: String?) -> Peer? {
        guard let x509 = try? Certificate(derEncoded: certificate.toDERBytes()), let identity = x509.bulwarkIdentity
        else { return nil }
        return Peer(
            identity: identity, serial: x509.serialHex, source: source,
            deviceKey: identity.deviceID.map(listener.gateway.deviceKeys.key(for:)),
            sourceAddress: SourceAddress(channel.remoteAddress))
    }

    private func send(_ packet: Packet, _ version: ProtocolVersion) async throws {
        var buffer = ByteBuffer()
        packet.encode(into: &buffer, version: version)
        // Waits only when the peer is not reading (the channel's buffer is over its high-water mark).
        if channel.isWritable {
            channel.writeAndFlush(buffer, promise: nil)
        } else {
            try await channel.writeAndFlush(buffer).get()
        }
    }

    /// A refusal that did not go through the gateway pipeline (topic access, client id): logged and recorded.
    private func refuse(_ kind: String, _ peer: Peer, _ detail: String, oncePerMinute: Bool = false) async {
        if oncePerMinute,
            !listener.refusalsThisMinute.first(
                "\(peer.identity.uri) \(kind)", now: Int64(Date().timeIntervalSince1970) / 60)
        {
            return
        }
        listener.logger.notice(
            "MQTT refused", metadata: ["peer": .string(peer.identity.uri), "detail": .string(detail)])
        try? await listener.store.recordSecurityEvent(
            SecurityEvent(at: Date(), kind: kind, identity: peer.identity.uri, source: peer.source, detail: detail))
    }

    /// The client identifier must name the certificate's device (or be its current RID); an empty one is assigned.
    /// Operators choose any non-empty identifier; their sessions are keyed by identity too, so they never share
    /// a device's session.
    private func acceptedClientID(_ requested: String, peer: Peer) -> String? {
        guard let device = peer.device else {
            return requested.isEmpty ? "op-\(CorrelationID().rawValue)" : requested
        }
        if requested.isEmpty || requested == device.rawValue { return device.rawValue }
        if let rid = RotatingIdentifier.parse(requested), listener.rids.resolve(rid) == device { return requested }
        return nil
    }

    /// The correlation id goes back to MQTT 5 clients as a user property on a refusal (the reason string is left
    /// out: reason codes only, no detail for the client).
    static func refusalProperties(_ correlationID: String?) -> Properties {
        var properties = Properties()
        if let correlationID { properties.userProperties = [("correlation-id", correlationID)] }
        return properties
    }

    /// The connection's MQTT rules (CONNECT negotiation, then each packet), from the hub's configuration.
    var limits: ServerSession.Limits {
        let settings = listener.settings
        return ServerSession.Limits(
            topicAliasMaximum: settings.topicAliasMaximum, receiveMaximum: settings.receiveMaximum,
            maximumPacketSize: listener.maximumPacketSize, maxSessionExpirySeconds: settings.maxSessionExpirySeconds,
            maxKeepAliveSeconds: settings.maxKeepAliveSeconds, maxOutboundAliases: MQTTBroker.maxOutboundAliases,
            maxOutboundInFlight: 1024, sustainedQoS0Flood: Self.sustainedQoS0Flood)
    }

    /// The CONNECT accepted and the session attached (nil when refused: the CONNACK is sent). From here a
    /// certificate revoked while connected closes the connection the moment the serial is revoked (and is checked
    /// before each packet), so a subscriber that only reads (or pings) is cut off too; `conclude` drops the watch.
    @inline(never)
    private func attached(_ opened: Opened) async throws -> (Live, connack: Packet)? {
        let (connect, peer) = (opened.connect, opened.peer)
        guard let accepted = try await accept(connect, peer: peer) else { return nil }
        let nioChannel = channel
        let revocationWatch = listener.revocations.watch(peer.serial) { nioChannel.close(promise: nil) }
        var handedOver = false
        defer { if !handedOver { listener.revocations.unwatch(peer.serial, revocationWatch) } }
        guard let attached = try await attach(connect, peer: peer, accepted) else { return nil }
        handedOver = true
        let live = Live(
            connection: self, connect: connect, peer: peer, state: attached.state, revocationWatch: revocationWatch)
        return (live, attached.connack)
    }

    /// What `accept` settled: the session's rules, its key and the identity's topics. A reference: the async
    /// functions that pass it on hold 8 bytes for it.
    final class Accepted {
        init(rules: ServerSession, clientID: String, sessionKey: String, acl: BoundTopicACL) {
            self.rules = rules
            self.clientID = clientID
            self.sessionKey = sessionKey
            self.acl = acl
        }

        let rules: ServerSession
        let clientID: String
        let sessionKey: String
        let acl: BoundTopicACL
    }

    /// What the checks of a CONNECT decided before anything is awaited: a refusal (recorded when it names a kind,
    /// then answered), or the session's rules.
    enum ConnectDecision {
        case refuse(kind: String?, detail: String, answer: Packet)
        case accept(Accepted)
    }

    /// The identity's checks (each refusal recorded and answered), then the protocol's; a session stored by another
    /// node taken up. Nil when the CONNECT was refused (the CONNACK is sent).
    ///
    /// The checks are a synchronous function (`decide`): this async function's frame, kept by the connection's task
    /// for as long as it is connected (a task keeps the largest stack of frames it ever had), holds only what
    /// crosses an await.
    @inline(never)
    private func accept(_ connect: ConnectPacket, peer: Peer) async throws -> Accepted? {
        let version = connect.version
        switch decide(connect, peer: peer) {
        case .refuse(let kind, let detail, let answer):
            if let kind { await refuse(kind, peer, detail) }
            try await send(answer, version)
            return nil
        case .accept(let accepted):
            // A device that was connected to another hub node: its counter window as that node left it.
            if let device = peer.device { await takeUpCounterWindow(device) }
            return try await takeUpSession(connect, peer: peer, accepted) ? accepted : nil
        }
    }

    @inline(never)
    private func decide(_ connect: ConnectPacket, peer: Peer) -> ConnectDecision {
        let version = connect.version
        // The identity's checks first (each refusal recorded), then the protocol's.
        guard let clientID = acceptedClientID(connect.clientID, peer: peer) else {
            return .refuse(
                kind: "mqtt-client-id-refused", detail: "client id names another device",
                answer: ServerSession.refusal(.clientIdentifierNotValid, version))
        }
        // A quarantined device is refused with no further work (Not authorized), as on HTTP.
        if let device = peer.device,
            listener.gateway.quarantine.isQuarantined(device, now: Int64(Date().timeIntervalSince1970))
        {
            return .refuse(kind: nil, detail: "", answer: ServerSession.refusal(.notAuthorized, version))
        }
        // The will is a publish like any other: within the identity's topics.
        let acl = (peer.device == nil ? listener.fleetACL : listener.deviceACL).bound(to: peer.deviceLevel)
        if let will = connect.will {
            guard acl.mayPublish(will.topic), Self.responseTopicAllowed(will.properties, peer: peer, acl: acl) else {
                return .refuse(
                    kind: "mqtt-publish-refused", detail: "will outside the identity's topics",
                    answer: ServerSession.refusal(.notAuthorized, version))
            }
        }
        switch ServerSession.connectReceived(connect, limits: limits) {
        case .refuse(let connack):
            return .refuse(kind: nil, detail: "", answer: connack)
        case .accept(let rules):
            // A device has one session whatever spelling of its id or RID it connects with (a RID changes every
            // 15 minutes and parses case-insensitively: keyed by it, one device could keep any number of sessions);
            // an operator has one per client id, keyed by identity so it never shares a device's.
            let sessionKey = peer.device == nil ? "\(peer.identity.uri) \(clientID)" : peer.identity.uri
            return .accept(Accepted(rules: rules, clientID: clientID, sessionKey: sessionKey, acl: acl))
        }
    }

    @inline(never)
    private func takeUpCounterWindow(_ device: DeviceID) async {
        if let stored = try? await listener.store.counterWindow(of: device) {
            listener.gateway.counters.takeUp(device: device, CounterWindow(highest: stored.highest, seen: stored.seen))
        }
    }

    /// A session stored by another node (or this one's earlier run) is taken up before the connection attaches,
    /// and before the keep-alive clock starts: the client is not silent while the hub waits for another node.
    /// False when the store is unavailable (the refusal is sent).
    @inline(never)
    private func takeUpSession(_ connect: ConnectPacket, peer: Peer, _ accepted: Accepted) async throws -> Bool {
        guard let persistence = listener.persistence else { return true }
        let settings = listener.settings
        do {
            try await persistence.prepare(
                key: accepted.sessionKey, owner: peer.identity.uri, maxPerOwner: settings.maxSessionsPerIdentity,
                cleanStart: connect.cleanStart)
            return true
        } catch {
            try await storeUnavailable(error, connect, peer: peer, accepted)
            return false
        }
    }

    @inline(never)
    private func storeUnavailable(_ error: any Error, _ connect: ConnectPacket, peer: Peer, _ accepted: Accepted)
        async throws
    {
        listener.logger.error(
            "MQTT session not taken up: the store is unavailable",
            metadata: ["peer": .string(peer.identity.uri), "error": .string("\(error)")])
        try await send(accepted.rules.refusal(.serverUnavailable), connect.version)
    }

    /// Attaches the connection to its session in the broker (saved before the CONNACK: another node that this client
    /// connects to next finds it); the connection's state and its CONNACK. Nil when the identity holds too many
    /// sessions (the refusal is sent).
    @inline(never)
    private func attach(_ connect: ConnectPacket, peer: Peer, _ accepted: Accepted) async throws -> (
        state: State, connack: Packet
    )? {
        let settings = listener.settings
        guard
            let attached = await listener.broker.attach(
                key: accepted.sessionKey, owner: peer.identity.uri, maxPerOwner: settings.maxSessionsPerIdentity,
                cleanStart: connect.cleanStart, expirySeconds: accepted.rules.expirySeconds,
                connection: brokerConnection(accepted.rules))
        else {
            try await sessionsExceeded(connect, peer: peer, accepted)
            return nil
        }
        let opened = connectionState(connect, peer: peer, accepted, attached)
        // Saved before the CONNACK: another node that this client connects to next finds the session here.
        await listener.persistence?.flush()
        return opened
    }

    private func brokerConnection(_ rules: ServerSession) -> BrokerConnection {
        var connection = BrokerConnection(
            channel: channel, version: rules.version, receiveMaximum: rules.clientReceiveMaximum,
            maximumPacketSize: rules.clientMaximumPacketSize)
        connection.topicAliasMaximum = rules.clientTopicAliasMaximum
        return connection
    }

    /// MQTT 5.0 0x97 Quota exceeded; MQTT 3.1.1 has no such code: 0x03 Server unavailable.
    @inline(never)
    private func sessionsExceeded(_ connect: ConnectPacket, peer: Peer, _ accepted: Accepted) async throws {
        let limit = listener.settings.maxSessionsPerIdentity
        await refuse(
            "mqtt-session-refused", peer, "already \(limit) sessions for this identity", oncePerMinute: true)
        try await send(accepted.rules.refusal(.quotaExceeded), connect.version)
    }

    /// The attached connection's state and its CONNACK. A device that asks for Response Information gets the base
    /// of the response topics it can use: a topic under its commands that it may subscribe to and the fleet may
    /// publish to. Operators and applications get none: devices publish only within their own topics.
    @inline(never)
    private func connectionState(
        _ connect: ConnectPacket, peer: Peer, _ accepted: Accepted, _ attached: MQTTBroker.Attached
    ) -> (state: State, connack: Packet) {
        let settings = listener.settings
        let rules = accepted.rules
        let connack = rules.connack(
            sessionPresent: attached.sessionPresent,
            assignedClientID: connect.clientID.isEmpty ? accepted.clientID : nil,
            responseInformation: Self.responseInformation(peer: peer, acl: accepted.acl, fleetACL: listener.fleetACL))
        let output = FlushCoalescer(channel)
        let acknowledger = Acknowledger(
            output: output, version: rules.version, problemInformation: rules.problemInformation,
            broker: listener.broker, sessionKey: accepted.sessionKey, connectionNumber: attached.connectionNumber,
            persistence: listener.persistence)
        let state = State(
            rules: rules, acl: accepted.acl, payloads: settings.payloads.bound(to: peer.identity),
            acknowledgements: AcknowledgementQueue(connection: acknowledger))
        return (state, connack)
    }

    /// MQTT 3.1.1 §3.1.2.10: no packet within 1.5 × keep-alive closes the connection (the inbox notes each packet's
    /// arrival; its loop's `KeepAliveSweep` closes it). The clock starts with the CONNACK: the hub's own work before
    /// it (the store, another node) is not the client's silence. Then the CONNACK, then the session's deliveries.
    @inline(never)
    private func start(connack: Packet, state: State) async throws {
        let keepAlive = state.rules.keepAlive
        if keepAlive > 0 {
            let timeout = TimeAmount.milliseconds(Int64(keepAlive) * 1500)
            try await inbox.startKeepAlive(
                timeout: timeout, sweep: listener.keepAliveSweeps.sweep(for: channel.eventLoop)
            )
            .get()
        }
        try await send(connack, state.version)
        await listener.broker.resume(key: state.sessionKey, connectionNumber: state.connectionNumber)
    }

    /// MQTT 5.0 §4.13: a malformed packet or protocol error closes the connection after a DISCONNECT with the
    /// reason code; MQTT 3.1.1 §4.8: the connection is closed.
    @inline(never)
    private func malformed(_ error: MQTTError, peer: Peer, state: State) async {
        listener.logger.notice(
            "MQTT packet refused", metadata: ["peer": .string(peer.identity.uri), "detail": .string("\(error)")])
        if state.v5 { await serverDisconnect(error.reasonCode, state: state) }
    }

    /// The connection has ended: acknowledgements still waiting for their store write go out, the session is
    /// detached, and the will is published (or returned to wait out its delay).
    @inline(never)
    private func finish(_ end: End, connect: ConnectPacket, peer: Peer, state: State) async -> DelayedWill? {
        let acl = state.acl
        // Acknowledgements still waiting for their store write go out before the connection closes.
        await state.acknowledgements.wait(untilAtMost: 0)
        await state.output.flush()
        await listener.broker.detach(
            key: state.sessionKey, connectionNumber: state.connectionNumber, expirySeconds: state.expirySeconds)
        // MQTT 3.1.1 §3.1.2.5 / MQTT 5.0 §3.1.2.5: the will is published when the connection ends without a normal
        // DISCONNECT (or with reason 0x04). It passes the same checks as any publish.
        let publishWill: Bool
        switch end {
        case .closed: publishWill = true
        case .disconnected(let withWill): publishWill = withWill
        }
        guard publishWill, let will = connect.will, !listener.revocations.contains(peer.serial),
            acl.mayPublish(will.topic)
        else { return nil }
        let message = PublishPacket(
            topic: will.topic, payload: will.payload, qos: will.qos, retain: will.retain, properties: will.properties)
        // MQTT 5.0 §3.1.3.2.2: a Will Delay Interval holds the will back until it passes or the session ends,
        // whichever is first; it is published after the connection is closed (`serve`).
        let delay = state.v5 ? min(Int(will.properties.willDelayInterval ?? 0), state.expirySeconds) : 0
        guard delay == 0 else {
            return DelayedWill(
                message: message, peer: peer, state: state, seconds: delay, connectionNumber: state.connectionNumber)
        }
        _ = await admitAndDeliver(message, peer: peer, state: state, respond: false)
        return nil
    }

    /// A will to publish once its delay has passed, unless a new connection took up the session meanwhile. Handed
    /// to a task of its own once the connection has concluded: nothing else uses its state by then.
    final class DelayedWill: @unchecked Sendable {
        init(message: PublishPacket, peer: Peer, state: State, seconds: Int, connectionNumber: Int) {
            self.message = message
            self.peer = peer
            self.state = state
            self.seconds = seconds
            self.connectionNumber = connectionNumber
        }

        let message: PublishPacket
        let peer: Peer
        let state: State
        let seconds: Int
        let connectionNumber: Int
    }

    /// Waits out a will's delay (the connection is closed by then, its slot given back) and publishes it if no new
    /// connection took up the session [MQTT-3.1.3-9] and the certificate was not revoked meanwhile. The broker holds
    /// one waiting will per session (a newer one replaces it), so reconnecting in a loop cannot pile them up. At a
    /// hub shutdown the wait is cancelled and the will is not published: the session ends with the process.
    private func publish(_ will: DelayedWill) async {
        guard
            await listener.broker.willDue(
                key: will.state.sessionKey, connectionNumber: will.connectionNumber, seconds: will.seconds),
            !listener.revocations.contains(will.peer.serial),
            !Task.isCancelled  // the hub is stopping (`willDue` answers at once for a session already gone)
        else { return }
        _ = await admitAndDeliver(will.message, peer: will.peer, state: will.state, respond: false)
    }

    /// One packet; nil to read the next. Not inlined into `handleQueued`: its locals (it is the whole protocol)
    /// live only while a packet is handled, not for the whole of a turn.
    @inline(never)
    private func handle(_ packet: consuming Packet, peer: Peer, state: State) async throws -> End? {
        guard !listener.revocations.contains(peer.serial) else { return await revoked(peer: peer, state: state) }
        return try await perform(Self.rulesReceived(consume packet, state: state), peer: peer, state: state)
    }

    /// The session rules' action for a packet; a QoS 1 or 2 PUBLISH is counted in as unacknowledged.
    static func rulesReceived(_ packet: consuming Packet, state: State) -> ServerSession.Action {
        let acknowledger = state.acknowledger
        return state.rules.packetReceived(consume packet) { publish in
            publish.qos == .exactlyOnce
                ? acknowledger.unacknowledged.received(qos2: publish.packetID ?? 0)
                : acknowledger.unacknowledged.received()
        }
    }

    /// Does what the session rules decided for a packet; nil to read the next.
    @inline(never)
    private func perform(_ action: ServerSession.Action, peer: Peer, state: State) async throws -> End? {
        let version = state.version
        // Each case that awaits is a function of its own (never inlined): this frame, which every connection's task
        // keeps at its largest, holds only the action.
        switch action {
        case .publish(let publish):
            if let end = await received(publish, peer: peer, state: state) { return end }
        case .subscribe(let id, let subscriptions, let properties):
            await subscribe(id, subscriptions, properties, peer: peer, state: state)
        case .unsubscribe(let id, let filters):
            try await unsubscribe(id, filters, state: state)
        case .acknowledged(let id, let qos):
            return await acknowledged(id, qos: qos, peer: peer, state: state)
        case .deliveryReceived(let id, let reason):
            return try await deliveryReceived(id, reason: reason, peer: peer, state: state)
        case .released(let id):
            try await released(id, state: state)
        case .reply(let answer):
            try await send(answer, version)
        case .ended(let publishWill):
            return .disconnected(withWill: publishWill)
        case .close:
            return await close(action, peer: peer, state: state)
        }
        return nil
    }

    @inline(never)
    private func revoked(peer: Peer, state: State) async -> End {
        await refuse("revoked-certificate-used", peer, "MQTT packet after revocation")
        return await close(state.rules.closing(.notAuthorized), peer: peer, state: state)
    }

    @inline(never)
    private func unsubscribe(_ id: UInt16, _ filters: [TopicFilter], state: State) async throws {
        let existed = await listener.broker.unsubscribe(
            key: state.sessionKey, connectionNumber: state.connectionNumber, filters)
        await listener.persistence?.flush()
        try await send(state.rules.unsuback(id, existed: existed), state.version)
    }

    /// A PUBACK or PUBCOMP for a delivery. For a QoS 2 delivery a PUBACK, or a PUBCOMP for one not yet released,
    /// is a protocol error.
    @inline(never)
    private func acknowledged(_ id: UInt16, qos: QoS, peer: Peer, state: State) async -> End? {
        guard
            await listener.broker.acknowledge(
                key: state.sessionKey, connectionNumber: state.connectionNumber, packetID: id, qos: qos)
        else {
            return await close(
                state.rules.closing(.protocolError, "acknowledgement of the wrong kind"), peer: peer, state: state)
        }
        return nil
    }

    /// A PUBREC for a QoS 2 delivery.
    @inline(never)
    private func deliveryReceived(_ id: UInt16, reason: ReasonCode, peer: Peer, state: State) async throws -> End? {
        switch await listener.broker.received(
            key: state.sessionKey, connectionNumber: state.connectionNumber, packetID: id, reasonCode: reason)
        {
        case .released: return nil
        case .unknown:
            // Written with back-pressure, so a client that floods these and never reads cannot grow the hub's
            // buffers.
            try await send(state.rules.pubrelUnknown(id), state.version)
            return nil
        case .protocolError:
            return await close(
                state.rules.closing(.protocolError, "PUBREC to a QoS 1 delivery"), peer: peer, state: state)
        }
    }

    /// A PUBREL: PUBCOMP, written after the acknowledgements already queued, with back-pressure.
    @inline(never)
    private func released(_ id: UInt16, state: State) async throws {
        let held = await listener.broker.releaseQoS2(key: state.sessionKey, packetID: id)
        state.acknowledger.unacknowledged.completed(qos2: id)
        await state.output.flush()
        try await send(state.rules.pubcomp(id, held: held), state.version)
    }

    /// A PUBLISH the session rules accepted: the identity's topics, QoS 2 ids, then the gateway pipeline. Nil to
    /// read the next packet. A function of its own (as `subscribe`): `handle`'s frame stays small.
    @inline(never)
    private func received(_ publish: PublishPacket, peer: Peer, state: State) async -> End? {
        guard state.decision(for: publish.topic).permission != nil,
            Self.responseTopicAllowed(publish.properties, peer: peer, acl: state.acl)
        else { return await outsideTopics(publish, peer: peer, state: state) }
        if publish.qos == .exactlyOnce, let id = publish.packetID,
            case .answered(let end) = await arrivedQoS2(id, peer: peer, state: state)
        {
            return end
        }
        if !(await admitAndDeliver(publish, peer: peer, state: state, respond: true)) { return .closed }
        return nil
    }

    /// A PUBLISH (or its response topic) outside the identity's topics: recorded (once a minute) and answered as
    /// the session rules say.
    @inline(never)
    private func outsideTopics(_ publish: PublishPacket, peer: Peer, state: State) async -> End? {
        await refuse(
            "mqtt-publish-refused", peer, "publish (or its response topic) outside the identity's topics",
            oncePerMinute: true)
        switch state.rules.publishRefused(.notAuthorized, qos: publish.qos) {
        case .acknowledge(let code):
            if let id = publish.packetID {
                await acknowledge(id, qos: publish.qos, state: state, code: code)
            }
            return nil
        case .drop: return nil
        case .close(let code):
            return await close(.close(disconnect: code, detail: nil), peer: peer, state: state)
        }
    }

    enum QoS2Arrival {
        case new
        /// Answered here; the connection ends if there is an `End`.
        case answered(End?)
    }

    /// §4.3.3 [MQTT-4.3.3-9]: a QoS 2 PUBLISH whose id is stored and awaits its PUBREL is a copy (a resend after a
    /// reconnect): PUBREC again, nothing stored or delivered twice. Ids held per session are bounded (a client that
    /// never sends PUBREL, over many connections): beyond the limit PUBREC 0x97 Quota exceeded (MQTT 5) or the
    /// connection closes (3.1.1).
    @inline(never)
    private func arrivedQoS2(_ id: UInt16, peer: Peer, state: State) async -> QoS2Arrival {
        switch await listener.broker.arrivedQoS2(
            key: state.sessionKey, connectionNumber: state.connectionNumber, packetID: id,
            limit: listener.settings.maxQoS2HeldPerSession)
        {
        case .new: return .new
        case .copy:
            // A fleet publisher on one node: the id may not be saved yet (its first PUBREC never went out because the
            // save failed), so this PUBREC waits for a save too. A device's message is in the store: its first PUBREC
            // waits for the session's save only when it has no counter (`acknowledge`'s `savingID`), and a copy of it
            // waits for none.
            var saved: StoreOutcome?
            if listener.relay == nil, peer.device == nil, let persistence = listener.persistence {
                saved = Self.saved([state.sessionKey], of: state.sessionKey, persistence, listener.broker)
            }
            await acknowledge(id, qos: .exactlyOnce, state: state, after: saved, code: .success)
            return .answered(nil)
        case .unsavedCopy(let unsaved):
            // A fleet message delivered and not yet answered (its sessions' save failed or is running): PUBREC
            // once they are saved, and then its id; never delivered again.
            let saved = listener.persistence.map {
                Self.saved(
                    unsaved.holding, retained: unsaved.retained, qos2: (id, unsaved.connectionNumber),
                    of: state.sessionKey, $0, listener.broker)
            }
            await acknowledge(id, qos: .exactlyOnce, state: state, after: saved, code: .success)
            return .answered(nil)
        case .full:
            await refuse(
                "mqtt-quota-exceeded", peer, "QoS 2 packet ids awaiting PUBREL over the limit", oncePerMinute: true)
            guard state.v5 else { return .answered(.closed) }
            await acknowledge(id, qos: .exactlyOnce, state: state, code: .quotaExceeded)
            return .answered(nil)
        }
    }

    /// A SUBSCRIBE: each filter within the identity's topics is granted, the others refused (0x87 / 0x80).
    @inline(never)
    private func subscribe(
        _ id: UInt16, _ subscriptions: [Subscription], _ properties: Properties, peer: Peer, state: State
    ) async {
        let acl = state.acl
        var codes: [ReasonCode] = []
        var refused = 0
        var granted: [(index: Int, TopicFilter, SubscriptionOptions, retainHandling: UInt8)] = []
        for (index, subscription) in subscriptions.enumerated() {
            // The decoder refused a malformed shared subscription; access is checked on its inner filter.
            let share = try? SharedFilter.parse(subscription.filter)
            if index >= listener.settings.maxFiltersPerSubscribe {
                codes.append(.unspecifiedError)  // beyond the filters one SUBSCRIBE may carry
            } else if acl.maySubscribe(share?.filter ?? subscription.filter) {
                let qos = subscription.qos
                granted.append(
                    (
                        codes.count, subscription.filter,
                        SubscriptionOptions(
                            qos: qos, noLocal: subscription.noLocal,
                            retainAsPublished: subscription.retainAsPublished,
                            identifier: properties.subscriptionIdentifiers.first, share: share),
                        subscription.retainHandling
                    ))
                codes.append(ReasonCode(rawValue: qos.rawValue))
            } else {
                refused += 1
                codes.append(state.rules.subscribeRefused(.notAuthorized))
            }
        }
        if refused > 0 {
            // One record per SUBSCRIBE packet (it may carry thousands of filters), at most once a minute.
            await refuse(
                "mqtt-subscribe-refused", peer, "\(refused) filter(s) outside the identity's topics",
                oncePerMinute: true)
        }
        if subscriptions.count > listener.settings.maxFiltersPerSubscribe {
            await refuse(
                "mqtt-subscribe-refused", peer,
                "SUBSCRIBE with \(subscriptions.count) filters (at most \(listener.settings.maxFiltersPerSubscribe))",
                oncePerMinute: true)
        }
        await listener.broker.subscribe(
            key: state.sessionKey, connectionNumber: state.connectionNumber, granted, codes: codes,
            packetID: id, maxSubscriptions: listener.settings.maxSubscriptionsPerSession,
            quotaExceeded: state.rules.subscribeRefused(.quotaExceeded))
        // In the store before the next packet is read (MQTT lets the SUBACK go first, §3.8.4).
        await listener.persistence?.flush()
    }

    /// Ends the connection as the session rules said: the client's fault is recorded (at most once a minute), MQTT 5
    /// gets its DISCONNECT.
    private func close(_ action: ServerSession.Action, peer: Peer, state: State) async -> End {
        guard case .close(let code, let detail) = action else { return .closed }
        if let detail { await refuse("mqtt-protocol-error", peer, detail, oncePerMinute: true) }
        if let code { await serverDisconnect(code, state: state) }
        return .closed
    }

    /// The gateway pipeline for a device publish (an operator's command is checked as strict JSON only), then
    /// storage and delivery. Returns false when the connection must close.
    ///
    /// Answers (MQTT 5.0 §3.4.2.1 lists the PUBACK reason codes): over the rate, QoS 1 gets PUBACK 0x97 Quota
    /// exceeded (0x96 Message rate too high is a DISCONNECT code, §3.14.2.1) and a sustained QoS 0 flood
    /// DISCONNECT 0x96; invalid content PUBACK 0x99; a replayed counter 0x87; the quarantine threshold closes the
    /// connection (DISCONNECT 0x87 or 0x96). MQTT 3.1.1 has no negative acknowledgement: over the rate the message
    /// is dropped unacknowledged (the client keeps it), other refusals and quarantine close the connection.
    @inline(never)
    private func admitAndDeliver(_ publish: PublishPacket, peer: Peer, state: State, respond: Bool) async
        -> Bool
    {
        // Each PUBLISH's correlation id (stored with the message, and in any refusal's audit record).
        let correlationID = CorrelationID().rawValue
        let decision = state.decision(for: publish.topic)
        let check = decision.check
        guard let device = peer.device else {
            return await admitFleetPublish(publish, peer: peer, state: state, respond: respond, correlationID, check)
        }
        let now = GatewayTime.now()
        let (route, messageType) = (decision.route, decision.messageType)
        if publish.retain, publish.payload.isEmpty {
            return await clearRetained(
                publish, peer: peer, state: state, respond: respond, correlationID, route: route,
                messageType: messageType, now: now)
        }
        let counter = Self.counter(of: publish)
        // MQTT 3.1.1 §4.4 / MQTT 5.0 §4.4: a QoS 1 PUBLISH resent with DUP after its PUBACK was lost with the
        // connection (see `acknowledgedAgain`).
        if publish.duplicate, respond, let id = publish.packetID,
            let answered = await acknowledgedAgain(
                publish, id: id, device: device, counter: counter, check: check, route: route,
                messageType: messageType, now: now, peer: peer, state: state, correlationID)
        {
            return answered
        }
        let result = admission(
            publish, device: device, counter: counter, check: check, route: route, messageType: messageType,
            now: now, peer: peer, hints: decision)
        switch result {
        case .success(let admitted):
            return await storeAndDeliver(
                admitted, publish, device: device, decision: decision, peer: peer, state: state, respond: respond,
                correlationID)
        case .failure(let refusal):
            return await refused(refusal, publish, peer: peer, state: state, respond: respond, correlationID)
        }
    }

    // `admitAndDeliver` runs for every PUBLISH, so its frame stays allocated in every publishing connection's task
    // (a task keeps the largest stack of frames it ever had): each path is a function of its own, never inlined, so
    // only the path taken has a frame.

    /// The message's counter (the `$counter` user property), if it is a decimal integer within I-JSON's range.
    static func counter(of publish: PublishPacket) -> UInt64? {
        guard
            let text = publish.properties.userProperties.first(where: { $0.0 == GatewayPipeline.counterProperty })?.1,
            (1...16).contains(text.utf8.count), text.utf8.allSatisfy({ (48...57).contains($0) }),
            let value = UInt64(text), value <= 9_007_199_254_740_991
        else { return nil }
        return value
    }

    /// The gateway pipeline's decision on a device's PUBLISH (synchronous, so none of its work sits in an async
    /// frame).
    @inline(never)
    private func admission(
        _ publish: PublishPacket, device: DeviceID, counter: UInt64?, check: PayloadCheck, route: String,
        messageType: String?, now: GatewayTime, peer: Peer, hints decision: TopicDecision
    ) -> Result<Admitted, Refusal> {
        if counter == nil,
            publish.properties.userProperties.contains(where: { $0.0 == GatewayPipeline.counterProperty })
        {
            return .failure(listener.gateway.malformedCounter(device, now: now))
        }
        return listener.gateway.admit(
            Self.inbound(
                publish, peer: peer, route: route, messageType: messageType, counter: counter, check: check,
                sourceCell: decision.sourceCell(listener.gateway, peer),
                schemaHint: decision.schemaHint(listener.gateway)),
            now: now)
    }

    /// A device's PUBLISH as the gateway pipeline reads it. Built where it is used, never held across an await.
    static func inbound(
        _ publish: PublishPacket, peer: Peer, route: String, messageType: String?, counter: UInt64?,
        check: PayloadCheck, sourceCell: RateLimiterTable<SourceAddress>.Cell? = nil,
        schemaHint: GatewayPipeline.SchemaHint? = nil
    ) -> InboundMessage {
        InboundMessage(
            identity: peer.identity, route: route, source: peer.source ?? "unknown",
            contentType: publish.properties.contentType, messageType: messageType, body: publish.payload,
            transport: .mqtt(counter: counter), payload: check,
            declaredText: publish.properties.payloadFormatIndicator == 1, deviceKey: peer.deviceKey,
            sourceAddress: peer.sourceAddress, sourceCell: sourceCell, schemaHint: schemaHint)
    }

    /// A DUP resend whose counter is already in the window: the message was stored, so it is acknowledged again,
    /// stored nothing twice and counts no offence (the rate limits still apply). Without a counter it is stored
    /// again (at least once). The counter is in the window from admission on, before the store write ends: a DUP
    /// that arrives meanwhile waits for that write, and is acknowledged only if it stored the message (if it
    /// failed, the counter was given back and the DUP is admitted and stored like a first copy). Nil when the
    /// resend is to be admitted as a first copy.
    @inline(never)
    private func acknowledgedAgain(
        _ publish: PublishPacket, id: UInt16, device: DeviceID, counter: UInt64?, check: PayloadCheck,
        route: String, messageType: String?, now: GatewayTime, peer: Peer, state: State, _ correlationID: String
    ) async -> Bool? {
        guard
            let seen = counter
                ?? (check.format == .json ? Self.memberCounter(publish.payload, listener.gateway.policy.json) : nil),
            await listener.counterWrites.outcome(device, seen) ?? true,
            listener.gateway.counters.window(of: device)?.hasSeen(seen) == true
        else { return nil }
        let message = Self.inbound(
            publish, peer: peer, route: route, messageType: messageType, counter: counter, check: check)
        if case .failure(let refusal) = listener.gateway.admitEnvelope(message, now: now) {
            return await refused(refusal, publish, peer: peer, state: state, respond: true, correlationID)
        }
        listener.metrics?.admitted(.mqtt)
        await acknowledge(id, qos: publish.qos, state: state, code: .success)
        return true
    }

    /// An operator's or application's publish: the topic's payload rule, without a schema (JSON: a strict JSON
    /// object); then delivery.
    @inline(never)
    private func admitFleetPublish(
        _ publish: PublishPacket, peer: Peer, state: State, respond: Bool, _ correlationID: String,
        _ check: PayloadCheck
    ) async -> Bool {
        let v5 = state.v5
        let violation =
            GatewayPipeline.formatViolation(
                publish.payload, contentType: publish.properties.contentType,
                declaredText: publish.properties.payloadFormatIndicator == 1, check: check)?.detail
            ?? (publish.payload.count > (check.maxBytes ?? listener.gateway.policy.maxBodyBytes)
                ? "payload of \(publish.payload.count) bytes over the limit" : nil)
            ?? (check.format == .json
                && (try? listener.gateway.policy.json.parse(publish.payload))?.isObject != true
                ? "payload is not a strict JSON object" : nil)
        if let violation {
            await refuse(
                "invalid-message", peer,
                "MQTT PUBLISH to \(MessageSignatureProfile.printable(publish.topic.rawValue, limit: 120)): \(violation)",
                oncePerMinute: true)
            guard respond else { return true }
            switch state.rules.publishRefused(.invalidContent, qos: publish.qos) {
            case .acknowledge(let code):
                if let id = publish.packetID { await acknowledge(id, qos: publish.qos, state: state, code: code) }
                return true
            case .drop: return true
            case .close(let code):
                if let code { await serverDisconnect(code, state: state) }
                return false
            }
        }
        let message = BrokerMessage(publish)
        let local = listener.relay == nil ? nil : await listener.broker.beginLocal(topic: message.topic)
        defer { withExtendedLifetime(local) {} }
        if let answered = await relayFirst(
            message, publish, state: state, respond: respond, correlationID, placement: local?.placement)
        {
            return answered
        }
        // One node: a QoS 2 id is held, unsaved, from before the deliveries until they are saved (a resend meanwhile
        // is a copy, never delivered again), then saved with the publisher's session.
        let oneNode = listener.relay == nil && listener.persistence != nil
        let qos2 = publish.qos == .exactlyOnce && respond && oneNode ? publish.packetID : nil
        let (recipients, holding) = await listener.broker.publishing(
            message, from: state.sessionKey, placement: local?.placement,
            unsavedQoS2: qos2.map { ($0, state.connectionNumber) })
        guard respond, let id = publish.packetID else {
            if message.retain { await listener.persistence?.flush() }
            return true
        }
        // MQTT 5.0 §3.4.2.1 0x10 No matching subscribers (a success code: nothing is queued anywhere). With several
        // nodes, another node's sessions may match: success.
        let none = recipients == 0 && v5 && listener.relay == nil
        // What is acknowledged must outlive the process. With several nodes the message is in the log already
        // (`relayFirst`). One node has no log: the sessions it was queued in or sent to (and a retained copy) are
        // saved before the acknowledgement, else SIGKILL right after it lost the message (they are otherwise saved
        // every 250 ms). The save runs beside the connection, which reads on; the acknowledgement waits for it in
        // order. Only the sessions this message reached count (another session that cannot be saved refuses no one
        // else's message); when they cannot be saved, the connection ends unacknowledged (`acknowledge`,
        // `.unavailable`). A QoS 2 id is saved after the deliveries, in a later transaction than theirs: an id saved
        // before them would make the resend after a kill in between look answered, with the message in no session
        // (lost); this way round the worst, after a kill, is a resend delivered twice.
        var saved: StoreOutcome?
        if oneNode, !holding.isEmpty || message.retain || qos2 != nil, let persistence = listener.persistence {
            saved = Self.saved(
                holding, retained: message.retain ? message.topic : nil,
                qos2: qos2.map { ($0, state.connectionNumber) }, of: state.sessionKey, persistence, listener.broker)
        } else if message.retain {
            await listener.persistence?.flush()
        }
        await acknowledge(
            id, qos: publish.qos, state: state, after: saved, code: none ? .noMatchingSubscribers : .success,
            correlationID: correlationID)
        return true
    }

    /// The outcome of saving the sessions in `holding` (and the retained message of `retained`), then, for a QoS 2
    /// message, its id with the publisher's session `key`: run beside the connection, for an acknowledgement to
    /// wait on. `.unavailable` when something could not be saved (the id then stays unsaved: a copy waits again).
    static func saved(
        _ holding: Set<String>, retained: TopicName? = nil, qos2: (id: UInt16, connectionNumber: Int)? = nil,
        of key: String, _ persistence: MQTTPersistence, _ broker: MQTTBroker
    ) -> StoreOutcome {
        let outcome = StoreOutcome()
        Task {
            var saved = await persistence.flush(saving: holding, retained: retained)
            if saved, let qos2 {
                await broker.savedQoS2(key: key, connectionNumber: qos2.connectionNumber, packetID: qos2.id)
                saved = await persistence.flush(saving: [key])
            }
            outcome.settle(saved ? .stored : .unavailable)
        }
        return outcome
    }

    /// A retained message with an empty payload only removes the topic's retained message (MQTT 3.1.1 §3.3.1.3):
    /// there is no content to validate or store, but it counts against the rate limits like any publish.
    @inline(never)
    private func clearRetained(
        _ publish: PublishPacket, peer: Peer, state: State, respond: Bool, _ correlationID: String,
        route: String, messageType: String?, now: GatewayTime
    ) async -> Bool {
        var message = InboundMessage(
            identity: peer.identity, route: route, source: peer.source ?? "unknown", contentType: nil,
            messageType: messageType, body: [], transport: .mqtt(counter: nil))
        message.deviceKey = peer.deviceKey
        message.sourceAddress = peer.sourceAddress
        if case .failure(let refusal) = listener.gateway.admitEnvelope(message, now: now) {
            return await refused(refusal, publish, peer: peer, state: state, respond: respond, correlationID)
        }
        let clear = BrokerMessage(topic: publish.topic, payload: [], qos: publish.qos, retain: true)
        let local = listener.relay == nil ? nil : await listener.broker.beginLocal(topic: clear.topic)
        // The other nodes clear their copy too.
        if let answered = await relayFirst(
            clear, publish, state: state, respond: respond, correlationID, placement: local?.placement)
        {
            return answered
        }
        if respond, let id = publish.packetID {
            await acknowledge(id, qos: publish.qos, state: state, code: .success, then: clear, local: local)
        } else {
            await deliverInOrder(clear, state: state, local: local)
        }
        return true
    }

    /// An admitted device message: stored (QoS 1 and 2 acknowledged once stored, QoS 0 in the next batch), then
    /// delivered.
    @inline(never)
    private func storeAndDeliver(
        _ admitted: Admitted, _ publish: PublishPacket, device: DeviceID, decision: TopicDecision, peer: Peer,
        state: State, respond: Bool, _ correlationID: String
    ) async -> Bool {
        listener.metrics?.admitted(.mqtt)
        state.rules.publishAdmitted()
        let receivedAt = Date()
        let delivery = BrokerMessage(publish)
        // The other nodes' subscribers get it from the same transaction that stores it; on one node, the log has it
        // for the sessions it reaches until they are saved.
        let local =
            listener.relay != nil
            ? await listener.broker.beginLocal(topic: delivery.topic)
            : logs(publish, decision) ? listener.broker.beginLogged() : nil
        // The row is built and queued by synchronous functions: it never sits in this frame.
        if publish.qos != .atMostOnce {
            let write = queueAcknowledged(
                row(
                    admitted, publish, device: device, correlationID, at: receivedAt, delivery, local: local,
                    state: state),
                admitted, device: device, check: decision.check, publish: publish, peer: peer, correlationID)
            if respond, let id = publish.packetID {
                await acknowledge(
                    id, qos: publish.qos, state: state, after: write, correlationID: correlationID, then: delivery,
                    local: local, savingID: publish.qos == .exactlyOnce && admitted.counter == nil)
            } else {
                // The will: nothing to acknowledge, but it is delivered only once stored.
                if await write.value() == .stored {
                    await listener.broker.publish(
                        delivery, from: state.sessionKey, position: isLogged(local) ? write.storedID : nil,
                        placement: local?.placement)
                }
                withExtendedLifetime(local) {}
            }
            return true
        }
        if let wait = queueWithoutWaiting(
            row(admitted, publish, device: device, correlationID, at: receivedAt, delivery, local: local, state: state),
            peer: peer, decision: decision)
        {
            await wait()
        }
        await deliverInOrder(delivery, state: state, local: local)
        return true
    }

    /// A device's QoS 0 or QoS 1 PUBLISH handled at once, on the event loop that read it, while its session is
    /// parked (`ParkedSession.handleNow`): the same steps as a turn takes for it (`handle`, `received`,
    /// `admitAndDeliver`, `storeAndDeliver`, `acknowledge`), with nothing to await, so no task runs and no thread is
    /// woken for it: a task per read, and the hop from the event loop to the Swift pool, cost about 1.5 µs of the 7 µs
    /// of hub CPU a QoS 0 message took (`bulwark-bench mqtt`, 2026-12-06). A QoS 1 message's PUBACK follows its store
    /// write as a turn's does (`AcknowledgementQueue`).
    ///
    /// A PINGREQ is answered here too (`pingNow`).
    ///
    /// Not for a packet that is not a device's PUBLISH of QoS 0 or 1, or is retained, a DUP resend, or from a revoked
    /// certificate, or when other nodes are relayed to (`handlesNow`). Otherwise the session rules take the packet
    /// (`rulesReceived`: topic aliases, the Receive Maximum), and what cannot be finished here goes to a turn resumed
    /// at once, before the packets after it: the rules' action when it is not a PUBLISH or when waiting is needed (a
    /// topic outside the identity's patterns, a body over `atOnceBodyLimit`, a QoS 0 message a subscriber or an
    /// expiry is waiting for, too much outstanding in QoS 0 writes, a full acknowledgement queue), or the gateway's
    /// refusal.
    @inline(never)
    func handleNow(_ packet: consuming Packet, _ live: Live) -> HandledNow {
        let (peer, state) = (live.peer, live.state)
        if case .pingreq = packet { return pingNow(packet, state) }
        let action = Self.rulesReceived(packet, state: state)
        guard let device = peer.device else {
            // `handlesNow` took only a device's PUBLISH; a turn does what it would have.
            state.leftForTurn = .action(action)
            return .doneWithTurn
        }
        guard case .publish(let publish) = action, let handled = publishNow(publish, device: device, state, peer)
        else {
            state.leftForTurn = .action(action)
            return .doneWithTurn
        }
        return handled
    }

    /// Whether `handleNow` takes `packet`: a device's PUBLISH of QoS 0 or 1, not retained and not a DUP resend, on a
    /// single node; or a PINGREQ to a peer that is reading (else the turn waits until it does). Never from a revoked
    /// certificate (the turn closes the connection). Changes nothing.
    func handlesNow(_ packet: PacketGlance, _ live: Live) -> Bool {
        let peer = live.peer
        if case .pingreq = packet {
            return live.state.output.channel.isWritable && !listener.revocations.contains(peer.serial)
        }
        guard let received = packet.publishFlags else { return false }
        return received.qos != .exactlyOnce && !received.retain && !received.duplicate && peer.device != nil
            && listener.relay == nil && !listener.revocations.contains(peer.serial)
    }

    /// A PINGREQ answered here, as a turn answers it (the session rules, then their PINGRESP through the connection's
    /// ordered output), without resuming the connection's task: each resumption woke a thread of the concurrency
    /// pool (a held fleet's every device once per keep-alive, and in `bulwark-bench mqtt` one dispatch wake-up per
    /// 100 QoS 0 messages).
    private func pingNow(_ packet: consuming Packet, _ state: State) -> HandledNow {
        let action = Self.rulesReceived(packet, state: state)
        guard case .reply(let answer) = action else {
            state.leftForTurn = .action(action)
            return .doneWithTurn
        }
        let version = state.version
        state.output.write { answer.encode(into: &$0, version: version) }
        return .done
    }

    /// `handleNow`'s PUBLISH, once the session rules took it; nil when a turn must handle it (nothing has changed).
    private func publishNow(_ publish: PublishPacket, device: DeviceID, _ state: State, _ peer: Peer) -> HandledNow? {
        let decision = state.decision(for: publish.topic)
        let delivery = BrokerMessage(publish)
        let body = publish.payload.count
        let acknowledged = publish.qos == .atLeastOnce
        // A large body is checked by a turn, off the event loop: its JSON and schema would hold up the loop's other
        // connections (their handshakes, their PINGRESP) for as long as they take.
        guard body <= Self.atOnceBodyLimit, decision.permission != nil,
            Self.responseTopicAllowed(publish.properties, peer: peer, acl: state.acl),
            acknowledged
                // `acknowledge` would not wait. (The decoder gives every QoS 1 PUBLISH an id.)
                ? publish.packetID != nil
                    && state.acknowledgements.unfinished <= listener.settings.receiveMaximum - 1
                : !listener.broker.needsPublish(delivery) && listener.writeOutcomes.pending.tryStart(body: body)
        else { return nil }
        let correlationID = CorrelationID().rawValue
        let receivedAt = Date()
        let result = admission(
            publish, device: device, counter: Self.counter(of: publish), check: decision.check,
            route: decision.route, messageType: decision.messageType, now: GatewayTime.now(wall: receivedAt),
            peer: peer, hints: decision)
        switch result {
        case .success(let admitted):
            listener.metrics?.admitted(.mqtt)
            state.rules.publishAdmitted()
            // A single node logs it for the sessions it reaches (`storeAndDeliver`).
            let local = acknowledged && logs(publish, decision) ? listener.broker.beginLogged() : nil
            let record = row(
                admitted, publish, device: device, correlationID, at: receivedAt, delivery, local: local,
                state: state)
            if acknowledged {
                let id = publish.packetID ?? 0  // checked above
                let write = queueAcknowledged(
                    consume record, admitted, device: device, check: decision.check, publish: publish, peer: peer,
                    correlationID)
                appendAcknowledgement(
                    id, qos: publish.qos, state: state, after: write, correlationID: correlationID,
                    then: consume delivery, local: local)
            } else {
                queueStarted(consume record, peer: peer, decision: decision)
            }
            return .done
        case .failure(let refusal):
            if !acknowledged { listener.writeOutcomes.pending.finish(body: body) }
            state.leftForTurn = .refusal(refusal, publish, correlationID: correlationID)
            return .doneWithTurn
        }
    }

    /// Whether a device's message goes into a single node's message log: QoS 1 or 2 (a QoS 0 delivery may be lost)
    /// and a session subscribes to its topic now at QoS 1 or 2, not shared (the log is replayed to no shared
    /// subscription: each member would get a copy).
    private func logs(_ publish: PublishPacket, _ decision: TopicDecision) -> Bool {
        listener.messageLog != nil && publish.qos != .atMostOnce
            && decision.hasReplayableSubscriber(listener.broker, publish.topic)
    }

    /// Whether the message `local` began went into a single node's log: then it is delivered at its stored id
    /// (`StoreOutcome.storedID`), for the broker to count saves past it. Not with several nodes (their log is read
    /// back by `ClusterSync`).
    private func isLogged(_ local: LocalWrite?) -> Bool { listener.messageLog != nil && local != nil }

    /// The largest body `handleNow` checks on the event loop (a device's telemetry is far smaller; the default
    /// body limit is 64 KiB).
    static let atOnceBodyLimit = 8 << 10

    /// A device message's row. With several nodes it carries the delivery for the other nodes' subscribers: they
    /// get it from the same transaction that stores it. Synchronous, and built as an argument: never in an async
    /// frame.
    @inline(never)
    private func row(
        _ admitted: Admitted, _ publish: PublishPacket, device: DeviceID, _ correlationID: String, at receivedAt: Date,
        _ delivery: BrokerMessage, local: LocalWrite?, state: State
    ) -> NewTelemetry {
        // Built whole: a field changed after `init` cost a copy of the row.
        NewTelemetry(
            deviceID: device, receivedAt: receivedAt, correlationID: correlationID, body: publish.payload,
            counterWindow: admitted.counterWindow.map { StoredCounterWindow(highest: $0.highest, seen: $0.seen) },
            counter: admitted.counter, messageType: admitted.messageType,
            relay: (listener.relay ?? (local == nil ? nil : listener.messageLog))?.relayed(
                delivery, publisher: state.sessionKey, placement: local?.placement ?? [:]))
    }

    /// Queues the write of a message to acknowledge (QoS 1 and 2) and returns its outcome. Synchronous: the
    /// callbacks it builds never sit in an async frame.
    @inline(never)
    private func queueAcknowledged(
        _ record: consuming NewTelemetry, _ admitted: Admitted, device: DeviceID, check: PayloadCheck,
        publish: PublishPacket, peer: Peer, _ correlationID: String
    ) -> StoreOutcome {
        let outcomes = listener.writeOutcomes
        if let counter = admitted.counter { outcomes.writes.begin(device, counter) }
        // Only a JSON message can be a report the hub reads (connections, update progress).
        let observed = check.format == .json && DeviceEvents.observed(admitted.messageType)
        let message = MQTTWriteOutcomes.Message(
            device: device, counter: admitted.counter, correlationID: correlationID,
            report: observed ? (admitted.messageType, record.body) : nil, duplicate: publish.duplicate,
            identity: peer.identity, source: peer.source, topic: publish.topic.rawValue)
        // Queued now, in the connection's order: with several nodes, the others get one publisher's
        // messages in the order it sent them. Its outcome is read on the thread that commits the batch (no
        // task per message); what must await (a report the hub reads, an audit record) gets a task of its own.
        let write = StoreOutcome(acknowledging: message, outcomes)
        listener.store.queueTelemetry(consume record, reader: write)
        return write
    }

    /// Records a refusal and answers it (see `admitAndDeliver`); false when the connection must close.
    private func refused(
        _ refusal: Refusal, _ publish: PublishPacket, peer: Peer, state: State, respond: Bool,
        _ correlationID: String
    ) async -> Bool {
        await listener.recorder.record(
            refusal, identity: peer.identity.uri, source: peer.source, correlationID: correlationID,
            what: "MQTT PUBLISH \(MessageSignatureProfile.printable(publish.topic.rawValue, limit: 120))")
        guard respond else { return false }
        let reason: ServerSession.PublishRefusal =
            if refusal.quarantinedUntil != nil || refusal.stage == .quarantine {
                .quarantined(overRate: refusal.stage == .rateLimit)
            } else {
                switch refusal.stage {
                case .rateLimit: refusal.problem == .unavailable ? .unavailable : .overRate
                case .size, .format, .json, .schema: .invalidContent
                case .replay: refusal.problem == .invalidMessage ? .invalidContent : .notAuthorized
                default: refusal.problem == .unavailable ? .unavailable : .notAuthorized
                }
            }
        switch state.rules.publishRefused(reason, qos: publish.qos) {
        case .acknowledge(let code):
            if let id = publish.packetID {
                await acknowledge(id, qos: publish.qos, state: state, code: code, correlationID: correlationID)
            }
            return true
        case .drop:
            return true
        case .close(let code):
            if let code { await serverDisconnect(code, Self.refusalProperties(correlationID), state: state) }
            return false
        }
    }

    /// The `$counter` member of a payload, if it is a strict JSON object with one.
    static func memberCounter(_ payload: [UInt8], _ json: StrictJSON) -> UInt64? {
        guard let document = try? json.parse(payload),
            let member = document.member(GatewayPipeline.counterMember, of: document.root),
            let number = document.int64(member), number >= 1, number <= 9_007_199_254_740_991
        else { return nil }
        return UInt64(number)
    }

    /// A device may name as Response Topic (§3.3.2.3.5) only a topic it may itself subscribe to: otherwise it could
    /// have an application answer, with the fleet's rights, on another device's command topics (a confused deputy).
    /// Operators and applications may name any.
    static func responseTopicAllowed(_ properties: Properties, peer: Peer, acl: BoundTopicACL) -> Bool {
        guard peer.device != nil, let topic = properties.responseTopic else { return true }
        guard let filter = try? TopicFilter(topic) else { return false }
        return acl.maySubscribe(filter)
    }

    /// `devices/<id>/commands/response` when the device may subscribe below it and the fleet may publish there.
    static func responseInformation(peer: Peer, acl: BoundTopicACL, fleetACL: PreparedTopicACL) -> String? {
        guard let device = peer.device else { return nil }
        let base = "devices/\(device.rawValue)/commands/response"
        guard let below = try? TopicFilter(base + "/#"), let reply = try? TopicName(base + "/r"),
            acl.maySubscribe(below), fleetACL.bound(to: "").mayPublish(reply)
        else { return nil }
        return base
    }

    /// Consecutive QoS 0 publishes over the rate after which an MQTT 5 client is disconnected with 0x96.
    static let sustainedQoS0Flood = 20

    /// Route and message type from the topic: the level after the device id is the route (what the rate limits
    /// and `deviceRoutes` name: telemetry, events, state…), the next one, if any, the message type whose schema
    /// applies (`devices/d1/telemetry/env` → route telemetry, schema `env`; `devices/d1/telemetry` → the default).
    static func classify(_ topic: TopicName.Split, deviceLevel: Int?) -> (route: String, messageType: String?) {
        guard let index = deviceLevel else { return ("telemetry", nil) }
        let levels = topic.levels
        let route = index + 1 < levels.count ? String(levels[index + 1]) : "telemetry"
        let messageType = index + 2 < levels.count ? String(levels[index + 2]) : nil
        return (route, messageType)
    }

    /// Sends a PUBACK in arrival order (MQTT 3.1.1 §4.6, MQTT 5.0 §4.6: PUBACKs in the order the PUBLISH packets
    /// were received), after `write` (the message's store transaction) finished: only a durable message is
    /// acknowledged, yet the loop reads on meanwhile, so one connection's messages share group commits. At most
    /// `mqtt.receiveMaximum` are outstanding; then the loop waits for the oldest. A failed write ends the connection
    /// (DISCONNECT 0x89 Server busy with a correlation id first on MQTT 5); a stored message is then delivered.
    ///
    /// QoS 2 (§4.3.3) is answered with PUBREC instead: a success code first records the id with the session (a
    /// copy of the PUBLISH is then answered without being stored again), and the message stays counted against the
    /// Receive Maximum until its PUBCOMP; a failure code (0x80 and above) ends it there. With `savingID` (a device's
    /// QoS 2 message without a counter) the session is saved with the id before the PUBREC goes out: a kill right
    /// after the message's commit, its PUBREC lost, then finds the id again when the client resends the PUBLISH, so
    /// the copy is not stored a second time. (With a counter, the window stored with the message answers the copy
    /// without storing it.)
    private func acknowledge(
        _ id: UInt16, qos: QoS, state: State, after write: StoreOutcome? = nil,
        code: ReasonCode = .success,
        correlationID: String? = nil, then delivery: BrokerMessage? = nil, local: LocalWrite? = nil,
        savingID: Bool = false
    ) async {
        await state.acknowledgements.wait(untilAtMost: listener.settings.receiveMaximum - 1)
        appendAcknowledgement(
            id, qos: qos, state: state, after: write, code: code, correlationID: correlationID, then: delivery,
            local: local, savingID: savingID)
    }

    /// `acknowledge`'s step, queued once the queue has room (the caller waited for it, or saw it).
    private func appendAcknowledgement(
        _ id: UInt16, qos: QoS, state: State, after write: StoreOutcome?, code: ReasonCode = .success,
        correlationID: String?, then delivery: consuming BrokerMessage?, local: LocalWrite? = nil,
        savingID: Bool = false
    ) {
        state.acknowledgements.append(
            after: write,
            Acknowledgement(
                packetID: id, qos: qos, code: code, correlationID: correlationID, delivery: delivery, local: local,
                logged: isLogged(local) ? write : nil, savingID: savingID))
    }

    /// Several nodes: hands a message that is not stored (an operator's or application's publish, a retained clear)
    /// to the other nodes before it is acknowledged or delivered here, so one refused (and sent again) has reached
    /// no one. Nil when it was handed on (or there is one node); else what `admitAndDeliver` returns: false, to end the
    /// connection (after DISCONNECT 0x89 on MQTT 5), so the client sends it again once connected.
    private func relayFirst(
        _ message: BrokerMessage, _ publish: PublishPacket, state: State, respond: Bool, _ correlationID: String,
        placement: [TopicFilter: String]?
    ) async -> Bool? {
        guard let relay = listener.relay else { return nil }
        do {
            try await listener.store.relayMessage(
                relay.relayed(message, publisher: state.sessionKey, placement: placement ?? [:]))
            return nil
        } catch {
            listener.logger.error(
                "MQTT message not handed to the other hub nodes",
                metadata: ["error": "\(error)", "correlation_id": "\(correlationID)"])
            guard respond else { return true }
            // Not handed on: the connection ends, as for a store that cannot be reached (the client sends it again).
            if state.v5 { await serverDisconnect(.serverBusy, Self.refusalProperties(correlationID), state: state) }
            return false
        }
    }

    /// MQTT 5.0 §3.14.4 [MQTT-3.14.4-1]: after sending DISCONNECT the server sends nothing more. So the pending
    /// acknowledgements go first and the session stops receiving deliveries, then the DISCONNECT.
    private func serverDisconnect(_ reason: ReasonCode, _ properties: Properties = .init(), state: State) async {
        await state.acknowledgements.wait(untilAtMost: 0)
        await listener.broker.detach(
            key: state.sessionKey, connectionNumber: state.connectionNumber, expirySeconds: state.expirySeconds)
        try? await send(.disconnect(reasonCode: reason, properties: properties), state.version)
    }

    /// Delivers a message that needs no acknowledgement (QoS 0, a retained clear) after the QoS 1 messages that
    /// arrived before it, so subscribers and the retained store see one connection's publishes in arrival order.
    private func deliverInOrder(_ delivery: BrokerMessage, state: State, local: LocalWrite? = nil) async {
        defer { withExtendedLifetime(local) {} }
        let broker = listener.broker
        guard broker.needsPublish(delivery) else { return }
        // Only this connection adds steps (its turn, as here, or `handleNow` while the session is parked, never at
        // the same time), so none can be added between this look and the publish.
        guard state.acknowledgements.unfinished > 0 else {
            await broker.publish(delivery, from: state.sessionKey, placement: local?.placement)
            return
        }
        await state.acknowledgements.wait(untilAtMost: listener.settings.receiveMaximum - 1)
        state.acknowledgements.append(after: nil, .delivery(delivery, local: local))
    }

    /// Queues a message that is not acknowledged (QoS 0). Its outcome is read by the topic decision's reader; when
    /// too many such writes are outstanding, what to await instead (back-pressure on a flooding publisher).
    /// Synchronous: the row never sits in an async frame.
    @inline(never)
    private func queueWithoutWaiting(_ record: consuming NewTelemetry, peer: Peer, decision: TopicDecision)
        -> (@Sendable () async -> Void)?
    {
        let outcomes = listener.writeOutcomes
        guard outcomes.pending.tryStart(body: record.body.count) else {
            // Too many outstanding: this connection waits for this one (back-pressure on a flooding publisher).
            let (device, signal, receivedAt) = (
                record.deviceID, !DeviceEvents.observed(record.messageType), record.receivedAt
            )
            let failure = QoS0Reports.failure(
                record, identity: peer.identity, source: peer.source, topic: decision.topic)
            // Queued now, in the connection's order (the other nodes get its messages in that order).
            let queued = listener.store.queueTelemetry(consume record)
            return {
                do {
                    _ = try await queued.value()
                    outcomes.stored(device, signal: signal, receivedAt: receivedAt)
                } catch { await outcomes.failed(error, failure) }
            }
        }
        queueStarted(consume record, peer: peer, decision: decision)
        return nil
    }

    /// Queues a QoS 0 message whose write has been counted as outstanding (`PendingWrites.tryStart`), and reads its
    /// outcome without waiting. Synchronous: the row never sits in an async frame. Takes the row over (moved into
    /// the store's queue, not copied).
    private func queueStarted(_ record: consuming NewTelemetry, peer: Peer, decision: TopicDecision) {
        // Queued now, in the connection's order (the other nodes get its messages in that order). The write hands
        // its reader its entry, with the message: one reader for all of this connection's QoS 0 writes to this
        // topic, not a closure per message (made here, freed on the store's thread: 2026-12-06).
        listener.store.queueTelemetry(
            consume record, reader: decision.qos0Reports(peer: peer, listener.writeOutcomes))
    }
}

/// What a connection's QoS 0 writes to one topic report (its `TopicDecision` keeps one): a stored message signals
/// its device's telemetry (not an update or egress report); a failure is handled in a task, off the store's thread,
/// and counts as outstanding until done. Each write's own values (device, counter, correlation id, message type)
/// are read from the queue's entry it is handed; what the failure's record needs besides is the connection's and
/// the topic's. Read on the thread that commits the batch.
final class QoS0Reports: PendingResultReader {
    let outcomes: MQTTWriteOutcomes
    let identity: Identity
    let source: String?
    let topic: String

    init(outcomes: MQTTWriteOutcomes, identity: Identity, source: String?, topic: String) {
        self.outcomes = outcomes
        self.identity = identity
        self.source = source
        self.topic = topic
    }

    func resolved(_ result: Result<Int64, any Error>, of entry: TelemetryQueue.Entry) {
        let body = entry.message.body.count
        switch result {
        case .success:
            // Read in place (a copy of the whole message would retain and release each of its parts here).
            outcomes.stored(
                entry.message.deviceID, signal: !DeviceEvents.observed(entry.message.messageType),
                receivedAt: entry.message.receivedAt)
            outcomes.pending.finish(body: body)
        case .failure(let error):
            let (outcomes, failure) = (
                outcomes, Self.failure(entry.message, identity: identity, source: source, topic: topic)
            )
            Task {
                await outcomes.failed(error, failure)
                outcomes.pending.finish(body: body)
            }
        }
    }

    /// What a QoS 0 message's failed write reports.
    static func failure(_ record: NewTelemetry, identity: Identity, source: String?, topic: String)
        -> MQTTWriteOutcomes.Message
    {
        MQTTWriteOutcomes.Message(
            device: record.deviceID, counter: record.counter, correlationID: record.correlationID, report: nil,
            duplicate: false, identity: identity, source: source, topic: topic)
    }
}

/// QoS 1 and 2 PUBLISH packets of one connection received and not yet complete (MQTT 5.0 §4.9: the client's send
/// quota comes back with PUBACK, PUBCOMP, or PUBREC with a failure code). The read loop counts them in, the
/// acknowledgement tasks and PUBREL count them off. A QoS 2 id is counted once however often its PUBLISH comes.
struct UnacknowledgedPublishes: ~Copyable, Sendable {
    private let count = Atomic(0)
    private let qos2 = Mutex(Set<UInt16>())

    /// One more received; returns how many are now unacknowledged.
    func received() -> Int { count.add(1, ordering: .relaxed).newValue }

    func acknowledged() { count.subtract(1, ordering: .relaxed) }

    /// A QoS 2 PUBLISH received; returns how many are now unacknowledged.
    func received(qos2 id: UInt16) -> Int {
        guard qos2.withLock({ $0.insert(id).inserted }) else { return count.load(ordering: .relaxed) }
        return received()
    }

    /// A QoS 2 message ended (PUBCOMP sent, or PUBREC with a failure code), if this connection counted it.
    func completed(qos2 id: UInt16) {
        if qos2.withLock({ $0.remove(id) != nil }) { acknowledged() }
    }
}

/// What became of a QoS 1 or 2 message's store write, which its PUBACK or PUBREC answers.
enum StoreWrite: Sendable, Equatable {
    /// Stored: acknowledged, then delivered.
    case stored
    /// A DUP resend of a message another hub node stored: acknowledged, not stored or delivered again.
    case storedElsewhere
    /// Its counter was already stored by another node: refused (0x87), audited, counted as a replay.
    case replayed
    /// Not stored, the store refusing this write: 0x80 (MQTT 5) or the connection closes (3.1.1); the device resends.
    case failed
    /// Not stored, the store out of reach: the connection ends (DISCONNECT 0x89 first on MQTT 5); the device resends.
    case unavailable
}

/// The QoS 1 store writes in progress per (device, counter), and who waits for their outcome. Writes of one counter
/// can overlap (a write fails and gives its counter back, and a resend on another connection is admitted before the
/// failed write has ended): they are counted, and a waiter hears once the last of them ends whether any stored it
/// (a second `begin` once replaced the entry, and the waiters of the first were never resumed).
final class CounterWrites: Sendable {
    struct Key: Hashable {
        let device: DeviceID
        let counter: UInt64
    }
    private struct Entry {
        var writes = 0
        var stored = false
        var waiters: [CheckedContinuation<Bool?, Never>] = []
    }
    private let entries = Mutex<[Key: Entry]>([:])

    func begin(_ device: DeviceID, _ counter: UInt64) {
        entries.withLock { $0[Key(device: device, counter: counter), default: Entry()].writes += 1 }
    }

    func succeeded(_ device: DeviceID, _ counter: UInt64?) {
        guard let counter else { return }
        entries.withLock { $0[Key(device: device, counter: counter)]?.stored = true }
    }

    func end(_ device: DeviceID, _ counter: UInt64) {
        let (waiters, stored) = entries.withLock { entries -> ([CheckedContinuation<Bool?, Never>], Bool) in
            let key = Key(device: device, counter: counter)
            guard var entry = entries[key] else { return ([], false) }
            entry.writes -= 1
            guard entry.writes <= 0 else {
                entries[key] = entry
                return ([], false)
            }
            entries[key] = nil
            return (entry.waiters, entry.stored)
        }
        for waiter in waiters { waiter.resume(returning: stored) }
    }

    /// How many wait on this counter's writes (tests).
    func waiterCount(_ device: DeviceID, _ counter: UInt64) -> Int {
        entries.withLock { $0[Key(device: device, counter: counter)]?.waiters.count ?? 0 }
    }

    /// Nil when no write of this counter is in progress; otherwise waits for it and says whether it stored.
    func outcome(_ device: DeviceID, _ counter: UInt64) async -> Bool? {
        await withCheckedContinuation { continuation in
            let waiting = entries.withLock { entries -> Bool in
                guard entries[Key(device: device, counter: counter)] != nil else { return false }
                entries[Key(device: device, counter: counter)]?.waiters.append(continuation)
                return true
            }
            if !waiting { continuation.resume(returning: nil) }
        }
    }
}

extension Duration {
    var nanoseconds: Int64 { components.seconds * 1_000_000_000 + components.attoseconds / 1_000_000_000 }
}
