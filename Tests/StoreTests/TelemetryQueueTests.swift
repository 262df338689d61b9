import Core
import Foundation
import Store
import Testing

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
}
