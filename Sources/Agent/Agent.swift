public import Core
import Crypto
import Foundation
import HubClient
import JSON
public import MQTT
import NIOCore
import NIOPosix
import NIOSSL
import Synchronization
import TUF
import X509

/// How the agent reaches the hub and behaves (`bulwark agent run --config FILE`, or set in code).
public struct AgentConfiguration: Sendable {
    public var stateDirectory: String
    /// `crypto.profile`: `fips` restricts TLS to AES-GCM on P-256/P-384 and the update repository's keys to FIPS
    /// 186-5 algorithms (`KeyPolicy.fips`).
    public var cryptoProfile = CryptoProfile.standard
    public var mqttHost = "127.0.0.1"
    public var mqttPort = 8883
    /// The device API, for certificate renewal.
    public var apiURL = "https://127.0.0.1:8443"
    public var keepAliveSeconds: UInt16 = 60
    /// Reconnection: exponential back-off from `reconnectInitialSeconds` to `reconnectMaximumSeconds`, each wait
    /// drawn uniformly from its upper half (jitter, so a fleet does not reconnect in step).
    public var reconnectInitialSeconds = 0.5
    public var reconnectMaximumSeconds = 60.0
    /// The on-disk queue's bound; beyond it the oldest telemetry is dropped (and counted).
    public var outboxBytes = 1 << 20
    /// QoS 1 messages sent and not yet acknowledged (at most the hub's Receive Maximum).
    public var maxInFlight = 16
    /// The largest message the agent accepts (the hub's default body limit; a larger one could never be delivered
    /// and would block the outbox).
    public var maxMessageBytes = 64 * 1024
    /// A command handler that runs longer is killed and reported as timed out.
    public var commandTimeoutSeconds = 30.0
    /// Renew the certificate (with a new key) at this fraction of its lifetime, with ±5 % jitter.
    public var renewalFraction = 2.0 / 3.0
    public var renews = true
    /// How often the agent reports the device's connections (`events/connections`); 0 turns it off.
    public var inventoryIntervalSeconds = 3600.0
    /// How often the agent refreshes the update repository's metadata and, through it, the hub's pin set
    /// (`bulwark/pins.json`), with ±10 % jitter; 0 turns it off. Only when the device holds a TUF root.
    public var trustRefreshSeconds = 6 * 3600.0
    /// Where the kernel's socket tables are (`/proc`; tests point it at their own files).
    public var procRoot = "/proc"
    /// Updates: the check interval, the payload, the health gate (`DeviceUpdater`).
    public var updates = UpdateSettings()

    public init(stateDirectory: String) { self.stateDirectory = stateDirectory }
}

/// An operator's command (`devices/<id>/commands/<name>`), and what running it gave.
public struct AgentCommand: Sendable {
    public let name: String
    public let body: [UInt8]

    public init(name: String, body: [UInt8]) {
        self.name = name
        self.body = body
    }
}

public struct CommandOutcome: Sendable {
    public var exitCode: Int32
    public var timedOut: Bool
    public var output: String

    public init(exitCode: Int32, timedOut: Bool = false, output: String = "") {
        self.exitCode = exitCode
        self.timedOut = timedOut
        self.output = output
    }
}

public typealias CommandHandler = @Sendable (AgentCommand) async -> CommandOutcome

/// The device side of Bulwark as one long-running service: it keeps an MQTT 5 session to the hub over mutual TLS 1.3
/// (the hub checked by chain *and* pin), sends what it is given from a durable outbox with its replay counter (so
/// a message it accepted reaches the hub exactly once, even across `kill -9`), runs operators' commands and reports
/// their outcome, and renews its certificate with a new key before it expires.
///
/// ```swift
/// var configuration = AgentConfiguration(stateDirectory: "/var/lib/bulwark")
/// configuration.mqttHost = "hub.example.net"
/// let agent = try Agent(configuration: configuration) { command in
///     CommandOutcome(exitCode: command.name == "reboot" ? 0 : 1)
/// }
/// Task { try await agent.run() }
/// try await agent.send(Array(#"{"temperature":21.5}"#.utf8))
/// ```
public actor Agent {
    /// Whether the last connection attempt's pin check failed (set on the event loop, read after the attempt).
    private let pinCheckFailed = PinCheckFlag()
    public nonisolated let configuration: AgentConfiguration
    public private(set) var state: AgentState
    public nonisolated let outbox: Outbox
    /// Keeps the device current: checks, installs into the inactive slot, trials, commits or rolls back, and runs
    /// the payload.
    public nonisolated let updater: DeviceUpdater
    /// The TUF refreshes of the pin set and of updates write `STATE/trust` one at a time.
    nonisolated let trustLock = AsyncLock()
    let handler: CommandHandler?

    public enum Connection: String, Sendable { case connecting, connected, disconnected, refused, untrusted }
    public private(set) var connection = Connection.disconnected
    public private(set) var lastError: String?
    public private(set) var delivered = 0
    public private(set) var refusedByHub = 0
    /// The back-off before the next connection attempt, seconds: doubling from `reconnectInitialSeconds` up to
    /// `reconnectMaximumSeconds` after a failure, the maximum at once when the hub refused this device (revoked,
    /// expired, unknown); each wait is drawn between half of it and all of it (jitter).
    public private(set) var retryDelaySeconds = 0.0

    private(set) var generation = 0
    private var inFlight: [UInt16: UInt64] = [:]
    /// What status.json holds now (nil: unknown, write it at the next ping).
    private var lastWrittenStatus: AgentStatus?
    private var attempted: Set<UInt64> = []
    /// Messages a previous run left in the outbox (sent before newer ones), and one the hub asked to retry.
    private var backlog: Set<UInt64> = []
    private var retrySequence: UInt64?
    private var nextPacketID: UInt16 = 1
    private var holdUntil = ContinuousClock.now
    /// The keep-alive of the current connection: the configured one, or the hub's Server Keep Alive (MQTT 5.0
    /// §3.2.2.3.14: the client must use it instead).
    private(set) var keepAlive: UInt16 = 0
    /// QoS 1 publishes the hub accepts unacknowledged (its Receive Maximum, MQTT 5.0 §3.3.4): more is a protocol
    /// error it disconnects for.
    private var hubReceiveMaximum = Int(UInt16.max)
    private var wakeup: CheckedContinuation<Void, Never>?
    private var maintaining = false
    /// The flag of the wait in progress: only its own timer may end it.
    private var currentWait: WakeFlag?
    /// How many times the writer has waited (a test checks that an idle agent does not spin).
    private(set) var writerWaits = 0
    private var pendingWake = false
    private var currentChannel: (any Channel)?
    private var stopping = false
    private var renewalJitter = 1.0
    /// After a failed renewal, the next attempt waits (5 s doubling to an hour, jittered), until the certificate
    /// expires: the hub's renewal route has its own rate limit, and a fleet must not hammer it.
    private var renewalFailures = 0
    private var nextRenewalAttempt: Date?
    /// A renewal is under way (behind the live session, or before connecting): never two at once.
    private var renewing = false
    /// A renewal made during the session succeeded: the session ends cleanly and the next one starts at once with the
    /// new certificate (no back-off: nothing failed).
    private var switchingCertificate = false
    /// The renewed credentials (already on disk), taken into use by the next session. Until then every connection
    /// keeps the old certificate: the hub revokes it the first time it sees the new one, so no request (a trust
    /// refresh, an update check, a trial's health probe) may show the new one while the old session still runs.
    /// `maintaining` stays held meanwhile, so a trust refresh cannot reload the state under it.
    private var pendingState: AgentState?
    private var renewalTask: Task<Void, Never>?
    /// `run()` is keeping sessions up (a renewal that ends after it stopped takes its result into use at once).
    private var running = false
    /// A session is being set up or is up (from its first step, before the socket exists).
    private var sessionActive = false
    public private(set) var lastInventory: Date?
    public private(set) var trustRootVersion: Int?
    public private(set) var lastTrustRefresh: Date?
    /// Why the last trust refresh failed or its pin set was refused (kept apart from the connection's error).
    public private(set) var trustError: String?

    public init(configuration: AgentConfiguration, commandHandler: CommandHandler? = nil) throws(AgentError) {
        self.configuration = configuration
        state = try AgentState.load(configuration.stateDirectory, profile: configuration.cryptoProfile)
        outbox = try Outbox(directory: configuration.stateDirectory + "/outbox", maxBytes: configuration.outboxBytes)
        do {
            updater = try DeviceUpdater(stateDirectory: configuration.stateDirectory, settings: configuration.updates)
        } catch {
            throw AgentError(.stateInvalid, "\(error)")
        }
        handler = commandHandler
        // Whatever a previous run left may have reached the hub already: resend it marked DUP.
        attempted = Set(outbox.pending.map(\.sequence))
        backlog = attempted
    }

    /// Accepts one message for the hub (a JSON object; the hub validates it): it is on disk when this returns, and
    /// is sent as soon as the session allows. `route` is the topic below `devices/<id>/`.
    public func send(_ body: [UInt8], route: String = "telemetry") throws(AgentError) {
        guard !stopping else { throw AgentError(.connection, "the agent is stopping") }
        guard body.count <= configuration.maxMessageBytes else {
            throw AgentError(
                .outbox, "message of \(body.count) bytes is over the \(configuration.maxMessageBytes)-byte limit")
        }
        try outbox.append(kind: route.hasPrefix("events") ? .event : .telemetry, route: route, body: body)
        wake()
    }

    /// Keeps the session up until the task is cancelled or `stop()` is called: reconnects with back-off and jitter
    /// (to the maximum at once when the hub refused the device), and renews the certificate when due.
    public func run() async throws {
        var delay = configuration.reconnectInitialSeconds
        renewalJitter = Double.random(in: 0.95...1.05)
        let inventory = Task { await self.reportConnections() }
        let trust = Task { await self.keepTrustCurrent() }
        let updates = Task { await self.keepUpdated() }
        defer {
            inventory.cancel()
            trust.cancel()
            updates.cancel()
            renewalTask?.cancel()
            running = false
            adoptPendingState()
        }
        running = true
        while !Task.isCancelled, !stopping {
            // No session runs here: a renewal made behind the last one is taken into use now.
            adoptPendingState()
            if renewalDue() {
                do { try await renewIfDue() } catch { renewalFailed(error) }
            }
            guard !Task.isCancelled, !stopping else { break }
            do {
                try await session()
                delay = configuration.reconnectInitialSeconds
                if switchingCertificate {
                    switchingCertificate = false
                    continue
                }
            } catch let error as AgentError {
                lastError = error.message
                switch error.code {
                case .refusedByHub:
                    connection = .refused
                    delay = configuration.reconnectMaximumSeconds
                case .hubNotTrusted:
                    connection = .untrusted
                    delay = min(delay * 2, configuration.reconnectMaximumSeconds)
                default:
                    connection = .disconnected
                    delay = min(delay * 2, configuration.reconnectMaximumSeconds)
                }
            } catch {
                let text = "\(error)"
                if text.contains("CERTIFICATE_VERIFY_FAILED") || pinCheckFailed.isSet {
                    connection = .untrusted
                    lastError = "the hub's certificate failed the pin or chain check: not connecting"
                    delay = min(delay * 2, configuration.reconnectMaximumSeconds)
                } else if text.contains("ALERT_CERTIFICATE_UNKNOWN") || text.contains("ALERT_CERTIFICATE_REVOKED")
                    || text.contains("ALERT_CERTIFICATE_EXPIRED")
                {
                    // The hub refused this device's certificate (revoked, expired, unknown): back off fully.
                    connection = .refused
                    lastError = "the hub refused this device's certificate (\(Self.describe(error)))"
                    delay = configuration.reconnectMaximumSeconds
                } else {
                    connection = .disconnected
                    lastError = "connection failed: \(Self.describe(error))"
                    delay = min(delay * 2, configuration.reconnectMaximumSeconds)
                }
            }
            retryDelaySeconds = delay
            writeStatus()
            guard !Task.isCancelled, !stopping else { break }
            let wait = Double.random(in: (delay / 2)...delay)
            try? await Task.sleep(for: .milliseconds(Int64(wait * 1000)))
        }
        // A renewal still under way ends (its request is not cancellable) before `maintaining` can be released.
        renewalTask?.cancel()
        await renewalTask?.value
        connection = .disconnected
        writeStatus()
        await updater.stop()
    }

    /// Ends the session cleanly: what is in flight gets a few seconds to be acknowledged (what is not stays in the
    /// outbox for the next start), then DISCONNECT.
    public func stop() async {
        stopping = true
        let deadline = ContinuousClock.now + .seconds(5)
        while !inFlight.isEmpty, ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(20)) }
        if let channel = currentChannel {
            var buffer = ByteBuffer()
            Packet.disconnect(reasonCode: .normalDisconnection, properties: .init()).encode(into: &buffer, version: .v5)
            try? await channel.writeAndFlush(buffer)
            try? await channel.close()
        }
        await updater.stop()
        wake()
    }

    // MARK: The session

    private func session() async throws {
        connection = .connecting
        generation += 1
        let myGeneration = generation
        sessionActive = true
        defer { sessionActive = false }
        // This session starts with the newest certificate: a switch asked for before now is done.
        adoptPendingState()
        switchingCertificate = false
        let state = self.state
        let configuration = self.configuration
        let context = try state.credentials.tlsContext()
        let pinned = state.pinned
        let pinCheck = pinCheckFailed
        pinCheck.reset()
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelOption(.socketOption(.so_keepalive), value: 1)
            .connectTimeout(.seconds(10))
            .connect(host: configuration.mqttHost, port: configuration.mqttPort) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        NIOSSLClientHandler(
                            context: context, serverHostname: nil,
                            customVerificationCallback: { certificates, promise in
                                // Remembered: a write racing the failed handshake can surface first as "I/O on
                                // closed channel", and the agent must still say the hub is not trusted.
                                let checked = promise.futureResult.eventLoop.makePromise(
                                    of: NIOSSLVerificationResult.self)
                                checked.futureResult.whenComplete { result in
                                    if case .success(.failed) = result { pinCheck.set() }
                                    promise.completeWith(result)
                                }
                                pinned.verify(certificates, checked)
                            }))
                    try channel.pipeline.syncOperations.addHandler(
                        ByteToMessageHandler(MQTTDecoder(role: .client, maximumPacketSize: 1 << 20, version: .v5)))
                    return try NIOAsyncChannel<Packet, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
        currentChannel = channel.channel
        defer { currentChannel = nil }
        let (commands, commandSink) = AsyncStream.makeStream(
            of: AgentCommand.self, bufferingPolicy: .bufferingNewest(64))
        try await channel.executeThenClose { inbound, outbound in
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    try await self.read(inbound, outbound, generation: myGeneration, commands: commandSink)
                }
                group.addTask { try await self.write(outbound, generation: myGeneration) }
                group.addTask { await self.runCommands(commands) }
                // The first to end (the connection closed, a refusal) ends the session; the writer may be waiting
                // for work, so it is woken to see the cancellation.
                defer {
                    commandSink.finish()
                    group.cancelAll()
                    self.wake()
                }
                try await group.next()
            }
        }
    }

    /// CONNECT, CONNACK, the command subscription, then every packet the hub sends.
    private func read(
        _ inbound: NIOAsyncChannelInboundStream<Packet>, _ outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>,
        generation: Int, commands: AsyncStream<AgentCommand>.Continuation
    ) async throws {
        var connect = ConnectPacket(
            version: .v5, clientID: state.deviceID.rawValue, keepAlive: configuration.keepAliveSeconds)
        connect.cleanStart = false
        connect.properties.sessionExpiryInterval = 86_400
        try await outbound.write(Self.encode(.connect(connect)))
        var packets = inbound.makeAsyncIterator()
        guard case .connack(_, let reason, let properties) = try await packets.next() else {
            throw AgentError(.connection, "the hub closed the connection before CONNACK")
        }
        keepAlive = properties.serverKeepAlive ?? configuration.keepAliveSeconds
        hubReceiveMaximum = Int(properties.receiveMaximum ?? UInt16.max)
        guard reason == .success else {
            // 0x87 not authorized (revoked, quarantined), 0x85 client id refused: retrying fast would not help.
            throw AgentError(.refusedByHub, "the hub refused the connection (CONNACK \(reason))")
        }
        let filter = try TopicFilter("devices/\(state.deviceID.rawValue)/commands/#")
        try await outbound.write(
            Self.encode(
                .subscribe(
                    packetID: 0xFFFF, subscriptions: [Subscription(filter: filter, qos: .atLeastOnce)],
                    properties: .init())))
        connected(generation)
        while let packet = try await packets.next() {
            switch packet {
            case .puback(let id, let reason, _):
                acknowledged(id, reason: reason)
            case .publish(let publish):
                if let id = publish.packetID {
                    try await outbound.write(
                        Self.encode(.puback(packetID: id, reasonCode: .success, properties: .init())))
                }
                let prefix = "devices/\(state.deviceID.rawValue)/commands/"
                if publish.topic.rawValue.hasPrefix(prefix) {
                    commands.yield(
                        AgentCommand(
                            name: String(publish.topic.rawValue.dropFirst(prefix.count)), body: publish.payload))
                }
            case .suback(_, let codes, _):
                if codes.contains(where: \.isFailure) { lastError = "the hub refused the command subscription" }
            case .disconnect(let reason, _):
                throw AgentError(
                    reason == .notAuthorized || reason == .sessionTakenOver ? .refusedByHub : .connection,
                    "the hub disconnected (\(reason))")
            default:
                break
            }
        }
        throw AgentError(.connection, "the hub closed the connection")
    }

    /// Sends what the outbox holds (up to `maxInFlight` unacknowledged), and a PINGREQ when idle.
    private func write(_ outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>, generation: Int) async throws {
        // When this connection last carried a packet from the agent: the hub counts silence from there.
        var lastSent = ContinuousClock.now
        while !Task.isCancelled {
            // A PING at half the keep-alive (until CONNACK, the configured one; then the one the hub set; with
            // none at all, every 30 s rather than a writer that never waits).
            let seconds = keepAlive != 0 ? keepAlive : configuration.keepAliveSeconds
            let idle = Duration.milliseconds(Int64(seconds == 0 ? 60 : seconds) * 500)
            // Renewal due: renewed behind this session, which keeps carrying messages meanwhile; once the new
            // certificate is on disk, the session ends cleanly and the next one starts with it at once.
            if !switchingCertificate, pendingState == nil, renewalDue(), !renewing {
                renewing = true
                renewalTask = Task { await self.renewBehindSession() }
            }
            if switchingCertificate {
                await endForCertificateSwitch(outbound)
                return
            }
            if connection == .connected, self.generation == generation, ContinuousClock.now >= holdUntil {
                let buffers = nextPublishes()
                for buffer in buffers { try await outbound.write(buffer) }
                if !buffers.isEmpty { lastSent = .now }
            }
            // Idle: a PING at half the keep-alive; sooner when a held-back message may go again or the renewal
            // point comes (nothing else wakes the writer for those).
            var wait = idle
            var pingDue = true
            if !renewing, let point = renewalPoint(),
                point.timeIntervalSinceNow * 1000 < Double(idle.components.seconds * 1000)
            {
                wait = .milliseconds(Int64(max(0.05, point.timeIntervalSinceNow) * 1000) + 1)
                pingDue = false
            }
            let now = ContinuousClock.now
            if holdUntil > now, holdUntil - now < wait, !outbox.pending.isEmpty {
                wait = holdUntil - now + .milliseconds(1)
                pingDue = false
            }
            // The ping is due half a keep-alive after the last packet sent, however often the writer is woken with
            // nothing to send meanwhile (acknowledgements of a burst trickling in from a slow hub did that).
            if pingDue, connection == .connected, lastSent + idle - now < wait {
                wait = max(lastSent + idle - now, .milliseconds(1))
            }
            writerWaits += 1
            _ = await waitForWork(upTo: wait)
            if pingDue, connection == .connected, !Task.isCancelled, ContinuousClock.now - lastSent >= idle {
                try await outbound.write(Self.encode(.pingreq))
                lastSent = .now
                touchStatus()
            }
        }
    }

    private func nextPublishes() -> [ByteBuffer] {
        let sending = Set(inFlight.values)
        var buffers: [ByteBuffer] = []
        var pending = outbox.pending
        // A message the hub asked to retry goes alone until it is acknowledged, and what a previous run left goes
        // before anything newer: newer counters accepted first could push it out of the hub's 64-wide window.
        if let retry = retrySequence {
            pending = pending.filter { $0.sequence == retry }
            if pending.isEmpty { retrySequence = nil }
        } else if pending.contains(where: { backlog.contains($0.sequence) }) {
            pending = pending.filter { backlog.contains($0.sequence) }
        } else {
            backlog = []
        }
        for message in pending where !sending.contains(message.sequence) {
            guard inFlight.count < min(configuration.maxInFlight, hubReceiveMaximum),
                let topic = try? TopicName("devices/\(state.deviceID.rawValue)/\(message.route)")
            else { break }
            let id = makePacketID()
            inFlight[id] = message.sequence
            var properties = Properties()
            properties.userProperties = [("counter", String(message.counter))]
            buffers.append(
                Self.encode(
                    .publish(
                        PublishPacket(
                            topic: topic, payload: message.body, qos: .atLeastOnce,
                            duplicate: attempted.contains(message.sequence), packetID: id, properties: properties))))
            attempted.insert(message.sequence)
        }
        return buffers
    }

    private func acknowledged(_ id: UInt16, reason: ReasonCode) {
        guard let sequence = inFlight.removeValue(forKey: id) else { return }
        switch reason {
        case .success, .noMatchingSubscribers:
            outbox.remove(sequence)
            backlog.remove(sequence)
            if retrySequence == sequence { retrySequence = nil }
            delivered += 1
        case .quotaExceeded, .unspecifiedError, .implementationSpecificError:
            // Over the rate, or the hub could not store it: keep it and try it again, alone, a little later.
            holdUntil = ContinuousClock.now + .seconds(1)
            retrySequence = min(retrySequence ?? sequence, sequence)
        case .packetTooLarge:
            // Too large for the hub: it never will be delivered.
            outbox.remove(sequence)
            refusedByHub += 1
            lastError = "the hub refused a message as too large (0x95)"
        default:
            // Refused for good (0x87 a counter the hub will never take, 0x99 a payload it will never accept): it
            // cannot be delivered, so it is not retried for ever; recorded in the status.
            outbox.remove(sequence)
            refusedByHub += 1
            lastError = "the hub refused a message (PUBACK \(reason))"
        }
        wake()
    }

    private func connected(_ generation: Int) {
        guard self.generation == generation else { return }
        connection = .connected
        lastError = nil
        inFlight = [:]
        writeStatus()
        wake()
    }

    private func makePacketID() -> UInt16 {
        repeat {
            nextPacketID = nextPacketID >= 0xFFFE ? 1 : nextPacketID + 1
        } while inFlight[nextPacketID] != nil
        return nextPacketID
    }

    // MARK: Commands

    private func runCommands(_ commands: AsyncStream<AgentCommand>) async {
        for await command in commands {
            let outcome: CommandOutcome
            if !Self.isCommandName(command.name) {
                // The name becomes an argument of the handler program: only a plain name, never an option or a path.
                outcome = CommandOutcome(exitCode: 2, output: "refused: not a command name")
            } else if command.name == "update-now" {
                // The agent's own command: the check runs beside the session; its steps go out as update events.
                Task { _ = await self.checkForUpdates() }
                outcome = CommandOutcome(exitCode: 0, output: "update check started")
            } else if let handler {
                outcome = await handler(command)
            } else {
                outcome = CommandOutcome(exitCode: 127, output: "no command handler is configured")
            }
            var result: [String: Any] = [
                "command": String(command.name.prefix(64)), "exitCode": Int(outcome.exitCode),
                "timedOut": outcome.timedOut,
            ]
            if !outcome.output.isEmpty { result["output"] = String(outcome.output.prefix(4096)) }
            if let body = try? JSONSerialization.data(withJSONObject: result, options: [.sortedKeys]) {
                try? send(Array(body), route: "events/command-result")
            }
        }
    }

    // MARK: Connection inventory

    /// Every `inventoryIntervalSeconds`, the device's connections and listening sockets go to the hub (through the
    /// outbox, as any event); the agent's own session to the hub is left out.
    private func reportConnections() async {
        let interval = configuration.inventoryIntervalSeconds
        guard interval > 0 else { return }
        let own: Set<String> = [
            "\(configuration.mqttHost) \(configuration.mqttPort)",
            URLComponents(string: configuration.apiURL).map { "\($0.host ?? "") \($0.port ?? 443)" } ?? "",
        ]
        while !Task.isCancelled {
            let body = ConnectionInventory.report(procRoot: configuration.procRoot, excluding: own)
            lastInventory = Date()
            try? send(body, route: "events/connections")
            try? await Task.sleep(for: .milliseconds(Int64(interval * 1000)))
        }
    }

    // MARK: Trust anchors

    /// While connected, every `trustRefreshSeconds` (jittered): TUF refresh and the pin set (`TrustRefresh`). A new
    /// pin set is used from the next connection on; the session in progress goes on.
    private func keepTrustCurrent() async {
        let interval = configuration.trustRefreshSeconds
        guard interval > 0, TrustRefresh.available(state) else { return }
        while !Task.isCancelled {
            guard connection == .connected else {
                try? await Task.sleep(for: .milliseconds(250))
                continue
            }
            await refreshTrust()
            let wait = interval * Double.random(in: 0.9...1.1)
            try? await Task.sleep(for: .milliseconds(Int64(wait * 1000)))
        }
    }

    /// One trust refresh now (also `bulwark agent status` shows its outcome).
    public func refreshTrust() async {
        guard await beginMaintenance() else { return }
        defer { maintaining = false }
        let snapshot = state
        do {
            let apiURL = configuration.apiURL
            let outcome = try await trustLock.run { try await TrustRefresh.refresh(snapshot, apiURL: apiURL) }
            trustRootVersion = outcome.rootVersion
            lastTrustRefresh = Date()
            switch outcome.decision {
            case .accept?:
                state = try AgentState.load(configuration.stateDirectory, profile: configuration.cryptoProfile)
                trustError = nil
            case .refuse(let reason)?:
                trustError = reason
            case .unchanged?, nil:
                trustError = nil
            }
        } catch {
            trustError = "trust refresh failed: \(Self.describe(error))"
        }
        writeStatus()
    }

    // MARK: Updates

    /// At start (after the boot record's decision: the payload, or a trial resumed or rolled back), then every
    /// `updates.intervalSeconds` ±20 %: an update check.
    private func keepUpdated() async {
        await updater.start(
            reporter: { [weak self] body in try? await self?.send(body, route: "events/update") },
            hub: { [weak self] in await self?.hubReachable() ?? false })
        let interval = configuration.updates.intervalSeconds
        guard TrustRefresh.available(state), interval > 0 else { return }
        while !Task.isCancelled, !stopping {
            _ = await checkForUpdates()
            guard interval > 0 else { return }
            try? await Task.sleep(for: .milliseconds(Int64(interval * Double.random(in: 0.8...1.2) * 1000)))
        }
    }

    /// One update check now (the `update-now` command, `bulwark agent update-now`); returns its outcome.
    public func checkForUpdates(progress: (@Sendable (Int64, Int64) -> Void)? = nil) async -> String {
        let outcome = await updater.check(
            state: state, apiURL: configuration.apiURL, trustLock: trustLock,
            hub: { [weak self] in await self?.hubReachable() ?? false }, progress: progress)
        writeStatus()
        return outcome
    }

    /// Whether the hub answers over a pinned mutual-TLS connection now (part of a trial's health gate).
    func hubReachable() async -> Bool {
        let state = self.state
        let apiURL = configuration.apiURL
        let answered = try? await HubLink.open(state, apiURL: apiURL) { link in
            _ = try await link.assignment()
            return true
        }
        return answered ?? false
    }

    // MARK: Waiting

    private func wake() {
        if let wakeup {
            self.wakeup = nil
            wakeup.resume()
        } else {
            pendingWake = true
        }
    }

    /// Waits for new work (a message, an acknowledgement, a connection) or `timeout`; false when it timed out.
    private func waitForWork(upTo timeout: Duration) async -> Bool {
        if pendingWake {
            pendingWake = false
            return true
        }
        let woken = WakeFlag()
        currentWait = woken
        let timer = Task { [weak self] in
            // A cancelled timer (the wait ended with work) must not fire: it would end the *next* wait early, and
            // that one's cancelled timer the one after, a chain that spins (seen as 100 % CPU when idle).
            do { try await Task.sleep(for: timeout) } catch { return }
            await self?.timedOut(woken)
        }
        await withCheckedContinuation { continuation in wakeup = continuation }
        currentWait = nil
        timer.cancel()
        return !woken.timedOut
    }

    private func timedOut(_ flag: WakeFlag) {
        guard let wakeup, flag === currentWait else { return }
        flag.timedOut = true
        self.wakeup = nil
        wakeup.resume()
    }

    // MARK: Renewal and status

    /// Whether the renewal point of the certificate's lifetime (the configured fraction, with this agent's jitter)
    /// has passed.
    func renewalDue(now: Date = Date()) -> Bool {
        guard let point = renewalPoint() else { return false }
        return now >= point
    }

    /// When the certificate is to be renewed: the configured fraction of its lifetime (with this agent's jitter), or
    /// the next attempt after a failure.
    public func renewalPoint() -> Date? {
        guard configuration.renews else { return nil }
        let certificate = (pendingState ?? state).certificate
        let notBefore = certificate.notValidBefore
        let lifetime = certificate.notValidAfter.timeIntervalSince(notBefore)
        let point = notBefore.addingTimeInterval(lifetime * configuration.renewalFraction * renewalJitter)
        return max(point, nextRenewalAttempt ?? .distantPast)
    }

    /// Renews the certificate with a new key when it is due (after a renewal already under way has ended).
    func renewIfDue(now: Date = Date()) async throws {
        while renewing { try? await Task.sleep(for: .milliseconds(20)) }
        guard renewalDue(now: now) else { return }
        renewing = true
        defer { renewing = false }
        try await renew()
        useRenewedCredentials()
    }

    /// The renewal started by the session's writer: on success the session switches to the new certificate; on
    /// failure it goes on with the old one, still valid, and the next attempt backs off.
    private func renewBehindSession() async {
        defer { renewing = false }
        do {
            try await renew()
            useRenewedCredentials()
        } catch {
            renewalFailed(error)
            wake()
        }
    }

    /// Renewed credentials go into use: the running session ends cleanly and the next one starts with them, or, with
    /// no session running, at once.
    private func useRenewedCredentials() {
        if running, sessionActive {
            switchingCertificate = true
            wake()
        } else {
            adoptPendingState()
        }
    }

    /// Takes renewed credentials into use (`maintaining`, held since the renewal, is released).
    private func adoptPendingState() {
        guard let pending = pendingState else { return }
        state = pending
        pendingState = nil
        maintaining = false
    }

    /// Ends the session for a new certificate: no new publish goes out, those in flight get a moment to be
    /// acknowledged (what is not stays in the outbox and is resent, marked DUP, on the next connection), then a
    /// normal DISCONNECT (MQTT 5.0 §3.14.2.1, 0x00: the hub discards the will).
    private func endForCertificateSwitch(_ outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>) async {
        let deadline = ContinuousClock.now + .seconds(2)
        while !inFlight.isEmpty, ContinuousClock.now < deadline, !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(10))
        }
        try? await outbound.write(Self.encode(.disconnect(reasonCode: .normalDisconnection, properties: .init())))
    }

    /// One renewal, never beside a trust refresh; a success clears the back-off. The new credentials wait in
    /// `pendingState` (with `maintaining` held) until `adoptPendingState`.
    private func renew() async throws {
        guard await beginMaintenance() else { throw CancellationError() }
        do {
            pendingState = try await Renewal.renew(state, apiURL: configuration.apiURL)
        } catch {
            maintaining = false
            throw error
        }
        renewalFailures = 0
        nextRenewalAttempt = nil
    }

    /// Renewal and the trust refresh both replace files in the state directory and reload it: one at a time, so
    /// neither reloads the other's half-written files nor overwrites the other's result with a stale copy.
    /// False (and nothing held) when the waiting task was cancelled.
    private func beginMaintenance() async -> Bool {
        while maintaining {
            guard !Task.isCancelled else { return false }
            try? await Task.sleep(for: .milliseconds(20))
        }
        maintaining = true
        return true
    }

    private func renewalFailed(_ error: any Error) {
        lastError = "renewal failed: \(error)"
        renewalFailures += 1
        let wait = min(3600, 5 * pow(2, Double(min(renewalFailures - 1, 12)))) * Double.random(in: 0.75...1.25)
        nextRenewalAttempt = Date().addingTimeInterval(wait)
    }

    /// The certificate is due for renewal: renew now and reconnect with the new one.
    public func renewNow() async throws {
        while renewing { try? await Task.sleep(for: .milliseconds(20)) }
        renewing = true
        defer { renewing = false }
        try await renew()
        useRenewedCredentials()
    }

    /// Ends the session in progress; the agent connects again at once (after a network change, or to take a new pin
    /// set or certificate into use now).
    public func reconnect() async {
        try? await currentChannel?.close()
    }

    public var status: AgentStatus {
        AgentStatus(
            deviceID: state.deviceID.rawValue, hub: "\(configuration.mqttHost):\(configuration.mqttPort)",
            connection: connection.rawValue, certificateNotAfter: (pendingState ?? state).certificate.notValidAfter,
            outboxDepth: outbox.depth, dropped: outbox.dropped, delivered: delivered, refused: refusedByHub,
            lastError: lastError, lastInventory: lastInventory, pinSetVersion: state.pinSetVersion,
            trustRootVersion: trustRootVersion, lastTrustRefresh: lastTrustRefresh, trustError: trustError,
            updatedAt: Date())
    }

    /// The keep-alive's heartbeat for `bulwark agent status`: the file's modification time is set to now, its contents
    /// (rewritten whenever they change) are left alone. One system call instead of building, writing and syncing a
    /// file every half keep-alive, which brought megabytes of code back into the idle agent's resident set.
    /// When anything but the time changed since the last write (a counter, the outbox depth, an error), the file is
    /// written instead.
    private func touchStatus() {
        if let written = lastWrittenStatus {
            var current = status
            current.updatedAt = written.updatedAt
            if current == written,
                utimensat(AT_FDCWD, configuration.stateDirectory + "/status.json", nil, 0) == 0
            {
                return
            }
        }
        writeStatus()
    }

    /// `STATE/status.json`, for `bulwark agent status` (replaced atomically; no secret in it).
    private func writeStatus() {
        let current = status
        do {
            try Outbox.write(
                configuration.stateDirectory + "/status.json", current.json, directory: configuration.stateDirectory,
                mode: 0o644)
            lastWrittenStatus = current
        } catch { lastWrittenStatus = nil }
    }

    static func encode(_ packet: Packet) -> ByteBuffer {
        var buffer = ByteBuffer()
        packet.encode(into: &buffer, version: .v5)
        return buffer
    }

    static func describe(_ error: any Error) -> String { String("\(error)".prefix(200)) }

    /// `[a-z0-9][a-z0-9._-]{0,63}`: what the hub's command route accepts, starting with a letter or digit.
    static func isCommandName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        guard (1...64).contains(bytes.count), let first = bytes.first,
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(first)
                || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(first)
        else { return false }
        return bytes.allSatisfy {
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains($0) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0)
                || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "-")
        }
    }
}

/// Set by the timer that ended a wait, read by the waiter (both on the agent's executor).
private final class WakeFlag: @unchecked Sendable {
    // Only touched inside the agent actor (`timedOut(_:)` and `waitForWork`), so never concurrently.
    var timedOut = false
}

/// What `bulwark agent status` prints.
public struct AgentStatus: Sendable, Equatable {
    public var deviceID: String
    public var hub: String
    public var connection: String
    public var certificateNotAfter: Date
    public var outboxDepth: Int
    public var dropped: Int
    public var delivered: Int
    public var refused: Int
    public var lastError: String?
    public var lastInventory: Date?
    public var pinSetVersion: Int
    public var trustRootVersion: Int?
    public var lastTrustRefresh: Date?
    public var trustError: String?
    public var updatedAt: Date

    /// Written at every keep-alive ping, so it goes through the JSON module's writer and a fixed-format time, not
    /// `JSONSerialization` and Foundation's formatters: measured, that path alone brought 9 MiB of Foundation's and
    /// ICU's code back into the idle agent's resident set each time.
    public var json: [UInt8] {
        var object = JSONObject()
        object.set("deviceId", .string(deviceID))
        object.set("hub", .string(hub))
        object.set("connection", .string(connection))
        object.set("certificateNotAfter", .string(Self.time(certificateNotAfter)))
        object.set("outboxDepth", .integer(Int64(outboxDepth)))
        object.set("dropped", .integer(Int64(dropped)))
        object.set("delivered", .integer(Int64(delivered)))
        object.set("refused", .integer(Int64(refused)))
        object.set("pinSetVersion", .integer(Int64(pinSetVersion)))
        object.set("updatedAt", .string(Self.time(updatedAt)))
        if let lastError { object.set("lastError", .string(lastError)) }
        if let lastInventory { object.set("lastInventory", .string(Self.time(lastInventory))) }
        if let trustRootVersion { object.set("trustRootVersion", .integer(Int64(trustRootVersion))) }
        if let lastTrustRefresh { object.set("lastTrustRefresh", .string(Self.time(lastTrustRefresh))) }
        if let trustError { object.set("trustError", .string(trustError)) }
        return JSONValue.object(object).serialized(sortingKeys: true)
    }

    /// `YYYY-MM-DDTHH:MM:SSZ`, as `Date.formatted(.iso8601)` writes it.
    static func time(_ date: Date) -> String {
        Timestamp8601(secondsSinceEpoch: Int64(date.timeIntervalSince1970.rounded(.down))).text
    }
}

/// A flag the TLS verification callback sets on the event loop and the agent reads after the attempt.
final class PinCheckFlag: Sendable {
    private let state = Mutex(false)
    func set() { state.withLock { $0 = true } }
    func reset() { state.withLock { $0 = false } }
    var isSet: Bool { state.withLock { $0 } }
}
