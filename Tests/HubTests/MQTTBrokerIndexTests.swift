import MQTT
import Testing

@testable import Hub

/// The broker finds a message's subscribers through its subscription index: every way a filter or a session leaves
/// (UNSUBSCRIBE, a connection ending a session with expiry 0, a clean start, expiry, a hand-over to another node)
/// must take its filters out of the index too, or the index grows without end and routes to sessions that are gone.
@Suite struct MQTTBrokerIndexTests {
    static func connect(_ broker: MQTTBroker, _ key: String, clean: Bool = true, expiry: Int = 0) async throws -> Int {
        let connection = BrokerConnection(
            channel: DiscardingChannel(), version: .v5, receiveMaximum: 10, maximumPacketSize: 1 << 20)
        let attached = try #require(
            await broker.attach(
                key: key, owner: "owner-\(key)", maxPerOwner: 10, cleanStart: clean, expirySeconds: expiry,
                connection: connection))
        await broker.resume(key: key, connectionNumber: attached.connectionNumber)
        return attached.connectionNumber
    }

    static func subscribe(_ broker: MQTTBroker, _ key: String, _ number: Int, _ filters: [String]) async throws {
        var granted: [(index: Int, TopicFilter, SubscriptionOptions, retainHandling: UInt8)] = []
        for (index, text) in filters.enumerated() {
            let filter = try TopicFilter(text)
            granted.append(
                (index, filter, SubscriptionOptions(qos: .atLeastOnce, share: try SharedFilter.parse(filter)), 0))
        }
        await broker.subscribe(
            key: key, connectionNumber: number, granted, codes: filters.map { _ in .grantedQoS1 }, packetID: 1,
            maxSubscriptions: 100, quotaExceeded: .quotaExceeded)
    }

    static func message(_ topic: String) throws -> BrokerMessage {
        BrokerMessage(topic: try TopicName(topic), payload: [1], qos: .atLeastOnce, retain: false)
    }

    /// A publisher's connection skips the broker only when the broker would do nothing: the message is not retained,
    /// no subscription matches its topic, and no expiry is due (a publish is what sweeps expired sessions).
    @Test func aPublishSkipsTheBrokerOnlyWhenItWouldDoNothing() async throws {
        let broker = MQTTBroker()
        let (ta, s1, ua, dollar) = (
            try Self.message("t/a"), try Self.message("s/1"), try Self.message("u/a"), try Self.message("$SYS/x")
        )
        #expect(!broker.needsPublish(ta), "nobody subscribed")
        #expect(
            broker.needsPublish(
                BrokerMessage(topic: try TopicName("t/a"), payload: [1], qos: .atMostOnce, retain: true)),
            "a retained message is kept for later subscribers")
        let a = try await Self.connect(broker, "a", clean: false, expiry: 1)
        try await Self.subscribe(broker, "a", a, ["t/#", "$share/g/s/+"])
        #expect(broker.needsPublish(ta) && broker.needsPublish(s1))
        #expect(!broker.needsPublish(ua), "subscribed, but not to this topic")
        #expect(!broker.needsPublish(dollar), "no leading wildcard matches a $ topic")
        // Away, with expiry 1 s: once that second has passed, a publish on any topic sweeps it.
        await broker.detach(key: "a", connectionNumber: a, expirySeconds: 1)
        #expect(!broker.needsPublish(ua), "not due yet")
        try await Task.sleep(for: .milliseconds(1_100))
        #expect(broker.needsPublish(ua), "due: the publish must sweep")
        #expect(await broker.publish(ua, from: nil) == 0)
        let (sessions, filters) = (await broker.sessionCount, await broker.indexedFilters)
        #expect(sessions == 0 && filters == 0)
        #expect(!broker.needsPublish(ta), "swept: nothing due, nobody subscribed")
    }

    /// A subscription is replayable (a single node logs a device's message for it) only while its session is kept
    /// (expiry above 0) and it is QoS 1 or 2 and not shared; a session's expiry changed at a reconnect or a
    /// DISCONNECT indexes its filters again.
    @Test func onlyAKeptSessionsSubscriptionsAreReplayable() async throws {
        let broker = MQTTBroker()
        let topic = try TopicName("t/a")
        let a = try await Self.connect(broker, "a", clean: false, expiry: 0)
        try await Self.subscribe(broker, "a", a, ["t/#"])
        #expect(broker.hasSubscriptions && !broker.hasReplayableSubscriber(topic), "expiry 0: never stored")
        // Back with an expiry: kept, so replayable; a shared subscription of a kept session is not.
        let again = try await Self.connect(broker, "a", clean: false, expiry: 600)
        #expect(broker.hasReplayableSubscriber(topic))
        #expect(!broker.hasReplayableSubscriber(try TopicName("u/a")))
        let b = try await Self.connect(broker, "b", clean: false, expiry: 600)
        try await Self.subscribe(broker, "b", b, ["$share/g/u/#"])
        #expect(!broker.hasReplayableSubscriber(try TopicName("u/a")), "shared")
        // Its DISCONNECT sets expiry 0: the session ends, and nothing is left replayable.
        await broker.detach(key: "a", connectionNumber: again, expirySeconds: 0)
        #expect(!broker.hasReplayableSubscriber(topic))
        // Subscribed at QoS 0, then the same filter again at QoS 1 (§3.8.4: replaced).
        let c = try await Self.connect(broker, "c", clean: false, expiry: 600)
        let filter = try TopicFilter("t/#")
        for qos in [QoS.atMostOnce, .atLeastOnce] {
            await broker.subscribe(
                key: "c", connectionNumber: c, [(0, filter, SubscriptionOptions(qos: qos), 0)],
                codes: [.grantedQoS1], packetID: 1, maxSubscriptions: 100, quotaExceeded: .quotaExceeded)
            #expect(broker.hasReplayableSubscriber(topic) == (qos == .atLeastOnce), "\(qos)")
        }
        _ = await broker.unsubscribe(key: "c", connectionNumber: c, [filter])
        #expect(!broker.hasReplayableSubscriber(topic))
    }

    @Test func filtersLeaveTheIndexWithTheirSession() async throws {
        let broker = MQTTBroker()
        // Unsubscribe.
        let a = try await Self.connect(broker, "a")
        try await Self.subscribe(broker, "a", a, ["t/a", "t/+", "$share/g/t/#"])
        #expect(await broker.indexedFilters == 3)
        #expect(await broker.publish(try Self.message("t/a"), from: nil) == 2, "a, and the shared group's one member")
        _ = await broker.unsubscribe(key: "a", connectionNumber: a, [try TopicFilter("t/+")])
        #expect(await broker.indexedFilters == 2)
        // A session with expiry 0 ends with its connection.
        await broker.detach(key: "a", connectionNumber: a)
        #expect(await broker.indexedFilters == 0)
        #expect(await broker.publish(try Self.message("t/a"), from: nil) == 0)

        // A clean start discards the session it finds, with its filters.
        let b = try await Self.connect(broker, "b", clean: false, expiry: 600)
        try await Self.subscribe(broker, "b", b, ["u/#"])
        await broker.detach(key: "b", connectionNumber: b)
        #expect(await broker.indexedFilters == 1, "kept for its client's return")
        #expect(await broker.publish(try Self.message("u/1"), from: nil) == 1, "queued for it")
        let again = try await Self.connect(broker, "b", clean: true)
        #expect(await broker.indexedFilters == 0)
        await broker.detach(key: "b", connectionNumber: again)

        // Expiry: swept at the next connect once it is due, not before.
        let c = try await Self.connect(broker, "c", clean: false, expiry: 1)
        try await Self.subscribe(broker, "c", c, ["v/#", "w"])
        await broker.detach(key: "c", connectionNumber: c)
        let d = try await Self.connect(broker, "d")
        #expect(await broker.indexedFilters == 2, "not due yet")
        await broker.detach(key: "d", connectionNumber: d)
        try await Task.sleep(for: .milliseconds(1_100))
        let e = try await Self.connect(broker, "e")
        #expect(await broker.indexedFilters == 0, "expired, and swept by an unrelated connect")
        #expect(await broker.sessionCount == 1)
        await broker.detach(key: "e", connectionNumber: e)

        // Handed over to another node.
        let f = try await Self.connect(broker, "f", clean: false, expiry: 600)
        try await Self.subscribe(broker, "f", f, ["x/#"])
        #expect(await broker.handOver("f") != nil)
        #expect(await broker.indexedFilters == 0)
        #expect(await broker.sessionCount == 0)
    }
}
