/// The one error type of the PKI module. `code` is stable and safe to show; `detail` is for operators' logs only.
public struct PKIError: Error, Equatable, CustomStringConvertible {
    public enum Code: String, Sendable {
        case badCSRSignature, unsupportedKey, invalidRequest, issuance, keyMismatch, malformed, noIdentity
        /// The CA key's token did not sign (unplugged, reset, login refused): nothing was issued; retry later.
        case keyUnavailable
    }

    public let code: Code
    public let detail: String

    public init(_ code: Code, _ detail: String) {
        self.code = code
        self.detail = detail
    }

    public static func == (lhs: PKIError, rhs: PKIError) -> Bool { lhs.code == rhs.code }
    public var description: String { "\(code.rawValue): \(detail)" }
}
