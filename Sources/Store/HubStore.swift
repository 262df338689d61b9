public import Core
public import Foundation

/// Everything the hub keeps. Two backends implement it (in memory, SQLite) and pass the same tests; a PostgreSQL
/// backend for several hub nodes goes behind the same protocol.
public protocol HubStore: Sendable {
    /// Creates the device if it is new (or re-activates a revoked one: an explicit operator act) and records its
    /// certificate, in one transaction.
    func enroll(device: DeviceID, certificate: CertificateRecord, at: Date) async throws
    /// Records a certificate that belongs to no device (the hub's own, operators').
    func addCertificate(_ certificate: CertificateRecord) async throws
    func device(_ id: DeviceID) async throws -> DeviceRecord?
    func devices() async throws -> [DeviceRecord]
    func certificates(of device: DeviceID) async throws -> [CertificateRecord]
    /// Marks the device and all its certificates revoked; returns the serials revoked. Throws `notFound`.
    func revoke(device: DeviceID, at: Date) async throws -> [String]
    func revokedSerials() async throws -> Set<String>
    /// Returns only once the message is durable: the caller acknowledges it after this returns.
    func appendTelemetry(_ message: NewTelemetry) async throws -> Int64
    func telemetry(of device: DeviceID, limit: Int) async throws -> [TelemetryRecord]
    func telemetryCount(of device: DeviceID?) async throws -> Int
    func recordSecurityEvent(_ event: SecurityEvent) async throws
    func securityEvents(limit: Int) async throws -> [SecurityEvent]
    /// The identity resolving key given to a device at pairing (a secret: never logged or returned by the API).
    func setIdentityResolvingKey(_ irk: [UInt8], for device: DeviceID) async throws
    /// Every active device's IRK, to build the rotating-identifier resolver.
    func identityResolvingKeys() async throws -> [(DeviceID, [UInt8])]
    func close() async throws
}
