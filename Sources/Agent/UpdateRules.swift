public import TUF

/// A release as the device's own TUF client verified it (TUF §5.7: the target's signed length and hashes); never as
/// the hub's assignment describes it. `securityVersion` and `version` come from the target's signed `custom` fields
/// (`bulwark tuf add-target --security-version N`); a target without one has security version 0.
public struct Release: Sendable, Equatable, Codable {
    public var path: String
    public var length: Int64
    /// Algorithm → lowercase hex digest, every hash the signed metadata lists (all are checked).
    public var hashes: [String: String]
    public var securityVersion: Int
    public var version: String?
    /// The SHA-256 of the vulnerability gate's report and of the SBOM it checked (`bulwark release publish` signs
    /// them into the target's `custom`); nil for a target added without the gate.
    public var gateReport: String?
    public var sbom: String?

    public init(
        path: String, length: Int64, hashes: [String: String], securityVersion: Int = 0, version: String? = nil,
        gateReport: String? = nil, sbom: String? = nil
    ) {
        self.path = path
        self.length = length
        self.hashes = hashes
        self.securityVersion = securityVersion
        self.version = version
        self.gateReport = gateReport
        self.sbom = sbom
    }

    /// Whether the target carries the gate's evidence: the SBOM's and the report's SHA-256, the security version
    /// and the waivers used (an array, maybe empty), all inside signed targets metadata.
    public var passedGate: Bool { gateReport != nil && sbom != nil }

    /// From a target the TUF client found in trusted targets metadata. Nil when it lists no hash the agent can
    /// compute as the bytes arrive (SHA-256, SHA-384, SHA-512) or a security version that is not a non-negative
    /// integer: such a target is refused, not guessed at.
    public init?(_ target: TargetFile) {
        var hashes: [String: String] = [:]
        for (algorithm, digest) in target.hashes where Hashing.supportedAlgorithms.contains(algorithm) {
            hashes[algorithm] = digest.lowercased()
        }
        guard !hashes.isEmpty else { return nil }
        let custom = target.custom?.objectValue
        var securityVersion = 0
        if let value = custom?["securityVersion"] {
            guard let integer = value.integerValue, (0...Int64(Int32.max)).contains(integer) else { return nil }
            securityVersion = Int(integer)
        }
        var gateReport: String?
        var sbom: String?
        if let gate = custom?["gate"]?.objectValue, let digest = gate["sha256"]?.stringValue,
            Self.isSHA256(digest), gate["waivers"]?.arrayValue != nil, custom?["securityVersion"] != nil,
            let sbomDigest = custom?["sbom"]?.objectValue?["sha256"]?.stringValue, Self.isSHA256(sbomDigest)
        {
            gateReport = digest
            sbom = sbomDigest
        }
        self.init(
            path: target.path, length: target.length, hashes: hashes, securityVersion: securityVersion,
            version: custom?["version"]?.stringValue, gateReport: gateReport, sbom: sbom)
    }

    static func isSHA256(_ text: String) -> Bool {
        text.utf8.count == 64 && text.utf8.allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }
    }

    /// What identifies the bytes: the strongest hash listed.
    public var identity: String {
        for algorithm in ["sha512", "sha384", "sha256"] { if let digest = hashes[algorithm] { return digest } }
        return ""
    }

    /// How reports name it: the signed `version` when there is one, else the target path.
    public var name: String { version ?? path }
}

/// The two slots of an A/B device (Mender's and RAUC's layout): one runs, the other receives the next release.
public enum Slot: String, Sendable, Codable, CaseIterable {
    case a, b
    public var other: Slot { self == .a ? .b : .a }
}

/// The boot record (`STATE/slots/boot`, replaced atomically): which slot is committed, which one is on trial and how
/// many more starts the trial gets, what each slot holds, and the releases that failed here. It is the seam a real
/// bootloader takes over (RAUC's `BOOT_ORDER`, U-Boot's `bootcount`/`upgrade_available`): the rules below are the
/// same whoever applies them.
public struct BootRecord: Sendable, Equatable, Codable {
    /// The committed slot: the last release that passed its health gate (nil before the first install).
    public var active: Slot?
    /// The slot on trial, started and not yet committed.
    public var trial: Slot?
    /// Starts of the trial slot left before the trial counts as failed (decremented before each start, as U-Boot's
    /// bootcount is incremented before the kernel runs: a start that never reports counts).
    public var attemptsLeft = 0
    public var releases: [String: Release] = [:]
    /// Identities of releases that rolled back on this device: not installed again automatically (the next release
    /// will be), bounded.
    public var rejected: [String] = []

    public init() {}

    public func release(in slot: Slot) -> Release? { releases[slot.rawValue] }

    /// The slot the next release goes into: never the committed one.
    public var inactive: Slot { active?.other ?? .a }

    /// What to run when the agent starts (a boot, in a bootloader's terms).
    public enum StartDecision: Sendable, Equatable {
        /// Nothing is installed yet.
        case nothing
        /// Run the committed slot.
        case runActive(Slot)
        /// A trial was under way: start it again (one attempt used) and run the health gate.
        case resumeTrial(Slot)
        /// A trial was under way and has no attempts left: it failed; run the committed slot (if any).
        case rollBack(trial: Slot, to: Slot?, reason: String)
    }

    /// Applied at every start, and persisted before anything runs.
    public mutating func atStart() -> StartDecision {
        if let trial {
            if attemptsLeft > 0 {
                attemptsLeft -= 1
                return .resumeTrial(trial)
            }
            let reason =
                "the trial of \(release(in: trial)?.name ?? "slot \(trial.rawValue)") did not pass its health "
                + "gate before the agent stopped, and has no attempts left"
            rollBack()
            return .rollBack(trial: trial, to: active, reason: reason)
        }
        return active.map { .runActive($0) } ?? .nothing
    }

    /// The inactive slot now holds `release` (written and verified): put it on trial. The first start uses one attempt.
    public mutating func beginTrial(_ slot: Slot, release: Release, attempts: Int) {
        releases[slot.rawValue] = release
        trial = slot
        attemptsLeft = max(0, attempts - 1)
    }

    /// Remembers a release that failed here (at most 16 are kept, the oldest forgotten first).
    public mutating func reject(_ identity: String) {
        guard !rejected.contains(identity) else { return }
        rejected.append(identity)
        if rejected.count > 16 { rejected.removeFirst(rejected.count - 16) }
    }

    /// The health gate passed: the trial slot becomes the committed one. Returns the release committed.
    @discardableResult
    public mutating func commit() -> Release? {
        guard let trial else { return nil }
        active = trial
        self.trial = nil
        attemptsLeft = 0
        let identity = release(in: trial)?.identity
        rejected.removeAll { $0 == identity }
        return release(in: trial)
    }

    /// The trial failed: the committed slot stays, the release is remembered as rejected.
    public mutating func rollBack() {
        guard let trial else { return }
        if let identity = release(in: trial)?.identity { reject(identity) }
        self.trial = nil
        attemptsLeft = 0
    }
}

/// What an update check decides, given the hub's assignment and what the device's TUF client verified.
public enum UpdateDecision: Sendable, Equatable {
    /// No release is assigned to this device.
    case nothing
    /// The assigned release is the one committed.
    case current(Release)
    /// A trial is under way: no new install until it ends.
    case busy
    /// Install this release into this slot.
    case install(Release, Slot)
    /// Refused, with the reason reported to the hub; the device stays on what it runs.
    case refuse(String)

    /// The rules, in order: an assignment must name a target the TUF client found in signed metadata (the hub chooses
    /// among signed releases, never introduces bytes); a security version below the floor is refused (also when the
    /// hub assigns it: MCUboot's anti-rollback counter); a release that rolled back here is not retried; the one
    /// committed is current.
    ///
    /// With `requireGate`, a release that does not carry the vulnerability gate's evidence in its signed `custom`
    /// (`bulwark release publish`) is refused too.
    public static func decide(
        assigned: String?, verified: Release?, record: BootRecord, floor: Int, requireGate: Bool = false
    ) -> UpdateDecision {
        guard let assigned else { return .nothing }
        guard let release = verified, release.path == assigned else {
            return .refuse("the assigned target \(printable(assigned)) is not in the signed targets metadata")
        }
        if let active = record.active, let committed = record.release(in: active),
            committed.identity == release.identity
        {
            return .current(committed)
        }
        if record.trial != nil { return .busy }
        if requireGate, !release.passedGate {
            return .refuse(
                "\(printable(release.name)) was not published through the vulnerability gate (no SBOM and gate report "
                    + "in its signed custom fields), and this device requires it")
        }
        guard release.securityVersion >= floor else {
            return .refuse(
                "\(printable(release.name)) has security version \(release.securityVersion), below this device's floor "
                    + "\(floor)")
        }
        if record.rejected.contains(release.identity) {
            return .refuse("\(printable(release.name)) rolled back on this device before; waiting for another release")
        }
        return .install(release, record.inactive)
    }

    static func printable(_ text: String) -> String {
        String(
            String.UnicodeScalarView(
                text.unicodeScalars.prefix(120).map { $0.value < 0x20 || $0.value == 0x7F ? "?" : $0 }))
    }
}

/// The health gate of a trial (RAUC's "mark good" after a healthy boot, Mender's commit after the update module's
/// check): `requiredProbes` consecutive successful probes of the payload, the payload still running, and the agent
/// reaching the hub over pinned mutual TLS, all within `windowSeconds` of the start. Any probe failing or timing
/// out, the payload exiting, or the window ending first fails it. Time is passed in (seconds since the trial
/// started); the runner only feeds events and applies the verdict.
public struct HealthGate: Sendable, Equatable {
    public enum Verdict: Sendable, Equatable {
        case pending
        case passed
        case failed(String)
    }

    public let requiredProbes: Int
    public let windowSeconds: Double
    public private(set) var passes = 0
    public private(set) var hubReached = false
    public private(set) var verdict = Verdict.pending

    public init(requiredProbes: Int = 3, windowSeconds: Double) {
        self.requiredProbes = max(1, requiredProbes)
        self.windowSeconds = windowSeconds
    }

    /// A probe ended: exit status 0 in time is a pass.
    public mutating func probe(exitCode: Int32, timedOut: Bool, at seconds: Double) -> Verdict {
        guard verdict == .pending else { return verdict }
        if timedOut {
            verdict = .failed("the health probe did not answer in time")
        } else if exitCode != 0 {
            verdict = .failed("the health probe failed (exit status \(exitCode))")
        } else {
            passes += 1
        }
        return settle(at: seconds)
    }

    public mutating func payloadExited(status: Int32, at seconds: Double) -> Verdict {
        guard verdict == .pending else { return verdict }
        verdict = .failed("the payload exited during its trial (status \(status))")
        return verdict
    }

    /// The agent reached the hub over pinned mutual TLS after the switch.
    public mutating func reachedHub(at seconds: Double) -> Verdict {
        guard verdict == .pending else { return verdict }
        hubReached = true
        return settle(at: seconds)
    }

    public mutating func tick(at seconds: Double) -> Verdict {
        guard verdict == .pending else { return verdict }
        return settle(at: seconds)
    }

    private mutating func settle(at seconds: Double) -> Verdict {
        if verdict == .pending {
            if passes >= requiredProbes, hubReached {
                verdict = .passed
            } else if seconds > windowSeconds {
                verdict = .failed(
                    hubReached
                        ? "the health gate did not pass within \(Int(windowSeconds)) s (\(passes) of \(requiredProbes) probes)"
                        : "the agent did not reach the hub within \(Int(windowSeconds)) s of the switch")
            }
        }
        return verdict
    }
}
