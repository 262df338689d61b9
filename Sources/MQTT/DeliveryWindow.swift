public import DequeModule
import NIOCore

/// What the server sends one session's client, as a value: QoS 0 now or never, QoS 1 and 2 within the client's
/// Receive Maximum (MQTT 5.0 §4.9) and the rest queued (bounded), packet ids, the QoS 2 flow towards the client
/// (§4.3.3: PUBLISH, PUBREC, PUBREL, PUBCOMP), redelivery on a resumed session (§4.4), Message Expiry
/// (§3.3.2.3.3), the client's Maximum Packet Size (§3.1.2.11.4) and outbound Topic Aliases (§3.3.2.3.4). It writes
/// nothing: each step returns the encoded packets to write, in order, and what it dropped; the broker writes them.
public struct DeliveryWindow: Sendable {
    /// What the connection attached to the session accepts.
    public struct Link: Sendable, Equatable {
        public var version: ProtocolVersion
        /// QoS 1 and 2 deliveries the client accepts unacknowledged (its Receive Maximum, capped).
        public var receiveMaximum: Int
        public var maximumPacketSize: Int
        /// Topic aliases the server may set towards this client (0: none).
        public var topicAliasMaximum: Int
        /// The CONNACK has gone out (nothing may reach the client before it, MQTT 5.0 §3.2.0-1).
        public var ready: Bool
        /// The socket takes more now: a QoS 0 message to a client that does not read is dropped, not buffered.
        public var writable: Bool

        public init(
            version: ProtocolVersion, receiveMaximum: Int, maximumPacketSize: Int, topicAliasMaximum: Int, ready: Bool,
            writable: Bool
        ) {
            self.version = version
            self.receiveMaximum = receiveMaximum
            self.maximumPacketSize = maximumPacketSize
            self.topicAliasMaximum = topicAliasMaximum
            self.ready = ready
            self.writable = writable
        }
    }

    /// A delivery in flight: QoS 1 until PUBACK; QoS 2 until PUBREC (then `released`: PUBREL sent) and PUBCOMP.
    public struct Inflight: Sendable {
        public let id: UInt16
        public let message: OutboundMessage
        public var released = false

        public init(id: UInt16, message: OutboundMessage, released: Bool = false) {
            self.id = id
            self.message = message
            self.released = released
        }
    }

    /// What a store keeps of the window (`SessionSnapshot`): deliveries not completed, in order, with their packet
    /// ids (a resumed session sends them again under the same ids, §4.4), then the queue.
    public struct Saved: Sendable {
        public var unacknowledged: [Inflight]
        public var queue: [OutboundMessage]
        public var nextPacketID: UInt16

        public init(unacknowledged: [Inflight], queue: [OutboundMessage], nextPacketID: UInt16) {
            self.unacknowledged = unacknowledged
            self.queue = queue
            self.nextPacketID = nextPacketID
        }
    }

    public var saved: Saved {
        Saved(unacknowledged: Array(inflight) + held, queue: Array(queue), nextPacketID: nextPacketID)
    }

    /// A window restored from the store: every delivery not completed waits to go again (`resume`), then the queue
    /// (within `maxQueued`, the oldest kept).
    public init(maxQueued: Int, restoring saved: Saved) {
        self.maxQueued = maxQueued
        held = saved.unacknowledged
        usedIDs = Set(held.map(\.id))
        queue = CircularBuffer(saved.queue.prefix(maxQueued))
        nextPacketID = saved.nextPacketID
    }

    /// The packets to write, in order, and how many copies were dropped (a full queue, an expired message, one
    /// larger than the client accepts, QoS 0 to a client that is not reading).
    public struct Output: Sendable {
        public var writes: [ByteBuffer] = []
        public var dropped = 0

        mutating func append(_ other: Output) {
            writes += other.writes
            dropped += other.dropped
        }
    }

    /// What a PUBREC from the client is to the window.
    public enum PubrecOutcome: Sendable, Equatable {
        /// Handled (PUBREL sent, or the delivery ended on a failure code).
        case released
        /// No delivery has this id: the caller answers PUBREL 0x92 (MQTT 5; a plain PUBREL on 3.1.1).
        case unknown
        /// A PUBREC to a QoS 1 delivery.
        case protocolError
    }

    public let maxQueued: Int
    /// In the order sent: a client acknowledges the oldest first, taken from the front in constant time (a window of
    /// 1,024 as an array moved the other 1,023 on each PUBACK).
    public private(set) var inflight: Deque<Inflight> = []
    /// Deliveries a resumed session could not resend at once (the new connection's Receive Maximum is smaller):
    /// they keep their packet ids and go, marked DUP, before anything queued (§4.4 [MQTT-4.4.0-1]).
    public private(set) var held: [Inflight] = []
    /// Room for one at first: a session that is never away (most of them) should not hold 16 slots.
    public private(set) var queue = CircularBuffer<OutboundMessage>(initialCapacity: 1)

    /// Messages waiting for the window: held back on resume, then queued.
    public var waiting: Int { held.count + queue.count }
    private var nextPacketID: UInt16 = 0
    /// The packet ids of `inflight` and `held`: a new delivery's id is found without a search through them.
    private var usedIDs: Set<UInt16> = []
    /// Topic aliases given to the connected client, topic → alias (by the topic's bytes: two topics that differ
    /// only in Unicode normalization never share an alias); they end with the connection.
    private var aliases: [TopicName: UInt16] = [:]

    public init(maxQueued: Int) { self.maxQueued = maxQueued }

    /// A new connection takes up the session: the aliases of the last one are gone (§3.3.2.3.4 [MQTT-3.3.2-7]).
    public mutating func attached() { aliases = [:] }

    /// One message for the client (`link` nil: none is connected).
    public mutating func deliver(_ message: OutboundMessage, link: Link?, now: ContinuousClock.Instant) -> Output {
        var output = Output()
        if message.qos == .atMostOnce {
            // QoS 0 is never queued; a subscriber that is not reading loses it rather than growing the server.
            guard let link, link.ready, link.writable else {
                if link != nil { output.dropped += 1 }
                return output
            }
            if let packet = encode(message, id: nil, duplicate: false, link: link, now: now) {
                output.writes.append(packet)
            } else {
                output.dropped += 1
            }
            return output
        }
        if let link, link.ready, inflight.count < link.receiveMaximum, let id = nextFreeID() {
            send(message, id: id, resent: false, link: link, now: now, into: &output)
        } else if queue.count < maxQueued {
            queue.append(message)
        } else {
            output.dropped += 1
        }
        return output
    }

    /// Sends queued messages while the window has room.
    public mutating func pump(link: Link?, now: ContinuousClock.Instant) -> Output {
        var output = Output()
        while let link, link.ready, inflight.count < link.receiveMaximum, !held.isEmpty {
            let delivery = held.removeFirst()
            send(delivery.message, id: delivery.id, resent: true, link: link, now: now, into: &output)
        }
        while let link, link.ready, inflight.count < link.receiveMaximum, !queue.isEmpty, let id = nextFreeID() {
            send(queue.removeFirst(), id: id, resent: false, link: link, now: now, into: &output)
        }
        return output
    }

    /// A resumed session (its CONNACK sent): QoS 2 deliveries whose PUBREL was sent get it again (§4.4
    /// [MQTT-4.4.0-1]: the client has the message, so they stay in flight whatever the window); the others are sent
    /// again with DUP under their packet ids within the new connection's Receive Maximum, what no longer fits is held
    /// (with its id) until there is room, and what exceeds its Maximum Packet Size is dropped. Then the queue.
    public mutating func resume(link: Link, now: ContinuousClock.Instant) -> Output {
        var output = Output()
        let unacknowledged = Array(inflight) + held
        inflight = Deque(unacknowledged.filter(\.released))
        held = unacknowledged.filter { !$0.released }
        for delivery in inflight {
            output.writes.append(
                Self.encode(.pubrel(packetID: delivery.id, reasonCode: .success, properties: .init()), link.version))
        }
        // The rest go again, in order, under their ids, as far as the window allows (`pump` sends `held` first).
        output.append(pump(link: link, now: now))
        return output
    }

    /// PUBACK (QoS 1) or PUBCOMP (QoS 2, after its PUBREL) from the client: the delivery ends and what waited for
    /// the window goes out. An id in flight for no delivery is ignored; `valid` is false when the packet does not fit
    /// the delivery (a PUBACK for QoS 2, a PUBCOMP before PUBREL): a protocol error.
    public mutating func acknowledge(
        _ id: UInt16, qos: QoS, link: Link?, now: ContinuousClock.Instant
    ) -> (valid: Bool, output: Output) {
        guard let index = inflight.firstIndex(where: { $0.id == id }) else {
            // A QoS 1 delivery held back on resume that the client had from the last connection: done.
            if qos == .atLeastOnce, let index = held.firstIndex(where: { $0.id == id && $0.message.qos == qos }) {
                usedIDs.remove(held.remove(at: index).id)
            }
            return (true, Output())
        }
        let delivery = inflight[index]
        guard delivery.message.qos == qos, qos == .atLeastOnce || delivery.released else { return (false, Output()) }
        usedIDs.remove(inflight.remove(at: index).id)
        return (true, pump(link: link, now: now))
    }

    /// A PUBREC from the client (§4.3.3, §3.5.2.1): below 0x80 the client has the message and the PUBREL goes
    /// out; from 0x80 the delivery ends there.
    public mutating func received(
        _ id: UInt16, reasonCode: ReasonCode, link: Link, now: ContinuousClock.Instant
    ) -> (outcome: PubrecOutcome, output: Output) {
        guard let index = inflight.firstIndex(where: { $0.id == id }) else { return (.unknown, Output()) }
        guard inflight[index].message.qos == .exactlyOnce else { return (.protocolError, Output()) }
        if reasonCode.isFailure {
            usedIDs.remove(inflight.remove(at: index).id)
            return (.released, pump(link: link, now: now))
        }
        inflight[index].released = true
        var output = Output()
        output.writes.append(
            Self.encode(.pubrel(packetID: id, reasonCode: .success, properties: .init()), link.version))
        return (.released, output)
    }

    /// Messages given through a shared subscription that the client has not acknowledged (sent or queued), by
    /// position, for the broker to hand to another member (§4.8.2). QoS 2 deliveries in flight are not among them:
    /// they are completed to this client only [MQTT-4.8.2-4, 4.8.2-5].
    public func sharedUnacknowledged() -> [(position: Int, message: OutboundMessage)] {
        let movable =
            (Array(inflight) + held).filter { $0.message.qos != .exactlyOnce }.map(\.message) + Array(queue)
        return movable.enumerated().compactMap { $0.element.sharedGroup == nil ? nil : ($0.offset, $0.element) }
    }

    /// Removes the messages handed over (positions from `sharedUnacknowledged`), the rest keeping their order.
    public mutating func remove(handedOver positions: Set<Int>) {
        guard !positions.isEmpty else { return }
        var position = 0
        inflight = Deque(
            inflight.filter { delivery in
                guard delivery.message.qos != .exactlyOnce else { return true }
                defer { position += 1 }
                return !positions.contains(position)
            })
        held = held.filter { delivery in
            guard delivery.message.qos != .exactlyOnce else { return true }
            defer { position += 1 }
            return !positions.contains(position)
        }
        usedIDs = Set(inflight.map(\.id) + held.map(\.id))
        var remaining = CircularBuffer<OutboundMessage>()
        for message in queue {
            if !positions.contains(position) { remaining.append(message) }
            position += 1
        }
        queue = remaining
    }

    // MARK: Packets

    /// The next packet id no delivery in flight or held holds; nil when every one of the 65,535 does (the message
    /// then waits in the queue).
    private mutating func nextFreeID() -> UInt16? {
        guard usedIDs.count < Int(UInt16.max) else { return nil }
        var id = nextPacketID
        repeat {
            id = id == UInt16.max ? 1 : id + 1
        } while usedIDs.contains(id)
        nextPacketID = id
        return id
    }

    /// A QoS 1 or 2 PUBLISH under `id`, then in flight; a delivery `resent` after a reconnect is marked DUP and keeps
    /// going even if it has expired meanwhile (see `encode`).
    private mutating func send(
        _ message: OutboundMessage, id: UInt16, resent: Bool, link: Link, now: ContinuousClock.Instant,
        into output: inout Output
    ) {
        guard let packet = encode(message, id: id, duplicate: resent, link: link, now: now, started: resent) else {
            usedIDs.remove(id)  // a held delivery's id is free again
            output.dropped += 1
            return
        }
        output.writes.append(packet)
        inflight.append(Inflight(id: id, message: message))
        usedIDs.insert(id)
    }

    /// One PUBLISH, or nil when the message expired before its delivery started (§3.3.2.3.3 [MQTT-3.3.2-5]: the copy
    /// is deleted) or is larger than the client accepts (§3.1.2.11.4 [MQTT-3.1.2-25]). The Message Expiry Interval
    /// sent is what remains of it [MQTT-3.3.2-6]; a delivery already `started` (resent after a reconnect) keeps
    /// going with at least one second. To a client that allows topic aliases, the first PUBLISH of a topic carries
    /// the topic and a new alias, later ones the alias alone, until the client's maximum; an alias is kept only once
    /// the packet that sets it is going out.
    private mutating func encode(
        _ message: OutboundMessage, id: UInt16?, duplicate: Bool, link: Link, now: ContinuousClock.Instant,
        started: Bool = false
    ) -> ByteBuffer? {
        var properties = message.properties
        if let expiresAt = message.expiresAt {
            let remaining = expiresAt - now
            guard started || remaining > .zero else { return nil }
            let seconds = remaining.components.seconds + (remaining.components.attoseconds > 0 ? 1 : 0)
            properties.messageExpiryInterval = UInt32(clamping: max(1, seconds))
        }
        var topic = message.topic
        var newAlias: UInt16?
        if link.topicAliasMaximum > 0 {
            if let alias = aliases[message.topic] {
                properties.topicAlias = alias
                topic = .unresolvedAlias
            } else if aliases.count < link.topicAliasMaximum {
                newAlias = UInt16(aliases.count + 1)
                properties.topicAlias = newAlias
            }
        }
        let buffer = Self.encode(
            .publish(
                PublishPacket(
                    topic: topic, payload: message.payload, qos: message.qos, retain: message.retain,
                    duplicate: duplicate, packetID: id, properties: properties)), link.version)
        guard buffer.readableBytes <= link.maximumPacketSize else { return nil }
        if let newAlias { aliases[message.topic] = newAlias }
        return buffer
    }

    static func encode(_ packet: Packet, _ version: ProtocolVersion) -> ByteBuffer {
        var buffer = ByteBuffer()
        packet.encode(into: &buffer, version: version)
        return buffer
    }
}
