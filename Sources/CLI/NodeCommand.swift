import ArgumentParser
import Foundation
import Hub
import Logging
import PostgresStore
import Store

/// `bulwark node`: more hub nodes on one PostgreSQL database. The first node is an ordinary `bulwark serve` with
/// `database.url`; `bundle` packs what another node needs (encrypted), and `join` unpacks it into an empty data
/// directory. The nodes share the CA, the audit key and the pairing keys (NodeBundle); each makes TLS keys of its own,
/// whose pins `pins` lists and `bulwark hub publish-pins` publishes, and `forget` withdraws a node's.
struct NodeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "node", abstract: "Add hub nodes on the same PostgreSQL database.",
        subcommands: [Init.self, List.self, Bundle.self, Join.self, Pins.self, Forget.self])

    /// The database a node serves from (`init`, `join`), written to `DATA/node.json` for `bulwark serve --data DIR`.
    struct DatabaseOptions: ParsableArguments {
        @Option(help: "postgres://USER@HOST:PORT/DB?sslmode=verify-full (no password in it: --database-password-file).")
        var database: String?
        @Option(help: "A file holding the database user's password.") var databasePasswordFile: String?
        @Option(help: "The CA certificate the database server's certificate is checked against.")
        var databaseCaFile: String?
        @Option(help: "This node's name in bulwark node list (cluster.nodeName; the host name by default).")
        var name: String?

        /// Writes `DATA/node.json`, then does what a start does before it serves (`HubServer.prepare`): the database
        /// migrated, the CA and audit key agreed with the other nodes, this node's keys made and its pins recorded.
        /// A data directory this command made is removed again when that fails.
        func prepare(_ data: String, made: Bool, first: Bool) async throws {
            guard let database else { return }
            do {
                _ = try SecretFiles.makePrivateDirectory(data)
                try SecretFiles.writePublic(
                    data + "/" + HubConfiguration.nodeFileName,
                    contents: try HubConfiguration.nodeFile(
                        databaseURL: database, passwordFile: databasePasswordFile, caFile: databaseCaFile,
                        nodeName: name))
                let configuration = try await HubConfiguration.load(dataDirectory: data, configFile: nil)
                guard let location = try configuration.postgresLocation() else {
                    throw HubStartupError("--database must be a postgres:// URL")
                }
                // One connection pool for the check and the preparation.
                let store = try await PostgresHubStore(location: location)
                do {
                    if first, try await store.agreedSetting("ca-certificate", proposing: nil) != nil {
                        throw HubStartupError(
                            "the database already belongs to a hub: add this node to it with bulwark node join")
                    }
                    var logger = Logger(label: "bulwark.node")
                    logger.logLevel = .warning
                    _ = try await HubServer.prepare(configuration: configuration, store: store, logger: logger)
                    try? await store.close()
                } catch {
                    try? await store.close()
                    throw error
                }
            } catch {
                if made { try? FileManager.default.removeItem(atPath: data) }
                throw CleanExit.message("bulwark: \(error)", code: 1)
            }
        }
    }

    struct Init: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make the first node of a hub on a PostgreSQL database: its CA, keys and DATA/node.json.",
            discussion: """
                Refused when the data directory already holds a hub, or the database already belongs to one (join it
                with `bulwark node join`). Start the node with `bulwark serve --data DIR`.
                """)
        @Option(help: "The new node's data directory (empty or missing).") var data: String
        @OptionGroup var database: DatabaseOptions

        func run() async throws {
            guard database.database != nil else { throw CleanExit.message("bulwark: --database is required", code: 64) }
            guard !FileManager.default.fileExists(atPath: data + "/ca.crt") else {
                throw CleanExit.message("bulwark: \(data) already holds a hub (ca.crt)", code: 1)
            }
            try await database.prepare(data, made: !FileManager.default.fileExists(atPath: data), first: true)
            print(
                "\(data) is the first node of a hub on the database: start it with `bulwark serve --data \(data)`; "
                    + "add nodes with `bulwark node bundle` and `bulwark node join`")
        }
    }

    /// The store the configuration names, as `bulwark serve` reads it.
    struct StoreOptions: ParsableArguments {
        @Option(help: "Data directory.") var data: String?
        @Option(help: "JSON configuration file; BULWARK_* environment variables override it.") var config: String?

        /// Runs `body` on the store and closes it; a store that does not answer exits 69.
        func withStore<T>(_ body: (any HubStore) async throws -> T) async throws -> T {
            let store = try await openStore(data, config: config)
            do {
                let value = try await body(store)
                try? await store.close()
                return value
            } catch {
                try? await store.close()
                throw CleanExit.message("bulwark: the store did not answer: \(error)", code: 69)
            }
        }
    }

    struct Pins: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Each node's TLS pins (key in use, backup), as pairing hands them out and publish-pins publishes."
        )
        @OptionGroup var options: StoreOptions

        func run() async throws {
            for record in try await options.withStore({ try await $0.nodePins() }) {
                print(
                    "\(record.node)  \(record.name)  \(record.updatedAt.formatted(.iso8601))  "
                        + record.pins.map { Data($0).base64EncodedString() }.joined(separator: " "))
            }
        }
    }

    struct Forget: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Take a node out of service: its pins are no longer handed out or published.",
            discussion: """
                Stop the node first (it records its pins again when it starts). Devices keep trusting its keys until
                the next `bulwark hub publish-pins`, which leaves them out.
                """)
        @OptionGroup var options: StoreOptions
        @Argument(help: "The node's id (`bulwark node pins`, or its DATA/node.id).") var node: String

        func run() async throws {
            let node = node
            let removed = try await options.withStore { try await $0.removeNodePins(node: node) }
            guard removed else { throw CleanExit.message("bulwark: no node \(node) (bulwark node pins)", code: 1) }
            print("node \(node) forgotten: run bulwark hub publish-pins to withdraw its keys from devices")
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "The hub's nodes heard from in the last day: up, down (silent for 10 s) or stopped.",
            discussion: """
                Each node says it is alive every 5 s, with its name (cluster.nodeName), version and listeners. A run
                is one line: a node that restarted shows its earlier run as stopped (or down, if it was killed).
                """)
        @OptionGroup var connection: OperatorConnection
        @Flag(help: "Print the hub's JSON answer.") var json = false

        func run() async throws {
            let (_, object) = try await connection.request(method: "GET", path: "/v1/nodes")
            if json { return printJSON(object) }
            let nodes = object as? [[String: Any]] ?? []
            let rows =
                [["NAME", "STATUS", "VERSION", "LAST SEEN", "STARTED", "RUN", "ADDRESSES"]]
                + nodes.map { node in
                    let silent = node["silentSeconds"] as? Double ?? 0
                    return [
                        (node["name"] as? String ?? "?") + (node["thisNode"] as? Bool == true ? " *" : ""),
                        node["status"] as? String ?? "?", node["version"] as? String ?? "?",
                        silent < 60 ? String(format: "%.0f s ago", silent) : node["lastSeen"] as? String ?? "?",
                        node["startedAt"] as? String ?? "?", String((node["id"] as? String ?? "?").prefix(8)),
                        node["addresses"] as? String ?? "",
                    ]
                }
            let widths = (0..<rows[0].count).map { column in rows.map { $0[column].count }.max() ?? 0 }
            for row in rows {
                print(
                    zip(row, widths).enumerated().map { index, cell in
                        index == row.count - 1 ? cell.0 : cell.0.padding(toLength: cell.1, withPad: " ", startingAt: 0)
                    }.joined(separator: "  "))
            }
            print("(* the node that answered; a node is down after 10 s without a heartbeat)")
        }
    }

    struct Bundle: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Pack this node's CA, audit, TLS and pairing keys into a passphrase-encrypted bundle.")
        @Option(help: "This node's data directory.") var data: String
        @Option(help: "The audit key, when audit.keyFile keeps it outside the data directory.") var auditKeyFile:
            String?
        @Option(help: "Where to write the bundle (created 0600).") var out: String
        @Option(help: "A file whose first line is the passphrase (12 characters or more).") var passphraseFile: String

        func run() async throws {
            do {
                let bundle = try NodeBundle.seal(
                    try NodeBundle.files(in: data, auditKeyPath: auditKeyFile),
                    passphrase: try passphrase(passphraseFile))
                try SecretFiles.create(out, contents: String(decoding: bundle, as: UTF8.self))
                print("bundle written to \(out): give it and its passphrase to the new node by separate ways")
            } catch { throw CleanExit.message("bulwark: \(error)", code: 1) }
        }
    }

    struct Join: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make an empty data directory a node of an existing hub, from a bundle or a node's directory.")
        @Option(help: "The new node's data directory (empty or missing).") var data: String
        @Option(help: "A bundle made by `bulwark node bundle`, or an existing node's data directory.") var from: String
        @Option(help: "The bundle's passphrase file (with a bundle).") var passphraseFile: String?
        @OptionGroup var database: DatabaseOptions

        func run() async throws {
            do {
                var isDirectory: ObjCBool = false
                guard FileManager.default.fileExists(atPath: from, isDirectory: &isDirectory) else {
                    throw CleanExit.message("bulwark: no bundle or data directory at \(from)", code: 66)
                }
                let files: [String: String]
                if isDirectory.boolValue {
                    files = try NodeBundle.files(in: from)
                } else {
                    guard let passphraseFile else {
                        throw CleanExit.message("bulwark: --passphrase-file is required with a bundle", code: 64)
                    }
                    guard let bytes = FileManager.default.contents(atPath: from) else {
                        throw CleanExit.message("bulwark: cannot read \(from)", code: 66)
                    }
                    files = try NodeBundle.open(Array(bytes), passphrase: try passphrase(passphraseFile))
                }
                let made = !FileManager.default.fileExists(atPath: data)
                try NodeBundle.install(files, into: data)
                if database.database != nil {
                    try await database.prepare(data, made: made, first: false)
                    print(
                        "\(data) is a node of the hub, with TLS keys of its own: start it with `bulwark serve --data "
                            + "\(data)`. Run `bulwark hub publish-pins` so that devices paired before it trust it")
                    return
                }
                print(
                    "\(data) is a node of the hub: start it with `bulwark serve --data \(data)` and the same "
                        + "database.url, database.passwordFile and database.caFile as the other nodes. It makes TLS "
                        + "keys of its own at its first start: then run `bulwark hub publish-pins` so that devices "
                        + "paired before it trust it")
            } catch let exit as ExitCode { throw exit } catch {
                throw CleanExit.message("bulwark: \(error)", code: 1)
            }
        }
    }
}

private func passphrase(_ file: String) throws -> String {
    guard let text = try? String(contentsOfFile: file, encoding: .utf8),
        let line = text.split(whereSeparator: \.isNewline).first
    else { throw NodeBundle.Failure("cannot read the passphrase file \(file)") }
    return String(line)
}
