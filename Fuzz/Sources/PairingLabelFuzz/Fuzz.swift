import Core
import Crypto
import Foundation
import FuzzSupport
import Pairing

/// `PairingLabel(text:)`, the factory label a camera or an operator's keyboard hands to the hub.
///
/// First byte bit 0 clear: the rest is the label text. Set: the rest is the label body (version, suite, id length,
/// id, key, secret); the target appends the SHA-256 checksum and writes `BWK1:` and base32 itself, so the fuzzer gets
/// past the checksum to the field checks (bit 1 lower-cases the text, bit 2 surrounds it with whitespace).
/// Invariants: an accepted label's own text parses to an equal label, that text is the input made canonical
/// (trimmed, upper case: one label has one text), and its fields obey the format's limits.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = FuzzSupport.bytes(data, size)
    guard let mode = input.first else { return 0 }
    let text: String
    if mode & 1 == 0 {
        text = String(decoding: input.dropFirst(), as: UTF8.self)
    } else {
        let body = Array(input.dropFirst())
        var label = PairingLabel.prefix + base32(body + Array(SHA256.hash(data: body).prefix(4)))
        if mode & 2 != 0 { label = label.lowercased() }
        if mode & 4 != 0 { label = " \t" + label + "\r\n" }
        text = label
    }
    guard let label = try? PairingLabel(text: text) else { return 0 }
    FuzzSupport.trace("label accepted")
    let canonical = label.text
    guard canonical == text.trimmingCharacters(in: .whitespacesAndNewlines).uppercased() else {
        FuzzSupport.violated("an accepted label is not in its canonical form: \(text.debugDescription)")
    }
    guard let again = try? PairingLabel(text: canonical), again == label, again.text == canonical else {
        FuzzSupport.violated("a label's own text does not parse back to it")
    }
    guard label.deviceID.rawValue.utf8.count <= PairingLabel.maximumDeviceIDLength, label.setupSecret.count == 16,
        label.publicKey.count == label.suite.dh.publicKeyLength, label.psk.count == 32,
        canonical.utf8.count <= 146
    else { FuzzSupport.violated("an accepted label breaks the format's limits") }
    return 0
}

/// RFC 4648 base32, upper case, no padding (the label's alphabet).
func base32(_ bytes: [UInt8]) -> String {
    let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567".utf8)
    var output: [UInt8] = []
    var buffer: UInt32 = 0
    var bits = 0
    for byte in bytes {
        buffer = (buffer << 8) | UInt32(byte)
        bits += 8
        while bits >= 5 {
            output.append(alphabet[Int((buffer >> UInt32(bits - 5)) & 31)])
            bits -= 5
        }
        buffer &= (1 << UInt32(bits)) - 1
    }
    if bits > 0 { output.append(alphabet[Int((buffer << UInt32(5 - bits)) & 31)]) }
    return String(decoding: output, as: UTF8.self)
}

@_cdecl("LLVMFuzzerInitialize")
public func initialize(_ argc: FuzzArgc, _ argv: FuzzArgv) -> CInt {
    FuzzSupport.writeSeedsIfRequested {
        var seeds: [[UInt8]] = []
        let secret = FuzzSupport.testBytes("label-secret", count: 16)
        let p256 = try! P256.KeyAgreement.PrivateKey(rawRepresentation: FuzzSupport.testBytes("label-p256")).publicKey
        let x25519 = try! Curve25519.KeyAgreement.PrivateKey(rawRepresentation: FuzzSupport.testBytes("label-x25519"))
        for (suite, key, id) in [
            (PairingLabel.Suite.p256AESGCMSHA256, Array(p256.x963Representation), "dev-1"),
            (.x25519AESGCMSHA256, Array(x25519.publicKey.rawRepresentation), "sensor.kitchen_02-A"),
            (.p256AESGCMSHA256, Array(p256.x963Representation), String(repeating: "a", count: 32)),
        ] {
            let label = try! PairingLabel(
                suite: suite, deviceID: try! DeviceID(id), publicKey: key, setupSecret: secret)
            seeds.append([0] + Array(label.text.utf8))
            seeds.append([0] + Array(" \(label.text.lowercased())\n".utf8))
            // The body, for the checksum-fixing mode.
            var body: [UInt8] = [1, suite.rawValue, UInt8(id.utf8.count)] + Array(id.utf8)
            body += suite == .p256AESGCMSHA256 ? Array(p256.compressedRepresentation) : key
            body += secret
            seeds.append([1] + body)
            seeds.append([7] + body)
        }
        seeds.append([0] + Array("BWK1:".utf8))
        seeds.append([1, 1, 2, 0])
        return seeds
    }
    return 0
}
