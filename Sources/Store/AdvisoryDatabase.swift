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
        /// When the last import finished (nil before the first).
        public var importedAt: Date?
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
        var configuration = Configuration()
        configuration.prepareDatabase { db in try db.execute(sql: "PRAGMA synchronous = FULL") }
        configuration.busyMode = .timeout(5)
        do {
            pool = try DatabasePool(path: path, configuration: configuration)
            try Self.migrator.migrate(pool)
        } catch {
            throw StoreError(.unavailable, "cannot open the advisory database \(path): \(error)")
        }
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
        return migrator
    }

    /// Stores parsed records (the caller has refused malformed ones) in one transaction.
    public func importRecords(_ records: [(record: OSVRecord, body: [UInt8])], at: Date) throws -> ImportResult {
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
                        guard record.modified >= stored else {
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

    public func records(ecosystem: Ecosystem, name: String) throws -> [OSVRecord] {
        let rows = try pool.read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT records.id, records.body FROM affected JOIN records ON records.id = affected.id
                    WHERE affected.ecosystem = ? AND affected.name = ? AND records.withdrawn = 0
                    """,
                arguments: [ecosystem.osvName, name])
        }
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
        try pool.read { db in
            let records = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM records") ?? 0
            let withdrawn = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM records WHERE withdrawn = 1") ?? 0
            let at = try String.fetchOne(db, sql: "SELECT value FROM meta WHERE key = 'imported_at'")
            return Summary(
                records: records, withdrawn: withdrawn,
                importedAt: at.flatMap(Double.init).map(Date.init(timeIntervalSince1970:)))
        }
    }
}
