import ArgumentParser
import TUF
import TUFClient

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// The client-under-test CLI of tuf-conformance (CLIENT-CLI.md): `init`, `refresh`,
/// `download`; options may appear in any order; exit status is 0 on success, 1 otherwise.
struct ConformanceCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bulwark-tuf-client",
        abstract: "TUF client for the tuf-conformance suite"
    )

    @Option(help: "Directory of trusted metadata") var metadataDir: String
    @Option(help: "Base URL of repository metadata") var metadataUrl: String?
    @Option(help: "Target path to download (repeatable, processed in order)") var targetName: [String] = []
    @Option(help: "Base URL of repository targets") var targetBaseUrl: String?
    @Option(help: "Directory for downloaded artifacts") var targetDir: String?
    @Flag(help: .hidden) var timing = false
    @Argument(help: "init <TRUSTED_ROOT> | refresh | download") var command: [String]
}

@main
enum ConformanceClient {
    static func main() async {
        let cmd: ConformanceCommand
        do {
            cmd = try ConformanceCommand.parse(Array(CommandLine.arguments.dropFirst()))
        } catch {
            // Help and version requests succeed; every other parse problem is exit status 1.
            let success = ConformanceCommand.exitCode(for: error) == .success
            if success {
                print(ConformanceCommand.fullMessage(for: error))
            } else {
                log(ConformanceCommand.message(for: error))
            }
            exit(success ? 0 : 1)
        }
        do {
            let start = monotonicSeconds()
            try await run(cmd)
            if cmd.timing {
                // Benchmark only (tuf-bench): time inside the process for the whole command.
                print("{\"seconds\": \(monotonicSeconds() - start)}")
            }
            exit(0)
        } catch {
            log("error: \(error)")
            exit(1)
        }
    }

    static func log(_ message: String) {
        var line = message + "\n"
        line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
    }

    static func run(_ cmd: ConformanceCommand) async throws {
        guard let verb = cmd.command.first else { throw UpdaterError.usage("missing command") }
        let store = DirectoryStore(directory: cmd.metadataDir)
        switch verb {
        case "init":
            guard cmd.command.count == 2 else { throw UpdaterError.usage("usage: init <TRUSTED_ROOT>") }
            // CLIENT-CLI.md: copy the given root; no checks are required, but refusing a root that
            // does not parse gives an early, clear error.
            guard let bytes = try AtomicFile.read(path: cmd.command[1]) else {
                throw UpdaterError.storage("cannot read trusted root")
            }
            try store.store("root.json", bytes)
            log("initialized \(cmd.metadataDir)")
        case "refresh":
            let updater = try makeUpdater(cmd, store: store)
            try await updater.refresh()
            log("refreshed \(cmd.metadataDir)")
        case "download":
            guard !cmd.targetName.isEmpty else { throw UpdaterError.usage("--target-name is required") }
            guard let targetDir = cmd.targetDir else { throw UpdaterError.usage("--target-dir is required") }
            guard cmd.targetBaseUrl != nil else { throw UpdaterError.usage("--target-base-url is required") }
            let updater = try makeUpdater(cmd, store: store, artifacts: DirectoryStore(directory: targetDir))
            for name in cmd.targetName {
                guard let info = try await updater.targetInfo(for: name) else {
                    throw UpdaterError.targetNotFound(name)
                }
                if try await updater.cachedTarget(info) != nil {
                    log("\(name): cached copy is current")
                    continue
                }
                try await updater.downloadTarget(info)
                log("\(name): downloaded")
            }
        default:
            throw UpdaterError.usage("unknown command \(verb)")
        }
    }

    static func makeUpdater(
        _ cmd: ConformanceCommand,
        store: DirectoryStore,
        artifacts: DirectoryStore? = nil
    ) throws
        -> Updater
    {
        guard let url = cmd.metadataUrl else { throw UpdaterError.usage("--metadata-url is required") }
        return try Updater(
            metadataBaseURL: url,
            metadataStore: store,
            fetcher: HTTPFetcher(),
            targetBaseURL: cmd.targetBaseUrl,
            artifactStore: artifacts,
            referenceTime: currentTime()
        )
    }

    static func monotonicSeconds() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    /// TUF §5.1: the time at which the update began, read once.
    static func currentTime() -> Timestamp8601 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Timestamp8601(secondsSinceEpoch: Int64(ts.tv_sec))
    }
}
