import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// What a benchmark undoes at its end, run once whoever comes first: its own `defer` (`run`) or SIGTERM or SIGINT (a
/// profiling script's `kill`, Ctrl-C). A signal ended the process without running the `defer`s, which left the
/// brokers it started running and its temp directory (the hub's data, hundreds of MB) behind.
///
/// On a signal, a thread of its own runs the steps not yet run, last registered first, waits for any the normal path
/// is running, and ends the process with 128 + the signal (`_exit`, after flushing stdout: the main thread may be
/// exiting too). The main path, should it reach a step after the signal, waits there for that end. A second signal
/// meanwhile has its default action (it ends the process at once). The handler only writes the signal's number to
/// a pipe that thread reads (the self-pipe trick: little else is safe in a handler). A handler, not `SIG_IGN`, so
/// that the brokers started meanwhile get the default action back at `exec` and still stop on SIGTERM.
enum Interruption {
    private struct State {
        var steps: [(id: Int, run: @Sendable () -> Void)] = []
        var signalled = false
        /// Steps the normal path is running.
        var running = 0
        var nextID = 0
    }

    private static let state = Mutex(State())
    private static let installed = Atomic(false)
    /// The pipe's writing end, for the handler (which can capture nothing).
    fileprivate static let pipe = Atomic<Int32>(-1)

    /// Registers `step`, to be run once by `run` or on a signal; run at once if a signal already came.
    static func register(_ step: @escaping @Sendable () -> Void) -> Int {
        installOnce()
        let (id, now) = state.withLock { state -> (Int, Bool) in
            state.nextID += 1
            if state.signalled { return (state.nextID, true) }
            state.steps.append((state.nextID, step))
            return (state.nextID, false)
        }
        if now { step() }
        return id
    }

    /// Runs the step `id` unless it ran already; after a signal, waits for the process to end instead.
    static func run(_ id: Int) {
        let taken = state.withLock { state -> (step: (@Sendable () -> Void)?, signalled: Bool) in
            if state.signalled { return (nil, true) }
            guard let index = state.steps.firstIndex(where: { $0.id == id }) else { return (nil, false) }
            state.running += 1
            return (state.steps.remove(at: index).run, false)
        }
        if taken.signalled {
            while true { sleep(1) }  // the signal's thread ends the process
        }
        guard let step = taken.step else { return }
        step()
        state.withLock { $0.running -= 1 }
    }

    private static func installOnce() {
        #if canImport(Glibc)
            guard installed.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged else {
                return
            }
            var descriptors: [Int32] = [-1, -1]
            guard Glibc.pipe(&descriptors) == 0 else { return }
            for descriptor in descriptors { _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC) }
            pipe.store(descriptors[1], ordering: .relaxed)
            let reading = descriptors[0]
            Thread {
                var number: UInt8 = 0
                while true {
                    let count = read(reading, &number, 1)
                    if count == 1 { break }
                    if count == 0 || errno != EINTR { return }
                }
                for signal in [SIGTERM, SIGINT] { _ = Glibc.signal(signal, SIG_DFL) }
                let steps = state.withLock { state in
                    state.signalled = true
                    defer { state.steps = [] }
                    return state.steps
                }
                for step in steps.reversed() { step.run() }
                while state.withLock({ $0.running }) > 0 { usleep(20_000) }
                fflush(nil)  // every output stream: what was printed so far is kept
                _exit(128 + Int32(number))
            }.start()
            for signal in [SIGTERM, SIGINT] {
                var action = sigaction()
                action.__sigaction_handler.sa_handler = { number in
                    let saved = errno
                    var byte = UInt8(truncatingIfNeeded: number)
                    _ = write(Interruption.pipe.load(ordering: .relaxed), &byte, 1)
                    errno = saved
                }
                action.sa_flags = SA_RESTART
                sigemptyset(&action.sa_mask)
                sigaction(signal, &action, nil)
            }
        #endif
    }
}

/// A process that is not `Sendable` (Foundation's), stopped from a step.
final class StoppableProcess: @unchecked Sendable {
    let process: Process
    init(_ process: Process) { self.process = process }
    func stop() { process.stop(within: 20) }
}
