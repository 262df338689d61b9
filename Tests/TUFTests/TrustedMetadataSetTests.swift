import JSON
import TUF
import Testing

@Suite struct TrustedMetadataSetTests {
    let m = TestRepository.metadataURL

    func file(_ repo: TestRepository, _ name: String) throws -> [UInt8] {
        try need(repo.fetcher.files.withLock { $0[m + name] })
    }

    func loadedSet(_ repo: TestRepository) throws -> TrustedMetadataSet {
        var set = try TrustedMetadataSet(rootBytes: file(repo, "1.root.json"), referenceTime: testNow)
        try set.updateTimestamp(file(repo, "timestamp.json"))
        try set.updateSnapshot(file(repo, "snapshot.json"))
        try set.updateTargets(file(repo, "targets.json"))
        return set
    }

    @Test func acceptsAValidRepository() throws {
        let set = try loadedSet(TestRepository())
        #expect(set.targets?.signed.common.version == 1)
    }

    @Test func rejectsTimestampRollback() throws {
        let repo = TestRepository()
        let old = try file(repo, "timestamp.json")
        repo.bump()
        var set = try TrustedMetadataSet(rootBytes: file(repo, "1.root.json"), referenceTime: testNow)
        try set.updateTimestamp(file(repo, "timestamp.json"))
        #expect(throws: TUFError(.badVersion, "")) { try set.updateTimestamp(old) }
    }

    @Test func equalTimestampVersionIsReportedSeparately() throws {
        let repo = TestRepository()
        var set = try TrustedMetadataSet(rootBytes: file(repo, "1.root.json"), referenceTime: testNow)
        try set.updateTimestamp(file(repo, "timestamp.json"))
        #expect(throws: TUFError(.equalVersion, "")) { try set.updateTimestamp(file(repo, "timestamp.json")) }
    }

    @Test func rejectsExpiredTimestampWithOneFixedReferenceTime() throws {
        let repo = TestRepository()
        repo.timestampExpires = "2020-01-01T00:00:00Z"
        repo.publish()
        var set = try TrustedMetadataSet(rootBytes: file(repo, "1.root.json"), referenceTime: testNow)
        #expect(throws: TUFError(.expired, "")) { try set.updateTimestamp(file(repo, "timestamp.json")) }
    }

    @Test func rejectsRootThatSkipsAVersion() throws {
        let repo = TestRepository()
        repo.rootVersion = 3
        repo.publish()
        var set = try TrustedMetadataSet(rootBytes: file(repo, "1.root.json"), referenceTime: testNow)
        #expect(throws: TUFError(.badVersion, "")) { try set.updateRoot(file(repo, "3.root.json")) }
    }

    @Test func rejectsRootNotSignedByOldKeys() throws {
        let repo = TestRepository()
        repo.rootSigner = TestSigner()
        repo.rootVersion = 2
        repo.publish()
        var set = try TrustedMetadataSet(rootBytes: file(repo, "1.root.json"), referenceTime: testNow)
        #expect(throws: TUFError(.thresholdNotReached, "")) { try set.updateRoot(file(repo, "2.root.json")) }
    }

    @Test func rejectsSnapshotWithWrongHash() throws {
        let repo = TestRepository()
        var set = try TrustedMetadataSet(rootBytes: file(repo, "1.root.json"), referenceTime: testNow)
        try set.updateTimestamp(file(repo, "timestamp.json"))
        var snap = try file(repo, "snapshot.json")
        snap.append(0x20)
        #expect(throws: TUFError(.lengthOrHashMismatch, "")) { try set.updateSnapshot(snap) }
    }

    @Test func rejectsWrongType() throws {
        let repo = TestRepository()
        var set = try TrustedMetadataSet(rootBytes: file(repo, "1.root.json"), referenceTime: testNow)
        #expect(throws: TUFError(.wrongType, "")) { try set.updateTimestamp(file(repo, "snapshot.json")) }
    }

    @Test func rejectsRoleRemovalFromSnapshot() throws {
        let repo = TestRepository()
        repo.addDelegation(from: "targets", to: "a")
        repo.bump(["targets"])
        var set = try TrustedMetadataSet(rootBytes: file(repo, "1.root.json"), referenceTime: testNow)
        try set.updateTimestamp(file(repo, "timestamp.json"))
        try set.updateSnapshot(file(repo, "snapshot.json"))
        repo.roleOrder.removeAll { $0 == "a" }
        repo.bump()
        var set2 = set
        // Rebuild a set that trusts the old snapshot as local, then offer the new one.
        set2 = try TrustedMetadataSet(rootBytes: file(repo, "1.root.json"), referenceTime: testNow)
        let oldSnapshot = try file(repo, "2.snapshot.json")
        try set2.updateTimestamp(file(repo, "timestamp.json"))
        _ = try? set2.updateSnapshot(oldSnapshot, trusted: true)
        #expect(throws: TUFError(.repository, "")) { try set2.updateSnapshot(file(repo, "snapshot.json")) }
        _ = set
    }

    @Test func roundTripsUnknownFields() throws {
        let text =
            #"{"signatures":[],"signed":{"_type":"timestamp","custom":{"x":[1,"y"]},"expires":"2030-01-01T00:00:00Z","meta":{"snapshot.json":{"extra":true,"version":1}},"spec_version":"1.0","version":1},"top":1}"#
        let md = try Metadata<Timestamp>.parse(Array(text.utf8))
        #expect(try CanonicalJSON.encode(md.jsonValue) == Array(text.utf8))
        let repo = TestRepository()
        let root = try Metadata<Root>.parse(file(repo, "1.root.json"))
        #expect(try CanonicalJSON.encode(root.jsonValue) == file(repo, "1.root.json"))
    }
}

/// Malformed metadata must fail with a `TUFError` (never crash) at every entry point.
@Suite struct MalformedMetadataTests {
    static func mutations() -> [(String, [UInt8])] {
        let repo = TestRepository()
        let root = repo.rootJSON()
        guard let signed = root.objectValue else { return [] }
        var cases: [(String, [UInt8])] = [
            ("empty", []), ("null", Array("null".utf8)), ("array", Array("[]".utf8)),
            ("truncated", Array("{\"signed\":".utf8)),
            ("binary", [0xFF, 0xFE, 0x00, 0x01]), ("no signed", Array(#"{"signatures":[]}"#.utf8)),
            ("signatures not array", Array(#"{"signed":{},"signatures":{}}"#.utf8)),
        ]
        func variant(_ name: String, _ change: (inout JSONObject) -> Void) {
            var o = signed
            change(&o)
            cases.append((name, envelope(.object(o), [repo.rootSigner])))
        }
        for key in ["_type", "spec_version", "version", "expires", "keys", "roles"] {
            variant("missing \(key)") { o in o = o.removing([key]) }
        }
        variant("version string") { $0.set("version", .string("2")) }
        variant("version zero") { $0.set("version", .integer(0)) }
        variant("version negative") { $0.set("version", .integer(-1)) }
        variant("version float") { $0.set("version", .float("1.0")) }
        variant("expires date only") { $0.set("expires", .string("2030-01-01")) }
        variant("expires bad month") { $0.set("expires", .string("2030-13-01T00:00:00Z")) }
        variant("expires integer") { $0.set("expires", .integer(5)) }
        variant("spec major 2") { $0.set("spec_version", .string("2.0.0")) }
        variant("spec garbage") { $0.set("spec_version", .string("one")) }
        variant("keys array") { $0.set("keys", .array([])) }
        variant("roles missing targets") { o in
            var r = o["roles"]?.objectValue ?? JSONObject()
            r = r.removing(["targets"])
            o.set("roles", .object(r))
        }
        variant("threshold zero") { o in
            var r = o["roles"]?.objectValue ?? JSONObject()
            r.set("root", obj(["keyids": .array([]), "threshold": .integer(0)]))
            o.set("roles", .object(r))
        }
        variant("keyids not strings") { o in
            var r = o["roles"]?.objectValue ?? JSONObject()
            r.set("root", obj(["keyids": .array([.integer(1)]), "threshold": .integer(1)]))
            o.set("roles", .object(r))
        }
        variant("key without keyval") { o in
            var k = JSONObject()
            k.set("abc", obj(["keytype": .string("ed25519"), "scheme": .string("ed25519")]))
            o.set("keys", .object(k))
        }
        variant("float in custom field") { $0.set("x-custom", .float("0.5")) }
        return cases
    }

    @Test func refusedAsRoot() {
        for (name, data) in Self.mutations() {
            do {
                _ = try TrustedMetadataSet(rootBytes: data, referenceTime: testNow)
                Issue.record("accepted malformed root: \(name)")
            } catch {
                #expect(!error.description.isEmpty, "\(name)")
            }
        }
    }

    @Test func refusedAsOtherRoles() throws {
        let repo = TestRepository()
        let rootBytes = try need(repo.fetcher.files.withLock { $0[TestRepository.metadataURL + "1.root.json"] })
        for (name, data) in Self.mutations() {
            var set = try TrustedMetadataSet(rootBytes: rootBytes, referenceTime: testNow)
            #expect(throws: TUFError.self, "\(name)") { try set.updateRoot(data) }
            #expect(throws: TUFError.self, "\(name)") { try set.updateTimestamp(data) }
            #expect(throws: TUFError.self, "\(name)") { try Metadata<Snapshot>.parse(data) }
            #expect(throws: TUFError.self, "\(name)") { try Metadata<Targets>.parse(data) }
        }
    }
}

@Suite struct MutationTests {
    /// Byte-level mutations of valid metadata never crash: each is accepted or refused with a
    /// `TUFError`. (Deterministic generator; this is a smoke fuzzer, not a crypto primitive.)
    @Test func randomByteMutationsNeverCrash() throws {
        let repo = TestRepository()
        let valid = try need(repo.fetcher.files.withLock { $0[TestRepository.metadataURL + "1.root.json"] })
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        func next() -> UInt64 {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return state >> 33
        }
        var refused = 0
        for _ in 0..<2000 {
            var data = valid
            for _ in 0..<(1 + Int(next() % 3)) {
                let i = Int(next() % UInt64(data.count))
                switch next() % 3 {
                case 0: data[i] = UInt8(truncatingIfNeeded: next())
                case 1: data.remove(at: i)
                default: data.insert(UInt8(truncatingIfNeeded: next()), at: i)
                }
            }
            do {
                _ = try TrustedMetadataSet(rootBytes: data, referenceTime: testNow)
            } catch {
                refused += 1
            }
        }
        #expect(refused > 1500)
    }

    /// A very large object parses in linear time (no quadratic duplicate-key check).
    @Test func largeObjectsParseQuickly() throws {
        var text = "{"
        for i in 0..<200_000 { text += (i == 0 ? "" : ",") + "\"k\(i)\":\(i)" }
        text += "}"
        let start = ContinuousClock.now
        let v = try TUFJSON.parse(Array(text.utf8))
        #expect(v.objectValue?.count == 200_000)
        #expect(ContinuousClock.now - start < .seconds(20))
    }
}
