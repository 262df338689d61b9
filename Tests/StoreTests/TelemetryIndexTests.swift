import Core
import Foundation
import GRDB
import PostgresTestSupport
import Testing

@testable import Store

/// The SQLite store's per-device telemetry index (migration v25): rows reach `telemetry_by_device` in sorted
/// batches, and a device's messages are read from the index and from the rows above its mark together.
@Suite struct TelemetryIndexTests {
    /// Removed when the test process exits.
    static func directory() throws -> String { try TemporaryDirectories.make("index") }

    static func message(_ device: DeviceID, _ index: Int) -> NewTelemetry {
        NewTelemetry(
            deviceID: device, receivedAt: Date(timeIntervalSince1970: 1_700_000_000 + Double(index)),
            correlationID: "c\(index)", body: Array(#"{"i":\#(index)}"#.utf8))
    }

    /// What the store must answer for each device: its ids, newest first, for a few limits, and its count.
    static func check(_ store: SQLiteHubStore, _ expected: [DeviceID: [Int64]], _ when: String) async throws {
        for (device, ids) in expected {
            let newestFirst = ids.sorted(by: >)
            for limit in [1, 5, 1_000] {
                let records = try await store.telemetry(of: device, limit: limit)
                #expect(records.map(\.id) == Array(newestFirst.prefix(limit)), "\(device) limit \(limit), \(when)")
                #expect(records.allSatisfy { $0.deviceID == device && $0.body.first == UInt8(ascii: "{") })
            }
            #expect(try await store.telemetryCount(of: device) == ids.count, "\(device) count, \(when)")
        }
        #expect(try await store.telemetryCount(of: nil) == expected.values.map(\.count).reduce(0, +))
    }

    /// (mark, messages in the index, messages above the mark, newest message id) read straight from the file, after
    /// checking that the index holds exactly the rows up to its mark, each under its own device and count.
    static func indexState(_ path: String) throws -> (upto: Int64, indexed: Int, above: Int, newest: Int64) {
        let pool = try DatabasePool(path: path)
        return try pool.read { db in
            let upto = try Int64.fetchOne(db, sql: "SELECT upto FROM telemetry_indexed") ?? -1
            let indexed = try Int.fetchOne(db, sql: "SELECT COALESCE(SUM(count), 0) FROM telemetry_chunk_index") ?? -1
            let below = try Int.fetchOne(
                db, sql: "SELECT COALESCE(SUM(count), 0) FROM telemetry_chunks WHERE first_id <= ?", arguments: [upto])
            let matching = try Int.fetchOne(
                db,
                sql: """
                    SELECT COALESCE(SUM(c.count), 0) FROM telemetry_chunk_index AS i JOIN telemetry_chunks AS c
                    ON c.first_id = i.first_id AND c.device_id = i.device_id AND c.count = i.count
                    WHERE i.first_id <= ?
                    """,
                arguments: [upto])
            #expect(indexed == below && matching == below, "the index holds exactly the rows up to its mark")
            return (
                upto, indexed,
                try Int.fetchOne(
                    db, sql: "SELECT COALESCE(SUM(count), 0) FROM telemetry_chunks WHERE first_id > ?",
                    arguments: [upto]) ?? -1,
                try Int64.fetchOne(db, sql: "SELECT MAX(first_id + count - 1) FROM telemetry_chunks") ?? -1
            )
        }
    }

    /// 150 messages from three devices, alone and in concurrent batches, with the index taking them in every 7:
    /// after each step every device's newest messages and count are right, whether they lie in the index, above its
    /// mark, or both; the index holds exactly the rows up to its mark; and a reopened store answers the same.
    @Test func aDevicesMessagesAreFoundOnBothSidesOfTheMark() async throws {
        let directory = try Self.directory()
        let path = directory + "/hub.sqlite"
        let devices = try ["a", "b", "c"].map { try DeviceID($0) }
        var expected: [DeviceID: [Int64]] = [:]
        do {
            let store = try SQLiteHubStore(path: path, indexEvery: 7)
            for device in devices {
                try await store.enroll(
                    device: device, certificate: HubStoreTests.certificate(device.rawValue, device: device), at: Date())
                expected[device] = []
            }
            try await Self.check(store, expected, "empty")
            var next = 0
            for step in 0..<10 {
                // Odd steps: one message at a time (a batch each); even steps: 14 at once (batches of several).
                if step % 2 == 1 {
                    for _ in 0..<3 {
                        let device = devices[next % 3]
                        expected[device]!.append(try await store.appendTelemetry(Self.message(device, next)))
                        next += 1
                    }
                } else {
                    let first = next
                    let stored = try await withThrowingTaskGroup(of: (DeviceID, Int64).self) { group in
                        for index in first..<(first + 14) {
                            let device = devices[(index * 7) % 3]
                            group.addTask { (device, try await store.appendTelemetry(Self.message(device, index))) }
                        }
                        return try await group.reduce(into: []) { $0.append($1) }
                    }
                    for (device, id) in stored { expected[device]!.append(id) }
                    next += 14
                }
                try await Self.check(store, expected, "after step \(step)")
                let state = try Self.indexState(path)
                #expect(state.newest - state.upto < 7 + 14, "the index keeps up")
            }
            // One message at a time until some lie above the mark (at most 7: the next would be indexed), so that
            // the last checks read both sides whatever batches the concurrent steps made.
            for _ in 0..<7 where try Self.indexState(path).above == 0 {
                let device = devices[next % 3]
                expected[device]!.append(try await store.appendTelemetry(Self.message(device, next)))
                next += 1
            }
            let state = try Self.indexState(path)
            #expect(state.upto >= 70 && state.above > 0, "both sides in use at the end: \(state)")
            try await Self.check(store, expected, "at the end")
        }
        let reopened = try SQLiteHubStore(path: path, indexEvery: 7)
        try await Self.check(reopened, expected, "reopened")
    }

    /// A batch that fails (a message for a device never enrolled breaks the foreign key) is rolled back whole and
    /// reported as the store being unavailable; the writer's transaction is closed, so the next batch commits, and
    /// the index and its mark move only with committed rows.
    @Test func aFailedBatchIsRolledBackAndTheNextOneCommits() async throws {
        let path = try Self.directory() + "/hub.sqlite"
        let store = try SQLiteHubStore(path: path, indexEvery: 2)
        let device = try DeviceID("a")
        try await store.enroll(device: device, certificate: HubStoreTests.certificate("a", device: device), at: Date())
        var expected: [DeviceID: [Int64]] = [device: []]
        expected[device]!.append(try await store.appendTelemetry(Self.message(device, 0)))
        for attempt in 1...3 {
            await #expect(throws: StoreError.self) {
                _ = try await store.appendTelemetry(Self.message(try DeviceID("never-enrolled"), attempt))
            }
            expected[device]!.append(try await store.appendTelemetry(Self.message(device, 10 + attempt)))
            try await Self.check(store, expected, "after failure \(attempt)")
        }
        let state = try Self.indexState(path)
        #expect(state.newest == 4 && state.upto >= 3, "only committed rows took ids and reached the index: \(state)")
    }

    /// A database made before v25 (rows under the old `telemetry_device` index) is migrated: every row is in the
    /// index, the mark is the newest id, the old index is gone, and the store reads each device's messages as before.
    @Test func aDatabaseFromBeforeTheIndexTableIsMigrated() async throws {
        let directory = try Self.directory()
        let path = directory + "/hub.sqlite"
        let devices = try ["a", "b"].map { try DeviceID($0) }
        var expected: [DeviceID: [Int64]] = [devices[0]: [], devices[1]: []]
        do {
            let pool = try DatabasePool(path: path)
            try SQLiteHubStore.migrator.migrate(pool, upTo: "v24: last_seen written once per device per batch")
            let rows = try await pool.write { db -> [(Int, Int64)] in
                var rows: [(Int, Int64)] = []
                for device in devices {
                    try db.execute(
                        sql: "INSERT INTO devices (id, status, created_at) VALUES (?, 'active', 0)",
                        arguments: [device.rawValue])
                }
                for index in 0..<40 {
                    try db.execute(
                        sql: """
                            INSERT INTO telemetry (device_id, received_at, correlation_id, body, message_type)
                            VALUES (?, ?, ?, ?, ?)
                            """,
                        arguments: [
                            devices[index % 3 == 0 ? 0 : 1].rawValue, index, "c\(index)", Data("{\"i\":\(index)}".utf8),
                            index % 2 == 0 ? "telemetry" : nil,
                        ])
                    rows.append((index % 3 == 0 ? 0 : 1, db.lastInsertedRowID))
                }
                return rows
            }
            for (device, id) in rows { expected[devices[device]]!.append(id) }
            #expect(try await pool.read { try $0.indexes(on: "telemetry").map(\.name) } == ["telemetry_device"])
        }
        let store = try SQLiteHubStore(path: path)
        try await Self.check(store, expected, "migrated")
        let state = try Self.indexState(path)
        #expect(state.upto == 40 && state.indexed == 40 && state.above == 0)
        #expect(try await DatabasePool(path: path).read { try $0.tableExists("telemetry") } == false)
        // Every field of every message survived both migrations (v25's index, v26's rows), under its old id.
        for (device, ids) in expected {
            for record in try await store.telemetry(of: device, limit: 100) {
                let index = Int(record.id) - 1
                #expect(ids.contains(record.id) && record.correlationID == "c\(index)")
                #expect(record.body == Array("{\"i\":\(index)}".utf8))
                #expect(record.receivedAt == Date(millis: Int64(index)))
                #expect(record.messageType == (index % 2 == 0 ? "telemetry" : nil))
            }
        }
        // New messages go above the mark until there are enough to index.
        expected[devices[1]]!.append(try await store.appendTelemetry(Self.message(devices[1], 40)))
        try await Self.check(store, expected, "one more")
    }

    /// Messages of several devices queued together (migration v26): each device's messages of a batch share a row,
    /// under consecutive ids in the order they were queued, and read back whole.
    @Test func aDevicesMessagesOfABatchShareARowInQueueOrder() async throws {
        let path = try Self.directory() + "/hub.sqlite"
        let store = try SQLiteHubStore(path: path)
        let devices = try ["a", "b", "c"].map { try DeviceID($0) }
        for device in devices {
            try await store.enroll(
                device: device, certificate: HubStoreTests.certificate(device.rawValue, device: device), at: Date())
        }
        let writes = (0..<60).map { index in
            (devices[index % 3], index, store.queueTelemetry(Self.message(devices[index % 3], index)))
        }
        var expected: [DeviceID: [Int64]] = [:]
        var indexOf: [Int64: Int] = [:]
        for (device, index, write) in writes {
            let id = try await write.value()
            #expect(expected[device]?.last.map { $0 < id } ?? true, "a device's ids follow its queue order")
            expected[device, default: []].append(id)
            indexOf[id] = index
        }
        try await Self.check(store, expected, "queued together")
        for device in devices {
            for record in try await store.telemetry(of: device, limit: 100) {
                let index = try #require(indexOf[record.id])
                #expect(record.body == Array(#"{"i":\#(index)}"#.utf8) && record.correlationID == "c\(index)")
            }
        }
        let rows = try await DatabasePool(path: path).read { db in
            try Row.fetchAll(db, sql: "SELECT first_id, device_id, count FROM telemetry_chunks ORDER BY first_id")
        }
        // The first message starts a batch of its own; the other 59 are queued while it commits.
        #expect(rows.count < 60 && rows.map { $0["count"] as Int }.reduce(0, +) == 60, "\(rows.count) rows")
        for row in rows {
            let first: Int64 = row["first_id"]
            let device = try DeviceID(row["device_id"] as String)
            for id in first..<(first + row["count"]) { #expect(expected[device]?.contains(id) == true) }
        }
    }

    /// A row whose bytes were damaged on disk is reported (the store unavailable, the row named), never read in
    /// part or past its end; the other devices' messages and every count still answer.
    @Test(arguments: [1, SQLiteHubStore.defaultIndexEvery])
    func aDamagedRowIsAnErrorNotAShortAnswer(indexEvery: Int64) async throws {
        let path = try Self.directory() + "/hub.sqlite"
        let store = try SQLiteHubStore(path: path, indexEvery: indexEvery)
        let devices = try ["a", "b"].map { try DeviceID($0) }
        var expected: [DeviceID: [Int64]] = [:]
        for device in devices {
            try await store.enroll(
                device: device, certificate: HubStoreTests.certificate(device.rawValue, device: device), at: Date())
            expected[device] = [try await store.appendTelemetry(Self.message(device, 0))]
        }
        #expect(
            try Self.indexState(path).indexed == (indexEvery == 1 ? 2 : 0), "the rows read through the index or not")
        let damages = [
            "substr(messages, 1, length(messages) - 1)", "messages || x'00'", "x''", "x'02' || substr(messages, 2)",
            "substr(messages, 1, 9) || x'ffffff7f' || substr(messages, 14)",
        ]
        for damage in damages {
            try await DatabasePool(path: path).write { db in
                try db.execute(
                    sql: "UPDATE telemetry_chunks SET messages = \(damage) WHERE device_id = 'a'")
            }
            let error = await #expect(throws: StoreError.self, "\(damage)") {
                _ = try await store.telemetry(of: devices[0], limit: 10)
            }
            #expect(error?.code == .unavailable && "\(error!)".contains("telemetry row \(expected[devices[0]]![0])"))
            #expect(try await store.telemetry(of: devices[1], limit: 10).map(\.id) == expected[devices[1]])
            #expect(try await store.telemetryCount(of: devices[0]) == 1)
            // Put the row back for the next damage.
            try await DatabasePool(path: path).write { db in
                var bytes: [UInt8] = []
                TelemetryChunk.start(&bytes)
                let message = Self.message(devices[0], 0)
                try TelemetryChunk.append(
                    receivedAtMillis: message.receivedAt.millis, correlationID: message.correlationID,
                    messageType: nil, body: message.body, to: &bytes)
                try db.execute(
                    sql: "UPDATE telemetry_chunks SET messages = ? WHERE device_id = 'a'", arguments: [Data(bytes)])
            }
            try await Self.check(store, expected, "repaired after \(damage)")
        }
    }

    /// Replays inside a batch (migration v26): a device's refused message takes no id and leaves no gap in its row,
    /// and the accepted ones around it are stored in order.
    @Test func aReplayInsideADevicesRowTakesNoId() async throws {
        let path = try Self.directory() + "/hub.sqlite"
        let store = try SQLiteHubStore(path: path)
        let devices = try ["a", "b"].map { try DeviceID($0) }
        for device in devices {
            try await store.enroll(
                device: device, certificate: HubStoreTests.certificate(device.rawValue, device: device), at: Date())
        }
        func counted(_ index: Int, _ counter: UInt64) -> NewTelemetry {
            var message = Self.message(devices[0], index)
            message.counter = counter
            return message
        }
        // The first write starts a batch of its own; the rest are queued while it commits.
        let first = store.queueTelemetry(Self.message(devices[1], 0))
        let writes = [counted(1, 5), counted(2, 6), counted(3, 5), counted(4, 7), counted(5, 6)].map {
            store.queueTelemetry($0)
        }
        _ = try await first.value()
        var stored: [Int64] = []
        for (index, write) in writes.enumerated() {
            if index == 2 || index == 4 {
                let error = await #expect(throws: StoreError.self) { try await write.value() }
                #expect(error?.code == .replayed)
            } else {
                stored.append(try await write.value())
            }
        }
        #expect(stored == stored.sorted() && Set(stored).count == 3)
        let records = try await store.telemetry(of: devices[0], limit: 10)
        #expect(records.map(\.id) == stored.reversed() && records.map(\.correlationID) == ["c4", "c2", "c1"])
        // An all-replay batch stores nothing and takes no id.
        await #expect(throws: StoreError.self) { try await store.appendTelemetry(counted(6, 7)) }
        let next = try await store.appendTelemetry(counted(7, 8))
        #expect(next == stored.last! + 1)
    }

    /// Where a device's messages are cut into rows: a row takes its first message whatever its size, then more only
    /// while it holds less than the limit, so no row outgrows what a reader of one message decodes (or SQLite's
    /// limit on a value) by more than one message.
    @Test func aDevicesMessagesAreCutIntoRowsAtTheLimit() {
        func rows(_ sizes: [Int], limit: Int) -> [Int] {
            var ends: [Int] = []
            var start = 0
            while start < sizes.count {
                let (end, bytes) = GroupCommitter.rowEnd(from: start, count: sizes.count, limit: limit) { sizes[$0] }
                #expect(bytes == 1 + sizes[start..<end].reduce(0, +))
                ends.append(end)
                start = end
            }
            return ends
        }
        #expect(rows([600, 600, 600, 600], limit: 1_000) == [2, 4])
        #expect(rows([10, 10, 10], limit: 1_000) == [3])
        #expect(rows([5_000, 10, 10], limit: 1_000) == [1, 3])
        #expect(rows([10, 5_000, 10], limit: 1_000) == [2, 3])
        #expect(rows([999, 1, 1], limit: 1_000) == [1, 3])
        #expect(rows([], limit: 1_000) == [])
    }

    /// Large messages of one device stored together: rows stay within the limit plus one message, under consecutive
    /// ids, and every message reads back whole (how the messages fall into batches depends on the writer's timing).
    @Test func largeMessagesOfOneDeviceReadBackWhole() async throws {
        let path = try Self.directory() + "/hub.sqlite"
        let store = try SQLiteHubStore(path: path)
        let device = try DeviceID("a")
        try await store.enroll(device: device, certificate: HubStoreTests.certificate("a", device: device), at: Date())
        let size = GroupCommitter.rowBytes * 3 / 5
        let messages = (0...4).map { index in
            var message = Self.message(device, index)
            if index > 0 { message.body = [UInt8](repeating: UInt8(index), count: size) }
            return message
        }
        let writes = messages.map { store.queueTelemetry($0) }
        var ids: [Int64] = []
        for write in writes { ids.append(try await write.value()) }
        #expect(ids == Array(ids[0]..<(ids[0] + 5)))
        let rows = try await DatabasePool(path: path).read { db in
            try Row.fetchAll(db, sql: "SELECT count, length(messages) AS bytes FROM telemetry_chunks ORDER BY first_id")
        }
        #expect(rows.map { $0["count"] as Int }.reduce(0, +) == 5 && rows.allSatisfy { ($0["count"] as Int) <= 2 })
        #expect(rows.allSatisfy { ($0["bytes"] as Int) < GroupCommitter.rowBytes + size + 100 })
        for limit in 1...5 {
            let records = try await store.telemetry(of: device, limit: limit)
            #expect(records.map(\.id) == Array(ids.reversed().prefix(limit)))
            let large = records.filter { $0.body.count == size }
            #expect(large.count == min(limit, 4))
            #expect(large.allSatisfy { $0.body == [UInt8](repeating: $0.body[0], count: size) })
            #expect(large.map { Int($0.body[0]) } == Array((1...4).reversed().prefix(limit)))
        }
    }
}
