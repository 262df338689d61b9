import Core
import Testing

/// `String(wellFormedUTF8:)` answers what `String(validating:as: UTF8.self)` answers (the standard library's own
/// validation is the reference), for the ill-formed sequences Unicode §3.9 names and for random bytes.
@Suite struct UTF8TextTests {
    static func both(_ bytes: [UInt8]) -> (ours: String?, reference: String?) {
        bytes.withUnsafeBufferPointer { (String(wellFormedUTF8: $0), String(validating: $0, as: UTF8.self)) }
    }

    @Test(
        arguments: [
            // Well-formed: empty, ASCII, 2-, 3- and 4-byte sequences, U+FFFD itself, the largest code point.
            [], Array("devices/d1/telemetry".utf8), [0xC3, 0xA9], [0xE2, 0x82, 0xAC], [0xF0, 0x9F, 0x98, 0x80],
            [0xEF, 0xBF, 0xBD], [0x41, 0xEF, 0xBF, 0xBD, 0x42], [0xF4, 0x8F, 0xBF, 0xBF],
            // A byte order mark and noncharacters (U+FFFF, U+FDD0) are well-formed: kept as they are.
            [0xEF, 0xBB, 0xBF, 0x41], [0xEF, 0xBF, 0xBF], [0xEF, 0xB7, 0x90],
            // Ill-formed: a lone continuation, 0xFF, overlongs, surrogates, above U+10FFFF, truncated at the end and in
            // the middle, and a truncated sequence as long as the U+FFFD that replaces it (its count alone would pass).
            [0x80], [0xFF], [0xC0, 0xAF], [0xE0, 0x80, 0xAF], [0xF0, 0x80, 0x80, 0xAF], [0xED, 0xA0, 0x80],
            [0xED, 0xBF, 0xBF], [0xF4, 0x90, 0x80, 0x80], [0x41, 0xC3], [0xE2, 0x82, 0x41], [0xF0, 0x90, 0x80],
            [0xEF, 0xBF, 0x41], [0x41, 0xF0, 0x90, 0x80, 0x42],
        ] as [[UInt8]])
    func answersAsTheStandardLibraryDoes(_ bytes: [UInt8]) {
        let (ours, reference) = Self.both(bytes)
        #expect(ours == reference, "\(bytes)")
        if let ours { #expect(Array(ours.utf8) == bytes, "the very bytes") }
    }

    /// The code points encoded in 1, 2, 3 and 4 bytes.
    static let lengths: [ClosedRange<UInt32>] = [0...0x7F, 0x80...0x7FF, 0x800...0xFFFF, 0x1_0000...0x10_FFFF]

    /// Random bytes (mostly ill-formed) and random text of every plane (1- to 4-byte sequences; a surrogate drawn
    /// becomes `a`), some with one byte changed (ill-formed in one place, or well-formed still).
    @Test func randomBytesAndTextGetTheSameAnswer() {
        var random = SystemRandomNumberGenerator()
        var wellFormed = 0
        for round in 0..<20_000 {
            var bytes: [UInt8]
            if round % 2 == 0 {
                bytes = (0..<Int.random(in: 0...12, using: &random)).map { _ in
                    UInt8.random(in: 0...255, using: &random)
                }
            } else {
                let scalars = (0..<Int.random(in: 1...8, using: &random)).map { _ in
                    Unicode.Scalar(UInt32.random(in: Self.lengths.randomElement(using: &random)!, using: &random))
                        ?? "a"
                }
                bytes = Array(String(String.UnicodeScalarView(scalars)).utf8)
                if round % 4 == 1 { bytes[Int.random(in: 0..<bytes.count, using: &random)] = .random(in: 0x80...0xFF) }
            }
            let (ours, reference) = Self.both(bytes)
            #expect(ours == reference, "\(bytes)")
            if ours != nil { wellFormed += 1 }
        }
        #expect(wellFormed > 5_000, "both kinds were tried")
    }
}
