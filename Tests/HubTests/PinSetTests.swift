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
        let nine = (0..<9).map { Self.pin(UInt8($0)) }
        #expect(throws: PinSetError.self) { try PinSet(json: PinSet(version: 1, pins: nine).json) }
    }

    @Test func aNewerSetSharingAKeyIsAccepted() {
        #expect(
            PinSet.evaluate(.init(version: 2, pins: [a, b, c]), currentPins: [a, b], currentVersion: 1, presented: a)
                == .accept)
        // The rotation's second step: {B, C} after {A, B, C}, and straight after {A, B} (a device that missed one).
        #expect(
            PinSet.evaluate(.init(version: 3, pins: [b, c]), currentPins: [a, b, c], currentVersion: 2, presented: b)
                == .accept)
        #expect(
            PinSet.evaluate(.init(version: 3, pins: [b, c]), currentPins: [a, b], currentVersion: 0, presented: a)
                == .accept)
        #expect(
            PinSet.evaluate(.init(version: 3, pins: [b, c]), currentPins: [b, c], currentVersion: 3, presented: b)
                == .unchanged)
    }

    @Test func anOlderOrUnrelatedSetIsRefused() {
        // Older (a rollback that TUF did not catch, e.g. a re-signed old document) and equal-but-different.
        #expect(
            PinSet.evaluate(.init(version: 2, pins: [a, b]), currentPins: [b, c], currentVersion: 3, presented: b)
                != .accept)
        #expect(
            PinSet.evaluate(.init(version: 3, pins: [a, b]), currentPins: [b, c], currentVersion: 3, presented: b)
                != .accept)
        // A signed set that shares nothing with the pins held or the key presented: a stolen targets key alone
        // cannot move devices to the attacker's key.
        #expect(
            PinSet.evaluate(.init(version: 9, pins: [x]), currentPins: [a, b], currentVersion: 1, presented: a)
                != .accept)
        #expect(
            PinSet.evaluate(.init(version: 9, pins: [x, c]), currentPins: [a, b], currentVersion: 1, presented: nil)
                != .accept)
        // The presented key alone is enough continuity (the hub moved to a key the device pins).
        #expect(
            PinSet.evaluate(.init(version: 9, pins: [x, c]), currentPins: [a, b], currentVersion: 1, presented: c)
                == .accept)
    }
}
