/// Who a peer is, as decided by the hub from the SAN URI of a certificate the hub issued.
///
/// The role lives in the certificate (`urn:bulwark:device:<id>`, `urn:bulwark:operator:<name>` or
/// `urn:bulwark:application:<name>`, `urn:bulwark:monitor:<name>`), never in a request body, header or URL. An
/// application (a dashboard, a data pipeline) reads the fleet and sends commands over MQTT and has no operator API
/// rights. A monitor (a Prometheus server) reads `GET /metrics` on the operator listener and nothing else.
public enum Identity: Hashable, Sendable, CustomStringConvertible {
    case device(DeviceID)
    case `operator`(OperatorName)
    case application(OperatorName)
    case monitor(OperatorName)

    public static let devicePrefix = "urn:bulwark:device:"
    public static let operatorPrefix = "urn:bulwark:operator:"
    public static let applicationPrefix = "urn:bulwark:application:"
    public static let monitorPrefix = "urn:bulwark:monitor:"

    /// Parses a SAN URI. Returns nil for anything that is not exactly one of the Bulwark forms.
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
        } else if uri.hasPrefix(Self.monitorPrefix),
            let name = try? OperatorName(uri.dropFirst(Self.monitorPrefix.count))
        {
            self = .monitor(name)
        } else {
            return nil
        }
    }

    public var uri: String {
        switch self {
        case .device(let id): Self.devicePrefix + id.rawValue
        case .operator(let name): Self.operatorPrefix + name.rawValue
        case .application(let name): Self.applicationPrefix + name.rawValue
        case .monitor(let name): Self.monitorPrefix + name.rawValue
        }
    }

    public var description: String { uri }

    public var deviceID: DeviceID? {
        if case .device(let id) = self { return id }
        return nil
    }
}
