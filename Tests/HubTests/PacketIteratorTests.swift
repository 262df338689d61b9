import MQTT
import NIOCore
import Testing

@testable import Hub

/// The connection's view of its stream of batches: one packet at a time, in order, then the stream's end or its
/// error after every packet before it.
@Suite struct PacketIteratorTests {
    static let packets: [Packet] = [
        .pingreq, .puback(packetID: 1, reasonCode: 0, properties: Properties()),
        .disconnect(reasonCode: 0, properties: Properties()),
    ]

    @Test func packetsInOrderThenTheEnd() async throws {
        let (stream, source) = NIOAsyncChannelInboundStream<[Packet]>.makeTestingStream()
        source.yield(Array(Self.packets.prefix(2)))
        source.yield([])
        source.yield([Self.packets[2]])
        source.finish()
        var iterator = PacketIterator(stream.makeAsyncIterator())
        var seen: [Packet] = []
        while let packet = try await iterator.next() { seen.append(packet) }
        #expect(seen == Self.packets)
        #expect(try await iterator.next() == nil)
    }

    @Test func theStreamsErrorComesAfterItsPackets() async throws {
        let (stream, source) = NIOAsyncChannelInboundStream<[Packet]>.makeTestingStream()
        source.yield(Self.packets)
        source.finish(throwing: MQTTError(.malformedPacket, "test"))
        var iterator = PacketIterator(stream.makeAsyncIterator())
        for packet in Self.packets { #expect(try await iterator.next() == packet) }
        await #expect(throws: MQTTError.self) { _ = try await iterator.next() }
    }
}
