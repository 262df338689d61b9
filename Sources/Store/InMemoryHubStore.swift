public import Core
public import Foundation

/// The in-memory twin of `SQLiteHubStore`, for tests and `bulwark demo`. Same semantics, nothing durable.
public actor InMemoryHubStore: HubStore {
    private var deviceRecords: [DeviceID: DeviceRecord] = [:]
    private var certificateRecords: [String: CertificateRecord] = [:]
    private var telemetryRecords: [TelemetryRecord] = []
    private var events: [SecurityEvent] = []
    private var irks: [DeviceID: [UInt8]] = [:]

    public init() {}

    public func enroll(device: DeviceID, certificate: CertificateRecord, at: Date) async throws {
        guard certificateRecords[certificate.serialHex] == nil else {
            throw StoreError(.conflict, "certificate serial already recorded")
        }
        if var existing = deviceRecords[device] {
            existing.status = .active
            existing.revokedAt = nil
            deviceRecords[device] = existing
        } else {
            deviceRecords[device] = DeviceRecord(id: device, status: .active, createdAt: at)
        }
        certificateRecords[certificate.serialHex] = certificate
    }

    public func addCertificate(_ certificate: CertificateRecord) async throws {
        guard certificateRecords[certificate.serialHex] == nil else {
            throw StoreError(.conflict, "certificate serial already recorded")
        }
        certificateRecords[certificate.serialHex] = certificate
    }

    public func device(_ id: DeviceID) async throws -> DeviceRecord? { deviceRecords[id] }

    public func devices() async throws -> [DeviceRecord] { deviceRecords.values.sorted { $0.id < $1.id } }

    public func certificates(of device: DeviceID) async throws -> [CertificateRecord] {
        certificateRecords.values.filter { $0.deviceID == device }.sorted { $0.notBefore < $1.notBefore }
    }

    public func revoke(device: DeviceID, at: Date) async throws -> [String] {
        guard var record = deviceRecords[device] else { throw StoreError(.notFound, "no such device") }
        record.status = .revoked
        record.revokedAt = record.revokedAt ?? at
        deviceRecords[device] = record
        var serials: [String] = []
        for (serial, var certificate) in certificateRecords where certificate.deviceID == device {
            if certificate.revokedAt == nil {
                certificate.revokedAt = at
                certificateRecords[serial] = certificate
            }
            serials.append(serial)
        }
        return serials.sorted()
    }

    public func revokedSerials() async throws -> Set<String> {
        Set(certificateRecords.values.filter { $0.revokedAt != nil }.map(\.serialHex))
    }

    public func appendTelemetry(_ message: NewTelemetry) async throws -> Int64 {
        let id = Int64(telemetryRecords.count + 1)
        telemetryRecords.append(
            TelemetryRecord(
                id: id, deviceID: message.deviceID, receivedAt: message.receivedAt,
                correlationID: message.correlationID, body: message.body))
        return id
    }

    public func telemetry(of device: DeviceID, limit: Int) async throws -> [TelemetryRecord] {
        Array(telemetryRecords.filter { $0.deviceID == device }.suffix(limit).reversed())
    }

    public func telemetryCount(of device: DeviceID?) async throws -> Int {
        guard let device else { return telemetryRecords.count }
        return telemetryRecords.count { $0.deviceID == device }
    }

    public func recordSecurityEvent(_ event: SecurityEvent) async throws {
        var event = event
        event.id = Int64(events.count + 1)
        events.append(event)
    }

    public func securityEvents(limit: Int) async throws -> [SecurityEvent] { Array(events.suffix(limit).reversed()) }

    public func setIdentityResolvingKey(_ irk: [UInt8], for device: DeviceID) async throws {
        guard deviceRecords[device] != nil else { throw StoreError(.notFound, "no such device") }
        irks[device] = irk
    }

    public func identityResolvingKeys() async throws -> [(DeviceID, [UInt8])] {
        irks.filter { deviceRecords[$0.key]?.status == .active }.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
    }

    public func close() async throws {}
}
