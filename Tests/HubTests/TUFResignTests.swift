import Foundation
import Hub
import Testing

/// The hub keeps the update repository's online roles fresh: with only the timestamp and snapshot keys, it re-signs
/// them before they expire (here: a window wider than their lifetime, so the first pass re-signs), and audits it.
@Suite(.serialized) struct TUFResignTests {
    @Test func hubResignsTimestampAndSnapshotWithOnlineKeysOnly() async throws {
        let binary = try HubProcessTests.binary
        let base = try temporaryDirectory("tuf-resign")
        let repository = base + "/repo"
        let allKeys = base + "/keys"
        let made = try await run(binary, ["tuf", "init", "--repo", repository, "--keys", allKeys])
        #expect(made.status == 0, "\(made.stderr)")
        // Only the online keys go to the hub.
        let online = base + "/online"
        try FileManager.default.createDirectory(
            atPath: online, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        for role in ["timestamp", "snapshot"] {
            try FileManager.default.copyItem(atPath: "\(allKeys)/\(role).pem", toPath: "\(online)/\(role).pem")
        }
        func version(_ file: String) throws -> Int {
            let data = try Data(contentsOf: URL(fileURLWithPath: "\(repository)/metadata/\(file)"))
            let object = try JSONSerialization.jsonObject(with: data) as? [String: Any]
            return (object?["signed"] as? [String: Any])?["version"] as? Int ?? -1
        }
        #expect(try version("timestamp.json") == 1)
        // An operator stages a target and has not published it (its targets key is offline): the hub must not.
        try "firmware".write(toFile: base + "/fw.bin", atomically: true, encoding: .utf8)
        let staged = try await run(binary, ["tuf", "add-target", "--repo", repository, base + "/fw.bin"])
        #expect(staged.status == 0, "\(staged.stderr)")

        // A key that is not an online key in the hub's directory is refused at start-up.
        let careless = base + "/careless"
        try FileManager.default.createDirectory(
            atPath: careless, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        for name in ["timestamp", "snapshot", "targets"] {
            try FileManager.default.copyItem(atPath: "\(allKeys)/\(name).pem", toPath: "\(careless)/\(name).pem")
        }
        await #expect(throws: HubStartupError.self) {
            _ = try await TestHub.start {
                $0.tufRepository = repository
                $0.tufOnlineKeys = careless
            }
        }

        let hub = try await TestHub.start {
            $0.tufRepository = repository
            $0.tufOnlineKeys = online
            $0.tufTimestampWithinSeconds = 2 * 86400  // longer than the 1-day lifetime: re-sign now
            $0.tufSnapshotWithinSeconds = 30 * 86400
        }
        var resigned = false
        for _ in 0..<50 where !resigned {
            try await Task.sleep(for: .milliseconds(100))
            resigned = try await hub.securityEvents().contains { $0.kind == "tuf-resigned" }
        }
        #expect(resigned)
        let detail = try await hub.securityEvents().first { $0.kind == "tuf-resigned" }?.detail ?? ""
        #expect(detail.contains("timestamp") && detail.contains("snapshot"), "\(detail)")
        #expect(try version("timestamp.json") >= 2, "snapshot re-signing publishes a timestamp too")
        #expect(try version("2.snapshot.json") == 2)
        #expect(try version("targets.json") == 1, "the staged target was not published by the hub")
        #expect(FileManager.default.fileExists(atPath: repository + "/staged/targets.json"))
        try await hub.stop()

        // The keys may not sit inside the published repository.
        var inside = HubConfiguration(dataDirectory: base + "/data")
        inside.tufRepository = repository
        inside.tufOnlineKeys = repository + "/keys"
        #expect(throws: HubStartupError.self) { try inside.validate() }
    }
}
