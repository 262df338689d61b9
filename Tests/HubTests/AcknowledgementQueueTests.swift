import Foundation
import NIOCore
import NIOPosix
import Synchronization
import Testing

@testable import Hub

/// A connection's acknowledgements run in arrival order (MQTT 5.0 §4.6) whatever order their store writes answer in,
/// a step that must await holds back the steps after it, and each step sees its own write's outcome.
@Suite struct AcknowledgementQueueTests {
    @Test func stepsRunInArrivalOrderWhateverOrderTheirWritesEndIn() async {
        let queue = AcknowledgementQueue<ClosureStep>(
            connection: TestConnection(eventLoop: MultiThreadedEventLoopGroup.singleton.next()))
        let log = Mutex<[Int]>([])
        let count = 200
        let writes = (0..<count).map { _ in StoreOutcome() }
        let outcomes: [StoreWrite] = [.stored, .failed, .replayed, .unavailable, .storedElsewhere]
        for index in 0..<count {
            let waits = index % 7 != 0
            queue.append(after: waits ? writes[index] : nil) { outcome in
                log.withLock { $0.append(index) }
                #expect(outcome == (waits ? outcomes[index % outcomes.count] : nil), "step \(index)'s own outcome")
                // Every tenth step awaits something; the next step must not start before it ends.
                guard index % 10 == 5 else { return nil }
                return {
                    try? await Task.sleep(for: .milliseconds(2))
                    log.withLock { $0.append(10_000 + index) }
                }
            }
        }
        #expect(queue.unfinished == count - 1, "only the first step, which waits for nothing, has run")
        var random = SystemRandomNumberGenerator()
        for index in (0..<count).shuffled(using: &random) where index % 7 != 0 {
            writes[index].settle(outcomes[index % outcomes.count])
        }
        await queue.wait(untilAtMost: 0)
        let expected = (0..<count).flatMap { $0 % 10 == 5 ? [$0, 10_000 + $0] : [$0] }
        #expect(log.withLock { $0 } == expected)
        #expect(queue.unfinished == 0)
    }

    /// A write that answered before its step was added (its batch committed first) hands its outcome over at once,
    /// and the step still runs in arrival order, after the earlier steps whose writes answer later.
    @Test func aWriteSettledBeforeItsStepIsAddedStillRunsInOrder() async {
        let queue = AcknowledgementQueue<ClosureStep>(
            connection: TestConnection(eventLoop: MultiThreadedEventLoopGroup.singleton.next()))
        let count = 60
        let writes = (0..<count).map { _ in StoreOutcome() }
        for index in 0..<count where index % 3 == 0 { writes[index].settle(.stored) }
        let log = Mutex<[Int]>([])
        for index in 0..<count {
            queue.append(after: writes[index]) { outcome in
                log.withLock { $0.append(index) }
                #expect(outcome == (index % 3 == 0 ? .stored : .failed), "step \(index)'s own outcome")
                return nil
            }
        }
        #expect(log.withLock { $0 }.count <= 1, "only the first step's write had answered before the others")
        for index in (0..<count).reversed() where index % 3 != 0 { writes[index].settle(.failed) }
        await queue.wait(untilAtMost: 0)
        #expect(log.withLock { $0 } == Array(0..<count))
    }

    /// The Receive Maximum's back-pressure: a wait for room returns once enough steps have finished, not before.
    @Test func aWaitForRoomEndsWhenStepsFinish() async throws {
        let queue = AcknowledgementQueue<ClosureStep>(
            connection: TestConnection(eventLoop: MultiThreadedEventLoopGroup.singleton.next()))
        let writes = (0..<3).map { _ in StoreOutcome() }
        for write in writes { queue.append(after: write) { _ in nil } }
        let waited = Mutex(false)
        let waiter = Task {
            await queue.wait(untilAtMost: 1)
            waited.withLock { $0 = true }
        }
        writes[1].settle(.stored)
        writes[2].settle(.stored)
        try await Task.sleep(for: .milliseconds(50))
        #expect(!waited.withLock { $0 }, "the oldest step still waits, so none has finished")
        #expect(queue.unfinished == 3)
        writes[0].settle(.stored)
        // The wait for room returns once at most one step is unfinished: the last may still be running on the event
        // loop, so all three are awaited before counting none.
        await waiter.value
        #expect(waited.withLock { $0 })
        #expect(queue.unfinished <= 1)
        await queue.wait(untilAtMost: 0)
        #expect(queue.unfinished == 0)
    }

    /// What a run's steps encoded into the connection's shared buffer (its PUBACKs) enters the channel when the run
    /// ends: a write that bypasses the coalescer right after it (the broker's DISCONNECT at a session takeover, then
    /// its close) comes after the acknowledgements, which are not lost with the close.
    @Test func encodedAcknowledgementsComeBeforeAWriteThatBypassesTheCoalescer() throws {
        let pipe = try PipeChannel()
        defer { pipe.closeReadEnd() }
        let (loop, channel) = (pipe.loop, pipe.channel)
        let output = FlushCoalescer(channel)
        let queue = AcknowledgementQueue<ClosureStep>(connection: TestConnection(eventLoop: loop, coalescer: output))
        try loop.submit {
            queue.append(after: nil) { _ in
                output.write { $0.writeBytes([1, 2]) }
                return nil
            }
            channel.writeAndFlush(ByteBuffer(bytes: [3]), promise: nil)
            channel.close(promise: nil)
        }.wait()
        try channel.closeFuture.wait()
        let received = pipe.readToEnd()
        #expect(received == [1, 2, 3])
    }
}

/// The event loop and (if any) the writer of a queue of `ClosureStep`s.
struct TestConnection: AcknowledgementConnection {
    let eventLoop: any EventLoop
    var coalescer: FlushCoalescer? = nil
}

/// A step that runs a closure: the queue's order and waiting, apart from what the hub's steps do.
struct ClosureStep: AcknowledgementStep {
    let body: @Sendable (StoreWrite?) -> (@Sendable () async -> Void)?

    mutating func run(after outcome: StoreWrite?, on _: TestConnection) -> (@Sendable () async -> Void)? {
        body(outcome)
    }
}

extension AcknowledgementQueue where Step == ClosureStep {
    func append(after write: StoreOutcome?, _ body: @escaping @Sendable (StoreWrite?) -> (@Sendable () async -> Void)?)
    {
        append(after: write, ClosureStep(body: body))
    }
}
