import JSON
import Testing

/// The canonical form written from a tape must be the bytes the value-based encoder writes (which the
/// securesystemslib known-answer vector pins in TUFTests), on every document both accept, and refuse the same ones.
@Suite struct CanonicalTapeTests {
    func both(_ text: String) throws -> (tape: [UInt8]?, value: [UInt8]?) {
        let document = try StrictJSON.tuf.parse(Array(text.utf8))
        return (
            try? CanonicalJSON.encode(document, document.root),
            try? CanonicalJSON.encode(document.value(document.root))
        )
    }

    @Test func agreesWithTheValueEncoderOnRandomDocuments() throws {
        var generator = OracleTests.Generator(state: 0x5EED_CA40)
        var compared = 0
        var refused = 0
        for _ in 0..<5_000 {
            let text = generator.value(depth: 0)
            guard let document = try? StrictJSON.tuf.parse(Array(text.utf8)) else { continue }
            let fromValue = try? CanonicalJSON.encode(document.value(document.root))
            let fromTape = try? CanonicalJSON.encode(document, document.root)
            #expect(fromTape == fromValue, "\(text)")
            if fromValue == nil { refused += 1 } else { compared += 1 }
        }
        // The generator must exercise both outcomes for the comparison to mean anything.
        #expect(compared > 500)
        #expect(refused > 100)
    }

    @Test func sortsNamesByTheirUnescapedBytes() throws {
        let r = try both(#"{"\u00e9":1,"z":{"b":[],"a":-0},"e\u0301":"q\"\\\/","\ufb01":4}"#)
        #expect(r.tape == r.value)
        #expect(
            r.tape.map { String(decoding: $0, as: UTF8.self) }
                == "{\"e\u{301}\":\"q\\\"\\\\/\",\"z\":{\"a\":0,\"b\":[]},\"\u{e9}\":1,\"\u{fb01}\":4}"
        )
    }

    @Test func refusesFloatsAnywhere() throws {
        #expect(try both(#"{"a":[1,{"b":2.0}]}"#).tape == nil)
        #expect(try both("1e2").tape == nil)
        #expect(try both(#"{"a":[1,{"b":2}]}"#).tape != nil)
    }

    @Test func encodesASubtree() throws {
        let document = try StrictJSON.tuf.parse(Array(#"{"signatures":[], "signed" : { "b":1, "a":"x" }}"#.utf8))
        let signed = try #require(document.member("signed", of: document.root))
        #expect(try CanonicalJSON.encode(document, signed) == Array(#"{"a":"x","b":1}"#.utf8))
    }
}
