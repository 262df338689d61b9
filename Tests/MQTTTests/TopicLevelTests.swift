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
        let name = try TopicName(text)
        #expect(name.levels.map { Array($0.utf8) } == expected)
        #expect(name.levelCount == expected.count)
        #expect(TopicName.Split(name).levels.map { Array($0.utf8) } == expected)
        #expect(TopicName.Split(name).isDollarTopic == name.isDollarTopic)
        #expect(try TopicFilter(text).levels.map { Array($0.utf8) } == expected)
    }

    /// The empty topic of an unresolved Topic Alias has no levels, as before levels were split when asked: `+`
    /// (one level) does not match it, `#` does, in the index as in the filter. (The session rules replace it with
    /// its topic before anything is matched.)
    @Test func theUnresolvedAliasHasNoLevels() throws {
        let alias = TopicName.unresolvedAlias
        #expect(alias.levels.isEmpty && alias.levelCount == 0)
        let plus = try TopicFilter("+")
        let all = try TopicFilter("#")
        #expect(!plus.matches(alias) && all.matches(alias))
        var index = SubscriptionIndex()
        index.insert(try TopicFilter("+"), options: SubscriptionOptions(qos: .atMostOnce), key: "plus")
        #expect(!index.hasSession(matching: alias) && index.sessions(matching: alias).isEmpty)
        index.insert(try TopicFilter("#"), options: SubscriptionOptions(qos: .atMostOnce), key: "all")
        #expect(index.hasSession(matching: alias) && index.sessions(matching: alias) == ["all"])
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

    /// The share name of `$share/{ShareName}/{filter}` ends at the first `/` byte (MQTT 5.0 §4.8.2), and a topic
    /// whose first byte is `$` is not matched by a leading wildcard (§4.7.2), whatever follows it.
    @Test func sharedNamesAndDollarTopicsByBytes() throws {
        let shared = try #require(try SharedFilter.parse(TopicFilter("$share/g/\u{301}x/y")))
        #expect(shared.group == "g" && shared.filter.rawValue == "\u{301}x/y")
        #expect(try SharedFilter.parse(TopicFilter("$share")) == nil)
        #expect(throws: MQTTError.self) { try SharedFilter.parse(TopicFilter("$share/g")) }
        #expect(throws: MQTTError.self) { try SharedFilter.parse(TopicFilter("$share//a")) }
        let dollar = try TopicName("$\u{301}x/y")
        #expect(dollar.isDollarTopic)
        let hash = try TopicFilter("#")
        let plus = try TopicFilter("+/y")
        #expect(!hash.matches(dollar) && !plus.matches(dollar))
        var index = SubscriptionIndex()
        index.insert(try TopicFilter("#"), options: SubscriptionOptions(qos: .atMostOnce), key: "s")
        #expect(index.sessions(matching: dollar).isEmpty)
    }

    /// A device pattern may not hide a wildcard before `{device}` behind a combining mark.
    @Test func devicePatternsAreCheckedByBytes() throws {
        #expect(throws: MQTTError.self) {
            try TopicACL(publish: ["devices/{device}\u{301}/#"], subscribe: []).validate()
        }
        let acl = TopicACL(publish: ["a/\u{301}x/{device}/#"], subscribe: [])
        try acl.validate()
        #expect(acl.bound(to: "d1").publishing(try TopicName("a/\u{301}x/d1/telemetry"))?.deviceLevel == 2)
    }
}
