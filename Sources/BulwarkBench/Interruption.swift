import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// What a benchmark undoes when SIGTERM or SIGINT stops it (a profiling script's `kill`, Ctrl-C), as its `defer`s
/// would at a normal end: a signal ended the process without running them, which left the brokers it started
/// running and its temp directory (the hub's data, hundreds of MB) behind.
///
/// Steps run last registered first, once, on a thread of their own; then the process exits with 128 + the signal.
/// The signal's handler only writes its number to a pipe that thread reads (the self-pipe trick: nothing else is
/// safe in a handler). A handler, not `SIG_IGN`, so that the brokers started meanwhile get the default action back
/// at `exec` and still stop on SIGTERM.
enum Interruption {
    private static let steps = Mutex<[(id: Int, run: @Sendable () -> Void)]>([])
    private static let nextID = Atomic(0)
    private static let installed = Atomic(false)

    /// Runs `step` if the process is stopped by a signal before `forget` is called with the id returned.
    @discardableResult
    static func onSignal(_ step: @escaping @Sendable () -> Void) -> Int {
        installOnce()
        let id = nextID.add(1, ordering: .relaxed).newValue
        steps.withLock { $0.append((id, step)) }
        return id
    }

    /// The step `id` is done by the normal path (or no longer needed).
    static func forget(_ id: Int) { steps.withLock { $0.removeAll { $0.id == id } } }

    private static func installOnce() {
        #if canImport(Glibc)
            guard installed.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged else {
                return
            }
            var descriptors: [Int32] = [-1, -1]
            guard pipe(&descriptors) == 0 else { return }
            interruptionPipe = descriptors[1]
            let reading = descriptors[0]
            let thread = Thread {
                var number: UInt8 = 0
                while read(reading, &number, 1) != 1 {}
                let taken = steps.withLock { steps in
                    defer { steps = [] }
                    return steps
                }
                for step in taken.reversed() { step.run() }
                exit(128 + Int32(number))
            }
            thread.start()
            for number in [SIGTERM, SIGINT] {
                var action = sigaction()
                action.__sigaction_handler.sa_handler = { number in
                    var byte = UInt8(truncatingIfNeeded: number)
                    _ = write(interruptionPipe, &byte, 1)
                }
                sigemptyset(&action.sa_mask)
                sigaction(number, &action, nil)
            }
        #endif
    }
}

/// The pipe's writing end, read by the signal handler (which can capture nothing). Set once, before any handler is.
nonisolated(unsafe) private var interruptionPipe: Int32 = -1

/// A process that is not `Sendable` (Foundation's), stopped from a signal's step.
final class StoppableProcess: @unchecked Sendable {
    let process: Process
    init(_ process: Process) { self.process = process }
    func stop() { process.stop(within: 5) }
}
