/// Fetches bytes from a repository. Implementations must stop and fail with
/// `UpdaterError.tooLarge` once more than `maxBytes` arrive (endless data attack,
/// TUF §5.3.3/§5.4.1/§5.5.1/§5.6.1 "download up to N bytes") and with `UpdaterError.timeout`
/// when the whole fetch takes too long (slow retrieval attack). A non-2xx answer is
/// `UpdaterError.httpStatus`.
public protocol Fetcher: Sendable {
    func fetch(_ url: String, maxBytes: Int) async throws -> [UInt8]
}

/// Python's `urllib.parse.quote(s, safe="")`: percent-encodes every UTF-8 byte except
/// ASCII letters, digits and `_.-~`. Used for role names in URLs and file names so that
/// names like `../x` or `?` can neither escape a directory nor change a URL.
public func percentEncode(_ s: String) -> String {
    var out = ""
    for b in s.utf8 {
        switch b {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: "-"),
            UInt8(ascii: "~"):
            out.unicodeScalars.append(Unicode.Scalar(b))
        default:
            out += "%" + String(b, radix: 16, uppercase: true).leftPadded(to: 2)
        }
    }
    return out
}

extension String {
    func leftPadded(to n: Int) -> String { String(repeating: "0", count: Swift.max(0, n - count)) + self }
}
