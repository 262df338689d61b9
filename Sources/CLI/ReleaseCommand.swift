import Advisories
import ArgumentParser
import Crypto
import Foundation
import JSON
import TUF
import TUFRepository

/// `bulwark release publish`: the way a release enters the update repository. The hub's vulnerability gate first
/// matches its SBOM against the imported advisories; only a release it passes is staged and published, with the
/// evidence in its signed TUF `custom`.
struct ReleaseCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "release", abstract: "Publish releases through the vulnerability gate.",
        subcommands: [Publish.self])

    struct Publish: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Gate a release on its SBOM, then add it to the repository and publish (signed with --keys).",
            discussion: """
                The hub matches every component of the CycloneDX 1.5/1.6 SBOM (each with a purl and a version)
                against its OSV advisories and blocks at or above its release.blockSeverity, unless a waiver
                (`bulwark advisories waive`) or a VEX statement (not_affected with a justification) covers it. A
                blocked release is not staged (exit 1, the findings on stderr). A passed one is published with
                custom {securityVersion, version, sbom: {sha256}, gate: {sha256, blockSeverity, waivers, vex}}; an
                agent with updates.requireGate refuses targets without them. A repository with other staged edits
                is refused (they did not pass the gate).
                  bulwark release publish fw-2.1.tar --name fw.tar --version 2.1.0 --security-version 3 \\
                    --sbom sbom.cdx.json --repo ./repo --keys ./keys
                """)
        @OptionGroup var connection: OperatorConnection
        @Argument(help: "The release file.") var file: String
        @Option(help: "The target path in the repository.") var name: String
        @Option(help: "The release's version (reported by agents).") var version: String
        @Option(help: "Security version (anti-rollback floor; 0-2147483647).") var securityVersion: Int
        @Option(help: "CycloneDX 1.5/1.6 JSON SBOM of the release.") var sbom: String
        @Option(help: "CycloneDX VEX document (not_affected statements with a justification waive).") var vex: String?
        @Option(help: "Repository directory.") var repo: String
        @Option(help: "Private key directory (or token key URIs remembered there).") var keys: String
        @Option(help: "Role to list it in (default: follow delegations).") var role: String?
        @Option(help: "Also write the gate's report (canonical JSON) here.") var reportOut: String?

        func run() async throws {
            guard (0...Int(Int32.max)).contains(securityVersion) else {
                throw CleanExit.message("bulwark: --security-version must be 0-2147483647", code: 64)
            }
            let repoPath = URL(fileURLWithPath: repo).standardizedFileURL.path
            let keysPath = URL(fileURLWithPath: keys).standardizedFileURL.path
            guard keysPath != repoPath, !keysPath.hasPrefix(repoPath + "/") else {
                throw CleanExit.message("bulwark: --keys must not be inside --repo", code: 64)
            }
            let contents = try Self.read(file, what: "release file")
            let sbomBytes = try Self.read(sbom, what: "SBOM")
            // Refused here first, with the pointer, before anything leaves this machine.
            do { _ = try SBOM(json: sbomBytes) } catch {
                throw CleanExit.message("bulwark: \(sbom): \(error)", code: 65)
            }
            var vexBytes: [UInt8]?
            if let vex {
                let bytes = try Self.read(vex, what: "VEX document")
                do { _ = try VEXDocument(json: bytes) } catch {
                    throw CleanExit.message("bulwark: \(vex): \(error)", code: 65)
                }
                vexBytes = bytes
            }
            // The release is published alone: edits staged by hand (`tuf add-target`) would be signed with it, and
            // they did not pass the gate.
            do {
                let staged = try FileRepository(directory: repo).open().stagedRoles
                guard staged.isEmpty else {
                    throw CleanExit.message(
                        "bulwark: \(repo) has staged edits (\(staged.joined(separator: ", "))) that did not pass the "
                            + "gate; publish or discard them first", code: 1)
                }
            } catch let error as RepositoryError {
                throw CleanExit.message("bulwark: \(error.reason)", code: 1)
            }
            let sha256 = hexEncode(SHA256.hash(data: contents))
            var body: [String: Any] = [
                "target": name, "sha256": sha256, "version": version, "securityVersion": securityVersion,
                "sbom": Data(sbomBytes).base64EncodedString(),
            ]
            if let vexBytes { body["vex"] = Data(vexBytes).base64EncodedString() }
            let (_, object) = try await connection.request(method: "POST", path: "/v1/releases/gate", json: body)
            guard let result = object as? [String: Any], let blocked = result["blocked"] as? Bool,
                let report = result["report"] as? String, let reportSHA256 = result["reportSHA256"] as? String,
                let sbomSHA256 = result["sbomSHA256"] as? String,
                hexEncode(SHA256.hash(data: Array(report.utf8))) == reportSHA256,
                sbomSHA256 == hexEncode(SHA256.hash(data: sbomBytes))
            else { throw CleanExit.message("bulwark: the hub's gate answer is malformed", code: 76) }
            if let reportOut { try Data(report.utf8).write(to: URL(fileURLWithPath: reportOut)) }
            let findings = result["findings"] as? [[String: Any]] ?? []
            // The report is what the signature will vouch for: it must be about these bytes and this release.
            let parsed = (try? TUFJSON.parse(Array(report.utf8)))?.objectValue
            guard let parsed, parsed["blocked"]?.boolValue == blocked, parsed["target"]?.stringValue == name,
                parsed["targetSHA256"]?.stringValue == sha256, parsed["version"]?.stringValue == version,
                parsed["securityVersion"]?.integerValue == Int64(securityVersion),
                parsed["sbomSHA256"]?.stringValue == sbomSHA256
            else { throw CleanExit.message("bulwark: the hub's gate report is not about this release", code: 76) }
            let unchecked = result["uncheckedCount"] as? Int ?? 0
            if blocked {
                var lines = ["bulwark: \(name) \(version) is blocked by the vulnerability gate (nothing was staged):"]
                for finding in findings where finding["blocking"] as? Bool == true {
                    let fixed = (finding["fixed"] as? [String] ?? []).joined(separator: ", ")
                    lines.append(
                        "  \(finding["advisory"] ?? "?") \(finding["severity"] ?? "?")"
                            + "\(finding["score"].map { " \($0)" } ?? "") in \(finding["purl"] ?? "?")"
                            + (fixed.isEmpty ? "" : " (fixed in \(fixed))"))
                }
                if result["truncated"] as? Bool == true { lines.append("  more findings than the gate rates") }
                if result["checked"] as? Int == 0 {
                    lines.append("  no component could be checked (no purl names an ecosystem with advisories)")
                } else if unchecked > 0 {
                    lines.append("  \(unchecked) components could not be checked (release.blockUnchecked)")
                }
                lines.append("  waive with `bulwark advisories waive ID --purl P --reason TEXT --until DATE`")
                throw CleanExit.message(lines.joined(separator: "\n"), code: 1)
            }
            let waivers = (result["waivers"] as? [[String: Any]] ?? []).compactMap { waiver -> JSONValue? in
                guard let advisory = waiver["advisory"] as? String, let purl = waiver["purl"] as? String,
                    let until = (waiver["until"] as? NSNumber)?.int64Value
                else { return nil }
                var entry = JSONObject()
                entry.set("advisory", .string(advisory))
                entry.set("purl", .string(purl))
                entry.set("until", .integer(until))
                return .object(entry)
            }
            var custom = JSONObject()
            custom.set("securityVersion", .integer(Int64(securityVersion)))
            custom.set("version", .string(version))
            var sbomEntry = JSONObject()
            sbomEntry.set("sha256", .string(sbomSHA256))
            custom.set("sbom", .object(sbomEntry))
            let vex = (result["vex"] as? [[String: Any]] ?? []).compactMap { statement -> JSONValue? in
                guard let advisory = statement["advisory"] as? String,
                    let justification = statement["justification"] as? String
                else { return nil }
                var entry = JSONObject()
                entry.set("advisory", .string(advisory))
                entry.set("justification", .string(justification))
                return .object(entry)
            }
            var gate = JSONObject()
            gate.set("sha256", .string(reportSHA256))
            gate.set("blockSeverity", .string(result["blockSeverity"] as? String ?? ""))
            gate.set("waivers", .array(waivers))
            gate.set("vex", .array(vex))
            custom.set("gate", .object(gate))
            do {
                let lock = try RepositoryLock(directory: repo)
                defer { lock.release() }
                let repository = FileRepository(directory: repo)
                var editor = try repository.open()
                editor.keyPolicy =
                    ProcessInfo.processInfo.environment["BULWARK_CRYPTO_PROFILE"] == "fips" ? .fips : .any
                let listed = try editor.addTarget(path: name, contents: contents, role: role, custom: .object(custom))
                let published = try await repository.publish(
                    &editor, keyring: try KeyDirectory(path: keys).keyring())
                print(
                    "gate passed (\(findings.count) findings, \(waivers.count) waivers, \(vex.count) VEX statements, "
                        + "\(unchecked) components unchecked; report \(reportSHA256)); \(name) \(version) listed in "
                        + "\(listed); published \(published.joined(separator: ", "))")
            } catch let error as RepositoryError {
                throw CleanExit.message("bulwark: \(error.reason)", code: 1)
            }
        }

        static func read(_ path: String, what: String) throws -> [UInt8] {
            guard let data = FileManager.default.contents(atPath: path) else {
                throw CleanExit.message("bulwark: cannot read the \(what) \(path)", code: 66)
            }
            return Array(data)
        }
    }
}
