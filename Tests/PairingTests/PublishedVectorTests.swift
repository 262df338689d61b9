import Crypto
import Foundation
import Pairing
import Testing

/// Our own known-answer vectors for the P-256 suite, in the cacophony format, published in `vectors/`.
///
/// Regenerate (only when the protocol changes on purpose):
/// `REGENERATE_VECTORS=1 swift test --filter PublishedVectorTests`
@Suite struct PublishedVectorTests {
    static let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("vectors/noise-xkpsk3-p256-aesgcm-sha256.json")

    /// Fixed keys: SHA-256 of a label, each a valid P-256 scalar.
    static func key(_ label: String) -> [UInt8] { Array(SHA256.hash(data: Array("bulwark vector \(label)".utf8))) }

    static func generate() throws -> [String: Any] {
        let prologue = Array("Bulwark pairing test vector".utf8)
        let psk = key("psk")
        let initiatorStatic = try NoiseDH.p256.keyPair(privateKey: key("init static"))
        let responderStatic = try NoiseDH.p256.keyPair(privateKey: key("resp static"))
        let initiatorEphemeral = try NoiseDH.p256.keyPair(privateKey: key("init ephemeral"))
        let responderEphemeral = try NoiseDH.p256.keyPair(privateKey: key("resp ephemeral"))
        var initiator = try HandshakeState(
            pattern: .xkpsk3, dh: .p256, cipher: .aesGCM, initiator: true, prologue: prologue,
            staticKeyPair: initiatorStatic, remoteStaticKey: responderStatic.publicKey, psks: [psk],
            ephemeral: { initiatorEphemeral })
        var responder = try HandshakeState(
            pattern: .xkpsk3, dh: .p256, cipher: .aesGCM, initiator: false, prologue: prologue,
            staticKeyPair: responderStatic, psks: [psk], ephemeral: { responderEphemeral })
        let payloads = ["Ludwig von Mises", "Murray Rothbard", "F. A. Hayek", "Carl Menger", "Jean-Baptiste Say"]
        var messages: [[String: String]] = []
        var initiatorTransport: TransportState?
        var responderTransport: TransportState?
        for (index, text) in payloads.enumerated() {
            let payload = Array(text.utf8)
            let ciphertext: [UInt8]
            if index < 3 {
                if index % 2 == 0 {
                    ciphertext = try initiator.writeMessage(payload)
                    _ = try responder.readMessage(ciphertext)
                } else {
                    ciphertext = try responder.writeMessage(payload)
                    _ = try initiator.readMessage(ciphertext)
                }
                if index == 2 {
                    initiatorTransport = try initiator.transport()
                    responderTransport = try responder.transport()
                }
            } else if index % 2 == 0 {
                ciphertext = try initiatorTransport!.encrypt(payload)
            } else {
                ciphertext = try responderTransport!.encrypt(payload)
            }
            messages.append(["payload": hexString(payload), "ciphertext": hexString(ciphertext)])
        }
        return [
            "protocol_name": initiator.protocolName,
            "encoding": "public keys: SEC1 uncompressed (65 bytes); private keys: 32-byte big-endian scalars; "
                + "DH output: 32-byte big-endian x-coordinate of the shared point",
            "init_prologue": hexString(prologue), "init_psks": [hexString(psk)],
            "init_static": hexString(initiatorStatic.privateKey),
            "init_ephemeral": hexString(initiatorEphemeral.privateKey),
            "init_remote_static": hexString(responderStatic.publicKey),
            "resp_prologue": hexString(prologue), "resp_psks": [hexString(psk)],
            "resp_static": hexString(responderStatic.privateKey),
            "resp_ephemeral": hexString(responderEphemeral.privateKey),
            "handshake_hash": hexString(initiator.handshakeHash), "messages": messages,
        ]
    }

    static let ridPath = path.deletingLastPathComponent().appendingPathComponent("rid.json")

    /// RID = Trunc80(HMAC-SHA256(IRK, "bulwark-rid/1" ‖ epoch as 8 bytes big-endian)), epoch = ⌊unix / 900⌋.
    static func generateRIDs() -> [String: Any] {
        let irks = [[UInt8](0..<16), key("irk").prefix(16).map { $0 }]
        var cases: [[String: Any]] = []
        for irk in irks {
            for unix: Int64 in [0, 899, 900, 1_764_000_000, 4_102_444_800] {
                let epoch = RotatingIdentifier.epoch(unixSeconds: unix)
                let rid = RotatingIdentifier.rid(irk: irk, epoch: epoch)
                cases.append([
                    "irk": hexString(irk), "unix_seconds": unix, "epoch": epoch, "rid": hexString(rid),
                    "rid_text": RotatingIdentifier.text(rid),
                ])
            }
        }
        return [
            "definition": "RID = Trunc80(HMAC-SHA256(IRK, \"bulwark-rid/1\" || epoch as 8-byte big-endian)); "
                + "epoch = floor(unix_seconds / 900); rid_text = lower-case RFC 4648 base32 of the 10 bytes",
            "vectors": cases,
        ]
    }

    @Test func thePublishedRIDVectorsMatch() throws {
        let generated = try JSONSerialization.data(
            withJSONObject: Self.generateRIDs(), options: [.prettyPrinted, .sortedKeys])
        if ProcessInfo.processInfo.environment["REGENERATE_VECTORS"] == "1" { try generated.write(to: Self.ridPath) }
        #expect(try Data(contentsOf: Self.ridPath) == generated, "vectors/rid.json differs from the implementation")
    }

    @Test func thePublishedP256VectorMatches() throws {
        let generated = try JSONSerialization.data(
            withJSONObject: ["vectors": [try Self.generate()]], options: [.prettyPrinted, .sortedKeys])
        if ProcessInfo.processInfo.environment["REGENERATE_VECTORS"] == "1" {
            try generated.write(to: Self.path)
        }
        let published = try Data(contentsOf: Self.path)
        #expect(published == generated, "vectors/ differs from what the implementation computes")
    }
}

func hexString(_ bytes: [UInt8]) -> String { bytes.map { String(format: "%02x", $0) }.joined() }
