import Foundation
import GRDB
import Testing

@testable import Store

/// Every SQLite file of the hub commits with `synchronous = FULL` on the connection that writes: an acknowledged
/// message, once committed, survives a power loss, not only a process kill. GRDB's `DatabasePool` sets its writer to
/// `NORMAL` after `prepareDatabase` (no fsync at a WAL commit), which had silently replaced the store's `FULL`.
@Suite struct SQLiteDurabilityTests {
    static func path(_ name: String) throws -> String {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("bulwark-durability-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        return directory.appendingPathComponent(name).path
    }

    /// SQLite's codes: 2 is FULL (1 NORMAL, 0 OFF).
    static let full = 2

    @Test func theHubStoresWriterSyncsEveryCommit() throws {
        let path = try Self.path("hub.sqlite")
        defer { try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent) }
        let store = try SQLiteHubStore(path: path)
        #expect(try store.writerPragma("synchronous") == Self.full)
        // And again after reopening an existing file (the migrations then have nothing to do).
        let reopened = try SQLiteHubStore(path: path)
        #expect(try reopened.writerPragma("synchronous") == Self.full)
    }

    @Test func everyPoolTheHubOpensSyncsEveryCommit() throws {
        let path = try Self.path("any.sqlite")
        defer { try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent) }
        let pool = try SQLiteHubStore.openPool(path: path, migrator: DatabaseMigrator(), what: "a test file")
        let (synchronous, journal, foreignKeys) = try pool.writeWithoutTransaction { db in
            (
                try Int.fetchOne(db, sql: "PRAGMA synchronous"), try String.fetchOne(db, sql: "PRAGMA journal_mode"),
                try Int.fetchOne(db, sql: "PRAGMA foreign_keys")
            )
        }
        #expect(synchronous == Self.full)
        #expect(journal == "wal")
        #expect(foreignKeys == 1)
    }
}
