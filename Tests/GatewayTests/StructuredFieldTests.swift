import Foundation
import RawStructuredFieldValues
import Testing

@testable import Gateway

/// Gateway's RFC 9651 dictionary parser against swift-http-structured-headers (the parser it replaced) as the
/// oracle: on generated and damaged field values both must accept the same ones and read the same members.
@Suite struct StructuredFieldTests {
    typealias Member = StructuredField.Member
    typealias BareItem = StructuredField.BareItem

    /// The oracle's reading, in Gateway's types (display strings never appear: the generator does not write them).
    static func oracle(_ text: String) -> [(key: String, value: Member)]? {
        var parser = StructuredFieldValueParser(Array(text.utf8))
        guard let map = try? parser.parseDictionaryFieldValue() else { return nil }
        func bare(_ item: RFC9651BareItem) -> BareItem? {
            switch item {
            case .bool(let b): return .boolean(b)
            case .integer(let i): return .integer(Int64(i))
            case .decimal(let d): return .decimal("\(d.mantissa)e\(d.exponent)")
            case .string(let s): return .string(s)
            case .undecodedByteSequence(let s): return .byteSequence(s)
            case .token(let t): return .token(t)
            case .date(let d): return .date(Int64(d))
            default: return nil
            }
        }
        func parameters(_ p: OrderedMap<String, RFC9651BareItem>) -> [(key: String, value: BareItem)]? {
            var out: [(key: String, value: BareItem)] = []
            for (k, v) in p {
                guard let b = bare(v) else { return nil }
                out.append((k, b))
            }
            return out
        }
        func item(_ i: RawStructuredFieldValues.Item) -> StructuredField.Item? {
            guard let v = bare(i.rfc9651BareItem), let p = parameters(i.rfc9651Parameters) else { return nil }
            return StructuredField.Item(value: v, parameters: p)
        }
        var out: [(key: String, value: Member)] = []
        for (key, value) in map {
            switch value {
            case .item(let i):
                guard let it = item(i) else { return nil }
                out.append((key, .item(it)))
            case .innerList(let list):
                var items: [StructuredField.Item] = []
                for i in list.bareInnerList {
                    guard let it = item(i) else { return nil }
                    items.append(it)
                }
                guard let p = parameters(list.rfc9651Parameters) else { return nil }
                out.append((key, .innerList(items, parameters: p)))
            }
        }
        return out
    }

    /// Decimals compared as the oracle keeps them: a mantissa and a power of ten.
    static func normalized(_ members: [(key: String, value: Member)]) -> [(key: String, value: Member)] {
        func bare(_ b: BareItem) -> BareItem {
            guard case .decimal(let text) = b, let point = text.firstIndex(of: ".") else { return b }
            let exponent = -text.distance(from: text.index(after: point), to: text.endIndex)
            let mantissa = Int64(text.filter { $0 != "." }) ?? 0
            return .decimal("\(mantissa)e\(exponent)")
        }
        func item(_ i: StructuredField.Item) -> StructuredField.Item {
            StructuredField.Item(value: bare(i.value), parameters: i.parameters.map { ($0.key, bare($0.value)) })
        }
        return members.map { m in
            switch m.value {
            case .item(let i): return (m.key, .item(item(i)))
            case .innerList(let l, let p):
                return (m.key, .innerList(l.map(item), parameters: p.map { ($0.key, bare($0.value)) }))
            }
        }
    }

    struct Generator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state ^= state >> 12
            state ^= state << 25
            state ^= state >> 27
            return state &* 0x2545_F491_4F6C_DD1D
        }
        mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
        mutating func pick<T>(_ items: [T]) -> T { items[below(items.count)] }

        mutating func key() -> String {
            pick([
                "sig", "a", "*", "created", "nonce", "keyid", "alg", "expires", "sha-256", "sha-512", "x.y_z", "A",
                "1a",
            ])
        }
        mutating func bare() -> String {
            switch below(9) {
            case 0: return String(below(2) == 0 ? below(2_000_000_000) : -below(1000))
            case 1: return pick(["1.5", "-0.25", "123456789012.123", "1.", "1.2345", "1234567890123.1", "0.0"])
            case 2:
                return pick([
                    #""n0nce-0123456789abcdef""#, #""a\"b""#, #""a\\b""#, #""bad\escape""#, "\"\u{01}\"", #""""#,
                ])
            case 3: return pick(["tok", "*tok/x:y", "ecdsa-p256-sha256", "A1"])
            case 4: return pick([":AAAA:", "::", ":YWJj:", ":not base64!:", ":YQ==:", ":YQ:"])
            case 5: return pick(["?0", "?1", "?2"])
            case 6: return pick(["@1700000000", "@-1", "@1.5"])
            case 7: return String(repeating: "9", count: 15 + below(3))
            default: return pick(["(", ")", ",", "=", ";"])
            }
        }
        mutating func parameters() -> String {
            (0..<below(3)).map { _ in ";" + (below(4) == 0 ? " " : "") + key() + (below(4) == 0 ? "" : "=" + bare()) }
                .joined()
        }
        mutating func member() -> String {
            let k = key()
            switch below(4) {
            case 0: return k + parameters()
            case 1, 2:
                let items = (0..<below(4)).map { _ in bare() + parameters() }.joined(separator: pick([" ", "  "]))
                return k + "=(" + (below(5) == 0 ? " " : "") + items + ")" + parameters()
            default: return k + "=" + bare() + parameters()
            }
        }
        mutating func dictionary() -> String {
            (below(8) == 0 ? " " : "")
                + (0..<(1 + below(3))).map { _ in member() }.joined(separator: pick([",", ", ", " ,\t"]))
                + (below(10) == 0 ? "," : "") + (below(8) == 0 ? " " : "")
        }
        mutating func damage(_ text: String) -> String {
            var bytes = Array(text.utf8)
            guard !bytes.isEmpty else { return text }
            let at = below(bytes.count)
            switch below(4) {
            case 0: bytes[at] = pick([0x20, 0x22, 0x28, 0x29, 0x2C, 0x3A, 0x3B, 0x3D, 0x5C, 0x09, 0x80, 0x41])
            case 1: bytes.remove(at: at)
            case 2: bytes.insert(pick([0x20, 0x22, 0x28, 0x3B, 0x3D, 0x2A]), at: at)
            default: bytes = Array(bytes.prefix(at))
            }
            return String(decoding: bytes, as: UTF8.self)
        }
    }

    @Test func agreesWithTheOracle() {
        var generator = Generator(state: 0x9651_2024)
        var accepted = 0
        var refused = 0
        for round in 0..<20_000 {
            var text = generator.dictionary()
            if round % 2 == 1 { text = generator.damage(text) }
            let ours = try? StructuredField.dictionary(text)
            let theirs = Self.oracle(text)
            #expect((ours == nil) == (theirs == nil), "acceptance differs on \(text.debugDescription)")
            if let ours, let theirs {
                let a = Self.normalized(ours)
                let b = Self.normalized(theirs)
                #expect(
                    a.elementsEqual(b) { $0.key == $1.key && $0.value == $1.value },
                    "members differ on \(text.debugDescription)")
                accepted += 1
            } else {
                refused += 1
            }
        }
        #expect(accepted > 2_000)
        #expect(refused > 2_000)
    }

    @Test func readsTheSignatureFields() throws {
        let input = try StructuredField.dictionary(
            #"sig=("@method" "@path" "content-digest");created=1700000000;nonce="abc";alg="hmac-sha256""#)
        #expect(input.count == 1)
        guard case .innerList(let items, let parameters) = input[0].value else {
            Issue.record("not an inner list")
            return
        }
        #expect(items.map(\.value) == [.string("@method"), .string("@path"), .string("content-digest")])
        #expect(parameters.map(\.key) == ["created", "nonce", "alg"])
        #expect(parameters[0].value == .integer(1_700_000_000))
        // A repeated key keeps its first place and its last value (RFC 9651 §4.2.2).
        let repeated = try StructuredField.dictionary("a=1, b=2, a=3")
        #expect(repeated.map(\.key) == ["a", "b"])
        #expect(repeated[0].value == .item(StructuredField.Item(value: .integer(3), parameters: [])))
    }

    @Test func base64IsStrictAndRoundTrips() {
        var generator = Generator(state: 42)
        for n in 0..<100 {
            let bytes = (0..<n).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
            let text = base64Encode(bytes)
            #expect(text == Data(bytes).base64EncodedString())
            #expect(base64Decode(text) == bytes)
        }
        for bad in ["YQ", "YQ=", "Y===", "YR==", "YWI=YWJj", "YW J", "YWJ\u{E9}", "=AAA"] {
            #expect(base64Decode(bad) == nil, "\(bad)")
        }
    }
}
