import Crypto
import Foundation
import Hub
import Store
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// `bulwark audit verify --anchor` and `bulwark audit anchor` against a data directory an attacker has rewritten:
/// the database file is theirs, the audit key and the anchors shipped elsewhere are not.
@Suite struct KeyedAuditCLITests {
    /// A hub that audited `events` security events and stopped, its data directory kept.
    static func stoppedHub(events: Int = 6) async throws -> String {
        let directory = try temporaryDirectory("keyed-audit")
        let hub = try await TestHub.start(directory: directory)
        for index in 1...events {
            try await hub.server.store.recordSecurityEvent(
                SecurityEvent(at: Date(), kind: "test-event", identity: nil, detail: "event number \(index)"))
        }
        try await hub.stop(keepData: true)
        return directory
    }

    static func records(_ directory: String) async throws -> [AuditRecord] {
        let store = try SQLiteHubStore(path: directory + "/bulwark.sqlite")
        let records = try await store.auditRecords(after: 0, limit: 10_000)
        try await store.close()
        return records
    }

    static func bulwark(_ arguments: [String]) async throws -> (status: Int32, stdout: String, stderr: String) {
        try await run(try HubProcessTests.binary, ["audit"] + arguments, timeout: 30)
    }

    /// (a) One record's detail edited in the file, and every hash after it recomputed and patched in, as an attacker
    /// without the key would: the unkeyed chain holds, the MAC of the edited record does not.
    @Test func aReHashedEditInTheDatabaseFileIsAMACFailure() async throws {
        let directory = try await Self.stoppedHub()
        let records = try await Self.records(directory)
        let target = try #require(records.firstIndex { $0.event.detail == "event number 3" })
        let path = directory + "/bulwark.sqlite"
        var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        let range = try #require(bytes.range(of: Data("event number 3".utf8)))
        bytes[range.upperBound - 1] = UInt8(ascii: "9")
        var forged = records
        forged[target].event.detail = "event number 9"
        for position in target..<forged.count {
            if position > target { forged[position].previousHash = forged[position - 1].hash }
            forged[position].hash = AuditChain.hash(
                sequence: forged[position].sequence, event: forged[position].event,
                previous: forged[position].previousHash)
            // Each hash sits in its record and in the next one's prev_hash: replace every copy.
            let old = Data(records[position].hash)
            while let found = bytes.range(of: old) { bytes.replaceSubrange(found, with: forged[position].hash) }
        }
        try bytes.write(to: URL(fileURLWithPath: path))
        #expect(AuditChain.verify(try await Self.records(directory)) == nil, "the re-hash beats the bare chain")

        let result = try await Self.bulwark(["verify", "--data", directory])
        #expect(result.status == 1, "\(result.stdout) \(result.stderr)")
        #expect(result.stderr.contains("audit record \(records[target].sequence): its MAC does not match"))
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// (b) and (d): an anchor verifies against the untouched log and against the log grown since; a database rolled
    /// back to a copy from before the anchor (the tail cut off, a valid shorter chain with valid MACs) is refused.
    @Test func truncationBehindAnAnchorIsRefused() async throws {
        let directory = try await Self.stoppedHub()
        let path = directory + "/bulwark.sqlite"
        let before = try Data(contentsOf: URL(fileURLWithPath: path))
        let firstAnchor = directory + "/anchor-1.json"
        let anchored = try await Self.bulwark(["anchor", "--data", directory, "--out", firstAnchor])
        #expect(anchored.status == 0, "\(anchored.stderr)")
        #expect(anchored.stdout.contains("audit anchor written"))
        let secondAnchor = directory + "/anchor-2.json"
        #expect(try await Self.bulwark(["anchor", "--data", directory, "--out", secondAnchor]).status == 0)
        let records = try await Self.records(directory)
        #expect(records.filter { $0.event.kind == "audit-anchored" }.count == 2)

        let intact = try await Self.bulwark([
            "verify", "--data", directory, "--anchor", firstAnchor, "--anchor", secondAnchor,
        ])
        #expect(intact.status == 0, "\(intact.stdout) \(intact.stderr)")
        #expect(intact.stdout.contains("audit log intact: \(records.count) records"))
        #expect(intact.stdout.contains("\(records.count) keyed") && intact.stdout.contains("2 anchors ok"))

        // Roll the database back to the copy taken before either anchor.
        for suffix in ["-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) }
        try before.write(to: URL(fileURLWithPath: path))
        let plain = try await Self.bulwark(["verify", "--data", directory])
        #expect(plain.status == 0, "without an anchor the cut is invisible: \(plain.stderr)")
        let truncated = try await Self.bulwark(["verify", "--data", directory, "--anchor", secondAnchor])
        #expect(truncated.status == 1)
        #expect(truncated.stderr.contains("truncated"), "\(truncated.stderr)")
        #expect(truncated.stderr.contains("audit record \(records.count - 1):"), "\(truncated.stderr)")
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// (c) An anchor signed by another key, or a genuine one edited to vouch for less, is refused.
    @Test func aForgedAnchorIsRefused() async throws {
        let directory = try await Self.stoppedHub()
        let checkpoint = AuditAnchor.Checkpoint(of: try await Self.records(directory), at: Date())
        let forged = directory + "/forged.json"
        try Data(try AuditAnchor(signing: checkpoint, with: P256.Signing.PrivateKey()).json).write(
            to: URL(fileURLWithPath: forged))
        let result = try await Self.bulwark(["verify", "--data", directory, "--anchor", forged])
        #expect(result.status == 1)
        #expect(result.stderr.contains("anchor \(forged) is NOT valid"), "\(result.stderr)")

        let genuine = directory + "/genuine.json"
        #expect(try await Self.bulwark(["anchor", "--data", directory, "--out", genuine]).status == 0)
        let text = try String(contentsOfFile: genuine, encoding: .utf8)
        let lowered = text.replacingOccurrences(
            of: "\"count\" : \(checkpoint.count)", with: "\"count\" : \(checkpoint.count - 2)")
        #expect(lowered != text)
        try lowered.write(toFile: genuine, atomically: true, encoding: .utf8)
        let altered = try await Self.bulwark(["verify", "--data", directory, "--anchor", genuine])
        #expect(altered.status == 1)
        #expect(altered.stderr.contains("signature"), "\(altered.stderr)")
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// Without the key, verify says the MACs were not checked and does not exit 0; given the key, it does.
    @Test func verifyWithoutTheKeySaysTheMACsWereNotChecked() async throws {
        let directory = try await Self.stoppedHub()
        let elsewhere = try temporaryDirectory("audit-key") + "/audit.key"
        try FileManager.default.moveItem(atPath: directory + "/audit.key", toPath: elsewhere)
        let unchecked = try await Self.bulwark(["verify", "--data", directory])
        #expect(unchecked.status == 2)
        #expect(unchecked.stdout.contains("MACs NOT checked"))
        let checked = try await Self.bulwark(["verify", "--data", directory, "--key-file", elsewhere])
        #expect(checked.status == 0, "\(checked.stderr)")
        #expect(!checked.stdout.contains("NOT"))
        // Anchoring appends a record, which must carry a MAC: without the key it refuses.
        let anchor = try await Self.bulwark(["anchor", "--data", directory, "--out", directory + "/a.json"])
        #expect(anchor.status == 66)
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// (f) The key is created 0600, and a key file others can read stops the hub, in the data directory or where
    /// `audit.keyFile` points.
    @Test func anAuditKeyReadableByOthersStopsTheHub() async throws {
        let directory = try await Self.stoppedHub(events: 1)
        var info = stat()
        #expect(stat(directory + "/audit.key", &info) == 0 && info.st_mode & 0o777 == 0o600)
        chmod(directory + "/audit.key", 0o640)
        await #expect {
            try await TestHub.start(directory: directory)
        } throws: { error in
            "\(error)".contains("chmod 600 \(directory)/audit.key")
        }
        chmod(directory + "/audit.key", 0o600)

        // A keyed log whose key is not where `audit.keyFile` points: refused (a new key there would leave records
        // under two keys, and the log unverifiable); moved there, the key is used.
        let outside = try temporaryDirectory("audit-key-file") + "/hub-audit.key"
        await #expect {
            try await TestHub.start(directory: directory) { $0.auditKeyFile = outside }
        } throws: { error in
            "\(error)".contains("\(outside) is missing")
        }
        try FileManager.default.moveItem(atPath: directory + "/audit.key", toPath: outside)
        let configured = try await TestHub.start(directory: directory) { $0.auditKeyFile = outside }
        try await configured.stop(keepData: true)
        #expect(stat(outside, &info) == 0 && info.st_mode & 0o777 == 0o600)
        chmod(outside, 0o644)
        await #expect {
            try await TestHub.start(directory: directory) { $0.auditKeyFile = outside }
        } throws: { error in
            "\(error)".contains("chmod 600 \(outside)")
        }
        try? FileManager.default.removeItem(atPath: directory)
    }

    @Test func theKeyFileIsASetting() async throws {
        let configuration = try await HubConfiguration.load(
            dataDirectory: "/tmp/x", configFile: nil, environment: ["BULWARK_AUDIT_KEY_FILE": "/secrets/audit.key"])
        #expect(configuration.auditKeyPath == "/secrets/audit.key")
        #expect(HubConfiguration(dataDirectory: "/d").auditKeyPath == "/d/audit.key")
    }
}
