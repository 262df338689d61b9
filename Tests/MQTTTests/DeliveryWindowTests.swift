import MQTT
import NIOCore
import Testing

/// What the server sends one client, without a broker or a socket: the Receive Maximum window and the queue, QoS 2
/// towards the client, redelivery on resume, expiry, the client's packet size and outbound topic aliases.
@Suite struct DeliveryWindowTests {
    static func link(
        _ version: ProtocolVersion = .v5, receiveMaximum: Int = 2, maximumPacketSize: Int = 1 << 20,
        aliases: Int = 0, ready: Bool = true, writable: Bool = true
    ) -> DeliveryWindow.Link {
        DeliveryWindow.Link(
            version: version, receiveMaximum: receiveMaximum, maximumPacketSize: maximumPacketSize,
            topicAliasMaximum: aliases, ready: ready, writable: writable)
    }

    static func message(
        _ topic: String = "t/x", qos: QoS = .atLeastOnce, payload: Int = 4,
        expiresAt: ContinuousClock.Instant? = nil
    ) throws -> OutboundMessage {
        OutboundMessage(
            topic: try TopicName(topic), payload: Array(repeating: 0x61, count: payload), qos: qos, retain: false,
            expiresAt: expiresAt)
    }

    /// The packets an output writes, decoded as a client reads them.
    static func packets(_ output: DeliveryWindow.Output, _ version: ProtocolVersion = .v5) throws -> [Packet] {
        var decoder = MQTTDecoder(role: .client, maximumPacketSize: 1 << 20, version: version)
        var packets: [Packet] = []
        for var buffer in output.writes {
            while let packet = try decoder.decode(buffer: &buffer) { packets.append(packet) }
        }
        return packets
    }

    static func publishes(_ output: DeliveryWindow.Output) throws -> [PublishPacket] {
        try packets(output).compactMap { if case .publish(let p) = $0 { return p } else { return nil } }
    }

    let now = ContinuousClock.now

    /// A full window of 1,024 (the most the hub keeps in flight) through more than one turn of the 16-bit packet ids,
    /// with PUBACKs in order and out of it and one never sent, some deliveries held back by a resume into a smaller
    /// window, and one that outgrew the new connection's Maximum Packet Size: a new delivery never takes an id still
    /// in flight or held, every id in flight or held is distinct, and ids come back once free (MQTT 5.0 §2.2.1
    /// [MQTT-2.2.1-4]).
    @Test(.timeLimit(.minutes(1))) func packetIDsStayDistinctThroughAFullWindowAndManyTurns() throws {
        var window = DeliveryWindow(maxQueued: 100)
        var link = Self.link(receiveMaximum: 1024)
        var inFlight: [UInt16] = []  // in the order sent
        var taken = Set<UInt16>()
        func check(_ output: DeliveryWindow.Output) throws {
            for publish in try Self.publishes(output) where !publish.duplicate {
                let id = try #require(publish.packetID)
                #expect(taken.insert(id).inserted, "id \(id) taken twice")
                inFlight.append(id)
            }
        }
        var random = SubscriptionIndexTests.Seeded(state: 16)  // the same run every time
        // 170 rounds of 400 new deliveries: every id, more than once.
        for round in 0..<170 {
            while window.inflight.count < 1024 { try check(window.deliver(try Self.message(), link: link, now: now)) }
            // Mostly the oldest first, as clients do; now and then one from the middle. The very first delivery is
            // never acknowledged: its id must be passed over on every turn of the ids.
            for _ in 0..<400 {
                let index = Int.random(in: 0..<10, using: &random) == 0 ? Int.random(in: 1..<inFlight.count) : 1
                let id = inFlight.remove(at: index)
                taken.remove(id)
                try check(window.acknowledge(id, qos: .atLeastOnce, link: link, now: now).output)
            }
            let unacknowledged = window.saved.unacknowledged.map(\.id)
            #expect(Set(unacknowledged).count == unacknowledged.count && Set(unacknowledged) == taken)
            if round % 50 == 49 {
                // A reconnect with a smaller window: the rest are held, keeping their ids, and go again with DUP.
                link = Self.link(receiveMaximum: 300)
                try check(window.resume(link: link, now: now))
                #expect(window.inflight.count == 300 && window.waiting > 0)
                link = Self.link(receiveMaximum: 1024)
                try check(window.resume(link: link, now: now))
            }
        }
        // One held delivery too large for the next connection is dropped, and its id is free again.
        var small = DeliveryWindow(maxQueued: 10)
        _ = small.deliver(try Self.message(payload: 1000), link: Self.link(receiveMaximum: 1), now: now)
        _ = small.deliver(try Self.message(payload: 4), link: Self.link(receiveMaximum: 1), now: now)
        #expect(small.inflight.map(\.id) == [1])
        let resumed = small.resume(link: Self.link(receiveMaximum: 5, maximumPacketSize: 100), now: now)
        #expect(resumed.dropped == 1 && small.inflight.map(\.id) == [2])
        #expect(small.acknowledge(2, qos: .atLeastOnce, link: Self.link(), now: now).valid)
        let next = small.deliver(try Self.message(), link: Self.link(), now: now)
        #expect(try Self.publishes(next).map(\.packetID) == [3])
    }

    /// Every way a delivery ends gives its packet id back: a PUBACK, a PUBREC with a failure code, a PUBACK for a
    /// delivery held back on resume (the client had it), a hand-over to another shared-subscription member. Then
    /// 65,535 deliveries one after the other take every id once: none was lost.
    @Test(.timeLimit(.minutes(1))) func packetIDsComeBackFromEveryWayADeliveryEnds() throws {
        var window = DeliveryWindow(maxQueued: 10)
        let four = Self.link(receiveMaximum: 4)
        var shared = try Self.message()
        shared.sharedGroup = try TopicFilter("$share/g/t/#")
        for message in [try Self.message(), try Self.message(), shared, try Self.message(qos: .exactlyOnce)] {
            _ = window.deliver(message, link: four, now: now)  // ids 1, 2, 3 (shared), 4 (QoS 2)
        }
        #expect(window.inflight.map(\.id) == [1, 2, 3, 4])
        // The hand-over first: it recounts the ids in use, which would hide a leak of the other ways.
        window.remove(handedOver: Set(window.sharedUnacknowledged().map(\.position)))
        #expect(window.received(4, reasonCode: .unspecifiedError, link: four, now: now).outcome == .released)
        #expect(window.inflight.map(\.id) == [1, 2])
        // A new connection with a window of one: 1 goes again, 2 is held; the client had 2: its PUBACK ends it.
        let one = Self.link(receiveMaximum: 1)
        _ = window.resume(link: one, now: now)
        #expect(window.inflight.map(\.id) == [1] && window.waiting == 1)
        #expect(window.acknowledge(2, qos: .atLeastOnce, link: one, now: now).valid && window.waiting == 0)
        #expect(window.acknowledge(1, qos: .atLeastOnce, link: one, now: now).valid && window.inflight.isEmpty)
        var ids = Set<UInt16>()
        for _ in 0..<Int(UInt16.max) {
            let id = try #require(
                try Self.publishes(window.deliver(try Self.message(), link: one, now: now)).first?.packetID)
            ids.insert(id)
            _ = window.acknowledge(id, qos: .atLeastOnce, link: one, now: now)
        }
        #expect(ids.count == Int(UInt16.max), "every id handed out")
    }

    @Test func theReceiveMaximumHoldsBackTheRestInABoundedQueue() throws {
        var window = DeliveryWindow(maxQueued: 2)
        let link = Self.link(receiveMaximum: 2)
        var sent: [UInt16] = []
        var dropped = 0
        for _ in 0..<5 {
            let output = window.deliver(try Self.message(), link: link, now: now)
            sent += try Self.publishes(output).compactMap(\.packetID)
            dropped += output.dropped
        }
        #expect(sent == [1, 2] && window.queue.count == 2 && window.inflight.count == 2)
        #expect(dropped == 1, "the fifth: the queue is full")
        // A PUBACK frees a slot: the oldest queued goes out with a fresh id.
        let (valid, output) = window.acknowledge(1, qos: .atLeastOnce, link: link, now: now)
        #expect(valid)
        #expect(try Self.publishes(output).map(\.packetID) == [3])
        // An unknown id is ignored; a PUBCOMP for a QoS 1 delivery is a protocol error.
        #expect(window.acknowledge(99, qos: .atLeastOnce, link: link, now: now).valid)
        #expect(!window.acknowledge(2, qos: .exactlyOnce, link: link, now: now).valid)
        // Offline: queued, nothing written.
        var offline = DeliveryWindow(maxQueued: 10)
        #expect(offline.deliver(try Self.message(), link: nil, now: now).writes.isEmpty)
        #expect(offline.queue.count == 1)
    }

    @Test func qos0IsNeverQueuedAndDroppedForAClientNotReading() throws {
        var window = DeliveryWindow(maxQueued: 10)
        #expect(window.deliver(try Self.message(qos: .atMostOnce), link: nil, now: now).dropped == 0)
        #expect(
            window.deliver(try Self.message(qos: .atMostOnce), link: Self.link(writable: false), now: now).dropped == 1)
        #expect(
            window.deliver(try Self.message(qos: .atMostOnce), link: Self.link(ready: false), now: now).dropped == 1)
        let sent = try Self.publishes(window.deliver(try Self.message(qos: .atMostOnce), link: Self.link(), now: now))
        #expect(sent.count == 1 && sent[0].packetID == nil)
        #expect(window.queue.isEmpty && window.inflight.isEmpty)
    }

    @Test func qos2TowardsTheClient() throws {
        var window = DeliveryWindow(maxQueued: 10)
        let link = Self.link()
        _ = window.deliver(try Self.message(qos: .exactlyOnce), link: link, now: now)
        // PUBCOMP before PUBREL: protocol error; PUBREC: PUBREL goes out.
        #expect(!window.acknowledge(1, qos: .exactlyOnce, link: link, now: now).valid)
        let (outcome, output) = window.received(1, reasonCode: .success, link: link, now: now)
        #expect(outcome == .released)
        #expect(try Self.packets(output) == [.pubrel(packetID: 1, reasonCode: .success, properties: .init())])
        #expect(window.acknowledge(1, qos: .exactlyOnce, link: link, now: now).valid && window.inflight.isEmpty)
        // A PUBREC for an unknown id, or to a QoS 1 delivery.
        #expect(window.received(7, reasonCode: .success, link: link, now: now).outcome == .unknown)
        _ = window.deliver(try Self.message(qos: .atLeastOnce), link: link, now: now)
        #expect(window.received(2, reasonCode: .success, link: link, now: now).outcome == .protocolError)
        // A PUBREC with a failure code ends the delivery.
        _ = window.deliver(try Self.message(qos: .exactlyOnce), link: link, now: now)
        #expect(window.received(3, reasonCode: .unspecifiedError, link: link, now: now).outcome == .released)
        #expect(window.inflight.map(\.id) == [2])
    }

    @Test func aResumedSessionGetsItsDeliveriesAgain() throws {
        var window = DeliveryWindow(maxQueued: 10)
        let first = Self.link(receiveMaximum: 3)
        for qos in [QoS.exactlyOnce, .atLeastOnce, .atLeastOnce] {
            _ = window.deliver(try Self.message(qos: qos), link: first, now: now)
        }
        _ = window.received(1, reasonCode: .success, link: first, now: now)  // id 1 released: PUBREL sent
        // The new connection accepts one unacknowledged delivery.
        window.attached()
        let output = window.resume(link: Self.link(receiveMaximum: 1), now: now)
        let packets = try Self.packets(output)
        #expect(packets.first == .pubrel(packetID: 1, reasonCode: .success, properties: .init()))
        #expect(try Self.publishes(output).isEmpty, "the released one fills the window; the rest wait")
        #expect(window.waiting == 2 && window.queue.isEmpty, "held with their ids, not queued as new")
        // A new message meanwhile waits behind them and never takes their ids.
        _ = window.deliver(try Self.message(), link: Self.link(receiveMaximum: 1), now: now)
        var resent: [PublishPacket] = []
        for id: UInt16 in [1, 2, 3] {
            let qos: QoS = id == 1 ? .exactlyOnce : .atLeastOnce
            let (_, next) = window.acknowledge(id, qos: qos, link: Self.link(receiveMaximum: 1), now: now)
            resent += try Self.publishes(next)
        }
        #expect(resent.map(\.packetID) == [2, 3, 4], "§4.4: resent under their original ids, then the new one")
        #expect(resent.map(\.duplicate) == [true, true, false])
        // With room, unacknowledged deliveries go again marked DUP under their ids.
        var again = DeliveryWindow(maxQueued: 10)
        _ = again.deliver(try Self.message(), link: first, now: now)
        let redelivered = try Self.publishes(again.resume(link: first, now: now))
        #expect(redelivered.map(\.duplicate) == [true] && redelivered.map(\.packetID) == [1])
    }

    @Test func expiryPacketSizeAndTopicAliases() throws {
        var window = DeliveryWindow(maxQueued: 10)
        // Expired before delivery: dropped; otherwise the remaining interval goes with it.
        #expect(
            window.deliver(try Self.message(expiresAt: now - .seconds(1)), link: Self.link(), now: now).dropped == 1)
        let fresh = try Self.publishes(
            window.deliver(try Self.message(expiresAt: now + .milliseconds(2500)), link: Self.link(), now: now))
        #expect(fresh.first?.properties.messageExpiryInterval == 3)
        // Larger than the client accepts: dropped for it.
        #expect(
            window.deliver(
                try Self.message(qos: .atMostOnce, payload: 200), link: Self.link(maximumPacketSize: 100), now: now
            ).dropped == 1)
        // Aliases: the topic once with a new alias, then the alias alone; none past the client's maximum.
        var aliased = DeliveryWindow(maxQueued: 10)
        let link = Self.link(aliases: 1)
        var seen: [(String, UInt16?)] = []
        for topic in ["a/1", "a/1", "a/2"] {
            for p in try Self.publishes(
                aliased.deliver(try Self.message(topic, qos: .atMostOnce), link: link, now: now))
            {
                seen.append((p.topic.rawValue, p.properties.topicAlias))
            }
        }
        #expect(seen.map(\.0) == ["a/1", "", "a/2"])
        #expect(seen.map(\.1) == [1, 1, nil])
        // A new connection starts without them.
        aliased.attached()
        let after = try Self.publishes(aliased.deliver(try Self.message("a/1", qos: .atMostOnce), link: link, now: now))
        #expect(after.first?.topic.rawValue == "a/1")
    }

    /// `TopicKey.sameBytes` compares eight bytes at a time, then the rest one by one: a difference at any position of
    /// any length up to three words and a half is found, in strings (inline and on the heap) and in substrings that
    /// start at an odd offset.
    @Test func sameBytesFindsADifferenceAtEveryPosition() {
        for length in 0...29 {
            let text = String(decoding: (0..<length).map { UInt8(97 + $0 % 26) }, as: UTF8.self)
            let copy = String(decoding: Array(text.utf8), as: UTF8.self)
            let shifted = ("xyz" + text).dropFirst(3)
            #expect(TopicKey.sameBytes(text, copy) && TopicKey.sameBytes(shifted, text))
            for position in 0..<length {
                var bytes = Array(text.utf8)
                bytes[position] ^= 0x01
                let other = String(decoding: bytes, as: UTF8.self)
                #expect(!TopicKey.sameBytes(text, other), "length \(length), position \(position)")
                #expect(!TopicKey.sameBytes(shifted, ("xyz" + other).dropFirst(3)), "length \(length), at \(position)")
            }
            #expect(!TopicKey.sameBytes(text, text + "a") && !TopicKey.sameBytes(text + "a", text))
        }
        #expect(!TopicKey.sameBytes("a/K", "a/\u{212A}") && !TopicKey.sameBytes("t/\u{E9}", "t/e\u{301}"))
    }

    /// Topics are compared by their bytes, never normalized (MQTT 5.0 §4.7.3): strings that Swift calls equal by
    /// canonical equivalence (`K` and U+212A KELVIN SIGN; `é` and `e` + U+0301) are different topics to filters, the
    /// subscription index, the retained messages and the outbound topic aliases.
    @Test func topicsDifferingOnlyInNormalizationAreDifferentTopics() throws {
        let kelvin = "a/\u{212A}"
        let composed = "t/\u{E9}"
        let decomposed = "t/e\u{301}"
        #expect(kelvin == "a/K" && composed == decomposed, "the premise: Swift's String equality is canonical")
        #expect(try !TopicFilter("a/K").matches(TopicName(kelvin)))
        #expect(try TopicFilter("a/K").matches(TopicName("a/K")) && TopicFilter("a/+").matches(TopicName(kelvin)))
        #expect(try !TopicFilter(composed).covers(TopicFilter(decomposed)))
        #expect(try TopicName(composed) != TopicName(decomposed) && TopicFilter(kelvin) != TopicFilter("a/K"))
        #expect(try Set([TopicFilter(composed), TopicFilter(decomposed), TopicFilter(composed)]).count == 2)
        #expect(
            try SharedFilter.parse(TopicFilter("$share/K/x")) != SharedFilter.parse(TopicFilter("$share/\u{212A}/x")))
        var index = SubscriptionIndex()
        index.insert(try TopicFilter("a/K"), options: SubscriptionOptions(qos: .atMostOnce), key: "s1")
        index.insert(try TopicFilter(decomposed), options: SubscriptionOptions(qos: .atMostOnce), key: "s2")
        #expect(try index.sessions(matching: TopicName(kelvin)).isEmpty)
        #expect(try index.sessions(matching: TopicName("a/K")) == ["s1"])
        #expect(try index.sessions(matching: TopicName(composed)).isEmpty)
        #expect(try index.sessions(matching: TopicName(decomposed)) == ["s2"])
        var retained = RetainedMessages(maxMessages: 10, maxPerOwner: 10, maxBytes: 1 << 20)
        #expect(try retained.retain(Self.message(composed, payload: 1), owner: "d1"))
        #expect(try retained.retain(Self.message(decomposed, payload: 2), owner: "d1"))
        #expect(retained.count == 2)
        #expect(try retained.matching(TopicFilter(decomposed), now: now).map(\.payload.count) == [2])
        #expect(try retained.matching(TopicFilter("t/#"), now: now).map(\.payload.count).sorted() == [1, 2])
        // Each its own alias: the second is never sent as the first's alias.
        var window = DeliveryWindow(maxQueued: 10)
        var seen: [(String, UInt16?)] = []
        for topic in [composed, decomposed, decomposed] {
            for p in try Self.publishes(
                window.deliver(try Self.message(topic, qos: .atMostOnce), link: Self.link(aliases: 5), now: now))
            {
                seen.append((p.topic.rawValue, p.properties.topicAlias))
            }
        }
        #expect(seen.map(\.1) == [1, 2, 2])
        #expect(seen.map { Array($0.0.utf8) } == [Array(composed.utf8), Array(decomposed.utf8), []])
    }

    @Test func sharedMessagesNotYetAcknowledgedCanBeHandedOver() throws {
        var window = DeliveryWindow(maxQueued: 10)
        let group = try TopicFilter("$share/g/t/#")
        var shared = try Self.message()
        shared.sharedGroup = group
        var sharedTwo = try Self.message(qos: .exactlyOnce)
        sharedTwo.sharedGroup = group
        let link = Self.link(receiveMaximum: 2)
        _ = window.deliver(sharedTwo, link: link, now: now)  // QoS 2 in flight: stays with this client
        _ = window.deliver(shared, link: link, now: now)  // in flight
        _ = window.deliver(try Self.message(), link: link, now: now)  // queued, not shared
        _ = window.deliver(shared, link: link, now: now)  // queued, shared
        let candidates = window.sharedUnacknowledged()
        #expect(candidates.map(\.position) == [0, 2])
        window.remove(handedOver: [0, 2])
        #expect(window.inflight.map(\.message.qos) == [.exactlyOnce])
        #expect(window.queue.count == 1 && window.queue.first?.sharedGroup == nil)
        // What stays keeps its order (a QoS 2 delivery does not move ahead of an older QoS 1 one).
        var ordered = DeliveryWindow(maxQueued: 10)
        let three = Self.link(receiveMaximum: 3)
        _ = ordered.deliver(try Self.message(), link: three, now: now)
        _ = ordered.deliver(shared, link: three, now: now)
        _ = ordered.deliver(sharedTwo, link: three, now: now)
        ordered.remove(handedOver: [1])
        #expect(ordered.inflight.map(\.id) == [1, 3])
    }
}

/// Retained messages within their bounds, without a broker.
@Suite struct RetainedMessagesTests {
    static func message(_ topic: String, _ payload: String, expiresAt: ContinuousClock.Instant? = nil) throws
        -> OutboundMessage
    {
        OutboundMessage(
            topic: try TopicName(topic), payload: Array(payload.utf8), qos: .atLeastOnce, retain: true,
            expiresAt: expiresAt)
    }

    @Test func oneMessagePerTopicWithinEachBound() throws {
        let now = ContinuousClock.now
        // Every topic here has two levels, each charged `levelCost`.
        let levels = 2 * RetainedMessages.levelCost
        var retained = RetainedMessages(maxMessages: 3, maxPerOwner: 2, maxBytes: 40 + 3 * levels)
        #expect(try retained.retain(Self.message("a/1", "x"), owner: "d1"))
        #expect(try retained.retain(Self.message("a/1", "yy"), owner: "d1"), "replaces, not a second")
        #expect(retained.count == 1 && retained.bytes == 5 + levels)
        #expect(try retained.retain(Self.message("a/2", "z"), owner: "d1"))
        #expect(try !retained.retain(Self.message("a/3", "z"), owner: "d1"), "over the publisher's bound")
        #expect(try retained.retain(Self.message("b/1", "z"), owner: "d2"))
        #expect(try !retained.retain(Self.message("b/2", "z"), owner: "d3"), "over the bound in all")
        // An empty payload clears the topic and frees its owner's place.
        #expect(try retained.retain(Self.message("a/2", ""), owner: "d1"))
        #expect(retained.count == 2)
        #expect(try !retained.retain(Self.message("c/1", String(repeating: "p", count: 40)), owner: "d4"), "bytes")
        #expect(try retained.retain(Self.message("a/3", "z"), owner: "d1"))
        #expect(try retained.matching(TopicFilter("a/#"), now: now).map(\.topic.rawValue).sorted() == ["a/1", "a/3"])
        // Expired messages are neither matched nor kept.
        #expect(try retained.retain(Self.message("a/1", "old", expiresAt: now - .seconds(1)), owner: "d1"))
        #expect(try retained.matching(TopicFilter("a/1"), now: now).isEmpty)
        retained.removeExpired(now: now)
        #expect(retained.count == 2 && retained.bytes == 4 + 4 + 2 * levels)
    }

    /// What a retained message costs is what it holds in memory: a topic of many empty levels is charged for each
    /// level (the tree of topics has a node per level), and a clear gives back exactly what was charged. A clear
    /// spelled in another canonically equivalent form is another topic (compared by bytes, §4.7.3): it clears
    /// nothing.
    @Test func theBoundInBytesCountsWhatIsHeld() throws {
        var retained = RetainedMessages(maxMessages: 10, maxPerOwner: 10, maxBytes: 64 * 1024)
        let deep = "t" + String(repeating: "/", count: 1_000)
        #expect(try !retained.retain(Self.message(deep, "x"), owner: "d"), "1,001 levels are over 64 KiB")
        #expect(retained.count == 0 && retained.bytes == 0)
        #expect(try retained.retain(Self.message("t/caf\u{E9}", "x"), owner: "d"))
        let charged = retained.bytes
        #expect(try retained.retain(Self.message("t/cafe\u{301}", ""), owner: "d"), "the same topic to Swift")
        #expect(retained.count == 1 && retained.bytes == charged, "another topic to MQTT")
        #expect(try retained.retain(Self.message("t/caf\u{E9}", ""), owner: "d"))
        #expect(retained.count == 0 && retained.bytes == 0)
    }

    /// `removeExpired` runs on every connection: it must find each message once its time comes, the earliest first,
    /// also after the message that set the earliest time was replaced.
    @Test func expiredMessagesGoWhenTheirTimeComes() throws {
        let now = ContinuousClock.now
        var retained = RetainedMessages(maxMessages: 10, maxPerOwner: 10, maxBytes: 1_000)
        // The later one first: the earliest time must move back when an earlier one comes.
        try retained.retain(Self.message("t/2", "b", expiresAt: now + .seconds(20)), owner: "d")
        try retained.retain(Self.message("t/1", "a", expiresAt: now + .seconds(10)), owner: "d")
        try retained.retain(Self.message("t/3", "c"), owner: "d")
        #expect(retained.removeExpired(now: now + .seconds(5)).isEmpty)
        #expect(retained.removeExpired(now: now + .seconds(10)).map(\.topic) == ["t/1"])
        #expect(retained.removeExpired(now: now + .seconds(15)).isEmpty)
        #expect(retained.removeExpired(now: now + .seconds(20)).map(\.topic) == ["t/2"])
        // Replaced by a message that does not expire: nothing is due; a later one that expires is found.
        try retained.retain(Self.message("t/4", "d", expiresAt: now + .seconds(30)), owner: "d")
        try retained.retain(Self.message("t/4", "e"), owner: "d")
        try retained.retain(Self.message("t/5", "f", expiresAt: now + .seconds(40)), owner: "d")
        #expect(retained.removeExpired(now: now + .seconds(35)).isEmpty)
        #expect(retained.removeExpired(now: now + .seconds(40)).map(\.topic) == ["t/5"])
        #expect(retained.count == 2)
    }
}
