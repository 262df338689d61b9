import Advisories
import Core
import Crypto
import Foundation
import Store
import TUF
import Testing

@testable import Agent
@testable import Hub

/// The vulnerability gate end to end, through the `bulwark` binary: advisories imported from OSV records (a directory
/// and a ZIP), a release blocked, waived and published with its evidence in TUF `custom`, an agent that requires the
/// gate, and a rescan after a new advisory that names the release and the device running it.
@Suite(.serialized) struct ReleaseGateTests {
    typealias Repository = PinRotationTests.Repository

    /// An OSV record in the real schema (as osv.dev exports them), written for the tests.
    static func osv(
        _ id: String, ecosystem: String, name: String, introduced: String = "0", fixed: String? = nil,
        lastAffected: String? = nil, vector: String? = nil, label: String? = nil, aliases: [String] = []
    ) -> String {
        var events = [#"{"introduced":"\#(introduced)"}"#]
        if let fixed { events.append(#"{"fixed":"\#(fixed)"}"#) }
        if let lastAffected { events.append(#"{"last_affected":"\#(lastAffected)"}"#) }
        var record: [String: Any] = [
            "schema_version": "1.6.0", "id": id, "modified": "2026-11-20T10:00:00Z",
            "published": "2026-11-19T00:00:00Z",
            "aliases": aliases, "summary": "test advisory for \(name)",
            "affected": [
                [
                    "package": ["ecosystem": ecosystem, "name": name, "purl": "pkg:\(ecosystem.lowercased())/\(name)"],
                    "ranges": [
                        [
                            "type": "ECOSYSTEM",
                            "events": events.map { try? JSONSerialization.jsonObject(with: Data($0.utf8)) },
                        ]
                    ],
                ]
            ],
            "references": [["type": "ADVISORY", "url": "https://example.invalid/\(id)"]],
        ]
        if let vector { record["severity"] = [["type": "CVSS_V3", "score": vector]] }
        if let label { record["database_specific"] = ["severity": label] }
        let data = (try? JSONSerialization.data(withJSONObject: record, options: [.sortedKeys])) ?? Data()
        return String(decoding: data, as: UTF8.self)
    }

    static let sbom = """
        {"bomFormat":"CycloneDX","specVersion":"1.5","serialNumber":"urn:uuid:0b1a4f0e-8f6e-4d8e-9a53-6c9f1a1d2e3f",
         "version":1,"metadata":{"component":{"type":"firmware","name":"camera-fw","version":"2.0.0"}},
         "components":[
          {"type":"library","bom-ref":"requests","name":"requests","version":"2.31.0","purl":"pkg:pypi/requests@2.31.0"},
          {"type":"library","bom-ref":"lodash","name":"lodash","version":"4.17.20","purl":"pkg:npm/lodash@4.17.20"},
          {"type":"operating-system","name":"base-files","version":"12.4+deb12u5","purl":"pkg:deb/debian/base-files@12.4%2Bdeb12u5",
           "components":[{"type":"library","name":"openssl","version":"3.0.11-1~deb12u2",
                          "purl":"pkg:deb/debian/openssl@3.0.11-1~deb12u2?arch=amd64&distro=debian-12"}]}]}
        """

    static let critical = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"

    @Test func aReleaseIsBlockedWaivedPublishedRequiredAndRescanned() async throws {
        let repository = try await Repository.make("gate")
        let hub = try await PinRotationTests.hub(repository) { $0.releaseRequireGate = true }
        let cli = PairingEndToEndTests.CLI(binary: try HubProcessTests.binary, hub: hub)
        let work = try temporaryDirectory("gate-work")
        try Self.sbom.write(toFile: work + "/sbom.json", atomically: true, encoding: .utf8)
        let gated = try await UpdateAgentTests.build(repository, "gated-v2")
        let publish = [
            "release", "publish", gated, "--name", "gated-v2.tar", "--version", "2.0.0", "--security-version", "2",
            "--sbom", work + "/sbom.json", "--repo", repository.path, "--keys", repository.keys,
        ]

        // No advisories yet: the gate does not pass what it cannot check.
        let unchecked = try await cli.run(publish)
        #expect(unchecked.status == 1 && unchecked.stderr.contains("no advisory database"), "\(unchecked.stderr)")

        // Import a directory of records (one in a sub-directory, as osv.dev's trees are).
        let records = work + "/osv"
        try FileManager.default.createDirectory(atPath: records + "/PyPI", withIntermediateDirectories: true)
        try Self.osv(
            "GHSA-test-reqs", ecosystem: "PyPI", name: "requests", fixed: "2.32.0", vector: Self.critical,
            aliases: ["CVE-2099-0001"]
        ).write(toFile: records + "/PyPI/GHSA-test-reqs.json", atomically: true, encoding: .utf8)
        try Self.osv("GHSA-test-low", ecosystem: "npm", name: "lodash", fixed: "4.17.21", label: "LOW")
            .write(toFile: records + "/GHSA-test-low.json", atomically: true, encoding: .utf8)
        try Self.osv("DSA-test-1", ecosystem: "Debian:12", name: "openssl", fixed: "3.0.11-1~deb12u1", label: "HIGH")
            .write(toFile: records + "/DSA-test-1.json", atomically: true, encoding: .utf8)
        try "not an advisory".write(toFile: records + "/README.md", atomically: true, encoding: .utf8)
        let imported = try await cli.run(["advisories", "import", records, "--data", hub.directory])
        #expect(imported.status == 0, "\(imported.stderr)")
        #expect(imported.stdout.contains("3 new"), "\(imported.stdout)")

        // A malformed record refuses the whole import, naming the file and the pointer.
        try #"{"id":"BAD-1","modified":"2026-01-01T00:00:00Z","affected":[{"package":{"name":"x"}}]}"#
            .write(toFile: records + "/BAD-1.json", atomically: true, encoding: .utf8)
        let bad = try await cli.run(["advisories", "import", records, "--data", hub.directory])
        #expect(bad.status == 65, "\(bad.stderr)")
        #expect(bad.stderr.contains("BAD-1.json: /affected/0/package/ecosystem: is required"), "\(bad.stderr)")
        try FileManager.default.removeItem(atPath: records + "/BAD-1.json")

        // Blocked: the critical advisory; the low one and the fixed Debian one do not block. Nothing is staged.
        let blocked = try await cli.run(publish)
        #expect(blocked.status == 1, "\(blocked.stdout)")
        #expect(blocked.stderr.contains("GHSA-test-reqs critical 9.8 in pkg:pypi/requests@2.31.0 (fixed in 2.32.0)"))
        #expect(
            !blocked.stderr.contains("GHSA-test-low") && !blocked.stderr.contains("DSA-test-1"), "\(blocked.stderr)")
        #expect(!FileManager.default.fileExists(atPath: repository.path + "/staged/targets.json"))
        #expect(try await UpdateAgentTests.events(hub, "release-blocked").count == 1)

        // A malformed SBOM never leaves the machine: the pointer of the problem, exit 65.
        try #"{"bomFormat":"CycloneDX","specVersion":"1.6","components":[{"name":"a","version":"1"}]}"#
            .write(toFile: work + "/bad-sbom.json", atomically: true, encoding: .utf8)
        var badSBOM = publish
        badSBOM[badSBOM.firstIndex(of: work + "/sbom.json") ?? 0] = work + "/bad-sbom.json"
        let refused = try await cli.run(badSBOM)
        #expect(refused.status == 65 && refused.stderr.contains("/components/0/purl: is required"), "\(refused.stderr)")

        // Waived (by its CVE alias, for the package at any version), audited; then published with the evidence.
        let until = ISO8601DateFormatter().string(from: Date().addingTimeInterval(30 * 86400))
        let waived = try await cli.run([
            "advisories", "waive", "CVE-2099-0001", "--purl", "pkg:pypi/requests", "--reason",
            "the camera never calls it",
            "--until", until,
        ])
        #expect(waived.status == 0, "\(waived.stderr)")
        let audit = try await UpdateAgentTests.events(hub, "advisory-waived")
        #expect(audit.first?.detail.contains("the camera never calls it") == true)
        let tooLong = try await cli.run([
            "advisories", "waive", "CVE-2099-0001", "--purl", "pkg:pypi/requests", "--reason", "r", "--until",
            "2099-01-01",
        ])
        #expect(tooLong.status == 1 && tooLong.stderr.contains("at most a year ahead"), "\(tooLong.stderr)")
        let passed = try await cli.run(publish + ["--report-out", work + "/report.json"])
        #expect(passed.status == 0, "\(passed.stderr)")
        #expect(passed.stdout.contains("gate passed"), "\(passed.stdout)")

        let targets = try TUFJSON.parse(
            Array(try Data(contentsOf: URL(fileURLWithPath: repository.path + "/metadata/targets.json"))))
        let custom = try #require(
            targets.objectValue?["signed"]?.objectValue?["targets"]?.objectValue?["gated-v2.tar"]?.objectValue?[
                "custom"]?
                .objectValue)
        let sbomDigest = hexEncode(SHA256.hash(data: Array(Self.sbom.utf8)))
        let reportBytes = Array(try Data(contentsOf: URL(fileURLWithPath: work + "/report.json")))
        #expect(custom["sbom"]?.objectValue?["sha256"]?.stringValue == sbomDigest)
        #expect(custom["gate"]?.objectValue?["sha256"]?.stringValue == hexEncode(SHA256.hash(data: reportBytes)))
        #expect(custom["securityVersion"]?.integerValue == 2)
        #expect(custom["version"]?.stringValue == "2.0.0")
        #expect(
            custom["gate"]?.objectValue?["waivers"]?.arrayValue?.first?.objectValue?["advisory"]?.stringValue
                == "CVE-2099-0001")
        let report = try TUFJSON.parse(reportBytes).objectValue
        #expect(report?["blocked"]?.boolValue == false)
        #expect(report?["sbomSHA256"]?.stringValue == sbomDigest)
        #expect(
            report?["targetSHA256"]?.stringValue
                == hexEncode(SHA256.hash(data: try Data(contentsOf: URL(fileURLWithPath: gated)))))

        // A release added without the gate. Staged by hand, it stops `release publish` (which would sign it too).
        let plain = try await UpdateAgentTests.build(repository, "plain-v3")
        let staged = try await cli.run([
            "tuf", "add-target", "--repo", repository.path, "--security-version", "3", plain,
        ])
        #expect(staged.status == 0, "\(staged.stderr)")
        let mixed = try await cli.run(publish)
        #expect(mixed.status == 1 && mixed.stderr.contains("has staged edits (targets"), "\(mixed.stderr)")
        let signed = try await cli.run(["tuf", "publish", "--repo", repository.path, "--keys", repository.keys])
        #expect(signed.status == 0, "\(signed.stderr)")
        // The hub (release.requireGate) will not assign it; an agent that requires the gate refuses it anyway.
        let assignPlain = try await cli.run(["updates", "default", "plain-v3.tar"])
        #expect(
            assignPlain.status == 1 && assignPlain.stderr.contains("was not published through the vulnerability gate"),
            "\(assignPlain.stderr)")
        #expect(try await cli.run(["updates", "default", "gated-v2.tar"]).status == 0)
        let (agent, state, marker) = try await UpdateAgentTests.agent(hub, repository, "gate-dev") {
            $0.requireGate = true
        }
        defer { UpdateAgentTests.release(state) }
        let running = Task { try await agent.run() }
        defer { running.cancel() }
        #expect(await AgentTests.eventually(20) { await agent.connection == .connected })
        try await UpdateAgentTests.assign(hub, "plain-v3.tar")
        let refusedPlain = await agent.checkForUpdates()
        #expect(refusedPlain.contains("was not published through the vulnerability gate"), "\(refusedPlain)")
        try await UpdateAgentTests.assign(hub, "gated-v2.tar")
        let committed = await agent.checkForUpdates()
        #expect(committed == "committed: 2.0.0 in slot a", "\(committed)")
        #expect(await AgentTests.eventually(20) { UpdateAgentTests.running(marker)?.release == "gated-v2" })
        let device = try DeviceID("gate-dev")
        #expect(
            await AgentTests.eventually(10) {
                (try? await hub.server.store.updateState(of: device))?.installedTarget == "gated-v2.tar"
            })

        // Clear today; a new advisory (a ZIP, as osv.dev exports them) reaches the deployed release.
        let clear = try await cli.run(["advisories", "rescan"])
        #expect(clear.status == 0, "\(clear.stderr)")
        #expect(clear.stdout.contains("gated-v2.tar 2.0.0: clear (1 devices)"), "\(clear.stdout)")
        #expect(clear.stdout.contains("plain-v3.tar: never passed the gate, on 0 devices"), "\(clear.stdout)")
        let zipped = work + "/zip"
        try FileManager.default.createDirectory(atPath: zipped, withIntermediateDirectories: true)
        try Self.osv(
            "GHSA-test-lodash", ecosystem: "npm", name: "lodash", lastAffected: "4.17.20", vector: Self.critical
        ).write(toFile: zipped + "/GHSA-test-lodash.json", atomically: true, encoding: .utf8)
        let zip = try await run(
            try #require(which("python3")),
            [
                "-c",
                "import sys, zipfile\nwith zipfile.ZipFile(sys.argv[1], 'w', zipfile.ZIP_DEFLATED) as z:\n"
                    + "    z.write(sys.argv[2], 'GHSA-test-lodash.json')",
                work + "/npm.zip", zipped + "/GHSA-test-lodash.json",
            ])
        #expect(zip.status == 0, "\(zip.stderr)")
        let fromZIP = try await cli.run(["advisories", "import", work + "/npm.zip", "--data", hub.directory])
        #expect(fromZIP.status == 0 && fromZIP.stdout.contains("1 new"), "\(fromZIP.stderr)")
        let rescanned = try await cli.run(["advisories", "rescan"])
        #expect(rescanned.status == 3, "\(rescanned.stdout) \(rescanned.stderr)")
        #expect(
            rescanned.stdout.contains("gated-v2.tar 2.0.0: GHSA-test-lodash (critical) on 1 devices: gate-dev"),
            "\(rescanned.stdout)")
        let deployed = try await UpdateAgentTests.events(hub, "vulnerable-release-deployed")
        #expect(deployed.count == 1 && deployed.first?.detail.contains("gate-dev") == true)

        await agent.stop()
        try await hub.stop()
    }

    /// A third-party SBOM: `cyclonedx-py` (CycloneDX's own Python tool, from PyPI) over a fresh virtual environment.
    @Test func anSBOMMadeByCycloneDXPyIsReadAndGated() async throws {
        let python = try #require(which("python3"))
        let installed = try await run(python, ["-m", "cyclonedx_py", "--version"])
        #expect(installed.status == 0, "scripts/install-deps installs cyclonedx-bom from PyPI: \(installed.stderr)")
        let work = try temporaryDirectory("cdx")
        let venv = try await run(python, ["-m", "venv", work + "/env"])
        #expect(venv.status == 0, "\(venv.stderr)")
        let made = try await run(
            python,
            [
                "-m", "cyclonedx_py", "environment", "--sv", "1.6", "--of", "JSON", "-o", work + "/sbom.json",
                work + "/env/bin/python",
            ])
        #expect(made.status == 0, "\(made.stderr)")
        let bytes = Array(try Data(contentsOf: URL(fileURLWithPath: work + "/sbom.json")))
        let components = try SBOM(json: bytes).components
        let setuptools = try #require(components.first { $0.name == "setuptools" }, "\(components.map(\.purl))")

        let repository = try await Repository.make("cdx")
        let hub = try await PinRotationTests.hub(repository)
        let cli = PairingEndToEndTests.CLI(binary: try HubProcessTests.binary, hub: hub)
        try FileManager.default.createDirectory(atPath: work + "/osv", withIntermediateDirectories: true)
        try Self.osv(
            "BULWARK-TEST-setuptools", ecosystem: "PyPI", name: "setuptools", lastAffected: setuptools.version,
            label: "CRITICAL"
        ).write(toFile: work + "/osv/record.json", atomically: true, encoding: .utf8)
        #expect(try await cli.run(["advisories", "import", work + "/osv", "--data", hub.directory]).status == 0)
        try "firmware".write(toFile: work + "/fw.bin", atomically: true, encoding: .utf8)
        let gated = try await cli.run([
            "release", "publish", work + "/fw.bin", "--name", "fw.bin", "--version", "1", "--security-version", "1",
            "--sbom", work + "/sbom.json", "--repo", repository.path, "--keys", repository.keys,
        ])
        #expect(gated.status == 1, "\(gated.stdout)")
        #expect(
            gated.stderr.contains("BULWARK-TEST-setuptools critical in pkg:pypi/setuptools@\(setuptools.version)"),
            "\(gated.stderr)")
        try await hub.stop()
    }
}
