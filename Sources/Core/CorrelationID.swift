/// A random identifier given to every request, returned to the client in error bodies and written to the log and
/// the security events, so an operator can find the detail of a refusal the client only saw as "forbidden".
public struct CorrelationID: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: String

    /// 96 random bits from the system's CSPRNG (through `RandomPool`, which draws 256 bytes per system call), as 24
    /// lowercase hex digits (every request and MQTT message gets one: the digits are written in place).
    public init() {
        let (high, low) = RandomPool.shared.next96()
        self.init(high: high, low: low)
    }

    /// The 96 bits as 24 lowercase hex digits, high first.
    init(high: UInt64, low: UInt32) {
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
