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
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments + (appendsName ? [command.name] : [])
        process.environment = ProcessInfo.processInfo.environment.merging(["BULWARK_COMMAND": command.name]) { $1 }
        let input = Pipe()
        let output = Pipe()
        process.standardInput = input
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        Descriptors.closeOnExec()
        do { try process.run() } catch {
            return CommandOutcome(exitCode: 127, output: "cannot run \(executable)")
        }
        input.fileHandleForWriting.write(Data(command.body))
        try? input.fileHandleForWriting.close()
        let timedOut = TimedOutFlag()
        let pid = process.processIdentifier
        let term = DispatchWorkItem {
            guard process.isRunning else { return }
            timedOut.set()
            kill(pid, SIGTERM)
        }
        let killer = DispatchWorkItem { if process.isRunning { kill(pid, SIGKILL) } }
        DispatchQueue.global().asyncAfter(deadline: .now() + timeoutSeconds, execute: term)
        DispatchQueue.global().asyncAfter(deadline: .now() + timeoutSeconds + 2, execute: killer)
        // Read as it comes and stop at the program's exit (a child it left behind may hold the pipe open).
        let collected = OutputBuffer()
        output.fileHandleForReading.readabilityHandler = { collected.append($0.availableData) }
        process.waitUntilExit()
        output.fileHandleForReading.readabilityHandler = nil
        // What the program wrote just before it exited may not have reached the handler yet: take it now, without
        // waiting for an end of file that a child it left behind could hold off.
        let fd = output.fileHandleForReading.fileDescriptor
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            guard n > 0 else { break }
            collected.append(Data(chunk[0..<n]))
        }
        term.cancel()
        killer.cancel()
        return CommandOutcome(
            exitCode: process.terminationStatus, timedOut: timedOut.value,
            output: String(decoding: collected.data.prefix(4096), as: UTF8.self))
    }
}

/// The first bytes a handler wrote (bounded).
private final class OutputBuffer: @unchecked Sendable {
    // Guarded by `lock`: written by the pipe's readability handler, read after the process exited.
    private let lock = NSLock()
    private var bytes = Data()
    func append(_ data: Data) {
        lock.withLock { if bytes.count < 4096 { bytes.append(data.prefix(4096 - bytes.count)) } }
    }
    var data: Data { lock.withLock { bytes } }
}

/// Set by the timer that terminated the process, read after it exited.
private final class TimedOutFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var flag = false
    func set() { lock.withLock { flag = true } }
    var value: Bool { lock.withLock { flag } }
}
