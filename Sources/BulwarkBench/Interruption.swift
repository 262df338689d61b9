import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// What a benchmark undoes at its end, run once whoever comes first: its own `defer` (`run`) or SIGTERM or SIGINT (a
/// profiling script's `kill`, Ctrl-C). A signal ended the process without running the `defer`s, which left the
/// brokers it started running and its temp directory (the hub's data, hundreds of MB) behind.
///
/// On a signal, a thread of its own first waits for any step the normal path is running and for any child being
/// started (`start`: the child and the step that stops it are registered together), then runs the steps not yet run,
/// last registered first, and ends the process with 128 + the signal (`_exit`, after flushing output: the main
/// thread may be exiting too). The main path, should it reach `register`, `start` or `run` after that, waits there
/// for that end. A second signal meanwhile has its default action (it ends the process at once). The handler only writes the signal's number to
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

    /// Registers `step`, to be run once by `run` or on a signal. Register it before making what it undoes.
    static func register(_ step: @escaping @Sendable () -> Void) -> Int {
        installOnce()
        let id = state.withLock { state -> Int? in
            guard !state.signalled else { return nil }
            state.nextID += 1
            state.steps.append((state.nextID, step))
            return state.nextID
        }
        guard let id else { waitForTheEnd() }
        return id
    }

    /// Starts a child with `start` and registers `undo` for it, a signal's thread waiting meanwhile: a signal between
    /// the two would otherwise leave the child running.
    static func start<Child: Sendable>(_ start: () throws -> Child, undo: @escaping @Sendable (Child) -> Void)
        throws -> (child: Child, step: Int)
    {
        installOnce()
        let allowed = state.withLock { state -> Bool in
            guard !state.signalled else { return false }
            state.running += 1
            return true
        }
        if !allowed { waitForTheEnd() }
        defer { state.withLock { $0.running -= 1 } }
        let child = try start()
        let id = state.withLock { state -> Int in
            state.nextID += 1
            state.steps.append((state.nextID, { undo(child) }))
            return state.nextID
        }
        return (child, id)
    }

    /// After a signal: the signal's thread ends the process.
    private static func waitForTheEnd() -> Never {
        while true { sleep(1) }
    }

    /// Runs the step `id` unless it ran already; after a signal, waits for the process to end instead.
    static func run(_ id: Int) {
        let taken = state.withLock { state -> (step: (@Sendable () -> Void)?, signalled: Bool) in
            if state.signalled { return (nil, true) }
            guard let index = state.steps.firstIndex(where: { $0.id == id }) else { return (nil, false) }
            state.running += 1
            return (state.steps.remove(at: index).run, false)
        }
        if taken.signalled { waitForTheEnd() }
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
                    if count == 0 || errno != EINTR {
                        // No reader (never seen): the signals get their default action back rather than be lost.
                        for signal in [SIGTERM, SIGINT] { _ = Glibc.signal(signal, SIG_DFL) }
                        return
                    }
                }
                for signal in [SIGTERM, SIGINT] { _ = Glibc.signal(signal, SIG_DFL) }
                // What the normal path is running or starting finishes first: the steps left were registered
                // before it, so they undo what it relies on (the files go after the brokers that write them).
                var steps: [(id: Int, run: @Sendable () -> Void)]?
                while steps == nil {
                    steps = state.withLock { state in
                        guard state.running == 0 else { return nil }
                        state.signalled = true
                        defer { state.steps = [] }
                        return state.steps
                    }
                    if steps == nil { usleep(20_000) }
                }
                for step in (steps ?? []).reversed() { step.run() }
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
