import Foundation
import TUF
import TUFRepository

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

// tuf-bench: bulwark-tuf-client vs python-tuf ngclient over loopback HTTP, one run.
//
// usage: tuf-bench [--reps N] [--work DIR] [--client PATH] [--script PATH] [--python PATH] [--server python|native]
//
// Builds three repositories with RepositoryEditor (ECDSA P-256 keys, consistent snapshots):
//   flat     1,000 targets in top-level targets
//   bins     100,000 targets in 256 classic hashed bins (path_hash_prefixes)
//   succinct 100,000 targets in 256 TAP 15 succinct bins (bit_length 8)
// serves them with `python3 -m http.server --bind 127.0.0.1` (or, with `--server native`, the benchmark's own
// static server, which answers in tens of microseconds where Python takes about 0.5 ms), and runs for each client:
//   cold     trusted root only: refresh + download one target
//   warm-refresh   refresh with nothing new
//   warm-cached    refresh + target lookup, artifact already cached
// Figures: whole-process wall time (spawn to wait4, median), in-process time reported by the
// child (median) on the clock and in CPU (the child's own user + system time around the same work, so
// without the waits for the server that both clients pay), peak RSS (ru_maxrss from wait4 in GNU /usr/bin/time, max over repetitions).

struct Options {
    var reps = 5
    var work = NSTemporaryDirectory() + "/tuf-bench-\(getpid())"
    var client: String
    var script = FileManager.default.currentDirectoryPath + "/scripts/tuf/ngclient_fetch.py"
    var python = "/usr/bin/env"
    var pythonArgs = ["python3"]
    var keep = false
    var server = "python"

    init() {
        let me = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        client = me.deletingLastPathComponent().path + "/bulwark-tuf-client"
        var args = Array(CommandLine.arguments.dropFirst())
        if args.contains("--help") || args.contains("-h") {
            print(Self.usage)
            exit(0)
        }
        if let i = args.firstIndex(of: "--keep") {
            keep = true
            args.remove(at: i)
        }
        while let k = args.first {
            guard args.count >= 2 else { fail("\(k) needs a value\n\(Self.usage)") }
            let v = args[1]
            args.removeFirst(2)
            switch k {
            case "--reps":
                guard let n = Int(v), (1...1000).contains(n) else { fail("--reps must be 1-1000") }
                reps = n
            case "--work": work = v
            case "--client": client = v
            case "--script": script = v
            case "--server":
                guard v == "python" || v == "native" else { fail("--server must be python or native") }
                server = v
            case "--python":
                python = v
                pythonArgs = []
            default: fail("unknown option \(k)\n\(Self.usage)")
            }
        }
    }

    static let usage = """
        usage: tuf-bench [--reps N] [--work DIR] [--client PATH] [--script PATH] [--python PATH] [--server S] [--keep]

        bulwark-tuf-client against python-tuf's ngclient over loopback HTTP: three repositories (1,000 flat
        targets; 100,000 in 256 hashed bins; 100,000 in 256 succinct bins), cold and warm, whole-process time and
        peak RSS of each client, side by side.
          --reps N       repetitions per measurement (default 5)
          --work DIR     where the repositories go (default a temporary directory)
          --client PATH  the Bulwark client (default bulwark-tuf-client next to this binary)
          --script PATH  the python-tuf driver (default scripts/tuf/ngclient_fetch.py)
          --python PATH  the Python interpreter (default python3 on PATH)
          --server S     python: `python3 -m http.server` (default; about 0.5 ms an answer); native: the
                         benchmark's own static server on 127.0.0.1 (files in memory, microseconds; keep-alive
                         for a client that does not ask to close)
          --keep         leave the work directory (repositories under www/, client directories) for profiling
        """
}

/// The http.server child, killed by pid on every exit path.
nonisolated(unsafe) var serverPid: pid_t = 0

func fail(_ message: String) -> Never {
    if serverPid > 0 { kill(serverPid, SIGKILL) }
    FileHandle.standardError.write(Data(("error: " + message + "\n").utf8))
    exit(1)
}

func monotonic() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

struct Run {
    let wall: Double
    let inProcess: Double
    let inProcessCPU: Double
    let maxRSSKiB: Int
}

/// posix_spawn + wait4: wall time and the child's peak RSS. stdout goes to a file, read back
/// for the child's own timing line (`"seconds": X`).
func spawnMeasured(_ argv: [String], stdoutFile: String) -> Run? {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 1, stdoutFile, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    posix_spawn_file_actions_addopen(&actions, 2, stdoutFile + ".err", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    // Peak RSS comes from GNU time (`%M` = wait4 ru_maxrss of its child, KiB). Measuring with
    // our own wait4 would not work: a child spawned with vfork/posix_spawn inherits this
    // process's RSS high-water mark at exec (Linux keeps it in signal->maxrss), and this
    // process holds the generated repositories. GNU time forks from a ~2 MiB process.
    let rssFile = stdoutFile + ".rss"
    let wrapped = ["/usr/bin/time", "-f", "%M", "-o", rssFile] + argv
    var cargs = wrapped.map { strdup($0) }
    cargs.append(nil)
    defer { for p in cargs { free(p) } }
    var pid: pid_t = 0
    let start = monotonic()
    guard posix_spawn(&pid, wrapped[0], &actions, nil, cargs, environ) == 0 else { return nil }
    var status: Int32 = 0
    var usage = rusage()
    guard wait4(pid, &status, 0, &usage) == pid else { return nil }
    let wall = monotonic() - start
    guard status == 0 else {
        let err = (try? String(contentsOfFile: stdoutFile + ".err", encoding: .utf8)) ?? ""
        FileHandle.standardError.write(Data("child failed: \(argv.joined(separator: " "))\n\(err)\n".utf8))
        return nil
    }
    let out = (try? String(contentsOfFile: stdoutFile, encoding: .utf8)) ?? ""
    func number(_ key: String) -> Double {
        guard let r = out.range(of: "\"\(key)\": ") else { return .nan }
        return Double(out[r.upperBound...].prefix { "0123456789.e-".contains($0) }) ?? .nan
    }
    let rss = (try? String(contentsOfFile: rssFile, encoding: .utf8))?.split(separator: "\n").last.flatMap {
        Int($0.trimmingCharacters(in: .whitespaces))
    }
    return Run(wall: wall, inProcess: number("seconds"), inProcessCPU: number("cpu_seconds"), maxRSSKiB: rss ?? -1)
}

// MARK: - Repositories

func makeRepository(_ dir: String, kind: String, keys: [FileSigner]) async throws -> String {
    let spec = RoleKeySpec(keys: [keys[0].publicKey])
    let repository = FileRepository(directory: dir)
    var editor = try repository.create(
        root: RoleKeySpec(keys: [keys[0].publicKey]),
        timestamp: RoleKeySpec(keys: [keys[1].publicKey]),
        snapshot: RoleKeySpec(keys: [keys[2].publicKey]),
        targets: RoleKeySpec(keys: [keys[3].publicKey])
    )
    let count: Int
    switch kind {
    case "flat": count = 1000
    case "bins":
        count = 100_000
        try editor.delegateHashedBins(namePrefix: "bins", binCount: 256, keys: spec)
    default:
        count = 100_000
        try editor.delegateSuccinctBins(namePrefix: "bin", bitLength: 8, keys: spec)
    }
    let downloaded = "files/target-\(count / 2).bin"
    for i in 0..<count {
        let path = "files/target-\(i).bin"
        if path == downloaded { continue }
        let content = Array("synthetic content of target \(i)".utf8)
        try editor.addTarget(
            path: path,
            length: Int64(content.count),
            hashes: [("sha256", hexEncode(Hashing.digest("sha256", content) ?? []))]
        )
    }
    try editor.addTarget(path: downloaded, contents: (0..<16384).map { UInt8(truncatingIfNeeded: $0 &* 31) })
    try await repository.publish(&editor, keyring: Keyring(keys))
    return downloaded
}

// MARK: - HTTP server

func startServer(directory: String) -> (pid: pid_t, url: String) {
    let log = directory + "/../server.log"
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    posix_spawn_file_actions_addopen(&actions, 1, log, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
    let argv = [
        "/usr/bin/env", "python3", "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", directory,
    ]
    var cargs = argv.map { strdup($0) }
    cargs.append(nil)
    var pid: pid_t = 0
    guard posix_spawn(&pid, argv[0], &actions, nil, cargs, environ) == 0 else { fail("cannot start http.server") }
    for _ in 0..<100 {
        usleep(50_000)
        if let text = try? String(contentsOfFile: log, encoding: .utf8), let r = text.range(of: "port "),
            let port = Int(text[r.upperBound...].prefix { $0.isNumber })
        {
            return (pid, "http://127.0.0.1:\(port)")
        }
    }
    kill(pid, SIGKILL)
    fail("http.server did not start")
}

// MARK: - Main

func median(_ xs: [Double]) -> Double {
    let s = xs.sorted()
    return s.isEmpty ? .nan : s[s.count / 2]
}

func ms(_ s: Double) -> String { String(format: "%.1f", s * 1000) }

let options = Options()
guard FileManager.default.isExecutableFile(atPath: options.client) else { fail("no client at \(options.client)") }
try? FileManager.default.removeItem(atPath: options.work)
try FileManager.default.createDirectory(atPath: options.work + "/www", withIntermediateDirectories: true)
let keys = try (0..<4).map { try FileSigner.generate(name: "k\($0)", type: .ecdsaP256) }
var downloads: [String: String] = [:]
for kind in ["flat", "bins", "succinct"] {
    let t = monotonic()
    downloads[kind] = try await makeRepository(options.work + "/www/" + kind, kind: kind, keys: keys)
    FileHandle.standardError.write(Data("generated \(kind) in \(ms(monotonic() - t)) ms\n".utf8))
}
let server: (pid: pid_t, url: String)
var native: StaticServer? = nil
if options.server == "native" {
    let s = try StaticServer(directory: options.work + "/www")
    native = s
    server = (0, "http://127.0.0.1:\(s.port)")
} else {
    server = startServer(directory: options.work + "/www")
    serverPid = server.pid
}
let tufVersion = {
    let out = options.work + "/pyver"
    _ = spawnMeasured(
        [options.python] + options.pythonArgs + ["-c", "import tuf; print('\"seconds\": 0', tuf.__version__)"],
        stdoutFile: out
    )
    return ((try? String(contentsOfFile: out, encoding: .utf8)) ?? "?").split(separator: " ").last.map {
        $0.trimmingCharacters(in: .whitespacesAndNewlines)
    } ?? "?"
}()

print(
    "python-tuf \(tufVersion); \(options.reps) repetitions; medians; peak RSS = max ru_maxrss; "
        + (options.server == "native" ? "the benchmark's static server" : "python3 -m http.server")
)
print("")
print(
    "| repo | scenario | ours wall ms | py wall ms | wall speed-up | ours in-proc ms | py in-proc ms | in-proc ratio | "
        + "ours in-proc CPU ms | py in-proc CPU ms | CPU ratio | ours RSS MiB | py RSS MiB | RSS ratio |"
)
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")

for kind in ["flat", "bins", "succinct"] {
    let metaURL = "\(server.url)/\(kind)/metadata/"
    let targetsURL = "\(server.url)/\(kind)/targets/"
    let target = downloads[kind] ?? ""
    let root = options.work + "/www/\(kind)/metadata/1.root.json"
    let out = options.work + "/out.txt"
    var results: [String: [String: [Run]]] = [:]  // scenario -> client -> runs

    func ours(_ dir: String, _ verb: String) -> [String] {
        [
            options.client, "--timing", "--metadata-dir", dir + "/metadata", "--metadata-url", metaURL,
            "--target-base-url", targetsURL, "--target-dir", dir + "/targets", "--target-name", target, verb,
        ]
    }
    func python(_ dir: String, cold: Bool, refreshOnly: Bool) -> [String] {
        [options.python] + options.pythonArgs + [options.script, metaURL, targetsURL, dir, target]
            + (cold ? ["--init", root] : []) + (refreshOnly ? ["--refresh-only"] : [])
    }

    for rep in 0..<options.reps {
        // Ours: a fresh client directory as `init` leaves it (the trusted root and the store's journal; not timed,
        // as python-tuf's directory is made before its timing starts).
        let o = options.work + "/clients/\(kind)-ours-\(rep)"
        try FileManager.default.createDirectory(atPath: o + "/metadata", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: o + "/targets", withIntermediateDirectories: true)
        guard spawnMeasured([options.client, "--metadata-dir", o + "/metadata", "init", root], stdoutFile: out) != nil
        else { fail("bulwark-tuf-client init failed") }
        let p = options.work + "/clients/\(kind)-py-\(rep)"
        let runs: [(String, String, [String])] = [
            ("cold", "ours", ours(o, "download")), ("cold", "py", python(p, cold: true, refreshOnly: false)),
            ("warm-refresh", "ours", ours(o, "refresh")),
            ("warm-refresh", "py", python(p, cold: false, refreshOnly: true)),
            ("warm-cached", "ours", ours(o, "download")),
            ("warm-cached", "py", python(p, cold: false, refreshOnly: false)),
        ]
        for (scenario, client, argv) in runs {
            guard let r = spawnMeasured(argv, stdoutFile: out) else { fail("\(client) \(scenario) on \(kind) failed") }
            results[scenario, default: [:]][client, default: []].append(r)
        }
    }
    for scenario in ["cold", "warm-refresh", "warm-cached"] {
        let a = results[scenario]?["ours"] ?? []
        let b = results[scenario]?["py"] ?? []
        let aw = median(a.map(\.wall))
        let bw = median(b.map(\.wall))
        let ai = median(a.map(\.inProcess))
        let bi = median(b.map(\.inProcess))
        let ac = median(a.map(\.inProcessCPU))
        let bc = median(b.map(\.inProcessCPU))
        let ar = Double(a.map(\.maxRSSKiB).max() ?? 0) / 1024
        let br = Double(b.map(\.maxRSSKiB).max() ?? 0) / 1024
        print(
            "| \(kind) | \(scenario) | \(ms(aw)) | \(ms(bw)) | \(String(format: "%.1f×", bw / aw)) | \(ms(ai)) | \(ms(bi)) | "
                + "\(String(format: "%.2f", ai / bi)) | \(ms(ac)) | \(ms(bc)) | \(String(format: "%.2f", ac / bc)) | "
                + "\(String(format: "%.1f", ar)) | \(String(format: "%.1f", br)) | "
                + "\(String(format: "%.2f", ar / br)) |"
        )
    }
}
native?.stop()
if server.pid > 0 {
    kill(server.pid, SIGKILL)
    var status: Int32 = 0
    waitpid(server.pid, &status, 0)
}
if options.keep {
    FileHandle.standardError.write(Data("kept \(options.work)\n".utf8))
} else {
    try? FileManager.default.removeItem(atPath: options.work)
}
