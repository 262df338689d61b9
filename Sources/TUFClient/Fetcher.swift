/// Fetches bytes from a repository. Implementations must stop and fail with
/// `UpdaterError.tooLarge` once more than `maxBytes` arrive (endless data attack,
/// TUF §5.3.3/§5.4.1/§5.5.1/§5.6.1 "download up to N bytes") and with `UpdaterError.timeout`
/// when the whole fetch takes too long (slow retrieval attack). A non-2xx answer is
/// `UpdaterError.httpStatus`.
public protocol Fetcher: Sendable {
    func fetch(_ url: String, maxBytes: Int) async throws -> [UInt8]

    /// Says that `fetch(url, maxBytes:)` comes next: a fetcher may send the request now, so that the answer travels
    /// while the caller does other work (the updater writes the file it accepted last), and hand that answer to the
    /// `fetch` of the same URL. It never reorders requests and never fails: an error is reported by that `fetch`.
    /// The default does nothing.
    func prepare(_ url: String) async
}

extension Fetcher {
    public func prepare(_ url: String) async {}
}

extension String {
    func leftPadded(to n: Int) -> String { String(repeating: "0", count: Swift.max(0, n - count)) + self }
}
