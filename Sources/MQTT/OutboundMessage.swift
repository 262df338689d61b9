/// A message on its way to subscribers (it has already passed the gateway pipeline, or is an operator command).
public struct OutboundMessage: Sendable {
    public let topic: TopicName
    public let payload: [UInt8]
    public let qos: QoS
    public let retain: Bool
    /// What goes on to subscribers (MQTT 5.0 §3.3.2.3): Payload Format Indicator, Content Type, Response Topic,
    /// Correlation Data and the User Properties in their order [MQTT-3.3.2-17, 3.3.2-18]; in one subscriber's copy
    /// also its Subscription Identifiers. Never the publisher's Topic Alias, which names a topic on its connection.
    public var properties = Properties()
    /// When the message expires (its Message Expiry Interval from arrival, §3.3.2.3.3); nil: never.
    public var expiresAt: ContinuousClock.Instant?
    /// The shared subscription (its whole `$share/…` filter) this copy was given to one member of.
    public var sharedGroup: TopicFilter?

    public init(
        topic: TopicName, payload: [UInt8], qos: QoS, retain: Bool, properties: Properties = .init(),
        expiresAt: ContinuousClock.Instant? = nil
    ) {
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.properties = properties
        self.expiresAt = expiresAt
    }

    /// A received PUBLISH (or will) as it goes on: the properties a subscriber receives, the expiry from `now`
    /// (the clock is read only for a message that has one).
    public init(_ publish: PublishPacket, now: ContinuousClock.Instant? = nil) {
        let received = publish.properties
        // Every MQTT 3.1.1 PUBLISH, and most MQTT 5 ones: nothing to forward, nothing to copy (this runs for every
        // message a device publishes).
        if received.storage == nil {
            self.init(topic: publish.topic, payload: publish.payload, qos: publish.qos, retain: publish.retain)
            return
        }
        var forwarded = Properties()
        forwarded.payloadFormatIndicator = received.payloadFormatIndicator
        forwarded.contentType = received.contentType
        forwarded.userProperties = received.userProperties
        // Response Topic and Correlation Data, as received.
        forwarded.other = received.other.filter {
            $0.0 == PropertyIdentifier.responseTopic || $0.0 == PropertyIdentifier.correlationData
        }
        self.init(
            topic: publish.topic, payload: publish.payload, qos: publish.qos, retain: publish.retain,
            properties: forwarded,
            expiresAt: received.messageExpiryInterval.map { (now ?? .now) + .seconds(Int64($0)) })
    }

    /// One subscriber's copy: its QoS, RETAIN flag and Subscription Identifiers.
    public func copy(qos: QoS, retain: Bool, identifiers: [Int], sharedGroup: TopicFilter? = nil) -> OutboundMessage {
        var copy = OutboundMessage(
            topic: topic, payload: payload, qos: qos, retain: retain, properties: properties, expiresAt: expiresAt)
        copy.properties.subscriptionIdentifiers = identifiers
        copy.sharedGroup = sharedGroup
        return copy
    }

    public func expired(at now: ContinuousClock.Instant) -> Bool { expiresAt.map { $0 <= now } ?? false }
}
