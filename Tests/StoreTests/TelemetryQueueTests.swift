import Core
import Foundation
import Testing

@testable import Store

/// The queue both group committers use: order, batch bounds, one writer at a time, each result resolved once.
@Suite struct TelemetryQueueTests {
    static func message(_ index: Int, bytes: Int = 1) -> NewTelemetry {
        NewTelemetry(
            deviceID: try! DeviceID("d\(index % 3)"), receivedAt: Date(), correlationID: "c\(index)",
            body: Array(repeating: UInt8(ascii: "x"), count: bytes))
    }

    @Test func batchesKeepTheOrderAndOneWriterRunsAtATime() {
        let queue = TelemetryQueue(maximumCount: 4)
        let first = queue.append(Self.message(0))
        #expect(first.start)  // an idle queue: the caller starts the writer
        var results = [first.result]
        for index in 1..<10 {
            let (result, start) = queue.append(Self.message(index))
            #expect(!start)  // a writer is running
            results.append(result)
        }
        var taken: [String] = []
        while case let batch = queue.nextBatch(), !batch.isEmpty {
            #expect(batch.count <= 4)
            taken += batch.map(\.message.correlationID)
            TelemetryQueue.committed(batch, ids: batch.map { Int64($0.message.correlationID.dropFirst())! })
        }
        #expect(taken == (0..<10).map { "c\($0)" })
        // Empty: the writer stopped, so the next message starts it again.
        #expect(queue.append(Self.message(10)).start)
        #expect(results.count == 10)
    }

    @Test func aBatchStopsAtItsBytesButAlwaysTakesOne() {
        let queue = TelemetryQueue(maximumCount: 100, maximumBytes: 250)
        _ = queue.append(Self.message(0, bytes: 400))  // over the limit alone: taken alone
        _ = queue.append(Self.message(1, bytes: 100))
        _ = queue.append(Self.message(2, bytes: 100))
        _ = queue.append(Self.message(3, bytes: 100))
        #expect(queue.nextBatch().map(\.message.correlationID) == ["c0"])
        #expect(queue.nextBatch().map(\.message.correlationID) == ["c1", "c2"])
        #expect(queue.nextBatch().map(\.message.correlationID) == ["c3"])
        #expect(queue.nextBatch().isEmpty)
    }

    @Test func eachMessageGetsItsIdItsReplayOrTheFailure() async throws {
        let queue = TelemetryQueue(maximumCount: 10)
        let results = (0..<3).map { queue.append(Self.message($0)).result }
        TelemetryQueue.committed(queue.nextBatch(), ids: [7, nil, 9])
        #expect(try await results[0].value() == 7)
        await #expect(throws: StoreError.self) { try await results[1].value() }
        #expect(try await results[2].value() == 9)
        let failing = queue.append(Self.message(3)).result
        TelemetryQueue.failed(queue.nextBatch(), StoreError(.unavailable, "disk"))
        do {
            _ = try await failing.value()
            Issue.record("a failed batch resolved a message")
        } catch let error as StoreError {
            #expect(error.code == .unavailable)
        }
    }

    /// Messages queued for one reader (`append(_:heardBy:)`, as both committers queue them) are heard in queue order,
    /// each once, with its own entry and its own outcome: a batch's first and a later one's, a replay among them,
    /// and a failed batch. Only the first append starts the writer.
    @Test func aReaderHearsEachMessageOnceInQueueOrder() throws {
        let queue = TelemetryQueue(maximumCount: 3)
        let reader = RecordingReader()
        var starts: [Bool] = []
        for index in 0..<5 { starts.append(queue.append(Self.message(index), heardBy: reader)) }
        #expect(starts == [true, false, false, false, false])
        let first = queue.nextBatch()
        let second = queue.nextBatch()
        #expect(first.map(\.message.correlationID) == ["c0", "c1", "c2"])
        #expect(second.map(\.message.correlationID) == ["c3", "c4"])
        let entries = (first + second).map(ObjectIdentifier.init)
        TelemetryQueue.committed(first, ids: [10, nil, 12])
        TelemetryQueue.failed(second, StoreError(.unavailable, "disk"))
        #expect(reader.heard.map(\.entry) == entries, "each entry heard once, oldest first")
        #expect(
            reader.heard.map(\.outcome) == [
                .stored(10), .failed(.replayed), .stored(12), .failed(.unavailable), .failed(.unavailable),
            ])
    }

    /// Entries come back to the thread that queued them and are freed at its next `append` (glibc frees a chunk under
    /// the lock of the arena that allocated it: the writer freeing them raced the event loops' allocations).
    @Test func entriesAreFreedByTheThreadThatQueuedThem() {
        let queue = TelemetryQueue(maximumCount: 10)
        weak var first: PendingResult?
        weak var second: PendingResult?
        do {
            first = queue.append(Self.message(0)).result
            second = queue.append(Self.message(1)).result
            let batch = queue.nextBatch()
            TelemetryQueue.committed(batch, ids: [1, 2])
        }
        // The batch is done and dropped: the entries wait for this thread.
        #expect(first != nil && second != nil)
        _ = queue.append(Self.message(2))
        #expect(first == nil && second == nil)
        // A failed batch's come back too.
        weak var failed: PendingResult?
        do {
            let batch = queue.nextBatch()
            failed = batch.first
            TelemetryQueue.failed(batch, StoreError(.unavailable, "disk"))
        }
        #expect(failed != nil)
        _ = queue.append(Self.message(3))
        #expect(failed == nil)
    }

    /// A thread keeps at most `Returns.maximumCount` entries and `maximumBytes` of bodies: the writer frees the rest
    /// of a batch itself, so a thread that stops queueing holds little.
    @Test func aThreadHoldsABoundedAmountForItsNextAppend() {
        let queue = TelemetryQueue(maximumCount: .max)
        _ = queue.append(Self.message(0))
        _ = queue.nextBatch()  // this thread's returns are now empty
        weak var tooMany: PendingResult?
        do {
            for index in 0...TelemetryQueue.Returns.maximumCount { _ = queue.append(Self.message(index)) }
            let batch = queue.nextBatch()
            tooMany = batch.last
            TelemetryQueue.committed(batch, ids: batch.map { _ in 1 })
        }
        #expect(tooMany == nil)  // one over the count: none kept
        weak var tooLarge: PendingResult?
        do {
            tooLarge = queue.append(Self.message(0, bytes: TelemetryQueue.Returns.maximumBytes + 1)).result
            TelemetryQueue.committed(queue.nextBatch(), ids: [1])
        }
        #expect(tooLarge == nil)
        weak var kept: PendingResult?
        do {
            kept = queue.append(Self.message(0, bytes: 1_000)).result
            TelemetryQueue.committed(queue.nextBatch(), ids: [1])
        }
        #expect(kept != nil)
    }

    /// Nothing is kept for a thread that exited (its `Returns` retired, waiting for another thread): what it held is
    /// freed at once, and what comes back later is left to the writer.
    @Test func nothingIsKeptForAThreadThatExited() {
        let returns = TelemetryQueue.Returns()
        let queue = TelemetryQueue(maximumCount: 10)
        weak var held: PendingResult?
        weak var late: PendingResult?
        do {
            var entries = [TelemetryQueue.Entry(Self.message(0), origin: .passUnretained(returns), reader: nil)]
            held = entries.first
            returns.keep(&entries, bytes: 1)
            #expect(entries.isEmpty)  // taken over
        }
        #expect(held != nil)
        returns.retire()
        #expect(held == nil)
        do {
            var entries = [TelemetryQueue.Entry(Self.message(1), origin: .passUnretained(returns), reader: nil)]
            late = entries.first
            returns.keep(&entries, bytes: 1)
            #expect(entries.count == 1)  // left with the writer
        }
        #expect(late == nil)
        withExtendedLifetime((queue, returns)) {}  // the entries hold their thread's `Returns` unretained
    }

    /// The writer on another thread than the one that queued: the entries wait for the queuing thread's next
    /// `append`, and are freed there.
    @Test func aWriterOnAnotherThreadHandsTheEntriesBack() {
        // Synchronous: the whole test runs on one thread, the one that queues.
        let queue = TelemetryQueue(maximumCount: 10)
        final class Handed: @unchecked Sendable {
            var batch: [TelemetryQueue.Entry] = []
        }
        let handed = Handed()
        weak var queued: PendingResult?
        do {
            queued = queue.append(Self.message(0)).result
            handed.batch = queue.nextBatch()
        }
        let done = DispatchSemaphore(value: 0)
        let writer = Thread {
            var batch: [TelemetryQueue.Entry] = []
            swap(&batch, &handed.batch)
            TelemetryQueue.committed(consume batch, ids: [1])
            done.signal()
        }
        writer.start()
        done.wait()
        // Committed and dropped on the writer's thread, yet alive: it waits for the thread that queued it.
        #expect(queued != nil)
        _ = queue.append(Self.message(1))
        #expect(queued == nil)
    }

    /// Four threads queue at once while a writer thread drains the queue each time an `append` says to start it:
    /// every message is taken exactly once and in each thread's order, and every start finds its own message
    /// waiting (no start is given while a writer runs, none is missed), so the writer's every round takes something.
    @Test func concurrentProducersAndOneWriterLoseNothing() throws {
        let queue = TelemetryQueue(maximumCount: 64)
        final class Shared: @unchecked Sendable {
            let lock = NSLock()
            var taken: [String] = []
            var emptyRounds = 0
            var finished = false
        }
        let shared = Shared()
        let wake = DispatchSemaphore(value: 0)
        let writerDone = DispatchSemaphore(value: 0)
        let writer = Thread {
            while true {
                wake.wait()
                shared.lock.lock()
                let finished = shared.finished
                shared.lock.unlock()
                if finished { break }
                var first = true
                while case let batch = queue.nextBatch(), !batch.isEmpty {
                    first = false
                    shared.lock.lock()
                    shared.taken += batch.map(\.message.correlationID)
                    shared.lock.unlock()
                    TelemetryQueue.committed(batch, ids: batch.map { _ in 1 })
                }
                if first {
                    shared.lock.lock()
                    shared.emptyRounds += 1
                    shared.lock.unlock()
                }
            }
            writerDone.signal()
        }
        writer.start()
        let producers = 4
        let each = 5_000
        let producersDone = DispatchSemaphore(value: 0)
        for producer in 0..<producers {
            Thread {
                for index in 0..<each {
                    let message = NewTelemetry(
                        deviceID: try! DeviceID("d\(producer)"), receivedAt: Date(),
                        correlationID: "\(producer)-\(index)", body: [UInt8(ascii: "x")])
                    if queue.append(message).start { wake.signal() }
                }
                producersDone.signal()
            }.start()
        }
        for _ in 0..<producers { producersDone.wait() }
        // Every start was signalled; once the writer has drained, the queue is idle again.
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            shared.lock.lock()
            let count = shared.taken.count
            shared.lock.unlock()
            if count == producers * each { break }
            Thread.sleep(forTimeInterval: 0.01)
        }
        shared.lock.lock()
        shared.finished = true
        shared.lock.unlock()
        wake.signal()
        writerDone.wait()
        #expect(shared.taken.count == producers * each)
        #expect(Set(shared.taken).count == producers * each)
        #expect(shared.emptyRounds == 0, "a writer was started with nothing of its own to take")
        for producer in 0..<producers {
            let order = shared.taken.filter { $0.hasPrefix("\(producer)-") }
            #expect(order == (0..<each).map { "\(producer)-\($0)" })
        }
        #expect(queue.append(Self.message(0)).start, "idle once drained")
    }
}
