/// A topic, filter or topic level as a dictionary key: equal when its UTF-8 bytes are. MQTT compares topics byte for
/// byte and never normalizes them (MQTT 5.0 §4.7.3, MQTT 3.1.1 §4.7.3: "the Server MUST NOT normalize Topic Names or
/// Topic Filters"), while `String`'s `==` and hashing use Unicode canonical equivalence: as `String`s, `K` and
/// U+212A KELVIN SIGN, or `é` and `e` + U+0301, are equal, so two distinct topics would share one retained message,
/// one subscription node or one outbound topic alias.
public struct TopicKey: Hashable, Sendable, CustomStringConvertible {
    public let text: String

    @inlinable public init(_ text: some StringProtocol) { self.text = String(text) }

    @inlinable public static func == (lhs: TopicKey, rhs: TopicKey) -> Bool { sameBytes(lhs.text, rhs.text) }

    @inlinable public func hash(into hasher: inout Hasher) {
        var text = text
        text.withUTF8 { hasher.combine(bytes: UnsafeRawBufferPointer($0)) }
    }

    public var description: String { text }

    /// Whether two strings have the same UTF-8 bytes (not merely canonically equivalent characters). Compared where
    /// the bytes lie, eight at a time: `elementsEqual` over the two `UTF8View`s went byte by byte through their
    /// iterators (2.5 % of the hub's CPU per QoS 0 message, asked once per PUBLISH by the connection's topic cache).
    @inlinable public static func sameBytes(_ lhs: some StringProtocol, _ rhs: some StringProtocol) -> Bool {
        guard lhs.utf8.count == rhs.utf8.count else { return false }
        let compared = lhs.utf8.withContiguousStorageIfAvailable { left in
            rhs.utf8.withContiguousStorageIfAvailable { right in
                sameBytes(UnsafeRawBufferPointer(left), UnsafeRawBufferPointer(right))
            }
        }
        if let compared = compared ?? nil { return compared }
        return lhs.utf8.elementsEqual(rhs.utf8)
    }

    /// Two buffers of the same length, eight bytes at a time, then the rest one by one.
    @inlinable static func sameBytes(_ left: UnsafeRawBufferPointer, _ right: UnsafeRawBufferPointer) -> Bool {
        let count = left.count
        var offset = 0
        while offset + 8 <= count {
            guard
                left.loadUnaligned(fromByteOffset: offset, as: UInt64.self)
                    == right.loadUnaligned(fromByteOffset: offset, as: UInt64.self)
            else { return false }
            offset += 8
        }
        while offset < count {
            guard left[offset] == right[offset] else { return false }
            offset += 1
        }
        return true
    }
}
