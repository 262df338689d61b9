import MQTT
import NIOCore
import Testing

/// Malformed and forbidden packets, each of which must make the server-side decoder throw (the connection is then
/// closed, with the reason code on MQTT 5). Never a crash, never a packet.
@Suite struct MalformedPacketTests {
    struct Case: Sendable, CustomTestStringConvertible {
        let name: String
        let version: ProtocolVersion
        /// Whether a valid CONNECT goes first.
        let connected: Bool
        let bytes: [UInt8]
        let code: MQTTError.Code
        var testDescription: String { name }
    }

    /// A CONNECT body after the fixed header, for MQTT 3.1.1, with the given flags and payload.
    static func connect311(flags: UInt8, payload: [UInt8], level: UInt8 = 4, name: [UInt8] = Array("MQTT".utf8))
        -> [UInt8]
    {
        let body = [0, UInt8(name.count)] + name + [level, flags, 0, 60] + payload
        return [0x10, UInt8(body.count)] + body
    }

    static let clientID: [UInt8] = [0, 2, 0x63, 0x31]  // "c1"

    /// A packet with a one-byte remaining length (bodies here are under 128 bytes).
    static func packet(_ header: UInt8, _ body: [UInt8]) -> [UInt8] { [header, UInt8(body.count)] + body }

    /// An MQTT 5 PUBLISH at QoS 0 to `a` with these properties.
    static func publish5(_ properties: [UInt8]) -> [UInt8] {
        packet(0x30, [0x00, 0x01, 0x61, UInt8(properties.count)] + properties + Array("{}".utf8))
    }

    /// A SUBSCRIBE (packet id 1) of one filter, with MQTT 5 properties when `properties` is given.
    static func subscribe(_ filter: String, options: UInt8 = 0x01, properties: [UInt8]? = nil) -> [UInt8] {
        let text = Array(filter.utf8)
        let props = properties.map { [UInt8($0.count)] + $0 } ?? []
        return packet(0x82, [0x00, 0x01] + props + [0x00, UInt8(text.count)] + text + [options])
    }

    static let cases: [Case] = [
        // Fixed header and remaining length
        Case(
            name: "remaining length of 5 bytes", version: .v311, connected: false,
            bytes: [0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F], code: .malformedPacket),
        Case(
            name: "non-minimal remaining length", version: .v311, connected: true, bytes: [0xC0, 0x80, 0x00],
            code: .malformedPacket),
        Case(name: "packet type 0", version: .v311, connected: true, bytes: [0x00, 0x00], code: .malformedPacket),
        Case(name: "AUTH on 3.1.1", version: .v311, connected: true, bytes: [0xF0, 0x00], code: .malformedPacket),
        Case(name: "PINGREQ with flags", version: .v311, connected: true, bytes: [0xC1, 0x00], code: .malformedPacket),
        Case(
            name: "PINGREQ with a body", version: .v311, connected: true, bytes: [0xC0, 0x01, 0x00],
            code: .malformedPacket),
        Case(
            name: "server-only CONNACK from a client", version: .v311, connected: true,
            bytes: [0x20, 0x02, 0x00, 0x00], code: .malformedPacket),
        Case(
            name: "server-only SUBACK from a client", version: .v311, connected: true,
            bytes: [0x90, 0x03, 0x00, 0x01, 0x00], code: .malformedPacket),
        Case(
            name: "server-only PINGRESP from a client", version: .v311, connected: true, bytes: [0xD0, 0x00],
            code: .malformedPacket),
        Case(
            name: "DISCONNECT with flags", version: .v311, connected: true, bytes: [0xE2, 0x00], code: .malformedPacket),
        Case(
            name: "DISCONNECT with a body on 3.1.1", version: .v311, connected: true, bytes: [0xE0, 0x01, 0x00],
            code: .malformedPacket),
        // CONNECT
        Case(
            name: "PUBLISH before CONNECT", version: .v311, connected: false,
            bytes: [0x30, 0x05, 0x00, 0x01, 0x61, 0x7B, 0x7D], code: .protocolError),
        Case(
            name: "second CONNECT", version: .v311, connected: true, bytes: connect311(flags: 0x02, payload: clientID),
            code: .protocolError),
        Case(
            name: "protocol name MQIsdp", version: .v311, connected: false,
            bytes: connect311(flags: 0x02, payload: clientID, name: Array("MQIsdp".utf8)), code: .protocolError),
        Case(
            name: "protocol level 3", version: .v311, connected: false,
            bytes: connect311(flags: 0x02, payload: clientID, level: 3), code: .unsupportedProtocolVersion),
        Case(
            name: "protocol level 6", version: .v311, connected: false,
            bytes: connect311(flags: 0x02, payload: clientID, level: 6), code: .unsupportedProtocolVersion),
        Case(
            name: "reserved CONNECT flag", version: .v311, connected: false,
            bytes: connect311(flags: 0x03, payload: clientID), code: .malformedPacket),
        Case(
            name: "will QoS 3", version: .v311, connected: false, bytes: connect311(flags: 0x1E, payload: clientID),
            code: .malformedPacket),
        Case(
            name: "will QoS without will flag", version: .v311, connected: false,
            bytes: connect311(flags: 0x0A, payload: clientID), code: .malformedPacket),
        Case(
            name: "will retain without will flag", version: .v311, connected: false,
            bytes: connect311(flags: 0x22, payload: clientID), code: .malformedPacket),
        Case(
            name: "password without user name on 3.1.1", version: .v311, connected: false,
            bytes: connect311(flags: 0x42, payload: clientID + [0, 1, 0x70]), code: .malformedPacket),
        Case(
            name: "CONNECT with fixed-header flags", version: .v311, connected: false,
            bytes: [0x11] + connect311(flags: 0x02, payload: clientID).dropFirst(), code: .malformedPacket),
        Case(
            name: "truncated client id", version: .v311, connected: false,
            bytes: connect311(flags: 0x02, payload: [0, 5, 0x61]), code: .malformedPacket),
        Case(
            name: "client id with invalid UTF-8", version: .v311, connected: false,
            bytes: connect311(flags: 0x02, payload: [0, 2, 0xC3, 0x28]), code: .malformedPacket),
        Case(
            name: "client id with U+0000", version: .v311, connected: false,
            bytes: connect311(flags: 0x02, payload: [0, 2, 0x61, 0x00]), code: .malformedPacket),
        Case(
            name: "client id with a UTF-8 surrogate", version: .v311, connected: false,
            bytes: connect311(flags: 0x02, payload: [0, 3, 0xED, 0xA0, 0x80]), code: .malformedPacket),
        Case(
            name: "client id with an overlong encoding", version: .v311, connected: false,
            bytes: connect311(flags: 0x02, payload: [0, 2, 0xC0, 0xAF]), code: .malformedPacket),
        Case(
            name: "will with a wildcard topic", version: .v311, connected: false,
            bytes: connect311(flags: 0x06, payload: clientID + [0, 3, 0x61, 0x2F, 0x23, 0, 0]), code: .topicNameInvalid),
        Case(
            name: "trailing bytes after CONNECT", version: .v311, connected: false,
            bytes: connect311(flags: 0x02, payload: clientID + [0xFF]), code: .malformedPacket),
        // PUBLISH
        Case(
            name: "PUBLISH QoS 3", version: .v311, connected: true, bytes: [0x36, 0x05, 0x00, 0x01, 0x61, 0x00, 0x01],
            code: .malformedPacket),
        Case(
            name: "PUBLISH QoS 0 with DUP", version: .v311, connected: true, bytes: [0x38, 0x03, 0x00, 0x01, 0x61],
            code: .malformedPacket),
        Case(
            name: "PUBLISH topic with +", version: .v311, connected: true,
            bytes: [0x30, 0x05, 0x00, 0x03, 0x61, 0x2F, 0x2B], code: .topicNameInvalid),
        Case(
            name: "PUBLISH topic with #", version: .v311, connected: true, bytes: [0x30, 0x03, 0x00, 0x01, 0x23],
            code: .topicNameInvalid),
        Case(
            name: "PUBLISH empty topic", version: .v311, connected: true, bytes: [0x30, 0x02, 0x00, 0x00],
            code: .protocolError),
        Case(
            // MQTT 5.0 §3.3.2.1: zero length without a Topic Alias is a Protocol Error (0x82), not 0x90.
            name: "v5 PUBLISH empty topic without an alias", version: .v5, connected: true,
            bytes: [0x30, 0x03, 0x00, 0x00, 0x00], code: .protocolError),
        Case(
            name: "PUBLISH QoS 1 packet id 0", version: .v311, connected: true,
            bytes: [0x32, 0x05, 0x00, 0x01, 0x61, 0x00, 0x00], code: .protocolError),
        Case(
            name: "PUBLISH QoS 1 without packet id", version: .v311, connected: true,
            bytes: [0x32, 0x03, 0x00, 0x01, 0x61], code: .malformedPacket),
        Case(
            name: "PUBLISH topic length past the end", version: .v311, connected: true,
            bytes: [0x30, 0x03, 0x00, 0x09, 0x61], code: .malformedPacket),
        // SUBSCRIBE / UNSUBSCRIBE
        Case(
            name: "SUBSCRIBE with flags 0", version: .v311, connected: true,
            bytes: [0x80, 0x06, 0x00, 0x01, 0x00, 0x01, 0x61, 0x00], code: .malformedPacket),
        Case(
            name: "SUBSCRIBE without filters", version: .v311, connected: true, bytes: [0x82, 0x02, 0x00, 0x01],
            code: .protocolError),
        Case(
            name: "SUBSCRIBE QoS 3", version: .v311, connected: true,
            bytes: [0x82, 0x06, 0x00, 0x01, 0x00, 0x01, 0x61, 0x03], code: .malformedPacket),
        Case(
            name: "SUBSCRIBE reserved option bits on 3.1.1", version: .v311, connected: true,
            bytes: [0x82, 0x06, 0x00, 0x01, 0x00, 0x01, 0x61, 0x04], code: .malformedPacket),
        Case(
            name: "SUBSCRIBE filter a/#/b", version: .v311, connected: true,
            bytes: [0x82, 0x0A, 0x00, 0x01, 0x00, 0x05, 0x61, 0x2F, 0x23, 0x2F, 0x62, 0x00], code: .topicFilterInvalid),
        Case(
            name: "SUBSCRIBE missing options byte", version: .v311, connected: true,
            bytes: [0x82, 0x05, 0x00, 0x01, 0x00, 0x01, 0x61], code: .malformedPacket),
        Case(
            name: "SUBSCRIBE packet id 0", version: .v311, connected: true,
            bytes: [0x82, 0x06, 0x00, 0x00, 0x00, 0x01, 0x61, 0x00], code: .protocolError),
        Case(
            name: "UNSUBSCRIBE without filters", version: .v311, connected: true, bytes: [0xA2, 0x02, 0x00, 0x01],
            code: .protocolError),
        Case(
            name: "UNSUBSCRIBE with flags 0", version: .v311, connected: true,
            bytes: [0xA0, 0x05, 0x00, 0x01, 0x00, 0x01, 0x61], code: .malformedPacket),
        Case(
            name: "PUBREL with flags 0", version: .v311, connected: true, bytes: [0x60, 0x02, 0x00, 0x01],
            code: .malformedPacket),
        Case(
            name: "PUBACK truncated", version: .v311, connected: true, bytes: [0x40, 0x01, 0x00], code: .malformedPacket
        ),
        // MQTT 5 properties
        Case(
            name: "v5 unknown property", version: .v5, connected: true,
            bytes: [0x30, 0x06, 0x00, 0x01, 0x61, 0x02, 0x7E, 0x00], code: .malformedPacket),
        Case(
            name: "v5 property not allowed in PUBLISH", version: .v5, connected: true,
            bytes: [0x30, 0x09, 0x00, 0x01, 0x61, 0x05, 0x11, 0x00, 0x00, 0x00, 0x01], code: .protocolError),
        Case(
            name: "v5 repeated message expiry", version: .v5, connected: true,
            bytes: [0x30, 0x0E, 0x00, 0x01, 0x61, 0x0A, 0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 1], code: .protocolError),
        Case(
            name: "v5 property length past the end", version: .v5, connected: true,
            bytes: [0x30, 0x05, 0x00, 0x01, 0x61, 0x09, 0x01], code: .malformedPacket),
        Case(
            name: "v5 topic alias 0", version: .v5, connected: true,
            bytes: [0x30, 0x07, 0x00, 0x01, 0x61, 0x03, 0x23, 0x00, 0x00], code: .topicAliasInvalid),
        Case(
            name: "v5 truncated user property", version: .v5, connected: true,
            bytes: [0x30, 0x07, 0x00, 0x01, 0x61, 0x03, 0x26, 0x00, 0x05], code: .malformedPacket),
        Case(
            name: "v5 SUBSCRIBE retain handling 3", version: .v5, connected: true,
            bytes: [0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, 0x61, 0x30], code: .malformedPacket),
        Case(
            name: "v5 SUBSCRIBE reserved option bits", version: .v5, connected: true,
            bytes: [0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, 0x61, 0xC0], code: .malformedPacket),
        Case(
            name: "v5 CONNECT receive maximum 0", version: .v5, connected: false,
            bytes: [
                0x10, 0x12, 0x00, 0x04, 0x4D, 0x51, 0x54, 0x54, 0x05, 0x02, 0x00, 0x3C, 0x03, 0x21, 0x00, 0x00, 0x00,
                0x02, 0x63, 0x31,
            ], code: .protocolError),
        Case(
            name: "v5 CONNECT assigned client id (server-only)", version: .v5, connected: false,
            bytes: [
                0x10, 0x13, 0x00, 0x04, 0x4D, 0x51, 0x54, 0x54, 0x05, 0x02, 0x00, 0x3C, 0x04, 0x12, 0x00, 0x01, 0x61,
                0x00, 0x02, 0x63, 0x31,
            ], code: .protocolError),
        Case(
            name: "v5 property identifier over 127", version: .v5, connected: true,
            bytes: [0x30, 0x07, 0x00, 0x01, 0x61, 0x03, 0x80, 0x01, 0x00], code: .malformedPacket),
        // MQTT 5 message properties and subscription identifiers (§3.3.2.3, §3.8.2.1.2, §3.3.4)
        Case(
            name: "v5 payload format indicator 2", version: .v5, connected: true, bytes: publish5([0x01, 0x02]),
            code: .protocolError),
        Case(
            name: "v5 subscription identifier in a PUBLISH from a client", version: .v5, connected: true,
            bytes: publish5([0x0B, 0x01]), code: .protocolError),
        Case(
            name: "v5 response topic with a wildcard", version: .v5, connected: true,
            bytes: publish5([0x08, 0x00, 0x03, 0x61, 0x2F, 0x23]), code: .protocolError),
        Case(
            name: "v5 response topic twice", version: .v5, connected: true,
            bytes: publish5([0x08, 0x00, 0x01, 0x61, 0x08, 0x00, 0x01, 0x62]), code: .protocolError),
        Case(
            name: "v5 SUBSCRIBE subscription identifier 0", version: .v5, connected: true,
            bytes: subscribe("a", properties: [0x0B, 0x00]), code: .protocolError),
        Case(
            name: "v5 SUBSCRIBE two subscription identifiers", version: .v5, connected: true,
            bytes: subscribe("a", properties: [0x0B, 0x01, 0x0B, 0x02]), code: .protocolError),
        Case(
            name: "v5 CONNECT request problem information 2", version: .v5, connected: false,
            bytes: packet(
                0x10, [0x00, 0x04, 0x4D, 0x51, 0x54, 0x54, 0x05, 0x02, 0x00, 0x3C, 0x02, 0x17, 0x02] + clientID),
            code: .protocolError),
        // Shared subscriptions (§4.8.2 [MQTT-4.8.2-1, 4.8.2-2], §3.8.3.1 [MQTT-3.8.3-4])
        Case(
            name: "shared subscription without a share name", version: .v5, connected: true,
            bytes: subscribe("$share//a", properties: []), code: .protocolError),
        Case(
            name: "shared subscription with a wildcard share name", version: .v311, connected: true,
            bytes: subscribe("$share/+/a"), code: .protocolError),
        Case(
            name: "shared subscription with # as the share name", version: .v311, connected: true,
            bytes: subscribe("$share/#"), code: .protocolError),
        Case(
            name: "shared subscription without a filter", version: .v5, connected: true,
            bytes: subscribe("$share/g/", properties: []), code: .protocolError),
        Case(
            name: "shared subscription with No Local", version: .v5, connected: true,
            bytes: subscribe("$share/g/a", options: 0x05, properties: []), code: .protocolError),
        Case(
            name: "shared subscription with a share name holding +", version: .v5, connected: true,
            bytes: subscribe("$share/g+/a", properties: []), code: .topicFilterInvalid),
    ]

    @Test func thereAreAtLeastFortyCases() { #expect(Self.cases.count >= 40) }

    @Test(arguments: cases)
    func closesTheConnection(_ c: Case) throws {
        var decoder = MQTTDecoder(role: .server)
        if c.connected {
            #expect(try decodeAll(&decoder, connect(c.version)).count == 1)
        }
        var buffer = ByteBuffer(bytes: c.bytes)
        var decoded: [Packet] = []
        #expect(throws: MQTTError(c.code, "")) {
            while let packet = try decoder.decode(buffer: &buffer) { decoded.append(packet) }
            // A decoder that is still waiting is a failure too: every case is a complete packet.
            throw MQTTError(.protocolError, "no error: \(decoded.count) packet(s), \(buffer.readableBytes) bytes left")
        }
    }
}
