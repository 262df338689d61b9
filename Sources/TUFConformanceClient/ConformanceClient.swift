import TUF
import TUFClient

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// The client-under-test CLI of tuf-conformance (CLIENT-CLI.md): `init`, `refresh`,
/// `download`; options may appear in any order, as `--name value` or `--name=value`; exit status is 0 on success,
/// 1 otherwise.
///
/// The command line is read by hand: a client run for every refresh should not start by loading an argument
/// parsing library that walks its options by reflection (it was a fifth of the process's CPU time).
struct ConformanceCommand {
    var metadataDir: String?
    var metadataUrl: String?
    var targetName: [String] = []
    var targetBaseUrl: String?
    var targetDir: String?
    var timing = false
    var command: [String] = []

    static let usage = """
        usage: bulwark-tuf-client --metadata-dir DIR [--metadata-url URL] [--target-name PATH ...]
                                  [--target-base-url URL] [--target-dir DIR] (init TRUSTED_ROOT | refresh | download)

        TUF client for the tuf-conformance suite (CLIENT-CLI.md).
          --metadata-dir DIR      directory of trusted metadata
          --metadata-url URL      base URL of repository metadata
          --target-name PATH      target path to download (repeatable, processed in order)
          --target-base-url URL   base URL of repository targets
          --target-dir DIR        directory for downloaded artifacts
        """

    enum Parsed {
        case run(ConformanceCommand)
        case help
    }

    static func parse(_ arguments: [String]) throws(UpdaterError) -> Parsed {
        var cmd = ConformanceCommand()
        var i = 0
        while i < arguments.count {
            let argument = arguments[i]
            i += 1
            if argument == "--help" || argument == "-h" { return .help }
            if argument == "--timing" {
                cmd.timing = true
                continue
            }
            guard argument.hasPrefix("--") else {
                cmd.command.append(argument)
                continue
            }
            var name = argument
            var value: String?
            if let equals = argument.firstIndex(of: "=") {
                name = String(argument[..<equals])
                value = String(argument[argument.index(after: equals)...])
            }
            guard
                ["--metadata-dir", "--metadata-url", "--target-name", "--target-base-url", "--target-dir"]
                    .contains(name)
            else { throw UpdaterError.usage("unknown option \(name)") }
            if value == nil {
                guard i < arguments.count else { throw UpdaterError.usage("\(name) needs a value") }
                value = arguments[i]
                i += 1
            }
            let v = value ?? ""
            switch name {
            case "--metadata-dir": cmd.metadataDir = v
            case "--metadata-url": cmd.metadataUrl = v
            case "--target-name": cmd.targetName.append(v)
            case "--target-base-url": cmd.targetBaseUrl = v
            default: cmd.targetDir = v
            }
        }
        guard cmd.metadataDir != nil else { throw UpdaterError.usage("--metadata-dir is required") }
        guard !cmd.command.isEmpty else { throw UpdaterError.usage("missing command") }
        return .run(cmd)
    }
}

@main
enum ConformanceClient {
    /// Synchronous on purpose: the command runs as one task whose every job (the updater is an actor) runs here, on
    /// the main thread, through `MainThreadExecutor`. An `async` main would hand it to the global executor, whose
    /// pool started five threads for one refresh.
    static func main() {
        let cmd: ConformanceCommand
        do {
            switch try ConformanceCommand.parse(Array(CommandLine.arguments.dropFirst())) {
            case .help:
                print(ConformanceCommand.usage)
                exit(0)
            case .run(let parsed): cmd = parsed
            }
        } catch {
            log("error: \(error)\n\(ConformanceCommand.usage)")
            exit(1)
        }
        let start = monotonicSeconds()
        let startCPU = cpuSeconds()
        let executor = MainThreadExecutor()
        Task(executorPreference: executor) {
            do {
                let updater = try await run(cmd)
                if cmd.timing {
                    // Benchmark only (tuf-bench): time inside the process for the whole command, on the clock and in
                    // CPU (every thread's user and system time: what the client itself spent, not what it waited for).
                    print(
                        "{\"seconds\": \(monotonicSeconds() - start), \"cpu_seconds\": \(cpuSeconds() - startCPU)}")
                }
                // The process ends here: its memory goes back whole, not object by object (freeing a verified targets
                // file's entries one at a time was a tenth of a refresh).
                withExtendedLifetime(updater) { exit(0) }
            } catch {
                log("error: \(error)")
                exit(1)
            }
        }
        executor.runJobs()
    }

    /// Whether two paths name one directory (the same device and inode; false when either cannot be read).
    static func sameDirectory(_ a: String, _ b: String) -> Bool {
        var first = stat()
        var second = stat()
        guard stat(a, &first) == 0, stat(b, &second) == 0 else { return false }
        return first.st_dev == second.st_dev && first.st_ino == second.st_ino
    }

    static func log(_ message: String) {
        var line = message + "\n"
        line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
    }

    /// Runs one command; returns the updater it used, if any, for the caller to keep until the process exits.
    static func run(_ cmd: ConformanceCommand) async throws -> Updater? {
        guard let verb = cmd.command.first else { throw UpdaterError.usage("missing command") }
        guard let metadataDir = cmd.metadataDir, !metadataDir.isEmpty else {
            throw UpdaterError.usage("--metadata-dir is required")
        }
        // An update's files are made durable together, by one record in the directory's journal (one write and one
        // `fdatasync`, see `Journal`), not one by one.
        let store = DirectoryStore(directory: metadataDir, writesAtFlush: true)
        switch verb {
        case "init":
            guard cmd.command.count == 2 else { throw UpdaterError.usage("usage: init <TRUSTED_ROOT>") }
            // CLIENT-CLI.md: copy the given root; no checks are required, but refusing a root that
            // does not parse gives an early, clear error.
            guard let bytes = try AtomicFile.read(path: cmd.command[1]) else {
                throw UpdaterError.storage("cannot read trusted root")
            }
            try store.initialize(root: bytes)
            log("initialized \(store.directory)")
            return nil
        case "refresh":
            let updater = try makeUpdater(cmd, store: store)
            try await updater.refresh()
            log("refreshed \(store.directory)")
            return updater
        case "download":
            guard !cmd.targetName.isEmpty else { throw UpdaterError.usage("--target-name is required") }
            guard let targetDir = cmd.targetDir else { throw UpdaterError.usage("--target-dir is required") }
            // A target named `root.json` must never replace the trusted root.
            guard !sameDirectory(targetDir, metadataDir) else {
                throw UpdaterError.usage("--target-dir must not be the metadata directory")
            }
            guard cmd.targetBaseUrl != nil else { throw UpdaterError.usage("--target-base-url is required") }
            // Artifacts are a cache the updater checks against the trusted metadata before any use: renamed into
            // place whole, not fsynced (as python-tuf, curl or wget leave a download). The metadata is.
            let artifacts = UnsyncedArtifactDirectory(directory: targetDir)
            let updater = try makeUpdater(cmd, store: store, artifacts: artifacts)
            for name in cmd.targetName {
                guard let (_, downloaded) = try await updater.fetchTarget(name) else {
                    throw UpdaterError.targetNotFound(name)
                }
                log(downloaded ? "\(name): downloaded" : "\(name): cached copy is current")
            }
            return updater
        default:
            throw UpdaterError.usage("unknown command \(verb)")
        }
    }

    static func makeUpdater(
        _ cmd: ConformanceCommand,
        store: DirectoryStore,
        artifacts: UnsyncedArtifactDirectory? = nil
    ) throws
        -> Updater
    {
        guard let url = cmd.metadataUrl else { throw UpdaterError.usage("--metadata-url is required") }
        return try Updater(
            metadataBaseURL: url,
            metadataStore: store,
            fetcher: SocketFetcher(),
            targetBaseURL: cmd.targetBaseUrl,
            artifactStore: artifacts,
            referenceTime: currentTime()
        )
    }

    static func cpuSeconds() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
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

/// A task executor that runs jobs one at a time on the thread that calls `runJobs()`, in the order they were
/// enqueued (SE-0417: a task that prefers it runs its nonisolated code and its default actors' code here). The client
/// works sequentially with blocking sockets and files, so it needs no pool of threads; each job is enqueued from this
/// thread in practice, but a job from another thread is taken too (the queue is locked and the loop waits for work).
final class MainThreadExecutor: TaskExecutor, @unchecked Sendable {
    private var jobs: [UnownedJob] = []
    private var next = 0
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let ready = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    init() {
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(ready, nil)
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let unowned = UnownedJob(job)
        pthread_mutex_lock(mutex)
        jobs.append(unowned)
        pthread_cond_signal(ready)
        pthread_mutex_unlock(mutex)
    }

    /// Runs jobs for as long as the process lives: the command's task ends it with `exit`.
    func runJobs() -> Never {
        while true {
            pthread_mutex_lock(mutex)
            while next == jobs.count { pthread_cond_wait(ready, mutex) }
            let job = jobs[next]
            next += 1
            if next == jobs.count {
                jobs.removeAll(keepingCapacity: true)
                next = 0
            }
            pthread_mutex_unlock(mutex)
            job.runSynchronously(on: asUnownedTaskExecutor())
        }
    }
}
