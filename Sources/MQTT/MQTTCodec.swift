public import NIOCore

/// Decodes MQTT 3.1.1 and 5.0 control packets. It reads the fixed header first and refuses a remaining length
/// encoded in more than 4 bytes (§2.2.3 / §1.5.5) or a packet larger than `maximumPacketSize` before buffering
/// the body, so a peer cannot make it hold more than one maximum-size packet. Any malformed packet throws; the
/// connection must then be closed (MQTT 5: after a DISCONNECT with `MQTTError.reasonCode`).
public struct MQTTDecoder: NIOSingleStepByteToMessageDecoder {
    public typealias InboundOut = Packet

    public enum Role: Sendable { case server, client }

    public let role: Role
    public let maximumPacketSize: Int
    /// Set by the CONNECT packet on the server side (nil until then), given up front on the client side.
    public private(set) var version: ProtocolVersion?

    public init(role: Role = .server, maximumPacketSize: Int = 256 * 1024, version: ProtocolVersion? = nil) {
        self.role = role
        self.maximumPacketSize = maximumPacketSize
        self.version = version
    }

    public mutating func decode(buffer: inout ByteBuffer) throws -> Packet? {
        let start = buffer.readerIndex
        guard let first = buffer.getInteger(at: start, as: UInt8.self) else { return nil }
        // §1.5.5 Variable Byte Integer: at most 4 bytes.
        var remaining = 0
        var multiplier = 1
        var headerLength = 1
        while true {
            guard let byte = buffer.getInteger(at: start + headerLength, as: UInt8.self) else { return nil }
            headerLength += 1
            remaining += Int(byte & 0x7F) * multiplier
            if byte & 0x80 == 0 {
                // MQTT 5.0 §1.5.5: the minimum number of bytes (a trailing 0x00 continuation is not).
                guard headerLength == 2 || byte != 0 else { throw MQTTError.malformed("non-minimal remaining length") }
                break
            }
            guard headerLength < 5 else { throw MQTTError.malformed("remaining length longer than 4 bytes") }
            multiplier *= 128
        }
        guard headerLength + remaining <= maximumPacketSize else {
            throw MQTTError(.packetTooLarge, "packet of \(headerLength + remaining) bytes over the maximum")
        }
        guard buffer.readableBytes >= headerLength + remaining else { return nil }
        buffer.moveReaderIndex(forwardBy: headerLength)
        guard var body = buffer.readSlice(length: remaining) else { return nil }
        let packet = try parse(type: first >> 4, flags: first & 0x0F, body: &body)
        guard body.readableBytes == 0 else { throw MQTTError.malformed("trailing bytes in packet") }
        return packet
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> Packet? {
        try decode(buffer: &buffer)
    }

    private mutating func parse(type: UInt8, flags: UInt8, body: inout ByteBuffer) throws(MQTTError) -> Packet {
        func requireFlags(_ expected: UInt8) throws(MQTTError) {
            guard flags == expected else { throw MQTTError.malformed("reserved fixed-header flags") }
        }
        if type == 1 {
            guard role == .server else { throw MQTTError(.protocolError, "CONNECT sent to a client") }
            guard version == nil else { throw MQTTError(.protocolError, "second CONNECT") }  // §3.1.0-2
            try requireFlags(0)
            let connect = try body.readConnect()
            version = connect.version
            return .connect(connect)
        }
        guard let version else { throw MQTTError(.protocolError, "the first packet must be CONNECT") }  // §3.1.0-1
        let v5 = version == .v5
        switch (type, role) {
        case (3, _):
            guard let qos = QoS(rawValue: (flags >> 1) & 0x03) else { throw MQTTError.malformed("PUBLISH QoS 3") }
            let duplicate = flags & 0x08 != 0
            guard !(qos == .atMostOnce && duplicate) else { throw MQTTError.malformed("DUP set on QoS 0") }
            let topicText = try body.readMQTTString()
            let packetID: UInt16? = qos == .atMostOnce ? nil : try body.readPacketID()
            let properties = v5 ? try body.readProperties(allowed: .publish) : Properties()
            // §3.3.4 [MQTT-3.3.4-6]: a PUBLISH from a client carries no Subscription Identifier.
            guard role == .client || properties.subscriptionIdentifiers.isEmpty else {
                throw MQTTError(.protocolError, "subscription identifier in a PUBLISH from a client")
            }
            let topic: TopicName
            if topicText.isEmpty, v5, properties.topicAlias != nil {
                topic = .unresolvedAlias  // MQTT 5.0 §3.3.2.3.4: the alias names the topic
            } else if topicText.isEmpty {
                // MQTT 5.0 §3.3.2.1: a zero-length Topic Name without a Topic Alias is a Protocol Error (0x82).
                throw MQTTError(.protocolError, "zero-length topic name without a topic alias")
            } else if let named = try? TopicName(topicText) {
                topic = named
            } else {
                throw MQTTError(.topicNameInvalid, "PUBLISH topic name is invalid")
            }
            return .publish(
                PublishPacket(
                    topic: topic, payload: body.readBytes(length: body.readableBytes) ?? [], qos: qos,
                    retain: flags & 0x01 != 0, duplicate: duplicate, packetID: packetID, properties: properties))
        case (4, _):
            try requireFlags(0)
            let id = try body.readPacketID()
            let (reason, properties) = try body.readOptionalReason(v5: v5, allowed: .acknowledgement)
            return .puback(packetID: id, reasonCode: reason, properties: properties)
        case (5, _), (6, _), (7, _):
            try requireFlags(type == 6 ? 0x02 : 0)
            let id = try body.readPacketID()
            let (reason, properties) = try body.readOptionalReason(v5: v5, allowed: .acknowledgement)
            switch type {
            case 5: return .pubrec(packetID: id, reasonCode: reason, properties: properties)
            case 6: return .pubrel(packetID: id, reasonCode: reason, properties: properties)
            default: return .pubcomp(packetID: id, reasonCode: reason, properties: properties)
            }
        case (8, .server):
            try requireFlags(0x02)
            let id = try body.readPacketID()
            let properties = v5 ? try body.readProperties(allowed: .subscribe) : Properties()
            // §3.8.2.1.2: at most one Subscription Identifier.
            guard properties.subscriptionIdentifiers.count <= 1 else {
                throw MQTTError(.protocolError, "more than one subscription identifier")
            }
            var subscriptions: [Subscription] = []
            while body.readableBytes > 0 {
                let text = try body.readMQTTString()
                guard let options = body.readInteger(as: UInt8.self) else {
                    throw MQTTError.malformed("missing subscription options")
                }
                guard let qos = QoS(rawValue: options & 0x03) else { throw MQTTError.malformed("subscription QoS 3") }
                guard options & (v5 ? 0xC0 : 0xFC) == 0, (options >> 4) & 0x03 != 3 else {
                    throw MQTTError.malformed("reserved subscription option bits")
                }
                guard let filter = try? TopicFilter(text) else {
                    throw MQTTError(.topicFilterInvalid, "SUBSCRIBE topic filter is invalid")
                }
                var subscription = Subscription(filter: filter, qos: qos)
                subscription.noLocal = options & 0x04 != 0
                // §4.8.2 and §3.8.3.1 [MQTT-3.8.3-4]: a shared subscription is well formed and has no No Local.
                if try SharedFilter.parse(filter) != nil, subscription.noLocal {
                    throw MQTTError(.protocolError, "No Local on a shared subscription")
                }
                subscription.retainAsPublished = options & 0x08 != 0
                subscription.retainHandling = (options >> 4) & 0x03
                subscriptions.append(subscription)
            }
            guard !subscriptions.isEmpty else { throw MQTTError(.protocolError, "SUBSCRIBE without a filter") }
            return .subscribe(packetID: id, subscriptions: subscriptions, properties: properties)
        case (10, .server):
            try requireFlags(0x02)
            let id = try body.readPacketID()
            let properties = v5 ? try body.readProperties(allowed: .unsubscribe) : Properties()
            var filters: [TopicFilter] = []
            while body.readableBytes > 0 {
                guard let filter = try? TopicFilter(try body.readMQTTString()) else {
                    throw MQTTError(.topicFilterInvalid, "UNSUBSCRIBE topic filter is invalid")
                }
                filters.append(filter)
            }
            guard !filters.isEmpty else { throw MQTTError(.protocolError, "UNSUBSCRIBE without a filter") }
            return .unsubscribe(packetID: id, filters: filters, properties: properties)
        case (12, .server):
            try requireFlags(0)
            return .pingreq
        case (14, _):
            try requireFlags(0)
            guard v5 else { return .disconnect(reasonCode: 0, properties: Properties()) }
            let (reason, properties) = try body.readOptionalReason(v5: true, allowed: .disconnect)
            return .disconnect(reasonCode: reason, properties: properties)
        case (15, _) where v5:
            try requireFlags(0)
            let (reason, properties) = try body.readOptionalReason(v5: true, allowed: .auth)
            return .auth(reasonCode: reason, properties: properties)
        case (2, .client):
            try requireFlags(0)
            guard let acknowledgeFlags = body.readInteger(as: UInt8.self), acknowledgeFlags & 0xFE == 0,
                let reason = body.readInteger(as: UInt8.self)
            else { throw MQTTError.malformed("CONNACK header") }
            let properties = v5 ? try body.readProperties(allowed: .connack) : Properties()
            return .connack(
                sessionPresent: acknowledgeFlags == 1, reasonCode: ReasonCode(rawValue: reason), properties: properties)
        case (9, .client), (11, .client):
            try requireFlags(0)
            let id = try body.readPacketID()
            let properties = v5 ? try body.readProperties(allowed: .acknowledgement) : Properties()
            let codes = (body.readBytes(length: body.readableBytes) ?? []).map(ReasonCode.init(rawValue:))
            // 3.1.1 §3.11: an UNSUBACK is the packet identifier and nothing else.
            guard v5 || type == 9 || codes.isEmpty else { throw MQTTError.malformed("payload in a 3.1.1 UNSUBACK") }
            return type == 9
                ? .suback(packetID: id, reasonCodes: codes, properties: properties)
                : .unsuback(packetID: id, reasonCodes: codes, properties: properties)
        case (13, .client):
            try requireFlags(0)
            return .pingresp
        default:
            throw MQTTError.malformed("packet type \(type) is not valid in this direction")
        }
    }
}

/// Encodes control packets for one protocol version.
public struct MQTTEncoder: MessageToByteEncoder {
    public typealias OutboundIn = Packet
    public var version: ProtocolVersion

    public init(version: ProtocolVersion) { self.version = version }

    public func encode(data: Packet, out: inout ByteBuffer) throws {
        data.encode(into: &out, version: version)
    }
}
