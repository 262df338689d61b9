import MQTT
import Testing

/// The retained messages a new subscription receives are found through `TopicTree`: it must agree with
/// `TopicFilter.matches` over every topic held (the scan it replaces), and let go of every node when topics leave.
@Suite struct TopicTreeTests {
    @Test func findsExactlyTheTopicsAFilterMatches() throws {
        var random = SubscriptionIndexTests.Seeded(state: 7)
        var tree = TopicTree()
        var held = Set<String>()
        for _ in 0..<300 {
            let topic = try SubscriptionIndexTests.randomTopic(&random)
            tree.insert(topic)
            held.insert(topic.rawValue)
        }
        #expect(tree.count == held.count)
        func check() throws {
            for _ in 0..<1_500 {
                let (filter, options) = try SubscriptionIndexTests.randomFilter(&random)
                let plain = options.share?.filter ?? filter
                let expected = try Set(held.filter { plain.matches(try TopicName($0)) })
                let found = tree.topics(matching: plain)
                #expect(Set(found) == expected, "filter \(plain)")
                #expect(found.count == expected.count, "each topic once")
            }
        }
        try check()
        for topic in held.shuffled(using: &random).prefix(150) {
            tree.remove(try TopicName(topic))
            held.remove(topic)
        }
        try check()
        for topic in held { tree.remove(try TopicName(topic)) }
        #expect(tree.count == 0 && tree.nodeCount == 1, "only the root is left")
    }

    /// A topic may have 65,535 levels: walking it must not recurse once per level (the broker's stack would not
    /// hold), in the tree of retained topics nor in the subscription index.
    @Test func deepTopicsAreWalkedWithoutRecursion() throws {
        let deep = "t" + String(repeating: "/", count: 60_000)
        var tree = TopicTree()
        tree.insert(try TopicName(deep))
        #expect(tree.topics(matching: try TopicFilter("#")) == [deep])
        #expect(tree.topics(matching: try TopicFilter(deep)) == [deep])
        tree.remove(try TopicName(deep))
        #expect(tree.nodeCount == 1)
        var index = SubscriptionIndex()
        let filter = try TopicFilter(deep)
        index.insert(filter, options: SubscriptionOptions(qos: .atMostOnce), key: "s")
        #expect(index.sessions(matching: try TopicName(deep)) == ["s"])
        index.remove(filter, options: SubscriptionOptions(qos: .atMostOnce), key: "s")
        #expect(index.nodeCount == 1)
    }

    @Test func theRulesOfTopicMatching() throws {
        var tree = TopicTree()
        for topic in ["sport", "sport/tennis", "sport/tennis/player1", "$SYS/monitor", "/finance", "a//b"] {
            tree.insert(try TopicName(topic))
        }
        func found(_ filter: String) throws -> Set<String> { Set(tree.topics(matching: try TopicFilter(filter))) }
        #expect(try found("sport/#") == ["sport", "sport/tennis", "sport/tennis/player1"], "# matches the parent")
        #expect(try found("sport/+") == ["sport/tennis"])
        #expect(try found("#") == ["sport", "sport/tennis", "sport/tennis/player1", "/finance", "a//b"], "no $ topic")
        #expect(try found("+/monitor").isEmpty, "§4.7.2")
        #expect(try found("$SYS/#") == ["$SYS/monitor"])
        #expect(try found("+/finance") == ["/finance"], "an empty first level is a level")
        #expect(try found("a/+/b") == ["a//b"])
        tree.insert(try TopicName("sport"))
        #expect(tree.count == 6, "inserting a topic held again holds it once")
    }
}
