#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// One endpoint a device's agent reported (`connections` event): a remote address it talks to, or a local port it
/// listens on. Addresses are IP literals as the agent read them from the kernel.
public struct Destination: Sendable, Hashable, CustomStringConvertible {
    public let listening: Bool
    public let proto: String
    public let address: String
    public let port: Int

    public init(listening: Bool, proto: String, address: String, port: Int) {
        self.listening = listening
        self.proto = proto
        self.address = address
        self.port = port
    }

    public var description: String {
        let host = address.contains(":") ? "[\(address)]" : address
        return listening ? "listen \(proto)/\(port) on \(host)" : "\(proto) \(host):\(port)"
    }
}

/// Why a rule does not parse.
public struct EgressRuleError: Error, Equatable, CustomStringConvertible {
    public let description: String
}

/// An allowed destination for a device class (`bulwark policy egress add CLASS RULE`): `ADDRESS[:PORT]`,
/// `CIDR[:PORT]` (IPv6 in brackets when a port follows: `[2001:db8::/32]:443`), or `listen:PORT` for a port the
/// device may listen on. Addresses, not host names: the agent reports what the kernel holds.
public struct EgressRule: Sendable, Hashable, CustomStringConvertible {
    enum Target: Hashable {
        case network(bytes: [UInt8], prefix: Int)
        case listen
    }
    let target: Target
    let port: Int?
    public let description: String

    public init(_ text: String) throws(EgressRuleError) {
        description = text
        if text.hasPrefix("listen:") {
            guard let port = Int(text.dropFirst("listen:".count)), (1...65535).contains(port) else {
                throw EgressRuleError(description: "listen:PORT needs a port 1-65535")
            }
            target = .listen
            self.port = port
            return
        }
        var network = Substring(text)
        var port: Int?
        if network.hasPrefix("[") {
            guard let close = network.firstIndex(of: "]") else { throw EgressRuleError(description: "unclosed [") }
            let rest = network[network.index(after: close)...]
            network = network[network.index(after: network.startIndex)..<close]
            if !rest.isEmpty {
                guard rest.hasPrefix(":"), let value = Int(rest.dropFirst()) else {
                    throw EgressRuleError(description: "a port follows ]: as :PORT")
                }
                port = value
            }
        } else if network.filter({ $0 == ":" }).count == 1, let colon = network.lastIndex(of: ":") {
            guard let value = Int(network[network.index(after: colon)...]) else {
                throw EgressRuleError(description: "the port is not a number")
            }
            port = value
            network = network[..<colon]
        }
        if let port, !(1...65535).contains(port) { throw EgressRuleError(description: "the port must be 1-65535") }
        var prefix: Int?
        if let slash = network.firstIndex(of: "/") {
            guard let value = Int(network[network.index(after: slash)...]) else {
                throw EgressRuleError(description: "the prefix length is not a number")
            }
            prefix = value
            network = network[..<slash]
        }
        guard let bytes = Self.parseAddress(String(network)) else {
            throw EgressRuleError(
                description: "\(network) is not an IP address (rules name addresses or CIDRs: the agent reports "
                    + "addresses, not host names)")
        }
        let length = prefix ?? bytes.count * 8
        guard (0...(bytes.count * 8)).contains(length) else {
            throw EgressRuleError(description: "the prefix length must be 0-\(bytes.count * 8)")
        }
        target = .network(bytes: bytes, prefix: length)
        self.port = port
    }

    /// Whether this rule allows `destination`.
    public func allows(_ destination: Destination) -> Bool {
        if let port, port != destination.port { return false }
        switch target {
        case .listen:
            return destination.listening
        case .network(let network, let prefix):
            guard !destination.listening, let address = Self.parseAddress(destination.address),
                address.count == network.count
            else { return false }
            var remaining = prefix
            for (a, b) in zip(address, network) where remaining > 0 {
                let bits = min(8, remaining)
                let mask = UInt8(truncatingIfNeeded: 0xFF << (8 - bits))
                if a & mask != b & mask { return false }
                remaining -= bits
            }
            return true
        }
    }

    /// The destinations none of `rules` allows. A class without rules has no policy: nothing is a violation.
    public static func violations(_ destinations: [Destination], rules: [EgressRule]) -> [Destination] {
        guard !rules.isEmpty else { return [] }
        return destinations.filter { destination in !rules.contains { $0.allows(destination) } }
    }

    /// Whether `text` is an IPv4 or IPv6 address literal.
    public static func isAddress(_ text: String) -> Bool { parseAddress(text) != nil }

    /// IPv4 (4 bytes) or IPv6 (16 bytes) from its text, through inet_pton (RFC 4291 §2.2 forms).
    static func parseAddress(_ text: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 { return withUnsafeBytes(of: &v4) { Array($0) } }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 { return withUnsafeBytes(of: &v6) { Array($0) } }
        return nil
    }
}
