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
        let a = CorrelationID()
        let b = CorrelationID()
        #expect(a != b)
        #expect(a.rawValue.count == 24)
        #expect(a.rawValue.allSatisfy { $0.isHexDigit })
    }
}
