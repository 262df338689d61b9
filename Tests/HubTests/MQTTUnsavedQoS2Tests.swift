import MQTT
import NIOEmbedded
import Testing

@testable import Hub

/// A fleet QoS 2 message on one node is answered (PUBREC) only once the sessions holding it are saved; until then
/// its packet id is held unsaved in the publisher's session (`MQTTBroker.UnsavedQoS2`), tagged with the connection
/// that received it. These are the paths that only a race reaches over sockets (a take-over, a new session reusing
/// the id, a PUBREL out of turn), driven here on the broker alone (MQTT 5.0 §4.3.3, §4.4).
@Suite struct MQTTUnsavedQoS2Tests {
    static let publisher = "operator ops"

    static func message(retain: Bool = false) throws -> BrokerMessage {
        BrokerMessage(topic: try TopicName("devices/d1/commands/x"), payload: [1], qos: .exactlyOnce, retain: retain)
    }

    /// A broker with a saved subscriber to the message's topic, the publisher connected (its connection number).
    static func broker() async throws -> (MQTTBroker, publisher: Int) {
        let broker = MQTTBroker()
        let subscriber = try await MQTTBrokerIndexTests.connect(broker, "device d1", clean: false, expiry: 3600)
        try await MQTTBrokerIndexTests.subscribe(broker, "device d1", subscriber, ["devices/d1/commands/#"])
        return (broker, try await MQTTBrokerIndexTests.connect(broker, publisher, clean: false, expiry: 3600))
    }

    static func arrival(_ broker: MQTTBroker, _ connection: Int, _ id: UInt16) async -> String {
        switch await broker.arrivedQoS2(key: publisher, connectionNumber: connection, packetID: id, limit: 10) {
        case .new: "new"
        case .copy: "copy"
        case .unsavedCopy(let unsaved): "unsaved \(unsaved.connectionNumber) \(unsaved.retained?.rawValue ?? "-")"
        case .full: "full"
        }
    }

    /// The id is held unsaved with what holds the message; a copy meanwhile is an unsaved copy (answered once the
    /// saves succeed, never delivered again); once saved it is an ordinary copy awaiting PUBREL; a PUBREL frees it.
    @Test func anUnsavedIdIsHeldUntilSavedThenReleased() async throws {
        let (broker, connection) = try await Self.broker()
        let (count, holding) = await broker.publishing(
            try Self.message(), from: Self.publisher, unsavedQoS2: (7, connection))
        #expect(count == 1 && holding == ["device d1"])
        #expect(await Self.arrival(broker, connection, 7) == "unsaved \(connection) -")
        await broker.savedQoS2(key: Self.publisher, connectionNumber: connection, packetID: 7)
        #expect(await Self.arrival(broker, connection, 7) == "copy")
        #expect(await broker.releaseQoS2(key: Self.publisher, packetID: 7))
        #expect(await Self.arrival(broker, connection, 7) == "new")
    }

    /// A PUBREL for an id still unsaved is out of turn (no PUBREC went out): it finds nothing (PUBCOMP 0x92) and
    /// leaves the hold, so a copy is still never delivered again.
    @Test func aPubrelOutOfTurnLeavesTheHold() async throws {
        let (broker, connection) = try await Self.broker()
        _ = await broker.publishing(try Self.message(), from: Self.publisher, unsavedQoS2: (7, connection))
        #expect(await !broker.releaseQoS2(key: Self.publisher, packetID: 7))
        #expect(await Self.arrival(broker, connection, 7) == "unsaved \(connection) -")
    }

    /// A retained message's copy waits for the retained message's save too: the hold names its topic.
    @Test func aRetainedMessagesHoldNamesItsTopic() async throws {
        let (broker, connection) = try await Self.broker()
        _ = await broker.publishing(
            try Self.message(retain: true), from: Self.publisher, unsavedQoS2: (7, connection))
        #expect(await Self.arrival(broker, connection, 7) == "unsaved \(connection) devices/d1/commands/x")
    }

    /// A connection taken over while its message was on its way still holds the id (its successor's copy is an
    /// unsaved copy, not a new message); and a finishing connection's save never marks as saved the same id that a
    /// newer session holds for a message of its own.
    @Test func theIdBelongsToTheConnectionThatReceivedIt() async throws {
        let (broker, first) = try await Self.broker()
        // The client reconnects (a take-over): the first connection is draining while its message is delivered.
        let second = try await MQTTBrokerIndexTests.connect(broker, Self.publisher, clean: false, expiry: 3600)
        _ = await broker.publishing(try Self.message(), from: Self.publisher, unsavedQoS2: (7, first))
        await broker.detach(key: Self.publisher, connectionNumber: first)
        #expect(await Self.arrival(broker, second, 7) == "unsaved \(first) -", "held for the resend")

        // A clean start: a new session, whose own message reuses id 9 while the old connection's save finishes.
        let (other, old) = try await Self.broker()
        _ = await other.publishing(try Self.message(), from: Self.publisher, unsavedQoS2: (9, old))
        let fresh = try await MQTTBrokerIndexTests.connect(other, Self.publisher, clean: true, expiry: 3600)
        _ = await other.publishing(try Self.message(), from: Self.publisher, unsavedQoS2: (9, fresh))
        await other.detach(key: Self.publisher, connectionNumber: old)
        await other.savedQoS2(key: Self.publisher, connectionNumber: old, packetID: 9)
        #expect(await Self.arrival(other, fresh, 9) == "unsaved \(fresh) -", "the new session's id is still unsaved")
    }
}
