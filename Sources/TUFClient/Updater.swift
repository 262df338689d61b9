import TUF

/// The TUF client workflow (TUF §5) over a `Fetcher` and local stores.
///
/// `TrustedMetadataSet` makes every trust decision; this type fetches, hands bytes to it, and
/// persists exactly the bytes it accepted. One `Updater` is one update: its reference time is
/// fixed when it is created (TUF §5.1), so all expiry checks use the same instant.
public actor Updater {
    public let config: UpdaterConfig
    let metadataBaseURL: String
    let targetBaseURL: String?
    let fetcher: any Fetcher
    let metadataStore: any MetadataStore
    let artifactStore: (any ArtifactStore)?
    private(set) var trusted: TrustedMetadataSet
    private var refreshed = false
    /// The file accepted last, not yet written: `persist` leaves it here until the next request has been sent, so
    /// that its write and fsync overlap the server's answer (`request`). It is written before that answer is read
    /// and before each public method returns, also when it fails; reading it back meanwhile gives these bytes.
    private var pending: (name: String, bytes: [UInt8])?
    /// A root was accepted: the store is flushed while the next request travels (§5.3.8).
    private var flushAtNextRequest = false
    /// A write of trusted metadata failed (`storing`).
    private var storeFailed = false

    /// TUF §5.1: record the update start time; TUF §5.2: load the trusted root from local storage.
    public init(
        metadataBaseURL: String,
        metadataStore: any MetadataStore,
        fetcher: any Fetcher,
        targetBaseURL: String? = nil,
        artifactStore: (any ArtifactStore)? = nil,
        referenceTime: Timestamp8601,
        config: UpdaterConfig = UpdaterConfig()
    ) throws {
        self.metadataBaseURL = Updater.withTrailingSlash(metadataBaseURL)
        self.targetBaseURL = targetBaseURL.map(Updater.withTrailingSlash)
        self.fetcher = fetcher
        self.metadataStore = metadataStore
        self.artifactStore = artifactStore
        self.config = config
        guard let rootBytes = try metadataStore.load("root.json") else {
            throw UpdaterError.storage("no trusted root.json")
        }
        do {
            trusted = try TrustedMetadataSet(
                rootBytes: rootBytes, referenceTime: referenceTime, keyPolicy: config.keyPolicy)
        } catch {
            throw UpdaterError.metadata(error)
        }
    }

    static func withTrailingSlash(_ s: String) -> String { s.hasSuffix("/") ? s : s + "/" }

    /// The verified metadata so far (for callers that want to inspect it).
    public var trustedSet: TrustedMetadataSet { trusted }

    /// TUF §5.3–§5.6 for the top-level roles: root, timestamp, snapshot, targets, in that order.
    public func refresh() async throws {
        try await update { try await refreshTopLevel() }
    }

    /// A public method's work between its two ends: refused after a failed write of trusted metadata
    /// (`checkStore`); on success what was accepted is made durable and a failure to do so is the method's
    /// (`finish`); on failure what was accepted stays accepted all the same (`settle`; TUF §5.4.5 and siblings persist
    /// as they go) and the method throws its own error.
    private func update<Value>(_ work: () async throws -> Value) async throws -> Value {
        try checkStore()
        let result: Value
        do {
            result = try await work()
        } catch {
            settle()
            throw error
        }
        try finish()
        return result
    }

    /// `refresh` without its end: a lookup that goes on from here writes and syncs once, when it ends.
    private func refreshTopLevel() async throws {
        try await loadRoot()
        try await loadTimestamp()
        try await loadSnapshot()
        _ = try await loadTargets(role: "targets", delegator: "root")
        refreshed = true
    }

    // MARK: - Root

    /// TUF §5.3 root update.
    /// - §5.3.1–§5.3.2: starting from the trusted version N,
    /// - §5.3.3: try `N+1.root.json`, at most `rootMaxLength` bytes; stop when the repository has
    ///   no such file (403/404) or after `maxRootRotations` versions (python-tuf's default, 256).
    /// - §5.3.4–§5.3.7: `TrustedMetadataSet.updateRoot` checks signatures by old and new root
    ///   (each keyid counted once), the exact version N+1, and makes it the trusted root;
    ///   intermediate expiry does not matter (§5.3.6).
    /// - §5.3.8: persist each accepted root byte for byte, durably before the next answer is read (written, and the
    ///   store flushed, while the next request travels, see `request`).
    /// - §5.3.9: repeat.
    /// - §5.3.10: the final root must not be expired at the fixed start time (freeze attack).
    /// - §5.3.11: if timestamp or snapshot keys changed, delete the trusted timestamp and
    ///   snapshot files (fast-forward attack recovery). The removal is made at the first accepted root whose keys
    ///   differ from the initial root's, before that root is written, so that no crash can leave the new root on disk
    ///   beside the old timestamp it may still verify (keys added, a threshold changed): the final root then differs
    ///   too, unless a later root went back to the initial keys, when the files are removed all the same. The removal
    ///   comes before §5.3.10's check, so it stands when the update then fails (the new root is on disk by then).
    /// - §5.3.12: consistent snapshots are read from the final trusted root where they are used.
    func loadRoot() async throws {
        let initial = trusted.root.signed
        var removed = false
        let lower = initial.common.version + 1
        let upper = lower + Int64(config.maxRootRotations)
        var next = lower
        while next < upper {
            let data: [UInt8]
            do {
                data = try await download(role: "root", maxBytes: config.rootMaxLength, version: next)
            } catch UpdaterError.httpStatus(let status, _) where status == 403 || status == 404 {
                break
            }
            do {
                try trusted.updateRoot(data)
            } catch {
                throw UpdaterError.metadata(error)
            }
            let accepted = trusted.root.signed
            if !removed,
                Updater.keysChanged("timestamp", initial, accepted)
                    || Updater.keysChanged("snapshot", initial, accepted)
            {
                try savePending()
                try storing { try metadataStore.remove("timestamp.json") }
                try storing { try metadataStore.remove("snapshot.json") }
                removed = true
            }
            try persist(role: "root", data)
            flushAtNextRequest = true
            next += 1
        }
        do {
            try trusted.checkFinalRoot()
        } catch {
            throw UpdaterError.metadata(error)
        }
    }

    /// Whether `role`'s keyids or threshold differ between two roots (TUF §5.3.11).
    static func keysChanged(_ role: String, _ a: Root, _ b: Root) -> Bool {
        guard let ra = a.roles[role], let rb = b.roles[role] else { return true }
        return Set(ra.keyids) != Set(rb.keyids) || ra.threshold != rb.threshold
    }

    // MARK: - Timestamp

    /// TUF §5.4 timestamp update.
    /// - The local timestamp is loaded first (if it verifies) as the rollback reference for §5.4.3.
    /// - §5.4.1: fetch `timestamp.json` (never versioned) up to `timestampMaxLength` bytes.
    /// - §5.4.2–§5.4.4: verified by `TrustedMetadataSet.updateTimestamp`.
    /// - An unchanged version keeps the stored copy and is not an error.
    /// - §5.4.5: persist.
    func loadTimestamp() async throws {
        let local = try stored("timestamp.json")
        if let local {
            _ = try? trusted.updateTimestamp(local)
        }
        let data = try await download(role: "timestamp", maxBytes: config.timestampMaxLength, version: nil)
        // The stored file again, byte for byte, and it was just accepted as the trusted timestamp (against this final
        // root): `updateTimestamp` would verify the same signatures and find the same version (`equalVersion`).
        if let local, trusted.timestamp != nil, local == data { return }
        do {
            try trusted.updateTimestamp(data)
        } catch  where error.code == .equalVersion {
            return
        } catch {
            throw UpdaterError.metadata(error)
        }
        try persist(role: "timestamp", data)
    }

    // MARK: - Snapshot

    /// TUF §5.5 snapshot update.
    /// - A local snapshot that is still final for the new timestamp is used without a download.
    /// - §5.5.1: otherwise fetch `VERSION.snapshot.json` when consistent snapshots are on
    ///   (else `snapshot.json`), bounded by the length in timestamp or `snapshotMaxLength`.
    /// - §5.5.2–§5.5.6: verified by `TrustedMetadataSet.updateSnapshot`.
    /// - §5.5.7: persist.
    func loadSnapshot() async throws {
        if let local = try stored("snapshot.json") {
            do {
                try trusted.updateSnapshot(local, trusted: true)
                return
            } catch {
                // Not final for this timestamp: fall through to the remote snapshot.
            }
        }
        guard let meta = trusted.timestamp?.signed.snapshotMeta else {
            throw UpdaterError.metadata(TUFError(.workflowOrder, "timestamp not loaded"))
        }
        // The listed length, but never more than the configured cap: a stolen online (timestamp) key must not be
        // able to make a device buffer gigabytes.
        let maxBytes = min(meta.length.map { Int(clamping: $0) } ?? config.snapshotMaxLength, config.snapshotMaxLength)
        let version = trusted.root.signed.consistentSnapshot ? meta.version : nil
        let data = try await download(role: "snapshot", maxBytes: maxBytes, version: version)
        do {
            try trusted.updateSnapshot(data)
        } catch {
            throw UpdaterError.metadata(error)
        }
        try persist(role: "snapshot", data)
    }

    // MARK: - Targets

    /// TUF §5.6 (top-level targets) and §5.6.7.2 (delegated roles) for one role.
    /// - A role already loaded in this update is not fetched again; if it is now reached through
    ///   a different delegator it is re-verified against that delegator's keys.
    /// - A valid local copy that matches the snapshot entry is used without a download.
    /// - §5.6.1: otherwise fetch `VERSION.ROLE.json` (consistent snapshots) or `ROLE.json`,
    ///   bounded by the snapshot's length or `targetsMaxLength`; role names are percent-encoded.
    /// - §5.6.2–§5.6.5: verified by `TrustedMetadataSet.updateDelegatedTargets`.
    /// - §5.6.6: persist.
    func loadTargets(role: String, delegator: String) async throws -> Targets {
        if trusted.targetsRole(role) != nil {
            do {
                return try trusted.reverify(role: role, delegator: delegator).signed
            } catch {
                throw UpdaterError.metadata(error)
            }
        }
        if let local = try stored(percentEncode(role) + ".json"),
            let verified = try? trusted.updateDelegatedTargets(local, role: role, delegator: delegator)
        {
            return verified.signed
        }
        guard let meta = trusted.snapshot?.signed.meta[role + ".json"] else {
            throw UpdaterError.metadata(TUFError(.repository, "role \(role) is delegated but not in snapshot"))
        }
        let maxBytes = min(meta.length.map { Int(clamping: $0) } ?? config.targetsMaxLength, config.targetsMaxLength)
        let version = trusted.root.signed.consistentSnapshot ? meta.version : nil
        let data = try await download(role: role, maxBytes: maxBytes, version: version)
        let verified: Verified<Targets>
        do {
            verified = try trusted.updateDelegatedTargets(data, role: role, delegator: delegator)
        } catch {
            throw UpdaterError.metadata(error)
        }
        try persist(role: role, data)
        return verified.signed
    }

    /// TUF §5.6.7: find the trusted entry for `targetPath`.
    ///
    /// Pre-order depth-first search from top-level targets (TUF §5.6.7.1): a role's own
    /// targets are checked before its delegations; delegations are tried in listed order;
    /// a matching terminating delegation abandons the remaining branches (§5.6.7.2.1). A visited
    /// set prevents cycles (§5.6.7.1). The search stops once more than `maxDelegations` roles
    /// have been visited, i.e. top-level targets plus at most `maxDelegations` delegated roles,
    /// as in python-tuf (default 32).
    /// Refreshes the top-level roles first if no refresh has run (TUF §5.7: metadata must be current); what it
    /// accepted is durable when the lookup returns.
    public func targetInfo(for targetPath: String) async throws -> TargetFile? {
        try await update { try await search(targetPath) }
    }

    /// `targetInfo` and then the artifact (TUF §5.7): the cached copy when it matches the trusted entry, otherwise
    /// downloaded, verified and stored (`downloadTarget`). Nil when no trusted role lists the path. One call, so that
    /// the role accepted last is written while the artifact's request travels.
    public func fetchTarget(_ targetPath: String) async throws -> (target: TargetFile, downloaded: Bool)? {
        try await update {
            guard let found = try await search(targetPath) else { return nil }
            let download = try cachedTarget(found) == nil
            if download { try await downloadTarget(found) }
            return (found, download)
        }
    }

    /// The lookup of `targetInfo`, after the top-level refresh if none has run; what it accepts is left pending.
    private func search(_ targetPath: String) async throws -> TargetFile? {
        if !refreshed { try await refreshTopLevel() }
        var stack: [(role: String, delegator: String)] = [("targets", "root")]
        var visited: [[UInt8]] = []  // at most maxDelegations + 1: searched, not hashed
        while !stack.isEmpty, visited.count <= config.maxDelegations {
            let (role, delegator) = stack.removeLast()
            let key = Array(role.utf8)
            if visited.contains(key) { continue }
            let targets = try await loadTargets(role: role, delegator: delegator)
            if let found = targets.target(targetPath) { return found }
            visited.append(key)
            guard let delegations = targets.delegations else { continue }
            var children: [(role: String, delegator: String)] = []
            for child in delegations.rolesFor(targetPath: targetPath) {
                children.append((child.name, role))
                if child.terminating {
                    stack.removeAll()
                    break
                }
            }
            stack.append(contentsOf: children.reversed())
        }
        return nil
    }

    // MARK: - Artifacts

    /// The locally cached artifact for `target`, if it matches the trusted length and every hash
    /// (so a verified artifact is not downloaded again).
    public func cachedTarget(_ target: TargetFile) throws -> [UInt8]? {
        guard let store = artifactStore, let data = try store.load(targetPath: target.path) else { return nil }
        return (try? target.verifyLengthAndHashes(data)) == nil ? nil : data
    }

    /// TUF §5.7.3: download an artifact, at most `length` bytes, and check it against the
    /// trusted length and every listed hash before storing it. With consistent snapshots the
    /// file is fetched as `dir/HASH.name` using the first listed hash (TUF §5.7.3).
    @discardableResult
    public func downloadTarget(_ target: TargetFile) async throws -> [UInt8] {
        try checkStore()
        guard let base = targetBaseURL else { throw UpdaterError.usage("no target base URL") }
        let path = Updater.downloadPath(
            target, hashPrefixed: trusted.root.signed.consistentSnapshot && config.prefixTargetsWithHash)
        let data = try await request(base + path, maxBytes: Int(clamping: target.length), flushing: true)
        do {
            try target.verifyLengthAndHashes(data)
        } catch {
            throw UpdaterError.metadata(error)
        }
        if let store = artifactStore {
            try store.store(targetPath: target.path, data)
            try store.flush()
        }
        return data
    }

    /// Target paths go into the URL as they are (as python-tuf does), except bytes that cannot
    /// appear in an HTTP request line: controls, space, `?`, `#` and non-ASCII.
    /// The URL path of a target below the targets base: `dir/HASH.name` with the first listed hash when the
    /// repository uses consistent snapshots (TUF §5.7.3), encoded for a request line.
    public static func downloadPath(_ target: TargetFile, hashPrefixed: Bool) -> String {
        var path = target.path
        if hashPrefixed, let first = target.hashes.first {
            if let slash = path.lastIndex(of: "/") {
                path = String(path[...slash]) + first.digest + "." + String(path[path.index(after: slash)...])
            } else {
                path = first.digest + "." + path
            }
        }
        return encodePathForURL(path)
    }

    public static func encodePathForURL(_ path: String) -> String {
        var out = ""
        for b in path.utf8 {
            if b <= 0x20 || b >= 0x7F || b == UInt8(ascii: "?") || b == UInt8(ascii: "#") {
                out += "%" + String(b, radix: 16, uppercase: true).leftPadded(to: 2)
            } else {
                out.unicodeScalars.append(Unicode.Scalar(b))
            }
        }
        return out
    }

    // MARK: - I/O helpers

    private func download(role: String, maxBytes: Int, version: Int64?) async throws -> [UInt8] {
        let name = percentEncode(role)
        let file = version.map { "\($0).\(name).json" } ?? "\(name).json"
        return try await request(metadataBaseURL + file, maxBytes: maxBytes)
    }

    /// One GET. With a file pending, the request is sent first and the file written while the answer travels, then
    /// the answer is read: the repository sees the same requests in the same order, and with a store that writes at
    /// once (`DirectoryStore`'s default) every downloaded file is on disk before the next download is read. When the
    /// write fails, the answer already requested is read and dropped (a byte limit of 0), so no later fetch of that
    /// URL can take it. With `flushing` (an artifact's request: no metadata is accepted after it), or after a root was
    /// accepted (`flushAtNextRequest`), the store's `flush` also runs while the answer travels. A store that writes at
    /// its flush (`DirectoryStore.writesAtFlush`) thus has an accepted root on disk before the next answer is read,
    /// and the other files when the method ends, or while the artifact's request travels.
    private func request(_ url: String, maxBytes: Int, flushing: Bool = false) async throws -> [UInt8] {
        let flush = flushing || flushAtNextRequest
        if pending != nil || flush {
            await fetcher.prepare(url)
            do {
                try savePending()
                if flush {
                    try storing { try metadataStore.flush() }
                    flushAtNextRequest = false
                }
            } catch {
                _ = try? await fetcher.fetch(url, maxBytes: 0)
                throw error
            }
        }
        return try await fetcher.fetch(url, maxBytes: maxBytes)
    }

    /// TUF §5.3.8, §5.4.5, §5.5.7, §5.6.6: keep the accepted bytes, written by `savePending`.
    private func persist(role: String, _ data: [UInt8]) throws {
        try savePending()
        pending = (percentEncode(role) + ".json", data)
    }

    private func savePending() throws {
        guard let (name, bytes) = pending else { return }
        pending = nil
        try storing { try metadataStore.store(name, bytes) }
    }

    /// A write to the metadata store; when it fails, this updater trusts what the store may not hold, and refuses
    /// any further work (`checkStore`).
    private func storing(_ body: () throws -> Void) throws {
        do {
            try body()
        } catch {
            storeFailed = true
            throw error
        }
    }

    /// Refuses to go on after a failed write of trusted metadata: this updater's trusted set may be ahead of the
    /// store, and a lookup on it would accept what a restart would not know. A new `Updater` starts from the store.
    private func checkStore() throws {
        if storeFailed {
            throw UpdaterError.storage("an earlier write of trusted metadata failed; start a new update")
        }
    }

    /// A stored file: the pending bytes when they are that file's.
    private func stored(_ name: String) throws -> [UInt8]? {
        if let pending, pending.name.utf8.elementsEqual(name.utf8) { return pending.bytes }
        return try metadataStore.load(name)
    }

    /// The end of a public method that succeeded: what was accepted is written and made durable (the store's
    /// `flush`), and a failure to do so is the method's.
    private func finish() throws {
        let saved = Result { try savePending() }
        try storing { try metadataStore.finishUpdate() }
        try saved.get()
    }

    /// The end of a public method that failed: what was accepted is still written and made durable; the method
    /// throws its own error.
    private func settle() {
        try? savePending()
        try? storing { try metadataStore.finishUpdate() }
    }
}
