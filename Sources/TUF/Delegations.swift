import Crypto
import JSON

/// TUF §4.5 `delegations`: keys plus either ordered `roles` or TAP 15 `succinct_roles`.
public struct Delegations: Sendable, Equatable {
    public let keys: [String: Key]
    let keyOrder: [String]
    /// Delegated roles in order of appearance, which is their order of trust (TUF §5.6.7.2).
    public let roles: [DelegatedRole]?
    public let succinctRoles: SuccinctRoles?
    public let unrecognized: JSONObject

    /// Parses a `delegations` object (TUF §4.5), refusing what the client would refuse.
    public init(json: JSONObject) throws(TUFError) { try self.init(json: ObjectNode(json)) }

    init(json: ObjectNode) throws(TUFError) {
        let keysObject = try json.object("keys")
        keys = try parseKeys(keysObject)
        keyOrder = keysObject.keys
        let hasRoles = json["roles"] != nil
        let hasSuccinct = json["succinct_roles"] != nil
        // TAP 15: `roles` and `succinct_roles` are mutually exclusive, and one is required.
        guard hasRoles != hasSuccinct else {
            throw TUFError(.invalidMetadata, "delegations need exactly one of roles or succinct_roles")
        }
        if hasRoles {
            var list: [DelegatedRole] = []
            var names = Set<[UInt8]>()
            for v in try json.array("roles") {
                guard let o = v.objectValue else {
                    throw TUFError(.invalidMetadata, "delegated role must be an object")
                }
                let r = try DelegatedRole(json: o)
                guard names.insert(Array(r.name.utf8)).inserted else {
                    throw TUFError(.invalidMetadata, "duplicate delegated role name")
                }
                guard !Self.isTopLevelName(r.name) else {
                    throw TUFError(.invalidMetadata, "delegated role uses a top-level role name")
                }
                list.append(r)
            }
            roles = list
            succinctRoles = nil
        } else {
            roles = nil
            succinctRoles = try SuccinctRoles(json: json.object("succinct_roles"))
        }
        unrecognized = json.removing(Self.fields)
    }

    /// The fields this type reads; any other is kept as unrecognized (one list, not one per object read).
    static let fields = JSONNames(["keys", "roles", "succinct_roles"])

    /// Whether a delegated role's name would name a top-level role's file on a case-insensitive file system (macOS,
    /// Windows): `Root`, `TIMESTAMP`, `ſnapshot` (U+017F folds to `s`), `targets.` (Windows drops trailing dots and
    /// spaces). Such a delegation could overwrite the client's trusted root or timestamp, so it is refused.
    public static func isTopLevelName(_ name: String) -> Bool {
        // ASCII folds by ASCII rules alone; the Unicode path below is for the rest (a name with `ſ` or `K`).
        if name.utf8.allSatisfy({ $0 < 0x80 }) {
            var trimmed = name.utf8[...]
            while let last = trimmed.last, last == UInt8(ascii: ".") || last == UInt8(ascii: " ") {
                trimmed = trimmed.dropLast()
            }
            guard (4...9).contains(trimmed.count) else { return false }
            return Root.topLevelRoles.contains { role in
                role.utf8.elementsEqual(trimmed) { $0 == ((0x41...0x5A).contains($1) ? $1 | 0x20 : $1) }
            }
        }
        return foldsToTopLevelName(name)
    }

    /// The general rule, by Unicode case folding; `isTopLevelName` takes it for names that are not all ASCII (and a
    /// test checks that both agree on ASCII names).
    static func foldsToTopLevelName(_ name: String) -> Bool {
        var folded = Substring(name.uppercased().lowercased())
        while let last = folded.last, last == "." || last == " " { folded = folded.dropLast() }
        return Root.topLevelRoles.contains(String(folded))
    }

    public var jsonValue: JSONValue {
        merged(
            [
                ("keys", keysJSON(keys, order: keyOrder)), ("roles", roles.map { .array($0.map(\.jsonValue)) }),
                ("succinct_roles", succinctRoles?.jsonValue),
            ],
            unrecognized
        )
    }

    /// The names of every delegated role: the listed roles, or every succinct bin.
    public var delegatedRoleNames: [String] { roles?.map(\.name) ?? succinctRoles?.roleNames ?? [] }

    /// TUF §5.6.7.2: the delegated roles trusted for `targetPath`, in order, with whether each
    /// is terminating. Succinct hashed bins always yield one terminating role (TAP 15).
    public func rolesFor(targetPath: String) -> [(name: String, terminating: Bool)] {
        if let roles {
            var digest: String?
            return roles.filter { $0.isDelegated(targetPath: targetPath, digest: &digest) }.map {
                ($0.name, $0.terminating)
            }
        }
        if let succinctRoles { return [(succinctRoles.roleName(for: targetPath), true)] }
        return []
    }

    /// The first delegated role trusted for `targetPath` (TUF §5.6.7.2 order), as `rolesFor(targetPath:).first`, with
    /// the path's SHA-256 computed once and the search stopped at the first match (a repository editor routes every
    /// target it adds through this; with 65,536 hashed bins, `rolesFor` would hash the path for each).
    public func firstRole(for targetPath: String) -> String? {
        if let succinctRoles { return succinctRoles.roleName(for: targetPath) }
        var digest: String?
        return roles?.first { $0.isDelegated(targetPath: targetPath, digest: &digest) }?.name
    }

    /// The keys and threshold this delegator gives role `name`, or `nil` if it does not delegate to it.
    public func roleKeys(for name: String) -> (keyids: [String], threshold: Int64)? {
        if let roles {
            for r in roles where r.name.utf8.elementsEqual(name.utf8) { return (r.keyids, r.threshold) }
            return nil
        }
        if let succinctRoles, succinctRoles.isDelegatedRole(name) {
            return (succinctRoles.keyids, succinctRoles.threshold)
        }
        return nil
    }
}

/// TUF §4.5 DELEGATED ROLE.
public struct DelegatedRole: Sendable, Equatable {
    public let name: String
    public let keyids: [String]
    public let threshold: Int64
    public let terminating: Bool
    public let paths: [String]?
    public let pathHashPrefixes: [String]?
    public let unrecognized: JSONObject

    init(json: ObjectNode) throws(TUFError) {
        name = try json.string("name")
        let role = try RoleKeys(keysOf: json)
        keyids = role.keyids
        threshold = role.threshold
        terminating = try json.bool("terminating")
        paths = try json["paths"] == nil ? nil : json.stringArray("paths")
        pathHashPrefixes = try json["path_hash_prefixes"] == nil ? nil : json.stringArray("path_hash_prefixes")
        // TUF §4.5: "paths" and "path_hash_prefixes" are mutually exclusive.
        guard paths == nil || pathHashPrefixes == nil else {
            throw TUFError(.invalidMetadata, "paths and path_hash_prefixes are mutually exclusive")
        }
        unrecognized = json.removing(Self.fields)
    }

    static let fields = JSONNames(["name", "keyids", "threshold", "terminating", "paths", "path_hash_prefixes"])

    public var jsonValue: JSONValue {
        merged(
            [
                ("name", .string(name)), ("keyids", .array(keyids.map { .string($0) })),
                ("threshold", .integer(threshold)),
                ("terminating", .bool(terminating)), ("paths", paths.map { .array($0.map { .string($0) }) }),
                ("path_hash_prefixes", pathHashPrefixes.map { .array($0.map { .string($0) }) }),
            ],
            unrecognized
        )
    }

    /// TUF §4.5: whether this role is trusted for `targetPath`, by `paths` patterns (shell-style,
    /// matched per `/`-separated segment, so `*` never crosses a directory) or by the SHA-256 hex
    /// prefix of the path (`path_hash_prefixes`).
    public func isDelegated(targetPath: String) -> Bool {
        var digest: String?
        return isDelegated(targetPath: targetPath, digest: &digest)
    }

    /// As `isDelegated(targetPath:)`, with the path's SHA-256 hex computed at most once across the roles of one
    /// delegation (`digest` starts nil and is filled by the first role that needs it).
    func isDelegated(targetPath: String, digest: inout String?) -> Bool {
        if let paths {
            return paths.contains { PathPattern.matches(pattern: $0, path: targetPath) }
        }
        if let pathHashPrefixes {
            let hex = digest ?? hexEncode(SHA256.hash(data: Array(targetPath.utf8)))
            digest = hex
            return pathHashPrefixes.contains { hex.utf8.starts(with: $0.utf8) }
        }
        return false
    }
}

/// TAP 15 succinct hashed bin delegation.
public struct SuccinctRoles: Sendable, Equatable {
    public let keyids: [String]
    public let threshold: Int64
    public let bitLength: Int
    public let namePrefix: String
    public let unrecognized: JSONObject

    init(json: ObjectNode) throws(TUFError) {
        let role = try RoleKeys(keysOf: json)
        keyids = role.keyids
        threshold = role.threshold
        let bits = try json.integer("bit_length")
        // TAP 15: bit_length is in 1...32.
        guard (1...32).contains(bits) else { throw TUFError(.invalidMetadata, "bit_length must be in 1...32") }
        bitLength = Int(bits)
        namePrefix = try json.string("name_prefix")
        unrecognized = json.removing(Self.fields)
    }

    static let fields = JSONNames(["keyids", "threshold", "bit_length", "name_prefix"])

    public var jsonValue: JSONValue {
        merged(
            [
                ("keyids", .array(keyids.map { .string($0) })), ("threshold", .integer(threshold)),
                ("bit_length", .integer(Int64(bitLength))), ("name_prefix", .string(namePrefix)),
            ],
            unrecognized
        )
    }

    var binCount: UInt64 { UInt64(1) << UInt64(bitLength) }

    /// TAP 15: suffix width is the hex width of the largest bin number.
    var suffixWidth: Int { String(binCount - 1, radix: 16).count }

    /// TAP 15: the bin is the first `bit_length` bits of SHA-256(target path).
    public func roleName(for targetPath: String) -> String {
        let digest = Array(SHA256.hash(data: Array(targetPath.utf8)))
        let first = UInt32(digest[0]) << 24 | UInt32(digest[1]) << 16 | UInt32(digest[2]) << 8 | UInt32(digest[3])
        let bin = UInt64(first) >> UInt64(32 - bitLength)
        return name(bin: bin)
    }

    func name(bin: UInt64) -> String {
        Self.name(prefix: namePrefix, suffixWidth: suffixWidth, bin: bin)
    }

    static func name(prefix: String, suffixWidth: Int, bin: UInt64) -> String {
        let hex = String(bin, radix: 16)
        return "\(prefix)-\(String(repeating: "0", count: max(0, suffixWidth - hex.count)))\(hex)"
    }

    /// Every bin's name, in bin order (TAP 15: prefix, dash, fixed-width lowercase hex).
    public var roleNames: [String] { Self.roleNames(bitLength: bitLength, namePrefix: namePrefix) }

    /// The bin names a `succinct_roles` with this bit length and prefix stands for.
    public static func roleNames(bitLength: Int, namePrefix: String) -> [String] {
        let count = UInt64(1) << UInt64(bitLength)
        let width = String(count - 1, radix: 16).count
        return (0..<count).map { name(prefix: namePrefix, suffixWidth: width, bin: $0) }
    }

    /// TAP 15: whether `roleName` is one of the bins (prefix, dash, fixed-width hex in range).
    public func isDelegatedRole(_ roleName: String) -> Bool {
        let prefix = namePrefix + "-"
        guard roleName.utf8.starts(with: prefix.utf8) else { return false }
        let suffix = String(decoding: roleName.utf8.dropFirst(prefix.utf8.count), as: UTF8.self)
        guard suffix.utf8.count == suffixWidth,
            suffix.utf8.allSatisfy({ (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }),
            let bin = UInt64(suffix, radix: 16)
        else { return false }
        return bin < binCount
    }
}

/// Shell-style pattern matching as python-tuf does it for `paths` (TUF §4.5): pattern and path
/// are split on `/`, must have the same number of segments, and each segment matches with
/// `fnmatch` rules (`*`, `?`, `[seq]`, `[!seq]`).
public enum PathPattern {
    public static func matches(pattern: String, path: String) -> Bool {
        let p = pattern.split(separator: "/", omittingEmptySubsequences: false)
        let t = path.split(separator: "/", omittingEmptySubsequences: false)
        guard p.count == t.count else { return false }
        for (ps, ts) in zip(p, t) where !segmentMatches(Array(ps.unicodeScalars), Array(ts.unicodeScalars)) {
            return false
        }
        return true
    }

    /// Iterative glob match with single-star backtracking; linear-ish, no recursion.
    static func segmentMatches(_ p: [Unicode.Scalar], _ s: [Unicode.Scalar]) -> Bool {
        var pi = 0
        var si = 0
        var starP = -1
        var starS = 0
        while si < s.count {
            if pi < p.count {
                switch p[pi] {
                case "*":
                    starP = pi
                    starS = si
                    pi += 1
                    continue
                case "?":
                    pi += 1
                    si += 1
                    continue
                case "[":
                    if let (matched, next) = matchClass(p, pi, s[si]) {
                        if matched {
                            pi = next
                            si += 1
                            continue
                        }
                    } else if s[si] == "[" {  // unterminated class matches a literal '['
                        pi += 1
                        si += 1
                        continue
                    }
                default:
                    if p[pi] == s[si] {
                        pi += 1
                        si += 1
                        continue
                    }
                }
            }
            if starP >= 0 {
                pi = starP + 1
                starS += 1
                si = starS
                continue
            }
            return false
        }
        while pi < p.count, p[pi] == "*" { pi += 1 }
        return pi == p.count
    }

    /// Matches `c` against the class starting at `p[start] == "["`; `nil` if unterminated.
    static func matchClass(_ p: [Unicode.Scalar], _ start: Int, _ c: Unicode.Scalar) -> (Bool, Int)? {
        var i = start + 1
        var negate = false
        if i < p.count, p[i] == "!" {
            negate = true
            i += 1
        }
        var matched = false
        var first = true
        while i < p.count {
            if p[i] == "]", !first { return (matched != negate, i + 1) }
            first = false
            if i + 2 < p.count, p[i + 1] == "-", p[i + 2] != "]" {
                if p[i].value <= c.value, c.value <= p[i + 2].value { matched = true }
                i += 3
            } else {
                if p[i] == c { matched = true }
                i += 1
            }
        }
        return nil
    }
}
