import MQTT
import NIOCore

/// The first input byte chooses the decoder's situation: bit 0 server/client, bit 1 MQTT 3.1.1/5, bit 2 whether a
/// valid CONNECT went first (server), bits 4-7 the chunk size the rest arrives in. Every packet the decoder
/// accepts must encode and decode back to itself; anything else (a crash, a trap, a mismatch) is a finding.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = Array(UnsafeBufferPointer(start: data, count: size))
    guard let mode = input.first else { return 0 }
    let role: MQTTDecoder.Role = mode & 1 == 0 ? .server : .client
    let version: ProtocolVersion = mode & 2 == 0 ? .v311 : .v5
    let connected = role == .client || mode & 4 != 0
    var decoder = MQTTDecoder(role: role, maximumPacketSize: 8192, version: role == .client ? version : nil)
    var buffer = ByteBuffer()
    if role == .server && connected {
        Packet.connect(ConnectPacket(version: version, clientID: "fuzz")).encode(into: &buffer, version: version)
        _ = try? decoder.decode(buffer: &buffer)
    }
    let chunk = Int(mode >> 4) + 1
    var offset = 1
    do {
        while offset < input.count {
            let end = min(input.count, offset + chunk)
            buffer.writeBytes(input[offset..<end])
            offset = end
            while let packet = try decoder.decode(buffer: &buffer) {
                let packetVersion = decoder.version ?? version
                var encoded = ByteBuffer()
                packet.encode(into: &encoded, version: packetVersion)
                var again = MQTTDecoder(
                    role: role, maximumPacketSize: 1 << 20,
                    version: { if case .connect = packet { return nil } else { return packetVersion } }())
                guard let decoded = try? again.decode(buffer: &encoded), decoded == packet, encoded.readableBytes == 0
                else { fatalError("round trip mismatch for \(packet)") }
            }
        }
    } catch {
        // Refusing input is the expected outcome for most of it.
    }
    return 0
}
