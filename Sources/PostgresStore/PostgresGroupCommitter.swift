import Core
import Foundation
import Logging
import NIOCore
import PostgresNIO
import Store
import Synchronization

/// Group commit for telemetry on PostgreSQL: callers queue their message; whoever finds no batch in flight starts
/// one, and each finished batch starts the next with everything queued meanwhile. One transaction serves a whole
/// batch (one WAL flush with `synchronous_commit` on), and every caller is resumed only after its batch committed.
///
/// Rows other nodes' batches touch too (each device's row, kept current by the `last_seen` trigger, and its counter
/// window) are locked in device order, so two batches never wait on each other in a cycle. Messages of one device
/// keep their arrival order (and so their ids' order).
final class PostgresGroupCommitter: Sendable {
    typealias Waiter = CheckedContinuation<Int64, any Error>
    private struct State {
        var queued: [(NewTelemetry, Waiter)] = []
        var writing = false
    }

    private let client: PostgresClient
    private let state = Mutex(State())
    /// Bounds one transaction so a burst cannot build an unbounded batch.
    private let maximumBatch = 512
    private let onCommit: (@Sendable (Int, Duration) -> Void)?

    init(client: PostgresClient, onCommit: (@Sendable (Int, Duration) -> Void)?) {
        self.client = client
        self.onCommit = onCommit
    }

    func append(_ message: NewTelemetry) async throws -> Int64 {
        try await withCheckedThrowingContinuation { continuation in
            let start = state.withLock { state -> Bool in
                state.queued.append((message, continuation))
                if state.writing { return false }
                state.writing = true
                return true
            }
            if start { Task { await self.drain() } }
        }
    }

    private func drain() async {
        while true {
            let batch = state.withLock { state -> [(NewTelemetry, Waiter)] in
                let count = min(state.queued.count, maximumBatch)
                let batch = Array(state.queued.prefix(count))
                state.queued.removeFirst(count)
                if batch.isEmpty { state.writing = false }
                return batch
            }
            if batch.isEmpty { return }
            let started = ContinuousClock.now
            do {
                let ids = try await write(batch.map(\.0))
                onCommit?(batch.count, ContinuousClock.now - started)
                for (index, entry) in batch.enumerated() { entry.1.resume(returning: ids[index]) }
            } catch {
                let failure = PostgresHubStore.storeError(error, "telemetry batch failed")
                for entry in batch { entry.1.resume(throwing: failure) }
            }
        }
    }

    /// Writes one batch in one transaction; returns each message's id, in the batch's order.
    private func write(_ messages: [NewTelemetry]) async throws -> [Int64] {
        let quiet = PostgresHubStore.quiet
        // Device order (stable: one device's messages stay in arrival order).
        let order = messages.indices.sorted {
            (messages[$0].deviceID.rawValue, $0) < (messages[$1].deviceID.rawValue, $1)
        }
        return try await client.withTransaction(logger: quiet) { connection in
            var ids = [Int64](repeating: 0, count: messages.count)
            for index in order {
                let message = messages[index]
                let device = message.deviceID.rawValue
                guard
                    let id = try await PostgresHubStore.one(
                        connection.query(
                            """
                            INSERT INTO telemetry (device_id, received_at, correlation_id, body, message_type)
                            VALUES (\(device), \(message.receivedAt.timeIntervalSince1970Millis),
                                    \(message.correlationID), \(ByteBuffer(bytes: message.body)), \(message.messageType))
                            RETURNING id
                            """, logger: quiet), Int64.self)
                else { throw StoreError(.unavailable, "the telemetry insert returned no id") }
                ids[index] = id
                // The replay state travels in the message's own transaction: acknowledged together or not at all.
                if let nonce = message.nonce {
                    try await connection.query(
                        """
                        INSERT INTO nonces (device_id, nonce, expires_at) VALUES (\(device), \(nonce.nonce),
                            \(nonce.expiresAt)) ON CONFLICT DO NOTHING
                        """, logger: quiet)
                }
            }
            // One window per device (the batch's own windows merged first), never moved backwards: another node
            // may have stored a later one.
            var windows: [String: StoredCounterWindow] = [:]
            for message in messages {
                guard let window = message.counterWindow else { continue }
                windows[message.deviceID.rawValue] = window.merged(with: windows[message.deviceID.rawValue])
            }
            for (device, window) in windows.sorted(by: { $0.key < $1.key }) {
                try await connection.query(
                    "INSERT INTO counter_windows (device_id, highest, seen) VALUES (\(device), 0, 0) ON CONFLICT DO NOTHING",
                    logger: quiet)
                var stored: StoredCounterWindow?
                for try await (highest, seen) in try await connection.query(
                    "SELECT highest, seen FROM counter_windows WHERE device_id = \(device) FOR UPDATE", logger: quiet
                ).decode((Int64, Int64).self) {
                    stored = StoredCounterWindow(highest: UInt64(bitPattern: highest), seen: UInt64(bitPattern: seen))
                }
                let merged = window.merged(with: stored)
                try await connection.query(
                    """
                    UPDATE counter_windows SET highest = \(Int64(bitPattern: merged.highest)),
                        seen = \(Int64(bitPattern: merged.seen)) WHERE device_id = \(device)
                    """, logger: quiet)
            }
            if messages.contains(where: { $0.nonce != nil }) {
                try await connection.query(
                    "DELETE FROM nonces WHERE expires_at <= \(Int64(Date().timeIntervalSince1970))", logger: quiet)
            }
            return ids
        }
    }
}

extension Date {
    var timeIntervalSince1970Millis: Int64 { Int64((timeIntervalSince1970 * 1000).rounded()) }
}
