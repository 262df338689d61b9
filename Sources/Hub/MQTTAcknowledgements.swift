import MQTT
import NIOCore
import Store
import Synchronization

/// One step of a connection's `AcknowledgementQueue`: what to do once its store write has answered.
protocol AcknowledgementStep: Sendable {
    /// What every step of one connection uses, held once by its queue rather than by each step.
    associatedtype Connection: AcknowledgementConnection

    /// Given the store write's outcome (nil: the step waited for no write), does what needs no waiting and returns
    /// what must be awaited before the next step (nil: nothing). Mutating: it takes out what the returned work keeps
    /// (a delivery), where it lies in the queue's entry. (Consuming, the step was copied out of its entry first.)
    mutating func run(after outcome: StoreWrite?, on connection: Connection) -> (@Sendable () async -> Void)?
}

/// What an `AcknowledgementQueue` needs of its connection (held there, not again in each connection's queue: an
/// idle connection's bytes count, 10,000 of them held).
protocol AcknowledgementConnection: Sendable {
    /// Where the queue runs the steps whose store writes answered on another thread.
    var eventLoop: any EventLoop { get }
    /// The connection's writer: what the steps of a run encoded into its shared buffer enters the channel when the
    /// run ends, so a write that bypasses it (the broker's DISCONNECT when another connection takes the session over)
    /// still comes after them, as when each PUBACK was written at once. Nil: none.
    var coalescer: FlushCoalescer? { get }
}

/// A queue one of whose steps waits for a store write (`StoreOutcome`): told the write's outcome, on the thread
/// that settled it.
protocol AcknowledgementTicketHolder: AnyObject, Sendable {
    func settled(_ ticket: InOrderTicket, _ outcome: StoreWrite)
}

/// One connection's acknowledgements (and the deliveries that must follow them), run in the order their packets
/// arrived (MQTT 5.0 §4.6, `InOrderQueue`), each once its store write has answered. A step does at once what needs
/// no waiting (a QoS 1 PUBACK: encode and write) and returns what must be awaited, if anything (deliver to the
/// broker, flush the retained store, record a QoS 2 id): that runs in a task, and the steps after it wait for it.
/// So the common QoS 1 message costs no task: its write's outcome arrives on the thread that committed the batch,
/// moves to the connection's event loop, and the PUBACK goes out from there.
///
/// Generic over its steps: a connection's steps are values (`MQTTConnection.Acknowledgement`) and what they share
/// is held here once (`connection`). A closure per step captured the connection's writer, broker, session and
/// counters again for every QoS 1 message: an allocation and a reference count on each, taken and dropped.
final class AcknowledgementQueue<Step: AcknowledgementStep>: AcknowledgementTicketHolder {
    fileprivate struct Entry {
        var step: Step
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
    /// What the steps share (handed to each as it runs), with the event loop and the writer.
    let connection: Step.Connection

    init(connection: Step.Connection) {
        self.connection = connection
    }

    /// Steps added and not finished.
    var unfinished: Int { state.withLock { $0.unfinished } }

    /// Adds a step behind every step added before it: run once `write` has answered (at once without one).
    func append(after write: StoreOutcome?, _ step: consuming Step) {
        // Moved into the queue (`take`): captured by the lock's closure, it was copied in.
        var entry: Entry? = Entry(step: step)
        let ticket = state.withLock { state in
            state.unfinished += 1
            return state.queue.append(entry.take()!, ready: write == nil)
        }
        guard let write else { return run() }
        write.whenSettled(in: self, ticket)
    }

    /// The outcome of the write that step `ticket` waits for (called by its `StoreOutcome`, on the thread that settled
    /// it). Off the store's commit thread at once: the PUBACKs of a batch are written from the event loop. The outcome
    /// is marked here; one trip to the loop serves every outcome of this connection that the same batch settles (a
    /// trip per message was a queue insertion and often a wake-up of the loop each).
    ///
    /// Specialized for the hub's steps: a `StoreOutcome` calls it through `AcknowledgementTicketHolder`, whose
    /// witness runs the generic body, and that body (and the run it starts) copied each step through its type's
    /// value witnesses (`scripts/count-references`: 4 copies per QoS 1 message). The specialization is checked for
    /// and taken at the generic body's entry.
    @_specialize(where Step == MQTTConnection.Acknowledgement)
    func settled(_ ticket: InOrderTicket, _ outcome: StoreWrite) {
        let queue = state.withLock { state -> Bool in
            _ = state.queue.markReady(ticket) { $0.outcome = outcome }
            if state.runQueued { return false }
            state.runQueued = true
            return true
        }
        guard queue else { return }
        connection.eventLoop.execute {
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
        defer { connection.coalescer?.writeEncodedOnLoop() }
        while true {
            // Run where it lies (`next!`): bound to a variable of its own, the entry was copied.
            var next = state.withLock { state -> Entry? in
                guard !state.running, let entry = state.queue.popReady() else { return nil }
                state.running = true
                return entry
            }
            guard next != nil else { return }
            let outcome = next!.outcome
            if let rest = next!.step.run(after: outcome, on: connection) {
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
        case queue(any AcknowledgementTicketHolder, InOrderTicket)
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
    fileprivate func whenSettled(in queue: any AcknowledgementTicketHolder, _ ticket: InOrderTicket) {
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

extension MQTTConnection {
    /// What every acknowledgement step of one connection uses, held once by its queue. Fixed for the connection: its
    /// protocol version and Request Problem Information come with its CONNECT.
    final class Acknowledger: AcknowledgementConnection {
        let output: FlushCoalescer
        let version: ProtocolVersion
        /// MQTT 5.0 §3.1.2.11.7 (see `State.problemInformation`).
        let problemInformation: Bool
        let broker: MQTTBroker
        let sessionKey: String
        let connectionNumber: Int
        let persistence: MQTTPersistence?
        /// QoS 1 PUBLISH packets received whose PUBACK has not been sent: at most the Receive Maximum the hub
        /// announced (MQTT 5.0 §3.3.4). Held inline (an object of its own was 48 bytes and a reference more per
        /// connection).
        let unacknowledged = UnacknowledgedPublishes()

        var eventLoop: any EventLoop { output.eventLoop }
        var coalescer: FlushCoalescer? { output }

        init(
            output: FlushCoalescer, version: ProtocolVersion, problemInformation: Bool, broker: MQTTBroker,
            sessionKey: String, connectionNumber: Int, persistence: MQTTPersistence?
        ) {
            self.output = output
            self.version = version
            self.problemInformation = problemInformation
            self.broker = broker
            self.sessionKey = sessionKey
            self.connectionNumber = connectionNumber
            self.persistence = persistence
        }

        /// A refusal's properties: the correlation id as a user property, if the client wants problem information.
        func refusalProperties(_ correlationID: String?) -> Properties {
            problemInformation ? MQTTConnection.refusalProperties(correlationID) : Properties()
        }

        /// The PUBACK (or, for QoS 2, the PUBREC) of packet `id`, into the connection's ordered output.
        func answer(_ id: UInt16, qos: QoS, _ reason: ReasonCode, _ properties: Properties) {
            let packet: Packet
            if qos == .exactlyOnce {
                packet = .pubrec(packetID: id, reasonCode: reason, properties: properties)
            } else {
                // Counted off before the PUBACK leaves: the client may send its next publish once it has it.
                if version == .v5 { unacknowledged.acknowledged() }
                packet = .puback(packetID: id, reasonCode: reason, properties: properties)
            }
            let version = version
            output.write { packet.encode(into: &$0, version: version) }
        }
    }

    /// One step of a connection's acknowledgement queue (see `acknowledge`): the PUBACK or PUBREC of one PUBLISH, once
    /// its store write answered, and the delivery that follows it; or, with no packet to answer, only a delivery that
    /// must come after the acknowledgements before it (`deliverInOrder`).
    struct Acknowledgement: AcknowledgementStep {
        /// The PUBLISH's packet id; nil: only the delivery.
        let packetID: UInt16?
        let qos: QoS
        /// The code to answer with when the write went as expected.
        let code: ReasonCode
        let correlationID: String?
        var delivery: BrokerMessage?
        /// A single node's log entry (or several nodes' placement) of the delivery: held until it is delivered.
        let local: LocalWrite?
        /// A logged message's write: its stored id is the delivery's position (nil: not logged).
        let logged: StoreOutcome?
        /// Save the session with the QoS 2 id before the PUBREC (see `acknowledge`).
        let savingID: Bool

        /// A delivery only, after the steps before it.
        static func delivery(_ delivery: BrokerMessage, local: LocalWrite?) -> Acknowledgement {
            Acknowledgement(
                packetID: nil, qos: delivery.qos, code: .success, correlationID: nil, delivery: delivery, local: local,
                logged: nil, savingID: false)
        }

        mutating func run(after outcome: StoreWrite?, on connection: Acknowledger) -> (@Sendable () async -> Void)? {
            let local = local
            guard let id = packetID else {
                guard let delivery = delivery.take() else { return nil }
                return {
                    await connection.broker.publish(delivery, from: connection.sessionKey, placement: local?.placement)
                    withExtendedLifetime(local) {}
                }
            }
            let version = connection.version
            var reason = code
            var deliver = true
            switch outcome {
            case nil, .stored: break
            case .storedElsewhere: deliver = false
            case .replayed:
                // MQTT 3.1.1 has no refusal code: the connection ends, after the acknowledgements written before this
                // step (in the coalescer's order: none written after it goes out).
                guard version == .v5 else {
                    connection.output.close()
                    return nil
                }
                reason = .notAuthorized
            case .failed:
                // Refused by the store for this message (not for want of a database): PUBACK 0x80 on MQTT 5, so a
                // message that fails every time does not bring its client back again and again.
                guard version == .v5 else {
                    connection.output.close()
                    return nil
                }
                reason = .unspecifiedError
            case .unavailable:
                // The store cannot be reached: the connection ends (`ServerSession.publishRefused`), so the client
                // keeps the message and sends it again once connected. MQTT 5 hears why first (§3.14.2.1). Closed in
                // the coalescer's order: nothing written after it goes out after the DISCONNECT ([MQTT-3.14.4-1]).
                var buffer = ByteBuffer()
                if version == .v5 {
                    Packet.disconnect(reasonCode: .serverBusy, properties: connection.refusalProperties(correlationID))
                        .encode(into: &buffer, version: version)
                }
                connection.output.close(after: buffer)
                return nil
            }
            let decided = reason
            // A refusal's properties only for a refusal: 0x10 No matching subscribers is a success too, and most
            // acknowledgements are successes.
            let properties = decided.isFailure ? connection.refusalProperties(correlationID) : Properties()
            // Whether `delivery` goes on. It is read where it lies, never copied into a value of its own: a copy of a
            // message is a reference count on its topic and payload each, taken here and dropped again.
            let delivering = decided == .success && deliver && delivery != nil
            // A retained message is in the store's retained messages before its acknowledgement: a restart right
            // after the PUBACK still has it. (Should that write fail, the message itself is stored all the same: the
            // PUBACK goes out and the retained copy is written again at the next flush, logged.)
            let retainedFirst = delivering && delivery?.retain == true && connection.persistence != nil
            // Read once the write settled: the logged message's id, where saves may count past it once delivered.
            let position = logged?.storedID
            let qos = qos
            guard qos == .exactlyOnce || retainedFirst else {
                // The common case: the PUBACK now, then the delivery (if anyone may receive it) in order.
                connection.answer(id, qos: qos, decided, properties)
                // A logged message goes to the broker even with no subscriber left: saves count past it there.
                guard delivering, let delivery = delivery.take(),
                    position != nil || connection.broker.needsPublish(delivery)
                else {
                    return nil
                }
                return {
                    await connection.broker.publish(
                        delivery, from: connection.sessionKey, position: position, placement: local?.placement)
                    withExtendedLifetime(local) {}  // delivered here: saves may count past it
                }
            }
            let (delivery, savingID) = (delivering ? delivery.take() : nil, savingID)
            return {
                let broker = connection.broker
                if retainedFirst, let delivery, let persistence = connection.persistence {
                    await broker.publish(
                        delivery, from: connection.sessionKey, position: position, placement: local?.placement)
                    await persistence.flush()
                }
                if qos == .exactlyOnce {
                    if !decided.isFailure {
                        let toSave = await broker.storedQoS2(
                            key: connection.sessionKey, connectionNumber: connection.connectionNumber, packetID: id)
                        // Only a kept session is saved (another one's id ends with its connection anyway). Not saved
                        // (the store is down): the PUBREC goes out all the same, as the message is stored; only a
                        // kill before the next save could then store a resend again.
                        if savingID, toSave, let persistence = connection.persistence {
                            _ = await persistence.flush(saving: [connection.sessionKey])
                        }
                    } else {
                        connection.unacknowledged.completed(qos2: id)
                    }
                }
                connection.answer(id, qos: qos, decided, properties)
                if !retainedFirst, let delivery, position != nil || broker.needsPublish(delivery) {
                    await broker.publish(
                        delivery, from: connection.sessionKey, position: position, placement: local?.placement)
                }
                withExtendedLifetime(local) {}  // delivered here (or not at all): saves may count past it
            }
        }
    }
}
