import JSON
import Testing

@testable import Gateway

@Suite struct JSONPointerTests {
    /// RFC 6901 §3 per scalar: `/` and `~` are escaped even when a combining mark follows them (JSONSchemaFuzz).
    @Test func namesWithCombiningMarksAreEscaped() throws {
        #expect(JSONSchema.escapePointer("/\u{301}") == "~1\u{301}")
        #expect(JSONSchema.escapePointer("~\u{301}a/b") == "~0\u{301}a~1b")
        let schema = try JSONSchema(bytes: Array(#"{"additionalProperties":false}"#.utf8))
        let instance = try StrictJSON().parse(Array("{\"/\u{301}\":1}".utf8))
        let violation = try #require(schema.validate(instance))
        #expect(violation.description.contains("~1\u{301}"), "\(violation)")
    }
}
