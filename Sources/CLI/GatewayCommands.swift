import ArgumentParser
import Foundation
import Gateway
import HubClient
import Store

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
        commandName: "audit", abstract: "Read and verify the hash-chained audit log in the hub's data directory.",
        subcommands: [Verify.self, Tail.self])

    struct Verify: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check the whole chain; names the first edited, deleted, inserted or reordered record.")
        @Option(help: "The hub's data directory.") var data = "./bulwark-data"
        func run() async throws {
            let store = try openStore(data)
            var records: [AuditRecord] = []
            while true {
                let page = try await store.auditRecords(after: records.last?.sequence ?? 0, limit: 10_000)
                if page.isEmpty { break }
                records += page
            }
            try await store.close()
            if let failure = AuditChain.verify(records) {
                throw CleanExit.message("bulwark: audit log is NOT intact: \(failure)", code: 1)
            }
            print("audit log intact: \(records.count) records, head \(records.last.map { hexPrefix($0.hash) } ?? "-")")
        }
    }

    struct Tail: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print audit records as JSON lines.")
        @Option(help: "The hub's data directory.") var data = "./bulwark-data"
        @Option(help: "How many of the newest records to start with.") var lines = 20
        @Flag(help: "Keep printing new records as they are appended.") var follow = false
        func run() async throws {
            let store = try openStore(data)
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

private func openStore(_ directory: String) throws -> SQLiteHubStore {
    let path = directory + "/bulwark.sqlite"
    guard FileManager.default.fileExists(atPath: path) else {
        throw CleanExit.message("bulwark: no store at \(path) (pass --data DIR)", code: 66)
    }
    return try SQLiteHubStore(path: path)
}

private func hexPrefix(_ bytes: [UInt8]) -> String { AuditChain.hex(bytes.prefix(8)) }
