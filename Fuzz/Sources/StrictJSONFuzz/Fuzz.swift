import FuzzSupport
import JSON

/// The one strict JSON parser, in both profiles. Invariants: an accepted document's value, written out again,
/// parses back to an equal value under the same profile; everything the I-JSON profile accepts, the TUF profile
/// (looser: noncharacters, Int64 integers, any float, depth 128) accepts with the same value, so the hub never
/// reads one document two ways; and the tape's accessors agree with the value built from it.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = FuzzSupport.bytes(data, size)
    for parser in [StrictJSON(), StrictJSON(maxDepth: 32), StrictJSON.tuf] {
        guard let document = try? parser.parse(input) else { continue }
        let value = document.value(document.root)
        let written = value.serialized()
        let again: JSONValue
        do { again = try parser.value(written) } catch {
            FuzzSupport.violated(
                "accepted value does not re-parse: \(error) in \(String(decoding: written, as: UTF8.self))")
        }
        guard again == value else { FuzzSupport.violated("re-parsed value differs") }
        guard agrees(document, document.root, value) else { FuzzSupport.violated("the tape and the value disagree") }
        if parser.profile == .iJSON {
            guard let tuf = try? StrictJSON.tuf.value(input) else {
                FuzzSupport.violated("the I-JSON profile accepts what the TUF profile refuses")
            }
            guard tuf == value else { FuzzSupport.violated("the two profiles read one document two ways") }
        }
    }
    return 0
}

/// The accessors of the tape against the built value.
func agrees(_ document: JSONDocument, _ element: JSONElement, _ value: JSONValue) -> Bool {
    switch (document.kind(element), value) {
    case (.null, .null), (.true, .bool(true)), (.false, .bool(false)): return true
    case (.number, .integer(let i)): return document.int64(element) == i && document.double(element) == Double(i)
    case (.number, .float(let literal)):
        guard document.int64(element) == nil, document.literal(element) == literal else { return false }
        let double = document.double(element)
        return double == Double(literal) || (double?.isNaN == true && Double(literal)?.isNaN == true)
    case (.string, .string(let text)): return document.string(element) == text
    case (.array, .array(let values)):
        return document.count(element) == values.count
            && zip(document.elements(element), values).allSatisfy { agrees(document, $0, $1) }
    case (.object, .object(let object)):
        return document.count(element) == object.count
            && document.members(element).allSatisfy { key, member in
                guard let name = document.string(key), let expected = object[name] else { return false }
                return document.member(name, of: element) == member && agrees(document, member, expected)
            }
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
            #"{"k0":0,"k1":1,"k2":2,"k3":3,"k4":4,"k5":5,"k6":6,"k7":7,"k8":8,"k9":9,"k10":10,"k11":11,"k12":12,"k13":13,"k14":14,"k15":15,"k16":16,"k0\u0000":1}"#,
            #"{"\u00e9":1,"é":2}"#, #"["\uFFFF",9223372036854775807,1e400]"#,
        ].map { Array($0.utf8) }
    }
    return 0
}
