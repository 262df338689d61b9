import CSpawn
import Foundation
import Testing

@testable import Agent

#if canImport(Glibc)
    import Glibc
#endif

/// The programs the agent starts (`ChildProcess`): what they inherit, and what starting them leaves alone.
struct ChildProcessTests {
    /// Runs `script` under /bin/sh and returns its exit status and standard output.
    static func shell(_ script: String, environment: [String: String]? = nil) async throws -> (Int32, String) {
        try await collect(try start(script, environment: environment))
    }

    /// Starts `script` under /bin/sh (synchronously, on the calling thread) with its output to a pipe.
    static func start(_ script: String, environment: [String: String]? = nil) throws -> (ChildProcess, Int32) {
        try start("/bin/sh", ["-c", script], environment: environment)
    }

    /// Starts a program (synchronously, on the calling thread) with its output to a pipe.
    static func start(_ program: String, _ arguments: [String], environment: [String: String]? = nil) throws -> (
        ChildProcess, Int32
    ) {
        var ends: [Int32] = [-1, -1]
        #expect(bulwark_pipe_cloexec(&ends) == 0)
        defer { close(ends[1]) }
        do {
            return (
                try ChildProcess.start(program, arguments, environment: environment, stdout: .descriptor(ends[1])),
                ends[0]
            )
        } catch {
            close(ends[0])
            throw error
        }
    }

    static func collect(_ started: (ChildProcess, Int32)) async throws -> (Int32, String) {
        let (child, reader) = started
        var output: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(reader, $0.baseAddress, $0.count) }
            guard n > 0 else { break }
            output += chunk[0..<n]
        }
        close(reader)
        return (await child.exitStatus(), String(decoding: output, as: UTF8.self))
    }

    /// A descriptor the agent's process holds without close-on-exec (a host application's socket, a test's pipe)
    /// is not the child's, and stays as it was in the parent: starting a program changes no descriptor it does not
    /// own (the former cure marked them all close-on-exec, and so closed Foundation's exit-watch socket in whatever
    /// `Process` started at that moment).
    @Test func aChildInheritsOnlyItsStandardDescriptorsAndTheParentsAreLeftAlone() async throws {
        let leaked = open("/dev/null", O_RDONLY)  // no O_CLOEXEC, on purpose
        let socket = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer {
            close(leaked)
            close(socket)
        }
        #expect(leaked > 2 && socket > 2)
        // Listed from outside (a shell listing its own would see the directory it reads).
        let child = try ChildProcess.start("/bin/sleep", ["30"], stdout: .inherit, stderr: .inherit)
        defer { kill(child.pid, SIGKILL) }
        var listing: [String] = []
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            // Once it runs sleep (before the exec it is still a copy of this process).
            if (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(child.pid)/exe"))?.hasSuffix(
                "sleep")
                == true
            {
                // Past sleep's own start-up (it opens the locale archive for a moment).
                try await Task.sleep(for: .milliseconds(300))
                listing = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(child.pid)/fd")) ?? []
                break
            }
            try await Task.sleep(for: .milliseconds(5))
        }
        let descriptors = Set(listing.compactMap { Int32($0) })
        #expect(descriptors.isSuperset(of: [0, 1, 2]), "\(listing)")
        #expect(!descriptors.contains(leaked) && !descriptors.contains(socket), "inherited: \(descriptors.sorted())")
        #expect(descriptors.allSatisfy { $0 <= 2 }, "inherited: \(descriptors.sorted())")
        for fd in [leaked, socket] { #expect(fcntl(fd, F_GETFD) & FD_CLOEXEC == 0, "the parent's \(fd) unchanged") }
    }

    /// No signal blocked or ignored in the child, whatever the agent's threads block (Swift's worker threads block
    /// most) or ignore (SIGPIPE): a payload's SIGTERM handler and its pipelines work as on a shell.
    @Test func aChildStartsWithDefaultSignals() async throws {
        let formerPipe = signal(SIGPIPE, SIG_IGN)
        defer { signal(SIGPIPE, formerPipe) }
        var blocked = sigset_t()
        sigemptyset(&blocked)
        sigaddset(&blocked, SIGTERM)
        var previous = sigset_t()
        pthread_sigmask(SIG_BLOCK, &blocked, &previous)
        // Started on this thread while it blocks SIGTERM and the process ignores SIGPIPE.
        // The program reads its own status (a shell's child reading the shell's would catch dash inside a vfork,
        // with every signal blocked for that moment).
        let started = Result { try Self.start("/usr/bin/grep", ["-E", "^Sig(Blk|Ign)", "/proc/self/status"]) }
        pthread_sigmask(SIG_SETMASK, &previous, nil)
        let (status, output) = try await Self.collect(try started.get())
        #expect(status == 0)
        let masks = output.split(separator: "\n").compactMap { UInt64($0.split(separator: "\t").last ?? "", radix: 16) }
        #expect(masks.count == 2, "\(output)")
        // Signals 1-31 (32 and 33 are the C library's own, which it keeps as it needs them).
        for mask in masks { #expect(mask & 0xffff_ffff == 0 || mask & 0x7fff_ffff == 0, "\(output)") }
    }

    @Test func exitStatusesGroupsAndDirectoriesAreAsFoundationReportsThem() async throws {
        #expect(try await Self.shell("exit 7").0 == 7)
        #expect(try await Self.shell("kill -TERM $$").0 == SIGTERM)
        let (_, directory) = try await Self.shell("pwd")
        #expect(!directory.isEmpty)
        let inTmp = try ChildProcess.start("/bin/sh", ["-c", "[ \"$(pwd)\" = /tmp ]"], directory: "/tmp")
        #expect(await inTmp.exitStatus() == 0)
        let (_, environment) = try await Self.shell("echo \"$ONLY\"", environment: ["ONLY": "this"])
        #expect(environment == "this\n")
        let sleeper = try ChildProcess.start("/bin/sleep", ["30"])
        #expect(getpgid(sleeper.pid) == sleeper.pid, "it leads a process group of its own")
        #expect(sleeper.isRunning)
        kill(sleeper.pid, SIGKILL)
        #expect(await sleeper.exitStatus() == SIGKILL)
        #expect(!sleeper.isRunning)
        #expect(throws: ChildProcessError.self) { try ChildProcess.start("/nonexistent/program", []) }
    }

    /// A command handler that writes without end is still stopped at its time limit (SIGTERM, then SIGKILL), its
    /// output cut at 4 KiB; one that exits without reading a large body is answered at once, its body's write
    /// refused quietly (a socket written with MSG_NOSIGNAL: no SIGPIPE for the agent).
    @Test func aHandlerThatFloodsOrIgnoresItsBodyIsStillAnswered() async throws {
        let flood = ProcessCommandHandler(executable: "/usr/bin/yes", timeoutSeconds: 1)
        var flood2 = flood
        flood2.appendsName = false
        let started = ContinuousClock.now
        let flooded = await flood2.run(AgentCommand(name: "flood", body: []))
        // Without the limit `yes` never ends; 1 s, SIGTERM, SIGKILL 2 s later. The bound is loose: with the whole
        // suite on two cores, the wait for a thread to run the handler on took 14 s (twice on 2026-12-06).
        #expect(
            flooded.timedOut && ContinuousClock.now - started < .seconds(30), "after \(ContinuousClock.now - started)")
        #expect(flooded.output.utf8.count == 4096 && flooded.output.hasPrefix("y\ny\n"))
        var ignoring = ProcessCommandHandler(executable: "/bin/true", timeoutSeconds: 30)
        ignoring.appendsName = false
        let answered = ContinuousClock.now
        let outcome = await ignoring.run(AgentCommand(name: "big", body: [UInt8](repeating: 0x61, count: 1 << 20)))
        #expect(outcome.exitCode == 0 && !outcome.timedOut)
        #expect(ContinuousClock.now - answered < .seconds(10))
    }

    /// Foundation's `Process`, started beside many children, still sees its own program end.
    @Test func foundationProcessesStartedMeanwhileStillSeeTheirExit() async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                for _ in 0..<100 { _ = try await Self.shell("true") }
            }
            group.addTask {
                for _ in 0..<20 {
                    let process = Process()
                    process.executableURL = URL(fileURLWithPath: "/bin/sleep")
                    process.arguments = ["0.01"]
                    try process.run()
                    let deadline = ContinuousClock.now + .seconds(20)
                    while process.isRunning, ContinuousClock.now < deadline {
                        try await Task.sleep(for: .milliseconds(5))
                    }
                    #expect(!process.isRunning, "Foundation saw its program end")
                }
            }
            try await group.waitForAll()
        }
    }
}
