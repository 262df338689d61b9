import Crypto
import Foundation
import Store
import Testing

/// The keyed audit chain and its anchors, attacked as someone who can rewrite the database but holds neither the
/// audit key nor the key that signs anchors.
@Suite struct KeyedAuditTests {
    typealias Backend = HubStoreTests.Backend

    static func key(keyedFrom: Int64? = nil) throws -> AuditKey {
        try AuditKey(bytes: (0..<32).map { UInt8($0) }, keyedFrom: keyedFrom)
    }

    static func event(_ index: Int) -> SecurityEvent {
        SecurityEvent(
            at: Date(timeIntervalSince1970: 1_796_000_000 + Double(index)), kind: "event-\(index)",
            identity: "urn:bulwark:device:d\(index)", source: "127.0.0.1", correlationID: "c\(index)",
            detail: "detail number \(index)")
    }

    /// A keyed log of `count` records from the in-memory store.
    static func keyedLog(_ count: Int = 5) async throws -> [AuditRecord] {
        let store = InMemoryHubStore()
        try await store.setAuditKey(try key())
        for index in 1...count { try await store.recordSecurityEvent(event(index)) }
        return try await store.auditRecords(after: 0, limit: 100)
    }

    /// What an attacker without the key can do: change one record, then recompute its hash and every hash (and link)
    /// after it, so the unkeyed chain verifies again. The MACs stay as they were: they cannot be recomputed.
    static func editAndRehash(_ records: [AuditRecord], at index: Int) -> [AuditRecord] {
        var forged = records
        forged[index].event.detail = "nothing happened here"
        for position in index..<forged.count {
            if position > index { forged[position].previousHash = forged[position - 1].hash }
            forged[position].hash = AuditChain.hash(
                sequence: forged[position].sequence, event: forged[position].event,
                previous: forged[position].previousHash)
        }
        return forged
    }

    @Test(arguments: Backend.allCases)
    func bothBackendsWriteMACsThatVerify(_ backend: Backend) async throws {
        let (store, _) = try await HubStoreTests.open(backend)
        try await store.setAuditKey(try Self.key(keyedFrom: 1))
        for index in 1...5 { try await store.recordSecurityEvent(Self.event(index)) }
        let records = try await store.auditRecords(after: 0, limit: 100)
        #expect(records.allSatisfy { $0.mac?.count == 32 })
        let summary = try AuditChain.verify(records, key: try Self.key(keyedFrom: 1)).get()
        #expect(summary.count == 5 && summary.keyed == 5 && summary.unkeyed == 0 && summary.macsChecked)
        #expect(summary.head == records.last?.hash)
        try await store.close()
    }

    @Test func aReHashedEditPassesTheUnkeyedChainButFailsItsMAC() async throws {
        let forged = Self.editAndRehash(try await Self.keyedLog(), at: 2)
        #expect(AuditChain.verify(forged) == nil, "the attack beats the hash chain alone")
        guard case .failure(let failure) = AuditChain.verify(forged, key: try Self.key()) else {
            Issue.record("a re-hashed edit verified under the key")
            return
        }
        #expect(failure.sequence == 3)
        #expect(failure.reason.contains("MAC"))
    }

    @Test func anotherKeyFailsTheFirstRecord() async throws {
        let records = try await Self.keyedLog()
        let other = try AuditKey(bytes: [UInt8](repeating: 7, count: 32))
        guard case .failure(let failure) = AuditChain.verify(records, key: other) else {
            Issue.record("verified under the wrong key")
            return
        }
        #expect(failure.sequence == 1)
    }

    /// Stripping MACs to pass keyed records off as written before the key existed.
    @Test func removedMACsAreRefused() async throws {
        let records = try await Self.keyedLog()
        var tailStripped = records
        tailStripped[4].mac = nil
        #expect(AuditChain.verify(tailStripped)?.sequence == 5)
        #expect(AuditChain.verify(tailStripped)?.reason.contains("MAC was removed") == true)
        let allStripped = records.map {
            var record = $0
            record.mac = nil
            return record
        }
        // A key the hub created knows where its protection starts.
        guard case .failure(let failure) = AuditChain.verify(allStripped, key: try Self.key(keyedFrom: 1)) else {
            Issue.record("a fully stripped log verified against a key that protects it from record 1")
            return
        }
        #expect(failure.sequence == 1)
        // An operator-made key does not; an anchor does.
        let anchor = AuditAnchor.Checkpoint(of: records, at: Date())
        guard case .failure(let anchored) = AuditChain.verify(allStripped, key: try Self.key(), anchors: [anchor])
        else {
            Issue.record("a fully stripped log verified against an anchor taken while it was keyed")
            return
        }
        #expect(anchored.sequence == 1)
    }

    @Test(arguments: Backend.allCases)
    func recordsFromBeforeTheKeyAreAnUnkeyedPrefix(_ backend: Backend) async throws {
        let (store, _) = try await HubStoreTests.open(backend)
        for index in 1...2 { try await store.recordSecurityEvent(Self.event(index)) }
        try await store.setAuditKey(try Self.key(keyedFrom: 3))
        for index in 3...5 { try await store.recordSecurityEvent(Self.event(index)) }
        let records = try await store.auditRecords(after: 0, limit: 100)
        let summary = try AuditChain.verify(records, key: try Self.key(keyedFrom: 3)).get()
        #expect(summary.unkeyed == 2 && summary.keyed == 3)
        try await store.close()
    }

    /// A store opened without the key (a tool, an old binary) refuses to append to a keyed log: its record would
    /// read as tampering.
    @Test func aKeyedLogIsNotAppendedToWithoutTheKey() async throws {
        let (store, directory) = try await HubStoreTests.open(.sqlite)
        try await store.setAuditKey(try Self.key())
        try await store.recordSecurityEvent(Self.event(1))
        try await store.close()
        let reopened = try SQLiteHubStore(path: directory + "/test.sqlite")
        await #expect(throws: StoreError(.unavailable, "")) { try await reopened.recordSecurityEvent(Self.event(2)) }
        try await reopened.setAuditKey(try Self.key())
        try await reopened.recordSecurityEvent(Self.event(2))
        #expect(
            try AuditChain.verify(try await reopened.auditRecords(after: 0, limit: 10), key: Self.key()).get().keyed
                == 2)
        try await reopened.close()
    }

    @Test func theKeyFileRoundTripsAndNeverPrintsTheKey() throws {
        let (key, text) = AuditKey.generate(keyedFrom: 42)
        let parsed = try AuditKey(fileText: text)
        #expect(parsed.keyedFrom == 42)
        let hash = [UInt8](repeating: 1, count: 32)
        #expect(parsed.isValid(mac: key.mac(for: hash), for: hash))
        let secret = try #require(text.split(separator: "\n").first)
        #expect(!"\(key)".contains(secret) && !String(reflecting: key).contains(secret))
        #expect(throws: StoreError(.invalid, "")) {
            try AuditKey(fileText: Data(repeating: 1, count: 16).base64EncodedString())
        }
        #expect(throws: StoreError(.invalid, "")) { try AuditKey(fileText: "not base64!\n") }
    }

    // MARK: anchors

    @Test func anAnchorRoundTripsThroughItsFileAndVerifies() async throws {
        let records = try await Self.keyedLog()
        let signer = P256.Signing.PrivateKey()
        let anchor = try AuditAnchor(
            signing: AuditAnchor.Checkpoint(of: records, at: Date()), with: signer)
        let parsed = try AuditAnchor(json: anchor.json)
        #expect(parsed == anchor)
        let checkpoint = try #require(parsed.verified(by: signer.publicKey))
        #expect(checkpoint.count == 5 && checkpoint.head == records[4].hash && checkpoint.unkeyed == 0)
        let summary = try AuditChain.verify(records, key: try Self.key(), anchors: [checkpoint]).get()
        #expect(summary.anchors == 1)
        // The log goes on growing past its anchor.
        let longer = try await Self.keyedLog(8)
        #expect(throws: Never.self) { try AuditChain.verify(longer, key: try Self.key(), anchors: [checkpoint]).get() }
    }

    @Test func truncationBehindAnAnchorIsRefused() async throws {
        let records = try await Self.keyedLog(8)
        let anchor = AuditAnchor.Checkpoint(of: records, at: Date())
        let truncated = Array(records.prefix(6))
        #expect(AuditChain.verify(truncated) == nil, "a cut tail is a valid shorter chain")
        guard case .failure(let failure) = AuditChain.verify(truncated, key: try Self.key(), anchors: [anchor]) else {
            Issue.record("a log truncated behind its anchor verified")
            return
        }
        #expect(failure.sequence == 7)
        #expect(failure.reason.contains("truncated"))
    }

    /// Even without the key (verifying off the machine), a re-hashed edit before the anchor changes its head.
    @Test func aRewriteBeforeTheAnchorIsRefusedWithoutTheKey() async throws {
        let records = try await Self.keyedLog(8)
        let anchor = AuditAnchor.Checkpoint(of: Array(records.prefix(6)), at: Date())
        let forged = Self.editAndRehash(records, at: 1)
        guard case .failure(let failure) = AuditChain.verify(forged, key: nil, anchors: [anchor]) else {
            Issue.record("a rewrite before the anchor verified")
            return
        }
        #expect(failure.sequence == 6)
        #expect(failure.reason.contains("head hash"))
    }

    @Test func aForgedOrAlteredAnchorIsRefused() async throws {
        let records = try await Self.keyedLog()
        let hubKey = P256.Signing.PrivateKey()
        let checkpoint = AuditAnchor.Checkpoint(of: records, at: Date())
        let forged = try AuditAnchor(signing: checkpoint, with: P256.Signing.PrivateKey())
        #expect(forged.verified(by: hubKey.publicKey) == nil)
        // A genuine anchor whose count was lowered (to bless a truncation) no longer verifies.
        let genuine = try AuditAnchor(signing: checkpoint, with: hubKey)
        let text = String(decoding: genuine.json, as: UTF8.self).replacingOccurrences(
            of: "\"count\" : 5", with: "\"count\" : 3")
        #expect(text != String(decoding: genuine.json, as: UTF8.self))
        #expect(try AuditAnchor(json: Array(text.utf8)).verified(by: hubKey.publicKey) == nil)
        #expect(throws: StoreError(.invalid, "")) { try AuditAnchor(json: Array("{\"count\":1}".utf8)) }
    }
}
