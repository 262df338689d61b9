import ArgumentParser
import Core
import Foundation
import Hub
import Logging
import TUFCommands

@main
struct Bulwark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bulwark",
        abstract: "Bulwark: the IoT security hub, its device agent and its operator CLI.",
        version: BulwarkVersion.current,
        subcommands: [
            Serve.self, HubCommand.self, DeviceCommand.self, OperatorCommand.self, PairCommand.self, AgentCommand.self,
            EventsCommand.self, SchemaCommand.self, AuditCommand.self, PolicyCommand.self, UpdatesCommand.self,
            TUFCommand.self, HSMCommand.self, CryptoCommand.self, RolloutCommand.self, ReleaseCommand.self,
            AdvisoriesCommand.self, DemoCommand.self, NodeCommand.self,
        ]
    )
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the hub: the mutual-TLS device API and operator API.")

    @Option(help: "Data directory (keys, certificates, the SQLite store).")
    var data: String?

    @Option(help: "JSON configuration file; BULWARK_* environment variables override it.")
    var config: String?

    func run() async throws {
        let configuration: HubConfiguration
        let server: HubServer
        do {
            configuration = try await HubConfiguration.load(dataDirectory: data, configFile: config)
            let logger = makeLogger(level: configuration.logLevel)
            server = try await HubServer.make(configuration: configuration, logger: logger)
        } catch let error as HubStartupError {
            throw CleanExit.message("bulwark: \(error)", code: 78)
        } catch {
            throw CleanExit.message("bulwark: cannot start: \(error)", code: 1)
        }
        try await server.run()
    }
}

func makeLogger(level: String) -> Logger {
    LoggingSystem.bootstrap { label in
        var handler = StreamLogHandler.standardError(label: label)
        handler.logLevel = Logger.Level(rawValue: level) ?? .info
        return handler
    }
    return Logger(label: "bulwark")
}

extension CleanExit {
    /// Prints `message` to standard error and exits with `code`.
    static func message(_ message: String, code: Int32) -> any Error {
        FileHandle.standardError.write(Data((message + "\n").utf8))
        return ExitCode(code)
    }
}
