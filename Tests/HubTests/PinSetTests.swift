import Foundation
import HubClient
import Testing

/// The pin set document and the device's rule for taking one (pure: no sockets).
struct PinSetTests {
    static func pin(_ byte: UInt8) -> [UInt8] { [UInt8](repeating: byte, count: 32) }
    let a = pin(1), b = pin(2), c = pin(3), x = pin(9)

    @Test func theDocumentRoundTripsAndIsStrict() throws {
        let set = PinSet(version: 7, pins: [a, b])
        #expect(try PinSet(json: set.json) == set)
        let aText = Data(a).base64EncodedString()
        for bad in [
            #"{"pins":["\#(aText)"]}"#, #"{"pins":["\#(aText)"],"version":1,"extra":1}"#,
            #"{"pins":["\#(aText)"],"version":0}"#, #"{"pins":["\#(aText)"],"version":1.5}"#,
            #"{"pins":["\#(aText)"],"version":"2"}"#, #"{"pins":[],"version":1}"#,
            #"{"pins":["AAAA"],"version":1}"#, #"{"pins":["\#(aText)","\#(aText)"],"version":1}"#,
            #"{"pins":[1],"version":1}"#, #"{"pins":["\#(aText)"],"version":1,"version":2}"#, "[]", "",
        ] {
            #expect(throws: PinSetError.self, "\(bad)") { try PinSet(json: Array(bad.utf8)) }
        }
        let seventeen = (0..<17).map { Self.pin(UInt8($0)) }
        #expect(throws: PinSetError.self) { try PinSet(json: PinSet(version: 1, pins: seventeen).json) }
        let sixteen = PinSet(version: 1, pins: Array(seventeen.prefix(16)))
        #expect(try PinSet(json: sixteen.json) == sixteen, "seven nodes' pairs and a rotating key")
    }

    let y = pin(8), z = pin(7)

    func decide(_ version: Int, _ pins: [[UInt8]], held: [[UInt8]], _ heldVersion: Int, presented: [UInt8])
        -> PinSet.Decision
    {
        PinSet.evaluate(
            .init(version: version, pins: pins), currentPins: held, currentVersion: heldVersion, presented: presented)
    }

    @Test func theRotationsStepsAreAccepted() {
        // Before the switch {A,B,C}; after it {B,C}; a device that missed the first step goes straight to {B,C}.
        #expect(decide(2, [a, b, c], held: [a, b], 1, presented: a) == .accept)
        #expect(decide(3, [b, c], held: [a, b, c], 2, presented: b) == .accept)
        #expect(decide(3, [b, c], held: [a, b], 0, presented: b) == .accept)
        #expect(decide(3, [b, c], held: [b, c], 3, presented: b) == .unchanged)
    }

    @Test func anOlderOrUnrelatedSetIsRefused() {
        // Older (a rollback TUF did not catch, e.g. an old document re-signed), or the same version with other pins.
        #expect(decide(2, [a, b], held: [b, c], 3, presented: b) != .accept)
        #expect(decide(3, [a, b], held: [b, c], 3, presented: b) != .accept)
        // Leaving out the key the hub presents: {B,C} published while the hub still presents A would strand devices
        // that took it, and an attacker's set {X} shares nothing at all.
        #expect(decide(3, [b, c], held: [a, b], 1, presented: a) != .accept)
        #expect(decide(9, [x], held: [a, b], 1, presented: a) != .accept)
        // More than two new keys at a step (a node that joins adds its pair: two).
        #expect(decide(9, [a, b, x, y], held: [a, b], 1, presented: a) == .accept)
        #expect(decide(9, [a, x, y, z], held: [a, b], 1, presented: a) != .accept)
        #expect(decide(9, [a, b, x, y, z], held: [a, b], 1, presented: a) != .accept)
    }
}
