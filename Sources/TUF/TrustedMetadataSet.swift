/// Metadata that passed the checks of the TUF client workflow. Only `TrustedMetadataSet`
/// creates these (or `init(unchecked:)`, for tests and tools that knowingly bypass trust).
/// (`Role` is a `SignedRole`; unstated for the reason `Metadata` gives.)
public struct Verified<Role>: Sendable where Role: Sendable {
    public let metadata: Metadata<Role>
    public var signed: Role { metadata.signed }
    /// The exact bytes received; what the client persists (TUF §5.3.7, §5.4.5, §5.5.7, §5.6.7).
    public var raw: [UInt8] { metadata.raw }

    public init(unchecked metadata: Metadata<Role>) { self.metadata = metadata }
}

/// The verified view of a repository at one reference time: TUF §5.3–§5.6 as pure functions
/// of bytes. No I/O; the `Updater` fetches, and persists what this set accepts.
///
/// The reference time is fixed for the lifetime of the set (TUF §5.1: "record the time at
/// which the update began"), so every freeze check in one update uses the same instant.
public struct TrustedMetadataSet: Sendable {
    public let referenceTime: Timestamp8601
    /// Which keys count towards thresholds (`KeyPolicy.fips` under `crypto.profile: fips`).
    public let keyPolicy: KeyPolicy
    public private(set) var root: Verified<Root>
    public private(set) var timestamp: Verified<Timestamp>?
    public private(set) var snapshot: Verified<Snapshot>?
    /// The targets roles loaded, by name compared byte for byte: a list, searched (an update loads a few; a hashed
    /// table keyed by bytes would cost the process a scan of the runtime's conformance records on first use).
    private var targetRoles: [(name: [UInt8], metadata: Verified<Targets>, delegator: String)] = []

    private func position(_ name: String) -> Int? { targetRoles.firstIndex { $0.name.elementsEqual(name.utf8) } }

    private func loaded(_ name: String) -> (name: [UInt8], metadata: Verified<Targets>, delegator: String)? {
        position(name).map { targetRoles[$0] }
    }

    /// TUF §5.2: load the trusted root. It must be signed by a threshold of its own root keys.
    /// Expiry is not checked here: an expired local root may still be updated (TUF §5.3).
    public init(
        rootBytes: some Collection<UInt8>, referenceTime: Timestamp8601, keyPolicy: KeyPolicy = .any
    ) throws(TUFError) {
        self.referenceTime = referenceTime
        self.keyPolicy = keyPolicy
        let md = try Metadata<Root>.parse(rootBytes)
        try TrustedMetadataSet.verifyRoot(md, by: md.signed, policy: keyPolicy)
        root = Verified(unchecked: md)
    }

    /// Top-level targets, when loaded.
    public var targets: Verified<Targets>? { loaded("targets")?.metadata }

    /// A loaded targets role (top-level or delegated) by name.
    public func targetsRole(_ name: String) -> Verified<Targets>? { loaded(name)?.metadata }

    /// The delegator through which a loaded targets role was verified.
    public func delegator(of name: String) -> String? { loaded(name)?.delegator }

    static func verifyRoot(_ md: Metadata<Root>, by trusted: Root, policy: KeyPolicy) throws(TUFError) {
        guard let role = trusted.roles["root"] else { throw TUFError(.invalidMetadata, "root role missing") }
        try Threshold.verify(
            signedBytes: md.signedBytes,
            signatures: md.signatures,
            keyids: role.keyids,
            threshold: role.threshold,
            keys: trusted.keys,
            role: "root",
            policy: policy
        )
    }

    static func verify<R>(_ md: Metadata<R>, role name: String, by root: Root, policy: KeyPolicy) throws(TUFError) {
        guard let role = root.roles[name] else { throw TUFError(.invalidMetadata, "\(name) role missing") }
        try Threshold.verify(
            signedBytes: md.signedBytes,
            signatures: md.signatures,
            keyids: role.keyids,
            threshold: role.threshold,
            keys: root.keys,
            role: name,
            policy: policy
        )
    }

    /// TUF §5.3.4–§5.3.7: accept root version N+1.
    /// - §5.3.4: signed by a threshold of keys from the trusted (old) root, and by a threshold
    ///   of keys from the new root itself; each keyid counts once.
    /// - §5.3.5: the version must be exactly the trusted version + 1 (rollback).
    /// - §5.3.6: expiry of an intermediate root does not matter (§5.3.10 checks the final one).
    /// - §5.3.7: the new root becomes the trusted root.
    @discardableResult
    public mutating func updateRoot(_ bytes: some Collection<UInt8>) throws(TUFError) -> Verified<Root> {
        guard timestamp == nil else { throw TUFError(.workflowOrder, "cannot update root after timestamp") }
        let md = try Metadata<Root>.parse(bytes)
        try TrustedMetadataSet.verifyRoot(md, by: root.signed, policy: keyPolicy)
        guard md.signed.common.version == root.signed.common.version + 1 else {
            throw TUFError(.badVersion, "expected root version \(root.signed.common.version + 1)")
        }
        try TrustedMetadataSet.verifyRoot(md, by: md.signed, policy: keyPolicy)
        root = Verified(unchecked: md)
        return root
    }

    /// TUF §5.3.10: the final root must not be expired (freeze attack).
    public func checkFinalRoot() throws(TUFError) {
        if root.signed.common.isExpired(at: referenceTime) { throw TUFError(.expired, "root is expired") }
    }

    /// TUF §5.4: accept a timestamp.
    /// - §5.3.10: the final root must not be expired before any other role is loaded.
    /// - §5.4.2: threshold of timestamp keys from root.
    /// - §5.4.3.1: version must not decrease; §5.4.3.2: snapshot version in `meta` must not decrease.
    /// - An equal version is reported as `equalVersion` so the caller keeps the stored copy.
    /// - §5.4.4: expiry is checked after the timestamp is stored as trusted, so an expired
    ///   local timestamp still protects against rollback of the remote one.
    @discardableResult
    public mutating func updateTimestamp(_ bytes: some Collection<UInt8>) throws(TUFError) -> Verified<Timestamp> {
        guard snapshot == nil else { throw TUFError(.workflowOrder, "cannot update timestamp after snapshot") }
        try checkFinalRoot()
        let md = try Metadata<Timestamp>.parse(bytes)
        try TrustedMetadataSet.verify(md, role: "timestamp", by: root.signed, policy: keyPolicy)
        if let old = timestamp?.signed {
            if md.signed.common.version < old.common.version {
                throw TUFError(.badVersion, "timestamp version rolled back")
            }
            if md.signed.common.version == old.common.version {
                throw TUFError(.equalVersion, "timestamp version unchanged")
            }
            if md.signed.snapshotMeta.version < old.snapshotMeta.version {
                throw TUFError(.badVersion, "snapshot version in timestamp rolled back")
            }
        }
        let verified = Verified(unchecked: md)
        timestamp = verified
        try checkFinalTimestamp()
        return verified
    }

    /// TUF §5.4.4: the trusted timestamp must not be expired.
    public func checkFinalTimestamp() throws(TUFError) {
        guard let timestamp else { throw TUFError(.workflowOrder, "timestamp not loaded") }
        if timestamp.signed.common.isExpired(at: referenceTime) { throw TUFError(.expired, "timestamp is expired") }
    }

    /// TUF §5.5: accept a snapshot.
    /// - §5.5.2: length and hashes must match the timestamp's entry (skipped for `trusted` local
    ///   bytes, which were checked when first received).
    /// - §5.5.3: threshold of snapshot keys from root.
    /// - §5.5.5: every role listed in the trusted snapshot must still be listed, with a version
    ///   that does not decrease.
    /// - §5.5.4 (version equals the timestamp's entry) and §5.5.6 (expiry) are checked after the
    ///   snapshot is stored, so an outdated local snapshot still guards against rollback.
    @discardableResult
    public mutating func updateSnapshot(
        _ bytes: some Collection<UInt8>,
        trusted: Bool = false
    ) throws(TUFError)
        -> Verified<Snapshot>
    {
        guard let timestamp else { throw TUFError(.workflowOrder, "cannot update snapshot before timestamp") }
        guard targets == nil else { throw TUFError(.workflowOrder, "cannot update snapshot after targets") }
        try checkFinalTimestamp()
        let data = Array(bytes)
        if !trusted { try timestamp.signed.snapshotMeta.verifyLengthAndHashes(data) }
        let md = try Metadata<Snapshot>.parse(data)
        try TrustedMetadataSet.verify(md, role: "snapshot", by: root.signed, policy: keyPolicy)
        if let old = snapshot?.signed {
            for (name, info) in old.meta {
                guard let new = md.signed.meta[name] else {
                    throw TUFError(.repository, "new snapshot is missing a role listed before")
                }
                if new.version < info.version { throw TUFError(.badVersion, "role version in snapshot rolled back") }
            }
        }
        let verified = Verified(unchecked: md)
        snapshot = verified
        try checkFinalSnapshot()
        return verified
    }

    /// TUF §5.5.4 and §5.5.6: the trusted snapshot matches the timestamp's version and is not expired.
    public func checkFinalSnapshot() throws(TUFError) {
        guard let snapshot, let timestamp else { throw TUFError(.workflowOrder, "snapshot not loaded") }
        if snapshot.signed.common.isExpired(at: referenceTime) { throw TUFError(.expired, "snapshot is expired") }
        guard snapshot.signed.common.version == timestamp.signed.snapshotMeta.version else {
            throw TUFError(.badVersion, "snapshot version does not match timestamp")
        }
    }

    /// TUF §5.6: accept the top-level targets (delegated by root).
    @discardableResult
    public mutating func updateTargets(_ bytes: some Collection<UInt8>) throws(TUFError) -> Verified<Targets> {
        try updateDelegatedTargets(bytes, role: "targets", delegator: "root")
    }

    /// TUF §5.6 for top-level targets, §5.6.7.2 for delegated roles.
    /// - §5.6.2: length and hashes must match the snapshot's entry; a role not in snapshot is refused.
    /// - §5.6.3: threshold of the delegator's keys for this role.
    /// - §5.6.4: version must equal the snapshot's entry.
    /// - §5.6.5: must not be expired.
    @discardableResult
    public mutating func updateDelegatedTargets(
        _ bytes: some Collection<UInt8>,
        role: String,
        delegator: String
    )
        throws(TUFError) -> Verified<Targets>
    {
        guard let snapshot else { throw TUFError(.workflowOrder, "cannot load targets before snapshot") }
        try checkFinalSnapshot()
        guard let meta = snapshot.signed.meta[role + ".json"] else {
            throw TUFError(.repository, "role is not listed in snapshot")
        }
        let data = Array(bytes)
        try meta.verifyLengthAndHashes(data)
        let md = try Metadata<Targets>.parse(data)
        try verifyDelegation(md, role: role, delegator: delegator)
        guard md.signed.common.version == meta.version else {
            throw TUFError(.badVersion, "targets version does not match snapshot")
        }
        if md.signed.common.isExpired(at: referenceTime) { throw TUFError(.expired, "\(role) is expired") }
        let verified = Verified(unchecked: md)
        let entry = (name: Array(role.utf8), metadata: verified, delegator: delegator)
        if let i = position(role) {
            targetRoles[i] = entry
        } else {
            targetRoles.append(entry)
        }
        return verified
    }

    /// A role reached again through another delegator must be re-verified against that
    /// delegator's keys: trust from one delegation path does not carry over to another
    /// (TUF §5.6.7.2; tuf-conformance `test_cached_role_is_verified_against_current_delegator`).
    public func reverify(role: String, delegator: String) throws(TUFError) -> Verified<Targets> {
        guard let loaded = loaded(role) else { throw TUFError(.workflowOrder, "role not loaded") }
        if loaded.delegator.utf8.elementsEqual(delegator.utf8) { return loaded.metadata }
        try verifyDelegation(loaded.metadata.metadata, role: role, delegator: delegator)
        return loaded.metadata
    }

    private func verifyDelegation(_ md: Metadata<Targets>, role: String, delegator: String) throws(TUFError) {
        if delegator == "root" {
            guard role == "targets" else { throw TUFError(.repository, "root delegates only to targets") }
            try TrustedMetadataSet.verify(md, role: "targets", by: root.signed, policy: keyPolicy)
            return
        }
        guard let parent = targetsRole(delegator)?.signed else {
            throw TUFError(.workflowOrder, "delegator not loaded")
        }
        guard let delegations = parent.delegations, let keys = delegations.roleKeys(for: role) else {
            throw TUFError(.repository, "delegator does not delegate to this role")
        }
        try Threshold.verify(
            signedBytes: md.signedBytes,
            signatures: md.signatures,
            keyids: keys.keyids,
            threshold: keys.threshold,
            keys: delegations.keys,
            role: role,
            policy: keyPolicy
        )
    }
}
