import Testing

@testable import MQTT

/// Packets without properties (all of MQTT 3.1.1) have no box: forwarding or copying them allocates none, and
/// retains no object shared by every connection.
@Suite struct PropertiesBoxTests {
    @Test func emptyValuesHaveNoBox() {
        var properties = Properties()
        properties.contentType = nil
        properties.userProperties = []
        properties.subscriptionIdentifiers = []
        properties.other = Properties().other.filter { _ in true }
        #expect(properties.storage == nil)
        let forwarded = OutboundMessage(PublishPacket(topic: try! TopicName("a/b"), payload: [1], qos: .atLeastOnce))
        #expect(forwarded.properties.storage == nil)
        let copy = forwarded.copy(qos: .atMostOnce, retain: false, identifiers: [])
        #expect(copy.properties.storage == nil)
        properties.messageExpiryInterval = 5
        #expect(properties.storage != nil)
        var shared = properties  // a copy shares the box until one of them changes
        #expect(shared.storage === properties.storage)
        shared.messageExpiryInterval = 6
        #expect(shared.storage !== properties.storage)
        #expect(properties.messageExpiryInterval == 5 && shared.messageExpiryInterval == 6)
    }

    /// A forwarded PUBLISH carries what a subscriber receives (MQTT 5.0 §3.3.2.3) and nothing of the publisher's
    /// connection: no Topic Alias, no other property; its expiry counts from the given instant.
    @Test func aForwardedPublishKeepsWhatSubscribersReceive() throws {
        var properties = Properties()
        properties.payloadFormatIndicator = 1
        properties.contentType = "text/plain"
        properties.userProperties = [("b", "2"), ("a", "1")]
        properties.topicAlias = 3
        properties.messageExpiryInterval = 60
        properties.other = [
            (PropertyIdentifier.responseTopic, Array("r/1".utf8)), (PropertyIdentifier.correlationData, [0, 1]),
            (PropertyIdentifier.authenticationMethod, [7]),
        ]
        let now = ContinuousClock.now
        let forwarded = OutboundMessage(
            PublishPacket(topic: try TopicName("a/b"), payload: [1], qos: .atLeastOnce, properties: properties),
            now: now)
        #expect(forwarded.properties.payloadFormatIndicator == 1 && forwarded.properties.contentType == "text/plain")
        #expect(forwarded.properties.userProperties.map { [$0.0, $0.1] } == [["b", "2"], ["a", "1"]])
        #expect(forwarded.properties.topicAlias == nil && forwarded.properties.messageExpiryInterval == nil)
        #expect(
            forwarded.properties.other.map(\.0) == [
                PropertyIdentifier.responseTopic, PropertyIdentifier.correlationData,
            ])
        #expect(forwarded.expiresAt == now + .seconds(60))
        let plain = OutboundMessage(PublishPacket(topic: try TopicName("a/b"), payload: [1], qos: .atMostOnce))
        #expect(plain.expiresAt == nil && plain.properties.isEmpty && plain.payload == [1] && plain.qos == .atMostOnce)
    }

    struct Stop: Error {}

    /// A change made in place before a throw is kept, whether the value had a box of its own or not.
    @Test func aChangeBeforeAThrowIsKept() {
        func appendThenThrow(_ list: inout [(String, String)]) throws {
            list.append(("k", "v"))
            throw Stop()
        }
        var empty = Properties()
        #expect(throws: Stop.self) { try appendThenThrow(&empty.userProperties) }
        #expect(empty.userProperties.count == 1)
        #expect(Properties().userProperties.isEmpty)
        var boxed = Properties()
        boxed.contentType = "text/plain"
        #expect(throws: Stop.self) { try appendThenThrow(&boxed.userProperties) }
        #expect(boxed.userProperties.count == 1)
    }
}
