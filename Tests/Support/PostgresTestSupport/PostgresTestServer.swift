public import Foundation
import Glibc
import Logging
import PostgresNIO
public import PostgresStore
import Store

/// The PostgreSQL server of the tests: the one `scripts/test` started (its `BULWARK_TEST_POSTGRES_*` variables), or,
/// when `swift test` runs alone, one this process starts with `scripts/postgres` in a temp dir and stops at exit.
/// Each store gets a database of its own.
public enum PostgresTestServer {
    public static let location: Result<PostgresLocation, any Error> = Result {
        var environment = ProcessInfo.processInfo.environment
        if environment["BULWARK_TEST_POSTGRES_URL"] == nil {
            environment.merge(try startOwnServer()) { _, own in own }
        }
        guard let url = environment["BULWARK_TEST_POSTGRES_URL"] else {
            throw StoreError(.unavailable, "no PostgreSQL server for the tests")
        }
        return try PostgresLocation(
            url: url, passwordFile: environment["BULWARK_TEST_POSTGRES_PASSWORD_FILE"],
            caFile: environment["BULWARK_TEST_POSTGRES_CA_FILE"])
    }

    /// A new, empty database on the test server: its location (the hub process tests hand it to `bulwark`).
    public static func freshDatabase() async throws -> PostgresLocation {
        let location = try location.get()
        let name = "bulwark_" + UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "")
        try await createDatabase(name, on: location)
        return location.with(database: name)
    }

    /// A new, empty database on the test server, opened as a store.
    public static func freshStore() async throws -> PostgresHubStore {
        try await PostgresHubStore(location: try await freshDatabase())
    }

    public static func createDatabase(_ name: String, on location: PostgresLocation) async throws {
        try await execute("CREATE DATABASE \(name)", on: location)
    }

    /// Runs one statement on the database at `location`, behind the store's back (as another program could), on a
    /// connection of its own: no pool to start and stop.
    public static func execute(_ sql: String, on location: PostgresLocation) async throws {
        let connection = try await PostgresConnection.connect(
            configuration: try location.connectionConfiguration(), id: 1,
            logger: Logger(label: "bulwark.test.postgres", factory: { _ in SwiftLogNoOpLogHandler() }))
        do {
            try await connection.query(PostgresQuery(unsafeSQL: sql), logger: Logger(label: "bulwark.test.postgres"))
        } catch {
            try? await connection.close()
            throw error
        }
        try await connection.close()
    }

    nonisolated(unsafe) private static var ownDirectory: String?

    /// Runs `scripts/postgres` and waits for it (posix_spawn and waitpid: Foundation's `Process` is not reaped while
    /// a lazy global's initialiser holds its lock). Returns its wait status.
    static func runScript(_ arguments: [String]) -> Int32 {
        let argv = ([script.path] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        guard posix_spawn(&pid, script.path, nil, nil, argv, environ) == 0 else { return -1 }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) == -1, errno == EINTR {}
        return status
    }

    /// `scripts/postgres` of this package (Tests/Support/PostgresTestSupport/ is three levels below its root).
    static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("scripts/postgres")

    /// A server of the caller's own (a fault test stops and resumes it): stop it with `stop(_:)` when done.
    public static func privateServer() throws -> (directory: String, location: PostgresLocation) {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("bulwark-pg-\(UUID())").path
        let values = try start(directory)
        guard let url = values["BULWARK_TEST_POSTGRES_URL"] else {
            throw StoreError(.unavailable, "scripts/postgres wrote no URL")
        }
        let location = try PostgresLocation(
            url: url, passwordFile: values["BULWARK_TEST_POSTGRES_PASSWORD_FILE"],
            caFile: values["BULWARK_TEST_POSTGRES_CA_FILE"])
        return (directory, location)
    }

    /// Stops a server (`scripts/postgres stop`, by the pid in its postmaster.pid).
    public static func stop(_ directory: String) -> Bool { runScript(["stop", directory]) == 0 }
    /// Starts a stopped server again on its port.
    public static func resume(_ directory: String) -> Bool { runScript(["resume", directory]) == 0 }

    private static func start(_ directory: String) throws -> [String: String] {
        guard runScript(["start", directory]) == 0,
            let env = FileManager.default.contents(atPath: directory + "/env")
        else { throw StoreError(.unavailable, "scripts/postgres start failed (is PostgreSQL installed?)") }
        var values: [String: String] = [:]
        for line in String(decoding: env, as: UTF8.self).split(separator: "\n") {
            let parts = line.split(separator: "=", maxSplits: 1)
            if parts.count == 2 { values[String(parts[0])] = String(parts[1]) }
        }
        return values
    }

    private static func startOwnServer() throws -> [String: String] {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("bulwark-pg-\(UUID())").path
        let values = try start(directory)
        ownDirectory = directory
        atexit {
            guard let directory = PostgresTestServer.ownDirectory else { return }
            _ = PostgresTestServer.runScript(["stop", directory])
            try? FileManager.default.removeItem(atPath: directory)
        }
        return values
    }
}
