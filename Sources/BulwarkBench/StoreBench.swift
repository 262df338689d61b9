import AllocationCounter
import ArgumentParser
import Core
import Foundation
import Hub
import PostgresTestSupport
import Store
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The telemetry store's group commit alone, in this process: what storing one device message costs beside the MQTT
/// and HTTP paths that call it (`bulwark-bench mqtt` measures the whole hub, where the store is 7-9 µs of a QoS 0
/// message's 14-16). Producers queue 200-byte messages as the MQTT listener's QoS 0 path does (`queueTelemetry`, the
/// outcome read by a callback on the committing thread, at most `--in-flight` outstanding), round-robin over
/// `--devices` enrolled devices, into a fresh SQLite store (WAL, `synchronous=FULL`, the hub's schema).
struct StoreBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "store",
        abstract: "The telemetry group commit alone: CPU, allocations and rate per stored message (SQLite).")
    @Option(help: "Messages to store (after a warm-up of a tenth as many).") var messages = 200_000
    @Option(help: "Devices the messages come from, in turn (a fleet: about one message per device per batch).")
    var devices = 50
    @Option(help: "Producer threads.") var producers = 2
    @Option(help: "Messages queued and not yet stored, at most (all producers).") var inFlight = 5000
    @Option(help: "Messages stored before the per-device index takes them in (the store's default).")
    var indexEvery = SQLiteHubStore.defaultIndexEvery
    @Option(help: "MQTT sessions to save, one to a transaction and then together (a fleet reconnecting at once).")
    var sessions = 2000
    @Flag(
        help: """
            Also save the sessions on PostgreSQL (a fresh database on the server `scripts/postgres start` describes \
            in BULWARK_TEST_POSTGRES_*, or on one this run starts and stops).
            """)
    var postgres = false

    func run() async throws {
        guard (1_000...5_000_000).contains(messages), (1...100_000).contains(devices), (1...16).contains(producers),
            (1...100_000).contains(inFlight), (1...100_000).contains(sessions)
        else {
            throw ValidationError(
                "messages 1,000-5,000,000, devices 1-100,000, producers 1-16, in-flight 1-100,000, sessions 1-100,000")
        }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("bulwark-storebench-\(UUID())")
            .path
        _ = try SecretFiles.makePrivateDirectory(directory)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let commits = Mutex((count: 0, messages: 0, durations: [Double]()))
        let store = try SQLiteHubStore(path: directory + "/hub.sqlite", indexEvery: indexEvery) { count, duration in
            commits.withLock {
                $0.count += 1
                $0.messages += count
                $0.durations.append(duration.seconds * 1000)
            }
        }
        var ids: [DeviceID] = []
        for index in 0..<devices {
            let id = try DeviceID("store-bench-\(index)")
            try await store.enroll(
                device: id,
                certificate: CertificateRecord(
                    serialHex: String(format: "%08x", index), subject: "urn:bulwark:device:\(id)", deviceID: id,
                    spkiSHA256Hex: String(repeating: "ab", count: 32), notBefore: Date(timeIntervalSince1970: 1000),
                    notAfter: Date(timeIntervalSince1970: 4_000_000_000), der: [1, 2, 3]),
                at: Date())
            ids.append(id)
        }
        print(
            "bulwark-bench store: \(messages) messages of 200 bytes from \(devices) devices in turn, \(producers) "
                + "producers, at most \(inFlight) in flight, SQLite (WAL, synchronous=FULL), index every \(indexEvery)")
        let warmUp = Self.measure(
            store: store, devices: ids, count: messages / 10, producers: producers, inFlight: inFlight)
        let before = commits.withLock { (count: $0.count, messages: $0.messages, durations: $0.durations.count) }
        let result = Self.measure(store: store, devices: ids, count: messages, producers: producers, inFlight: inFlight)
        let after = commits.withLock { $0 }
        guard warmUp.failures == 0, result.failures == 0 else {
            throw ValidationError("\(warmUp.failures + result.failures) messages not stored")
        }
        let stored = try await store.telemetryCount(of: nil)
        guard stored == messages + messages / 10 else { throw ValidationError("\(stored) rows stored") }
        let batches = after.count - before.count
        // The commits of the measured run, the longest among them the ones that also fill the per-device index.
        let durations = after.durations[before.durations...].sorted()
        /// Milliseconds of `read` for 200 devices in turn, sorted.
        func timed(_ read: (DeviceID) async throws -> Void) async throws -> [Double] {
            var times: [Double] = []
            for index in 0..<200 {
                let started = ContinuousClock.now
                try await read(ids[(index * 7919) % ids.count])
                times.append((ContinuousClock.now - started).seconds * 1000)
            }
            return times.sorted()
        }
        // What the per-device index's batching costs a reader: a device's latest 50 messages (the newest rows, up to
        // `indexEvery` of them, are found by rowid and filtered by device), and its count (`GET /v1/device` asks for
        // it: the index up to the mark plus the rows above it).
        let reads = try await timed { device in
            guard try await !store.telemetry(of: device, limit: 50).isEmpty else {
                throw ValidationError("no telemetry read back")
            }
        }
        let counts = try await timed { device in _ = try await store.telemetryCount(of: device) }
        print(
            String(
                format: "stored %d messages in %.2f s: %.0f msg/s, %.2f µs CPU per message (user %.2f, system %.2f), "
                    + "%.1f allocations per message, %d batches (%.0f messages each); a device's latest 50: "
                    + "%.2f ms median, %.2f ms 95th percentile; its count %.2f ms median; commits %.1f ms median, "
                    + "%.1f ms 99th percentile, %.1f ms longest",
                messages, result.wall, Double(messages) / result.wall, result.cpu / Double(messages) * 1e6,
                result.user / Double(messages) * 1e6, result.system / Double(messages) * 1e6,
                Double(result.allocations) / Double(messages), batches,
                Double(after.messages - before.messages) / Double(max(batches, 1)), reads[reads.count / 2],
                reads[reads.count * 95 / 100], counts[counts.count / 2], durations[durations.count / 2],
                durations[durations.count * 99 / 100], durations.last ?? .nan))
        try await Self.measureSessions(store: store, count: sessions, on: "SQLite")
        if postgres {
            let store = try await PostgresTestServer.freshStore()
            try await Self.measureSessions(store: store, count: sessions, on: "PostgreSQL")
            try await store.close()
        }
    }

    /// Saving `count` changed MQTT sessions (a 300-byte state each, as a device subscribed to its commands with a
    /// few queued), one to a transaction and then `MQTTSessionChange.perTransaction` to one, as `MQTTPersistence`
    /// writes them: each commit is an fsync (SQLite's `synchronous=FULL`, PostgreSQL's `synchronous_commit`).
    static func measureSessions(store: any HubStore, count: Int, on backend: String) async throws {
        let sessions = (0..<count).map { index in
            StoredMQTTSession(
                key: "urn:bulwark:device:store-bench-\(index) agent", owner: "urn:bulwark:device:store-bench-\(index)",
                expirySeconds: 86_400, disconnectedAt: Date(), state: [UInt8](repeating: 7, count: 300),
                savedAt: Date())
        }
        var started = ContinuousClock.now
        for session in sessions {
            guard try await store.saveMQTTSession(session, holder: "bench", release: false) else {
                throw ValidationError("session not saved")
            }
        }
        let alone = (ContinuousClock.now - started).seconds
        started = ContinuousClock.now
        for start in stride(from: 0, to: count, by: MQTTSessionChange.perTransaction) {
            let end = min(start + MQTTSessionChange.perTransaction, count)
            // Saved before (above), as the hub marks the sessions whose row it holds: an update of that row only.
            let changes = sessions[start..<end].map { MQTTSessionChange(key: $0.key, session: $0, stored: true) }
            guard try await store.saveMQTTSessions(changes, holder: "bench", release: false).isEmpty else {
                throw ValidationError("sessions not saved")
            }
        }
        let together = (ContinuousClock.now - started).seconds
        print(
            String(
                format: "%@: saved %d MQTT sessions one to a transaction in %.0f ms (%.2f ms each), %d to a "
                    + "transaction in %.0f ms (%.3f ms each): %.0f times faster",
                backend, count, alone * 1000, alone * 1000 / Double(count), MQTTSessionChange.perTransaction,
                together * 1000,
                together * 1000 / Double(count), alone / together))
    }

    struct Result {
        var wall: Double
        var cpu: Double
        var user: Double
        var system: Double
        var allocations: UInt
        var failures: Int
    }

    /// Queues `count` messages from `producers` threads and waits until every one is stored.
    static func measure(store: SQLiteHubStore, devices: [DeviceID], count: Int, producers: Int, inFlight: Int)
        -> Result
    {
        let body = Array(repeating: UInt8(ascii: "x"), count: 200)
        // A producer blocks (a futex, not a spin, which would count in the process's CPU) while `inFlight` are
        // outstanding.
        let slots = DispatchSemaphore(value: inFlight)
        // One reader for every write, named when it is queued: as the MQTT listener reads a connection's writes.
        let reader = Counting(slots)
        let (user0, system0) = processCPU()
        let allocations0 = bulwark_allocation_count()
        let start = ContinuousClock.now
        let threads = (0..<producers).map { producer in
            Thread {
                var index = producer
                while index < count {
                    // Back-pressure as the MQTT listener's QoS 0 path: wait while too many are outstanding.
                    slots.wait()
                    let message = NewTelemetry(
                        deviceID: devices[index % devices.count], receivedAt: Date(),
                        correlationID: CorrelationID().rawValue, body: body, messageType: "telemetry")
                    store.queueTelemetry(message, reader: reader)
                    index += producers
                }
            }
        }
        for thread in threads { thread.start() }
        while reader.done.load(ordering: .relaxed) < count { usleep(1000) }
        let wall = (ContinuousClock.now - start).seconds
        let (user1, system1) = processCPU()
        return Result(
            wall: wall, cpu: (user1 - user0) + (system1 - system0), user: user1 - user0, system: system1 - system0,
            allocations: bulwark_allocation_count() &- allocations0, failures: reader.failures.load(ordering: .relaxed))
    }

    /// Counts the writes done and failed, and frees a producer's slot for each.
    final class Counting: PendingResultReader {
        let done = Atomic(0)
        let failures = Atomic(0)
        let slots: DispatchSemaphore

        init(_ slots: DispatchSemaphore) { self.slots = slots }

        func resolved(_ result: Swift.Result<Int64, any Error>, of _: TelemetryQueue.Entry) {
            if case .failure = result { failures.add(1, ordering: .relaxed) }
            done.add(1, ordering: .relaxed)
            slots.signal()
        }
    }

    static func processCPU() -> (user: Double, system: Double) {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return (
            Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6,
            Double(usage.ru_stime.tv_sec) + Double(usage.ru_stime.tv_usec) / 1e6
        )
    }
}
