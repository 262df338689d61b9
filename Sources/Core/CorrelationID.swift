/// A random identifier given to every request, returned to the client in error bodies and written to the log and
/// the security events, so an operator can find the detail of a refusal the client only saw as "forbidden".
public struct CorrelationID: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: String

    /// 96 random bits from the system generator, as 24 lowercase hex digits (every request and MQTT message gets
    /// one: the digits are written in place).
    public init() {
        var generator = SystemRandomNumberGenerator()
        let high = generator.next() as UInt64
        let low = generator.next() as UInt32
        self.rawValue = String(unsafeUninitializedCapacity: 24) { digits in
            let alphabet: StaticString = "0123456789abcdef"
            let table = alphabet.utf8Start
            for index in 0..<16 { digits[index] = table[Int((high >> (60 - 4 * UInt64(index))) & 0xf)] }
            for index in 0..<8 { digits[16 + index] = table[Int((low >> (28 - 4 * UInt32(index))) & 0xf)] }
            return 24
        }
    }

    public init(rawValue: String) { self.rawValue = rawValue }

    public var description: String { rawValue }
}
