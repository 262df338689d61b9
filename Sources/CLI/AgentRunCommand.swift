import Agent
import ArgumentParser
import Core
import Foundation
import Logging
import ServiceLifecycle

#if canImport(Glibc)
    import Glibc
#endif

extension AgentCommand {
    struct Run: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run the device agent: an MQTT 5 session to the hub, a local socket for telemetry, commands, "
                + "updates.",
            discussion: """
                Keeps a pinned mutual-TLS MQTT 5 session to the hub (reconnecting with back-off and jitter), sends
                what programs on the device hand it on STATE/agent.sock (one JSON object per line; `bulwark agent
                send` uses it when the agent runs) from a durable outbox, runs --handler for each operator command
                (stdin: its body; its exit status is reported on devices/ID/events/command-result), renews the
                certificate at two thirds of its lifetime, and writes STATE/status.json for `bulwark agent status`.

                Updates: at start and every --update-interval seconds (±20 %), and on the update-now command, the
                agent refreshes the update repository through TUF, asks the hub which release it should run, and
                installs a new one into the inactive slot (STATE/slots/a or b), runs --payload from it and commits
                only when the health gate passes (--health three times, the payload still running, the hub
                reachable); otherwise it rolls back. Steps are reported on devices/ID/events/update.

                --config FILE: a JSON object with the keys crypto.profile, mqtt, hub, handler, commandTimeoutSeconds, outboxBytes,
                reconnectMaxSeconds, inventoryIntervalSeconds, trustRefreshSeconds and agent.updateIntervalSeconds,
                agent.payload, agent.payloadUser, agent.healthCommand, agent.healthTimeoutSeconds,
                agent.healthIntervalSeconds, agent.healthWindowSeconds, agent.trialAttempts, agent.slotsDirectory,
                updates.requireGate, agent.trimMemorySeconds (the first six may also be written agent.handler,
                agent.commandTimeoutSeconds, …) (commands as a string split at spaces, or an array of arguments). Options on the command line win.
                SIGTERM stops it cleanly; nothing it accepted is lost, even to kill -9.
                """)
        @Option(help: "Credentials directory written by `bulwark agent pair` (must be 0700).") var state: String
        @Option(help: "A JSON configuration file (see the discussion).") var config: String?
        @Option(help: "The hub's MQTT listener HOST:PORT (default 127.0.0.1:8883).") var mqtt: String?
        @Option(help: "The hub's device API (default https://127.0.0.1:8443).") var hub: String?
        @Option(help: "Program run for each command (argument: the command's name; stdin: its body).")
        var handler: String?
        @Option(help: "A handler running longer is killed and reported (default 30).") var commandTimeout: Double?
        @Option(help: "Outbox bound in bytes; the oldest telemetry is dropped beyond it (default 1 MiB).")
        var outboxBytes: Int?
        @Option(help: "Longest wait between reconnection attempts, in seconds (default 60).") var reconnectMax: Double?
        @Option(help: "Seconds between connection reports (events/connections); 0: none (default 3600).")
        var inventoryInterval: Double?
        @Option(help: "Seconds between refreshes of the hub's pin set through TUF; 0: none (default 21600).")
        var trustRefresh: Double?
        @Option(help: "Seconds between update checks, ±20 %; 0: only on update-now (default 3600).")
        var updateInterval: Double?
        @Option(help: "The payload command; {slot} is the slot's directory (e.g. '{slot}/bin/app').")
        var payload: String?
        @Option(help: "When the agent runs as root, run the payload as this user.") var payloadUser: String?
        @Option(help: "The payload's health probe (exit 0 = healthy).") var health: String?
        @Option(help: "Seconds a health probe may take (default 10).") var healthTimeout: Double?
        @Option(help: "Where the slots and boot record live (default STATE/slots).") var slots: String?
        @Option(help: "standard, or fips: TLS AES-GCM on P-256/P-384 only, FIPS 186-5 TUF keys only.")
        var cryptoProfile: String?
        @Flag(help: "Refuse releases not published through the vulnerability gate (config: updates.requireGate).")
        var requireGate = false

        func run() async throws {
            let file = try AgentConfigFile(path: config)
            var configuration = AgentConfiguration(stateDirectory: state)
            do {
                configuration.cryptoProfile = try CryptoProfile(
                    parsing: try cryptoProfile ?? file.string("crypto.profile") ?? "standard")
            } catch let error as CryptoProfileError {
                throw ValidationError(error.description)
            }
            let mqtt = try self.mqtt ?? file.string("mqtt") ?? "127.0.0.1:8883"
            let parts = mqtt.split(separator: ":")
            guard parts.count == 2, let port = Int(parts[1]) else { throw ValidationError("mqtt must be HOST:PORT") }
            configuration.mqttHost = String(parts[0])
            configuration.mqttPort = port
            configuration.apiURL = try hub ?? file.string("hub") ?? configuration.apiURL
            configuration.commandTimeoutSeconds =
                try commandTimeout ?? file.number("commandTimeoutSeconds") ?? configuration.commandTimeoutSeconds
            configuration.outboxBytes =
                try outboxBytes ?? file.number("outboxBytes").map(Int.init)
                ?? configuration.outboxBytes
            configuration.reconnectMaximumSeconds =
                try reconnectMax ?? file.number("reconnectMaxSeconds") ?? configuration.reconnectMaximumSeconds
            configuration.inventoryIntervalSeconds =
                try inventoryInterval ?? file.number("inventoryIntervalSeconds")
                ?? configuration.inventoryIntervalSeconds
            configuration.trustRefreshSeconds =
                try trustRefresh ?? file.number("trustRefreshSeconds") ?? configuration.trustRefreshSeconds
            guard (0.1...86_400).contains(configuration.commandTimeoutSeconds) else {
                throw ValidationError("commandTimeoutSeconds must be 0.1-86400 seconds")
            }
            var updates = UpdateSettings()
            updates.intervalSeconds =
                try updateInterval ?? file.number("agent.updateIntervalSeconds")
                ?? updates.intervalSeconds
            updates.payload = try payload.map(AgentConfigFile.split) ?? file.command("agent.payload") ?? []
            updates.payloadUser = try payloadUser ?? file.string("agent.payloadUser")
            updates.requireGate = try requireGate || (file.bool("updates.requireGate") ?? false)
            updates.healthCommand = try health.map(AgentConfigFile.split) ?? file.command("agent.healthCommand") ?? []
            updates.healthTimeoutSeconds =
                try healthTimeout ?? file.number("agent.healthTimeoutSeconds") ?? updates.healthTimeoutSeconds
            updates.healthIntervalSeconds =
                try file.number("agent.healthIntervalSeconds") ?? updates.healthIntervalSeconds
            updates.healthWindowSeconds = try file.number("agent.healthWindowSeconds") ?? updates.healthWindowSeconds
            updates.trialAttempts = try file.number("agent.trialAttempts").map(Int.init) ?? updates.trialAttempts
            updates.slotsDirectory = try slots ?? file.string("agent.slotsDirectory")
            guard updates.intervalSeconds == 0 || updates.intervalSeconds >= 1,
                (0.1...3600).contains(updates.healthTimeoutSeconds), (0...3600).contains(updates.healthIntervalSeconds),
                (1...86_400).contains(updates.healthWindowSeconds), (1...10).contains(updates.trialAttempts)
            else {
                throw ValidationError(
                    "agent.updateIntervalSeconds must be 0 or ≥ 1, agent.healthTimeoutSeconds 0.1-3600, "
                        + "agent.healthIntervalSeconds 0-3600, agent.healthWindowSeconds 1-86400, "
                        + "agent.trialAttempts 1-10")
            }
            if updates.payloadUser != nil, geteuid() == 0 {
                // The payload user cannot pass through the 0700 state directory: its slots must live elsewhere.
                let root = (updates.slotsDirectory ?? state + "/slots") as NSString
                let stateRoot = (state as NSString).standardizingPath
                if root.standardizingPath.hasPrefix(stateRoot + "/") {
                    throw ValidationError(
                        "agent.payloadUser needs agent.slotsDirectory outside the state directory (which is 0700), "
                            + "e.g. /var/lib/bulwark-slots")
                }
            }
            if updates.payloadUser != nil, geteuid() != 0 {
                FileHandle.standardError.write(
                    Data("bulwark: agent.payloadUser is ignored: the agent is not root\n".utf8))
            }
            configuration.updates = updates
            // Code and read-only data the agent touched once go back to the kernel 10 s after it connects, then
            // every 5 minutes (see `WorkingSet`); 0 keeps them.
            let trimSeconds = try file.number("agent.trimMemorySeconds") ?? 300
            guard trimSeconds == 0 || (10...86_400).contains(trimSeconds) else {
                throw ValidationError("agent.trimMemorySeconds must be 0 or 10-86400")
            }
            let handler = try (self.handler ?? file.string("handler")).map {
                ProcessCommandHandler(executable: $0, timeoutSeconds: configuration.commandTimeoutSeconds).handler
            }
            let agent: Agent
            do { agent = try Agent(configuration: configuration, commandHandler: handler) } catch {
                throw CleanExit.message("bulwark: \(error)", code: error.code == .stateInsecure ? 77 : 66)
            }
            var logger = Logger(label: "bulwark-agent")
            logger.logLevel = .info
            let group = ServiceGroup(
                configuration: .init(
                    services: [AgentService(agent: agent, logger: logger, trimSeconds: trimSeconds)],
                    gracefulShutdownSignals: [.sigterm, .sigint],
                    logger: logger))
            try await group.run()
        }
    }

    struct UpdateNow: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "update-now",
            abstract: "Ask the running agent for an update check now, showing the download's progress.",
            discussion: """
                Exit 0 when the device is current or committed a new release; 1 when the release was refused or
                rolled back, or the check failed; 69 when no agent runs for this state directory.
                """)
        @Option(help: "Credentials directory of the running agent.") var state: String

        func run() async throws {
            let tty = isatty(STDOUT_FILENO) == 1
            var lastLogged: Int64 = -10
            let outcome = try await AgentSocketClient.updateNow(stateDirectory: state) { received, total in
                let percent = total > 0 ? received * 100 / total : 100
                if tty {
                    let width = 30
                    let filled = Int(percent) * width / 100
                    let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
                    FileHandle.standardOutput.write(
                        Data("\r[\(bar)] \(percent)% \(received / 1024)/\(total / 1024) KiB".utf8))
                } else if percent >= lastLogged + 10 || percent == 100 {
                    lastLogged = percent
                    print("downloading \(received)/\(total)")
                }
            }
            if tty { print("") }
            guard let outcome else {
                throw CleanExit.message(
                    "bulwark: no agent is running for \(state) (start `bulwark agent run`)", code: 69)
            }
            print(outcome)
            guard outcome.hasPrefix("current") || outcome.hasPrefix("committed") || outcome.hasPrefix("no release")
            else { throw ExitCode(1) }
        }
    }
}

/// The agent's JSON configuration file: dotted keys name nested objects (`agent.payload` is
/// `{"agent": {"payload": …}}`). A key the agent does not know is refused, so a misspelt setting is never silently
/// ignored.
struct AgentConfigFile {
    static let known: Set<String> = [
        "mqtt", "hub", "handler", "commandTimeoutSeconds", "outboxBytes", "reconnectMaxSeconds", "crypto.profile",
        "inventoryIntervalSeconds", "trustRefreshSeconds", "agent.updateIntervalSeconds", "agent.payload",
        "agent.payloadUser", "agent.healthCommand", "agent.healthTimeoutSeconds", "agent.healthIntervalSeconds",
        "agent.healthWindowSeconds", "agent.trialAttempts", "agent.slotsDirectory", "updates.requireGate",
        "agent.trimMemorySeconds",
    ]
    static let agentAliases = [
        "handler", "commandTimeoutSeconds", "outboxBytes", "reconnectMaxSeconds", "inventoryIntervalSeconds",
        "trustRefreshSeconds",
    ]
    let values: [String: Any]
    let path: String

    init(path: String?) throws {
        self.path = path ?? ""
        guard let path else {
            values = [:]
            return
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ValidationError("cannot read the configuration file \(path)")
        }
        guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw ValidationError("\(path) is not a JSON object")
        }
        var flat: [String: Any] = [:]
        func walk(_ object: [String: Any], _ prefix: String) {
            for (key, value) in object {
                let name = prefix.isEmpty ? key : prefix + "." + key
                if let nested = value as? [String: Any], !Self.known.contains(name) {
                    walk(nested, name)
                } else {
                    flat[name] = value
                }
            }
        }
        walk(object, "")
        // The agent's own settings may also be written under `agent.` (as the issue and the hub's
        // `agent.*` settings name them): `agent.commandTimeoutSeconds` is `commandTimeoutSeconds`.
        for name in Self.agentAliases {
            guard let value = flat.removeValue(forKey: "agent." + name) else { continue }
            guard flat[name] == nil else {
                throw ValidationError("\(path): \(name) is given twice (also as agent.\(name))")
            }
            flat[name] = value
        }
        if let unknown = flat.keys.sorted().first(where: { !Self.known.contains($0) }) {
            throw ValidationError("\(path): unknown setting \(unknown)")
        }
        values = flat
    }

    func string(_ key: String) throws -> String? {
        guard let value = values[key] else { return nil }
        guard let text = value as? String else { throw ValidationError("\(path): \(key) must be a string") }
        return text
    }

    func number(_ key: String) throws -> Double? {
        guard let value = values[key] else { return nil }
        // JSON true/false arrive as NSNumber too (objCType "c"; `is Bool` also holds for 0 and 1).
        guard let number = value as? NSNumber, String(cString: number.objCType) != "c" else {
            throw ValidationError("\(path): \(key) must be a number")
        }
        return number.doubleValue
    }

    func bool(_ key: String) throws -> Bool? {
        guard let value = values[key] else { return nil }
        guard let number = value as? NSNumber, String(cString: number.objCType) == "c" else {
            throw ValidationError("\(path): \(key) must be true or false")
        }
        return number.boolValue
    }

    func command(_ key: String) throws -> [String]? {
        guard let value = values[key] else { return nil }
        if let text = value as? String { return Self.split(text) }
        if let list = value as? [String], !list.isEmpty { return list }
        throw ValidationError("\(path): \(key) must be a command line or a list of arguments")
    }

    static func split(_ text: String) -> [String] { text.split(separator: " ").map(String.init) }
}
