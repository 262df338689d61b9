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
