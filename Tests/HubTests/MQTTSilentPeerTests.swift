import Foundation
import HubClient
import MQTT
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import Testing

/// MQTT 3.1.1 and 5.0 §3.1.2.10: a client silent past 1.5 × its keep-alive is disconnected "as if the network had
/// failed". A peer that stopped reading (its NAT forgot it, it hangs) never answers a TLS close_notify, so the hub
/// must not wait for one: the close goes below TLS, and the will follows within the sweep's second.
@Suite struct MQTTSilentPeerTests {
    /// Collects what the hub sends, for a client that reads only when told to.
    final class Collector: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        let bytes = NIOLockedValueBox(0)
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let count = unwrapInboundIn(data).readableBytes
            bytes.withLockedValue { $0 += count }
        }
    }

    @Test(.timeLimit(.minutes(1))) func aPeerThatStoppedReadingIsClosedWithoutWaitingForTLS() async throws {
        let hub = try await TestHub.start()
        let device = try await hub.enroll("ka-dead")
        let operatorClient = try hub.operatorClient()
        let state = try TopicName("devices/ka-dead/state")
        try await MQTTBrokerTests.connect(hub, operatorClient, clientID: "watch") { fleet, _ async throws in
            #expect(try await MQTTFeatureTests.subscribe(fleet, ["devices/+/state"]) == [1])
            // The device: TLS and CONNECT (keep-alive 1 s, a will), reading only until its CONNACK.
            let collector = Collector()
            let context = try NIOSSLContext(configuration: try device.credentials.tlsConfiguration())
            let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .channelOption(.autoRead, value: false)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(
                            NIOSSLClientHandler(context: context, serverHostname: "localhost"))
                        try channel.pipeline.syncOperations.addHandler(collector)
                    }
                }
                .connect(host: "127.0.0.1", port: hub.mqttPort).get()
            var connect = ConnectPacket(version: .v311, clientID: "ka-dead", keepAlive: 1)
            connect.will = Will(topic: state, payload: Array(#"{"gone":1}"#.utf8), qos: .atMostOnce, retain: false)
            var bytes = ByteBuffer()
            Packet.connect(connect).encode(into: &bytes, version: .v311)
            channel.writeAndFlush(bytes, promise: nil)
            let start = ContinuousClock.now
            while collector.bytes.withLockedValue({ $0 }) < 4 {  // CONNACK: 4 bytes
                guard ContinuousClock.now - start < .seconds(20) else { throw ClientError("no CONNACK") }
                channel.read()
                try await Task.sleep(for: .milliseconds(10))
            }
            let connected = ContinuousClock.now
            // From here the device reads nothing: the hub's close_notify would never be answered.
            let will = try await MQTTFeatureTests.received(fleet)
            let willAt = ContinuousClock.now
            #expect(will.payload == Array(#"{"gone":1}"#.utf8))
            // 1.5 s of silence from the hub's CONNACK, then the sweep within a second; waiting for close_notify would
            // add 5 s. The hub's CONNACK went out after the CONNECT was written (`start`) and before it was seen here
            // (`connected`, which a loaded run may see late): each bound is taken from the side that cannot make it
            // pass or fail wrongly. (The embedded tests check the deadline itself.)
            #expect(willAt - start > .milliseconds(1000), "closed before its deadline: \(willAt - start)")
            #expect(willAt - connected < .milliseconds(5500), "closed \(willAt - connected) after its CONNACK")
            try? await channel.close()
        }
        try await hub.stop()
    }
}
