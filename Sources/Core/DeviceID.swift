/// A device identifier as it appears in certificates (`urn:bulwark:device:<id>`), topics and the store.
///
/// Parse, don't validate: the only way to get a `DeviceID` is through `init(_:)`, which refuses anything that could
/// be confused with a separator in a URN, an MQTT topic (`/`, `+`, `#`) or a path. 1–64 characters from
/// `[A-Za-z0-9._-]`, starting with a letter or digit.
public struct DeviceID: Hashable, Sendable, Comparable, CustomStringConvertible, Codable {
    public let rawValue: String

    public init(_ text: some StringProtocol) throws(IdentifierError) {
        guard Self.isValid(text) else { throw IdentifierError(kind: "device id") }
        self.rawValue = String(text)
    }

    static func isValid(_ text: some StringProtocol) -> Bool {
        let bytes = Array(text.utf8)
        guard (1...64).contains(bytes.count), let first = bytes.first, isAlphanumeric(first) else { return false }
        return bytes.allSatisfy {
            isAlphanumeric($0) || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "-")
        }
    }

    public var description: String { rawValue }
    public static func < (lhs: DeviceID, rhs: DeviceID) -> Bool { lhs.rawValue < rhs.rawValue }

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        do { try self.init(text) } catch {
            throw DecodingError.dataCorrupted(
                .init(codingPath: decoder.codingPath, debugDescription: "invalid device id"))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }
}

/// An operator's name, as in `urn:bulwark:operator:<name>`. Same alphabet and length as `DeviceID`.
public struct OperatorName: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: String

    public init(_ text: some StringProtocol) throws(IdentifierError) {
        guard DeviceID.isValid(text) else { throw IdentifierError(kind: "operator name") }
        self.rawValue = String(text)
    }

    public var description: String { rawValue }
}

@inline(__always)
func isAlphanumeric(_ byte: UInt8) -> Bool {
    (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)
        || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
}

/// Thrown when text is not a valid identifier. Says which kind, never echoes the input (it may be hostile).
public struct IdentifierError: Error, Equatable, CustomStringConvertible {
    public let kind: String
    public init(kind: String) { self.kind = kind }
    public var description: String {
        "invalid \(kind): use 1-64 characters from A-Z a-z 0-9 . _ - starting with a letter or digit"
    }
}
