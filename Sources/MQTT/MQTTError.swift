/// Why a packet was refused. `reasonCode` is the MQTT 5 reason code to send in a DISCONNECT before closing
/// (MQTT 5.0 §3.14.2.1); MQTT 3.1.1 connections are simply closed (§4.8). `detail` is for operators' logs.
public struct MQTTError: Error, Equatable, CustomStringConvertible {
    public enum Code: String, Sendable {
        case malformedPacket, protocolError, packetTooLarge, unsupportedProtocolVersion, topicNameInvalid,
            topicFilterInvalid, qosNotSupported, topicAliasInvalid
    }

    public let code: Code
    public let detail: String
    /// For `unsupportedProtocolVersion`: the level the CONNECT named, so the CONNACK can be in a form that client
    /// reads (MQTT 3.1.1 §3.2.2.3 return code 0x01 below level 5, MQTT 5.0 reason code 0x84 above).
    public var protocolLevel: UInt8?

    public init(_ code: Code, _ detail: String) {
        self.code = code
        self.detail = detail
    }

    /// MQTT 5.0 §2.4 reason codes.
    public var reasonCode: ReasonCode {
        switch code {
        case .malformedPacket: .malformedPacket
        case .protocolError: .protocolError
        case .packetTooLarge: .packetTooLarge
        case .unsupportedProtocolVersion: .unsupportedProtocolVersion
        case .topicNameInvalid: .topicNameInvalid
        case .topicFilterInvalid: .topicFilterInvalid
        case .qosNotSupported: .qosNotSupported
        case .topicAliasInvalid: .topicAliasInvalid
        }
    }

    public static func == (lhs: MQTTError, rhs: MQTTError) -> Bool { lhs.code == rhs.code }
    public var description: String { "\(code.rawValue): \(detail)" }

    static func malformed(_ detail: String) -> MQTTError { MQTTError(.malformedPacket, detail) }
}
