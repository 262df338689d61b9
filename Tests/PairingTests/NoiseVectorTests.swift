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
        let protocolName: String
        let initPrologue: String
        let initPsks: [String]?
        let initStatic: String
        let initEphemeral: String
        let initRemoteStatic: String
        let respPrologue: String
        let respPsks: [String]?
        let respStatic: String
        let respEphemeral: String
        let handshakeHash: String
        let messages: [Message]
        var testDescription: String { protocolName }
    }

    static var decoder: JSONDecoder {
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        return decoder
    }

    static let vectors: [Vector] = {
        struct File: Decodable { let vectors: [Vector] }
        guard let url = Bundle.module.url(forResource: "cacophony-xk", withExtension: "json", subdirectory: "Fixtures"),
            let data = try? Data(contentsOf: url), let file = try? Self.decoder.decode(File.self, from: data)
        else { return [] }
        return file.vectors
    }()

    @Test func theFixtureHoldsAllFourVectors() {
        #expect(
            Self.vectors.map(\.protocolName).sorted() == [
                "Noise_XK_25519_AESGCM_SHA256", "Noise_XK_25519_ChaChaPoly_SHA256",
                "Noise_XKpsk3_25519_AESGCM_SHA256", "Noise_XKpsk3_25519_ChaChaPoly_SHA256",
            ])
    }

    @Test(arguments: vectors)
    func reproducesEveryMessageAndTheHandshakeHash(_ vector: Vector) throws {
        let pattern: HandshakePattern = vector.protocolName.contains("XKpsk3") ? .xkpsk3 : .xk
        let cipher: NoiseCipher = vector.protocolName.contains("AESGCM") ? .aesGCM : .chaChaPoly
        let initiatorEphemeral = try NoiseDH.x25519.keyPair(privateKey: hex(vector.initEphemeral))
        let responderEphemeral = try NoiseDH.x25519.keyPair(privateKey: hex(vector.respEphemeral))
        var initiator = try HandshakeState(
            pattern: pattern, dh: .x25519, cipher: cipher, initiator: true, prologue: hex(vector.initPrologue),
            staticKeyPair: try NoiseDH.x25519.keyPair(privateKey: hex(vector.initStatic)),
            remoteStaticKey: hex(vector.initRemoteStatic), psks: (vector.initPsks ?? []).map(hex),
            ephemeral: { initiatorEphemeral })
        var responder = try HandshakeState(
            pattern: pattern, dh: .x25519, cipher: cipher, initiator: false, prologue: hex(vector.respPrologue),
            staticKeyPair: try NoiseDH.x25519.keyPair(privateKey: hex(vector.respStatic)),
            psks: (vector.respPsks ?? []).map(hex), ephemeral: { responderEphemeral })
        #expect(initiator.protocolName == vector.protocolName)

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
                    #expect(initiator.handshakeHash == hex(vector.handshakeHash))
                    #expect(responder.handshakeHash == hex(vector.handshakeHash))
                    #expect(
                        responder.remoteStaticKey
                            == (try NoiseDH.x25519.keyPair(privateKey: hex(vector.initStatic))).publicKey)
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
