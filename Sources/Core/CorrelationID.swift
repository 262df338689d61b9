/// A random identifier given to every request, returned to the client in error bodies and written to the log and
/// the security events, so an operator can find the detail of a refusal the client only saw as "forbidden".
public struct CorrelationID: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: String

    /// 89 random bits from the system's CSPRNG (through `RandomPool`, which draws 4,096 bytes per system call), as 15
    /// characters of the URL-safe Base64 alphabet (RFC 4648 §5: `A-Z a-z 0-9 - _`), written in place. The first is
    /// one of its first 32 (`A-Z a-f`, 5 bits), so an id never starts with `-` and reads as no option to `grep` or
    /// any other command an operator pastes it into. Fifteen bytes is the most a Swift string holds inline: every
    /// HTTP request and MQTT message gets one, and at 24 hex digits each was an allocation, freed on the store's
    /// thread with the message (2026-12-06). 89 bits keep a collision among a trillion ids below one in a thousand.
    public init() {
        let (high, low) = RandomPool.shared.next96()
        self.init(high: high, low: low)
    }

    /// The high 64 bits and the low 25 of `low` as 15 Base64url characters, high first: 5 bits, then sixes.
    init(high: UInt64, low: UInt32) {
        self.rawValue = String(unsafeUninitializedCapacity: 15) { characters in
            let alphabet: StaticString = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
            let table = alphabet.utf8Start
            // 1 character from the high 5 bits, 9 from the next 54, then 5 from its last 5 bits and the low 25.
            characters[0] = table[Int(high >> 59)]
            for index in 1..<10 { characters[index] = table[Int((high >> (59 - 6 * UInt64(index))) & 0x3f)] }
            let rest = (high & 0x1f) << 25 | UInt64(low & 0x1ff_ffff)
            for index in 0..<5 { characters[10 + index] = table[Int((rest >> (24 - 6 * UInt64(index))) & 0x3f)] }
            return 15
        }
    }

    public init(rawValue: String) { self.rawValue = rawValue }

    public var description: String { rawValue }
}
