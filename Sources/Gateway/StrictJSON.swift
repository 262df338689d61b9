/// A JSON value accepted by `StrictJSON`: objects have unique member names, numbers are finite doubles.
public enum JSONValue: Sendable, Equatable {
    case null
    case bool(Bool)
    /// The value, and whether the literal had neither fraction nor exponent.
    case number(Double, integerLiteral: Bool)
    case string(String)
    case array([JSONValue])
    case object([JSONKey: JSONValue])

    /// The JSON Schema type name (draft 2020-12 §4.2.1); numbers with a zero fractional part are also "integer".
    public var typeName: String {
        switch self {
        case .null: "null"
        case .bool: "boolean"
        case .number: "number"
        case .string: "string"
        case .array: "array"
        case .object: "object"
        }
    }
}

/// An object member name, compared and hashed by its UTF-8 bytes. RFC 8259 §8.3 compares names code unit by code
/// unit; Swift's `String` equality is canonical equivalence, which would make `"é"` and `"e\u{301}"` (or U+00C5 and
/// U+212B) one name: valid I-JSON refused as a duplicate, and one of the two members silently lost.
public struct JSONKey: Hashable, Sendable, ExpressibleByStringLiteral, CustomStringConvertible {
    public let utf8: [UInt8]

    public init(_ text: String) { utf8 = Array(text.utf8) }
    public init(stringLiteral value: String) { self.init(value) }

    public var string: String { String(decoding: utf8, as: UTF8.self) }
    public var description: String { string }
}

/// Why a body is not acceptable JSON: for the log and the audit record, never for the client.
public struct JSONError: Error, Equatable, CustomStringConvertible {
    public enum Kind: String, Sendable {
        case empty
        case invalidUTF8 = "invalid UTF-8"
        case unexpectedByte = "unexpected byte"
        case truncated
        case trailingData = "trailing data"
        case duplicateKey = "duplicate key"
        case tooDeep = "nesting too deep"
        case tooManyMembers = "too many members or elements"
        case stringTooLong = "string too long"
        case numberOutOfRange = "number out of range"
        case invalidEscape = "invalid escape"
        case controlCharacter = "control character in string"
        case noncharacter = "noncharacter or surrogate in string"
        case notAnObject = "not an object"
    }
    public let kind: Kind
    public let offset: Int
    public var description: String { "\(kind.rawValue) at byte \(offset)" }
}

/// A strict JSON parser (RFC 8259 grammar with the I-JSON restrictions of RFC 7493 §2): UTF-8 only, no duplicate
/// member names (compared by their unescaped UTF-8 bytes, §2.3 / RFC 8259 §8.3), no surrogates and no
/// noncharacters (U+FDD0–U+FDEF and every code point ending in FFFE or FFFF, §2.1) whether raw or escaped, in names
/// and values; numbers that fit an IEEE 754 double (integers exactly, so at most 2^53 − 1 in magnitude), nothing
/// after the value. NaN and Infinity are not JSON and fail as unexpected bytes.
///
/// Limits bound the work an attacker can cause: nesting depth, members per object or elements per array, string
/// length (in bytes as sent, escapes included) and number length (characters of the literal). Each byte is looked at
/// a bounded number of times, so the work is linear in the input.
public struct StrictJSON: Sendable {
    public var maxDepth: Int
    public var maxMembers: Int
    public var maxStringBytes: Int
    /// Longest number literal accepted (digits, sign, point, exponent).
    public var maxNumberLength: Int

    public init(maxDepth: Int = 16, maxMembers: Int = 1000, maxStringBytes: Int = 16 * 1024, maxNumberLength: Int = 40)
    {
        self.maxDepth = maxDepth
        self.maxMembers = maxMembers
        self.maxStringBytes = maxStringBytes
        self.maxNumberLength = maxNumberLength
    }

    public func parse(_ bytes: [UInt8]) throws(JSONError) -> JSONValue {
        var parser = Parser(options: self, bytes: bytes)
        parser.skipWhitespace()
        guard parser.index < bytes.count else { throw JSONError(kind: .empty, offset: 0) }
        let value = try parser.value(depth: 1)
        parser.skipWhitespace()
        guard parser.index == bytes.count else { throw JSONError(kind: .trailingData, offset: parser.index) }
        return value
    }

    private struct Parser {
        let options: StrictJSON
        let bytes: [UInt8]
        var index = 0

        init(options: StrictJSON, bytes: [UInt8]) {
            self.options = options
            self.bytes = bytes
        }

        func fail(_ kind: JSONError.Kind, at offset: Int? = nil) -> JSONError {
            JSONError(kind: kind, offset: offset ?? index)
        }

        mutating func skipWhitespace() {
            while index < bytes.count {
                switch bytes[index] {
                case 0x20, 0x09, 0x0A, 0x0D: index += 1
                default: return
                }
            }
        }

        func peek() throws(JSONError) -> UInt8 {
            guard index < bytes.count else { throw fail(.truncated) }
            return bytes[index]
        }

        mutating func value(depth: Int) throws(JSONError) -> JSONValue {
            switch try peek() {
            case UInt8(ascii: "{"): return try object(depth: depth)
            case UInt8(ascii: "["): return try array(depth: depth)
            case UInt8(ascii: "\""): return .string(try string())
            case UInt8(ascii: "t"):
                try literal("true")
                return .bool(true)
            case UInt8(ascii: "f"):
                try literal("false")
                return .bool(false)
            case UInt8(ascii: "n"):
                try literal("null")
                return .null
            case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try number()
            default: throw fail(.unexpectedByte)
            }
        }

        mutating func literal(_ word: StaticString) throws(JSONError) {
            let count = word.utf8CodeUnitCount
            guard index + count <= bytes.count else { throw fail(.truncated) }
            for offset in 0..<count where bytes[index + offset] != word.utf8Start[offset] {
                throw fail(.unexpectedByte, at: index + offset)
            }
            index += count
        }

        mutating func object(depth: Int) throws(JSONError) -> JSONValue {
            guard depth <= options.maxDepth else { throw fail(.tooDeep) }
            index += 1
            var members: [JSONKey: JSONValue] = [:]
            skipWhitespace()
            if try peek() == UInt8(ascii: "}") {
                index += 1
                return .object(members)
            }
            while true {
                skipWhitespace()
                let keyOffset = index
                guard try peek() == UInt8(ascii: "\"") else { throw fail(.unexpectedByte) }
                let key = JSONKey(try string())
                skipWhitespace()
                guard try peek() == UInt8(ascii: ":") else { throw fail(.unexpectedByte) }
                index += 1
                skipWhitespace()
                let member = try value(depth: depth + 1)
                guard members.updateValue(member, forKey: key) == nil else { throw fail(.duplicateKey, at: keyOffset) }
                guard members.count <= options.maxMembers else { throw fail(.tooManyMembers, at: keyOffset) }
                skipWhitespace()
                switch try peek() {
                case UInt8(ascii: ","): index += 1
                case UInt8(ascii: "}"):
                    index += 1
                    return .object(members)
                default: throw fail(.unexpectedByte)
                }
            }
        }

        mutating func array(depth: Int) throws(JSONError) -> JSONValue {
            guard depth <= options.maxDepth else { throw fail(.tooDeep) }
            index += 1
            var elements: [JSONValue] = []
            skipWhitespace()
            if try peek() == UInt8(ascii: "]") {
                index += 1
                return .array(elements)
            }
            while true {
                skipWhitespace()
                guard elements.count < options.maxMembers else { throw fail(.tooManyMembers) }
                elements.append(try value(depth: depth + 1))
                skipWhitespace()
                switch try peek() {
                case UInt8(ascii: ","): index += 1
                case UInt8(ascii: "]"):
                    index += 1
                    return .array(elements)
                default: throw fail(.unexpectedByte)
                }
            }
        }

        /// RFC 8259 §7. The raw bytes between the quotes must be valid UTF-8 (checked once, by the standard
        /// library) and free of unescaped control characters; escapes are decoded, surrogates must pair.
        mutating func string() throws(JSONError) -> String {
            let start = index
            index += 1
            var scan = index
            var escaped = false
            while true {
                guard scan < bytes.count else { throw fail(.truncated, at: scan) }
                let byte = bytes[scan]
                if byte == UInt8(ascii: "\"") { break }
                if byte < 0x20 { throw fail(.controlCharacter, at: scan) }
                if byte == UInt8(ascii: "\\") {
                    escaped = true
                    scan += 1
                    guard scan < bytes.count else { throw fail(.truncated, at: scan) }
                }
                scan += 1
                guard scan - index <= options.maxStringBytes else { throw fail(.stringTooLong, at: start) }
            }
            let raw = bytes[index..<scan]
            guard let text = String(validating: raw, as: UTF8.self) else { throw fail(.invalidUTF8, at: start) }
            index = scan + 1
            let value = escaped ? try unescape(text, at: start) : text
            // Raw noncharacters are valid UTF-8; escaped ones decode to them: checked once, on the result. Only
            // strings with a byte that can start one (EF for U+FDD0-U+FFFF, F0-F4 for the planes above) are scanned.
            if raw.contains(where: { $0 >= 0xEF }) || escaped,
                value.unicodeScalars.contains(where: Self.isNoncharacter)
            {
                throw fail(.noncharacter, at: start)
            }
            return value
        }

        /// Unicode §23.7: U+FDD0...U+FDEF, and the last two code points of every plane (U+xxFFFE, U+xxFFFF).
        static func isNoncharacter(_ scalar: Unicode.Scalar) -> Bool {
            (0xFDD0...0xFDEF).contains(scalar.value) || scalar.value & 0xFFFE == 0xFFFE
        }

        func unescape(_ text: String, at offset: Int) throws(JSONError) -> String {
            var result = String.UnicodeScalarView()
            var scalars = text.unicodeScalars.makeIterator()
            func hex4() throws(JSONError) -> UInt32 {
                var value: UInt32 = 0
                for _ in 0..<4 {
                    guard let scalar = scalars.next(), let digit = Self.hexValue(scalar) else {
                        throw fail(.invalidEscape, at: offset)
                    }
                    value = value << 4 | digit
                }
                return value
            }
            while let scalar = scalars.next() {
                guard scalar == "\\" else {
                    result.append(scalar)
                    continue
                }
                guard let escape = scalars.next() else { throw fail(.invalidEscape, at: offset) }
                switch escape {
                case "\"": result.append("\"")
                case "\\": result.append("\\")
                case "/": result.append("/")
                case "b": result.append("\u{08}")
                case "f": result.append("\u{0C}")
                case "n": result.append("\n")
                case "r": result.append("\r")
                case "t": result.append("\t")
                case "u":
                    let unit = try hex4()
                    if (0xD800...0xDBFF).contains(unit) {
                        guard scalars.next() == "\\", scalars.next() == "u" else {
                            throw fail(.invalidEscape, at: offset)
                        }
                        let low = try hex4()
                        guard (0xDC00...0xDFFF).contains(low),
                            let combined = Unicode.Scalar(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00))
                        else { throw fail(.invalidEscape, at: offset) }
                        result.append(combined)
                    } else {
                        guard let single = Unicode.Scalar(unit) else { throw fail(.invalidEscape, at: offset) }
                        result.append(single)
                    }
                default: throw fail(.invalidEscape, at: offset)
                }
            }
            return String(result)
        }

        static func hexValue(_ scalar: Unicode.Scalar) -> UInt32? {
            switch scalar.value {
            case 0x30...0x39: scalar.value - 0x30
            case 0x41...0x46: scalar.value - 0x41 + 10
            case 0x61...0x66: scalar.value - 0x61 + 10
            default: nil
            }
        }

        /// RFC 8259 §6: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
        mutating func number() throws(JSONError) -> JSONValue {
            let start = index
            func digits() throws(JSONError) -> Int {
                let first = index
                while index < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[index]) {
                    index += 1
                }
                guard index > first else { throw index < bytes.count ? fail(.unexpectedByte) : fail(.truncated) }
                return index - first
            }
            if bytes[index] == UInt8(ascii: "-") { index += 1 }
            guard index < bytes.count else { throw fail(.truncated) }
            if bytes[index] == UInt8(ascii: "0") {
                index += 1
                if index < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[index]) {
                    throw fail(.unexpectedByte)  // leading zeros
                }
            } else {
                _ = try digits()
            }
            var integerLiteral = true
            if index < bytes.count, bytes[index] == UInt8(ascii: ".") {
                index += 1
                integerLiteral = false
                _ = try digits()
            }
            if index < bytes.count, bytes[index] == UInt8(ascii: "e") || bytes[index] == UInt8(ascii: "E") {
                index += 1
                integerLiteral = false
                if index < bytes.count, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") {
                    index += 1
                }
                _ = try digits()
            }
            guard index - start <= options.maxNumberLength else { throw fail(.numberOutOfRange, at: start) }
            let text = String(decoding: bytes[start..<index], as: UTF8.self)
            guard let value = Double(text), value.isFinite else { throw fail(.numberOutOfRange, at: start) }
            // I-JSON §2.2: integers are exact only in [−(2^53 − 1), 2^53 − 1].
            if integerLiteral, abs(value) >= 9_007_199_254_740_992 { throw fail(.numberOutOfRange, at: start) }
            return .number(value, integerLiteral: integerLiteral)
        }
    }
}
