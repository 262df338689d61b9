import ArgumentParser
import Crypto
import Foundation
import Gateway
import Hub
import HubClient
import PostgresStore
import Store
import X509

extension DeviceCommand {
    struct Release: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Lift a device's quarantine (and its rate-limit state); recorded in the audit log.")
        @OptionGroup var connection: OperatorConnection
        @Argument var id: String
        func run() async throws {
            let (_, object) = try await connection.request(
                method: "POST", path: "/v1/devices/\(pathSegment(id))/release")
            let was = (object as? [String: Any])?["wasQuarantined"] as? Bool ?? false
            print(was ? "released \(id) from quarantine" : "\(id) was not quarantined (rate limits reset)")
        }
    }

    struct Command: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Send a command to a device over MQTT (devices/<id>/commands/<name>, QoS 1).",
            discussion: """
                Delivered now if the device is connected and subscribed, otherwise queued in its persistent session.
                Example: bulwark device command sensor-1 reboot --body '{"delay":5}'
                """)
        @OptionGroup var connection: OperatorConnection
        @Argument var id: String
        @Argument(help: "Command name (1-64 of a-z 0-9 . _ -).") var name: String
        @Option(help: "The command as a JSON object.") var body = "{}"

        func run() async throws {
            let (_, object) = try await connection.request(
                method: "POST", path: "/v1/devices/\(pathSegment(id))/commands/\(pathSegment(name))",
                raw: Array(body.utf8))
            let sessions = (object as? [String: Any])?["sessions"] as? Int ?? 0
            print(
                sessions > 0
                    ? "sent \(name) to \(id) (\(sessions) session\(sessions == 1 ? "" : "s"))"
                    : "\(id) has no session subscribed to its commands; nothing was delivered or queued")
        }
    }

    /// The options every signed device request needs: the device's certificate and key, and the hub's CA.
    struct DeviceCredentials: ParsableArguments {
        @Option(help: "Device certificate (PEM).") var cert: String
        @Option(help: "Device private key (PEM, P-256): it signs the request and authenticates TLS.") var key: String
        @Option(help: "The hub's CA certificate.") var cacert = "bulwark-data/ca.crt"

        func load() throws -> ClientCredentials {
            do { return try ClientCredentials(certificateFile: cert, keyFile: key, caFile: cacert) } catch {
                throw CleanExit.message("bulwark: \(error)", code: 66)
            }
        }
    }

    struct Send: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Send one signed request to the device API (RFC 9421 signature with the device key).",
            discussion: """
                Example: bulwark device send --cert sensor-1.crt --key sensor-1.key --body '{"temperature":21.5}'
                --replay sends the very same signed request a second time, to watch the hub refuse it.
                """)
        @OptionGroup var device: DeviceCredentials
        @Option(help: "The hub's device API.") var hub = "https://127.0.0.1:8443"
        @Option(help: "POST a JSON body to /v1/telemetry; without it, GET /v1/device.") var body: String?
        @Option(help: "Message type (its registered schema); default telemetry.") var type: String?
        @Flag(help: "Send the same signed request twice (the second must be refused).") var replay = false

        func run() async throws {
            guard let url = URLComponents(string: hub), url.scheme == "https", let host = url.host else {
                throw ValidationError("--hub must be an https:// URL")
            }
            let credentials = try device.load()
            let signer = try credentials.signer()
            let method = body == nil ? "GET" : "POST"
            let path = body == nil ? "/v1/device" : "/v1/telemetry"
            let bytes = Array((body ?? "").utf8)
            var headers: [(String, String)] = body == nil ? [] : [("Content-Type", "application/json")]
            if let type { headers.append(("Bulwark-Message-Type", type)) }
            headers += try signer.sign(
                method: method, path: path, body: bytes, created: Int64(Date().timeIntervalSince1970),
                contentType: body == nil ? nil : "application/json", messageType: type
            ).map { ($0.name, $0.value) }
            do {
                try await HTTPSClient.withConnection(
                    host: host, port: url.port ?? 443, tls: try credentials.tlsConfiguration()
                ) { connection in
                    for attempt in 1...(replay ? 2 : 1) {
                        let result = try await connection.send(
                            method: method, path: path, headers: headers, body: bytes)
                        print(
                            "\(replay ? "[\(attempt == 1 ? "first" : "replayed")] " : "")\(result.status) \(result.bodyText)"
                        )
                        if attempt == 1, !(200..<300).contains(result.status) { throw ExitCode(1) }
                        if attempt == 2, (200..<300).contains(result.status) { throw ExitCode(1) }
                    }
                }
            } catch let exit as ExitCode {
                throw exit
            } catch {
                throw CleanExit.message("bulwark: cannot reach the hub at \(hub): \(error)", code: 69)
            }
        }
    }

    struct Sign: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write the signature header fields of one request to a file, for curl -H @FILE.",
            discussion: """
                bulwark device sign --key sensor-1.key --data body.json --out headers.txt
                curl --cert sensor-1.crt --key sensor-1.key --cacert bulwark-data/ca.crt -H @headers.txt \\
                     --data-binary @body.json https://127.0.0.1:8443/v1/telemetry
                Each signature carries a fresh nonce and the current time: use it once, within a minute. The file also
                holds the Content-Type (and Bulwark-Message-Type) lines, which the signature covers: send them as they
                are.
                """)
        @Option(help: "Device private key (PEM, P-256).") var key: String
        @Option(help: "The body file (omit for a GET).") var data: String?
        @Option(help: "HTTP method.") var method: String?
        @Option(help: "Request path.") var path: String?
        @Option(help: "Content-Type of the body (signed).") var contentType = "application/json"
        @Option(help: "Message type (Bulwark-Message-Type, signed); default telemetry.") var type: String?
        @Option(help: "Where to write the header lines (default: standard output).") var out: String?

        func run() async throws {
            let body = try data.map { Array(try Data(contentsOf: URL(fileURLWithPath: $0))) } ?? []
            let keyText = try String(contentsOfFile: key, encoding: .utf8)
            let credentials = ClientCredentials(certificatePEM: [], keyPEM: Array(keyText.utf8), caPEM: [])
            let method = method ?? (data == nil ? "GET" : "POST")
            let path = path ?? (data == nil ? "/v1/device" : "/v1/telemetry")
            let contentType = data == nil ? nil : contentType
            var fields: [(name: String, value: String)] = []
            if let contentType { fields.append(("Content-Type", contentType)) }
            if let type { fields.append(("Bulwark-Message-Type", type)) }
            fields += try credentials.signer().sign(
                method: method, path: path, body: body, created: Int64(Date().timeIntervalSince1970),
                contentType: contentType, messageType: type)
            let lines = fields.map { "\($0.name): \($0.value)" }.joined(separator: "\n") + "\n"
            if let out {
                try lines.write(toFile: out, atomically: true, encoding: .utf8)
            } else {
                print(lines, terminator: "")
            }
        }
    }
}

struct SchemaCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "schema", abstract: "Register and list the JSON Schemas devices' messages must match.",
        subcommands: [Add.self, List.self])

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Register (or replace) the schema of a message type. Keywords outside the supported subset of "
                + "draft 2020-12 are refused, never ignored.")
        @OptionGroup var connection: OperatorConnection
        @Argument(help: "Message type (a-z 0-9 . _ -), e.g. telemetry.") var name: String
        @Argument(help: "The schema file (JSON).") var file: String
        func run() async throws {
            let body = Array(try Data(contentsOf: URL(fileURLWithPath: file)))
            do { _ = try JSONSchema(bytes: body) } catch {
                throw CleanExit.message("bulwark: \(file): \(error)", code: 65)
            }
            _ = try await connection.request(method: "PUT", path: "/v1/schemas/\(pathSegment(name))", raw: body)
            print("schema \(name) registered (\(body.count) bytes)")
        }
    }

    struct List: AsyncParsableCommand {
        @OptionGroup var connection: OperatorConnection
        func run() async throws {
            let (_, object) = try await connection.request(method: "GET", path: "/v1/schemas")
            printJSON(object)
        }
    }
}

struct AuditCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit",
        abstract: "Read, verify and anchor the keyed, hash-chained audit log in the hub's data directory.",
        subcommands: [Verify.self, Anchor.self, Tail.self])

    /// Where the audit key and the anchors' public key are, for `verify` and `anchor`.
    struct KeyOptions: ParsableArguments {
        @Option(help: "The hub's data directory.") var data = "./bulwark-data"
        @Option(help: "The hub's JSON configuration (for a PostgreSQL store: database.url and its files).")
        var config: String?
        @Option(
            help: ArgumentHelp(
                "The audit MAC key (default: $BULWARK_AUDIT_KEY_FILE, else DATA/audit.key).", valueName: "file"))
        var keyFile: String?

        var keyPath: String {
            keyFile ?? ProcessInfo.processInfo.environment["BULWARK_AUDIT_KEY_FILE"] ?? data + "/audit.key"
        }

        /// The key, or nil when there is no key file; a key file others can read, or a malformed one, is refused.
        func loadKey() throws -> AuditKey? {
            guard FileManager.default.fileExists(atPath: keyPath) else { return nil }
            do { return try AuditKeyFile.load(keyPath) } catch {
                throw CleanExit.message("bulwark: \(error)", code: 78)
            }
        }
    }

    struct Verify: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check the chain, every record's MAC and each anchor; names the first bad record or anchor.",
            discussion: """
                Exit 0: intact, every MAC checked. Exit 1: tampering (an edited, deleted, inserted, reordered or \
                re-hashed record, a removed MAC, a log truncated behind an anchor, a forged anchor). Exit 2: the \
                chain and anchors hold but the MACs could not be checked (no audit key: pass --key-file).
                """)
        @OptionGroup var keys: KeyOptions
        @Option(help: "An anchor written by `audit anchor` (repeatable); the log must still reach it.")
        var anchor: [String] = []
        @Option(help: "The certificate whose key signs anchors (default: DATA/ca.crt).") var ca: String?

        func run() async throws {
            var checkpoints: [AuditAnchor.Checkpoint] = []
            if !anchor.isEmpty {
                let signer = try anchorPublicKey(ca ?? keys.data + "/ca.crt")
                for file in anchor {
                    guard let bytes = FileManager.default.contents(atPath: file) else {
                        throw CleanExit.message("bulwark: cannot read the anchor \(file)", code: 66)
                    }
                    guard let parsed = try? AuditAnchor(json: Array(bytes)) else {
                        throw CleanExit.message(
                            "bulwark: anchor \(file) is NOT valid: not an audit anchor file", code: 1)
                    }
                    guard let checkpoint = parsed.verified(by: signer) else {
                        throw CleanExit.message(
                            "bulwark: anchor \(file) is NOT valid: its signature is not the hub CA's (forged or altered)",
                            code: 1)
                    }
                    checkpoints.append(checkpoint)
                }
            }
            let key = try keys.loadKey()
            let store = try await openStore(keys.data, config: keys.config)
            let records = try await store.allAuditRecords()
            try await store.close()
            let summary: AuditChain.Summary
            switch AuditChain.verify(records, key: key, anchors: checkpoints) {
            case .failure(let failure):
                throw CleanExit.message("bulwark: audit log is NOT intact: \(failure)", code: 1)
            case .success(let result): summary = result
            }
            var line =
                "audit log intact: \(summary.count) records, head \(hexPrefix(summary.head)), \(summary.keyed) keyed"
            if summary.unkeyed > 0 { line += ", \(summary.unkeyed) unkeyed (before the key existed)" }
            line +=
                summary.anchors == 0
                ? ", no anchor given" : ", \(summary.anchors) anchor\(summary.anchors == 1 ? "" : "s") ok"
            // Without the key nothing proves the records were not stripped of their MACs and rewritten: never a pass.
            if !summary.macsChecked {
                print(line + "; MACs NOT checked: no audit key at \(keys.keyPath) (pass --key-file)")
                throw ExitCode(2)
            }
            // A key that does not say from which record it was in use (one written by hand) cannot tell an old
            // unkeyed prefix from MACs stripped by someone without the key: only an anchor can, so not a pass.
            if summary.unkeyed > 0, key?.keyedFrom == nil, summary.anchors == 0 {
                print(
                    line + "; the \(summary.unkeyed) unkeyed records cannot be told from stripped ones: this key file "
                        + "has no keyed-from line; verify with --anchor")
                throw ExitCode(2)
            }
            print(line)
        }
    }

    struct Anchor: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write a signed checkpoint (count, head hash, time) of the audit log, to ship off this machine.",
            discussion: """
                The checkpoint is signed with the hub CA key (DATA/ca.key) after the whole log verified, and an \
                audit-anchored event is appended. Later, `bulwark audit verify --anchor FILE` refuses a log cut back \
                behind it or rewritten before it. Keep the anchors where whoever controls this machine cannot reach.
                """)
        @OptionGroup var keys: KeyOptions
        @Option(help: "Where to write the anchor (JSON).") var out: String

        func run() async throws {
            guard let key = try keys.loadKey() else {
                throw CleanExit.message(
                    "bulwark: no audit key at \(keys.keyPath) (pass --key-file): records appended without it would "
                        + "break the log", code: 66)
            }
            let signingKey: P256.Signing.PrivateKey
            do {
                signingKey = try P256.Signing.PrivateKey(pemRepresentation: try SecretFiles.read(keys.data + "/ca.key"))
            } catch {
                throw CleanExit.message("bulwark: cannot use \(keys.data)/ca.key to sign: \(error)", code: 78)
            }
            let store = try await openStore(keys.data, config: keys.config)
            try await store.setAuditKey(key)
            let records = try await store.allAuditRecords()
            if case .failure(let failure) = AuditChain.verify(records, key: key) {
                try await store.close()
                throw CleanExit.message(
                    "bulwark: refusing to anchor: audit log is NOT intact: \(failure)", code: 1)
            }
            let anchor = try AuditAnchor(signing: AuditAnchor.Checkpoint(of: records, at: Date()), with: signingKey)
            do { try Data(anchor.json).write(to: URL(fileURLWithPath: out), options: .atomic) } catch {
                try await store.close()
                throw CleanExit.message("bulwark: cannot write \(out): \(error)", code: 73)
            }
            let checkpoint = anchor.unverifiedCheckpoint
            try await store.recordSecurityEvent(
                SecurityEvent(
                    at: Date(), kind: "audit-anchored",
                    detail: "\(checkpoint.count) records, head \(AuditChain.hex(checkpoint.head)), written to \(out)")
            )
            try await store.close()
            print(
                "audit anchor written to \(out): \(checkpoint.count) records, head \(hexPrefix(checkpoint.head)); "
                    + "ship it off this machine")
        }
    }

    struct Tail: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print audit records as JSON lines.")
        @Option(help: "The hub's data directory.") var data = "./bulwark-data"
        @Option(help: "The hub's JSON configuration (for a PostgreSQL store: database.url and its files).")
        var config: String?
        @Option(help: "How many of the newest records to start with.") var lines = 20
        @Flag(help: "Keep printing new records as they are appended.") var follow = false
        func run() async throws {
            let store = try await openStore(data, config: config)
            let newest = try await store.securityEvents(limit: 1).first?.id ?? 0
            var after = max(0, newest - Int64(lines))
            repeat {
                for record in try await store.auditRecords(after: after, limit: 1000) {
                    FileHandle.standardOutput.write(Data((record.jsonLine + "\n").utf8))
                    after = record.sequence
                }
                if follow { try await Task.sleep(for: .milliseconds(500)) }
            } while follow
            try await store.close()
        }
    }
}

/// The hub's store as its configuration names it (`--config` and `BULWARK_*`, as `bulwark serve` reads them): the
/// PostgreSQL database of a cluster, or the data directory's SQLite file.
func openStore(_ directory: String?, config: String?) async throws -> any HubStore {
    let configuration: HubConfiguration
    do { configuration = try await HubConfiguration.load(dataDirectory: directory, configFile: config) } catch {
        throw CleanExit.message("bulwark: \(error)", code: 78)
    }
    if let location = try configuration.postgresLocation() {
        do { return try await PostgresHubStore(location: location) } catch {
            throw CleanExit.message("bulwark: \(error)", code: 69)
        }
    }
    let path = configuration.sqlitePath
    guard FileManager.default.fileExists(atPath: path) else {
        throw CleanExit.message("bulwark: no store at \(path) (pass --data DIR)", code: 66)
    }
    return try SQLiteHubStore(path: path)
}

private func hexPrefix(_ bytes: [UInt8]) -> String { AuditChain.hex(bytes.prefix(8)) }

/// The public key that signs anchors: the one in the hub CA certificate.
private func anchorPublicKey(_ certificateFile: String) throws -> P256.Signing.PublicKey {
    guard let text = try? String(contentsOfFile: certificateFile, encoding: .utf8),
        let certificate = try? Certificate(pemEncoded: text), let key = P256.Signing.PublicKey(certificate.publicKey)
    else { throw CleanExit.message("bulwark: \(certificateFile) is not a P-256 certificate", code: 66) }
    return key
}
