import Testing

@testable import MQTT

/// `SmallMap` against a `Dictionary` driven with the same operations: the same entries after each, whichever of its
/// three forms (none, one inline, many) it is in, and back to one entry inline when the others are removed.
struct SmallMapTests {
    @Test func itHoldsWhatADictionaryHolds() {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<200 {
            var small = SmallMap<String, Int>()
            var reference: [String: Int] = [:]
            for _ in 0..<40 {
                let key = "k\(Int.random(in: 0..<4, using: &generator))"
                switch Int.random(in: 0..<3, using: &generator) {
                case 0:
                    let value = Int.random(in: 0..<100, using: &generator)
                    small[key] = value
                    reference[key] = value
                case 1:
                    small[key] = nil
                    reference[key] = nil
                default:
                    small[key, default: 0] += 1
                    reference[key, default: 0] += 1
                }
                #expect(Dictionary(uniqueKeysWithValues: small.map { ($0.key, $0.value) }) == reference)
                #expect(small.count == reference.count && small.isEmpty == reference.isEmpty)
                for probe in ["k0", "k1", "k2", "k3"] { #expect(small[probe] == reference[probe]) }
                #expect(Set(small.keys) == Set(reference.keys) && small.values.sorted() == reference.values.sorted())
            }
        }
    }

    @Test func oneEntryReplacedAndRemoved() {
        var small = SmallMap<String, Int>()
        small["a"] = 1
        small["a"] = 2
        #expect(small["a"] == 2 && small.count == 1)
        small["b"] = 3
        small["a"] = nil
        #expect(small["b"] == 3 && small["a"] == nil && small.count == 1)
        small["b"] = nil
        #expect(small.isEmpty && small.map(\.key).isEmpty)
    }
}
