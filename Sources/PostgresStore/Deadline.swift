import Synchronization

/// The result of work running in a task of its own, awaited for a bounded time and never longer.
///
/// A task group waits for every child before it returns, even a cancelled one: a call into the driver that never
/// returns (a lease the pool never serves, a pool whose `run()` never ends after cancellation) would hold its caller
/// for ever, however short the caller's own timer. With `Outcome` the caller stops waiting when its time is up; the
/// work is cancelled and left to end alone.
final class Outcome<T: Sendable>: Sendable {
    private struct State {
        var result: Result<T, any Error>?
        var waiter: (id: Int, continuation: CheckedContinuation<Result<T, any Error>?, Never>)?
        var timer: Task<Void, Never>?
        var waits = 0
    }

    private let state = Mutex(State())

    /// Starts `body` in a task of its own; returns the outcome to wait on, and the task (to cancel).
    static func start(_ body: @escaping @Sendable () async throws -> T) -> (Outcome<T>, Task<Void, Never>) {
        let outcome = Outcome<T>()
        let task = Task {
            do { outcome.finish(.success(try await body())) } catch { outcome.finish(.failure(error)) }
        }
        return (outcome, task)
    }

    private func finish(_ result: Result<T, any Error>) {
        state.withLock { $0.result = result }
        releaseWaiter(with: result)
    }

    /// The result, if it came within `limit`; nil otherwise, or as soon as the waiting task is cancelled (the work
    /// may still end later: call again to wait more). One wait at a time.
    func wait(_ limit: Duration) async -> Result<T, any Error>? {
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let ready = state.withLock { state -> Result<T, any Error>? in
                    if let result = state.result { return result }
                    precondition(state.waiter == nil, "one wait at a time")
                    state.waits += 1
                    let id = state.waits
                    state.waiter = (id, continuation)
                    state.timer = Task {
                        try? await Task.sleep(for: limit)
                        if !Task.isCancelled { self.expire(id) }
                    }
                    return nil
                }
                if let ready {
                    continuation.resume(returning: ready)
                } else if Task.isCancelled {
                    stopWaiting()  // cancelled before the waiter was in place: the handler found none
                }
            }
        } onCancel: {
            stopWaiting()
        }
    }

    private func stopWaiting() { releaseWaiter(with: nil) }

    /// Resumes the waiter, if any, and stops its timer.
    private func releaseWaiter(with result: Result<T, any Error>?) {
        let (waiter, timer) = state.withLock { state in
            defer {
                state.waiter = nil
                state.timer = nil
            }
            return (state.waiter, state.timer)
        }
        timer?.cancel()
        waiter?.continuation.resume(returning: result)
    }

    private func expire(_ id: Int) {
        let waiter = state.withLock { state -> CheckedContinuation<Result<T, any Error>?, Never>? in
            guard let waiter = state.waiter, waiter.id == id else { return nil }
            state.waiter = nil
            state.timer = nil
            return waiter.continuation
        }
        waiter?.resume(returning: nil)
    }
}

/// Whether a leased connection's work began, or its caller gave up waiting first: exactly one of the two happens,
/// so work never starts on a connection after its caller was told the database did not answer.
final class LeaseFlag: Sendable {
    private enum State { case waiting, started, abandoned }
    private let value = Mutex(State.waiting)

    /// The work may start: false when its caller already gave up.
    func start() -> Bool {
        value.withLock {
            guard $0 == .waiting else { return false }
            $0 = .started
            return true
        }
    }

    /// The caller gives up: false when the work already started (then the caller waits for its end).
    func abandon() -> Bool {
        value.withLock {
            guard $0 == .waiting else { return false }
            $0 = .abandoned
            return true
        }
    }
}
