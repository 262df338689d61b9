public import Foundation
import NIOSSL
public import PostgresNIO
import Store

/// Where the PostgreSQL store lives: `database.url`, `database.passwordFile`, `database.caFile`.
///
/// The URL reads `postgres://USER@HOST:PORT/DATABASE?sslmode=verify-full`. A password in the URL is refused (it
/// would sit in the configuration file and in process listings): it is read from `passwordFile`, whose first line is
/// the password. `sslmode=verify-full` (the default) speaks TLS 1.2 or later and checks the server's certificate
/// against `caFile` (required) and its name or IP address against the URL's host; `sslmode=disable` is accepted for a
/// loopback address only. No other mode is offered: `require` and `prefer` would accept any server that answers.
///
/// Every session is opened with the settings the store's guarantees rest on, whatever the server's defaults:
/// `synchronous_commit = on` (an acknowledged message is on disk), read committed isolation (the advisory-lock
/// serialisation of the audit chain relies on it), and timeouts so that a node cut off while holding a lock, or a
/// stuck statement, frees the others within seconds instead of hours.
public struct PostgresLocation: Sendable, Equatable {
    public var host: String
    public var port: Int
    public var user: String
    public var database: String
    public var verifyTLS: Bool
    public var passwordFile: String?
    public var caFile: String?

    public init(url: String, passwordFile: String?, caFile: String?) throws {
        guard let components = URLComponents(string: url), ["postgres", "postgresql"].contains(components.scheme),
            let host = components.host, !host.isEmpty
        else { throw StoreError(.invalid, "database.url must read postgres://USER@HOST:PORT/DATABASE") }
        guard components.password == nil else {
            throw StoreError(.invalid, "database.url must not hold a password: put it in database.passwordFile")
        }
        guard let user = components.user, !user.isEmpty else {
            throw StoreError(.invalid, "database.url names no user (postgres://USER@HOST:PORT/DATABASE)")
        }
        let database = String(components.path.drop { $0 == "/" })
        guard !database.isEmpty, !database.contains("/") else {
            throw StoreError(.invalid, "database.url names no database (postgres://USER@HOST:PORT/DATABASE)")
        }
        var mode = "verify-full"
        for item in components.queryItems ?? [] {
            guard item.name == "sslmode", let value = item.value else {
                throw StoreError(.invalid, "database.url: unknown parameter \(item.name) (only sslmode is read)")
            }
            mode = value
        }
        let loopback = ["127.0.0.1", "::1", "[::1]", "localhost"].contains(host)
        switch mode {
        case "verify-full":
            // The server's certificate must come from the CA given: with the system's public roots, NIOSSL also
            // accepts a certificate for the IP address the name resolved to, so whoever controls DNS could answer.
            guard caFile != nil else {
                throw StoreError(.invalid, "database.caFile is required with sslmode=verify-full (the database's CA)")
            }
            verifyTLS = true
        case "disable" where loopback: verifyTLS = false
        case "disable": throw StoreError(.invalid, "database.url: sslmode=disable is accepted for a loopback host only")
        default: throw StoreError(.invalid, "database.url: sslmode must be verify-full (or disable on loopback)")
        }
        self.host = host.hasPrefix("[") ? String(host.dropFirst().dropLast()) : host
        self.port = components.port ?? 5432
        self.user = user
        self.database = database
        self.passwordFile = passwordFile
        self.caFile = caFile
    }

    /// The same server and credentials, another database (the tests make one per store).
    public func with(database: String) -> PostgresLocation {
        var copy = self
        copy.database = database
        return copy
    }

    /// The pool's configuration: the password read from its file now (never kept in the configuration).
    public func clientConfiguration() throws -> PostgresClient.Configuration {
        var configuration = PostgresClient.Configuration(
            host: host, port: port, username: user, password: try password(), database: database,
            tls: try tlsConfiguration().map { .require($0) } ?? .disable)
        configuration.options.connectTimeout = .seconds(5)
        configuration.options.additionalStartupParameters = Self.sessionSettings
        return configuration
    }

    /// One connection's configuration, same server and checks (the store's first connection, which reports why the
    /// server cannot be reached instead of retrying as the pool does).
    public func connectionConfiguration() throws -> PostgresConnection.Configuration {
        var configuration = PostgresConnection.Configuration(
            host: host, port: port, username: user, password: try password(), database: database,
            tls: try tlsConfiguration().map { .require(try NIOSSLContext(configuration: $0)) } ?? .disable)
        configuration.options.connectTimeout = .seconds(5)
        configuration.options.additionalStartupParameters = Self.sessionSettings
        return configuration
    }

    /// Sent in the startup message of every connection (PostgreSQL applies them as per-session settings).
    static let sessionSettings = [
        ("synchronous_commit", "on"), ("default_transaction_isolation", "read committed"),
        ("idle_in_transaction_session_timeout", "30s"), ("lock_timeout", "10s"), ("statement_timeout", "60s"),
    ]

    private func password() throws -> String? {
        guard let passwordFile else { return nil }
        guard let data = FileManager.default.contents(atPath: passwordFile) else {
            throw StoreError(.invalid, "cannot read database.passwordFile \(passwordFile)")
        }
        return String(decoding: data, as: UTF8.self).split(whereSeparator: \.isNewline).first.map(String.init)
    }

    /// TLS 1.2 or later, the chain checked against `caFile` (or the system's roots) and the name (or IP address)
    /// against the URL's host; nil for `sslmode=disable`.
    private func tlsConfiguration() throws -> TLSConfiguration? {
        guard verifyTLS else { return nil }
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.minimumTLSVersion = .tlsv12
        configuration.certificateVerification = .fullVerification
        if let caFile {
            guard FileManager.default.isReadableFile(atPath: caFile) else {
                throw StoreError(.invalid, "cannot read database.caFile \(caFile)")
            }
            configuration.trustRoots = .file(caFile)
        }
        return configuration
    }
}
