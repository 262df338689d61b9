import Core
import Testing

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

    @Test func correlationIDsAreRandomHex() {
        let ids = (0..<4096).map { _ in CorrelationID().rawValue }
        #expect(Set(ids).count == ids.count)
        #expect(
            ids.allSatisfy {
                $0.utf8.count == 24 && $0.utf8.allSatisfy { (48...57).contains($0) || (97...102).contains($0) }
            })
        // Every digit position takes all 16 values: no half of the 96 bits is left zero or fixed.
        for position in 0..<24 {
            let seen = Set(ids.map { $0.utf8[$0.utf8.index($0.utf8.startIndex, offsetBy: position)] })
            #expect(seen.count == 16, "position \(position)")
        }
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
