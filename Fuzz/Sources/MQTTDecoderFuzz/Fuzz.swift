import MQTT
import NIOCore

/// The first input byte chooses the decoder's situation: bit 0 server/client, bit 1 MQTT 3.1.1/5, bit 2 whether a
/// valid CONNECT went first (server), bits 4-7 the chunk size the rest arrives in. Every packet the decoder
/// accepts must encode and decode back to itself, and `MQTTBatchDecoder` (the hub's, one array per read) fed the
/// same chunks must hand on the same packets and refuse at the same point; anything else (a crash, a trap, a
/// mismatch) is a finding.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = Array(UnsafeBufferPointer(start: data, count: size))
    guard let mode = input.first else { return 0 }
    let role: MQTTDecoder.Role = mode & 1 == 0 ? .server : .client
    let version: ProtocolVersion = mode & 2 == 0 ? .v311 : .v5
    let connected = role == .client || mode & 4 != 0
    var decoder = MQTTDecoder(role: role, maximumPacketSize: 8192, version: role == .client ? version : nil)
    var batches = MQTTBatchDecoder(decoder)
    var buffer = ByteBuffer()
    var batchBuffer = ByteBuffer()
    if role == .server && connected {
        Packet.connect(ConnectPacket(version: version, clientID: "fuzz")).encode(into: &buffer, version: version)
        batchBuffer = buffer
        _ = try? decoder.decode(buffer: &buffer)
        _ = try? batches.decode(buffer: &batchBuffer)
    }
    let chunk = Int(mode >> 4) + 1
    var single: [Packet] = []
    var refused = false
    var batched: [Packet] = []
    var batchRefused = false
    var offset = 1
    while offset < input.count, !refused {
        let end = min(input.count, offset + chunk)
        buffer.writeBytes(input[offset..<end])
        batchBuffer.writeBytes(input[offset..<end])
        offset = end
        do {
            while let packet = try decoder.decode(buffer: &buffer) {
                single.append(packet)
                let packetVersion = decoder.version ?? version
                var encoded = ByteBuffer()
                packet.encode(into: &encoded, version: packetVersion)
                var again = MQTTDecoder(
                    role: role, maximumPacketSize: 1 << 20,
                    version: { if case .connect = packet { return nil } else { return packetVersion } }())
                guard let decoded = try? again.decode(buffer: &encoded), decoded == packet, encoded.readableBytes == 0
                else { fatalError("round trip mismatch for \(packet)") }
            }
        } catch {
            // Refusing input is the expected outcome for most of it.
            refused = true
        }
        // As `ByteToMessageHandler` calls it: again after each batch, but never with an empty buffer.
        do {
            while batchBuffer.readableBytes > 0, let batch = try batches.decode(buffer: &batchBuffer) {
                guard !batch.isEmpty else { fatalError("an empty batch") }
                batched += batch
            }
        } catch {
            batchRefused = true
        }
        guard single == batched, refused == batchRefused else {
            fatalError(
                "after \(offset) bytes: \(single.count) packets, refused \(refused); batches \(batched.count), \(batchRefused)"
            )
        }
    }
    return 0
}
