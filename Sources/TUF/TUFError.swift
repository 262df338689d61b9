/// The single error type of the `TUF` module.
///
/// Equality compares `code` only, so tests can match on the kind of failure while the
/// `reason` carries a short human-readable detail (never key material).
public struct TUFError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Stable failure categories.
    public enum Code: String, Sendable, Equatable {
        /// The bytes are not valid JSON (RFC 8259), or contain duplicate keys.
        case malformedJSON
        /// The JSON is valid but does not describe TUF metadata (TUF §4).
        case invalidMetadata
        /// A value cannot be encoded as canonical JSON (floats, lone surrogates).
        case notCanonicalizable
        /// The signature threshold was not reached (TUF §5.3.4 and siblings).
        case thresholdNotReached
        /// A key or signature could not be decoded or is of an unsupported type.
        case unsupportedKey
        /// `_type` does not match the role being loaded (TUF §4.3–§4.6 `_type`).
        case wrongType
        /// A version number check failed (rollback, mismatch with a snapshot or timestamp entry).
        case badVersion
        /// A new timestamp has the same version as the trusted one (TUF §5.4.3.2).
        case equalVersion
        /// Metadata is past its expiry (freeze attack, TUF §5.3.10, §5.4.4, §5.5.6, §5.6.6).
        case expired
        /// Length or hash does not match the trusted entry.
        case lengthOrHashMismatch
        /// The operation was called out of the workflow order.
        case workflowOrder
        /// Anything else a repository can do wrong (missing roles in snapshot, unknown delegations).
        case repository
    }

    public let code: Code
    public let reason: String

    public init(_ code: Code, _ reason: String) {
        self.code = code
        self.reason = reason
    }

    public static func == (lhs: TUFError, rhs: TUFError) -> Bool { lhs.code == rhs.code }

    public var description: String { "\(code.rawValue): \(reason)" }
}
