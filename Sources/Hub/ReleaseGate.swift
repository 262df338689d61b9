import Advisories
import Core
import Crypto
import Foundation
import Gateway
import Hummingbird
import JSON
import Logging
import Store
import TUF

/// The vulnerability gate on the hub: `POST /v1/releases/gate` matches a release's SBOM against the imported OSV
/// advisories with the hub's waivers and records the decision; `POST /v1/advisories/rescan` re-matches every
/// release that passed and names the devices running one that no longer would. Waivers are made here
/// (`POST /v1/advisories/waivers`) so each one is tied to an operator's certificate and audited. With
/// `release.requireGate`, assignments and rollouts take only targets whose signed custom carries a passed report.
///
/// The rules are `Advisories.GateReport.evaluate`; this applies them to the store and the advisory database.
struct ReleaseGate {
    let store: any HubStore
    /// The advisory database file (`advisories.database`), opened per run so an import by another process is seen.
    let databasePath: String
    let blockSeverity: Severity
    var blockUnchecked = false
    var requireGate = false
    /// The targets the published targets metadata lists (nil: no repository configured).
    var publishedTargets: (@Sendable () -> [TargetFile])?

    /// The largest request body: an SBOM of a large image, base64 in JSON.
    static let maximumBodyBytes = 32 * 1024 * 1024

    func database() throws -> AdvisoryDatabase {
        guard FileManager.default.fileExists(atPath: databasePath) else {
            throw HubError(
                .conflict, "no-advisories",
                message: "no advisory database: import one with `bulwark advisories import` first",
                detail: "no advisory database at \(databasePath)", event: nil)
        }
        do { return try AdvisoryDatabase(path: databasePath) } catch {
            throw HubError(
                .serviceUnavailable, "advisories-unavailable", message: "the advisory database cannot be read",
                detail: "\(error)", event: nil)
        }
    }

    struct Submission {
        var target: String
        var sha256: String
        var version: String
        var securityVersion: Int
        var sbom: [UInt8]
        var vex: [UInt8]?
    }

    /// Text from an operator's request as it goes into an audit record: the gateway's own sanitiser
    /// (ASCII-printable, bounded), with room for a target path.
    static func printable(_ text: String) -> String { MessageSignatureProfile.printable(text, limit: 256) }

    /// Runs the gate over a submission and records the release, passed or blocked, with an audit record. A blocked
    /// run does not replace a passed record of the same bytes (published releases stay known to rescans); it is
    /// audited.
    func gate(_ submission: Submission, by: String, correlationID: String, now: Date) async throws -> (
        ReleaseRecord, GateReport, AdvisoryDatabase.Summary
    ) {
        let sbom: SBOM
        do { sbom = try SBOM(json: submission.sbom) } catch {
            throw HubError(
                .unprocessableContent, "invalid-sbom", message: "the SBOM is refused: \(error)",
                detail: "SBOM of \(Self.printable(submission.target)): \(error)", event: nil)
        }
        var statements: [VEXStatement] = []
        if let vex = submission.vex {
            do { statements = try VEXDocument(json: vex).statements } catch {
                throw HubError(
                    .unprocessableContent, "invalid-vex", message: "the VEX document is refused: \(error)",
                    detail: "VEX of \(Self.printable(submission.target)): \(error)", event: nil)
            }
        }
        let waivers = try await store.waivers()
        let (report, summary) = try database().withSnapshot { summary, source in
            (
                try GateReport.evaluate(
                    sbom: sbom, sbomBytes: submission.sbom, vex: statements, advisories: source, waivers: waivers,
                    blockSeverity: blockSeverity, blockUnchecked: blockUnchecked,
                    now: Int64(now.timeIntervalSince1970)), summary
            )
        }
        var json = report.json
        if case .object(var object) = json {
            object.set("target", .string(submission.target))
            object.set("targetSHA256", .string(submission.sha256))
            object.set("version", .string(submission.version))
            object.set("securityVersion", .integer(Int64(submission.securityVersion)))
            object.set("advisories", .integer(Int64(summary.records)))
            if let at = summary.importedAt {
                object.set("advisoriesImportedAt", .integer(Int64(at.timeIntervalSince1970)))
            }
            json = .object(object)
        }
        let bytes = try CanonicalJSON.encode(json)
        let record = ReleaseRecord(
            target: submission.target, sha256: submission.sha256, version: submission.version,
            securityVersion: submission.securityVersion, sbom: submission.sbom, vex: submission.vex, report: bytes,
            reportSHA256: hexEncode(SHA256.hash(data: bytes)), blocked: report.blocked, at: now, by: by)
        let earlier = try await store.releases().last {
            $0.target == submission.target && $0.sha256 == submission.sha256 && !$0.blocked
        }
        if !(record.blocked && earlier != nil) { try await store.recordRelease(record) }
        let name = "\(Self.printable(submission.target)) \(Self.printable(submission.version)) by \(by)"
        let detail: String
        if report.blocked {
            var reasons = [Self.describe(report.findings.filter(\.blocking))].filter { !$0.isEmpty }
            if report.truncated { reasons.append("more than \(GateReport.maximumFindings) findings") }
            if report.checked == 0 { reasons.append("no component could be checked") }
            if report.blockUnchecked, report.uncheckedCount > 0 {
                reasons.append("\(report.uncheckedCount) components could not be checked")
            }
            detail =
                "\(name): " + reasons.joined(separator: "; ")
                + (earlier == nil ? "" : " (the earlier passed gate run of the same bytes is kept)")
        } else {
            let vex = report.vexUsed.map { "\($0.id) (\($0.justification ?? ""))" }.joined(separator: ", ")
            detail =
                "\(name): \(report.findings.count) findings, \(report.checked) of \(report.components) components "
                + "checked, waivers \(report.waiversUsed.map(\.advisory).joined(separator: ", ")), VEX \(vex)"
        }
        try await store.recordSecurityEvent(
            SecurityEvent(
                at: now, kind: report.blocked ? "release-blocked" : "release-gated", identity: nil,
                correlationID: correlationID, detail: detail))
        return (record, report, summary)
    }

    static func describe(_ findings: [GateReport.Finding]) -> String {
        let named = findings.prefix(5).map { "\($0.advisory) (\($0.severity)) in \(printable($0.purl))" }
        return named.joined(separator: ", ") + (findings.count > 5 ? " and \(findings.count - 5) more" : "")
    }

    /// With `release.requireGate`: why `file` may not be assigned (nil when it may). It must carry, in its signed
    /// custom, the SHA-256 of the report of a gate run that passed for these very bytes.
    func refusal(_ file: TargetFile) async throws -> String? {
        guard requireGate else { return nil }
        guard let digest = file.custom?.objectValue?["gate"]?.objectValue?["sha256"]?.stringValue,
            let sha256 = file.hashes.first(where: { $0.algorithm == "sha256" })?.digest.lowercased()
        else {
            return "\(Self.printable(file.path)) was not published through the vulnerability gate "
                + "(release.requireGate); publish it with `bulwark release publish`"
        }
        let passed = try await store.releases().contains {
            $0.target == file.path && $0.sha256 == sha256 && !$0.blocked && $0.reportSHA256 == digest
        }
        return passed
            ? nil
            : "\(Self.printable(file.path)) names a gate report this hub has no passed gate run for (release.requireGate)"
    }

    struct Rescanned {
        var release: ReleaseRecord
        /// nil when the stored SBOM no longer reads (reported, and counted as blocking when deployed).
        var report: GateReport?
        var devices: [DeviceID]
        var blocked: Bool { report?.blocked ?? true }
        var deployedBlocking: Bool { !devices.isEmpty && blocked }
    }

    /// A published target with no passed gate run for its bytes, and the devices running it.
    struct Ungated {
        var target: String
        var version: String?
        var devices: [DeviceID]
    }

    /// Re-matches every release that passed the gate (the latest passed run of each target's bytes) against today's
    /// advisories and waivers, and names the devices that run each: those whose agents report it committed, by
    /// target path and version. Published targets that never passed the gate are named with their devices too.
    /// One audit record per deployed release that would now be blocked, one per deployed ungated target, and one
    /// for the run.
    func rescan(by: String, correlationID: String, now: Date) async throws -> (
        [Rescanned], [Ungated], AdvisoryDatabase.Summary
    ) {
        let waivers = try await store.waivers()
        let states = try await store.updateStates()
        var latest: [String: ReleaseRecord] = [:]
        for release in try await store.releases() where !release.blocked {
            latest[release.target + "\u{0}" + release.sha256] = release
        }
        let releases = latest.values.sorted { ($0.at, $0.target) < ($1.at, $1.target) }
        let (results, summary) = try database().withSnapshot { summary, source in
            var results: [Rescanned] = []
            for release in releases {
                let devices = states.filter {
                    $0.installedTarget == release.target && $0.installedVersion == release.version
                }.map(\.deviceID)
                guard let sbom = try? SBOM(json: release.sbom) else {
                    results.append(Rescanned(release: release, report: nil, devices: devices))
                    continue
                }
                let statements = release.vex.flatMap { try? VEXDocument(json: $0).statements } ?? []
                let report = try GateReport.evaluate(
                    sbom: sbom, sbomBytes: release.sbom, vex: statements, advisories: source, waivers: waivers,
                    blockSeverity: blockSeverity, blockUnchecked: blockUnchecked,
                    now: Int64(now.timeIntervalSince1970))
                results.append(Rescanned(release: release, report: report, devices: devices))
            }
            return (results, summary)
        }
        var ungated: [Ungated] = []
        for file in publishedTargets?() ?? [] {
            let sha256 = file.hashes.first { $0.algorithm == "sha256" }?.digest.lowercased()
            guard !releases.contains(where: { $0.target == file.path && $0.sha256 == sha256 }) else { continue }
            let version = file.custom?.objectValue?["version"]?.stringValue
            let devices = states.filter {
                $0.installedTarget == file.path && (version == nil || $0.installedVersion == version)
            }.map(\.deviceID)
            ungated.append(Ungated(target: file.path, version: version, devices: devices))
        }
        ungated.sort { $0.target < $1.target }
        for result in results where result.deployedBlocking {
            let reason =
                result.report.map { Self.describe($0.findings.filter(\.blocking)) }
                ?? "its stored SBOM no longer reads"
            try await store.recordSecurityEvent(
                SecurityEvent(
                    at: now, kind: "vulnerable-release-deployed", identity: nil, correlationID: correlationID,
                    detail: "\(Self.printable(result.release.target)) \(Self.printable(result.release.version)) on "
                        + "\(Self.devices(result.devices)): \(reason)"))
        }
        for target in ungated where !target.devices.isEmpty {
            try await store.recordSecurityEvent(
                SecurityEvent(
                    at: now, kind: "ungated-release-deployed", identity: nil, correlationID: correlationID,
                    detail: "\(Self.printable(target.target)) \(Self.printable(target.version ?? "")) on "
                        + "\(Self.devices(target.devices)): it never passed the vulnerability gate"))
        }
        let deployed = results.filter(\.deployedBlocking).count + ungated.filter { !$0.devices.isEmpty }.count
        try await store.recordSecurityEvent(
            SecurityEvent(
                at: now, kind: "advisories-rescanned", identity: nil, correlationID: correlationID,
                detail: "\(results.count) gated releases and \(ungated.count) ungated targets against "
                    + "\(summary.records) advisories (imported \(summary.importedFrom.map { Self.printable($0) } ?? "-")) "
                    + "by \(by): \(results.filter(\.blocked).count) would now be blocked; \(deployed) deployed "
                    + "releases need attention"))
        return (results, ungated, summary)
    }

    static func devices(_ devices: [DeviceID]) -> String {
        let shown = devices.prefix(20).map(\.rawValue).joined(separator: ", ")
        return "\(devices.count) devices (\(shown)\(devices.count > 20 ? ", …" : ""))"
    }
}
