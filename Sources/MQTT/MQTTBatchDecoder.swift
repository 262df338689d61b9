public import NIOCore

/// `MQTTDecoder`, handing on every complete packet of a read as one array: the hub's connections read their packets
/// through `NIOAsyncChannel`, whose every element costs a trip through its buffer's lock and a box, and a device
/// sending telemetry delivers several packets per read (issue #16: the hop from the event loop to the connection's
/// task was a tenth of a QoS 0 message's CPU). The packets and their order are `MQTTDecoder`'s; so is every error,
/// which comes after the packets decoded before it, as it did packet by packet: a malformed packet does not lose
/// the valid ones that came first, and nothing after it is decoded. The hub's `ConnectionInbox` calls it as
/// `ByteToMessageHandler` does (again after each batch, never with an empty buffer).
public struct MQTTBatchDecoder: NIOSingleStepByteToMessageDecoder {
    public typealias InboundOut = [Packet]

    public private(set) var decoder: MQTTDecoder
    /// An error met after some packets of a batch were decoded: thrown by the next call, before anything else is
    /// read from the buffer.
    private var pendingError: (any Error)?

    public init(_ decoder: MQTTDecoder) { self.decoder = decoder }

    public mutating func decode(buffer: inout ByteBuffer) throws -> [Packet]? {
        if let pendingError { throw pendingError }
        guard let first = try decoder.decode(buffer: &buffer) else { return nil }
        var packets = [first]
        while true {
            let start = buffer.readerIndex
            do {
                guard let next = try decoder.decode(buffer: &buffer) else { break }
                packets.append(next)
            } catch {
                // `MQTTDecoder` reads a packet's bytes before it parses them: the bytes of a packet that failed are
                // put back, so the buffer is not empty and `ByteToMessageHandler` calls again in the same read
                // (it never calls with an empty buffer until the channel ends), which throws the error there.
                buffer.moveReaderIndex(to: start)
                pendingError = error
                break
            }
        }
        return packets
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> [Packet]? {
        try decode(buffer: &buffer)
    }
}
