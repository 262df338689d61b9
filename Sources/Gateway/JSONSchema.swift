/// A JSON Schema in the subset of draft 2020-12 that the gateway enforces.
///
/// Supported (Validation vocabulary §6 and Core §10.3): `type`, `properties`, `required`, `additionalProperties`,
/// `enum`, `const`, `minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum`, `multipleOf`, `minLength`,
/// `maxLength`, `minItems`, `maxItems`, `items` (one schema for every element, as in 2020-12), and
/// `format: "date-time"` (RFC 3339 §5.6, asserted, not only annotated). The annotations `$schema` (2020-12 only),
/// `$id`, `$comment`, `title`, `description`, `examples` and `default` are accepted and ignored. Any other keyword
/// is refused when the schema is registered: a schema the gateway would silently half-enforce is worse than none.
public struct JSONSchema: Sendable {
    indirect enum Node: Sendable {
        case always
        case never
        case rules(Rules)
    }

    struct Rules: Sendable {
        var types: Set<String>?
        var properties: [JSONKey: Node] = [:]
        var required: [JSONKey] = []
        var additionalProperties: Node?
        var enumeration: [JSONValue]?
        var constant: JSONValue?
        var minimum: Double?
        var maximum: Double?
        var exclusiveMinimum: Double?
        var exclusiveMaximum: Double?
        var multipleOf: Double?
        var minLength: Int?
        var maxLength: Int?
        var minItems: Int?
        var maxItems: Int?
        var items: Node?
        var dateTime = false
    }

    let root: Node

    /// A schema nothing satisfies: stands in for a stored schema that no longer compiles, so its messages are
    /// refused rather than accepted unchecked.
    public static let refuseAll = JSONSchema(root: .never)

    init(root: Node) { self.root = root }

    public static let draft202012 = "https://json-schema.org/draft/2020-12/schema"
    static let annotations: Set<String> = ["$schema", "$id", "$comment", "title", "description", "examples", "default"]
    static let typeNames: Set<String> = ["null", "boolean", "object", "array", "number", "string", "integer"]

    /// Compiles a schema document, refusing anything outside the subset with a message that names the keyword.
    public init(_ document: JSONValue) throws(SchemaError) {
        root = try Self.compile(document, path: "")
    }

    public init(bytes: [UInt8]) throws(SchemaError) {
        let document: JSONValue
        do { document = try StrictJSON(maxDepth: 32).parse(bytes) } catch {
            throw SchemaError("the schema is not strict JSON: \(error)")
        }
        try self.init(document)
    }

    static func compile(_ value: JSONValue, path: String) throws(SchemaError) -> Node {
        switch value {
        case .bool(true): return .always
        case .bool(false): return .never
        case .object(let members):
            var rules = Rules()
            for (keyword, argument) in members {
                let keyword = keyword.string
                let at = path + "/" + keyword
                func number() throws(SchemaError) -> Double {
                    guard case .number(let n, _) = argument else { throw SchemaError("\(at) must be a number") }
                    return n
                }
                func count() throws(SchemaError) -> Int {
                    guard case .number(let n, _) = argument, n >= 0, n == n.rounded(), n <= 1e9 else {
                        throw SchemaError("\(at) must be a non-negative integer")
                    }
                    return Int(n)
                }
                switch keyword {
                case "type":
                    let names: [JSONValue]
                    if case .array(let list) = argument { names = list } else { names = [argument] }
                    var types = Set<String>()
                    for name in names {
                        guard case .string(let text) = name, typeNames.contains(text) else {
                            throw SchemaError("\(at) names an unknown type")
                        }
                        types.insert(text)
                    }
                    guard !types.isEmpty else { throw SchemaError("\(at) is empty") }
                    rules.types = types
                case "properties":
                    guard case .object(let properties) = argument else { throw SchemaError("\(at) must be an object") }
                    for (name, schema) in properties {
                        rules.properties[name] = try compile(schema, path: at + "/" + name.string)
                    }
                case "required":
                    guard case .array(let names) = argument else { throw SchemaError("\(at) must be an array") }
                    for name in names {
                        guard case .string(let text) = name else { throw SchemaError("\(at) must hold strings") }
                        rules.required.append(JSONKey(text))
                    }
                case "additionalProperties": rules.additionalProperties = try compile(argument, path: at)
                case "items": rules.items = try compile(argument, path: at)
                case "enum":
                    // Each check compares against every value: bounded so a schema cannot make validation costly.
                    guard case .array(let values) = argument, !values.isEmpty, values.count <= 256 else {
                        throw SchemaError("\(at) must be a non-empty array of at most 256 values")
                    }
                    rules.enumeration = values
                case "const": rules.constant = argument
                case "minimum": rules.minimum = try number()
                case "maximum": rules.maximum = try number()
                case "exclusiveMinimum": rules.exclusiveMinimum = try number()
                case "exclusiveMaximum": rules.exclusiveMaximum = try number()
                case "multipleOf":
                    let divisor = try number()
                    guard divisor > 0 else { throw SchemaError("\(at) must be greater than 0") }
                    rules.multipleOf = divisor
                case "minLength": rules.minLength = try count()
                case "maxLength": rules.maxLength = try count()
                case "minItems": rules.minItems = try count()
                case "maxItems": rules.maxItems = try count()
                case "format":
                    guard case .string("date-time") = argument else {
                        throw SchemaError("\(at): only format \"date-time\" is supported")
                    }
                    rules.dateTime = true
                case "$schema":
                    guard case .string(let uri) = argument, uri == draft202012 || uri == draft202012 + "#" else {
                        throw SchemaError("\(at): only draft 2020-12 is supported")
                    }
                case _ where annotations.contains(keyword): continue
                default: throw SchemaError("unsupported keyword \(at)")
                }
            }
            return .rules(rules)
        default:
            throw SchemaError("\(path.isEmpty ? "the schema" : path) must be an object or a boolean")
        }
    }

    /// The first violation, or nil when `value` is valid. Paths are JSON Pointers (RFC 6901) into the instance.
    public func validate(_ value: JSONValue) -> SchemaViolation? {
        Self.check(value, root).map {
            SchemaViolation(path: $0.path.reversed().map { "/" + $0 }.joined(), keyword: $0.keyword)
        }
    }

    /// A violation on its way up: the path is collected in reverse, and only when something failed (valid messages
    /// build no path strings).
    struct Failure {
        var path: [String]
        let keyword: String
    }

    static func check(_ value: JSONValue, _ node: Node) -> Failure? {
        let rules: Rules
        switch node {
        case .always: return nil
        case .never: return Failure(path: [], keyword: "false")
        case .rules(let r): rules = r
        }
        func fail(_ keyword: String) -> Failure { Failure(path: [], keyword: keyword) }
        if let types = rules.types {
            var matches = types.contains(value.typeName)
            if !matches, types.contains("integer"), case .number(let n, _) = value, n == n.rounded() { matches = true }
            guard matches else { return fail("type") }
        }
        if let constant = rules.constant, !equal(value, constant) { return fail("const") }
        if let enumeration = rules.enumeration, !enumeration.contains(where: { equal(value, $0) }) {
            return fail("enum")
        }
        switch value {
        case .number(let n, _):
            if let limit = rules.minimum, n < limit { return fail("minimum") }
            if let limit = rules.maximum, n > limit { return fail("maximum") }
            if let limit = rules.exclusiveMinimum, n <= limit { return fail("exclusiveMinimum") }
            if let limit = rules.exclusiveMaximum, n >= limit { return fail("exclusiveMaximum") }
            if let divisor = rules.multipleOf {
                let quotient = n / divisor
                guard quotient.isFinite, abs(quotient - quotient.rounded()) <= 1e-9 * max(1, abs(quotient)) else {
                    return fail("multipleOf")
                }
            }
        case .string(let text):
            if rules.minLength != nil || rules.maxLength != nil {
                // §6.3.1: length counts code points (Unicode scalars), not bytes or grapheme clusters.
                let length = text.unicodeScalars.count
                if let limit = rules.minLength, length < limit { return fail("minLength") }
                if let limit = rules.maxLength, length > limit { return fail("maxLength") }
            }
            if rules.dateTime, !RFC3339.isDateTime(text) { return fail("format") }
        case .array(let elements):
            if let limit = rules.minItems, elements.count < limit { return fail("minItems") }
            if let limit = rules.maxItems, elements.count > limit { return fail("maxItems") }
            if let items = rules.items {
                for (index, element) in elements.enumerated() {
                    if var failure = check(element, items) {
                        failure.path.append(String(index))
                        return failure
                    }
                }
            }
        case .object(let members):
            for name in rules.required where members[name] == nil { return fail("required") }
            for (name, member) in members {
                if let schema = rules.properties[name] {
                    if var failure = check(member, schema) {
                        failure.path.append(escapePointer(name.string))
                        return failure
                    }
                } else if let additional = rules.additionalProperties {
                    if var failure = check(member, additional) {
                        if failure.keyword == "false", failure.path.isEmpty {
                            failure = Failure(path: [], keyword: "additionalProperties")
                        }
                        failure.path.append(escapePointer(name.string))
                        return failure
                    }
                }
            }
        case .null, .bool: break
        }
        return nil
    }

    /// JSON Schema equality (§4.2.2): numbers compare by value, objects ignore member order.
    static func equal(_ a: JSONValue, _ b: JSONValue) -> Bool {
        switch (a, b) {
        case (.number(let x, _), .number(let y, _)): x == y
        case (.array(let x), .array(let y)): x.count == y.count && zip(x, y).allSatisfy { equal($0, $1) }
        case (.object(let x), .object(let y)):
            x.count == y.count && x.allSatisfy { key, value in y[key].map { equal(value, $0) } ?? false }
        default: a == b
        }
    }

    /// RFC 6901 §3, per Unicode scalar: a `/` or `~` followed by a combining mark is one `Character` in Swift, and
    /// comparing whole characters left it unescaped (found by JSONSchemaFuzz).
    static func escapePointer(_ name: String) -> String {
        var escaped = String.UnicodeScalarView()
        for scalar in name.unicodeScalars {
            switch scalar {
            case "~": escaped.append(contentsOf: "~0".unicodeScalars)
            case "/": escaped.append(contentsOf: "~1".unicodeScalars)
            default: escaped.append(scalar)
            }
        }
        return String(escaped)
    }
}

/// A schema that cannot be registered, with the reason (safe to show to the operator who sent it).
public struct SchemaError: Error, Equatable, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// Where an instance fails its schema: a JSON Pointer and the keyword. For the log and audit record only.
public struct SchemaViolation: Sendable, Equatable, CustomStringConvertible {
    public let path: String
    public let keyword: String
    public var description: String { "\(path.isEmpty ? "/" : path) fails \(keyword)" }
}

/// RFC 3339 §5.6 `date-time`: `full-date "T" full-time`, with `T`/`Z` in either case (§5.6 note) and the leap second.
enum RFC3339 {
    static func isDateTime(_ text: String) -> Bool {
        let b = Array(text.utf8)
        guard b.count >= 20 else { return false }
        func digits(_ start: Int, _ count: Int) -> Int? {
            guard start + count <= b.count else { return nil }
            var value = 0
            for i in start..<start + count {
                guard (0x30...0x39).contains(b[i]) else { return nil }
                value = value * 10 + Int(b[i] - 0x30)
            }
            return value
        }
        guard let year = digits(0, 4), b[4] == UInt8(ascii: "-"), let month = digits(5, 2), b[7] == UInt8(ascii: "-"),
            let day = digits(8, 2), b[10] == UInt8(ascii: "T") || b[10] == UInt8(ascii: "t"),
            let hour = digits(11, 2), b[13] == UInt8(ascii: ":"), let minute = digits(14, 2),
            b[16] == UInt8(ascii: ":"), let second = digits(17, 2)
        else { return false }
        let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
        let days = [31, leap ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
        guard (1...12).contains(month), (1...days[month - 1]).contains(day), hour <= 23, minute <= 59, second <= 60
        else { return false }
        var i = 19
        if i < b.count, b[i] == UInt8(ascii: ".") {
            i += 1
            let start = i
            while i < b.count, (0x30...0x39).contains(b[i]) { i += 1 }
            guard i > start else { return false }
        }
        guard i < b.count else { return false }
        if b[i] == UInt8(ascii: "Z") || b[i] == UInt8(ascii: "z") { return i + 1 == b.count }
        guard b[i] == UInt8(ascii: "+") || b[i] == UInt8(ascii: "-"), let offsetHour = digits(i + 1, 2),
            i + 3 < b.count, b[i + 3] == UInt8(ascii: ":"), let offsetMinute = digits(i + 4, 2)
        else { return false }
        return offsetHour <= 23 && offsetMinute <= 59 && i + 6 == b.count
    }
}
