import CSpawn
import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// A program the agent starts: the payload, its health probe, an operator's command handler, an archive tool.
///
/// Started with `posix_spawn` (`bulwark_spawn`), not Foundation's `Process`: the child inherits its standard input,
/// output and error and no other descriptor of the agent's process, closed in the child whatever another thread
/// opens meanwhile; its signal mask is empty and its signals' dispositions the defaults. Foundation's `Process`
/// closes only the descriptors open when it looked, so a payload kept a socket another thread had just opened (in a
/// test process hosting 100 agents, one of the test's TCP connections). The previous cure, marking every descriptor
/// close-on-exec before each start, reached into descriptors the agent does not own: in a process that also runs
/// programs through `Process` (a host application, the test suite), it could close the socket by which Foundation's
/// one watcher thread learns that such a program ended, in the program started at that moment; that thread then
/// waited for the wrong child, and no `Process` in the whole process was seen to exit until it did.
///
/// Each child has a thread of its own that waits for it (`waitpid` on its pid only; no other child is reaped).
final class ChildProcess: Sendable {
    let pid: pid_t
    private let state = Mutex<State>(State())

    private struct State {
        var status: Int32?
        var handler: (@Sendable (Int32) -> Void)?
        var waiters: [CheckedContinuation<Int32, Never>] = []
    }

    /// What a child's descriptor 0, 1 or 2 is.
    enum Stream {
        case null
        case inherit
        case descriptor(Int32)

        var raw: Int32 {
            switch self {
            case .null: BULWARK_SPAWN_NULL
            case .inherit: BULWARK_SPAWN_INHERIT
            case .descriptor(let fd): fd
            }
        }
    }

    private init(pid: pid_t, onExit: (@Sendable (Int32) -> Void)?) {
        self.pid = pid
        state.withLock { $0.handler = onExit }
    }

    /// Starts `executable` (a path; not looked up in PATH) with `arguments`. `environment` nil: the agent's own.
    /// `onExit` is called once, on the waiting thread, with `terminationStatus` (see below), unless cleared first.
    static func start(
        _ executable: String, _ arguments: [String], environment: [String: String]? = nil, directory: String? = nil,
        stdin: Stream = .null, stdout: Stream = .null, stderr: Stream = .null, newGroup: Bool = true,
        onExit: (@Sendable (Int32) -> Void)? = nil
    ) throws -> ChildProcess {
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        let variables =
            (environment ?? ProcessInfo.processInfo.environment).map { strdup("\($0.key)=\($0.value)") }
            + [nil]
        defer { for pointer in variables { free(pointer) } }
        var pid: pid_t = 0
        let result = bulwark_spawn(
            &pid, executable, argv, variables, directory, stdin.raw, stdout.raw, stderr.raw, newGroup ? 1 : 0)
        guard result == 0 else { throw ChildProcessError(executable, code: result) }
        let child = ChildProcess(pid: pid, onExit: onExit)
        let thread = Thread { [pid] in
            var status: Int32 = 0
            var reaped: pid_t = -1
            repeat { reaped = waitpid(pid, &status, 0) } while reaped == -1 && errno == EINTR
            // Not reaped here (a host application that set SIGCHLD to SIG_IGN: the kernel reaped it): never a success.
            child.finish(reaped == pid ? Self.terminationStatus(status) : 127)
        }
        thread.name = "bulwark-child-\(pid)"
        thread.stackSize = 64 << 10
        thread.start()
        return child
    }

    /// As Foundation's `terminationStatus`: the exit code of a program that exited, the signal's number for one a
    /// signal ended.
    static func terminationStatus(_ status: Int32) -> Int32 {
        let signal = status & 0x7f
        return signal == 0 ? (status >> 8) & 0xff : signal
    }

    private func finish(_ status: Int32) {
        let (handler, waiters) = state.withLock { state in
            state.status = status
            defer {
                state.handler = nil
                state.waiters = []
            }
            return (state.handler, state.waiters)
        }
        handler?(status)
        for waiter in waiters { waiter.resume(returning: status) }
    }

    /// Nil while it runs (until its waiting thread has reaped it).
    var status: Int32? { state.withLock { $0.status } }

    var isRunning: Bool { status == nil }

    /// `onExit` will not be called.
    func clearHandler() { state.withLock { $0.handler = nil } }

    /// Its termination status, once it exited (without holding a thread).
    func exitStatus() async -> Int32 {
        await withCheckedContinuation { continuation in
            let ready = state.withLock { state -> Int32? in
                if let status = state.status { return status }
                state.waiters.append(continuation)
                return nil
            }
            if let ready { continuation.resume(returning: ready) }
        }
    }

    /// Its termination status, blocking the calling thread (never one of Swift's concurrency pool) until it exited.
    func waitBlocking() -> Int32 {
        while true {
            if let status { return status }
            usleep(2_000)
        }
    }
}

struct ChildProcessError: Error, CustomStringConvertible {
    let description: String
    init(_ executable: String, code: Int32) {
        description = "cannot run \(executable): \(String(cString: strerror(code)))"
    }
}
