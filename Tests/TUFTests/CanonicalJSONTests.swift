import JSON
import TUF
import Testing

@Suite struct CanonicalJSONTests {
    func canonical(_ s: String) throws -> String {
        String(decoding: try TUFJSON.canonical(try TUFJSON.parse(Array(s.utf8))), as: UTF8.self)
    }

    @Test func sortsKeysAndDropsWhitespace() throws {
        #expect(try canonical(#"{ "b" : 1, "a" : [true, null, false, -3] }"#) == #"{"a":[true,null,false,-3],"b":1}"#)
    }

    @Test func escapesOnlyBackslashAndQuote() throws {
        // securesystemslib writes control characters and non-ASCII raw; only \ and " are escaped.
        #expect(try canonical(#"{"k":"a\"b\\c\nd\u00e9\/"}"#) == "{\"k\":\"a\\\"b\\\\c\nd\u{e9}/\"}")
    }

    @Test func ordersKeysByUnicodeScalarValueNotCanonicalEquivalence() throws {
        // "e\u0301" and "\u00e9" are canonically equivalent (equal as Swift Strings) but distinct
        // JSON keys; scalar order puts "e\u0301" (0x65) first and "\u00e9" after "z".
        let out = try canonical(#"{"\u00e9":1,"z":2,"e\u0301":3,"\ufb01":4}"#)
        #expect(out == "{\"e\u{301}\":3,\"z\":2,\"\u{e9}\":1,\"\u{fb01}\":4}")
    }

    @Test func knownAnswerFromSecureSystemsLib() throws {
        let expected = try need(hexDecode(Vectors.canonicalHex))
        #expect(try CanonicalJSON.encode(try TUFJSON.parse(Array(Vectors.canonicalInput.utf8))) == expected)
    }

    @Test func refusesFloats() {
        #expect(throws: TUFError(.notCanonicalizable, "")) { try canonical(#"{"a":1.5}"#) }
        #expect(throws: TUFError(.notCanonicalizable, "")) { try canonical(#"[1e3]"#) }
    }

    @Test func integersStayIntegers() throws {
        #expect(
            try canonical("[0,-0,9223372036854775807,-9223372036854775808]")
                == "[0,0,9223372036854775807,-9223372036854775808]"
        )
    }
}

@Suite struct JSONParserTests {
    @Test(arguments: [
        #"{"a":1,"a":2}"#,  // duplicate key
        #"{"\u00e9":1,"\u00e9":2}"#,  // duplicate after unescaping
        #"{"a":1,}"#, "[1,]", "01", "1.", "-", "+1", "NaN", "[", "{", #""abc"#, "\"\u{01}\"",
        #""\ud800""#,  // lone surrogate
        #""\x""#, "nul", "[1] 2", "9223372036854775808",
    ])
    func refusesInvalidJSON(_ text: String) {
        #expect(throws: TUFError(.malformedJSON, "")) { try TUFJSON.parse(Array(text.utf8)) }
    }

    @Test func refusesInvalidUTF8() {
        #expect(throws: TUFError(.malformedJSON, "")) { try TUFJSON.parse([0x22, 0xC3, 0x28, 0x22]) }
    }

    @Test func keepsCanonicallyEquivalentKeysApart() throws {
        let v = try TUFJSON.parse(Array(#"{"\u00e9":1,"e\u0301":2}"#.utf8))
        #expect(v.objectValue?.count == 2)
    }

    @Test func boundsNesting() {
        let deep = String(repeating: "[", count: 10_000) + String(repeating: "]", count: 10_000)
        #expect(throws: TUFError(.malformedJSON, "")) { try TUFJSON.parse(Array(deep.utf8)) }
    }

    @Test func distinguishesIntegersAndFloats() throws {
        #expect(try TUFJSON.parse(Array("3".utf8)) == .integer(3))
        #expect(try TUFJSON.parse(Array("3.0".utf8)) == .float("3.0"))
        #expect(try TUFJSON.parse(Array("\"\\ud83d\\ude00\"".utf8)) == .string("\u{1F600}"))
    }
}
