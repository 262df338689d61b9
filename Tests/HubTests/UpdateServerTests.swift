import Core
import Foundation
import Testing

@testable import Hub

/// The hub serves the published update repository, read-only, to authenticated devices (through the gateway's
/// identity, quarantine and rate-limit stages), with ranges, and nothing else.
@Suite(.serialized) struct UpdateServerTests {
    @Test func devicesReadThePublishedRepositoryAndNothingElse() async throws {
        guard let curl = which("curl") else {
            Issue.record("curl is required (scripts/test installs it)")
            return
        }
        let binary = try HubProcessTests.binary
        let base = try temporaryDirectory("updates")
        let repository = base + "/repo"
        let keys = base + "/keys"
        #expect(try await run(binary, ["tuf", "init", "--repo", repository, "--keys", keys]).status == 0)
        let firmware = Array((0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 7) })
        try Data(firmware).write(to: URL(fileURLWithPath: base + "/fw.bin"))
        let refusedVersion = try await run(
            binary, ["tuf", "add-target", "--repo", repository, "--security-version", "-1", base + "/fw.bin"])
        #expect(refusedVersion.status != 0)
        #expect(
            try await run(
                binary, ["tuf", "add-target", "--repo", repository, "--security-version", "3", base + "/fw.bin"]
            ).status == 0)
        let published = try await run(binary, ["tuf", "publish", "--repo", repository, "--keys", keys])
        #expect(published.status == 0, "\(published.stderr)")
        // A staged edit (never served), a secret beside the repository, a link pointing at it.
        try "{}".write(toFile: repository + "/staged/targets.json", atomically: true, encoding: .utf8)
        try "secret".write(toFile: base + "/secret.txt", atomically: true, encoding: .utf8)
        try FileManager.default.createSymbolicLink(
            atPath: repository + "/targets/link.bin", withDestinationPath: base + "/secret.txt")
        let online = base + "/online"
        try FileManager.default.createDirectory(
            atPath: online, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        for role in ["timestamp", "snapshot"] {
            try FileManager.default.copyItem(atPath: "\(keys)/\(role).pem", toPath: "\(online)/\(role).pem")
        }
        let hub = try await TestHub.start {
            $0.tufRepository = repository
            $0.tufOnlineKeys = online
        }
        let device = try await hub.enroll("upd-1")
        let url = "https://127.0.0.1:\(hub.devicePort)/v1/updates"
        func fetch(_ path: String, _ extra: [String] = []) async throws -> (
            status: String, body: String, headers: String
        ) {
            let headerFile = base + "/headers-\(UUID().uuidString)"
            let result = try await run(
                curl,
                [
                    "-sS", "--path-as-is", "-o", "-", "-D", headerFile, "-w", "\n%{http_code}", "--cacert",
                    device.caFile, "--cert", device.certificateFile, "--key", device.keyFile,
                ] + extra + [url + path])
            let lines = result.stdout.split(separator: "\n", omittingEmptySubsequences: false)
            let headers = (try? String(contentsOfFile: headerFile, encoding: .utf8)) ?? ""
            return (String(lines.last ?? ""), lines.dropLast().joined(separator: "\n"), headers)
        }
        let timestamp = try await fetch("/metadata/timestamp.json")
        #expect(timestamp.status == "200")
        #expect(timestamp.body.contains(#""_type":"timestamp""#))
        #expect(try await fetch("/metadata/1.root.json").status == "200")
        let targetName = try #require(
            try FileManager.default.contentsOfDirectory(atPath: repository + "/targets").first {
                $0.hasSuffix(".fw.bin")
            })
        let whole = try await fetch("/targets/" + targetName)
        #expect(whole.status == "200")
        let etag =
            whole.headers.split(separator: "\r\n").first { $0.lowercased().hasPrefix("etag:") }
            .map { String($0.dropFirst(5)).trimmingCharacters(in: .whitespaces) } ?? "-"
        // A range, and If-Range with the current and a stale ETag.
        let part = try await fetch("/targets/" + targetName, ["-H", "Range: bytes=100-199"])
        #expect(part.status == "206")
        #expect(part.headers.lowercased().contains("content-range: bytes 100-199/300000"))
        #expect(
            try await fetch("/targets/" + targetName, ["-H", "Range: bytes=100-199", "-H", "If-Range: \(etag)"]).status
                == "206")
        #expect(
            try await fetch("/targets/" + targetName, ["-H", "Range: bytes=100-199", "-H", "If-Range: \"stale\""])
                .status == "200")
        #expect(try await fetch("/targets/" + targetName, ["-H", "Range: bytes=400000-"]).status == "416")
        // Nothing but published files.
        for path in [
            "/metadata/../staged/targets.json", "/metadata/%2e%2e%2fstaged%2ftargets.json", "/targets/link.bin",
            "/targets/../../secret.txt", "/targets/.tmp", "/targets//etc/passwd", "/metadata/missing.json",
        ] {
            let refused = try await fetch(path)
            #expect(refused.status == "404", "\(path): \(refused.status)")
            #expect(!refused.body.contains("secret") && !refused.body.contains("{}"))
        }
        // The director half: none, then the fleet default, a class's, the device's own; unknown targets refused.
        func assignment() async throws -> [String: Any] {
            let result = try await device.request(port: hub.devicePort, "GET", "/v1/updates/assignment", signed: false)
            #expect(result.status == 200)
            return jsonObject(result)
        }
        #expect(try await assignment()["target"] is NSNull)
        let cli = PairingEndToEndTests.CLI(binary: binary, hub: hub)
        #expect(try await cli.run(["updates", "default", "fw.bin"]).status == 0)
        let fleet = try await assignment()
        #expect(fleet["target"] as? String == "fw.bin" && fleet["scope"] as? String == "fleet")
        #expect((fleet["file"] as? [String: Any])?["length"] as? Int == 300_000, "the signed length")
        let custom = (fleet["file"] as? [String: Any])?["custom"] as? [String: Any]
        #expect(custom?["securityVersion"] as? Int == 3, "the anti-rollback security version, signed")
        #expect(try await cli.run(["updates", "default", "not-released.bin"]).status != 0, "not in signed metadata")
        // The one-request check: the highest root, the published timestamp byte for byte, the same assignment.
        let checked = try await fetch("/check")
        #expect(checked.status == "200")
        let check = try JSONSerialization.jsonObject(with: Data(checked.body.utf8)) as? [String: Any]
        #expect(check?["root"] as? Int == 1)
        #expect(
            (check?["timestamp"] as? String).flatMap { Data(base64Encoded: $0) }
                == FileManager.default.contents(atPath: repository + "/metadata/timestamp.json"))
        #expect((check?["assignment"] as? [String: Any])?["target"] as? String == "fw.bin")
        #expect(try await cli.run(["device", "set-class", "upd-1", "camera"]).status == 0)
        #expect(try await cli.run(["updates", "assign-class", "camera", "fw.bin"]).status == 0)
        #expect(try await assignment()["scope"] as? String == "class")
        #expect(try await cli.run(["device", "assign", "upd-1", "fw.bin"]).status == 0)
        #expect(try await assignment()["scope"] as? String == "device")
        #expect(try await cli.run(["device", "assign", "upd-1", "--none"]).status == 0)
        #expect(try await assignment()["scope"] as? String == "class")
        #expect(try await hub.securityEvents().filter { $0.kind == "update-assigned" }.count == 4)

        // Pairing hands the device the repository's current root (its TUF trust anchor), inside the Noise channel.
        let work = try temporaryDirectory("pair-root")
        #expect(try await cli.run(["device", "label", "--id", "cam-u", "--out", work + "/cam-u"]).status == 0)
        #expect(try await cli.run(["pair", "claim", "@\(work)/cam-u/label.txt"]).status == 0)
        let paired = try await cli.run([
            "agent", "pair", "--hub", "127.0.0.1:\(hub.pairingPort)", "--label-dir", work + "/cam-u",
        ])
        #expect(paired.status == 0, "\(paired.stderr)")
        #expect(
            FileManager.default.contents(atPath: work + "/cam-u/state/trust/root.json")
                == FileManager.default.contents(atPath: repository + "/metadata/root.json"))

        // A quarantined device gets nothing.
        hub.server.gateway.quarantine.load(
            [(try DeviceID("upd-1"), Int64(Date().timeIntervalSince1970) + 600)],
            now: Int64(Date().timeIntervalSince1970))
        #expect(try await fetch("/metadata/timestamp.json").status == "403")
        try await hub.stop()
    }

    /// Metadata served from memory is never stale: a file replaced (renamed over, same size, same second) is read again.
    @Test func metadataFromMemoryFollowsTheFileOnDisk() throws {
        let directory = try temporaryDirectory("small-files")
        let cache = SmallFileCache()
        func serve() -> String? {
            UpdateRoutes.resolve(directory, "timestamp.json").flatMap { cache.bytes(of: $0) }.map { String(buffer: $0) }
        }
        try #"{"version":1}"#.write(toFile: directory + "/timestamp.json", atomically: true, encoding: .utf8)
        #expect(serve() == #"{"version":1}"#)
        #expect(serve() == #"{"version":1}"#)
        try #"{"version":2}"#.write(toFile: directory + "/timestamp.json", atomically: true, encoding: .utf8)
        #expect(serve() == #"{"version":2}"#)
        #expect(UpdateRoutes.isVersionedRoot("2.root.json") && UpdateRoutes.isVersionedRoot("10.root.json"))
        #expect(!UpdateRoutes.isVersionedRoot("root.json") && !UpdateRoutes.isVersionedRoot("x.root.json"))
        #expect(!UpdateRoutes.isVersionedRoot(".root.json") && !UpdateRoutes.isVersionedRoot("١.root.json"))
    }

    @Test func rangesAreParsedByTheLetter() {
        #expect(UpdateRoutes.parseRange("bytes=0-9", size: 100) == .some(0...9))
        #expect(UpdateRoutes.parseRange("bytes=90-", size: 100) == .some(90...99))
        #expect(UpdateRoutes.parseRange("bytes=-10", size: 100) == .some(90...99))
        #expect(UpdateRoutes.parseRange("bytes=50-500", size: 100) == .some(50...99))
        #expect(UpdateRoutes.parseRange("bytes=100-", size: 100) == .unsatisfiable)
        #expect(UpdateRoutes.parseRange("bytes=5-1", size: 100) == .none)
        #expect(UpdateRoutes.parseRange("bytes=0-1,5-6", size: 100) == .none, "several ranges: the whole file")
        #expect(UpdateRoutes.parseRange("items=0-1", size: 100) == .none)
    }
}
