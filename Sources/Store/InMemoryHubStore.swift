public import Advisories
public import Core
public import Foundation

/// The in-memory twin of `SQLiteHubStore`, for tests and `bulwark demo`. Same semantics, nothing durable.
public actor InMemoryHubStore: HubStore {
    private var deviceRecords: [DeviceID: DeviceRecord] = [:]
    private var certificateRecords: [String: CertificateRecord] = [:]
    private var telemetryRecords: [TelemetryRecord] = []
    private var irks: [DeviceID: [UInt8]] = [:]
    private var audit: [AuditRecord] = []
    private var auditKey: AuditKey?
    private var nonceRecords: [DeviceID: [String: Int64]] = [:]
    private var windows: [DeviceID: StoredCounterWindow] = [:]
    private var quarantineRecords: [DeviceID: Int64] = [:]
    private var schemaRecords: [String: [UInt8]] = [:]
    private var renewals: [String: PendingRenewal] = [:]
    private var classes: [DeviceID: String] = [:]
    private var assignments: [String: String] = [:]
    private var rules: [String: [String]] = [:]
    private var seen: [DeviceID: [String: DestinationRecord]] = [:]
    private var updates: [DeviceID: DeviceUpdateState] = [:]
    private var rollouts: [String: Rollout] = [:]
    private var waiverList: [Waiver] = []
    private var releaseList: [ReleaseRecord] = []
    private var claims: [DeviceID: (claim: StoredClaim, holder: String?, heldUntil: Date?)] = [:]
    private var failures: [DeviceID: PairingFailures] = [:]
    private var mqttSessions: [String: (session: StoredMQTTSession, holder: String?)] = [:]
    /// By the topic's UTF-8 bytes, as SQLite and PostgreSQL compare them (topics are never normalized).
    private var retained: [[UInt8]: StoredRetainedMessage] = [:]
    private var alive: [String: Date] = [:]
    private var nodes: [String: (record: HubNodeRecord, stopped: Bool)] = [:]
    private var pins: [String: NodePinsRecord] = [:]

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

    public func activatePendingCertificate(
        _ serialHex: String, device: DeviceID, irk: [UInt8], at: Date
    ) async throws {
        guard var certificate = certificateRecords[serialHex], certificate.deviceID == nil,
            certificate.subject == Identity.device(device).uri
        else {
            throw StoreError(.notFound, "no pending certificate \(serialHex) for this device")
        }
        if let revoked = deviceRecords[device]?.revokedAt, let pendingSince = certificate.revokedAt,
            revoked > pendingSince
        {
            throw StoreError(.conflict, "the device was revoked while it was pairing")
        }
        irks[device] = irk
        if var existing = deviceRecords[device] {
            existing.status = .active
            existing.revokedAt = nil
            deviceRecords[device] = existing
        } else {
            deviceRecords[device] = DeviceRecord(id: device, status: .active, createdAt: at)
        }
        certificate.revokedAt = nil
        certificate.deviceID = device
        certificateRecords[serialHex] = certificate
    }

    public func recordRenewal(certificate: CertificateRecord, renewal: PendingRenewal) async throws -> [String] {
        guard deviceRecords[renewal.deviceID]?.status == .active else {
            throw StoreError(.notFound, "no active device \(renewal.deviceID)")
        }
        guard certificateRecords[certificate.serialHex] == nil else {
            throw StoreError(.conflict, "certificate serial already recorded")
        }
        guard let predecessor = certificateRecords[renewal.previousSerialHex], predecessor.deviceID == renewal.deviceID,
            predecessor.revokedAt == nil
        else { throw StoreError(.conflict, "the certificate being renewed is revoked or unknown") }
        let superseded = renewals.values.filter { $0.previousSerialHex == renewal.previousSerialHex }.map(
            \.newSerialHex)
        for serial in superseded {
            renewals[serial] = nil
            if certificateRecords[serial]?.revokedAt == nil { certificateRecords[serial]?.revokedAt = Date() }
        }
        certificateRecords[certificate.serialHex] = certificate
        renewals[renewal.newSerialHex] = renewal
        return superseded.sorted()
    }

    public func pendingRenewals() async throws -> [PendingRenewal] {
        renewals.values.sorted { $0.newSerialHex < $1.newSerialHex }
    }

    public func completeRenewal(newSerialHex: String, at: Date) async throws -> String? {
        guard let renewal = renewals.removeValue(forKey: newSerialHex) else { return nil }
        if var previous = certificateRecords[renewal.previousSerialHex], previous.revokedAt == nil {
            previous.revokedAt = at
            certificateRecords[renewal.previousSerialHex] = previous
        }
        return renewal.previousSerialHex
    }

    public func setAssignment(_ scope: AssignmentScope, target: String?) async throws {
        if case .device(let device) = scope, deviceRecords[device] == nil {
            throw StoreError(.notFound, "no such device")
        }
        assignments[scope.key] = target
    }

    public func assignment(_ scope: AssignmentScope) async throws -> String? { assignments[scope.key] }

    public func effectiveAssignment(_ device: DeviceID, defaultClass: String) async throws -> (
        scope: String, target: String
    )? {
        let scopes: [(AssignmentScope, String)] = [
            (.device(device), "device"), (.deviceClass(classes[device] ?? defaultClass), "class"), (.fleet, "fleet"),
        ]
        for (scope, name) in scopes { if let target = assignments[scope.key] { return (name, target) } }
        return nil
    }

    public func setDeviceClass(_ device: DeviceID, class name: String?) async throws {
        guard deviceRecords[device] != nil else { throw StoreError(.notFound, "no such device") }
        classes[device] = name
    }

    public func deviceClass(_ device: DeviceID) async throws -> String? { classes[device] }

    public func addEgressRule(class name: String, rule: String) async throws -> Bool {
        guard !(rules[name] ?? []).contains(rule) else { return false }
        rules[name, default: []].append(rule)
        return true
    }

    public func removeEgressRule(class name: String, rule: String) async throws -> Bool {
        guard let index = rules[name]?.firstIndex(of: rule) else { return false }
        rules[name]?.remove(at: index)
        if rules[name]?.isEmpty == true { rules[name] = nil }
        return true
    }

    public func egressRules() async throws -> [String: [String]] { rules }

    public func recordDestinations(
        _ device: DeviceID, _ destinations: [(listening: Bool, proto: String, address: String, port: Int)], at: Date
    ) async throws {
        var known = seen[device] ?? [:]
        for destination in destinations {
            let key = "\(destination.listening) \(destination.proto) \(destination.address) \(destination.port)"
            if var record = known[key] {
                record.lastSeen = at
                record.reports += 1
                known[key] = record
            } else if known.count < 1024 {
                known[key] = DestinationRecord(
                    listening: destination.listening, proto: destination.proto, address: destination.address,
                    port: destination.port, firstSeen: at, lastSeen: at, reports: 1)
            }
        }
        seen[device] = known
    }

    public func destinations(of device: DeviceID) async throws -> [DestinationRecord] {
        (seen[device] ?? [:]).values.sorted {
            ($0.listening ? 1 : 0, $0.address, $0.port) < ($1.listening ? 1 : 0, $1.address, $1.port)
        }
    }

    public func recordUpdateState(_ state: DeviceUpdateState) async throws {
        if let stored = updates[state.deviceID], stored.sequence >= state.sequence { return }
        updates[state.deviceID] = state
    }

    public func updateState(of device: DeviceID) async throws -> DeviceUpdateState? { updates[device] }

    public func devicePage(_ query: DeviceQuery) async throws -> (total: Int, devices: [DeviceOverview]) {
        var rows: [DeviceOverview] = []
        let search = (query.search ?? "").lowercased()
        var lastSeen: [DeviceID: Date] = [:]
        // As the SQLite store: the time of the device's newest stored message, and its newest live certificate's
        // end (each gathered in one pass, not per device).
        // The newest message's time, as the SQL stores keep it.
        for record in telemetryRecords {
            lastSeen[record.deviceID] = max(lastSeen[record.deviceID] ?? .distantPast, record.receivedAt)
        }
        var certificateEnd: [DeviceID: Date] = [:]
        for record in certificateRecords.values where record.revokedAt == nil {
            guard let device = record.deviceID else { continue }
            certificateEnd[device] = max(certificateEnd[device] ?? .distantPast, record.notAfter)
        }
        for record in deviceRecords.values {
            if !search.isEmpty, !record.id.rawValue.lowercased().contains(search) { continue }
            if let status = query.status, record.status != status { continue }
            var row = DeviceOverview(id: record.id, status: record.status)
            row.deviceClass = classes[record.id]
            row.installedVersion = updates[record.id]?.installedVersion
            row.lastStep = updates[record.id]?.lastStep
            row.quarantinedUntil = quarantineRecords[record.id]
            row.certificateNotAfter = certificateEnd[record.id]
            row.lastSeen = lastSeen[record.id]
            rows.append(row)
        }
        // Missing values sort first ascending (as SQLite orders NULLs), ties by id.
        func key(_ row: DeviceOverview) -> Double? {
            switch query.sort {
            case .id: nil
            case .status: row.status == .active ? 0 : 1
            case .lastSeen: row.lastSeen?.timeIntervalSince1970
            case .expiry: row.certificateNotAfter?.timeIntervalSince1970
            }
        }
        rows.sort { a, b in
            let (ka, kb) = (key(a), key(b))
            if ka != kb {
                let ascending = (ka ?? -.infinity) < (kb ?? -.infinity)
                return query.descending ? !ascending : ascending
            }
            return query.descending && query.sort == .id ? a.id > b.id : a.id < b.id
        }
        let page = rows.dropFirst(max(0, query.offset)).prefix(max(0, query.limit))
        return (rows.count, Array(page))
    }

    public func securityEvents(identity: String, limit: Int) async throws -> [SecurityEvent] {
        Array(audit.reversed().lazy.filter { $0.event.identity == identity }.prefix(limit).map(\.event))
    }

    public func fleetSummary(now: Date, expiringBefore: Date) async throws -> FleetSummary {
        var summary = FleetSummary()
        summary.activeDevices = deviceRecords.values.filter { $0.status == .active }.count
        summary.revokedDevices = deviceRecords.count - summary.activeDevices
        var latest: [DeviceID: Date] = [:]
        for record in certificateRecords.values {
            guard let device = record.deviceID, deviceRecords[device]?.status == .active, record.revokedAt == nil
            else { continue }
            latest[device] = max(latest[device] ?? .distantPast, record.notAfter)
        }
        summary.certificatesExpiring = latest.values.filter { $0 > now && $0 <= expiringBefore }.count
        summary.auditRecords = audit.last?.sequence ?? 0
        for state in updates.values { summary.updateSteps[state.lastStep, default: 0] += 1 }
        return summary
    }

    public func updateStates() async throws -> [DeviceUpdateState] {
        updates.values.sorted { $0.deviceID < $1.deviceID }
    }

    public func saveRollout(_ rollout: Rollout) async throws { rollouts[rollout.id] = rollout }

    public func addWaiver(_ waiver: Waiver) async throws { waiverList.append(waiver) }
    public func waivers() async throws -> [Waiver] { waiverList }

    public func recordRelease(_ release: ReleaseRecord) async throws {
        releaseList.removeAll { $0.target == release.target && $0.sha256 == release.sha256 }
        releaseList.append(release)
    }
    public func releases() async throws -> [ReleaseRecord] { releaseList }

    public func devicesWithOwnAssignment(defaultClass: String) async throws -> Set<DeviceID> {
        Set(
            deviceRecords.keys.filter { device in
                assignments[AssignmentScope.device(device).key] != nil
                    || assignments[AssignmentScope.deviceClass(classes[device] ?? defaultClass).key] != nil
            })
    }

    public func latestRollout() async throws -> Rollout? {
        rollouts.values.max { ($0.startedAt, $0.id) < ($1.startedAt, $1.id) }
    }

    public func device(_ id: DeviceID) async throws -> DeviceRecord? { deviceRecords[id] }

    public func devices() async throws -> [DeviceRecord] { deviceRecords.values.sorted { $0.id < $1.id } }

    public func certificates(of device: DeviceID) async throws -> [CertificateRecord] {
        certificateRecords.values.filter { $0.deviceID == device }.sorted { $0.notBefore < $1.notBefore }
    }

    public func certificate(serialHex: String) async throws -> CertificateRecord? { certificateRecords[serialHex] }

    public func revokeCertificate(serialHex: String, at: Date) async throws -> CertificateRecord {
        guard var record = certificateRecords[serialHex] else { throw StoreError(.notFound, "no such certificate") }
        record.revokedAt = record.revokedAt ?? at
        certificateRecords[serialHex] = record
        return record
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

    public func revokedCertificates() async throws -> [RevokedCertificate] {
        certificateRecords.values.compactMap { record in
            record.revokedAt.map {
                RevokedCertificate(
                    serialHex: record.serialHex, revokedAt: $0, notAfter: record.notAfter, deviceID: record.deviceID)
            }
        }.sorted { $0.serialHex < $1.serialHex }
    }

    public func appendTelemetry(_ message: NewTelemetry) async throws -> Int64 {
        let now = Int64(Date().timeIntervalSince1970)
        if let nonce = message.nonce, let expires = nonceRecords[message.deviceID]?[nonce.nonce], expires > now {
            throw StoreError(.replayed, "nonce already stored")
        }
        var accepted: StoredCounterWindow?
        if let counter = message.counter {
            guard
                let window = (windows[message.deviceID] ?? StoredCounterWindow(highest: 0, seen: 0)).accepting(counter)
            else { throw StoreError(.replayed, "counter \(counter) already stored or too old") }
            accepted = window
        }
        let id = Int64(telemetryRecords.count + 1)
        telemetryRecords.append(
            TelemetryRecord(
                id: id, deviceID: message.deviceID, receivedAt: message.receivedAt,
                correlationID: message.correlationID, body: message.body, messageType: message.messageType))
        if let nonce = message.nonce { nonceRecords[message.deviceID, default: [:]][nonce.nonce] = nonce.expiresAt }
        if let accepted {
            windows[message.deviceID] = accepted
        } else if let window = message.counterWindow {
            // Never backwards, as in SQLite: writes of one device may arrive out of order.
            windows[message.deviceID] = window.merged(with: windows[message.deviceID])
        }
        return id
    }

    public func telemetry(of device: DeviceID, limit: Int) async throws -> [TelemetryRecord] {
        Array(telemetryRecords.filter { $0.deviceID == device }.suffix(limit).reversed())
    }

    public func telemetryCount(of device: DeviceID?) async throws -> Int {
        guard let device else { return telemetryRecords.count }
        return telemetryRecords.count { $0.deviceID == device }
    }

    public func setAuditKey(_ key: AuditKey) async throws { auditKey = key }

    public func recordSecurityEvent(_ event: SecurityEvent) async throws {
        if auditKey == nil, audit.last?.mac != nil {
            throw StoreError(.unavailable, "the audit log is keyed: open the store with the audit key")
        }
        var event = event
        let sequence = Int64(audit.count + 1)
        event.id = sequence
        let previous = audit.last?.hash ?? AuditChain.genesis
        let hash = AuditChain.hash(sequence: sequence, event: event, previous: previous)
        audit.append(
            AuditRecord(
                sequence: sequence, event: event, previousHash: previous, hash: hash, mac: auditKey?.mac(for: hash)))
    }

    public func securityEvents(limit: Int) async throws -> [SecurityEvent] {
        Array(audit.suffix(limit).reversed().map(\.event))
    }

    public func auditRecords(after sequence: Int64, limit: Int) async throws -> [AuditRecord] {
        Array(audit.filter { $0.sequence > sequence }.prefix(limit))
    }

    public func recordNonce(device: DeviceID, nonce: StoredNonce) async throws {
        if let expires = nonceRecords[device]?[nonce.nonce], expires > Int64(Date().timeIntervalSince1970) {
            throw StoreError(.replayed, "nonce already stored")
        }
        nonceRecords[device, default: [:]][nonce.nonce] = nonce.expiresAt
    }

    public func liveNonces(now: Int64) async throws -> [(DeviceID, StoredNonce)] {
        nonceRecords.flatMap { device, nonces in
            nonces.filter { $0.value > now }.map { (device, StoredNonce(nonce: $0.key, expiresAt: $0.value)) }
        }
    }

    public func counterWindows() async throws -> [(DeviceID, StoredCounterWindow)] {
        windows.map { ($0.key, $0.value) }
    }

    public func setQuarantine(_ device: DeviceID, until: Int64?) async throws { quarantineRecords[device] = until }

    public func quarantines() async throws -> [(DeviceID, Int64)] { quarantineRecords.map { ($0.key, $0.value) } }

    public func putSchema(name: String, body: [UInt8], at: Date) async throws { schemaRecords[name] = body }

    public func schemas() async throws -> [(String, [UInt8])] {
        schemaRecords.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
    }

    public func setIdentityResolvingKey(_ irk: [UInt8], for device: DeviceID) async throws {
        guard deviceRecords[device] != nil else { throw StoreError(.notFound, "no such device") }
        irks[device] = irk
    }

    public func identityResolvingKeys() async throws -> [(DeviceID, [UInt8])] {
        irks.filter { deviceRecords[$0.key]?.status == .active }.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
    }

    public func close() async throws {}

    public func putClaim(_ claim: StoredClaim) async throws {
        claims = claims.filter { $0.value.claim.expires > Date() }
        claims[claim.device] = (claim, nil, nil)
    }

    public func claim(of device: DeviceID, at: Date) async throws -> StoredClaim? {
        claims[device].flatMap { $0.claim.expires > at ? $0.claim : nil }
    }

    public func holdClaim(of device: DeviceID, holder: String, until: Date, at: Date) async throws -> Bool {
        guard let entry = claims[device], entry.claim.expires > at, entry.heldUntil.map({ $0 <= at }) ?? true else {
            return false
        }
        claims[device] = (entry.claim, holder, until)
        return true
    }

    public func releaseClaim(of device: DeviceID, holder: String) async throws {
        guard let entry = claims[device], entry.holder == holder else { return }
        claims[device] = (entry.claim, nil, nil)
    }

    @discardableResult public func removeClaim(of device: DeviceID, holder: String?) async throws -> Bool {
        guard let entry = claims[device], holder == nil || entry.holder == holder else { return false }
        claims[device] = nil
        return true
    }

    public func clearPairingFailures(of device: DeviceID) async throws { failures[device] = nil }

    public func pendingClaims(at: Date) async throws -> [StoredClaim] {
        claims.values.map(\.claim).filter { $0.expires > at }.sorted { $0.expires < $1.expires }
    }

    public func recordPairingFailure(of device: DeviceID, at: Date) async throws -> PairingFailures {
        let counted = PairingFailures(count: (failures[device]?.count ?? 0) + 1, last: at)
        failures[device] = counted
        return counted
    }

    public func pairingFailures(of device: DeviceID) async throws -> PairingFailures? { failures[device] }

    public func saveMQTTSessions(_ changes: [MQTTSessionChange], holder: String, release: Bool) async throws
        -> Set<String>
    {
        var held: Set<String> = []
        for change in changes {
            guard let session = change.session else {
                if let stored = mqttSessions[change.key], stored.holder == nil || stored.holder == holder {
                    mqttSessions[change.key] = nil
                }
                continue
            }
            if let stored = mqttSessions[session.key], stored.holder != holder {
                held.insert(session.key)
            } else if change.stored, mqttSessions[session.key] == nil {
                held.insert(session.key)  // removed by another node: not brought back
            } else {
                mqttSessions[session.key] = (session, release ? nil : holder)
            }
        }
        return held
    }

    public func mqttSessionHolder(key: String) async throws -> (stored: Bool, holder: String?) {
        (mqttSessions[key] != nil, mqttSessions[key]?.holder)
    }

    public func takeMQTTSession(key: String, holder: String) async throws -> StoredMQTTSession? {
        guard let stored = mqttSessions[key] else { return nil }
        mqttSessions[key] = (stored.session, holder)
        return stored.session
    }

    public func markAlive(_ node: HubNodeRecord) async throws {
        alive[node.holder] = Date()
        nodes[node.holder] = (node, false)
        for (holder, seen) in alive where seen < Date() - 86_400 {
            alive[holder] = nil
            nodes[holder] = nil
        }
    }

    public func markStopped(holder: String) async throws { nodes[holder]?.stopped = true }

    public func setNodePins(_ record: NodePinsRecord) async throws { pins[record.node] = record }

    public func removeNodePins(node: String) async throws -> Bool { pins.removeValue(forKey: node) != nil }

    public func nodePins() async throws -> [NodePinsRecord] { pins.values.sorted { $0.node < $1.node } }

    public func hubNodes() async throws -> [HubNodeStatus] {
        let now = Date()
        return nodes.values.compactMap { entry in
            alive[entry.record.holder].map {
                HubNodeStatus(
                    node: entry.record, lastSeen: $0, silentSeconds: now.timeIntervalSince($0), stopped: entry.stopped)
            }
        }.sorted { ($0.node.startedAt, $0.node.holder) > ($1.node.startedAt, $1.node.holder) }
    }

    public func adoptMQTTSessions(holder: String, all: Bool, silentFor: TimeInterval?) async throws
        -> [StoredMQTTSession]
    {
        var adopted: [StoredMQTTSession] = []
        func silent(_ stored: (session: StoredMQTTSession, holder: String?)) -> Bool {
            guard let silentFor, let other = stored.holder, other != holder, stored.session.disconnectedAt != nil
            else { return false }
            return (alive[other] ?? .distantPast) < Date() - silentFor
        }
        for (key, stored) in mqttSessions where all || stored.holder == nil || silent(stored) {
            mqttSessions[key] = (stored.session, holder)
            adopted.append(stored.session)
        }
        return adopted.sorted { $0.key < $1.key }
    }

    public func putRetainedMessage(_ message: StoredRetainedMessage) async throws {
        retained[Array(message.topic.utf8)] = message
    }

    public func removeRetainedMessage(topic: String, savedAt: Date?) async throws {
        let key = Array(topic.utf8)
        if savedAt == nil || retained[key]?.savedAt == savedAt { retained[key] = nil }
    }

    public func retainedMessages() async throws -> [StoredRetainedMessage] {
        retained.sorted { $0.key.lexicographicallyPrecedes($1.key) }.map(\.value)
    }
}
