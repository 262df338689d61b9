import MQTT
import Testing

/// Who receives a message, decided without a broker or a socket: one copy per session at the highest matching QoS
/// with every Subscription Identifier, No Local, Retain As Published, and shared subscriptions in turn.
@Suite struct MessageRouterTests {
    static func filter(_ text: String) throws -> TopicFilter { try TopicFilter(text) }

    static func subscriber(
        _ key: String, _ filters: [(String, SubscriptionOptions)], connected: Bool = true
    ) throws -> MessageRouter.Subscriber {
        var table: [TopicFilter: SubscriptionOptions] = [:]
        for (text, options) in filters {
            var options = options
            let filter = try TopicFilter(text)
            if options.share == nil, let share = try SharedFilter.parse(filter) { options.share = share }
            table[filter] = options
        }
        return MessageRouter.Subscriber(key: key, filters: table, connected: connected)
    }

    @Test func overlappingSubscriptionsGiveOneCopyAtTheHighestQoSWithEveryIdentifier() throws {
        var router = MessageRouter()
        let subscribers = [
            try Self.subscriber(
                "a",
                [
                    ("t/#", SubscriptionOptions(qos: .atMostOnce, identifier: 7)),
                    ("t/+", SubscriptionOptions(qos: .exactlyOnce, identifier: 3)),
                    ("t/x", SubscriptionOptions(qos: .atLeastOnce)),
                    ("other", SubscriptionOptions(qos: .exactlyOnce, identifier: 9)),
                ]),
            try Self.subscriber("b", [("t/x", SubscriptionOptions(qos: .atLeastOnce))]),
            try Self.subscriber("c", [("u/#", SubscriptionOptions(qos: .atLeastOnce))]),
        ]
        let deliveries = router.route(
            topic: try TopicName("t/x"), qos: .atLeastOnce, retain: false, publisher: nil, subscribers: subscribers)
        #expect(deliveries.count == 2)
        let a = try #require(deliveries.first { $0.key == "a" })
        #expect(a.qos == .atLeastOnce, "QoS 2 granted, capped by the message's QoS 1")
        #expect(a.identifiers == [3, 7])
        #expect(deliveries.first { $0.key == "b" }?.identifiers == [])
        // A QoS 2 message gets the highest granted.
        let two = router.route(
            topic: try TopicName("t/x"), qos: .exactlyOnce, retain: false, publisher: nil, subscribers: subscribers)
        #expect(two.first { $0.key == "a" }?.qos == .exactlyOnce)
    }

    @Test func noLocalAndRetainAsPublished() throws {
        var router = MessageRouter()
        let subscribers = [
            try Self.subscriber("me", [("t", SubscriptionOptions(qos: .atLeastOnce, noLocal: true))]),
            try Self.subscriber("keeps", [("t", SubscriptionOptions(qos: .atLeastOnce, retainAsPublished: true))]),
            try Self.subscriber("plain", [("t", SubscriptionOptions(qos: .atLeastOnce))]),
        ]
        let deliveries = router.route(
            topic: try TopicName("t"), qos: .atLeastOnce, retain: true, publisher: "me", subscribers: subscribers)
        #expect(Set(deliveries.map(\.key)) == ["keeps", "plain"], "No Local: not back to its publisher")
        #expect(deliveries.first { $0.key == "keeps" }?.retain == true)
        #expect(deliveries.first { $0.key == "plain" }?.retain == false, "RETAIN cleared (§3.3.1.3)")
        // From another publisher, "me" receives it.
        #expect(
            router.route(
                topic: try TopicName("t"), qos: .atMostOnce, retain: false, publisher: "other",
                subscribers: subscribers
            ).count == 3)
    }

    @Test func aSharedSubscriptionGivesEachMessageToOneMemberInTurn() throws {
        var router = MessageRouter()
        var subscribers = [
            try Self.subscriber("m1", [("$share/g/jobs/#", SubscriptionOptions(qos: .atLeastOnce, identifier: 5))]),
            try Self.subscriber("m2", [("$share/g/jobs/#", SubscriptionOptions(qos: .atMostOnce))]),
            try Self.subscriber("m3", [("$share/g/jobs/#", SubscriptionOptions(qos: .atLeastOnce))]),
            try Self.subscriber("solo", [("jobs/#", SubscriptionOptions(qos: .atLeastOnce))]),
        ]
        var shared: [String] = []
        for _ in 0..<6 {
            let deliveries = router.route(
                topic: try TopicName("jobs/1"), qos: .atLeastOnce, retain: true, publisher: nil,
                subscribers: subscribers)
            #expect(deliveries.count == 2, "one member of the group, and the plain subscriber")
            let member = try #require(deliveries.first { $0.sharedGroup != nil })
            #expect(member.sharedGroup == (try Self.filter("$share/g/jobs/#")))
            #expect(member.retain == false)
            if member.key == "m1" { #expect(member.identifiers == [5] && member.qos == .atLeastOnce) }
            if member.key == "m2" { #expect(member.qos == .atMostOnce) }
            shared.append(member.key)
        }
        #expect(shared == ["m1", "m2", "m3", "m1", "m2", "m3"])
        // A member without a connection is skipped while another is connected.
        subscribers[1] = try Self.subscriber(
            "m2", [("$share/g/jobs/#", SubscriptionOptions(qos: .atMostOnce))], connected: false)
        var next: [String] = []
        for _ in 0..<4 {
            next += router.route(
                topic: try TopicName("jobs/2"), qos: .atLeastOnce, retain: false, publisher: nil,
                subscribers: subscribers
            ).filter { $0.sharedGroup != nil }.map(\.key)
        }
        #expect(next == ["m1", "m3", "m1", "m3"])
        // None connected: the next member in turn keeps it (its queue).
        let offline = subscribers.map { MessageRouter.Subscriber(key: $0.key, filters: $0.filters, connected: false) }
        #expect(
            router.route(
                topic: try TopicName("jobs/3"), qos: .atLeastOnce, retain: false, publisher: nil, subscribers: offline
            ).filter { $0.sharedGroup != nil }.count == 1)
        router.forget(try Self.filter("$share/g/jobs/#"))
        #expect(router.turns.isEmpty)
    }

    @Test func dollarTopicsAreNotMatchedByLeadingWildcards() throws {
        var router = MessageRouter()
        let subscribers = [
            try Self.subscriber("all", [("#", SubscriptionOptions(qos: .atLeastOnce))]),
            try Self.subscriber("plus", [("+/x", SubscriptionOptions(qos: .atLeastOnce))]),
            try Self.subscriber("sys", [("$SYS/#", SubscriptionOptions(qos: .atLeastOnce))]),
        ]
        let deliveries = router.route(
            topic: try TopicName("$SYS/x"), qos: .atMostOnce, retain: false, publisher: nil, subscribers: subscribers)
        #expect(deliveries.map(\.key) == ["sys"], "MQTT 5.0 §4.7.2")
    }
}
