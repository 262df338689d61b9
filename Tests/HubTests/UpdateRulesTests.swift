import Crypto
import Foundation
import Testing

@testable import Agent

/// The update rules without files, processes or sockets: what a check decides, what a start (a boot) does with a
/// trial, when the health gate passes, and the archive reader that writes slots.
struct UpdateRulesTests {
    static func release(_ name: String, security: Int = 0, digest: String? = nil) -> Release {
        Release(
            path: name + ".tar", length: 100, hashes: ["sha256": digest ?? String(repeating: "ab", count: 32) + name],
            securityVersion: security, version: name)
    }

    /// `updates.requireGate`: a release without the vulnerability gate's evidence in its signed custom is refused;
    /// one with it installs; without the setting both install.
    @Test func aDeviceThatRequiresTheGateRefusesAnUngatedRelease() {
        let record = BootRecord()
        let plain = Self.release("v2", security: 2)
        var gated = Self.release("v3", security: 3)
        gated.gateReport = String(repeating: "1", count: 64)
        gated.sbom = String(repeating: "2", count: 64)
        guard
            case .refuse(let reason) = UpdateDecision.decide(
                assigned: "v2.tar", verified: plain, record: record, floor: 0, requireGate: true)
        else {
            Issue.record("an ungated release was not refused")
            return
        }
        #expect(reason.contains("not published through the vulnerability gate"))
        #expect(
            UpdateDecision.decide(assigned: "v3.tar", verified: gated, record: record, floor: 0, requireGate: true)
                == .install(gated, .a))
        #expect(
            UpdateDecision.decide(assigned: "v2.tar", verified: plain, record: record, floor: 0) == .install(plain, .a))
    }

    @Test func aCheckInstallsOnlyASignedNewReleaseAtOrAboveTheFloor() {
        var record = BootRecord()
        let v2 = Self.release("v2", security: 2)
        #expect(UpdateDecision.decide(assigned: nil, verified: nil, record: record, floor: 0) == .nothing)
        // The hub names a target the device's own TUF client does not find: refused, never fetched.
        guard
            case .refuse(let reason) = UpdateDecision.decide(
                assigned: "evil.tar", verified: nil, record: record, floor: 0)
        else {
            Issue.record("an unsigned assignment was not refused")
            return
        }
        #expect(reason.contains("not in the signed targets metadata"))
        // A verified entry for another path than the one assigned is not taken either.
        #expect(
            UpdateDecision.decide(assigned: "other.tar", verified: v2, record: record, floor: 0)
                != .install(v2, .a))
        #expect(UpdateDecision.decide(assigned: "v2.tar", verified: v2, record: record, floor: 0) == .install(v2, .a))
        // Below the floor: refused even though the hub assigns it and it is signed.
        guard
            case .refuse(let below) = UpdateDecision.decide(
                assigned: "v1.tar", verified: Self.release("v1", security: 1), record: record, floor: 2)
        else {
            Issue.record("a downgrade below the floor was not refused")
            return
        }
        #expect(below.contains("below this device's floor 2"))
        record.beginTrial(.a, release: v2, attempts: 2)
        #expect(UpdateDecision.decide(assigned: "v2.tar", verified: v2, record: record, floor: 0) == .busy)
        record.commit()
        #expect(UpdateDecision.decide(assigned: "v2.tar", verified: v2, record: record, floor: 2) == .current(v2))
        // The next release goes to the other slot.
        let v3 = Self.release("v3", security: 3)
        #expect(UpdateDecision.decide(assigned: "v3.tar", verified: v3, record: record, floor: 2) == .install(v3, .b))
        // A release that rolled back is not installed again until another one comes.
        record.beginTrial(.b, release: v3, attempts: 2)
        record.rollBack()
        #expect(record.active == .a && record.trial == nil)
        guard
            case .refuse(let again) = UpdateDecision.decide(assigned: "v3.tar", verified: v3, record: record, floor: 2)
        else {
            Issue.record("a rolled-back release was retried")
            return
        }
        #expect(again.contains("rolled back on this device before"))
        let v4 = Self.release("v4", security: 3)
        #expect(UpdateDecision.decide(assigned: "v4.tar", verified: v4, record: record, floor: 2) == .install(v4, .b))
        // Control characters in a name from the hub never reach a report.
        guard
            case .refuse(let printable) = UpdateDecision.decide(
                assigned: "a\u{1B}[2Jb", verified: nil, record: record, floor: 0)
        else { return }
        #expect(!printable.contains("\u{1B}"))
    }

    @Test func aStartDuringATrialUsesAnAttemptAndRollsBackWhenNoneIsLeft() {
        var record = BootRecord()
        #expect(record.atStart() == .nothing)
        let v1 = Self.release("v1")
        record.beginTrial(.a, release: v1, attempts: 1)
        record.commit()
        #expect(record.atStart() == .runActive(.a))
        let v2 = Self.release("v2")
        // Two attempts: the first start used one, a restart during the trial uses the second, the next rolls back.
        record.beginTrial(.b, release: v2, attempts: 2)
        #expect(record.attemptsLeft == 1)
        #expect(record.atStart() == .resumeTrial(.b))
        #expect(record.attemptsLeft == 0)
        guard case .rollBack(let trial, let to, let reason) = record.atStart() else {
            Issue.record("a trial without attempts left was not rolled back")
            return
        }
        #expect(trial == .b && to == .a && reason.contains("no attempts left"))
        #expect(record.active == .a && record.trial == nil && record.rejected == [v2.identity])
        #expect(record.atStart() == .runActive(.a))
        // Rejected releases are bounded.
        for n in 0..<40 {
            record.beginTrial(.b, release: Self.release("r\(n)"), attempts: 1)
            record.rollBack()
        }
        #expect(record.rejected.count == 16)
        // The record survives its own encoding (it is the file a bootloader would read).
        let decoded = try? JSONDecoder().decode(BootRecord.self, from: JSONEncoder().encode(record))
        #expect(decoded == record)
    }

    @Test func theHealthGateNeedsEveryProbeThePayloadAndTheHubInTime() {
        var gate = HealthGate(requiredProbes: 3, windowSeconds: 10)
        #expect(gate.probe(exitCode: 0, timedOut: false, at: 1) == .pending)
        #expect(gate.probe(exitCode: 0, timedOut: false, at: 2) == .pending)
        #expect(gate.probe(exitCode: 0, timedOut: false, at: 3) == .pending)  // the hub not reached yet
        #expect(gate.reachedHub(at: 4) == .passed)

        var failing = HealthGate(windowSeconds: 10)
        _ = failing.probe(exitCode: 0, timedOut: false, at: 1)
        #expect(
            failing.probe(exitCode: 1, timedOut: false, at: 2) == .failed("the health probe failed (exit status 1)"))
        // A verdict is final.
        #expect(failing.reachedHub(at: 3) == .failed("the health probe failed (exit status 1)"))

        var hung = HealthGate(windowSeconds: 10)
        #expect(hung.probe(exitCode: 15, timedOut: true, at: 5) == .failed("the health probe did not answer in time"))

        var crashed = HealthGate(windowSeconds: 10)
        _ = crashed.reachedHub(at: 1)
        guard case .failed(let reason) = crashed.payloadExited(status: 139, at: 2) else {
            Issue.record("a crashed payload passed")
            return
        }
        #expect(reason.contains("status 139"))

        var unreachable = HealthGate(windowSeconds: 10)
        for second in 1...3 { _ = unreachable.probe(exitCode: 0, timedOut: false, at: Double(second)) }
        #expect(unreachable.tick(at: 9) == .pending)
        guard case .failed(let late) = unreachable.tick(at: 10.5) else {
            Issue.record("a gate that never reached the hub passed")
            return
        }
        #expect(late.contains("did not reach the hub"))
    }

    // MARK: Archives

    /// One ustar header (and data) as `tar --format=ustar` writes it.
    static func entry(_ name: String, type: UInt8 = UInt8(ascii: "0"), mode: Int = 0o644, data: [UInt8] = [])
        -> [UInt8]
    {
        var header = [UInt8](repeating: 0, count: 512)
        func put(_ text: String, _ offset: Int) { for (i, b) in text.utf8.enumerated() { header[offset + i] = b } }
        put(name, 0)
        put(String(format: "%07o", mode), 100)
        put("0000000", 108)
        put("0000000", 116)
        put(String(format: "%011o", data.count), 124)
        put("00000000000", 136)
        header[156] = type
        put("ustar\0", 257)
        put("00", 263)
        for i in 148..<156 { header[i] = 32 }
        let sum = header.reduce(0) { $0 + Int($1) }
        put(String(format: "%06o", sum), 148)
        header[154] = 0
        header[155] = 32
        var padded = data
        padded += [UInt8](repeating: 0, count: (512 - data.count % 512) % 512)
        return header + padded
    }

    static func archive(_ entries: [[UInt8]]) -> [UInt8] { entries.flatMap { $0 } + [UInt8](repeating: 0, count: 1024) }

    static func extract(_ bytes: [UInt8]) throws -> (String, [SlotEntry]) {
        let base = NSTemporaryDirectory() + "ustar-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: base + "/slot", withIntermediateDirectories: true)
        try Data(bytes).write(to: URL(fileURLWithPath: base + "/a.tar"))
        return (base, try UstarReader.extract(base + "/a.tar", into: base + "/slot", maximumFiles: 100))
    }

    @Test func theArchiveReaderWritesFilesAndDirectoriesAndNothingElse() throws {
        let (base, entries) = try Self.extract(
            Self.archive([
                Self.entry("./", type: UInt8(ascii: "5"), mode: 0o755),
                Self.entry("./bin/", type: UInt8(ascii: "5"), mode: 0o755),
                Self.entry("./bin/app", mode: 0o755, data: Array("#!/bin/sh\n".utf8)),
                Self.entry("./VERSION", data: Array("2\n".utf8)),
            ]))
        #expect(entries.map(\.path) == ["bin", "bin/app", "VERSION"])
        #expect(entries[1].executable && !entries[2].executable)
        #expect(try String(contentsOfFile: base + "/slot/bin/app", encoding: .utf8) == "#!/bin/sh\n")

        let refused: [(String, [UInt8])] = [
            ("a path outside the slot", Self.archive([Self.entry("../evil", data: [1])])),
            ("a path with .. inside", Self.archive([Self.entry("bin/../../evil", data: [1])])),
            ("an absolute path", Self.archive([Self.entry("/etc/evil", data: [1])])),
            ("a symbolic link", Self.archive([Self.entry("link", type: UInt8(ascii: "2"))])),
            ("a hard link", Self.archive([Self.entry("link", type: UInt8(ascii: "1"))])),
            ("a device", Self.archive([Self.entry("dev", type: UInt8(ascii: "3"))])),
            (
                "a PAX header (which could rename the next entry)",
                Self.archive([Self.entry("x", type: UInt8(ascii: "x"))])
            ),
            ("a file listed twice", Self.archive([Self.entry("a", data: [1]), Self.entry("a", data: [2])])),
            ("a truncated archive", Array(Self.entry("a", data: Array(repeating: 7, count: 2000)).prefix(1000))),
            ("no end-of-archive blocks", Self.entry("a", data: [1])),
        ]
        for (what, bytes) in refused {
            #expect(throws: SlotError.self, "\(what) was accepted") { _ = try Self.extract(bytes) }
        }
        // A corrupted header (checksum) and a file that is not ustar.
        var corrupted = Self.archive([Self.entry("a", data: [1])])
        corrupted[0] = UInt8(ascii: "b")
        #expect(throws: SlotError.self) { _ = try Self.extract(corrupted) }
        #expect(throws: SlotError.self) { _ = try Self.extract(Array(repeating: 0x41, count: 2048)) }
        #expect(!FileManager.default.fileExists(atPath: base + "/evil"))
    }

    @Test func aSlotIsReadOnlyAndAnyChangeToItIsFound() throws {
        let base = NSTemporaryDirectory() + "slots-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: true)
        let store = DirectorySlotStore(root: base + "/slots", manifests: base + "/trust")
        try store.clear(.a)
        try Data(
            Self.archive([
                Self.entry("bin/", type: UInt8(ascii: "5"), mode: 0o755),
                Self.entry("bin/app", mode: 0o755, data: Array("#!/bin/sh\nsleep 100\n".utf8)),
                Self.entry("data.txt", data: Array("v1".utf8)),
            ])
        ).write(to: URL(fileURLWithPath: base + "/a.tar"))
        let bytes = Array(try Data(contentsOf: URL(fileURLWithPath: base + "/a.tar")))
        let signed = Release(
            path: "a.tar", length: Int64(bytes.count),
            hashes: ["sha256": SHA256.hash(data: bytes).map { String(format: "%02x", $0) }.joined()])
        // The archive no longer matches what was verified (changed on disk in between): nothing is kept.
        var other = signed
        other.hashes["sha256"] = String(repeating: "0", count: 64)
        #expect(throws: SlotError("the archive no longer matches its signed length and hashes")) {
            _ = try store.install(.a, from: base + "/a.tar", verifying: other)
        }
        try store.clear(.a)
        let protection = try store.install(.a, from: base + "/a.tar", verifying: signed)
        #expect(protection.hasPrefix("read-only"))
        try store.verify(.a)
        func mode(_ path: String) throws -> Int {
            (try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int) ?? -1
        }
        #expect(try mode(base + "/slots/a") == 0o555)
        #expect(try mode(base + "/slots/a/bin") == 0o555)
        #expect(try mode(base + "/slots/a/bin/app") == 0o555)
        #expect(try mode(base + "/slots/a/data.txt") == 0o444)
        #expect(try mode(base + "/trust/slot-a.manifest") == 0o600)

        if geteuid() == 0 {
            // As root the slot is also immutable: not even root writes it without undoing that first.
            #expect(protection == "read-only and immutable")
            #expect((try? "v2".write(toFile: base + "/slots/a/data.txt", atomically: false, encoding: .utf8)) == nil)
        }
        // Edited (by someone who can undo the protection), added, replaced by a link, removed: each is found.
        DirectorySlotStore.makeMutable(base + "/slots/a")
        chmod(base + "/slots/a/data.txt", 0o644)
        try "v2".write(toFile: base + "/slots/a/data.txt", atomically: false, encoding: .utf8)
        #expect(throws: SlotError("slot a: data.txt was modified")) { try store.verify(.a) }
        try "v1".write(toFile: base + "/slots/a/data.txt", atomically: false, encoding: .utf8)
        try store.verify(.a)
        chmod(base + "/slots/a", 0o755)
        try "x".write(toFile: base + "/slots/a/extra", atomically: false, encoding: .utf8)
        #expect(throws: SlotError("slot a: extra was added")) { try store.verify(.a) }
        unlink(base + "/slots/a/extra")
        unlink(base + "/slots/a/data.txt")
        try FileManager.default.createSymbolicLink(
            atPath: base + "/slots/a/data.txt", withDestinationPath: "/etc/hostname")
        #expect(throws: SlotError.self) { try store.verify(.a) }
        unlink(base + "/slots/a/data.txt")
        #expect(throws: SlotError("slot a: data.txt is missing")) { try store.verify(.a) }
        // A slot never installed by the agent has no manifest: it does not verify.
        #expect(throws: SlotError.self) { try store.verify(.b) }
        // A slots directory others may write (where the payload's user could replace the boot record) is refused.
        let open = DirectorySlotStore(root: base + "/open-slots", manifests: base + "/trust")
        try FileManager.default.createDirectory(atPath: base + "/open-slots", withIntermediateDirectories: false)
        chmod(base + "/open-slots", 0o777)
        #expect(throws: SlotError.self) { _ = try open.bootRecord() }
        // Clearing undoes the protection.
        try store.clear(.a)
        #expect(try FileManager.default.contentsOfDirectory(atPath: base + "/slots/a").isEmpty)
    }
}
