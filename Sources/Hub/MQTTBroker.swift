import Foundation
import MQTT
import NIOCore
import Synchronization

/// A message on its way to subscribers (it has already passed the gateway pipeline, or is an operator command).
struct BrokerMessage: Sendable {
    let topic: TopicName
    let payload: [UInt8]
    let qos: QoS
    let retain: Bool
}

/// What a subscription asked for (MQTT 5.0 §3.8.3.1; 3.1.1 has only the QoS).
struct SubscriptionOptions: Sendable, Equatable {
    var qos: QoS
    var noLocal = false
    var retainAsPublished = false
}

/// The connection currently attached to a session.
struct BrokerConnection: Sendable {
    let channel: any Channel
    let version: ProtocolVersion
    /// QoS 1 deliveries the client accepts unacknowledged: its MQTT 5 Receive Maximum (§3.1.2.11.3), capped.
    let receiveMaximum: Int
    /// The client's MQTT 5 Maximum Packet Size (§3.1.2.11.4): larger deliveries are dropped for this client.
    let maximumPacketSize: Int
}

/// Sessions, subscriptions, retained messages and QoS 1 delivery (MQTT 3.1.1 §3.1.2.4 and §4.3.2, MQTT 5.0 §4.1,
/// §3.3.1.3, §4.9). State is in memory: sessions and retained messages survive disconnects and session take-over,
/// not a hub restart (every acknowledged *inbound* message is in the store before its PUBACK; this is delivery
/// state towards subscribers). Every queue is bounded.
actor MQTTBroker {
    final class Session {
        /// The identity (certificate) that holds the session.
        var owner = ""
        var filters: [TopicFilter: SubscriptionOptions] = [:]
        var connection: BrokerConnection?
        /// False between `attach` and `resume`: nothing may reach the client before its CONNACK (§3.2.0-1 MQTT 5).
        var ready = false
        var connectionNumber = 0
        var expirySeconds = 0
        var disconnectedAt: ContinuousClock.Instant?
        /// QoS 1 deliveries sent and not yet acknowledged, in the order sent (redelivered with DUP on resume).
        var inflight: [(id: UInt16, message: BrokerMessage)] = []
        var queue = CircularBuffer<BrokerMessage>()
        var nextPacketID: UInt16 = 0
    }

    struct Attached: Sendable {
        let sessionPresent: Bool
        let connectionNumber: Int
    }

    let maxQueued: Int
    let maxRetained: Int
    private var sessions: [String: Session] = [:]
    private var retained: [String: (message: BrokerMessage, owner: String)] = [:]
    /// Retained messages per publisher and their bytes in all: one device cannot fill the hub's memory with
    /// retained messages on topics of its own.
    private var retainedPerOwner: [String: Int] = [:]
    private var retainedBytes = 0
    let maxRetainedPerOwner: Int
    let maxRetainedBytes: Int
    private var nextConnection = 0
    private var lastSweep = ContinuousClock.now
    /// Deliveries dropped because a queue was full, a subscriber was not keeping up (QoS 0) or a packet was over
    /// the client's maximum size.
    private(set) var dropped = 0
    /// Subscriptions across all sessions, readable without entering the actor: a publish that nobody subscribed to
    /// (and that is not retained) skips the broker entirely.
    nonisolated let subscriptions = Atomic<Int>(0)

    nonisolated var hasSubscriptions: Bool { subscriptions.load(ordering: .relaxed) > 0 }

    init(
        maxQueued: Int = 1_000, maxRetained: Int = 100_000, maxRetainedPerOwner: Int = 100,
        maxRetainedBytes: Int = 64 << 20
    ) {
        self.maxQueued = maxQueued
        self.maxRetained = maxRetained
        self.maxRetainedPerOwner = maxRetainedPerOwner
        self.maxRetainedBytes = maxRetainedBytes
    }

    /// Attaches a connection to the session `key` (identity and client id). An existing connection on the same
    /// session is closed first (MQTT 3.1.1 §3.1.4-2; MQTT 5 with DISCONNECT 0x8E Session taken over). With
    /// `cleanStart` the old session is discarded; otherwise it resumes: unacknowledged deliveries are sent again
    /// with DUP set (§4.4), then the queue, once `resume` is called after the CONNACK went out.
    /// Attaches a connection to its session (a new one, or the one it resumes or takes over); nil when `owner`
    /// already holds `maxPerOwner` other sessions (an operator or application opening client ids without end).
    func attach(
        key: String, owner: String, maxPerOwner: Int, cleanStart: Bool, expirySeconds: Int,
        connection: BrokerConnection
    ) -> Attached? {
        sweepExpired()
        if sessions[key] == nil, sessions.values.lazy.filter({ $0.owner == owner }).count >= maxPerOwner { return nil }
        if let previous = sessions[key]?.connection {
            if previous.version == .v5 {
                Self.write(.disconnect(reasonCode: 0x8E, properties: .init()), previous)
            }
            previous.channel.close(promise: nil)
        }
        if cleanStart, let discarded = sessions[key] { forget(discarded) }
        let existing = cleanStart ? nil : sessions[key]
        let present = existing != nil
        let session = existing ?? Session()
        session.owner = owner
        sessions[key] = session
        nextConnection += 1
        session.connection = connection
        session.connectionNumber = nextConnection
        session.expirySeconds = expirySeconds
        session.disconnectedAt = nil
        session.ready = false
        return Attached(sessionPresent: present, connectionNumber: nextConnection)
    }

    /// Starts deliveries on a connection whose CONNACK has been sent: unacknowledged ones again (DUP), then the
    /// queue.
    func resume(key: String, connectionNumber: Int) {
        guard let session = sessions[key], session.connectionNumber == connectionNumber,
            let connection = session.connection
        else { return }
        session.ready = true
        // Redelivered within the new connection's limits: what no longer fits its Receive Maximum goes back to the
        // front of the queue, what exceeds its Maximum Packet Size is dropped.
        let unacknowledged = session.inflight
        session.inflight = []
        var overflow: [BrokerMessage] = []
        for (id, message) in unacknowledged {
            if session.inflight.count < connection.receiveMaximum {
                if send(message, id: id, duplicate: true, on: connection) { session.inflight.append((id, message)) }
            } else {
                overflow.append(message)
            }
        }
        for message in overflow.reversed() { session.queue.prepend(message) }
        pump(session)
    }

    /// Detaches the connection (if it is still the session's); a session with expiry 0 ends now.
    func detach(key: String, connectionNumber: Int, expirySeconds: Int? = nil) {
        guard let session = sessions[key], session.connectionNumber == connectionNumber else { return }
        session.connection = nil
        session.ready = false
        if let expirySeconds { session.expirySeconds = expirySeconds }
        if session.expirySeconds == 0 {
            forget(session)
            sessions[key] = nil
        } else {
            session.disconnectedAt = .now
        }
    }

    /// Adds subscriptions, writes the SUBACK, then the retained messages they match (MQTT 5.0 §3.3.1.3: Retain
    /// Handling 0 always, 1 only for a new subscription, 2 never; the RETAIN flag is set on these).
    /// Packets still buffered from a connection that was taken over are ignored (`connectionNumber`).
    /// Adds the granted subscriptions and answers the SUBACK. A new filter beyond `maxSubscriptions` for the session
    /// is refused with `quotaExceeded` in its place in `codes` (a filter already held is only updated).
    func subscribe(
        key: String, connectionNumber: Int,
        _ subscriptions: [(index: Int, TopicFilter, SubscriptionOptions, retainHandling: UInt8)],
        codes: [UInt8], packetID: UInt16, maxSubscriptions: Int, quotaExceeded: UInt8
    ) {
        guard let session = sessions[key], session.connectionNumber == connectionNumber,
            let connection = session.connection, session.ready
        else { return }
        var codes = codes
        var accepted: [(TopicFilter, SubscriptionOptions, retainHandling: UInt8)] = []
        for (index, filter, options, retainHandling) in subscriptions {
            if session.filters[filter] == nil,
                session.filters.count + accepted.filter({ session.filters[$0.0] == nil }).count >= maxSubscriptions
            {
                codes[index] = quotaExceeded
            } else {
                accepted.append((filter, options, retainHandling))
            }
        }
        Self.write(.suback(packetID: packetID, reasonCodes: codes, properties: .init()), connection)
        for (filter, options, retainHandling) in accepted {
            let isNew = session.filters[filter] == nil
            session.filters[filter] = options
            if isNew { self.subscriptions.add(1, ordering: .relaxed) }
            guard retainHandling == 0 || (retainHandling == 1 && isNew) else { continue }
            for (message, _) in retained.values where filter.matches(message.topic) {
                deliver(
                    BrokerMessage(
                        topic: message.topic, payload: message.payload, qos: min(options.qos, message.qos),
                        retain: true), to: session)
            }
        }
    }

    /// Removes subscriptions; for each, whether it existed (MQTT 5 UNSUBACK 0x11 otherwise).
    func unsubscribe(key: String, connectionNumber: Int, _ filters: [TopicFilter]) -> [Bool] {
        guard let session = sessions[key], session.connectionNumber == connectionNumber else {
            return filters.map { _ in false }
        }
        return filters.map {
            let existed = session.filters.removeValue(forKey: $0) != nil
            if existed { subscriptions.subtract(1, ordering: .relaxed) }
            return existed
        }
    }

    /// Releases a QoS 1 delivery the client acknowledged and sends what was waiting for the window.
    func acknowledge(key: String, connectionNumber: Int, packetID: UInt16) {
        guard let session = sessions[key], session.connectionNumber == connectionNumber,
            let index = session.inflight.firstIndex(where: { $0.id == packetID })
        else { return }
        session.inflight.remove(at: index)
        pump(session)
    }

    /// Updates the retained message of the topic (an empty payload removes it, MQTT 3.1.1 §3.3.1.3) and delivers to
    /// every session with a matching subscription, at the lower of the two QoS levels. Returns the number of
    /// sessions it went to.
    @discardableResult
    func publish(_ message: BrokerMessage, from publisher: String?) -> Int {
        if message.retain { retain(message, owner: publisher ?? "hub") }
        var recipients = 0
        for (key, session) in sessions {
            var granted: QoS?
            var retainAsPublished = false
            var onlyNoLocal = true
            for (filter, options) in session.filters where filter.matches(message.topic) {
                granted = max(granted ?? .atMostOnce, options.qos)
                retainAsPublished = retainAsPublished || options.retainAsPublished
                onlyNoLocal = onlyNoLocal && options.noLocal
            }
            guard let granted, !(onlyNoLocal && key == publisher) else { continue }
            recipients += 1
            // §3.3.1.3: RETAIN is cleared on deliveries to established subscriptions unless Retain As Published.
            deliver(
                BrokerMessage(
                    topic: message.topic, payload: message.payload, qos: min(granted, message.qos),
                    retain: retainAsPublished && message.retain), to: session)
        }
        if ContinuousClock.now - lastSweep > .seconds(10) { sweepExpired() }
        return recipients
    }

    var sessionCount: Int { sessions.count }
    var retainedCount: Int { retained.count }

    /// Fleet-wide figures for `/metrics`: sessions (connected or kept for a reconnect), QoS 1 messages sent and not
    /// yet acknowledged, messages queued for sessions, retained messages and their bytes, and messages dropped
    /// because a queue was full.
    var statistics:
        (sessions: Int, connected: Int, inflight: Int, queued: Int, retained: Int, retainedBytes: Int, dropped: Int)
    {
        var connected = 0
        var inflight = 0
        var queued = 0
        for session in sessions.values {
            if session.connection != nil { connected += 1 }
            inflight += session.inflight.count
            queued += session.queue.count
        }
        return (sessions.count, connected, inflight, queued, retained.count, retainedBytes, dropped)
    }

    /// Sets or (empty payload) clears the topic's retained message within the limits: in all, per owner (the
    /// publisher's session) and in bytes. Over a limit the message is still delivered, just not retained.
    private func retain(_ message: BrokerMessage, owner: String) {
        let topic = message.topic.rawValue
        let previous = retained[topic]
        if let previous {
            retainedPerOwner[previous.owner, default: 1] -= 1
            if retainedPerOwner[previous.owner] == 0 { retainedPerOwner[previous.owner] = nil }
            retainedBytes -= previous.message.payload.count + topic.utf8.count
            retained[topic] = nil
        }
        guard !message.payload.isEmpty else { return }
        let size = message.payload.count + topic.utf8.count
        guard retained.count < maxRetained, retainedPerOwner[owner, default: 0] < maxRetainedPerOwner,
            retainedBytes + size <= maxRetainedBytes
        else {
            dropped += 1
            return
        }
        retained[topic] = (message, owner)
        retainedPerOwner[owner, default: 0] += 1
        retainedBytes += size
    }

    private func deliver(_ message: BrokerMessage, to session: Session) {
        if message.qos == .atMostOnce {
            // QoS 0 is never queued; a subscriber that is not reading loses it rather than growing our memory.
            guard let connection = session.connection, session.ready, connection.channel.isWritable else {
                if session.connection != nil { dropped += 1 }
                return
            }
            send(message, id: nil, duplicate: false, on: connection)
            return
        }
        if let connection = session.connection, session.ready, session.inflight.count < connection.receiveMaximum {
            sendQoS1(message, session, connection)
        } else if session.queue.count < maxQueued {
            session.queue.append(message)
        } else {
            dropped += 1
        }
    }

    private func pump(_ session: Session) {
        while let connection = session.connection, session.ready, session.inflight.count < connection.receiveMaximum,
            let message = session.queue.popFirst()
        {
            sendQoS1(message, session, connection)
        }
    }

    private func sendQoS1(_ message: BrokerMessage, _ session: Session, _ connection: BrokerConnection) {
        var id = session.nextPacketID
        repeat {
            id = id == UInt16.max ? 1 : id + 1
        } while session.inflight.contains(where: { $0.id == id })
        session.nextPacketID = id
        if send(message, id: id, duplicate: false, on: connection) {
            session.inflight.append((id, message))
        }
    }

    @discardableResult
    private func send(_ message: BrokerMessage, id: UInt16?, duplicate: Bool, on connection: BrokerConnection) -> Bool {
        var buffer = ByteBuffer()
        Packet.publish(
            PublishPacket(
                topic: message.topic, payload: message.payload, qos: message.qos, retain: message.retain,
                duplicate: duplicate, packetID: id)
        ).encode(into: &buffer, version: connection.version)
        guard buffer.readableBytes <= connection.maximumPacketSize else {
            dropped += 1
            return false
        }
        connection.channel.writeAndFlush(buffer, promise: nil)
        return true
    }

    static func write(_ packet: Packet, _ connection: BrokerConnection) {
        var buffer = ByteBuffer()
        packet.encode(into: &buffer, version: connection.version)
        connection.channel.writeAndFlush(buffer, promise: nil)
    }

    /// Ends sessions whose client has been away longer than their expiry (MQTT 5.0 §3.1.2.11.2).
    private func sweepExpired() {
        let now = ContinuousClock.now
        lastSweep = now
        sessions = sessions.filter { _, session in
            guard let since = session.disconnectedAt, now - since >= .seconds(session.expirySeconds) else {
                return true
            }
            forget(session)
            return false
        }
    }

    private func forget(_ session: Session) {
        subscriptions.subtract(session.filters.count, ordering: .relaxed)
    }
}
