import Synchronization
import Testing

@testable import Store

/// `PendingResult`, the bridge between a store's writer (which resolves each message of a committed batch) and the
/// one party waiting for it: a task (`value`), a callback or a reader object. Each reader hears the result once,
/// whichever comes first, the result or the reader; a second result is ignored.
@Suite struct PendingResultTests {
    struct Failure: Error, Equatable { let code: Int }

    final class Reader: PendingResultReader, @unchecked Sendable {
        let heard = Mutex<[Result<Int64, Failure>]>([])
        /// Which result each was (the reader is handed the one resolved).
        let from = Mutex<[ObjectIdentifier?]>([])
        func resolved(_ result: Result<Int64, any Error>, of pending: PendingResult?) {
            heard.withLock { $0.append(result.mapError { $0 as! Failure }) }
            from.withLock { $0.append(pending.map(ObjectIdentifier.init)) }
        }
        var results: [Result<Int64, Failure>] { heard.withLock { $0 } }
        var sources: [ObjectIdentifier?] { from.withLock { $0 } }
    }

    @Test func eachReaderHearsTheResultOnceWhicheverComesFirst() async throws {
        // The reader first, then the result; then a second result, ignored.
        let early = PendingResult()
        let reader = Reader()
        early.whenComplete(reader: reader)
        #expect(reader.results.isEmpty)
        early.resolve(.success(7))
        early.resolve(.success(8))
        early.resolve(.failure(Failure(code: 1)))
        #expect(reader.results == [.success(7)])
        #expect(reader.sources == [ObjectIdentifier(early)])

        // The result first: the reader hears it at once.
        let late = PendingResult()
        late.resolve(.failure(Failure(code: 2)))
        late.resolve(.success(9))
        let lateReader = Reader()
        late.whenComplete(reader: lateReader)
        #expect(lateReader.results == [.failure(Failure(code: 2))])
        #expect(lateReader.sources == [ObjectIdentifier(late)])

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

    /// The writer's thread resolves while the connection's registers its reader: every reader hears exactly its own
    /// result, once, however the two interleave.
    @Test func aResultAndItsReaderRacingMeetOnce() async {
        let count = 2000
        let pendings = (0..<count).map { _ in PendingResult() }
        let readers = (0..<count).map { _ in Reader() }
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                for index in 0..<count { pendings[index].resolve(.success(Int64(index))) }
            }
            group.addTask {
                for index in 0..<count { pendings[index].whenComplete(reader: readers[index]) }
            }
        }
        for index in 0..<count { #expect(readers[index].results == [.success(Int64(index))]) }
    }
}
