/// Errors of the pairing protocol above Noise. `code` is stable; `detail` never holds a secret.
public struct PairingError: Error, Equatable, CustomStringConvertible {
    public enum Code: String, Sendable {
        case invalidLabel, protocolViolation, handshakeFailed, badProofOfPossession, badConfirmation, lockedOut,
            notCommissionable, noClaim, unsupportedSuite, claimInUse
    }

    public let code: Code
    public let detail: String

    public init(_ code: Code, _ detail: String) {
        self.code = code
        self.detail = detail
    }

    public static func == (lhs: PairingError, rhs: PairingError) -> Bool { lhs.code == rhs.code }
    public var description: String { "\(code.rawValue): \(detail)" }
}
