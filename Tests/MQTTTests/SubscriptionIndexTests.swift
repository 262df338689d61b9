import MQTT
import Testing

/// The index a publish uses to find the sessions to route to agrees with `TopicFilter.matches` on every session
/// (the rule it replaces), including `#` matching its parent level, `+` and empty levels, the `$` rule at the first
/// level and shared subscriptions, and lets go of every node when the filters leave.
@Suite struct SubscriptionIndexTests {
    /// SplitMix64: a reproducible sequence for the random filters and topics.
    struct Seeded: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    static let names = ["a", "b", "", "$SYS", "devices", "d1", "é", "\u{301}x"]

    static func randomTopic(_ random: inout Seeded) throws -> TopicName {
        var levels: [String] = []
        for _ in 0..<Int.random(in: 1...4, using: &random) { levels.append(names.randomElement(using: &random)!) }
        let text = levels.joined(separator: "/")
        return try TopicName(text.isEmpty ? "a" : text)
    }

    static func randomFilter(_ random: inout Seeded) throws -> (TopicFilter, SubscriptionOptions) {
        let count = Int.random(in: 1...4, using: &random)
        var levels: [String] = []
        for index in 0..<count {
            switch Int.random(in: 0..<10, using: &random) {
            case 0, 1: levels.append("+")
            case 2 where index == count - 1: levels.append("#")
            default: levels.append(names.randomElement(using: &random)!)
            }
        }
        var text = levels.joined(separator: "/")
        if text.isEmpty { text = "#" }
        if Int.random(in: 0..<5, using: &random) == 0 {
            text = "$share/g\(Int.random(in: 0..<2, using: &random))/" + text
        }
        let filter = try TopicFilter(text)
        return (filter, SubscriptionOptions(qos: .atLeastOnce, share: try SharedFilter.parse(filter)))
    }

    static func bruteForce(
        _ held: [(key: String, filter: TopicFilter, options: SubscriptionOptions)], _ topic: TopicName
    ) -> Set<String> {
        Set(held.filter { ($0.options.share?.filter ?? $0.filter).matches(topic) }.map(\.key))
    }

    @Test func findsExactlyTheSessionsWhoseFiltersMatch() throws {
        var random = Seeded(state: 42)
        var index = SubscriptionIndex()
        var held: [(key: String, filter: TopicFilter, options: SubscriptionOptions)] = []
        for _ in 0..<400 {
            let (filter, options) = try Self.randomFilter(&random)
            let key = "s\(Int.random(in: 0..<60, using: &random))"
            index.insert(filter, options: options, key: key)
            held.append((key, filter, options))
        }
        var matched = 0
        for _ in 0..<2_000 {
            let topic = try Self.randomTopic(&random)
            let expected = Self.bruteForce(held, topic)
            #expect(index.sessions(matching: topic) == expected, "topic \(topic)")
            #expect(index.hasSession(matching: topic) == !expected.isEmpty, "topic \(topic)")
            matched += expected.count
        }
        #expect(matched > 2_000, "the random filters match often enough to test something")

        // Half of them leave (in random order), then the rest: the answers follow, and no node is left behind.
        held.shuffle(using: &random)
        for entry in held.prefix(200) { index.remove(entry.filter, options: entry.options, key: entry.key) }
        held.removeFirst(200)
        #expect(index.count == 200)
        for _ in 0..<1_000 {
            let topic = try Self.randomTopic(&random)
            #expect(index.sessions(matching: topic) == Self.bruteForce(held, topic), "topic \(topic)")
        }
        for entry in held { index.remove(entry.filter, options: entry.options, key: entry.key) }
        #expect(index.count == 0)
        #expect(index.nodeCount == 1, "only the root is left")
        #expect(index.sessions(matching: try TopicName("a/b")).isEmpty)
    }

    /// `hasSession(matching:)` (the broker's question for every publish) answers as `sessions(matching:)` does, for
    /// indexes so small that most topics match no one, and for long topics whose walk branches at every level (its
    /// stack is bounded by the topic's levels: a precondition stops it otherwise).
    @Test func hasSessionAnswersAsTheSessionsFound() throws {
        var random = Seeded(state: 7)
        for size in [0, 1, 2, 5] {
            for _ in 0..<50 {
                var index = SubscriptionIndex()
                var held: [(key: String, filter: TopicFilter, options: SubscriptionOptions)] = []
                for number in 0..<size {
                    let (filter, options) = try Self.randomFilter(&random)
                    index.insert(filter, options: options, key: "s\(number)")
                    held.append(("s\(number)", filter, options))
                }
                for _ in 0..<20 {
                    let topic = try Self.randomTopic(&random)
                    #expect(
                        index.hasSession(matching: topic) == !Self.bruteForce(held, topic).isEmpty, "topic \(topic)")
                }
            }
        }
        var index = SubscriptionIndex()
        var held: [(key: String, filter: TopicFilter, options: SubscriptionOptions)] = []
        for number in 0..<60 {
            let levels = (0..<12).map { _ in Bool.random(using: &random) ? "a" : "+" }
            let filter = try TopicFilter((levels + [number % 2 == 0 ? "x" : "#"]).joined(separator: "/"))
            let options = SubscriptionOptions(qos: .atMostOnce)
            index.insert(filter, options: options, key: "s\(number)")
            held.append(("s\(number)", filter, options))
        }
        for text in ["a/a/a/a/a/a/a/a/a/a/a/a", "a/a/a/a/a/a/a/a/a/a/a/a/x", "a/a/a/a/a/a/a/a/a/a/a/a/y/z", "a/a/b"] {
            let topic = try TopicName(text)
            #expect(index.hasSession(matching: topic) == !Self.bruteForce(held, topic).isEmpty, "topic \(topic)")
        }
        // Without the `#` filters a topic ending elsewhere walks every branch and matches nothing (the deepest
        // stack), and non-ASCII levels (a combining mark after `/`) are cut where `levels` cuts them.
        var deep = SubscriptionIndex()
        for (number, entry) in held.enumerated() where number % 2 == 0 {
            deep.insert(entry.filter, options: entry.options, key: entry.key)
        }
        #expect(!deep.hasSession(matching: try TopicName("a/a/a/a/a/a/a/a/a/a/a/a/y")))
        #expect(
            deep.hasSession(matching: try TopicName("a/a/a/a/a/a/a/a/a/a/a/a/x")) == !Self.bruteForce(
                held.enumerated().filter { $0.offset % 2 == 0 }.map(\.element),
                try TopicName("a/a/a/a/a/a/a/a/a/a/a/a/x")
            ).isEmpty)
        var marks = SubscriptionIndex()
        marks.insert(try TopicFilter("é/+/\u{301}x/#"), options: SubscriptionOptions(qos: .atMostOnce), key: "m")
        #expect(marks.hasSession(matching: try TopicName("é/文字/\u{301}x")))
        #expect(marks.hasSession(matching: try TopicName("é/\u{301}/\u{301}x/y")))
        #expect(!marks.hasSession(matching: try TopicName("é/文字/x")))
        #expect(!marks.hasSession(matching: try TopicName("e\u{301}/a/\u{301}x")))
    }

    @Test func theRulesOfTopicMatching() throws {
        var index = SubscriptionIndex()
        func add(_ text: String, _ key: String) throws {
            let filter = try TopicFilter(text)
            index.insert(
                filter, options: SubscriptionOptions(qos: .atMostOnce, share: try SharedFilter.parse(filter)), key: key)
        }
        try add("sport/#", "parent")
        try add("#", "all")
        try add("+/monitor", "plus")
        try add("$SYS/#", "sys")
        try add("$share/g/sport/+", "shared")
        try add("a//b", "empty")
        func found(_ topic: String) throws -> Set<String> { index.sessions(matching: try TopicName(topic)) }
        // §4.7.1.2: `sport/#` matches `sport` itself.
        #expect(try found("sport") == ["parent", "all"])
        #expect(try found("sport/tennis") == ["parent", "all", "shared"])
        // §4.7.2: wildcards at the first level do not match `$` topics; a filter naming `$SYS` does.
        #expect(try found("$SYS/monitor") == ["sys"])
        #expect(try found("x/monitor") == ["all", "plus"])
        // An empty level is a level like any other.
        #expect(try found("a//b") == ["all", "empty"])
        #expect(try found("a/b") == ["all"])
    }

    @Test func aSessionHoldingOneFilterTwiceKeepsItUntilBothLeave() throws {
        var index = SubscriptionIndex()
        let plain = try TopicFilter("t/x")
        let shared = try TopicFilter("$share/g/t/x")
        index.insert(plain, options: SubscriptionOptions(qos: .atMostOnce), key: "s")
        index.insert(
            shared, options: SubscriptionOptions(qos: .atMostOnce, share: try SharedFilter.parse(shared)), key: "s")
        index.remove(plain, options: SubscriptionOptions(qos: .atMostOnce), key: "s")
        #expect(index.sessions(matching: try TopicName("t/x")) == ["s"])
        index.remove(
            shared, options: SubscriptionOptions(qos: .atMostOnce, share: try SharedFilter.parse(shared)), key: "s")
        #expect(index.sessions(matching: try TopicName("t/x")).isEmpty)
        // Removing what is not held changes nothing.
        index.remove(plain, options: SubscriptionOptions(qos: .atMostOnce), key: "s")
        #expect(index.count == 0 && index.nodeCount == 1)
    }

    /// Only a kept session's subscription at QoS 1 or 2 that is not shared is replayable (a single hub node logs a
    /// device's message for those), counted per session and filter as the index counts filters.
    @Test func onlyAKeptSessionsUnsharedSubscriptionsAtQoS1Or2AreReplayable() throws {
        var index = SubscriptionIndex()
        let topic = try TopicName("devices/d/telemetry")
        let filter = try TopicFilter("devices/+/telemetry")
        let shared = try TopicFilter("$share/g/devices/+/telemetry")
        let sharedOptions = SubscriptionOptions(qos: .atLeastOnce, share: try SharedFilter.parse(shared))
        let qos1 = SubscriptionOptions(qos: .atLeastOnce)
        index.insert(filter, options: SubscriptionOptions(qos: .atMostOnce), key: "dashboard", kept: true)
        index.insert(shared, options: sharedOptions, key: "worker", kept: true)
        index.insert(filter, options: qos1, key: "clean", kept: false)
        #expect(index.hasSession(matching: topic))
        #expect(!index.hasReplayableSession(matching: topic), "QoS 0, shared, and a session that is not kept")
        #expect(index.replayableCount == 0 && index.count == 3)
        index.insert(filter, options: SubscriptionOptions(qos: .exactlyOnce), key: "application", kept: true)
        index.insert(try TopicFilter("devices/#"), options: qos1, key: "application", kept: true)
        #expect(index.hasReplayableSession(matching: topic) && index.replayableCount == 2)
        #expect(!index.hasReplayableSession(matching: try TopicName("other/d/telemetry")))
        index.remove(filter, options: SubscriptionOptions(qos: .exactlyOnce), key: "application", kept: true)
        #expect(index.hasReplayableSession(matching: topic), "devices/# still holds")
        index.remove(try TopicFilter("devices/#"), options: qos1, key: "application", kept: true)
        #expect(!index.hasReplayableSession(matching: topic) && index.replayableCount == 0)
        // A session with the same filter held twice, once replayable: replayable until that one leaves.
        index.insert(filter, options: qos1, key: "dashboard", kept: true)
        #expect(index.hasReplayableSession(matching: topic))
        index.remove(filter, options: qos1, key: "dashboard", kept: true)
        #expect(!index.hasReplayableSession(matching: topic) && index.hasSession(matching: topic))
        #expect(index.replayableCount == 0 && index.count == 3)
    }
}
