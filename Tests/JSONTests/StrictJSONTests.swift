import Foundation
import JSON
import Testing

@Suite struct StrictJSONTests {
    let parser = StrictJSON()

    func parse(_ text: String) throws(JSONError) -> JSONValue { try parser.value(Array(text.utf8)) }

    static func object(_ members: [(String, JSONValue)]) -> JSONValue {
        var object = JSONObject()
        for (key, value) in members { object.set(key, value) }
        return .object(object)
    }

    /// Past 16 members an object keeps an index by key bytes, shared by its copies until one of them changes.
    @Test func copiesOfALargeObjectKeepTheirOwnMembers() throws {
        var original = JSONObject()
        for i in 0..<20 { original.set("k\(i)", .integer(Int64(i))) }
        var copy = original
        copy.set("new", .bool(true))
        copy.set("k3", .null)
        try original.append("other", .integer(-1))
        #expect(original["new"] == nil && copy["new"] == .bool(true))
        #expect(copy["other"] == nil && original["other"] == .integer(-1))
        #expect(original["k3"] == .integer(3) && copy["k3"] == .null)
        #expect(original.count == 21 && copy.count == 21)
        // Keys are compared by their bytes: a canonically equivalent spelling is another key, also when indexed.
        copy.set("e\u{301}", .integer(1))
        try copy.append("\u{e9}", .integer(2))
        #expect(copy["e\u{301}"] == .integer(1) && copy["\u{e9}"] == .integer(2))
        #expect(throws: JSONError.self) { try copy.append("k0", .null) }
    }

    @Test func acceptsValidDocuments() throws {
        #expect(
            try parse(#"{"a":[1,-2.5e3,true,false,null,"x\u00e9\ud83d\ude00\n"]}"#)
                == Self.object([
                    (
                        "a",
                        .array([
                            .integer(1), .float("-2.5e3"), .bool(true), .bool(false), .null, .string("xé😀\n"),
                        ])
                    )
                ]))
        #expect(try parse(" {} ") == .object(JSONObject()))
        #expect(try parse("9007199254740991") == .integer(9_007_199_254_740_991))
        #expect(try parse("-9007199254740991") == .integer(-9_007_199_254_740_991))
    }

    @Test(arguments: [
        (#"{"a":1,"a":2}"#, JSONError.Kind.duplicateKey),
        ("[" + String(repeating: "[", count: 16) + String(repeating: "]", count: 17), .tooDeep),
        ("NaN", .unexpectedByte), ("-Infinity", .unexpectedByte), ("1e999", .numberOutOfRange),
        ("9007199254740992", .numberOutOfRange), (#"{"a":1} 1"#, .trailingData), (#""\ud800""#, .loneSurrogate),
        (#""\u12""#, .invalidEscape), ("[1,]", .unexpectedByte), ("{", .truncated), ("", .empty),
        ("\"a\u{01}\"", .controlCharacter), ("01", .unexpectedByte), (#""\udc00""#, .loneSurrogate),
        (#""\ud800\u0041""#, .loneSurrogate), (#""\x""#, .invalidEscape), ("-", .truncated), ("1.", .truncated),
        ("1.e5", .unexpectedByte), ("tru", .truncated), ("trUe", .unexpectedByte), ("[1 2]", .unexpectedByte),
        ("{\"a\" 1}", .unexpectedByte), ("{1:2}", .unexpectedByte), ("\"abc", .truncated), ("-01", .unexpectedByte),
        ("1e400", .numberOutOfRange), ("-1e309", .numberOutOfRange),
    ])
    func refuses(_ text: String, _ kind: JSONError.Kind) {
        #expect(throws: JSONError.self) { try parse(text) }
        do { _ = try parse(text) } catch { #expect(error.kind == kind, "\(text): \(error)") }
    }

    /// RFC 7493 §2.1: no noncharacters, escaped or raw, in names or values (the black-box run's finding 4).
    @Test(arguments: [
        #"{"s":"\uFFFF"}"#, #"{"s":"\uFDD0"}"#, #"{"s":"\uFDEF"}"#, #"{"s":"\udbff\udfff"}"#,
        #"{"s":"\uD83F\uDFFE"}"#, #"{"\uFFFF":1}"#, #"["x\uFFFEy"]"#,
        // Raw (UTF-8) noncharacters, in a value and in a name.
        #"{"s":"RAW"}"#.replacingOccurrences(of: "RAW", with: String(UnicodeScalar(0xFFFE)!)),
        #"{"s":"RAW"}"#.replacingOccurrences(of: "RAW", with: String(UnicodeScalar(0x1FFFF)!)),
        #"{"RAW":1}"#.replacingOccurrences(of: "RAW", with: String(UnicodeScalar(0xFDD0)!)),
    ])
    func refusesNoncharacters(_ text: String) {
        #expect(throws: JSONError.self) { try parse(text) }
        do { _ = try parse(text) } catch { #expect(error.kind == .noncharacter, "\(text): \(error)") }
    }

    @Test func refusesRawNoncharacterBytes() {
        // EF BF BF is U+FFFF: valid UTF-8, not I-JSON.
        #expect(throws: JSONError.self) { try parser.parse([0x22, 0xEF, 0xBF, 0xBF, 0x22]) }
        #expect((try? parser.parse([0x22, 0xEF, 0xBF, 0xBD, 0x22])) != nil, "U+FFFD is a character")
        #expect((try? parse(#"{"s":"\uFDCF\uFDF0\uFFFD\ud83d\ude00"}"#)) != nil, "the neighbours are characters")
    }

    /// RFC 8259 §8.3 compares member names code unit by code unit: canonically equivalent but different names are
    /// two members, not a duplicate, and both are kept.
    @Test func canonicallyEquivalentNamesAreDistinct() throws {
        let members = try #require(try parse("{\"\u{E9}\":1,\"e\u{301}\":2}").objectValue)
        #expect(members.count == 2)
        #expect(members["\u{E9}"] == .integer(1))
        #expect(members["e\u{301}"] == .integer(2))
        let angstrom = try #require(try parse("{\"\u{C5}\":1,\"\u{212B}\":2}").objectValue)
        #expect(angstrom.count == 2)
        // The same name escaped and raw is the same name.
        #expect(throws: JSONError.self) { try parse(#"{"\u00e9":1,"é":2}"#) }
    }

    @Test func numberAndStringLimitsAreTheStatedOnes() {
        let defaults = StrictJSON()
        #expect(defaults.maxNumberLength == 40 && defaults.maxStringBytes == 16 * 1024)
        #expect((try? parse("1" + String(repeating: "0", count: 39))) == nil, "40 digits is beyond 2^53")
        #expect((try? parse("0." + String(repeating: "1", count: 38))) != nil, "a 40-character literal")
        #expect((try? parse("0." + String(repeating: "1", count: 39))) == nil, "41 characters")
        let string = String(repeating: "a", count: 16 * 1024)
        #expect((try? parse("\"\(string)\"")) != nil)
        #expect((try? parse("\"\(string)a\"")) == nil)
    }

    @Test func refusesInvalidUTF8() {
        for bytes: [UInt8] in [[0x22, 0xC0, 0xAF, 0x22], [0x22, 0xED, 0xA0, 0x80, 0x22], [0x22, 0xFF, 0x22]] {
            #expect(throws: JSONError(kind: .invalidUTF8, offset: 1)) { try parser.parse(bytes) }
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
