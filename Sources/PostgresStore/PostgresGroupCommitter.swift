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
    private let client: PostgresClient
    /// Bounds one transaction so a burst cannot build an unbounded batch: in messages, and in bytes (a batch's
    /// bodies and relayed packets travel as one array parameter each; PostgreSQL refuses a message over 1 GiB).
    private let pending = TelemetryQueue(maximumCount: 512, maximumBytes: 32 << 20)
    private let lastPurge = Mutex(ContinuousClock.now)
    private let onCommit: (@Sendable (Int, Duration) -> Void)?

    init(client: PostgresClient, onCommit: (@Sendable (Int, Duration) -> Void)?) {
        self.client = client
        self.onCommit = onCommit
    }

    func append(_ message: NewTelemetry) async throws -> Int64 {
        try await queue(message).value()
    }

    /// Queues the message now (batches keep the order of the queue) and returns what its batch's commit resolves.
    func queue(_ message: consuming NewTelemetry) -> PendingResult {
        let (result, start) = pending.append(message)
        if start { Task { await self.drain() } }
        return result
    }

    /// Queues the message now, its batch's outcome handed to `reader`.
    func queue(_ message: consuming NewTelemetry, reader: any PendingResultReader) {
        if pending.append(message, heardBy: reader) { Task { await self.drain() } }
    }

    private func drain() async {
        while true {
            let batch = pending.nextBatch()
            if batch.isEmpty { return }
            let started = ContinuousClock.now
            do {
                var written: [Int64?]?
                var nonces = false
                do {
                    let messages = batch.map(\.message)
                    nonces = messages.contains { $0.nonce != nil }
                    var attempt = 1
                    while written == nil {
                        do { written = try await write(messages) } catch
                            where attempt < 3 && PostgresHubStore.isRetryable(error)
                        {
                            attempt += 1  // a deadlock victim or serialisation failure: rolled back, run again
                        }
                    }
                }
                let ids = written ?? []
                onCommit?(batch.count, ContinuousClock.now - started)
                // The batch's last reference (the messages' copies gone with `messages`): its entries go back to
                // the threads that queued them, to be freed there.
                TelemetryQueue.committed(consume batch, ids: ids)
                // After the callers were answered: their acknowledgements never wait for it.
                await purgeExpiredNonces(if: nonces)
            } catch {
                TelemetryQueue.failed(consume batch, PostgresHubStore.storeError(error, "telemetry batch failed"))
            }
        }
    }

    /// Deletes expired nonces at most once a minute, outside any batch (nodes' batches would otherwise all wait on
    /// the same rows). A failure only leaves them for the next time.
    private func purgeExpiredNonces(if wrote: Bool) async {
        guard wrote else { return }
        let due = lastPurge.withLock { last in
            guard ContinuousClock.now - last >= .seconds(60) else { return false }
            last = ContinuousClock.now
            return true
        }
        guard due else { return }
        let now = Int64(Date().timeIntervalSince1970)
        _ = try? await PostgresHubStore.leased(client) { connection in
            try await PostgresHubStore.drain(
                connection.query("DELETE FROM nonces WHERE expires_at <= \(now)", logger: PostgresHubStore.quiet))
        }
    }

    /// Writes one batch in one transaction; returns each message's id, in the batch's order, nil for a message refused
    /// as a replay (its counter already in the device's stored window, or its nonce already stored and live).
    private func write(_ messages: [NewTelemetry]) async throws -> [Int64?] {
        let quiet = PostgresHubStore.quiet
        // Device order (stable: one device's messages stay in arrival order).
        let order = messages.indices.sorted {
            (messages[$0].deviceID.rawValue, $0) < (messages[$1].deviceID.rawValue, $1)
        }
        // A message with both a counter and a nonce (none is today: MQTT has counters, HTTP nonces) would need its
        // counter given back when its nonce is refused: such a batch is written one message at a time.
        let batched = !messages.contains { $0.counter != nil && $0.nonce != nil }
        return try await PostgresHubStore.leased(client) { connection in
            try await connection.withTransaction(logger: quiet) { connection in
                batched
                    ? try await Self.writeBatched(messages, order, connection)
                    : try await Self.write(messages, order, connection)
            }
        }
    }

    /// The batch in a handful of statements, whatever its size and however many devices (each statement is a round
    /// trip to the server, and a message's own statements made a batch of hundreds take that many round trips): the
    /// counter windows of the batch's devices locked and read in one statement (in device order) and written in one,
    /// the nonces inserted in one, the telemetry in one with ids drawn in the batch's order, and the relayed messages
    /// recorded together under one hold of the events lock. The same outcome as `write` one message at a time.
    private static func writeBatched(
        _ messages: [NewTelemetry], _ order: [Int], _ connection: PostgresConnection
    ) async throws -> [Int64?] {
        let quiet = PostgresHubStore.quiet
        var ids = [Int64?](repeating: nil, count: messages.count)
        // The windows of every device with a counter or a window given, locked before anything else, in device order.
        var windows = try await Self.lockedWindows(
            Set(messages.filter { $0.counter != nil || $0.counterWindow != nil }.map(\.deviceID.rawValue)).sorted(),
            connection)
        let stored = windows
        // Counters, in device order, each advancing its device's window here.
        var survivors: [Int] = []
        for index in order {
            let message = messages[index]
            guard let counter = message.counter else {
                survivors.append(index)
                continue
            }
            let device = message.deviceID.rawValue
            guard let accepted = windows[device]?.accepting(counter) else { continue }
            windows[device] = accepted
            survivors.append(index)
        }
        // Nonces: the first of a pair in the batch is inserted unless a live one is stored; a second is a replay.
        var candidates: [Int] = []
        var pairs = Set<[String]>()
        var refused = Set<Int>()
        for index in survivors {
            guard let nonce = messages[index].nonce else { continue }
            if pairs.insert([messages[index].deviceID.rawValue, nonce.nonce]).inserted {
                candidates.append(index)
            } else {
                refused.insert(index)
            }
        }
        // Inserted in key order: two nodes given the same nonces never wait on each other in a cycle.
        candidates.sort {
            (messages[$0].deviceID.rawValue, messages[$0].nonce?.nonce ?? "")
                < (messages[$1].deviceID.rawValue, messages[$1].nonce?.nonce ?? "")
        }
        if !candidates.isEmpty {
            let now = Int64(Date().timeIntervalSince1970)
            var inserted = Set<[String]>()
            for try await (device, nonce) in try await connection.query(
                """
                INSERT INTO nonces (device_id, nonce, expires_at)
                SELECT * FROM unnest(\(candidates.map { messages[$0].deviceID.rawValue }),
                                     \(candidates.map { messages[$0].nonce?.nonce ?? "" }),
                                     \(candidates.map { messages[$0].nonce?.expiresAt ?? 0 }))
                ON CONFLICT (device_id, nonce) DO UPDATE SET expires_at = excluded.expires_at
                WHERE nonces.expires_at <= \(now)
                RETURNING device_id, nonce
                """, logger: quiet
            ).decode((String, String).self) {
                inserted.insert([device, nonce])
            }
            for index in candidates
            where !inserted.contains([messages[index].deviceID.rawValue, messages[index].nonce?.nonce ?? ""]) {
                refused.insert(index)
            }
        }
        let kept = survivors.filter { !refused.contains($0) }
        // The counters of refused messages (none today: see `write`) are not taken back.
        if !kept.isEmpty {
            let drawn = try await Self.nextIDs(.telemetry, kept.count, connection)
            for (index, id) in zip(kept, drawn) { ids[index] = id }
            try await PostgresHubStore.drain(
                connection.query(
                    """
                    INSERT INTO telemetry (id, device_id, received_at, correlation_id, body, message_type)
                    SELECT id, device, received, correlation, body, CASE WHEN typed THEN kind END
                    FROM unnest(\(drawn), \(kept.map { messages[$0].deviceID.rawValue }),
                                \(kept.map { messages[$0].receivedAt.millis }),
                                \(kept.map { messages[$0].correlationID }),
                                \(kept.map { ByteBuffer(bytes: messages[$0].body) }),
                                \(kept.map { messages[$0].messageType ?? "" }),
                                \(kept.map { messages[$0].messageType != nil }))
                        WITH ORDINALITY AS m(id, device, received, correlation, body, kind, typed, position)
                    ORDER BY position
                    """, logger: quiet))
        }
        // Windows given without a counter, for the stored messages: merged into the device's (never backwards).
        for (index, message) in messages.enumerated() where ids[index] != nil && message.counter == nil {
            guard let given = message.counterWindow else { continue }
            let device = message.deviceID.rawValue
            windows[device] = given.merged(with: windows[device])
        }
        let changed = windows.keys.filter { windows[$0] != stored[$0] }.sorted()
        if !changed.isEmpty {
            try await connection.query(
                """
                UPDATE counter_windows SET highest = w.highest, seen = w.seen
                FROM unnest(\(changed), \(changed.map { Int64(bitPattern: windows[$0]?.highest ?? 0) }),
                            \(changed.map { Int64(bitPattern: windows[$0]?.seen ?? 0) })) AS w(device, highest, seen)
                WHERE counter_windows.device_id = w.device
                """, logger: quiet)
        }
        try await PostgresHubStore.recordMessages(kept.compactMap { messages[$0].relay }, connection)
        return ids
    }

    /// The devices' stored counter windows, their rows created if missing and locked (in device order: `devices`
    /// sorted) for the rest of the transaction, in two statements.
    static func lockedWindows(_ devices: [String], _ connection: PostgresConnection) async throws -> [String:
        StoredCounterWindow]
    {
        guard !devices.isEmpty else { return [:] }
        let quiet = PostgresHubStore.quiet
        try await connection.query(
            """
            INSERT INTO counter_windows (device_id, highest, seen)
            SELECT device, 0, 0 FROM unnest(\(devices)) WITH ORDINALITY AS d(device, position) ORDER BY position
            ON CONFLICT DO NOTHING
            """, logger: quiet)
        var windows: [String: StoredCounterWindow] = [:]
        for try await (device, highest, seen) in try await connection.query(
            """
            SELECT device_id, highest, seen FROM counter_windows WHERE device_id = ANY(\(devices))
            ORDER BY device_id FOR UPDATE
            """, logger: quiet
        ).decode((String, Int64, Int64).self) {
            windows[device] = StoredCounterWindow(highest: UInt64(bitPattern: highest), seen: UInt64(bitPattern: seen))
        }
        return windows
    }

    /// The tables whose ids a batch draws ahead (`nextIDs`).
    enum IdentityTable: String {
        case telemetry
        case clusterEvents = "cluster_events"
    }

    /// `count` new ids of `table`'s identity column, ascending (drawn in one statement).
    static func nextIDs(_ table: IdentityTable, _ count: Int, _ connection: PostgresConnection) async throws -> [Int64]
    {
        var ids: [Int64] = []
        for try await id in try await connection.query(
            "SELECT nextval(pg_get_serial_sequence(\(table.rawValue), 'id')) FROM generate_series(1, \(Int64(count)))",
            logger: PostgresHubStore.quiet
        ).decode(Int64.self) {
            ids.append(id)
        }
        return ids.sorted()
    }

    /// Windows given without a counter: one per device (the batch's own merged first), never moved backwards.
    private static func writeGivenWindows(_ messages: [NewTelemetry], _ ids: [Int64?], _ connection: PostgresConnection)
        async throws
    {
        var windows: [String: StoredCounterWindow] = [:]
        for (index, message) in messages.enumerated() where ids[index] != nil && message.counter == nil {
            guard let window = message.counterWindow else { continue }
            windows[message.deviceID.rawValue] = window.merged(with: windows[message.deviceID.rawValue])
        }
        for (device, window) in windows.sorted(by: { $0.key < $1.key }) {
            let merged = window.merged(with: try await Self.lockedWindow(device, connection))
            try await connection.query(
                """
                UPDATE counter_windows SET highest = \(Int64(bitPattern: merged.highest)),
                    seen = \(Int64(bitPattern: merged.seen)) WHERE device_id = \(device)
                """, logger: PostgresHubStore.quiet)
        }
    }

    private static func write(_ messages: [NewTelemetry], _ order: [Int], _ connection: PostgresConnection) async throws
        -> [Int64?]
    {
        let quiet = PostgresHubStore.quiet
        var ids = [Int64?](repeating: nil, count: messages.count)
        let now = Int64(Date().timeIntervalSince1970)
        for index in order {
            let message = messages[index]
            let device = message.deviceID.rawValue
            // The replay check of the database, for writers on other nodes: the counter accepted into the stored
            // window under its row lock, the nonce inserted unless a live one is there.
            var accepted: StoredCounterWindow?
            if let counter = message.counter {
                accepted = try await Self.lockedWindow(device, connection).accepting(counter)
                if accepted == nil { continue }
            }
            if let nonce = message.nonce {
                let inserted = try await PostgresHubStore.one(
                    connection.query(
                        """
                        INSERT INTO nonces (device_id, nonce, expires_at) VALUES (\(device), \(nonce.nonce),
                            \(nonce.expiresAt))
                        ON CONFLICT (device_id, nonce) DO UPDATE SET expires_at = excluded.expires_at
                        WHERE nonces.expires_at <= \(now)
                        RETURNING 1
                        """, logger: quiet), Int32.self)
                if inserted == nil { continue }
            }
            guard
                let id = try await PostgresHubStore.one(
                    connection.query(
                        """
                        INSERT INTO telemetry (device_id, received_at, correlation_id, body, message_type)
                        VALUES (\(device), \(message.receivedAt.millis),
                                \(message.correlationID), \(ByteBuffer(bytes: message.body)), \(message.messageType))
                        RETURNING id
                        """, logger: quiet), Int64.self)
            else { throw StoreError(.unavailable, "the telemetry insert returned no id") }
            ids[index] = id
            if let accepted {
                try await connection.query(
                    """
                    UPDATE counter_windows SET highest = \(Int64(bitPattern: accepted.highest)),
                        seen = \(Int64(bitPattern: accepted.seen)) WHERE device_id = \(device)
                    """, logger: quiet)
            }
        }
        try await Self.writeGivenWindows(messages, ids, connection)
        // The stored messages other nodes' subscribers get, last (the events lock is held to the commit), in each
        // device's arrival order.
        for index in order where ids[index] != nil {
            guard let relay = messages[index].relay else { continue }
            try await PostgresHubStore.recordEvent(
                "message", relay.origin, publisher: relay.publisher, body: relay.packet, connection)
        }
        return ids
    }
}

extension PostgresGroupCommitter {
    /// The device's stored counter window, its row created if missing and locked for the rest of the transaction.
    static func lockedWindow(_ device: String, _ connection: PostgresConnection) async throws -> StoredCounterWindow {
        let quiet = PostgresHubStore.quiet
        try await connection.query(
            "INSERT INTO counter_windows (device_id, highest, seen) VALUES (\(device), 0, 0) ON CONFLICT DO NOTHING",
            logger: quiet)
        var window = StoredCounterWindow(highest: 0, seen: 0)
        for try await (highest, seen) in try await connection.query(
            "SELECT highest, seen FROM counter_windows WHERE device_id = \(device) FOR UPDATE", logger: quiet
        ).decode((Int64, Int64).self) {
            window = StoredCounterWindow(highest: UInt64(bitPattern: highest), seen: UInt64(bitPattern: seen))
        }
        return window
    }
}
