/// An anti-replay sliding window over a per-device monotonic counter (as IPsec ESP, RFC 4303 §3.4.3, and OSCORE,
/// RFC 8613 §7.4): the highest counter seen and a 64-bit map of which of the 64 counters below it were seen.
/// Counters start at 1. Anything at or below `highest − 64` is too old; anything seen before is a replay.
public struct CounterWindow: Sendable, Equatable {
    public static let width: UInt64 = 64
    public private(set) var highest: UInt64
    public private(set) var seen: UInt64

    public init(highest: UInt64 = 0, seen: UInt64 = 0) {
        self.highest = highest
        self.seen = seen
    }

    public enum Decision: Sendable, Equatable { case accepted, replayed, tooOld }

    /// Whether `counter` is marked as seen in the window (a replay, or a redelivery of a message already stored).
    public func hasSeen(_ counter: UInt64) -> Bool {
        counter > 0 && counter <= highest && highest - counter < Self.width && seen & (1 << (highest - counter)) != 0
    }

    /// Marks `counter` as not seen again: its message was admitted but could not be stored, so nothing was
    /// acknowledged and the device's resend must be accepted. `highest` stays where it is (later counters may have
    /// been accepted meanwhile); the counter is simply open again within the window.
    public mutating func forget(_ counter: UInt64) {
        guard counter > 0, counter <= highest, highest - counter < Self.width else { return }
        seen &= ~(1 << (highest - counter))
    }

    public mutating func accept(_ counter: UInt64) -> Decision {
        guard counter > 0 else { return .tooOld }
        if counter > highest {
            let shift = counter - highest
            seen = shift >= Self.width ? 1 : (seen << shift) | 1
            highest = counter
            return .accepted
        }
        let offset = highest - counter
        guard offset < Self.width else { return .tooOld }
        let bit: UInt64 = 1 << offset
        guard seen & bit == 0 else { return .replayed }
        seen |= bit
        return .accepted
    }
}
