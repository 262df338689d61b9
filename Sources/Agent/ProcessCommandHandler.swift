import CSpawn
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Runs an operator's command as a program: `executable [arguments…] <command name>`, the command's body on its
/// standard input, `BULWARK_COMMAND` set to the name. Its exit status is the outcome; one that runs longer than
/// `timeoutSeconds` is terminated (SIGTERM, then SIGKILL two seconds later) and reported as timed out. The first
/// 4 KiB of its standard output go with the outcome.
public struct ProcessCommandHandler: Sendable {
    public let executable: String
    public let arguments: [String]
    public let timeoutSeconds: Double
    /// Whether the command's name is appended to the arguments (a health probe runs without it).
    public var appendsName = true

    public init(executable: String, arguments: [String] = [], timeoutSeconds: Double) {
        self.executable = executable
        self.arguments = arguments
        self.timeoutSeconds = timeoutSeconds
    }

    public var handler: CommandHandler {
        let this = self
        return { command in await this.run(command) }
    }

    public func run(_ command: AgentCommand) async -> CommandOutcome {
        // The wait happens on a dispatch thread, never on Swift's cooperative pool.
        await withCheckedContinuation { continuation in
            DispatchQueue.global().async { continuation.resume(returning: self.runBlocking(command)) }
        }
    }

    private func runBlocking(_ command: AgentCommand) -> CommandOutcome {
        // Both close-on-exec in the agent: only this child gets its ends (as its 0 and 1). The input is a socket pair,
        // written with MSG_NOSIGNAL: a program that exits without reading its body cannot raise SIGPIPE in the agent
        // (a host application embedding it may not ignore SIGPIPE).
        var input: [Int32] = [-1, -1]
        var output: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &input) == 0 else {
            return CommandOutcome(exitCode: 127, output: "no socket pair")
        }
        guard bulwark_pipe_cloexec(&output) == 0 else {
            close(input[0])
            close(input[1])
            return CommandOutcome(exitCode: 127, output: "no pipe")
        }
        let process: ChildProcess
        do {
            process = try ChildProcess.start(
                executable, arguments + (appendsName ? [command.name] : []),
                environment: ProcessInfo.processInfo.environment.merging(["BULWARK_COMMAND": command.name]) { $1 },
                stdin: .descriptor(input[0]), stdout: .descriptor(output[1]), stderr: .null)
        } catch {
            for fd in input + output { close(fd) }
            return CommandOutcome(exitCode: 127, output: "cannot run \(executable)")
        }
        close(input[0])
        close(output[1])
        // The body goes in from another thread: a program that does not read it must not stop this one.
        let writer = input[1]
        let body = command.body
        DispatchQueue.global().async {
            var offset = 0
            while offset < body.count {
                let n = body[offset...].withUnsafeBytes {
                    send(writer, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL))
                }
                if n > 0 {
                    offset += n
                } else if n < 0, errno == EINTR {
                    continue
                } else {
                    break
                }
            }
            close(writer)
        }
        // Read as it comes, and stop at the program's exit (a child it left behind may hold the pipe open); SIGTERM
        // at the time limit, SIGKILL two seconds later.
        let reader = output[0]
        _ = fcntl(reader, F_SETFL, fcntl(reader, F_GETFL) | O_NONBLOCK)
        var collected: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        /// At most 64 KiB a call: a program that writes without end must not keep this loop from its time limit.
        func drain() -> Bool {
            for _ in 0..<16 {
                let n = chunk.withUnsafeMutableBytes { read(reader, $0.baseAddress, $0.count) }
                if n > 0 {
                    if collected.count < 4096 { collected += chunk[0..<min(n, 4096 - collected.count)] }
                    continue
                }
                return n == 0  // end of file
            }
            return false
        }
        let started = ContinuousClock.now
        var timedOut = false
        var killed = false
        var ended = false
        while process.isRunning {
            var descriptor = pollfd(fd: reader, events: Int16(POLLIN), revents: 0)
            if !ended, poll(&descriptor, 1, 50) > 0 {
                ended = drain()
            } else if ended {
                usleep(20_000)
            }
            let elapsed = ContinuousClock.now - started
            if !timedOut, elapsed >= .milliseconds(Int64(timeoutSeconds * 1000)) {
                timedOut = true
                kill(process.pid, SIGTERM)
            }
            if !killed, elapsed >= .milliseconds(Int64(timeoutSeconds * 1000) + 2000) {
                killed = true
                kill(process.pid, SIGKILL)
            }
        }
        // What it wrote just before it exited, without waiting for an end of file another process could hold off.
        _ = drain()
        close(reader)
        return CommandOutcome(
            exitCode: process.waitBlocking(), timedOut: timedOut,
            output: String(decoding: collected, as: UTF8.self))
    }
}
