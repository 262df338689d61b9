import JSON

/// TUF metadata through the one strict JSON parser of Bulwark, in its TUF profile (TUF §4.2: integers apart from
/// floats, keys compared by bytes, no duplicate keys), with the module's error type.
public enum TUFJSON {
    public static func parse(_ bytes: some Collection<UInt8>) throws(TUFError) -> JSONValue {
        do { return try StrictJSON.tuf.value(Array(bytes)) } catch { throw TUFError(error) }
    }

    /// Canonical JSON as securesystemslib writes it (what TUF signatures cover).
    public static func canonical(_ value: JSONValue) throws(TUFError) -> [UInt8] {
        do { return try CanonicalJSON.encode(value) } catch { throw TUFError(error) }
    }
}

extension TUFError {
    init(_ error: JSONError) {
        self.init(error.kind == .notCanonicalizable ? .notCanonicalizable : .malformedJSON, error.description)
    }
}
