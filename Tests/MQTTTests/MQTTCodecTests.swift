import MQTT
import NIOCore
import Testing

func bytes(_ packet: Packet, _ version: ProtocolVersion) -> [UInt8] {
    var buffer = ByteBuffer()
    packet.encode(into: &buffer, version: version)
    return Array(buffer.readableBytesView)
}

/// Feeds `input` to a decoder in chunks of `chunk` bytes, as a socket would, and returns every packet.
func decodeAll(_ decoder: inout MQTTDecoder, _ input: [UInt8], chunk: Int = Int.max) throws -> [Packet] {
    var buffer = ByteBuffer()
    var packets: [Packet] = []
    var offset = 0
    while offset < input.count {
        let end = min(input.count, offset + chunk)
        buffer.writeBytes(input[offset..<end])
        offset = end
        while let packet = try decoder.decode(buffer: &buffer) { packets.append(packet) }
    }
    return packets
}

func connect(_ version: ProtocolVersion, clientID: String = "c1") -> [UInt8] {
    bytes(.connect(ConnectPacket(version: version, clientID: clientID)), version)
}

@Suite struct MQTTCodecTests {
    static func samplePackets(_ version: ProtocolVersion) throws -> [Packet] {
        var properties = Properties()
        if version == .v5 {
            properties.userProperties = [("counter", "41")]
            properties.messageExpiryInterval = 60
        }
        var connectProperties = Properties()
        if version == .v5 {
            connectProperties.sessionExpiryInterval = 3600
            connectProperties.receiveMaximum = 20
            connectProperties.maximumPacketSize = 65536
        }
        return [
            .connect(
                ConnectPacket(
                    version: version, clientID: "sensor-1", cleanStart: false, keepAlive: 30,
                    will: Will(
                        topic: try TopicName("devices/sensor-1/status"), payload: Array("gone".utf8), qos: .atLeastOnce,
                        retain: true),
                    username: "u", password: [1, 2, 3], properties: connectProperties)),
            .publish(
                PublishPacket(
                    topic: try TopicName("devices/sensor-1/telemetry"), payload: Array(#"{"t":21}"#.utf8),
                    qos: .atLeastOnce,
                    retain: true, packetID: 7, properties: properties)),
            .publish(PublishPacket(topic: try TopicName("a/b"), payload: [], qos: .atMostOnce)),
            .puback(packetID: 7, reasonCode: 0, properties: Properties()),
            .subscribe(
                packetID: 9,
                subscriptions: [
                    Subscription(filter: try TopicFilter("devices/+/telemetry"), qos: .atLeastOnce),
                    Subscription(filter: try TopicFilter("devices/#"), qos: .atMostOnce),
                ], properties: Properties()),
            .unsubscribe(packetID: 10, filters: [try TopicFilter("devices/#")], properties: Properties()),
            .pingreq,
            .disconnect(reasonCode: 0, properties: Properties()),
        ]
    }

    @Test(arguments: [ProtocolVersion.v311, .v5], [1, 2, 3, 7, 64, Int.max])
    func clientPacketsRoundTripAtEveryChunkSize(_ version: ProtocolVersion, _ chunk: Int) throws {
        let packets = try Self.samplePackets(version)
        var decoder = MQTTDecoder(role: .server)
        let decoded = try decodeAll(&decoder, packets.flatMap { bytes($0, version) }, chunk: chunk)
        #expect(decoded == packets)
        #expect(decoder.version == version)
    }

    /// Variable Byte Integers at the edges of each width, as MQTT 5.0 §1.5.5's table gives them.
    static let widths: [Int: [UInt8]] = [
        0: [0x00], 127: [0x7F], 128: [0x80, 0x01], 16_383: [0xFF, 0x7F], 16_384: [0x80, 0x80, 0x01],
        2_097_151: [0xFF, 0xFF, 0x7F], 2_097_152: [0x80, 0x80, 0x80, 0x01],
    ]

    /// §1.5.5's encoding, for lengths between the table's edges.
    static func variableByteInteger(_ value: Int) -> [UInt8] {
        if let known = widths[value] { return known }
        var value = value
        var encoded: [UInt8] = []
        repeat {
            encoded.append(UInt8(value % 128) | (value >= 128 ? 0x80 : 0))
            value /= 128
        } while value > 0
        return encoded
    }

    /// Compares long byte strings by their first difference (not by printing megabytes).
    static func expectSame(_ actual: [UInt8], _ expected: [UInt8], sourceLocation: SourceLocation = #_sourceLocation) {
        let difference =
            zip(actual, expected).enumerated().first { $0.element.0 != $0.element.1 }?.offset
            ?? (actual.count == expected.count ? nil : min(actual.count, expected.count))
        #expect(
            difference == nil,
            "\(actual.count) bytes against \(expected.count), first difference at \(difference ?? -1)",
            sourceLocation: sourceLocation)
    }

    /// The Remaining Length (§2.1.4) in the fewest bytes [MQTT-1.5.5-1] at each width's edges, the packet written
    /// after bytes already in the buffer (as the PUBACKs of a batch share one buffer): against bytes put together
    /// here, then decoded back.
    @Test(arguments: [127, 128, 16_383, 16_384, 2_097_151, 2_097_152])
    func remainingLengthsAreWrittenInTheFewestBytes(_ remaining: Int) throws {
        let payload = (0..<(remaining - 5)).map { UInt8(truncatingIfNeeded: $0) }
        let packet = Packet.publish(PublishPacket(topic: try TopicName("a/b"), payload: payload, qos: .atMostOnce))
        var buffer = ByteBuffer(bytes: [0xAA, 0xBB])
        buffer.moveReaderIndex(forwardBy: 1)
        packet.encode(into: &buffer, version: .v311)
        let expected = [0xBB, 0x30] + Self.widths[remaining]! + [0x00, 0x03] + Array("a/b".utf8) + payload
        Self.expectSame(Array(buffer.readableBytesView), expected)
        var decoder = MQTTDecoder(role: .server, maximumPacketSize: 4 << 20, version: .v311)
        #expect(try decodeAll(&decoder, Array(expected.dropFirst())) == [packet])
    }

    /// Packets written one after another into one buffer (the PUBACKs of a batch share one), bodies of 0 bytes
    /// among them, are each what they are alone; a copy of the buffer taken between two is not written through.
    @Test func packetsAppendedToOneBufferAreEachWhole() throws {
        var properties = Properties()
        properties.reasonString = String(repeating: "r", count: 140)
        let packets: [(Packet, ProtocolVersion)] = [
            (.puback(packetID: 1, reasonCode: 0, properties: Properties()), .v311),
            (.pingresp, .v311),
            (.puback(packetID: 2, reasonCode: 0x80, properties: properties), .v5),
            (
                .publish(
                    PublishPacket(
                        topic: try TopicName("a/b"), payload: Array(repeating: 9, count: 200), qos: .atMostOnce)), .v311
            ),
            (.disconnect(reasonCode: 0, properties: Properties()), .v5),
        ]
        var buffer = ByteBuffer(bytes: [0xAA])
        buffer.moveReaderIndex(forwardBy: 1)
        var copies: [(ByteBuffer, [UInt8])] = []
        for (packet, version) in packets {
            let copy = buffer
            copies.append((copy, Array(copy.readableBytesView)))
            packet.encode(into: &buffer, version: version)
        }
        Self.expectSame(Array(buffer.readableBytesView), packets.flatMap { bytes($0.0, $0.1) })
        for (copy, seen) in copies { Self.expectSame(Array(copy.readableBytesView), seen) }
    }

    /// The Property Length (§2.2.2.1) likewise, inside a packet whose Remaining Length is written around it.
    @Test(arguments: [0, 127, 128, 16_383, 16_384])
    func propertyLengthsAreWrittenInTheFewestBytes(_ length: Int) throws {
        var properties = Properties()
        var propertyBytes: [UInt8] = []
        if length > 0 {
            // A User Property: identifier, name ("n"), value: 1 + 2 + 1 + 2 + the value's bytes.
            let value = String(repeating: "v", count: length - 6)
            properties.userProperties = [("n", value)]
            propertyBytes =
                [0x26, 0x00, 0x01, UInt8(ascii: "n"), UInt8(value.utf8.count >> 8), UInt8(value.utf8.count & 0xFF)]
                + Array(value.utf8)
        }
        let packet = Packet.publish(
            PublishPacket(topic: try TopicName("a/b"), payload: [7], qos: .atMostOnce, properties: properties))
        let body = [0x00, 0x03] + Array("a/b".utf8) + Self.widths[length]! + propertyBytes + [7]
        let encoded = bytes(packet, .v5)
        Self.expectSame(encoded, [0x30] + Self.variableByteInteger(body.count) + body)
        var decoder = MQTTDecoder(role: .server, maximumPacketSize: 4 << 20, version: .v5)
        #expect(try decodeAll(&decoder, encoded) == [packet])
    }

    @Test(arguments: [ProtocolVersion.v311, .v5])
    func serverPacketsRoundTrip(_ version: ProtocolVersion) throws {
        var properties = Properties()
        if version == .v5 {
            properties.assignedClientIdentifier = "auto-1"
            properties.topicAliasMaximum = 0
        }
        let packets: [Packet] = [
            .connack(sessionPresent: true, reasonCode: 0, properties: properties),
            .suback(packetID: 9, reasonCodes: [1, version == .v5 ? 0x87 : 0x80], properties: Properties()),
            .pingresp,
            .publish(
                PublishPacket(
                    topic: try TopicName("devices/x/commands/reboot"), payload: [1], qos: .atLeastOnce, packetID: 3)),
        ]
        var decoder = MQTTDecoder(role: .client, version: version)
        #expect(try decodeAll(&decoder, packets.flatMap { bytes($0, version) }, chunk: 1) == packets)
    }

    @Test func refusesAnAnnouncedPacketOverTheLimitBeforeBuffering() throws {
        var decoder = MQTTDecoder(role: .server, maximumPacketSize: 1024)
        // Fixed header announcing 10 MB; only the header has arrived.
        var buffer = ByteBuffer(bytes: [0x10, 0x80, 0xAD, 0xE2, 0x04])
        #expect(throws: MQTTError(.packetTooLarge, "")) { try decoder.decode(buffer: &buffer) }
    }

    /// Found by the fuzzer: 3.1.1 UNSUBACK is a packet identifier only (§3.11); extra bytes are malformed.
    @Test func refusesA311UnsubackWithAPayload() {
        var decoder = MQTTDecoder(role: .client, version: .v311)
        var buffer = ByteBuffer(bytes: [0xB0, 0x04, 0x01, 0x00, 0x01, 0x80])
        #expect(throws: MQTTError(.malformedPacket, "")) { try decoder.decode(buffer: &buffer) }
    }

    @Test func waitsForTheRestOfAPacket() throws {
        var decoder = MQTTDecoder(role: .server)
        let packet = connect(.v5)
        var buffer = ByteBuffer(bytes: packet.dropLast())
        #expect(try decoder.decode(buffer: &buffer) == nil)
        buffer.writeBytes(packet.suffix(1))
        #expect(try decoder.decode(buffer: &buffer) != nil)
    }
}

@Suite struct TopicTests {
    @Test(arguments: [
        ("devices/+/telemetry", "devices/a/telemetry", true), ("devices/+/telemetry", "devices/a/b/telemetry", false),
        ("devices/#", "devices", true), ("devices/#", "devices/a/b", true), ("#", "a/b/c", true),
        ("+", "a", true), ("+", "a/b", false), ("+/+", "/a", true), ("a/b", "a/b", true), ("a/b", "a/c", false),
        ("#", "$SYS/x", false), ("+/x", "$SYS/x", false), ("$SYS/#", "$SYS/x", true), ("a/+", "a/", true),
        ("devices/+/#", "devices/d1", true),
    ])
    func matchesLikeTheSpecification(_ filter: String, _ topic: String, _ expected: Bool) throws {
        #expect(try TopicFilter(filter).matches(try TopicName(topic)) == expected)
    }

    @Test(arguments: ["a/#/b", "a#", "a/b#", "a+/b", "+a", "", "a\u{0}b"])
    func refusesInvalidFilters(_ filter: String) {
        #expect(throws: MQTTError.self) { try TopicFilter(filter) }
    }

    @Test(arguments: ["a/+", "#", "", "a/#", "a\u{0}"])
    func refusesInvalidTopicNames(_ name: String) {
        #expect(throws: MQTTError.self) { try TopicName(name) }
    }
}

/// Subscription identifiers and shared subscription filters (MQTT 5.0 §3.3.4, §3.8.2.1.2, §4.8.2).
@Suite struct SubscriptionFeatureCodecTests {
    @Test func subscriptionIdentifiersRoundTripToAClient() throws {
        var properties = Properties()
        properties.subscriptionIdentifiers = [1, 300, 268_435_455]
        properties.other = [(0x08, Array("replies/a".utf8)), (0x09, [0, 1, 2])]
        let publish = Packet.publish(
            PublishPacket(
                topic: try TopicName("a"), payload: [1], qos: .atLeastOnce, packetID: 7, properties: properties))
        var decoder = MQTTDecoder(role: .client, version: .v5)
        #expect(try decodeAll(&decoder, bytes(publish, .v5)) == [publish])
        // The same packet from a client is refused: only the server sends subscription identifiers.
        var server = MQTTDecoder(role: .server)
        _ = try decodeAll(&server, connect(.v5))
        #expect(throws: MQTTError(.protocolError, "")) { try decodeAll(&server, bytes(publish, .v5)) }
    }

    @Test func sharedFiltersParse() throws {
        let shared = try #require(try SharedFilter.parse(try TopicFilter("$share/workers/devices/+/telemetry")))
        let inner = try TopicFilter("devices/+/telemetry")
        #expect(shared.group == "workers" && shared.filter == inner)
        let everything = try TopicFilter("#")
        #expect(try SharedFilter.parse(try TopicFilter("$share/g/#"))?.filter == everything)
        #expect(try SharedFilter.parse(try TopicFilter("devices/#")) == nil)
        #expect(try SharedFilter.parse(try TopicFilter("$share")) == nil, "no slash: an ordinary filter")
        for bad in ["$share//a", "$share/+/a", "$share/#", "$share/g", "$share/g/"] {
            #expect(throws: MQTTError.self, "\(bad)") { try SharedFilter.parse(try TopicFilter(bad)) }
        }
    }
}

/// `Properties` keeps its values in one copy-on-write box (a packet, and every async frame holding one, stays small):
/// a copy never sees a later change, and the box every `Properties()` shares is never changed.
@Suite struct PropertiesStorageTests {
    @Test func aChangeIsSeenByItsValueOnly() {
        var first = Properties()
        first.userProperties.append(("k", "v"))
        first.contentType = "application/json"
        #expect(Properties().isEmpty)
        #expect(Properties().userProperties.isEmpty && Properties().contentType == nil)
        var second = first
        second.userProperties.append(("k2", "v2"))
        second.contentType = nil
        second.messageExpiryInterval = 30
        #expect(first.userProperties.count == 1)
        #expect(first.contentType == "application/json")
        #expect(first.messageExpiryInterval == nil)
        #expect(second.userProperties.count == 2)
        #expect(first != second)
        second.userProperties.removeLast()
        second.contentType = "application/json"
        second.messageExpiryInterval = nil
        #expect(first == second)
        #expect(!first.isEmpty)
        var emptied = first
        emptied.userProperties = []
        emptied.contentType = nil
        #expect(emptied.isEmpty)
        #expect(emptied == Properties())
    }

    @Test func packetsStaySmall() {
        #expect(MemoryLayout<Properties>.size == MemoryLayout<Int>.size)
        // A PUBLISH: topic, payload, flags, packet id and the properties' box; CONNECT is boxed.
        #expect(MemoryLayout<Packet>.size <= 64)
    }
}
