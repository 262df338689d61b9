import Gateway
import NIOCore
import Testing

@testable import Hub

/// The per-source rate limit is keyed by the socket's address as 16 bytes: IPv4 mapped into IPv6 space, IPv6 as is.
@Suite struct SourceAddressTests {
    @Test func socketAddressesBecomeFixedWidthKeys() throws {
        #expect(SourceAddress(try SocketAddress(ipAddress: "192.0.2.1", port: 1)) == SourceAddress(ipv4: 0xC000_0201))
        #expect(
            SourceAddress(try SocketAddress(ipAddress: "2001:db8::1", port: 1))
                == SourceAddress(high: 0x2001_0DB8_0000_0000, low: 1))
        #expect(SourceAddress(nil) == nil)
    }
}
