import Testing

@testable import Gateway

@Suite struct EgressTests {
    func out(_ address: String, _ port: Int, proto: String = "tcp") -> Destination {
        Destination(listening: false, proto: proto, address: address, port: port)
    }

    @Test func rulesParseAndMatch() throws {
        let cidr = try EgressRule("203.0.113.0/24:443")
        #expect(cidr.allows(out("203.0.113.77", 443)))
        #expect(!cidr.allows(out("203.0.113.77", 80)), "another port")
        #expect(!cidr.allows(out("203.0.114.1", 443)), "outside the prefix")
        let host = try EgressRule("198.51.100.7")
        #expect(host.allows(out("198.51.100.7", 8080)) && !host.allows(out("198.51.100.8", 8080)))
        let v6 = try EgressRule("[2001:db8::/32]:443")
        #expect(v6.allows(out("2001:db8:1::5", 443)) && !v6.allows(out("2001:db9::5", 443)))
        #expect(!v6.allows(out("203.0.113.77", 443)), "families do not mix")
        let odd = try EgressRule("10.0.0.0/9")
        #expect(odd.allows(out("10.127.0.1", 1)) && !odd.allows(out("10.128.0.1", 1)), "a prefix inside a byte")
        let listen = try EgressRule("listen:22")
        #expect(listen.allows(Destination(listening: true, proto: "tcp", address: "0.0.0.0", port: 22)))
        #expect(!listen.allows(Destination(listening: true, proto: "tcp", address: "0.0.0.0", port: 23)))
        #expect(!listen.allows(out("0.0.0.0", 22)), "listen rules are for listening sockets only")
        #expect(!cidr.allows(Destination(listening: true, proto: "tcp", address: "203.0.113.1", port: 443)))
    }

    @Test(arguments: ["hub.example.net:443", "10.0.0.0/33", "1.2.3.4:0", "1.2.3.4:70000", "listen:x", "[::1", ""])
    func badRulesAreRefused(_ text: String) {
        #expect(throws: EgressRuleError.self) { try EgressRule(text) }
    }

    @Test func aClassWithoutRulesHasNoPolicy() throws {
        let seen = [out("203.0.113.77", 443), out("198.51.100.7", 8080)]
        #expect(EgressRule.violations(seen, rules: []).isEmpty)
        #expect(EgressRule.violations(seen, rules: [try EgressRule("203.0.113.0/24:443")]) == [seen[1]])
    }
}
