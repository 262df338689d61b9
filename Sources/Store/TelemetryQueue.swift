import Core

/// The queue in front of a telemetry group committer (SQLite's and PostgreSQL's): messages are queued in arrival order
/// and taken in batches, with at most one batch in flight. Whoever queues a message into an idle queue starts the
/// writer; the writer takes batches until the queue is empty, which makes it idle again. Each message's result is
/// resolved once its batch committed (or failed).
public final class TelemetryQueue: Sendable {
    /// A message and the result its batch resolves. A class: the writer's thread copies and destroys entries (the
    /// batch taken from the queue, the loops over it), and a copy of a struct retained and released each of the
    /// message's references there, each one last written by a connection's thread; an entry is one reference. It is
    /// also the result its batch resolves: one allocation per queued message.
    public final class Entry: PendingResult, @unchecked Sendable {
        public let message: NewTelemetry

        init(_ message: NewTelemetry) { self.message = message }
    }

    private struct State {
        var queued: [Entry] = []
        var writing = false
    }

    private let state = Locked(State())
    /// At most this many messages in one batch, and at most `maximumBytes` of bodies and relayed packets (a batch
    /// always takes its first message).
    private let maximumCount: Int
    private let maximumBytes: Int

    public init(maximumCount: Int, maximumBytes: Int = .max) {
        self.maximumCount = maximumCount
        self.maximumBytes = maximumBytes
    }

    /// Queues the message; `start` is true when no batch is in flight and the caller must start the writer.
    /// Takes `message` over: queued without a copy (each copy counts every reference the message holds).
    public func append(_ message: consuming NewTelemetry) -> (result: PendingResult, start: Bool) {
        let entry = Entry(message)
        let start = state.withLock { state -> Bool in
            state.queued.append(entry)
            if state.writing { return false }
            state.writing = true
            return true
        }
        return (entry, start)
    }

    /// The next batch, in queue order; empty when the queue is empty, and then the writer must stop (the next
    /// `append` starts it again).
    public func nextBatch() -> [Entry] {
        state.withLock { state -> [Entry] in
            var count = min(state.queued.count, maximumCount)
            if maximumBytes < .max {
                count = 0
                var bytes = 0
                for entry in state.queued.prefix(maximumCount) {
                    bytes += entry.message.body.count + (entry.message.relay?.packet.count ?? 0)
                    if count > 0, bytes > maximumBytes { break }
                    count += 1
                }
            }
            // The whole queue (the usual case) is moved, not copied: each copied entry retained every reference in its
            // message, on the writer's thread, where the connections' threads had just written them.
            let batch: [Entry]
            if count == state.queued.count {
                batch = state.queued
                state.queued = []
                state.queued.reserveCapacity(batch.count)
            } else {
                batch = Array(state.queued.prefix(count))
                state.queued.removeFirst(count)
            }
            if batch.isEmpty { state.writing = false }
            return batch
        }
    }

    /// Resolves a committed batch: each message's id, or a replay for a message the batch refused (nil id: its
    /// counter already in the stored window, or its nonce already stored and live).
    public static func committed(_ batch: [Entry], ids: [Int64?]) {
        precondition(ids.count == batch.count, "one id (or nil) per message of the batch")
        for index in batch.indices {
            if let id = ids[index] {
                batch[index].resolve(.success(id))
            } else {
                batch[index].resolve(.failure(StoreError(.replayed, "nonce or counter already stored")))
            }
        }
    }

    /// Fails every message of a batch that did not commit.
    public static func failed(_ batch: [Entry], _ error: StoreError) {
        for index in batch.indices { batch[index].resolve(.failure(error)) }
    }
}
