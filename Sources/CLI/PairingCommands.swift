import Agent
import ArgumentParser
import Core
import Crypto
import Foundation
import Hub
import HubClient
import Logging
import Pairing
import ServiceLifecycle
import X509

extension DeviceCommand {
    struct Label: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Factory step: make a device identity key, a 128-bit setup secret and the pairing label.")
        @Option(help: "Device id (at most 32 of A-Z a-z 0-9 . _ -).") var id: String
        @Option(help: "Directory for identity.key, label.txt (both 0600) and label.png.") var out: String
        @Option(help: "p256 (default, FIPS-approved primitives) or 25519.") var suite = "p256"

        func run() async throws {
            let chosen: PairingLabel.Suite
            switch suite {
            case "p256": chosen = .p256AESGCMSHA256
            case "25519": chosen = .x25519AESGCMSHA256
            default: throw ValidationError("--suite must be p256 or 25519")
            }
            let profile = ProcessInfo.processInfo.environment["BULWARK_CRYPTO_PROFILE"] ?? "standard"
            if profile == "fips", chosen != .p256AESGCMSHA256 {
                throw ValidationError(
                    "BULWARK_CRYPTO_PROFILE=fips: the pairing suite must be p256 (X25519 is not approved)")
            }
            let identity = chosen.dh.generateKeyPair()
            let secret = SymmetricKey(size: .bits128).withUnsafeBytes { Array($0) }
            let label: PairingLabel
            do {
                label = try PairingLabel(
                    suite: chosen, deviceID: try DeviceID(id), publicKey: identity.publicKey, setupSecret: secret)
            } catch {
                throw CleanExit.message("bulwark: \(error)", code: 65)
            }
            do {
                try SecretFiles.makePrivateDirectory(out)
                try SecretFiles.create(
                    "\(out)/identity.key", contents: "\(suite)\n\(Data(identity.privateKey).base64EncodedString())\n")
                try SecretFiles.create("\(out)/label.txt", contents: label.text + "\n")
            } catch let error as HubStartupError {
                throw CleanExit.message("bulwark: \(error)", code: 73)
            }
            var qr = ""
            if let qrencode = findProgram("qrencode") {
                let process = Process()
                process.executableURL = URL(fileURLWithPath: qrencode)
                process.arguments = ["-l", "M", "-o", "\(out)/label.png", label.text]
                try process.run()
                process.waitUntilExit()
                if process.terminationStatus == 0 { qr = " and \(out)/label.png" }
            }
            print("device \(id): label in \(out)/label.txt\(qr) (\(label.text.count) characters)")
            print(label.text)
        }
    }
}

struct PairCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pair", abstract: "Pair devices with their labels.", subcommands: [Claim.self])

    struct Claim: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Enter a device's label: the hub will pair with that device once, within the claim's lifetime.")
        @OptionGroup var connection: OperatorConnection
        @Argument(help: "The label text (BWK1:...), or @FILE to read it from a file.") var label: String

        func run() async throws {
            var text = label
            if label.hasPrefix("@") {
                guard let data = FileManager.default.contents(atPath: String(label.dropFirst())) else {
                    throw CleanExit.message("bulwark: cannot read \(label.dropFirst())", code: 66)
                }
                text = String(decoding: data, as: UTF8.self)
            }
            let (_, object) = try await connection.request(
                method: "POST", path: "/v1/pairing/claims",
                json: ["label": text.trimmingCharacters(in: .whitespacesAndNewlines)])
            let response = object as? [String: Any] ?? [:]
            print(
                "claimed \(response["deviceId"] as? String ?? "?") (\(response["suite"] as? String ?? "?")), "
                    + "pair before \(response["expiresAt"] as? String ?? "?")")
        }
    }
}

struct AgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agent", abstract: "The device side.",
        subcommands: [Pair.self, Run.self, Send.self, Status.self, UpdateNow.self, Renew.self, RID.self])

    struct Pair: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Pair with a hub that claimed this device's label, and store every trust anchor it gives.")
        @Option(help: "The hub's pairing address HOST:PORT.") var hub = "127.0.0.1:8445"
        @Option(help: "Directory with identity.key and label.txt (from `bulwark device label`).") var labelDir: String
        @Option(help: "Where to keep the credentials (default LABEL-DIR/state).") var state: String?
        @Flag(help: "Forget an earlier pairing first (a factory reset: back to the commissioning window).")
        var reset = false

        func run() async throws {
            let stateDirectory = state ?? "\(labelDir)/state"
            if reset { try? FileManager.default.removeItem(atPath: stateDirectory) }
            if FileManager.default.fileExists(atPath: "\(stateDirectory)/paired") {
                throw CleanExit.message(
                    "bulwark: this device is already paired (one owner); it accepts pairing only after a reset "
                        + "(--reset)", code: 75)
            }
            let (label, identity) = try loadLabel(labelDir)
            let parts = hub.split(separator: ":")
            guard parts.count == 2, let port = Int(parts[1]) else { throw ValidationError("--hub must be HOST:PORT") }
            let result: PairingClient.Result
            do {
                result = try await PairingClient.pair(
                    host: String(parts[0]), port: port, label: label, identityKey: identity)
            } catch {
                throw CleanExit.message("bulwark: pairing failed: \(error)", code: 1)
            }
            do { try AgentCommand.store(result, in: stateDirectory, hub: hub) } catch let error as HubStartupError {
                throw CleanExit.message("bulwark: \(error)", code: 73)
            }
            print(
                "paired \(label.deviceID) with \(hub): certificate, CA, \(result.credentials.pins.count) pins in \(stateDirectory)"
            )
        }
    }

    /// Writes what pairing gave into the agent's state directory: the library's `AgentState.store`.
    static func store(_ result: PairingClient.Result, in stateDirectory: String, hub: String) throws {
        do { try AgentState.store(result, in: stateDirectory, hub: hub) } catch {
            throw HubStartupError(error.message)
        }
    }

    struct Send: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Send one telemetry message with the paired certificate, checking the hub against its pins.")
        @Option(help: "Credentials directory written by `bulwark agent pair`.") var state: String
        @Option(help: "The hub's device API.") var hub = "https://127.0.0.1:8443"
        @Option(help: "A JSON object.") var body = #"{"hello":"world"}"#

        func run() async throws {
            // A running agent takes it (durably, into its outbox) and sends it over its session.
            if let reply = try await AgentSocketClient.send(Array(body.utf8), stateDirectory: state) {
                print(reply)
                if reply != "ok" { throw ExitCode(1) }
                return
            }
            guard let url = URLComponents(string: hub), url.scheme == "https", let host = url.host else {
                throw ValidationError("--hub must be an https:// URL")
            }
            let credentials = try ClientCredentials(
                certificateFile: "\(state)/device.crt", keyFile: "\(state)/device.key", caFile: "\(state)/ca.crt")
            let pins = try String(contentsOfFile: "\(state)/pins", encoding: .utf8).split(separator: "\n")
                .compactMap { Data(base64Encoded: String($0)).map { [UInt8]($0) } }
            let ca = try Certificate(pemEncoded: String(decoding: credentials.caPEM, as: UTF8.self))
            let result: HTTPResult
            do {
                result = try await HTTPSClient.request(
                    host: host, port: url.port ?? 443, tls: try credentials.tlsConfiguration(),
                    pinned: PinnedServer(caCertificateDER: ca.derBytes, pins: pins), method: "POST",
                    path: "/v1/telemetry", headers: [("Content-Type", "application/json")], body: Array(body.utf8),
                    signer: try credentials.signer())
            } catch {
                throw CleanExit.message(
                    "bulwark: cannot reach the hub at \(hub) (TLS or pin check failed): \(error)", code: 69)
            }
            print("\(result.status) \(result.bodyText)")
            if result.status != 202 { throw ExitCode(1) }
        }
    }

    struct Renew: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Renew the device certificate with a new key (POST /v1/device/certificate, pinned mTLS).",
            discussion: """
                Makes a fresh P-256 key and a CSR signed by it, sends it in a request signed with the current key, and
                replaces device.key and device.crt in the state directory only once the hub answered with the new
                certificate (each file replaced atomically, the key 0600). The old certificate stays valid until the
                device first uses the new one, or the hub's grace period ends.
                """)
        @Option(help: "Credentials directory written by `bulwark agent pair`.") var state: String
        @Option(help: "The hub's device API.") var hub = "https://127.0.0.1:8443"
        @Option(help: "standard or fips (default: BULWARK_CRYPTO_PROFILE, else standard).") var cryptoProfile: String?

        func run() async throws {
            let profile: CryptoProfile
            do {
                profile = try CryptoProfile(
                    parsing: cryptoProfile ?? ProcessInfo.processInfo.environment["BULWARK_CRYPTO_PROFILE"]
                        ?? "standard")
            } catch { throw ValidationError(error.description) }
            let loaded: AgentState
            do { loaded = try AgentState.load(state, profile: profile) } catch {
                throw CleanExit.message("bulwark: \(error)", code: 66)
            }
            do {
                let renewed = try await Renewal.renew(loaded, apiURL: hub)
                print(
                    "renewed: serial \(renewed.certificate.serialHex), valid until "
                        + renewed.certificate.notValidAfter.formatted(.iso8601))
            } catch let error as AgentError {
                throw CleanExit.message("bulwark: \(error)", code: error.code == .refusedByHub ? 1 : 69)
            }
        }
    }

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show the agent's state: hub, device, certificate expiry, connection, outbox. Exit 0 only when "
                + "connected and current.")
        @Option(help: "Credentials directory written by `bulwark agent pair`.") var state: String

        func run() async throws {
            let loaded: AgentState
            do { loaded = try AgentState.load(state) } catch { throw CleanExit.message("bulwark: \(error)", code: 66) }
            let status =
                FileManager.default.contents(atPath: state + "/status.json")
                .flatMap { try? JSONSerialization.jsonObject(with: $0) as? [String: Any] } ?? [:]
            let notAfter = loaded.certificate.notValidAfter
            // Fresh: written, or touched by the keep-alive's heartbeat (which sets only the file's time), in the last
            // 90 s. A time ahead of the clock (the clock stepped back) is not fresh, beyond a few seconds' slack.
            let touched =
                (try? FileManager.default.attributesOfItem(atPath: state + "/status.json"))?[.modificationDate] as? Date
            let fresh = touched.map { (-5..<90).contains(Date().timeIntervalSince($0)) } ?? false
            let connected = status["connection"] as? String == "connected" && fresh
            print("device        \(loaded.deviceID)")
            print("hub           \(status["hub"] as? String ?? "-")")
            print("certificate   serial \(loaded.certificate.serialHex), valid until \(notAfter.formatted(.iso8601))")
            print(
                "connection    \(status["connection"] as? String ?? "not running")\(fresh ? "" : " (no recent status)")"
            )
            print(
                "outbox        \(status["outboxDepth"] as? Int ?? 0) waiting, \(status["dropped"] as? Int ?? 0) dropped"
            )
            print(
                "pins          \(loaded.pinned.pins.count) pins, "
                    + (loaded.pinSetVersion == 0
                        ? "as given at pairing" : "published set version \(loaded.pinSetVersion)"))
            let trust =
                TrustRefresh.available(loaded)
                ? (status["trustRootVersion"] as? Int).map {
                    "TUF root version \($0), refreshed \(status["lastTrustRefresh"] as? String ?? "-")"
                } ?? "TUF root from pairing, not refreshed yet"
                : "no TUF root (the hub had no update repository at pairing)"
            print("trust         \(trust)")
            if let error = status["trustError"] as? String { print("trust error   \(error)") }
            print("inventory     \(status["lastInventory"] as? String ?? "none reported yet")")
            let update =
                FileManager.default.contents(atPath: state + "/update.json")
                .flatMap { try? JSONSerialization.jsonObject(with: $0) as? [String: Any] } ?? [:]
            if let active = update["active"] as? String {
                print(
                    "slot          \(active): \(update["activeVersion"] as? String ?? "?"), floor \(update["floor"] as? Int ?? 0)"
                        + ((update["payloadRunning"] as? Bool) == true ? ", payload running" : ""))
            } else {
                print("slot          nothing installed yet, floor \(update["floor"] as? Int ?? 0)")
            }
            if let trial = update["trial"] as? String {
                print("trial         \(trial): \(update["trialVersion"] as? String ?? "?")")
            }
            if let outcome = update["lastOutcome"] as? String { print("update        \(outcome)") }
            if let error = status["lastError"] as? String { print("last error    \(error)") }
            guard connected, notAfter > Date(), status["trustError"] == nil else { throw ExitCode(1) }
        }
    }

    struct RID: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "rid", abstract: "Print this device's rotating identifier for the current 15-minute epoch.")
        @Option(help: "Credentials directory written by `bulwark agent pair`.") var state: String
        func run() async throws {
            let text = try String(contentsOfFile: "\(state)/irk", encoding: .utf8)
            guard let irk = Data(base64Encoded: text.trimmingCharacters(in: .whitespacesAndNewlines)) else {
                throw CleanExit.message("bulwark: \(state)/irk is not valid", code: 65)
            }
            let epoch = RotatingIdentifier.epoch(unixSeconds: Int64(Date().timeIntervalSince1970))
            print(RotatingIdentifier.text(RotatingIdentifier.rid(irk: [UInt8](irk), epoch: epoch)))
        }
    }
}

func loadLabel(_ directory: String) throws -> (PairingLabel, NoiseKeyPair) {
    do {
        let keyLines = try SecretFiles.read("\(directory)/identity.key").split(separator: "\n")
        let label = try PairingLabel(text: try SecretFiles.read("\(directory)/label.txt"))
        guard keyLines.count == 2, let raw = Data(base64Encoded: String(keyLines[1])) else {
            throw CleanExit.message("bulwark: \(directory)/identity.key is not valid", code: 65)
        }
        return (label, try label.suite.dh.keyPair(privateKey: [UInt8](raw)))
    } catch let error as HubStartupError {
        throw CleanExit.message("bulwark: \(error)", code: 66)
    } catch let error as PairingError {
        throw CleanExit.message("bulwark: \(error)", code: 65)
    } catch let error as NoiseError {
        throw CleanExit.message("bulwark: \(error)", code: 65)
    }
}

func findProgram(_ name: String) -> String? {
    for directory in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
        let path = "\(directory)/\(name)"
        if FileManager.default.isExecutableFile(atPath: path) { return path }
    }
    return nil
}
