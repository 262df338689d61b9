/// Well-formed UTF-8 (Unicode §3.9, Table 3-7; RFC 3629 §4): no overlong forms, no surrogates (U+D800–U+DFFF),
/// nothing above U+10FFFF, no truncated sequence. This is what an MQTT 5 payload whose Payload Format Indicator is 1
/// must be (MQTT 5.0 §3.3.2.3.2) and what a `utf8` payload policy requires. Noncharacters and control characters are
/// well-formed and accepted: text is checked for encoding, not for content.
public enum UTF8Text {
    public static func isValid(_ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { isValid($0) }
    }

    public static func isValid(_ bytes: UnsafeRawBufferPointer) -> Bool {
        let count = bytes.count
        var i = 0
        while i < count {
            // ASCII eight bytes at a time: the common case for text.
            while i + 8 <= count, bytes.loadUnaligned(fromByteOffset: i, as: UInt64.self) & 0x8080_8080_8080_8080 == 0 {
                i += 8
            }
            guard i < count else { return true }
            let lead = bytes[i]
            if lead < 0x80 {
                i += 1
                continue
            }
            @inline(__always) func continuation(_ offset: Int, _ low: UInt8 = 0x80, _ high: UInt8 = 0xBF) -> Bool {
                i + offset < count && (low...high).contains(bytes[i + offset])
            }
            switch lead {
            case 0xC2...0xDF:
                guard continuation(1) else { return false }
                i += 2
            case 0xE0...0xEF:
                // E0: A0–BF (no overlong); ED: 80–9F (no surrogates).
                guard continuation(1, lead == 0xE0 ? 0xA0 : 0x80, lead == 0xED ? 0x9F : 0xBF), continuation(2) else {
                    return false
                }
                i += 3
            case 0xF0...0xF4:
                // F0: 90–BF (no overlong); F4: 80–8F (nothing above U+10FFFF).
                guard continuation(1, lead == 0xF0 ? 0x90 : 0x80, lead == 0xF4 ? 0x8F : 0xBF), continuation(2),
                    continuation(3)
                else { return false }
                i += 4
            default:
                return false  // 80–C1 (a continuation byte or an overlong lead), F5–FF
            }
        }
        return true
    }
}
