import Testing

@testable import Store

/// The SQLite store's row of several telemetry messages (`TelemetryChunk`): every field comes back exactly, and bytes
/// that are not a whole row are refused with `Damaged`, whatever was cut, added or changed.
@Suite struct TelemetryChunkTests {
    static let messages = [
        TelemetryChunk.Message(receivedAtMillis: 1_800_000_000_123, correlationID: "c1", messageType: nil, body: []),
        TelemetryChunk.Message(
            receivedAtMillis: -1, correlationID: "", messageType: "", body: [0, 255, 0]),
        TelemetryChunk.Message(
            receivedAtMillis: .max, correlationID: "ünïcödé-✓", messageType: "telemetry",
            body: Array(#"{"temperature":21.5}"#.utf8)),
        TelemetryChunk.Message(
            receivedAtMillis: 0, correlationID: String(repeating: "9", count: 24), messageType: "reports",
            body: Array(repeating: 7, count: 70_000)),
    ]

    static func encode(_ messages: [TelemetryChunk.Message]) throws -> [UInt8] {
        var bytes: [UInt8] = [42, 42]  // a buffer that held an earlier row: `start` clears it
        TelemetryChunk.start(&bytes)
        for message in messages {
            try TelemetryChunk.append(
                receivedAtMillis: message.receivedAtMillis, correlationID: message.correlationID,
                messageType: message.messageType, body: message.body, to: &bytes)
        }
        return bytes
    }

    static func decode(_ bytes: [UInt8], count: Int) throws -> [TelemetryChunk.Message] {
        try bytes.withUnsafeBytes { try TelemetryChunk.decode($0, count: count) }
    }

    @Test func everyFieldComesBack() throws {
        for count in 1...Self.messages.count {
            let messages = Array(Self.messages.prefix(count))
            let bytes = try Self.encode(messages)
            #expect(
                bytes.count == 1
                    + messages.reduce(0) {
                        $0
                            + TelemetryChunk.size(
                                correlationID: $1.correlationID.utf8.count, messageType: $1.messageType?.utf8.count,
                                body: $1.body.count)
                    })
            #expect(try Self.decode(bytes, count: count) == messages)
        }
    }

    /// A reader that wants a device's newest few gets the row's last ones, each whole.
    @Test func theNewestFewAreTheRowsLast() throws {
        let bytes = try Self.encode(Self.messages)
        for keeping in 0...(Self.messages.count + 1) {
            let newest = try bytes.withUnsafeBytes { try TelemetryChunk.decode($0, count: 4, keepingLast: keeping) }
            #expect(newest == Array(Self.messages.suffix(keeping)))
        }
        // The framing of the messages not returned is still checked.
        #expect(throws: TelemetryChunk.Damaged.self) {
            try Array(bytes.dropLast()).withUnsafeBytes { try TelemetryChunk.decode($0, count: 4, keepingLast: 0) }
        }
    }

    /// The layout is fixed (a stored row is read by later versions): these bytes are its known answer.
    @Test func theLayoutIsTheDocumentedOne() throws {
        let bytes = try Self.encode([
            TelemetryChunk.Message(receivedAtMillis: 0x0102, correlationID: "c", messageType: nil, body: [9]),
            TelemetryChunk.Message(receivedAtMillis: -1, correlationID: "", messageType: "t", body: []),
        ])
        #expect(
            bytes == [1, 2, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 99, 255, 255, 255, 255, 1, 0, 0, 0, 9]
                + [255, 255, 255, 255, 255, 255, 255, 255, 0, 0, 0, 0, 1, 0, 0, 0, 116, 0, 0, 0, 0])
    }

    @Test func aWrongCountOrVersionIsRefused() throws {
        let bytes = try Self.encode(Self.messages)
        for count in [-1, 0, 3, 5, Int.max] {
            #expect(throws: TelemetryChunk.Damaged.self) { try Self.decode(bytes, count: count) }
        }
        for version: UInt8 in [0, 2, 255] {
            #expect(throws: TelemetryChunk.Damaged.self) { try Self.decode([version] + bytes.dropFirst(), count: 4) }
        }
        #expect(throws: TelemetryChunk.Damaged.self) { try Self.decode([], count: 1) }
    }

    /// Every cut short row, and every row with bytes added at its end, is refused.
    @Test func everyTruncationAndExtensionIsRefused() throws {
        let bytes = try Self.encode(Array(Self.messages.prefix(3)))
        for length in 0..<bytes.count {
            #expect(throws: TelemetryChunk.Damaged.self, "\(length) bytes") {
                try Self.decode(Array(bytes.prefix(length)), count: 3)
            }
        }
        for extra in [[0], [1, 2, 3], [UInt8](repeating: 0, count: 20)] as [[UInt8]] {
            #expect(throws: TelemetryChunk.Damaged.self) { try Self.decode(bytes + extra, count: 3) }
        }
    }

    /// Text fields must be UTF-8: a stored correlation id or message type never comes back as something else.
    @Test func textThatIsNotUTF8IsRefused() throws {
        var bytes = try Self.encode([
            TelemetryChunk.Message(receivedAtMillis: 1, correlationID: "ab", messageType: "cd", body: [])
        ])
        for offset in [13, 19] {
            var damaged = bytes
            damaged[offset] = 0xC3  // a lead byte with no continuation
            #expect(throws: TelemetryChunk.Damaged.self) { try Self.decode(damaged, count: 1) }
        }
        bytes[13] = UInt8(ascii: "x")
        #expect(try Self.decode(bytes, count: 1).first?.correlationID == "xb")
    }

    /// Random single-byte changes and random lengths anywhere in a row: each either decodes (a change inside a body
    /// or a time) or is refused; none reads outside the bytes (the test runs under the checked build).
    @Test func randomDamageDecodesOrIsRefused() throws {
        let bytes = try Self.encode(Array(Self.messages.prefix(3)))
        var generator = SystemRandomNumberGenerator()
        var refused = 0
        for _ in 0..<5_000 {
            var damaged = bytes
            for _ in 0..<Int.random(in: 1...3, using: &generator) {
                damaged[Int.random(in: 0..<damaged.count, using: &generator)] = UInt8.random(
                    in: 0...255, using: &generator)
            }
            do {
                // What decodes differs from what was stored only inside its fields (a time, a byte of a body or
                // of valid text): a change that moved a field's bounds leaves bytes over or missing, and is refused.
                let decoded = try Self.decode(damaged, count: 3)
                let original = Array(Self.messages.prefix(3))
                #expect(decoded.map(\.correlationID.utf8.count) == original.map(\.correlationID.utf8.count))
                #expect(decoded.map(\.messageType?.utf8.count) == original.map(\.messageType?.utf8.count))
                #expect(decoded.map(\.body.count) == original.map(\.body.count))
            } catch {
                refused += 1
            }
        }
        #expect(refused > 0)
    }
}
