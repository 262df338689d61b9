/// MQTT protocol levels: 4 is MQTT 3.1.1 (§3.1.2.2), 5 is MQTT 5.0 (§3.1.2.2).
public enum ProtocolVersion: UInt8, Sendable, Equatable {
    case v311 = 4
    case v5 = 5
}

public enum QoS: UInt8, Sendable, Equatable, Comparable {
    case atMostOnce = 0
    case atLeastOnce = 1
    case exactlyOnce = 2

    public static func < (lhs: QoS, rhs: QoS) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// MQTT 5.0 §2.2.2.2 properties. Only those Bulwark reads are typed; the rest are kept as raw entries so that a
/// packet re-encodes as it came.
public struct Properties: Sendable, Equatable {
    public var sessionExpiryInterval: UInt32?
    public var receiveMaximum: UInt16?
    public var maximumPacketSize: UInt32?
    public var topicAliasMaximum: UInt16?
    public var topicAlias: UInt16?
    public var assignedClientIdentifier: String?
    public var reasonString: String?
    public var maximumQoS: UInt8?
    public var retainAvailable: UInt8?
    public var serverKeepAlive: UInt16?
    public var messageExpiryInterval: UInt32?
    public var payloadFormatIndicator: UInt8?
    public var contentType: String?
    public var willDelayInterval: UInt32?
    public var userProperties: [(String, String)] = []
    /// §3.8.2.1.2 in SUBSCRIBE (at most one, 1–268,435,455); §3.3.4 in a PUBLISH to a client (one per matching
    /// subscription that has one).
    public var subscriptionIdentifiers: [Int] = []
    /// Properties Bulwark does not interpret, as (identifier, raw value bytes).
    public var other: [(UInt8, [UInt8])] = []

    public init() {}

    public var isEmpty: Bool { self == Properties() }

    public static func == (lhs: Properties, rhs: Properties) -> Bool {
        lhs.sessionExpiryInterval == rhs.sessionExpiryInterval && lhs.receiveMaximum == rhs.receiveMaximum
            && lhs.maximumPacketSize == rhs.maximumPacketSize && lhs.topicAliasMaximum == rhs.topicAliasMaximum
            && lhs.topicAlias == rhs.topicAlias && lhs.assignedClientIdentifier == rhs.assignedClientIdentifier
            && lhs.reasonString == rhs.reasonString && lhs.maximumQoS == rhs.maximumQoS
            && lhs.retainAvailable == rhs.retainAvailable && lhs.serverKeepAlive == rhs.serverKeepAlive
            && lhs.messageExpiryInterval == rhs.messageExpiryInterval
            && lhs.payloadFormatIndicator == rhs.payloadFormatIndicator && lhs.contentType == rhs.contentType
            && lhs.willDelayInterval == rhs.willDelayInterval
            && lhs.userProperties.elementsEqual(rhs.userProperties, by: ==)
            && lhs.subscriptionIdentifiers == rhs.subscriptionIdentifiers
            && lhs.other.elementsEqual(rhs.other, by: ==)
    }
}

public struct Will: Sendable, Equatable {
    public var topic: TopicName
    public var payload: [UInt8]
    public var qos: QoS
    public var retain: Bool
    public var properties: Properties

    public init(topic: TopicName, payload: [UInt8], qos: QoS, retain: Bool, properties: Properties = .init()) {
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.properties = properties
    }
}

public struct ConnectPacket: Sendable, Equatable {
    public var version: ProtocolVersion
    public var clientID: String
    public var cleanStart: Bool
    public var keepAlive: UInt16
    public var will: Will?
    public var username: String?
    public var password: [UInt8]?
    public var properties: Properties

    public init(
        version: ProtocolVersion, clientID: String, cleanStart: Bool = true, keepAlive: UInt16 = 60, will: Will? = nil,
        username: String? = nil, password: [UInt8]? = nil, properties: Properties = .init()
    ) {
        self.version = version
        self.clientID = clientID
        self.cleanStart = cleanStart
        self.keepAlive = keepAlive
        self.will = will
        self.username = username
        self.password = password
        self.properties = properties
    }
}

public struct PublishPacket: Sendable, Equatable {
    public var topic: TopicName
    public var payload: [UInt8]
    public var qos: QoS
    public var retain: Bool
    public var duplicate: Bool
    /// Present for QoS 1 and 2 (§3.3.2.2).
    public var packetID: UInt16?
    public var properties: Properties

    public init(
        topic: TopicName, payload: [UInt8], qos: QoS = .atMostOnce, retain: Bool = false, duplicate: Bool = false,
        packetID: UInt16? = nil, properties: Properties = .init()
    ) {
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.duplicate = duplicate
        self.packetID = packetID
        self.properties = properties
    }
}

public struct Subscription: Sendable, Equatable {
    public var filter: TopicFilter
    public var qos: QoS
    /// MQTT 5 subscription options (§3.8.3.1); zero for 3.1.1.
    public var noLocal = false
    public var retainAsPublished = false
    public var retainHandling: UInt8 = 0

    public init(filter: TopicFilter, qos: QoS) {
        self.filter = filter
        self.qos = qos
    }
}

/// The control packets (MQTT 3.1.1 §2.2.1, MQTT 5.0 §2.1.2).
public enum Packet: Sendable, Equatable {
    case connect(ConnectPacket)
    case connack(sessionPresent: Bool, reasonCode: ReasonCode, properties: Properties)
    case publish(PublishPacket)
    case puback(packetID: UInt16, reasonCode: ReasonCode, properties: Properties)
    /// The QoS 2 flow (§4.3.3): PUBLISH → PUBREC → PUBREL → PUBCOMP. MQTT 3.1.1 has no reason code (0 here).
    case pubrec(packetID: UInt16, reasonCode: ReasonCode, properties: Properties)
    case pubrel(packetID: UInt16, reasonCode: ReasonCode, properties: Properties)
    case pubcomp(packetID: UInt16, reasonCode: ReasonCode, properties: Properties)
    case subscribe(packetID: UInt16, subscriptions: [Subscription], properties: Properties)
    case suback(packetID: UInt16, reasonCodes: [ReasonCode], properties: Properties)
    case unsubscribe(packetID: UInt16, filters: [TopicFilter], properties: Properties)
    case unsuback(packetID: UInt16, reasonCodes: [ReasonCode], properties: Properties)
    case pingreq
    case pingresp
    case disconnect(reasonCode: ReasonCode, properties: Properties)
    case auth(reasonCode: ReasonCode, properties: Properties)
}
