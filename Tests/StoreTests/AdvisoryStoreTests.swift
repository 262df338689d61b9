import Advisories
import Foundation
import Store
import Testing

/// The advisory database (its own SQLite file) and the hub store's waivers and gated releases.
@Suite struct AdvisoryStoreTests {
    static func record(_ id: String, modified: String, name: String = "requests", fixed: String = "2.0") -> [UInt8] {
        Array(
            """
            {"id":"\(id)","modified":"\(modified)","affected":[
              {"package":{"ecosystem":"PyPI","name":"\(name)"},"ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"0"},{"fixed":"\(fixed)"}]}]},
              {"package":{"ecosystem":"PyPI","name":"\(name)"},"versions":["0.1"]},
              {"package":{"ecosystem":"Hackage","name":"aeson"}}]}
            """.utf8)
    }

    static func parsed(_ bytes: [UInt8]) throws -> (record: OSVRecord, body: [UInt8]) {
        (try OSVRecord(json: bytes), bytes)
    }

    @Test func importsKeepTheNewerRecordAndIndexByPackage() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("bulwark-osv-\(UUID())").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let database = try AdvisoryDatabase(path: directory + "/advisories.db")
        let first = try database.importRecords(
            [
                try Self.parsed(Self.record("PYSEC-1", modified: "2026-01-01T00:00:00Z")),
                try Self.parsed(Self.record("PYSEC-2", modified: "2026-01-01T00:00:00Z", name: "Flask")),
            ], at: Date())
        #expect(first == .init(added: 2, replaced: 0, unchanged: 0))
        #expect(try database.records(ecosystem: .pypi, name: "requests").map(\.id) == ["PYSEC-1"])
        #expect(try database.records(ecosystem: .pypi, name: "flask").map(\.id) == ["PYSEC-2"], "PEP 503 names")
        #expect(try database.records(ecosystem: .npm, name: "requests").isEmpty)

        // An older copy changes nothing; a newer one replaces it, and its new package index with it.
        let second = try database.importRecords(
            [
                try Self.parsed(Self.record("PYSEC-1", modified: "2025-01-01T00:00:00Z", fixed: "9.0")),
                try Self.parsed(Self.record("PYSEC-2", modified: "2026-06-01T00:00:00Z", name: "django")),
            ], at: Date())
        #expect(second == .init(added: 0, replaced: 1, unchanged: 1))
        #expect(
            try database.records(ecosystem: .pypi, name: "requests").first.map { record in
                record.affected.flatMap { record.fixes(for: $0) }
            } == ["2.0"], "the older import did not replace it")
        #expect(try database.records(ecosystem: .pypi, name: "flask").isEmpty)
        #expect(try database.records(ecosystem: .pypi, name: "django").map(\.id) == ["PYSEC-2"])
        #expect(try database.summary().records == 2)

        // Reopened (another process: the hub), the same.
        let reopened = try AdvisoryDatabase(path: directory + "/advisories.db")
        #expect(try reopened.records(ecosystem: .pypi, name: "django").map(\.id) == ["PYSEC-2"])
        #expect(try reopened.summary().importedAt != nil)
    }

    @Test(arguments: HubStoreTests.Backend.allCases)
    func waiversAndReleasesAreKept(_ backend: HubStoreTests.Backend) async throws {
        let (store, _) = try await HubStoreTests.open(backend)
        let waiver = Waiver(
            advisory: "GHSA-1", purl: "pkg:npm/a", reason: "not reachable", until: 2_000_000_000, by: "ops")
        try await store.addWaiver(waiver)
        #expect(try await store.waivers() == [waiver])
        let release = ReleaseRecord(
            target: "fw.tar", sha256: String(repeating: "a", count: 64), version: "1.0", securityVersion: 1,
            sbom: [1, 2], vex: nil, report: [3], reportSHA256: String(repeating: "b", count: 64), blocked: true,
            at: Date(timeIntervalSince1970: 1_800_000_000), by: "ops")
        try await store.recordRelease(release)
        var passed = release
        passed.blocked = false
        passed.vex = [4]
        try await store.recordRelease(passed)
        var other = release
        other.target = "fw2.tar"
        try await store.recordRelease(other)
        #expect(try await store.releases() == [passed, other], "the same bytes gated again replace the first run")
    }
}
