import Advisories
import ArgumentParser
import Foundation
import Store

/// The vulnerability gate's figure (issue: "OSV matching of a 2,000-component SBOM against a 100,000-record database
/// < 1 s and its memory"): synthetic OSV records in the real schema across eight ecosystems, imported into the
/// advisory database as `bulwark advisories import` does, and a CycloneDX SBOM of which half the components have
/// advisories. The match runs in a fresh process (this binary, `advisories-match`) so its time and peak memory are
/// those of a cold gate run: open the database, parse the SBOM, match, write the canonical report.
struct AdvisoriesBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "advisories", abstract: "SBOM matching against an OSV database: time and peak memory.")
    @Option(help: "OSV records in the database.") var records = 100_000
    @Option(help: "Components in the SBOM.") var components = 2_000
    @Option(help: "Cold runs (each a fresh process).") var runs = 5
    @Option(help: "Work in this directory and keep the database and SBOM (for a profiler).") var keep: String?

    static let ecosystems: [(osv: String, purl: String, version: @Sendable (Int) -> String)] = [
        ("PyPI", "pypi", { "1.\($0 % 20).\($0 % 7)" }), ("npm", "npm", { "4.\($0 % 30).\($0 % 11)" }),
        ("Maven", "maven", { "2.\($0 % 17).\($0 % 5)" }), ("Debian:12", "deb", { "3.0.\($0 % 19)-1~deb12u\($0 % 3)" }),
        ("Go", "golang", { "v1.\($0 % 23).\($0 % 9)" }), ("crates.io", "cargo", { "0.\($0 % 40).\($0 % 13)" }),
        ("SwiftURL", "swift", { "2.\($0 % 60).\($0 % 4)" }), ("RubyGems", "gem", { "5.\($0 % 9).0" }),
    ]

    static func packageName(_ ecosystem: Int, _ index: Int) -> (osv: String, purl: String) {
        switch ecosystems[ecosystem].purl {
        case "maven": ("org.example.g\(index % 97):artifact-\(index)", "org.example.g\(index % 97)/artifact-\(index)")
        case "golang": ("github.com/example/module-\(index)", "github.com/example/module-\(index)")
        case "swift": ("github.com/example/package-\(index)", "github.com/example/package-\(index)")
        default: ("package-\(index)", "package-\(index)")
        }
    }

    func run() async throws {
        guard (100...1_000_000).contains(records), (10...100_000).contains(components), (1...50).contains(runs) else {
            throw ValidationError("records 100-1000000, components 10-100000, runs 1-50")
        }
        let base =
            keep ?? FileManager.default.temporaryDirectory.appendingPathComponent("bulwark-osvbench-\(UUID())").path
        try FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: true)
        defer { if keep == nil { try? FileManager.default.removeItem(atPath: base) } }
        // Packages carry about 2.5 records each; the SBOM names packages with and without advisories.
        let packages = max(1, records * 2 / 5)
        print("bulwark-bench advisories: \(records) OSV records over \(packages) packages, SBOM of \(components)")
        var parsed: [(record: OSVRecord, body: [UInt8])] = []
        parsed.reserveCapacity(records)
        let generateStart = ContinuousClock.now
        for index in 0..<records {
            let ecosystem = index % Self.ecosystems.count
            let package = (index / Self.ecosystems.count * Self.ecosystems.count + ecosystem) % packages
            let name = Self.packageName(ecosystem, package).osv
            let severity =
                index % 3 == 0
                ? #","severity":[{"type":"CVSS_V3","score":"CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:\#(index % 2 == 0 ? "H" : "N")/A:N"}]"#
                : #","database_specific":{"severity":"\#(["LOW", "MODERATE", "HIGH", "CRITICAL"][index % 4])"}"#
            let fixed = Self.ecosystems[ecosystem].version(index + 3)
            let body = """
                {"schema_version":"1.6.0","id":"BENCH-\(index)","modified":"2026-11-01T00:00:00Z",\
                "aliases":["CVE-2099-\(index)"],"summary":"synthetic advisory \(index)",\
                "affected":[{"package":{"ecosystem":"\(Self.ecosystems[ecosystem].osv)","name":"\(name)"},\
                "ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"0"},{"fixed":"\(fixed)"}]}],\
                "versions":["\(Self.ecosystems[ecosystem].version(index))"]}]\(severity)}
                """
            let bytes = Array(body.utf8)
            parsed.append((try OSVRecord(json: bytes), bytes))
        }
        let generated = (ContinuousClock.now - generateStart).seconds
        let database = base + "/advisories.db"
        let importStart = ContinuousClock.now
        _ = try AdvisoryDatabase(path: database).importRecords(parsed, at: Date())
        let imported = (ContinuousClock.now - importStart).seconds
        parsed = []
        let size = (try? FileManager.default.attributesOfItem(atPath: database)[.size] as? Int) ?? 0
        print(
            String(
                format: "  parsed in %.2f s, imported in %.2f s (%.1f MB on disk)", generated, imported,
                Double(size) / 1e6))

        var list: [String] = []
        for index in 0..<components {
            let ecosystem = index % Self.ecosystems.count
            // Even components are packages with advisories, odd ones are not in the database.
            let package = index % 2 == 0 ? (index * 7) % packages : packages + index
            let (_, purlName) = Self.packageName(ecosystem, package)
            let version = Self.ecosystems[ecosystem].version(index)
            let type = Self.ecosystems[ecosystem].purl
            let purl =
                type == "deb"
                ? "pkg:deb/debian/\(purlName)@\(version)?arch=amd64" : "pkg:\(type)/\(purlName)@\(version)"
            list.append(#"{"type":"library","name":"\#(purlName)","version":"\#(version)","purl":"\#(purl)"}"#)
        }
        let sbom = #"{"bomFormat":"CycloneDX","specVersion":"1.6","components":[\#(list.joined(separator: ","))]}"#
        try sbom.write(toFile: base + "/sbom.json", atomically: true, encoding: .utf8)

        let me = URL(fileURLWithPath: CommandLine.arguments[0]).path
        var times: [Double] = []
        var peaks: [Double] = []
        var baselines: [Double] = []
        var findings = ""
        for _ in 0..<runs {
            let output = try UpdateBenchmark.capture(
                me, ["advisories-match", "--database", database, "--sbom", base + "/sbom.json"])
            let fields = Dictionary(
                uniqueKeysWithValues: output.split(separator: " ").compactMap { pair -> (String, String)? in
                    let parts = pair.split(separator: "=", maxSplits: 1)
                    return parts.count == 2 ? (String(parts[0]), String(parts[1])) : nil
                })
            times.append(Double(fields["seconds"] ?? "") ?? .nan)
            peaks.append(Double(fields["peakMiB"] ?? "") ?? .nan)
            baselines.append(Double(fields["baselineMiB"] ?? "") ?? .nan)
            findings = "\(fields["findings"] ?? "?") findings (\(fields["blocking"] ?? "?") blocking)"
        }
        times.sort()
        peaks.sort()
        baselines.sort()
        print(
            String(
                format: "  match (cold process, %d runs): median %.3f s, worst %.3f s; %@", runs,
                times[times.count / 2], times.last ?? .nan, findings))
        print(
            String(
                format: "  memory: peak RSS %.1f MiB (median), of which %.1f MiB before the gate started",
                peaks[peaks.count / 2], baselines[baselines.count / 2]))
    }
}

/// One cold gate run, in its own process: prints `seconds=… peakMiB=… findings=… blocking=…`.
struct AdvisoriesMatch: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "advisories-match", abstract: "(internal) one gate run for `bulwark-bench advisories`.",
        shouldDisplay: false)
    @Option var database: String
    @Option var sbom: String

    static func status(_ field: String) -> Double {
        let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
        return status.split(separator: "\n").first { $0.hasPrefix(field + ":") }?.split(separator: " ")
            .dropFirst().first.flatMap { Double($0) }.map { $0 / 1024 } ?? .nan
    }

    func run() async throws {
        let baseline = Self.status("VmRSS")
        let start = ContinuousClock.now
        let opened = try AdvisoryDatabase(path: database)
        let bytes = Array(try Data(contentsOf: URL(fileURLWithPath: sbom)))
        let parsed = try SBOM(json: bytes)
        // As the hub runs it: one read transaction over the database.
        let report = try opened.withSnapshot { _, source in
            try GateReport.evaluate(
                sbom: parsed, sbomBytes: bytes, advisories: source, waivers: [], blockSeverity: .high,
                now: Int64(Date().timeIntervalSince1970))
        }
        let canonical = try report.canonicalJSON()
        let seconds = (ContinuousClock.now - start).seconds
        print(
            String(format: "seconds=%.4f peakMiB=%.1f baselineMiB=%.1f", seconds, Self.status("VmHWM"), baseline)
                + " findings=\(report.findings.count) blocking=\(report.findings.filter(\.blocking).count)"
                + " report=\(canonical.count)")
    }
}
