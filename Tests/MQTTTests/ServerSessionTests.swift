import MQTT
import Testing

/// The server's session rules driven packet by packet, without a socket: CONNECT negotiation, topic aliases, the
/// Receive Maximum, DISCONNECT, refused publishes and how each answer is said in MQTT 5.0 and 3.1.1.
@Suite struct ServerSessionTests {
    static let limits = ServerSession.Limits(
        topicAliasMaximum: 10, receiveMaximum: 3, maximumPacketSize: 65_536, maxSessionExpirySeconds: 3600,
        maxKeepAliveSeconds: 120, maxOutboundAliases: 16, maxOutboundInFlight: 100, sustainedQoS0Flood: 5)

    static func connect(
        _ version: ProtocolVersion = .v5, clientID: String = "d1", cleanStart: Bool = true, keepAlive: UInt16 = 30,
        _ configure: (inout ConnectPacket) -> Void = { _ in }
    ) -> ConnectPacket {
        var packet = ConnectPacket(version: version, clientID: clientID, keepAlive: keepAlive)
        packet.cleanStart = cleanStart
        configure(&packet)
        return packet
    }

    static func accepted(_ connect: ConnectPacket) throws -> ServerSession {
        guard case .accept(let session) = ServerSession.connectReceived(connect, limits: limits) else {
            throw MQTTError(.protocolError, "refused")
        }
        return session
    }

    static func publish(
        _ topic: String, qos: QoS = .atLeastOnce, id: UInt16? = 1, alias: UInt16? = nil
    ) throws -> Packet {
        var properties = Properties()
        properties.topicAlias = alias
        return .publish(
            PublishPacket(
                topic: topic.isEmpty ? .unresolvedAlias : try TopicName(topic), payload: [], qos: qos,
                packetID: qos == .atMostOnce ? nil : id, properties: properties))
    }

    static func none(_: PublishPacket) -> Int { 0 }

    // MARK: CONNECT

    @Test func connectRefusalsAreSaidInTheClientsVersion() throws {
        // MQTT 3.1.1 §3.1.3.1: an empty client id that asks to keep its session: 0x02 identifier rejected.
        #expect(
            ServerSession.connectReceived(Self.connect(.v311, clientID: "", cleanStart: false), limits: Self.limits)
                == .refuse(.connack(sessionPresent: false, reasonCode: 0x02, properties: .init())))
        // An empty client id with a clean session is fine (the server assigns one).
        #expect(try Self.accepted(Self.connect(.v311, clientID: "", cleanStart: true)).version == .v311)
        // MQTT 5.0 §3.1.2.11.3: Receive Maximum 0 is a protocol error.
        #expect(
            ServerSession.connectReceived(Self.connect { $0.properties.receiveMaximum = 0 }, limits: Self.limits)
                == .refuse(.connack(sessionPresent: false, reasonCode: .protocolError, properties: .init())))
        // §4.12: no extended authentication: a CONNECT naming a method is refused with 0x8C.
        #expect(
            ServerSession.connectReceived(
                Self.connect {
                    $0.properties.other.append((PropertyIdentifier.authenticationMethod, Array("SCRAM".utf8)))
                },
                limits: Self.limits)
                == .refuse(.connack(sessionPresent: false, reasonCode: .badAuthenticationMethod, properties: .init())))
        // The server's own refusals, in each version's words (3.1.1 §3.2.2.3 has only 0x01-0x05).
        let table: [(ReasonCode, v5: ReasonCode, v311: ReasonCode)] = [
            (.clientIdentifierNotValid, 0x85, 0x02), (.notAuthorized, 0x87, 0x05), (.quotaExceeded, 0x97, 0x03),
            (.unsupportedProtocolVersion, 0x84, 0x01), (.badUserNameOrPassword, 0x86, 0x04),
            (.serverUnavailable, 0x88, 0x03),
        ]
        for (code, v5, v311) in table {
            #expect(
                ServerSession.refusal(code, .v5) == .connack(sessionPresent: false, reasonCode: v5, properties: .init())
            )
            #expect(
                ServerSession.refusal(code, .v311)
                    == .connack(sessionPresent: false, reasonCode: v311, properties: .init()))
        }
    }

    @Test func theConnackAnnouncesLimitsAndWhatDiffersFromTheRequest() throws {
        let session = try Self.accepted(
            Self.connect(keepAlive: 0) {
                $0.properties.sessionExpiryInterval = 86_400
                $0.properties.other.append((PropertyIdentifier.requestResponseInformation, [1]))
                $0.properties.receiveMaximum = 500
                $0.properties.topicAliasMaximum = 99
            })
        #expect(session.expirySeconds == 3600)
        #expect(session.keepAlive == 120, "none asked: the maximum")
        #expect(session.clientReceiveMaximum == 100 && session.clientTopicAliasMaximum == 16)
        guard
            case .connack(false, .success, let properties) = session.connack(
                sessionPresent: false, assignedClientID: "auto-1", responseInformation: "devices/d1/commands/response")
        else {
            Issue.record("no CONNACK")
            return
        }
        #expect(properties.sessionExpiryInterval == 3600)
        #expect(properties.serverKeepAlive == 120)
        #expect(properties.receiveMaximum == 3 && properties.topicAliasMaximum == 10)
        #expect(properties.maximumPacketSize == 65_536)
        #expect(properties.assignedClientIdentifier == "auto-1")
        #expect(properties.raw(PropertyIdentifier.responseInformation) == Array("devices/d1/commands/response".utf8))

        // What the client asked and got is not repeated; Response Information only when asked for.
        let plain = try Self.accepted(Self.connect(keepAlive: 60) { $0.properties.sessionExpiryInterval = 10 })
        guard
            case .connack(_, _, let quiet) = plain.connack(
                sessionPresent: true, assignedClientID: nil, responseInformation: "x")
        else { return }
        #expect(quiet.sessionExpiryInterval == nil && quiet.serverKeepAlive == nil)
        #expect(quiet.raw(PropertyIdentifier.responseInformation) == nil)

        // MQTT 3.1.1: no properties; cleanSession = 0 keeps the session for the configured maximum.
        let old = try Self.accepted(Self.connect(.v311, cleanStart: false, keepAlive: 500))
        #expect(old.expirySeconds == 3600 && old.keepAlive == 120)
        #expect(
            old.connack(sessionPresent: true, assignedClientID: nil, responseInformation: "x")
                == .connack(sessionPresent: true, reasonCode: .success, properties: .init()))
        #expect(try Self.accepted(Self.connect(.v311, cleanStart: true)).expirySeconds == 0)
    }

    @Test func keepAliveIsHeldToTheMaximum() {
        #expect(ServerSession.keepAlive(asked: 30, maximum: 120) == 30)
        #expect(ServerSession.keepAlive(asked: 0, maximum: 120) == 120)
        #expect(ServerSession.keepAlive(asked: 600, maximum: 120) == 120)
        #expect(ServerSession.keepAlive(asked: 0, maximum: 0) == 0)
    }

    // MARK: Packets

    @Test func topicAliasesAreSetUsedAndBounded() throws {
        var session = try Self.accepted(Self.connect())
        // Set alias 3, then use it alone.
        guard
            case .publish(let first) = session.packetReceived(
                try Self.publish("a/b", alias: 3), countInbound: Self.none)
        else { throw MQTTError(.protocolError, "refused") }
        #expect(first.topic.rawValue == "a/b")
        guard
            case .publish(let second) = session.packetReceived(try Self.publish("", alias: 3), countInbound: Self.none)
        else { throw MQTTError(.protocolError, "refused") }
        #expect(second.topic.rawValue == "a/b")
        // An alias never set: protocol error; 0 or over the maximum: Topic Alias invalid.
        #expect(
            session.packetReceived(try Self.publish("", alias: 4), countInbound: Self.none).disconnectCode
                == .protocolError)
        for alias: UInt16 in [0, 11] {
            #expect(
                session.packetReceived(try Self.publish("a/b", alias: alias), countInbound: Self.none).disconnectCode
                    == .topicAliasInvalid)
        }
        // A new connection starts with no aliases (§3.3.2.3.4): the old one is not known.
        var next = try Self.accepted(Self.connect())
        #expect(
            next.packetReceived(try Self.publish("", alias: 3), countInbound: Self.none).disconnectCode
                == .protocolError)
    }

    @Test func theReceiveMaximumIsEnforcedOnMQTT5Only() throws {
        var session = try Self.accepted(Self.connect())
        var inFlight = 0
        let count: (PublishPacket) -> Int = { _ in
            inFlight += 1
            return inFlight
        }
        for id: UInt16 in 1...3 {
            guard case .publish = session.packetReceived(try Self.publish("t", id: id), countInbound: count) else {
                throw MQTTError(.protocolError, "refused at \(id)")
            }
        }
        #expect(
            session.packetReceived(try Self.publish("t", id: 4), countInbound: count).disconnectCode
                == .receiveMaximumExceeded)
        // QoS 0 is not counted.
        inFlight = 3
        guard case .publish = session.packetReceived(try Self.publish("t", qos: .atMostOnce), countInbound: count)
        else {
            throw MQTTError(.protocolError, "QoS 0 refused")
        }
        #expect(inFlight == 3)
        // MQTT 3.1.1 has no Receive Maximum: its publishes wait to be read, and nothing is counted.
        var old = try Self.accepted(Self.connect(.v311))
        for id: UInt16 in 1...10 {
            guard case .publish = old.packetReceived(try Self.publish("t", id: id), countInbound: { _ in 1000 }) else {
                throw MQTTError(.protocolError, "3.1.1 refused")
            }
        }
    }

    @Test func disconnectDecidesTheWillAndMayChangeTheExpiry() throws {
        var session = try Self.accepted(Self.connect { $0.properties.sessionExpiryInterval = 60 })
        var change = Properties()
        change.sessionExpiryInterval = 7200
        #expect(
            session.packetReceived(
                .disconnect(reasonCode: .normalDisconnection, properties: change), countInbound: Self.none)
                == .ended(publishWill: false))
        #expect(session.expirySeconds == 3600, "changed, within the maximum")
        #expect(
            session.packetReceived(
                .disconnect(reasonCode: .disconnectWithWillMessage, properties: .init()), countInbound: Self.none)
                == .ended(publishWill: true))
        // §3.14.2.2.2: from 0 at CONNECT to non-zero at DISCONNECT is a protocol error.
        var none = try Self.accepted(Self.connect())
        #expect(
            none.packetReceived(
                .disconnect(reasonCode: .normalDisconnection, properties: change), countInbound: Self.none
            )
            .disconnectCode == .protocolError)
        // MQTT 3.1.1: DISCONNECT always discards the will.
        var old = try Self.accepted(Self.connect(.v311))
        #expect(
            old.packetReceived(.disconnect(reasonCode: 0, properties: .init()), countInbound: Self.none)
                == .ended(publishWill: false))
    }

    @Test func packetsAClientMayNotSendEndTheConnection() throws {
        var session = try Self.accepted(Self.connect())
        #expect(
            session.packetReceived(.auth(reasonCode: 0x18, properties: .init()), countInbound: Self.none).disconnectCode
                == .badAuthenticationMethod)
        #expect(
            session.packetReceived(.connect(Self.connect()), countInbound: Self.none).disconnectCode == .protocolError)
        #expect(session.packetReceived(.pingresp, countInbound: Self.none).disconnectCode == .protocolError)
        #expect(session.packetReceived(.pingreq, countInbound: Self.none) == .reply(.pingresp))
        // MQTT 3.1.1 (§4.8): closed without a DISCONNECT.
        var old = try Self.accepted(Self.connect(.v311))
        #expect(
            old.packetReceived(.connect(Self.connect(.v311)), countInbound: Self.none)
                == .close(disconnect: nil, detail: "a second CONNECT"))
    }

    @Test func answersToReleasesAndUnsubscribesFollowTheVersion() throws {
        let v5 = try Self.accepted(Self.connect())
        let v311 = try Self.accepted(Self.connect(.v311))
        #expect(
            v5.pubcomp(7, held: false)
                == .pubcomp(packetID: 7, reasonCode: .packetIdentifierNotFound, properties: .init()))
        #expect(v5.pubcomp(7, held: true) == .pubcomp(packetID: 7, reasonCode: .success, properties: .init()))
        #expect(v311.pubcomp(7, held: false) == .pubcomp(packetID: 7, reasonCode: .success, properties: .init()))
        #expect(v5.pubrelUnknown(8) == .pubrel(packetID: 8, reasonCode: 0x92, properties: .init()))
        #expect(v311.pubrelUnknown(8) == .pubrel(packetID: 8, reasonCode: 0, properties: .init()))
        #expect(
            v5.unsuback(9, existed: [true, false])
                == .unsuback(packetID: 9, reasonCodes: [0x00, 0x11], properties: .init()))
        #expect(
            v311.unsuback(9, existed: [true, false])
                == .unsuback(packetID: 9, reasonCodes: [0, 0], properties: .init()))
        #expect(v5.subscribeRefused(.notAuthorized) == 0x87 && v311.subscribeRefused(.notAuthorized) == 0x80)
        #expect(v5.subscribeRefused(.quotaExceeded) == 0x97 && v311.subscribeRefused(.quotaExceeded) == 0x80)
    }

    // MARK: Refused publishes

    @Test func refusedPublishesAreAnsweredAsEachVersionCan() throws {
        var v5 = try Self.accepted(Self.connect())
        #expect(v5.publishRefused(.overRate, qos: .atLeastOnce) == .acknowledge(.quotaExceeded))
        #expect(v5.publishRefused(.invalidContent, qos: .exactlyOnce) == .acknowledge(.payloadFormatInvalid))
        #expect(v5.publishRefused(.notAuthorized, qos: .atLeastOnce) == .acknowledge(.notAuthorized))
        #expect(v5.publishRefused(.unavailable, qos: .atLeastOnce) == .close(disconnect: .serverBusy))
        #expect(v5.publishRefused(.unavailable, qos: .atMostOnce) == .close(disconnect: .serverBusy))
        #expect(v5.publishRefused(.invalidContent, qos: .atMostOnce) == .drop)
        #expect(
            v5.publishRefused(.quarantined(overRate: true), qos: .atLeastOnce)
                == .close(disconnect: .messageRateTooHigh))
        #expect(
            v5.publishRefused(.quarantined(overRate: false), qos: .atMostOnce) == .close(disconnect: .notAuthorized))
        var v311 = try Self.accepted(Self.connect(.v311))
        #expect(v311.publishRefused(.overRate, qos: .atLeastOnce) == .drop, "the client keeps it and resends")
        #expect(v311.publishRefused(.invalidContent, qos: .atLeastOnce) == .close(disconnect: nil))
        #expect(v311.publishRefused(.unavailable, qos: .atMostOnce) == .close(disconnect: nil))
        #expect(v311.publishRefused(.quarantined(overRate: true), qos: .atLeastOnce) == .close(disconnect: nil))
    }

    @Test func aSustainedQoS0FloodIsDisconnectedAndAnAdmittedPublishResetsTheCount() throws {
        var session = try Self.accepted(Self.connect())
        for _ in 1..<5 { #expect(session.publishRefused(.overRate, qos: .atMostOnce) == .drop) }
        session.publishAdmitted()
        for _ in 1..<5 { #expect(session.publishRefused(.overRate, qos: .atMostOnce) == .drop) }
        #expect(session.publishRefused(.overRate, qos: .atMostOnce) == .close(disconnect: .messageRateTooHigh))
        // Refusals for other reasons are not a flood.
        var other = try Self.accepted(Self.connect())
        for _ in 1...10 { #expect(other.publishRefused(.invalidContent, qos: .atMostOnce) == .drop) }
    }

    // MARK: Reason codes

    @Test func reasonCodesAreTheSpecificationsBytes() {
        // MQTT 5.0 §2.4 Table 2-6, spot checks across the table, and the failure boundary.
        let table: [(ReasonCode, UInt8)] = [
            (.success, 0x00), (.grantedQoS2, 0x02), (.disconnectWithWillMessage, 0x04), (.noMatchingSubscribers, 0x10),
            (.noSubscriptionExisted, 0x11), (.unspecifiedError, 0x80), (.malformedPacket, 0x81), (.protocolError, 0x82),
            (.notAuthorized, 0x87), (.badAuthenticationMethod, 0x8C), (.sessionTakenOver, 0x8E),
            (.packetIdentifierNotFound, 0x92), (.receiveMaximumExceeded, 0x93), (.topicAliasInvalid, 0x94),
            (.packetTooLarge, 0x95), (.messageRateTooHigh, 0x96), (.quotaExceeded, 0x97), (.payloadFormatInvalid, 0x99),
            (.wildcardSubscriptionsNotSupported, 0xA2),
        ]
        for (code, byte) in table {
            #expect(code.rawValue == byte)
            #expect(code.isFailure == (byte >= 0x80))
        }
        #expect("\(ReasonCode.sessionTakenOver)" == "0x8E" && "\(ReasonCode.success)" == "0x00")
        #expect(MQTTError(.topicAliasInvalid, "").reasonCode == .topicAliasInvalid)
    }
}

extension ServerSession.Action {
    /// The DISCONNECT code of a `close`, nil for any other action.
    var disconnectCode: ReasonCode? {
        if case .close(let code, _) = self { return code }
        return nil
    }
}
