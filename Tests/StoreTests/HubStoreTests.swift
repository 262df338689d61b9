import Core
import Foundation
import GRDB
import PostgresTestSupport
import Store
import Testing

/// One table of behaviour, run against every backend.
@Suite struct HubStoreTests {
    enum Backend: String, CaseIterable, CustomTestStringConvertible {
        case memory, sqlite, postgres
        var testDescription: String { rawValue }
    }

    static func open(_ backend: Backend) async throws -> (any HubStore, String) {
        let directory = try TemporaryDirectories.make("store")
        switch backend {
        case .memory: return (InMemoryHubStore(), directory)
        // The per-device index takes rows in every 3, so that every test reads both sides of its mark.
        case .sqlite: return (try SQLiteHubStore(path: directory + "/test.sqlite", indexEvery: 3), directory)
        case .postgres: return (try await PostgresTestServer.freshStore(), directory)
        }
    }

    static func certificate(_ serial: String, device: DeviceID?) -> CertificateRecord {
        CertificateRecord(
            serialHex: serial, subject: device.map { "urn:bulwark:device:\($0)" } ?? "urn:bulwark:operator:x",
            deviceID: device, spkiSHA256Hex: String(repeating: "ab", count: 32),
            notBefore: Date(timeIntervalSince1970: 1000),
            notAfter: Date(timeIntervalSince1970: 2000), der: [1, 2, 3])
    }

    /// A pairing certificate is recorded revoked and device-less before it is sent; the device's confirmation
    /// activates it with the device in one step. Nothing else can be activated that way.
    @Test(arguments: Backend.allCases)
    func aPendingPairingCertificateIsActivatedOnlyForItsDevice(_ backend: Backend) async throws {
        let (store, _) = try await Self.open(backend)
        let device = try DeviceID("p")
        var pending = Self.certificate("0a", device: nil)
        pending.subject = "urn:bulwark:device:p"
        pending.revokedAt = Date()
        try await store.addCertificate(pending)
        #expect(try await store.revokedSerials() == ["0a"])
        await #expect(throws: StoreError.self) {
            try await store.activatePendingCertificate("0a", device: try DeviceID("other"), irk: [1], at: Date())
        }
        await #expect(throws: StoreError.self) {
            try await store.activatePendingCertificate("0b", device: device, irk: [1], at: Date())
        }
        // An operator certificate (another subject) cannot be turned into a device's.
        var operatorCertificate = Self.certificate("0c", device: nil)
        operatorCertificate.revokedAt = Date()
        try await store.addCertificate(operatorCertificate)
        await #expect(throws: StoreError.self) {
            try await store.activatePendingCertificate("0c", device: device, irk: [1], at: Date())
        }
        try await store.activatePendingCertificate("0a", device: device, irk: [1], at: Date())
        #expect(try await store.device(device)?.status == .active)
        #expect(try await store.certificates(of: device).map(\.serialHex) == ["0a"])
        #expect(try await store.revokedSerials() == ["0c"])
        // A revocation that lands while the device is pairing again wins over that pairing.
        var again = Self.certificate("0d", device: nil)
        again.subject = "urn:bulwark:device:p"
        again.revokedAt = Date().addingTimeInterval(-1)
        try await store.addCertificate(again)
        _ = try await store.revoke(device: device, at: Date())
        await #expect(throws: StoreError.self, "revoked after the pending mark") {
            try await store.activatePendingCertificate("0d", device: device, irk: [1], at: Date())
        }
        #expect(try await store.device(device)?.status == .revoked)
        await #expect(throws: StoreError.self, "activated once") {
            try await store.activatePendingCertificate("0a", device: device, irk: [1], at: Date())
        }
    }

    /// A renewal records the new certificate and what it replaces; completing it revokes the old one once; a second
    /// renewal of the same certificate supersedes (revokes) the first, unused one.
    @Test(arguments: Backend.allCases)
    func renewalsSupersedeAndComplete(_ backend: Backend) async throws {
        let (store, _) = try await Self.open(backend)
        let device = try DeviceID("r")
        try await store.enroll(device: device, certificate: Self.certificate("01", device: device), at: Date())
        let grace = Date().addingTimeInterval(60)
        #expect(
            try await store.recordRenewal(
                certificate: Self.certificate("02", device: device),
                renewal: PendingRenewal(
                    newSerialHex: "02", previousSerialHex: "01", deviceID: device, graceUntil: grace))
                == [])
        #expect(
            try await store.recordRenewal(
                certificate: Self.certificate("03", device: device),
                renewal: PendingRenewal(
                    newSerialHex: "03", previousSerialHex: "01", deviceID: device, graceUntil: grace))
                == ["02"])
        #expect(try await store.revokedSerials() == ["02"])
        #expect(try await store.pendingRenewals().map(\.newSerialHex) == ["03"])
        #expect(try await store.completeRenewal(newSerialHex: "03", at: Date()) == "01")
        #expect(try await store.completeRenewal(newSerialHex: "03", at: Date()) == nil, "once")
        #expect(try await store.revokedSerials() == ["01", "02"])
        #expect(try await store.pendingRenewals().isEmpty)
        _ = try await store.revoke(device: device, at: Date())
        await #expect(throws: StoreError.self, "a revoked device cannot renew") {
            try await store.recordRenewal(
                certificate: Self.certificate("04", device: device),
                renewal: PendingRenewal(
                    newSerialHex: "04", previousSerialHex: "03", deviceID: device, graceUntil: grace))
        }
    }

    @Test(arguments: Backend.allCases)
    func classesRulesAndDestinations(_ backend: Backend) async throws {
        let (store, _) = try await Self.open(backend)
        let device = try DeviceID("e")
        await #expect(throws: StoreError.self) { try await store.setDeviceClass(device, class: "camera") }
        try await store.enroll(device: device, certificate: Self.certificate("01", device: device), at: Date())
        try await store.setDeviceClass(device, class: "camera")
        #expect(try await store.deviceClass(device) == "camera")
        #expect(try await store.addEgressRule(class: "camera", rule: "10.0.0.0/8"))
        #expect(try await !store.addEgressRule(class: "camera", rule: "10.0.0.0/8"), "once")
        #expect(try await store.addEgressRule(class: "camera", rule: "listen:22"))
        #expect(try await store.egressRules() == ["camera": ["10.0.0.0/8", "listen:22"]])
        #expect(try await store.removeEgressRule(class: "camera", rule: "10.0.0.0/8"))
        #expect(try await !store.removeEgressRule(class: "camera", rule: "10.0.0.0/8"))
        let t0 = Date(timeIntervalSince1970: 1_800_000_000)
        try await store.recordDestinations(
            device, [(false, "tcp", "203.0.113.5", 443), (true, "tcp", "0.0.0.0", 22)], at: t0)
        try await store.recordDestinations(device, [(false, "tcp", "203.0.113.5", 443)], at: t0 + 60)
        let seen = try await store.destinations(of: device)
        #expect(seen.count == 2)
        let web = try #require(seen.first { !$0.listening })
        #expect(web.reports == 2 && web.firstSeen == t0 && web.lastSeen == t0 + 60)
        try await store.setDeviceClass(device, class: nil)
        #expect(try await store.deviceClass(device) == nil)
    }

    @Test(arguments: Backend.allCases)
    func enrollRevokeAndReEnroll(_ backend: Backend) async throws {
        let (store, _) = try await Self.open(backend)
        let a = try DeviceID("a")
        try await store.enroll(device: a, certificate: Self.certificate("01", device: a), at: Date())
        #expect(try await store.device(a)?.status == .active)
        #expect(try await store.revoke(device: a, at: Date()) == ["01"])
        #expect(try await store.device(a)?.status == .revoked)
        #expect(try await store.revokedSerials() == ["01"])
        try await store.enroll(device: a, certificate: Self.certificate("02", device: a), at: Date())
        #expect(try await store.device(a)?.status == .active)
        #expect(try await store.revokedSerials() == ["01"], "a new certificate does not un-revoke the old one")
        #expect(try await store.certificates(of: a).map(\.serialHex).sorted() == ["01", "02"])
        try await store.close()
    }

    @Test(arguments: Backend.allCases)
    func revokingAnUnknownDeviceIsNotFound(_ backend: Backend) async throws {
        let (store, _) = try await Self.open(backend)
        await #expect(throws: StoreError(.notFound, "")) {
            try await store.revoke(device: try DeviceID("nope"), at: Date())
        }
    }

    @Test(arguments: Backend.allCases)
    func duplicateSerialIsAConflict(_ backend: Backend) async throws {
        let (store, _) = try await Self.open(backend)
        try await store.addCertificate(Self.certificate("aa", device: nil))
        await #expect(throws: (any Error).self) { try await store.addCertificate(Self.certificate("aa", device: nil)) }
    }

    @Test(arguments: Backend.allCases)
    func telemetryIsKeptPerDevice(_ backend: Backend) async throws {
        let (store, _) = try await Self.open(backend)
        let a = try DeviceID("a")
        let b = try DeviceID("b")
        for device in [a, b] {
            try await store.enroll(
                device: device, certificate: Self.certificate(device.rawValue, device: device), at: Date())
        }
        // Many concurrent appends: group commit must give each its own id and lose none.
        let ids = try await withThrowingTaskGroup(of: Int64.self) { group in
            for i in 0..<200 {
                group.addTask {
                    try await store.appendTelemetry(
                        NewTelemetry(
                            deviceID: i % 2 == 0 ? a : b, receivedAt: Date(), correlationID: "c\(i)",
                            body: Array("{\"i\":\(i)}".utf8)))
                }
            }
            return try await group.reduce(into: Set<Int64>()) { $0.insert($1) }
        }
        #expect(ids.count == 200)
        #expect(try await store.telemetryCount(of: a) == 100)
        #expect(try await store.telemetryCount(of: nil) == 200)
        #expect(try await store.telemetry(of: b, limit: 500).allSatisfy { $0.deviceID == b })
    }

    /// Messages written in one batch keep every byte (an empty body and correlation id stay empty, not NULL; a body
    /// with zero bytes is kept whole), and the device's last-seen time is its newest message's, whichever of the
    /// batch was queued last.
    @Test(arguments: Backend.allCases)
    func aBatchKeepsEveryFieldAndTheNewestLastSeen(_ backend: Backend) async throws {
        let (store, _) = try await Self.open(backend)
        let a = try DeviceID("a")
        let b = try DeviceID("b")
        for device in [a, b] {
            try await store.enroll(
                device: device, certificate: Self.certificate(device.rawValue, device: device), at: Date())
        }
        let start = Date(timeIntervalSince1970: 1_800_000_000)
        let bodies: [[UInt8]] = [[], [0, 1, 0, 255], Array("{\"t\":1}".utf8), [0], Array(repeating: 7, count: 300)]
        let types: [String?] = [nil, "telemetry", "", "reports", nil]
        // Queued together (one or a few batches), the newest time first.
        let writes = bodies.indices.map { index in
            store.queueTelemetry(
                NewTelemetry(
                    deviceID: index == 4 ? b : a, receivedAt: start.addingTimeInterval(Double(10 - index)),
                    correlationID: index == 0 ? "" : "c\(index)", body: bodies[index],
                    messageType: types[index]))
        }
        var ids: [Int64] = []
        for write in writes { ids.append(try await write.value()) }
        #expect(Set(ids).count == bodies.count)
        let stored = try await store.telemetry(of: a, limit: 10).sorted { $0.id < $1.id }
        #expect(stored.map(\.body) == Array(bodies.prefix(4)))
        #expect(stored.map(\.correlationID) == ["", "c1", "c2", "c3"])
        #expect(stored.map(\.receivedAt) == (0..<4).map { start.addingTimeInterval(Double(10 - $0)) })
        #expect(stored.map(\.messageType) == Array(types.prefix(4)))
        #expect(try await store.telemetry(of: b, limit: 10).map(\.messageType) == [nil])
        let overview = try await store.devicePage(DeviceQuery()).devices
        #expect(overview.first { $0.id == a }?.lastSeen == start.addingTimeInterval(10))
        #expect(overview.first { $0.id == b }?.lastSeen == start.addingTimeInterval(6))
        if backend == .sqlite {
            // A failed insert (no such device: a foreign key) fails its batch, and the statement serves the next.
            await #expect(throws: (any Error).self) {
                try await store.appendTelemetry(
                    NewTelemetry(deviceID: try DeviceID("nobody"), receivedAt: start, correlationID: "x", body: [1]))
            }
            let next = try await store.appendTelemetry(
                NewTelemetry(deviceID: a, receivedAt: start, correlationID: "y", body: [2]))
            #expect(
                try await store.telemetry(of: a, limit: 1).first.map { [$0.id] + $0.body.map(Int64.init) } == [next, 2])
        }
    }

    /// The assignment that applies: the device's own, else its class's (or the default class's), else the fleet's.
    @Test(arguments: Backend.allCases)
    func theEffectiveAssignmentIsDeviceThenClassThenFleet(_ backend: Backend) async throws {
        let (store, _) = try await Self.open(backend)
        let device = try DeviceID("d")
        try await store.enroll(device: device, certificate: Self.certificate("0d", device: device), at: Date())
        #expect(try await store.effectiveAssignment(device, defaultClass: "default") == nil)
        try await store.setAssignment(.fleet, target: "f.tar")
        #expect(try await store.effectiveAssignment(device, defaultClass: "default")?.target == "f.tar")
        try await store.setAssignment(.deviceClass("default"), target: "default.tar")
        #expect(try await store.effectiveAssignment(device, defaultClass: "default")?.scope == "class")
        try await store.setAssignment(.deviceClass("camera"), target: "camera.tar")
        try await store.setDeviceClass(device, class: "camera")
        #expect(try await store.effectiveAssignment(device, defaultClass: "default")?.target == "camera.tar")
        try await store.setAssignment(.device(device), target: "mine.tar")
        let own = try await store.effectiveAssignment(device, defaultClass: "default")
        #expect(own?.scope == "device" && own?.target == "mine.tar")
        // Another device's assignment, or a class it is not in, never applies.
        let other = try DeviceID("e")
        try await store.enroll(device: other, certificate: Self.certificate("0e", device: other), at: Date())
        #expect(try await store.effectiveAssignment(other, defaultClass: "default")?.target == "default.tar")
    }

    /// What a staged rollout leaves alone: devices with their own assignment or their class's (the default class's
    /// when they have none), the same rule as `effectiveAssignment`; and rollouts kept across a reopen.
    @Test(arguments: Backend.allCases)
    func devicesWithTheirOwnAssignmentAndRollouts(_ backend: Backend) async throws {
        let (store, _) = try await Self.open(backend)
        var ids: [DeviceID] = []
        for (index, name) in ["a", "b", "c", "d"].enumerated() {
            let device = try DeviceID(name)
            try await store.enroll(
                device: device, certificate: Self.certificate("1\(index)", device: device), at: Date())
            ids.append(device)
        }
        try await store.setAssignment(.fleet, target: "f.tar")
        #expect(try await store.devicesWithOwnAssignment(defaultClass: "default").isEmpty)
        try await store.setAssignment(.device(ids[0]), target: "mine.tar")
        try await store.setAssignment(.deviceClass("camera"), target: "camera.tar")
        try await store.setDeviceClass(ids[1], class: "camera")
        try await store.setDeviceClass(ids[2], class: "sensor")
        #expect(try await store.devicesWithOwnAssignment(defaultClass: "default") == [ids[0], ids[1]])
        try await store.setAssignment(.deviceClass("default"), target: "default.tar")
        #expect(try await store.devicesWithOwnAssignment(defaultClass: "default") == [ids[0], ids[1], ids[3]])

        var rollout = try Rollout(
            id: "r1", target: "v2.tar", previous: "f.tar", stages: [10, 100], soakSeconds: 60, maxFailureRate: 5,
            now: 100)
        try await store.saveRollout(rollout)
        rollout.apply(.pause(reason: "stage 1: 1 of 1 devices failed"), now: 130)
        try await store.saveRollout(rollout)
        #expect(try await store.latestRollout() == rollout)
        let later = try Rollout(
            id: "r2", target: "v3.tar", previous: nil, stages: [100], soakSeconds: 60, maxFailureRate: 5, now: 200)
        try await store.saveRollout(later)
        #expect(try await store.latestRollout()?.id == "r2")
    }

    /// A device's update state is its newest report: one stored late (or resent) never overwrites a newer one.
    @Test(arguments: Backend.allCases)
    func anUpdateStateIsNeverOverwrittenByAnOlderReport(_ backend: Backend) async throws {
        let (store, _) = try await Self.open(backend)
        let device = try DeviceID("u")
        func report(_ step: String, _ sequence: Int64, installed: String?) -> DeviceUpdateState {
            DeviceUpdateState(
                deviceID: device, installedTarget: installed, installedVersion: installed, slot: "a", floor: 2,
                lastStep: step, stepTarget: "v2.tar", reason: nil, sequence: sequence, updatedAt: Date())
        }
        #expect(try await store.updateState(of: device) == nil)
        try await store.recordUpdateState(report("trial", 10, installed: nil))
        try await store.recordUpdateState(report("committed", 12, installed: "v2.tar"))
        try await store.recordUpdateState(report("trial", 11, installed: nil))
        try await store.recordUpdateState(report("trial", 12, installed: nil))
        let stored = try await store.updateState(of: device)
        #expect(stored?.lastStep == "committed" && stored?.installedTarget == "v2.tar" && stored?.sequence == 12)
        try await store.recordUpdateState(report("checking", 13, installed: "v2.tar"))
        #expect(try await store.updateStates().map(\.lastStep) == ["checking"])
    }

    @Test(arguments: Backend.allCases)
    func securityEventsNewestFirst(_ backend: Backend) async throws {
        let (store, _) = try await Self.open(backend)
        for kind in ["one", "two", "three"] {
            try await store.recordSecurityEvent(SecurityEvent(at: Date(), kind: kind, detail: "d"))
        }
        #expect(try await store.securityEvents(limit: 2).map(\.kind) == ["three", "two"])
    }

    @Test(arguments: Backend.allCases)
    func identityResolvingKeysOfActiveDevicesOnly(_ backend: Backend) async throws {
        let (store, _) = try await Self.open(backend)
        let a = try DeviceID("a")
        let b = try DeviceID("b")
        await #expect(throws: StoreError(.notFound, "")) { try await store.setIdentityResolvingKey([1], for: a) }
        for device in [a, b] {
            try await store.enroll(
                device: device, certificate: Self.certificate(device.rawValue, device: device), at: Date())
            try await store.setIdentityResolvingKey([UInt8](repeating: 7, count: 16), for: device)
        }
        _ = try await store.revoke(device: b, at: Date())
        let keys = try await store.identityResolvingKeys()
        #expect(keys.map(\.0) == [a])
        #expect(keys.first?.1 == [UInt8](repeating: 7, count: 16))
    }

    /// Sessions saved and removed together (one transaction: a message that reached many sessions): each change as
    /// alone, except that a session another node holds is neither overwritten nor removed, and its key is returned.
    @Test(arguments: Backend.allCases)
    func mqttSessionsAreSavedTogether(_ backend: Backend) async throws {
        let (store, _) = try await Self.open(backend)
        let now = Date(timeIntervalSince1970: 1_800_000_000)
        func session(_ key: String, _ state: UInt8) -> StoredMQTTSession {
            StoredMQTTSession(
                key: key, owner: "urn:o", expirySeconds: 60, disconnectedAt: nil, state: [state], savedAt: now)
        }
        func save(_ key: String, _ state: UInt8) -> MQTTSessionChange {
            MQTTSessionChange(key: key, session: session(key, state))
        }
        func remove(_ key: String) -> MQTTSessionChange { MQTTSessionChange(key: key, session: nil) }
        #expect(try await store.saveMQTTSessions([], holder: "a", release: false) == [])
        #expect(try await store.saveMQTTSessions([save("s1", 1), save("s5", 5)], holder: "a", release: false) == [])
        #expect(try await store.saveMQTTSessions([save("s2", 2), save("s6", 6)], holder: "b", release: false) == [])
        let held = try await store.saveMQTTSessions(
            [save("s1", 11), save("s2", 12), save("s4", 14), remove("s5"), remove("s6"), remove("none")],
            holder: "a", release: false)
        #expect(held == ["s2"])
        #expect(try await store.mqttSessionHolder(key: "s5") == (false, nil))
        #expect(try await store.mqttSessionHolder(key: "s6") == (true, "b"), "b's: not removed")
        #expect(try await store.mqttSessionHolder(key: "s4") == (true, "a"))
        #expect(try await store.takeMQTTSession(key: "s2", holder: "b") == session("s2", 2), "b's: not overwritten")
        #expect(try await store.saveMQTTSessions([save("s1", 21), save("s4", 24)], holder: "a", release: true) == [])
        #expect(try await store.mqttSessionHolder(key: "s1") == (true, nil))
        // A released session is no node's to overwrite until one adopts it; one that ended may be removed.
        let refused = try await store.saveMQTTSessions([save("s1", 41), remove("s4")], holder: "z", release: false)
        #expect(refused == ["s1"])
        #expect(try await store.mqttSessionHolder(key: "s4") == (false, nil))
        #expect(try await store.adoptMQTTSessions(holder: "c", all: false, silentFor: nil) == [session("s1", 21)])
        #expect(try await !store.saveMQTTSession(session("s1", 31), holder: "a", release: false), "c took it")

        // Saves on both sides of removals (PostgreSQL: a statement for each run of saves), and a session away.
        let away = StoredMQTTSession(
            key: "t3", owner: "urn:o", expirySeconds: 60, disconnectedAt: now, state: [3], savedAt: now)
        let first = [save("t1", 1), MQTTSessionChange(key: "t3", session: away), save("t6", 6)]
        #expect(try await store.saveMQTTSessions(first, holder: "d", release: false) == [])
        #expect(try await store.takeMQTTSession(key: "t3", holder: "d") == away)
        let mixed = [save("t1", 11), remove("t3"), save("t4", 14), remove("t6"), save("t5", 15), save("t7", 17)]
        #expect(try await store.saveMQTTSessions(mixed, holder: "d", release: false) == [])
        #expect(try await store.takeMQTTSession(key: "t1", holder: "d") == session("t1", 11))
        #expect(try await store.mqttSessionHolder(key: "t3") == (false, nil))
        #expect(try await store.mqttSessionHolder(key: "t6") == (false, nil))
        for (key, state) in [("t4", 14), ("t5", 15), ("t7", 17)] {
            #expect(try await store.takeMQTTSession(key: key, holder: "d") == session(key, UInt8(state)))
        }
        // A key given twice: the later change wins, as if each were saved in turn.
        let twice = [save("t8", 1), save("t9", 9), save("t8", 2)]
        #expect(try await store.saveMQTTSessions(twice, holder: "d", release: false) == [])
        #expect(try await store.takeMQTTSession(key: "t8", holder: "d") == session("t8", 2))

        // A change marked `stored` only updates the row its node holds: one another node removed (it took the
        // session and ended it) is not brought back, and its key comes back as held, beside an update and a new one.
        func known(_ key: String, _ state: UInt8) -> MQTTSessionChange {
            MQTTSessionChange(key: key, session: session(key, state), stored: true)
        }
        _ = try await store.takeMQTTSession(key: "t9", holder: "e")
        try await store.removeMQTTSession(key: "t9", holder: "e")
        let stale = [known("t1", 31), known("t9", 39), save("u1", 41), known("t4", 34)]
        #expect(try await store.saveMQTTSessions(stale, holder: "d", release: false) == ["t9"])
        #expect(try await store.mqttSessionHolder(key: "t9") == (false, nil), "not brought back")
        #expect(try await store.takeMQTTSession(key: "t1", holder: "d") == session("t1", 31))
        #expect(try await store.takeMQTTSession(key: "u1", holder: "d") == session("u1", 41))
        // Held by another node: not written either; released by its own node: written, let go of.
        _ = try await store.takeMQTTSession(key: "t4", holder: "e")
        #expect(try await store.saveMQTTSessions([known("t4", 44)], holder: "d", release: false) == ["t4"])
        #expect(try await store.saveMQTTSessions([known("t1", 51)], holder: "d", release: true) == [])
        #expect(try await store.mqttSessionHolder(key: "t1") == (true, nil))
        #expect(try await store.takeMQTTSession(key: "t1", holder: "d") == session("t1", 51))
    }

    /// Pairing claims: one per device, a new one replaces the old and frees its hold; one session holds a claim at
    /// a time (another is refused until the hold is released or lapses, and only the holder releases it); expired
    /// claims are not pending; a use removes the claim and the device's failures, a withdrawal only the claim.
    /// One node holds an MQTT session at a time: its saves are refused once another node took the session, a released
    /// session is adopted by the next node to look, and a single node starting adopts its earlier runs' sessions.
    @Test(arguments: Backend.allCases)
    func mqttSessionsAreHeldByOneNodeAtATime(_ backend: Backend) async throws {
        let (store, _) = try await Self.open(backend)
        let now = Date(timeIntervalSince1970: 1_800_000_000)
        func session(_ key: String, _ state: UInt8, away: Date? = nil) -> StoredMQTTSession {
            StoredMQTTSession(
                key: key, owner: "urn:o", expirySeconds: 3600, disconnectedAt: away, state: [state], savedAt: now)
        }
        #expect(try await store.mqttSessionHolder(key: "s1") == (false, nil))
        #expect(try await store.saveMQTTSession(session("s1", 1), holder: "a", release: false))
        #expect(try await store.mqttSessionHolder(key: "s1") == (true, "a"))
        #expect(try await store.saveMQTTSession(session("s1", 2, away: now), holder: "a", release: false))
        #expect(!(try await store.saveMQTTSession(session("s1", 3), holder: "b", release: false)), "a holds it")
        #expect(try await store.takeMQTTSession(key: "s1", holder: "b") == session("s1", 2, away: now))
        #expect(!(try await store.saveMQTTSession(session("s1", 4), holder: "a", release: true)), "b took it")
        try await store.removeMQTTSession(key: "s1", holder: "a")  // not a's any more
        #expect(try await store.mqttSessionHolder(key: "s1") == (true, "b"))
        #expect(try await store.saveMQTTSession(session("s1", 5), holder: "b", release: true))
        #expect(try await store.mqttSessionHolder(key: "s1") == (true, nil))
        #expect(try await store.takeMQTTSession(key: "none", holder: "b") == nil)
        // Released sessions go to the first node to adopt them; `all` takes held ones too (one node's earlier run).
        #expect(try await store.saveMQTTSession(session("s2", 6), holder: "c", release: false))
        #expect(try await store.adoptMQTTSessions(holder: "d", all: false, silentFor: nil) == [session("s1", 5)])
        #expect(try await store.adoptMQTTSessions(holder: "e", all: false, silentFor: nil) == [])
        #expect(try await store.adoptMQTTSessions(holder: "f", all: true, silentFor: nil).map(\.key) == ["s1", "s2"])
        try await store.removeMQTTSession(key: "s2", holder: "f")
        #expect(try await store.mqttSessionHolder(key: "s2") == (false, nil))
        // A node that has fallen silent loses the sessions whose client is away to one that looks; a node alive
        // keeps them, and so does a silent node a session whose client was connected (it reconnects elsewhere).
        try await store.markAlive(Self.node("f"))
        try await store.markAlive(Self.node("g"))
        #expect(try await store.saveMQTTSession(session("s3", 7, away: now), holder: "g", release: false))
        #expect(try await store.saveMQTTSession(session("s4", 8), holder: "h", release: false))
        #expect(try await store.adoptMQTTSessions(holder: "i", all: false, silentFor: 30) == [], "g is alive")
        try await store.markAlive(Self.node("i"))
        #expect(try await store.saveMQTTSession(session("s5", 9, away: now), holder: "x", release: false))
        #expect(
            try await store.adoptMQTTSessions(holder: "i", all: false, silentFor: 30) == [session("s5", 9, away: now)])
        #expect(try await store.mqttSessionHolder(key: "s5") == (true, "i"))
        #expect(try await store.mqttSessionHolder(key: "s4") == (true, "h"), "its client was connected: it stays")
        #expect(try await store.mqttSessionHolder(key: "s1") == (true, "f"), "f is alive: s1 stays")

        let retained = StoredRetainedMessage(topic: "a/b", owner: "urn:o", message: [1, 2], savedAt: now)
        try await store.putRetainedMessage(retained)
        try await store.putRetainedMessage(StoredRetainedMessage(topic: "a", owner: "x", message: [3], savedAt: now))
        var replaced = retained
        replaced.message = [9]
        try await store.putRetainedMessage(replaced)
        #expect(try await store.retainedMessages().map(\.topic) == ["a", "a/b"])
        #expect(try await store.retainedMessages().last == replaced)
        // A node dropping the copy it read (saved at `replaced.savedAt`) leaves a newer one saved since.
        var newer = replaced
        newer.savedAt = replaced.savedAt + 5
        try await store.putRetainedMessage(newer)
        try await store.removeRetainedMessage(topic: "a/b", savedAt: replaced.savedAt)
        #expect(try await store.retainedMessages().last == newer, "a newer copy stays")
        try await store.removeRetainedMessage(topic: "a/b", savedAt: newer.savedAt)
        #expect(try await store.retainedMessages().map(\.topic) == ["a"], "the copy read goes")
        try await store.putRetainedMessage(replaced)
        try await store.removeRetainedMessage(topic: "a")
        #expect(try await store.retainedMessages() == [replaced])
        // Topics are kept by their bytes (MQTT never normalizes them): two spellings of `é` are two topics.
        let composed = StoredRetainedMessage(topic: "t/caf\u{E9}", owner: "x", message: [4], savedAt: now)
        let decomposed = StoredRetainedMessage(topic: "t/cafe\u{301}", owner: "x", message: [5], savedAt: now)
        try await store.putRetainedMessage(composed)
        try await store.putRetainedMessage(decomposed)
        #expect(try await Set(store.retainedMessages().map { $0.message }) == [[9], [4], [5]])
        try await store.removeRetainedMessage(topic: decomposed.topic)
        #expect(try await Set(store.retainedMessages().map { $0.message }) == [[9], [4]])
        try await store.close()
    }

    static func node(_ holder: String, started: Double = 1_800_000_000) -> HubNodeRecord {
        HubNodeRecord(
            holder: holder, name: "node-\(holder)", addresses: "mqtt=127.0.0.1:1883", version: "9.9",
            startedAt: Date(timeIntervalSince1970: started), shares: #"{"$share/g/a/+":true}"#)
    }

    /// Each node's run records what it says of itself with each heartbeat; the list shows the latest start first,
    /// with how long each has been silent by the store's clock, and a node that stopped says so until it beats again.
    @Test(arguments: Backend.allCases)
    func hubNodesSayWhoTheyAreAndWhenTheyWereLastHeardFrom(_ backend: Backend) async throws {
        let (store, _) = try await Self.open(backend)
        #expect(try await store.hubNodes() == [])
        try await store.markAlive(Self.node("a", started: 1_800_000_000))
        var b = Self.node("b", started: 1_800_000_100)
        try await store.markAlive(b)
        b.addresses = "device=127.0.0.1:8443 mqtt=127.0.0.1:8883"
        try await store.markAlive(b)
        try await store.markStopped(holder: "a")
        try await store.markStopped(holder: "unknown")
        let nodes = try await store.hubNodes()
        #expect(nodes.map(\.node) == [b, Self.node("a")])
        #expect(nodes.map(\.stopped) == [false, true])
        for status in nodes {
            #expect(status.silentSeconds >= 0 && status.silentSeconds < 30, "just heard from")
            #expect(abs(status.lastSeen.timeIntervalSinceNow) < 30)
        }
        try await store.markAlive(Self.node("a"))
        #expect(try await store.hubNodes().map(\.stopped) == [false, false], "a beats again: up")
        try await store.close()
    }

    /// Each node's TLS pins, by its data directory's id: set again after a rotation, removed when it is forgotten.
    @Test(arguments: Backend.allCases)
    func eachNodesPinsAreKeptByItsID(_ backend: Backend) async throws {
        let (store, _) = try await Self.open(backend)
        #expect(try await store.nodePins() == [])
        let at = Date(timeIntervalSince1970: 1_800_000_000)
        let one = NodePinsRecord(
            node: "n-1", name: "one", pins: [[UInt8](repeating: 1, count: 32), [2, 3]], updatedAt: at, mac: [9, 8, 7])
        var two = NodePinsRecord(node: "n-2", name: "two", pins: [[UInt8](repeating: 4, count: 32)], updatedAt: at)
        try await store.setNodePins(two)
        try await store.setNodePins(one)
        #expect(try await store.nodePins() == [one, two])
        two.pins.append([UInt8](repeating: 5, count: 32))
        two.updatedAt = at + 60
        try await store.setNodePins(two)
        #expect(try await store.nodePins() == [one, two], "a rotation replaces the node's pins")
        #expect(try await store.removeNodePins(node: "n-1"))
        #expect(!(try await store.removeNodePins(node: "n-1")), "gone already")
        #expect(try await store.nodePins() == [two])
        try await store.close()
    }

    @Test(arguments: Backend.allCases)
    func pairingClaimsAreHeldOnceAndUsedOnce(_ backend: Backend) async throws {
        let (store, _) = try await Self.open(backend)
        let now = Date(timeIntervalSince1970: Double(Int64(Date().timeIntervalSince1970)))
        let device = try DeviceID("claimed-1")
        let other = try DeviceID("claimed-2")
        func claim(_ device: DeviceID, _ sealed: UInt8, expires: Date) -> StoredClaim {
            StoredClaim(device: device, suite: "P256_AESGCM_SHA256", sealedLabel: [sealed, 2, 3], expires: expires)
        }
        try await store.putClaim(claim(device, 1, expires: now + 600))
        try await store.putClaim(claim(other, 9, expires: now + 60))
        #expect(try await store.claim(of: device, at: now) == claim(device, 1, expires: now + 600))
        #expect(try await store.claim(of: device, at: now + 600) == nil, "expired at its expiry")
        #expect(try await store.pendingClaims(at: now).map(\.device) == [other, device], "soonest first")
        #expect(try await store.pendingClaims(at: now + 61).map(\.device) == [device])

        #expect(try await store.holdClaim(of: device, holder: "a", until: now + 60, at: now))
        #expect(!(try await store.holdClaim(of: device, holder: "b", until: now + 70, at: now + 10)), "held by a")
        try await store.releaseClaim(of: device, holder: "b")  // not b's to release
        #expect(!(try await store.holdClaim(of: device, holder: "b", until: now + 70, at: now + 10)))
        #expect(try await store.holdClaim(of: device, holder: "b", until: now + 120, at: now + 60), "a's hold lapsed")
        try await store.releaseClaim(of: device, holder: "b")
        #expect(try await store.holdClaim(of: device, holder: "c", until: now + 130, at: now + 70))
        try await store.putClaim(claim(device, 4, expires: now + 900))
        #expect(try await store.holdClaim(of: device, holder: "d", until: now + 140, at: now + 80), "a new claim")
        #expect(try await store.claim(of: device, at: now)?.sealedLabel == [4, 2, 3])
        #expect(!(try await store.holdClaim(of: try DeviceID("nobody"), holder: "e", until: now + 60, at: now)))
        #expect(!(try await store.holdClaim(of: other, holder: "e", until: now + 90, at: now + 61)), "expired")

        #expect(try await store.pairingFailures(of: device) == nil)
        #expect(try await store.recordPairingFailure(of: device, at: now) == PairingFailures(count: 1, last: now))
        #expect(
            try await store.recordPairingFailure(of: device, at: now + 5) == PairingFailures(count: 2, last: now + 5))
        #expect(try await store.pairingFailures(of: device) == PairingFailures(count: 2, last: now + 5))
        #expect(try await store.removeClaim(of: device, holder: nil))  // withdrawn, whoever held it
        #expect(!(try await store.removeClaim(of: device, holder: nil)))
        #expect(try await store.claim(of: device, at: now) == nil)
        #expect(try await store.pairingFailures(of: device)?.count == 2)
        try await store.putClaim(claim(device, 5, expires: now + 600))
        #expect(!(try await store.removeClaim(of: device, holder: "f")), "only its holder uses a claim")
        #expect(try await store.holdClaim(of: device, holder: "f", until: now + 60, at: now))
        #expect(!(try await store.removeClaim(of: device, holder: "g")))
        #expect(try await store.removeClaim(of: device, holder: "f"))
        #expect(!(try await store.removeClaim(of: device, holder: "f")), "used once")
        #expect(try await store.claim(of: device, at: now) == nil)
        try await store.clearPairingFailures(of: device)
        #expect(try await store.pairingFailures(of: device) == nil)
        try await store.close()
    }

    /// The store is the replay check hub nodes share: a message whose live nonce, or whose counter, is already
    /// stored is refused with `replayed` and nothing of it is kept (another node admitted it first); an expired nonce
    /// may be used again, and an earlier counter inside the window is still accepted. A counter below the stored
    /// window is stored (writes of one device may reach the store out of order; the admitting node's window judged
    /// it) and leaves the window as it was.
    @Test(arguments: Backend.allCases)
    func aStoredNonceOrCounterIsRefusedAsAReplay(_ backend: Backend) async throws {
        let (store, _) = try await Self.open(backend)
        let device = try DeviceID("rp")
        try await store.enroll(device: device, certificate: Self.certificate("rp1", device: device), at: Date())
        let now = Int64(Date().timeIntervalSince1970)
        func message(nonce: String? = nil, expires: Int64 = now + 300, counter: UInt64? = nil) -> NewTelemetry {
            NewTelemetry(
                deviceID: device, receivedAt: Date(), correlationID: "c", body: [1],
                nonce: nonce.map { StoredNonce(nonce: $0, expiresAt: expires) }, counter: counter)
        }
        func refused(_ message: NewTelemetry) async -> Bool {
            do {
                _ = try await store.appendTelemetry(message)
                return false
            } catch { return (error as? StoreError)?.code == .replayed }
        }
        _ = try await store.appendTelemetry(message(nonce: "n1"))
        #expect(await refused(message(nonce: "n1")))
        try await store.recordNonce(device: device, nonce: StoredNonce(nonce: "n2", expiresAt: now + 300))
        #expect(await refused(message(nonce: "n2")))
        await #expect(throws: StoreError(.replayed, "")) {
            try await store.recordNonce(device: device, nonce: StoredNonce(nonce: "n1", expiresAt: now + 300))
        }
        try await store.recordNonce(device: device, nonce: StoredNonce(nonce: "old", expiresAt: now - 5))
        _ = try await store.appendTelemetry(message(nonce: "old"))  // expired: free again

        _ = try await store.appendTelemetry(message(counter: 100))
        #expect(await refused(message(counter: 100)))
        _ = try await store.appendTelemetry(message(counter: 90))
        #expect(await refused(message(counter: 90)))
        _ = try await store.appendTelemetry(message(counter: 30))  // below the window: not a known replay
        _ = try await store.appendTelemetry(message(counter: 101))
        #expect(try await store.telemetryCount(of: device) == 6)
        let window = try #require(try await store.counterWindows().first { $0.0 == device }?.1)
        #expect(window.highest == 101 && window.seen == 0b11 | (1 << 11))
        try await store.close()
    }

    /// What hears a write queued with its reader (`queueTelemetry(_:reader:)`: the MQTT listener's path): each write's
    /// outcome once, with its entry and so its message; a replayed nonce as `replayed`, and nothing of it kept. The
    /// memory store takes the protocol's default (an entry of its own, written in a task: in no set order).
    @Test(arguments: Backend.allCases)
    func aWriteQueuedWithItsReaderIsHeardOnceWithItsMessage(_ backend: Backend) async throws {
        let (store, _) = try await Self.open(backend)
        let device = try DeviceID("rd")
        try await store.enroll(device: device, certificate: Self.certificate("rd1", device: device), at: Date())
        let reader = RecordingReader()
        let expires = Int64(Date().timeIntervalSince1970) + 300
        for (correlation, nonce) in [("a", "n1"), ("b", "n2"), ("c", "n1")] {
            store.queueTelemetry(
                NewTelemetry(
                    deviceID: device, receivedAt: Date(), correlationID: correlation, body: [1],
                    nonce: StoredNonce(nonce: nonce, expiresAt: expires)),
                reader: reader)
        }
        let deadline = ContinuousClock.now + .seconds(20)
        while reader.outcomes.values.map(\.count).reduce(0, +) < 3, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(10))
        }
        try await Task.sleep(for: .milliseconds(50))  // a second call, were there one, would be heard by now
        let outcomes = reader.outcomes
        #expect(outcomes.keys.sorted() == ["a", "b", "c"] && outcomes.values.allSatisfy { $0.count == 1 })
        let ids = outcomes.values.compactMap { if case .stored(let id) = $0.first { id } else { nil } }
        #expect(ids.count == 2 && Set(ids).count == 2, "\(outcomes)")
        // One of the two with nonce n1 is stored, the other refused; in queue order (the SQL stores), the first.
        let refused = outcomes.filter { $0.value == [.failed(.replayed)] }.keys
        #expect(refused.count == 1 && refused.allSatisfy { $0 == "a" || $0 == "c" }, "\(outcomes)")
        if backend != .memory { #expect(Array(refused) == ["c"], "\(outcomes)") }
        #expect(try await store.telemetryCount(of: device) == 2)
        try await store.close()
    }

    @Test func sqliteKeepsEverythingAcrossReopen() async throws {
        let (store, directory) = try await Self.open(.sqlite)
        let a = try DeviceID("a")
        try await store.enroll(device: a, certificate: Self.certificate("01", device: a), at: Date())
        let id = try await store.appendTelemetry(
            NewTelemetry(deviceID: a, receivedAt: Date(), correlationID: "x", body: [123, 125]))
        try await store.close()
        let reopened = try SQLiteHubStore(path: directory + "/test.sqlite")
        #expect(try await reopened.telemetry(of: a, limit: 10).map(\.id) == [id])
        #expect(try await reopened.telemetry(of: a, limit: 10).first?.body == [123, 125])
        try await reopened.close()
    }
}

extension HubStoreTests {
    /// The monitoring counts: devices per status, unrevoked certificates of active devices ending inside the window
    /// (not those already expired, revoked, device-less or of a revoked device), the audit head, update steps.
    @Test(arguments: Backend.allCases)
    func theFleetSummaryCountsWhatMonitoringReads(_ backend: Backend) async throws {
        let (store, _) = try await Self.open(backend)
        let now = Date(timeIntervalSince1970: 1_000_000)
        func certificate(_ serial: String, _ device: DeviceID?, endsIn seconds: TimeInterval) -> CertificateRecord {
            var record = Self.certificate(serial, device: device)
            record.notBefore = now.addingTimeInterval(-86400)
            record.notAfter = now.addingTimeInterval(seconds)
            return record
        }
        let (a, b, c) = (try DeviceID("fa"), try DeviceID("fb"), try DeviceID("fc"))
        try await store.enroll(device: a, certificate: certificate("01", a, endsIn: 3600), at: now)
        try await store.enroll(device: b, certificate: certificate("02", b, endsIn: 30 * 86400), at: now)
        try await store.enroll(device: c, certificate: certificate("03", c, endsIn: 3600), at: now)
        _ = try await store.revoke(device: c, at: now)
        try await store.addCertificate(certificate("04", nil, endsIn: 3600))
        try await store.addCertificate(certificate("05", a, endsIn: -10))
        // A certificate left valid on a revoked device, and a renewed device whose old certificate is in its grace
        // period: neither is expiring.
        try await store.addCertificate(certificate("06", c, endsIn: 3600))
        let d = try DeviceID("fd")
        try await store.enroll(device: d, certificate: certificate("07", d, endsIn: 3600), at: now)
        try await store.addCertificate(certificate("08", d, endsIn: 90 * 86400))
        var summary = try await store.fleetSummary(now: now, expiringBefore: now.addingTimeInterval(7 * 86400))
        #expect(summary.activeDevices == 3)
        #expect(summary.revokedDevices == 1)
        #expect(summary.certificatesExpiring == 1, "only fa's live certificate ends within the window")
        #expect(summary.updateSteps.isEmpty)
        try await store.recordSecurityEvent(SecurityEvent(at: now, kind: "x", identity: nil, detail: "one"))
        try await store.recordSecurityEvent(SecurityEvent(at: now, kind: "x", identity: nil, detail: "two"))
        for (device, step) in [(a, "committed"), (b, "rolled-back")] {
            try await store.recordUpdateState(
                DeviceUpdateState(
                    deviceID: device, installedTarget: nil, installedVersion: nil, slot: nil, floor: 0, lastStep: step,
                    stepTarget: nil, reason: nil, sequence: 1, updatedAt: now))
        }
        summary = try await store.fleetSummary(now: now, expiringBefore: now.addingTimeInterval(7 * 86400))
        #expect(summary.auditRecords == 2)
        #expect(summary.updateSteps == ["committed": 1, "rolled-back": 1])
    }
}

extension HubStoreTests {
    /// The fleet overview's page: search (literal, case-insensitive: `%` and `_` are not wildcards), status filter,
    /// each sort in both directions (missing values first ascending, ties by id), offset and limit, the total.
    @Test(arguments: Backend.allCases)
    func theDevicePageFiltersSortsAndPages(_ backend: Backend) async throws {
        let (store, _) = try await Self.open(backend)
        let now = Date(timeIntervalSince1970: 1_000_000)
        let ids = try ["dev-a", "dev-b", "dev-c", "other_1", "other-2"].map { try DeviceID($0) }
        for (index, id) in ids.enumerated() {
            var record = Self.certificate(String(format: "%02x", index + 1), device: id)
            record.notAfter = now.addingTimeInterval(Double(10 - index) * 86400)
            try await store.enroll(device: id, certificate: record, at: now)
        }
        _ = try await store.revoke(device: ids[1], at: now)
        try await store.setDeviceClass(ids[0], class: "meters")
        try await store.setQuarantine(ids[2], until: 2_000_000)
        for (id, seconds) in [(ids[2], 10.0), (ids[0], 20.0), (ids[2], 30.0)] {
            _ = try await store.appendTelemetry(
                NewTelemetry(deviceID: id, receivedAt: now.addingTimeInterval(seconds), correlationID: "c", body: [1]))
        }
        func page(_ configure: (inout DeviceQuery) -> Void) async throws -> (Int, [String]) {
            var query = DeviceQuery()
            configure(&query)
            let (total, devices) = try await store.devicePage(query)
            return (total, devices.map(\.id.rawValue))
        }
        #expect(try await page { _ in } == (5, ["dev-a", "dev-b", "dev-c", "other-2", "other_1"]))
        #expect(try await page { $0.search = "DEV" } == (3, ["dev-a", "dev-b", "dev-c"]))
        #expect(try await page { $0.search = "r_" } == (1, ["other_1"]), "_ is matched literally")
        #expect(try await page { $0.search = "%" } == (0, []), "% is matched literally")
        #expect(try await page { $0.status = .revoked } == (1, ["dev-b"]))
        #expect(
            try await page {
                $0.sort = .lastSeen
                $0.descending = true
                $0.limit = 2
            } == (5, ["dev-c", "dev-a"]))
        #expect(try await page { $0.sort = .lastSeen } == (5, ["dev-b", "other-2", "other_1", "dev-a", "dev-c"]))
        #expect(
            try await page {
                $0.sort = .expiry
                $0.offset = 1
                $0.limit = 2
            } == (5, ["other-2", "other_1"]))
        #expect(
            try await page {
                $0.sort = .id
                $0.descending = true
                $0.limit = 1
            } == (5, ["other_1"]))
        let first = try #require(try await store.devicePage(DeviceQuery()).devices.first)
        #expect(first.deviceClass == "meters")
        #expect(first.lastSeen == now.addingTimeInterval(20))
        #expect(first.certificateNotAfter == now.addingTimeInterval(10 * 86400))
        // Every window of every order, filtered or not, is the same slice of the whole list (a page past the middle
        // is read from the other end and reversed).
        let filters: [(search: String?, status: DeviceStatus?)] = [
            (nil, nil), ("dev", nil), (nil, .active), ("r", .active),
        ]
        for filter in filters {
            for sort in [DeviceQuery.Sort.id, .status, .lastSeen, .expiry] {
                for descending in [false, true] {
                    let (total, all) = try await page {
                        $0.search = filter.search
                        $0.status = filter.status
                        $0.sort = sort
                        $0.descending = descending
                    }
                    #expect(all.count == total && total > 0)
                    for offset in 0...(total + 1) {
                        for limit in 0...(total + 1) {
                            let window = try await page {
                                $0.search = filter.search
                                $0.status = filter.status
                                $0.sort = sort
                                $0.descending = descending
                                $0.offset = offset
                                $0.limit = limit
                            }
                            let expected = Array(all.dropFirst(offset).prefix(limit))
                            #expect(window == (total, expected), "\(filter) \(sort) \(descending) \(offset)+\(limit)")
                        }
                    }
                }
            }
        }
        let third = try await store.devicePage(DeviceQuery()).devices[2]
        #expect(third.quarantinedUntil == 2_000_000)
        #expect(try await store.devicePage(DeviceQuery()).devices[1].certificateNotAfter == nil, "revoked")
        // Ids keep their case; the search ignores it either way.
        let mixed = try DeviceID("Mixed-Case")
        try await store.enroll(device: mixed, certificate: Self.certificate("0a", device: mixed), at: now)
        #expect(try await page { $0.search = "mixed-c" } == (1, ["Mixed-Case"]))
        #expect(try await page { $0.search = "XED-CA" } == (1, ["Mixed-Case"]))
    }
}
