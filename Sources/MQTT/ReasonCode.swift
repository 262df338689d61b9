/// An MQTT reason code: MQTT 5.0 §2.4 (one byte in CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK,
/// DISCONNECT and AUTH; 0x80 and above are failures), and the MQTT 3.1.1 forms the same byte takes (§3.2.2.3
/// CONNACK return codes 0x00-0x05, §3.9.3 SUBACK 0x00-0x02 and 0x80).
///
/// A struct of named values rather than a closed enum: a peer may send a byte this table does not name, which is
/// then kept as it came (and logged by its number), not turned into another code. The hub's own code uses the names;
/// the byte is what goes on the wire.
public struct ReasonCode: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible,
    ExpressibleByIntegerLiteral
{
    public let rawValue: UInt8

    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public init(integerLiteral value: UInt8) { self.rawValue = value }

    public static func < (lhs: ReasonCode, rhs: ReasonCode) -> Bool { lhs.rawValue < rhs.rawValue }

    /// 0x80 and above (MQTT 5.0 §2.4): the operation failed.
    public var isFailure: Bool { rawValue >= 0x80 }

    // MARK: MQTT 5.0 §2.4, Table 2-6

    /// 0x00: Success (CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK, AUTH), Normal disconnection (DISCONNECT),
    /// Granted QoS 0 (SUBACK).
    public static let success: ReasonCode = 0x00
    public static let normalDisconnection: ReasonCode = 0x00
    public static let grantedQoS0: ReasonCode = 0x00
    public static let grantedQoS1: ReasonCode = 0x01
    public static let grantedQoS2: ReasonCode = 0x02
    public static let disconnectWithWillMessage: ReasonCode = 0x04
    public static let noMatchingSubscribers: ReasonCode = 0x10
    public static let noSubscriptionExisted: ReasonCode = 0x11
    public static let continueAuthentication: ReasonCode = 0x18
    public static let reAuthenticate: ReasonCode = 0x19
    public static let unspecifiedError: ReasonCode = 0x80
    public static let malformedPacket: ReasonCode = 0x81
    public static let protocolError: ReasonCode = 0x82
    public static let implementationSpecificError: ReasonCode = 0x83
    public static let unsupportedProtocolVersion: ReasonCode = 0x84
    public static let clientIdentifierNotValid: ReasonCode = 0x85
    public static let badUserNameOrPassword: ReasonCode = 0x86
    public static let notAuthorized: ReasonCode = 0x87
    public static let serverUnavailable: ReasonCode = 0x88
    public static let serverBusy: ReasonCode = 0x89
    public static let banned: ReasonCode = 0x8A
    public static let serverShuttingDown: ReasonCode = 0x8B
    public static let badAuthenticationMethod: ReasonCode = 0x8C
    public static let keepAliveTimeout: ReasonCode = 0x8D
    public static let sessionTakenOver: ReasonCode = 0x8E
    public static let topicFilterInvalid: ReasonCode = 0x8F
    public static let topicNameInvalid: ReasonCode = 0x90
    public static let packetIdentifierInUse: ReasonCode = 0x91
    public static let packetIdentifierNotFound: ReasonCode = 0x92
    public static let receiveMaximumExceeded: ReasonCode = 0x93
    public static let topicAliasInvalid: ReasonCode = 0x94
    public static let packetTooLarge: ReasonCode = 0x95
    public static let messageRateTooHigh: ReasonCode = 0x96
    public static let quotaExceeded: ReasonCode = 0x97
    public static let administrativeAction: ReasonCode = 0x98
    public static let payloadFormatInvalid: ReasonCode = 0x99
    public static let retainNotSupported: ReasonCode = 0x9A
    public static let qosNotSupported: ReasonCode = 0x9B
    public static let useAnotherServer: ReasonCode = 0x9C
    public static let serverMoved: ReasonCode = 0x9D
    public static let sharedSubscriptionsNotSupported: ReasonCode = 0x9E
    public static let connectionRateExceeded: ReasonCode = 0x9F
    public static let maximumConnectTime: ReasonCode = 0xA0
    public static let subscriptionIdentifiersNotSupported: ReasonCode = 0xA1
    public static let wildcardSubscriptionsNotSupported: ReasonCode = 0xA2

    // MARK: MQTT 3.1.1

    /// §3.9.3: a SUBACK return code 0x80 (the only failure 3.1.1 has).
    public static let v311SubscribeFailure: ReasonCode = 0x80

    /// The CONNACK return code an MQTT 3.1.1 client reads (§3.2.2.3) for an MQTT 5 refusal: 0x01 unacceptable
    /// protocol version, 0x02 identifier rejected, 0x04 bad user name or password, 0x05 not authorized, and 0x03
    /// server unavailable for every other refusal (3.1.1 has no quota or protocol-error code).
    public var v311ConnectReturnCode: ReasonCode {
        switch self {
        case .success: .success
        case .unsupportedProtocolVersion: 0x01
        case .clientIdentifierNotValid: 0x02
        case .badUserNameOrPassword: 0x04
        case .notAuthorized, .banned: 0x05
        default: 0x03
        }
    }

    /// This code in the form `version` uses in a CONNACK.
    public func connack(_ version: ProtocolVersion) -> ReasonCode {
        version == .v5 ? self : v311ConnectReturnCode
    }

    /// The failure code a SUBACK carries in `version` (3.1.1 knows only 0x80).
    public func suback(_ version: ProtocolVersion) -> ReasonCode {
        version == .v5 || !isFailure ? self : .v311SubscribeFailure
    }

    public var description: String {
        let hex = String(rawValue, radix: 16, uppercase: true)
        return "0x" + (hex.count == 1 ? "0" + hex : hex)
    }
}
