import Core
import Foundation
import Gateway
import HubClient
import MQTT
import Store
import Testing

@testable import Hub

/// `mqtt.payloads`: JSON, UTF-8 text or binary per topic and kind of identity, each limit attacked and shown to
/// refuse before anything is stored or forwarded; the MQTT 5 Payload Format Indicator checked; the configuration
/// read from the file and the environment.
@Suite(.serialized) struct MQTTPayloadPolicyTests {
    static let rules = PayloadRules([
        PayloadRule(
            topics: "devices/{device}/state/blob", identities: [.device],
            check: PayloadCheck(
                format: .binary, maxBytes: 100_000, contentTypes: ["application/octet-stream", "image/png"])),
        PayloadRule(
            topics: "devices/{device}/events/log", identities: [.device],
            check: PayloadCheck(format: .utf8, maxBytes: 1000)),
        PayloadRule(
            topics: "devices/{device}/commands/#", identities: [.operator, .application],
            check: PayloadCheck(format: .binary)),
    ])

    static func properties(contentType: String? = nil, text: Bool? = nil, counter: String? = nil) -> Properties {
        var properties = Properties()
        properties.contentType = contentType
        properties.payloadFormatIndicator = text.map { $0 ? 1 : 0 }
        if let counter { properties.userProperties = [("counter", counter)] }
        return properties
    }

    /// A hub with `rules`, its quarantine and burst limits raised so that a test's refusals are the rules' own.
    static func startWithRules() async throws -> TestHub {
        try await TestHub.start {
            $0.mqttSettings.payloads = Self.rules
            $0.gateway.quarantineInvalid = 100
            $0.gateway.quarantineReplay = 100
            $0.gateway.deviceBurst = 100
            $0.gateway.routeBurst = 100
        }
    }

    /// A device pattern with a wildcard before `{device}` reaches other devices' topics: refused at start-up, also
    /// when a combining mark after `/` would hide the level from a split by characters.
    @Test func aWildcardBeforeTheDeviceLevelIsRefusedByBytes() throws {
        for pattern in ["+/{device}/#", "+/\u{301}x/{device}/#", "a/+\u{301}/{device}/#"] {
            var settings = MQTTSettings()
            settings.devicePublish = [pattern]
            #expect(throws: HubStartupError.self, "\(pattern)") { try settings.validate() }
        }
        var fine = MQTTSettings()
        fine.devicePublish = ["a/\u{301}x/{device}/#"]
        try fine.validate()
    }

    @Test func eachTopicGetsItsFormatAndLimit() async throws {
        let hub = try await Self.startWithRules()
        let device = try await hub.enroll("pp-1")
        let blob = try TopicName("devices/pp-1/state/blob")
        let log = try TopicName("devices/pp-1/events/log")
        let telemetry = try TopicName("devices/pp-1/telemetry")
        let notText: [UInt8] = [0xFF, 0x00, 0x80, 0xC0, 0x80]
        let large = [UInt8](repeating: 0xA5, count: 80_000)  // over telemetry.maxBodyBytes (64 KiB), within the rule
        let codes = try await MQTTBrokerTests.connect(hub, device) { mqtt, reason in
            #expect(reason == 0)
            #expect(mqtt.connackProperties.maximumPacketSize ?? 0 >= 100_000, "the packet limit fits the rule")
            var codes: [String: ReasonCode] = [:]
            func publish(_ name: String, _ topic: TopicName, _ payload: [UInt8], _ properties: Properties = .init())
                async throws
            {
                codes[name] = try await mqtt.publishAcknowledged(topic: topic, payload: payload, properties: properties)
            }
            // Binary: any bytes within the rule's limit; a content type, when given, from the allow-list.
            try await publish("binary", blob, notText)
            try await publish("binary large", blob, large)
            try await publish("binary over the limit", blob, [UInt8](repeating: 1, count: 100_001))
            try await publish("binary png", blob, notText, Self.properties(contentType: "IMAGE/PNG; q=1"))
            try await publish("binary html", blob, notText, Self.properties(contentType: "text/html"))
            // Declared UTF-8 (Payload Format Indicator 1) is checked as UTF-8 whatever the rule.
            try await publish("declared text, not text", blob, notText, Self.properties(text: true))
            try await publish("declared text", blob, Array("ok".utf8), Self.properties(text: true))
            try await publish("declared bytes", blob, notText, Self.properties(text: false))
            // A counter on a binary topic comes from the user property, and a replay of it is refused.
            try await publish("counted", blob, notText, Self.properties(counter: "9"))
            try await publish("counter replayed", blob, notText, Self.properties(counter: "9"))
            // UTF-8 text: well-formed and within the limit.
            try await publish("text", log, Array("température 21 °C".utf8))
            try await publish("overlong", log, [0x41, 0xC0, 0x80])
            try await publish("surrogate", log, [0xED, 0xA0, 0x80])
            try await publish("truncated", log, [0xE2, 0x82])
            try await publish("text over the limit", log, [UInt8](repeating: 0x61, count: 1001))
            // No rule matches: strict JSON as before.
            try await publish("json", telemetry, Array(#"{"t":1}"#.utf8))
            try await publish("not json", telemetry, Array("hello".utf8))
            return codes
        }
        let expected: [String: ReasonCode] = [
            "binary": 0, "binary large": 0, "binary over the limit": 0x99, "binary png": 0, "binary html": 0x99,
            "declared text, not text": 0x99, "declared text": 0, "declared bytes": 0, "counted": 0,
            "counter replayed": 0x87, "text": 0, "overlong": 0x99, "surrogate": 0x99, "truncated": 0x99,
            "text over the limit": 0x99, "json": 0, "not json": 0x99,
        ]
        for (name, code) in expected { #expect(codes[name] == code, "\(name)") }
        // Exactly the accepted messages are stored, byte for byte.
        let stored = try await hub.server.store.telemetry(of: try DeviceID("pp-1"), limit: 100)
        #expect(stored.count == expected.values.filter { $0 == 0 }.count)
        #expect(stored.contains { $0.body == notText })
        #expect(stored.contains { $0.body == large })
        #expect(stored.contains { $0.body == Array("température 21 °C".utf8) })
        let events = try await hub.securityEvents()
        #expect(
            events.contains { $0.kind == "invalid-message" && $0.detail.contains("format: payload is not well-formed") }
        )
        #expect(events.contains { $0.kind == "invalid-message" && $0.detail.contains("content type text/html") })
        #expect(events.contains { $0.kind == "invalid-message" && $0.detail.contains("100001 bytes exceeds 100000") })
        try await hub.stop()
    }

    /// A connection reuses what it decided for the topic it published to last (the ACL's answer, the payload rule,
    /// the route and message type): each decision must follow the topic, so topics alternate here on one
    /// connection, and each answer is the topic's own, never the previous one's.
    @Test func eachPublishIsDecidedForItsOwnTopicOnOneConnection() async throws {
        let hub = try await Self.startWithRules()
        let device = try await hub.enroll("pp-4")
        _ = try await hub.enroll("pp-5")
        let blob = try TopicName("devices/pp-4/state/blob")
        let telemetry = try TopicName("devices/pp-4/telemetry")
        let typed = try TopicName("devices/pp-4/telemetry/env")
        let other = try TopicName("devices/pp-5/telemetry")
        let notText: [UInt8] = [0xFF, 0x00, 0x80]
        let json = Array(#"{"t":1}"#.utf8)
        let codes = try await MQTTBrokerTests.connect(hub, device) { mqtt, _ in
            var codes: [ReasonCode] = []
            for (topic, payload) in [
                (blob, notText), (telemetry, notText), (blob, notText), (telemetry, json), (other, json),
                (telemetry, json), (other, json), (other, json), (typed, json), (telemetry, json), (blob, json),
            ] {
                codes.append(try await mqtt.publishAcknowledged(topic: topic, payload: payload, properties: .init()))
            }
            return codes
        }
        // `telemetry/env` names a message type without a schema (0x99), the plain topic before and after it none.
        #expect(codes == [0, 0x99, 0, 0, 0x87, 0, 0x87, 0x87, 0x99, 0, 0])
        #expect(try await hub.server.store.telemetry(of: try DeviceID("pp-4"), limit: 100).count == 6)
        #expect(try await hub.server.store.telemetry(of: try DeviceID("pp-5"), limit: 100).isEmpty)
        try await hub.stop()
    }

    /// The reused decision is keyed by the topic's bytes: Swift's `==` on strings is canonical equivalence, under
    /// which `\u{212A}itchen` (KELVIN SIGN) equals `Kitchen`, while the ACL matches bytes. Published right after the
    /// allowed spelling, the other one must still be refused.
    @Test func aCanonicallyEquivalentTopicIsNotTakenForTheLastOne() async throws {
        let hub = try await TestHub.start {
            $0.mqttSettings.devicePublish = ["Kitchen/{device}/#", "devices/{device}/#"]
            $0.gateway.deviceBurst = 100
            $0.gateway.routeBurst = 100
        }
        let device = try await hub.enroll("pp-6")
        let allowed = try TopicName("Kitchen/pp-6/telemetry")
        let equivalent = try TopicName("\u{212A}itchen/pp-6/telemetry")
        #expect(allowed.rawValue == equivalent.rawValue, "Swift's == takes them for the same string")
        let codes = try await MQTTBrokerTests.connect(hub, device) { mqtt, _ in
            var codes: [ReasonCode] = []
            for topic in [allowed, equivalent, allowed] {
                codes.append(
                    try await mqtt.publishAcknowledged(
                        topic: topic, payload: Array(#"{"t":1}"#.utf8), properties: .init()))
            }
            return codes
        }
        #expect(codes == [0, 0x87, 0])
        // Under the default patterns too: a device id may hold `K`, so its own topic has an equivalent spelling
        // outside its tree (`devices/\u{212A}-7/...` is not `devices/K-7/...` to the ACL or to subscribers).
        let k = try await hub.enroll("K-7")
        let own = try TopicName("devices/K-7/telemetry")
        let spoofed = try TopicName("devices/\u{212A}-7/telemetry")
        let deviceCodes = try await MQTTBrokerTests.connect(hub, k) { mqtt, _ in
            var codes: [ReasonCode] = []
            for topic in [own, spoofed] {
                codes.append(
                    try await mqtt.publishAcknowledged(
                        topic: topic, payload: Array(#"{"t":1}"#.utf8), properties: .init()))
            }
            return codes
        }
        #expect(deviceCodes == [0, 0x87])
        try await hub.stop()
    }

    /// An operator's command on a binary topic reaches the device as sent; on a topic no rule matches it must
    /// still be a JSON object. A Payload Format Indicator that is neither 0 nor 1 is a protocol error.
    @Test func operatorsPublishBinaryCommandsWhereARuleSaysSo() async throws {
        let hub = try await TestHub.start { $0.mqttSettings.payloads = Self.rules }
        let device = try await hub.enroll("pp-2")
        let operatorClient = try hub.operatorClient()
        let firmware = [UInt8](repeating: 0xEE, count: 300) + [0x00, 0xFF]
        try await MQTTBrokerTests.connect(hub, device) { subscriber, _ in
            try await subscriber.send(
                .subscribe(
                    packetID: 1,
                    subscriptions: [
                        Subscription(filter: try TopicFilter("devices/pp-2/commands/#"), qos: .atLeastOnce)
                    ],
                    properties: .init()))
            guard case .suback(1, [1], _) = try await subscriber.next() else {
                Issue.record("no SUBACK")
                return
            }
            try await MQTTBrokerTests.connect(hub, operatorClient, clientID: "fleet") { mqtt, _ in
                #expect(
                    try await mqtt.publishAcknowledged(
                        topic: try TopicName("devices/pp-2/commands/firmware"), payload: firmware) == 0)
                // Declared text that is not text is refused even where any bytes are allowed.
                let refused = try await mqtt.publishAcknowledged(
                    topic: try TopicName("devices/pp-2/commands/x"), payload: [0xFF],
                    properties: Self.properties(text: true))
                #expect(refused == 0x99, "declared text that is not")
                #expect(
                    try await mqtt.publishAcknowledged(
                        topic: try TopicName("devices/pp-2/commands/after"), payload: [0x01]) == 0)
            }
            // The refused command never reached the device: the firmware, then the command after it.
            var delivered: [String] = []
            for _ in 1...2 {
                guard case .publish(let command) = try await subscriber.next() else {
                    Issue.record("no command")
                    return
                }
                delivered.append(command.topic.rawValue)
                if command.topic.rawValue.hasSuffix("firmware") { #expect(command.payload == firmware) }
            }
            #expect(delivered == ["devices/pp-2/commands/firmware", "devices/pp-2/commands/after"])
        }
        try await MQTTBrokerTests.connect(hub, device) { mqtt, _ in
            // The device's own publish to a commands topic is not open to it; a text flag of 2 is malformed.
            var bad = Properties()
            bad.payloadFormatIndicator = 2
            let reply = try await mqtt.publishAcknowledged(
                topic: try TopicName("devices/pp-2/telemetry"), payload: Array("{}".utf8), properties: bad)
            #expect(reply == 0x82)
        }
        try await hub.stop()
    }

    @Test func theConfigurationFileAndTheEnvironmentNameTheRules() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("payloads-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        func load(_ json: String, environment: [String: String] = [:]) async throws -> HubConfiguration {
            let file = directory.appendingPathComponent("hub.json").path
            try Data(json.utf8).write(to: URL(fileURLWithPath: file))
            return try await HubConfiguration.load(
                dataDirectory: directory.path, configFile: file, environment: environment)
        }
        // The issue's example, next to another mqtt setting that must still be read.
        let example = """
            {"mqtt": {"receiveMaximum": 7, "payloads": [
              {"topics": "devices/{device}/#", "identities": ["device"], "format": "json"},
              {"topics": "#", "identities": ["operator", "application"], "format": "binary", "maxBytes": 262144,
               "contentTypes": ["application/octet-stream"]}]}}
            """
        let config = try await load(example)
        #expect(config.mqttSettings.receiveMaximum == 7)
        #expect(
            config.mqttSettings.payloads
                == PayloadRules([
                    PayloadRule(topics: "devices/{device}/#", identities: [.device], check: .json),
                    PayloadRule(
                        topics: "#", identities: [.operator, .application],
                        check: PayloadCheck(
                            format: .binary, maxBytes: 262_144, contentTypes: ["application/octet-stream"])),
                ]))
        // The environment wins over the file.
        let fromEnvironment = try await load(
            example, environment: ["BULWARK_MQTT_PAYLOADS": #"[{"topics":"x/#","format":"utf8"}]"#])
        #expect(fromEnvironment.mqttSettings.payloads.rules.map(\.topics) == ["x/#"])
        #expect(fromEnvironment.mqttSettings.payloads.rules.first?.identities == Set(IdentityKind.allCases))
        // Mistakes are refused with the rule and the member named.
        let mistakes: [(String, String)] = [
            (##"[{"topics":"#","format":"xml"}]"##, "mqtt.payloads[0].format"),
            (##"[{"topics":"#","format":"json","maxbytes":5}]"##, "unknown member maxbytes"),
            (##"[{"topics":"#","format":"json","maxBytes":0}]"##, "maxBytes"),
            (##"[{"topics":"#","format":"json","maxBytes":true}]"##, "maxBytes"),
            (##"[{"topics":"a/#/b","format":"json"}]"##, "topics"),
            (##"[{"topics":"a/{dev}","format":"json"}]"##, "{device} must be a whole"),
            (##"[{"topics":"#","format":"json","identities":["monitor"]}]"##, "monitor is not"),
            (##"[{"topics":"#","format":"json","identities":[]}]"##, "identities"),
            (##"[{"topics":"#","format":"binary","contentTypes":["png"]}]"##, "contentTypes"),
            (##"{"topics":"#"}"##, "array of rules"),
        ]
        for (rules, expected) in mistakes {
            do {
                _ = try await load(#"{"mqtt": {"payloads": \#(rules)}}"#)
                Issue.record("accepted \(rules)")
            } catch let error as HubStartupError {
                #expect(error.description.contains(expected), "\(rules): \(error)")
            }
        }
    }
}
