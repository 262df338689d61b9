public import NIOCore

/// Frames of the pairing connection: a 2-byte big-endian length, then at most 65535 bytes (Noise §13). The length
/// is checked before anything is buffered, and an empty frame is malformed.
public struct PairingFrameDecoder: NIOSingleStepByteToMessageDecoder {
    public typealias InboundOut = [UInt8]

    public init() {}

    public mutating func decode(buffer: inout ByteBuffer) throws -> [UInt8]? {
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt16.self) else { return nil }
        guard length > 0 else { throw PairingError(.protocolViolation, "empty frame") }
        guard buffer.readableBytes >= 2 + Int(length) else { return nil }
        buffer.moveReaderIndex(forwardBy: 2)
        return buffer.readBytes(length: Int(length))
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> [UInt8]? {
        try decode(buffer: &buffer)
    }
}

public struct PairingFrameEncoder: MessageToByteEncoder {
    public typealias OutboundIn = [UInt8]

    public init() {}

    public func encode(data: [UInt8], out: inout ByteBuffer) throws {
        guard (1...65535).contains(data.count) else { throw PairingError(.protocolViolation, "frame size") }
        out.writeInteger(UInt16(data.count))
        out.writeBytes(data)
    }
}
