/// A random identifier given to every request, returned to the client in error bodies and written to the log and
/// the security events, so an operator can find the detail of a refusal the client only saw as "forbidden".
public struct CorrelationID: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: String

    /// 96 random bits from the system generator, as 24 lowercase hex digits.
    public init() {
        var generator = SystemRandomNumberGenerator()
        let high = generator.next() as UInt64
        let low = generator.next() as UInt32
        self.rawValue = hex(high, width: 16) + hex(UInt64(low), width: 8)
    }

    public init(rawValue: String) { self.rawValue = rawValue }

    public var description: String { rawValue }
}

func hex(_ value: UInt64, width: Int) -> String {
    let digits = String(value, radix: 16)
    return String(repeating: "0", count: max(0, width - digits.count)) + digits
}
