import Advisories
import Core
import Crypto
import Foundation
import Hummingbird
import Logging
import Store
import TUF

/// The vulnerability gate on the hub: `POST /v1/releases/gate` matches a release's SBOM against the imported OSV
/// advisories with the hub's waivers and records the decision; `POST /v1/advisories/rescan` re-matches every
/// release that passed and names the devices running one that no longer would. Waivers are made here
/// (`POST /v1/advisories/waivers`) so each one is tied to an operator's certificate and audited.
///
/// The rules are `Advisories.GateReport.evaluate`; this applies them to the store and the advisory database.
struct ReleaseGate {
    let store: any HubStore
    /// The advisory database file (`advisories.database`), opened per run so an import by another process is seen.
    let databasePath: String
    let blockSeverity: Severity

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

    /// Runs the gate over a submission and records the release, passed or blocked, with an audit record.
    func gate(_ submission: Submission, by: String, correlationID: String, now: Date) async throws -> (
        ReleaseRecord, GateReport, AdvisoryDatabase.Summary
    ) {
        let sbom: SBOM
        do { sbom = try SBOM(json: submission.sbom) } catch {
            throw HubError(
                .unprocessableContent, "invalid-sbom", message: "the SBOM is refused: \(error)",
                detail: "SBOM of \(submission.target): \(error)", event: nil)
        }
        var statements: [VEXStatement] = []
        if let vex = submission.vex {
            do { statements = try VEXDocument(json: vex).statements } catch {
                throw HubError(
                    .unprocessableContent, "invalid-vex", message: "the VEX document is refused: \(error)",
                    detail: "VEX of \(submission.target): \(error)", event: nil)
            }
        }
        let database = try database()
        let summary = try database.summary()
        let report = try GateReport.evaluate(
            sbom: sbom, sbomBytes: submission.sbom, vex: statements, advisories: database,
            waivers: try await store.waivers(), blockSeverity: blockSeverity, now: Int64(now.timeIntervalSince1970))
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
        try await store.recordRelease(record)
        let blocking = report.findings.filter(\.blocking)
        try await store.recordSecurityEvent(
            SecurityEvent(
                at: now, kind: report.blocked ? "release-blocked" : "release-gated", identity: nil,
                correlationID: correlationID,
                detail: report.blocked
                    ? "\(submission.target) \(submission.version) by \(by): "
                        + Self.describe(blocking)
                    : "\(submission.target) \(submission.version) by \(by): \(report.findings.count) findings, "
                        + "\(report.waiversUsed.count) waivers and \(report.vexUsed.count) VEX statements used"))
        return (record, report, summary)
    }

    static func describe(_ findings: [GateReport.Finding]) -> String {
        let named = findings.prefix(5).map { "\($0.advisory) (\($0.severity)) in \($0.purl)" }
        return named.joined(separator: ", ") + (findings.count > 5 ? " and \(findings.count - 5) more" : "")
    }

    struct Rescanned {
        var release: ReleaseRecord
        var report: GateReport
        var devices: [DeviceID]
        var deployedBlocking: Bool { !devices.isEmpty && report.blocked }
    }

    /// Re-matches every release that passed the gate against today's advisories and waivers, and names the devices
    /// that run each (the committed release their agents report). One audit record per deployed release that would
    /// now be blocked, and one for the run.
    func rescan(by: String, correlationID: String, now: Date) async throws -> ([Rescanned], AdvisoryDatabase.Summary) {
        let database = try database()
        let summary = try database.summary()
        let waivers = try await store.waivers()
        let states = try await store.updateStates()
        var results: [Rescanned] = []
        for release in try await store.releases() where !release.blocked {
            guard let sbom = try? SBOM(json: release.sbom) else { continue }
            let statements = release.vex.flatMap { try? VEXDocument(json: $0).statements } ?? []
            let report = try GateReport.evaluate(
                sbom: sbom, sbomBytes: release.sbom, vex: statements, advisories: database, waivers: waivers,
                blockSeverity: blockSeverity, now: Int64(now.timeIntervalSince1970))
            let devices = states.filter { $0.installedTarget == release.target }.map(\.deviceID)
            results.append(Rescanned(release: release, report: report, devices: devices))
        }
        for result in results where result.deployedBlocking {
            let shown = result.devices.prefix(20).map(\.rawValue).joined(separator: ", ")
            try await store.recordSecurityEvent(
                SecurityEvent(
                    at: now, kind: "vulnerable-release-deployed", identity: nil, correlationID: correlationID,
                    detail: "\(result.release.target) \(result.release.version) on \(result.devices.count) devices "
                        + "(\(shown)\(result.devices.count > 20 ? ", …" : "")): "
                        + Self.describe(result.report.findings.filter(\.blocking))))
        }
        let deployed = results.filter(\.deployedBlocking).count
        try await store.recordSecurityEvent(
            SecurityEvent(
                at: now, kind: "advisories-rescanned", identity: nil, correlationID: correlationID,
                detail: "\(results.count) releases against \(summary.records) advisories by \(by): "
                    + "\(results.filter(\.report.blocked).count) would now be blocked, \(deployed) of them deployed"))
        return (results, summary)
    }
}
