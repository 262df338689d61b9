import Crypto
import JSON

/// TUF §4.5 `delegations`: keys plus either ordered `roles` or TAP 15 `succinct_roles`.
public struct Delegations: Sendable, Equatable {
    public let keys: [String: Key]
    let keyOrder: [String]
    /// Delegated roles in order of appearance, which is their order of trust (TUF §5.6.7.2), built on each call: a
    /// client goes through `rolesFor(targetPath:)` and `roleKeys(for:)`, which build only what they return.
    public var roles: [DelegatedRole]? { roleList?.all }
    let roleList: DelegatedRoleList?
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
            roleList = try DelegatedRoleList(try json.required("roles"))
            succinctRoles = nil
        } else {
            roleList = nil
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
    public var delegatedRoleNames: [String] { roleList?.names ?? succinctRoles?.roleNames ?? [] }

    public static func == (a: Delegations, b: Delegations) -> Bool {
        a.keys == b.keys && a.keyOrder == b.keyOrder && a.roles == b.roles && a.succinctRoles == b.succinctRoles
            && a.unrecognized == b.unrecognized
    }

    /// TUF §5.6.7.2: the delegated roles trusted for `targetPath`, in order, with whether each
    /// is terminating. Succinct hashed bins always yield one terminating role (TAP 15).
    public func rolesFor(targetPath: String) -> [(name: String, terminating: Bool)] {
        if let roleList { return roleList.roles(for: targetPath) }
        if let succinctRoles { return [(succinctRoles.roleName(for: targetPath), true)] }
        return []
    }

    /// The first delegated role trusted for `targetPath` (TUF §5.6.7.2 order), as `rolesFor(targetPath:).first`, with
    /// the path's SHA-256 computed once and the search stopped at the first match (a repository editor routes every
    /// target it adds through this; with 65,536 hashed bins, `rolesFor` would hash the path for each).
    public func firstRole(for targetPath: String) -> String? {
        if let succinctRoles { return succinctRoles.roleName(for: targetPath) }
        return roleList?.roles(for: targetPath, firstOnly: true).first?.name
    }

    /// The keys and threshold this delegator gives role `name`, or `nil` if it does not delegate to it.
    public func roleKeys(for name: String) -> (keyids: [String], threshold: Int64)? {
        if let roleList {
            guard let role = roleList.role(named: name) else { return nil }
            return (role.keyids, role.threshold)
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

extension DelegatedRole {
    /// A delegated role's members, checked where they lie by the rules `init(json:)` applies (TUF §4.5), building
    /// nothing: one pass over the members, names and strings compared as bytes.
    struct Fields {
        let name: JSONElement
        let keyids: JSONElement
        let terminating: Bool
        let paths: JSONElement?
        let pathHashPrefixes: JSONElement?

        init(_ document: JSONDocument, _ element: JSONElement) throws(TUFError) {
            guard document.kind(element) == .object else {
                throw TUFError(.invalidMetadata, "delegated role must be an object")
            }
            var members: (JSONElement?, JSONElement?, JSONElement?, JSONElement?, JSONElement?, JSONElement?)
            document.forEachMember(of: element, matching: DelegatedRole.fields) { position, _, value in
                switch position {
                case 0: members.0 = value
                case 1: members.1 = value
                case 2: members.2 = value
                case 3: members.3 = value
                case 4: members.4 = value
                case 5: members.5 = value
                default: break
                }
            }
            let (paths, pathHashPrefixes) = (members.4, members.5)
            self.paths = paths
            self.pathHashPrefixes = pathHashPrefixes
            guard let name = members.0 else { throw TUFError(.invalidMetadata, "missing field 'name'") }
            guard document.kind(name) == .string else { throw TUFError(.invalidMetadata, "'name' must be a string") }
            self.name = name
            guard let keyids = members.1 else { throw TUFError(.invalidMetadata, "missing field 'keyids'") }
            let ascii = try Self.checkStrings(document, keyids, "keyids")
            self.keyids = keyids
            guard let thresholdElement = members.2 else {
                throw TUFError(.invalidMetadata, "missing field 'threshold'")
            }
            guard let threshold = document.int64(thresholdElement) else {
                throw TUFError(.invalidMetadata, "'threshold' must be an integer")
            }
            guard threshold >= 1 else { throw TUFError(.invalidMetadata, "threshold must be at least 1") }
            // A keyid listed twice could otherwise be counted twice toward the threshold. Compared by bytes; keyids
            // that are not all ASCII also as `String`s (canonical equivalence), as `RoleKeys` compares them.
            var duplicate = false
            if ascii, document.count(keyids) < 8 {
                for (index, keyid) in document.elements(keyids).enumerated() where !duplicate {
                    duplicate = document.elements(keyids).prefix(index).contains { Self.sameBytes(document, keyid, $0) }
                }
            } else {
                duplicate = hasDuplicates(document.elements(keyids).map { document.string($0) ?? "" })
            }
            guard !duplicate else { throw TUFError(.invalidMetadata, "duplicate keyids in role") }
            guard let terminatingElement = members.3 else {
                throw TUFError(.invalidMetadata, "missing field 'terminating'")
            }
            guard let terminating = document.bool(terminatingElement) else {
                throw TUFError(.invalidMetadata, "'terminating' must be a boolean")
            }
            self.terminating = terminating
            if let paths { _ = try Self.checkStrings(document, paths, "paths") }
            if let pathHashPrefixes { _ = try Self.checkStrings(document, pathHashPrefixes, "path_hash_prefixes") }
            // TUF §4.5: "paths" and "path_hash_prefixes" are mutually exclusive.
            guard paths == nil || pathHashPrefixes == nil else {
                throw TUFError(.invalidMetadata, "paths and path_hash_prefixes are mutually exclusive")
            }
        }

        /// An array of strings, or the error `ObjectNode.stringArray` gives; returns whether every string is ASCII.
        static func checkStrings(_ document: JSONDocument, _ array: JSONElement, _ key: String) throws(TUFError)
            -> Bool
        {
            guard document.kind(array) == .array else { throw TUFError(.invalidMetadata, "'\(key)' must be an array") }
            var ascii = true
            for item in document.elements(array) {
                guard document.kind(item) == .string else {
                    throw TUFError(.invalidMetadata, "'\(key)' must hold strings")
                }
                if ascii { ascii = document.withUnescapedBytes(item) { $0.allSatisfy { $0 < 0x80 } } }
            }
            return ascii
        }

        static func sameBytes(_ document: JSONDocument, _ a: JSONElement, _ b: JSONElement) -> Bool {
            document.withUnescapedBytes(a) { x in document.withUnescapedBytes(b) { y in x.elementsEqual(y) } }
        }

        /// TUF §4.5, as `DelegatedRole.isDelegated(targetPath:digest:)`, on the role where it lies. `digest` is the
        /// path's SHA-256 in lowercase hex, computed by the first role that needs it.
        func isDelegated(_ document: JSONDocument, targetPath: String, digest: inout [UInt8]?) -> Bool {
            if let paths {
                return document.elements(paths).contains { pattern in
                    PathPattern.matches(pattern: document.string(pattern) ?? "", path: targetPath)
                }
            }
            if let pathHashPrefixes {
                let hex = digest ?? Array(hexEncode(SHA256.hash(data: Array(targetPath.utf8))).utf8)
                digest = hex
                return document.elements(pathHashPrefixes).contains { prefix in
                    document.withUnescapedBytes(prefix) { hex.starts(with: $0) }
                }
            }
            return false
        }
    }
}

/// The `roles` of a delegation as parsed (TUF §4.5): every role is checked when the file is read (python-tuf too
/// refuses a malformed role anywhere in the list), and a role is built only when it is asked for. A client reads a
/// `targets.json` that delegates to 256 hashed bins on every refresh and looks up one or two of them; building them
/// all was a fifth of a warm refresh.
struct DelegatedRoleList: Sendable {
    let document: JSONDocument
    let element: JSONElement

    init(_ node: Node) throws(TUFError) {
        document = node.document
        element = node.element
        guard document.kind(element) == .array else { throw TUFError(.invalidMetadata, "'roles' must be an array") }
        // Names are unique by their bytes. An ASCII name's `String` compares by its bytes (and a small one is not
        // allocated); names with other bytes are kept as bytes.
        var asciiNames = Set<String>()
        var otherNames = Set<[UInt8]>()
        for role in document.elements(element) {
            let fields = try DelegatedRole.Fields(document, role)
            let name = document.string(fields.name) ?? ""
            let unique =
                name.utf8.allSatisfy { $0 < 0x80 }
                ? asciiNames.insert(name).inserted : otherNames.insert(Array(name.utf8)).inserted
            guard unique else { throw TUFError(.invalidMetadata, "duplicate delegated role name") }
            guard !Delegations.isTopLevelName(name) else {
                throw TUFError(.invalidMetadata, "delegated role uses a top-level role name")
            }
        }
    }

    /// Every role, built, in order. Each passed the same rules when the list was read, so building cannot fail; if
    /// the check and the builder ever disagreed, this stops rather than hand out a list with a role missing.
    var all: [DelegatedRole] { document.elements(element).map(build) }

    func build(_ role: JSONElement) -> DelegatedRole {
        do { return try DelegatedRole(json: ObjectNode(document: document, element: role)) } catch {
            preconditionFailure("a delegated role passed the check but not the builder: \(error)")
        }
    }

    var names: [String] {
        document.elements(element).map { role in
            (try? DelegatedRole.Fields(document, role)).flatMap { document.string($0.name) } ?? ""
        }
    }

    /// The role whose name has exactly these bytes, built.
    func role(named name: String) -> DelegatedRole? {
        var wanted = name
        return wanted.withUTF8 { bytes in
            for role in document.elements(element) {
                guard let fields = try? DelegatedRole.Fields(document, role),
                    document.withUnescapedBytes(fields.name, { $0.elementsEqual(bytes) })
                else { continue }
                return build(role)
            }
            return nil
        }
    }

    /// TUF §5.6.7.2: the roles trusted for `targetPath`, in order, with whether each is terminating; only their
    /// names are built.
    func roles(for targetPath: String, firstOnly: Bool = false) -> [(name: String, terminating: Bool)] {
        var out: [(name: String, terminating: Bool)] = []
        var digest: [UInt8]?
        for role in document.elements(element) {
            guard let fields = try? DelegatedRole.Fields(document, role),
                fields.isDelegated(document, targetPath: targetPath, digest: &digest)
            else { continue }
            out.append((document.string(fields.name) ?? "", fields.terminating))
            if firstOnly { break }
        }
        return out
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
