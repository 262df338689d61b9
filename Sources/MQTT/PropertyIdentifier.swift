/// MQTT 5.0 §2.2.2.2 property identifiers that `Properties` keeps as raw entries (`other`), by name.
public enum PropertyIdentifier {
    public static let responseTopic: UInt8 = 0x08
    public static let correlationData: UInt8 = 0x09
    public static let authenticationMethod: UInt8 = 0x15
    public static let requestProblemInformation: UInt8 = 0x17
    public static let requestResponseInformation: UInt8 = 0x19
    public static let responseInformation: UInt8 = 0x1A
}

extension Properties {
    /// The raw value of a property kept in `other`.
    public func raw(_ identifier: UInt8) -> [UInt8]? { other.first { $0.0 == identifier }?.1 }

    /// §3.3.2.3.5 Response Topic, as the UTF-8 text it was sent as.
    public var responseTopic: String? {
        raw(PropertyIdentifier.responseTopic).map { String(decoding: $0, as: UTF8.self) }
    }

    /// §3.1.2.11.7: 0 asks the server to leave Reason Strings and User Properties off all but PUBLISH, CONNACK and
    /// DISCONNECT; absent means 1.
    public var requestProblemInformation: Bool { raw(PropertyIdentifier.requestProblemInformation) != [0] }

    /// §3.1.2.11.6: 1 asks for Response Information in the CONNACK; absent means 0.
    public var requestResponseInformation: Bool { raw(PropertyIdentifier.requestResponseInformation) == [1] }
}
