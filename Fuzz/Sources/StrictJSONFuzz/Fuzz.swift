import FuzzSupport
import Gateway
import GatewayFuzzSupport
import TUF

/// `Gateway.StrictJSON` on device message bodies, with the device limits and the looser limits schemas are parsed
/// with. Invariants: a document the parser accepts serialises (by the writer below) to one that parses back to the
/// same value; and everything StrictJSON accepts, the TUF parser (also RFC 8259, looser limits) accepts with the
/// same structure, so the two parsers of the hub never disagree on what a document says.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = FuzzSupport.bytes(data, size)
    for parser in [StrictJSON(), StrictJSON(maxDepth: 32)] {
        guard let value = try? parser.parse(input) else { continue }
        let written = JSONWriter.write(value)
        let again: Gateway.JSONValue
        do { again = try parser.parse(written) } catch {
            FuzzSupport.violated(
                "accepted value does not re-parse: \(error) in \(String(decoding: written, as: UTF8.self))")
        }
        guard again == value else { FuzzSupport.violated("re-parsed value differs") }
        let tuf: TUF.JSONValue
        do { tuf = try JSONParser.parse(input) } catch {
            FuzzSupport.violated("StrictJSON accepts what TUF.JSONParser refuses: \(error)")
        }
        guard sameStructure(value, tuf) else { FuzzSupport.violated("StrictJSON and TUF.JSONParser disagree") }
    }
    return 0
}

/// The same document: integer literals are TUF integers, other numbers TUF floats of the same value.
func sameStructure(_ a: Gateway.JSONValue, _ b: TUF.JSONValue) -> Bool {
    switch (a, b) {
    case (.null, .null): return true
    case (.bool(let x), .bool(let y)): return x == y
    case (.number(let x, true), .integer(let y)): return x == Double(y)
    case (.number(let x, false), .float(let text)): return Double(text) == x
    case (.string(let x), .string(let y)): return x.unicodeScalars.elementsEqual(y.unicodeScalars)
    case (.array(let x), .array(let y)): return x.count == y.count && zip(x, y).allSatisfy { sameStructure($0, $1) }
    case (.object(let x), .object(let y)):
        guard x.count == y.count else { return false }
        return y.members.allSatisfy { member in x[JSONKey(member.key)].map { sameStructure($0, member.value) } ?? false }
    default: return false
    }
}

@_cdecl("LLVMFuzzerInitialize")
public func initialize(_ argc: FuzzArgc, _ argv: FuzzArgv) -> CInt {
    FuzzSupport.writeSeedsIfRequested {
        [
            #"{"temperature":21.5,"humidity":40,"ok":true,"tags":["a","b"],"at":"2026-12-01T05:00:00Z","n":null}"#,
            #"{"s":"\u00e9\ud83d\ude00\n\t\"\\\/","e":-1.5e-7,"z":-0,"big":9007199254740991}"#,
            #"[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]"#, #"{"a":{"b":{"c":{"d":[1,2,3,{"e":""}]}}}}"#, "  \"x\"  ", "0",
        ].map { Array($0.utf8) }
    }
    return 0
}
