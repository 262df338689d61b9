public import Core
public import Crypto
import Foundation

/// The factory label: everything the hub needs to pair with one device, printed as text and as a QR code.
///
///     BWK1:<base32(version ‖ suite ‖ idLength ‖ deviceID ‖ publicKey ‖ S ‖ checksum)>
///
/// - version: 1; suite: 1 = `P256_AESGCM_SHA256`, 2 = `25519_AESGCM_SHA256`;
/// - publicKey: the device's static identity key: SEC1 compressed (33 bytes) for P-256, 32 bytes for X25519;
/// - S: the 128-bit setup secret (the pre-shared key is derived from it, it never crosses the wire);
/// - checksum: the first 4 bytes of SHA-256 over everything before it (catches typing errors, not forgery).
///
/// Base32 is RFC 4648 upper case without padding, inside the QR alphanumeric set. Device ids on labels are limited
/// to 32 characters so that a label is at most 146 characters: a QR code of version 6 at error correction M.
public struct PairingLabel: Sendable, Equatable {
    public enum Suite: UInt8, Sendable, CaseIterable {
        case p256AESGCMSHA256 = 1
        case x25519AESGCMSHA256 = 2

        public var dh: NoiseDH { self == .p256AESGCMSHA256 ? .p256 : .x25519 }
        public var name: String { self == .p256AESGCMSHA256 ? "P256_AESGCM_SHA256" : "25519_AESGCM_SHA256" }
    }

    public static let prefix = "BWK1:"
    public static let version: UInt8 = 1
    public static let maximumDeviceIDLength = 32

    public let suite: Suite
    public let deviceID: DeviceID
    /// The static key in the Noise encoding of the suite (65-byte uncompressed point for P-256).
    public let publicKey: [UInt8]
    public let setupSecret: [UInt8]

    public init(suite: Suite, deviceID: DeviceID, publicKey: [UInt8], setupSecret: [UInt8]) throws(PairingError) {
        guard deviceID.rawValue.utf8.count <= Self.maximumDeviceIDLength else {
            throw PairingError(.invalidLabel, "device ids on labels are at most 32 characters")
        }
        guard setupSecret.count == 16 else { throw PairingError(.invalidLabel, "the setup secret is 128 bits") }
        guard publicKey.count == suite.dh.publicKeyLength else {
            throw PairingError(.invalidLabel, "public key has the wrong length for the suite")
        }
        self.suite = suite
        self.deviceID = deviceID
        self.publicKey = publicKey
        self.setupSecret = setupSecret
    }

    /// The label text.
    public var text: String {
        var bytes: [UInt8] = [Self.version, suite.rawValue, UInt8(deviceID.rawValue.utf8.count)]
        bytes += Array(deviceID.rawValue.utf8)
        bytes += encodedKey
        bytes += setupSecret
        bytes += Array(SHA256.hash(data: bytes).prefix(4))
        return Self.prefix + Base32.encode(bytes)
    }

    private var encodedKey: [UInt8] {
        guard suite == .p256AESGCMSHA256, let key = try? P256.KeyAgreement.PublicKey(x963Representation: publicKey)
        else { return publicKey }
        return Array(key.compressedRepresentation)
    }

    /// Parses a label, refusing anything malformed with a short reason (the text may come from a camera).
    public init(text: String) throws(PairingError) {
        let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines).uppercased()
        guard trimmed.hasPrefix(Self.prefix), let bytes = Base32.decode(String(trimmed.dropFirst(Self.prefix.count)))
        else { throw PairingError(.invalidLabel, "not a BWK1 label") }
        guard bytes.count > 4 + 3 else { throw PairingError(.invalidLabel, "label too short") }
        let body = Array(bytes.dropLast(4))
        guard Array(SHA256.hash(data: body).prefix(4)) == Array(bytes.suffix(4)) else {
            throw PairingError(.invalidLabel, "label checksum does not match (mistyped?)")
        }
        guard body[0] == Self.version else { throw PairingError(.invalidLabel, "unsupported label version") }
        guard let suite = Suite(rawValue: body[1]) else { throw PairingError(.invalidLabel, "unknown suite") }
        let idLength = Int(body[2])
        let keyLength = suite == .p256AESGCMSHA256 ? 33 : 32
        guard body.count == 3 + idLength + keyLength + 16 else {
            throw PairingError(.invalidLabel, "label length does not match its fields")
        }
        guard let idText = String(bytes: body[3..<(3 + idLength)], encoding: .utf8),
            let deviceID = try? DeviceID(idText)
        else { throw PairingError(.invalidLabel, "invalid device id") }
        let keyBytes = Array(body[(3 + idLength)..<(3 + idLength + keyLength)])
        let publicKey: [UInt8]
        if suite == .p256AESGCMSHA256 {
            guard let key = try? P256.KeyAgreement.PublicKey(compressedRepresentation: keyBytes) else {
                throw PairingError(.invalidLabel, "public key is not a P-256 point")
            }
            publicKey = Array(key.x963Representation)
        } else {
            publicKey = keyBytes
        }
        try self.init(suite: suite, deviceID: deviceID, publicKey: publicKey, setupSecret: Array(body.suffix(16)))
    }

    /// The Noise pre-shared key: HKDF-SHA256(S, info "bulwark pair psk"), 32 bytes (RFC 5869, empty salt).
    public var psk: [UInt8] { Self.psk(setupSecret: setupSecret) }

    public static func psk(setupSecret: [UInt8]) -> [UInt8] {
        HKDF<SHA256>.deriveKey(
            inputKeyMaterial: SymmetricKey(data: setupSecret), info: Array("bulwark pair psk".utf8),
            outputByteCount: 32
        ).withUnsafeBytes { Array($0) }
    }
}

/// RFC 4648 §6 base32, upper case, no padding.
enum Base32 {
    static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567".utf8)

    static func encode(_ bytes: [UInt8]) -> String {
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
        }
        if bits > 0 { output.append(alphabet[Int((buffer << UInt32(5 - bits)) & 31)]) }
        return String(decoding: output, as: UTF8.self)
    }

    static func decode(_ text: String) -> [UInt8]? {
        var output: [UInt8] = []
        var buffer: UInt32 = 0
        var bits = 0
        for character in text.utf8 {
            guard let value = alphabet.firstIndex(of: character) else { return nil }
            buffer = (buffer << 5) | UInt32(value)
            bits += 5
            if bits >= 8 {
                output.append(UInt8((buffer >> UInt32(bits - 8)) & 0xFF))
                bits -= 8
            }
        }
        // Leftover bits must be zero padding (canonical encoding only).
        guard bits < 5, buffer & ((1 << UInt32(bits)) - 1) == 0 else { return nil }
        return output
    }
}
