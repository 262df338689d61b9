import FuzzSupport
import Gateway
import JSON

/// JSON Schema compilation (`JSONSchema(bytes:)`, as when an operator registers a schema) and validation of a
/// document against it. Input: schema bytes, a NUL byte, instance bytes (NUL cannot occur in JSON text).
/// Invariants: the schema written out again compiles and judges the instance the same way; validation is
/// deterministic; a violation's path is a JSON Pointer that resolves in the instance.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = FuzzSupport.bytes(data, size)
    let parts = FuzzSupport.fields(input[...], separator: 0, maxFields: 2)
    let schemaBytes = Array(parts[0])
    guard let schema = try? JSONSchema(bytes: schemaBytes) else { return 0 }
    guard let schemaValue = try? StrictJSON(maxDepth: 32).value(schemaBytes) else {
        FuzzSupport.violated("a schema compiled from bytes that are not strict JSON")
    }
    let rewritten: JSONSchema
    do { rewritten = try JSONSchema(bytes: schemaValue.serialized()) } catch {
        FuzzSupport.violated("the schema written out again does not compile: \(error)")
    }
    guard parts.count == 2, let instance = try? StrictJSON().parse(Array(parts[1])) else { return 0 }
    let verdict = schema.validate(instance)
    FuzzSupport.trace("validated: \(verdict.map(\.description) ?? "valid")")
    guard schema.validate(instance) == verdict else { FuzzSupport.violated("validation is not deterministic") }
    guard rewritten.validate(instance) == verdict else {
        FuzzSupport.violated("the rewritten schema judges the instance differently")
    }
    if let violation = verdict {
        guard resolve(violation.path, in: instance.value(instance.root)) else {
            FuzzSupport.violated("violation path \(violation.path) does not resolve in the instance")
        }
    }
    return 0
}

/// RFC 6901, on Unicode scalars: "" is the whole document; each "/" segment names a member (with "~1" for "/" and
/// "~0" for "~"; any other "~" is not a valid pointer) or an array index.
func resolve(_ pointer: String, in document: JSONValue) -> Bool {
    let scalars = Array(pointer.unicodeScalars)
    guard !scalars.isEmpty else { return true }
    guard scalars[0] == "/" else { return false }
    var current = document
    for raw in scalars.dropFirst().split(separator: "/", omittingEmptySubsequences: false) {
        var token = String.UnicodeScalarView()
        var iterator = raw.makeIterator()
        while let scalar = iterator.next() {
            guard scalar == "~" else {
                token.append(scalar)
                continue
            }
            switch iterator.next() {
            case "0": token.append("~")
            case "1": token.append("/")
            default: return false
            }
        }
        switch current {
        case .object(let members):
            guard let next = members[String(token)] else { return false }
            current = next
        case .array(let elements):
            guard let index = Int(String(token)), elements.indices.contains(index) else { return false }
            current = elements[index]
        default: return false
        }
    }
    return true
}

@_cdecl("LLVMFuzzerInitialize")
public func initialize(_ argc: FuzzArgc, _ argv: FuzzArgv) -> CInt {
    FuzzSupport.writeSeedsIfRequested {
        let schema = #"""
            {"$schema":"https://json-schema.org/draft/2020-12/schema","type":"object","required":["t","at"],
             "properties":{"t":{"type":"number","minimum":-40,"maximum":85,"multipleOf":0.5},
             "at":{"type":"string","format":"date-time"},"id":{"type":"string","minLength":1,"maxLength":8},
             "mode":{"enum":["a","b",1,null]},"v":{"const":{"x":[1,2]}},
             "list":{"type":"array","items":{"type":"integer","exclusiveMinimum":0,"exclusiveMaximum":10},
             "minItems":1,"maxItems":3}},"additionalProperties":false,"title":"t","description":"d"}
            """#
        let instances = [
            #"{"t":21.5,"at":"2026-12-01T05:00:00Z","id":"abc","mode":"a","v":{"x":[1,2]},"list":[1,2]}"#,
            #"{"t":21.3,"at":"2026-02-30T25:00:00+01:00","list":[0,11,"x"],"extra":1}"#,
            #"{"t":1,"at":"1990-12-31T23:59:60.5z","list":[]}"#, #"[1,{"a/b~c":2}]"#,
        ]
        var seeds = instances.map { Array(schema.utf8) + [0] + Array($0.utf8) }
        seeds.append(
            Array(#"{"type":["string","null"],"maxLength":2}"#.utf8) + [0] + Array(#""\u00e9\ud83d\ude00x""#.utf8))
        seeds.append(Array("true".utf8) + [0] + Array("{}".utf8))
        seeds.append(Array(#"{"items":false}"#.utf8) + [0] + Array("[1]".utf8))
        seeds.append(Array(#"{"additionalProperties":{"type":"integer"}}"#.utf8) + [0] + Array(#"{"a/~":1.5}"#.utf8))
        return seeds
    }
    return 0
}
