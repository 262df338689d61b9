import JSON

/// Typed field access on decoded JSON, throwing `invalidMetadata` with the field name.
extension JSONObject {
    func required(_ key: String) throws(TUFError) -> JSONValue {
        guard let v = self[key] else { throw TUFError(.invalidMetadata, "missing field '\(key)'") }
        return v
    }

    func string(_ key: String) throws(TUFError) -> String {
        guard let s = try required(key).stringValue else {
            throw TUFError(.invalidMetadata, "'\(key)' must be a string")
        }
        return s
    }

    func integer(_ key: String) throws(TUFError) -> Int64 {
        guard let i = try required(key).integerValue else {
            throw TUFError(.invalidMetadata, "'\(key)' must be an integer")
        }
        return i
    }

    func bool(_ key: String) throws(TUFError) -> Bool {
        guard let b = try required(key).boolValue else {
            throw TUFError(.invalidMetadata, "'\(key)' must be a boolean")
        }
        return b
    }

    func object(_ key: String) throws(TUFError) -> JSONObject {
        guard let o = try required(key).objectValue else {
            throw TUFError(.invalidMetadata, "'\(key)' must be an object")
        }
        return o
    }

    func array(_ key: String) throws(TUFError) -> [JSONValue] {
        guard let a = try required(key).arrayValue else {
            throw TUFError(.invalidMetadata, "'\(key)' must be an array")
        }
        return a
    }

    func stringArray(_ key: String) throws(TUFError) -> [String] {
        var out: [String] = []
        for v in try array(key) {
            guard let s = v.stringValue else { throw TUFError(.invalidMetadata, "'\(key)' must hold strings") }
            out.append(s)
        }
        return out
    }

    /// Parses a `HASHES` object (TUF §4.4): algorithm name to lowercase hex digest.
    func hashes(_ key: String) throws(TUFError) -> [(algorithm: String, digest: String)] {
        let o = try object(key)
        guard o.count > 0 else { throw TUFError(.invalidMetadata, "'\(key)' must not be empty") }
        var out: [(String, String)] = []
        for m in o.members {
            guard let s = m.value.stringValue else { throw TUFError(.invalidMetadata, "hash values must be strings") }
            out.append((m.key, s))
        }
        return out
    }
}

func hashesJSON(_ hashes: [(algorithm: String, digest: String)]) -> JSONValue {
    var o = JSONObject()
    for h in hashes { o.set(h.algorithm, .string(h.digest)) }
    return .object(o)
}

func merged(_ known: [(String, JSONValue?)], _ unrecognized: JSONObject) -> JSONValue {
    var o = JSONObject()
    for (k, v) in known { if let v { o.set(k, v) } }
    for m in unrecognized.members { o.set(m.key, m.value) }
    return .object(o)
}

/// Decodes lowercase or uppercase hex; `nil` on odd length or a non-hex character.
public func hexDecode(_ s: String) -> [UInt8]? {
    let u = Array(s.utf8)
    guard u.count % 2 == 0 else { return nil }
    var out: [UInt8] = []
    out.reserveCapacity(u.count / 2)
    func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case 0x30...0x39: return c - 0x30
        case 0x61...0x66: return c - 0x61 + 10
        case 0x41...0x46: return c - 0x41 + 10
        default: return nil
        }
    }
    var i = 0
    while i < u.count {
        guard let h = nibble(u[i]), let l = nibble(u[i + 1]) else { return nil }
        out.append(h << 4 | l)
        i += 2
    }
    return out
}

public func hexEncode(_ bytes: some Sequence<UInt8>) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var out: [UInt8] = []
    for b in bytes {
        out.append(digits[Int(b >> 4)])
        out.append(digits[Int(b & 0x0F)])
    }
    return String(decoding: out, as: UTF8.self)
}
