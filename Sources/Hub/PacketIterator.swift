import MQTT
import NIOCore

/// A connection's packets one at a time, from the batches `MQTTBatchDecoder` hands on (every complete packet of a
/// read in one element of the channel's stream). A batch is let go as soon as its last packet is taken, so a held
/// connection waiting for its next packet keeps none of the last ones.
struct PacketIterator {
    private var batches: NIOAsyncChannelInboundStream<[Packet]>.AsyncIterator
    private var batch: [Packet] = []
    private var next = 0

    init(_ batches: NIOAsyncChannelInboundStream<[Packet]>.AsyncIterator) { self.batches = batches }

    /// The next packet, nil at the end of the stream; throws what the decoder threw, after the packets before it.
    mutating func next() async throws -> Packet? {
        while next == batch.count {
            batch = []
            next = 0
            guard let more = try await batches.next() else { return nil }
            batch = more
        }
        defer { next += 1 }
        return batch[next]
    }
}
