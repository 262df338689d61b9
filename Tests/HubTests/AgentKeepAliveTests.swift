import Foundation
import Testing

@testable import Agent

/// The agent uses the keep-alive the hub sets (MQTT 5.0 §3.2.2.3.14 Server Keep Alive: the client must use it
/// instead of the one it asked for), so a hub's shorter maximum never cuts an idle agent off.
@Suite(.serialized) struct AgentKeepAliveTests {
    @Test func theAgentPingsAtTheHubsServerKeepAlive() async throws {
        let hub = try await TestHub.start { $0.mqttSettings.maxKeepAliveSeconds = 2 }
        let device = try await hub.enroll("ka-agent")
        var configuration = AgentTests.configuration(hub, try AgentTests.stateDirectory(hub, device))
        configuration.keepAliveSeconds = 60
        let agent = try Agent(configuration: configuration)
        let running = Task { try await agent.run() }
        #expect(await AgentTests.eventually { await agent.connection == .connected })
        let generation = await agent.generation
        // 3.5 × the hub's keep-alive of silence but for the agent's pings: a connection held to 60 s would be cut
        // after 3 s and reconnected.
        try await Task.sleep(for: .seconds(7))
        #expect(await agent.keepAlive == 2)
        #expect(await agent.connection == .connected)
        #expect(await agent.generation == generation, "the connection was never cut for silence")
        await agent.stop()
        running.cancel()
        _ = try? await running.value
        try await hub.stop()
    }
}
