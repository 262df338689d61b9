/// Structured Field Values for HTTP (RFC 9651) as the signature fields use them: a Dictionary (§3.2) of Items and
/// Inner Lists with Parameters, parsed by the algorithms of §4.2 step by step, with no Foundation and no generic
/// collection types (the package parser it replaces ran unspecialized across the module boundary: 50 µs a request).
///
/// Bare items: Integer and Decimal (§4.2.4, kept as their text when decimal), String (§4.2.5), Token (§4.2.6), Byte
/// Sequence (§4.2.7, kept as its base64 text and decoded by the caller), Boolean (§4.2.8) and Date (§4.2.9). A Display
/// String (§4.2.10) is refused: no field Bulwark reads carries one.
enum StructuredField {
    enum BareItem: Equatable, Sendable {
        case integer(Int64)
        case decimal(String)
        case string(String)
        case token(String)
        /// The base64 text between the colons, checked for its alphabet (§4.2.7) but not decoded.
        case byteSequence(String)
        case boolean(Bool)
        case date(Int64)
    }

    struct Item: Equatable, Sendable {
        var value: BareItem
        var parameters: [(key: String, value: BareItem)]

        static func == (a: Item, b: Item) -> Bool {
            a.value == b.value && a.parameters.elementsEqual(b.parameters) { $0.key == $1.key && $0.value == $1.value }
        }
    }

    enum Member: Equatable, Sendable {
        case item(Item)
        case innerList([Item], parameters: [(key: String, value: BareItem)])

        static func == (a: Member, b: Member) -> Bool {
            switch (a, b) {
            case (.item(let x), .item(let y)): return x == y
            case (.innerList(let x, let p), .innerList(let y, let q)):
                return x == y && p.elementsEqual(q) { $0.key == $1.key && $0.value == $1.value }
            default: return false
            }
        }
    }

    struct ParseError: Error, Equatable {}

    /// §4.2 with field type Dictionary: the members in order; a repeated key keeps its first position and takes the
    /// last value (§4.2.2).
    static func dictionary(_ text: String) throws(ParseError) -> [(key: String, value: Member)] {
        var text = text
        let result: Result<[(key: String, value: Member)], ParseError> = text.withUTF8 { bytes in
            var parser = Parser(bytes)
            do throws(ParseError) { return .success(try parser.topLevelDictionary()) } catch { return .failure(error) }
        }
        return try result.get()
    }

    private struct Parser {
        let input: UnsafeBufferPointer<UInt8>
        var i = 0

        init(_ input: UnsafeBufferPointer<UInt8>) { self.input = input }

        var atEnd: Bool { i >= input.count }
        var next: UInt8? { i < input.count ? input[i] : nil }

        mutating func skip(_ bytes: UInt8...) { while let c = next, bytes.contains(c) { i += 1 } }

        mutating func topLevelDictionary() throws(ParseError) -> [(key: String, value: Member)] {
            // §4.2 step 1: the input must be ASCII.
            for byte in input where byte >= 0x80 { throw ParseError() }
            skip(0x20)
            let result = try dictionaryMembers()
            skip(0x20)
            guard atEnd else { throw ParseError() }
            return result
        }

        /// §4.2.2.
        mutating func dictionaryMembers() throws(ParseError) -> [(key: String, value: Member)] {
            var members: [(key: String, value: Member)] = []
            while !atEnd {
                let name = try key()
                let member: Member
                if next == UInt8(ascii: "=") {
                    i += 1
                    member = try itemOrInnerList()
                } else {
                    member = .item(Item(value: .boolean(true), parameters: try parameters()))
                }
                if let existing = members.firstIndex(where: { $0.key == name }) {
                    members[existing].value = member
                } else {
                    members.append((name, member))
                }
                skip(0x20, 0x09)
                if atEnd { return members }
                guard next == UInt8(ascii: ",") else { throw ParseError() }
                i += 1
                skip(0x20, 0x09)
                if atEnd { throw ParseError() }  // a trailing comma
            }
            return members
        }

        mutating func itemOrInnerList() throws(ParseError) -> Member {
            if next == UInt8(ascii: "(") { return try innerList() }
            return .item(try item())
        }

        /// §4.2.1.2.
        mutating func innerList() throws(ParseError) -> Member {
            i += 1  // "("
            var items: [Item] = []
            while !atEnd {
                skip(0x20)
                if next == UInt8(ascii: ")") {
                    i += 1
                    return .innerList(items, parameters: try parameters())
                }
                items.append(try item())
                guard let c = next, c == 0x20 || c == UInt8(ascii: ")") else { throw ParseError() }
            }
            throw ParseError()
        }

        /// §4.2.3.
        mutating func item() throws(ParseError) -> Item {
            let value = try bareItem()
            return Item(value: value, parameters: try parameters())
        }

        /// §4.2.3.2: a repeated parameter keeps its first position and takes the last value.
        mutating func parameters() throws(ParseError) -> [(key: String, value: BareItem)] {
            var parameters: [(key: String, value: BareItem)] = []
            while next == UInt8(ascii: ";") {
                i += 1
                skip(0x20)
                let name = try key()
                var value = BareItem.boolean(true)
                if next == UInt8(ascii: "=") {
                    i += 1
                    value = try bareItem()
                }
                if let existing = parameters.firstIndex(where: { $0.key == name }) {
                    parameters[existing].value = value
                } else {
                    parameters.append((name, value))
                }
            }
            return parameters
        }

        /// §4.2.3.3: lcalpha or "*", then lcalpha, DIGIT, "_", "-", "." or "*".
        mutating func key() throws(ParseError) -> String {
            guard let first = next, isLowerAlpha(first) || first == UInt8(ascii: "*") else { throw ParseError() }
            let start = i
            while let c = next,
                isLowerAlpha(c) || isDigit(c) || c == UInt8(ascii: "_") || c == UInt8(ascii: "-")
                    || c == UInt8(ascii: ".") || c == UInt8(ascii: "*")
            {
                i += 1
            }
            return text(start, i)
        }

        /// §4.2.3.1.
        mutating func bareItem() throws(ParseError) -> BareItem {
            guard let c = next else { throw ParseError() }
            switch c {
            case UInt8(ascii: "-"), 0x30...0x39: return try number()
            case UInt8(ascii: "\""): return try string()
            case UInt8(ascii: "*"), 0x41...0x5A, 0x61...0x7A: return token()
            case UInt8(ascii: ":"): return try byteSequence()
            case UInt8(ascii: "?"):
                i += 1
                switch next {
                case UInt8(ascii: "0"):
                    i += 1
                    return .boolean(false)
                case UInt8(ascii: "1"):
                    i += 1
                    return .boolean(true)
                default: throw ParseError()
                }
            case UInt8(ascii: "@"):
                i += 1
                guard case .integer(let seconds) = try number() else { throw ParseError() }
                return .date(seconds)
            default: throw ParseError()
            }
        }

        /// §4.2.4: at most 15 integer digits; a decimal has at most 12 before the point and 1-3 after.
        mutating func number() throws(ParseError) -> BareItem {
            var negative = false
            if next == UInt8(ascii: "-") {
                negative = true
                i += 1
            }
            guard let first = next, isDigit(first) else { throw ParseError() }
            let start = i
            var decimal = false
            var digits = 0
            var point = 0
            while let c = next {
                if isDigit(c) {
                    digits += 1
                } else if !decimal, c == UInt8(ascii: ".") {
                    guard digits <= 12 else { throw ParseError() }
                    decimal = true
                    point = i
                } else {
                    break
                }
                i += 1
                guard decimal ? digits + 1 <= 16 : digits <= 15 else { throw ParseError() }
            }
            if !decimal {
                var value: Int64 = 0
                for k in start..<i { value = value * 10 + Int64(input[k] - 0x30) }
                return .integer(negative ? -value : value)
            }
            let fraction = i - point - 1
            guard fraction >= 1, fraction <= 3 else { throw ParseError() }
            return .decimal((negative ? "-" : "") + text(start, i))
        }

        /// §4.2.5: printable ASCII; only `\"` and `\\` are escapes.
        mutating func string() throws(ParseError) -> BareItem {
            i += 1
            var out: [UInt8] = []
            while let c = next {
                i += 1
                switch c {
                case UInt8(ascii: "\\"):
                    guard let escaped = next, escaped == UInt8(ascii: "\"") || escaped == UInt8(ascii: "\\") else {
                        throw ParseError()
                    }
                    i += 1
                    out.append(escaped)
                case UInt8(ascii: "\""):
                    return .string(String(decoding: out, as: UTF8.self))
                case 0x00...0x1F, 0x7F...0xFF: throw ParseError()
                default: out.append(c)
                }
            }
            throw ParseError()
        }

        /// §4.2.6: tchar, ":" and "/" after the first character.
        mutating func token() -> BareItem {
            let start = i
            i += 1
            while let c = next, isTChar(c) || c == UInt8(ascii: ":") || c == UInt8(ascii: "/") { i += 1 }
            return .token(text(start, i))
        }

        /// §4.2.7: the base64 text up to the next ":", which must hold only ALPHA, DIGIT, "+", "/" and "=".
        mutating func byteSequence() throws(ParseError) -> BareItem {
            i += 1
            let start = i
            while let c = next, c != UInt8(ascii: ":") {
                guard
                    isAlpha(c) || isDigit(c) || c == UInt8(ascii: "+") || c == UInt8(ascii: "/")
                        || c == UInt8(ascii: "=")
                else { throw ParseError() }
                i += 1
            }
            guard next == UInt8(ascii: ":") else { throw ParseError() }
            let encoded = text(start, i)
            i += 1
            return .byteSequence(encoded)
        }

        func text(_ start: Int, _ end: Int) -> String {
            String(decoding: UnsafeBufferPointer(rebasing: input[start..<end]), as: UTF8.self)
        }
    }
}

private func isDigit(_ c: UInt8) -> Bool { c >= 0x30 && c <= 0x39 }
private func isLowerAlpha(_ c: UInt8) -> Bool { c >= 0x61 && c <= 0x7A }
private func isAlpha(_ c: UInt8) -> Bool { isLowerAlpha(c) || (c >= 0x41 && c <= 0x5A) }

/// RFC 9110 §5.6.2 tchar.
private func isTChar(_ c: UInt8) -> Bool {
    switch c {
    case 0x30...0x39, 0x41...0x5A, 0x61...0x7A, 0x21, 0x23...0x27, 0x2A, 0x2B, 0x2D, 0x2E, 0x5E...0x60, 0x7C, 0x7E:
        return true
    default: return false
    }
}

/// Base64 (RFC 4648 §4) with padding, as RFC 9651 §4.2.7 byte sequences carry it; nil for anything else, including
/// bits left over in the last character (so one value has one spelling).
func base64Decode(_ text: String) -> [UInt8]? {
    var text = text
    return text.withUTF8 { input -> [UInt8]? in
        guard input.count % 4 == 0 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(input.count / 4 * 3)
        var k = 0
        while k < input.count {
            var quad: UInt32 = 0
            var padding = 0
            for j in 0..<4 {
                let c = input[k + j]
                let value = base64Value(c)
                if c == UInt8(ascii: "=") {
                    // Padding only at the end of the last quantum, and at most two.
                    guard k + 4 == input.count, j >= 2 else { return nil }
                    padding += 1
                } else {
                    guard value < 64, padding == 0 else { return nil }
                }
                quad = quad << 6 | UInt32(value & 63)
            }
            // Canonical: the bits under the padding are zero.
            if padding == 1, quad & 0xFF != 0 { return nil }
            if padding == 2, quad & 0xFFFF != 0 { return nil }
            out.append(UInt8(truncatingIfNeeded: quad >> 16))
            if padding < 2 { out.append(UInt8(truncatingIfNeeded: quad >> 8)) }
            if padding < 1 { out.append(UInt8(truncatingIfNeeded: quad)) }
            k += 4
        }
        return out
    }
}

/// A base64 character's value; 64 for "=", 255 for anything else.
@inline(__always) private func base64Value(_ c: UInt8) -> UInt8 {
    switch c {
    case 0x41...0x5A: return c - 0x41
    case 0x61...0x7A: return c - 0x61 + 26
    case 0x30...0x39: return c - 0x30 + 52
    case UInt8(ascii: "+"): return 62
    case UInt8(ascii: "/"): return 63
    case UInt8(ascii: "="): return 64
    default: return 255
    }
}

private let base64Alphabet: [UInt8] = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

/// Base64 (RFC 4648 §4) with padding.
func base64Encode(_ bytes: some Collection<UInt8>) -> String {
    let input = Array(bytes)
    var out: [UInt8] = []
    out.reserveCapacity((input.count + 2) / 3 * 4)
    base64Alphabet.withUnsafeBufferPointer { alphabet in
        var k = 0
        while k < input.count {
            let n = min(3, input.count - k)
            var quad = UInt32(input[k]) << 16
            if n > 1 { quad |= UInt32(input[k + 1]) << 8 }
            if n > 2 { quad |= UInt32(input[k + 2]) }
            out.append(alphabet[Int(quad >> 18 & 63)])
            out.append(alphabet[Int(quad >> 12 & 63)])
            out.append(n > 1 ? alphabet[Int(quad >> 6 & 63)] : UInt8(ascii: "="))
            out.append(n > 2 ? alphabet[Int(quad & 63)] : UInt8(ascii: "="))
            k += 3
        }
    }
    return String(decoding: out, as: UTF8.self)
}
