import MQTT
import NIOCore
import NIOEmbedded
import Testing

/// `MQTTBatchDecoder` in the pipeline the hub uses (`ByteToMessageHandler`): the packets, their order and every
/// error are `MQTTDecoder`'s, however the bytes are cut; only the grouping into one element per read is new.
@Suite struct MQTTBatchDecoderTests {
    static func channel() throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(
            ByteToMessageHandler(MQTTBatchDecoder(MQTTDecoder(role: .server, maximumPacketSize: 1 << 16))))
        return channel
    }

    /// Writes `input` in reads of `chunk` bytes; returns each read's batches, and the error a read ended with.
    static func feed(_ input: [UInt8], chunk: Int) throws -> (batches: [[[Packet]]], error: (any Error)?) {
        let channel = try Self.channel()
        var reads: [[[Packet]]] = []
        var offset = 0
        while offset < input.count {
            let end = min(input.count, offset + chunk)
            var failure: (any Error)?
            do { try channel.writeInbound(ByteBuffer(bytes: input[offset..<end])) } catch { failure = error }
            var batches: [[Packet]] = []
            while let batch = try channel.readInbound(as: [Packet].self) { batches.append(batch) }
            reads.append(batches)
            offset = end
            if let failure { return (reads, failure) }
        }
        return (reads, nil)
    }

    static func packets() throws -> [Packet] {
        let topic = try TopicName("devices/d1/telemetry")
        return [.connect(ConnectPacket(version: .v5, clientID: "d1"))]
            + (1...5).map {
                .publish(PublishPacket(topic: topic, payload: [UInt8($0)], qos: .atLeastOnce, packetID: UInt16($0)))
            }
            + [
                .pingreq,
                .publish(PublishPacket(topic: topic, payload: Array(repeating: 9, count: 300), qos: .atMostOnce)),
            ]
    }

    @Test(arguments: [1, 2, 3, 7, 31, 64, 1_000])
    func everyPacketInOrderAtEveryReadSize(_ chunk: Int) throws {
        let packets = try Self.packets()
        let (reads, error) = try Self.feed(packets.flatMap { bytes($0, .v5) }, chunk: chunk)
        #expect(error == nil)
        #expect(reads.flatMap { $0.flatMap { $0 } } == packets)
        // At most one batch per read, and never an empty one.
        #expect(reads.allSatisfy { $0.count <= 1 } && reads.allSatisfy { $0.allSatisfy { !$0.isEmpty } })
    }

    @Test func oneReadOfSeveralPacketsIsOneBatch() throws {
        let packets = try Self.packets()
        let (reads, _) = try Self.feed(packets.flatMap { bytes($0, .v5) }, chunk: .max)
        #expect(reads == [[packets]])
    }

    /// Packet by packet: what `MQTTDecoder` hands on before it throws, and what it throws.
    static func singly(_ input: [UInt8]) -> (packets: [Packet], error: (any Error)?) {
        var decoder = MQTTDecoder(role: .server, maximumPacketSize: 1 << 16)
        var buffer = ByteBuffer(bytes: input)
        var packets: [Packet] = []
        do {
            while let packet = try decoder.decode(buffer: &buffer) { packets.append(packet) }
        } catch {
            return (packets, error)
        }
        return (packets, nil)
    }

    /// A malformed packet after valid ones in the same read: the valid ones are handed on first, then the error in
    /// that same read, and nothing after it is decoded (a valid packet that follows it is not handed on). Both a
    /// header the decoder refuses before reading the packet, and a body it refuses after reading it all, the last
    /// bytes of the read (nothing follows to make the pipeline call the decoder again).
    @Test(
        arguments: [
            [0x30, 0x80, 0x80, 0x80, 0x80, 0x01],  // a remaining length in five bytes
            [0x36, 0x03, 0x00, 0x01, 0x61],  // a PUBLISH at QoS 3
            [0x10, 0x02, 0x00, 0x00],  // a second CONNECT
        ] as [[UInt8]])
    func theValidPacketsBeforeAMalformedOneComeFirstThenItsError(_ malformed: [UInt8]) throws {
        let packets = try Self.packets()
        let valid = packets.prefix(3).flatMap { bytes($0, .v5) }
        for after in [[], bytes(packets[3], .v5)] {
            let (reads, error) = try Self.feed(valid + malformed + after, chunk: .max)
            #expect(reads == [[Array(packets.prefix(3))]], "\(malformed) then \(after.count) bytes")
            let expected = Self.singly(valid + malformed + after)
            #expect(expected.packets == Array(packets.prefix(3)))
            #expect((error as? MQTTError)?.code == (expected.error as? MQTTError)?.code && error != nil)
        }
        // A malformed first packet (after the CONNECT) is refused before anything else is handed on.
        let connect = bytes(packets[0], .v5)
        let (first, firstError) = try Self.feed(connect + malformed + valid.dropFirst(connect.count), chunk: .max)
        #expect(first == [[[packets[0]]]] && firstError is MQTTError)
    }
}
