import MQTT
import NIOCore
import Testing

/// A session as the store keeps it: every part comes back, expiry counts on across the save, and bytes that are not
/// a whole snapshot are refused.
@Suite struct SessionSnapshotTests {
    let now = ContinuousClock.now

    func snapshot() throws -> SessionSnapshot {
        var properties = Properties()
        properties.contentType = "text/plain"
        properties.userProperties = [("k", "v")]
        properties.subscriptionIdentifiers = [3, 9]
        var expiring = OutboundMessage(
            topic: try TopicName("a/b"), payload: [1, 2, 3], qos: .exactlyOnce, retain: true, properties: properties,
            expiresAt: now + .seconds(100))
        expiring.sharedGroup = try TopicFilter("$share/g/a/#")
        let plain = OutboundMessage(topic: try TopicName("c"), payload: [], qos: .atLeastOnce, retain: false)
        let shared = try TopicFilter("$share/g/a/#")
        return SessionSnapshot(
            filters: [
                try TopicFilter("a/+"): SubscriptionOptions(
                    qos: .atLeastOnce, noLocal: true, retainAsPublished: true, identifier: 268_435_455),
                shared: SubscriptionOptions(qos: .exactlyOnce, share: try SharedFilter.parse(shared)),
            ],
            window: DeliveryWindow.Saved(
                unacknowledged: [
                    DeliveryWindow.Inflight(id: 7, message: expiring, released: true),
                    DeliveryWindow.Inflight(id: 8, message: plain),
                ], queue: [plain, expiring], nextPacketID: 8),
            receivedQoS2: [5, 65535], position: 1 << 40)
    }

    @Test func everyPartComesBackAndExpiryCountsOn() throws {
        let original = try snapshot()
        let bytes = original.encoded(now: now)
        let later = now + .seconds(1000)
        // Saved 30 s ago (wall clock): 70 s of the message's 100 are left.
        let restored = try SessionSnapshot(decoding: bytes, elapsed: .seconds(30), now: later)
        #expect(restored.filters == original.filters)
        #expect(restored.receivedQoS2 == [5, 65535] && restored.position == 1 << 40)
        #expect(restored.window.nextPacketID == 8)
        #expect(restored.window.unacknowledged.map(\.id) == [7, 8])
        #expect(restored.window.unacknowledged.map(\.released) == [true, false])
        let message = restored.window.unacknowledged[0].message
        #expect(message.topic.rawValue == "a/b" && message.payload == [1, 2, 3] && message.qos == .exactlyOnce)
        #expect(message.retain && message.sharedGroup?.rawValue == "$share/g/a/#")
        #expect(message.properties.contentType == "text/plain" && message.properties.userProperties.count == 1)
        #expect(message.properties.subscriptionIdentifiers == [3, 9])
        #expect(message.expiresAt == later + .seconds(70))
        #expect(restored.window.queue.map(\.topic.rawValue) == ["c", "a/b"])
        #expect(restored.window.queue[0].expiresAt == nil && restored.window.queue[0].payload.isEmpty)
        // Read back at once and saved again: the same bytes (the encoding is deterministic).
        let again = try SessionSnapshot(decoding: bytes, elapsed: .zero, now: now)
        #expect(again.encoded(now: now) == bytes)
    }

    /// A saved filter this version refuses (`a/+\u{301}`: an earlier version split by characters and read it as a
    /// literal level) is dropped alone; the rest of the session comes back.
    @Test func aSavedFilterNowRefusedIsDroppedAlone() throws {
        var original = try snapshot()
        original.filters[try TopicFilter("a/xyz")] = SubscriptionOptions(qos: .atMostOnce)
        var bytes = original.encoded(now: now)
        let plain = Array("a/xyz".utf8)
        let start = try #require(
            (0...(bytes.count - plain.count)).first { Array(bytes[$0..<$0 + plain.count]) == plain })
        bytes.replaceSubrange(start + 2..<start + 5, with: Array("+\u{301}".utf8))
        let restored = try SessionSnapshot(decoding: bytes, elapsed: .zero, now: now)
        #expect(restored.filters == (try snapshot()).filters)
        #expect(restored.window.unacknowledged.map(\.id) == [7, 8] && restored.receivedQoS2 == [5, 65535])
    }

    /// The same for a shared subscription whose share name is now read differently (`$share/\u{301}` was an
    /// ordinary filter when the name was found by characters) and for a queued message's shared group this version
    /// refuses: the filter is dropped, the message kept as a plain delivery.
    @Test func aSavedSharedFilterOrGroupNowRefusedIsDroppedAlone() throws {
        var original = try snapshot()
        original.filters[try TopicFilter("$share/abc")] = SubscriptionOptions(qos: .atMostOnce)
        var message = OutboundMessage(topic: try TopicName("q"), payload: [7], qos: .atLeastOnce, retain: false)
        message.sharedGroup = try TopicFilter("$share/g/q/xyz")
        original.window.queue.append(message)
        var bytes = original.encoded(now: now)
        for (plain, patched) in [("$share/abc", "$share/\u{301}x"), ("$share/g/q/xyz", "$share/g/q/+\u{301}")] {
            let from = Array(plain.utf8)
            let to = Array(patched.utf8)
            #expect(from.count == to.count)
            let start = try #require(
                (0...(bytes.count - from.count)).first { Array(bytes[$0..<$0 + from.count]) == from })
            bytes.replaceSubrange(start..<start + from.count, with: to)
        }
        let restored = try SessionSnapshot(decoding: bytes, elapsed: .zero, now: now)
        #expect(restored.filters == (try snapshot()).filters)
        #expect(restored.window.queue.count == 3 && restored.window.queue[2].sharedGroup == nil)
        #expect(restored.window.queue[2].payload == [7])
    }

    /// A truncated, extended or foreign snapshot is refused whole; so is each byte of it cut short, and one that
    /// holds two deliveries under one packet id.
    @Test func bytesThatAreNotOneSnapshotAreRefused() throws {
        let bytes = try snapshot().encoded(now: now)
        #expect(throws: MQTTError.self) { try SessionSnapshot(decoding: bytes + [0], elapsed: .zero, now: now) }
        #expect(throws: MQTTError.self) {
            try SessionSnapshot(decoding: [0x41] + bytes.dropFirst(), elapsed: .zero, now: now)
        }
        for length in 0..<bytes.count {
            #expect(throws: MQTTError.self) {
                try SessionSnapshot(decoding: Array(bytes.prefix(length)), elapsed: .zero, now: now)
            }
        }
        // Two deliveries under one packet id (MQTT 5.0 §2.2.1 [MQTT-2.2.1-4]): a PUBACK could end either.
        var twice = try snapshot()
        twice.window.unacknowledged[1] = DeliveryWindow.Inflight(
            id: 7, message: twice.window.unacknowledged[1].message)
        #expect(throws: MQTTError.self) {
            try SessionSnapshot(decoding: twice.encoded(now: now), elapsed: .zero, now: now)
        }
        // A count far beyond the bytes that follow is refused before anything is allocated for it.
        var huge = Array(bytes.prefix(4))
        huge += [0xFF, 0xFF, 0xFF, 0xFF]
        #expect(throws: MQTTError.self) { try SessionSnapshot(decoding: huge, elapsed: .zero, now: now) }
        let message = OutboundMessage(topic: try TopicName("t"), payload: [9], qos: .atMostOnce, retain: true)
        let stored = message.stored(now: now)
        #expect(OutboundMessage(stored: stored, elapsed: .zero, now: now)?.payload == [9])
        #expect(OutboundMessage(stored: stored + [1], elapsed: .zero, now: now) == nil)
        #expect(OutboundMessage(stored: Array(stored.dropLast()), elapsed: .zero, now: now) == nil)
    }
}
