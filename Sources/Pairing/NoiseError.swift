/// The one error type of the Noise layer. `code` is stable; `detail` is for operators' logs and never holds key
/// material. Equality compares `code` only.
public struct NoiseError: Error, Equatable, CustomStringConvertible {
    public enum Code: String, Sendable {
        /// A message is shorter than its pattern requires, or longer than 65535 bytes (Noise §3).
        case malformedMessage
        /// AEAD authentication failed: wrong key (e.g. wrong PSK or static key), tampering, or a replayed message.
        case decryptionFailed
        /// A public key is not a valid point, or a DH output is all zeros (Noise §12.1, §12.2).
        case invalidPublicKey
        /// The peer sent back one of our own public keys.
        case reflectedKey
        /// A method was called out of order (writing when it is the peer's turn, transport before the end).
        case wrongState
        /// 2^64-1 messages under one key (Noise §5.1).
        case nonceExhausted
        /// A key the pattern needs was not supplied (Noise §5.3 Initialize()).
        case missingKey
    }

    public let code: Code
    public let detail: String

    public init(_ code: Code, _ detail: String) {
        self.code = code
        self.detail = detail
    }

    public static func == (lhs: NoiseError, rhs: NoiseError) -> Bool { lhs.code == rhs.code }
    public var description: String { "\(code.rawValue): \(detail)" }
}
