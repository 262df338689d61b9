import MQTT
import NIOCore

/// A connection's packets one at a time, from the batches `MQTTBatchDecoder` hands on (every complete packet of a
/// read in one element of the channel's stream). Each packet leaves the batch as it is taken (its payload is not
/// kept while later packets of the batch wait on the store), and a held connection waiting for its next packet
/// keeps no batch.
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
        let packet = batch[next]
        batch[next] = .pingreq  // the batch is this iterator's alone: written in place, releasing the packet
        next += 1
        return packet
    }
}
