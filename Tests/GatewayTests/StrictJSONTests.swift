import Testing

@testable import Gateway

@Suite struct StrictJSONTests {
    let parser = StrictJSON()

    func parse(_ text: String) throws(JSONError) -> JSONValue { try parser.parse(Array(text.utf8)) }

    @Test func acceptsValidDocuments() throws {
        #expect(
            try parse(#"{"a":[1,-2.5e3,true,false,null,"x\u00e9\ud83d\ude00\n"]}"#)
                == .object([
                    "a": .array([
                        .number(1, integerLiteral: true), .number(-2500, integerLiteral: false), .bool(true),
                        .bool(false),
                        .null, .string("xé😀\n"),
                    ])
                ]))
        #expect(try parse(" {} ") == .object([:]))
        #expect(try parse("9007199254740991") == .number(9_007_199_254_740_991, integerLiteral: true))
    }

    @Test(arguments: [
        (#"{"a":1,"a":2}"#, JSONError.Kind.duplicateKey),
        ("[" + String(repeating: "[", count: 16) + String(repeating: "]", count: 17), .tooDeep),
        ("NaN", .unexpectedByte), ("-Infinity", .unexpectedByte), ("1e999", .numberOutOfRange),
        ("9007199254740992", .numberOutOfRange), (#"{"a":1} 1"#, .trailingData), (#""\ud800""#, .invalidEscape),
        (#""\u12""#, .invalidEscape), ("[1,]", .unexpectedByte), ("{", .truncated), ("", .empty),
        ("\"a\u{01}\"", .controlCharacter), ("01", .unexpectedByte),
    ])
    func refuses(_ text: String, _ kind: JSONError.Kind) {
        #expect(throws: JSONError.self) { try parse(text) }
        do { _ = try parse(text) } catch { #expect(error.kind == kind, "\(text): \(error)") }
    }

    @Test func refusesInvalidUTF8() {
        for bytes: [UInt8] in [[0x22, 0xC0, 0xAF, 0x22], [0x22, 0xED, 0xA0, 0x80, 0x22], [0x22, 0xFF, 0x22]] {
            #expect(throws: JSONError(kind: .invalidUTF8, offset: 0)) { try parser.parse(bytes) }
        }
    }

    @Test func limitsAreEnforced() {
        let members = "{" + (0...1000).map { #""k\#($0)":1"# }.joined(separator: ",") + "}"
        #expect(throws: JSONError.self) { try parse(members) }
        let small = StrictJSON(maxDepth: 2, maxMembers: 2, maxStringBytes: 4)
        #expect(throws: JSONError.self) { try small.parse(Array(#"[[[1]]]"#.utf8)) }
        #expect(throws: JSONError.self) { try small.parse(Array(#"[1,2,3]"#.utf8)) }
        #expect(throws: JSONError.self) { try small.parse(Array(#""abcde""#.utf8)) }
        #expect((try? small.parse(Array(#"[[1,2],"abcd"]"#.utf8))) != nil)
    }

    /// Linear work: 100,000 nested-then-closed arrays and a 1 MB string are refused or parsed quickly.
    @Test func pathologicalInputsAreCheap() throws {
        let clock = ContinuousClock()
        let elapsed = clock.measure {
            _ = try? parse(String(repeating: "[", count: 100_000))
            _ = try? StrictJSON(maxStringBytes: 2_000_000).parse(
                Array(("\"" + String(repeating: "a", count: 1_000_000) + "\"").utf8))
            _ = try? parse("[" + Array(repeating: "1", count: 999).joined(separator: ",") + "]")
        }
        #expect(elapsed < .seconds(2))
    }
}
