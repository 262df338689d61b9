/// The server's rules for one MQTT connection, as a value: CONNECT negotiation (MQTT 5.0 §3.1, §3.2; MQTT 3.1.1
/// §3.1, §3.2), then each packet the client sends turned into what the server is to do. It holds no socket, no
/// clock and no broker: the hub's listener applies the actions (authorization, the gateway pipeline, the store and
/// the broker are the hub's), and tests drive it packet by packet.
///
/// What is decided here: the client-id and Receive Maximum refusals of CONNECT, the session expiry, keep-alive and
/// CONNACK properties; inbound Topic Aliases (§3.3.2.3.4); the Receive Maximum the server announced (§3.3.4, §4.9);
/// which packets a client may send and the answers to PINGREQ, PUBREL and UNSUBSCRIBE; DISCONNECT and its Session
/// Expiry change (§3.14.2.2.2) and whether the will is published (§3.14.4); the answer to a refused PUBLISH and the
/// count of a sustained QoS 0 flood; how each refusal is said in the client's protocol version.
public struct ServerSession: Sendable, Equatable {
    /// What the server allows, from its configuration.
    public struct Limits: Sendable, Equatable {
        /// Topic aliases a client may set (announced in CONNACK).
        public var topicAliasMaximum: Int
        /// QoS 1 and 2 publishes a client may have unacknowledged (announced in CONNACK).
        public var receiveMaximum: Int
        /// The largest packet the server reads (announced in CONNACK).
        public var maximumPacketSize: Int
        public var maxSessionExpirySeconds: Int
        /// The longest keep-alive allowed; a client that asks for none or more is held to it (0: no limit).
        public var maxKeepAliveSeconds: Int
        /// Outbound topic aliases kept per connection, whatever more the client allows.
        public var maxOutboundAliases: Int
        /// Outbound QoS 1 and 2 messages in flight per connection, whatever more the client allows.
        public var maxOutboundInFlight: Int
        /// Consecutive QoS 0 publishes refused over the rate after which an MQTT 5 client is disconnected (0x96).
        public var sustainedQoS0Flood: Int

        public init(
            topicAliasMaximum: Int, receiveMaximum: Int, maximumPacketSize: Int, maxSessionExpirySeconds: Int,
            maxKeepAliveSeconds: Int, maxOutboundAliases: Int = 64, maxOutboundInFlight: Int = 1024,
            sustainedQoS0Flood: Int = 20
        ) {
            self.topicAliasMaximum = topicAliasMaximum
            self.receiveMaximum = receiveMaximum
            self.maximumPacketSize = maximumPacketSize
            self.maxSessionExpirySeconds = maxSessionExpirySeconds
            self.maxKeepAliveSeconds = maxKeepAliveSeconds
            self.maxOutboundAliases = maxOutboundAliases
            self.maxOutboundInFlight = maxOutboundInFlight
            self.sustainedQoS0Flood = sustainedQoS0Flood
        }
    }

    public let version: ProtocolVersion
    public let limits: Limits
    /// The session expiry the client asked for in CONNECT (seconds).
    public let requestedExpiry: Int
    /// The session expiry in force (capped; a DISCONNECT may change it).
    public private(set) var expirySeconds: Int
    /// The keep-alive the connection is held to (seconds; 0: none).
    public let keepAlive: UInt16
    /// MQTT 5.0 §3.1.2.11.7: false when the client asked for no Reason String or User Properties on
    /// acknowledgements (so no correlation id on a PUBACK).
    public let problemInformation: Bool
    /// What the client accepts from the server: its Receive Maximum (§3.1.2.11.3), Maximum Packet Size
    /// (§3.1.2.11.4) and Topic Alias Maximum (§3.1.2.11.5), within the server's own caps.
    public let clientReceiveMaximum: Int
    public let clientMaximumPacketSize: Int
    public let clientTopicAliasMaximum: Int
    private let requestsResponseInformation: Bool
    private let clientAskedKeepAlive: UInt16
    private var aliases: [UInt16: TopicName] = [:]
    private var refusedQoS0 = 0

    public var v5: Bool { version == .v5 }

    // MARK: CONNECT

    public enum ConnectAction: Sendable, Equatable {
        /// Send this CONNACK and close the connection.
        case refuse(Packet)
        /// The protocol allows the connection; the server's own checks (identity, quotas) come next, then `connack`.
        case accept(ServerSession)
    }

    /// The protocol's checks of a CONNECT and what the connection will be held to.
    public static func connectReceived(_ connect: ConnectPacket, limits: Limits) -> ConnectAction {
        let v5 = connect.version == .v5
        // MQTT 3.1.1 §3.1.3.1 [MQTT-3.1.3-8]: an empty client id with cleanSession = 0: identifier rejected.
        if !v5, connect.clientID.isEmpty, !connect.cleanStart {
            return .refuse(refusal(.clientIdentifierNotValid, connect.version))
        }
        // MQTT 5.0 §3.1.2.11.3: a Receive Maximum of 0 is a protocol error.
        if v5, connect.properties.receiveMaximum == 0 {
            return .refuse(refusal(.protocolError, connect.version))
        }
        // MQTT 5.0 §4.12 [MQTT-4.12.0-1]: the server supports no extended authentication (identity comes from the
        // client certificate), so a CONNECT that names an Authentication Method gets 0x8C and the connection closes.
        if v5, connect.properties.raw(PropertyIdentifier.authenticationMethod) != nil {
            return .refuse(refusal(.badAuthenticationMethod, connect.version))
        }
        return .accept(ServerSession(connect, limits: limits))
    }

    private init(_ connect: ConnectPacket, limits: Limits) {
        version = connect.version
        self.limits = limits
        let v5 = connect.version == .v5
        // Session expiry: MQTT 5.0 §3.1.2.11.2 (capped); MQTT 3.1.1 cleanSession = 0 keeps the session for the
        // configured maximum.
        requestedExpiry =
            v5
            ? Int(connect.properties.sessionExpiryInterval ?? 0)
            : (connect.cleanStart ? 0 : limits.maxSessionExpirySeconds)
        expirySeconds = min(requestedExpiry, limits.maxSessionExpirySeconds)
        clientAskedKeepAlive = connect.keepAlive
        keepAlive = Self.keepAlive(asked: connect.keepAlive, maximum: limits.maxKeepAliveSeconds)
        problemInformation = connect.properties.requestProblemInformation
        requestsResponseInformation = v5 && connect.properties.requestResponseInformation
        clientReceiveMaximum = min(Int(connect.properties.receiveMaximum ?? 64), limits.maxOutboundInFlight)
        clientMaximumPacketSize = Int(connect.properties.maximumPacketSize ?? UInt32(Int32.max))
        clientTopicAliasMaximum =
            v5 ? min(Int(connect.properties.topicAliasMaximum ?? 0), limits.maxOutboundAliases) : 0
    }

    /// The keep-alive a connection is held to (seconds; 0: none): what the client asked, unless it asked for none or
    /// for more than `maximum` (when `maximum` is not 0). MQTT 3.1.1 §3.1.2.10, MQTT 5.0 §3.2.2.3.14.
    public static func keepAlive(asked: UInt16, maximum: Int) -> UInt16 {
        guard maximum > 0, asked == 0 || Int(asked) > maximum else { return asked }
        return UInt16(clamping: maximum)
    }

    /// A refused CONNECT's CONNACK, in the form the client's version reads (3.1.1 §3.2.2.3 return codes).
    public static func refusal(_ code: ReasonCode, _ version: ProtocolVersion) -> Packet {
        .connack(sessionPresent: false, reasonCode: code.connack(version), properties: .init())
    }

    /// This connection's refusal CONNACK.
    public func refusal(_ code: ReasonCode) -> Packet { Self.refusal(code, version) }

    /// The CONNACK that accepts the connection: MQTT 5 announces the server's limits (§3.2.2.3), the session expiry
    /// and keep-alive when they differ from what was asked, the client id the server assigned, and Response
    /// Information (§3.2.2.3.15) only when the client asked for it and the server has some for this identity.
    public func connack(sessionPresent: Bool, assignedClientID: String?, responseInformation: String?) -> Packet {
        var properties = Properties()
        if v5 {
            properties.assignedClientIdentifier = assignedClientID
            properties.topicAliasMaximum = UInt16(clamping: limits.topicAliasMaximum)
            properties.receiveMaximum = UInt16(clamping: limits.receiveMaximum)
            properties.maximumPacketSize = UInt32(clamping: limits.maximumPacketSize)
            if expirySeconds != requestedExpiry { properties.sessionExpiryInterval = UInt32(clamping: expirySeconds) }
            if keepAlive != clientAskedKeepAlive { properties.serverKeepAlive = keepAlive }
            if requestsResponseInformation, let responseInformation {
                properties.other.append((PropertyIdentifier.responseInformation, Array(responseInformation.utf8)))
            }
        }
        return .connack(sessionPresent: sessionPresent, reasonCode: .success, properties: properties)
    }

    // MARK: Packets

    public enum Action: Sendable, Equatable {
        /// A PUBLISH to authorize, admit, store and acknowledge (its topic alias already resolved; counted against
        /// the Receive Maximum when QoS 1 or 2).
        case publish(PublishPacket)
        case subscribe(packetID: UInt16, subscriptions: [Subscription], properties: Properties)
        case unsubscribe(packetID: UInt16, filters: [TopicFilter])
        /// PUBACK (QoS 1) or PUBCOMP (QoS 2) for a message the server delivered.
        case acknowledged(packetID: UInt16, qos: QoS)
        /// PUBREC for a QoS 2 message the server delivered.
        case deliveryReceived(packetID: UInt16, reasonCode: ReasonCode)
        /// PUBREL: the client released a QoS 2 message it sent; answer with `pubcomp(_:held:)`.
        case released(packetID: UInt16)
        /// Send this packet and go on.
        case reply(Packet)
        /// The server ends the connection: MQTT 5 after a DISCONNECT with `disconnect` (§4.13), MQTT 3.1.1 by closing
        /// it (`disconnect` nil, §4.8). `detail` says why, for the operators' log, when it is the client's fault.
        case close(disconnect: ReasonCode?, detail: String?)
        /// The client's DISCONNECT: the connection ends; the will is published only when `publishWill`.
        case ended(publishWill: Bool)
    }

    /// One packet from the client. `countInbound` counts a QoS 1 or 2 PUBLISH in and returns how many are now
    /// unacknowledged (the acknowledgements are written elsewhere, after the store, so the count lives there).
    /// The packet is consumed: a PUBLISH moves into its action instead of being copied (a copy retained each of its
    /// fields, for every message).
    public mutating func packetReceived(_ packet: consuming Packet, countInbound: (PublishPacket) -> Int) -> Action {
        switch consume packet {
        case .publish(let publish):
            // Bound with `let` and passed on: a `var` binding copied every publish out of the packet (each reference
            // retained, and released with the packet). Only a publish whose alias names its topic is copied.
            // MQTT 5.0 §3.3.2.3.4: a Topic Alias within the maximum announced; an alias alone names a topic set
            // earlier on this connection (aliases do not outlive it, §3.3.2.3.4 [MQTT-3.3.2-7]).
            if v5, let alias = publish.properties.topicAlias {
                guard alias >= 1, Int(alias) <= limits.topicAliasMaximum else {
                    return closing(.topicAliasInvalid, "Topic Alias \(alias) outside 1...\(limits.topicAliasMaximum)")
                }
                if publish.topic.isUnresolvedAlias {
                    guard let topic = aliases[alias] else {
                        return closing(.protocolError, "Topic Alias \(alias) used before it was set")
                    }
                    var named = publish
                    named.topic = topic
                    return publishReceived(named, countInbound)
                }
                aliases[alias] = publish.topic
            }
            return publishReceived(publish, countInbound)
        case .subscribe(let id, let subscriptions, let properties):
            return .subscribe(packetID: id, subscriptions: subscriptions, properties: properties)
        case .unsubscribe(let id, let filters, _):
            return .unsubscribe(packetID: id, filters: filters)
        case .puback(let id, _, _):
            return .acknowledged(packetID: id, qos: .atLeastOnce)
        case .pubcomp(let id, _, _):
            return .acknowledged(packetID: id, qos: .exactlyOnce)
        case .pubrec(let id, let reason, _):
            return .deliveryReceived(packetID: id, reasonCode: reason)
        case .pubrel(let id, _, _):
            return .released(packetID: id)
        case .pingreq:
            return .reply(.pingresp)
        case .disconnect(let reason, let properties):
            // MQTT 5.0 §3.14.2.2.2: the expiry may change at DISCONNECT, but not from 0 to non-zero.
            if let newExpiry = properties.sessionExpiryInterval {
                guard requestedExpiry != 0 || newExpiry == 0 else {
                    return closing(.protocolError, "Session Expiry set at DISCONNECT after 0 at CONNECT")
                }
                expirySeconds = min(Int(newExpiry), limits.maxSessionExpirySeconds)
            }
            // MQTT 5.0 §3.14.4: only a normal disconnection (0x00) discards the will; 3.1.1 DISCONNECT always does.
            return .ended(publishWill: v5 && reason != .normalDisconnection)
        case .auth:
            // MQTT 5.0 §4.12: no authentication method was agreed at CONNECT, so AUTH is refused.
            return closing(.badAuthenticationMethod, nil)
        case .connect:
            // §3.1 [MQTT-3.1.0-2]: a second CONNECT is a protocol error.
            return closing(.protocolError, "a second CONNECT")
        case .connack, .suback, .unsuback, .pingresp:
            return closing(.protocolError, "a packet only a server sends")
        }
    }

    /// A PUBLISH whose topic is known: within the Receive Maximum, or the connection ends.
    private func publishReceived(_ publish: consuming PublishPacket, _ countInbound: (PublishPacket) -> Int) -> Action {
        // MQTT 5.0 §3.3.4, §4.9: more QoS 1 and 2 publishes awaiting PUBACK or PUBCOMP than the Receive Maximum
        // announced: DISCONNECT 0x93. (MQTT 3.1.1 has no such limit: its publishes wait to be read.)
        if v5, publish.packetID != nil, countInbound(publish) > limits.receiveMaximum {
            return closing(
                .receiveMaximumExceeded, "more QoS 1 and 2 publishes unacknowledged than the Receive Maximum")
        }
        return .publish(publish)
    }

    /// The connection ends with `code` (MQTT 5: a DISCONNECT first; 3.1.1: closed, §4.8).
    public func closing(_ code: ReasonCode, _ detail: String? = nil) -> Action {
        .close(disconnect: v5 ? code : nil, detail: detail)
    }

    /// The answer to a PUBREL (§3.7): PUBCOMP, 0x92 Packet Identifier not found when the id was not held (MQTT 5).
    public func pubcomp(_ id: UInt16, held: Bool) -> Packet {
        .pubcomp(packetID: id, reasonCode: held || !v5 ? .success : .packetIdentifierNotFound, properties: .init())
    }

    /// The answer to a PUBREC for an id the server does not hold (§4.3.3): PUBREL 0x92 (3.1.1: a plain PUBREL).
    public func pubrelUnknown(_ id: UInt16) -> Packet {
        .pubrel(packetID: id, reasonCode: v5 ? .packetIdentifierNotFound : .success, properties: .init())
    }

    /// The answer to an UNSUBSCRIBE (§3.11.3): per filter, success, or 0x11 No subscription existed (MQTT 5; a 3.1.1
    /// UNSUBACK carries no codes).
    public func unsuback(_ id: UInt16, existed: [Bool]) -> Packet {
        .unsuback(
            packetID: id, reasonCodes: existed.map { $0 || !v5 ? .success : .noSubscriptionExisted },
            properties: .init())
    }

    /// What a SUBACK says for a filter the identity may not use, or beyond a quota, in this version (§3.9.3).
    public func subscribeRefused(_ code: ReasonCode) -> ReasonCode { code.suback(version) }

    // MARK: Refused publishes

    /// Why the server refused a PUBLISH (the hub's gateway decides; the protocol decides how it is said).
    public enum PublishRefusal: Sendable, Equatable {
        /// Over a rate limit.
        case overRate
        /// The server could not take it now (its store failed): the client may try again.
        case unavailable
        /// Its content: size, format, JSON, schema, a malformed counter (0x99).
        case invalidContent
        /// Not allowed: a topic outside the identity's, a replayed counter, a revoked certificate (0x87).
        case notAuthorized
        /// The identity crossed its quarantine threshold: the connection ends (`overRate` when the rate did it).
        case quarantined(overRate: Bool)
    }

    /// What to do with a refused PUBLISH (MQTT 5.0 §3.4.2.1, §3.5.2.1): MQTT 5 answers QoS 1 and 2 with a PUBACK
    /// or PUBREC reason code (0x97 Quota exceeded over the rate, 0x99 Payload format invalid, 0x87 Not authorized),
    /// drops QoS 0 but ends a sustained QoS 0 flood with DISCONNECT 0x96; quarantine ends the connection (0x96 or
    /// 0x87). MQTT 3.1.1 has no negative acknowledgement: over the rate the message is dropped unacknowledged (the
    /// client keeps it), any other refusal closes the connection.
    ///
    /// A store that cannot be reached ends the connection on both versions, whatever the QoS: DISCONNECT 0x89 Server
    /// busy on MQTT 5 (§3.14.2.1; 0x88 Server unavailable is a CONNACK code only), a close on 3.1.1. The client keeps
    /// the message unacknowledged in its session and sends it again once it has connected (refused with CONNACK 0x88
    /// while the store is away). A PUBACK 0x80 would end the message's flow: most clients then drop it.
    public mutating func publishRefused(_ refusal: PublishRefusal, qos: QoS) -> RefusalAction {
        if case .quarantined(let overRate) = refusal {
            return .close(disconnect: v5 ? (overRate ? .messageRateTooHigh : .notAuthorized) : nil)
        }
        if refusal == .unavailable { return .close(disconnect: v5 ? .serverBusy : nil) }
        let overRate = refusal == .overRate
        guard v5 else { return overRate ? .drop : .close(disconnect: nil) }
        guard qos != .atMostOnce else {
            guard overRate else { return .drop }
            refusedQoS0 += 1
            return refusedQoS0 >= limits.sustainedQoS0Flood ? .close(disconnect: .messageRateTooHigh) : .drop
        }
        let code: ReasonCode =
            switch refusal {
            case .overRate: .quotaExceeded
            case .unavailable: .serverBusy  // (ended above)
            case .invalidContent: .payloadFormatInvalid
            case .notAuthorized, .quarantined: .notAuthorized
            }
        return .acknowledge(code)
    }

    /// A PUBLISH was admitted: a QoS 0 flood is counted from here again.
    public mutating func publishAdmitted() { refusedQoS0 = 0 }

    public enum RefusalAction: Sendable, Equatable {
        /// PUBACK (QoS 1) or PUBREC (QoS 2) with this code; the connection goes on.
        case acknowledge(ReasonCode)
        /// Nothing is sent; the connection goes on.
        case drop
        /// The connection ends (MQTT 5 after a DISCONNECT with this code).
        case close(disconnect: ReasonCode?)
    }
}
