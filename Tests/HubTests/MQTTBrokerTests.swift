import Core
import Crypto
import Foundation
import Gateway
import HubClient
import MQTT
import NIOCore
import NIOPosix
import Store
import Testing
import X509

/// The MQTT listener as a broker behind the gateway pipeline: each control attacked and shown to refuse, sessions,
/// retained messages, fleet subscribers and commands, connection limits, and paho-mqtt 2.x as a real peer.
@Suite(.serialized) struct MQTTBrokerTests {
    static func connect<R: Sendable>(
        _ hub: TestHub, _ device: TestDevice, version: ProtocolVersion = .v5, clientID: String? = nil,
        configure: (inout ConnectPacket) -> Void = { _ in },
        _ body: (MQTTClientConnection, ReasonCode) async throws -> R
    ) async throws -> R {
        try await MQTTClientConnection.withConnection(
            host: "127.0.0.1", port: hub.mqttPort, tls: try device.credentials.tlsConfiguration(),
            clientID: clientID ?? device.id, version: version, configure: configure, body)
    }

    /// The CONNACK reason code, and nothing else.
    static func reason(_: MQTTClientConnection, _ reason: ReasonCode) -> ReasonCode { reason }

    /// MQTT 5: resume the session if there is one, and keep it 300 s after disconnecting.
    static func persistent(_ connect: inout ConnectPacket) {
        connect.cleanStart = false
        connect.properties.sessionExpiryInterval = 300
    }

    static func counter(_ value: String) -> Properties {
        var properties = Properties()
        properties.userProperties = [("counter", value)]
        return properties
    }

    /// Strict JSON, schema chosen by topic, routes, counters (property and `$counter` member): each refused with
    /// its reason code and a correlation id, recorded with its stage; only admitted messages are stored.
    @Test func everyPublishPassesTheGatewayPipeline() async throws {
        let hub = try await TestHub.start {
            $0.gateway.quarantineInvalid = 100
            $0.gateway.quarantineReplay = 100
        }
        let device = try await hub.enroll("mp-1")
        let schema = #"{"type":"object","required":["temperature"],"properties":{"temperature":{"type":"number"}}}"#
        hub.server.gateway.setSchema(try JSONSchema(bytes: Array(schema.utf8)), for: "env")
        let telemetry = try TopicName("devices/mp-1/telemetry")
        let env = try TopicName("devices/mp-1/telemetry/env")
        let body = Array(#"{"t":2}"#.utf8)
        try await Self.connect(hub, device) { mqtt, reason in
            #expect(reason == 0)
            #expect(try await mqtt.publishAcknowledged(topic: telemetry, payload: Array(#"{"t":1}"#.utf8)) == 0)
            for bad in ["{", #"{"a":1,"a":2}"#, "[1]", #"{"n":1e999}"#] {
                let refused = try await mqtt.publishAcknowledgedWithProperties(
                    topic: telemetry, payload: Array(bad.utf8))
                #expect(refused.reason == 0x99, "\(bad)")
                #expect(refused.properties.userProperties.first?.0 == "correlation-id")
            }
            #expect(
                try await mqtt.publishAcknowledged(topic: env, payload: Array(#"{"temperature":"hot"}"#.utf8)) == 0x99)
            #expect(try await mqtt.publishAcknowledged(topic: env, payload: Array(#"{"temperature":21.5}"#.utf8)) == 0)
            // A message type nobody registered a schema for, and a route that is not open to devices.
            let unknown = try TopicName("devices/mp-1/telemetry/unknown")
            #expect(try await mqtt.publishAcknowledged(topic: unknown, payload: Array("{}".utf8)) == 0x99)
            let commands = try TopicName("devices/mp-1/commands/reboot")
            #expect(try await mqtt.publishAcknowledged(topic: commands, payload: Array("{}".utf8)) == 0x87)
            // Counters: the MQTT 5 user property, then the `$counter` member; a replay of either is refused.
            #expect(
                try await mqtt.publishAcknowledged(topic: telemetry, payload: body, properties: Self.counter("5")) == 0)
            #expect(
                try await mqtt.publishAcknowledged(topic: telemetry, payload: body, properties: Self.counter("5"))
                    == 0x87)
            #expect(
                try await mqtt.publishAcknowledged(topic: telemetry, payload: body, properties: Self.counter("x"))
                    == 0x99)
            let counted = Array(#"{"$counter":6,"t":3}"#.utf8)
            #expect(try await mqtt.publishAcknowledged(topic: telemetry, payload: counted) == 0)
            #expect(try await mqtt.publishAcknowledged(topic: telemetry, payload: counted) == 0x87)
            #expect(
                try await mqtt.publishAcknowledged(topic: telemetry, payload: Array(#"{"$counter":-1}"#.utf8)) == 0x99)
        }
        let stored = try await hub.server.store.telemetry(of: try DeviceID("mp-1"), limit: 100)
        #expect(stored.count == 4, "t:1, env, counter 5, counter 6")
        let events = try await hub.securityEvents()
        #expect(events.contains { $0.kind == "invalid-message" && $0.detail.contains("json") })
        #expect(events.contains { $0.kind == "invalid-message" && $0.detail.contains("schema") })
        #expect(events.contains { $0.kind == "replay" && $0.detail.contains("counter 5 replayed") })
        #expect(events.contains { $0.kind == "access-denied" && $0.detail.contains("commands") })
        // The counter window went to the store with the message: a restart still refuses the replay.
        try await hub.stop(keepData: true)
        let restarted = try await TestHub.start(directory: hub.directory)
        let afterRestart = try await Self.connect(restarted, device) { mqtt, _ in
            [
                try await mqtt.publishAcknowledged(topic: telemetry, payload: body, properties: Self.counter("6")),
                try await mqtt.publishAcknowledged(topic: telemetry, payload: body, properties: Self.counter("7")),
            ]
        }
        #expect(afterRestart == [0x87, 0])
        try await restarted.stop()
    }

    /// MQTT 5 over the rate: PUBACK 0x97 Quota exceeded, then at the quarantine threshold DISCONNECT 0x96, and the
    /// quarantined device is refused at CONNECT. A sustained QoS 0 flood is disconnected with 0x96.
    @Test func overTheRateMQTT5IsRefusedThenDisconnected() async throws {
        let hub = try await TestHub.start {
            $0.gateway.deviceRate = 0.01
            $0.gateway.deviceBurst = 3
            $0.gateway.quarantineRateLimited = 4
        }
        let device = try await hub.enroll("mp-rate")
        let topic = try TopicName("devices/mp-rate/telemetry")
        let codes = try await Self.connect(hub, device) { mqtt, _ in
            var codes: [ReasonCode] = []
            for index in 0..<10 {
                let (reason, _) = try await mqtt.publishAcknowledgedWithProperties(
                    topic: topic, payload: Array(#"{"i":\#(index)}"#.utf8))
                codes.append(reason)
                if reason == 0x96 { break }
            }
            return codes
        }
        #expect(codes == [0, 0, 0, 0x97, 0x97, 0x97, 0x96], "\(codes)")
        let refused = try await Self.connect(hub, device) { _, reason in reason }
        #expect(refused == 0x87)
        let kinds = try await hub.securityEvents().map(\.kind)
        #expect(kinds.contains("device-quarantined"))
        #expect(try await hub.server.store.telemetryCount(of: try DeviceID("mp-rate")) == 3)

        // QoS 0: no acknowledgement to refuse, so a sustained flood is disconnected.
        let flooder = try await hub.enroll("mp-flood")
        let floodTopic = try TopicName("devices/mp-flood/telemetry")
        let disconnect = try await Self.connect(hub, flooder) { mqtt, _ in
            for _ in 0..<40 {
                try await mqtt.send(.publish(PublishPacket(topic: floodTopic, payload: Array("{}".utf8))))
            }
            while let packet = try await mqtt.next() {
                if case .disconnect(let reason, _) = packet { return reason }
            }
            return 0
        }
        #expect(disconnect == 0x96)
        try await hub.stop()
    }

    /// MQTT 3.1.1 has no negative PUBACK: over the rate a QoS 1 message is left unacknowledged (the client still
    /// owns it), and at the quarantine threshold the connection is closed.
    @Test func mqtt311OverTheRateIsUnacknowledgedThenClosed() async throws {
        let hub = try await TestHub.start {
            $0.gateway.deviceRate = 0.01
            $0.gateway.deviceBurst = 3
            $0.gateway.quarantineRateLimited = 4
        }
        let device = try await hub.enroll("mp-311")
        let topic = try TopicName("devices/mp-311/telemetry")
        let acknowledged = try await Self.connect(hub, device, version: .v311) { mqtt, _ in
            for index in 1...10 {
                try await mqtt.send(
                    .publish(
                        PublishPacket(
                            topic: topic, payload: Array("{}".utf8), qos: .atLeastOnce, packetID: UInt16(index))))
            }
            var acknowledged: [UInt16] = []
            while let packet = try? await mqtt.next() {
                if case .puback(let id, _, _) = packet { acknowledged.append(id) }
            }
            return acknowledged
        }
        #expect(acknowledged == [1, 2, 3])
        #expect(try await hub.server.store.telemetryCount(of: try DeviceID("mp-311")) == 3)
        try await hub.stop()
    }

    /// Retained messages, persistent sessions with a bounded queue, fleet subscribers with operator certificates,
    /// commands from the operator API, topic aliases and session take-over.
    @Test func sessionsRetainedFleetAndCommands() async throws {
        let hub = try await TestHub.start { $0.mqttSettings.maxQueuedMessages = 3 }
        let device = try await hub.enroll("mb-1")
        let operatorDevice = try hub.operatorClient()
        let state = try TopicName("devices/mb-1/state")

        // The device retains its state; a fleet subscriber (operator certificate) that comes later receives it
        // with RETAIN set; it may not subscribe outside the fleet patterns.
        let retainedReply = try await Self.connect(hub, device) { mqtt, _ in
            try await mqtt.publishAcknowledged(topic: state, payload: Array(#"{"on":true}"#.utf8), retain: true)
        }
        #expect(retainedReply == 0)
        try await Self.connect(hub, operatorDevice, version: .v311, clientID: "dashboard") { mqtt, reason in
            #expect(reason == 0)
            try await mqtt.send(
                .subscribe(
                    packetID: 1,
                    subscriptions: [
                        Subscription(filter: try TopicFilter("devices/+/state"), qos: .atLeastOnce),
                        Subscription(filter: try TopicFilter("#"), qos: .atLeastOnce),
                    ], properties: .init()))
            guard case .suback(1, let codes, _) = try await mqtt.next() else {
                Issue.record("no SUBACK")
                return
            }
            #expect(codes == [1, 0x80])
            guard case .publish(let retained) = try await mqtt.next() else {
                Issue.record("no retained message")
                return
            }
            #expect(retained.topic == state && retained.retain && retained.payload == Array(#"{"on":true}"#.utf8))
        }

        // A persistent session: subscribe to commands, go away; three commands are queued, the fourth and fifth
        // are over `maxQueuedMessages`; on resume the session is present and the queued three arrive.
        try await Self.connect(
            hub, device,
            configure: Self.persistent
        ) { mqtt, _ in
            #expect(!mqtt.sessionPresent)
            try await mqtt.send(
                .subscribe(
                    packetID: 1,
                    subscriptions: [
                        Subscription(filter: try TopicFilter("devices/mb-1/commands/#"), qos: .atLeastOnce)
                    ],
                    properties: .init()))
            guard case .suback(1, [1], _) = try await mqtt.next() else {
                Issue.record("no SUBACK")
                return
            }
            try await mqtt.send(.disconnect(reasonCode: 0, properties: .init()))
        }
        try await Task.sleep(for: .milliseconds(200))
        for index in 1...5 {
            let sent = try await hub.operatorRequest(
                "POST", "/v1/devices/mb-1/commands/reboot", json: ["delay": index])
            #expect(sent.status == 202)
        }
        #expect(
            try await hub.operatorRequest("POST", "/v1/devices/mb-1/commands/reboot", raw: Array("[1]".utf8)).status
                == 400)
        #expect(try await hub.operatorRequest("POST", "/v1/devices/nobody/commands/reboot", json: [:]).status == 404)
        let delivered = try await Self.connect(
            hub, device,
            configure: Self.persistent
        ) { mqtt, _ in
            #expect(mqtt.sessionPresent)
            var payloads: [String] = []
            while payloads.count < 3, let packet = try await mqtt.next() {
                guard case .publish(let command) = packet, let id = command.packetID else { continue }
                payloads.append(String(decoding: command.payload, as: UTF8.self))
                try await mqtt.send(.puback(packetID: id, reasonCode: 0, properties: .init()))
            }
            return payloads
        }
        #expect(delivered == [#"{"delay":1}"#, #"{"delay":2}"#, #"{"delay":3}"#])
        #expect(try await hub.securityEvents().contains { $0.kind == "command-sent" })

        // Topic aliases (MQTT 5.0 §3.3.2.3.4): set, then used alone; one over the maximum ends the connection.
        let aliasEnd = try await Self.connect(hub, device) { mqtt, _ in
            var properties = Properties()
            properties.topicAlias = 1
            #expect(
                try await mqtt.publishAcknowledged(
                    topic: try TopicName("devices/mb-1/telemetry"), payload: Array(#"{"a":1}"#.utf8),
                    properties: properties) == 0)
            #expect(
                try await mqtt.publishAcknowledged(
                    topic: .unresolvedAlias, payload: Array(#"{"a":2}"#.utf8), properties: properties) == 0)
            properties.topicAlias = 999
            return try await mqtt.publishAcknowledged(
                topic: .unresolvedAlias, payload: Array(#"{"a":3}"#.utf8), properties: properties)
        }
        #expect(aliasEnd == 0x94)
        let bodies = try await hub.server.store.telemetry(of: try DeviceID("mb-1"), limit: 100).map {
            String(decoding: $0.body, as: UTF8.self)
        }
        #expect(bodies.contains(#"{"a":2}"#) && !bodies.contains(#"{"a":3}"#))

        // Session take-over (MQTT 5.0 §3.1.4-3): a second connection with the same client id ends the first with
        // DISCONNECT 0x8E.
        let takenOver = try await Self.connect(hub, device) { first, _ in
            try await Self.connect(hub, device) { _, reason in #expect(reason == 0) }
            while let packet = try await first.next() {
                if case .disconnect(let reason, _) = packet { return reason }
            }
            return 0
        }
        #expect(takenOver == 0x8E)
        try await hub.stop()
    }

    /// MQTT 5.0 §3.2.2.3.14 Server Keep Alive: a client asking for no keep-alive, or a longer one than
    /// `mqtt.maxKeepAliveSeconds`, gets the maximum in CONNACK and is closed after 1.5 × it without a packet; a
    /// shorter one is kept as asked (and not announced); a client that pings in time stays; an MQTT 3.1.1 client is
    /// held to the maximum too. A silent connection with valid credentials cannot be held for ever.
    @Test(.timeLimit(.minutes(2))) func theHubBoundsKeepAlive() async throws {
        // 3 s: a client pinging every second keeps 3.5 s of slack on a loaded machine.
        let hub = try await TestHub.start { $0.mqttSettings.maxKeepAliveSeconds = 3 }
        /// Connects (as its own device) asking `keepAlive`, pings every `ping` seconds for `pingFor` seconds, then
        /// stays silent; returns the announced Server Keep Alive and the seconds from the last packet sent to the
        /// close.
        @Sendable func silentUntilClosed(
            _ name: String, _ version: ProtocolVersion, keepAlive: UInt16, ping: Double = 0, pingFor: Double = 0
        ) async throws -> (announced: UInt16?, closedAfter: Double) {
            let device = try await hub.enroll(name)
            // The hub's keep-alive clock starts before its CONNACK: silence is counted from before the connection
            // is made, so the close can never look early.
            let connectSent = ContinuousClock.now
            return try await MQTTClientConnection.withConnection(
                host: "127.0.0.1", port: hub.mqttPort, tls: try device.credentials.tlsConfiguration(),
                clientID: name, version: version, keepAlive: keepAlive
            ) { mqtt, reason in
                #expect(reason == 0)
                let begin = ContinuousClock.now
                var silent = connectSent
                while ping > 0, ContinuousClock.now - begin < .milliseconds(Int64(pingFor * 1000)) {
                    try await mqtt.send(.pingreq)
                    silent = ContinuousClock.now
                    #expect(try await mqtt.next() == .pingresp, "still connected while it pings")
                    try await Task.sleep(for: .milliseconds(Int64(ping * 1000)))
                }
                do { while try await mqtt.next() != nil {} } catch {}
                let elapsed = ContinuousClock.now - silent
                return (
                    mqtt.connackProperties.serverKeepAlive,
                    Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
                )
            }
        }
        // All at once, each its own device and session.
        async let none = silentUntilClosed("ka-none", .v5, keepAlive: 0)
        async let long = silentUntilClosed("ka-long", .v5, keepAlive: 600)
        async let short = silentUntilClosed("ka-short", .v5, keepAlive: 1)
        async let pinging = silentUntilClosed("ka-ping", .v5, keepAlive: 0, ping: 1, pingFor: 6)
        async let old = silentUntilClosed("ka-311", .v311, keepAlive: 0)
        let (noneResult, longResult, shortResult) = try await (none, long, short)
        let (pingingResult, oldResult) = try await (pinging, old)
        #expect(noneResult.announced == 3)
        #expect(noneResult.closedAfter > 4 && noneResult.closedAfter < 15, "closed after \(noneResult.closedAfter) s")
        #expect(longResult.announced == 3)
        #expect(longResult.closedAfter > 4 && longResult.closedAfter < 15, "closed after \(longResult.closedAfter) s")
        #expect(shortResult.announced == nil, "a keep-alive within the maximum is not announced")
        #expect(
            shortResult.closedAfter > 1.2 && shortResult.closedAfter < 12, "closed after \(shortResult.closedAfter) s")
        #expect(
            pingingResult.closedAfter > 4, "pinging for 6 s kept it, then \(pingingResult.closedAfter) s of silence")
        #expect(oldResult.announced == nil, "MQTT 3.1.1 has no Server Keep Alive")
        #expect(oldResult.closedAfter > 4 && oldResult.closedAfter < 15, "closed after \(oldResult.closedAfter) s")
        try await hub.stop()
    }

    /// MQTT 5.0 §3.1.2.11.7: a refused publish's PUBACK carries the correlation id as a User Property, unless the
    /// client set Request Problem Information to 0 (then nothing but the reason code).
    @Test func requestProblemInformationIsHonoured() async throws {
        let hub = try await TestHub.start()
        let device = try await hub.enroll("rpi-1")
        let topic = try TopicName("devices/rpi-1/telemetry")
        for wants in [true, false] {
            let request: (inout ConnectPacket) -> Void = { if !wants { $0.properties.other.append((0x17, [0])) } }
            let properties = try await Self.connect(hub, device, configure: request) { mqtt, reason -> Properties? in
                #expect(reason == 0)
                try await mqtt.send(
                    .publish(
                        PublishPacket(topic: topic, payload: Array("not json".utf8), qos: .atLeastOnce, packetID: 7)))
                while let packet = try await mqtt.next() {
                    if case .puback(7, let code, let properties) = packet {
                        #expect(code == 0x99)
                        return properties
                    }
                }
                return nil
            }
            let correlation = properties?.userProperties.first { $0.0 == "correlation-id" }
            #expect((correlation != nil) == wants, "Request Problem Information \(wants ? 1 : 0)")
            if !wants {
                #expect(properties?.userProperties.isEmpty == true && properties?.reasonString == nil)
            }
        }
        try await hub.stop()
    }

    /// MQTT 5.0 §3.3.4: a client with more QoS 1 publishes awaiting their PUBACK than the Receive Maximum the hub
    /// announced gets DISCONNECT 0x93; within it, it is served (and the agent keeps within what the hub announces).
    @Test(.timeLimit(.minutes(1))) func aClientOverTheReceiveMaximumIsDisconnected() async throws {
        let store = FaultyStore(InMemoryHubStore())
        // Slow commits keep PUBACKs outstanding long enough for the client to run ahead of them.
        store.delayMilliseconds.store(300, ordering: .relaxed)
        let hub = try await TestHub.start(store: store) { $0.mqttSettings.receiveMaximum = 2 }
        let device = try await hub.enroll("rm-1")
        let topic = try TopicName("devices/rm-1/telemetry")
        let (within, over) = try await Self.connect(hub, device) { mqtt, reason -> ([ReasonCode], ReasonCode?) in
            #expect(reason == 0 && mqtt.connackProperties.receiveMaximum == 2)
            func publish(_ id: UInt16) async throws {
                try await mqtt.send(
                    .publish(
                        PublishPacket(topic: topic, payload: Array(#"{"t":1}"#.utf8), qos: .atLeastOnce, packetID: id)))
            }
            var codes: [ReasonCode] = []
            for round in 0..<2 {
                for id in [UInt16(2 * round + 1), UInt16(2 * round + 2)] { try await publish(id) }
                while codes.count < 2 * (round + 1), let packet = try await mqtt.next() {
                    if case .puback(_, let code, _) = packet { codes.append(code) }
                }
            }
            // Three at once, in one write: the hub sees the third before it can have acknowledged the first.
            var burst = ByteBuffer()
            for id in UInt16(10)...12 {
                Packet.publish(
                    PublishPacket(topic: topic, payload: Array(#"{"t":1}"#.utf8), qos: .atLeastOnce, packetID: id)
                ).encode(into: &burst, version: .v5)
            }
            try await mqtt.write(burst)
            var disconnect: ReasonCode?
            do {
                while let packet = try await mqtt.next() {
                    if case .disconnect(let code, _) = packet {
                        disconnect = code
                        break
                    }
                }
            } catch {}
            return (codes, disconnect)
        }
        #expect(within == [0, 0, 0, 0], "two at a time: every one acknowledged")
        #expect(over == 0x93, "three unacknowledged: Receive Maximum exceeded")
        #expect(try await hub.securityEvents().contains { $0.kind == "mqtt-protocol-error" })
        try await hub.stop()
    }

    /// Connection limits before TLS (open connections per source), the CONNECT deadline, and a malformed packet
    /// answered with its MQTT 5 reason code before the connection closes.
    @Test func connectionLimitsDeadlineAndMalformedPackets() async throws {
        let hub = try await TestHub.start {
            $0.mqttSettings.maxConnectionsPerSource = 3
            // Long enough that "closed at once" and "closed at the deadline" stay apart on a loaded machine.
            $0.mqttSettings.connectDeadlineSeconds = 2.5
        }
        let group = MultiThreadedEventLoopGroup.singleton
        var held: [any Channel] = []
        for _ in 0..<3 {
            held.append(try await ClientBootstrap(group: group).connect(host: "127.0.0.1", port: hub.mqttPort).get())
        }
        try await Task.sleep(for: .milliseconds(100))
        let clock = ContinuousClock()
        let fourth = try await ClientBootstrap(group: group).connect(host: "127.0.0.1", port: hub.mqttPort).get()
        let start = clock.now
        try await fourth.closeFuture.get()
        #expect(clock.now - start < .milliseconds(1500), "the fourth connection from one source is closed at once")
        // Silent connections (no TLS handshake, no CONNECT) are closed at the deadline, not before.
        for channel in held { try await channel.closeFuture.get() }
        #expect(clock.now - start > .milliseconds(1500) && clock.now - start < .seconds(8))
        try await Task.sleep(for: .milliseconds(100))

        let device = try await hub.enroll("mb-bad")
        let reason = try await Self.connect(hub, device) { mqtt, _ in
            // PUBLISH with QoS 3 (MQTT 5.0 §3.3.1.2: malformed).
            try await mqtt.write(ByteBuffer(bytes: [0x36, 0x05, 0x00, 0x01, 0x61, 0x00, 0x01]))
            while let packet = try await mqtt.next() {
                if case .disconnect(let reason, _) = packet { return reason }
            }
            return 0
        }
        #expect(reason == 0x81)
        try await hub.stop()
    }

    /// What an adversarial review found, attacked: a will aimed at another device's commands, a revoked device that
    /// only listens, a QoS 1 redelivery whose PUBACK was lost, an empty 3.1.1 client id asking for a session.
    @Test func willRevocationRedeliveryAndEmptyClientID() async throws {
        let hub = try await TestHub.start()
        let attacker = try await hub.enroll("mr-1")
        _ = try await hub.enroll("mr-2")
        let foreignWill = Will(
            topic: try TopicName("devices/mr-2/commands/reboot"), payload: Array("{}".utf8), qos: .atLeastOnce,
            retain: true)
        let will = try await Self.connect(hub, attacker, configure: { $0.will = foreignWill }, Self.reason)
        #expect(will == 0x87, "a will outside the device's topics is refused at CONNECT")
        #expect(try await hub.securityEvents().contains { $0.detail.contains("will outside") })

        // Redelivery: the same counter again with DUP is acknowledged, not stored twice, not counted as a replay.
        let topic = try TopicName("devices/mr-1/telemetry")
        let codes = try await Self.connect(hub, attacker) { mqtt, _ in
            var codes: [ReasonCode] = []
            for duplicate in [false, true] {
                try await mqtt.send(
                    .publish(
                        PublishPacket(
                            topic: topic, payload: Array(#"{"$counter":41}"#.utf8), qos: .atLeastOnce,
                            duplicate: duplicate, packetID: 7)))
                while let packet = try await mqtt.next() {
                    if case .puback(7, let reason, _) = packet {
                        codes.append(reason)
                        break
                    }
                }
            }
            // Without DUP the same counter is a replay.
            codes.append(try await mqtt.publishAcknowledged(topic: topic, payload: Array(#"{"$counter":41}"#.utf8)))
            return codes
        }
        #expect(codes == [0, 0, 0x87])
        #expect(try await hub.server.store.telemetryCount(of: try DeviceID("mr-1")) == 1)

        // A revoked device that only subscribes (sends nothing) is disconnected as soon as the revocation is
        // answered (timed from the hub's answer, so a slow operator request under load is not counted).
        let clock = ContinuousClock()
        let elapsed = try await Self.connect(hub, attacker, version: .v311) { mqtt, _ in
            let revoked = try await hub.operatorRequest("POST", "/v1/devices/mr-1/revoke")
            let answered = clock.now
            #expect(revoked.status == 200)
            while (try? await mqtt.next()) != nil {}
            return clock.now - answered
        }
        #expect(elapsed < .seconds(10), "closed \(elapsed) after the revocation was answered")

        // MQTT 3.1.1 §3.1.3.1: an empty client id with cleanSession = 0 is refused with 0x02.
        let device = try await hub.enroll("mr-3")
        let empty = try await Self.connect(
            hub, device, version: .v311, clientID: "", configure: { $0.cleanStart = false }, Self.reason)
        #expect(empty == 0x02)
        try await hub.stop()
    }

    /// One device cannot fill the hub's memory with retained messages: past its quota they are delivered, not kept.
    @Test func retainedMessagesAreBoundedPerPublisher() async throws {
        let hub = try await TestHub.start { $0.mqttSettings.maxRetainedPerClient = 2 }
        let device = try await hub.enroll("mq-ret")
        let codes = try await Self.connect(hub, device) { mqtt, _ in
            var codes: [ReasonCode] = []
            for name in ["events", "state", "telemetry"] {
                codes.append(
                    try await mqtt.publishAcknowledged(
                        topic: try TopicName("devices/mq-ret/\(name)"), payload: Array("{}".utf8), retain: true))
            }
            return codes
        }
        #expect(codes == [0, 0, 0])
        let operatorClient = try hub.operatorClient()
        let retained = try await Self.connect(hub, operatorClient, clientID: "reader") { mqtt, _ in
            try await mqtt.send(
                .subscribe(
                    packetID: 1,
                    subscriptions: [Subscription(filter: try TopicFilter("devices/+/+"), qos: .atMostOnce)],
                    properties: .init()))
            var topics: [String] = []
            try await mqtt.send(.pingreq)
            while let packet = try await mqtt.next() {
                if case .publish(let message) = packet { topics.append(message.topic.rawValue) }
                if case .pingresp = packet { break }
            }
            return topics.sorted()
        }
        #expect(retained == ["devices/mq-ret/events", "devices/mq-ret/state"])
        try await hub.stop()
    }

    /// An application credential (`bulwark operator add NAME --application`): reads the fleet and receives device
    /// messages over MQTT, may not publish telemetry, and cannot use the operator API at all.
    @Test func applicationsReadTheFleetButHaveNoOperatorRights() async throws {
        let hub = try await TestHub.start()
        let device = try await hub.enroll("app-d1")
        let key = P256.Signing.PrivateKey()
        let csr = try CertificateSigningRequest(
            version: .v1, subject: try DistinguishedName { CommonName("dashboard") },
            privateKey: Certificate.PrivateKey(key), attributes: CertificateSigningRequest.Attributes(),
            signatureAlgorithm: .ecdsaWithSHA256)
        let issued = try await hub.operatorRequest(
            "POST", "/v1/applications", json: ["name": "dashboard", "csr": try csr.serializeAsPEM().pemString])
        #expect(issued.status == 201)
        let pem = try #require(
            (try JSONSerialization.jsonObject(with: Data(issued.body)) as? [String: Any])?["certificate"] as? String)
        let application = try TestDevice(
            id: "dashboard", keyPEM: key.pemRepresentation, certificatePEM: pem, caPEM: hub.caPEM,
            directory: hub.directory)
        #expect(try await hub.securityEvents().contains { $0.kind == "application-added" })

        let received = try await Self.connect(hub, application, clientID: "dash-1") { mqtt, reason in
            #expect(reason == 0)
            try await mqtt.send(
                .subscribe(
                    packetID: 1, subscriptions: [Subscription(filter: try TopicFilter("devices/#"), qos: .atLeastOnce)],
                    properties: .init()))
            guard case .suback(1, [1], _) = try await mqtt.next() else { return "no SUBACK" }
            let telemetry = try await mqtt.publishAcknowledged(
                topic: try TopicName("devices/app-d1/telemetry"), payload: Array("{}".utf8))
            #expect(telemetry == 0x87, "an application is not a device")
            let sent = try await Self.connect(hub, device) { deviceMQTT, _ in
                try await deviceMQTT.publishAcknowledged(
                    topic: try TopicName("devices/app-d1/telemetry"), payload: Array(#"{"t":5}"#.utf8))
            }
            #expect(sent == 0)
            while let packet = try await mqtt.next() {
                if case .publish(let message) = packet { return String(decoding: message.payload, as: UTF8.self) }
            }
            return "nothing"
        }
        #expect(received == #"{"t":5}"#)
        // The operator API refuses the application's certificate at the handshake.
        await #expect(throws: (any Error).self) {
            _ = try await HTTPSClient.request(
                host: "127.0.0.1", port: hub.operatorPort, tls: try application.credentials.tlsConfiguration(),
                method: "GET", path: "/v1/devices", headers: [], body: [])
        }
        try await hub.stop()
    }

    /// paho-mqtt 2.x (PyPI) as a real peer: subscribe, QoS 0 and 1, retained, will, persistent sessions resumed,
    /// MQTT 3.1.1 and 5, TLS 1.3 with client certificates.
    @Test func pahoMQTTInteroperates() async throws {
        let hub = try await TestHub.start()
        try await Self.runPahoScript("mqtt-paho-check.py", hub, try await hub.enroll("paho-1"))
        try await hub.stop()
    }

    /// Runs `scripts/NAME` (a paho-mqtt check: HOST PORT CA DEVICE_ID DEVICE_CERT DEVICE_KEY OPERATOR_CERT
    /// OPERATOR_KEY) against `hub` as `device` and the hub's admin operator; it must exit 0 after its last line,
    /// which starts "all paho-mqtt".
    static func runPahoScript(_ name: String, _ hub: TestHub, _ device: TestDevice) async throws {
        guard let python = which("python3") else {
            Issue.record("python3 is required")
            return
        }
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("scripts/" + name).path
        let result = try await run(
            python,
            [
                script, "127.0.0.1", "\(hub.mqttPort)", device.caFile, device.id, device.certificateFile,
                device.keyFile, hub.directory + "/operators/admin.crt", hub.directory + "/operators/admin.key",
            ], timeout: 150)
        #expect(result.status == 0, "\(result.stdout)\n\(result.stderr)")
        let last = result.stdout.split(separator: "\n").last ?? ""
        #expect(
            last.hasPrefix("all paho-mqtt") && last.hasSuffix("checks passed"), "\(result.stdout)\n\(result.stderr)")
    }
}
