public import Advisories
public import Core
public import Foundation
import GRDB
import GRDBSQLite
import Synchronization

/// The default backend: SQLite through GRDB (system SQLite from Debian's `libsqlite3-dev`).
///
/// Why GRDB: a maintained migrator (`DatabaseMigrator`), `DatabasePool` for WAL with concurrent readers, and a
/// callback-based writer queue that makes group commit simple. Durability: WAL with `synchronous = FULL`, so a
/// committed transaction survives a process kill and a power loss. Telemetry is group-committed: concurrent
/// appends share one transaction (one fsync), and each caller returns only after that commit.
public final class SQLiteHubStore: HubStore {
    private let pool: DatabasePool
    private let committer: GroupCommitter
    /// Keys new audit records (`setAuditKey`); nil until the hub hands it over.
    private let auditKey = Mutex<AuditKey?>(nil)

    /// Messages stored before the per-device index takes them in (one sorted batch): a device's query scans at most
    /// this many rows plus a batch by rowid, and the index's pages are written once per this many messages instead
    /// of once per commit. In a fleet a batch of the index holds few entries per device, so each entry rewrites a
    /// page of its own: `bulwark-bench store` (12-05) put a stored message at 12.5 µs of CPU with 5,000 devices and
    /// 2,048, 9.7 with 8,192, 9.1 with 32,768 (8.2 / 6.7 / 6.7 with 50 devices), and a device's latest 50 messages
    /// at 0.47 / 1.55 / 4.15 ms to read.
    public static let defaultIndexEvery: Int64 = 8192

    /// Opens (creating if needed) the database at `path` and runs pending migrations. `onCommit` hears of each
    /// telemetry group commit that succeeded: how many messages it wrote and how long it took (for `/metrics`).
    /// `indexEvery`: how many stored messages wait, unindexed, before the group commit adds them to the per-device
    /// index in one sorted batch (`GroupCommitter.indexTail`).
    public init(
        path: String, indexEvery: Int64 = SQLiteHubStore.defaultIndexEvery,
        onCommit: (@Sendable (_ messages: Int, _ duration: Duration) -> Void)? = nil
    ) throws {
        pool = try Self.openPool(path: path, migrator: Self.migrator, what: "the SQLite store")
        committer = GroupCommitter(pool: pool, indexEvery: max(1, indexEvery), onCommit: onCommit)
    }

    /// A WAL pool with `synchronous = FULL` (a committed transaction survives a kill and a power loss), foreign
    /// keys on and a 5-s busy timeout, migrated: how every SQLite file of the hub is opened.
    ///
    /// `synchronous` is set on the writer once the pool is open: GRDB's `DatabasePool` runs `prepareDatabase` first
    /// and then sets `synchronous = NORMAL` on its writer (`Database.setUpWALMode`), so a `FULL` set in
    /// `prepareDatabase` never reached the connection that commits. With `NORMAL` a WAL commit is not synced (only
    /// checkpoints are; SQLite's "pragma synchronous"): a committed, acknowledged message survives a process kill but
    /// not a power loss. With `FULL` each commit ends with an fsync of the WAL (one per group commit).
    static func openPool(path: String, migrator: DatabaseMigrator, what: String) throws -> DatabasePool {
        var configuration = Configuration()
        configuration.prepareDatabase { db in
            try db.execute(sql: "PRAGMA foreign_keys = ON")
        }
        configuration.busyMode = .timeout(5)
        do {
            let pool = try DatabasePool(path: path, configuration: configuration)
            // A pragma of the connection: GRDB's pool keeps one writer connection for its life.
            try pool.writeWithoutTransaction { db in try db.execute(sql: "PRAGMA synchronous = FULL") }
            try migrator.migrate(pool)
            return pool
        } catch {
            throw StoreError(.unavailable, "cannot open \(what): \(error)")
        }
    }

    /// Versioned schema. Migrations are append-only: a released migration is never edited.
    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.execute(
                sql: """
                    CREATE TABLE devices (
                        id TEXT PRIMARY KEY NOT NULL,
                        status TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
                        created_at INTEGER NOT NULL,
                        revoked_at INTEGER
                    );
                    CREATE TABLE certificates (
                        serial TEXT PRIMARY KEY NOT NULL,
                        subject TEXT NOT NULL,
                        device_id TEXT REFERENCES devices(id),
                        spki_sha256 TEXT NOT NULL,
                        not_before INTEGER NOT NULL,
                        not_after INTEGER NOT NULL,
                        revoked_at INTEGER,
                        der BLOB NOT NULL
                    );
                    CREATE INDEX certificates_device ON certificates(device_id);
                    CREATE TABLE telemetry (
                        id INTEGER PRIMARY KEY AUTOINCREMENT,
                        device_id TEXT NOT NULL REFERENCES devices(id),
                        received_at INTEGER NOT NULL,
                        correlation_id TEXT NOT NULL,
                        body BLOB NOT NULL
                    );
                    CREATE INDEX telemetry_device ON telemetry(device_id, id);
                    CREATE TABLE security_events (
                        id INTEGER PRIMARY KEY AUTOINCREMENT,
                        at INTEGER NOT NULL,
                        kind TEXT NOT NULL,
                        identity TEXT,
                        source TEXT,
                        correlation_id TEXT,
                        detail TEXT NOT NULL
                    );
                    """)
        }
        migrator.registerMigration("v2: device secrets") { db in
            try db.execute(
                sql: """
                    CREATE TABLE device_secrets (
                        device_id TEXT PRIMARY KEY NOT NULL REFERENCES devices(id),
                        irk BLOB NOT NULL
                    );
                    """)
        }
        migrator.registerMigration("v3: gateway state and the audit chain") { db in
            try db.execute(
                sql: """
                    CREATE TABLE audit_log (
                        seq INTEGER PRIMARY KEY NOT NULL,
                        at INTEGER NOT NULL,
                        kind TEXT NOT NULL,
                        identity TEXT,
                        source TEXT,
                        correlation_id TEXT,
                        detail TEXT NOT NULL,
                        prev_hash BLOB NOT NULL,
                        hash BLOB NOT NULL
                    );
                    CREATE TABLE nonces (
                        device_id TEXT NOT NULL,
                        nonce TEXT NOT NULL,
                        expires_at INTEGER NOT NULL,
                        PRIMARY KEY (device_id, nonce)
                    ) WITHOUT ROWID;
                    CREATE INDEX nonces_expiry ON nonces(expires_at);
                    CREATE TABLE counter_windows (
                        device_id TEXT PRIMARY KEY NOT NULL,
                        highest INTEGER NOT NULL,
                        seen INTEGER NOT NULL
                    );
                    CREATE TABLE quarantines (
                        device_id TEXT PRIMARY KEY NOT NULL,
                        until INTEGER NOT NULL
                    );
                    CREATE TABLE schemas (
                        name TEXT PRIMARY KEY NOT NULL,
                        body BLOB NOT NULL,
                        updated_at INTEGER NOT NULL
                    );
                    ALTER TABLE telemetry ADD COLUMN message_type TEXT;
                    """)
        }
        migrator.registerMigration("v4: audit MACs") { db in
            // NULL for the records written before the audit key existed.
            try db.execute(sql: "ALTER TABLE audit_log ADD COLUMN mac BLOB")
        }
        migrator.registerMigration("v5: certificate renewals") { db in
            try db.execute(
                sql: """
                    CREATE TABLE certificate_renewals (
                        new_serial TEXT PRIMARY KEY NOT NULL REFERENCES certificates(serial),
                        previous_serial TEXT NOT NULL,
                        device_id TEXT NOT NULL REFERENCES devices(id),
                        grace_until INTEGER NOT NULL
                    );
                    """)
        }
        migrator.registerMigration("v6: connection inventory and egress policy") { db in
            try db.execute(
                sql: """
                    CREATE TABLE device_classes (
                        device_id TEXT PRIMARY KEY NOT NULL REFERENCES devices(id),
                        class TEXT NOT NULL
                    );
                    CREATE TABLE egress_rules (
                        class TEXT NOT NULL,
                        rule TEXT NOT NULL,
                        PRIMARY KEY (class, rule)
                    );
                    CREATE TABLE device_destinations (
                        device_id TEXT NOT NULL REFERENCES devices(id),
                        listening INTEGER NOT NULL,
                        proto TEXT NOT NULL,
                        address TEXT NOT NULL,
                        port INTEGER NOT NULL,
                        first_seen INTEGER NOT NULL,
                        last_seen INTEGER NOT NULL,
                        reports INTEGER NOT NULL,
                        PRIMARY KEY (device_id, listening, proto, address, port)
                    );
                    """)
        }
        migrator.registerMigration("v7: update assignments") { db in
            try db.execute(
                sql: "CREATE TABLE update_assignments (scope TEXT PRIMARY KEY NOT NULL, target TEXT NOT NULL)")
        }
        migrator.registerMigration("v8: device update states") { db in
            try db.execute(
                sql: """
                    CREATE TABLE device_updates (
                        device_id TEXT PRIMARY KEY NOT NULL,
                        installed_target TEXT, installed_version TEXT, slot TEXT, floor INTEGER NOT NULL,
                        last_step TEXT NOT NULL, step_target TEXT, reason TEXT, sequence INTEGER NOT NULL,
                        updated_at INTEGER NOT NULL
                    );
                    """)
        }
        migrator.registerMigration("v9: staged rollouts") { db in
            try db.execute(
                sql: """
                    CREATE TABLE rollouts (
                        id TEXT PRIMARY KEY NOT NULL, target TEXT NOT NULL, previous TEXT, stages TEXT NOT NULL,
                        soak_seconds REAL NOT NULL, max_failure_rate REAL NOT NULL, state TEXT NOT NULL,
                        stage INTEGER NOT NULL, started_at REAL NOT NULL, stage_started_at REAL NOT NULL, reason TEXT
                    );
                    """)
        }
        migrator.registerMigration("v10: rollouts wait for a share of the cohort") { db in
            try db.execute(sql: "ALTER TABLE rollouts ADD COLUMN min_reported REAL NOT NULL DEFAULT 90")
        }
        migrator.registerMigration("v11: the vulnerability gate's waivers and releases") { db in
            try db.execute(
                sql: """
                    CREATE TABLE waivers (
                        id INTEGER PRIMARY KEY AUTOINCREMENT, advisory TEXT NOT NULL, purl TEXT NOT NULL,
                        reason TEXT NOT NULL, until INTEGER NOT NULL, by TEXT NOT NULL
                    );
                    CREATE TABLE releases (
                        target TEXT NOT NULL, sha256 TEXT NOT NULL, version TEXT NOT NULL,
                        security_version INTEGER NOT NULL, sbom BLOB NOT NULL, vex BLOB, report BLOB NOT NULL,
                        report_sha256 TEXT NOT NULL, blocked INTEGER NOT NULL, at INTEGER NOT NULL, by TEXT NOT NULL,
                        seq INTEGER NOT NULL, PRIMARY KEY (target, sha256)
                    );
                    """)
        }
        migrator.registerMigration("v12: certificate expiry index for monitoring") { db in
            try db.execute(
                sql: """
                    CREATE INDEX certificates_expiry ON certificates(not_after)
                    WHERE revoked_at IS NULL AND device_id IS NOT NULL
                    """)
        }
        migrator.registerMigration("v13: the dashboard's per-identity audit view") { db in
            try db.execute(sql: "CREATE INDEX audit_log_identity ON audit_log(identity, seq)")
        }
        migrator.registerMigration("v14: each device's newest live certificate end, kept by triggers") { db in
            // The fleet overview sorts 10,000 devices by certificate expiry and /metrics counts those expiring:
            // computing each device's newest unrevoked certificate per request costs about 10 ms at that size, so
            // the devices row carries it, kept current by triggers on every certificate write (whichever code
            // path makes it), and indexed.
            try db.execute(
                sql: """
                    ALTER TABLE devices ADD COLUMN cert_not_after INTEGER;
                    UPDATE devices SET cert_not_after =
                        (SELECT MAX(not_after) FROM certificates WHERE device_id = devices.id AND revoked_at IS NULL);
                    CREATE INDEX devices_cert_not_after ON devices(cert_not_after);
                    CREATE TRIGGER certificates_live_insert AFTER INSERT ON certificates
                    WHEN NEW.device_id IS NOT NULL BEGIN
                        UPDATE devices SET cert_not_after = (SELECT MAX(not_after) FROM certificates
                            WHERE device_id = NEW.device_id AND revoked_at IS NULL) WHERE id = NEW.device_id;
                    END;
                    CREATE TRIGGER certificates_live_update AFTER UPDATE OF device_id, not_after, revoked_at
                    ON certificates BEGIN
                        UPDATE devices SET cert_not_after = (SELECT MAX(not_after) FROM certificates
                            WHERE device_id = devices.id AND revoked_at IS NULL)
                        WHERE id IN (OLD.device_id, NEW.device_id);
                    END;
                    CREATE TRIGGER certificates_live_delete AFTER DELETE ON certificates
                    WHEN OLD.device_id IS NOT NULL BEGIN
                        UPDATE devices SET cert_not_after = (SELECT MAX(not_after) FROM certificates
                            WHERE device_id = OLD.device_id AND revoked_at IS NULL) WHERE id = OLD.device_id;
                    END;
                    """)
        }
        migrator.registerMigration("v15: each device's last stored message time on its row") { db in
            // The fleet overview sorts 10,000 devices by last seen: reading each device's newest message from the
            // telemetry index per request cost 9-17 ms. A trigger keeps it on the devices row (one primary-key
            // update per stored message, in the message's own transaction).
            try db.execute(
                sql: """
                    ALTER TABLE devices ADD COLUMN last_seen INTEGER;
                    UPDATE devices SET last_seen =
                        (SELECT received_at FROM telemetry WHERE device_id = devices.id ORDER BY id DESC LIMIT 1);
                    CREATE TRIGGER telemetry_last_seen AFTER INSERT ON telemetry BEGIN
                        UPDATE devices SET last_seen = NEW.received_at WHERE id = NEW.device_id;
                    END;
                    """)
        }
        migrator.registerMigration("v16: the v12 expiry index is unused since v14") { db in
            // Expiry is read from devices.cert_not_after (v14): the partial index on certificates only cost writes.
            try db.execute(sql: "DROP INDEX certificates_expiry")
        }
        migrator.registerMigration("v17: devices by status and certificate end") { db in
            // `/metrics` counts devices per status and the active ones whose certificate ends within 7 days: a scan
            // of the devices table (about 5 ms at 10,000 devices) became a count over this index (under 1 ms). The
            // index changes only when a device is enrolled, revoked or given a certificate, never per message.
            try db.execute(sql: "CREATE INDEX devices_status_expiry ON devices(status, cert_not_after)")
        }
        migrator.registerMigration("v18: pairing claims and lock-outs in the store") { db in
            // Kept in memory until now: a restart forgot the claims and every lock-out. The label is sealed by the
            // hub (AES-GCM under a key derived from the audit key): the file never holds a setup secret.
            try db.execute(
                sql: """
                    CREATE TABLE pairing_claims (
                        device_id TEXT PRIMARY KEY, suite TEXT NOT NULL, sealed BLOB NOT NULL,
                        expires_at INTEGER NOT NULL, holder TEXT, held_until INTEGER
                    )
                    """)
            try db.execute(
                sql: """
                    CREATE TABLE pairing_failures (
                        device_id TEXT PRIMARY KEY, failures INTEGER NOT NULL, last_at INTEGER NOT NULL
                    )
                    """)
        }
        migrator.registerMigration("v19: MQTT sessions and retained messages") { db in
            // Kept in memory until now: a restart lost every persistent session and retained message.
            try db.execute(
                sql: """
                    CREATE TABLE mqtt_sessions (
                        session_key TEXT PRIMARY KEY, owner TEXT NOT NULL, expiry_seconds INTEGER NOT NULL,
                        disconnected_at INTEGER, state BLOB NOT NULL, saved_at INTEGER NOT NULL, holder TEXT
                    )
                    """)
            try db.execute(
                sql: """
                    CREATE TABLE mqtt_retained (
                        topic TEXT PRIMARY KEY, owner TEXT NOT NULL, message BLOB NOT NULL, saved_at INTEGER NOT NULL
                    )
                    """)
        }
        migrator.registerMigration("v20: hub nodes that say they are alive") { db in
            try db.execute(sql: "CREATE TABLE hub_nodes (holder TEXT PRIMARY KEY, seen_at INTEGER NOT NULL)")
        }
        migrator.registerMigration("v21: what each node says of itself (bulwark node list)") { db in
            for column in [
                "name TEXT NOT NULL DEFAULT ''", "addresses TEXT NOT NULL DEFAULT ''",
                "version TEXT NOT NULL DEFAULT ''", "started_at INTEGER NOT NULL DEFAULT 0",
                "stopped INTEGER NOT NULL DEFAULT 0",
            ] {
                try db.execute(sql: "ALTER TABLE hub_nodes ADD COLUMN " + column)
            }
        }
        migrator.registerMigration("v22: each node's shared MQTT subscriptions") { db in
            try db.execute(sql: "ALTER TABLE hub_nodes ADD COLUMN shares TEXT NOT NULL DEFAULT ''")
        }
        migrator.registerMigration("v23: each node's TLS pins") { db in
            try db.execute(
                sql: """
                    CREATE TABLE node_pins (
                        node TEXT PRIMARY KEY, name TEXT NOT NULL, pins TEXT NOT NULL, updated_at INTEGER NOT NULL,
                        mac TEXT NOT NULL)
                    """)
        }
        migrator.registerMigration("v24: last_seen written once per device per batch") { db in
            // The v15 trigger updated the device's row for every stored message (a fifth of SQLite's work per
            // message in a profile of MQTT QoS 0); the group committer now writes each device's newest time once
            // per batch, in the batch's transaction (`GroupCommitter.markSeen`).
            try db.execute(sql: "DROP TRIGGER telemetry_last_seen")
        }
        migrator.registerMigration("v25: the per-device telemetry index written in sorted batches") { db in
            // A WAL commit writes every page it changed in full, and `telemetry_device (device_id, id)` put each
            // device's new entries on a page of its own: a commit of 256 messages from 50 devices rewrote about 50
            // index pages (200 KB) for 60 KB of rows, 5 of the 8 µs SQLite spent per message
            // (`scripts/sqlite-insert-cost.c`). The index becomes a table the group commit fills in sorted
            // batches: every row up to `telemetry_indexed.upto` is in it, the newer ones (at most a batch's worth)
            // are found by their rowid range, and readers read both in one snapshot.
            try db.execute(
                sql: """
                    CREATE TABLE telemetry_by_device (
                        device_id TEXT NOT NULL, id INTEGER NOT NULL, PRIMARY KEY (device_id, id)
                    ) WITHOUT ROWID;
                    INSERT INTO telemetry_by_device (device_id, id) SELECT device_id, id FROM telemetry;
                    CREATE TABLE telemetry_indexed (one INTEGER PRIMARY KEY CHECK (one = 1), upto INTEGER NOT NULL);
                    INSERT INTO telemetry_indexed (one, upto) SELECT 1, COALESCE(MAX(id), 0) FROM telemetry;
                    DROP INDEX telemetry_device;
                    """)
        }
        migrator.registerMigration("v26: telemetry stored one row per device and group commit") { db in
            // SQLite's work per row was more than the rest of a stored QoS 0 message (issue #16); a group commit of
            // MQTT telemetry holds about ten messages per device, which now share a row (`TelemetryChunk`). Each
            // message keeps an id of its own: the row's `first_id` plus its position. The index and its mark keep
            // their meaning (v25) for rows: every row with `first_id <= upto` is in `telemetry_chunk_index`. The
            // rows before keep their ids, each a row of its own.
            try db.execute(
                sql: """
                    CREATE TABLE telemetry_chunks (
                        first_id INTEGER PRIMARY KEY,
                        device_id TEXT NOT NULL REFERENCES devices(id),
                        count INTEGER NOT NULL CHECK (typeof(count) = 'integer' AND count > 0),
                        messages BLOB NOT NULL
                    );
                    CREATE TABLE telemetry_chunk_index (
                        device_id TEXT NOT NULL, first_id INTEGER NOT NULL, count INTEGER NOT NULL,
                        PRIMARY KEY (device_id, first_id)
                    ) WITHOUT ROWID;
                    """)
            let insert = try db.makeStatement(
                sql: "INSERT INTO telemetry_chunks (first_id, device_id, count, messages) VALUES (?, ?, 1, ?)")
            let rows = try Row.fetchCursor(
                db,
                sql: "SELECT id, device_id, received_at, correlation_id, body, message_type FROM telemetry ORDER BY id")
            var buffer: [UInt8] = []
            while let row = try rows.next() {
                TelemetryChunk.start(&buffer)
                try TelemetryChunk.append(
                    receivedAtMillis: row["received_at"], correlationID: row["correlation_id"],
                    messageType: row["message_type"], body: [UInt8](row["body"] as Data), to: &buffer)
                try insert.execute(arguments: [row["id"] as Int64, row["device_id"] as String, Data(buffer)])
            }
            try db.execute(
                sql: """
                    INSERT INTO telemetry_chunk_index (device_id, first_id, count)
                        SELECT device_id, first_id, count FROM telemetry_chunks ORDER BY device_id, first_id;
                    INSERT INTO telemetry_indexed (one, upto) SELECT 1, COALESCE(MAX(first_id), 0) FROM telemetry_chunks
                        WHERE true ON CONFLICT (one) DO UPDATE SET upto = excluded.upto;
                    DROP TABLE telemetry_by_device;
                    DROP TABLE telemetry;
                    """)
        }
        migrator.registerMigration("v27: the MQTT message log of a single node") { db in
            // A device's message that reached a kept session, under the message's own id, in its transaction: a
            // node killed before those sessions were saved replays it into them at start (`MQTTPersistence`).
            try db.execute(
                sql: """
                    CREATE TABLE mqtt_message_log (
                        id INTEGER PRIMARY KEY, publisher TEXT, packet BLOB NOT NULL, at INTEGER NOT NULL
                    )
                    """)
        }
        return migrator
    }

    public func enroll(device: DeviceID, certificate: CertificateRecord, at: Date) async throws {
        try await write { db in
            try db.execute(
                sql: """
                    INSERT INTO devices (id, status, created_at) VALUES (?, 'active', ?)
                    ON CONFLICT(id) DO UPDATE SET status = 'active', revoked_at = NULL
                    """,
                arguments: [device.rawValue, at.millis])
            try Self.insert(certificate, db)
        }
    }

    public func addCertificate(_ certificate: CertificateRecord) async throws {
        try await write { db in try Self.insert(certificate, db) }
    }

    public func setAssignment(_ scope: AssignmentScope, target: String?) async throws {
        try await write { db in
            if case .device(let device) = scope,
                try Row.fetchOne(db, sql: "SELECT id FROM devices WHERE id = ?", arguments: [device.rawValue]) == nil
            {
                throw StoreError(.notFound, "no such device")
            }
            if let target {
                try db.execute(
                    sql: """
                        INSERT INTO update_assignments (scope, target) VALUES (?, ?)
                        ON CONFLICT(scope) DO UPDATE SET target = excluded.target
                        """,
                    arguments: [scope.key, target])
            } else {
                try db.execute(sql: "DELETE FROM update_assignments WHERE scope = ?", arguments: [scope.key])
            }
        }
    }

    public func assignment(_ scope: AssignmentScope) async throws -> String? {
        try await read { db in
            try String.fetchOne(
                db, sql: "SELECT target FROM update_assignments WHERE scope = ?", arguments: [scope.key])
        }
    }

    public func effectiveAssignment(_ device: DeviceID, defaultClass: String) async throws -> (
        scope: String, target: String
    )? {
        let rows = try await read { db in
            // Asked at every update check: the statement is prepared once per connection, not per check.
            try Row.fetchAll(
                db.cachedStatement(
                    sql: """
                        SELECT scope, target FROM update_assignments
                        WHERE scope IN (?, 'class:' || COALESCE(
                            (SELECT class FROM device_classes WHERE device_id = ?), ?), 'fleet')
                        """), arguments: ["device:" + device.rawValue, device.rawValue, defaultClass]
            ).map { (scope: $0["scope"] as String, target: $0["target"] as String) }
        }
        for (prefix, name) in [("device:", "device"), ("class:", "class"), ("fleet", "fleet")] {
            if let row = rows.first(where: { $0.scope.hasPrefix(prefix) }) { return (name, row.target) }
        }
        return nil
    }

    public func devicesWithOwnAssignment(defaultClass: String) async throws -> Set<DeviceID> {
        try await read { db in
            guard
                try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM update_assignments WHERE scope != 'fleet'") ?? 0 > 0
            else { return [] }
            let ids = try String.fetchAll(
                db,
                sql: """
                    SELECT d.id FROM devices d
                    WHERE EXISTS (SELECT 1 FROM update_assignments WHERE scope = 'device:' || d.id)
                       OR EXISTS (SELECT 1 FROM update_assignments WHERE scope = 'class:' || COALESCE(
                            (SELECT class FROM device_classes WHERE device_id = d.id), ?))
                    """, arguments: [defaultClass])
            return Set(ids.compactMap { try? DeviceID($0) })
        }
    }

    public func setDeviceClass(_ device: DeviceID, class name: String?) async throws {
        try await write { db in
            guard try Row.fetchOne(db, sql: "SELECT id FROM devices WHERE id = ?", arguments: [device.rawValue]) != nil
            else { throw StoreError(.notFound, "no such device") }
            if let name {
                try db.execute(
                    sql: """
                        INSERT INTO device_classes (device_id, class) VALUES (?, ?)
                        ON CONFLICT(device_id) DO UPDATE SET class = excluded.class
                        """,
                    arguments: [device.rawValue, name])
            } else {
                try db.execute(sql: "DELETE FROM device_classes WHERE device_id = ?", arguments: [device.rawValue])
            }
        }
    }

    public func deviceClass(_ device: DeviceID) async throws -> String? {
        try await read { db in
            try String.fetchOne(
                db, sql: "SELECT class FROM device_classes WHERE device_id = ?", arguments: [device.rawValue])
        }
    }

    public func addEgressRule(class name: String, rule: String) async throws -> Bool {
        try await write { db in
            try db.execute(
                sql: "INSERT OR IGNORE INTO egress_rules (class, rule) VALUES (?, ?)", arguments: [name, rule])
            return db.changesCount == 1
        }
    }

    public func removeEgressRule(class name: String, rule: String) async throws -> Bool {
        try await write { db in
            try db.execute(sql: "DELETE FROM egress_rules WHERE class = ? AND rule = ?", arguments: [name, rule])
            return db.changesCount == 1
        }
    }

    public func egressRules() async throws -> [String: [String]] {
        try await read { db in
            var rules: [String: [String]] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT class, rule FROM egress_rules ORDER BY class, rowid") {
                rules[row["class"] as String, default: []].append(row["rule"])
            }
            return rules
        }
    }

    public func recordDestinations(
        _ device: DeviceID, _ destinations: [(listening: Bool, proto: String, address: String, port: Int)], at: Date
    ) async throws {
        try await write { db in
            let known =
                try Int.fetchOne(
                    db, sql: "SELECT COUNT(*) FROM device_destinations WHERE device_id = ?",
                    arguments: [device.rawValue]) ?? 0
            for destination in destinations {
                let arguments: StatementArguments = [
                    device.rawValue, destination.listening, destination.proto, destination.address, destination.port,
                ]
                try db.execute(
                    sql: """
                        UPDATE device_destinations SET last_seen = ?, reports = reports + 1
                        WHERE device_id = ? AND listening = ? AND proto = ? AND address = ? AND port = ?
                        """,
                    arguments: [at.millis] + arguments)
                if db.changesCount == 0, known < 1024 {
                    try db.execute(
                        sql: """
                            INSERT INTO device_destinations
                                (device_id, listening, proto, address, port, first_seen, last_seen, reports)
                            VALUES (?, ?, ?, ?, ?, ?, ?, 1)
                            """,
                        arguments: arguments + [at.millis, at.millis])
                }
            }
        }
    }

    public func recordUpdateState(_ state: DeviceUpdateState) async throws {
        try await write { db in
            try db.execute(
                sql: """
                    INSERT INTO device_updates
                        (device_id, installed_target, installed_version, slot, floor, last_step, step_target, reason,
                         sequence, updated_at)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    ON CONFLICT (device_id) DO UPDATE SET
                        installed_target = excluded.installed_target, installed_version = excluded.installed_version,
                        slot = excluded.slot, floor = excluded.floor, last_step = excluded.last_step,
                        step_target = excluded.step_target, reason = excluded.reason, sequence = excluded.sequence,
                        updated_at = excluded.updated_at
                    WHERE excluded.sequence > device_updates.sequence
                    """,
                arguments: [
                    state.deviceID.rawValue, state.installedTarget, state.installedVersion, state.slot, state.floor,
                    state.lastStep, state.stepTarget, state.reason, state.sequence, state.updatedAt.millis,
                ])
        }
    }

    public func updateState(of device: DeviceID) async throws -> DeviceUpdateState? {
        try await read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM device_updates WHERE device_id = ?", arguments: [device.rawValue])
                .flatMap(Self.updateState)
        }
    }

    public func saveRollout(_ rollout: Rollout) async throws {
        try await write { db in
            try db.execute(
                sql: """
                    INSERT INTO rollouts (id, target, previous, stages, soak_seconds, max_failure_rate, state, stage,
                                          started_at, stage_started_at, reason, min_reported)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    ON CONFLICT(id) DO UPDATE SET state = excluded.state, stage = excluded.stage,
                        stage_started_at = excluded.stage_started_at, reason = excluded.reason
                    """,
                arguments: [
                    rollout.id, rollout.target, rollout.previous,
                    rollout.stages.map(String.init).joined(separator: ","),
                    rollout.soakSeconds, rollout.maxFailureRate, rollout.state.rawValue, rollout.stage,
                    rollout.startedAt, rollout.stageStartedAt, rollout.reason, rollout.minimumReported,
                ])
        }
    }

    public func addWaiver(_ waiver: Waiver) async throws {
        try await write { db in
            try db.execute(
                sql: "INSERT INTO waivers (advisory, purl, reason, until, by) VALUES (?, ?, ?, ?, ?)",
                arguments: [waiver.advisory, waiver.purl, waiver.reason, waiver.until, waiver.by])
        }
    }

    public func waivers() async throws -> [Waiver] {
        try await read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM waivers ORDER BY id").map {
                Waiver(
                    advisory: $0["advisory"], purl: $0["purl"], reason: $0["reason"], until: $0["until"], by: $0["by"])
            }
        }
    }

    public func recordRelease(_ release: ReleaseRecord) async throws {
        try await write { db in
            let seq = (try Int64.fetchOne(db, sql: "SELECT MAX(seq) FROM releases") ?? 0) + 1
            try db.execute(
                sql: """
                    INSERT OR REPLACE INTO releases (target, sha256, version, security_version, sbom, vex, report,
                                                     report_sha256, blocked, at, by, seq)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    release.target, release.sha256, release.version, release.securityVersion, Data(release.sbom),
                    release.vex.map { Data($0) }, Data(release.report), release.reportSHA256, release.blocked,
                    release.at.millis, release.by, seq,
                ])
        }
    }

    public func releases() async throws -> [ReleaseRecord] {
        try await read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM releases ORDER BY seq").map { row in
                ReleaseRecord(
                    target: row["target"], sha256: row["sha256"], version: row["version"],
                    securityVersion: row["security_version"], sbom: Array(row["sbom"] as Data),
                    vex: (row["vex"] as Data?).map { Array($0) }, report: Array(row["report"] as Data),
                    reportSHA256: row["report_sha256"], blocked: row["blocked"], at: Date(millis: row["at"]),
                    by: row["by"])
            }
        }
    }

    public func latestRollout() async throws -> Rollout? {
        try await read { db in
            guard
                let row = try Row.fetchOne(db, sql: "SELECT * FROM rollouts ORDER BY started_at DESC, id DESC LIMIT 1")
            else { return nil }
            let stages = (row["stages"] as String).split(separator: ",").compactMap { Int($0) }
            guard
                var rollout = try? Rollout(
                    id: row["id"], target: row["target"], previous: row["previous"], stages: stages,
                    soakSeconds: row["soak_seconds"], maxFailureRate: row["max_failure_rate"],
                    minimumReported: row["min_reported"], now: row["started_at"]),
                let state = Rollout.State(rawValue: row["state"])
            else { throw StoreError(.invalid, "the rollouts table holds an unreadable rollout") }
            rollout.state = state
            rollout.stage = min(max(0, row["stage"]), stages.count - 1)
            rollout.stageStartedAt = row["stage_started_at"]
            rollout.reason = row["reason"]
            return rollout
        }
    }

    public func devicePage(_ query: DeviceQuery) async throws -> (total: Int, devices: [DeviceOverview]) {
        try await read { db in
            var conditions: [String] = []
            var arguments: [any DatabaseValueConvertible] = []
            if let search = query.search, !search.isEmpty {
                // LIKE with its wildcards escaped: the text is matched literally, ignoring ASCII case (SQLite's LIKE
                // does; device ids are ASCII). `lower(d.id)` on every row cost 4 ms of the 10,000-device search.
                let escaped = search.lowercased().replacingOccurrences(of: "\\", with: "\\\\")
                    .replacingOccurrences(of: "%", with: "\\%").replacingOccurrences(of: "_", with: "\\_")
                conditions.append("d.id LIKE ? ESCAPE '\\'")
                arguments.append("%" + escaped + "%")
            }
            if let status = query.status {
                // `+` keeps the planner off the status index (v17, for /metrics' counts): without statistics it
                // would take one table lookup per matching device instead of one scan.
                conditions.append("+d.status = ?")
                arguments.append(status.rawValue)
            }
            let filter = conditions.isEmpty ? "" : "WHERE " + conditions.joined(separator: " AND ")
            let total =
                try Int.fetchOne(
                    db, sql: "SELECT COUNT(*) FROM devices d \(filter)", arguments: StatementArguments(arguments)) ?? 0
            // Read from the nearer end (`DevicePagePlan`): the last of 200 pages sorted by last seen cost a sort of
            // all 10,000 devices (15 ms) and now costs the same as the first.
            guard let plan = DevicePagePlan(query, total: total) else { return (total, []) }
            let fromEnd = plan.fromEnd
            let direction = plan.descending ? "DESC" : "ASC"
            let tieDirection = query.sort == .id ? direction : (fromEnd ? "DESC" : "ASC")
            let key = plan.sortColumn
            // The page's devices first (only the sort key is computed for every device), then the rest of their
            // columns for those rows alone.
            let rows = try Row.fetchAll(
                db,
                sql: """
                    WITH page AS (
                        SELECT d.id, d.status, d.cert_not_after, d.last_seen, \(key) AS sort_key FROM devices d \(filter)
                        ORDER BY sort_key \(direction), d.id \(tieDirection) LIMIT ? OFFSET ?
                    )
                    SELECT d.id, d.status, c.class, u.installed_version, u.last_step, q.until,
                        d.cert_not_after AS not_after, d.last_seen AS last_seen
                    FROM page d
                    LEFT JOIN device_classes c ON c.device_id = d.id
                    LEFT JOIN device_updates u ON u.device_id = d.id
                    LEFT JOIN quarantines q ON q.device_id = d.id
                    ORDER BY d.sort_key \(direction), d.id \(tieDirection)
                    """,
                arguments: StatementArguments(arguments + [plan.limit, plan.offset]))
            let devices = (fromEnd ? rows.reversed() : rows).compactMap { row -> DeviceOverview? in
                guard let id = try? DeviceID(row["id"] as String),
                    let status = DeviceStatus(rawValue: row["status"] as String)
                else { return nil }
                var overview = DeviceOverview(id: id, status: status)
                overview.deviceClass = row["class"]
                overview.installedVersion = row["installed_version"]
                overview.lastStep = row["last_step"]
                overview.quarantinedUntil = row["until"]
                overview.certificateNotAfter = (row["not_after"] as Int64?).map(Date.init(millis:))
                overview.lastSeen = (row["last_seen"] as Int64?).map(Date.init(millis:))
                return overview
            }
            return (total, devices)
        }
    }

    public func securityEvents(identity: String, limit: Int) async throws -> [SecurityEvent] {
        try await read { db in
            try Row.fetchAll(
                db, sql: "SELECT * FROM audit_log WHERE identity = ? ORDER BY seq DESC LIMIT ?",
                arguments: [identity, limit]
            ).map { Self.auditRecord($0).event }
        }
    }

    public func fleetSummary(now: Date, expiringBefore: Date) async throws -> FleetSummary {
        try await read { db in
            var summary = FleetSummary()
            let row = try Row.fetchOne(
                db,
                sql: """
                    SELECT
                        (SELECT COUNT(*) FROM devices WHERE status = 'active'
                            AND cert_not_after > ? AND cert_not_after <= ?) AS expiring,
                        (SELECT COALESCE(MAX(seq), 0) FROM audit_log) AS audit
                    """, arguments: [now.millis, expiringBefore.millis])
            for status in try Row.fetchAll(db, sql: "SELECT status, COUNT(*) AS n FROM devices GROUP BY status") {
                if status["status"] == "active" { summary.activeDevices = status["n"] }
                if status["status"] == "revoked" { summary.revokedDevices = status["n"] }
            }
            summary.certificatesExpiring = row?["expiring"] ?? 0
            summary.auditRecords = row?["audit"] ?? 0
            for step in try Row.fetchAll(
                db, sql: "SELECT last_step, COUNT(*) AS n FROM device_updates GROUP BY last_step")
            {
                summary.updateSteps[step["last_step"]] = step["n"]
            }
            return summary
        }
    }

    public func updateStates() async throws -> [DeviceUpdateState] {
        try await read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM device_updates ORDER BY device_id").compactMap(Self.updateState)
        }
    }

    static func updateState(_ row: Row) -> DeviceUpdateState? {
        guard let device = try? DeviceID(row["device_id"] as String) else { return nil }
        return DeviceUpdateState(
            deviceID: device, installedTarget: row["installed_target"], installedVersion: row["installed_version"],
            slot: row["slot"], floor: row["floor"], lastStep: row["last_step"], stepTarget: row["step_target"],
            reason: row["reason"], sequence: row["sequence"], updatedAt: Date(millis: row["updated_at"]))
    }

    public func destinations(of device: DeviceID) async throws -> [DestinationRecord] {
        try await read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT * FROM device_destinations WHERE device_id = ? ORDER BY listening, address, port
                    """, arguments: [device.rawValue]
            ).map { row in
                DestinationRecord(
                    listening: row["listening"], proto: row["proto"], address: row["address"], port: row["port"],
                    firstSeen: Date(millis: row["first_seen"]), lastSeen: Date(millis: row["last_seen"]),
                    reports: row["reports"])
            }
        }
    }

    public func recordRenewal(certificate: CertificateRecord, renewal: PendingRenewal) async throws -> [String] {
        try await write { db in
            guard
                try String.fetchOne(
                    db, sql: "SELECT status FROM devices WHERE id = ?", arguments: [renewal.deviceID.rawValue])
                    == "active"
            else { throw StoreError(.notFound, "no active device \(renewal.deviceID)") }
            // The certificate being replaced must still be valid: a renewal that was under way when the device's
            // first renewal was used (and its predecessor revoked) must not mint a second live certificate.
            guard
                let predecessor = try Row.fetchOne(
                    db, sql: "SELECT revoked_at FROM certificates WHERE serial = ? AND device_id = ?",
                    arguments: [renewal.previousSerialHex, renewal.deviceID.rawValue]),
                (predecessor["revoked_at"] as Int64?) == nil
            else { throw StoreError(.conflict, "the certificate being renewed is revoked or unknown") }
            let superseded = try String.fetchAll(
                db, sql: "SELECT new_serial FROM certificate_renewals WHERE previous_serial = ? ORDER BY new_serial",
                arguments: [renewal.previousSerialHex])
            for serial in superseded {
                try db.execute(
                    sql: "UPDATE certificates SET revoked_at = ? WHERE serial = ? AND revoked_at IS NULL",
                    arguments: [Date().millis, serial])
                try db.execute(sql: "DELETE FROM certificate_renewals WHERE new_serial = ?", arguments: [serial])
            }
            try Self.insert(certificate, db)
            try db.execute(
                sql: """
                    INSERT INTO certificate_renewals (new_serial, previous_serial, device_id, grace_until)
                    VALUES (?, ?, ?, ?)
                    """,
                arguments: [
                    renewal.newSerialHex, renewal.previousSerialHex, renewal.deviceID.rawValue,
                    renewal.graceUntil.millis,
                ])
            return superseded
        }
    }

    public func pendingRenewals() async throws -> [PendingRenewal] {
        try await read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM certificate_renewals ORDER BY new_serial").compactMap { row in
                guard let device = try? DeviceID(row["device_id"] as String) else { return nil }
                return PendingRenewal(
                    newSerialHex: row["new_serial"], previousSerialHex: row["previous_serial"], deviceID: device,
                    graceUntil: Date(millis: row["grace_until"]))
            }
        }
    }

    public func completeRenewal(newSerialHex: String, at: Date) async throws -> String? {
        try await write { db in
            guard
                let previous = try String.fetchOne(
                    db, sql: "SELECT previous_serial FROM certificate_renewals WHERE new_serial = ?",
                    arguments: [newSerialHex])
            else { return nil }
            try db.execute(
                sql: "UPDATE certificates SET revoked_at = ? WHERE serial = ? AND revoked_at IS NULL",
                arguments: [at.millis, previous])
            try db.execute(sql: "DELETE FROM certificate_renewals WHERE new_serial = ?", arguments: [newSerialHex])
            return previous
        }
    }

    public func activatePendingCertificate(
        _ serialHex: String, device: DeviceID, irk: [UInt8], at: Date
    ) async throws {
        try await write { db in
            guard
                let pendingSince = try Int64.fetchOne(
                    db,
                    sql: "SELECT revoked_at FROM certificates WHERE serial = ? AND device_id IS NULL AND subject = ?",
                    arguments: [serialHex, Identity.device(device).uri])
            else { throw StoreError(.notFound, "no pending certificate \(serialHex) for this device") }
            // A revocation that came while the device was pairing wins over the pairing.
            if let revoked = try Int64.fetchOne(
                db, sql: "SELECT revoked_at FROM devices WHERE id = ?", arguments: [device.rawValue]),
                revoked > pendingSince
            {
                throw StoreError(.conflict, "the device was revoked while it was pairing")
            }
            try db.execute(
                sql: """
                    INSERT INTO devices (id, status, created_at) VALUES (?, 'active', ?)
                    ON CONFLICT(id) DO UPDATE SET status = 'active', revoked_at = NULL
                    """,
                arguments: [device.rawValue, at.millis])
            try db.execute(
                sql: "UPDATE certificates SET revoked_at = NULL, device_id = ? WHERE serial = ?",
                arguments: [device.rawValue, serialHex])
            try db.execute(
                sql: """
                    INSERT INTO device_secrets (device_id, irk) VALUES (?, ?)
                    ON CONFLICT(device_id) DO UPDATE SET irk = excluded.irk
                    """,
                arguments: [device.rawValue, Data(irk)])
        }
    }

    private static func insert(_ c: CertificateRecord, _ db: Database) throws {
        try db.execute(
            sql: """
                INSERT INTO certificates (serial, subject, device_id, spki_sha256, not_before, not_after, revoked_at, der)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                """,
            arguments: [
                c.serialHex, c.subject, c.deviceID?.rawValue, c.spkiSHA256Hex, c.notBefore.millis, c.notAfter.millis,
                c.revokedAt?.millis, Data(c.der),
            ])
    }

    public func device(_ id: DeviceID) async throws -> DeviceRecord? {
        try await read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM devices WHERE id = ?", arguments: [id.rawValue]).flatMap(
                Self.device)
        }
    }

    public func devices() async throws -> [DeviceRecord] {
        try await read { db in try Row.fetchAll(db, sql: "SELECT * FROM devices ORDER BY id").compactMap(Self.device) }
    }

    private static func device(_ row: Row) -> DeviceRecord? {
        guard let id = try? DeviceID(row["id"] as String), let status = DeviceStatus(rawValue: row["status"]) else {
            return nil
        }
        return DeviceRecord(
            id: id, status: status, createdAt: Date(millis: row["created_at"]),
            revokedAt: (row["revoked_at"] as Int64?).map(Date.init(millis:)))
    }

    public func certificates(of device: DeviceID) async throws -> [CertificateRecord] {
        try await read { db in
            try Row.fetchAll(
                db, sql: "SELECT * FROM certificates WHERE device_id = ? ORDER BY not_before",
                arguments: [device.rawValue]
            ).map(Self.certificateRecord)
        }
    }

    static func certificateRecord(_ row: Row) -> CertificateRecord {
        CertificateRecord(
            serialHex: row["serial"], subject: row["subject"],
            deviceID: (row["device_id"] as String?).flatMap { try? DeviceID($0) },
            spkiSHA256Hex: row["spki_sha256"], notBefore: Date(millis: row["not_before"]),
            notAfter: Date(millis: row["not_after"]), revokedAt: (row["revoked_at"] as Int64?).map(Date.init(millis:)),
            der: [UInt8](row["der"] as Data))
    }

    public func certificate(serialHex: String) async throws -> CertificateRecord? {
        try await read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM certificates WHERE serial = ?", arguments: [serialHex])
                .map(Self.certificateRecord)
        }
    }

    public func revokeCertificate(serialHex: String, at: Date) async throws -> CertificateRecord {
        try await write { db in
            try db.execute(
                sql: "UPDATE certificates SET revoked_at = COALESCE(revoked_at, ?) WHERE serial = ?",
                arguments: [at.millis, serialHex])
            guard
                let row = try Row.fetchOne(
                    db, sql: "SELECT * FROM certificates WHERE serial = ?", arguments: [serialHex])
            else { throw StoreError(.notFound, "no such certificate") }
            return Self.certificateRecord(row)
        }
    }

    public func revoke(device: DeviceID, at: Date) async throws -> [String] {
        try await write { db in
            guard try Row.fetchOne(db, sql: "SELECT id FROM devices WHERE id = ?", arguments: [device.rawValue]) != nil
            else { throw StoreError(.notFound, "no such device") }
            try db.execute(
                sql: "UPDATE devices SET status = 'revoked', revoked_at = COALESCE(revoked_at, ?) WHERE id = ?",
                arguments: [at.millis, device.rawValue])
            try db.execute(
                sql: "UPDATE certificates SET revoked_at = ? WHERE device_id = ? AND revoked_at IS NULL",
                arguments: [at.millis, device.rawValue])
            return try String.fetchAll(
                db, sql: "SELECT serial FROM certificates WHERE device_id = ? ORDER BY serial",
                arguments: [device.rawValue])
        }
    }

    public func revokedSerials() async throws -> Set<String> {
        try await read { db in
            Set(try String.fetchAll(db, sql: "SELECT serial FROM certificates WHERE revoked_at IS NOT NULL"))
        }
    }

    public func revokedCertificates() async throws -> [RevokedCertificate] {
        try await read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT serial, revoked_at, not_after, device_id FROM certificates
                    WHERE revoked_at IS NOT NULL ORDER BY serial
                    """
            ).map { row in
                RevokedCertificate(
                    serialHex: row["serial"], revokedAt: Date(millis: row["revoked_at"]),
                    notAfter: Date(millis: row["not_after"]),
                    deviceID: (row["device_id"] as String?).flatMap { try? DeviceID($0) })
            }
        }
    }

    /// The value of `PRAGMA name` on the connection that commits (for the durability tests).
    func writerPragma(_ name: String) throws -> Int? {
        try pool.writeWithoutTransaction { db in try Int.fetchOne(db, sql: "PRAGMA \(name)") }
    }

    public func appendTelemetry(_ message: NewTelemetry) async throws -> Int64 {
        try await committer.append(message)
    }

    /// Queued now, in the caller's order (not when awaited), so a caller may read the outcome by callback.
    public func queueTelemetry(_ message: consuming NewTelemetry) -> TelemetryWrite {
        TelemetryWrite(committer.queue(message))
    }

    public func queueTelemetry(_ message: consuming NewTelemetry, reader: any PendingResultReader) {
        committer.queue(message, reader: reader)
    }

    /// The device's newest messages: those in rows not yet in `telemetry_chunk_index` (above its `upto`, a short
    /// range of `first_id`), then the indexed ones, read in one snapshot (migrations v25, v26). Rows are read newest
    /// first and only until `limit` messages are found.
    public func telemetry(of device: DeviceID, limit: Int) async throws -> [TelemetryRecord] {
        guard limit > 0 else { return [] }
        return try await read { db in
            let upto = try Self.indexedUpTo(db)
            var records: [TelemetryRecord] = []
            for (sql, arguments) in [
                (
                    "SELECT first_id, count, messages FROM telemetry_chunks WHERE first_id > ? AND device_id = ? "
                        + "ORDER BY first_id DESC", [upto, device.rawValue] as StatementArguments
                ),
                (
                    """
                    SELECT telemetry_chunks.first_id, telemetry_chunks.count, telemetry_chunks.messages
                    FROM telemetry_chunk_index
                    JOIN telemetry_chunks ON telemetry_chunks.first_id = telemetry_chunk_index.first_id
                    WHERE telemetry_chunk_index.device_id = ? AND telemetry_chunk_index.first_id <= ?
                    ORDER BY telemetry_chunk_index.first_id DESC
                    """, [device.rawValue, upto]
                ),
            ] where records.count < limit {
                let rows = try Row.fetchCursor(db, sql: sql, arguments: arguments)
                while records.count < limit, let row = try rows.next() {
                    let first: Int64 = row[0]
                    let (count, messages) = try Self.decodeChunk(row, first: first, keepingLast: limit - records.count)
                    // The newest `messages.count` of the row's `count` messages.
                    for (offset, message) in zip((count - messages.count)..<count, messages).reversed() {
                        records.append(
                            TelemetryRecord(
                                id: first + Int64(offset), deviceID: device,
                                receivedAt: Date(millis: message.receivedAtMillis),
                                correlationID: message.correlationID, body: message.body,
                                messageType: message.messageType))
                    }
                }
            }
            return records
        }
    }

    /// A telemetry row's count and newest `keepingLast` messages (columns 1 and 2); a row that does not decode (its
    /// count damaged too) is reported by its id, as the store being unavailable, rather than answered in part.
    private static func decodeChunk(_ row: Row, first: Int64, keepingLast: Int) throws -> (
        count: Int, messages: [TelemetryChunk.Message]
    ) {
        do {
            let count = try row.decode(Int.self, atIndex: 1)
            return try row.withUnsafeData(atIndex: 2) { data in
                guard let data else { throw TelemetryChunk.Damaged(reason: "no bytes") }
                return try data.withUnsafeBytes { bytes in
                    (count, try TelemetryChunk.decode(bytes, count: count, keepingLast: keepingLast))
                }
            }
        } catch {
            throw StoreError(.unavailable, "telemetry row \(first): \(error)")
        }
    }

    public func telemetryCount(of device: DeviceID?) async throws -> Int {
        try await read { db in
            // The index's narrow rows up to its mark (not the messages), plus the few rows above it.
            let upto = try Self.indexedUpTo(db)
            let ofDevice = device == nil ? "" : " AND device_id = ?"
            return try Int.fetchOne(
                db,
                sql:
                    "SELECT (SELECT COALESCE(SUM(count), 0) FROM telemetry_chunk_index WHERE first_id <= ?\(ofDevice)) "
                    + "+ (SELECT COALESCE(SUM(count), 0) FROM telemetry_chunks WHERE first_id > ?\(ofDevice))",
                arguments: device.map { [upto, $0.rawValue, upto, $0.rawValue] } ?? [upto, upto]) ?? 0
        }
    }

    /// Every telemetry row whose `first_id` is up to this one is in `telemetry_chunk_index`.
    static func indexedUpTo(_ db: Database) throws -> Int64 {
        try Int64.fetchOne(db.cachedStatement(sql: "SELECT upto FROM telemetry_indexed")) ?? 0
    }

    public func setAuditKey(_ key: AuditKey) async throws {
        auditKey.withLock { $0 = key }
    }

    /// Appends to the hash-chained audit log (the security events of every earlier version live in
    /// `security_events`, which is kept but no longer written), with its MAC once the audit key is set. Without the
    /// key, a log that already has keyed records is not written to: an unkeyed record after them reads as tampering.
    public func recordSecurityEvent(_ event: SecurityEvent) async throws {
        let key = auditKey.withLock { $0 }
        try await write { db in
            let last = try Row.fetchOne(db, sql: "SELECT seq, hash, mac FROM audit_log ORDER BY seq DESC LIMIT 1")
            if key == nil, last?["mac"] as Data? != nil {
                throw StoreError(.unavailable, "the audit log is keyed: open the store with the audit key")
            }
            let sequence: Int64 = (last?["seq"] ?? 0) + 1
            let previous: [UInt8] = (last?["hash"] as Data?).map { Array($0) } ?? AuditChain.genesis
            let hash = AuditChain.hash(sequence: sequence, event: event, previous: previous)
            try db.execute(
                sql: """
                    INSERT INTO audit_log (seq, at, kind, identity, source, correlation_id, detail, prev_hash, hash, mac)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    sequence, event.at.millis, event.kind, event.identity, event.source, event.correlationID,
                    event.detail, Data(previous), Data(hash), key.map { Data($0.mac(for: hash)) },
                ])
        }
    }

    public func securityEvents(limit: Int) async throws -> [SecurityEvent] {
        try await read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM audit_log ORDER BY seq DESC LIMIT ?", arguments: [limit]).map {
                Self.auditRecord($0).event
            }
        }
    }

    public func auditRecords(after sequence: Int64, limit: Int) async throws -> [AuditRecord] {
        try await read { db in
            try Row.fetchAll(
                db, sql: "SELECT * FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?", arguments: [sequence, limit]
            ).map(Self.auditRecord)
        }
    }

    static func auditRecord(_ row: Row) -> AuditRecord {
        AuditRecord(
            sequence: row["seq"],
            event: SecurityEvent(
                id: row["seq"], at: Date(millis: row["at"]), kind: row["kind"], identity: row["identity"],
                source: row["source"], correlationID: row["correlation_id"], detail: row["detail"]),
            previousHash: Array(row["prev_hash"] as Data), hash: Array(row["hash"] as Data),
            mac: (row["mac"] as Data?).map { Array($0) })
    }

    public func recordNonce(device: DeviceID, nonce: StoredNonce) async throws {
        try await write { db in
            try db.execute(
                sql: """
                    INSERT INTO nonces (device_id, nonce, expires_at) VALUES (?, ?, ?)
                    ON CONFLICT (device_id, nonce) DO UPDATE SET expires_at = excluded.expires_at
                    WHERE nonces.expires_at <= ?
                    """,
                arguments: [device.rawValue, nonce.nonce, nonce.expiresAt, Int64(Date().timeIntervalSince1970)])
            if db.changesCount == 0 { throw StoreError(.replayed, "nonce already stored") }
        }
    }

    public func liveNonces(now: Int64) async throws -> [(DeviceID, StoredNonce)] {
        try await read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM nonces WHERE expires_at > ?", arguments: [now]).compactMap { row in
                guard let device = try? DeviceID(row["device_id"] as String) else { return nil }
                return (device, StoredNonce(nonce: row["nonce"], expiresAt: row["expires_at"]))
            }
        }
    }

    public func counterWindows() async throws -> [(DeviceID, StoredCounterWindow)] {
        try await read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM counter_windows").compactMap { row in
                guard let device = try? DeviceID(row["device_id"] as String) else { return nil }
                return (
                    device,
                    StoredCounterWindow(
                        highest: UInt64(bitPattern: row["highest"]), seen: UInt64(bitPattern: row["seen"]))
                )
            }
        }
    }

    public func setQuarantine(_ device: DeviceID, until: Int64?) async throws {
        try await write { db in
            if let until {
                try db.execute(
                    sql: "INSERT INTO quarantines (device_id, until) VALUES (?, ?) "
                        + "ON CONFLICT(device_id) DO UPDATE SET until = excluded.until",
                    arguments: [device.rawValue, until])
            } else {
                try db.execute(sql: "DELETE FROM quarantines WHERE device_id = ?", arguments: [device.rawValue])
            }
        }
    }

    public func quarantines() async throws -> [(DeviceID, Int64)] {
        try await read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM quarantines").compactMap { row in
                guard let device = try? DeviceID(row["device_id"] as String) else { return nil }
                return (device, row["until"])
            }
        }
    }

    // MARK: Pairing claims and lock-outs

    public func putClaim(_ claim: StoredClaim) async throws {
        try await write { db in
            try db.execute(sql: "DELETE FROM pairing_claims WHERE expires_at <= ?", arguments: [Date().millis])
            try db.execute(
                sql: """
                    INSERT INTO pairing_claims (device_id, suite, sealed, expires_at) VALUES (?, ?, ?, ?)
                    ON CONFLICT(device_id) DO UPDATE SET suite = excluded.suite, sealed = excluded.sealed,
                        expires_at = excluded.expires_at, holder = NULL, held_until = NULL
                    """,
                arguments: [claim.device.rawValue, claim.suite, Data(claim.sealedLabel), claim.expires.millis])
        }
    }

    public func claim(of device: DeviceID, at: Date) async throws -> StoredClaim? {
        try await read { db in
            try Row.fetchOne(
                db, sql: "SELECT * FROM pairing_claims WHERE device_id = ? AND expires_at > ?",
                arguments: [device.rawValue, at.millis]
            ).map(Self.claim)
        }
    }

    private static func claim(_ row: Row) throws -> StoredClaim {
        StoredClaim(
            device: try DeviceID(row["device_id"] as String), suite: row["suite"],
            sealedLabel: Array(row["sealed"] as Data), expires: Date(millis: row["expires_at"]))
    }

    public func holdClaim(of device: DeviceID, holder: String, until: Date, at: Date) async throws -> Bool {
        try await write { db in
            try db.execute(
                sql: """
                    UPDATE pairing_claims SET holder = ?, held_until = ?
                    WHERE device_id = ? AND expires_at > ? AND (held_until IS NULL OR held_until <= ?)
                    """,
                arguments: [holder, until.millis, device.rawValue, at.millis, at.millis])
            return db.changesCount == 1
        }
    }

    public func releaseClaim(of device: DeviceID, holder: String) async throws {
        try await write { db in
            try db.execute(
                sql: "UPDATE pairing_claims SET holder = NULL, held_until = NULL WHERE device_id = ? AND holder = ?",
                arguments: [device.rawValue, holder])
        }
    }

    @discardableResult public func removeClaim(of device: DeviceID, holder: String?) async throws -> Bool {
        try await write { db in
            if let holder {
                try db.execute(
                    sql: "DELETE FROM pairing_claims WHERE device_id = ? AND holder = ?",
                    arguments: [device.rawValue, holder])
            } else {
                try db.execute(sql: "DELETE FROM pairing_claims WHERE device_id = ?", arguments: [device.rawValue])
            }
            return db.changesCount == 1
        }
    }

    public func clearPairingFailures(of device: DeviceID) async throws {
        try await write { db in
            try db.execute(sql: "DELETE FROM pairing_failures WHERE device_id = ?", arguments: [device.rawValue])
        }
    }

    public func pendingClaims(at: Date) async throws -> [StoredClaim] {
        try await read { db in
            try Row.fetchAll(
                db, sql: "SELECT * FROM pairing_claims WHERE expires_at > ? ORDER BY expires_at, device_id",
                arguments: [at.millis]
            ).map(Self.claim)
        }
    }

    public func recordPairingFailure(of device: DeviceID, at: Date) async throws -> PairingFailures {
        try await write { db in
            let row = try Row.fetchOne(
                db,
                sql: """
                    INSERT INTO pairing_failures (device_id, failures, last_at) VALUES (?, 1, ?)
                    ON CONFLICT(device_id) DO UPDATE SET failures = failures + 1, last_at = excluded.last_at
                    RETURNING failures, last_at
                    """, arguments: [device.rawValue, at.millis])
            guard let row else { throw StoreError(.unavailable, "the failure count was not returned") }
            return PairingFailures(count: row["failures"], last: Date(millis: row["last_at"]))
        }
    }

    public func pairingFailures(of device: DeviceID) async throws -> PairingFailures? {
        try await read { db in
            try Row.fetchOne(
                db, sql: "SELECT failures, last_at FROM pairing_failures WHERE device_id = ?",
                arguments: [device.rawValue]
            ).map { PairingFailures(count: $0["failures"], last: Date(millis: $0["last_at"])) }
        }
    }

    public func putSchema(name: String, body: [UInt8], at: Date) async throws {
        try await write { db in
            try db.execute(
                sql: "INSERT INTO schemas (name, body, updated_at) VALUES (?, ?, ?) "
                    + "ON CONFLICT(name) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
                arguments: [name, Data(body), at.millis])
        }
    }

    public func schemas() async throws -> [(String, [UInt8])] {
        try await read { db in
            try Row.fetchAll(db, sql: "SELECT name, body FROM schemas ORDER BY name").map {
                ($0["name"], Array($0["body"] as Data))
            }
        }
    }

    public func setIdentityResolvingKey(_ irk: [UInt8], for device: DeviceID) async throws {
        try await write { db in
            guard try Row.fetchOne(db, sql: "SELECT id FROM devices WHERE id = ?", arguments: [device.rawValue]) != nil
            else { throw StoreError(.notFound, "no such device") }
            try db.execute(
                sql: """
                    INSERT INTO device_secrets (device_id, irk) VALUES (?, ?)
                    ON CONFLICT(device_id) DO UPDATE SET irk = excluded.irk
                    """,
                arguments: [device.rawValue, Data(irk)])
        }
    }

    public func identityResolvingKeys() async throws -> [(DeviceID, [UInt8])] {
        try await read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT s.device_id, s.irk FROM device_secrets s JOIN devices d ON d.id = s.device_id
                    WHERE d.status = 'active' ORDER BY s.device_id
                    """
            ).compactMap { row in
                guard let id = try? DeviceID(row["device_id"] as String) else { return nil }
                return (id, [UInt8](row["irk"] as Data))
            }
        }
    }

    // MARK: MQTT sessions and retained messages

    public func saveMQTTSessions(_ changes: [MQTTSessionChange], holder: String, release: Bool) async throws
        -> Set<String>
    {
        guard !changes.isEmpty else { return [] }
        return try await write { db in
            let save = try db.cachedStatement(
                sql: """
                    INSERT INTO mqtt_sessions (session_key, owner, expiry_seconds, disconnected_at, state, saved_at,
                        holder)
                    VALUES (?, ?, ?, ?, ?, ?, ?)
                    ON CONFLICT(session_key) DO UPDATE SET owner = excluded.owner,
                        expiry_seconds = excluded.expiry_seconds, disconnected_at = excluded.disconnected_at,
                        state = excluded.state, saved_at = excluded.saved_at, holder = excluded.holder
                    WHERE mqtt_sessions.holder = ?
                    """)
            // A session stored and held by this node: its row updated only (gone, it is not brought back).
            let update = try db.cachedStatement(
                sql: """
                    UPDATE mqtt_sessions SET owner = ?, expiry_seconds = ?, disconnected_at = ?, state = ?,
                        saved_at = ?, holder = ?
                    WHERE session_key = ? AND holder = ?
                    """)
            let remove = try db.cachedStatement(
                sql: "DELETE FROM mqtt_sessions WHERE session_key = ? AND (holder IS NULL OR holder = ?)")
            var held: Set<String> = []
            for change in changes {
                guard let session = change.session else {
                    try remove.execute(arguments: [change.key, holder])
                    continue
                }
                let values: [(any DatabaseValueConvertible)?] = [
                    session.owner, session.expirySeconds, session.disconnectedAt?.millis, Data(session.state),
                    session.savedAt.millis, release ? nil : holder,
                ]
                if change.stored {
                    try update.execute(arguments: StatementArguments(values + [session.key, holder]))
                } else {
                    try save.execute(arguments: StatementArguments([session.key] + values + [holder]))
                }
                if db.changesCount != 1 { held.insert(session.key) }
            }
            return held
        }
    }

    public func mqttSessionHolder(key: String) async throws -> (stored: Bool, holder: String?) {
        try await read { db in
            let row = try Row.fetchOne(
                db, sql: "SELECT holder FROM mqtt_sessions WHERE session_key = ?", arguments: [key])
            return (row != nil, row?["holder"])
        }
    }

    public func takeMQTTSession(key: String, holder: String) async throws -> StoredMQTTSession? {
        try await write { db in
            try Row.fetchOne(
                db, sql: "UPDATE mqtt_sessions SET holder = ? WHERE session_key = ? RETURNING *",
                arguments: [holder, key]
            ).map(Self.mqttSession)
        }
    }

    public func markAlive(_ node: HubNodeRecord) async throws {
        let now = Date().millis
        try await write { db in
            try db.execute(
                sql: """
                    INSERT OR REPLACE INTO hub_nodes
                        (holder, seen_at, name, addresses, version, started_at, stopped, shares)
                    VALUES (?, ?, ?, ?, ?, ?, 0, ?)
                    """,
                arguments: [
                    node.holder, now, node.name, node.addresses, node.version, node.startedAt.millis, node.shares,
                ])
            try db.execute(sql: "DELETE FROM hub_nodes WHERE seen_at < ?", arguments: [now - 86_400_000])
        }
    }

    public func markStopped(holder: String) async throws {
        try await write { db in
            try db.execute(sql: "UPDATE hub_nodes SET stopped = 1 WHERE holder = ?", arguments: [holder])
        }
    }

    public func setNodePins(_ record: NodePinsRecord) async throws {
        try await write { db in
            try db.execute(
                sql: "INSERT OR REPLACE INTO node_pins (node, name, pins, updated_at, mac) VALUES (?, ?, ?, ?, ?)",
                arguments: [
                    record.node, record.name, record.encodedPins, record.updatedAt.millis,
                    Data(record.mac).base64EncodedString(),
                ])
        }
    }

    public func removeNodePins(node: String) async throws -> Bool {
        try await write { db in
            try db.execute(sql: "DELETE FROM node_pins WHERE node = ?", arguments: [node])
            return db.changesCount > 0
        }
    }

    public func nodePins() async throws -> [NodePinsRecord] {
        try await read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM node_pins ORDER BY node").map { row in
                NodePinsRecord(
                    node: row["node"], name: row["name"], pins: NodePinsRecord.decodePins(row["pins"]),
                    updatedAt: Date(millis: row["updated_at"]),
                    mac: Data(base64Encoded: row["mac"] as String).map { [UInt8]($0) } ?? [])
            }
        }
    }

    public func hubNodes() async throws -> [HubNodeStatus] {
        let now = Date()
        return try await read { db in
            try Row.fetchAll(
                db, sql: "SELECT * FROM hub_nodes WHERE seen_at >= ? ORDER BY started_at DESC, holder DESC",
                arguments: [now.millis - 86_400_000]
            ).map { row in
                let seen = Date(millis: row["seen_at"])
                return HubNodeStatus(
                    node: HubNodeRecord(
                        holder: row["holder"], name: row["name"], addresses: row["addresses"], version: row["version"],
                        startedAt: Date(millis: row["started_at"]), shares: row["shares"]),
                    lastSeen: seen, silentSeconds: now.timeIntervalSince(seen), stopped: row["stopped"])
            }
        }
    }

    public func adoptMQTTSessions(holder: String, all: Bool, silentFor: TimeInterval?) async throws
        -> [StoredMQTTSession]
    {
        let silentSince = silentFor.map { Date() - $0 }
        return try await write { db in
            try Row.fetchAll(
                db,
                sql: """
                    UPDATE mqtt_sessions SET holder = ?
                    WHERE ? OR holder IS NULL
                       OR (? IS NOT NULL AND holder <> ? AND disconnected_at IS NOT NULL AND NOT EXISTS (
                           SELECT 1 FROM hub_nodes n WHERE n.holder = mqtt_sessions.holder AND n.seen_at >= ?))
                    RETURNING *
                    """,
                arguments: [holder, all, silentSince?.millis, holder, silentSince?.millis]
            ).map(Self.mqttSession).sorted { $0.key < $1.key }
        }
    }

    private static func mqttSession(_ row: Row) -> StoredMQTTSession {
        StoredMQTTSession(
            key: row["session_key"], owner: row["owner"], expirySeconds: row["expiry_seconds"],
            disconnectedAt: (row["disconnected_at"] as Int64?).map(Date.init(millis:)),
            state: Array(row["state"] as Data), savedAt: Date(millis: row["saved_at"]))
    }

    public func putRetainedMessage(_ message: StoredRetainedMessage) async throws {
        try await write { db in
            try db.execute(
                sql: "INSERT OR REPLACE INTO mqtt_retained (topic, owner, message, saved_at) VALUES (?, ?, ?, ?)",
                arguments: [message.topic, message.owner, Data(message.message), message.savedAt.millis])
        }
    }

    public func removeRetainedMessage(topic: String, savedAt: Date?) async throws {
        try await write { db in
            if let savedAt {
                try db.execute(
                    sql: "DELETE FROM mqtt_retained WHERE topic = ? AND saved_at = ?",
                    arguments: [topic, savedAt.millis])
            } else {
                try db.execute(sql: "DELETE FROM mqtt_retained WHERE topic = ?", arguments: [topic])
            }
        }
    }

    public func retainedMessages() async throws -> [StoredRetainedMessage] {
        try await read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM mqtt_retained ORDER BY topic").map {
                StoredRetainedMessage(
                    topic: $0["topic"], owner: $0["owner"], message: Array($0["message"] as Data),
                    savedAt: Date(millis: $0["saved_at"]))
            }
        }
    }

    public var keepsMessageLog: Bool { true }

    public func loggedMessages(after id: Int64, limit: Int) async throws -> [(id: Int64, message: RelayedMessage)] {
        try await read { db in
            try Row.fetchAll(
                db, sql: "SELECT id, publisher, packet, at FROM mqtt_message_log WHERE id > ? ORDER BY id LIMIT ?",
                arguments: [id, limit]
            ).map {
                (
                    $0["id"],
                    RelayedMessage(
                        origin: "", publisher: $0["publisher"], packet: Array($0["packet"] as Data),
                        at: Date(millis: $0["at"]))
                )
            }
        }
    }

    /// The newest message's id: that of the newest telemetry row's last message (every logged message is one).
    public func messageLogHead() async throws -> Int64 {
        try await read { db in try GroupCommitter.nextTelemetryID(db) - 1 }
    }

    public func pruneMessageLog(through id: Int64, keeping: Int) async throws {
        try await write { db in
            try db.execute(sql: "DELETE FROM mqtt_message_log WHERE id <= ?", arguments: [id])
            try db.execute(
                sql: """
                    DELETE FROM mqtt_message_log WHERE id <=
                        (SELECT id FROM mqtt_message_log ORDER BY id DESC LIMIT 1 OFFSET ?)
                    """, arguments: [keeping])
        }
    }

    /// Checkpoints the WAL into the database file (so the file alone is the whole store), then closes.
    public func close() async throws {
        _ = try? await pool.writeWithoutTransaction { db in try db.checkpoint(.truncate) }
        try pool.close()
    }

    private func write<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        do { return try await pool.write(body) } catch let error as StoreError { throw error } catch {
            throw StoreError(.unavailable, "write failed: \(error)")
        }
    }

    private func read<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        do { return try await pool.read(body) } catch let error as StoreError { throw error } catch {
            throw StoreError(.unavailable, "read failed: \(error)")
        }
    }
}

/// Group commit for telemetry: callers queue their message; whoever finds no batch in flight starts one on GRDB's
/// serial writer queue, and each finished batch starts the next with everything queued meanwhile. One transaction
/// (one fsync) serves a whole batch, and every caller is resumed only after its batch committed.
final class GroupCommitter: Sendable {
    private let pool: DatabasePool
    /// Bounds one transaction so a burst cannot build an unbounded batch: 512 messages and 32 MiB of bodies (a
    /// body may be up to 16 MiB under `mqtt.payloads`), as PostgreSQL's.
    private let pending = TelemetryQueue(maximumCount: 512, maximumBytes: 32 << 20)
    /// A row takes another message of its device only while it holds less than this: a reader of a device's newest
    /// message decodes its whole row, and a row's bytes must fit SQLite's limit on a value.
    static let rowBytes = 1 << 20
    private let indexEvery: Int64

    private let onCommit: (@Sendable (Int, Duration) -> Void)?

    init(pool: DatabasePool, indexEvery: Int64, onCommit: (@Sendable (Int, Duration) -> Void)? = nil) {
        self.pool = pool
        self.indexEvery = indexEvery
        self.onCommit = onCommit
    }

    func append(_ message: NewTelemetry) async throws -> Int64 {
        try await queue(message).value()
    }

    /// Queues the message now (batches keep the order of the queue) and returns what its batch's commit resolves.
    func queue(_ message: consuming NewTelemetry) -> PendingResult {
        let (result, start) = pending.append(message)
        if start { writeNextBatch() }
        return result
    }

    /// Queues the message now, its batch's outcome handed to `reader`.
    func queue(_ message: consuming NewTelemetry, reader: any PendingResultReader) {
        if pending.append(message, heardBy: reader) { writeNextBatch() }
    }

    private static func storedWindow(_ device: DeviceID, _ db: Database) throws -> StoredCounterWindow? {
        try Row.fetchOne(
            db.cachedStatement(sql: "SELECT highest, seen FROM counter_windows WHERE device_id = ?"),
            arguments: [device.rawValue]
        ).map {
            StoredCounterWindow(highest: UInt64(bitPattern: $0["highest"]), seen: UInt64(bitPattern: $0["seen"]))
        }
    }

    /// The batch's accepted messages as rows of `telemetry_chunks`, one per device (more for a device whose messages
    /// pass `rowBytes`) in the order each device's first message was queued, its messages in queue order
    /// (`TelemetryChunk`), under ids that follow the newest row's. Returns each message's id (nil where `accepted` is
    /// false), each device's newest time, and the last row's `first_id` and message id (nil: no row). The insert is
    /// bound and stepped with SQLite's C API: GRDB's arguments box every value (an existential per column, the bytes
    /// copied into a `Data`), which cost more than the insert's own SQLite work per message in a profile of MQTT QoS 0.
    /// Strings and the row's bytes are bound where they lie (`SQLITE_STATIC`) and unbound before they go. GRDB does not
    /// see this statement run: a transaction observer (the hub registers none) would not hear of it.
    private static func insertChunks(
        _ batch: [TelemetryQueue.Entry], accepted: [Bool], _ db: Database
    ) throws -> (ids: [Int64?], seen: [(DeviceID, Int64)], newest: (row: Int64, message: Int64)?) {
        var ids = [Int64?](repeating: nil, count: batch.count)
        var groupOf: [DeviceID: Int] = [:]
        var groups: [(indices: [Int], newest: Int64)] = []
        for index in batch.indices where accepted[index] {
            let message = batch[index].message
            let at = message.receivedAt.millis
            if let group = groupOf[message.deviceID] {
                groups[group].indices.append(index)
                groups[group].newest = max(groups[group].newest, at)
            } else {
                groupOf[message.deviceID] = groups.count
                groups.append(([index], at))
            }
        }
        guard !groups.isEmpty else { return (ids, [], nil) }
        var next = try nextTelemetryID(db)
        let statement = try db.cachedStatement(
            sql: "INSERT INTO telemetry_chunks (first_id, device_id, count, messages) VALUES (?, ?, ?, ?)")
        var buffer: [UInt8] = []
        var seen: [(DeviceID, Int64)] = []
        seen.reserveCapacity(groups.count)
        var lastRow = next
        for group in groups {
            let device = batch[group.indices[0]].message.deviceID
            var rowStart = 0
            while rowStart < group.indices.count {
                let (rowEnd, size) = rowEnd(from: rowStart, count: group.indices.count, limit: rowBytes) { position in
                    let message = batch[group.indices[position]].message
                    return TelemetryChunk.size(
                        correlationID: message.correlationID.utf8.count, messageType: message.messageType?.utf8.count,
                        body: message.body.count)
                }
                buffer.reserveCapacity(size)
                TelemetryChunk.start(&buffer)
                for index in group.indices[rowStart..<rowEnd] {
                    let message = batch[index].message
                    try TelemetryChunk.append(
                        receivedAtMillis: message.receivedAt.millis, correlationID: message.correlationID,
                        messageType: message.messageType, body: message.body, to: &buffer)
                }
                try insertRow(statement, first: next, device: device, count: rowEnd - rowStart, buffer, db)
                lastRow = next
                for (offset, index) in group.indices[rowStart..<rowEnd].enumerated() {
                    ids[index] = next + Int64(offset)
                }
                next += Int64(rowEnd - rowStart)
                rowStart = rowEnd
            }
            seen.append((device, group.newest))
        }
        return (ids, seen, (lastRow, next - 1))
    }

    /// Where the row that starts at message `start` of a device's `count` ends (exclusive), and its bytes (the
    /// version byte included), given each message's encoded `size`: a row takes its first message whatever its size,
    /// then another only while it holds less than `limit` bytes.
    static func rowEnd(from start: Int, count: Int, limit: Int, size: (Int) -> Int) -> (end: Int, bytes: Int) {
        var end = start
        var bytes = 1
        while end < count, end == start || bytes < limit {
            bytes += size(end)
            end += 1
        }
        return (end, bytes)
    }

    /// The id the next stored message takes: the one after the newest row's last. A newest row whose count was
    /// damaged on disk (the column's check keeps it a positive integer otherwise) still moves it past that row, so a
    /// damaged row cannot refuse every later batch.
    static func nextTelemetryID(_ db: Database) throws -> Int64 {
        guard
            let row = try Row.fetchOne(
                db.cachedStatement(sql: "SELECT first_id, count FROM telemetry_chunks ORDER BY first_id DESC LIMIT 1"))
        else { return 1 }
        let first: Int64 = try row.decode(Int64.self, atIndex: 0)
        let count = (try? row.decode(Int64?.self, atIndex: 1)).flatMap { $0 } ?? 1
        return first + max(1, count)
    }

    private static func insertRow(
        _ statement: Statement, first: Int64, device: DeviceID, count: Int, _ bytes: [UInt8], _ db: Database
    ) throws {
        guard let length = Int32(exactly: bytes.count) else {
            throw StoreError(.invalid, "a telemetry row of \(bytes.count) bytes")
        }
        try stepOnce(statement, db) { handle in
            Self.withBytes(device.rawValue) { id in
                bytes.withUnsafeBytes { bytes -> Int32 in
                    var bound = sqlite3_bind_int64(handle, 1, first)
                    if bound == SQLITE_OK { bound = bindText(handle, 2, id) }
                    if bound == SQLITE_OK { bound = sqlite3_bind_int64(handle, 3, Int64(count)) }
                    if bound == SQLITE_OK { bound = sqlite3_bind_blob(handle, 4, bytes.baseAddress, length, nil) }
                    return bound == SQLITE_OK ? sqlite3_step(handle) : bound
                }
            }
        }
    }

    /// Steps `statement` once with what `bindAndStep` binds: it returns `sqlite3_step`'s code, or the first failed
    /// bind's. The statement is reset before, and reset and unbound after (bytes bound in place, `SQLITE_STATIC`, are
    /// never left bound); SQLite's error, read before the reset, is thrown unless the step is done.
    private static func stepOnce(_ statement: Statement, _ db: Database, _ bindAndStep: (SQLiteStatement) -> Int32)
        throws
    {
        let handle = statement.sqliteStatement
        sqlite3_reset(handle)
        defer {
            sqlite3_reset(handle)
            sqlite3_clear_bindings(handle)
        }
        let code = bindAndStep(handle)
        guard code == SQLITE_DONE else {
            throw DatabaseError(
                resultCode: ResultCode(rawValue: code), message: db.lastErrorMessage, sql: statement.sql)
        }
    }

    /// A string's UTF-8 bytes where they lie (no copy of the string, so no reference counted on the writer's
    /// thread), or from a copy when the string has no contiguous UTF-8 (a bridged one).
    private static func withBytes<R>(_ text: String, _ body: (UnsafeBufferPointer<UInt8>) -> R) -> R {
        if let result = text.utf8.withContiguousStorageIfAvailable(body) { return result }
        var copy = text
        return copy.withUTF8(body)
    }

    /// Binds UTF-8 bytes as text without a copy (`SQLITE_STATIC`: a nil destructor); empty text is text, not NULL
    /// (bound as a copy, `SQLITE_TRANSIENT`, of nothing). Returns SQLite's result code.
    private static func bindText(_ handle: SQLiteStatement, _ index: Int32, _ bytes: UnsafeBufferPointer<UInt8>)
        -> Int32
    {
        guard let base = bytes.baseAddress, !bytes.isEmpty else {
            return sqlite3_bind_text(handle, index, "", 0, unsafeBitCast(-1, to: sqlite3_destructor_type.self))
        }
        return UnsafeRawPointer(base).withMemoryRebound(to: CChar.self, capacity: bytes.count) {
            sqlite3_bind_text(handle, index, $0, Int32(bytes.count), nil)
        }
    }

    /// The batch's stored messages that carry an MQTT delivery (`NewTelemetry.relay`: a single node's message that
    /// a replayable subscription matched) go into the message log under their own ids, in the batch's transaction.
    /// Bound and stepped with SQLite's C API, as `insertChunks` (GRDB's arguments would copy each packet into a
    /// `Data` and box every value).
    private static func logMessages(_ batch: [TelemetryQueue.Entry], ids: [Int64?], _ db: Database) throws {
        guard batch.contains(where: { $0.message.relay != nil }) else { return }
        let insert = try db.cachedStatement(
            sql: "INSERT INTO mqtt_message_log (id, publisher, packet, at) VALUES (?, ?, ?, ?)")
        for index in batch.indices {
            guard let id = ids[index], let relay = batch[index].message.relay else { continue }
            guard let length = Int32(exactly: relay.packet.count) else {
                throw StoreError(.invalid, "a logged message of \(relay.packet.count) bytes")
            }
            let at = batch[index].message.receivedAt.millis
            try stepOnce(insert, db) { handle in
                // Stepped within the closures that bind in place: the bytes are only valid there.
                func bindAndStep(publisher: UnsafeBufferPointer<UInt8>?) -> Int32 {
                    relay.packet.withUnsafeBytes { packet -> Int32 in
                        var bound = sqlite3_bind_int64(handle, 1, id)
                        if bound == SQLITE_OK {
                            bound = publisher.map { bindText(handle, 2, $0) } ?? sqlite3_bind_null(handle, 2)
                        }
                        if bound == SQLITE_OK { bound = sqlite3_bind_blob(handle, 3, packet.baseAddress, length, nil) }
                        if bound == SQLITE_OK { bound = sqlite3_bind_int64(handle, 4, at) }
                        return bound == SQLITE_OK ? sqlite3_step(handle) : bound
                    }
                }
                guard let publisher = relay.publisher else { return bindAndStep(publisher: nil) }
                return Self.withBytes(publisher) { bindAndStep(publisher: $0) }
            }
        }
    }

    /// Each device's newest stored message time on its row (the fleet overview sorts by it), once per batch and
    /// never backwards (as PostgreSQL's trigger keeps it). Bound and stepped with SQLite's C API, as `insertChunks`:
    /// in a fleet a batch holds about one message per device, so this runs about once per message, and GRDB's boxed
    /// arguments cost two allocations each (`bulwark-bench store --devices 5000`).
    private static func markSeen(_ seen: [(DeviceID, Int64)], _ db: Database) throws {
        guard !seen.isEmpty else { return }
        let update = try db.cachedStatement(
            sql: "UPDATE devices SET last_seen = MAX(COALESCE(last_seen, 0), ?) WHERE id = ?")
        for (device, at) in seen {
            try stepOnce(update, db) { handle in
                Self.withBytes(device.rawValue) { id -> Int32 in
                    var bound = sqlite3_bind_int64(handle, 1, at)
                    if bound == SQLITE_OK { bound = bindText(handle, 2, id) }
                    return bound == SQLITE_OK ? sqlite3_step(handle) : bound
                }
            }
        }
    }

    /// Adds the telemetry rows above `telemetry_indexed.upto` to `telemetry_chunk_index` once the newest message id is
    /// `every` or more past the mark (the mark is a row's `first_id`, so up to a row's worth early), sorted by device,
    /// and moves `upto` to the newest row, in the batch's transaction: the index and its mark commit together, so a
    /// reader (or a restart) never sees a row both unindexed and below the mark. Should an entry already be there (or
    /// the mark's row be missing), the batch still commits: `OR IGNORE` and an upsert, so that a damaged index can
    /// never refuse every later message.
    private static func indexTail(newestRow: Int64, newestMessage: Int64, every: Int64, _ db: Database) throws {
        let upto = try SQLiteHubStore.indexedUpTo(db)
        guard newestMessage - upto >= every else { return }
        try db.cachedStatement(
            sql: "INSERT OR IGNORE INTO telemetry_chunk_index (device_id, first_id, count) "
                + "SELECT device_id, first_id, count FROM telemetry_chunks WHERE first_id > ? AND first_id <= ? "
                + "ORDER BY device_id, first_id"
        ).execute(arguments: [upto, newestRow])
        try db.cachedStatement(
            sql: "INSERT INTO telemetry_indexed (one, upto) VALUES (1, ?) "
                + "ON CONFLICT (one) DO UPDATE SET upto = excluded.upto"
        ).execute(arguments: [newestRow])
    }

    /// A batch while its transaction runs: the completion takes the one reference to it out
    /// (`TelemetryQueue.committed` hands the entries back to the threads that queued them, to be freed there).
    private final class TakenBatch: @unchecked Sendable {
        var entries: [TelemetryQueue.Entry]
        init(_ entries: [TelemetryQueue.Entry]) { self.entries = entries }

        func take() -> [TelemetryQueue.Entry] {
            var taken: [TelemetryQueue.Entry] = []
            swap(&taken, &entries)
            return taken
        }
    }

    private func writeNextBatch() {
        let taken = TakenBatch(pending.nextBatch())
        guard !taken.entries.isEmpty else { return }
        let started = ContinuousClock.now
        let indexEvery = indexEvery
        Self.asyncTransaction(
            pool,
            { db -> [Int64?] in
                let batch = taken.entries
                let now = Int64(Date().timeIntervalSince1970)
                var accepted: [Bool] = []
                accepted.reserveCapacity(batch.count)
                for index in batch.indices {
                    accepted.append(try Self.admit(batch[index], now: now, db))
                }
                let (ids, seen, newest) = try Self.insertChunks(batch, accepted: accepted, db)
                try Self.markSeen(seen, db)
                try Self.logMessages(batch, ids: ids, db)
                if let newest {
                    try Self.indexTail(newestRow: newest.row, newestMessage: newest.message, every: indexEvery, db)
                }
                if batch.contains(where: { $0.message.nonce != nil }) {
                    try db.cachedStatement(sql: "DELETE FROM nonces WHERE expires_at <= ?")
                        .execute(arguments: [Int64(Date().timeIntervalSince1970)])
                }
                return ids
            },
            completion: { result in
                let batch = taken.take()
                switch result {
                case .success(let ids):
                    self.onCommit?(batch.count, ContinuousClock.now - started)
                    TelemetryQueue.committed(consume batch, ids: ids)
                case .failure(let error):
                    TelemetryQueue.failed(consume batch, StoreError(.unavailable, "telemetry batch failed: \(error)"))
                }
                self.writeNextBatch()
            })
    }

    /// GRDB's `asyncWrite` (an immediate transaction, rolled back on any error, then `completion` on the writer's
    /// queue) with BEGIN and COMMIT as cached statements: GRDB prepares both from their text for every transaction,
    /// which cost a signed HTTP request's group commit (about three messages) some 4-5 µs per message in a profile.
    /// As in `Database.inTransaction`: an error inside, or a COMMIT that fails, rolls back (`rollback()` does nothing
    /// when SQLite already did), and the first error is the one reported.
    private static func asyncTransaction<T: Sendable>(
        _ pool: DatabasePool, _ updates: @escaping @Sendable (Database) throws -> T,
        completion: @escaping @Sendable (Result<T, any Error>) -> Void
    ) {
        pool.asyncWriteWithoutTransaction { db in
            let result: Result<T, any Error>
            do {
                try db.cachedStatement(sql: "BEGIN IMMEDIATE TRANSACTION").execute()
                do {
                    let value = try updates(db)
                    // SQLite may have rolled back by itself (a full disk, an I/O error) under an error that was
                    // caught inside: then what ran after it ran outside any transaction. Report the batch as
                    // failed rather than commit nothing (GRDB's `checkForAbortedTransaction`).
                    guard db.isInsideTransaction else {
                        throw DatabaseError(resultCode: .SQLITE_ABORT, message: "Transaction was aborted")
                    }
                    try db.cachedStatement(sql: "COMMIT TRANSACTION").execute()
                    result = .success(value)
                } catch {
                    try? db.rollback()
                    result = .failure(error)
                }
            } catch {
                result = .failure(error)
            }
            completion(result)
        }
    }

    /// The replay state of one message of a batch, inside the batch's transaction: false for a replay (nothing of it
    /// will be stored), else true once its counter window is stored. The message is read where it lies in its entry,
    /// never copied out: a copy retained each of its references on the writer's thread, where a connection's thread
    /// had just written them.
    private static func admit(_ entry: TelemetryQueue.Entry, now: Int64, _ db: Database) throws -> Bool {
        // The replay state travels in the message's own transaction: acknowledged together or not at all.
        // A counter the stored window holds, or a live nonce already stored, is a replay (another writer
        // took it first): that message alone is refused, nothing of it stored.
        var accepted: StoredCounterWindow?
        if let counter = entry.message.counter {
            let stored = try Self.storedWindow(entry.message.deviceID, db)
            accepted = (stored ?? StoredCounterWindow(highest: 0, seen: 0)).accepting(counter)
            if accepted == nil {
                return false
            }
        }
        if let nonce = entry.message.nonce {
            try db.cachedStatement(
                sql: """
                    INSERT INTO nonces (device_id, nonce, expires_at) VALUES (?, ?, ?)
                    ON CONFLICT (device_id, nonce) DO UPDATE SET expires_at = excluded.expires_at
                    WHERE nonces.expires_at <= ?
                    """
            )
            .execute(arguments: [entry.message.deviceID.rawValue, nonce.nonce, nonce.expiresAt, now])
            if db.changesCount == 0 {
                return false
            }
        }
        // The window to store: the one this counter was accepted into, or the gateway's merged with the stored one
        // (never backwards: concurrent writes of one device may commit out of order).
        var window = accepted
        if window == nil, let gateway = entry.message.counterWindow {
            window = gateway.merged(with: try Self.storedWindow(entry.message.deviceID, db))
        }
        if let window {
            try db.cachedStatement(
                sql: "INSERT INTO counter_windows (device_id, highest, seen) VALUES (?, ?, ?) "
                    + "ON CONFLICT(device_id) DO UPDATE SET highest = excluded.highest, seen = excluded.seen"
            ).execute(arguments: [
                entry.message.deviceID.rawValue, Int64(bitPattern: window.highest), Int64(bitPattern: window.seen),
            ])
        }
        return true
    }
}
