import Core
import Foundation
import Synchronization
import Testing

@testable import Store

/// `PendingResult`, the bridge between a store's writer (which resolves each message of a committed batch) and the
/// one party waiting for it: a task (`value`) or a callback, whichever comes first, the result or the reader; and a
/// queue's entry with the reader named when it was queued (`TelemetryQueue.append(_:reader:)`). Each hears the result
/// once; a second result is ignored.
@Suite struct PendingResultTests {
    struct Failure: Error, Equatable { let code: Int }

    final class Reader: PendingResultReader, @unchecked Sendable {
        let heard = Mutex<[Result<Int64, Failure>]>([])
        /// Which entry each was (the reader is handed the one completed).
        let from = Mutex<[ObjectIdentifier]>([])
        func resolved(_ result: Result<Int64, any Error>, of entry: TelemetryQueue.Entry) {
            heard.withLock { $0.append(result.mapError { $0 as! Failure }) }
            from.withLock { $0.append(ObjectIdentifier(entry)) }
        }
        var results: [Result<Int64, Failure>] { heard.withLock { $0 } }
        var sources: [ObjectIdentifier] { from.withLock { $0 } }
    }

    static func message(_ counter: UInt64) throws -> NewTelemetry {
        NewTelemetry(
            deviceID: try DeviceID("pending-1"), receivedAt: Date(timeIntervalSince1970: 1_700_000_000),
            correlationID: "c\(counter)", body: [UInt8(counter & 0x7f)], counter: counter)
    }

    @Test func eachReaderHearsTheResultOnceWhicheverComesFirst() async throws {
        // An entry queued with its reader, and one made outside a queue: each reader hears the first result, once,
        // with its entry and message.
        let queue = TelemetryQueue(maximumCount: 8)
        let reader = Reader()
        let (queued, start) = queue.append(try Self.message(1), reader: reader)
        #expect(start)
        #expect(queue.nextBatch().map(ObjectIdentifier.init) == [ObjectIdentifier(queued)])
        #expect(reader.results.isEmpty)
        queued.resolve(.success(7))
        queued.resolve(.success(8))
        queued.resolve(.failure(Failure(code: 1)))
        #expect(reader.results == [.success(7)])
        #expect(reader.sources == [ObjectIdentifier(queued)])
        #expect(queued.message.counter == 1)
        let unqueuedReader = Reader()
        let unqueued = TelemetryQueue.Entry(unqueued: try Self.message(2), reader: unqueuedReader)
        unqueued.resolve(.failure(Failure(code: 2)))
        unqueued.resolve(.success(9))
        #expect(unqueuedReader.results == [.failure(Failure(code: 2))])
        #expect(unqueuedReader.sources == [ObjectIdentifier(unqueued)])

        // The reader is let go once it has heard (the entry may be kept a while by its thread).
        weak var gone: Reader?
        let kept: TelemetryQueue.Entry
        do {
            let transient = Reader()
            gone = transient
            kept = queue.append(try Self.message(4), reader: transient).result
        }
        _ = queue.nextBatch()
        #expect(gone != nil)
        kept.resolve(.success(12))
        #expect(gone == nil)
        #expect(kept.message.counter == 4)

        // An entry queued without a reader is read with `value`.
        let (plain, _) = queue.append(try Self.message(3))
        _ = queue.nextBatch()
        plain.resolve(.success(10))
        plain.resolve(.success(11))
        #expect(try await plain.value() == 10)

        // A callback, both orders.
        for resolveFirst in [true, false] {
            let pending = PendingResult()
            let heard = Mutex<[Int64]>([])
            if resolveFirst { pending.resolve(.success(11)) }
            pending.whenComplete { result in heard.withLock { $0.append((try? result.get()) ?? -1) } }
            if !resolveFirst { pending.resolve(.success(11)) }
            pending.resolve(.success(12))
            #expect(heard.withLock { $0 } == [11])
        }

        // A task, both orders, a value and an error.
        let resolved = PendingResult()
        resolved.resolve(.success(13))
        #expect(try await resolved.value() == 13)
        let awaited = PendingResult()
        async let value = awaited.value()
        try await Task.sleep(for: .milliseconds(20))
        awaited.resolve(.success(14))
        awaited.resolve(.success(15))
        #expect(try await value == 14)
        let failed = PendingResult()
        let failure = Task { try await failed.value() }
        failed.resolve(.failure(Failure(code: 3)))
        await #expect(throws: Failure(code: 3)) { try await failure.value }
    }

    /// The writer's thread resolves while another registers its callback: every callback hears exactly its own
    /// result, once, however the two interleave.
    @Test func aResultAndItsReaderRacingMeetOnce() async {
        let count = 2000
        let pendings = (0..<count).map { _ in PendingResult() }
        final class Heard: Sendable { let values = Mutex<[Int64]>([]) }
        let heard = (0..<count).map { _ in Heard() }
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                for index in 0..<count { pendings[index].resolve(.success(Int64(index))) }
            }
            group.addTask {
                for index in 0..<count {
                    pendings[index].whenComplete { result in
                        heard[index].values.withLock { $0.append(try! result.get()) }
                    }
                }
            }
        }
        for index in 0..<count { #expect(heard[index].values.withLock { $0 } == [Int64(index)]) }
    }
}
