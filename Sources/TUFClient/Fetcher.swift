/// Fetches bytes from a repository. Implementations must stop and fail with
/// `UpdaterError.tooLarge` once more than `maxBytes` arrive (endless data attack,
/// TUF §5.3.3/§5.4.1/§5.5.1/§5.6.1 "download up to N bytes") and with `UpdaterError.timeout`
/// when the whole fetch takes too long (slow retrieval attack). A non-2xx answer is
/// `UpdaterError.httpStatus`.
public protocol Fetcher: Sendable {
    func fetch(_ url: String, maxBytes: Int) async throws -> [UInt8]
}

extension String {
    func leftPadded(to n: Int) -> String { String(repeating: "0", count: Swift.max(0, n - count)) + self }
}
