import NIOCore

/// What a persistent session holds (MQTT 5.0 §4.1: subscriptions, QoS 1 and 2 messages sent and not completed,
/// messages pending transmission, QoS 2 ids received and awaiting PUBREL), as bytes a store keeps, so the session
/// survives a restart and can move to another hub node. Message Expiry (§3.3.2.3.3) counts on across the save:
/// the time left is saved, and what passed until the restore is taken off it.
///
/// The bytes are versioned (`BQS1`) and read strictly: anything that does not decode whole is refused, never half
/// restored.
public struct SessionSnapshot: Sendable {
    public var filters: [TopicFilter: SubscriptionOptions]
    public var window: DeliveryWindow.Saved
    public var receivedQoS2: Set<UInt16>
    /// Where the server's message log stood for this session when it was saved: every message up to it was routed
    /// to the session. A hub node that takes the session over replays the messages after it (see `MQTTPersistence`).
    public var position: Int64

    public init(
        filters: [TopicFilter: SubscriptionOptions], window: DeliveryWindow.Saved, receivedQoS2: Set<UInt16>,
        position: Int64 = 0
    ) {
        self.filters = filters
        self.window = window
        self.receivedQoS2 = receivedQoS2
        self.position = position
    }

    static let magic: [UInt8] = Array("BQS1".utf8)

    /// The snapshot as bytes, expiry intervals as they stand at `now`.
    public func encoded(now: ContinuousClock.Instant) -> [UInt8] {
        var buffer = ByteBuffer()
        buffer.writeBytes(Self.magic)
        buffer.writeInteger(UInt32(filters.count))
        for (filter, options) in filters.sorted(by: { $0.key.rawValue < $1.key.rawValue }) {
            buffer.writeMQTTString(filter.rawValue)
            buffer.writeInteger(options.qos.rawValue)
            buffer.writeInteger(
                UInt8(
                    (options.noLocal ? 1 : 0) | (options.retainAsPublished ? 2 : 0)
                        | (options.identifier != nil ? 4 : 0)))
            if let identifier = options.identifier { buffer.writeInteger(UInt32(identifier)) }
        }
        buffer.writeInteger(window.nextPacketID)
        buffer.writeInteger(UInt32(window.unacknowledged.count))
        for delivery in window.unacknowledged {
            buffer.writeInteger(delivery.id)
            buffer.writeInteger(UInt8(delivery.released ? 1 : 0))
            delivery.message.write(into: &buffer, now: now)
        }
        buffer.writeInteger(UInt32(window.queue.count))
        for message in window.queue { message.write(into: &buffer, now: now) }
        buffer.writeInteger(UInt32(receivedQoS2.count))
        for id in receivedQoS2.sorted() { buffer.writeInteger(id) }
        buffer.writeInteger(position)
        return Array(buffer.readableBytesView)
    }

    /// Reads a snapshot saved `elapsed` before `now` (wall-clock time since the save; never negative).
    public init(decoding bytes: [UInt8], elapsed: Duration, now: ContinuousClock.Instant) throws(MQTTError) {
        var buffer = ByteBuffer(bytes: bytes)
        guard buffer.readBytes(length: 4) == Self.magic else { throw MQTTError.malformed("not a saved session") }
        let rebased = now - max(elapsed, .zero)
        var filters: [TopicFilter: SubscriptionOptions] = [:]
        for _ in 0..<(try Self.count(&buffer)) {
            guard let text = try? buffer.readMQTTString(),
                let qosValue: UInt8 = buffer.readInteger(), let qos = QoS(rawValue: qosValue),
                let flags: UInt8 = buffer.readInteger(), flags & ~7 == 0
            else { throw MQTTError.malformed("saved subscription") }
            var identifier: Int?
            if flags & 4 != 0 {
                guard let value: UInt32 = buffer.readInteger() else { throw MQTTError.malformed("saved identifier") }
                identifier = Int(value)
            }
            // A filter an earlier version accepted and this one refuses (a wildcard followed by a combining mark was
            // read as a literal level before topics were split by bytes) is dropped alone: the session, its queue
            // and its messages in flight are kept.
            guard let filter = try? TopicFilter(text) else { continue }
            // The same for a `$share/` filter whose share name an earlier version read differently.
            let share: SharedFilter?
            do { share = try SharedFilter.parse(filter) } catch { continue }
            filters[filter] = SubscriptionOptions(
                qos: qos, noLocal: flags & 1 != 0, retainAsPublished: flags & 2 != 0, identifier: identifier,
                share: share)
        }
        guard let nextPacketID: UInt16 = buffer.readInteger() else { throw MQTTError.malformed("saved packet id") }
        var unacknowledged: [DeliveryWindow.Inflight] = []
        var ids = Set<UInt16>()
        for _ in 0..<(try Self.count(&buffer)) {
            // Each id once (MQTT 5.0 §2.2.1 [MQTT-2.2.1-4]): two deliveries under one id would let one PUBACK end
            // either, and the window's ids in use would lose one.
            guard let id: UInt16 = buffer.readInteger(), id != 0, ids.insert(id).inserted,
                let released: UInt8 = buffer.readInteger(), released <= 1
            else { throw MQTTError.malformed("saved delivery") }
            let message = try OutboundMessage(reading: &buffer, savedAt: rebased)
            unacknowledged.append(DeliveryWindow.Inflight(id: id, message: message, released: released == 1))
        }
        var queue: [OutboundMessage] = []
        for _ in 0..<(try Self.count(&buffer)) { queue.append(try OutboundMessage(reading: &buffer, savedAt: rebased)) }
        var received = Set<UInt16>()
        for _ in 0..<(try Self.count(&buffer)) {
            guard let id: UInt16 = buffer.readInteger() else { throw MQTTError.malformed("saved QoS 2 id") }
            received.insert(id)
        }
        guard let position: Int64 = buffer.readInteger(), position >= 0 else {
            throw MQTTError.malformed("saved position")
        }
        guard buffer.readableBytes == 0 else { throw MQTTError.malformed("bytes after the saved session") }
        self.init(
            filters: filters,
            window: DeliveryWindow.Saved(unacknowledged: unacknowledged, queue: queue, nextPacketID: nextPacketID),
            receivedQoS2: received, position: position)
    }

    /// A count that the remaining bytes could hold (each entry takes at least two).
    static func count(_ buffer: inout ByteBuffer) throws(MQTTError) -> Int {
        guard let count: UInt32 = buffer.readInteger(), Int(count) <= buffer.readableBytes / 2 else {
            throw MQTTError.malformed("saved count")
        }
        return Int(count)
    }
}

extension OutboundMessage {
    /// The message as bytes a store keeps: the shared group it was given through, the time left of its expiry at
    /// `now` (milliseconds, negative once passed), and the message as an MQTT 5 PUBLISH with its Subscription
    /// Identifiers and every property a subscriber receives (§3.3.2.3).
    public func stored(now: ContinuousClock.Instant) -> [UInt8] {
        var buffer = ByteBuffer()
        write(into: &buffer, now: now)
        return Array(buffer.readableBytesView)
    }

    /// Reads a message `stored` `elapsed` before `now`; nil for bytes that are not one message whole.
    public init?(stored bytes: [UInt8], elapsed: Duration, now: ContinuousClock.Instant) {
        var buffer = ByteBuffer(bytes: bytes)
        guard let message = try? OutboundMessage(reading: &buffer, savedAt: now - max(elapsed, .zero)),
            buffer.readableBytes == 0
        else { return nil }
        self = message
    }

    func write(into buffer: inout ByteBuffer, now: ContinuousClock.Instant) {
        buffer.writeInteger(UInt8((expiresAt != nil ? 1 : 0) | (sharedGroup != nil ? 2 : 0)))
        if let expiresAt {
            let left = expiresAt - now
            buffer.writeInteger(left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000)
        }
        if let sharedGroup { buffer.writeMQTTString(sharedGroup.rawValue) }
        var packet = ByteBuffer()
        Packet.publish(
            PublishPacket(
                topic: topic, payload: payload, qos: qos, retain: retain, packetID: qos == .atMostOnce ? nil : 1,
                properties: properties)
        ).encode(into: &packet, version: .v5)
        buffer.writeInteger(UInt32(packet.readableBytes))
        buffer.writeBuffer(&packet)
    }

    init(reading buffer: inout ByteBuffer, savedAt: ContinuousClock.Instant) throws(MQTTError) {
        guard let flags: UInt8 = buffer.readInteger(), flags & ~3 == 0 else {
            throw MQTTError.malformed("saved message")
        }
        var expiresAt: ContinuousClock.Instant?
        if flags & 1 != 0 {
            guard let left: Int64 = buffer.readInteger() else { throw MQTTError.malformed("saved expiry") }
            expiresAt = savedAt + .milliseconds(left)
        }
        var group: TopicFilter?
        if flags & 2 != 0 {
            guard let text = try? buffer.readMQTTString() else { throw MQTTError.malformed("saved shared group") }
            // A group filter this version refuses (see `SessionSnapshot`): the message is kept, as a plain delivery.
            group = try? TopicFilter(text)
        }
        guard let length: UInt32 = buffer.readInteger(), var packet = buffer.readSlice(length: Int(length)) else {
            throw MQTTError.malformed("saved message length")
        }
        var decoder = MQTTDecoder(role: .client, maximumPacketSize: 1 << 28, version: .v5)
        guard case .publish(let publish)? = try? decoder.decode(buffer: &packet), packet.readableBytes == 0,
            !publish.topic.isUnresolvedAlias
        else { throw MQTTError.malformed("saved message is not one PUBLISH") }
        self.init(
            topic: publish.topic, payload: publish.payload, qos: publish.qos, retain: publish.retain,
            properties: publish.properties, expiresAt: expiresAt)
        sharedGroup = group
    }
}
