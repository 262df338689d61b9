import MQTT

/// The broker's limits and topic access (`mqtt.*` keys; `BULWARK_MQTT_MAX_CONNECTIONS` and so on).
public struct MQTTSettings: Sendable, Equatable {
    /// Open connections in all, and from one source address (both counted from TCP accept, before TLS).
    public var maxConnections = 10_000
    public var maxConnectionsPerSource = 1_000
    /// The TLS handshake and CONNECT must complete within this time.
    public var connectDeadlineSeconds = 5.0
    /// QoS 1 messages kept for one session while its client is away or its receive window is full; more are dropped
    /// (and counted in the log) rather than growing without bound.
    public var maxQueuedMessages = 1_000
    /// Longest session a client may ask to keep (MQTT 5 Session Expiry Interval is capped to it; an MQTT 3.1.1
    /// `cleanSession = 0` session gets it).
    public var maxSessionExpirySeconds = 86_400
    /// Retained messages kept in all (one per topic); a new topic beyond it is not retained.
    public var maxRetainedMessages = 100_000
    /// Retained messages one publisher (a device, an operator's client) may hold, and their bytes in all.
    public var maxRetainedPerClient = 100
    public var maxRetainedBytes = 64 * 1024 * 1024
    /// MQTT 5 Receive Maximum the hub announces (QoS 1 publishes a client may have unacknowledged).
    public var receiveMaximum = 64
    /// MQTT 5 Topic Alias Maximum the hub announces (aliases a client may use towards the hub).
    public var topicAliasMaximum = 16
    /// The longest keep-alive the hub allows. A client asking for none (0) or a longer one gets this instead: MQTT 5
    /// announces it as Server Keep Alive in CONNACK (§3.2.2.3.14, which the client must then use), and an MQTT
    /// 3.1.1 client is held to it too (§3.1.2.10 lets the server close an inactive client whatever it asked). No
    /// packet within 1.5 × the keep-alive closes the connection, so a silent connection cannot be held for ever.
    /// 0 lets each client choose (and 0 from a client then means never).
    public var maxKeepAliveSeconds = 1200
    /// Subscriptions one session may hold, and filters one SUBSCRIBE may carry: beyond them a filter is refused
    /// (MQTT 5 SUBACK 0x97 Quota exceeded and 0x80; MQTT 3.1.1 0x80), so one client cannot grow the hub's memory
    /// and every other client's publish cost without bound.
    public var maxSubscriptionsPerSession = 100
    /// Sessions one identity may hold at once (a device has one whatever its client id; an operator or an
    /// application one per client id): beyond it CONNECT gets 0x97 (MQTT 3.1.1: 0x03).
    public var maxSessionsPerIdentity = 16
    public var maxFiltersPerSubscribe = 32
    /// Topic patterns; `{device}` is the certificate's device id.
    public var devicePublish = TopicACL.devices.publish
    public var deviceSubscribe = TopicACL.devices.subscribe
    /// Operators (and the applications they run with operator certificates) read the fleet and send commands.
    public var fleetPublish = TopicACL.fleet.publish
    public var fleetSubscribe = TopicACL.fleet.subscribe
    /// What payloads must be, per topic and kind of identity (`mqtt.payloads`; first match wins, no match: strict
    /// JSON). Empty: JSON everywhere, devices' messages against their schema.
    public var payloads = PayloadRules()

    public init() {}

    /// QoS 2 packet ids one session may hold awaiting their PUBREL (a compliant client holds at most its Receive
    /// Maximum per connection; this bounds one that never sends PUBREL, over any number of connections).
    var maxQoS2HeldPerSession: Int { max(1024, 2 * receiveMaximum) }

    /// The largest payload any rule allows beyond `maxBodyBytes` (the listener's packet limit must fit it).
    func largestPayload(maxBodyBytes: Int) -> Int {
        payloads.rules.reduce(maxBodyBytes) { max($0, $1.check.maxBytes ?? 0) }
    }

    var deviceACL: TopicACL { TopicACL(publish: devicePublish, subscribe: deviceSubscribe) }
    var fleetACL: TopicACL { TopicACL(publish: fleetPublish, subscribe: fleetSubscribe) }

    func validate() throws {
        guard (1...1_000_000).contains(maxConnections), (1...1_000_000).contains(maxConnectionsPerSource) else {
            throw HubStartupError("mqtt.maxConnections and mqtt.maxConnectionsPerSource must be 1-1000000")
        }
        guard (0.1...60).contains(connectDeadlineSeconds) else {
            throw HubStartupError("mqtt.connectDeadlineSeconds must be 0.1-60")
        }
        guard (0...1_000_000).contains(maxQueuedMessages), (0...(365 * 86_400)).contains(maxSessionExpirySeconds),
            (0...10_000_000).contains(maxRetainedMessages), (0...1_000_000).contains(maxRetainedPerClient),
            (0...(16 << 30)).contains(maxRetainedBytes)
        else {
            throw HubStartupError(
                "mqtt.maxQueuedMessages must be 0-1000000, mqtt.maxSessionExpirySeconds 0-31536000 and "
                    + "mqtt.maxRetainedMessages 0-10000000")
        }
        guard (1...100_000).contains(maxSessionsPerIdentity) else {
            throw HubStartupError("mqtt.maxSessionsPerIdentity must be 1-100000")
        }
        guard (1...100_000).contains(maxSubscriptionsPerSession), (1...10_000).contains(maxFiltersPerSubscribe) else {
            throw HubStartupError(
                "mqtt.maxSubscriptionsPerSession must be 1-100000 and mqtt.maxFiltersPerSubscribe 1-10000")
        }
        guard (1...65_535).contains(receiveMaximum), (0...65_535).contains(topicAliasMaximum) else {
            throw HubStartupError("mqtt.receiveMaximum must be 1-65535 and mqtt.topicAliasMaximum 0-65535")
        }
        guard (0...65_535).contains(maxKeepAliveSeconds) else {
            throw HubStartupError("mqtt.maxKeepAliveSeconds must be 0-65535")
        }
        // A device pattern without {device}, or with a wildcard before it, would reach other devices' topics.
        for pattern in devicePublish + deviceSubscribe {
            // By bytes, as topics are split (a combining mark after `/` or a wildcard hides neither).
            let levels = TopicName.levels(of: pattern)
            guard let index = levels.firstIndex(of: "{device}"),
                !levels[..<index].contains(where: {
                    $0.utf8.contains(UInt8(ascii: "+")) || $0.utf8.contains(UInt8(ascii: "#"))
                })
            else {
                throw HubStartupError(
                    "mqtt.devicePublish/deviceSubscribe: \(pattern) must contain {device} before any wildcard")
            }
        }
        do throws(MQTTError) {
            try deviceACL.validate()
            try fleetACL.validate()
            for rule in payloads.rules {
                try rule.validate()
                if let maxBytes = rule.check.maxBytes, !(1...(16 << 20)).contains(maxBytes) {
                    throw MQTTError(.protocolError, "mqtt.payloads maxBytes must be 1-16777216")
                }
            }
        } catch {
            throw HubStartupError("mqtt topic patterns: \(error.detail)")
        }
    }
}
