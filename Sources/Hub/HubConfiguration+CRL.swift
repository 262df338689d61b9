import Foundation
import PKI

extension HubConfiguration {
    /// The URL every certificate the hub issues names as its CRL distribution point (RFC 5280 §4.2.1.13), when the
    /// plain CRL listener is on: `http://<pki.crlAddress>/crl` (with the first `hub.names` entry in place of an address
    /// that binds every interface). Plain HTTP is what RFC 5280 §4.2.1.13 expects: the CRL is signed, and a relying
    /// party must not need a TLS connection (whose certificate it may be checking) to fetch it. Without
    /// `pki.crlAddress` certificates name no distribution point: the operator API's `/v1/crl` needs a client
    /// certificate, and a relying party that fails hard on an unreachable CRL would refuse every certificate.
    public var crlDistributionPointURL: String? {
        guard let crl = crlAddress else { return nil }
        let host = Self.bindsEveryInterface(crl.host) ? (hubNames.first ?? crl.host) : crl.host
        return "http://\(Self.urlHost(host)):\(crl.port)/crl"
    }

    public var crlDistributionPoints: CRLDistributionPoints? {
        get throws {
            guard let url = crlDistributionPointURL else { return nil }
            do { return try CRLDistributionPoints(uri: url) } catch {
                throw HubStartupError("the CRL URL \(url) is not usable: \(error.detail)")
            }
        }
    }

    /// `host:port` or `[v6-address]:port`, port 1-65535.
    static func crlListener(_ text: String) throws -> Listener {
        let refusal = HubStartupError("pki.crlAddress must be host:port (an IPv6 address in brackets), port 1-65535")
        guard let colon = text.lastIndex(of: ":") else { throw refusal }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty, !host.contains("/"), !host.contains(" "),
            let port = Int(text[text.index(after: colon)...]),
            (1...65535).contains(port)
        else { throw refusal }
        return Listener(host: host, port: port)
    }

    func validateCRL() throws {
        guard (1...365).contains(crlValidityDays) else { throw HubStartupError("pki.crlValidityDays must be 1-365") }
        if let crl = crlAddress {
            guard (1...65535).contains(crl.port) else { throw HubStartupError("pki.crlAddress port must be 1-65535") }
            guard !Self.bindsEveryInterface(crl.host) || !hubNames.isEmpty else {
                throw HubStartupError(
                    "pki.crlAddress binds every interface: set hub.names so certificates can name where the CRL is")
            }
        }
        _ = try crlDistributionPoints
    }

    public static func bindsEveryInterface(_ host: String) -> Bool {
        ["0.0.0.0", "::"].contains(host)
    }

    private static func urlHost(_ host: String) -> String {
        host.contains(":") ? "[\(host)]" : host
    }
}
