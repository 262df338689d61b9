/// A parsed JSON document: the input and a tape with one entry per value. Values are read where they lie; nothing
/// is decoded or built until asked for.
public struct JSONDocument: Sendable {
    public let bytes: [UInt8]
    @usableFromInline let tape: [JSONNode]

    init(bytes: [UInt8], tape: [JSONNode]) {
        self.bytes = bytes
        self.tape = tape
    }

    /// The top-level value.
    public var root: JSONElement { JSONElement(index: 0) }

    /// Whether the top-level value is an object.
    public var isObject: Bool { tape[0].kind == .object }

    public func kind(_ element: JSONElement) -> JSONKind { tape[element.index].kind }

    /// Members of an object or elements of an array; 0 for anything else.
    public func count(_ element: JSONElement) -> Int { Int(tape[element.index].count) }

    /// Members of an object in document order (empty for anything else).
    public func members(_ element: JSONElement) -> Members {
        let node = tape[element.index]
        return Members(
            document: self, position: element.index + 1, remaining: node.kind == .object ? Int(node.count) : 0)
    }

    /// Elements of an array in document order (empty for anything else).
    public func elements(_ element: JSONElement) -> Elements {
        let node = tape[element.index]
        return Elements(
            document: self, position: element.index + 1, remaining: node.kind == .array ? Int(node.count) : 0)
    }

    /// The value of the member named `name` (compared by unescaped bytes), when `element` is an object that has it.
    public func member(_ name: String, of element: JSONElement) -> JSONElement? {
        var name = name
        return name.withUTF8 { wanted in
            withTape { tape in
                guard tape.kind(element.index) == .object else { return nil }
                var key = element.index + 1
                for _ in 0..<tape.count(element.index) {
                    // Compared where the name lies unless it has an escape.
                    if tape.unescaped(key, { memEqual($0, wanted) }) { return JSONElement(index: key + 1) }
                    key = tape.next(key + 1)
                }
                return nil
            }
        }
    }

    /// Calls `body` with a string's unescaped UTF-8 bytes (in place when it has no escape).
    public func withUnescapedBytes<R>(_ element: JSONElement, _ body: (UnsafeBufferPointer<UInt8>) -> R) -> R {
        withTape { $0.unescaped(element.index, body) }
    }

    /// A string's value (decoded), or nil for anything else.
    public func string(_ element: JSONElement) -> String? {
        guard tape[element.index].kind == .string else { return nil }
        return withUnescapedBytes(element) { String(decoding: $0, as: UTF8.self) }
    }

    public func bool(_ element: JSONElement) -> Bool? {
        switch tape[element.index].kind {
        case .true: true
        case .false: false
        default: nil
        }
    }

    /// An integer literal's value (the parser checked its range), or nil for anything else.
    public func int64(_ element: JSONElement) -> Int64? {
        let node = tape[element.index]
        guard node.kind == .number, node.flag else { return nil }
        return bytes.withUnsafeBufferPointer { input in
            var k = Int(node.start)
            let negative = input[k] == UInt8(ascii: "-")
            if negative { k += 1 }
            var magnitude: UInt64 = 0
            while k < Int(node.end) {
                magnitude = magnitude &* 10 &+ UInt64(input[k] &- 0x30)
                k += 1
            }
            return negative ? Int64(truncatingIfNeeded: 0 &- magnitude) : Int64(truncatingIfNeeded: magnitude)
        }
    }

    /// A number's value as a double (correctly rounded), or nil for anything else.
    public func double(_ element: JSONElement) -> Double? { withTape { $0.double(element.index) } }

    /// A number's literal as written.
    public func literal(_ element: JSONElement) -> String {
        let node = tape[element.index]
        return String(decoding: bytes[Int(node.start)..<Int(node.end)], as: UTF8.self)
    }

    /// Builds the value (strings decoded, objects as member lists).
    public func value(_ element: JSONElement) -> JSONValue {
        let node = tape[element.index]
        switch node.kind {
        case .null: return .null
        case .true: return .bool(true)
        case .false: return .bool(false)
        case .number:
            if node.flag, let integer = int64(element) { return .integer(integer) }
            return .float(literal(element))
        case .string: return .string(string(element) ?? "")
        case .array: return .array(elements(element).map { value($0) })
        case .object:
            var object = JSONObject()
            for (key, member) in members(element) { object.set(string(key) ?? "", value(member)) }
            return .object(object)
        }
    }

    public struct Members: Sequence, IteratorProtocol {
        let document: JSONDocument
        var position: Int
        var remaining: Int

        public mutating func next() -> (key: JSONElement, value: JSONElement)? {
            guard remaining > 0 else { return nil }
            remaining -= 1
            let key = JSONElement(index: position)
            let value = JSONElement(index: position + 1)
            position = Int(document.tape[position + 1].next)
            return (key, value)
        }
    }

    public struct Elements: Sequence, IteratorProtocol {
        let document: JSONDocument
        var position: Int
        var remaining: Int

        public mutating func next() -> JSONElement? {
            guard remaining > 0 else { return nil }
            remaining -= 1
            let element = JSONElement(index: position)
            position = Int(document.tape[position].next)
            return element
        }
    }
}

/// A value of a `JSONDocument` (its position on the tape).
public struct JSONElement: Sendable, Hashable {
    public let index: Int
}

/// Clinger's fast path: a decimal of at most 15 significant digits times a power of ten up to 10^22 is one exact
/// double operation on exact operands, so correctly rounded. Anything else goes to the standard library.
func fastDouble(_ literal: UnsafeBufferPointer<UInt8>) -> Double? {
    var k = 0
    let negative = k < literal.count && literal[k] == UInt8(ascii: "-")
    if negative { k += 1 }
    var mantissa: UInt64 = 0
    var digits = 0
    var scale = 0
    var seenPoint = false
    var seenDigit = false
    guard k < literal.count else { return nil }
    while k < literal.count {
        let byte = literal[k]
        if isDigit(byte) {
            seenDigit = true
            if mantissa == 0, byte == 0x30 {
                if seenPoint { scale -= 1 }
            } else {
                digits += 1
                guard digits <= 15 else { return nil }
                mantissa = mantissa * 10 + UInt64(byte - 0x30)
                if seenPoint { scale -= 1 }
            }
        } else if byte == UInt8(ascii: ".") {
            seenPoint = true
        } else {
            break
        }
        k += 1
    }
    if k < literal.count {
        // The exponent: e or E, a sign, digits (at most a few: the parser bounds the literal's length only in I-JSON).
        // Anything else is not a literal the parser wrote: the standard library decides (and refuses it).
        guard literal[k] == UInt8(ascii: "e") || literal[k] == UInt8(ascii: "E") else { return nil }
        k += 1
        var negativeExponent = false
        if k < literal.count, literal[k] == UInt8(ascii: "+") || literal[k] == UInt8(ascii: "-") {
            negativeExponent = literal[k] == UInt8(ascii: "-")
            k += 1
        }
        var exponent = 0
        guard k < literal.count else { return nil }
        while k < literal.count {
            guard isDigit(literal[k]) else { return nil }
            exponent = exponent * 10 + Int(literal[k] - 0x30)
            guard exponent < 1000 else { return nil }
            k += 1
        }
        scale += negativeExponent ? -exponent : exponent
    }
    guard seenDigit else { return nil }
    let value: Double
    if mantissa == 0 {
        value = 0
    } else {
        guard (-22...22).contains(scale) else { return nil }
        value = scale >= 0 ? Double(mantissa) * powersOfTen[scale] : Double(mantissa) / powersOfTen[-scale]
    }
    return negative ? -value : value
}

private let powersOfTen: [Double] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19,
    1e20, 1e21, 1e22,
]

extension JSONDocument {
    /// The tape and the input as unsafe buffers, for a validator that walks a document with no copy and no reference
    /// counting (the gateway's schema check). Valid only inside `body`.
    public func withTape<R>(_ body: (JSONTape) throws -> R) rethrows -> R {
        try tape.withUnsafeBufferPointer { nodes in
            try bytes.withUnsafeBufferPointer { bytes in try body(JSONTape(nodes: nodes, bytes: bytes)) }
        }
    }
}

/// A parsed document seen through pointers: values by their tape index (the root is 0).
public struct JSONTape {
    @usableFromInline let nodes: UnsafeBufferPointer<JSONNode>
    public let bytes: UnsafeBufferPointer<UInt8>

    @usableFromInline init(nodes: UnsafeBufferPointer<JSONNode>, bytes: UnsafeBufferPointer<UInt8>) {
        self.nodes = nodes
        self.bytes = bytes
    }

    @inlinable public func kind(_ index: Int) -> JSONKind { nodes[index].kind }
    /// Members of an object or elements of an array.
    @inlinable public func count(_ index: Int) -> Int { Int(nodes[index].count) }
    /// The index after the value and everything inside it (an object's first member name is at `index + 1`, its
    /// value at `index + 2`, the next name at `next(index + 2)`; an array's first element at `index + 1`).
    @inlinable public func next(_ index: Int) -> Int { Int(nodes[index].next) }
    @inlinable public func isIntegerLiteral(_ index: Int) -> Bool {
        nodes[index].kind == .number && nodes[index].flag
    }
    @inlinable public func hasEscape(_ index: Int) -> Bool { nodes[index].kind == .string && nodes[index].flag }
    /// A string's bytes between its quotes (escapes as sent), or a number's literal.
    @inlinable public func raw(_ index: Int) -> UnsafeBufferPointer<UInt8> {
        UnsafeBufferPointer(rebasing: bytes[Int(nodes[index].start)..<Int(nodes[index].end)])
    }

    /// A number's value as a double (correctly rounded).
    public func double(_ index: Int) -> Double? {
        guard nodes[index].kind == .number else { return nil }
        let literal = raw(index)
        return fastDouble(literal) ?? Double(String(decoding: literal, as: UTF8.self))
    }

    /// Calls `body` with a string's unescaped bytes (in place when it has no escape). Inlinable: a caller in another
    /// module (the gateway's schema check, once per member name) gets it specialized, not a generic call.
    @inlinable public func unescaped<R>(_ index: Int, _ body: (UnsafeBufferPointer<UInt8>) -> R) -> R {
        guard hasEscape(index) else { return body(raw(index)) }
        return Self.decoded(raw(index)).withUnsafeBufferPointer(body)
    }

    /// A string's bytes with its escapes decoded.
    @usableFromInline static func decoded(_ raw: UnsafeBufferPointer<UInt8>) -> [UInt8] {
        var decoded: [UInt8] = []
        decoded.reserveCapacity(raw.count)
        var unescaper = Unescaper(raw)
        while let byte = unescaper.next() { decoded.append(byte) }
        return decoded
    }
}

/// A fixed list of member names, kept as bytes, for reading an object's members in one pass
/// (`JSONDocument.forEachMember(of:matching:_:)`).
public struct JSONNames: Sendable {
    let names: [[UInt8]]

    public init(_ names: [String]) { self.names = names.map { Array($0.utf8) } }

    /// The position in the list of the name `bytes` spell, compared by bytes.
    func position(of bytes: UnsafeBufferPointer<UInt8>) -> Int? {
        for (i, name) in names.enumerated() where name.count == bytes.count {
            if name.withUnsafeBufferPointer({ memEqual($0, bytes) }) { return i }
        }
        return nil
    }
}

extension JSONDocument {
    /// Calls `body` for each member of an object, in document order, with the position of its name in `names` (nil
    /// for a name not listed), its name and its value: one pass over the members, names compared where they lie.
    /// Nothing is called for a value that is not an object.
    public func forEachMember<E: Error>(
        of element: JSONElement,
        matching names: JSONNames,
        _ body: (Int?, JSONElement, JSONElement) throws(E) -> Void
    ) throws(E) {
        guard tape[element.index].kind == .object else { return }
        var key = element.index + 1
        for _ in 0..<Int(tape[element.index].count) {
            let position = withUnescapedBytes(JSONElement(index: key)) { names.position(of: $0) }
            try body(position, JSONElement(index: key), JSONElement(index: key + 1))
            key = Int(tape[key + 1].next)
        }
    }
}
