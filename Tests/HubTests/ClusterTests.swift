import Core
import Foundation
import HubClient
import MQTT
import PostgresStore
import PostgresTestSupport
import Store
import Testing

/// Two hub nodes on one PostgreSQL database (the second started from a copy of the first's data directory: the same
/// CA, TLS key and audit key). What an operator does on one node bites on the other within a second.
@Suite(.serialized) struct ClusterTests {
    static func twoNodes() async throws -> (TestHub, TestHub) {
        let location = try await PostgresTestServer.freshDatabase()
        let first = try await TestHub.start(store: try await PostgresHubStore(location: location))
        let copy = try temporaryDirectory("node-2")
        for item in try FileManager.default.contentsOfDirectory(atPath: first.directory) {
            try FileManager.default.copyItem(atPath: first.directory + "/" + item, toPath: copy + "/" + item)
        }
        let second = try await TestHub.start(directory: copy, store: try await PostgresHubStore(location: location))
        return (first, second)
    }

    /// Polls `condition` every 10 ms for up to `seconds`; returns how long it took to hold, nil if it never did.
    static func within(_ seconds: Double, _ condition: () async throws -> Bool) async throws -> Duration? {
        let clock = ContinuousClock()
        let start = clock.now
        while clock.now - start < .seconds(seconds) {
            if try await condition() { return clock.now - start }
            try await Task.sleep(for: .milliseconds(10))
        }
        return nil
    }

    @Test func revocationQuarantineReleaseAndSchemasOnOneNodeBiteOnTheOther() async throws {
        let (one, two) = try await Self.twoNodes()
        let device = try await one.enroll("cl-1")
        let id = try DeviceID("cl-1")

        // Quarantined by node 1's gateway (it stores the quarantine, as GatewayWiring does): node 2 refuses the
        // device's MQTT CONNECT.
        let now = Int64(Date().timeIntervalSince1970)
        try await one.server.store.setQuarantine(id, until: now + 600)
        let quarantined = try await Self.within(5) { two.server.gateway.quarantine.isQuarantined(id, now: now) }
        #expect(
            quarantined.map { $0 < .seconds(1) } == true,
            "node 2 saw the quarantine after \(String(describing: quarantined))")
        #expect(try await MQTTBrokerTests.connect(two, device, version: .v311) { _, reason in reason } == 0x05)

        // Released through node 1's operator API: node 2 lets the device in again.
        #expect(try await one.operatorRequest("POST", "/v1/devices/cl-1/release").status == 200)
        let released = try await Self.within(5) { !two.server.gateway.quarantine.isQuarantined(id, now: now) }
        #expect(
            released.map { $0 < .seconds(1) } == true, "node 2 saw the release after \(String(describing: released))")

        // A schema registered on node 1 is enforced by node 2.
        let schema = Array(#"{"type":"object","required":["t"],"properties":{"t":{"type":"number"}}}"#.utf8)
        #expect(try await one.operatorRequest("PUT", "/v1/schemas/env", raw: schema).status == 201)
        let enforced = try await Self.within(5) { two.server.gateway.schema(for: "env") != nil }
        #expect(
            enforced.map { $0 < .seconds(1) } == true, "node 2 had the schema after \(String(describing: enforced))")

        // Revoked on node 1 while connected to node 2: node 2 closes the connection within a second of the answer.
        let clock = ContinuousClock()
        let closedAfter = try await MQTTBrokerTests.connect(two, device, version: .v311) { mqtt, reason in
            #expect(reason == 0)
            let revoked = try await one.operatorRequest("POST", "/v1/devices/cl-1/revoke")
            let answered = clock.now
            #expect(revoked.status == 200)
            while (try? await mqtt.next()) != nil {}
            return clock.now - answered
        }
        #expect(closedAfter < .seconds(1), "node 2 closed the revoked device's connection after \(closedAfter)")
        for certificate in try await two.server.store.certificates(of: id) {
            #expect(two.server.revocationList.contains(certificate.serialHex))
        }
        try await two.stop()
        try await one.stop()
    }
}
