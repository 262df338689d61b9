import Foundation

/// The pairing messages. Each travels in a frame with a 2-byte big-endian length (Noise §13); messages after the
/// Noise handshake travel inside the Noise transport. Fields are `type (1) ‖ length (2, big-endian) ‖ value`.
///
///     hub    → device  HubHello       "BWK1" ‖ version ‖ n ‖ suites offered        (clear, bound by the prologue)
///     device → hub     DeviceHello    version ‖ suite chosen ‖ id length ‖ id       (clear, bound by the prologue)
///     hub    → device  Noise XKpsk3 message 1  (-> e, es)
///     device → hub     Noise XKpsk3 message 2  (<- e, ee)
///     hub    → device  Noise XKpsk3 message 3  (-> s, se, psk)
///     device → hub     CSRRequest     operational public key, PKCS#10 CSR, signature over the handshake hash
///     hub    → device  Credentials    certificate, CA certificate, pins, IRK, [TUF root]
///     device → hub     Confirmation   HMAC over the transcript of the two messages above
enum PairingWire {
    static let magic = Array("BWK1".utf8)
    static let version: UInt8 = 1
    /// The prologue binds the protocol version, the suites offered and chosen, and the device id (both hellos).
    static func prologue(hubHello: [UInt8], deviceHello: [UInt8]) -> [UInt8] {
        Array("bulwark pair/1".utf8) + [0] + hubHello + deviceHello
    }
    static let csrBindingLabel = Array("bulwark pair csr/1".utf8)
    static let confirmLabel = "bulwark pair confirm/1"

    static func fields(_ values: [(UInt8, [UInt8])]) -> [UInt8] {
        var out: [UInt8] = []
        for (type, value) in values {
            out.append(type)
            out.append(UInt8(value.count >> 8))
            out.append(UInt8(value.count & 0xFF))
            out += value
        }
        return out
    }

    /// Parses fields; a field longer than the rest, or a truncated header, is malformed.
    static func parseFields(_ bytes: [UInt8]) throws(PairingError) -> [(UInt8, [UInt8])] {
        var result: [(UInt8, [UInt8])] = []
        var index = 0
        while index < bytes.count {
            guard index + 3 <= bytes.count else { throw PairingError(.protocolViolation, "truncated field header") }
            let type = bytes[index]
            let length = Int(bytes[index + 1]) << 8 | Int(bytes[index + 2])
            index += 3
            guard index + length <= bytes.count else { throw PairingError(.protocolViolation, "truncated field") }
            result.append((type, Array(bytes[index..<(index + length)])))
            index += length
        }
        return result
    }
}

/// What the hub gives a paired device: every trust anchor it needs, in one step.
public struct PairingCredentials: Sendable, Equatable {
    public var certificateDER: [UInt8]
    public var caCertificateDER: [UInt8]
    /// SHA-256 of SubjectPublicKeyInfo (`pin-sha256`), at least two: the key in use and a backup not in use.
    public var pins: [[UInt8]]
    public var irk: [UInt8]
    public var tufRoot: [UInt8]?

    public init(certificateDER: [UInt8], caCertificateDER: [UInt8], pins: [[UInt8]], irk: [UInt8], tufRoot: [UInt8]?) {
        self.certificateDER = certificateDER
        self.caCertificateDER = caCertificateDER
        self.pins = pins
        self.irk = irk
        self.tufRoot = tufRoot
    }

    var encoded: [UInt8] {
        var values: [(UInt8, [UInt8])] = [(1, certificateDER), (2, caCertificateDER)]
        values += pins.map { (3, $0) }
        values.append((4, irk))
        if let tufRoot { values.append((5, tufRoot)) }
        return PairingWire.fields(values)
    }

    init(decoding bytes: [UInt8]) throws(PairingError) {
        var certificate: [UInt8]?
        var ca: [UInt8]?
        var irk: [UInt8]?
        var root: [UInt8]?
        var pins: [[UInt8]] = []
        for (type, value) in try PairingWire.parseFields(bytes) {
            switch type {
            case 1: certificate = value
            case 2: ca = value
            case 3: pins.append(value)
            case 4: irk = value
            case 5: root = value
            default: throw PairingError(.protocolViolation, "unknown credentials field")
            }
        }
        guard let certificate, let ca, let irk, irk.count == 16, pins.count >= 2, pins.allSatisfy({ $0.count == 32 })
        else { throw PairingError(.protocolViolation, "credentials incomplete (certificate, CA, two pins, IRK)") }
        self.init(certificateDER: certificate, caCertificateDER: ca, pins: pins, irk: irk, tufRoot: root)
    }
}
