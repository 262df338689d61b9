import MQTT
import NIOCore
import Store
import Synchronization

/// One connection's acknowledgements (and the deliveries that must follow them), run in the order their packets
/// arrived (MQTT 5.0 §4.6, `InOrderQueue`), each once its store write has answered. A step does at once what needs
/// no waiting (a QoS 1 PUBACK: encode and write) and returns what must be awaited, if anything (deliver to the
/// broker, flush the retained store, record a QoS 2 id): that runs in a task, and the steps after it wait for it.
/// So the common QoS 1 message costs no task: its write's outcome arrives on the thread that committed the batch,
/// moves to the connection's event loop, and the PUBACK goes out from there.
final class AcknowledgementQueue: Sendable {
    /// Given the store write's outcome (nil: the step waited for no write), does what needs no waiting and returns
    /// what must be awaited before the next step (nil: nothing).
    typealias Step = @Sendable (StoreWrite?) -> (@Sendable () async -> Void)?

    fileprivate struct Entry {
        let step: Step
        var outcome: StoreWrite?
    }

    private struct State {
        var queue = InOrderQueue<Entry>()
        /// A step is running (its immediate part on some thread, or its awaited part in a task): only one at a time.
        var running = false
        /// Steps added and not finished (queued, or running).
        var unfinished = 0
        var waiters: [(atMost: Int, continuation: CheckedContinuation<Void, Never>)] = []
        /// A run is queued on the event loop for outcomes that arrived: later outcomes ride on it.
        var runQueued = false
    }

    private let state = Mutex(State())
    private let eventLoop: any EventLoop
    /// The connection's writer: what the steps of a run encoded into its shared buffer enters the channel when the
    /// run ends, so a write that bypasses it (the broker's DISCONNECT when another connection takes the session over)
    /// still comes after them, as when each PUBACK was written at once.
    private let output: FlushCoalescer?

    init(eventLoop: any EventLoop, output: FlushCoalescer? = nil) {
        self.eventLoop = eventLoop
        self.output = output
    }

    /// Steps added and not finished.
    var unfinished: Int { state.withLock { $0.unfinished } }

    /// Adds a step behind every step added before it: run once `write` has answered (at once without one).
    func append(after write: StoreOutcome?, _ step: @escaping Step) {
        let ticket = state.withLock { state in
            state.unfinished += 1
            return state.queue.append(Entry(step: step), ready: write == nil)
        }
        guard let write else { return run() }
        write.whenSettled(in: self, ticket)
    }

    /// The outcome of the write that step `ticket` waits for (called by its `StoreOutcome`, on the thread that settled
    /// it). Off the store's commit thread at once: the PUBACKs of a batch are written from the event loop. The outcome
    /// is marked here; one trip to the loop serves every outcome of this connection that the same batch settles (a
    /// trip per message was a queue insertion and often a wake-up of the loop each).
    fileprivate func settled(_ ticket: InOrderQueue<Entry>.Ticket, _ outcome: StoreWrite) {
        let queue = state.withLock { state -> Bool in
            _ = state.queue.markReady(ticket) { $0.outcome = outcome }
            if state.runQueued { return false }
            state.runQueued = true
            return true
        }
        guard queue else { return }
        eventLoop.execute {
            self.state.withLock { $0.runQueued = false }
            self.run()
        }
    }

    /// Waits until at most `count` steps are unfinished (0: all of them done). Checked first without a continuation:
    /// every QoS 1 message asks, and most need not wait (a continuation is an allocation and a suspension).
    func wait(untilAtMost count: Int) async {
        if state.withLock({ $0.unfinished <= count }) { return }
        await withCheckedContinuation { continuation in
            let now = state.withLock { state -> Bool in
                if state.unfinished <= count { return true }
                state.waiters.append((count, continuation))
                return false
            }
            if now { continuation.resume() }
        }
    }

    /// Runs the ready steps in order, unless a step is running already (it runs the rest when it ends).
    private func run() {
        defer { output?.writeEncodedOnLoop() }
        while true {
            let next = state.withLock { state -> Entry? in
                guard !state.running, let entry = state.queue.popReady() else { return nil }
                state.running = true
                return entry
            }
            guard let next else { return }
            if let rest = next.step(next.outcome) {
                Task {
                    await rest()
                    self.finished()
                    self.run()
                }
                return
            }
            finished()
        }
    }

    private func finished() {
        let ready = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.running = false
            state.unfinished -= 1
            guard !state.waiters.isEmpty else { return [] }
            let unfinished = state.unfinished
            let ready = state.waiters.filter { $0.atMost >= unfinished }.map(\.continuation)
            state.waiters.removeAll { $0.atMost >= unfinished }
            return ready
        }
        for continuation in ready { continuation.resume() }
    }
}

/// How one QoS 1 or 2 message's store write ended, set once and read once: by the acknowledgement queue's callback,
/// or awaited (a will). Not `PendingResult<StoreWrite>`: a generic class of another module runs unspecialized here.
final class StoreOutcome: PendingResultReader {
    private enum Reader {
        /// A step of a connection's acknowledgement queue: no closure per message, only the queue and the ticket.
        case queue(AcknowledgementQueue, InOrderQueue<AcknowledgementQueue.Entry>.Ticket)
        case continuation(CheckedContinuation<StoreWrite, Never>)
    }

    private enum State {
        case waiting(Reader?)
        case settled(StoreWrite)
    }

    private let state = Mutex(State.waiting(nil))
    /// The message whose store write this is, and who turns the write's result into its outcome (`resolved`): held
    /// here rather than in a closure per message. Nil for an outcome settled directly (`settle`).
    private let acknowledging: (message: MQTTWriteOutcomes.Message, outcomes: MQTTWriteOutcomes)?

    init() { acknowledging = nil }

    /// The outcome of `message`'s store write, set by `outcomes` once the write's result arrives (`resolved`).
    init(acknowledging message: MQTTWriteOutcomes.Message, _ outcomes: MQTTWriteOutcomes) {
        acknowledging = (message, outcomes)
    }

    /// The store write's result (on the thread that committed its batch): `MQTTWriteOutcomes.settle` decides the
    /// outcome and settles it.
    func resolved(_ result: Result<Int64, any Error>, of _: TelemetryQueue.Entry) {
        guard let (message, outcomes) = acknowledging else { return }
        if case .success(let id) = result { stored.store(id, ordering: .relaxed) }
        outcomes.settle(self, message, result)
    }

    private let stored = Atomic<Int64>(0)

    /// The stored message's id, once the outcome is settled (nil: not stored here). Set before the outcome, which
    /// its reader waits for, so a reader of the outcome sees it.
    var storedID: Int64? {
        let id = stored.load(ordering: .relaxed)
        return id > 0 ? id : nil
    }

    /// Sets the outcome (once; later calls are ignored) and hands it to the reader, if one waits.
    func settle(_ outcome: StoreWrite) {
        let reader = state.withLock { state -> Reader? in
            guard case .waiting(let reader) = state else { return nil }
            state = .settled(outcome)
            return reader
        }
        switch reader {
        case .queue(let queue, let ticket): queue.settled(ticket, outcome)
        case .continuation(let continuation): continuation.resume(returning: outcome)
        case nil: break
        }
    }

    /// Hands the outcome to step `ticket` of `queue`: at once if it is set, else on the thread that sets it.
    fileprivate func whenSettled(
        in queue: AcknowledgementQueue, _ ticket: InOrderQueue<AcknowledgementQueue.Entry>.Ticket
    ) {
        if let outcome = read(.queue(queue, ticket)) { queue.settled(ticket, outcome) }
    }

    /// The outcome, once it is set.
    func value() async -> StoreWrite {
        await withCheckedContinuation { continuation in
            if let outcome = read(.continuation(continuation)) { continuation.resume(returning: outcome) }
        }
    }

    private func read(_ reader: Reader) -> StoreWrite? {
        state.withLock { state in
            switch state {
            case .settled(let outcome): return outcome
            case .waiting(let earlier):
                if case .some = earlier { preconditionFailure("a StoreOutcome has one reader") }
                state = .waiting(reader)
                return nil
            }
        }
    }
}
