import Foundation
import JSON
import Testing

@testable import Gateway

@Suite struct SchemaTests {
    func schema(_ text: String) throws -> JSONSchema { try JSONSchema(bytes: Array(text.utf8)) }
    func value(_ text: String) throws -> JSONDocument { try StrictJSON().parse(Array(text.utf8)) }

    @Test(arguments: [
        #"{"pattern":"^a"}"#, #"{"oneOf":[{"type":"string"}]}"#, ##"{"$ref":"#/x"}"##, #"{"format":"email"}"#,
        #"{"type":"float"}"#, #"{"$schema":"http://json-schema.org/draft-07/schema#"}"#, #"{"minLength":-1}"#,
        #"{"multipleOf":0}"#, #"{"properties":{"a":{"if":true}}}"#, #"{"items":[{"type":"string"}]}"#, "[]", "1",
        #"{"enum":[]}"#, #"{"enum":[\#((0...256).map(String.init).joined(separator: ","))]}"#,
    ])
    func refusesSchemasOutsideTheSubset(_ text: String) {
        #expect(throws: SchemaError.self) { try schema(text) }
    }

    @Test func validatesTheFixtureSchema() throws {
        let telemetry = try JSONSchema(bytes: try fixture("telemetry.schema.json"))
        #expect(telemetry.validate(try value(#"{"temperature":20,"tags":{"a":"b"}}"#)) == nil)
        #expect(
            telemetry.validate(try value(#"{"temperature":20,"tags":{"a/b~":1}}"#))
                == SchemaViolation(path: "/tags/a~1b~0", keyword: "type"))
        #expect(
            telemetry.validate(try value(#"{"temperature":20,"x":1}"#))
                == SchemaViolation(path: "/x", keyword: "additionalProperties"))
        #expect(telemetry.validate(try value(#"{"x":1}"#)) == SchemaViolation(path: "", keyword: "required"))
        #expect(
            telemetry.validate(try value(#"{"temperature":1,"readings":[1,"a"]}"#))
                == SchemaViolation(path: "/readings/1", keyword: "type"))
    }

    @Test func integersAndEquality() throws {
        let s = try schema(#"{"type":"integer","enum":[1,2]}"#)
        #expect(s.validate(try value("1.0")) == nil)  // 2020-12: 1.0 is an integer, and equals 1
        #expect(s.validate(try value("1.5")) != nil)
        #expect(s.validate(try value("3")) != nil)
        let c = try schema(#"{"const":{"a":[1,{"b":null}]}}"#)
        #expect(c.validate(try value(#"{"a":[1.0,{"b":null}]}"#)) == nil)
        #expect(c.validate(try value(#"{"a":[1,{"b":false}]}"#)) != nil)
    }

    /// Required names are found in one pass however many there are (beyond the 64 kept as bits), escaped or not;
    /// an escaped instance string equals its `enum` value.
    @Test func manyRequiredNamesAndEscapedStrings() throws {
        let names = (0..<70).map { "n\($0)" }
        let s = try schema(#"{"required":[\#(names.map { "\"\($0)\"" }.joined(separator: ","))]}"#)
        let all = "{" + names.map { "\"\($0)\":1" }.joined(separator: ",") + "}"
        #expect(s.validate(try value(all)) == nil)
        let escaped = all.replacingOccurrences(of: #""n69""#, with: #""\u006e69""#)
        #expect(s.validate(try value(escaped)) == nil)
        let missing = all.replacingOccurrences(of: #""n67":1,"#, with: "")
        #expect(s.validate(try value(missing)) == SchemaViolation(path: "", keyword: "required"))
        let e = try schema(#"{"enum":["é","x"],"type":"string"}"#)
        #expect(e.validate(try value(#""\u00e9""#)) == nil)
        #expect(e.validate(try value(#""e\u0301""#)) == SchemaViolation(path: "", keyword: "enum"))
    }

    /// Properties are found through a hashed table: names alike but for one byte, required names with and without a property, escaped member names, and random objects over them, each
    /// checked against the rules written out here (required first, then members in order: a property's type, or
    /// the `additionalProperties` schema's).
    @Test func propertiesFoundByHashAgreeWithTheRules() throws {
        // "aXba" for 26 letters X: names of one length that share all but one byte (the table tells them apart by
        // their whole bytes), beside names of other lengths.
        let names = (0..<26).map { "a\(Character(UnicodeScalar(UInt8(97 + $0))))ba" } + ["q", "qq", "required-only"]
        let properties = Array(names.prefix(28))
        let required = ["abba", "azba", "q", "required-only"]
        let typeOf: [String: String] = Dictionary(
            uniqueKeysWithValues: properties.enumerated().map { ($1, $0 % 2 == 0 ? "integer" : "string") })
        let text =
            #"{"type":"object","additionalProperties":{"type":"integer"},"required":[\#(required.map { "\"\($0)\"" }.joined(separator: ","))],"properties":{\#(properties.map { "\"\($0)\":{\"type\":\"\(typeOf[$0]!)\"}" }.joined(separator: ","))}}"#
        let s = try schema(text)
        var generator = SystemRandomNumberGenerator()
        var outcomes: [String: Int] = [:]
        for _ in 0..<2_000 {
            let pool = names + ["extra", "ab", "a0ba"]
            var members: [(String, String)] = []
            for name in pool.shuffled(using: &generator).prefix(Int.random(in: 0...6, using: &generator)) {
                let integer =
                    typeOf[name].map {
                        $0 == "integer"
                            ? Int.random(in: 0..<6, using: &generator) > 0
                            : Int.random(in: 0..<6, using: &generator) == 0
                    } ?? (Int.random(in: 0..<6, using: &generator) > 0)
                members.append((name, integer ? "1" : "\"s\""))
            }
            for name in required
            where Int.random(in: 0..<4, using: &generator) > 0 && !members.contains(where: { $0.0 == name }) {
                members.append((name, typeOf[name] == "string" ? "\"s\"" : "1"))
            }
            members.shuffle(using: &generator)
            let expected: SchemaViolation? = {
                if !required.allSatisfy({ name in members.contains { $0.0 == name } }) {
                    return SchemaViolation(path: "", keyword: "required")
                }
                for (name, literal) in members {
                    if (typeOf[name] ?? "integer" == "integer") != (literal == "1") {
                        return SchemaViolation(path: "/" + name, keyword: "type")
                    }
                }
                return nil
            }()
            // Member names written escaped now and then: the table compares unescaped bytes.
            let body = members.map { name, literal in
                let spelled =
                    Bool.random(using: &generator)
                    ? name : name.unicodeScalars.map { String(format: "\\u%04x", $0.value) }.joined()
                return "\"\(spelled)\":\(literal)"
            }.joined(separator: ",")
            let got = s.validate(try value("{" + body + "}"))
            #expect(got == expected, "{\(body)}")
            outcomes[expected?.keyword ?? "valid", default: 0] += 1
        }
        #expect(outcomes.count == 3 && outcomes.values.allSatisfy { $0 > 20 }, "every outcome: \(outcomes)")
    }

    /// Names a message cannot choose decide how long a look-up walks: 1,000 properties that differ in a digit or two
    /// still give a table in which every look-up, of a known name or any other, probes at most `maxProbe` slots;
    /// nested objects each have their own table (not at the start of the shared slots).
    @Test func propertyTablesKeepLookUpsShortAndNestedTablesApart() throws {
        let names = (1...1000).map { "reading_" + String(repeating: "0", count: 4 - String($0).count) + String($0) }
        let wide = try schema(
            #"{"type":"object","properties":{\#(names.map { "\"\($0)\":{\"type\":\"integer\"}" }.joined(separator: ","))},"additionalProperties":false}"#
        )
        let node = wide.program.nodes[0]
        #expect(!node.slots.isEmpty)
        #expect(JSONSchema.longestProbe(Array(wide.program.slots[node.slots])) <= JSONSchema.maxProbe)
        #expect(wide.validate(try value(#"{"reading_0001":1,"reading_1000":2,"reading_0500":3}"#)) == nil)
        #expect(
            wide.validate(try value(#"{"reading_1001":1}"#))
                == SchemaViolation(path: "/reading_1001", keyword: "additionalProperties"))
        #expect(
            wide.validate(try value(#"{"reading_0999":"x"}"#))
                == SchemaViolation(path: "/reading_0999", keyword: "type"))

        let nested = try schema(
            #"{"type":"object","required":["outer"],"properties":{"a":{"type":"integer"},"outer":{"type":"object","required":["b","c"],"additionalProperties":false,"properties":{"b":{"type":"string"},"c":{"type":"object","properties":{"d":{"type":"integer"}},"additionalProperties":false}}}}}"#
        )
        #expect(nested.program.nodes.filter { !$0.slots.isEmpty }.map(\.slots.lowerBound).contains { $0 > 0 })
        #expect(nested.validate(try value(#"{"a":1,"outer":{"b":"x","c":{"d":2}}}"#)) == nil)
        #expect(
            nested.validate(try value(#"{"outer":{"b":"x","c":{"d":"2"}}}"#))
                == SchemaViolation(path: "/outer/c/d", keyword: "type"))
        #expect(
            nested.validate(try value(#"{"outer":{"b":"x","c":{"e":2}}}"#))
                == SchemaViolation(path: "/outer/c/e", keyword: "additionalProperties"))
        #expect(
            nested.validate(try value(#"{"outer":{"b":"x"}}"#)) == SchemaViolation(path: "/outer", keyword: "required"))
        #expect(
            nested.validate(try value(#"{"outer":{"b":1,"c":{}}}"#))
                == SchemaViolation(path: "/outer/b", keyword: "type"))
    }

    /// Names whose hashed bytes are all alike (the first, middle and last eight of 40) all land in one slot: no table
    /// bounds their look-ups, so the schema keeps the binary search, and validates the same.
    @Test func namesThatHashAlikeKeepTheBinarySearch() throws {
        let names = (0..<50).map { "prefix__" + String(format: "%08d", $0) + String(repeating: "z", count: 24) }
        let s = try schema(
            #"{"type":"object","required":["\#(names[7])"],"properties":{\#(names.map { "\"\($0)\":{\"type\":\"integer\"}" }.joined(separator: ","))},"additionalProperties":false}"#
        )
        #expect(s.program.nodes[0].slots.isEmpty)
        #expect(s.program.properties.count == 50)
        #expect(s.validate(try value(#"{"\#(names[7])":1,"\#(names[49])":2,"\#(names[0])":3}"#)) == nil)
        #expect(
            s.validate(try value(#"{"\#(names[7])":1,"\#(names[3])":"x"}"#))
                == SchemaViolation(path: "/" + names[3], keyword: "type"))
        #expect(
            s.validate(try value(#"{"\#(names[7])":1,"prefix__00000050zzzzzzzzzzzzzzzzzzzzzzzz":1}"#))
                == SchemaViolation(path: "/prefix__00000050zzzzzzzzzzzzzzzzzzzzzzzz", keyword: "additionalProperties"))
        #expect(s.validate(try value(#"{"\#(names[8])":1}"#)) == SchemaViolation(path: "", keyword: "required"))
    }

    /// The bound itself: the longest run of occupied slots, wrapping around the end, plus the empty slot that stops it.
    @Test func longestProbeCountsRunsAcrossTheEnd() {
        #expect(JSONSchema.longestProbe([-1, -1, -1, -1]) == 1)
        #expect(JSONSchema.longestProbe([0, -1, 1, 2]) == 4)  // slots 2, 3, 0, then the empty 1
        #expect(JSONSchema.longestProbe([0, 1, 2, -1, 3, -1, -1, -1]) == 4)
        #expect(JSONSchema.longestProbe([0, 1, 2, 3]) == 4)
    }

    /// Only the parser makes floats; a literal it would never write is nil, not a crash.
    @Test func aFloatThatIsNoLiteralIsNoNumber() {
        for literal in ["1x!", "1e.", ".", "1e", "-", "e5"] { #expect(JSONValue.float(literal).doubleValue == nil) }
        #expect(JSONValue.float("-0.0").doubleValue == 0 && JSONValue.float("2.5e2").doubleValue == 250)
    }

    @Test(arguments: [
        ("1985-04-12T23:20:50.52Z", true), ("1996-12-19T16:39:57-08:00", true), ("1990-12-31T23:59:60Z", true),
        ("2024-02-29t00:00:00z", true), ("2023-02-29T00:00:00Z", false), ("1990-12-31T24:00:00Z", false),
        ("1990-12-31 23:00:00Z", false), ("1990-12-31T23:00:00", false), ("1990-12-31T23:00:00.Z", false),
        ("1990-12-31T23:00:00+0100", false), ("90-12-31T23:00:00Z", false),
    ])
    func dateTime(_ text: String, _ valid: Bool) {
        #expect(RFC3339.isDateTime(text) == valid)
    }
}
