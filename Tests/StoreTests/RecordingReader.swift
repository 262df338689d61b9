import Synchronization

@testable import Store

/// A `PendingResultReader` that records what it hears, in the order heard: each entry, its message's correlation id
/// and its outcome (the stored id, or the store error's code).
final class RecordingReader: PendingResultReader, @unchecked Sendable {
    enum Outcome: Equatable {
        case stored(Int64)
        case failed(StoreError.Code?)
    }

    struct Heard {
        let entry: ObjectIdentifier
        let correlationID: String
        let outcome: Outcome
    }

    private let log = Mutex<[Heard]>([])

    func resolved(_ result: Result<Int64, any Error>, of entry: TelemetryQueue.Entry) {
        let outcome: Outcome =
            switch result {
            case .success(let id): .stored(id)
            case .failure(let error): .failed((error as? StoreError)?.code)
            }
        let heard = Heard(entry: ObjectIdentifier(entry), correlationID: entry.message.correlationID, outcome: outcome)
        log.withLock { $0.append(heard) }
    }

    var heard: [Heard] { log.withLock { $0 } }

    /// Each message's outcomes in the order heard, by correlation id.
    var outcomes: [String: [Outcome]] {
        Dictionary(grouping: heard, by: \.correlationID).mapValues { $0.map(\.outcome) }
    }
}
