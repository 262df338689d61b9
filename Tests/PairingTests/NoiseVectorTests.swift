import Foundation
import Pairing
import Testing

/// Known answers: the public cacophony vectors (public domain) for Noise_XK and Noise_XKpsk3 over 25519/SHA256.
@Suite struct NoiseVectorTests {
    struct Vector: Decodable, Sendable, CustomTestStringConvertible {
        struct Message: Decodable, Sendable {
            let payload: String
            let ciphertext: String
        }
        let protocol_name: String
        let init_prologue: String
        let init_psks: [String]?
        let init_static: String
        let init_ephemeral: String
        let init_remote_static: String
        let resp_prologue: String
        let resp_psks: [String]?
        let resp_static: String
        let resp_ephemeral: String
        let handshake_hash: String
        let messages: [Message]
        var testDescription: String { protocol_name }
    }

    static let vectors: [Vector] = {
        struct File: Decodable { let vectors: [Vector] }
        guard let url = Bundle.module.url(forResource: "cacophony-xk", withExtension: "json", subdirectory: "Fixtures"),
            let data = try? Data(contentsOf: url), let file = try? JSONDecoder().decode(File.self, from: data)
        else { return [] }
        return file.vectors
    }()

    @Test func theFixtureHoldsAllFourVectors() {
        #expect(
            Self.vectors.map(\.protocol_name).sorted() == [
                "Noise_XK_25519_AESGCM_SHA256", "Noise_XK_25519_ChaChaPoly_SHA256",
                "Noise_XKpsk3_25519_AESGCM_SHA256", "Noise_XKpsk3_25519_ChaChaPoly_SHA256",
            ])
    }

    @Test(arguments: vectors)
    func reproducesEveryMessageAndTheHandshakeHash(_ vector: Vector) throws {
        let pattern: HandshakePattern = vector.protocol_name.contains("XKpsk3") ? .XKpsk3 : .XK
        let cipher: NoiseCipher = vector.protocol_name.contains("AESGCM") ? .aesGCM : .chaChaPoly
        let initiatorEphemeral = try NoiseDH.x25519.keyPair(privateKey: hex(vector.init_ephemeral))
        let responderEphemeral = try NoiseDH.x25519.keyPair(privateKey: hex(vector.resp_ephemeral))
        var initiator = try HandshakeState(
            pattern: pattern, dh: .x25519, cipher: cipher, initiator: true, prologue: hex(vector.init_prologue),
            staticKeyPair: try NoiseDH.x25519.keyPair(privateKey: hex(vector.init_static)),
            remoteStaticKey: hex(vector.init_remote_static), psks: (vector.init_psks ?? []).map(hex),
            ephemeral: { initiatorEphemeral })
        var responder = try HandshakeState(
            pattern: pattern, dh: .x25519, cipher: cipher, initiator: false, prologue: hex(vector.resp_prologue),
            staticKeyPair: try NoiseDH.x25519.keyPair(privateKey: hex(vector.resp_static)),
            psks: (vector.resp_psks ?? []).map(hex), ephemeral: { responderEphemeral })
        #expect(initiator.protocolName == vector.protocol_name)

        var initiatorTransport: TransportState?
        var responderTransport: TransportState?
        for (index, message) in vector.messages.enumerated() {
            let fromInitiator = index % 2 == 0
            let ciphertext: [UInt8]
            let payload: [UInt8]
            if !initiator.isComplete {
                if fromInitiator {
                    ciphertext = try initiator.writeMessage(hex(message.payload))
                    payload = try responder.readMessage(ciphertext)
                } else {
                    ciphertext = try responder.writeMessage(hex(message.payload))
                    payload = try initiator.readMessage(ciphertext)
                }
                if initiator.isComplete {
                    #expect(initiator.handshakeHash == hex(vector.handshake_hash))
                    #expect(responder.handshakeHash == hex(vector.handshake_hash))
                    #expect(
                        responder.remoteStaticKey
                            == (try NoiseDH.x25519.keyPair(privateKey: hex(vector.init_static))).publicKey)
                    initiatorTransport = try initiator.transport()
                    responderTransport = try responder.transport()
                }
            } else if fromInitiator {
                ciphertext = try initiatorTransport!.encrypt(hex(message.payload))
                payload = try responderTransport!.decrypt(ciphertext)
            } else {
                ciphertext = try responderTransport!.encrypt(hex(message.payload))
                payload = try initiatorTransport!.decrypt(ciphertext)
            }
            #expect(ciphertext == hex(message.ciphertext), "message \(index)")
            #expect(payload == hex(message.payload), "message \(index)")
        }
    }
}

func hex(_ text: String) -> [UInt8] {
    var bytes: [UInt8] = []
    var iterator = text.utf8.makeIterator()
    while let high = iterator.next(), let low = iterator.next() {
        guard let h = hexValue(high), let l = hexValue(low) else { return [] }
        bytes.append(h << 4 | l)
    }
    return bytes
}

private func hexValue(_ c: UInt8) -> UInt8? {
    switch c {
    case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
    case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
    case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
    default: nil
    }
}
