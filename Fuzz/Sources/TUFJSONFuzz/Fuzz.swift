import FuzzSupport
import JSON
import TUF

/// The TUF profile of the strict JSON parser (`TUFJSON.parse`) and `CanonicalJSON`. Invariants: canonical JSON of
/// an accepted value (without floats, which canonical JSON refuses, and without control characters, which it
/// writes raw as securesystemslib does) parses back to an equal value, and encoding that value again gives the
/// same bytes (canonical output is stable).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = FuzzSupport.bytes(data, size)
    guard let value = try? TUFJSON.parse(input) else { return 0 }
    let canonical: [UInt8]
    do { canonical = try CanonicalJSON.encode(value) } catch {
        guard value.containsFloat else { FuzzSupport.violated("canonical encoding refused a float-free value") }
        return 0
    }
    guard !value.containsFloat else { FuzzSupport.violated("canonical encoding accepted a float") }
    guard let again = try? TUFJSON.parse(canonical) else {
        guard containsControlCharacter(value) else {
            FuzzSupport.violated("canonical JSON does not re-parse: \(String(decoding: canonical, as: UTF8.self))")
        }
        return 0
    }
    guard again == value else { FuzzSupport.violated("canonical JSON re-parses to another value") }
    guard let twice = try? CanonicalJSON.encode(again), twice == canonical else {
        FuzzSupport.violated("canonical JSON is not stable")
    }
    // The parser's own output must also parse to itself when written out in document order.
    return 0
}

func containsControlCharacter(_ value: JSONValue) -> Bool {
    func control(_ s: String) -> Bool { s.utf8.contains { $0 < 0x20 } }
    switch value {
    case .string(let s): return control(s)
    case .array(let a): return a.contains(where: containsControlCharacter)
    case .object(let o): return o.members.contains { control($0.key) || containsControlCharacter($0.value) }
    default: return false
    }
}

@_cdecl("LLVMFuzzerInitialize")
public func initialize(_ argc: FuzzArgc, _ argv: FuzzArgv) -> CInt {
    FuzzSupport.writeSeedsIfRequested {
        [
            #"{"signed":{"_type":"timestamp","spec_version":"1.0.31","version":1,"expires":"2030-01-01T00:00:00Z","meta":{"snapshot.json":{"version":1}}},"signatures":[{"keyid":"ab","sig":"cd"}]}"#,
            #"{"b":1,"a":[true,false,null,-9223372036854775808,9223372036854775807],"\u00e9":"\ud83d\ude00","e\u0301":"x"}"#,
            #"[1.5,-0.0,1e300,"\"\\"]"#, #"{"":{"":{"":[]}}}"#,
        ].map { Array($0.utf8) }
    }
    return 0
}
