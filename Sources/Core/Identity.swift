/// Who a peer is, as decided by the hub from the SAN URI of a certificate the hub issued.
///
/// The role lives in the certificate (`urn:bulwark:device:<id>`, `urn:bulwark:operator:<name>` or
/// `urn:bulwark:application:<name>`), never in a request body, header or URL. An application (a dashboard, a data
/// pipeline) reads the fleet and sends commands over MQTT and has no operator API rights.
public enum Identity: Hashable, Sendable, CustomStringConvertible {
    case device(DeviceID)
    case `operator`(OperatorName)
    case application(OperatorName)

    public static let devicePrefix = "urn:bulwark:device:"
    public static let operatorPrefix = "urn:bulwark:operator:"
    public static let applicationPrefix = "urn:bulwark:application:"

    /// Parses a SAN URI. Returns nil for anything that is not exactly one of the two Bulwark forms.
    public init?(uri: String) {
        if uri.hasPrefix(Self.devicePrefix), let id = try? DeviceID(uri.dropFirst(Self.devicePrefix.count)) {
            self = .device(id)
        } else if uri.hasPrefix(Self.operatorPrefix),
            let name = try? OperatorName(uri.dropFirst(Self.operatorPrefix.count))
        {
            self = .operator(name)
        } else if uri.hasPrefix(Self.applicationPrefix),
            let name = try? OperatorName(uri.dropFirst(Self.applicationPrefix.count))
        {
            self = .application(name)
        } else {
            return nil
        }
    }

    public var uri: String {
        switch self {
        case .device(let id): Self.devicePrefix + id.rawValue
        case .operator(let name): Self.operatorPrefix + name.rawValue
        case .application(let name): Self.applicationPrefix + name.rawValue
        }
    }

    public var description: String { uri }

    public var deviceID: DeviceID? {
        if case .device(let id) = self { return id }
        return nil
    }
}
