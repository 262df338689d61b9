import JSON

/// A JSON Schema in the subset of draft 2020-12 that the gateway enforces.
///
/// Supported (Validation vocabulary §6 and Core §10.3): `type`, `properties`, `required`, `additionalProperties`,
/// `enum`, `const`, `minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum`, `multipleOf`, `minLength`,
/// `maxLength`, `minItems`, `maxItems`, `items` (one schema for every element, as in 2020-12), and
/// `format: "date-time"` (RFC 3339 §5.6, asserted, not only annotated). The annotations `$schema` (2020-12 only),
/// `$id`, `$comment`, `title`, `description`, `examples` and `default` are accepted and ignored. Any other keyword
/// is refused when the schema is registered: a schema the gateway would silently half-enforce is worse than none.
///
/// A schema is compiled into flat tables of plain values (no strings, dictionaries or reference counting on the way),
/// and a message is checked by walking the parser's tape over its bytes: nothing is built, and a string is decoded
/// only when it has an escape.
public struct JSONSchema: Sendable {
    /// One schema object (or `true`/`false`), its rules as plain values; absent numeric rules are NaN or -1.
    struct Node: Sendable {
        enum Kind: Sendable { case always, never, rules }
        var kind: Kind = .rules
        /// Bit `JSONKind.rawValue` per allowed type (`boolean` sets both bits), `integerBit` for "integer"; 0: any.
        var types: UInt16 = 0
        var minimum = Double.nan
        var maximum = Double.nan
        var exclusiveMinimum = Double.nan
        var exclusiveMaximum = Double.nan
        var multipleOf = Double.nan
        var minLength = -1
        var maxLength = -1
        var minItems = -1
        var maxItems = -1
        var dateTime = false
        var items = -1
        var additionalProperties = -1
        /// Ranges into `Program.properties` (sorted by name), `Program.required` (sorted, unique) and
        /// `Program.values`.
        var properties = 0..<0
        /// Open-addressed slots over `properties` (a power of two, at least twice as many): `Program.slots`.
        var slots = 0..<0
        var required = 0..<0
        var enumeration = 0..<0
        var constant = -1
    }

    static let integerBit: UInt16 = 1 << 8

    /// A property: its name in `Program.names`, the node of its schema, and its position in its node's `required`
    /// (-1 when not required), so one look-up per member serves both.
    struct Property: Sendable {
        var name: Range<Int>
        var node: Int
        var required = -1
    }

    /// The slot a property name hashes to first: its length and its first, middle and last eight bytes (every byte of
    /// a name of up to 24, so names that differ in a few, as `reading_0001` … `reading_1000` or
    /// `device_0001_temperature` … do, spread over the table), mixed by multiplication. A byte at a time was
    /// measurably slower on the gateway's path; the bound on probes (`maxProbe`), not the hash, is what keeps a
    /// look-up short whatever the names.
    static func slotHash(_ name: UnsafeBufferPointer<UInt8>) -> Int {
        let count = name.count
        var first: UInt64 = 0
        var middle: UInt64 = 0
        var last: UInt64 = 0
        if count >= 8, let base = name.baseAddress {
            first = UnsafeRawPointer(base).loadUnaligned(as: UInt64.self)
            middle = UnsafeRawPointer(base + count / 2 - 4).loadUnaligned(as: UInt64.self)
            last = UnsafeRawPointer(base + count - 8).loadUnaligned(as: UInt64.self)
        } else {
            for byte in name { first = first << 8 | UInt64(byte) }
        }
        // The three words rotated apart, then SplitMix64's finalizer, which spreads every input bit over the result.
        var hash =
            first ^ (middle << 21 | middle >> 43) ^ (last << 42 | last >> 22) ^ UInt64(truncatingIfNeeded: count)
        hash = (hash ^ (hash >> 30)) &* 0xbf58_476d_1ce4_e5b9
        hash = (hash ^ (hash >> 27)) &* 0x94d0_49bb_1331_11eb
        return Int(truncatingIfNeeded: (hash ^ (hash >> 31)) >> 1)
    }

    /// The longest walk a look-up can make in a property table: a name, known or not, probes from its slot to the
    /// next empty one, so the longest run of occupied slots (wrapping around) bounds every look-up. The schema fixes
    /// it, whatever names a message sends.
    static func longestProbe(_ table: [Int]) -> Int {
        guard let empty = table.firstIndex(of: -1) else { return table.count }
        var longest = 0
        var run = 0
        for offset in 1...table.count {
            if table[(empty + offset) % table.count] >= 0 {
                run += 1
                longest = max(longest, run)
            } else {
                run = 0
            }
        }
        return longest + 1
    }

    /// A table whose every look-up probes at most this many slots; past it, the properties are binary searched.
    static let maxProbe = 8

    /// The tables while a schema is compiled; node 0 is the root.
    struct Program: Sendable {
        var nodes: [Node] = []
        var names: [UInt8] = []
        var properties: [Property] = []
        var required: [Range<Int>] = []
        /// Per node with properties, its open-addressed table: a property's index or -1 for an empty slot.
        var slots: [Int] = []
        var values: [JSONValue] = []
        /// Per value: where its UTF-8 bytes are in `names` when it is a string (compared with no reference counting).
        var strings: [Range<Int>?] = []

        mutating func append(_ value: JSONValue) {
            values.append(value)
            guard case .string(let text) = value else {
                strings.append(nil)
                return
            }
            strings.append(names.count..<names.count + text.utf8.count)
            names.append(contentsOf: text.utf8)
        }
    }

    /// The compiled tables, shared (one reference to count when a schema is looked up per message).
    final class Tables: Sendable {
        let program: Program
        init(_ program: Program) { self.program = program }
    }

    let tables: Tables
    var program: Program { tables.program }

    /// A schema nothing satisfies: stands in for a stored schema that no longer compiles, so its messages are
    /// refused rather than accepted unchecked.
    public static let refuseAll = JSONSchema(program: Program(nodes: [Node(kind: .never)]))

    init(program: Program) { self.tables = Tables(program) }

    public static let draft202012 = "https://json-schema.org/draft/2020-12/schema"
    static let annotations: Set<String> = ["$schema", "$id", "$comment", "title", "description", "examples", "default"]
    static let typeNames: Set<String> = ["null", "boolean", "object", "array", "number", "string", "integer"]

    /// Compiles a schema document, refusing anything outside the subset with a message that names the keyword.
    public init(_ document: JSONValue) throws(SchemaError) {
        var program = Program()
        _ = try Self.compile(document, path: "", into: &program)
        self.tables = Tables(program)
    }

    public init(bytes: [UInt8]) throws(SchemaError) {
        let document: JSONValue
        do { document = try StrictJSON(maxDepth: 32).value(bytes) } catch {
            throw SchemaError("the schema is not strict JSON: \(error)")
        }
        try self.init(document)
    }

    /// Appends the node for `value` (and, after it, the nodes of its subschemas); returns its index.
    static func compile(_ value: JSONValue, path: String, into program: inout Program) throws(SchemaError) -> Int {
        let index = program.nodes.count
        switch value {
        case .bool(true):
            program.nodes.append(Node(kind: .always))
            return index
        case .bool(false):
            program.nodes.append(Node(kind: .never))
            return index
        case .object: break
        default: throw SchemaError("\(path.isEmpty ? "the schema" : path) must be an object or a boolean")
        }
        guard case .object(let members) = value else { return index }
        program.nodes.append(Node())
        var rules = Node()
        var properties: [(name: [UInt8], schema: JSONValue, path: String)] = []
        var items: (JSONValue, String)?
        var additional: (JSONValue, String)?
        for (keyword, argument) in members.members {
            let at = path + "/" + keyword
            func number() throws(SchemaError) -> Double {
                guard let n = argument.doubleValue, n.isFinite else { throw SchemaError("\(at) must be a number") }
                return n
            }
            func count() throws(SchemaError) -> Int {
                guard let n = argument.doubleValue, n >= 0, n == n.rounded(), n <= 1e9 else {
                    throw SchemaError("\(at) must be a non-negative integer")
                }
                return Int(n)
            }
            switch keyword {
            case "type":
                let names: [JSONValue]
                if case .array(let list) = argument { names = list } else { names = [argument] }
                var types: UInt16 = 0
                for name in names {
                    guard case .string(let text) = name, typeNames.contains(text) else {
                        throw SchemaError("\(at) names an unknown type")
                    }
                    types |= Self.typeBits(text)
                }
                guard types != 0 else { throw SchemaError("\(at) is empty") }
                rules.types = types
            case "properties":
                guard case .object(let list) = argument else { throw SchemaError("\(at) must be an object") }
                for (name, schema) in list.members { properties.append((Array(name.utf8), schema, at + "/" + name)) }
            case "required":
                guard case .array(let names) = argument else { throw SchemaError("\(at) must be an array") }
                var sorted: [[UInt8]] = []
                for name in names {
                    guard case .string(let text) = name else { throw SchemaError("\(at) must hold strings") }
                    sorted.append(Array(text.utf8))
                }
                // Sorted and without repeats, for a binary search with each member's name.
                sorted.sort(by: Self.nameOrder)
                let start = program.required.count
                for (index, name) in sorted.enumerated() where index == 0 || sorted[index - 1] != name {
                    program.required.append(program.names.count..<program.names.count + name.count)
                    program.names.append(contentsOf: name)
                }
                rules.required = start..<program.required.count
            case "additionalProperties": additional = (argument, at)
            case "items": items = (argument, at)
            case "enum":
                // Each check compares against every value: bounded so a schema cannot make validation costly.
                guard case .array(let values) = argument, !values.isEmpty, values.count <= 256 else {
                    throw SchemaError("\(at) must be a non-empty array of at most 256 values")
                }
                rules.enumeration = program.values.count..<program.values.count + values.count
                for value in values { program.append(value) }
            case "const":
                rules.constant = program.values.count
                program.append(argument)
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
        // Subschemas after this node, each appending its own nodes.
        if let (schema, at) = items { rules.items = try compile(schema, path: at, into: &program) }
        if let (schema, at) = additional { rules.additionalProperties = try compile(schema, path: at, into: &program) }
        // Each required name's place among them, for the properties that carry it.
        let requiredAt = Dictionary(
            rules.required.map { (Array(program.names[program.required[$0]]), $0 - rules.required.lowerBound) },
            uniquingKeysWith: { first, _ in first })
        var compiled: [Property] = []
        for property in properties.sorted(by: { Self.nameOrder($0.name, $1.name) }) {
            let node = try compile(property.schema, path: property.path, into: &program)
            let name = program.names.count..<program.names.count + property.name.count
            program.names.append(contentsOf: property.name)
            compiled.append(Property(name: name, node: node, required: requiredAt[property.name] ?? -1))
        }
        rules.properties = program.properties.count..<program.properties.count + compiled.count
        program.properties.append(contentsOf: compiled)
        // The hashed table: at least twice as many slots as properties, doubled (up to 16 times as many) until no
        // look-up can probe more than `maxProbe` slots; a schema whose names still cluster keeps the binary search.
        var size = 4
        while size < 2 * compiled.count { size *= 2 }
        while !compiled.isEmpty, size <= max(64, 16 * compiled.count) {
            var table = [Int](repeating: -1, count: size)
            // An insertion that walks past `maxProbe` slots already dooms this size: give it up there, so names that
            // hash alike cost a bounded walk each, not a walk over the whole cluster.
            var clustered = false
            for index in rules.properties where !clustered {
                var slot = program.names[program.properties[index].name].withUnsafeBufferPointer { Self.slotHash($0) }
                var walked = 1
                while table[slot & (size - 1)] >= 0 {
                    slot &+= 1
                    walked += 1
                }
                clustered = walked > Self.maxProbe
                table[slot & (size - 1)] = index
            }
            if !clustered, Self.longestProbe(table) <= Self.maxProbe {
                rules.slots = program.slots.count..<program.slots.count + size
                program.slots.append(contentsOf: table)
                break
            }
            size *= 2
        }
        program.nodes[index] = rules
        return index
    }

    /// The order of the binary searches: shorter names first, then by bytes (a length decides most comparisons).
    static func nameOrder(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        a.count != b.count ? a.count < b.count : a.lexicographicallyPrecedes(b)
    }

    static func typeBits(_ name: String) -> UInt16 {
        switch name {
        case "null": 1 << JSONKind.null.rawValue
        case "boolean": 1 << JSONKind.true.rawValue | 1 << JSONKind.false.rawValue
        case "number": 1 << JSONKind.number.rawValue
        case "string": 1 << JSONKind.string.rawValue
        case "array": 1 << JSONKind.array.rawValue
        case "object": 1 << JSONKind.object.rawValue
        default: integerBit
        }
    }

    /// The first violation, or nil when the document's root is valid. Paths are JSON Pointers (RFC 6901) into the
    /// instance. `skipping` is a member of the root object the schema does not see (the MQTT `$counter` field).
    public func validate(_ document: JSONDocument, skipping: JSONElement? = nil) -> SchemaViolation? {
        let program = tables.program
        return document.withTape { tape in
            program.nodes.withUnsafeBufferPointer { nodes in
                program.properties.withUnsafeBufferPointer { properties in
                    program.names.withUnsafeBufferPointer { names in
                        program.required.withUnsafeBufferPointer { required in
                            program.strings.withUnsafeBufferPointer { strings in
                                program.slots.withUnsafeBufferPointer { slots in
                                    let walk = Walk(
                                        tape: tape, nodes: nodes, properties: properties, names: names,
                                        required: required, slots: slots, strings: strings, values: program.values,
                                        skipping: skipping.map { $0.index - 1 } ?? -1)
                                    return walk.check(0, node: 0).map {
                                        SchemaViolation(
                                            path: $0.path.reversed().map { "/" + $0 }.joined(), keyword: $0.keyword)
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// A violation on its way up: the path is collected in reverse, and only when something failed (valid messages
    /// build no path strings).
    struct Failure {
        var path: [String]
        let keyword: String
    }

    /// One validation: the instance's tape and the schema's tables, as pointers.
    struct Walk {
        let tape: JSONTape
        let nodes: UnsafeBufferPointer<Node>
        let properties: UnsafeBufferPointer<Property>
        let names: UnsafeBufferPointer<UInt8>
        let required: UnsafeBufferPointer<Range<Int>>
        let slots: UnsafeBufferPointer<Int>
        let strings: UnsafeBufferPointer<Range<Int>?>
        let values: [JSONValue]
        /// The tape index of the root member name the schema does not see, or -1.
        let skipping: Int

        func name(_ range: Range<Int>) -> UnsafeBufferPointer<UInt8> { UnsafeBufferPointer(rebasing: names[range]) }

        func check(_ element: Int, node index: Int) -> Failure? {
            // Read in place: a node is a few cache lines, and a copy per value showed in the profile.
            guard let base = nodes.baseAddress else { return nil }
            let rules = base + index
            switch rules.pointee.kind {
            case .always: return nil
            case .never: return Failure(path: [], keyword: "false")
            case .rules: break
            }
            func fail(_ keyword: String) -> Failure { Failure(path: [], keyword: keyword) }
            let kind = tape.kind(element)
            if rules.pointee.types != 0, rules.pointee.types & (1 << kind.rawValue) == 0 {
                var integer = false
                if rules.pointee.types & JSONSchema.integerBit != 0, kind == .number {
                    integer = tape.isIntegerLiteral(element) || tape.double(element).map { $0 == $0.rounded() } == true
                }
                guard integer else { return fail("type") }
            }
            if rules.pointee.constant >= 0, !matches(element, rules.pointee.constant..<rules.pointee.constant + 1) {
                return fail("const")
            }
            if !rules.pointee.enumeration.isEmpty, !matches(element, rules.pointee.enumeration) { return fail("enum") }
            switch kind {
            case .number:
                guard
                    !rules.pointee.minimum.isNaN || !rules.pointee.maximum.isNaN
                        || !rules.pointee.exclusiveMinimum.isNaN
                        || !rules.pointee.exclusiveMaximum.isNaN || !rules.pointee.multipleOf.isNaN,
                    let n = tape.double(element)
                else { break }
                if n < rules.pointee.minimum { return fail("minimum") }
                if n > rules.pointee.maximum { return fail("maximum") }
                if n <= rules.pointee.exclusiveMinimum { return fail("exclusiveMinimum") }
                if n >= rules.pointee.exclusiveMaximum { return fail("exclusiveMaximum") }
                if !rules.pointee.multipleOf.isNaN {
                    let quotient = n / rules.pointee.multipleOf
                    guard quotient.isFinite, abs(quotient - quotient.rounded()) <= 1e-9 * max(1, abs(quotient)) else {
                        return fail("multipleOf")
                    }
                }
            case .string:
                guard rules.pointee.minLength >= 0 || rules.pointee.maxLength >= 0 || rules.pointee.dateTime else {
                    break
                }
                let failure: Failure? = tape.unescaped(element) { bytes in
                    if rules.pointee.minLength >= 0 || rules.pointee.maxLength >= 0 {
                        // §6.3.1: length counts code points (Unicode scalars), not bytes or grapheme clusters.
                        var length = 0
                        for byte in bytes where byte & 0xC0 != 0x80 { length += 1 }
                        if rules.pointee.minLength >= 0, length < rules.pointee.minLength { return fail("minLength") }
                        if rules.pointee.maxLength >= 0, length > rules.pointee.maxLength { return fail("maxLength") }
                    }
                    if rules.pointee.dateTime, !RFC3339.isDateTime(bytes) { return fail("format") }
                    return nil
                }
                if let failure { return failure }
            case .array:
                let count = tape.count(element)
                if rules.pointee.minItems >= 0, count < rules.pointee.minItems { return fail("minItems") }
                if rules.pointee.maxItems >= 0, count > rules.pointee.maxItems { return fail("maxItems") }
                if rules.pointee.items >= 0 {
                    var item = element + 1
                    for position in 0..<count {
                        if var failure = check(item, node: rules.pointee.items) {
                            failure.path.append(String(position))
                            return failure
                        }
                        item = tape.next(item)
                    }
                }
            case .object:
                return object(element, rules)
            case .null, .true, .false: break
            }
            return nil
        }

        /// `required` first (a missing name is reported before a failing member), then each member in document
        /// order against its property's schema or `additionalProperties`.
        /// One pass over the members, each name decoded at most once: it marks the required names it sees (binary
        /// search in the sorted list) and checks the member against its property's schema or
        /// `additionalProperties`. A missing required name is reported before a failing member.
        func object(_ element: Int, _ rules: UnsafePointer<Node>) -> Failure? {
            let requiredCount = rules.pointee.required.count
            guard requiredCount > 0 || !rules.pointee.properties.isEmpty || rules.pointee.additionalProperties >= 0
            else { return nil }
            // Bits for the first 64 required names, an array beyond (a schema with that many is rare).
            var seen: UInt64 = 0
            var seenBeyond = requiredCount > 64 ? [Bool](repeating: false, count: requiredCount - 64) : []
            var firstFailure: Failure?
            var key = element + 1
            for _ in 0..<tape.count(element) {
                defer { key = tape.next(key + 1) }
                if key == skipping { continue }
                tape.unescaped(key) { name in
                    // One look-up: the property knows its place among the required names; only a name with no
                    // property is searched for among them.
                    let found = property(name, of: rules)
                    let requiredAt =
                        found.map { properties[$0].required }
                        ?? (requiredCount > 0 ? index(of: name, in: rules.pointee.required) ?? -1 : -1)
                    if requiredAt >= 0 {
                        if requiredAt < 64 {
                            seen |= 1 << UInt64(requiredAt)
                        } else {
                            seenBeyond[requiredAt - 64] = true
                        }
                    }
                    guard firstFailure == nil else { return }
                    let node = found.map { properties[$0].node } ?? rules.pointee.additionalProperties
                    guard node >= 0, var failure = check(key + 1, node: node) else { return }
                    if found == nil, failure.keyword == "false", failure.path.isEmpty {
                        failure = Failure(path: [], keyword: "additionalProperties")
                    }
                    failure.path.append(JSONSchema.escapePointer(String(decoding: name, as: UTF8.self)))
                    firstFailure = failure
                }
                if firstFailure != nil, requiredCount == 0 { break }
            }
            let all: UInt64 = requiredCount >= 64 ? .max : (1 << UInt64(requiredCount)) - 1
            if seen != all || seenBeyond.contains(false) { return Failure(path: [], keyword: "required") }
            return firstFailure
        }

        /// The position of `bytes` in a sorted range of required names, or nil.
        func index(of bytes: UnsafeBufferPointer<UInt8>, in range: Range<Int>) -> Int? {
            search(bytes, in: range) { required[$0] }.map { $0 - range.lowerBound }
        }

        /// The index in `properties` of the property named `bytes`, or nil: its hash slot, then the next ones until
        /// an empty slot (at most `maxProbe`), or a binary search when the node has no table.
        func property(_ bytes: UnsafeBufferPointer<UInt8>, of rules: UnsafePointer<Node>) -> Int? {
            let table = rules.pointee.slots
            guard !table.isEmpty else { return search(bytes, in: rules.pointee.properties) { properties[$0].name } }
            let mask = table.count - 1
            var slot = JSONSchema.slotHash(bytes)
            while true {
                let index = slots[table.lowerBound + (slot & mask)]
                if index < 0 { return nil }
                let name = properties[index].name
                if name.count == bytes.count, compareBytes(self.name(name), bytes) == 0 { return index }
                slot &+= 1
            }
        }

        /// Binary search over names sorted by `JSONSchema.nameOrder` (`nameAt` gives each one's place in `names`).
        func search(_ bytes: UnsafeBufferPointer<UInt8>, in range: Range<Int>, nameAt: (Int) -> Range<Int>) -> Int? {
            var low = range.lowerBound
            var high = range.upperBound
            while low < high {
                let middle = (low + high) / 2
                let order = compareBytes(name(nameAt(middle)), bytes)
                if order == 0 { return middle }
                if order < 0 { low = middle + 1 } else { high = middle }
            }
            return nil
        }

        /// Whether the instance value equals one of `values[range]` (`const` is a range of one). A string is decoded
        /// once, not once per value.
        func matches(_ element: Int, _ range: Range<Int>) -> Bool {
            guard tape.kind(element) == .string else { return range.contains { equal(element, values[$0]) } }
            return tape.unescaped(element) { bytes in
                range.contains { index in strings[index].map { compareBytes(name($0), bytes) == 0 } ?? false }
            }
        }

        /// Members of an object, without the root member the schema does not see.
        func memberCount(_ element: Int) -> Int {
            tape.count(element) - (element == 0 && skipping >= 0 ? 1 : 0)
        }

        /// JSON Schema equality (§4.2.2) of an instance value and a schema value: numbers compare by value, strings
        /// by their unescaped bytes, objects ignore member order.
        func equal(_ element: Int, _ value: JSONValue) -> Bool {
            switch (tape.kind(element), value) {
            case (.null, .null): return true
            case (.true, .bool(true)), (.false, .bool(false)): return true
            case (.number, .integer), (.number, .float):
                guard let x = tape.double(element), let y = value.doubleValue else { return false }
                return x == y
            case (.string, .string(var text)):
                return text.withUTF8 { expected in tape.unescaped(element) { compareBytes($0, expected) == 0 } }
            case (.array, .array(let values)):
                guard tape.count(element) == values.count else { return false }
                var item = element + 1
                for expected in values {
                    guard equal(item, expected) else { return false }
                    item = tape.next(item)
                }
                return true
            case (.object, .object(let object)):
                guard memberCount(element) == object.count else { return false }
                var key = element + 1
                for _ in 0..<tape.count(element) {
                    defer { key = tape.next(key + 1) }
                    if key == skipping { continue }
                    guard let expected = tape.unescaped(key, { object[String(decoding: $0, as: UTF8.self)] }),
                        equal(key + 1, expected)
                    else { return false }
                }
                return true
            default: return false
            }
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

/// `JSONSchema.nameOrder` of two names (negative, zero, positive): the length, then the first differing byte.
func compareBytes(_ a: UnsafeBufferPointer<UInt8>, _ b: UnsafeBufferPointer<UInt8>) -> Int {
    if a.count != b.count { return a.count - b.count }
    for k in 0..<a.count where a[k] != b[k] { return a[k] < b[k] ? -1 : 1 }
    return 0
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
    static func isDateTime(_ text: String) -> Bool { Array(text.utf8).withUnsafeBufferPointer { isDateTime($0) } }

    static func isDateTime(_ b: UnsafeBufferPointer<UInt8>) -> Bool {
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
