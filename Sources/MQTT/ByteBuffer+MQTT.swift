import Core
import NIOCore

/// Which properties a packet may carry (MQTT 5.0 §2.2.2.2, table of property identifiers).
struct AllowedProperties: Sendable {
    let identifiers: Set<UInt8>
    static let connect = AllowedProperties(identifiers: [0x11, 0x21, 0x27, 0x22, 0x19, 0x17, 0x26, 0x15, 0x16])
    static let will = AllowedProperties(identifiers: [0x18, 0x01, 0x02, 0x03, 0x08, 0x09, 0x26])
    static let publish = AllowedProperties(identifiers: [0x01, 0x02, 0x23, 0x08, 0x09, 0x26, 0x0B, 0x03])
    static let acknowledgement = AllowedProperties(identifiers: [0x1F, 0x26])
    static let subscribe = AllowedProperties(identifiers: [0x0B, 0x26])
    static let unsubscribe = AllowedProperties(identifiers: [0x26])
    static let disconnect = AllowedProperties(identifiers: [0x11, 0x1F, 0x26, 0x1C])
    static let auth = AllowedProperties(identifiers: [0x15, 0x16, 0x1F, 0x26])
    /// Every identifier MQTT 5.0 defines.
    static let defined: Set<UInt8> = [
        0x01, 0x02, 0x03, 0x08, 0x09, 0x0B, 0x11, 0x12, 0x13, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x1C, 0x1F, 0x21,
        0x22,
        0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2A,
    ]
    static let connack = AllowedProperties(identifiers: [
        0x11, 0x21, 0x24, 0x25, 0x27, 0x12, 0x22, 0x1F, 0x26, 0x28, 0x29, 0x2A, 0x13, 0x1A, 0x1C, 0x15, 0x16,
    ])
}

extension ByteBuffer {
    /// §1.5.5 Variable Byte Integer.
    mutating func readVariableByteInteger() throws(MQTTError) -> Int {
        var value = 0
        var multiplier = 1
        for index in 0..<4 {
            guard let byte = readInteger(as: UInt8.self) else { throw MQTTError.malformed("truncated integer") }
            value += Int(byte & 0x7F) * multiplier
            if byte & 0x80 == 0 {
                // Canonical form: no superfluous continuation bytes (§1.5.5 uses the minimum number of bytes).
                guard index == 0 || byte != 0 else { throw MQTTError.malformed("non-minimal variable byte integer") }
                return value
            }
            multiplier *= 128
        }
        throw MQTTError.malformed("variable byte integer longer than 4 bytes")
    }

    /// Writes what `write` writes, after its length as a Variable Byte Integer (§1.5.5, in the fewest bytes it takes
    /// [MQTT-1.5.5-1]): the Remaining Length before a packet's body (§2.1.4), the Property Length before its
    /// properties (§2.2.2.1). Written in place, after room for the usual longest length (4 bytes), and moved back over
    /// what the length did not use, rather than into a buffer of its own that is then copied: that was two
    /// allocations per packet sent, two more per property list (the PUBACK of every QoS 1 message had them).
    mutating func writeLengthPrefixed(_ write: (inout ByteBuffer) -> Void) {
        let lengthAt = writerIndex
        writeRepeatingByte(0, count: 4)
        let bodyAt = writerIndex
        write(&self)
        let length = writerIndex - bodyAt
        var lengthBytes = 1
        while length >> (7 * lengthBytes) > 0 { lengthBytes += 1 }
        let end = lengthAt + lengthBytes + length
        // A body over 268,435,455 bytes takes a fifth length byte: room for it first (MQTT allows no such packet;
        // the encoder has always written it so).
        if lengthBytes > 4 { writeRepeatingByte(0, count: lengthBytes - 4) }
        if lengthBytes != 4 {
            // Both ranges lie in the readable bytes (the reader index is at most `lengthAt`); raw memory copies
            // allow them to overlap.
            let (from, to) = (bodyAt - readerIndex, lengthAt + lengthBytes - readerIndex)
            withUnsafeMutableReadableBytes { bytes in
                guard let base = bytes.baseAddress else { return }
                (base + to).copyMemory(from: base + from, byteCount: length)
            }
        }
        moveWriterIndex(to: end)
        var value = length
        var at = lengthAt
        repeat {
            var byte = UInt8(value % 128)
            value /= 128
            if value > 0 { byte |= 0x80 }
            setInteger(byte, at: at)
            at += 1
        } while value > 0
    }

    mutating func writeVariableByteInteger(_ value: Int) {
        var value = value
        repeat {
            var byte = UInt8(value % 128)
            value /= 128
            if value > 0 { byte |= 0x80 }
            writeInteger(byte)
        } while value > 0
    }

    mutating func readBinary() throws(MQTTError) -> [UInt8] {
        guard let length = readInteger(as: UInt16.self), let bytes = readBytes(length: Int(length)) else {
            throw MQTTError.malformed("truncated length-prefixed field")
        }
        return bytes
    }

    /// §1.5.4 UTF-8 Encoded String: well-formed UTF-8 (no surrogates, no overlongs), no U+0000. Validated where the
    /// bytes lie in the buffer: the string is the one allocation (none up to 15 bytes), not a copy of the bytes first.
    mutating func readMQTTString() throws(MQTTError) -> String {
        guard let length = readInteger(as: UInt16.self).map(Int.init), length <= readableBytes else {
            throw MQTTError.malformed("truncated length-prefixed field")
        }
        let text = withUnsafeReadableBytes { raw -> String? in
            let bytes = UnsafeRawBufferPointer(rebasing: raw[..<length]).assumingMemoryBound(to: UInt8.self)
            return bytes.contains(0) ? nil : String(wellFormedUTF8: bytes)
        }
        guard let text else { throw MQTTError.malformed("string is not well-formed UTF-8 or contains U+0000") }
        moveReaderIndex(forwardBy: length)
        return text
    }

    /// The string's UTF-8 after its 2-byte length, written from the string's own storage.
    mutating func writeMQTTString(_ text: String) {
        writeInteger(UInt16(truncatingIfNeeded: text.utf8.count))
        writeString(text)
    }

    mutating func writeBinary(_ bytes: [UInt8]) {
        writeInteger(UInt16(truncatingIfNeeded: bytes.count))
        writeBytes(bytes)
    }

    /// §2.2.1: a packet identifier is non-zero.
    mutating func readPacketID() throws(MQTTError) -> UInt16 {
        guard let id = readInteger(as: UInt16.self) else { throw MQTTError.malformed("missing packet identifier") }
        guard id != 0 else { throw MQTTError(.protocolError, "packet identifier 0") }
        return id
    }

    /// Acknowledgements and DISCONNECT in MQTT 5 may stop after the packet id / before the reason code (§3.4.2.1).
    mutating func readOptionalReason(v5: Bool, allowed: AllowedProperties) throws(MQTTError) -> (
        ReasonCode, Properties
    ) {
        guard v5, let byte = readInteger(as: UInt8.self) else { return (.success, Properties()) }
        let reason = ReasonCode(rawValue: byte)
        guard readableBytes > 0 else { return (reason, Properties()) }
        return (reason, try readProperties(allowed: allowed))
    }

    mutating func readConnect() throws(MQTTError) -> ConnectPacket {
        guard try readMQTTString() == "MQTT" else { throw MQTTError(.protocolError, "protocol name is not MQTT") }
        guard let level = readInteger(as: UInt8.self) else { throw MQTTError.malformed("truncated CONNECT") }
        guard let version = ProtocolVersion(rawValue: level) else {
            var error = MQTTError(.unsupportedProtocolVersion, "protocol level \(level)")
            error.protocolLevel = level
            throw error
        }
        guard let flags = readInteger(as: UInt8.self), let keepAlive = readInteger(as: UInt16.self) else {
            throw MQTTError.malformed("truncated CONNECT")
        }
        guard flags & 0x01 == 0 else { throw MQTTError.malformed("reserved CONNECT flag set") }  // §3.1.2-3
        let willFlag = flags & 0x04 != 0
        guard let willQoS = QoS(rawValue: (flags >> 3) & 0x03) else { throw MQTTError.malformed("will QoS 3") }
        let willRetain = flags & 0x20 != 0
        guard willFlag || (willQoS == .atMostOnce && !willRetain) else {
            throw MQTTError.malformed("will QoS or retain without a will")  // §3.1.2-13, -15
        }
        let hasPassword = flags & 0x40 != 0
        let hasUsername = flags & 0x80 != 0
        guard version == .v5 || hasUsername || !hasPassword else {
            throw MQTTError.malformed("password without user name")  // 3.1.1 §3.1.2-22
        }
        let properties = version == .v5 ? try readProperties(allowed: .connect) : Properties()
        let clientID = try readMQTTString()
        var will: Will?
        if willFlag {
            let willProperties = version == .v5 ? try readProperties(allowed: .will) : Properties()
            guard let topic = try? TopicName(try readMQTTString()) else {
                throw MQTTError(.topicNameInvalid, "will topic is invalid")
            }
            will = Will(
                topic: topic, payload: try readBinary(), qos: willQoS, retain: willRetain, properties: willProperties)
        }
        let username = hasUsername ? try readMQTTString() : nil
        let password = hasPassword ? try readBinary() : nil
        return ConnectPacket(
            version: version, clientID: clientID, cleanStart: flags & 0x02 != 0, keepAlive: keepAlive, will: will,
            username: username, password: password, properties: properties)
    }

    /// §2.2.2 properties: a length, then identifier/value pairs. Unknown identifiers, identifiers the packet may
    /// not carry, and repeated single-valued properties are refused.
    mutating func readProperties(allowed: AllowedProperties) throws(MQTTError) -> Properties {
        let length = try readVariableByteInteger()
        guard var slice = readSlice(length: length) else { throw MQTTError.malformed("truncated properties") }
        var properties = Properties()
        var seen = Set<UInt8>()
        while slice.readableBytes > 0 {
            let identifierValue = try slice.readVariableByteInteger()
            guard identifierValue < 0x80, AllowedProperties.defined.contains(UInt8(identifierValue)) else {
                throw MQTTError.malformed("unknown property")
            }
            let identifier = UInt8(identifierValue)
            guard allowed.identifiers.contains(identifier) else {
                throw MQTTError(.protocolError, "property 0x\(String(identifier, radix: 16)) not allowed here")
            }
            if identifier != 0x26 && identifier != 0x0B {
                guard seen.insert(identifier).inserted else { throw MQTTError(.protocolError, "repeated property") }
            }
            func byte() throws(MQTTError) -> UInt8 {
                guard let v = slice.readInteger(as: UInt8.self) else { throw MQTTError.malformed("truncated property") }
                return v
            }
            func two() throws(MQTTError) -> UInt16 {
                guard let v = slice.readInteger(as: UInt16.self) else {
                    throw MQTTError.malformed("truncated property")
                }
                return v
            }
            func four() throws(MQTTError) -> UInt32 {
                guard let v = slice.readInteger(as: UInt32.self) else {
                    throw MQTTError.malformed("truncated property")
                }
                return v
            }
            switch identifier {
            case 0x01:
                // §3.3.2.3.2: 0 (unspecified bytes) or 1 (UTF-8 text).
                let value = try byte()
                guard value <= 1 else { throw MQTTError(.protocolError, "payload format indicator \(value)") }
                properties.payloadFormatIndicator = value
            case 0x02: properties.messageExpiryInterval = try four()
            case 0x03: properties.contentType = try slice.readMQTTString()
            case 0x11: properties.sessionExpiryInterval = try four()
            case 0x12: properties.assignedClientIdentifier = try slice.readMQTTString()
            case 0x13: properties.serverKeepAlive = try two()
            case 0x18: properties.willDelayInterval = try four()
            case 0x1F: properties.reasonString = try slice.readMQTTString()
            case 0x21:
                let value = try two()
                guard value > 0 else { throw MQTTError(.protocolError, "receive maximum 0") }  // §3.1.2.11.3
                properties.receiveMaximum = value
            case 0x22: properties.topicAliasMaximum = try two()
            case 0x23:
                let value = try two()
                // MQTT 5.0 §3.3.2.3.4: 0 is not a valid alias: 0x94 Topic Alias invalid.
                guard value > 0 else { throw MQTTError(.topicAliasInvalid, "topic alias 0") }
                properties.topicAlias = value
            case 0x24: properties.maximumQoS = try byte()
            case 0x25: properties.retainAvailable = try byte()
            case 0x26: properties.userProperties.append((try slice.readMQTTString(), try slice.readMQTTString()))
            case 0x27:
                let value = try four()
                guard value > 0 else { throw MQTTError(.protocolError, "maximum packet size 0") }
                properties.maximumPacketSize = value
            case 0x08:
                // §3.3.2.3.5 [MQTT-3.3.2-14]: a Response Topic is a topic name, without wildcards.
                let topic = try slice.readMQTTString()
                guard (try? TopicName(topic)) != nil else { throw MQTTError(.protocolError, "response topic") }
                properties.other.append((identifier, Array(topic.utf8)))
            case 0x15, 0x1A, 0x1C:
                properties.other.append((identifier, Array((try slice.readMQTTString()).utf8)))
            case 0x09, 0x16: properties.other.append((identifier, try slice.readBinary()))
            case 0x0B:
                let value = try slice.readVariableByteInteger()
                guard value > 0 else { throw MQTTError(.protocolError, "subscription identifier 0") }
                properties.subscriptionIdentifiers.append(value)
            case 0x17, 0x19, 0x28, 0x29, 0x2A:
                // §3.1.2.11.6-7, §3.2.2.3.11-13: these flags are 0 or 1; anything else is a Protocol Error.
                let value = try byte()
                guard value <= 1 else {
                    throw MQTTError(.protocolError, "property 0x\(String(identifier, radix: 16)) is not 0 or 1")
                }
                properties.other.append((identifier, [value]))
            default: throw MQTTError.malformed("unknown property")
            }
        }
        return properties
    }

    mutating func writeProperties(_ properties: Properties) {
        writeLengthPrefixed { body in Self.writePropertyList(properties, into: &body) }
    }

    /// The properties of `writeProperties`, without their length.
    private static func writePropertyList(_ properties: Properties, into body: inout ByteBuffer) {
        func byte(_ id: UInt8, _ value: UInt8?) {
            if let value {
                body.writeInteger(id)
                body.writeInteger(value)
            }
        }
        func two(_ id: UInt8, _ value: UInt16?) {
            if let value {
                body.writeInteger(id)
                body.writeInteger(value)
            }
        }
        func four(_ id: UInt8, _ value: UInt32?) {
            if let value {
                body.writeInteger(id)
                body.writeInteger(value)
            }
        }
        func string(_ id: UInt8, _ value: String?) {
            if let value {
                body.writeInteger(id)
                body.writeMQTTString(value)
            }
        }
        byte(0x01, properties.payloadFormatIndicator)
        four(0x02, properties.messageExpiryInterval)
        string(0x03, properties.contentType)
        four(0x11, properties.sessionExpiryInterval)
        string(0x12, properties.assignedClientIdentifier)
        two(0x13, properties.serverKeepAlive)
        four(0x18, properties.willDelayInterval)
        string(0x1F, properties.reasonString)
        two(0x21, properties.receiveMaximum)
        two(0x22, properties.topicAliasMaximum)
        two(0x23, properties.topicAlias)
        byte(0x24, properties.maximumQoS)
        byte(0x25, properties.retainAvailable)
        four(0x27, properties.maximumPacketSize)
        for (name, value) in properties.userProperties {
            body.writeInteger(UInt8(0x26))
            body.writeMQTTString(name)
            body.writeMQTTString(value)
        }
        for identifier in properties.subscriptionIdentifiers {
            body.writeInteger(UInt8(0x0B))
            body.writeVariableByteInteger(identifier)
        }
        for (id, raw) in properties.other {
            body.writeInteger(id)
            switch id {
            case 0x08, 0x15, 0x1A, 0x1C, 0x09, 0x16: body.writeBinary(raw)
            default: body.writeBytes(raw)
            }
        }
    }
}

extension Packet {
    /// Writes the fixed header and the packet (§2.1): the first byte, the Remaining Length, then the variable header
    /// and payload, written in place (`writeLengthPrefixed`).
    public func encode(into out: inout ByteBuffer, version: ProtocolVersion) {
        let headerAt = out.writerIndex
        out.writeInteger(UInt8(0))
        var header: UInt8 = 0
        out.writeLengthPrefixed { body in header = writeBody(into: &body, v5: version == .v5) }
        out.setInteger(header, at: headerAt)
    }

    /// Writes the variable header and the payload; returns the fixed header's first byte (type and flags).
    private func writeBody(into body: inout ByteBuffer, v5: Bool) -> UInt8 {
        let header: UInt8
        switch self {
        case .connect(let c):
            header = 0x10
            body.writeMQTTString("MQTT")
            body.writeInteger(c.version.rawValue)
            var flags: UInt8 = c.cleanStart ? 0x02 : 0
            if let will = c.will {
                flags |= 0x04 | (will.qos.rawValue << 3) | (will.retain ? 0x20 : 0)
            }
            if c.password != nil { flags |= 0x40 }
            if c.username != nil { flags |= 0x80 }
            body.writeInteger(flags)
            body.writeInteger(c.keepAlive)
            if c.version == .v5 { body.writeProperties(c.properties) }
            body.writeMQTTString(c.clientID)
            if let will = c.will {
                if c.version == .v5 { body.writeProperties(will.properties) }
                body.writeMQTTString(will.topic.rawValue)
                body.writeBinary(will.payload)
            }
            if let username = c.username { body.writeMQTTString(username) }
            if let password = c.password { body.writeBinary(password) }
        case .connack(let sessionPresent, let reasonCode, let properties):
            header = 0x20
            body.writeInteger(UInt8(sessionPresent ? 1 : 0))
            body.writeInteger(reasonCode.rawValue)
            if v5 { body.writeProperties(properties) }
        case .publish(let p):
            header = 0x30 | (p.duplicate ? 0x08 : 0) | (p.qos.rawValue << 1) | (p.retain ? 0x01 : 0)
            body.writeMQTTString(p.topic.rawValue)
            if let id = p.packetID, p.qos != .atMostOnce { body.writeInteger(id) }
            if v5 { body.writeProperties(p.properties) }
            body.writeBytes(p.payload)
        case .puback(let id, let reasonCode, let properties), .pubrec(let id, let reasonCode, let properties),
            .pubrel(let id, let reasonCode, let properties), .pubcomp(let id, let reasonCode, let properties):
            switch self {
            case .puback: header = 0x40
            case .pubrec: header = 0x50
            case .pubrel: header = 0x62
            default: header = 0x70
            }
            body.writeInteger(id)
            // §3.4.2.1: the reason code and properties may be left out when the code is 0 and there are none.
            if v5 && (reasonCode != .success || !properties.isEmpty) {
                body.writeInteger(reasonCode.rawValue)
                if !properties.isEmpty { body.writeProperties(properties) }
            }
        case .subscribe(let id, let subscriptions, let properties):
            header = 0x82
            body.writeInteger(id)
            if v5 { body.writeProperties(properties) }
            for s in subscriptions {
                body.writeMQTTString(s.filter.rawValue)
                var options = s.qos.rawValue
                if v5 {
                    options |= (s.noLocal ? 0x04 : 0) | (s.retainAsPublished ? 0x08 : 0) | (s.retainHandling << 4)
                }
                body.writeInteger(options)
            }
        case .suback(let id, let codes, let properties), .unsuback(let id, let codes, let properties):
            if case .suback = self { header = 0x90 } else { header = 0xB0 }
            body.writeInteger(id)
            if v5 { body.writeProperties(properties) }
            if v5 || header == 0x90 { body.writeBytes(codes.map(\.rawValue)) }
        case .unsubscribe(let id, let filters, let properties):
            header = 0xA2
            body.writeInteger(id)
            if v5 { body.writeProperties(properties) }
            for filter in filters { body.writeMQTTString(filter.rawValue) }
        case .pingreq: header = 0xC0
        case .pingresp: header = 0xD0
        case .disconnect(let reasonCode, let properties):
            header = 0xE0
            if v5 && (reasonCode != .success || !properties.isEmpty) {
                body.writeInteger(reasonCode.rawValue)
                if !properties.isEmpty { body.writeProperties(properties) }
            }
        case .auth(let reasonCode, let properties):
            header = 0xF0
            body.writeInteger(reasonCode.rawValue)
            body.writeProperties(properties)
        }
        return header
    }
}
