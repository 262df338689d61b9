import Foundation
import JSON
import Testing

/// Property-based: thousands of random documents (generated, then mutated byte-wise) go through the parser and
/// through an oracle, Python's `json` module with the rules each profile adds (duplicate names, NaN and Infinity,
/// the integer range, finite numbers, surrogates and noncharacters, the limits). Both must accept the same
/// documents, and for an accepted one give the same value (compared in a normal form: names sorted by bytes,
/// strings as hex of their UTF-8, numbers as integers or `%.17g`). The seed is printed on failure.
@Suite struct OracleTests {
    static let oracle = """
        import json, math, sys
        profile = sys.argv[1]
        LIMIT = 2**53 - 1 if profile == 'ijson' else None
        class Refused(Exception): pass
        def pairs(items):
            seen = set()
            for k, _ in items:
                if k in seen: raise Refused('duplicate')
                seen.add(k)
            if profile == 'ijson' and len(items) > 1000: raise Refused('members')
            return dict(items), [k for k, _ in items]
        def const(name): raise Refused(name)
        def integer(text):
            if profile == 'ijson' and len(text) > 40: raise Refused('length')
            n = int(text)
            if profile == 'ijson' and abs(n) > LIMIT: raise Refused('range')
            if profile == 'tuf' and not (-2**63 <= n < 2**63): raise Refused('range')
            return ('int', n)
        def number(text):
            if profile == 'ijson' and len(text) > 40: raise Refused('length')
            f = float(text)
            if profile == 'ijson' and math.isinf(f): raise Refused('inf')
            return ('float', f)
        def bad_string(s):
            for c in s:
                o = ord(c)
                if 0xD800 <= o <= 0xDFFF: return True
                if profile == 'ijson' and (0xFDD0 <= o <= 0xFDEF or (o & 0xFFFE) == 0xFFFE): return True
            return False
        MAX_DEPTH = 16 if profile == 'ijson' else 128
        def normal(v, depth):
            if isinstance(v, tuple) and len(v) == 2 and isinstance(v[1], list) and isinstance(v[0], dict):
                if depth > MAX_DEPTH: raise Refused('depth')
                d, order = v
                out = []
                for k in sorted(order, key=lambda k: k.encode('utf-8', 'surrogatepass')):
                    if bad_string(k): raise Refused('string')
                    out.append(k.encode('utf-8').hex() + ':' + normal(d[k], depth + 1))
                return '{' + ','.join(out) + '}'
            if isinstance(v, list):
                if depth > MAX_DEPTH: raise Refused('depth')
                if profile == 'ijson' and len(v) > 1000: raise Refused('elements')
                return '[' + ','.join(normal(x, depth + 1) for x in v) + ']'
            if isinstance(v, str):
                if bad_string(v): raise Refused('string')
                return 's' + v.encode('utf-8').hex()
            if v is None: return 'null'
            if v is True: return 'true'
            if v is False: return 'false'
            if v[0] == 'int': return 'i' + str(v[1])
            return 'f' + ('%.17g' % v[1])
        for line in sys.stdin:
            raw = bytes.fromhex(line.strip())
            try:
                text = raw.decode('utf-8')
                value = json.loads(text, object_pairs_hook=pairs, parse_constant=const, parse_int=integer,
                                   parse_float=number)
                print('ok ' + normal(value, 1))
            except (Refused, ValueError, RecursionError, UnicodeDecodeError):
                print('no')
        """

    /// The same normal form from a parsed document.
    static func normal(_ document: JSONDocument, _ element: JSONElement) -> String {
        func hex(_ element: JSONElement) -> String {
            document.withUnescapedBytes(element) { $0.map { String(format: "%02x", $0) }.joined() }
        }
        switch document.kind(element) {
        case .null: return "null"
        case .true: return "true"
        case .false: return "false"
        case .number:
            if let integer = document.int64(element) { return "i\(integer)" }
            return "f" + String(format: "%.17g", document.double(element) ?? .nan)
        case .string: return "s" + hex(element)
        case .array: return "[" + document.elements(element).map { normal(document, $0) }.joined(separator: ",") + "]"
        case .object:
            let members = document.members(element).map { (hex($0.key), normal(document, $0.value)) }
            return "{" + members.sorted { $0.0 < $1.0 }.map { "\($0.0):\($0.1)" }.joined(separator: ",") + "}"
        }
    }

    /// A small deterministic generator (xorshift64*), so a failure names a seed that reproduces it.
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

        mutating func value(depth: Int) -> String {
            switch below(depth > 5 ? 6 : 8) {
            case 0: return pick(["null", "true", "false", "nul", "True", "NaN", "-Infinity"])
            case 1, 2: return number()
            case 3, 4, 5: return string()
            case 6:
                return "[" + (0..<below(5)).map { _ in value(depth: depth + 1) }.joined(separator: pick([",", ", "]))
                    + "]"
            default:
                var names = (0..<below(6)).map { _ in string() }
                if below(6) == 0, let first = names.first { names.append(first) }  // a duplicate
                if below(8) == 0 { names.append(#""\u00e9""#) }
                if below(8) == 0 { names.append("\"\u{E9}\"") }  // the same name unescaped
                return "{" + names.map { "\($0):\(value(depth: depth + 1))" }.joined(separator: ",") + "}"
            }
        }

        mutating func number() -> String {
            let sign = below(3) == 0 ? "-" : ""
            let integer =
                below(5) == 0
                ? "0"
                : String(1 + below(9))
                    + (0..<below(22)).map { _ in String(below(10)) }
                    .joined()
            var text = sign + integer
            if below(3) == 0 { text += "." + (0..<(1 + below(20))).map { _ in String(below(10)) }.joined() }
            if below(4) == 0 {
                text += pick(["e", "E", "e+", "e-", "E-"]) + String(below(2) == 0 ? below(30) : below(400))
            }
            return text
        }

        mutating func string() -> String {
            var text = "\""
            for _ in 0..<below(8) {
                switch below(12) {
                case 0: text += pick([#"\""#, #"\\"#, #"\/"#, #"\b"#, #"\f"#, #"\n"#, #"\r"#, #"\t"#])
                case 1: text += String(format: "\\u%04x", below(0x10000))
                case 2:
                    text += pick([#"\ud83d\ude00"#, #"\uD800"#, #"\udc00"#, #"\uFFFF"#, #"\uFDD0"#, #"\ud83f\udffe"#])
                case 3:
                    let scalars: [UInt32] = [0xE9, 0x301, 0x20AC, 0xFFFD, 0x1F600, 0xFDEF, 0xFFFE, 0x10FFFF, 0x212B]
                    text.unicodeScalars.append(Unicode.Scalar(pick(scalars)) ?? "x")
                default: text += String(UnicodeScalar(UInt8(0x20 + below(0x5F))))
                }
            }
            return text.replacingOccurrences(of: "\"\"", with: "\"") + "\""
        }

        /// Byte-level damage: flip, insert, delete or truncate.
        mutating func mutate(_ bytes: [UInt8]) -> [UInt8] {
            var bytes = bytes
            for _ in 0..<(1 + below(3)) where !bytes.isEmpty {
                let at = below(bytes.count)
                switch below(5) {
                case 0: bytes[at] = UInt8(truncatingIfNeeded: next())
                case 1:
                    bytes.insert(
                        pick([0x22, 0x5C, 0x7B, 0x5D, 0x2C, 0x3A, 0x30, 0xC3, 0xED, 0xF4, 0x00, 0x20]), at: at)
                case 2: bytes.remove(at: at)
                case 3: bytes = Array(bytes.prefix(at))
                default: bytes[at] ^= 0x80
                }
            }
            return bytes
        }
    }

    @Test(arguments: ["ijson", "tuf"])
    func agreesWithPythonsJSON(_ profile: String) async throws {
        let python = try #require(
            ["/usr/bin/python3", "/usr/local/bin/python3"].first {
                FileManager.default.isExecutableFile(atPath: $0)
            })
        let seed = UInt64(Date().timeIntervalSince1970 * 1000) | 1
        var generator = Generator(state: seed)
        var documents: [[UInt8]] = []
        for _ in 0..<4000 {
            let document = Array(generator.value(depth: 0).utf8)
            documents.append(generator.below(3) == 0 ? generator.mutate(document) : document)
        }
        let input = documents.map { $0.map { String(format: "%02x", $0) }.joined() }.joined(separator: "\n") + "\n"
        let result = try await runPython(python, ["-c", Self.oracle, profile], stdin: input)
        #expect(result.status == 0, "\(result.stderr)")
        let verdicts = result.stdout.split(separator: "\n", omittingEmptySubsequences: false).dropLast()
        try #require(verdicts.count == documents.count, "seed \(seed): \(result.stderr)")
        let parser = profile == "ijson" ? StrictJSON() : StrictJSON.tuf
        var accepted = 0
        var disagreements: [String] = []
        for (document, verdict) in zip(documents, verdicts) {
            let ours = try? parser.parse(document)
            let text = String(decoding: document, as: UTF8.self)
            switch (ours, verdict.hasPrefix("ok ")) {
            case (nil, false): continue
            case (let parsed?, true):
                accepted += 1
                let mine = Self.normal(parsed, parsed.root)
                if "ok " + mine != verdict { disagreements.append("value of \(text): \(mine) vs \(verdict)") }
            case (nil, true): disagreements.append("we refuse what Python accepts: \(text)")
            case (.some, false): disagreements.append("we accept what Python refuses: \(text)")
            }
        }
        #expect(disagreements.isEmpty, "seed \(seed), \(disagreements.count): \(disagreements.prefix(5))")
        // The generator must reach both sides, or the property says nothing.
        #expect(accepted > 400 && accepted < documents.count - 400, "seed \(seed): \(accepted) accepted")
    }

    /// Runs Python with `stdin` from a file and its output into files (no pipe to drain concurrently).
    func runPython(_ python: String, _ arguments: [String], stdin: String) async throws -> (
        status: Int32, stdout: String, stderr: String
    ) {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("oracle-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let input = directory.appendingPathComponent("in")
        let output = directory.appendingPathComponent("out")
        let errors = directory.appendingPathComponent("err")
        try Data(stdin.utf8).write(to: input)
        _ = FileManager.default.createFile(atPath: output.path, contents: nil)
        _ = FileManager.default.createFile(atPath: errors.path, contents: nil)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: python)
        process.arguments = arguments
        process.standardInput = try FileHandle(forReadingFrom: input)
        process.standardOutput = try FileHandle(forWritingTo: output)
        process.standardError = try FileHandle(forWritingTo: errors)
        try process.run()
        while process.isRunning { try await Task.sleep(for: .milliseconds(20)) }
        return (
            process.terminationStatus, try String(contentsOf: output, encoding: .utf8),
            try String(contentsOf: errors, encoding: .utf8)
        )
    }
}
