/// The error type of the `TUFRepository` module: a stable code plus a short reason.
/// Reasons never contain key material (only key ids, role names and file names).
public struct RepositoryError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: String, Sendable {
        /// A file could not be read or written.
        case io
        /// A private key file is missing, unreadable or of an unsupported type.
        case key
        /// The repository on disk is missing or inconsistent.
        case repository
        /// The request does not make sense for this repository (unknown role, bad path...).
        case usage
        /// Not enough valid signatures to publish a role (TUF §5.3.4, §5.4.2, §5.5.3, §5.6.3).
        case threshold
    }

    public let code: Code
    public let reason: String

    public init(_ code: Code, _ reason: String) {
        self.code = code
        self.reason = reason
    }

    public static func == (a: RepositoryError, b: RepositoryError) -> Bool { a.code == b.code }

    public var description: String { reason }
}
