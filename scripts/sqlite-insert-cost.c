/*
 * What one stored telemetry row costs SQLite, by batch size and schema, outside the hub (libsqlite3 only).
 * The hub's telemetry table and index, WAL with synchronous=FULL, one transaction per batch as the group committer
 * makes them, rows from 50 devices in turn (as `bulwark-bench mqtt` sends them).
 *
 *   cc -O2 -o /tmp/sqlite-insert-cost scripts/sqlite-insert-cost.c -lsqlite3
 *   /tmp/sqlite-insert-cost 256            # batch of 256 rows, the hub's schema
 *   /tmp/sqlite-insert-cost 256 no-index   # without telemetry_device (device_id, id)
 *   /tmp/sqlite-insert-cost 256 batched-index   # the hub's since migration v25: telemetry_by_device, filled
 *                                               # in sorted batches of 2,048 rows inside the commit that reaches them
 *
 *   /tmp/sqlite-insert-cost 256 batched-index packed
 *                           # each transaction's messages stored one row per device, framed one after the other
 *                           # (length, time, correlation id, body): what one row per message costs against one row
 *                           # per device and batch (issue #16's QoS 0 aim; not the hub's schema)
 *
 * Other words: no-autoincrement, no-foreign-keys. Prints user and system CPU and wall time per message.
 * The database is made in a fresh temporary directory and removed.
 */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/resource.h>

static double seconds(struct timeval t) { return t.tv_sec + t.tv_usec / 1e6; }

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: %s BATCH [no-index] [no-autoincrement] [no-foreign-keys]\n", argv[0]); return 2; }
    int batch = atoi(argv[1]), index = 1, autoincrement = 1, foreignKeys = 1, batched = 0, packed = 0;
    if (batch < 1 || batch > 100000) { fprintf(stderr, "BATCH 1-100000\n"); return 2; }
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "no-index")) index = 0;
        else if (!strcmp(argv[i], "batched-index")) { index = 0; batched = 1; }
        else if (!strcmp(argv[i], "no-autoincrement")) autoincrement = 0;
        else if (!strcmp(argv[i], "no-foreign-keys")) foreignKeys = 0;
        else if (!strcmp(argv[i], "packed")) packed = 1;
        else { fprintf(stderr, "unknown %s\n", argv[i]); return 2; }
    }
    char directory[] = "/tmp/sqlite-insert-cost.XXXXXX", path[128], sql[1024];
    if (!mkdtemp(directory)) { perror("mkdtemp"); return 1; }
    snprintf(path, sizeof path, "%s/hub.db", directory);
    sqlite3 *db;
    if (sqlite3_open(path, &db) != SQLITE_OK) { fprintf(stderr, "open failed\n"); return 1; }
    sqlite3_exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;", 0, 0, 0);
    if (foreignKeys) sqlite3_exec(db, "PRAGMA foreign_keys=ON;", 0, 0, 0);
    snprintf(sql, sizeof sql,
        "CREATE TABLE devices (id TEXT PRIMARY KEY, last_seen INTEGER);"
        "CREATE TABLE telemetry_by_device (device_id TEXT NOT NULL, id INTEGER NOT NULL,"
        " PRIMARY KEY (device_id, id)) WITHOUT ROWID;"
        "CREATE TABLE telemetry (id INTEGER PRIMARY KEY %s, device_id TEXT NOT NULL REFERENCES devices(id),"
        " received_at INTEGER NOT NULL, correlation_id TEXT NOT NULL, body BLOB NOT NULL, message_type TEXT);%s",
        autoincrement ? "AUTOINCREMENT" : "",
        index ? "CREATE INDEX telemetry_device ON telemetry(device_id, id);" : "");
    if (sqlite3_exec(db, sql, 0, 0, 0) != SQLITE_OK) { fprintf(stderr, "%s\n", sqlite3_errmsg(db)); return 1; }
    char devices[50][48];
    for (int d = 0; d < 50; d++) {
        snprintf(devices[d], sizeof devices[d], "0b6f3c1e-5d7a-4c2b-9e8f-%012d", d);
        snprintf(sql, sizeof sql, "INSERT INTO devices (id) VALUES ('%.47s');", devices[d]);
        sqlite3_exec(db, sql, 0, 0, 0);
    }
    sqlite3_stmt *insert, *begin, *commit, *catchUp;
    sqlite3_prepare_v2(db,
        "INSERT INTO telemetry_by_device (device_id, id) SELECT device_id, id FROM telemetry"
        " WHERE id > ? AND id <= ? ORDER BY device_id, id", -1, &catchUp, 0);
    sqlite3_int64 indexed = 0;
    sqlite3_prepare_v2(db,
        "INSERT INTO telemetry (device_id, received_at, correlation_id, body, message_type) VALUES (?, ?, ?, ?, ?)",
        -1, &insert, 0);
    sqlite3_prepare_v2(db, "BEGIN IMMEDIATE", -1, &begin, 0);
    sqlite3_prepare_v2(db, "COMMIT", -1, &commit, 0);
    unsigned char body[200];
    memset(body, 'x', sizeof body);
    int total = batch * ((200000 + batch - 1) / batch);
    struct rusage before, after;
    struct timespec start, end;
    getrusage(RUSAGE_SELF, &before);
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (int row = 0; row < total;) {
        sqlite3_step(begin);
        sqlite3_reset(begin);
        if (packed) {
            /* One row per device: its messages of this batch, each framed as the hub would have to. */
            static unsigned char frames[50][100000 / 50 * 240 + 4096];
            size_t used[50] = {0};
            for (int k = 0; k < batch; k++, row++) {
                unsigned char *out = frames[row % 50] + used[row % 50];
                long long at = 1700000000000LL + row;
                out[0] = sizeof body >> 8; out[1] = sizeof body & 0xFF;
                memcpy(out + 2, &at, 8);
                memcpy(out + 10, "0123456789abcdef01234567", 24);
                memcpy(out + 34, body, sizeof body);
                used[row % 50] += 34 + sizeof body;
            }
            for (int d = 0; d < 50; d++) {
                if (!used[d]) continue;
                sqlite3_bind_text(insert, 1, devices[d], -1, SQLITE_STATIC);
                sqlite3_bind_int64(insert, 2, 1700000000000LL + row);
                sqlite3_bind_text(insert, 3, "0123456789abcdef01234567", 24, SQLITE_STATIC);
                sqlite3_bind_blob(insert, 4, frames[d], (int)used[d], SQLITE_STATIC);
                sqlite3_bind_null(insert, 5);
                if (sqlite3_step(insert) != SQLITE_DONE) { fprintf(stderr, "%s\n", sqlite3_errmsg(db)); return 1; }
                sqlite3_reset(insert);
            }
        }
        for (int k = 0; k < batch && !packed; k++, row++) {
            sqlite3_bind_text(insert, 1, devices[row % 50], -1, SQLITE_STATIC);
            sqlite3_bind_int64(insert, 2, 1700000000000LL + row);
            sqlite3_bind_text(insert, 3, "0123456789abcdef01234567", 24, SQLITE_STATIC);
            sqlite3_bind_blob(insert, 4, body, sizeof body, SQLITE_STATIC);
            sqlite3_bind_null(insert, 5);
            if (sqlite3_step(insert) != SQLITE_DONE) { fprintf(stderr, "%s\n", sqlite3_errmsg(db)); return 1; }
            sqlite3_reset(insert);
        }
        sqlite3_int64 newest = sqlite3_last_insert_rowid(db);
        if (batched && newest - indexed >= 2048) {
            sqlite3_bind_int64(catchUp, 1, indexed);
            sqlite3_bind_int64(catchUp, 2, newest);
            if (sqlite3_step(catchUp) != SQLITE_DONE) { fprintf(stderr, "%s\n", sqlite3_errmsg(db)); return 1; }
            sqlite3_reset(catchUp);
            indexed = newest;
        }
        if (sqlite3_step(commit) != SQLITE_DONE) { fprintf(stderr, "%s\n", sqlite3_errmsg(db)); return 1; }
        sqlite3_reset(commit);
    }
    clock_gettime(CLOCK_MONOTONIC, &end);
    getrusage(RUSAGE_SELF, &after);
    double user = seconds(after.ru_utime) - seconds(before.ru_utime);
    double system = seconds(after.ru_stime) - seconds(before.ru_stime);
    double wall = (end.tv_sec - start.tv_sec) + (end.tv_nsec - start.tv_nsec) / 1e9;
    printf("batch %d%s%s%s%s: %.2f µs CPU per message (user %.2f, system %.2f), %.2f µs wall, %d messages\n", batch,
        batched ? ", index in sorted batches of 2,048" : index ? "" : ", no index", autoincrement ? "" : ", no AUTOINCREMENT", foreignKeys ? "" : ", no foreign keys",
        packed ? ", one row per device and batch" : "",
        (user + system) / total * 1e6, user / total * 1e6, system / total * 1e6, wall / total * 1e6, total);
    sqlite3_finalize(insert);
    sqlite3_finalize(begin);
    sqlite3_finalize(commit);
    sqlite3_finalize(catchUp);
    sqlite3_close(db);
    snprintf(sql, sizeof sql, "%s/hub.db", directory); unlink(sql);
    snprintf(sql, sizeof sql, "%s/hub.db-wal", directory); unlink(sql);
    snprintf(sql, sizeof sql, "%s/hub.db-shm", directory); unlink(sql);
    rmdir(directory);
    return 0;
}
