/// The parts of an `http[s]://host[:port]/path` URL a fetcher needs (`SocketFetcher` here, `HTTPFetcher` in
/// TUFClientNIO).
package struct HTTPURL {
    package let secure: Bool
    package let host: String
    package let port: Int
    package let path: String
    package let hostHeader: String

    package init(_ url: String) throws {
        let rest: Substring
        if url.hasPrefix("http://") {
            secure = false
            rest = url.dropFirst("http://".count)
        } else if url.hasPrefix("https://") {
            secure = true
            rest = url.dropFirst("https://".count)
        } else {
            throw UpdaterError.usage("only http:// and https:// URLs are supported")
        }
        let defaultPort = secure ? 443 : 80
        let authority = rest.prefix { $0 != "/" }
        let path = rest.dropFirst(authority.count)
        self.path = path.isEmpty ? "/" : String(path)
        hostHeader = String(authority)
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { throw UpdaterError.usage("bad URL host") }
            host = String(authority[authority.index(after: authority.startIndex)..<close])
            let after = authority[authority.index(after: close)...]
            port = after.hasPrefix(":") ? Int(after.dropFirst()) ?? -1 : defaultPort
        } else if let colon = authority.lastIndex(of: ":") {
            host = String(authority[..<colon])
            port = Int(authority[authority.index(after: colon)...]) ?? -1
        } else {
            host = String(authority)
            port = defaultPort
        }
        guard !host.isEmpty, (1...65535).contains(port) else { throw UpdaterError.usage("bad URL: \(url)") }
    }
}
