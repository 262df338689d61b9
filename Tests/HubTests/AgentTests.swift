import Core
import Crypto
import Foundation
import Hub
import HubClient
import PKI
import Pairing
import Store
import Synchronization
import Testing
import X509

@testable import Agent

/// The device agent (`BulwarkAgent`, `bulwark agent run`) against a real hub.
@Suite(.serialized) struct AgentTests {
    /// A paired device's state directory (0700) for an enrolled device: key, certificate, CA and the hub's pins.
    static func stateDirectory(_ hub: TestHub, _ device: TestDevice, pins: [[UInt8]]? = nil) throws -> String {
        let directory = try temporaryDirectory("agent-state")
        #expect(chmod(directory, 0o700) == 0)
        try SecretFiles.create(
            directory + "/device.key", contents: String(decoding: device.credentials.keyPEM, as: UTF8.self))
        try String(decoding: device.credentials.certificatePEM, as: UTF8.self).write(
            toFile: directory + "/device.crt", atomically: true, encoding: .utf8)
        try String(decoding: hub.caPEM, as: UTF8.self).write(
            toFile: directory + "/ca.crt", atomically: true, encoding: .utf8)
        let pinLines = (pins ?? hub.server.credentials.pins).map { Data($0).base64EncodedString() }
        try (pinLines.joined(separator: "\n") + "\n").write(
            toFile: directory + "/pins", atomically: true, encoding: .utf8)
        return directory
    }

    static func configuration(_ hub: TestHub, _ state: String) -> AgentConfiguration {
        var configuration = AgentConfiguration(stateDirectory: state)
        configuration.mqttPort = hub.mqttPort
        configuration.apiURL = "https://127.0.0.1:\(hub.devicePort)"
        configuration.reconnectInitialSeconds = 0.1
        configuration.reconnectMaximumSeconds = 1
        configuration.inventoryIntervalSeconds = 0  // counted messages only (ConnectionInventoryTests covers reports)
        return configuration
    }

    /// Waits until `condition` holds (at most `seconds`).
    static func eventually(_ seconds: Double = 10, _ condition: () async throws -> Bool) async rethrows -> Bool {
        let deadline = ContinuousClock.now + .milliseconds(Int64(seconds * 1000))
        while ContinuousClock.now < deadline {
            if try await condition() { return true }
            try? await Task.sleep(for: .milliseconds(50))
        }
        return try await condition()
    }

    @Test func theAgentDeliversWhatItAcceptsAndReportsCommands() async throws {
        let hub = try await TestHub.start()
        let device = try await hub.enroll("ag-1")
        let state = try Self.stateDirectory(hub, device)
        let received = Mutex<[String]>([])
        let agent = try Agent(configuration: Self.configuration(hub, state)) { command in
            received.withLock { $0.append(command.name) }
            return CommandOutcome(exitCode: 3, output: "rebooting")
        }
        let running = Task { try await agent.run() }
        for n in 0..<20 { try await agent.send(Array(#"{"n":\#(n)}"#.utf8)) }
        let id = try DeviceID("ag-1")
        #expect(try await Self.eventually { try await hub.server.store.telemetryCount(of: id) == 20 })
        #expect(await agent.connection == .connected)
        let sent = try await hub.operatorRequest("POST", "/v1/devices/ag-1/commands/reboot", json: ["delay": 1])
        #expect(sent.status == 202)
        #expect(
            try await Self.eventually {
                try await hub.server.store.telemetry(of: id, limit: 50).contains {
                    String(decoding: $0.body, as: UTF8.self).contains(#""command":"reboot""#)
                }
            })
        #expect(received.withLock { $0 } == ["reboot"])
        // A name that would be an option to the handler program is refused by the agent (exit 2, not run).
        #expect(try await hub.operatorRequest("POST", "/v1/devices/ag-1/commands/-rf", json: [:]).status == 202)
        #expect(
            try await Self.eventually {
                try await hub.server.store.telemetry(of: id, limit: 50).contains {
                    String(decoding: $0.body, as: UTF8.self).contains(#""command":"-rf","exitCode":2"#)
                }
            })
        #expect(received.withLock { $0 } == ["reboot"], "the handler never saw it")
        // A message the hub could never take is refused at once, not queued to block the outbox.
        await #expect(throws: AgentError.self) {
            try await agent.send(Array(("{\"x\":\"" + String(repeating: "a", count: 70_000) + "\"}").utf8))
        }
        let result = try await hub.server.store.telemetry(of: id, limit: 50).first {
            String(decoding: $0.body, as: UTF8.self).contains("reboot")
        }
        #expect(result.map { String(decoding: $0.body, as: UTF8.self) }?.contains(#""exitCode":3"#) == true)
        // The hub stores a message before its PUBACK reaches the agent: the outbox empties a moment after.
        #expect(await Self.eventually { agent.outbox.depth == 0 })
        let status = try String(contentsOfFile: state + "/status.json", encoding: .utf8)
        #expect(status.contains(#""connection":"connected""#))
        await agent.stop()
        running.cancel()
        _ = try? await running.value
        let kinds = try await hub.securityEvents().filter { $0.identity == "urn:bulwark:device:ag-1" }.map(\.kind)
        #expect(!kinds.contains("replay"))
        try await hub.stop()
    }

    /// The README's Swift example runs: its lines after the one naming the state directory and the hub are below, as
    /// they stand there (checked first, so that an edit to either fails this test), with the test hub's values.
    @Test func theReadmeExampleRuns() async throws {
        let readme = try String(
            contentsOf: URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent(
                "../../README.md"), encoding: .utf8)
        let example =
            try #require(readme.components(separatedBy: "```swift\nimport Agent\n").dropFirst().first)
            .components(separatedBy: "```").first?.split(separator: "\n").map {
                $0.trimmingCharacters(in: .whitespaces)
            }.filter { !$0.isEmpty && !$0.hasPrefix("let (stateDirectory, hubHost, hubPort)") } ?? []
        let source = try String(contentsOfFile: #filePath, encoding: .utf8).split(separator: "\n").map {
            $0.trimmingCharacters(in: .whitespaces)
        }
        #expect(example.count == 8, "\(example)")
        #expect(
            source.indices.contains { start in Array(source[start...].prefix(example.count)) == example },
            "the README's example and this test differ")

        let hub = try await TestHub.start()
        let state = try Self.stateDirectory(hub, try await hub.enroll("ag-readme"))
        let (stateDirectory, hubHost, hubPort) = (state, "127.0.0.1", hub.mqttPort)
        var configuration = AgentConfiguration(stateDirectory: stateDirectory)
        configuration.mqttHost = hubHost
        configuration.mqttPort = hubPort
        let agent = try Agent(configuration: configuration) { command in
            CommandOutcome(exitCode: command.name == "reboot" ? 0 : 1)
        }
        let running = Task { try await agent.run() }
        try await agent.send(Array(#"{"temperature":21.5}"#.utf8))
        // The telemetry, and the connection report the agent sends at start (its default inventory interval).
        #expect(
            try await Self.eventually {
                try await hub.server.store.telemetry(of: try DeviceID("ag-readme"), limit: 10).contains {
                    String(decoding: $0.body, as: UTF8.self).contains("temperature")
                }
            })
        await agent.stop()
        running.cancel()
        _ = try? await running.value
        try await hub.stop()
    }

    /// A firmware author pairs and runs through the library alone: `PairingClient.pair`, `AgentState.store`, `Agent`.
    /// The state it writes is private (0700, the key 0600) and the agent runs from it.
    @Test func pairingThroughTheLibraryGivesAStateTheAgentRunsFrom() async throws {
        let hub = try await TestHub.start()
        let identity = NoiseDH.p256.generateKeyPair()
        let label = try PairingLabel(
            suite: .p256AESGCMSHA256, deviceID: try DeviceID("ag-lib"), publicKey: identity.publicKey,
            setupSecret: [UInt8](repeating: 9, count: 16))
        #expect(try await hub.operatorRequest("POST", "/v1/pairing/claims", json: ["label": label.text]).status == 201)
        let result = try await PairingClient.pair(
            host: "127.0.0.1", port: hub.pairingPort, label: label, identityKey: identity)
        let state = try temporaryDirectory("library-pairing") + "/state/device"
        try AgentState.store(result, in: state, hub: "127.0.0.1:\(hub.pairingPort)")
        func mode(_ path: String) -> mode_t {
            var info = stat()
            return stat(path, &info) == 0 ? info.st_mode & 0o777 : 0
        }
        #expect(mode(state) == 0o700)
        #expect(mode(state + "/device.key") == 0o600)
        #expect(mode(state + "/irk") == 0o600)
        var configuration = Self.configuration(hub, state)
        configuration.inventoryIntervalSeconds = 0
        let agent = try Agent(configuration: configuration)
        let running = Task { try await agent.run() }
        try await agent.send(Array(#"{"n":1}"#.utf8))
        #expect(
            try await Self.eventually { try await hub.server.store.telemetryCount(of: try DeviceID("ag-lib")) == 1 })
        await agent.stop()
        running.cancel()
        _ = try? await running.value
        try await hub.stop()
    }

    /// kill -9 of `bulwark agent run` mid-stream: every message the agent said `ok` to reaches the hub exactly once
    /// (stored once, no replay refusal), sent after the restart from the on-disk outbox with its counter.
    @Test func killMinusNineLosesNothingAndStoresEverythingOnce() async throws {
        let binary = try HubProcessTests.binary
        let hub = try await TestHub.start()
        let device = try await hub.enroll("ag-2")
        let state = try Self.stateDirectory(hub, device)
        func start() throws -> Process {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: binary)
            process.arguments = [
                "agent", "run", "--state", state, "--mqtt", "127.0.0.1:\(hub.mqttPort)", "--hub",
                "https://127.0.0.1:\(hub.devicePort)", "--reconnect-max", "1", "--inventory-interval", "0",
            ]
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            return process
        }
        func sendAll(_ range: Range<Int>) async throws {
            for n in range {
                var reply: String?
                for _ in 0..<100 where reply == nil {
                    reply = try? await AgentSocketClient.send(Array(#"{"n":\#(n)}"#.utf8), stateDirectory: state)
                    if reply == nil { try await Task.sleep(for: .milliseconds(50)) }
                }
                #expect(reply == "ok", "message \(n): \(reply ?? "no agent")")
            }
        }
        let first = try start()
        try await sendAll(0..<40)
        kill(first.processIdentifier, SIGKILL)
        _ = await first.exitStatus()
        let second = try start()
        try await sendAll(40..<60)
        let id = try DeviceID("ag-2")
        #expect(try await Self.eventually(15) { try await hub.server.store.telemetryCount(of: id) >= 60 })
        try await Task.sleep(for: .milliseconds(300))
        let bodies = try await hub.server.store.telemetry(of: id, limit: 1000).map {
            String(decoding: $0.body, as: UTF8.self)
        }
        #expect(bodies.count == 60, "exactly once")
        #expect(Set(bodies).count == 60)
        let kinds = try await hub.securityEvents().filter { $0.identity == "urn:bulwark:device:ag-2" }.map(\.kind)
        #expect(!kinds.contains("replay"), "a resend after the kill is not refused as a replay")
        // The local socket other users must not reach: 0600, inside the 0700 state directory.
        var info = stat()
        #expect(stat(state + "/agent.sock", &info) == 0 && info.st_mode & 0o777 == 0o600, "agent.sock is 0600")
        #expect(stat(state, &info) == 0 && info.st_mode & 0o777 == 0o700, "the state directory is 0700")
        // `agent status` exits 0 only while the agent is connected and current.
        let running = try await run(binary, ["agent", "status", "--state", state], timeout: 30)
        #expect(running.status == 0 && running.stdout.contains("connection    connected"), "\(running.stdout)")
        // SIGTERM: a clean stop.
        kill(second.processIdentifier, SIGTERM)
        _ = await second.exitStatus()
        #expect(second.terminationStatus == 0)
        #expect(!FileManager.default.fileExists(atPath: state + "/agent.sock"))
        let stopped = try await run(binary, ["agent", "status", "--state", state], timeout: 30)
        #expect(stopped.status == 1 && stopped.stdout.contains("connection    disconnected"), "\(stopped.stdout)")
        try await hub.stop()
    }

    /// A hub whose certificate chains to the CA but whose key is not pinned: the agent does not connect, and says why.
    @Test func aHubThatIsNotPinnedIsRefused() async throws {
        let hub = try await TestHub.start()
        let device = try await hub.enroll("ag-3")
        let state = try Self.stateDirectory(hub, device, pins: [Array(SHA256.hash(data: [1, 2, 3]))])
        let agent = try Agent(configuration: Self.configuration(hub, state))
        let running = Task { try await agent.run() }
        try await agent.send(Array(#"{"n":1}"#.utf8))
        // Polled, so the bound only matters on a loaded machine, where a first attempt can fail otherwise (a handshake
        // cut short) and the back-off delays the next.
        let untrusted = await Self.eventually(20) { await agent.connection == .untrusted }
        let why = await agent.lastError ?? "-"
        #expect(untrusted, "\(why)")
        #expect(why.contains("pin"))
        #expect(try await hub.server.store.telemetryCount(of: try DeviceID("ag-3")) == 0)
        #expect(agent.outbox.depth == 1, "kept for a hub it can trust")
        running.cancel()
        _ = try? await running.value
        try await hub.stop()
    }

    /// A revoked device is refused at CONNECT: the agent backs off to its maximum instead of retrying fast.
    @Test func aRevokedDeviceBacksOff() async throws {
        let hub = try await TestHub.start()
        let device = try await hub.enroll("ag-4")
        let state = try Self.stateDirectory(hub, device)
        #expect(try await hub.operatorRequest("POST", "/v1/devices/ag-4/revoke").status == 200)
        var configuration = Self.configuration(hub, state)
        configuration.reconnectMaximumSeconds = 600
        let agent = try Agent(configuration: configuration)
        let running = Task { try await agent.run() }
        let refused = await Self.eventually(20) { await agent.connection == .refused }
        let why = await agent.lastError ?? "-"
        #expect(refused, "\(why)")
        // Straight to the maximum back-off (not doubling from 0.1 s): a revoked fleet does not hammer the hub.
        #expect(await agent.retryDelaySeconds == 600)
        running.cancel()
        _ = try? await running.value
        try await hub.stop()
    }

    /// At the renewal point of its certificate's lifetime the agent renews with a new key and reconnects with it;
    /// the hub then revokes the old one.
    @Test func theAgentRenewsItsCertificateWhenDue() async throws {
        let hub = try await TestHub.start()
        _ = try await hub.enroll("ag-5")
        // A one-day certificate of which 80 % is gone.
        let aged = try hub.issue(.device(try DeviceID("ag-5")), now: Date().addingTimeInterval(-0.8 * 86400), days: 1)
        let agedCertificate = try Certificate(
            pemEncoded: String(decoding: aged.credentials.certificatePEM, as: UTF8.self))
        let oldSerial = agedCertificate.serialHex
        // Recorded as the hub records every device certificate it issues (renewal replaces only known ones).
        try await hub.server.store.addCertificate(
            CertificateRecord(
                serialHex: oldSerial, subject: "urn:bulwark:device:ag-5", deviceID: try DeviceID("ag-5"),
                spkiSHA256Hex: agedCertificate.publicKey.spkiSHA256Hex, notBefore: agedCertificate.notValidBefore,
                notAfter: agedCertificate.notValidAfter, der: agedCertificate.derBytes))
        let state = try Self.stateDirectory(hub, aged)
        let agent = try Agent(configuration: Self.configuration(hub, state))
        let running = Task { try await agent.run() }
        try await agent.send(Array(#"{"n":1}"#.utf8))
        // A renewal, then a connection with the new key: well under a second when quiet.
        #expect(
            try await Self.eventually(30) { try await hub.server.store.telemetryCount(of: try DeviceID("ag-5")) == 1 })
        #expect(await agent.state.certificate.serialHex != oldSerial)
        #expect(hub.server.revocationList.contains(oldSerial), "the new certificate was used")
        let onDisk = try Certificate(pemEncoded: String(contentsOfFile: state + "/device.crt", encoding: .utf8))
        #expect(onDisk.serialHex != oldSerial)
        await agent.stop()
        running.cancel()
        _ = try? await running.value
        try await hub.stop()
    }

    /// Connected and idle, the agent's writer sleeps until the next PING: a woken wait must not leave a timer that
    /// ends the next one early (that chain once made an idle agent use a whole core).
    @Test func anIdleAgentSleeps() async throws {
        let hub = try await TestHub.start()
        let state = try Self.stateDirectory(hub, try await hub.enroll("ag-idle"))
        let agent = try Agent(configuration: Self.configuration(hub, state))
        let running = Task { try await agent.run() }
        #expect(await Self.eventually { await agent.connection == .connected })
        for n in 0..<5 { try await agent.send(Array(#"{"n":\#(n)}"#.utf8)) }
        #expect(await Self.eventually { await agent.delivered == 5 })
        let before = await agent.writerWaits
        try await Task.sleep(for: .seconds(2))
        let waits = await agent.writerWaits - before
        #expect(waits <= 2, "the writer waited \(waits) times in 2 idle seconds")
        await agent.stop()
        running.cancel()
        try await hub.stop()
    }

    /// A one-minute certificate through three renewals while the device sends every 250 ms: every message stored
    /// once, no gap in delivery longer than a few seconds, each predecessor revoked once its successor was used.
    @Test func aMinuteLongCertificateRenewsThreeTimesWhileTelemetryFlows() async throws {
        let hub = try await TestHub.start {
            $0.deviceCertificateSeconds = 60
            $0.renewalGraceSeconds = 30
        }
        let id = try DeviceID("ag-minute")
        _ = try await hub.enroll(id.rawValue)
        let first = try hub.issue(.device(id), now: Date(), lifetime: 60)
        let certificate = try Certificate(
            pemEncoded: String(decoding: first.credentials.certificatePEM, as: UTF8.self))
        try await hub.server.store.addCertificate(
            CertificateRecord(
                serialHex: certificate.serialHex, subject: Identity.device(id).uri, deviceID: id,
                spkiSHA256Hex: certificate.publicKey.spkiSHA256Hex, notBefore: certificate.notValidBefore,
                notAfter: certificate.notValidAfter, der: certificate.derBytes))
        let state = try Self.stateDirectory(hub, first)
        let agent = try Agent(configuration: Self.configuration(hub, state))
        let running = Task { try await agent.run() }
        var serials = [certificate.serialHex]
        var sent = 0
        let deadline = ContinuousClock.now + .seconds(150)
        while serials.count < 4, ContinuousClock.now < deadline {
            try await agent.send(Array(#"{"n":\#(sent)}"#.utf8))
            sent += 1
            try await Task.sleep(for: .milliseconds(250))
            let serial = await agent.state.certificate.serialHex
            if serial != serials.last { serials.append(serial) }
        }
        #expect(serials.count == 4, "three renewals: \(serials)")
        #expect(try await Self.eventually(20) { try await hub.server.store.telemetryCount(of: id) == sent })
        let received = try await hub.server.store.telemetry(of: id, limit: 10_000).map(\.receivedAt).sorted()
        let gap = zip(received, received.dropFirst()).map { $1.timeIntervalSince($0) }.max() ?? 0
        // The renewal runs behind the live session; only the switch to the new certificate (DISCONNECT, a TLS
        // handshake, CONNECT) pauses delivery: 0.6 s here with one message every 250 ms, a few seconds at most on a
        // loaded machine, never the 60-s lifetime or the back-off's maximum.
        #expect(gap < 10, "longest pause in delivery: \(gap) s")
        // Each certificate before the last was used by its successor, so it is revoked.
        #expect(
            try await Self.eventually(10) { serials.dropLast().allSatisfy { hub.server.revocationList.contains($0) } })
        #expect(!hub.server.revocationList.contains(serials[3]))
        let renewed = try await hub.securityEvents().filter {
            $0.kind == "certificate-renewed" && $0.identity == Identity.device(id).uri
        }
        #expect(renewed.count == 3)
        await agent.stop()
        running.cancel()
        _ = try? await running.value
        let kinds = try await hub.securityEvents().filter { $0.identity == Identity.device(id).uri }.map(\.kind)
        #expect(!kinds.contains("replay"))
        try await hub.stop()
    }

    /// A renewal that fails (the device API unreachable) is retried with back-off, not at reconnect speed; the session
    /// goes on with the certificate that is still valid.
    @Test func aFailedRenewalBacksOff() async throws {
        let hub = try await TestHub.start()
        _ = try await hub.enroll("ag-backoff")
        let aged = try hub.issue(
            .device(try DeviceID("ag-backoff")), now: Date().addingTimeInterval(-0.8 * 86400), days: 1)
        var configuration = Self.configuration(hub, try Self.stateDirectory(hub, aged))
        configuration.apiURL = "https://127.0.0.1:1"  // nothing listens there
        let agent = try Agent(configuration: configuration)
        let started = Date()
        let running = Task { try await agent.run() }
        #expect(await Self.eventually { await agent.connection == .connected })
        // The first attempt failed after `started`; the next waits at least 5 s × 0.75 from then (measured from the
        // start, not from now, so a slow connection on a loaded machine does not eat into it). Without back-off the
        // point would be the certificate's renewal point, hours in the past.
        let next = try #require(await agent.renewalPoint())
        #expect(next.timeIntervalSince(started) >= 3.7, "the next attempt waits (5 s, jittered), it does not spin")
        await agent.stop()
        running.cancel()
        _ = try? await running.value
        try await hub.stop()
    }

    /// A renewal crashed between its two renames: the next start finishes it (or drops a half-written pair).
    @Test func aRenewalInterruptedBetweenItsRenamesIsFinished() async throws {
        let hub = try await TestHub.start()
        let device = try await hub.enroll("ag-7")
        let state = try Self.stateDirectory(hub, device)
        let renewed = try await CertificateRenewalTests.renew(hub, device, key: P256.Signing.PrivateKey())
        let fresh = try #require(renewed.device)
        // The key was renamed, the certificate not yet.
        try FileManager.default.removeItem(atPath: state + "/device.key")
        try SecretFiles.create(
            state + "/device.key", contents: String(decoding: fresh.credentials.keyPEM, as: UTF8.self))
        try String(decoding: fresh.credentials.certificatePEM, as: UTF8.self).write(
            toFile: state + "/device.crt.new", atomically: true, encoding: .utf8)
        let loaded = try AgentState.load(state)
        #expect(loaded.certificate.serialHex == renewed.serial)
        #expect(!FileManager.default.fileExists(atPath: state + "/device.crt.new"))
        // A lone half-written `.new` key is dropped, the working pair kept.
        try "-----BEGIN".write(toFile: state + "/device.key.new", atomically: true, encoding: .utf8)
        #expect(try AgentState.load(state).certificate.serialHex == renewed.serial)
        #expect(!FileManager.default.fileExists(atPath: state + "/device.key.new"))
        try await hub.stop()
    }

    /// Bad state: a clear error naming the file, never a crash; a state directory others can read is refused.
    @Test func badStateIsRefusedClearly() async throws {
        let hub = try await TestHub.start()
        let device = try await hub.enroll("ag-6")
        let state = try Self.stateDirectory(hub, device)
        #expect(chmod(state, 0o755) == 0)
        #expect(throws: AgentError(.stateInsecure, "")) { try Agent(configuration: Self.configuration(hub, state)) }
        #expect(chmod(state, 0o700) == 0)
        let key = try String(contentsOfFile: state + "/device.key", encoding: .utf8)
        try FileManager.default.removeItem(atPath: state + "/device.key")
        try SecretFiles.create(state + "/device.key", contents: String(key.prefix(40)))
        do {
            _ = try Agent(configuration: Self.configuration(hub, state))
            Issue.record("a truncated key was accepted")
        } catch {
            #expect(error.code == .stateInvalid)
            #expect(error.message.contains("device.key") && error.message.contains("pair again"))
        }
        try FileManager.default.removeItem(atPath: state + "/device.key")
        try SecretFiles.create(state + "/device.key", contents: key)
        // Every other file of the state, truncated or garbled: refused, naming the file and what to do.
        try "7\n".write(toFile: state + "/pins.version", atomically: true, encoding: .utf8)
        _ = try Agent(configuration: Self.configuration(hub, state))
        for (file, what) in [
            ("device.crt", "pair again"), ("ca.crt", "pair again"), ("pins", "pair again"),
            ("pins.version", "remove it"),
        ] {
            let path = state + "/" + file
            let original = try Data(contentsOf: URL(fileURLWithPath: path))
            try Data(original.prefix(original.count > 8 ? 30 : 0) + Data("x!".utf8)).write(
                to: URL(fileURLWithPath: path))
            do {
                _ = try Agent(configuration: Self.configuration(hub, state))
                Issue.record("a garbled \(file) was accepted")
            } catch {
                #expect(error.code == .stateInvalid, "\(file)")
                #expect(error.message.contains(file) && error.message.contains(what), "\(file): \(error.message)")
            }
            try original.write(to: URL(fileURLWithPath: path))
        }
        _ = try Agent(configuration: Self.configuration(hub, state))
        try await hub.stop()
    }

    /// The outbox is bounded: the oldest telemetry goes first and is counted; events stay.
    @Test func aFullOutboxDropsTheOldestTelemetryNeverEvents() throws {
        let directory = try temporaryDirectory("outbox")
        let outbox = try Outbox(directory: directory + "/outbox", maxBytes: 100)
        try outbox.append(kind: .event, route: "events/command-result", body: Array(repeating: 0x61, count: 40))
        for _ in 0..<5 {
            try outbox.append(kind: .telemetry, route: "telemetry", body: Array(repeating: 0x62, count: 20))
        }
        #expect(outbox.dropped == 2)
        #expect(outbox.pending.filter { $0.kind == .event }.count == 1)
        #expect(outbox.pending.map(\.body.count).reduce(0, +) <= 100)
        // Reopened (as after kill -9): the same messages, counters above every one issued before.
        let highest = outbox.pending.map(\.counter).max() ?? 0
        let reopened = try Outbox(directory: directory + "/outbox", maxBytes: 100)
        #expect(reopened.pending == outbox.pending)
        #expect(try reopened.append(kind: .telemetry, route: "telemetry", body: [0x63]).counter > highest)
    }

    /// A command handler that hangs is killed after the timeout and reported as timed out.
    @Test func aHangingCommandHandlerIsKilled() async throws {
        let directory = try temporaryDirectory("handler")
        let script = directory + "/handler.sh"
        try "#!/bin/sh\ncat > /dev/null\nexec sleep 30\n".write(toFile: script, atomically: true, encoding: .utf8)
        #expect(chmod(script, 0o755) == 0)
        let clock = ContinuousClock()
        let start = clock.now
        let outcome = await ProcessCommandHandler(executable: script, timeoutSeconds: 1).run(
            AgentCommand(name: "hang", body: Array("{}".utf8)))
        #expect(outcome.timedOut)
        #expect(clock.now - start < .seconds(5))
        let ok = try "#!/bin/sh\nread line\necho \"got $line for $1\"\nexit 4\n"
        try ok.write(toFile: script, atomically: true, encoding: .utf8)
        #expect(chmod(script, 0o755) == 0)
        let done = await ProcessCommandHandler(executable: script, timeoutSeconds: 5).run(
            AgentCommand(name: "echo", body: Array("{\"a\":1}\n".utf8)))
        #expect(done.exitCode == 4 && !done.timedOut)
        #expect(done.output.contains(#"got {"a":1} for echo"#))
    }
}

/// The connection inventory: `/proc/net` parsed, and the hub's egress policy applied to the agent's reports.
@Suite(.serialized) struct ConnectionInventoryTests {
    static let tcp = """
          sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
           0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
           1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
           2: 0F02000A:C350 057100CB:01BB 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1
           3: 0F02000A:C351 057100CB:01BB 01 00000000:00000000 00:00000000 00000000     0        0 4 1 0 20 4 30 10 -1
           4: 0F02000A:C352 076433C6:1F90 01 00000000:00000000 00:00000000 00000000     0        0 5 1 0 20 4 30 10 -1
           5: 0100007F:C353 0100007F:22B3 01 00000000:00000000 00:00000000 00000000     0        0 6 1 0 20 4 30 10 -1
        """
    static let tcp6 = """
          sl  local_address                         remote_address                        st tx_queue rx_queue
           0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000
           1: B80D0120000000000000000001000000:C350 B80D0120000000000000000005000000:01BB 01 00000000:00000000
           2: 0000000000000000FFFF00000F02000A:C351 0000000000000000FFFF0000057100CB:01BB 01 00000000:00000000
        """

    @Test func procNetIsParsed() throws {
        let v4 = ConnectionInventory.parse(Self.tcp, proto: "tcp")
        #expect(v4.listening.map(\.port) == [22], "the loopback listener is left out")
        #expect(
            v4.established.map { "\($0.address):\($0.port)" } == [
                "203.0.113.5:443", "203.0.113.5:443", "198.51.100.7:8080",
            ])
        let v6 = ConnectionInventory.parse(Self.tcp6, proto: "tcp6")
        #expect(v6.listening.map(\.address) == ["::"])
        #expect(v6.established.map(\.address) == ["2001:db8::5", "203.0.113.5"], "mapped IPv4 as IPv4")
    }

    /// UDP's states are not TCP's (proc(5), net/ipv4/udp.c): 07 is a bound socket that receives from anyone (listening),
    /// 01 a connected one; 0A means nothing there. Loopback is left out as for TCP, and `report` carries each protocol.
    static let udp = """
           sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
          100: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 11 2 0 0
          101: 0100007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 12 2 0 0
          102: 0F02000A:D431 08080808:0035 01 00000000:00000000 00:00000000 00000000     0        0 13 2 0 0
          103: 0F02000A:D432 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 14 2 0 0
        """
    static let udp6 = """
          sl  local_address                         remote_address                        st tx_queue rx_queue
           0: 00000000000000000000000000000000:14E9 00000000000000000000000000000000:0000 07 00000000:00000000
           1: B80D0120000000000000000001000000:C350 B80D0120000000000000000005000000:0035 01 00000000:00000000
           2: 00000000000000000000000001000000:0035 00000000000000000000000000000000:0000 07 00000000:00000000
        """

    @Test func udpLinesAreParsedAndReported() throws {
        let v4 = ConnectionInventory.parse(Self.udp, proto: "udp")
        #expect(v4.listening.map { "\($0.address):\($0.port)" } == ["0.0.0.0:68"], "07 listens; loopback and 0A do not")
        #expect(v4.established.map { "\($0.address):\($0.port)" } == ["8.8.8.8:53"])
        let v6 = ConnectionInventory.parse(Self.udp6, proto: "udp6")
        #expect(v6.listening.map { "\($0.address):\($0.port)" } == [":::5353"], "the ::1 listener is left out")
        #expect(v6.established.map { "\($0.address):\($0.port)" } == ["2001:db8::5:53"])
        // The report reads all four files and names each entry's protocol.
        let proc = try temporaryDirectory("proc-udp")
        try FileManager.default.createDirectory(atPath: proc + "/net", withIntermediateDirectories: true)
        for (name, text) in [("tcp", Self.tcp), ("udp", Self.udp), ("udp6", Self.udp6)] {
            try text.write(toFile: proc + "/net/" + name, atomically: true, encoding: .utf8)
        }
        let report = try #require(
            try JSONSerialization.jsonObject(with: Data(ConnectionInventory.report(procRoot: proc))) as? [String: Any])
        let established = try #require(report["established"] as? [[String: Any]])
        let listening = try #require(report["listening"] as? [[String: Any]])
        func has(_ list: [[String: Any]], _ proto: String, _ address: String, _ port: Int) -> Bool {
            list.contains {
                $0["proto"] as? String == proto && $0["address"] as? String == address && $0["port"] as? Int == port
            }
        }
        #expect(has(established, "udp", "8.8.8.8", 53) && has(established, "udp6", "2001:db8::5", 53))
        #expect(has(established, "tcp", "203.0.113.5", 443))
        #expect(has(listening, "udp", "0.0.0.0", 68) && has(listening, "udp6", "::", 5353))
        #expect(!has(listening, "udp", "0.0.0.0", 54322), "a UDP socket in state 0A is not listening")
    }

    /// Each destination outside the policy is audited once an hour: a report naming only destinations already
    /// reported raises no event; one naming a new one raises an event naming it alone.
    @Test func eachDestinationIsAuditedOnceAnHour() async throws {
        let hub = try await TestHub.start()
        let device = try await hub.enroll("inv-2")
        let cli = PairingEndToEndTests.CLI(binary: try HubProcessTests.binary, hub: hub)
        #expect(try await cli.run(["policy", "egress", "add", "camera", "203.0.113.0/24:443"]).status == 0)
        #expect(try await cli.run(["device", "set-class", "inv-2", "camera"]).status == 0)
        let agent = try Agent(configuration: AgentTests.configuration(hub, try AgentTests.stateDirectory(hub, device)))
        let running = Task { try await agent.run() }
        func report(_ addresses: [String]) async throws {
            let entries = addresses.map { #"{"proto":"tcp","address":"\#($0)","port":443}"# }.joined(separator: ",")
            let body = #"{"established":[\#(entries)],"listening":[]}"#
            try await agent.send(Array(body.utf8), route: "events/connections")
        }
        func events() async throws -> [String] {
            try await hub.securityEvents().filter { $0.kind == "egress-violation" }.map(\.detail)
        }
        try await report(["192.0.2.1", "192.0.2.2", "203.0.113.5"])
        #expect(try await AgentTests.eventually { try await events().count == 1 })
        try await report(["192.0.2.2", "192.0.2.1"])
        try await report(["192.0.2.2", "192.0.2.3"])
        #expect(try await AgentTests.eventually { try await events().count >= 2 })
        try await Task.sleep(for: .milliseconds(500))
        let details = try await events()
        #expect(details.count == 2, "\(details)")
        #expect(
            details.contains { $0.contains("2 destination(s)") && $0.contains("2 new this hour: tcp 192.0.2.1:443") })
        #expect(details.contains { $0.contains("1 new this hour: tcp 192.0.2.3:443") })
        await agent.stop()
        running.cancel()
        _ = try? await running.value
        try await hub.stop()
    }

    @Test func violationsAreReportedOnceAnHourAndCanQuarantine() async throws {
        let proc = try temporaryDirectory("proc")
        try FileManager.default.createDirectory(atPath: proc + "/net", withIntermediateDirectories: true)
        try Self.tcp.write(toFile: proc + "/net/tcp", atomically: true, encoding: .utf8)
        let hub = try await TestHub.start { $0.gateway.quarantineEgress = 3 }
        let device = try await hub.enroll("inv-1")
        let cli = PairingEndToEndTests.CLI(binary: try HubProcessTests.binary, hub: hub)
        for rule in ["203.0.113.0/24:443", "listen:22"] {
            let added = try await cli.run(["policy", "egress", "add", "camera", rule])
            #expect(added.status == 0, "\(added.stderr)")
        }
        #expect(try await cli.run(["policy", "egress", "add", "camera", "hub.example:443"]).status != 0, "no names")
        let classed = try await cli.run(["device", "set-class", "inv-1", "camera"])
        #expect(classed.status == 0, "\(classed.stderr)")
        let state = try AgentTests.stateDirectory(hub, device)
        var configuration = AgentTests.configuration(hub, state)
        configuration.procRoot = proc
        configuration.inventoryIntervalSeconds = 0.3
        let agent = try Agent(configuration: configuration)
        let running = Task { try await agent.run() }
        let id = try DeviceID("inv-1")
        // A report naming many destinations (and a non-address): one audit record, the non-address dropped.
        let many = (0..<100).map { #"{"proto":"tcp","address":"192.0.2.\#($0)","port":9}"# }.joined(separator: ",")
        let flood = #"{"established":[\#(many),{"proto":"tcp","address":"not-an-ip","port":1}],"listening":[]}"#
        try await agent.send(Array(flood.utf8), route: "events/connections")
        #expect(
            try await AgentTests.eventually {
                try await hub.server.store.destinations(of: id).first { $0.port == 8080 }?.reports ?? 0 >= 2
            })
        let shown = jsonObject(try await hub.operatorRequest("GET", "/v1/devices/inv-1"))
        #expect(shown["class"] as? String == "camera")
        let destinations = shown["destinations"] as? [[String: Any]] ?? []
        #expect(
            Set(destinations.map { "\($0["address"] ?? ""):\($0["port"] ?? "")" }).isSuperset(of: [
                "203.0.113.5:443", "198.51.100.7:8080", "0.0.0.0:22",
            ]))
        #expect(
            try await AgentTests.eventually {
                try await hub.server.store.destinations(of: id).filter { $0.address.hasPrefix("192.0.2.") }.count == 100
            })
        #expect(try await hub.server.store.destinations(of: id).allSatisfy { $0.address != "not-an-ip" })
        // Once per destination and hour: the agent's own report (its bad destination, every 0.3 s) and the flood
        // (100 more in one report) raise one event each, whichever came first. Each report is audited in its own
        // task after its destinations are stored, and counted as an offence after that.
        let twoEvents = try await AgentTests.eventually(10) {
            try await hub.securityEvents().filter { $0.kind == "egress-violation" }.count >= 2
        }
        #expect(twoEvents)
        let violations = try await hub.securityEvents().filter { $0.kind == "egress-violation" }
        #expect(violations.count == 2, "one event per report of new destinations: \(violations.map(\.detail))")
        #expect(violations.allSatisfy { $0.detail.contains("outside the egress policy of class camera") })
        #expect(violations.contains { $0.detail.contains("100 new this hour") })
        #expect(
            await AgentTests.eventually(10) {
                hub.server.gateway.quarantine.isQuarantined(id, now: Int64(Date().timeIntervalSince1970))
            })
        await agent.stop()
        running.cancel()
        _ = try? await running.value
        try await hub.stop()
    }
}
