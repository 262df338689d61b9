import TUF

/// The error type of the `TUFClient` module.
public enum UpdaterError: Error, Sendable, CustomStringConvertible {
    /// The repository answered with a non-success HTTP status.
    case httpStatus(Int, url: String)
    /// More bytes than allowed arrived (endless data attack, TUF §5.3.3 and siblings).
    case tooLarge(limit: Int, url: String)
    /// The fetch did not finish in time (slow retrieval attack).
    case timeout(url: String)
    /// Connection or protocol failure.
    case transport(String)
    /// Verification failed.
    case metadata(TUFError)
    /// Reading or writing local state failed.
    case storage(String)
    /// The target is not listed by any role trusted for it.
    case targetNotFound(String)
    /// Invalid use of the API (missing base URL, bad URL).
    case usage(String)

    public var description: String {
        switch self {
        case .httpStatus(let s, let url): return "HTTP status \(s) for \(url)"
        case .tooLarge(let limit, let url): return "response from \(url) exceeds \(limit) bytes"
        case .timeout(let url): return "timed out fetching \(url)"
        case .transport(let m): return "transport error: \(m)"
        case .metadata(let e): return "metadata rejected: \(e)"
        case .storage(let m): return "storage error: \(m)"
        case .targetNotFound(let t): return "target not found: \(t)"
        case .usage(let m): return m
        }
    }
}
