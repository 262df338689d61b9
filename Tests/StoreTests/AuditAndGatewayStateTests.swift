import Core
import Foundation
import Store
import Testing

@Suite struct AuditAndGatewayStateTests {
    typealias Backend = HubStoreTests.Backend

    func fill(_ store: any HubStore, count: Int = 5) async throws {
        for index in 1...count {
            try await store.recordSecurityEvent(
                SecurityEvent(
                    at: Date(timeIntervalSince1970: 1_796_000_000 + Double(index)), kind: "event-\(index)",
                    identity: "urn:bulwark:device:d\(index)", source: "127.0.0.1", correlationID: "c\(index)",
                    detail: "detail number \(index)"))
        }
    }

    @Test(arguments: Backend.allCases)
    func theAuditLogIsAnUnbrokenChain(_ backend: Backend) async throws {
        let (store, _) = try await HubStoreTests.open(backend)
        try await fill(store)
        let records = try await store.auditRecords(after: 0, limit: 100)
        #expect(records.map(\.sequence) == [1, 2, 3, 4, 5])
        #expect(records.first?.previousHash == AuditChain.genesis)
        #expect(AuditChain.verify(records) == nil)
        #expect(try await store.auditRecords(after: 3, limit: 100).map(\.sequence) == [4, 5])
    }

    @Test func everyKindOfTamperingNamesTheFirstBadRecord() async throws {
        let (store, _) = try await HubStoreTests.open(.memory)
        try await fill(store)
        let records = try await store.auditRecords(after: 0, limit: 100)
        var edited = records
        edited[2].event.detail = "detail number 4"
        #expect(AuditChain.verify(edited)?.sequence == 3)
        var deleted = records
        deleted.remove(at: 1)
        #expect(AuditChain.verify(deleted)?.sequence == 3)
        var reordered = records
        reordered.swapAt(1, 2)
        #expect(AuditChain.verify(reordered)?.sequence == 3)
        var inserted = records
        var forged = records[1]
        forged.sequence = 3
        inserted.insert(forged, at: 2)
        #expect(AuditChain.verify(inserted)?.sequence == 3)
        var rehashed = records
        rehashed[3].event.kind = "innocent"
        rehashed[3].hash = AuditChain.hash(sequence: 4, event: rehashed[3].event, previous: rehashed[3].previousHash)
        #expect(AuditChain.verify(rehashed)?.sequence == 5, "re-hashing one record breaks the link of the next")
    }

    /// One byte changed in the database file itself (not through SQL) is found and named.
    @Test func aByteChangedInTheSQLiteFileIsFound() async throws {
        let (store, directory) = try await HubStoreTests.open(.sqlite)
        try await fill(store)
        try await store.close()
        let path = directory + "/test.sqlite"
        var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        let needle = Data("detail number 3".utf8)
        let range = try #require(bytes.range(of: needle))
        bytes[range.upperBound - 1] = UInt8(ascii: "8")
        try bytes.write(to: URL(fileURLWithPath: path))
        let reopened = try SQLiteHubStore(path: path)
        let failure = AuditChain.verify(try await reopened.auditRecords(after: 0, limit: 100))
        #expect(failure?.sequence == 3)
        try await reopened.close()
    }

    @Test(arguments: Backend.allCases)
    func replayStateQuarantinesAndSchemasPersist(_ backend: Backend) async throws {
        let (store, _) = try await HubStoreTests.open(backend)
        let a = try DeviceID("a")
        let now = Int64(Date().timeIntervalSince1970)
        try await store.enroll(device: a, certificate: HubStoreTests.certificate("01", device: a), at: Date())
        _ = try await store.appendTelemetry(
            NewTelemetry(
                deviceID: a, receivedAt: Date(), correlationID: "x", body: [123, 125],
                nonce: StoredNonce(nonce: "n1", expiresAt: now + 200),
                counterWindow: StoredCounterWindow(highest: 9, seen: 3)))
        try await store.recordNonce(device: a, nonce: StoredNonce(nonce: "n2", expiresAt: now + 50))
        #expect(try await store.liveNonces(now: now + 100).map(\.1.nonce) == ["n1"])
        #expect(try await store.counterWindows().first?.1 == StoredCounterWindow(highest: 9, seen: 3))
        _ = try await store.appendTelemetry(
            NewTelemetry(
                deviceID: a, receivedAt: Date(), correlationID: "y", body: [123, 125],
                counterWindow: StoredCounterWindow(highest: UInt64.max, seen: 1 << 63)))
        #expect(try await store.counterWindows().first?.1 == StoredCounterWindow(highest: UInt64.max, seen: 1 << 63))
        // A write that commits late (an older window) never moves the stored window backwards.
        _ = try await store.appendTelemetry(
            NewTelemetry(
                deviceID: a, receivedAt: Date(), correlationID: "z", body: [123, 125],
                counterWindow: StoredCounterWindow(highest: 12, seen: 1)))
        #expect(try await store.counterWindows().first?.1 == StoredCounterWindow(highest: UInt64.max, seen: 1 << 63))
        try await store.setQuarantine(a, until: 5_000)
        #expect(try await store.quarantines().first?.1 == 5_000)
        try await store.setQuarantine(a, until: nil)
        #expect(try await store.quarantines().isEmpty)
        try await store.putSchema(name: "telemetry", body: [1], at: Date())
        try await store.putSchema(name: "telemetry", body: [2], at: Date())
        #expect(try await store.schemas().map(\.1) == [[2]])
    }
}
