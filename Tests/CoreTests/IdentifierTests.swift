import Testing

@testable import Core

@Suite struct IdentifierTests {
    @Test(arguments: ["sensor-1", "A", "cam.front_door-2", String(repeating: "x", count: 64)])
    func acceptsValidDeviceIDs(_ text: String) throws {
        #expect(try DeviceID(text).rawValue == text)
    }

    @Test(arguments: [
        "", "-lead", ".hidden", "a/b", "a+b", "a#b", "a:b", "a b", "é", String(repeating: "x", count: 65), "a\u{0}",
    ])
    func refusesDeviceIDsThatCouldBeSeparators(_ text: String) {
        #expect(throws: IdentifierError.self) { try DeviceID(text) }
    }

    @Test func parsesOnlyBulwarkIdentityURIs() throws {
        #expect(Identity(uri: "urn:bulwark:device:sensor-1") == .device(try DeviceID("sensor-1")))
        #expect(Identity(uri: "urn:bulwark:operator:admin") == .operator(try OperatorName("admin")))
        #expect(Identity(uri: "urn:bulwark:device:") == nil)
        #expect(Identity(uri: "urn:bulwark:device:a/b") == nil)
        #expect(Identity(uri: "urn:other:device:x") == nil)
        #expect(Identity(uri: "URN:bulwark:device:x") == nil)
    }

    /// 15 characters of the URL-safe Base64 alphabet, each position taking every one of its values (the first 32,
    /// `A-Z a-f`: never `-`, which a command reads as an option; the others 64): no part of the 89 bits is left zero
    /// or fixed. Fifteen bytes: a string Swift holds inline, without an allocation.
    @Test func correlationIDsAreRandomBase64URL() {
        let alphabet = Set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)
        let first = Set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef".utf8)
        let ids = (0..<4096).map { _ in CorrelationID().rawValue }
        #expect(Set(ids).count == ids.count)
        #expect(ids.allSatisfy { $0.utf8.count == 15 && $0.utf8.allSatisfy(alphabet.contains) })
        #expect(Set(ids.map { $0.utf8.first! }) == first)
        for position in 1..<15 {
            let seen = Set(ids.map { $0.utf8[$0.utf8.index($0.utf8.startIndex, offsetBy: position)] })
            #expect(seen.count == 64, "position \(position)")
        }
    }

    /// Known answers: all bits set, none, and one pattern, against RFC 4648 §5's table.
    @Test func correlationIDBitsInOrder() {
        #expect(CorrelationID(high: .max, low: .max).rawValue == "f" + String(repeating: "_", count: 14))
        #expect(CorrelationID(high: 0, low: 0).rawValue == String(repeating: "A", count: 15))
        // 0b00001 000010 ... : the high 5 bits 1, the next 54 as the sixes 2...10, its last 5 bits 0b10111 then the
        // low 25 bits 0b1_000011_000100_000101_000110 make the sixes 0b101111, 3, 4, 5, 6.
        var high: UInt64 = 1
        for six in 2...10 { high = high << 6 | UInt64(six) }
        high = high << 5 | 0b10111
        let low: UInt32 = 0b1 << 24 | 3 << 18 | 4 << 12 | 5 << 6 | 6
        #expect(CorrelationID(high: high, low: low).rawValue == "BCDEFGHIJKvDEFG")
    }

    /// The pool behind `CorrelationID()` hands each byte out once, also across its refills and to several threads at
    /// once: 16,000 draws from 8 threads (750 refills of its 256 bytes) are all distinct, and no 32-bit word of them is
    /// zero more often than chance allows (a refill that failed to write would leave zeros).
    @Test func theRandomPoolHandsOutEachDrawOnce() async {
        let pool = RandomPool()
        let draws = await withTaskGroup(of: [String].self) { group in
            for _ in 0..<8 {
                group.addTask {
                    (0..<2_000).map { _ in
                        let (high, low) = pool.next96()
                        return String(high, radix: 16) + "/" + String(low, radix: 16)
                    }
                }
            }
            var all: [String] = []
            for await part in group { all += part }
            return all
        }
        #expect(draws.count == 16_000 && Set(draws).count == 16_000)
        #expect(draws.filter { $0.hasSuffix("/0") }.count < 3)
    }
}
