import Agent
import ArgumentParser
import Core
import Crypto
import Foundation
import Hub
import HubClient
import Logging
import Pairing
import Synchronization
import UnixSignals
import X509

/// `bulwark demo`: the whole system in one command, on loopback, in a temporary directory.
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Start a hub and simulated devices on loopback, and show what Bulwark does with them.",
        discussion: """
            Starts a hub in a temporary directory on free 127.0.0.1 ports; makes a pairing label for each simulated
            device, claims it as an operator would and pairs the device (Noise XKpsk3); runs one device agent per
            device (MQTT 5 over mutual TLS 1.3, the hub pinned) streaming telemetry; runs one misbehaving device
            (a flood, a replayed request, malformed and oversized messages: refused, then quarantined); sends a
            command to one device; publishes a release through TUF that every agent installs into its inactive
            slot, runs and commits once its health gate passes, except one device whose health probe fails and
            which rolls back. It prints what happens and the dashboard's address, with the operator
            certificate exported as PKCS#12 to import in a browser. Ctrl-C (or --seconds) stops everything and
            removes the directory.
            """)
    @Option(help: "Simulated devices (1-200).") var devices = 20
    @Option(help: "Stop after this many seconds (default: run until Ctrl-C).") var seconds: Int?

    func validate() throws {
        guard (1...200).contains(devices) else { throw ValidationError("--devices must be 1-200") }
        if let seconds, seconds < 1 { throw ValidationError("--seconds must be at least 1") }
    }

    static func say(_ text: String) {
        let clock = Date().formatted(.iso8601.time(includingFractionalSeconds: false))
        FileHandle.standardOutput.write(Data("[\(clock)] \(text)\n".utf8))
    }

    func run() async throws {
        // The demo tells its own story on stdout: the libraries' logs (the agents' update steps) stay quiet.
        LoggingSystem.bootstrap { _ in SwiftLogNoOpLogHandler() }
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("bulwark-demo-\(UUID().uuidString)")
            .path
        // Signals are trapped from the start: Ctrl-C at any step takes the one way out below (a signal that killed
        // the process would leave the directory, with the CA's and the repository's keys, behind).
        let signals = await UnixSignalsSequence(trapping: .sigint, .sigterm, .sighup)
        try SecretFiles.makePrivateDirectory(base)
        defer { Self.remove(base) }
        // The update repository (TUF): offline root and targets keys here, the timestamp and snapshot keys online.
        try Demo.bulwark(["tuf", "init", "--repo", base + "/repo", "--keys", base + "/keys"])
        try SecretFiles.makePrivateDirectory(base + "/online")
        for role in ["timestamp", "snapshot"] {
            try FileManager.default.copyItem(atPath: "\(base)/keys/\(role).pem", toPath: "\(base)/online/\(role).pem")
        }
        var configuration = HubConfiguration(dataDirectory: base + "/hub")
        configuration.tufRepository = base + "/repo"
        configuration.tufOnlineKeys = base + "/online"
        configuration.device.port = 0
        configuration.operatorAPI.port = 0
        configuration.pairing.port = 0
        configuration.mqtt.port = 0
        let server = try await HubServer.make(
            configuration: configuration, logger: Logger(label: "demo", factory: { _ in SwiftLogNoOpLogHandler() }),
            gracefulShutdownSignals: [])
        let hub = Task { try await server.run() }
        let ports = await server.listeningPorts()
        Self.say(
            "hub running in \(base)/hub: device API :\(ports.device), operator API and dashboard :\(ports.operator), "
                + "MQTT :\(ports.mqtt), pairing :\(ports.pairing) (127.0.0.1 only)")
        let operatorCredentials = try ClientCredentials(
            certificateFile: base + "/hub/operators/admin.crt", keyFile: base + "/hub/operators/admin.key",
            caFile: base + "/hub/ca.crt")
        let demo = Demo(base: base, ports: ports, operatorCredentials: operatorCredentials)
        let started = StartedAgents()
        let devices = devices
        let seconds = seconds
        var failure: (any Error)?
        do {
            // Whichever ends first: the demo (after --seconds) or a signal, at any step.
            try await withThrowingTaskGroup(of: Void.self) { outer in
                outer.addTask {
                    for await _ in signals { return }
                }
                outer.addTask {
                    let agents = try await demo.pairAndConnect(devices)
                    started.set(agents)
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        for agent in agents { group.addTask { try await agent.run() } }
                        group.addTask { try await demo.streamTelemetry(agents) }
                        guard try await demo.waitConnected(agents) else {
                            throw DemoError("the simulated devices did not connect")
                        }
                        Self.say("\(agents.count) agents connected over MQTT 5 (mutual TLS 1.3, the hub's key pinned)")
                        try await demo.misbehave()
                        try await demo.command(agents[0])
                        try await demo.release(agents)
                        try demo.exportOperator()
                        if let seconds {
                            try await Task.sleep(for: .seconds(seconds))
                        } else {
                            while true { try await Task.sleep(for: .seconds(3600)) }
                        }
                        group.cancelAll()
                    }
                }
                _ = try await outer.next()
                outer.cancelAll()
            }
        } catch is CancellationError {
        } catch {
            failure = error
        }
        // One way out, however the demo ended: agents (and their payloads) stopped, the hub shut down, the
        // directory (keys included) removed.
        Self.say("stopping")
        await withTaskGroup(of: Void.self) { group in
            for agent in started.agents { group.addTask { await agent.stop() } }
        }
        await server.shutdown()
        try? await hub.value
        Self.remove(base)
        Self.say(
            FileManager.default.fileExists(atPath: base)
                ? "stopped; could not remove \(base)" : "stopped; \(base) removed")
        if let failure { throw CleanExit.message("bulwark: demo failed: \(failure)", code: 1) }
    }

    /// Removes the demo's directory; committed slots are made immutable (chattr +i as root): undone first.
    static func remove(_ base: String) {
        if let devices = FileManager.default.enumerator(atPath: base + "/devices") {
            for case let path as String in devices where path.hasSuffix("/slots/a") || path.hasSuffix("/slots/b") {
                DirectorySlotStore.makeMutable(base + "/devices/" + path)
            }
        }
        try? FileManager.default.removeItem(atPath: base)
    }
}

/// The demo's steps, each against the running hub through its real interfaces.
struct Demo: Sendable {
    let base: String
    let ports: HubPorts
    let operatorCredentials: ClientCredentials

    func operatorRequest(_ method: String, _ path: String, _ json: [String: Any]) async throws -> HTTPResult {
        try await HTTPSClient.request(
            host: "127.0.0.1", port: ports.operator, tls: try operatorCredentials.tlsConfiguration(), method: method,
            path: path, headers: [("Content-Type", "application/json")],
            body: Array(try JSONSerialization.data(withJSONObject: json)))
    }

    /// Labels, claims and pairing, then one agent per device with the credentials pairing gave it.
    func pairAndConnect(_ count: Int) async throws -> [Agent] {
        var agents: [Agent] = []
        for index in 1...count {
            let id = try DeviceID(String(format: "demo-%02d", index))
            let identity = PairingLabel.Suite.p256AESGCMSHA256.dh.generateKeyPair()
            let label = try PairingLabel(
                suite: .p256AESGCMSHA256, deviceID: id, publicKey: identity.publicKey,
                setupSecret: SymmetricKey(size: .bits128).withUnsafeBytes { Array($0) })
            let claimed = try await operatorRequest("POST", "/v1/pairing/claims", ["label": label.text])
            guard claimed.status == 201 else { throw DemoError("claim of \(id) refused: \(claimed.status)") }
            let result = try await PairingClient.pair(
                host: "127.0.0.1", port: ports.pairing, label: label, identityKey: identity)
            let state = base + "/devices/" + id.rawValue
            try AgentCommand.store(result, in: state, hub: "127.0.0.1:\(ports.pairing)")
            var configuration = AgentConfiguration(stateDirectory: state)
            configuration.mqttPort = ports.mqtt
            configuration.apiURL = "https://127.0.0.1:\(ports.device)"
            configuration.inventoryIntervalSeconds = 0
            configuration.trustRefreshSeconds = 0
            configuration.updates.intervalSeconds = 0
            configuration.updates.payload = ["{slot}/bin/app"]
            // demo-02's own health probe fails (say, its sensor is broken): it will roll the release back.
            configuration.updates.healthCommand = index == 2 ? ["/bin/sh", "-c", "exit 1"] : ["{slot}/bin/health"]
            configuration.updates.healthIntervalSeconds = 0.5
            configuration.updates.healthWindowSeconds = 3
            configuration.updates.trialAttempts = 1
            configuration.updates.restartInitialSeconds = 0.2
            let name = id.rawValue
            agents.append(
                try Agent(
                    configuration: configuration,
                    commandHandler: { command in
                        DemoCommand.say(
                            "\(name) ran the command \"\(command.name)\" with \(String(decoding: command.body, as: UTF8.self))"
                        )
                        return CommandOutcome(exitCode: 0, output: "done")
                    }))
        }
        DemoCommand.say(
            "paired \(count) devices from their labels (claimed by the operator, Noise XKpsk3 on P-256): each holds a "
                + "certificate for its id, the hub's pins and an identity resolving key")
        return agents
    }

    /// Runs this binary (`/proc/self/exe`) with `arguments`, as an operator would run `bulwark`.
    static func bulwark(_ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        let errors = Pipe()
        process.standardError = errors
        try process.run()
        let detail = errors.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw DemoError(
                "bulwark \(arguments.prefix(2).joined(separator: " ")) failed: \(String(decoding: detail, as: UTF8.self))"
            )
        }
    }

    /// A release through TUF to the whole fleet: each agent installs it into its inactive slot, runs it and commits
    /// it once its health gate passes; demo-02's probe fails and it rolls back to what it ran before (nothing).
    func release(_ agents: [Agent]) async throws {
        let tree = base + "/build"
        try FileManager.default.createDirectory(atPath: tree + "/bin", withIntermediateDirectories: true)
        try "#!/bin/sh\nexec sleep 86400\n".write(
            toFile: tree + "/bin/app", atomically: true, encoding: .utf8)
        try "#!/bin/sh\nexit 0\n".write(toFile: tree + "/bin/health", atomically: true, encoding: .utf8)
        chmod(tree + "/bin/app", 0o755)
        chmod(tree + "/bin/health", 0o755)
        let archive = base + "/sensor-app-1.0.tar"
        let tar = Process()
        tar.executableURL = URL(fileURLWithPath: "/usr/bin/tar")
        tar.arguments = ["--format=ustar", "-cf", archive, "-C", tree, "."]
        try tar.run()
        tar.waitUntilExit()
        guard tar.terminationStatus == 0 else { throw DemoError("tar could not make the release archive") }
        try Self.bulwark(["tuf", "add-target", "--repo", base + "/repo", "--security-version", "1", archive])
        try Self.bulwark(["tuf", "publish", "--repo", base + "/repo", "--keys", base + "/keys"])
        let assigned = try await operatorRequest("PUT", "/v1/updates/default", ["target": "sensor-app-1.0.tar"])
        guard assigned.status == 200 else { throw DemoError("assigning the release failed: \(assigned.status)") }
        DemoCommand.say(
            "release sensor-app-1.0.tar signed into the TUF repository and assigned to the fleet: \(assigned.status)")
        let outcomes = await withTaskGroup(of: (String, String).self) { group in
            for agent in agents {
                group.addTask { (await agent.status.deviceID, await agent.checkForUpdates()) }
            }
            return await group.reduce(into: [(String, String)]()) { $0.append($1) }
        }
        let committed = outcomes.filter { $0.1.hasPrefix("committed") }.count
        DemoCommand.say(
            "  \(committed) of \(agents.count) devices verified it through TUF, installed it into their inactive slot, "
                + "ran it and committed it once their health gate passed")
        for (device, outcome) in outcomes.sorted(by: { $0.0 < $1.0 }) where !outcome.hasPrefix("committed") {
            DemoCommand.say("  \(device): \(outcome)")
        }
    }

    func waitConnected(_ agents: [Agent]) async throws -> Bool {
        for _ in 0..<200 {
            var connected = 0
            for agent in agents where await agent.status.connection == "connected" { connected += 1 }
            if connected == agents.count { return true }
            try await Task.sleep(for: .milliseconds(100))
        }
        return false
    }

    /// Every device reports a temperature every 2 s (±), through its agent's durable outbox.
    func streamTelemetry(_ agents: [Agent]) async throws {
        var round = 0
        while !Task.isCancelled {
            round += 1
            for (index, agent) in agents.enumerated() {
                let temperature = 20 + Double(index % 7) + Double.random(in: -0.5...0.5)
                try? await agent.send(
                    Array(#"{"temperature":\#((temperature * 10).rounded() / 10),"round":\#(round)}"#.utf8))
            }
            if round == 3 { DemoCommand.say("telemetry flowing: every device reports every 2 s") }
            try await Task.sleep(for: .seconds(2))
        }
    }

    /// A device enrolled at the factory that then misbehaves on the HTTP device API.
    func misbehave() async throws {
        let key = P256.Signing.PrivateKey()
        let csr = try CertificateSigningRequest(
            version: .v1, subject: try DistinguishedName { CommonName("demo-rogue") },
            privateKey: Certificate.PrivateKey(key), attributes: CertificateSigningRequest.Attributes(),
            signatureAlgorithm: .ecdsaWithSHA256)
        let enrolled = try await operatorRequest(
            "POST", "/v1/devices", ["id": "demo-rogue", "csr": try csr.serializeAsPEM().pemString])
        guard enrolled.status == 201,
            let object = try JSONSerialization.jsonObject(with: Data(enrolled.body)) as? [String: Any],
            let pem = object["certificate"] as? String
        else { throw DemoError("enrolling the rogue device failed: \(enrolled.status)") }
        let credentials = ClientCredentials(
            certificatePEM: Array(pem.utf8), keyPEM: Array(key.pemRepresentation.utf8),
            caPEM: operatorCredentials.caPEM)
        let tls = try credentials.tlsConfiguration()
        let signer = try credentials.signer()
        // One kept-alive connection, as a device would use (a new connection per request would meet the
        // per-source connection rate first); a connection the hub closed is replaced.
        func send(_ body: [UInt8], headers: [(name: String, value: String)]? = nil) async throws -> Int {
            do {
                return try await HTTPSClient.request(
                    host: "127.0.0.1", port: ports.device, tls: tls, method: "POST", path: "/v1/telemetry",
                    headers: [("Content-Type", "application/json")] + (headers ?? []).map { ($0.name, $0.value) },
                    body: body, signer: headers == nil ? signer : nil
                ).status
            } catch {
                return 0
            }
        }
        DemoCommand.say("demo-rogue (enrolled at the factory) starts misbehaving on the HTTP device API")
        var statuses: [Int: Int] = [:]
        try await HTTPSClient.withConnection(host: "127.0.0.1", port: ports.device, tls: tls) { connection in
            for _ in 0..<60 {
                let status = try await connection.send(
                    method: "POST", path: "/v1/telemetry", headers: [("Content-Type", "application/json")],
                    body: Array(#"{"temperature":99}"#.utf8), signer: signer
                ).status
                statuses[status, default: 0] += 1
            }
        }
        DemoCommand.say(
            "  flood of 60 signed messages: \(statuses[202] ?? 0) accepted, \(statuses[429] ?? 0) refused 429 "
                + "(rate limit, with Retry-After)")
        let body = Array(#"{"temperature":21}"#.utf8)
        let captured = try signer.sign(
            method: "POST", path: "/v1/telemetry", body: body, created: Int64(Date().timeIntervalSince1970),
            contentType: "application/json")
        try await Task.sleep(for: .seconds(2))
        let first = try await send(body, headers: captured)
        let replayed = try await send(body, headers: captured)
        DemoCommand.say("  a captured request sent twice: \(first), then \(replayed) (replay refused: nonce seen)")
        let oversized = try await send(Array(("{\"pad\":\"" + String(repeating: "x", count: 70_000) + "\"}").utf8))
        DemoCommand.say("  a 70 KB message: \(oversized) (over the 64 KiB limit)")
        var malformed: [Int] = []
        for _ in 0..<30 {
            let status = try await send(Array("{\"temperature\": 21,".utf8))
            malformed.append(status)
            if status == 403 { break }
        }
        let refused = malformed.filter { $0 == 400 }.count
        DemoCommand.say(
            malformed.last == 403
                ? "  \(refused) malformed messages refused 400, then quarantined: every request now 403"
                : "  \(refused) malformed messages refused 400")
        DemoCommand.say("  each refusal is in the tamper-evident audit log; the client got only a correlation id")
    }

    func command(_ agent: Agent) async throws {
        let id = await agent.status.deviceID
        let sent = try await operatorRequest("POST", "/v1/devices/\(id)/commands/blink", ["times": 3])
        DemoCommand.say("operator sent the command blink to \(id): \(sent.status)")
        try await Task.sleep(for: .seconds(1))
    }

    /// The operator certificate as PKCS#12 for a browser (openssl; a random password in a 0600 file).
    func exportOperator() throws {
        let bundle = base + "/operator.p12"
        let passwordFile = base + "/operator.p12.password"
        let password = SymmetricKey(size: .bits128).withUnsafeBytes { Data($0) }.base64EncodedString()
            .filter(\.isLetter)
        try SecretFiles.create(passwordFile, contents: password + "\n")
        var exported = false
        if let openssl = findProgram("openssl") {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: openssl)
            process.arguments = [
                "pkcs12", "-export", "-in", base + "/hub/operators/admin.crt", "-inkey",
                base + "/hub/operators/admin.key", "-certfile", base + "/hub/ca.crt", "-name", "Bulwark demo operator",
                "-out", bundle, "-passout", "file:" + passwordFile,
            ]
            process.standardError = FileHandle.nullDevice
            try process.run()
            process.waitUntilExit()
            exported = process.terminationStatus == 0
        }
        DemoCommand.say("dashboard: https://localhost:\(ports.operator)/ui")
        if exported {
            DemoCommand.say(
                "  import \(bundle) into a throwaway browser profile (password in \(passwordFile)) and trust "
                    + "\(base)/hub/ca.crt there only (a demo CA); the certificate is the login")
        } else {
            DemoCommand.say(
                "  present \(base)/hub/operators/admin.crt and .key (no openssl found to make a PKCS#12 bundle)")
        }
        DemoCommand.say("Ctrl-C stops the demo and removes \(base)")
    }
}

/// The agents once paired, for the way out (whatever step the demo was at).
final class StartedAgents: Sendable {
    private let list = Mutex<[Agent]>([])
    var agents: [Agent] { list.withLock { $0 } }
    func set(_ agents: [Agent]) { list.withLock { $0 = agents } }
}

struct DemoError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
