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
///
/// The values live in one copy-on-write box: a `Properties` is one pointer, so every packet that carries one (and
/// every async frame that holds a packet) stays small, and packets without properties (all of MQTT 3.1.1) have no
/// box (nil) and allocate nothing. Not a shared empty box: every copy of a packet retained it and every drop
/// released it, an atomic operation on one object from every thread (the event loops, the store's writer), whose
/// cache line then moved between the cores for each message.
public struct Properties: Sendable, Equatable {
    @usableFromInline
    final class Storage: @unchecked Sendable {
        @usableFromInline var sessionExpiryInterval: UInt32? = nil
        @usableFromInline var receiveMaximum: UInt16? = nil
        @usableFromInline var maximumPacketSize: UInt32? = nil
        @usableFromInline var topicAliasMaximum: UInt16? = nil
        @usableFromInline var topicAlias: UInt16? = nil
        @usableFromInline var assignedClientIdentifier: String? = nil
        @usableFromInline var reasonString: String? = nil
        @usableFromInline var maximumQoS: UInt8? = nil
        @usableFromInline var retainAvailable: UInt8? = nil
        @usableFromInline var serverKeepAlive: UInt16? = nil
        @usableFromInline var messageExpiryInterval: UInt32? = nil
        @usableFromInline var payloadFormatIndicator: UInt8? = nil
        @usableFromInline var contentType: String? = nil
        @usableFromInline var willDelayInterval: UInt32? = nil
        @usableFromInline var userProperties: [(String, String)] = []
        @usableFromInline var subscriptionIdentifiers: [Int] = []
        @usableFromInline var other: [(UInt8, [UInt8])] = []

        @usableFromInline init() {}

        @usableFromInline func copy() -> Storage {
            let copy = Storage()
            copy.sessionExpiryInterval = sessionExpiryInterval
            copy.receiveMaximum = receiveMaximum
            copy.maximumPacketSize = maximumPacketSize
            copy.topicAliasMaximum = topicAliasMaximum
            copy.topicAlias = topicAlias
            copy.assignedClientIdentifier = assignedClientIdentifier
            copy.reasonString = reasonString
            copy.maximumQoS = maximumQoS
            copy.retainAvailable = retainAvailable
            copy.serverKeepAlive = serverKeepAlive
            copy.messageExpiryInterval = messageExpiryInterval
            copy.payloadFormatIndicator = payloadFormatIndicator
            copy.contentType = contentType
            copy.willDelayInterval = willDelayInterval
            copy.userProperties = userProperties
            copy.subscriptionIdentifiers = subscriptionIdentifiers
            copy.other = other
            return copy
        }
    }

    @usableFromInline var storage: Storage?

    @inlinable public init() { storage = nil }

    /// A box of its own before a change (copy on write: a copy of this value never sees the change). Setting a
    /// property of an empty value to nil or to an empty list keeps it without a box: no allocation. (The value is
    /// written back in a `defer`: a change made in place before a throw is kept, as it is in a box of its own.)
    @inlinable mutating func unique() -> Storage {
        if !isKnownUniquelyReferenced(&storage) { storage = storage?.copy() ?? Storage() }
        return storage.unsafelyUnwrapped
    }

    @inlinable public var sessionExpiryInterval: UInt32? {
        get { storage?.sessionExpiryInterval }
        _modify {
            if storage == nil {
                var value: UInt32? = nil
                defer { if value != nil { unique().sessionExpiryInterval = value } }
                yield &value
            } else {
                let box = unique()
                yield &box.sessionExpiryInterval
            }
        }
    }

    @inlinable public var receiveMaximum: UInt16? {
        get { storage?.receiveMaximum }
        _modify {
            if storage == nil {
                var value: UInt16? = nil
                defer { if value != nil { unique().receiveMaximum = value } }
                yield &value
            } else {
                let box = unique()
                yield &box.receiveMaximum
            }
        }
    }

    @inlinable public var maximumPacketSize: UInt32? {
        get { storage?.maximumPacketSize }
        _modify {
            if storage == nil {
                var value: UInt32? = nil
                defer { if value != nil { unique().maximumPacketSize = value } }
                yield &value
            } else {
                let box = unique()
                yield &box.maximumPacketSize
            }
        }
    }

    @inlinable public var topicAliasMaximum: UInt16? {
        get { storage?.topicAliasMaximum }
        _modify {
            if storage == nil {
                var value: UInt16? = nil
                defer { if value != nil { unique().topicAliasMaximum = value } }
                yield &value
            } else {
                let box = unique()
                yield &box.topicAliasMaximum
            }
        }
    }

    @inlinable public var topicAlias: UInt16? {
        get { storage?.topicAlias }
        _modify {
            if storage == nil {
                var value: UInt16? = nil
                defer { if value != nil { unique().topicAlias = value } }
                yield &value
            } else {
                let box = unique()
                yield &box.topicAlias
            }
        }
    }

    @inlinable public var assignedClientIdentifier: String? {
        get { storage?.assignedClientIdentifier }
        _modify {
            if storage == nil {
                var value: String? = nil
                defer { if value != nil { unique().assignedClientIdentifier = value } }
                yield &value
            } else {
                let box = unique()
                yield &box.assignedClientIdentifier
            }
        }
    }

    @inlinable public var reasonString: String? {
        get { storage?.reasonString }
        _modify {
            if storage == nil {
                var value: String? = nil
                defer { if value != nil { unique().reasonString = value } }
                yield &value
            } else {
                let box = unique()
                yield &box.reasonString
            }
        }
    }

    @inlinable public var maximumQoS: UInt8? {
        get { storage?.maximumQoS }
        _modify {
            if storage == nil {
                var value: UInt8? = nil
                defer { if value != nil { unique().maximumQoS = value } }
                yield &value
            } else {
                let box = unique()
                yield &box.maximumQoS
            }
        }
    }

    @inlinable public var retainAvailable: UInt8? {
        get { storage?.retainAvailable }
        _modify {
            if storage == nil {
                var value: UInt8? = nil
                defer { if value != nil { unique().retainAvailable = value } }
                yield &value
            } else {
                let box = unique()
                yield &box.retainAvailable
            }
        }
    }

    @inlinable public var serverKeepAlive: UInt16? {
        get { storage?.serverKeepAlive }
        _modify {
            if storage == nil {
                var value: UInt16? = nil
                defer { if value != nil { unique().serverKeepAlive = value } }
                yield &value
            } else {
                let box = unique()
                yield &box.serverKeepAlive
            }
        }
    }

    @inlinable public var messageExpiryInterval: UInt32? {
        get { storage?.messageExpiryInterval }
        _modify {
            if storage == nil {
                var value: UInt32? = nil
                defer { if value != nil { unique().messageExpiryInterval = value } }
                yield &value
            } else {
                let box = unique()
                yield &box.messageExpiryInterval
            }
        }
    }

    @inlinable public var payloadFormatIndicator: UInt8? {
        get { storage?.payloadFormatIndicator }
        _modify {
            if storage == nil {
                var value: UInt8? = nil
                defer { if value != nil { unique().payloadFormatIndicator = value } }
                yield &value
            } else {
                let box = unique()
                yield &box.payloadFormatIndicator
            }
        }
    }

    @inlinable public var contentType: String? {
        get { storage?.contentType }
        _modify {
            if storage == nil {
                var value: String? = nil
                defer { if value != nil { unique().contentType = value } }
                yield &value
            } else {
                let box = unique()
                yield &box.contentType
            }
        }
    }

    @inlinable public var willDelayInterval: UInt32? {
        get { storage?.willDelayInterval }
        _modify {
            if storage == nil {
                var value: UInt32? = nil
                defer { if value != nil { unique().willDelayInterval = value } }
                yield &value
            } else {
                let box = unique()
                yield &box.willDelayInterval
            }
        }
    }

    @inlinable public var userProperties: [(String, String)] {
        get { storage?.userProperties ?? [] }
        _modify {
            if storage == nil {
                var value: [(String, String)] = []
                defer { if !value.isEmpty { unique().userProperties = value } }
                yield &value
            } else {
                let box = unique()
                yield &box.userProperties
            }
        }
    }

    /// §3.8.2.1.2 in SUBSCRIBE (at most one, 1–268,435,455); §3.3.4 in a PUBLISH to a client (one per matching
    /// subscription that has one).
    @inlinable public var subscriptionIdentifiers: [Int] {
        get { storage?.subscriptionIdentifiers ?? [] }
        _modify {
            if storage == nil {
                var value: [Int] = []
                defer { if !value.isEmpty { unique().subscriptionIdentifiers = value } }
                yield &value
            } else {
                let box = unique()
                yield &box.subscriptionIdentifiers
            }
        }
    }

    /// Properties Bulwark does not interpret, as (identifier, raw value bytes).
    @inlinable public var other: [(UInt8, [UInt8])] {
        get { storage?.other ?? [] }
        _modify {
            if storage == nil {
                var value: [(UInt8, [UInt8])] = []
                defer { if !value.isEmpty { unique().other = value } }
                yield &value
            } else {
                let box = unique()
                yield &box.other
            }
        }
    }

    @inlinable public var isEmpty: Bool { storage == nil || self == Properties() }

    public static func == (lhs: Properties, rhs: Properties) -> Bool {
        if lhs.storage === rhs.storage { return true }
        return lhs.sessionExpiryInterval == rhs.sessionExpiryInterval && lhs.receiveMaximum == rhs.receiveMaximum
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
    /// A PUBLISH's QoS and its RETAIN and DUP flags, read without binding the packet: a binding is a copy, a
    /// reference count on the topic and the payload each, for a look at three flags.
    @inlinable
    public var publishFlags: (qos: QoS, retain: Bool, duplicate: Bool)? {
        guard case .publish(let publish) = self else { return nil }
        return (publish.qos, publish.retain, publish.duplicate)
    }

    /// Boxed: the largest payload, once per connection; every other case (and every frame holding a packet) stays
    /// the size of a PUBLISH.
    indirect case connect(ConnectPacket)
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
