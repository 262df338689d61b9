import Advisories
import Testing

/// OSV records, CycloneDX SBOMs and VEX, and the gate's decision over them, without files or a database.
@Suite struct GateTests {
    /// An OSV record in the real schema (osv.dev's JSON), as the tests write them.
    static func record(
        _ id: String, ecosystem: String, name: String, events: [(String, String)], type: String = "ECOSYSTEM",
        versions: [String] = [], severity: String? = nil, label: String? = nil, aliases: [String] = [],
        withdrawn: Bool = false, modified: String = "2026-11-01T00:00:00Z"
    ) -> String {
        let eventText = events.map { #"{"\#($0.0)":"\#($0.1)"}"# }.joined(separator: ",")
        let severityText = severity.map { #","severity":[{"type":"CVSS_V3","score":"\#($0)"}]"# } ?? ""
        let labelText = label.map { #","database_specific":{"severity":"\#($0)"}"# } ?? ""
        let versionText = versions.map { #""\#($0)""# }.joined(separator: ",")
        return """
            {"schema_version":"1.6.0","id":"\(id)","modified":"\(modified)",\(withdrawn ? #""withdrawn":"2026-11-02T00:00:00Z","# : "")
            "aliases":[\(aliases.map { #""\#($0)""# }.joined(separator: ","))],"summary":"a flaw in \(name)",
            "affected":[{"package":{"ecosystem":"\(ecosystem)","name":"\(name)"},
            "ranges":[{"type":"\(type)","events":[\(eventText)]}],"versions":[\(versionText)]}]\(severityText)\(labelText)}
            """
    }

    struct Source: AdvisorySource {
        var records: [OSVRecord]
        func records(ecosystem: Ecosystem, name: String) throws -> [OSVRecord] {
            records.filter { $0.affected.contains { $0.ecosystem == ecosystem && $0.name == name } }
        }
    }

    static func sbom(_ components: [(String, String)], vulnerabilities: String = "") -> String {
        let list = components.map { purl, version in
            #"{"type":"library","bom-ref":"\#(purl)","name":"x","version":"\#(version)","purl":"\#(purl)"}"#
        }.joined(separator: ",")
        return """
            {"bomFormat":"CycloneDX","specVersion":"1.6","serialNumber":"urn:uuid:3e671687-395b-41f5-a30f-a58921a69b79",
            "version":1,"metadata":{"component":{"type":"firmware","name":"camera","version":"2.1.0"}},
            "components":[\(list)]\(vulnerabilities)}
            """
    }

    @Test func rangesAreEvaluatedAsTheSchemaSays() throws {
        let record = try OSVRecord(
            json: Array(
                Self.record(
                    "PYSEC-1", ecosystem: "PyPI", name: "Requests_Lib",
                    events: [("introduced", "0"), ("fixed", "2.31.0"), ("introduced", "3.0"), ("last_affected", "3.2")]
                ).utf8))
        let entry = try #require(record.affected.first)
        #expect(entry.name == "requests-lib", "PEP 503 names")
        #expect(entry.affects("1.0") == true)
        #expect(entry.affects("2.31.0") == false, "fixed is not affected")
        #expect(entry.affects("2.31.0rc1") == true, "a pre-release of the fix is still affected")
        #expect(entry.affects("2.99") == false)
        #expect(entry.affects("3.0") == true)
        #expect(entry.affects("3.2") == true, "last_affected is affected")
        #expect(entry.affects("3.2.1") == false)
        let semver = try OSVRecord(
            json: Array(
                Self.record(
                    "GHSA-1", ecosystem: "npm", name: "left-pad",
                    events: [("introduced", "1.0.0"), ("fixed", "1.3.1")],
                    type: "SEMVER"
                ).utf8))
        #expect(semver.affected[0].affects("0.9.0") == false, "before introduced")
        #expect(semver.affected[0].affects("1.3.0") == true)
        #expect(semver.affected[0].affects("1.3.1-beta.1") == true)
        #expect(semver.affected[0].affects("not a version") == nil, "unknown, which the gate counts as affected")
        let listed = try OSVRecord(
            json: Array(
                Self.record(
                    "DSA-1", ecosystem: "Debian:12", name: "openssl", events: [("introduced", "0")],
                    versions: [
                        "3.0.11-1~deb12u1"
                    ]
                ).utf8))
        #expect(listed.affected[0].ecosystem == .debian)
        #expect(listed.affected[0].affects("3.0.11-1~deb12u1") == true)
        #expect(listed.affected[0].affects("3.0.15-1~deb12u1") == true, "introduced 0 with no fix: every version")
    }

    @Test func severityComesFromTheVectorElseTheLabel() throws {
        let scored = try OSVRecord(
            json: Array(
                Self.record(
                    "A", ecosystem: "npm", name: "a", events: [("introduced", "0")],
                    severity: "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", label: "LOW"
                ).utf8))
        #expect(scored.severity.rating == .critical && scored.severity.source == "cvss-v3")
        #expect(scored.severity.score.map { Int(($0 * 10).rounded()) } == 98)
        let labelled = try OSVRecord(
            json: Array(
                Self.record("B", ecosystem: "npm", name: "a", events: [("introduced", "0")], label: "MODERATE").utf8)
        )
        #expect(labelled.severity.rating == .medium && labelled.severity.source == "database_specific")
        let silent = try OSVRecord(
            json: Array(Self.record("C", ecosystem: "npm", name: "a", events: [("introduced", "0")]).utf8))
        #expect(silent.severity.rating == nil && silent.severity.source == "unknown")
    }

    @Test func malformedRecordsAreRefusedWithTheirPointer() {
        let cases: [(String, String)] = [
            (#"{"modified":"2026-01-01T00:00:00Z"}"#, "/id: is required"),
            (#"{"id":"X","modified":"t","affected":[{"package":{"ecosystem":"npm"}}]}"#, "/affected/0/package/name"),
            (
                #"{"id":"X","modified":"t","affected":[{"package":{"ecosystem":"npm","name":"a"},"ranges":[{"type":"SEMVER","events":[{"fixed":"1.0"}]}]}]}"#,
                "/affected/0/ranges/0: a range needs an introduced event"
            ),
            (
                #"{"id":"X","modified":"t","affected":[{"package":{"ecosystem":"npm","name":"a"},"ranges":[{"type":"SEMVER","events":[{"introduced":"0","fixed":"1"}]}]}]}"#,
                "/affected/0/ranges/0/events/0"
            ),
            (
                #"{"id":"X","modified":"t","severity":[{"type":"CVSS_V3","score":"CVSS:3.1/AV:N"}]}"#,
                "/severity/0/score"
            ),
            (#"{"id":"X","id":"Y","modified":"t"}"#, "not JSON"),
        ]
        for (json, expected) in cases {
            #expect(throws: DocumentError.self) { try OSVRecord(json: Array(json.utf8)) }
            do {
                _ = try OSVRecord(json: Array(json.utf8))
            } catch {
                #expect(error.description.hasPrefix(expected) || error.description.contains(expected), "\(error)")
            }
        }
    }

    @Test func malformedSBOMsAreRefusedWithTheirPointer() {
        let cases: [(String, String)] = [
            (#"{"bomFormat":"SPDX","specVersion":"1.6"}"#, "/bomFormat"),
            (#"{"bomFormat":"CycloneDX","specVersion":"1.3","components":[]}"#, "/specVersion"),
            (#"{"bomFormat":"CycloneDX","specVersion":"1.6","components":[]}"#, "/components: the SBOM lists no"),
            (
                #"{"bomFormat":"CycloneDX","specVersion":"1.5","components":[{"name":"a","version":"1","purl":"pkg:npm/a@1"},{"name":"b","version":"2"}]}"#,
                "/components/1/purl: is required"
            ),
            (
                #"{"bomFormat":"CycloneDX","specVersion":"1.5","components":[{"name":"a","version":"1","purl":"npm/a@1"}]}"#,
                "/components/0/purl: not a package URL"
            ),
            (
                #"{"bomFormat":"CycloneDX","specVersion":"1.5","components":[{"name":"a","version":"1","purl":"pkg:npm/a@2"}]}"#,
                "/components/0/purl: names version 2"
            ),
            (
                #"{"bomFormat":"CycloneDX","specVersion":"1.6","components":[{"name":"a","version":"1","purl":"pkg:npm/a@1","components":[{"name":"b","purl":"pkg:npm/b"}]}]}"#,
                "/components/0/components/0/version: is required"
            ),
            (
                #"{"bomFormat":"CycloneDX","specVersion":"1.6","components":[{"name":"a","version":"1","purl":"pkg:npm/a"}],"vulnerabilities":[{"id":"X","analysis":{"state":"fine"}}]}"#,
                "/vulnerabilities/0/analysis/state"
            ),
            ("[1,2", "/: not JSON"),
        ]
        for (json, expected) in cases {
            do {
                _ = try SBOM(json: Array(json.utf8))
                Issue.record("accepted: \(json)")
            } catch {
                #expect(error.description.hasPrefix(expected), "\(error) for \(json)")
            }
        }
    }

    @Test func theGateBlocksAtTheThresholdUnlessWaivedAndVEXWaivesWithAJustification() throws {
        let records = try [
            Self.record(
                "GHSA-crit", ecosystem: "PyPI", name: "requests", events: [("introduced", "0"), ("fixed", "2.32.0")],
                severity: "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", aliases: ["CVE-2024-0001"]),
            Self.record(
                "GHSA-low", ecosystem: "npm", name: "lodash", events: [("introduced", "0"), ("fixed", "4.17.21")],
                label: "LOW"),
            Self.record(
                "GHSA-unrated", ecosystem: "Maven", name: "org.apache.logging.log4j:log4j-core",
                events: [("introduced", "2.0"), ("fixed", "2.17.1")]),
            Self.record(
                "GHSA-gone", ecosystem: "PyPI", name: "requests", events: [("introduced", "0")], label: "CRITICAL",
                withdrawn: true),
            Self.record(
                "GHSA-fixed", ecosystem: "crates.io", name: "serde", events: [("introduced", "0"), ("fixed", "1.0.0")],
                label: "CRITICAL"),
        ].map { try OSVRecord(json: Array($0.utf8)) }
        let source = Source(records: records)
        let text = Self.sbom([
            ("pkg:pypi/requests@2.31.0", "2.31.0"), ("pkg:npm/lodash@4.17.20", "4.17.20"),
            ("pkg:maven/org.apache.logging.log4j/log4j-core@2.14.1", "2.14.1"), ("pkg:cargo/serde@1.0.100", "1.0.100"),
        ])
        let sbom = try SBOM(json: Array(text.utf8))
        let now: Int64 = 1_800_000_000
        let report = try GateReport.evaluate(
            sbom: sbom, sbomBytes: Array(text.utf8), advisories: source, waivers: [], blockSeverity: .high, now: now)
        #expect(report.blocked)
        #expect(
            Set(report.findings.filter(\.blocking).map(\.advisory)) == ["GHSA-crit", "GHSA-unrated"],
            "critical by its vector, unrated counts as at the threshold; low does not block; withdrawn and fixed do not match"
        )
        #expect(report.findings.map(\.advisory).sorted() == ["GHSA-crit", "GHSA-low", "GHSA-unrated"])
        #expect(report.findings.first { $0.advisory == "GHSA-crit" }?.fixed == ["2.32.0"])

        // A waiver by alias and package (any version), and one that expired.
        let waivers = [
            Waiver(
                advisory: "CVE-2024-0001", purl: "pkg:pypi/requests", reason: "not reachable", until: now + 60, by: "a"),
            Waiver(
                advisory: "GHSA-unrated", purl: "pkg:maven/org.apache.logging.log4j/log4j-core@2.14.1", reason: "old",
                until: now, by: "a"),
        ]
        let waived = try GateReport.evaluate(
            sbom: sbom, sbomBytes: Array(text.utf8), advisories: source, waivers: waivers, blockSeverity: .high,
            now: now)
        #expect(waived.findings.first { $0.advisory == "GHSA-crit" }?.waivedBy == "waiver")
        #expect(waived.blocked, "the expired waiver does not count")
        #expect(waived.waiversUsed == [waivers[0]])

        // VEX: not_affected with a justification waives; without one it does not.
        let vex = #"""
            {"bomFormat":"CycloneDX","specVersion":"1.6","vulnerabilities":[
              {"id":"GHSA-unrated","analysis":{"state":"not_affected","justification":"code_not_reachable"},
               "affects":[{"ref":"urn:cdx:3e671687-395b-41f5-a30f-a58921a69b79/1#pkg:maven/org.apache.logging.log4j/log4j-core@2.14.1"}]},
              {"id":"GHSA-crit","analysis":{"state":"not_affected"},"affects":[{"ref":"pkg:pypi/requests@2.31.0"}]}]}
            """#
        let statements = try VEXDocument(json: Array(vex.utf8)).statements
        let withVEX = try GateReport.evaluate(
            sbom: sbom, sbomBytes: Array(text.utf8), vex: statements, advisories: source, waivers: [waivers[0]],
            blockSeverity: .high, now: now)
        #expect(!withVEX.blocked)
        #expect(withVEX.findings.first { $0.advisory == "GHSA-unrated" }?.waivedBy == "vex")
        #expect(withVEX.vexUsed.map(\.id) == ["GHSA-unrated"])
        let noJustification = try GateReport.evaluate(
            sbom: sbom, sbomBytes: Array(text.utf8), vex: statements, advisories: source, waivers: [],
            blockSeverity: .high, now: now)
        #expect(noJustification.findings.first { $0.advisory == "GHSA-crit" }?.blocking == true)

        // The threshold moves what blocks; the report's bytes are canonical and stable.
        let critical = try GateReport.evaluate(
            sbom: sbom, sbomBytes: Array(text.utf8), advisories: source, waivers: [waivers[0]],
            blockSeverity: .critical, now: now)
        #expect(critical.findings.filter(\.blocking).map(\.advisory) == ["GHSA-unrated"])
        #expect(try critical.canonicalJSON() == critical.canonicalJSON())
        let low = try GateReport.evaluate(
            sbom: sbom, sbomBytes: Array(text.utf8), advisories: source, waivers: [], blockSeverity: .low, now: now)
        #expect(low.findings.filter(\.blocking).count == 3)
    }
}

/// The review's attacks on the gate: what it cannot check, names spelled differently on each side, Debian's source
/// packages and releases, severity borrowed from another package, VEX statements broader than they say, duplicated
/// components, and local builds of an affected version.
@Suite struct GateScopeTests {
    typealias Source = GateTests.Source

    static func evaluate(
        _ components: [String], records: [String], vex: String? = nil, blockUnchecked: Bool = false
    ) throws -> GateReport {
        let list = components.map { purl -> String in
            let parsed = try? PackageURL(parsing: purl)
            return
                #"{"type":"library","bom-ref":"\#(purl)","name":"x","version":"\#(parsed?.version ?? "1")","purl":"\#(purl)"}"#
        }
        let text = """
            {"bomFormat":"CycloneDX","specVersion":"1.6","serialNumber":"urn:uuid:11111111-2222-3333-4444-555555555555",
             "version":3,"components":[\(list.joined(separator: ","))]\(vex.map { ",\"vulnerabilities\":" + $0 } ?? "")}
            """
        let sbom = try SBOM(json: Array(text.utf8))
        return try GateReport.evaluate(
            sbom: sbom, sbomBytes: Array(text.utf8),
            advisories: Source(records: records.map { try OSVRecord(json: Array($0.utf8)) }),
            waivers: [], blockSeverity: .high, blockUnchecked: blockUnchecked, now: 1_800_000_000)
    }

    static let critical = #""severity":[{"type":"CVSS_V3","score":"CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}]"#

    @Test func componentsNoEcosystemCoversAreListedAndAnSBOMOfOnlyThoseBlocks() throws {
        let nothing = try Self.evaluate(["pkg:generic/busybox@1.36.1", "pkg:rpm/fedora/curl@8.0"], records: [])
        #expect(nothing.blocked && nothing.checked == 0 && nothing.uncheckedCount == 2)
        let mixed = try Self.evaluate(["pkg:generic/busybox@1.36.1", "pkg:npm/a@1.0.0"], records: [])
        #expect(!mixed.blocked && mixed.unchecked == ["pkg:generic/busybox@1.36.1"])
        #expect(
            try Self.evaluate(["pkg:generic/busybox@1.36.1", "pkg:npm/a@1.0.0"], records: [], blockUnchecked: true)
                .blocked)
    }

    @Test func namesMatchAsEachEcosystemComparesThem() throws {
        let go =
            #"{"id":"GO-1","modified":"2026-01-01T00:00:00Z","affected":[{"package":{"ecosystem":"Go","name":"github.com/BurntSushi/toml"},"ranges":[{"type":"SEMVER","events":[{"introduced":"0"},{"fixed":"1.3.0"}]}]}],"#
            + Self.critical + "}"
        #expect(try Self.evaluate(["pkg:golang/github.com/burntsushi/toml@v1.2.0"], records: [go]).blocked)
        let npm =
            #"{"id":"NPM-1","modified":"2026-01-01T00:00:00Z","affected":[{"package":{"ecosystem":"npm","name":"JSONStream"},"ranges":[{"type":"SEMVER","events":[{"introduced":"0"},{"fixed":"2.0.0"}]}]}],"#
            + Self.critical + "}"
        #expect(try Self.evaluate(["pkg:npm/jsonstream@1.3.5"], records: [npm]).blocked)
    }

    @Test func debianMatchesBySourcePackageAndRelease() throws {
        let dsa = """
            {"id":"DSA-9","modified":"2026-01-01T00:00:00Z","affected":[
             {"package":{"ecosystem":"Debian:11","name":"openssl"},"ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"0"}]}]},
             {"package":{"ecosystem":"Debian:12","name":"openssl"},"ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"0"},{"fixed":"3.0.11-1~deb12u2"}]}]}],
             \(Self.critical)}
            """
        let fixed12 = "pkg:deb/debian/libssl3@3.0.11-1~deb12u2?upstream=openssl&distro=debian-12"
        #expect(!(try Self.evaluate([fixed12], records: [dsa]).blocked), "fixed in 12; the entry for 11 is not 12's")
        let old12 = "pkg:deb/debian/libssl3@3.0.9-1?upstream=openssl&distro=bookworm"
        #expect(try Self.evaluate([old12], records: [dsa]).findings.first?.blocking == true, "by its source package")
        let eleven = "pkg:deb/debian/libssl1.1@1.1.1w-0+deb11u1?upstream=openssl&distro=debian-11"
        #expect(try Self.evaluate([eleven], records: [dsa]).blocked)
        let unknownRelease = "pkg:deb/debian/openssl@3.0.11-1~deb12u2"
        #expect(try Self.evaluate([unknownRelease], records: [dsa]).blocked, "no release named: every entry applies")
    }

    @Test func aPackageIsRatedByItsOwnEntryNotAnothers() throws {
        let record = """
            {"id":"GHSA-two","modified":"2026-01-01T00:00:00Z","affected":[
             {"package":{"ecosystem":"npm","name":"b"},"ranges":[{"type":"SEMVER","events":[{"introduced":"0"}]}],
              "severity":[{"type":"CVSS_V3","score":"CVSS:3.1/AV:N/AC:H/PR:N/UI:N/S:U/C:L/I:N/A:N"}]},
             {"package":{"ecosystem":"npm","name":"a"},"ranges":[{"type":"SEMVER","events":[{"introduced":"0"}]}],
              "severity":[{"type":"CVSS_V3","score":"CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}]}]}
            """
        let a = try Self.evaluate(["pkg:npm/a@1.0.0"], records: [record])
        #expect(a.findings.first?.severity == "critical" && a.blocked)
        let b = try Self.evaluate(["pkg:npm/b@1.0.0"], records: [record])
        #expect(b.findings.first?.severity == "low" && !b.blocked)
    }

    @Test func vexWaivesOnlyWhatItNames() throws {
        let record =
            #"{"id":"GHSA-v","modified":"2026-01-01T00:00:00Z","affected":[{"package":{"ecosystem":"npm","name":"a"},"ranges":[{"type":"SEMVER","events":[{"introduced":"0"}]}]}],"#
            + Self.critical + "}"
        func statement(_ ref: String, versions: String = "") -> String {
            #"[{"id":"GHSA-v","analysis":{"state":"not_affected","justification":"code_not_present"},"affects":[{"ref":"\#(ref)"\#(versions)}]}]"#
        }
        let components = ["pkg:npm/a@1.0.0"]
        #expect(!(try Self.evaluate(components, records: [record], vex: statement("pkg:npm/a@1.0.0")).blocked))
        #expect(try Self.evaluate(components, records: [record], vex: statement("pkg:npm/a")).blocked, "no version")
        let link = "urn:cdx:11111111-2222-3333-4444-555555555555/3#pkg:npm/a@1.0.0"
        #expect(!(try Self.evaluate(components, records: [record], vex: statement(link)).blocked))
        let otherVersion = "urn:cdx:11111111-2222-3333-4444-555555555555/2#pkg:npm/a@1.0.0"
        #expect(try Self.evaluate(components, records: [record], vex: statement(otherVersion)).blocked)
        let otherSerial = "urn:cdx:99999999-2222-3333-4444-555555555555/3#pkg:npm/a@1.0.0"
        #expect(try Self.evaluate(components, records: [record], vex: statement(otherSerial)).blocked)
        let listed = statement("pkg:npm/a@1.0.0", versions: #","versions":[{"version":"0.9.0","status":"unaffected"}]"#)
        #expect(try Self.evaluate(components, records: [record], vex: listed).blocked, "1.0.0 is not listed")
    }

    @Test func duplicateComponentsAreMatchedOnceAndLocalBuildsOfAnAffectedVersionAreAffected() throws {
        let record =
            #"{"id":"PYSEC-l","modified":"2026-01-01T00:00:00Z","affected":[{"package":{"ecosystem":"PyPI","name":"torch"},"ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"0"},{"last_affected":"2.0.0"}]}]}],"#
            + Self.critical + "}"
        let many = Array(repeating: "pkg:pypi/torch@2.0.0%2Bcu118", count: 20_000)
        let report = try Self.evaluate(many, records: [record])
        #expect(report.findings.count == 1 && report.blocked, "a local build of 2.0.0 is 2.0.0")
        #expect(!(try Self.evaluate(["pkg:pypi/torch@2.0.1"], records: [record]).blocked))
        // A GIT-only entry has no package: accepted, matches nothing.
        let git =
            #"{"id":"OSV-g","modified":"2026-01-01T00:00:00Z","affected":[{"ranges":[{"type":"GIT","repo":"https://x","events":[{"introduced":"0"}]}]}]}"#
        #expect(try OSVRecord(json: Array(git.utf8)).affected.isEmpty)
    }
}

/// OSV §affected[].package names a package by ecosystem and name, or by its purl alone.
@Suite struct OSVPackageTests {
    @Test func aPackageNamedByItsPurlAloneIsMatched() throws {
        let record =
            #"{"id":"GHSA-p","modified":"2026-01-01T00:00:00Z","affected":[{"package":{"purl":"pkg:pypi/Requests_Lib"},"ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"0"},{"fixed":"2.0"}]}]}],"severity":[{"type":"CVSS_V3","score":"CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}]}"#
        let parsed = try OSVRecord(json: Array(record.utf8))
        #expect(parsed.affected.first?.ecosystem == .pypi && parsed.affected.first?.name == "requests-lib")
        #expect(try GateScopeTests.evaluate(["pkg:pypi/requests-lib@1.0"], records: [record]).blocked)
        let unmapped = #"{"id":"X","modified":"t","affected":[{"package":{"purl":"pkg:generic/x"}}]}"#
        #expect(throws: DocumentError.self) { try OSVRecord(json: Array(unmapped.utf8)) }
        let neither = #"{"id":"X","modified":"t","affected":[{"package":{}}]}"#
        #expect(throws: DocumentError("/affected/0/package/ecosystem", "is required")) {
            try OSVRecord(json: Array(neither.utf8))
        }
    }
}
