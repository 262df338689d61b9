/// A message on its way to subscribers (it has already passed the gateway pipeline, or is an operator command).
///
/// The public initializers call the synthesized memberwise one, which is why `payload` is stored first: its labels
/// then differ from theirs. An initializer that assigns a struct's `var` properties one by one built the message in a
/// temporary and copied it out, retaining and releasing each reference once more, for every message a device
/// publishes (`scripts/count-references`); the memberwise one builds it in place (Swift 6.3, -O).
public struct OutboundMessage: Sendable {
    public let payload: [UInt8]
    public let topic: TopicName
    public let qos: QoS
    public let retain: Bool
    /// What goes on to subscribers (MQTT 5.0 §3.3.2.3): Payload Format Indicator, Content Type, Response Topic,
    /// Correlation Data and the User Properties in their order [MQTT-3.3.2-17, 3.3.2-18]; in one subscriber's copy
    /// also its Subscription Identifiers. Never the publisher's Topic Alias, which names a topic on its connection.
    public var properties = Properties()
    /// `expiresAt`, as its distance from a fixed instant. A `ContinuousClock.Instant` is of a size not known when
    /// compiling (`_Concurrency` is a resilient library): a message holding one could not be kept in registers, and
    /// was copied whole (each of its references retained, and released after) wherever one of its fields was read
    /// through an optional or a capture (`swiftc -emit-sil`: `copy_addr` of the message, against loads of the field).
    var expiry: Duration?
    /// The shared subscription (its whole `$share/…` filter) this copy was given to one member of.
    public var sharedGroup: TopicFilter?
}

extension OutboundMessage {
    public init(
        topic: TopicName, payload: [UInt8], qos: QoS, retain: Bool, properties: Properties = .init(),
        expiresAt: ContinuousClock.Instant? = nil
    ) {
        self.init(
            payload: payload, topic: topic, qos: qos, retain: retain, properties: properties,
            expiry: expiresAt.map { Self.clockZero.duration(to: $0) }, sharedGroup: nil)
    }

    /// When the message expires (its Message Expiry Interval from arrival, §3.3.2.3.3); nil: never.
    public var expiresAt: ContinuousClock.Instant? {
        get { expiry.map { Self.clockZero + $0 } }
        set { expiry = newValue.map { Self.clockZero.duration(to: $0) } }
    }

    /// The instant `expiry` counts from (any fixed one: a duration before it is negative).
    private static let clockZero = ContinuousClock.now

    /// A received PUBLISH (or will) as it goes on: the properties a subscriber receives, the expiry from `now`
    /// (the clock is read only for a message that has one). The publish is borrowed: an initializer's parameters
    /// are owned by default, so every caller copied the publish in and the initializer released it.
    public init(_ publish: borrowing PublishPacket, now: ContinuousClock.Instant? = nil) {
        // Every MQTT 3.1.1 PUBLISH, and most MQTT 5 ones: nothing to forward, nothing to copy (this runs for every
        // message a device publishes).
        // The memberwise initializer: no expiry to convert.
        if publish.properties.storage == nil {
            self.init(
                payload: publish.payload, topic: publish.topic, qos: publish.qos, retain: publish.retain,
                properties: Properties(), expiry: nil, sharedGroup: nil)
            return
        }
        let received = publish.properties
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
            payload: payload, topic: topic, qos: qos, retain: retain, properties: properties, expiry: expiry,
            sharedGroup: nil)
        copy.properties.subscriptionIdentifiers = identifiers
        copy.sharedGroup = sharedGroup
        return copy
    }

    public func expired(at now: ContinuousClock.Instant) -> Bool { expiry.map { Self.clockZero + $0 <= now } ?? false }
}
