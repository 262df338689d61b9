import JSON
import Testing

/// `UTF8Text.isValid` against the standard library's UTF-8 decoder as the oracle, plus the edges of Table 3-7.
@Suite struct UTF8TextTests {
    @Test func theEdgesOfTable37() {
        let valid: [[UInt8]] = [
            [], Array("plain ASCII, longer than eight bytes".utf8), [0xC2, 0x80], [0xDF, 0xBF], [0xE0, 0xA0, 0x80],
            [0xED, 0x9F, 0xBF], [0xEE, 0x80, 0x80], [0xF0, 0x90, 0x80, 0x80], [0xF4, 0x8F, 0xBF, 0xBF],
            [0xEF, 0xBF, 0xBF],  // U+FFFF: a noncharacter, still well-formed
            Array("0123456789abcdé".utf8),
        ]
        let invalid: [[UInt8]] = [
            [0x80], [0xC0, 0x80], [0xC1, 0xBF], [0xE0, 0x9F, 0xBF], [0xED, 0xA0, 0x80], [0xED, 0xBF, 0xBF],
            [0xF0, 0x8F, 0xBF, 0xBF], [0xF4, 0x90, 0x80, 0x80], [0xF5, 0x80, 0x80, 0x80], [0xFF], [0xE2, 0x82],
            [0xC2], Array("eight by".utf8) + [0xC2], [0xC2, 0x41], [0xF0, 0x90, 0x80, 0x41],
        ]
        for bytes in valid { #expect(UTF8Text.isValid(bytes), "\(bytes)") }
        for bytes in invalid { #expect(!UTF8Text.isValid(bytes), "\(bytes)") }
    }

    @Test func agreesWithTheStandardLibraryOnRandomBytes() {
        var generator = SystemRandomNumberGenerator()
        // Bytes drawn mostly from the interesting ranges (ASCII, leads, continuations), lengths 0-40.
        let pool: [UInt8] = [
            0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC2, 0xDF, 0xE0, 0xED, 0xEF,
            0xF0, 0xF4, 0xF5, 0xFF,
        ]
        for _ in 0..<20_000 {
            let bytes = (0..<Int.random(in: 0...40, using: &generator)).map { _ in
                Bool.random(using: &generator)
                    ? pool.randomElement(using: &generator) ?? 0 : UInt8.random(in: 0...255, using: &generator)
            }
            let oracle = String(validating: bytes, as: UTF8.self) != nil
            #expect(UTF8Text.isValid(bytes) == oracle, "\(bytes)")
        }
    }
}
