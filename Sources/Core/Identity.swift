/// Who a peer is, as decided by the hub from the SAN URI of a certificate the hub issued.
///
/// The role lives in the certificate (`urn:bulwark:device:<id>` or `urn:bulwark:operator:<name>`), never in a
/// request body, header or URL.
public enum Identity: Hashable, Sendable, CustomStringConvertible {
    case device(DeviceID)
    case `operator`(OperatorName)

    public static let devicePrefix = "urn:bulwark:device:"
    public static let operatorPrefix = "urn:bulwark:operator:"

    /// Parses a SAN URI. Returns nil for anything that is not exactly one of the two Bulwark forms.
    public init?(uri: String) {
        if uri.hasPrefix(Self.devicePrefix), let id = try? DeviceID(uri.dropFirst(Self.devicePrefix.count)) {
            self = .device(id)
        } else if uri.hasPrefix(Self.operatorPrefix),
            let name = try? OperatorName(uri.dropFirst(Self.operatorPrefix.count))
        {
            self = .operator(name)
        } else {
            return nil
        }
    }

    public var uri: String {
        switch self {
        case .device(let id): Self.devicePrefix + id.rawValue
        case .operator(let name): Self.operatorPrefix + name.rawValue
        }
    }

    public var description: String { uri }

    public var deviceID: DeviceID? {
        if case .device(let id) = self { return id }
        return nil
    }
}
