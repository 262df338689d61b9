public import Advisories
public import Foundation
import GRDB
import Synchronization

/// The OSV advisories imported offline (`bulwark advisories import DIR|ZIP`), in their own SQLite file beside the
/// hub's store (`DATA/advisories.db`): the records as they were exported, and an index of (ecosystem, package) →
/// record, so matching an SBOM reads only the records of its packages.
///
/// An import is one transaction: it lands whole or not at all, and a record replaces the stored one with its id
/// only when its `modified` time is not older.
public final class AdvisoryDatabase: AdvisorySource, Sendable {
    private let pool: DatabasePool
    /// Parsed records, by id, while this database is open (a gate matches many components to the same records).
    private let parsed = Mutex<[String: OSVRecord]>([:])

    public struct Summary: Sendable, Equatable {
        public var records: Int
        public var withdrawn: Int
        /// When the last import finished (nil before the first), and from what.
        public var importedAt: Date?
        public var importedFrom: String?
    }

    public struct ImportResult: Sendable, Equatable {
        public var added: Int
        public var replaced: Int
        /// Records not newer than the stored ones with their ids.
        public var unchanged: Int

        public init(added: Int, replaced: Int, unchanged: Int) {
            self.added = added
            self.replaced = replaced
            self.unchanged = unchanged
        }
    }

    public init(path: String) throws {
        pool = try SQLiteHubStore.openPool(path: path, migrator: Self.migrator, what: "the advisory database \(path)")
    }

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.execute(
                sql: """
                    CREATE TABLE records (
                        id TEXT PRIMARY KEY, modified TEXT NOT NULL, withdrawn INTEGER NOT NULL, body BLOB NOT NULL
                    );
                    CREATE TABLE affected (
                        ecosystem TEXT NOT NULL, name TEXT NOT NULL,
                        id TEXT NOT NULL REFERENCES records(id) ON DELETE CASCADE
                    );
                    CREATE INDEX affected_package ON affected(ecosystem, name);
                    CREATE INDEX affected_id ON affected(id);
                    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                    """)
        }
        migrator.registerMigration("v2: imports are recorded") { db in
            try db.execute(
                sql: """
                    CREATE TABLE imports (
                        id INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL, source TEXT NOT NULL,
                        added INTEGER NOT NULL, replaced INTEGER NOT NULL, unchanged INTEGER NOT NULL,
                        skipped INTEGER NOT NULL
                    );
                    """)
        }
        return migrator
    }

    /// Stores parsed records (the caller has refused malformed ones) in one transaction, with a row saying when, from
    /// where and how many were skipped as malformed.
    public func importRecords(
        _ records: [(record: OSVRecord, body: [UInt8])], at: Date, source: String = "", skipped: Int = 0
    ) throws -> ImportResult {
        do {
            let result = try pool.write { db -> ImportResult in
                var result = ImportResult(added: 0, replaced: 0, unchanged: 0)
                let existing = try db.makeStatement(sql: "SELECT modified FROM records WHERE id = ?")
                let upsert = try db.makeStatement(
                    sql: "INSERT OR REPLACE INTO records (id, modified, withdrawn, body) VALUES (?, ?, ?, ?)")
                let unindex = try db.makeStatement(sql: "DELETE FROM affected WHERE id = ?")
                let index = try db.makeStatement(sql: "INSERT INTO affected (ecosystem, name, id) VALUES (?, ?, ?)")
                for (record, body) in records {
                    if let stored = try String.fetchOne(existing, arguments: [record.id]) {
                        guard Self.notOlder(record.modified, than: stored) else {
                            result.unchanged += 1
                            continue
                        }
                        result.replaced += 1
                        try unindex.execute(arguments: [record.id])
                    } else {
                        result.added += 1
                    }
                    try upsert.execute(arguments: [record.id, record.modified, record.withdrawn != nil, Data(body)])
                    var seen = Set<String>()
                    for entry in record.affected {
                        let ecosystem = entry.ecosystem?.osvName ?? entry.ecosystemName
                        guard seen.insert(ecosystem + "\u{0}" + entry.name).inserted else { continue }
                        try index.execute(arguments: [ecosystem, entry.name, record.id])
                    }
                }
                try db.execute(
                    sql: "INSERT OR REPLACE INTO meta (key, value) VALUES ('imported_at', ?)",
                    arguments: [String(Int64(at.timeIntervalSince1970))])
                try db.execute(
                    sql: """
                        INSERT INTO imports (at, source, added, replaced, unchanged, skipped) VALUES (?, ?, ?, ?, ?, ?)
                        """,
                    arguments: [
                        Int64(at.timeIntervalSince1970), source, result.added, result.replaced, result.unchanged,
                        skipped,
                    ])
                return result
            }
            parsed.withLock { $0.removeAll() }
            return result
        } catch let error as StoreError {
            throw error
        } catch {
            throw StoreError(.unavailable, "the advisory import failed: \(error)")
        }
    }

    /// RFC 3339 times compared as instants (`…:00Z` and `…:00.5Z` do not sort as strings do); a time that does not
    /// parse counts as not older, so a malformed `modified` cannot pin an old record in place.
    static func notOlder(_ candidate: String, than stored: String) -> Bool {
        guard let new = instant(candidate), let old = instant(stored) else { return true }
        return new >= old
    }

    static func instant(_ text: String) -> Double? {
        let plain = ISO8601DateFormatter()
        if let date = plain.date(from: text) { return date.timeIntervalSince1970 }
        let fractional = ISO8601DateFormatter()
        fractional.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return fractional.date(from: text)?.timeIntervalSince1970
    }

    public func records(ecosystem: Ecosystem, name: String) throws -> [OSVRecord] {
        try pool.read { db in try records(db, ecosystem: ecosystem, name: name) }
    }

    /// Runs `body` over one consistent view of the database (one read transaction): a gate that runs while an
    /// import commits sees all of the old data or all of the new, and the summary of the data it used.
    public func withSnapshot<T>(_ body: (Summary, any AdvisorySource) throws -> T) throws -> T {
        try pool.read { db in
            try body(try summary(db), Snapshot(database: self, db: db))
        }
    }

    private struct Snapshot: AdvisorySource {
        let database: AdvisoryDatabase
        let db: Database
        func records(ecosystem: Ecosystem, name: String) throws -> [OSVRecord] {
            try database.records(db, ecosystem: ecosystem, name: name)
        }
    }

    private func records(_ db: Database, ecosystem: Ecosystem, name: String) throws -> [OSVRecord] {
        // Prepared once per connection (a gate asks this for every component).
        let statement = try db.cachedStatement(
            sql: """
                SELECT records.id, records.body FROM affected JOIN records ON records.id = affected.id
                WHERE affected.ecosystem = ? AND affected.name = ? AND records.withdrawn = 0
                """)
        let rows = try Row.fetchAll(statement, arguments: [ecosystem.osvName, name])
        return try rows.map { row in
            let id: String = row["id"]
            if let record = parsed.withLock({ $0[id] }) { return record }
            let record = try OSVRecord(json: Array(row["body"] as Data))
            parsed.withLock {
                if $0.count > 50_000 { $0.removeAll() }
                $0[id] = record
            }
            return record
        }
    }

    public func summary() throws -> Summary {
        try pool.read { db in try summary(db) }
    }

    private func summary(_ db: Database) throws -> Summary {
        let records = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM records") ?? 0
        let withdrawn = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM records WHERE withdrawn = 1") ?? 0
        let at = try String.fetchOne(db, sql: "SELECT value FROM meta WHERE key = 'imported_at'")
        let source = try String.fetchOne(db, sql: "SELECT source FROM imports ORDER BY id DESC LIMIT 1")
        return Summary(
            records: records, withdrawn: withdrawn,
            importedAt: at.flatMap(Double.init).map(Date.init(timeIntervalSince1970:)), importedFrom: source)
    }
}
