import Core
import Crypto
import Foundation
import HubClient
import Store
import Testing

@testable import Agent
@testable import Hub

#if canImport(Glibc)
    import Glibc
#endif

/// Updates that install themselves, attacked: a hub with a `bulwark tuf` repository, an agent that checks, downloads,
/// installs into the inactive slot, runs the payload's health gate, commits or rolls back, and reports; and every
/// way a release can be bad (unsigned, altered, endless, below the floor, failing, crashing, hanging, tampered with)
/// ends with nothing installed and the device on its good version.
@Suite(.serialized) struct UpdateAgentTests {
    typealias Repository = PinRotationTests.Repository

    /// A release of the test payload: `bin/app` (records its pid and slot in the marker file given as its argument,
    /// then runs until told to stop, or exits at once when `crashes`), `bin/health` (exit 0, exit 1, or hang), and
    /// `bulk` (filler, so downloads take more than one read). Published with `bulwark tuf add-target` + `publish`.
    enum Health: String {
        case healthy = "exit 0"
        case failing = "exit 1"
        case hanging = "sleep 30"
        case slow = "sleep 1; exit 0"
    }

    @discardableResult
    static func publish(
        _ repository: Repository, _ name: String, security: Int, health: Health = .healthy, crashes: Bool = false,
        bulk: Int = 64 * 1024
    ) async throws -> [UInt8] {
        let archive = try await build(repository, name, health: health, crashes: crashes, bulk: bulk)
        let binary = try HubProcessTests.binary
        let added = try await run(
            binary,
            ["tuf", "add-target", "--repo", repository.path, "--security-version", "\(security)", archive])
        #expect(added.status == 0, "\(added.stderr)")
        let published = try await run(binary, ["tuf", "publish", "--repo", repository.path, "--keys", repository.keys])
        #expect(published.status == 0, "\(published.stderr)")
        return Array(try Data(contentsOf: URL(fileURLWithPath: archive)))
    }

    /// The test payload's release archive (see `publish`), built in the repository's base directory.
    static func build(
        _ repository: Repository, _ name: String, health: Health = .healthy, crashes: Bool = false,
        bulk: Int = 64 * 1024
    ) async throws -> String {
        let tree = repository.base + "/build-\(name)"
        try FileManager.default.createDirectory(atPath: tree + "/bin", withIntermediateDirectories: true)
        let app =
            crashes
            ? "#!/bin/sh\nexit 3\n"
            : """
            #!/bin/sh
            echo "$$ $BULWARK_SLOT \(name)" > "$1"
            trap 'exit 0' TERM
            while :; do sleep 0.1; done

            """
        try app.write(toFile: tree + "/bin/app", atomically: true, encoding: .utf8)
        try "#!/bin/sh\n\(health.rawValue)\n".write(toFile: tree + "/bin/health", atomically: true, encoding: .utf8)
        chmod(tree + "/bin/app", 0o755)
        chmod(tree + "/bin/health", 0o755)
        let random = try FileHandle(forReadingFrom: URL(fileURLWithPath: "/dev/urandom"))
        try (try random.read(upToCount: bulk) ?? Data()).write(to: URL(fileURLWithPath: tree + "/bulk"))
        try random.close()
        let archive = repository.base + "/\(name).tar"
        let tar = try await run("/usr/bin/tar", ["--format=ustar", "-cf", archive, "-C", tree, "."])
        #expect(tar.status == 0, "\(tar.stderr)")
        return archive
    }

    /// A paired device's state with the repository's root, and an agent that runs the payload from its slots.
    static func agent(
        _ hub: TestHub, _ repository: Repository, _ name: String, pins: [[UInt8]]? = nil,
        configure: (inout UpdateSettings) -> Void = { _ in }
    ) async throws -> (Agent, state: String, marker: String) {
        let state = try AgentTests.stateDirectory(hub, try await hub.enroll(name), pins: pins)
        try FileManager.default.createDirectory(atPath: state + "/trust", withIntermediateDirectories: false)
        chmod(state + "/trust", 0o700)
        try FileManager.default.copyItem(
            atPath: repository.path + "/metadata/root.json", toPath: state + "/trust/root.json")
        let marker = try temporaryDirectory("marker") + "/running"
        var configuration = AgentTests.configuration(hub, state)
        configuration.trustRefreshSeconds = 0
        configuration.renews = false
        var updates = UpdateSettings()
        updates.intervalSeconds = 0
        updates.payload = ["{slot}/bin/app", marker]
        updates.healthCommand = ["{slot}/bin/health"]
        updates.healthIntervalSeconds = 0.2
        updates.healthTimeoutSeconds = 1
        updates.healthWindowSeconds = 20
        updates.restartInitialSeconds = 0.1
        configure(&updates)
        configuration.updates = updates
        return (try Agent(configuration: configuration), state, marker)
    }

    static func hub(_ repository: Repository) async throws -> TestHub { try await PinRotationTests.hub(repository) }

    static func assign(_ hub: TestHub, _ target: String?) async throws {
        try await hub.server.store.setAssignment(.fleet, target: target)
    }

    /// The payload's marker: its pid, slot and release.
    static func running(_ marker: String) -> (pid: Int32, slot: String, release: String)? {
        guard let text = try? String(contentsOfFile: marker, encoding: .utf8) else { return nil }
        let fields = text.split(separator: " ").map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
        guard fields.count == 3, let pid = Int32(fields[0]), kill(pid, 0) == 0 else { return nil }
        return (pid, fields[1], fields[2])
    }

    static func events(_ hub: TestHub, _ kind: String) async throws -> [SecurityEvent] {
        try await hub.securityEvents().filter { $0.kind == kind }
    }

    /// Lets the test's temporary directories be removed (committed slots are immutable when the tests run as root).
    static func release(_ state: String) {
        for slot in ["a", "b"] { DirectorySlotStore.makeMutable(state + "/slots/" + slot) }
    }

    @Test func releasesCommitRollBackAndAreRefusedAndTheHubShowsIt() async throws {
        let repository = try await Repository.make("updates")
        let hub = try await Self.hub(repository)
        let (agent, state, marker) = try await Self.agent(hub, repository, "upd-e2e")
        defer { Self.release(state) }
        let running = Task { try await agent.run() }
        defer { running.cancel() }
        #expect(await AgentTests.eventually(20) { await agent.connection == .connected })
        let device = try DeviceID("upd-e2e")

        #expect(await agent.checkForUpdates() == "no release is assigned to this device")

        // v2: committed, the floor raised to its security version at commit, the payload running from slot a.
        try await Self.publish(repository, "app-v2", security: 2)
        try await Self.assign(hub, "app-v2.tar")
        let committed = await agent.checkForUpdates()
        #expect(committed == "committed: app-v2.tar in slot a", "\(committed)")
        #expect(await agent.updater.floor == 2)
        #expect(await AgentTests.eventually(20) { Self.running(marker)?.release == "app-v2" })
        #expect(Self.running(marker)?.slot == "a")
        #expect(await agent.checkForUpdates() == "current: app-v2.tar in slot a")
        #expect(
            try await AgentTests.eventually(10) {
                let update = try await hub.server.store.updateState(of: device)
                return update?.installedTarget == "app-v2.tar" && update?.lastStep == "committed"
                    && update?.floor == 2 && update?.slot == "a"
            })
        // The audit record is written just after the state it goes with.
        #expect(try await AgentTests.eventually(10) { try await !Self.events(hub, "update-committed").isEmpty })

        // v3 fails its probe: rolled back to v2 (started again from slot a), the floor unchanged.
        try await Self.publish(repository, "app-v3", security: 3, health: .failing)
        try await Self.assign(hub, "app-v3.tar")
        let failed = await agent.checkForUpdates()
        #expect(failed.hasPrefix("rolled back app-v3.tar: the health probe failed (exit status 1)"), "\(failed)")
        #expect(await agent.updater.floor == 2)
        #expect(await AgentTests.eventually(20) { Self.running(marker)?.release == "app-v2" })
        #expect(await agent.updater.record.active == .a)
        // …and is not tried again: nothing is downloaded.
        let again = await agent.checkForUpdates()
        #expect(again.contains("rolled back on this device before"), "\(again)")
        #expect(await agent.updater.lastFetchedBytes == 0)

        // A downgrade below the floor, signed and assigned: refused.
        try await Self.publish(repository, "app-v1", security: 1)
        try await Self.assign(hub, "app-v1.tar")
        let downgrade = await agent.checkForUpdates()
        #expect(downgrade.contains("below this device's floor 2"), "\(downgrade)")
        // An assignment naming a target that is not in signed metadata: refused, nothing fetched.
        try await Self.assign(hub, "unsigned.tar")
        let unsigned = await agent.checkForUpdates()
        #expect(unsigned.contains("not in the signed targets metadata"), "\(unsigned)")

        // A payload that crashes at start, and one whose probe hangs: rolled back.
        try await Self.publish(repository, "app-v4", security: 4, crashes: true)
        try await Self.assign(hub, "app-v4.tar")
        let crashed = await agent.checkForUpdates()
        #expect(crashed.contains("the payload exited during its trial (status 3)"), "\(crashed)")
        try await Self.publish(repository, "app-v5", security: 5, health: .hanging)
        try await Self.assign(hub, "app-v5.tar")
        let hung = await agent.checkForUpdates()
        #expect(hung.contains("the health probe did not answer in time"), "\(hung)")
        #expect(await AgentTests.eventually(20) { Self.running(marker)?.release == "app-v2" })
        #expect(await agent.updater.floor == 2)

        // The operator's view: the device on v2, the last step a rollback of v5; every outcome audited.
        #expect(
            try await AgentTests.eventually(10) {
                let update = try await hub.server.store.updateState(of: device)
                return update?.installedTarget == "app-v2.tar" && update?.lastStep == "rolled-back"
                    && update?.stepTarget == "app-v5.tar"
            })
        let status = try await hub.operatorRequest("GET", "/v1/updates/status")
        #expect(status.status == 200)
        let summary = try JSONSerialization.jsonObject(with: Data(status.body)) as? [String: Any]
        let targets = summary?["targets"] as? [[String: Any]] ?? []
        #expect(targets.first { $0["target"] as? String == "app-v2.tar" }?["running"] as? Int == 1)
        #expect(targets.first { $0["target"] as? String == "app-v5.tar" }?["rolledBack"] as? Int == 1)
        #expect(try await AgentTests.eventually(10) { try await Self.events(hub, "update-rolled-back").count >= 3 })
        #expect(try await AgentTests.eventually(10) { try await !Self.events(hub, "update-refused").isEmpty })
        let shown = try await hub.operatorRequest("GET", "/v1/devices/upd-e2e")
        #expect(shown.bodyText.contains(#""installed":"app-v2.tar""#), "\(shown.bodyText)")

        // The active slot edited on disk: found before the payload's next start, reported; the other slot holds a
        // release that rolled back, so the agent does not fall back to it: the payload stops.
        guard let pid = Self.running(marker)?.pid else {
            Issue.record("the payload is not running")
            return
        }
        DirectorySlotStore.makeMutable(state + "/slots/a")
        chmod(state + "/slots/a/bin/app", 0o755)
        try "#!/bin/sh\necho pwned\nsleep 100\n".write(
            toFile: state + "/slots/a/bin/app", atomically: false, encoding: .utf8)
        kill(pid, SIGKILL)
        #expect(await AgentTests.eventually(10) { await agent.updater.lastStep == "slot-tampered" })
        #expect(try await AgentTests.eventually(10) { try await !Self.events(hub, "slot-tampered").isEmpty })
        try? await Task.sleep(for: .milliseconds(500))
        #expect(await !agent.updater.payloadRunning)
        await agent.stop()
    }

    @Test func alteredEndlessAndRolledBackDownloadsAreRefusedAndAResumeFetchesOnlyWhatIsMissing() async throws {
        let repository = try await Repository.make("downloads")
        let hub = try await Self.hub(repository)
        let (agent, state, marker) = try await Self.agent(hub, repository, "upd-dl")
        defer { Self.release(state) }
        let running = Task { try await agent.run() }
        defer { running.cancel() }

        // v2 (1 MiB), half of it already on disk from an interrupted download: only the rest is fetched.
        let v2 = try await Self.publish(repository, "big-v2", security: 2, bulk: 1 << 20)
        try await Self.assign(hub, "big-v2.tar")
        let digest = SHA256.hash(data: v2).map { String(format: "%02x", $0) }.joined()
        try FileManager.default.createDirectory(atPath: state + "/slots", withIntermediateDirectories: true)
        try Data(v2.prefix(v2.count / 2)).write(to: URL(fileURLWithPath: state + "/slots/a.part"))
        try #"{"identity":"\#(digest)"}"#.write(toFile: state + "/slots/a.part.json", atomically: true, encoding: .utf8)
        let resumed = await agent.checkForUpdates()
        #expect(resumed == "committed: big-v2.tar in slot a", "\(resumed)")
        #expect(await agent.updater.lastFetchedBytes == Int64(v2.count - v2.count / 2))
        #expect(!FileManager.default.fileExists(atPath: state + "/slots/a.part"))
        #expect(await AgentTests.eventually(20) { Self.running(marker)?.release == "big-v2" })

        // What the device trusts now, kept to replay it later.
        let oldTimestamp = try Data(contentsOf: URL(fileURLWithPath: repository.path + "/metadata/timestamp.json"))

        // v3 altered on the hub's disk after signing (same length): refused, nothing installed, the partial removed.
        let v3 = try await Self.publish(repository, "big-v3", security: 3, bulk: 1 << 20)
        try await Self.assign(hub, "big-v3.tar")
        let v3Digest = SHA256.hash(data: v3).map { String(format: "%02x", $0) }.joined()
        let served = repository.path + "/targets/\(v3Digest).big-v3.tar"
        #expect(FileManager.default.fileExists(atPath: served))
        var altered = v3
        altered[altered.count - 600] ^= 0xFF
        try Data(altered).write(to: URL(fileURLWithPath: served))
        let tampered = await agent.checkForUpdates()
        #expect(tampered.contains("does not match its signed hashes"), "\(tampered)")
        #expect(!FileManager.default.fileExists(atPath: state + "/slots/b.part"))
        let record = await agent.updater.record
        #expect(record.active == .a && record.trial == nil)

        // The same target served with endless data after it: refused at its signed length.
        try Data(v3 + [UInt8](repeating: 0x41, count: 256 * 1024)).write(to: URL(fileURLWithPath: served))
        let endless = await agent.checkForUpdates()
        #expect(endless.contains("longer than its signed length"), "\(endless)")
        #expect(!FileManager.default.fileExists(atPath: state + "/slots/b.part"))

        // A hub serving an older timestamp than the device has seen (rollback): refused, the device keeps v2.
        let newTimestamp = try Data(contentsOf: URL(fileURLWithPath: repository.path + "/metadata/timestamp.json"))
        try oldTimestamp.write(to: URL(fileURLWithPath: repository.path + "/metadata/timestamp.json"))
        let rolledBack = await agent.checkForUpdates()
        #expect(rolledBack.contains("the update metadata was refused"), "\(rolledBack)")
        try newTimestamp.write(to: URL(fileURLWithPath: repository.path + "/metadata/timestamp.json"))
        #expect(Self.running(marker)?.release == "big-v2")

        // With the right bytes back, v3 installs (the refusals left nothing behind that blocks it).
        try Data(v3).write(to: URL(fileURLWithPath: served))
        let fixed = await agent.checkForUpdates()
        #expect(fixed == "committed: big-v3.tar in slot b", "\(fixed)")
        #expect(await AgentTests.eventually(20) { Self.running(marker)?.release == "big-v3" })
        #expect(await agent.updater.floor == 3)
        await agent.stop()
    }

    /// What a device reports is data, not text to trust: control characters never reach the audit log or an
    /// operator's terminal, and a repeated report is audited once.
    @Test func hostileUpdateReportsAreSanitizedAndAuditedOnce() async throws {
        let repository = try await Repository.make("reports")
        let hub = try await Self.hub(repository)
        let (agent, state, _) = try await Self.agent(hub, repository, "upd-hostile")
        defer { Self.release(state) }
        let running = Task { try await agent.run() }
        defer { running.cancel() }
        for sequence in 1...3 {
            try await agent.send(
                Array(
                    #"{"step":"refused","floor":0,"target":"x\u001b[2J.tar","reason":"forged\nkind=update-committed","sequence":\#(sequence)}"#
                        .utf8), route: "events/update")
        }
        let device = try DeviceID("upd-hostile")
        #expect(
            try await AgentTests.eventually(10) { try await hub.server.store.updateState(of: device)?.sequence == 3 })
        let stored = try await hub.server.store.updateState(of: device)
        #expect(stored?.stepTarget == "x?[2J.tar" && stored?.reason == "forged?kind=update-committed")
        // Each report is observed in its own task: the first one's audit record may land after the third's state.
        #expect(try await AgentTests.eventually(10) { try await !Self.events(hub, "update-refused").isEmpty })
        // A report outside the schema (an unknown step) is refused by the gateway, never stored.
        try await agent.send(Array(#"{"step":"owned","floor":0,"sequence":9}"#.utf8), route: "events/update")
        try await Task.sleep(for: .milliseconds(500))
        #expect(try await hub.server.store.updateState(of: device)?.sequence == 3)
        let audited = try await Self.events(hub, "update-refused")
        #expect(audited.count == 1, "\(audited.map(\.detail))")
        #expect(audited.allSatisfy { !$0.detail.contains("\n") && !$0.detail.contains("\u{1B}") })
        await agent.stop()
    }

    /// The committed slot edited on disk while the other slot holds an earlier good release at the floor: the agent
    /// falls back to it, and the next check installs the assigned release again.
    @Test func aTamperedSlotFallsBackToTheOtherGoodOneAndIsReinstalled() async throws {
        let repository = try await Repository.make("fallback")
        let hub = try await Self.hub(repository)
        let (agent, state, marker) = try await Self.agent(hub, repository, "upd-fallback")
        defer { Self.release(state) }
        try await Self.publish(repository, "app-v2", security: 2)
        try await Self.assign(hub, "app-v2.tar")
        #expect(await agent.checkForUpdates() == "committed: app-v2.tar in slot a")
        try await Self.publish(repository, "app-v3", security: 2)
        try await Self.assign(hub, "app-v3.tar")
        #expect(await agent.checkForUpdates() == "committed: app-v3.tar in slot b")
        guard let pid = Self.running(marker)?.pid, Self.running(marker)?.release == "app-v3" else {
            Issue.record("v3 is not running")
            return
        }
        DirectorySlotStore.makeMutable(state + "/slots/b")
        try "#!/bin/sh\nexit 0 # always healthy\n".write(
            toFile: state + "/slots/b/bin/health", atomically: false, encoding: .utf8)
        kill(pid, SIGKILL)
        #expect(await AgentTests.eventually(10) { Self.running(marker)?.release == "app-v2" })
        #expect(await agent.updater.record.active == .a)
        let again = await agent.checkForUpdates()
        #expect(again == "committed: app-v3.tar in slot b", "\(again)")
        #expect(await AgentTests.eventually(10) { Self.running(marker)?.release == "app-v3" })
        await agent.stop()

        // A kill -9 in the middle of an install leaves a half-written inactive slot (no manifest, the boot record
        // unchanged): the restarted agent runs the committed slot, and the next install replaces the debris.
        DirectorySlotStore.makeMutable(state + "/slots/a")
        try FileManager.default.removeItem(atPath: state + "/slots/a")
        try FileManager.default.createDirectory(atPath: state + "/slots/a/bin", withIntermediateDirectories: true)
        try "half".write(toFile: state + "/slots/a/bin/app", atomically: false, encoding: .utf8)
        unlink(state + "/trust/slot-a.manifest")
        let restarted = try Agent(configuration: await Self.configuration(of: agent))
        await restarted.updater.start(reporter: { _ in }, hub: { true })
        #expect(await AgentTests.eventually(10) { Self.running(marker)?.release == "app-v3" })
        #expect(await restarted.updater.record.active == .b)
        try await Self.publish(repository, "app-v4", security: 2)
        try await Self.assign(hub, "app-v4.tar")
        let replaced = await restarted.checkForUpdates()
        #expect(replaced == "committed: app-v4.tar in slot a", "\(replaced)")
        await restarted.stop()
    }

    /// The configuration an agent was made with (to start it again on the same state, as after a restart).
    static func configuration(of agent: Agent) async -> AgentConfiguration {
        var configuration = agent.configuration
        configuration.updates = agent.updater.settings
        return configuration
    }

    /// As root, the payload and its probe run as an unprivileged user, from slots outside the 0700 state directory.
    @Test(.enabled(if: geteuid() == 0, "dropping privileges needs root"))
    func thePayloadAndItsProbeRunUnprivileged() async throws {
        guard let nobody = getpwnam("nobody")?.pointee.pw_uid else {
            Issue.record("no user nobody")
            return
        }
        let repository = try await Repository.make("privileges")
        let hub = try await Self.hub(repository)
        let slots = try temporaryDirectory("slots-root")
        chmod(slots, 0o755)
        let (agent, state, marker) = try await Self.agent(hub, repository, "upd-user") {
            $0.payloadUser = "nobody"
            $0.slotsDirectory = slots + "/slots"
        }
        defer { Self.release(slots) }
        chmod((marker as NSString).deletingLastPathComponent, 0o777)
        try await Self.publish(repository, "app-v2", security: 2)
        try await Self.assign(hub, "app-v2.tar")
        let committed = await agent.checkForUpdates()
        #expect(committed == "committed: app-v2.tar in slot a", "\(committed)")
        guard let pid = Self.running(marker)?.pid else {
            Issue.record("the payload is not running")
            return
        }
        let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        let uid = status.split(separator: "\n").first { $0.hasPrefix("Uid:") }?.split(whereSeparator: \.isWhitespace)
        #expect(uid?.dropFirst().allSatisfy { $0 == "\(nobody)" } == true, "real, effective, saved uid: \(uid ?? [])")
        // What the payload's user can reach: neither the agent's state nor its trust anchors.
        let write = try await run(
            "/usr/bin/setpriv",
            ["--reuid=\(nobody)", "--regid=65534", "--init-groups", "--", "/usr/bin/touch", state + "/trust/floor"])
        #expect(write.status != 0)
        await agent.stop()
    }

    @Test func nothingIsFetchedFromAnUnpinnedHubAndARootRotatedTwiceIsFollowed() async throws {
        let repository = try await Repository.make("roots")
        let hub = try await Self.hub(repository)
        try await Self.publish(repository, "app-v2", security: 2)
        try await Self.assign(hub, "app-v2.tar")

        // The hub presents a key this device does not pin: the check fails before a byte of metadata.
        let (stranger, strangerState, _) = try await Self.agent(
            hub, repository, "upd-pin", pins: [Array(repeating: 7, count: 32)])
        let refused = await stranger.checkForUpdates()
        #expect(refused.hasPrefix("check failed"), "\(refused)")
        #expect(!FileManager.default.fileExists(atPath: strangerState + "/trust/timestamp.json"))
        #expect(!FileManager.default.fileExists(atPath: strangerState + "/slots/a.part"))

        // The device paired at root version 1; the repository rotates its root keys twice.
        let (agent, state, marker) = try await Self.agent(hub, repository, "upd-root")
        defer { Self.release(state) }
        let binary = try HubProcessTests.binary
        for key in ["root-rotated-1", "root-rotated-2"] {
            let rotated = try await run(
                binary,
                [
                    "tuf", "rotate-key", "--repo", repository.path, "--keys", repository.keys, "--role", "root",
                    "--add", key,
                ])
            #expect(rotated.status == 0, "\(rotated.stderr)")
            let published = try await run(
                binary, ["tuf", "publish", "--repo", repository.path, "--keys", repository.keys])
            #expect(published.status == 0, "\(published.stderr)")
        }
        let committed = await agent.checkForUpdates()
        #expect(committed == "committed: app-v2.tar in slot a", "\(committed)")
        let root = try String(contentsOfFile: state + "/trust/root.json", encoding: .utf8)
        #expect(root.contains(#""version":3"#))
        #expect(await AgentTests.eventually(20) { Self.running(marker)?.release == "app-v2" })
        await agent.stop()

        // A month later by the device's clock, the repository's timestamp has expired (frozen metadata, TUF
        // §5.3.10): refused and reported, and the device keeps running what it runs.
        var configuration = AgentTests.configuration(hub, state)
        configuration.trustRefreshSeconds = 0
        configuration.renews = false
        configuration.updates = await agent.updater.settings
        configuration.updates.clock = { Date().addingTimeInterval(30 * 86_400) }
        let later = try Agent(configuration: configuration)
        await later.updater.start(reporter: { _ in }, hub: { true })
        #expect(await AgentTests.eventually(20) { Self.running(marker)?.release == "app-v2" })
        let frozen = await later.checkForUpdates()
        #expect(frozen.contains("the update metadata was refused") && frozen.contains("expired"), "\(frozen)")
        #expect(Self.running(marker)?.release == "app-v2")
        await later.stop()
    }
}
