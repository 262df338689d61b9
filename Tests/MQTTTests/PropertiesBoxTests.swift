import Testing

@testable import MQTT

/// Packets without properties (all of MQTT 3.1.1) share one empty box: forwarding or copying them allocates none.
@Suite struct PropertiesBoxTests {
    @Test func emptyValuesKeepTheSharedBox() {
        var properties = Properties()
        properties.contentType = nil
        properties.userProperties = []
        properties.subscriptionIdentifiers = []
        properties.other = Properties().other.filter { _ in true }
        #expect(properties.storage === Properties.Storage.empty)
        let forwarded = OutboundMessage(PublishPacket(topic: try! TopicName("a/b"), payload: [1], qos: .atLeastOnce))
        #expect(forwarded.properties.storage === Properties.Storage.empty)
        let copy = forwarded.copy(qos: .atMostOnce, retain: false, identifiers: [])
        #expect(copy.properties.storage === Properties.Storage.empty)
        properties.messageExpiryInterval = 5
        #expect(properties.storage !== Properties.Storage.empty)
        #expect(Properties.Storage.empty.messageExpiryInterval == nil)
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
        #expect(Properties.Storage.empty.userProperties.isEmpty)
        var boxed = Properties()
        boxed.contentType = "text/plain"
        #expect(throws: Stop.self) { try appendThenThrow(&boxed.userProperties) }
        #expect(boxed.userProperties.count == 1)
    }
}
