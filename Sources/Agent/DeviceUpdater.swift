import Foundation
import JSON
public import Logging
import Synchronization
import TUF
import TUFClient

#if canImport(Glibc)
    import Glibc
#endif

/// How the agent keeps its device current (`agent.*` in the agent's configuration; `bulwark agent run` options).
public struct UpdateSettings: Sendable {
    /// Seconds between update checks, each drawn ±20 % (so a fleet does not check in step); 0: only on `update-now`.
    public var intervalSeconds = 3600.0
    /// `updates.requireGate`: refuse a release published without the vulnerability gate's evidence (the SBOM's and the
    /// gate report's SHA-256 in its signed TUF custom).
    public var requireGate = false
    /// The device application: a command line whose `{slot}` is replaced by the slot's directory, e.g.
    /// `["{slot}/bin/app"]`. Empty: the agent installs releases but runs nothing (and the gate has no payload).
    public var payload: [String] = []
    /// Where releases are installed: nil for `DirectorySlotStore` under `slotsDirectory`; another `SlotStore` plugs a
    /// real bootloader in (RAUC, U-Boot), or a test double.
    public var slotStore: (any SlotStore)?
    /// When the agent runs as root, the payload runs as this user.
    public var payloadUser: String?
    /// The payload's health probe (exit 0 = healthy; `{slot}` is the trial slot's directory, so the probe can ship
    /// with the release), run `healthProbes` times during a trial, each within `healthTimeoutSeconds`,
    /// `healthIntervalSeconds` apart. Empty: each probe checks that the payload runs.
    public var healthCommand: [String] = []
    public var healthTimeoutSeconds = 10.0
    public var healthProbes = 3
    public var healthIntervalSeconds = 2.0
    /// The whole gate must pass within this many seconds of the switch.
    public var healthWindowSeconds = 120.0
    /// Starts a trial gets (the first included) before an agent restart during it counts as a failure.
    public var trialAttempts = 2
    /// Where the slots and the boot record live (default `STATE/slots`).
    public var slotsDirectory: String?
    /// A payload that dies outside a trial is started again after this wait, doubling to the maximum.
    public var restartInitialSeconds = 1.0
    public var restartMaximumSeconds = 30.0
    /// A download that receives nothing for this long is abandoned (slow-retrieval attack); it resumes at the next
    /// check.
    public var stallSeconds = 60.0
    /// The TUF refresh and the assignment must complete within this many seconds.
    public var requestTimeoutSeconds = 30.0
    /// The clock TUF's expiry checks use (TUF §5.1: the update's start time); tests move it forward to see frozen
    /// metadata refused.
    public var clock: @Sendable () -> Date = { Date() }

    public init() {}
}

/// The device half of secure update: checks, downloads, installs into the inactive slot, runs the trial with its
/// health gate, commits or rolls back, keeps the payload running, and reports every step to the hub
/// (`devices/<id>/events/update`). The rules (`UpdateDecision`, `BootRecord`, `HealthGate`) are pure; this actor
/// applies them to files, processes and connections.
///
/// Trust: the TUF client (TUF §5.3–§5.7) refreshes from `STATE/trust` over the pinned mutual-TLS connection; the
/// hub's assignment only names a target, which must be in the signed targets metadata; the artifact is checked
/// against the signed length and every signed hash before a byte of it is installed; the anti-rollback floor
/// (`STATE/trust/floor`) is raised only when a release is committed (MCUboot's rule: never at first boot).
public actor DeviceUpdater {
    public nonisolated let settings: UpdateSettings
    public nonisolated let stateDirectory: String
    nonisolated let slots: any SlotStore
    public private(set) var record: BootRecord
    public private(set) var floor: Int
    /// The last step reported, and the last outcome of a check or trial (for `agent status`).
    public private(set) var lastStep: String?
    public private(set) var lastOutcome: String?
    public private(set) var lastCheck: Date?
    /// Bytes fetched from the hub by the last download (a resumed download fetches only what was missing).
    public private(set) var lastFetchedBytes: Int64 = 0
    public private(set) var protection: String?
    /// Where progress and outcomes are logged (`bulwark agent run` logs to standard error).
    public nonisolated let logger = Logger(label: "bulwark-agent")

    private var payload: PayloadProcess?
    private var payloadGeneration = 0
    private var restartDelay: Double
    private var restartTask: Task<Void, Never>?
    private var trialExit: Int32?
    private var checking = false
    private var stopped = false
    private var lastReported: String?
    /// The release this agent last reported rolled back: the refusal of that same release at the next checks says
    /// nothing new and would hide the rollback from the hub (`lastStep`), so it is not reported.
    private var lastRolledBack: String?
    private var reporter: (@Sendable ([UInt8]) async -> Void)?
    private var sequence = 0

    public init(stateDirectory: String, settings: UpdateSettings) throws {
        self.settings = settings
        self.stateDirectory = stateDirectory
        slots =
            settings.slotStore
            ?? DirectorySlotStore(
                root: settings.slotsDirectory ?? stateDirectory + "/slots", manifests: stateDirectory + "/trust")
        record = try slots.bootRecord()
        floor = try Self.readFloor(stateDirectory + "/trust/floor")
        restartDelay = settings.restartInitialSeconds
        sequence = Self.readSequence(stateDirectory + "/update.json")
    }

    nonisolated var trustDirectory: String { stateDirectory + "/trust" }
    nonisolated var floorFile: String { trustDirectory + "/floor" }
    nonisolated var pidFile: String { stateDirectory + "/payload.pid" }

    /// The anti-rollback floor; 0 when none was ever raised. A file that is there but unreadable is an error, never
    /// a floor of 0 (that would reopen every downgrade).
    static func readFloor(_ path: String) throws -> Int {
        guard FileManager.default.fileExists(atPath: path) else { return 0 }
        guard let text = try? String(contentsOfFile: path, encoding: .utf8),
            let value = Int(text.trimmingCharacters(in: .whitespacesAndNewlines)), value >= 0
        else { throw UpdateError("\(path) is not a valid anti-rollback floor: restore it (it is never lowered)") }
        return value
    }

    /// The last report's sequence number (reports carry it so the hub never lets an older one overwrite a newer).
    static func readSequence(_ path: String) -> Int {
        (FileManager.default.contents(atPath: path).flatMap { try? JSONSerialization.jsonObject(with: $0) }
            as? [String: Any])?["sequence"] as? Int ?? 0
    }

    // MARK: Start

    /// What a boot does: the boot record decides (a trial resumed with one attempt fewer, or rolled back when none
    /// is left), the decision is persisted before anything runs, then the payload starts and any trial's gate runs.
    public func start(reporter: @escaping @Sendable ([UInt8]) async -> Void, hub: @escaping @Sendable () async -> Bool)
        async
    {
        self.reporter = reporter
        PayloadProcess.stopLeftover(pidFile: pidFile, slotsRoot: slots.root)
        // A floor the last commit could not write (killed between the two files) is derived again.
        if let active = record.active, let committed = record.release(in: active), committed.securityVersion > floor {
            raiseFloor(to: committed.securityVersion)
        }
        let before = record
        let decision = record.atStart()
        if record != before {
            do { try slots.write(record) } catch {
                // A trial must not run again without the attempt it uses being on disk: run the committed slot.
                record = before
                _ = outcome("cannot write the boot record: \(error)")
                if let active = record.active { await startPayload(active) }
                return
            }
        }
        switch decision {
        case .nothing:
            return
        case .runActive(let slot):
            await startPayload(slot)
        case .resumeTrial(let slot):
            await runTrial(slot, hub: hub)
        case .rollBack(let trial, let to, let reason):
            await report("rolled-back", release: record.release(in: trial), slot: trial, reason: reason)
            _ = outcome("rolled back: \(reason)")
            if let to { await startPayload(to) }
        }
    }

    /// Stops the payload (SIGTERM, then SIGKILL) and any pending restart.
    public func stop() async {
        stopped = true
        restartTask?.cancel()
        payloadGeneration += 1
        await payload?.stop()
        payload = nil
        unlink(pidFile)
    }

    // MARK: The check

    /// One update check: TUF refresh, assignment, and when a new release is due, download, install, trial. Returns
    /// a one-line outcome. `progress` receives `downloading n/N` as the bytes arrive.
    public func check(
        state: AgentState, apiURL: String, trustLock: AsyncLock, hub: @escaping @Sendable () async -> Bool,
        progress: (@Sendable (Int64, Int64) -> Void)? = nil
    ) async -> String {
        // A check under way (the periodic one, when `update-now` comes): wait for it, then check again, so the caller
        // sees a check that started after it asked.
        while checking, !stopped { try? await Task.sleep(for: .milliseconds(100)) }
        guard !checking else { return "busy: a check is under way" }
        guard record.trial == nil else { return "busy: a trial is under way" }
        guard FileManager.default.fileExists(atPath: trustDirectory + "/root.json") else {
            return "no TUF root: the hub had no update repository when this device paired"
        }
        checking = true
        defer { checking = false }
        lastCheck = Date()
        do {
            try slots.ensureDirectories()
            let logger = self.logger
            let tenths = Mutex<Int64>(-1)
            let planned = try await Self.plan(
                state: state, apiURL: apiURL, trustLock: trustLock, trustDirectory: trustDirectory, record: record,
                floor: floor, slotsRoot: slots.root, settings: settings,
                starting: { release, slot in
                    await self.report("checking", release: release, slot: slot)
                    await self.report("downloading", release: release, slot: slot, progress: (0, release.length))
                },
                progress: { received, total in
                    progress?(received, total)
                    // In the log: every tenth of the download.
                    let tenth = total > 0 ? received * 10 / total : 10
                    if tenths.withLock({ seen in
                        defer { seen = max(seen, tenth) }
                        return tenth > seen
                    }) {
                        logger.info("update: downloading \(received)/\(total)")
                    }
                })
            lastFetchedBytes = planned.fetched
            switch planned.decision {
            case .nothing:
                lastReported = nil
                return outcome("no release is assigned to this device")
            case .current(let release):
                lastReported = nil
                return outcome("current: \(release.name) in slot \(self.record.active?.rawValue ?? "?")")
            case .busy:
                return "busy: a trial is under way"
            case .refuse(let reason):
                if lastStep == "rolled-back", let release = planned.release, lastRolledBack == release.identity,
                    record.rejected.contains(release.identity)
                {
                    return outcome("refused: \(reason)")
                }
                await reportOnce("refused", reason: reason, release: planned.release)
                return outcome("refused: \(reason)")
            case .install(let release, let slot):
                // The slots may have changed while the download ran (a payload restart fell back to the other
                // slot): install only into the slot that is still the inactive one, with no trial under way.
                guard record.trial == nil, slot == record.inactive else {
                    return outcome("busy: the slots changed during the download; the next check installs")
                }
                lastReported = nil
                return await install(release, into: slot, hub: hub)
            }
        } catch let error as UpdateError where error.refused {
            await reportOnce("refused", reason: error.description)
            return outcome("refused: \(error)")
        } catch let error as UpdaterError {
            if case .metadata = error {
                // Rolled-back, frozen (expired), or badly signed metadata: the device keeps what it runs.
                let reason = "the update metadata was refused: \(error)"
                await reportOnce("refused", reason: reason)
                return outcome("refused: \(reason)")
            }
            return outcome("check failed: \(String("\(error)".prefix(200)))")
        } catch {
            return outcome("check failed: \(String("\(error)".prefix(200)))")
        }
    }

    struct Planned: Sendable {
        var decision: UpdateDecision
        var fetched: Int64
        /// The assigned release as this device's TUF client verified it (nil: none, or not verified).
        var release: Release? = nil
    }

    /// Over one pinned connection: the verified assignment, the decision, and when it is an install, the download
    /// (streamed to `ROOT/<slot>.part`, abandoned when it stalls).
    nonisolated static func plan(
        state: AgentState, apiURL: String, trustLock: AsyncLock, trustDirectory: String, record: BootRecord,
        floor: Int, slotsRoot: String, settings: UpdateSettings,
        starting: @escaping @Sendable (Release, Slot) async -> Void,
        progress: @escaping @Sendable (Int64, Int64) -> Void
    ) async throws -> Planned {
        try await HubLink.open(state, apiURL: apiURL) { link in
            // The metadata and the assignment within `requestTimeoutSeconds` (slow-retrieval attack, TUF §5): a hub
            // that stalls never holds the trust directory for long.
            let (assigned, verified, urlPath) = try await trustLock.run {
                try await Watchdog(seconds: settings.requestTimeoutSeconds, onStall: link.connection.closer).run {
                    try await verifiedAssignment(
                        link, state: state, trustDirectory: trustDirectory, now: settings.clock())
                }
            }
            let decision = UpdateDecision.decide(
                assigned: assigned, verified: verified, record: record, floor: floor,
                requireGate: settings.requireGate)
            guard case .install(let release, let slot) = decision, let urlPath else {
                return Planned(decision: decision, fetched: 0, release: verified)
            }
            let download = TargetDownload(
                release: release, urlPath: urlPath, file: "\(slotsRoot)/\(slot.rawValue).part")
            try download.requireSpace(in: slotsRoot)
            await starting(release, slot)
            let watchdog = Watchdog(seconds: settings.stallSeconds, onStall: link.connection.closer)
            let outcome = try await watchdog.run {
                try await download.run(link) { received, total in
                    watchdog.touch()
                    progress(received, total)
                }
            }
            return Planned(decision: decision, fetched: outcome.fetched)
        }
    }

    private func outcome(_ text: String) -> String {
        lastOutcome = text
        writeStatus()
        return text
    }

    /// `STATE/update.json`, for `bulwark agent status` (replaced atomically).
    public var statusJSON: [UInt8] {
        var object = JSONObject()
        object.set("floor", .integer(Int64(floor)))
        object.set("payloadRunning", .bool(payloadRunning))
        object.set("lastFetchedBytes", .integer(Int64(lastFetchedBytes)))
        object.set("sequence", .integer(Int64(sequence)))
        if let active = record.active {
            object.set("active", .string(active.rawValue))
            if let release = record.release(in: active) { object.set("activeVersion", .string(release.name)) }
        }
        if let trial = record.trial {
            object.set("trial", .string(trial.rawValue))
            if let release = record.release(in: trial) { object.set("trialVersion", .string(release.name)) }
        }
        if let lastStep { object.set("lastStep", .string(lastStep)) }
        if let lastOutcome { object.set("lastOutcome", .string(lastOutcome)) }
        if let lastCheck { object.set("lastCheck", .string(AgentStatus.time(lastCheck))) }
        if let protection { object.set("protection", .string(protection)) }
        return JSONValue.object(object).serialized(sortingKeys: true)
    }

    private func writeStatus() {
        try? Outbox.write(stateDirectory + "/update.json", statusJSON, directory: stateDirectory, mode: 0o644)
    }

    /// TUF refresh over the link, then the hub's assignment, then the assigned target as *this device's* TUF client
    /// finds it (delegations followed, TUF §5.6.7).
    static func verifiedAssignment(_ link: HubLink, state: AgentState, trustDirectory: String, now: Date) async throws
        -> (String?, Release?, String?)
    {
        // One request when nothing changed (the next-root answer, the timestamp, the assignment); the TUF client
        // verifies all of it as if fetched file by file, and fetches whatever else changed.
        let check = try await link.check()
        let updater = try Updater(
            metadataBaseURL: "https://hub/v1/updates/metadata/",
            metadataStore: DirectoryStore(directory: trustDirectory),
            fetcher: LinkFetcher(link: link, check: check),
            referenceTime: Timestamp8601(secondsSinceEpoch: Int64(now.timeIntervalSince1970)),
            config: state.updaterConfig)
        try await updater.refresh()
        let assigned: String?
        if let check { assigned = check.assigned } else { assigned = try await link.assignment() }
        guard let assigned else { return (nil, nil, nil) }
        guard let target = try await updater.targetInfo(for: assigned) else { return (assigned, nil, nil) }
        guard let release = Release(target) else {
            throw UpdateError(
                "the signed entry of \(UpdateDecision.printable(assigned)) lists no usable hash or an invalid "
                    + "security version", refused: true)
        }
        let consistent = await updater.trustedSet.root.signed.consistentSnapshot
        return (assigned, release, TargetDownload.urlPath(target, consistentSnapshot: consistent))
    }

    // MARK: Install and trial

    private func install(_ release: Release, into slot: Slot, hub: @escaping @Sendable () async -> Bool) async -> String
    {
        let part = "\(slots.root)/\(slot.rawValue).part"
        let download = TargetDownload(release: release, urlPath: "", file: part)
        do {
            // The slot's old release is forgotten before its files go: a slot is never named for what it no longer
            // holds (a fallback could otherwise start an unchecked release under an old name).
            if record.releases[slot.rawValue] != nil {
                record.releases[slot.rawValue] = nil
                try slots.write(record)
            }
            try slots.clear(slot)
            // The archive is hashed again as it is extracted, from the one descriptor it is read through: what is
            // installed is exactly what matched the signed hashes.
            protection = try slots.install(slot, from: part, verifying: release)
            try slots.verify(slot)
        } catch {
            // A signed release that cannot be installed here will not install next time either: not retried.
            download.discard()
            try? slots.clear(slot)
            // Only when the signed artifact itself is unusable; a full disk or a read error may pass next time.
            if (error as? SlotError)?.permanent == true {
                record.reject(release.identity)
                try? slots.write(record)
            }
            let reason = "cannot install \(release.name) into slot \(slot.rawValue): \(error)"
            await reportOnce("refused", reason: reason, release: release, slot: slot)
            return outcome("refused: \(reason)")
        }
        record.beginTrial(slot, release: release, attempts: settings.trialAttempts)
        do { try slots.write(record) } catch {
            // Never started: back to no trial, and not held against the release.
            record.trial = nil
            record.attemptsLeft = 0
            return outcome("cannot write the boot record: \(error)")
        }
        // Removed only now: a kill before this point finds the verified download and installs it again.
        download.discard()
        await report("installed", release: release, slot: slot, reason: protection)
        return await runTrial(slot, hub: hub)
    }

    /// The trial: the new payload runs and the gate decides. Pass: commit (and raise the floor). Anything else:
    /// roll back to the committed slot, verified before it starts.
    @discardableResult
    private func runTrial(_ slot: Slot, hub: @escaping @Sendable () async -> Bool) async -> String {
        let release = record.release(in: slot)
        await report("trial", release: release, slot: slot)
        trialExit = nil
        var gate = HealthGate(requiredProbes: settings.healthProbes, windowSeconds: settings.healthWindowSeconds)
        let started = ContinuousClock.now
        func elapsed() -> Double {
            let duration = ContinuousClock.now - started
            return Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
        }
        if settings.payload.isEmpty {
            // Nothing to run: the gate is the hub being reachable, and probes only when a command is configured.
        } else if let failure = await startPayload(slot, trial: true) {
            return await rollBack(slot, reason: failure)
        }
        let reached = ReachedFlag()
        let window = settings.healthWindowSeconds
        let hubCheck = Task {
            let deadline = ContinuousClock.now + .milliseconds(Int64(window * 1000))
            while !Task.isCancelled, ContinuousClock.now < deadline {
                if await hub() {
                    reached.set()
                    return
                }
                try? await Task.sleep(for: .milliseconds(500))
            }
        }
        defer { hubCheck.cancel() }
        var nextProbe = elapsed() + settings.healthIntervalSeconds
        while gate.verdict == .pending, !stopped {
            if let status = trialExit { _ = gate.payloadExited(status: status, at: elapsed()) }
            if reached.value, !gate.hubReached { _ = gate.reachedHub(at: elapsed()) }
            if gate.verdict == .pending, elapsed() >= nextProbe, gate.passes < gate.requiredProbes {
                let (code, timedOut) = await probe(slot)
                if let status = trialExit {
                    _ = gate.payloadExited(status: status, at: elapsed())
                } else {
                    _ = gate.probe(exitCode: code, timedOut: timedOut, at: elapsed())
                }
                nextProbe = elapsed() + settings.healthIntervalSeconds
            }
            if gate.verdict == .pending {
                _ = gate.tick(at: elapsed())
                try? await Task.sleep(for: .milliseconds(50))
            }
        }
        if stopped { return outcome("stopped during the trial of \(release?.name ?? "slot \(slot.rawValue)")") }
        switch gate.verdict {
        case .passed:
            guard let committed = record.commit() else { return outcome("no trial to commit") }
            do { try slots.write(record) } catch { return outcome("cannot write the boot record: \(error)") }
            if committed.securityVersion > floor { raiseFloor(to: committed.securityVersion) }
            restartDelay = settings.restartInitialSeconds
            await report("committed", release: committed, slot: slot)
            return outcome("committed: \(committed.name) in slot \(slot.rawValue)")
        case .failed(let reason):
            return await rollBack(slot, reason: reason)
        case .pending:
            return await rollBack(slot, reason: "the health gate did not finish")
        }
    }

    private func rollBack(_ slot: Slot, reason: String) async -> String {
        let release = record.release(in: slot)
        // The decision is on disk before the failed payload is stopped (which may take its grace period): a kill in
        // between must not give the failed release another attempt.
        record.rollBack()
        let written: Error?
        do {
            try slots.write(record)
            written = nil
        } catch { written = error }
        payloadGeneration += 1
        await payload?.stop()
        payload = nil
        if let written { _ = outcome("cannot write the boot record: \(written)") }
        await report("rolled-back", release: release, slot: slot, reason: reason)
        if let active = record.active { await startPayload(active) }
        return outcome("rolled back \(release?.name ?? "slot \(slot.rawValue)"): \(reason)")
    }

    /// One health probe: the configured command (exit 0 within the timeout), or, without one, the payload running.
    private func probe(_ slot: Slot) async -> (Int32, Bool) {
        let command = settings.healthCommand.map {
            $0.replacingOccurrences(of: "{slot}", with: slots.directory(of: slot))
        }
        guard command.first != nil else {
            return (payload?.isRunning == true || settings.payload.isEmpty ? 0 : 1, false)
        }
        // The probe ships with the release: it runs with the payload's privileges, never the agent's.
        guard let argv = try? PayloadProcess.privileges(command, user: settings.payloadUser), let program = argv.first
        else { return (127, false) }
        var handler = ProcessCommandHandler(
            executable: program, arguments: Array(argv.dropFirst()), timeoutSeconds: settings.healthTimeoutSeconds)
        handler.appendsName = false
        let outcome = await handler.run(AgentCommand(name: "health", body: []))
        return (outcome.exitCode, outcome.timedOut)
    }

    private func raiseFloor(to value: Int) {
        do {
            try Outbox.write(floorFile, Array("\(value)\n".utf8), directory: trustDirectory, mode: 0o600)
            floor = value
        } catch {
            lastOutcome = "cannot raise the floor to \(value): \(error)"
        }
    }

    // MARK: The payload

    /// Starts the payload from `slot` after checking the slot against its manifest. A tampered slot is reported
    /// (`slot-tampered`); outside a trial the agent then falls back to the other slot when it verifies and is not
    /// below the floor, or runs nothing. Returns why it did not start, or nil.
    @discardableResult
    private func startPayload(_ slot: Slot, trial: Bool = false) async -> String? {
        guard !settings.payload.isEmpty, !stopped else { return nil }
        payloadGeneration += 1
        let starting = payloadGeneration
        await payload?.stop()
        payload = nil
        // While the old payload stopped, the agent may have been stopped or another start begun: that one wins.
        guard !stopped, starting == payloadGeneration else { return trial ? "the trial's start was overtaken" : nil }
        // A slot whose release is below the floor never runs outside a trial either (a boot record edited behind
        // the agent's back is as good as a tampered slot).
        let belowFloor = record.release(in: slot).map { $0.securityVersion < floor } ?? false
        let verified: String?
        do {
            try slots.verify(slot)
            verified = belowFloor ? "slot \(slot.rawValue) holds a release below the floor \(floor)" : nil
        } catch { verified = "\(error)" }
        if let reason = verified {
            if trial {
                await report("slot-tampered", release: record.release(in: slot), slot: slot, reason: reason)
                return reason
            }
            // Decided before any await (a check may install and start a trial meanwhile): the other slot is a
            // fallback only when it holds a release that was committed here (not on trial, never rejected), at or
            // above the floor, and verifies.
            let other = slot.other
            var fallback: Release?
            if record.active == slot, record.trial == nil, let candidate = record.release(in: other),
                candidate.securityVersion >= floor, !record.rejected.contains(candidate.identity),
                (try? slots.verify(other)) != nil
            {
                fallback = candidate
                record.active = other
            } else if record.active == slot {
                // Nothing trustworthy is committed any more: the next check installs the assigned release.
                record.active = nil
            }
            try? slots.write(record)
            await report("slot-tampered", release: record.release(in: slot), slot: slot, reason: reason)
            if let fallback {
                await report(
                    "rolled-back", release: fallback, slot: other,
                    reason: "fell back from tampered slot \(slot.rawValue)")
                guard record.active == other, record.trial == nil else { return reason }
                return await startPayload(other)
            }
            _ = outcome("payload stopped: \(reason)")
            return reason
        }
        let generation = payloadGeneration
        do {
            payload = try PayloadProcess.launch(
                command: settings.payload, slot: slot, directory: slots.directory(of: slot), user: settings.payloadUser,
                pidFile: pidFile
            ) { status in
                Task { await self.payloadExited(generation: generation, status: status) }
            }
        } catch {
            _ = outcome("\(error)")
            // Outside a trial a failed start (EAGAIN, ENOMEM) is tried again, as a payload that died.
            if !trial { payloadExited(generation: generation, status: -1) }
            return "\(error)"
        }
        return nil
    }

    private func payloadExited(generation: Int, status: Int32) {
        guard generation == payloadGeneration, !stopped else { return }
        payload = nil
        if record.trial != nil {
            trialExit = status
            return
        }
        // Outside a trial: start it again (verified again) after a growing wait.
        guard let active = record.active else { return }
        let wait = restartDelay
        restartDelay = min(restartDelay * 2, settings.restartMaximumSeconds)
        restartTask = Task {
            try? await Task.sleep(for: .milliseconds(Int64(wait * 1000)))
            guard !Task.isCancelled else { return }
            await self.restartIfIdle(generation: generation, slot: active)
        }
    }

    private func restartIfIdle(generation: Int, slot: Slot) async {
        guard generation == payloadGeneration, payload == nil, record.trial == nil, !stopped else { return }
        await startPayload(record.active ?? slot)
    }

    public var payloadRunning: Bool { payload?.isRunning == true }
    public var payloadPID: Int32? { payload?.pid }

    // MARK: Reports

    /// `devices/<id>/events/update`: `{"step", "target", "version", "slot", "floor", "reason", "received", "total"}`.
    private func report(
        _ step: String, release: Release? = nil, slot: Slot? = nil, reason: String? = nil,
        progress: (Int64, Int64)? = nil
    ) async {
        lastStep = step
        if step == "rolled-back" { lastRolledBack = release?.identity }
        // Monotonic, and above any number an earlier run used even if `update.json` was lost: milliseconds.
        sequence = max(sequence + 1, Int(Date().timeIntervalSince1970 * 1000))
        var object: [String: Any] = ["step": step, "floor": floor, "sequence": sequence]
        if let release {
            object["target"] = String(release.path.prefix(255))
            object["version"] = String(release.name.prefix(64))
            object["securityVersion"] = release.securityVersion
        }
        if let slot { object["slot"] = slot.rawValue }
        if let reason { object["reason"] = String(reason.prefix(512)) }
        if let progress {
            object["received"] = progress.0
            object["total"] = progress.1
        }
        if let active = record.active {
            object["active"] = active.rawValue
            if let installed = record.release(in: active) {
                object["installed"] = String(installed.path.prefix(255))
                object["installedVersion"] = String(installed.name.prefix(64))
            }
        }
        writeStatus()
        guard let body = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else { return }
        await reporter?(Array(body))
    }

    /// A refusal is reported once, not at every check while it lasts.
    private func reportOnce(_ step: String, reason: String, release: Release? = nil, slot: Slot? = nil) async {
        guard lastReported != reason else { return }
        lastReported = reason
        await report(step, release: release, slot: slot, reason: reason)
    }
}

/// A lock for async code: the agent's TUF refreshes (pins, updates) write the same `STATE/trust` one at a time.
public actor AsyncLock {
    private var busy = false
    private var waiters: [CheckedContinuation<Void, Never>] = []

    public init() {}

    public func run<T: Sendable>(_ body: @Sendable () async throws -> T) async throws -> T {
        if busy {
            await withCheckedContinuation { waiters.append($0) }
        } else {
            busy = true
        }
        defer {
            if waiters.isEmpty { busy = false } else { waiters.removeFirst().resume() }
        }
        return try await body()
    }
}

/// Abandons an operation that makes no progress for `seconds` (each `touch()` restarts the clock).
final class Watchdog: @unchecked Sendable {
    // Guarded by `lock`; touched from the download's reads, read by the timer task.
    private let lock = NSLock()
    private var last = ContinuousClock.now
    let seconds: Double
    let onStall: @Sendable () -> Void

    init(seconds: Double, onStall: @escaping @Sendable () -> Void) {
        self.seconds = seconds
        self.onStall = onStall
    }

    func touch() { lock.withLock { last = ContinuousClock.now } }

    func run<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) async throws -> T {
        try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask { try await body() }
            group.addTask {
                while true {
                    try await Task.sleep(for: .milliseconds(250))
                    let idle = ContinuousClock.now - self.lock.withLock { self.last }
                    if idle > .milliseconds(Int64(self.seconds * 1000)) {
                        // Closing the connection ends the read the download waits on.
                        self.onStall()
                        return nil
                    }
                }
            }
            defer { group.cancelAll() }
            guard let first = try await group.next(), let value = first else {
                throw UpdateError("the download stalled for \(Int(seconds)) s; it resumes at the next check")
            }
            return value
        }
    }
}

/// Set once the hub answered during a trial.
private final class ReachedFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var flag = false
    func set() { lock.withLock { flag = true } }
    var value: Bool { lock.withLock { flag } }
}

extension DeviceUpdater {
    /// `count` update checks that find nothing new (one `GET /v1/updates/check`: the next root, the timestamp, the
    /// assignment), over one kept-alive connection or each over a new one (a full mutual-TLS handshake). For
    /// `bulwark-bench updates`, which measures what they cost the hub.
    public static func checksThatChangeNothing(state: AgentState, apiURL: String, count: Int, keepAlive: Bool)
        async throws
    {
        let trust = state.directory + "/trust"
        if keepAlive {
            try await HubLink.open(state, apiURL: apiURL) { link in
                for _ in 0..<count {
                    _ = try await verifiedAssignment(link, state: state, trustDirectory: trust, now: Date())
                }
            }
        } else {
            for _ in 0..<count {
                try await HubLink.open(state, apiURL: apiURL) { link in
                    _ = try await verifiedAssignment(link, state: state, trustDirectory: trust, now: Date())
                }
            }
        }
    }
}
