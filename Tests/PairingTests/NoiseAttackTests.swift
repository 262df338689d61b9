import Crypto
import Foundation
import Pairing
import Testing

/// Attacks on the XKpsk3 handshake, in both suites. The hub is the initiator (it knows the device's static key from
/// the label), the device the responder; the psk comes from the label's secret.
@Suite struct NoiseAttackTests {
    struct Party {
        var hub: HandshakeState
        var device: HandshakeState
    }

    static let prologue = Array("bulwark pair test".utf8)

    static func pair(
        _ dh: NoiseDH, deviceKey: NoiseKeyPair, hubKnowsDeviceKey: [UInt8]? = nil, hubPSK: [UInt8], devicePSK: [UInt8]
    ) throws -> Party {
        Party(
            hub: try HandshakeState(
                pattern: .xkpsk3, dh: dh, cipher: .aesGCM, initiator: true, prologue: prologue,
                staticKeyPair: dh.generateKeyPair(), remoteStaticKey: hubKnowsDeviceKey ?? deviceKey.publicKey,
                psks: [hubPSK]),
            device: try HandshakeState(
                pattern: .xkpsk3, dh: dh, cipher: .aesGCM, initiator: false, prologue: prologue,
                staticKeyPair: deviceKey, psks: [devicePSK]))
    }

    static func psk() -> [UInt8] { Array(SymmetricKey(size: .bits256).withUnsafeBytes { Array($0) }) }

    @Test(arguments: NoiseDH.allCases)
    func honestPartiesAgree(_ dh: NoiseDH) throws {
        let secret = Self.psk()
        var p = try Self.pair(dh, deviceKey: dh.generateKeyPair(), hubPSK: secret, devicePSK: secret)
        _ = try p.device.readMessage(try p.hub.writeMessage())
        _ = try p.hub.readMessage(try p.device.writeMessage())
        #expect(try p.device.readMessage(try p.hub.writeMessage(Array("csr".utf8))) == Array("csr".utf8))
        #expect(p.hub.handshakeHash == p.device.handshakeHash)
        var hubTransport = try p.hub.transport()
        var deviceTransport = try p.device.transport()
        #expect(try deviceTransport.decrypt(try hubTransport.encrypt([1, 2, 3])) == [1, 2, 3])
        #expect(try hubTransport.decrypt(try deviceTransport.encrypt([4])) == [4])
    }

    /// A relay that terminates the device side with its own keys but without the label's secret S: the device
    /// refuses the third message (psk3 mixes S in).
    @Test(arguments: NoiseDH.allCases)
    func aRelayWithoutTheSecretCannotCompleteAgainstTheDevice(_ dh: NoiseDH) throws {
        let device = dh.generateKeyPair()
        // The relay knows the device's public key (it is no secret) but guesses the PSK.
        var p = try Self.pair(dh, deviceKey: device, hubPSK: Self.psk(), devicePSK: Self.psk())
        _ = try p.device.readMessage(try p.hub.writeMessage())
        _ = try p.hub.readMessage(try p.device.writeMessage())
        let third = try p.hub.writeMessage()
        #expect(throws: NoiseError(.decryptionFailed, "")) { try p.device.readMessage(third) }
    }

    /// A relay that terminates the hub side pretending to be the device, with the secret but its own static key:
    /// the hub refuses the second message (it lacks the device's identity key, so `es` differs).
    @Test(arguments: NoiseDH.allCases)
    func aRelayWithoutTheDeviceKeyCannotCompleteAgainstTheHub(_ dh: NoiseDH) throws {
        let secret = Self.psk()
        let realDevice = dh.generateKeyPair()
        let impostor = dh.generateKeyPair()
        var p = try Self.pair(
            dh, deviceKey: impostor, hubKnowsDeviceKey: realDevice.publicKey, hubPSK: secret, devicePSK: secret)
        let first = try p.hub.writeMessage()
        #expect(throws: NoiseError(.decryptionFailed, "")) { try p.device.readMessage(first) }
        // Even if the impostor answers blindly, the hub refuses.
        var blind = try HandshakeState(
            pattern: .xkpsk3, dh: dh, cipher: .aesGCM, initiator: false, prologue: Self.prologue,
            staticKeyPair: impostor, psks: [secret])
        _ = try? blind.readMessage(first)
        var hub = p.hub
        let forged = Array(dh.generateKeyPair().publicKey) + [UInt8](repeating: 0, count: 16)
        #expect(throws: NoiseError(.decryptionFailed, "")) { try hub.readMessage(forged) }
    }

    @Test(arguments: NoiseDH.allCases)
    func replayedHandshakeMessagesAreRefused(_ dh: NoiseDH) throws {
        let secret = Self.psk()
        let device = dh.generateKeyPair()
        var first = try Self.pair(dh, deviceKey: device, hubPSK: secret, devicePSK: secret)
        let m1 = try first.hub.writeMessage()
        _ = try first.device.readMessage(m1)
        _ = try first.hub.readMessage(try first.device.writeMessage())
        let m3 = try first.hub.writeMessage(Array("csr".utf8))
        _ = try first.device.readMessage(m3)

        // The same message twice in one session is out of turn.
        #expect(throws: NoiseError(.wrongState, "")) { try first.device.readMessage(m3) }
        // A recorded session replayed to a fresh device session: message 1 is accepted (it is a fresh ephemeral
        // exchange), but the recorded message 3 does not fit the device's new ephemeral key.
        var replayTarget = try HandshakeState(
            pattern: .xkpsk3, dh: dh, cipher: .aesGCM, initiator: false, prologue: Self.prologue,
            staticKeyPair: device, psks: [secret])
        _ = try replayTarget.readMessage(m1)
        _ = try replayTarget.writeMessage()
        #expect(throws: NoiseError(.decryptionFailed, "")) { try replayTarget.readMessage(m3) }
    }

    @Test func invalidCurvePointsAndTheIdentityAreRefusedOnP256() throws {
        let secret = Self.psk()
        let device = NoiseDH.p256.generateKeyPair()
        var p = try Self.pair(.p256, deviceKey: device, hubPSK: secret, devicePSK: secret)
        let m1 = try p.hub.writeMessage()
        var offCurve = m1
        offCurve[64] ^= 0x01  // last byte of Y: the point is no longer on the curve
        var d1 = p.device
        #expect(throws: NoiseError(.invalidPublicKey, "")) { try d1.readMessage(offCurve) }
        var identity = m1
        identity.replaceSubrange(0..<65, with: [UInt8](repeating: 0, count: 65))
        var d2 = p.device
        #expect(throws: NoiseError(.invalidPublicKey, "")) { try d2.readMessage(identity) }
        var compressedPrefix = m1
        compressedPrefix[0] = 0x02
        var d3 = p.device
        #expect(throws: NoiseError(.invalidPublicKey, "")) { try d3.readMessage(compressedPrefix) }
    }

    /// RFC 7748 small-order points give an all-zero X25519 output, which Noise §12.1 allows implementations to
    /// refuse; we do.
    @Test(arguments: [
        [UInt8](repeating: 0, count: 32),
        [1] + [UInt8](repeating: 0, count: 31),
        hex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
        hex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
        hex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    ])
    func smallOrderX25519PointsAreRefused(_ point: [UInt8]) throws {
        let secret = Self.psk()
        var p = try Self.pair(.x25519, deviceKey: NoiseDH.x25519.generateKeyPair(), hubPSK: secret, devicePSK: secret)
        var m1 = try p.hub.writeMessage()
        m1.replaceSubrange(0..<32, with: point)
        #expect(throws: NoiseError(.invalidPublicKey, "")) { try p.device.readMessage(m1) }
    }

    @Test(arguments: NoiseDH.allCases)
    func aReflectedKeyIsRefused(_ dh: NoiseDH) throws {
        let secret = Self.psk()
        let device = dh.generateKeyPair()
        var p = try Self.pair(dh, deviceKey: device, hubPSK: secret, devicePSK: secret)
        var m1 = try p.hub.writeMessage()
        m1.replaceSubrange(0..<dh.publicKeyLength, with: device.publicKey)
        #expect(throws: NoiseError(.reflectedKey, "")) { try p.device.readMessage(m1) }

        // The hub receives its own ephemeral key back as the device's ephemeral.
        var q = try Self.pair(dh, deviceKey: device, hubPSK: secret, devicePSK: secret)
        let echoed = Array(try q.hub.writeMessage().prefix(dh.publicKeyLength)) + [UInt8](repeating: 0, count: 16)
        #expect(throws: NoiseError(.reflectedKey, "")) { try q.hub.readMessage(echoed) }
    }

    @Test(arguments: NoiseDH.allCases)
    func truncatedAndTamperedMessagesAreRefused(_ dh: NoiseDH) throws {
        let secret = Self.psk()
        let device = dh.generateKeyPair()
        var p = try Self.pair(dh, deviceKey: device, hubPSK: secret, devicePSK: secret)
        let m1 = try p.hub.writeMessage()
        for length in [0, 1, dh.publicKeyLength - 1, dh.publicKeyLength, dh.publicKeyLength + 15] {
            var fresh = p.device
            #expect(throws: NoiseError.self, "length \(length)") { try fresh.readMessage(Array(m1.prefix(length))) }
        }
        var tampered = m1
        tampered[tampered.count - 1] ^= 0x80
        #expect(throws: NoiseError(.decryptionFailed, "")) { try p.device.readMessage(tampered) }
        #expect(throws: NoiseError(.reflectedKey, ""), "the hub's own first message echoed back") {
            try p.hub.readMessage(m1)
        }
        #expect(throws: NoiseError(.wrongState, ""), "the hub cannot write twice in a row") {
            var hub = p.hub
            _ = try hub.writeMessage()
        }
    }
}
