import JSON
import TUF

/// How long each role's metadata stays valid after it is signed (TUF §4.3 `expires`).
///
/// Defaults: root 365 days (rotated by hand, offline keys), targets and delegated targets
/// 90 days, snapshot 7 days, timestamp 1 day (both online, re-signed by `resignIfExpiring`).
public struct ExpiryPolicy: Sendable {
    public var root: Int64 = 365 * 86400
    public var targets: Int64 = 90 * 86400
    public var snapshot: Int64 = 7 * 86400
    public var timestamp: Int64 = 86400
    /// Per-role overrides (seconds), for delegated roles or top-level roles.
    public var overrides: [String: Int64] = [:]

    public init() {}

    public func seconds(for role: String) -> Int64 {
        if let o = overrides[role] { return o }
        switch role {
        case "root": return root
        case "snapshot": return snapshot
        case "timestamp": return timestamp
        default: return targets
        }
    }
}

/// The keys of a role and how many of them must sign (TUF §4.3 ROLE).
public struct RoleKeySpec: Sendable {
    public var keys: [Key]
    public var threshold: Int

    public init(keys: [Key], threshold: Int = 1) {
        self.keys = keys
        self.threshold = threshold
    }
}

/// One role's state as `status()` reports it.
public struct RoleStatus: Sendable, Equatable {
    public let name: String
    public let version: Int64
    public let expires: String
    /// Changed since the last `publish` (the version shown is the one that will be published).
    public let staged: Bool
    public let signatures: Int
    public let threshold: Int
}

/// One role as the editor holds it: the `signed` object (targets kept apart so that adding
/// thousands of targets does not copy the object each time), signatures, and whether it has
/// changed since the last publish.
struct RoleState: Sendable {
    var signed: JSONObject
    var targets: JSONObject?
    var signatures: [(keyid: String, sig: String)]
    var dirty: Bool

    var version: Int64 { signed["version"]?.integerValue ?? 0 }
    var expires: String { signed["expires"]?.stringValue ?? "" }

    /// The complete `signed` object (TUF §4.2).
    var fullSigned: JSONObject {
        guard let targets else { return signed }
        var o = signed
        o.set("targets", .object(targets))
        return o
    }

    /// Parses the role as TUF's typed metadata (TUF §4.3-§4.6), of the type its name calls for (a top-level role's
    /// own, `targets` for a delegated one): what our client, like python-tuf, accepts.
    func checkTyped(_ name: String) throws(RepositoryError) {
        let object = fullSigned
        let expected = Root.topLevelRoles.contains(name) ? name : "targets"
        do throws(TUFError) {
            guard signed["_type"]?.stringValue == expected else {
                throw TUFError(.wrongType, "_type is not \(expected)")
            }
            switch expected {
            case "root": _ = try Root(json: object)
            case "targets": _ = try Targets(json: object)
            case "snapshot": _ = try Snapshot(json: object)
            case "timestamp": _ = try Timestamp(json: object)
            default: throw TUFError(.invalidMetadata, "unknown _type")
            }
        } catch {
            throw RepositoryError(.repository, "\(name) is not metadata TUF clients accept: \(error.reason)")
        }
    }

    func canonicalSigned() throws(RepositoryError) -> [UInt8] {
        do {
            return try TUFJSON.canonical(.object(fullSigned))
        } catch {
            throw RepositoryError(.repository, "metadata cannot be canonicalized: \(error.reason)")
        }
    }

    /// The metadata file: `{"signed": ..., "signatures": [...]}` (TUF §4.2), compact JSON.
    func envelope() throws(RepositoryError) -> [UInt8] {
        var top = JSONObject()
        top.set("signed", .object(fullSigned))
        top.set(
            "signatures",
            .array(
                signatures.map { s in
                    var o = JSONObject()
                    o.set("keyid", .string(s.keyid))
                    o.set("sig", .string(s.sig))
                    return .object(o)
                }
            )
        )
        return try JSONWriter.encode(.object(top))
    }

    init(signed: JSONObject, signatures: [(keyid: String, sig: String)], dirty: Bool) {
        var s = signed
        if s["_type"]?.stringValue == "targets" {
            targets = s["targets"]?.objectValue ?? JSONObject()
            s = s.removing(["targets"])
        } else {
            targets = nil
        }
        self.signed = s
        self.signatures = signatures
        self.dirty = dirty
    }

    init(envelope bytes: [UInt8], dirty: Bool, file: String) throws(RepositoryError) {
        guard let top = try? TUFJSON.parse(bytes).objectValue, let signed = top["signed"]?.objectValue,
            let sigs = top["signatures"]?.arrayValue
        else { throw RepositoryError(.repository, "\(file) is not TUF metadata") }
        var list: [(keyid: String, sig: String)] = []
        for v in sigs {
            guard let keyid = v.objectValue?["keyid"]?.stringValue, let sig = v.objectValue?["sig"]?.stringValue else {
                throw RepositoryError(.repository, "\(file) has a malformed signature")
            }
            list.append((keyid, sig))
        }
        self.init(signed: signed, signatures: list, dirty: dirty)
    }
}

/// Creates and edits a TUF repository (TUF §4, §6) in memory, without touching a file: reading goes through the
/// `read` function `load` is given, and `publish` and `stage` return a `RepositoryPlan` (file name → bytes, in
/// write order) that `FileRepository` writes. The layout the plan follows is the one python-tuf and our `Updater`
/// expect:
///
/// ```
/// DIR/metadata/1.root.json 2.root.json … root.json      every root version (TUF §5.3.3)
/// DIR/metadata/timestamp.json                           never versioned (TUF §5.4.1)
/// DIR/metadata/N.snapshot.json N.targets.json N.ROLE.json  consistent snapshots (TUF §6.2)
/// DIR/metadata/snapshot.json targets.json ROLE.json     latest copies (non-consistent clients)
/// DIR/targets/[SUBDIR/]SHA256.NAME (and SHA512.NAME)    hash-prefixed artifacts (TUF §5.7.3)
/// DIR/staged/ROLE.json                                  edits not yet published (not served)
/// ```
///
/// Edits change metadata in memory and mark the role staged: the first edit after a publish
/// bumps the version and resets `expires` (TUF §4.3, §4.5). `publish` signs what is staged,
/// updates snapshot (TUF §4.4) and timestamp (TUF §4.6), checks every threshold, and plans
/// the files, timestamp last. Role names are percent-encoded in file names.
///
/// Every role the editor signs or stages is parsed as TUF's typed metadata (`Root`, `Targets`, `Snapshot`,
/// `Timestamp`, of the type its name calls for) first: it never signs what our own client, or python-tuf, would
/// refuse. (Loading does not: the re-signer must keep the timestamp fresh on a repository an older version wrote.)
/// Delegations are routed by `TUF.Delegations`, the same code the client trusts targets with.
public struct RepositoryEditor: Sendable {
    public var expiry: ExpiryPolicy
    /// The clock, in seconds since the epoch (tests move it).
    public var clock: @Sendable () -> Int64
    var roles: [String: RoleState] = [:]
    /// The root last published: a new root must also be signed by its threshold (TUF §5.3.4).
    var publishedRoot: JSONObject?
    /// Each targets role's parsed `delegations` (nil: it delegates nothing), dropped when they change.
    var delegationCache: [String: Delegations?] = [:]
    /// Artifacts added since the last plan: written before any metadata that lists them.
    var pendingArtifacts: [(path: String, bytes: [UInt8])] = []
    /// Opened without the staged edits (the re-signer): `publish` then leaves `staged/` alone.
    var ignoresStaged = false
    /// `crypto.profile`: under `.fips`, `sign` and `publish` refuse a signing key outside FIPS 186-5 and a repository
    /// that lists one, and thresholds count only keys inside it.
    public var keyPolicy = KeyPolicy.any

    init(expiry: ExpiryPolicy, clock: @escaping @Sendable () -> Int64) {
        self.expiry = expiry
        self.clock = clock
    }

    // MARK: - Create and open

    /// Creates version 1 of every top-level role in memory (nothing is planned until `publish` or `stage`).
    public static func create(
        root: RoleKeySpec,
        timestamp: RoleKeySpec,
        snapshot: RoleKeySpec,
        targets: RoleKeySpec,
        consistentSnapshot: Bool = true,
        expiry: ExpiryPolicy = ExpiryPolicy(),
        clock: @escaping @Sendable () -> Int64 = ExpiryDate.now
    ) throws(RepositoryError) -> RepositoryEditor {
        var editor = RepositoryEditor(expiry: expiry, clock: clock)
        var keys = JSONObject()
        var rolesObject = JSONObject()
        for (name, spec) in [("root", root), ("timestamp", timestamp), ("snapshot", snapshot), ("targets", targets)] {
            try RepositoryEditor.checkSpec(spec, role: name)
            for k in spec.keys { keys.set(KeyID.of(k), k.jsonValue) }
            rolesObject.set(name, RepositoryEditor.roleJSON(spec))
        }
        var r = editor.common("root", version: 1)
        r.set("consistent_snapshot", .bool(consistentSnapshot))
        r.set("keys", .object(keys))
        r.set("roles", .object(rolesObject))
        editor.roles["root"] = RoleState(signed: r, signatures: [], dirty: true)
        var t = editor.common("targets", version: 1)
        t.set("targets", .object(JSONObject()))
        editor.roles["targets"] = RoleState(signed: t, signatures: [], dirty: true)
        var s = editor.common("snapshot", version: 1)
        s.set("meta", .object(JSONObject()))
        editor.roles["snapshot"] = RoleState(signed: s, signatures: [], dirty: true)
        var ts = editor.common("timestamp", version: 1)
        ts.set("meta", .object(JSONObject()))
        editor.roles["timestamp"] = RoleState(signed: ts, signatures: [], dirty: true)
        return editor
    }

    /// Loads a repository through `read` (a path relative to the repository, such as `metadata/root.json` or
    /// `staged/targets.json`, to its bytes, or nil when there is no such file): the published metadata, with staged
    /// edits on top (unless `includeStaged` is false: the unattended re-signer must never publish what an operator
    /// staged and has not published). Every role is parsed as typed TUF metadata, and delegated roles are found
    /// through each targets role's `Delegations`.
    public static func load(
        expiry: ExpiryPolicy = ExpiryPolicy(),
        clock: @escaping @Sendable () -> Int64 = ExpiryDate.now,
        includeStaged: Bool = true,
        read: (String) throws(RepositoryError) -> [UInt8]?
    ) throws(RepositoryError) -> RepositoryEditor {
        var editor = RepositoryEditor(expiry: expiry, clock: clock)
        editor.ignoresStaged = !includeStaged
        if let bytes = try read("metadata/root.json") {
            editor.publishedRoot = try RoleState(envelope: bytes, dirty: false, file: "root.json").signed
        }
        var queue = ["root", "timestamp", "snapshot", "targets"]
        var seen = Set<String>()
        while let name = queue.first {
            queue.removeFirst()
            guard seen.insert(name).inserted else { continue }
            let file = Files.quote(name) + ".json"
            let state: RoleState
            if includeStaged, let staged = try read("staged/" + file) {
                state = try RoleState(envelope: staged, dirty: true, file: "staged/" + file)
            } else if let published = try read("metadata/" + file) {
                state = try RoleState(envelope: published, dirty: false, file: file)
            } else {
                throw RepositoryError(.repository, "no metadata for role \(name)")
            }
            editor.roles[name] = state
            if state.targets != nil { queue += try editor.delegations(of: name)?.delegatedRoleNames ?? [] }
        }
        return editor
    }

    static func checkSpec(_ spec: RoleKeySpec, role: String) throws(RepositoryError) {
        guard spec.threshold >= 1, spec.threshold <= spec.keys.count else {
            throw RepositoryError(.usage, "\(role): threshold must be between 1 and the number of keys")
        }
        guard Set(spec.keys.map(KeyID.of)).count == spec.keys.count else {
            throw RepositoryError(.usage, "\(role): the same key is listed twice")
        }
    }

    static func roleJSON(_ spec: RoleKeySpec) -> JSONValue {
        var o = JSONObject()
        o.set("keyids", .array(spec.keys.map { .string(KeyID.of($0)) }))
        o.set("threshold", .integer(Int64(spec.threshold)))
        return .object(o)
    }

    func common(_ type: String, version: Int64, role: String? = nil) -> JSONObject {
        var o = JSONObject()
        o.set("_type", .string(type))
        o.set("spec_version", .string("1.0.31"))
        o.set("version", .integer(version))
        o.set("expires", .string(ExpiryDate.format(clock() + expiry.seconds(for: role ?? type))))
        return o
    }

    // MARK: - Inspection

    /// Every role: top-level first, then delegated roles by name.
    public var roleNames: [String] {
        let top = ["root", "timestamp", "snapshot", "targets"]
        return top + roles.keys.filter { !top.contains($0) }.sorted()
    }

    public var consistentSnapshot: Bool { roles["root"]?.signed["consistent_snapshot"]?.boolValue ?? false }

    public func version(of role: String) -> Int64? { roles[role]?.version }

    /// Names of the roles with edits not yet published.
    public var stagedRoles: [String] { roleNames.filter { roles[$0]?.dirty == true } }

    /// The target entries of a targets role, by path.
    public func targets(of role: String = "targets") -> [String: JSONValue] {
        var out: [String: JSONValue] = [:]
        for m in roles[role]?.targets?.members ?? [] { out[m.key] = m.value }
        return out
    }

    public func status() -> [RoleStatus] {
        roleNames.compactMap { name in
            guard let st = roles[name] else { return nil }
            let threshold = (try? authorization(of: name))?.threshold ?? 0
            return RoleStatus(
                name: name,
                version: st.version,
                expires: st.expires,
                staged: st.dirty,
                signatures: st.signatures.count,
                threshold: threshold
            )
        }
    }

    // MARK: - Editing helpers

    mutating func withRole<T>(
        _ name: String,
        _ body: (inout RoleState) throws(RepositoryError) -> T
    ) throws(RepositoryError) -> T {
        guard var state = roles.removeValue(forKey: name) else {
            throw RepositoryError(.usage, "no role named \(name)")
        }
        defer { roles[name] = state }
        return try body(&state)
    }

    /// Marks a role changed: the first change after a publish bumps `version` and sets a fresh
    /// `expires` (TUF §4.3); any change invalidates the signatures.
    mutating func touch(_ name: String) throws(RepositoryError) {
        let seconds = expiry.seconds(for: name)
        let now = clock()
        try withRole(name) { st throws(RepositoryError) in
            if !st.dirty {
                st.signed.set("version", .integer(st.version + 1))
                st.dirty = true
            }
            st.signed.set("expires", .string(ExpiryDate.format(now + seconds)))
            st.signatures = []
        }
    }

    /// Bumps a role's version and re-signs it on the next publish, without other changes.
    public mutating func bumpVersion(role: String) throws(RepositoryError) { try touch(role) }

    /// Sets a role's expiry to `seconds` from now (kept as its policy for later versions too).
    public mutating func setExpiry(role: String, seconds: Int64) throws(RepositoryError) {
        guard seconds > 0 else { throw RepositoryError(.usage, "expiry must be in the future") }
        expiry.overrides[role] = seconds
        try touch(role)
    }

    /// A targets role's delegations as TUF's client reads them (TUF §4.5), parsed once until they change; nil when
    /// it delegates nothing. Delegations the client would refuse are refused here too.
    mutating func delegations(of role: String) throws(RepositoryError) -> Delegations? {
        if let cached = delegationCache[role] { return cached }
        var parsed: Delegations?
        if let object = roles[role]?.signed["delegations"]?.objectValue {
            do { parsed = try Delegations(json: object) } catch {
                throw RepositoryError(.repository, "\(role) has delegations TUF clients refuse: \(error.reason)")
            }
        }
        delegationCache[role] = .some(parsed)
        return parsed
    }

    /// The role that should list `path`: follow delegations from top-level targets to the first delegated role
    /// trusted for it at each level (TUF §5.6.7.2, through `Delegations.rolesFor`, the client's own routing), down
    /// to a role that delegates it no further.
    mutating func responsibleRole(for path: String) throws(RepositoryError) -> String {
        var role = "targets"
        var depth = 0
        while depth < 32, let next = try delegations(of: role)?.firstRole(for: path), roles[next] != nil {
            role = next
            depth += 1
        }
        return role
    }

    /// Target paths are relative, `/`-separated, with no empty, `.` or `..` segment, so an
    /// artifact can never be written outside `targets/` (TUF §4.5 TARGETPATH).
    static func checkTargetPath(_ path: String) throws(RepositoryError) {
        let segments = path.split(separator: "/", omittingEmptySubsequences: false)
        guard !path.isEmpty, path.utf8.count <= 1024, !path.utf8.contains(0),
            segments.allSatisfy({ !$0.isEmpty && $0 != "." && $0 != ".." })
        else { throw RepositoryError(.usage, "invalid target path '\(path)'") }
    }

    // MARK: - Targets

    /// Adds (or replaces) a target from its contents: computes length and SHA-256 (and SHA-512
    /// when asked) for the TARGETS entry (TUF §4.5) and stores the artifact under `targets/`,
    /// hash-prefixed when consistent snapshots are on (TUF §5.7.3). Returns the role that lists it.
    @discardableResult
    public mutating func addTarget(
        path: String,
        contents: [UInt8],
        role: String? = nil,
        sha512: Bool = false,
        custom: JSONValue? = nil
    ) throws(RepositoryError) -> String {
        try RepositoryEditor.checkTargetPath(path)
        var hashes: [(String, String)] = [("sha256", hexEncode(Hashing.digest("sha256", contents) ?? []))]
        if sha512 { hashes.append(("sha512", hexEncode(Hashing.digest("sha512", contents) ?? []))) }
        let listed = try addTarget(
            path: path, length: Int64(contents.count), hashes: hashes, role: role, custom: custom)
        storeArtifact(path: path, contents: contents, hashes: hashes.map(\.1))
        return listed
    }

    /// Adds (or replaces) a target entry without storing an artifact (the file is served
    /// from elsewhere). `hashes` are algorithm/hex-digest pairs.
    @discardableResult
    public mutating func addTarget(
        path: String,
        length: Int64,
        hashes: [(String, String)],
        role: String? = nil,
        custom: JSONValue? = nil
    ) throws(RepositoryError) -> String {
        try RepositoryEditor.checkTargetPath(path)
        guard length >= 0, !hashes.isEmpty else { throw RepositoryError(.usage, "a target needs a length and hashes") }
        let name: String
        if let role { name = role } else { name = try responsibleRole(for: path) }
        guard roles[name]?.targets != nil else { throw RepositoryError(.usage, "\(name) is not a targets role") }
        var entry = JSONObject()
        entry.set("length", .integer(length))
        var h = JSONObject()
        for (alg, digest) in hashes { h.set(alg, .string(digest)) }
        entry.set("hashes", .object(h))
        if let custom { entry.set("custom", custom) }
        try touch(name)
        try withRole(name) { st throws(RepositoryError) in st.targets?.set(path, .object(entry)) }
        return name
    }

    /// Plans the artifact under `targets/`, hash-prefixed when consistent snapshots are on (TUF §5.7.3).
    mutating func storeArtifact(path: String, contents: [UInt8], hashes: [String]) {
        let dirPart = path.split(separator: "/").dropLast().joined(separator: "/")
        let base = String(path.split(separator: "/").last ?? "")
        let dir = dirPart.isEmpty ? "targets" : "targets/" + dirPart
        let names = consistentSnapshot ? hashes.map { "\($0).\(base)" } : [base]
        for n in names { pendingArtifacts.append((dir + "/" + n, contents)) }
    }

    /// Removes a target entry (the artifact files stay, so clients mid-update still find them).
    /// Returns the role it was removed from.
    @discardableResult
    public mutating func removeTarget(path: String, role: String? = nil) throws(RepositoryError) -> String {
        let name: String
        if let role { name = role } else { name = try responsibleRole(for: path) }
        guard let t = roles[name]?.targets, t[path] != nil else {
            throw RepositoryError(.usage, "target '\(path)' is not listed by \(name)")
        }
        try touch(name)
        try withRole(name) { st throws(RepositoryError) in
            st.targets = st.targets?.removing([path])
        }
        return name
    }

    // MARK: - Delegations

    func delegationsObject(of role: String) throws(RepositoryError) -> JSONObject {
        guard let st = roles[role], st.targets != nil else {
            throw RepositoryError(.usage, "\(role) is not a targets role")
        }
        return st.signed["delegations"]?.objectValue
            ?? {
                var d = JSONObject()
                d.set("keys", .object(JSONObject()))
                return d
            }()
    }

    mutating func setDelegations(of role: String, _ d: JSONObject) throws(RepositoryError) {
        try touch(role)
        try withRole(role) { st throws(RepositoryError) in st.signed.set("delegations", .object(d)) }
        delegationCache[role] = nil
    }

    mutating func newTargetsRole(_ name: String) throws(RepositoryError) {
        guard roles[name] == nil else { throw RepositoryError(.usage, "role \(name) already exists") }
        guard !Delegations.isTopLevelName(name) else {
            throw RepositoryError(.usage, "\(name) is a top-level role name")
        }
        var t = common("targets", version: 1, role: name)
        t.set("targets", .object(JSONObject()))
        roles[name] = RoleState(signed: t, signatures: [], dirty: true)
    }

    /// TUF §4.5: delegates `paths` (shell-style patterns) from `delegator` to a new role `role`.
    public mutating func delegate(
        from delegator: String = "targets",
        to role: String,
        paths: [String],
        keys: RoleKeySpec,
        terminating: Bool = false
    ) throws(RepositoryError) {
        guard !paths.isEmpty else { throw RepositoryError(.usage, "a delegation needs at least one path") }
        try addDelegatedRoles(
            from: delegator,
            [(role, .array(paths.map { .string($0) }), "paths")],
            keys: keys,
            terminating: terminating
        )
    }

    /// Classic hashed bin delegation (TUF §4.5 `path_hash_prefixes`): `binCount` roles (a power
    /// of two, 2…65536), each trusted for an equal run of SHA-256 hex prefixes of target paths.
    /// Bins are named `PREFIX-LOW-HIGH` (or `PREFIX-LOW` for a single prefix), as python-tuf's
    /// hashed bin example names them. Returns the bin names.
    @discardableResult
    public mutating func delegateHashedBins(
        from delegator: String = "targets",
        namePrefix: String = "bins",
        binCount: Int,
        keys: RoleKeySpec
    ) throws(RepositoryError) -> [String] {
        guard binCount >= 2, binCount <= 65536, binCount & (binCount - 1) == 0 else {
            throw RepositoryError(.usage, "bin count must be a power of two between 2 and 65536")
        }
        var prefixLength = 1
        while 1 << (4 * prefixLength) < binCount { prefixLength += 1 }
        let total = 1 << (4 * prefixLength)
        let perBin = total / binCount
        func hex(_ v: Int) -> String {
            let s = String(v, radix: 16)
            return String(repeating: "0", count: prefixLength - s.count) + s
        }
        var bins: [(String, JSONValue, String)] = []
        for b in 0..<binCount {
            let low = b * perBin
            let high = low + perBin - 1
            let name = perBin == 1 ? "\(namePrefix)-\(hex(low))" : "\(namePrefix)-\(hex(low))-\(hex(high))"
            bins.append((name, .array((low...high).map { .string(hex($0)) }), "path_hash_prefixes"))
        }
        try addDelegatedRoles(from: delegator, bins, keys: keys, terminating: false)
        return bins.map(\.0)
    }

    /// TAP 15 succinct hashed bins: one `succinct_roles` entry standing for `2^bitLength` bins
    /// named `PREFIX-HEX`. The delegator must have no other delegations. Returns the bin names.
    @discardableResult
    public mutating func delegateSuccinctBins(
        from delegator: String = "targets",
        namePrefix: String = "bin",
        bitLength: Int,
        keys: RoleKeySpec
    ) throws(RepositoryError) -> [String] {
        guard (1...16).contains(bitLength) else { throw RepositoryError(.usage, "bit length must be in 1...16") }
        try RepositoryEditor.checkSpec(keys, role: namePrefix)
        var d = try delegationsObject(of: delegator)
        guard d["roles"] == nil, d["succinct_roles"] == nil else {
            throw RepositoryError(.usage, "\(delegator) already delegates; succinct bins must be its only delegation")
        }
        var keysObject = d["keys"]?.objectValue ?? JSONObject()
        for k in keys.keys { keysObject.set(KeyID.of(k), k.jsonValue) }
        d.set("keys", .object(keysObject))
        var s = RepositoryEditor.roleJSON(keys).objectValue ?? JSONObject()
        s.set("bit_length", .integer(Int64(bitLength)))
        s.set("name_prefix", .string(namePrefix))
        d.set("succinct_roles", .object(s))
        let names = SuccinctRoles.roleNames(bitLength: bitLength, namePrefix: namePrefix)
        for n in names where roles[n] != nil { throw RepositoryError(.usage, "role \(n) already exists") }
        try setDelegations(of: delegator, d)
        for n in names { try newTargetsRole(n) }
        return names
    }

    mutating func addDelegatedRoles(
        from delegator: String,
        _ entries: [(name: String, value: JSONValue, field: String)],
        keys: RoleKeySpec,
        terminating: Bool
    ) throws(RepositoryError) {
        try RepositoryEditor.checkSpec(keys, role: entries.first?.name ?? "")
        var d = try delegationsObject(of: delegator)
        guard d["succinct_roles"] == nil else {
            throw RepositoryError(.usage, "\(delegator) uses succinct bins and cannot delegate further")
        }
        var list = d["roles"]?.arrayValue ?? []
        var keysObject = d["keys"]?.objectValue ?? JSONObject()
        for k in keys.keys { keysObject.set(KeyID.of(k), k.jsonValue) }
        for e in entries {
            guard roles[e.name] == nil, !Delegations.isTopLevelName(e.name) else {
                throw RepositoryError(.usage, "role \(e.name) already exists")
            }
            var r = RepositoryEditor.roleJSON(keys).objectValue ?? JSONObject()
            r.set("name", .string(e.name))
            r.set("terminating", .bool(terminating))
            r.set(e.field, e.value)
            list.append(.object(r))
        }
        d.set("keys", .object(keysObject))
        d.set("roles", .array(list))
        try setDelegations(of: delegator, d)
        for e in entries { try newTargetsRole(e.name) }
    }

    // MARK: - Keys

    /// Where a role's keys are defined: root for top-level roles, else the delegating role.
    /// For a succinct delegation, `role` may be the `name_prefix` (all bins share the keys).
    func delegator(of role: String) -> String? {
        if Root.topLevelRoles.contains(role) { return "root" }
        for (name, st) in roles where st.targets != nil {
            guard let object = st.signed["delegations"]?.objectValue,
                let d = delegationCache[name] ?? (try? Delegations(json: object))
            else { continue }
            if let succinct = d.succinctRoles, succinct.namePrefix == role || succinct.isDelegatedRole(role) {
                return name
            }
            if d.succinctRoles == nil, d.delegatedRoleNames.contains(role) { return name }
        }
        return nil
    }

    /// The keys, threshold and key table that authorize `role` right now.
    func authorization(of role: String) throws(RepositoryError) -> (keyids: [String], threshold: Int, keys: JSONObject)
    {
        guard let delegator = delegator(of: role), let parent = roles[delegator] else {
            throw RepositoryError(.usage, "no role delegates to \(role)")
        }
        if delegator == "root" {
            return try RepositoryEditor.authorization(inRoot: parent.signed, role: role)
        }
        guard let d = parent.signed["delegations"]?.objectValue else {
            throw RepositoryError(.repository, "\(delegator) has no delegations")
        }
        let keys = d["keys"]?.objectValue ?? JSONObject()
        var roleObject: JSONObject?
        if let s = d["succinct_roles"]?.objectValue {
            roleObject = s
        } else {
            roleObject = d["roles"]?.arrayValue?.first { $0.objectValue?["name"]?.stringValue == role }?.objectValue
        }
        guard let r = roleObject else { throw RepositoryError(.repository, "\(delegator) does not list \(role)") }
        return (
            r["keyids"]?.arrayValue?.compactMap(\.stringValue) ?? [], Int(r["threshold"]?.integerValue ?? 1), keys
        )
    }

    static func authorization(
        inRoot root: JSONObject,
        role: String
    ) throws(RepositoryError) -> (keyids: [String], threshold: Int, keys: JSONObject) {
        guard let r = root["roles"]?.objectValue?[role]?.objectValue else {
            throw RepositoryError(.repository, "root does not define \(role)")
        }
        return (
            r["keyids"]?.arrayValue?.compactMap(\.stringValue) ?? [], Int(r["threshold"]?.integerValue ?? 1),
            root["keys"]?.objectValue ?? JSONObject()
        )
    }

    /// Key rotation for any role (TUF §6.1): adds keys, removes key ids, optionally changes the
    /// threshold. The delegating metadata (root, or the delegating targets role) gets a new
    /// version, and so does the role itself, which must be re-signed by the new keys. A new
    /// root is signed on publish by the old root threshold and the new one (TUF §5.3.4).
    public mutating func rotateKeys(
        role: String,
        add: [Key] = [],
        remove: [String] = [],
        threshold: Int? = nil
    ) throws(RepositoryError) {
        guard let delegator = delegator(of: role) else { throw RepositoryError(.usage, "no role delegates to \(role)") }
        let current = try authorization(of: role)
        var keyids = current.keyids.filter { !remove.contains($0) }
        for k in add where !keyids.contains(KeyID.of(k)) { keyids.append(KeyID.of(k)) }
        let t = threshold ?? min(current.threshold, max(1, keyids.count))
        guard !keyids.isEmpty, t >= 1, t <= keyids.count else {
            throw RepositoryError(.usage, "\(role): threshold must be between 1 and the number of keys")
        }
        try touch(delegator)
        guard let parentState = roles[delegator] else { throw RepositoryError(.repository, "no role \(delegator)") }
        var parent = parentState.signed
        var keysObject: JSONObject
        if delegator == "root" {
            keysObject = parent["keys"]?.objectValue ?? JSONObject()
        } else {
            keysObject = parent["delegations"]?.objectValue?["keys"]?.objectValue ?? JSONObject()
        }
        for k in add { keysObject.set(KeyID.of(k), k.jsonValue) }
        func updated(_ r: JSONObject) -> JSONObject {
            var r = r
            r.set("keyids", .array(keyids.map { .string($0) }))
            r.set("threshold", .integer(Int64(t)))
            return r
        }
        var affected = [role]
        if delegator == "root" {
            var rolesObject = parent["roles"]?.objectValue ?? JSONObject()
            rolesObject.set(role, .object(updated(rolesObject[role]?.objectValue ?? JSONObject())))
            parent.set("roles", .object(rolesObject))
            let used = Set(
                rolesObject.members.flatMap { $0.value.objectValue?["keyids"]?.arrayValue ?? [] }
                    .compactMap(\.stringValue))
            keysObject = JSONObject(filtering: keysObject, keeping: used)
            parent.set("keys", .object(keysObject))
        } else {
            var d = parent["delegations"]?.objectValue ?? JSONObject()
            if let s = d["succinct_roles"]?.objectValue {
                d.set("succinct_roles", .object(updated(s)))
                affected = try delegations(of: delegator)?.succinctRoles?.roleNames ?? []
            } else {
                let list = (d["roles"]?.arrayValue ?? []).map { v -> JSONValue in
                    guard let o = v.objectValue, o["name"]?.stringValue == role else { return v }
                    return .object(updated(o))
                }
                d.set("roles", .array(list))
            }
            var used = Set<String>()
            for v in d["roles"]?.arrayValue ?? [] {
                for k in v.objectValue?["keyids"]?.arrayValue ?? [] { if let s = k.stringValue { used.insert(s) } }
            }
            for k in d["succinct_roles"]?.objectValue?["keyids"]?.arrayValue ?? [] {
                if let s = k.stringValue { used.insert(s) }
            }
            d.set("keys", .object(JSONObject(filtering: keysObject, keeping: used)))
            parent.set("delegations", .object(d))
        }
        try withRole(delegator) { st throws(RepositoryError) in st.signed = parent }
        delegationCache[delegator] = nil
        for r in affected where r != "root" { try touch(r) }
    }

    // MARK: - Signing and publishing

    /// Adds signatures by `signers` to a role (e.g. an offline root key holder signing a staged
    /// root). Signers that are not authorized for the role, or that already signed, are skipped.
    /// Returns the number of signatures added.
    @discardableResult
    public mutating func sign(role: String, with signers: [any Signer]) async throws -> Int {
        guard let st = roles[role] else { throw RepositoryError(.usage, "no role named \(role)") }
        try checkPolicy(signers)
        try st.checkTyped(role)
        let message = try st.canonicalSigned()
        var allowed = Set(try authorization(of: role).keyids)
        if role == "root", let old = publishedRoot, st.dirty {
            allowed.formUnion(try RepositoryEditor.authorization(inRoot: old, role: "root").keyids)
        }
        var added: [(keyid: String, sig: String)] = []
        for s in signers {
            let id = s.keyid
            guard allowed.contains(id), !st.signatures.contains(where: { $0.keyid == id }),
                !added.contains(where: { $0.keyid == id })
            else { continue }
            added.append((id, hexEncode(try await s.sign(message))))
        }
        try withRole(role) { st throws(RepositoryError) in st.signatures += added }
        return added.count
    }

    /// Checks that a role has a threshold of valid signatures from the keys that authorize it
    /// (TUF §5.4.2, §5.5.3, §5.6.3), and for root also from the last published root (§5.3.4).
    public func verifySignatures(role: String) throws(RepositoryError) {
        guard let st = roles[role] else { throw RepositoryError(.usage, "no role named \(role)") }
        let message = try st.canonicalSigned()
        var checks = [try authorization(of: role)]
        if role == "root", let old = publishedRoot, st.dirty {
            checks.append(try RepositoryEditor.authorization(inRoot: old, role: "root"))
        }
        let sigs = st.signatures.map { TUF.Signature(keyid: $0.keyid, sig: $0.sig) }
        for c in checks {
            var keys: [String: Key] = [:]
            for m in c.keys.members {
                if let o = m.value.objectValue, let k = try? Key(json: o) { keys[m.key] = k }
            }
            do {
                try Threshold.verify(
                    signedBytes: message,
                    signatures: sigs,
                    keyids: c.keyids,
                    threshold: Int64(c.threshold),
                    keys: keys,
                    role: role,
                    policy: keyPolicy
                )
            } catch {
                throw RepositoryError(.threshold, "\(error.reason); sign it with more keys (tuf sign --role \(role))")
            }
        }
    }

    /// Keys the repository lists (root's, and every delegation's) that `policy` does not allow, as "KEYID (SCHEME)".
    public func keys(outside policy: KeyPolicy) -> [String] {
        var outside: Set<String> = []
        for name in roleNames {
            guard let signed = roles[name]?.signed else { continue }
            let listed =
                name == "root" ? signed["keys"]?.objectValue : signed["delegations"]?.objectValue?["keys"]?.objectValue
            for member in listed?.members ?? [] {
                guard let object = member.value.objectValue, let key = try? Key(json: object) else {
                    outside.insert("\(member.key) (unreadable)")
                    continue
                }
                if !policy.allows(key) { outside.insert("\(member.key.prefix(16)) (\(key.scheme))") }
            }
        }
        return outside.sorted()
    }

    /// Under a policy other than `.any`: every signer and every listed key must be inside it.
    func checkPolicy(_ signers: [any Signer]) throws(RepositoryError) {
        guard keyPolicy != .any else { return }
        for signer in signers where !keyPolicy.allows(signer.publicKey) {
            throw RepositoryError(
                .key, "key \(signer.keyid.prefix(16)) (\(signer.publicKey.scheme)) is outside \(keyPolicy.name)")
        }
        if let first = keys(outside: keyPolicy).first {
            throw RepositoryError(.key, "the repository lists key \(first), outside \(keyPolicy.name)")
        }
    }

    /// Signs every staged role with the authorized keys found in `keyring`, refreshes snapshot
    /// (TUF §4.4: versions of all targets roles) and timestamp (TUF §4.6: version, length and
    /// SHA-256 of snapshot), checks all thresholds, then plans the files: artifacts, targets
    /// roles, snapshot, root, and timestamp last, so a client never sees a timestamp pointing
    /// at files that are not there yet (`FileRepository` writes each atomically, in order).
    /// Nothing is planned if any check fails. The editor then records the publish as done:
    /// `FileRepository.publish` applies the plan to a copy and keeps it only when every write succeeded.
    public mutating func publish(keyring: Keyring) async throws -> RepositoryPlan {
        try checkPolicy(Array(keyring.signers.values))
        let targetsRoles = roleNames.filter { roles[$0]?.targets != nil }
        let dirtyTargets = targetsRoles.filter { roles[$0]?.dirty == true }
        if !dirtyTargets.isEmpty || roles["snapshot"]?.dirty == true {
            try touch("snapshot")
            var meta = roles["snapshot"]?.signed["meta"]?.objectValue ?? JSONObject()
            for name in targetsRoles {
                var entry = JSONObject()
                entry.set("version", .integer(roles[name]?.version ?? 1))
                meta.set(name + ".json", .object(entry))
            }
            try withRole("snapshot") { st throws(RepositoryError) in st.signed.set("meta", .object(meta)) }
        }
        let signers = Array(keyring.signers.values)
        for name in targetsRoles + ["root", "snapshot"] where roles[name]?.dirty == true {
            try await sign(role: name, with: signers)
            try verifySignatures(role: name)
        }
        var snapshotBytes: [UInt8]?
        if roles["snapshot"]?.dirty == true, let st = roles["snapshot"] {
            let bytes = try st.envelope()
            snapshotBytes = bytes
            try touch("timestamp")
            var entry = JSONObject()
            entry.set("version", .integer(st.version))
            entry.set("length", .integer(Int64(bytes.count)))
            var h = JSONObject()
            h.set("sha256", .string(hexEncode(Hashing.digest("sha256", bytes) ?? [])))
            entry.set("hashes", .object(h))
            var meta = JSONObject()
            meta.set("snapshot.json", .object(entry))
            try withRole("timestamp") { st throws(RepositoryError) in st.signed.set("meta", .object(meta)) }
        }
        if roles["timestamp"]?.dirty == true {
            try await sign(role: "timestamp", with: signers)
            try verifySignatures(role: "timestamp")
        }
        // Every check passed: plan the writes.
        let consistent = consistentSnapshot
        var plan = RepositoryPlan()
        for artifact in pendingArtifacts { plan.steps.append(.write(path: artifact.path, bytes: artifact.bytes)) }
        for name in dirtyTargets + ["snapshot"] where roles[name]?.dirty == true {
            guard let st = roles[name] else { continue }
            let bytes = name == "snapshot" ? try snapshotBytes ?? st.envelope() : try st.envelope()
            let file = Files.quote(name) + ".json"
            if consistent { plan.steps.append(.write(path: "metadata/\(st.version).\(file)", bytes: bytes)) }
            plan.steps.append(.write(path: "metadata/\(file)", bytes: bytes))
            plan.published.append(name)
        }
        if let st = roles["root"], st.dirty {
            let bytes = try st.envelope()
            plan.steps.append(.write(path: "metadata/\(st.version).root.json", bytes: bytes))
            plan.steps.append(.write(path: "metadata/root.json", bytes: bytes))
            publishedRoot = st.signed
            plan.published.append("root")
        }
        if let st = roles["timestamp"], st.dirty {
            plan.steps.append(.write(path: "metadata/timestamp.json", bytes: try st.envelope()))
            plan.published.append("timestamp")
        }
        for name in roleNames {
            roles[name]?.dirty = false
            if !ignoresStaged { plan.steps.append(.remove(path: "staged/" + Files.quote(name) + ".json")) }
        }
        pendingArtifacts = []
        return plan
    }

    /// Plans the staged edits into `staged/` (not served), so the next `load` continues from them, with the
    /// artifacts added since the last plan. Each staged role is checked as typed metadata first: an edit clients
    /// would refuse (two target paths equal under Unicode equivalence, say) is refused here, not left on disk for
    /// every later command to trip over. An editor loaded without the staged edits cannot stage (it would erase them).
    public mutating func stage() throws(RepositoryError) -> RepositoryPlan {
        guard !ignoresStaged else {
            throw RepositoryError(.usage, "this editor was opened without the staged edits and cannot stage")
        }
        for name in roleNames where roles[name]?.dirty == true { try roles[name]?.checkTyped(name) }
        var plan = RepositoryPlan()
        for artifact in pendingArtifacts { plan.steps.append(.write(path: artifact.path, bytes: artifact.bytes)) }
        for name in roleNames {
            let path = "staged/" + Files.quote(name) + ".json"
            if let st = roles[name], st.dirty {
                plan.steps.append(.write(path: path, bytes: try st.envelope()))
            } else {
                plan.steps.append(.remove(path: path))
            }
        }
        pendingArtifacts = []
        return plan
    }

    /// Re-signs `role` with a new version and expiry when its current metadata expires within
    /// `seconds` (or already has), then publishes. Meant for the online roles, timestamp and
    /// snapshot (TUF §4.4, §4.6: short expiry against freeze attacks); re-signing snapshot also
    /// re-signs timestamp. Staged edits of other roles are published too. Returns the plan, or
    /// nil when the role is not close to expiry.
    public mutating func resignIfExpiring(
        role: String, within seconds: Int64, keyring: Keyring
    ) async throws -> RepositoryPlan? {
        guard let st = roles[role] else { throw RepositoryError(.usage, "no role named \(role)") }
        let expires = (try? Timestamp8601(parsing: st.expires).secondsSinceEpoch) ?? 0
        guard expires - clock() <= seconds else { return nil }
        try touch(role)
        return try await publish(keyring: keyring)
    }
}

extension JSONObject {
    init(filtering o: JSONObject, keeping keys: Set<String>) {
        self.init()
        for m in o.members where keys.contains(m.key) { set(m.key, m.value) }
    }
}
