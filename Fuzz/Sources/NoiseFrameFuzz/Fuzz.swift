import FuzzSupport
import NIOCore
import Pairing

/// The pairing connection's frames (`PairingFrameDecoder`, 2-byte length) and the Noise messages inside them
/// (`HandshakeState.readMessage`, then `TransportState.decrypt`).
///
/// First byte: bits 0-1 the start (0: frames only; 1: the device reads message 1; 2: the hub reads message 2;
/// 3: the device reads message 3), bit 2 the suite (X25519 or P-256), bit 3 the pattern (XKpsk3 or XK), bits 4-7 the
/// chunk size the rest arrives in. The rest is frames. The party under test reads each frame in turn; when the
/// handshake needs its own message it writes it honestly, and after the handshake frames are transport messages.
///
/// Keys, PSK and ephemerals are fixed test values generated at start, so the honest peer is deterministic and the
/// invariant is exact: every frame the party accepts is byte for byte what the honest peer writes for that payload
/// (nothing else authenticates), both sides end with the same handshake hash, and every decoded frame encodes back
/// to the bytes it came from.
struct Setup: @unchecked Sendable {
    let pattern: HandshakePattern
    /// The party about to read message 1, 2 or 3, and the honest peer in step with it.
    let readers: [HandshakeState]
    let peers: [HandshakeState]

    init(dh: NoiseDH, pattern: HandshakePattern) {
        self.pattern = pattern
        func pair(_ label: String) -> NoiseKeyPair {
            try! dh.keyPair(privateKey: FuzzSupport.testBytes("noise-\(dh.rawValue)-\(label)"))
        }
        let hubStatic = pair("hub-static")
        let deviceStatic = pair("device-static")
        let hubEphemeral = pair("hub-ephemeral")
        let deviceEphemeral = pair("device-ephemeral")
        let psks = pattern.name.hasSuffix("psk3") ? [FuzzSupport.testBytes("noise-psk")] : []
        let prologue = Array("bulwark pair/1".utf8) + [0]
        var hub = try! HandshakeState(
            pattern: pattern, dh: dh, cipher: .aesGCM, initiator: true, prologue: prologue, staticKeyPair: hubStatic,
            remoteStaticKey: deviceStatic.publicKey, psks: psks, ephemeral: { hubEphemeral })
        var device = try! HandshakeState(
            pattern: pattern, dh: dh, cipher: .aesGCM, initiator: false, prologue: prologue,
            staticKeyPair: deviceStatic, psks: psks, ephemeral: { deviceEphemeral })
        var readers: [HandshakeState] = []
        var peers: [HandshakeState] = []
        readers.append(device)
        peers.append(hub)
        let message1 = try! hub.writeMessage()
        _ = try! device.readMessage(message1)
        readers.append(hub)
        peers.append(device)
        let message2 = try! device.writeMessage()
        _ = try! hub.readMessage(message2)
        readers.append(device)
        peers.append(hub)
        self.readers = readers
        self.peers = peers
    }
}

let setups: [Setup] = [
    Setup(dh: .x25519, pattern: .xkpsk3), Setup(dh: .p256, pattern: .xkpsk3), Setup(dh: .x25519, pattern: .xk),
    Setup(dh: .p256, pattern: .xk),
]

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = FuzzSupport.bytes(data, size)
    guard let mode = input.first else { return 0 }
    let start = Int(mode & 3)
    let setup = setups[Int((mode >> 2) & 1) + (mode & 8 != 0 ? 2 : 0)]
    var reader = start == 0 ? nil : setup.readers[start - 1]
    var peer = start == 0 ? nil : setup.peers[start - 1]
    var readerTransport: TransportState?
    var peerTransport: TransportState?

    var decoder = PairingFrameDecoder()
    var buffer = ByteBuffer()
    let chunk = Int(mode >> 4) + 1
    var offset = 1
    while offset < input.count {
        let end = min(input.count, offset + chunk)
        buffer.writeBytes(input[offset..<end])
        offset = end
        while true {
            let before = buffer.readableBytes
            let frame: [UInt8]
            do {
                guard let decoded = try decoder.decode(buffer: &buffer) else { break }
                frame = decoded
            } catch { return 0 }
            var encoded = ByteBuffer()
            try! PairingFrameEncoder().encode(data: frame, out: &encoded)
            guard encoded.readableBytes == before - buffer.readableBytes,
                Array(encoded.readableBytesView.dropFirst(2)) == frame
            else { FuzzSupport.violated("a decoded frame does not encode back to its bytes") }
            guard var party = reader, var honest = peer else { continue }
            if !party.isComplete {
                guard let payload = try? party.readMessage(frame) else { return 0 }
                FuzzSupport.trace("handshake message accepted")
                guard let expected = try? honest.writeMessage(payload), expected == frame else {
                    FuzzSupport.violated("a handshake message the honest peer did not write was accepted")
                }
                if !party.isComplete {
                    let reply = try! party.writeMessage(Array("reply".utf8))
                    guard (try? honest.readMessage(reply)) == Array("reply".utf8) else {
                        FuzzSupport.violated("the honest peer refuses the party's own message")
                    }
                }
                if party.isComplete {
                    guard honest.isComplete, party.handshakeHash == honest.handshakeHash,
                        try! party.exportKey(label: "x") == honest.exportKey(label: "x")
                    else { FuzzSupport.violated("the two sides finished with different handshake states") }
                    readerTransport = try! party.transport()
                    peerTransport = try! honest.transport()
                }
                reader = party
                peer = honest
            } else {
                guard let plaintext = try? readerTransport!.decrypt(frame) else { return 0 }
                FuzzSupport.trace("transport message accepted")
                guard let expected = try? peerTransport!.encrypt(plaintext), expected == frame else {
                    FuzzSupport.violated("a transport message the honest peer did not write was accepted")
                }
            }
        }
    }
    return 0
}

@_cdecl("LLVMFuzzerInitialize")
public func initialize(_ argc: FuzzArgc, _ argv: FuzzArgv) -> CInt {
    FuzzSupport.writeSeedsIfRequested {
        var seeds: [[UInt8]] = []
        func framed(_ messages: [[UInt8]]) -> [UInt8] {
            messages.flatMap { [UInt8($0.count >> 8), UInt8($0.count & 0xFF)] + $0 }
        }
        for (index, setup) in setups.enumerated() {
            let suiteBits = UInt8(index & 1) << 2 | (index >= 2 ? 8 : 0)
            for start in 1...3 {
                // The honest peer's next messages as the party under test would receive them.
                var party = setup.readers[start - 1]
                var honest = setup.peers[start - 1]
                var frames: [[UInt8]] = []
                while !party.isComplete {
                    let message = try! honest.writeMessage(start == 1 ? [] : Array("payload".utf8))
                    frames.append(message)
                    _ = try! party.readMessage(message)
                    if !party.isComplete { _ = try! honest.readMessage(try! party.writeMessage(Array("reply".utf8))) }
                }
                var transport = try! honest.transport()
                frames.append(try! transport.encrypt(Array("credentials".utf8)))
                frames.append(try! transport.encrypt([]))
                for chunkBits: UInt8 in [0xF0, 0x00, 0x30] {
                    seeds.append([UInt8(start) | suiteBits | chunkBits] + framed(frames))
                }
            }
        }
        seeds.append([0xF0] + framed([[1], Array(repeating: 7, count: 300)]) + [0, 0])
        seeds.append([0x10, 0xFF, 0xFF, 1, 2, 3])
        return seeds
    }
    return 0
}
