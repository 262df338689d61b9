import Core
import Foundation
import Store
import Testing

@testable import Agent

/// The agent uses the keep-alive the hub sets (MQTT 5.0 §3.2.2.3.14 Server Keep Alive: the client must use it
/// instead of the one it asked for), so a hub's shorter maximum never cuts an idle agent off.
@Suite(.serialized) struct AgentKeepAliveTests {
    /// Runs an agent for a freshly enrolled device against `hub` until `body` returns; `body` gets the agent and the
    /// generation of its first connection.
    static func withAgent(
        _ hub: TestHub, _ name: String, maxInFlight: Int? = nil, keepAlive: UInt16? = nil,
        _ body: (Agent, Int) async throws -> Void
    ) async throws {
        let device = try await hub.enroll(name)
        var configuration = AgentTests.configuration(hub, try AgentTests.stateDirectory(hub, device))
        if let maxInFlight { configuration.maxInFlight = maxInFlight }
        if let keepAlive { configuration.keepAliveSeconds = keepAlive }
        let agent = try Agent(configuration: configuration)
        let running = Task { try await agent.run() }
        #expect(await AgentTests.eventually { await agent.connection == .connected })
        try await body(agent, await agent.generation)
        await agent.stop()
        running.cancel()
        _ = try? await running.value
    }

    @Test func theAgentPingsAtTheHubsServerKeepAlive() async throws {
        // 5 s: the agent pings every 2.5 s and a connection is cut after 7.5 s of silence (room for a loaded run).
        let hub = try await TestHub.start { $0.mqttSettings.maxKeepAliveSeconds = 5 }
        try await Self.withAgent(hub, "ka-agent", keepAlive: 60) { agent, generation in
            // Twice the hub's cut-off but for the agent's pings: an agent pinging every 30 s (its own 60-s keep-alive)
            // would have been cut after 7.5 s and reconnected.
            try await Task.sleep(for: .seconds(16))
            #expect(await agent.keepAlive == 5)
            #expect(await agent.connection == .connected)
            #expect(await agent.generation == generation, "the connection was never cut for silence")
        }
        try await hub.stop()
    }

    /// A burst whose acknowledgements trickle in from a slow hub wakes the agent's writer again and again with
    /// nothing to send: it still pings half a keep-alive after the last packet it sent (it used to wait for a quiet
    /// half keep-alive that never came, and the hub cut it off for silence).
    @Test func aTrickleOfAcknowledgementsDoesNotStopThePings() async throws {
        let store = FaultyStore(InMemoryHubStore())
        // Twelve acknowledgements 0.8 s apart: 9.6 s without a quiet 2 s, against a hub that cuts after 6 s.
        store.serialDelayMilliseconds.store(800, ordering: .relaxed)
        let hub = try await TestHub.start(store: store) { $0.mqttSettings.maxKeepAliveSeconds = 4 }
        try await Self.withAgent(hub, "ka-trickle", maxInFlight: 16) { agent, generation in
            for n in 0..<12 { try await agent.send(Array(#"{"n":\#(n)}"#.utf8)) }
            let id = try DeviceID("ka-trickle")
            #expect(try await AgentTests.eventually(30) { try await store.telemetryCount(of: id) == 12 })
            #expect(await agent.generation == generation, "never cut off for silence")
        }
        try await hub.stop()
    }

    /// The agent keeps no more publishes unacknowledged than the hub's Receive Maximum (MQTT 5.0 §3.3.4), whatever
    /// its own `maxInFlight`: more would be a protocol error the hub disconnects for (0x93).
    @Test func theAgentKeepsWithinTheHubsReceiveMaximum() async throws {
        let store = FaultyStore(InMemoryHubStore())
        store.delayMilliseconds.store(50, ordering: .relaxed)
        let hub = try await TestHub.start(store: store) { $0.mqttSettings.receiveMaximum = 2 }
        try await Self.withAgent(hub, "rm-agent", maxInFlight: 16) { agent, generation in
            for n in 0..<20 { try await agent.send(Array(#"{"n":\#(n)}"#.utf8)) }
            let id = try DeviceID("rm-agent")
            // 20 messages, 2 at a time, 50 ms a store write: a second when quiet; the bound is for a loaded runner.
            #expect(try await AgentTests.eventually(60) { try await store.telemetryCount(of: id) == 20 })
            #expect(await agent.generation == generation, "never disconnected")
            #expect(try await !hub.securityEvents().contains { $0.kind == "mqtt-protocol-error" })
        }
        try await hub.stop()
    }
}
