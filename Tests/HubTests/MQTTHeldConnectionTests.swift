import HubClient
import MQTT
import Synchronization
import Testing

@testable import Hub

/// A connection that is held and sends nothing keeps no task in the hub (its session is parked in its inbox), is
/// still served when it speaks again, and still ends its session when the hub stops.
@Suite struct MQTTHeldConnectionTests {
    final class Flags: Sendable {
        let speak = Atomic(false)
        let ready = Atomic(0)
    }

    @Test(.timeLimit(.minutes(2))) func heldConnectionsKeepNoTaskAndAreStillServed() async throws {
        let hub = try await TestHub.start()
        let sessions = hub.server.mqttSessions
        let count = 5
        var devices: [TestDevice] = []
        for index in 0..<count { devices.append(try await hub.enroll("held-\(index)")) }
        let flags = Flags()
        let port = hub.mqttPort
        try await withThrowingTaskGroup(of: Void.self) { group in
            for device in devices {
                let (id, tls) = (device.id, try device.credentials.tlsConfiguration())
                group.addTask {
                    try await MQTTClientConnection.withConnection(
                        host: "127.0.0.1", port: port, tls: tls,
                        clientID: id, version: .v5, keepAlive: 60
                    ) { mqtt, reason in
                        #expect(reason == 0)
                        #expect(
                            try await MQTTFeatureTests.subscribe(mqtt, ["devices/\(id)/commands/#"]) == [1])
                        flags.ready.add(1, ordering: .relaxed)
                        while !flags.speak.load(ordering: .relaxed) { try await Task.sleep(for: .milliseconds(10)) }
                        try await mqtt.send(.pingreq)
                        #expect(try await mqtt.next() == .pingresp, "a parked session is served again")
                    }
                }
            }
            while flags.ready.load(ordering: .relaxed) < count { try await Task.sleep(for: .milliseconds(10)) }
            // Every client has its SUBACK: once their turns have ended, no connection has a task.
            var waited = 0
            while sessions.tasksRunning > 0, waited < 500 {
                try await Task.sleep(for: .milliseconds(10))
                waited += 1
            }
            #expect(sessions.open == count, "\(count) sessions held")
            #expect(sessions.tasksRunning == 0, "held connections keep no task")
            flags.speak.store(true, ordering: .relaxed)
            try await group.waitForAll()
        }
        // The clients have gone: each session concluded, and no task is left behind.
        var waited = 0
        while sessions.open > 0 || sessions.tasksRunning > 0, waited < 500 {
            try await Task.sleep(for: .milliseconds(10))
            waited += 1
        }
        #expect(sessions.open == 0)
        #expect(sessions.tasksRunning == 0)
        try await hub.stop()
    }

    @Test(.timeLimit(.minutes(2))) func theHubStopsWhileSessionsAreParked() async throws {
        let hub = try await TestHub.start()
        let device = try await hub.enroll("held-stop")
        let sessions = hub.server.mqttSessions
        try await MQTTClientConnection.withConnection(
            host: "127.0.0.1", port: hub.mqttPort, tls: try device.credentials.tlsConfiguration(),
            clientID: device.id, version: .v311, keepAlive: 0
        ) { mqtt, _ in
            #expect(try await MQTTFeatureTests.subscribe(mqtt, ["devices/held-stop/commands/#"]) == [1])
            var waited = 0
            while sessions.tasksRunning > 0, waited < 500 {
                try await Task.sleep(for: .milliseconds(10))
                waited += 1
            }
            #expect(sessions.tasksRunning == 0 && sessions.open == 1, "parked, with keep-alive 0")
            // The hub stops with the session parked: its last turn finds the end and concludes it.
            try await hub.stop()
            #expect(sessions.open == 0)
            do { while try await mqtt.next() != nil {} } catch {}
        }
    }
}
