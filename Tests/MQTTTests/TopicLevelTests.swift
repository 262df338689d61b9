import MQTT
import Testing

/// Topic names and filters are split into levels at every `/` byte (MQTT 3.1.1 §4.7.1.1, MQTT 5.0 §4.7.1.1: the
/// separator is U+002F), empty levels kept, and the wildcards are found by their bytes too.
@Suite struct TopicLevelTests {
    static let samples = [
        "a", "a/b", "/", "//", "a//b", "/a/", "devices/d1/telemetry", "é/ü/文字", "a/\u{301}b", "\u{301}/x",
        "$SYS/a", String(repeating: "x/", count: 300),
    ]

    @Test(arguments: samples) func levelsAreTheTextBetweenSlashBytes(_ text: String) throws {
        let expected = text.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)
            .map { Array($0) }
        #expect(try TopicName(text).levels.map { Array($0.utf8) } == expected)
        #expect(try TopicFilter(text).levels.map { Array($0.utf8) } == expected)
    }

    /// A combining mark after `/` starts a level of its own (as Swift characters `/\u{301}` is one grapheme), and
    /// after a wildcard it does not turn the wildcard into a literal.
    @Test func aCombiningMarkHidesNoSeparatorAndNoWildcard() throws {
        #expect(try TopicName("a/\u{301}b").levels.count == 2)
        #expect(try TopicFilter("a/+").matches(TopicName("a/\u{301}b")))
        #expect(throws: MQTTError.self) { try TopicFilter("a/#\u{301}") }
        #expect(throws: MQTTError.self) { try TopicFilter("+\u{301}/a") }
        #expect(throws: MQTTError.self) { try TopicName("a/+\u{301}") }
    }
}
