import Foundation
public import MQTT
import NIOCore
public import NIOSSL
import Synchronization

/// MQTT load over mutual TLS: `connections` clients publishing 200-byte JSON with pre-encoded packets.
/// QoS 1 keeps `window` messages in flight per connection and counts PUBACKs; QoS 0 sends batches and closes each
/// with a PINGREQ, so a message counts only once the broker answered after it (in-order processing).
public enum MQTTLoad {
    public struct Result: Sendable {
        public var messages = 0
        public var failures = 0
        public var seconds = 0.0
        public var perSecond: Double { seconds > 0 ? Double(messages) / seconds : 0 }

        public init() {}
    }

    public static func run(
        host: String, port: Int, tls: @escaping @Sendable (Int) throws -> TLSConfiguration,
        clientID: @escaping @Sendable (Int) -> String,
        topic: @escaping @Sendable (Int) -> String, connections: Int, qos: QoS, window: Int = 10, duration: Duration,
        payload: [UInt8]
    ) async -> Result {
        let clock = ContinuousClock()
        let start = clock.now
        let deadline = start + duration
        var total = await withTaskGroup(of: Result.self) { group in
            for index in 0..<connections {
                group.addTask {
                    var result = Result()
                    do {
                        let name = try TopicName(topic(index))
                        try await MQTTClientConnection.withConnection(
                            host: host, port: port, tls: try tls(index), clientID: clientID(index)
                        ) { connection, reason in
                            guard reason == 0 else { throw ClientError("CONNACK \(reason)") }
                            if qos == .atLeastOnce {
                                result.messages = try await qos1(connection, name, payload, window, deadline)
                            } else {
                                result.messages = try await qos0(connection, name, payload, deadline)
                            }
                        }
                    } catch {
                        result.failures += 1
                    }
                    return result
                }
            }
            var merged = Result()
            for await part in group {
                merged.messages += part.messages
                merged.failures += part.failures
            }
            return merged
        }
        let elapsed = clock.now - start
        total.seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        return total
    }

    /// Messages a `subscribe` client has received so far, and whether its subscription is in place.
    public final class Received: Sendable {
        private let count = Atomic<Int>(0)
        private let ready = Atomic<Bool>(false)
        public init() {}
        public var messages: Int { count.load(ordering: .relaxed) }
        public var subscribed: Bool { ready.load(ordering: .relaxed) }
        func add() { count.add(1, ordering: .relaxed) }
        func subscribe() { ready.store(true, ordering: .relaxed) }
    }

    /// An application's client: subscribed to `filter` at QoS 1 with a session kept for its return (MQTT 5.0, Session
    /// Expiry Interval 600 s, Clean Start off; Receive Maximum 1,024, the most the hub keeps in flight to a client),
    /// acknowledging each PUBLISH as it comes (`received` counts them), until its task is cancelled or the
    /// connection ends.
    public static func subscribe(
        host: String, port: Int, tls: TLSConfiguration, clientID: String, filter: TopicFilter, received: Received
    ) async throws {
        func acknowledgeEach(_ connection: MQTTClientConnection, _ reason: ReasonCode) async throws {
            guard reason == 0 else { throw ClientError("CONNACK \(reason)") }
            try await connection.send(
                .subscribe(
                    packetID: 1, subscriptions: [Subscription(filter: filter, qos: .atLeastOnce)],
                    properties: Properties()))
            while !Task.isCancelled, let packet = try await connection.next() {
                switch packet {
                case .suback(1, let codes, _):
                    guard codes == [1] else { throw ClientError("SUBACK \(codes)") }
                    received.subscribe()
                case .publish(let publish):
                    received.add()
                    if let id = publish.packetID {
                        try await connection.write(
                            encoded(.puback(packetID: id, reasonCode: 0, properties: Properties()), .v5))
                    }
                default: continue
                }
            }
        }
        try await MQTTClientConnection.withConnection(
            host: host, port: port, tls: tls, clientID: clientID, version: .v5,
            configure: {
                $0.cleanStart = false
                $0.properties.sessionExpiryInterval = 600
                $0.properties.receiveMaximum = 1024
            }, acknowledgeEach)
    }

    static func encoded(_ packet: Packet, _ version: ProtocolVersion) -> ByteBuffer {
        var buffer = ByteBuffer()
        packet.encode(into: &buffer, version: version)
        return buffer
    }

    static func qos1(
        _ connection: MQTTClientConnection, _ topic: TopicName, _ payload: [UInt8], _ window: Int,
        _ deadline: ContinuousClock.Instant
    ) async throws -> Int {
        let packets = (1...window).map {
            encoded(
                .publish(PublishPacket(topic: topic, payload: payload, qos: .atLeastOnce, packetID: UInt16($0))),
                connection.version)
        }
        var burst = ByteBuffer()
        for var packet in packets { burst.writeBuffer(&packet) }
        try await connection.write(burst)
        var acknowledged = 0
        var outstanding = window
        while outstanding > 0, let packet = try await connection.next() {
            guard case .puback(let id, let reason, _) = packet, reason == 0, (1...window).contains(Int(id)) else {
                continue
            }
            acknowledged += 1
            outstanding -= 1
            if ContinuousClock.now < deadline {
                try await connection.write(packets[Int(id) - 1])
                outstanding += 1
            }
        }
        return acknowledged
    }

    static func qos0(
        _ connection: MQTTClientConnection, _ topic: TopicName, _ payload: [UInt8], _ deadline: ContinuousClock.Instant
    ) async throws -> Int {
        let one = encoded(.publish(PublishPacket(topic: topic, payload: payload, qos: .atMostOnce)), connection.version)
        var batch = ByteBuffer()
        let batchSize = 100
        for _ in 0..<batchSize {
            var copy = one
            batch.writeBuffer(&copy)
        }
        let ping = encoded(.pingreq, connection.version)
        var sent = 0
        while ContinuousClock.now < deadline {
            try await connection.write(batch)
            try await connection.write(ping)
            while let packet = try await connection.next() {
                if case .pingresp = packet { break }
            }
            sent += batchSize
        }
        return sent
    }
}
