import Agent
import Core
import Crypto
import Foundation
import HubClient
import TUFRepository
import Testing

@testable import Hub

/// The hub's pin set travels through TUF (`bulwark/pins.json`, signed by the targets role); a key rotation publishes
/// it before the switch, and agents follow without one stranded. A pin set that is tampered with, signed by the wrong
/// key, rolled back, or signed but unrelated to the pins held is refused.
@Suite(.serialized) struct PinRotationTests {
    /// An update repository (`bulwark tuf init`) and the hub's online-keys directory beside it.
    struct Repository {
        let base: String
        var path: String { base + "/repo" }
        var keys: String { base + "/keys" }
        var online: String { base + "/online" }
        var keyring: Keyring { get throws { try KeyDirectory(path: keys).keyring() } }

        static func make(_ name: String = "pins") async throws -> Repository {
            let repository = Repository(base: try temporaryDirectory(name))
            let created = try await run(
                try HubProcessTests.binary, ["tuf", "init", "--repo", repository.path, "--keys", repository.keys])
            #expect(created.status == 0, "\(created.stderr)")
            try FileManager.default.createDirectory(
                atPath: repository.online, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
            for role in ["timestamp", "snapshot"] {
                try FileManager.default.copyItem(
                    atPath: "\(repository.keys)/\(role).pem", toPath: "\(repository.online)/\(role).pem")
            }
            return repository
        }
    }

    static func hub(
        _ repository: Repository, configure: @escaping (inout HubConfiguration) -> Void = { _ in }
    ) async throws -> TestHub {
        try await TestHub.start {
            $0.tufRepository = repository.path
            $0.tufOnlineKeys = repository.online
            $0.tlsKeyCheckSeconds = 0.1
            // Every simulated agent connects from 127.0.0.1.
            $0.gateway.connectionRate = 100_000
            $0.gateway.connectionBurst = 100_000
            // The tests refresh far more often than devices do (hourly): the updates route's limit is not under test.
            $0.gateway.routeRate = 1000
            $0.gateway.routeBurst = 1000
            $0.gateway.deviceRate = 1000
            $0.gateway.deviceBurst = 1000
            configure(&$0)
        }
    }

    /// A device's state as `bulwark agent pair` leaves it when the hub has an update repository.
    static func agent(_ hub: TestHub, _ repository: Repository, _ name: String, refresh: Double) async throws -> Agent {
        let state = try AgentTests.stateDirectory(hub, try await hub.enroll(name))
        try FileManager.default.createDirectory(atPath: state + "/trust", withIntermediateDirectories: false)
        try FileManager.default.copyItem(
            atPath: repository.path + "/metadata/root.json", toPath: state + "/trust/root.json")
        var configuration = AgentTests.configuration(hub, state)
        configuration.trustRefreshSeconds = refresh
        configuration.renews = false
        return try Agent(configuration: configuration)
    }

    static func presented(_ hub: TestHub) async -> [UInt8]? {
        await TLSKeyRotation.presentedPin(host: "127.0.0.1", port: hub.devicePort)
    }

    /// A repository, a hub with it, and the hub's first pin set published (version 1).
    static func published() async throws -> (Repository, TestHub, Keyring) {
        let repository = try await Repository.make()
        let hub = try await Self.hub(repository)
        let keyring = try repository.keyring
        #expect(
            try await TLSKeyRotation.publishCurrent(
                dataDirectory: hub.directory, repository: repository.path, keyring: keyring
            ).version == 1)
        return (repository, hub, keyring)
    }

    @Test func aHundredAgentsFollowTwoKeyRotationsAndNoneIsStranded() async throws {
        let (repository, hub, keyring) = try await Self.published()
        var agents: [Agent] = []
        var runs: [Task<Void, any Error>] = []
        for index in 0..<100 {
            let agent = try await Self.agent(hub, repository, String(format: "rot-%03d", index), refresh: 5)
            agents.append(agent)
            runs.append(Task { try await agent.run() })
        }
        func all(_ condition: @escaping (Agent) async -> Bool) async -> Bool {
            for agent in agents where await !condition(agent) { return false }
            return true
        }
        #expect(
            await AgentTests.eventually(90) {
                await all {
                    let state = await $0.state
                    return await $0.connection == .connected && state.pinSetVersion == 1
                }
            })
        var active = hub.server.credentials.pins[0]
        for round in 1...2 {
            let started = ContinuousClock.now
            let result = try await TLSKeyRotation.rotate(
                dataDirectory: hub.directory, hubNames: [], crlDistributionPoints: nil, repository: repository.path,
                keyring: keyring, wait: .seconds(30), settle: 0, presentedPin: { await Self.presented(hub) })
            #expect(result.previousPin == active)
            #expect(result.versions == [2 * round, 2 * round + 1])
            #expect(await Self.presented(hub) == result.pins[0], "the hub presents the former backup key")
            active = result.pins[0]
            let followed = await AgentTests.eventually(90) {
                await all {
                    let state = await $0.state
                    return Set(state.pinned.pins) == Set(result.pins) && state.pinSetVersion == 2 * round + 1
                }
            }
            #expect(followed, "every agent holds the new pin set")
            // Every agent drops its session and connects again, to the new key: none is stranded.
            for agent in agents { await agent.reconnect() }
            #expect(await AgentTests.eventually(90) { await all { await $0.connection == .connected } })
            print("rotation \(round): 100 agents followed and reconnected in \(ContinuousClock.now - started)")
            for agent in agents { #expect(await agent.trustError == nil) }
        }
        // And they still deliver.
        for agent in agents { try await agent.send(Array(#"{"after":"rotation"}"#.utf8)) }
        #expect(await AgentTests.eventually(60) { await all { await $0.delivered >= 1 } })
        // Audited just after the hub presents the new key.
        #expect(
            try await AgentTests.eventually(10) {
                try await hub.securityEvents().filter { $0.kind == "tls-key-rotated" }.count >= 2
            })
        #expect(try await hub.securityEvents().filter { $0.kind == "tls-key-rotated" }.count == 2)
        for agent in agents { await agent.stop() }
        for task in runs { task.cancel() }
        try await hub.stop()
        try? FileManager.default.removeItem(atPath: repository.base)
    }

    /// The rules a new set follows are judged against the published one: a set listed whose file is gone (or
    /// changed) stops the next publication and rotation rather than let them through without a baseline.
    @Test func aPublishedSetThatCannotBeReadStopsTheNext() async throws {
        let (repository, hub, keyring) = try await Self.published()
        for name in try FileManager.default.contentsOfDirectory(atPath: repository.path + "/targets/bulwark") {
            try FileManager.default.removeItem(atPath: repository.path + "/targets/bulwark/" + name)
        }
        await #expect {
            try await TLSKeyRotation.publishCurrent(
                dataDirectory: hub.directory, repository: repository.path, keyring: keyring)
        } throws: { "\($0)".contains("missing or does not match") }
        await #expect {
            try await TLSKeyRotation.rotate(
                dataDirectory: hub.directory, hubNames: [], crlDistributionPoints: nil, repository: repository.path,
                keyring: keyring, wait: .seconds(1), settle: 0, hubRunning: false, presentedPin: { nil })
        } throws: { "\($0)".contains("missing or does not match") }
        #expect(await Self.presented(hub) == hub.server.credentials.pins[0], "nothing switched")
        try await hub.stop()
    }

    /// Under `crypto.profile: fips` the pin set is published like any other release: a repository whose keys are
    /// outside FIPS 186-5 (RSA-PSS with 2048 bits) does not sign it.
    @Test func aFipsHubPublishesPinSetsOnlyWithFipsKeys() async throws {
        let base = try temporaryDirectory("pins-rsa")
        let generated = try await run(
            try #require(which("openssl")),
            ["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", base + "/short.pem"])
        #expect(generated.status == 0, "\(generated.stderr)")
        let short = try FileSigner(pem: try String(contentsOfFile: base + "/short.pem", encoding: .utf8), name: "short")
        let spec = RoleKeySpec(keys: [short.publicKey])
        let repository = FileRepository(directory: base + "/repo")
        var editor = try repository.create(root: spec, timestamp: spec, snapshot: spec, targets: spec)
        try await repository.publish(&editor, keyring: Keyring([short]))
        let pins = [PinSetTests.pin(1), PinSetTests.pin(2)]
        do {
            try await TLSKeyRotation.publish(
                pins, repository: repository.directory, keyring: Keyring([short]), dataDirectory: base,
                keyPolicy: .fips)
            Issue.record("a pin set was signed with a 2048-bit RSA key under the FIPS profile")
        } catch {
            #expect("\(error)".contains("is outside the FIPS profile"), "\(error)")
        }
        #expect(
            try await TLSKeyRotation.publish(
                pins, repository: repository.directory, keyring: Keyring([short]), dataDirectory: base) == 1)
    }

    @Test func anAttackersPinSetIsRefused() async throws {
        let repository = try await Repository.make()
        let hub = try await Self.hub(repository)
        let keyring = try repository.keyring
        let pins = hub.server.credentials.pins
        try await TLSKeyRotation.publish(
            pins, repository: repository.path, keyring: keyring, dataDirectory: hub.directory)
        let agent = try await Self.agent(hub, repository, "pin-victim", refresh: 0)
        let running = Task { try await agent.run() }
        #expect(await AgentTests.eventually(30) { await agent.connection == .connected })
        await agent.refreshTrust()
        #expect(await agent.state.pinSetVersion == 1)
        #expect(await agent.trustError == nil)
        let attacker = PinSetTests.pin(0xEE)
        let metadata = repository.path + "/metadata"
        let saved = repository.base + "/metadata-v1"
        try FileManager.default.copyItem(atPath: metadata, toPath: saved)

        func expectUnchanged(_ what: String, _ reason: String) async {
            let state = await agent.state
            #expect(state.pinSetVersion == 1, "\(what)")
            #expect(state.pinned.pins == pins, "\(what)")
            let error = await agent.trustError ?? ""
            #expect(error.contains(reason), "\(what): \(error)")
            let onDisk = try? AgentState.load(state.directory)
            #expect(onDisk?.pinned.pins == pins, "\(what)")
        }

        // 1. Signed through TUF but sharing no key with the pins held (a stolen targets key alone).
        try await TLSKeyRotation.publish(
            [attacker], repository: repository.path, keyring: keyring, dataDirectory: hub.directory)
        await agent.refreshTrust()
        await expectUnchanged("unrelated set", "leaves out the key the hub presents")
        let directory = await agent.state.directory
        let refused = try await run(try HubProcessTests.binary, ["agent", "status", "--state", directory])
        #expect(refused.status == 1, "not current while a pin set is refused")
        #expect(refused.stdout.contains("published set version 1"), "\(refused.stdout)")
        #expect(refused.stdout.contains("trust error"), "\(refused.stdout)")
        // 1b. Signed, keeps the presented key, but adds three unknown keys at once (a joining node adds two).
        try await TLSKeyRotation.publish(
            [pins[0], attacker, PinSetTests.pin(0xEF), PinSetTests.pin(0xF0)], repository: repository.path,
            keyring: keyring, dataDirectory: hub.directory)
        await agent.refreshTrust()
        await expectUnchanged("three new keys", "adds 3 keys at once")

        // 2. The target's bytes replaced on the server (no signature covers them): length or hash mismatch.
        try await TLSKeyRotation.publish(
            [attacker, pins[0]], repository: repository.path, keyring: keyring, dataDirectory: hub.directory)
        let published = try #require(
            try FileManager.default.contentsOfDirectory(atPath: repository.path + "/targets/bulwark").first {
                (try? PinSet(
                    json: Array(Data(contentsOf: URL(fileURLWithPath: repository.path + "/targets/bulwark/" + $0)))))?
                    .version == 4
            })
        // Same length, other bytes: only the hash can tell.
        try Data(PinSet(version: 4, pins: [PinSetTests.pin(0xDD), pins[0]]).json).write(
            to: URL(fileURLWithPath: repository.path + "/targets/bulwark/" + published))
        await agent.refreshTrust()
        await expectUnchanged("tampered target", "lengthOrHashMismatch")

        // 3. Metadata signed by keys the device's root does not trust (an attacker's own repository).
        let real = repository.base + "/metadata-real"
        try FileManager.default.copyItem(atPath: metadata, toPath: real)
        let foreign = try await Repository.make("pins-attacker")
        for _ in 0..<6 {
            try await TLSKeyRotation.publish(
                [attacker, pins[0]], repository: foreign.path, keyring: try foreign.keyring, dataDirectory: foreign.base
            )
        }
        try FileManager.default.removeItem(atPath: metadata)
        try FileManager.default.copyItem(atPath: foreign.path + "/metadata", toPath: metadata)
        await agent.refreshTrust()
        await expectUnchanged("wrong signing keys", "thresholdNotReached")

        // 4. The repository rolled back to the metadata of version 1 (older timestamp, snapshot and targets).
        try FileManager.default.removeItem(atPath: metadata)
        try FileManager.default.copyItem(atPath: saved, toPath: metadata)
        await agent.refreshTrust()
        await expectUnchanged("rolled back", "badVersion")

        // The real repository again: a proper pin set that keeps continuity is taken (the refusals were not blanket).
        try FileManager.default.removeItem(atPath: metadata)
        try FileManager.default.copyItem(atPath: real, toPath: metadata)
        let next = PinSetTests.pin(0x42)
        let version = try await TLSKeyRotation.publish(
            [pins[0], pins[1], next], repository: repository.path, keyring: keyring, dataDirectory: hub.directory)
        await agent.refreshTrust()
        #expect(await agent.trustError == nil)
        #expect(await agent.state.pinSetVersion == version)
        #expect(await agent.state.pinned.pins == [pins[0], pins[1], next])
        let current = try await run(try HubProcessTests.binary, ["agent", "status", "--state", directory])
        #expect(current.status == 0, "\(current.stdout)")
        #expect(current.stdout.contains("3 pins, published set version \(version)"), "\(current.stdout)")
        #expect(current.stdout.contains("TUF root version 1"), "\(current.stdout)")
        await agent.stop()
        running.cancel()
        try await hub.stop()
        try? FileManager.default.removeItem(atPath: repository.base)
        try? FileManager.default.removeItem(atPath: foreign.base)
    }

    /// The operator's commands, as a separate process beside the running hub.
    @Test func theCommandsRotateARunningHub() async throws {
        let binary = try HubProcessTests.binary
        let repository = try await Repository.make()
        let hub = try await Self.hub(repository)
        var environment = ProcessInfo.processInfo.environment
        environment["BULWARK_DEVICE_PORT"] = String(hub.devicePort)
        let common = ["--data", hub.directory, "--repo", repository.path]
        let missingKeys = try await run(binary, ["hub", "publish-pins"] + common, environment: environment)
        #expect(missingKeys.status != 0)
        #expect(missingKeys.stderr.contains("--keys is required"))
        let noHub = try await run(
            binary,
            [
                "hub", "publish-pins", "--data", try temporaryDirectory("nohub"), "--repo", repository.path,
                "--keys", repository.keys,
            ], environment: environment)
        #expect(noHub.status != 0)
        #expect(noHub.stderr.contains("holds no hub keys"), "\(noHub.stderr)")
        let published = try await run(
            binary, ["hub", "publish-pins"] + common + ["--keys", repository.keys], environment: environment)
        #expect(published.status == 0, "\(published.stderr)")
        #expect(published.stdout.contains("version 1"))
        // Someone else's staged edit is not this command's to publish.
        #expect(
            try await run(binary, ["tuf", "remove-target", "--repo", repository.path, PinSet.targetPath]).status == 0)
        let staged = try await run(
            binary, ["hub", "rotate-tls-key"] + common + ["--keys", repository.keys], environment: environment)
        #expect(staged.status != 0)
        #expect(staged.stderr.contains("staged edits"), "\(staged.stderr)")
        #expect(await Self.presented(hub) == hub.server.credentials.pins[0], "nothing changed")
        try FileManager.default.removeItem(atPath: repository.path + "/staged")
        let backup = hub.server.credentials.pins[1]
        let rotated = try await run(
            binary, ["hub", "rotate-tls-key"] + common + ["--keys", repository.keys, "--wait", "20"],
            environment: environment)
        #expect(rotated.status == 0, "\(rotated.stderr)")
        #expect(rotated.stdout.contains("pin set versions 2, 3"), "\(rotated.stdout)")
        #expect(await Self.presented(hub) == backup)
        #expect(hub.server.credentials.pins[0] == backup)
        for file in ["hub.key", "hub-backup.key"] {
            var info = stat()
            #expect(stat(hub.directory + "/" + file, &info) == 0 && info.st_mode & 0o077 == 0, "\(file) stays private")
        }
        #expect(!FileManager.default.fileExists(atPath: hub.directory + "/hub-next.key"))
        try await hub.stop()
        try? FileManager.default.removeItem(atPath: repository.base)
    }

    /// A rotation that died between its renames (the backup moved to `hub.key`, `hub-next.key` not yet the backup,
    /// the certificate not yet replaced) is finished at the next start: the hub presents the new key with the new
    /// backup, never a key without a certificate or a fresh backup nobody pinned.
    @Test func aRotationInterruptedByACrashIsFinishedAtStart() async throws {
        let first = try await TestHub.start()
        let directory = first.directory
        let (a, b) = (first.server.credentials.pins[0], first.server.credentials.pins[1])
        try await first.stop(keepData: true)
        let next = P256.Signing.PrivateKey()
        try SecretFiles.create(directory + "/hub-next.key", contents: next.pemRepresentation)
        #expect(rename(directory + "/hub-backup.key", directory + "/hub.key") == 0)
        let second = try await TestHub.start(directory: directory)
        #expect(second.server.credentials.pins == [b, ServerIdentity.pin(next.publicKey)])
        #expect(await Self.presented(second) == b)
        #expect(await Self.presented(second) != a)
        try await second.stop()
    }

    /// A rotation whose hub did not switch in time stops with the set that keeps the old key published; run again, it
    /// resumes (publishes the final set) rather than starting a second rotation, and a new rotation waits for the
    /// settle interval.
    @Test func anUnfinishedRotationResumesAndANewOneWaits() async throws {
        let repository = try await Repository.make()
        let slow = try await TestHub.start {
            $0.tufRepository = repository.path
            $0.tufOnlineKeys = repository.online
            $0.tlsKeyCheckSeconds = 3600  // this hub will not notice the switch
        }
        let directory = slow.directory
        let keyring = try repository.keyring
        let (a, b) = (slow.server.credentials.pins[0], slow.server.credentials.pins[1])
        func rotate(_ hub: TestHub) async throws -> TLSKeyRotation.Result {
            try await TLSKeyRotation.rotate(
                dataDirectory: directory, hubNames: [], crlDistributionPoints: nil, repository: repository.path,
                keyring: keyring, wait: .seconds(1), settle: 3600, presentedPin: { await Self.presented(hub) })
        }
        await #expect(throws: HubStartupError.self) { try await rotate(slow) }
        #expect(await Self.presented(slow) == a)
        let published = try PinSet(
            json: Array(
                try Data(
                    contentsOf: URL(fileURLWithPath: repository.path + "/targets/bulwark").appendingPathComponent(
                        try #require(
                            try FileManager.default.contentsOfDirectory(atPath: repository.path + "/targets/bulwark")
                                .first)))))
        #expect(published.pins.count == 3 && published.pins.contains(a), "the set that keeps A stays published")
        try await slow.stop(keepData: true)
        // The hub restarts and presents B; the command, run again, only finishes.
        let hub = try await TestHub.start(directory: directory) {
            $0.tufRepository = repository.path
            $0.tufOnlineKeys = repository.online
        }
        #expect(await Self.presented(hub) == b)
        let resumed = try await rotate(hub)
        #expect(resumed.previousPin == a)
        #expect(resumed.pins[0] == b)
        #expect(resumed.versions == [2], "only the final set was published")
        #expect(hub.server.credentials.pins == resumed.pins)
        // Another rotation at once is refused: devices may not hold {B, C} yet.
        await #expect(throws: HubStartupError.self) { try await rotate(hub) }
        #expect(await Self.presented(hub) == b)
        try await hub.stop()
        try? FileManager.default.removeItem(atPath: repository.base)
    }

    /// The running hub switches only to a key devices pin: a key put in `hub.key` by hand (with a valid certificate
    /// from the hub CA) is refused, and so is a certificate that is not for the key; it keeps presenting A.
    @Test func theWatcherTakesOnlyAPinnedKeyAndAConsistentSet() async throws {
        let hub = try await TestHub.start { $0.tlsKeyCheckSeconds = 0.1 }
        let a = hub.server.credentials.pins[0]
        let files = TLSKeyFiles(hub.directory)
        let foreign = P256.Signing.PrivateKey()
        let certificate = try hub.server.credentials.authority.issueServerCertificate(
            publicKey: foreign.publicKey, dnsNames: ["localhost"], ipAddresses: [[127, 0, 0, 1]], now: Date())
        // A certificate for another key beside the current key: inconsistent, not taken.
        try SecretFiles.replace(files.certificate, contents: certificate.pem, secret: false)
        try await Task.sleep(for: .milliseconds(500))
        #expect(await Self.presented(hub) == a)
        // The key and its certificate together, but a key no device pins: refused, and said so in the log.
        try SecretFiles.replace(files.active, contents: foreign.pemRepresentation, secret: true)
        try await Task.sleep(for: .milliseconds(500))
        #expect(await Self.presented(hub) == a)
        #expect(hub.server.credentials.pins[0] == a)
        #expect(try await hub.securityEvents().filter { $0.kind == "tls-key-rotated" }.isEmpty)
        try await hub.stop()
    }

    /// Key operations run as the user that owns the data directory: keys written by another user (root) would be
    /// unreadable to the hub.
    @Test func theCommandsRefuseADataDirectoryOwnedBySomeoneElse() async throws {
        guard geteuid() == 0 else { return }  // only root can hand the directory to another user
        let repository = try await Repository.make()
        let hub = try await TestHub.start()
        let directory = hub.directory
        try await hub.stop(keepData: true)
        #expect(chown(directory, 65534, 65534) == 0)
        await #expect(throws: HubStartupError.self) {
            try await TLSKeyRotation.publishCurrent(
                dataDirectory: directory, repository: repository.path, keyring: try repository.keyring)
        }
        #expect(!FileManager.default.fileExists(atPath: directory + "/pins.version"), "nothing was written")
        try? FileManager.default.removeItem(atPath: directory)
        try? FileManager.default.removeItem(atPath: repository.base)
    }
}
