import Core

/// One device's messages of one group commit, stored by the SQLite store as a single row (migration v26): SQLite's
/// work per row (the record, the B-tree cell, the page's rewrite in the WAL, 8-10 allocations with Debian's build)
/// was more than the rest of a stored QoS 0 message put together (issue #16), and a group commit of MQTT telemetry
/// holds about ten messages per device. The message ids stay one per message: the row's `first_id` and the next
/// `count - 1` integers, in the order the device's messages were queued.
///
/// The bytes are a version byte, then each message in order: `received_at` (milliseconds since 1970, a signed 64-bit
/// little-endian integer), then three length-prefixed fields (32-bit little-endian lengths): the correlation id
/// (UTF-8), the message type (UTF-8; the length 0xFFFF_FFFF, with no bytes, for none) and the body. Decoding checks
/// every length against what is left and the message count against the row's: a damaged row is an error naming
/// it, never a crash or a short answer.
public enum TelemetryChunk {
    /// The only layout so far; a reader refuses any other.
    static let version: UInt8 = 1
    private static let noType: UInt32 = .max

    /// One decoded message: its position in the row is its offset from the row's `first_id`.
    public struct Message: Equatable, Sendable {
        public var receivedAtMillis: Int64
        public var correlationID: String
        public var messageType: String?
        public var body: [UInt8]

        public init(receivedAtMillis: Int64, correlationID: String, messageType: String?, body: [UInt8]) {
            self.receivedAtMillis = receivedAtMillis
            self.correlationID = correlationID
            self.messageType = messageType
            self.body = body
        }
    }

    /// A row's bytes that do not decode: the reader reports the row, not a partial answer.
    public struct Damaged: Error, Equatable, CustomStringConvertible {
        public let reason: String
        public var description: String { "damaged telemetry row: \(reason)" }
    }

    /// How many bytes `append` writes for a message with these fields (to reserve a row's buffer once).
    static func size(correlationID: Int, messageType: Int?, body: Int) -> Int {
        8 + 4 + correlationID + 4 + (messageType ?? 0) + 4 + body
    }

    /// Starts a row: clears `buffer`, keeping its capacity, and writes the version byte.
    static func start(_ buffer: inout [UInt8]) {
        buffer.removeAll(keepingCapacity: true)
        buffer.append(version)
    }

    /// Appends one message to a started row. Fields are written from where their bytes lie (no copy of the
    /// strings); a field of 4 GiB or more cannot be framed and is refused (the gateway's limits are far below).
    static func append(
        receivedAtMillis: Int64, correlationID: String, messageType: String?, body: [UInt8], to buffer: inout [UInt8]
    ) throws(Damaged) {
        withUnsafeBytes(of: receivedAtMillis.littleEndian) { buffer.append(contentsOf: $0) }
        try field(correlationID, &buffer)
        if let messageType {
            try field(messageType, &buffer)
        } else {
            length(noType, &buffer)
        }
        try field(body, &buffer)
    }

    private static func field(_ text: String, _ buffer: inout [UInt8]) throws(Damaged) {
        let count = text.utf8.count
        guard count < Int(noType) else { throw Damaged(reason: "a field of \(count) bytes") }
        length(UInt32(count), &buffer)
        if text.utf8.withContiguousStorageIfAvailable({ buffer.append(contentsOf: $0) }) == nil {
            buffer.append(contentsOf: text.utf8)
        }
    }

    private static func field<Bytes: Collection<UInt8>>(_ bytes: Bytes, _ buffer: inout [UInt8]) throws(Damaged) {
        guard bytes.count < Int(noType) else { throw Damaged(reason: "a field of \(bytes.count) bytes") }
        length(UInt32(bytes.count), &buffer)
        buffer.append(contentsOf: bytes)
    }

    private static func length(_ value: UInt32, _ buffer: inout [UInt8]) {
        withUnsafeBytes(of: value.littleEndian) { buffer.append(contentsOf: $0) }
    }

    /// The row's messages in order, or only its newest `keepingLast` of them: a device's newest message may share a
    /// row with hundreds, so every message's framing is checked but only the ones returned are copied out (and their
    /// text checked as UTF-8). `count` is the row's own count column, which must match.
    public static func decode(_ bytes: UnsafeRawBufferPointer, count: Int, keepingLast: Int = .max) throws(Damaged)
        -> [Message]
    {
        guard bytes.first == version else {
            throw Damaged(reason: bytes.isEmpty ? "no bytes" : "unknown version \(bytes[0])")
        }
        guard count > 0, count <= bytes.count / 20 else { throw Damaged(reason: "count \(count)") }
        var reader = Reader(bytes: bytes, offset: 1)
        var starts: [Int] = []
        starts.reserveCapacity(count)
        while reader.offset < bytes.count {
            guard starts.count < count else { throw Damaged(reason: "more than \(count) messages") }
            starts.append(reader.offset)
            _ = try reader.take(8)
            _ = try reader.field()
            let typeLength = UInt32(littleEndian: try reader.integer(UInt32.self))
            if typeLength != noType { _ = try reader.take(Int(typeLength)) }
            _ = try reader.field()
        }
        guard starts.count == count else { throw Damaged(reason: "\(starts.count) messages, not \(count)") }
        var messages: [Message] = []
        messages.reserveCapacity(min(count, max(keepingLast, 0)))
        for start in starts.suffix(max(keepingLast, 0)) {
            reader.offset = start
            let at = Int64(littleEndian: try reader.integer(Int64.self))
            let correlation = try reader.text()
            let typeLength = UInt32(littleEndian: try reader.integer(UInt32.self))
            let type = typeLength == noType ? nil : try reader.text(length: Int(typeLength))
            let body = Array(try reader.field())
            messages.append(Message(receivedAtMillis: at, correlationID: correlation, messageType: type, body: body))
        }
        return messages
    }

    private struct Reader {
        let bytes: UnsafeRawBufferPointer
        var offset: Int

        mutating func integer<T: FixedWidthInteger>(_: T.Type) throws(Damaged) -> T {
            let raw = try take(MemoryLayout<T>.size)
            var value = T.zero
            withUnsafeMutableBytes(of: &value) { $0.copyMemory(from: raw) }
            return value
        }

        mutating func take(_ length: Int) throws(Damaged) -> UnsafeRawBufferPointer {
            guard length >= 0, length <= bytes.count - offset else {
                throw Damaged(reason: "a field of \(length) bytes at offset \(offset) of \(bytes.count)")
            }
            defer { offset += length }
            return UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + length)])
        }

        mutating func field() throws(Damaged) -> UnsafeRawBufferPointer {
            try take(Int(UInt32(littleEndian: try integer(UInt32.self))))
        }

        mutating func text(length: Int? = nil) throws(Damaged) -> String {
            let raw: UnsafeRawBufferPointer
            if let length { raw = try take(length) } else { raw = try field() }
            guard let text = String(wellFormedUTF8: raw.bindMemory(to: UInt8.self)) else {
                throw Damaged(reason: "text that is not UTF-8 at offset \(offset)")
            }
            return text
        }
    }
}
