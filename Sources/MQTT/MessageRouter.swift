/// What a subscription asked for (MQTT 5.0 §3.8.3.1; 3.1.1 has only the QoS).
public struct SubscriptionOptions: Sendable, Equatable {
    public var qos: QoS
    public var noLocal = false
    public var retainAsPublished = false
    /// MQTT 5.0 §3.8.2.1.2: echoed in every PUBLISH this subscription matches.
    public var identifier: Int?
    /// Set for a shared subscription (`$share/GROUP/FILTER`): the filter that matches, and the group.
    public var share: SharedFilter?

    public init(
        qos: QoS, noLocal: Bool = false, retainAsPublished: Bool = false, identifier: Int? = nil,
        share: SharedFilter? = nil
    ) {
        self.qos = qos
        self.noLocal = noLocal
        self.retainAsPublished = retainAsPublished
        self.identifier = identifier
        self.share = share
    }

    /// Whether a message this subscription matched is replayed to its session, kept by the store, after a restart
    /// or from the other nodes' log: QoS 1 or 2 (a QoS 0 message is never queued for a client that is away) and not
    /// shared (replayed to a group, each member would get a copy).
    public var isReplayable: Bool { qos != .atMostOnce && share == nil }
}

/// Who receives a PUBLISH, as a value: the broker's sessions are read, nothing is sent. The broker applies the
/// deliveries it returns (queues, packet ids, sockets).
///
/// - A session whose subscriptions match gets one copy (MQTT 5.0 §3.3.4 [MQTT-3.3.4-2]: at the highest QoS of the
///   matching subscriptions, capped by the message's), carrying every matching Subscription Identifier (§3.3.4
///   [MQTT-3.3.4-3]); MQTT 3.1.1 clients are served the same way (§3.3.5: one copy at the maximum QoS).
/// - No Local (§3.8.3.1): a subscription does not match its own session's publishes.
/// - RETAIN is cleared on a delivery to an established subscription unless one matching subscription asked for
///   Retain As Published (§3.3.1.3).
/// - Each shared subscription (`$share/GROUP/FILTER`, §4.8.2) that matches gives one copy to one member, in turn
///   (round-robin in a fixed order of session keys, the next connected member from there; with none connected, the
///   next member, whose queue keeps it).
public struct MessageRouter: Sendable {
    /// One subscriber's copy.
    public struct Delivery: Sendable, Equatable {
        public let key: String
        public let qos: QoS
        public let retain: Bool
        public let identifiers: [Int]
        /// The shared subscription (its whole `$share/…` filter) this copy went to one member of.
        public let sharedGroup: TopicFilter?

        public init(key: String, qos: QoS, retain: Bool, identifiers: [Int], sharedGroup: TopicFilter? = nil) {
            self.key = key
            self.qos = qos
            self.retain = retain
            self.identifiers = identifiers
            self.sharedGroup = sharedGroup
        }
    }

    /// A session as the router sees it: its key, its subscriptions, whether a connection is attached and ready.
    public struct Subscriber {
        public let key: String
        public let filters: [TopicFilter: SubscriptionOptions]
        public let connected: Bool

        public init(key: String, filters: [TopicFilter: SubscriptionOptions], connected: Bool) {
            self.key = key
            self.filters = filters
            self.connected = connected
        }
    }

    /// Per shared subscription, the position of the member that had the last message.
    public private(set) var turns: [TopicFilter: Int] = [:]

    public init() {}

    /// The deliveries of one message published by the session `publisher` (nil: the hub itself). With several hub
    /// nodes, a shared subscription gets it here only when `placement` gave the group to `node` or left it out
    /// (`SharedPlacement`).
    public mutating func route(
        topic: TopicName, qos: QoS, retain: Bool, publisher: String?, subscribers: some Sequence<Subscriber>,
        placement: [TopicFilter: String]? = nil, node: String? = nil
    ) -> [Delivery] {
        route(
            topic: TopicName.Split(topic), qos: qos, retain: retain, publisher: publisher, subscribers: subscribers,
            placement: placement, node: node)
    }

    /// `route` of a topic already split (the broker splits it once for the index and the router).
    public mutating func route(
        topic split: TopicName.Split, qos: QoS, retain: Bool, publisher: String?,
        subscribers: some Sequence<Subscriber>, placement: [TopicFilter: String]? = nil, node: String? = nil
    ) -> [Delivery] {
        var deliveries: [Delivery] = []
        var groups: [TopicFilter: [(key: String, options: SubscriptionOptions, connected: Bool)]] = [:]
        for subscriber in subscribers {
            var granted: QoS?
            var retainAsPublished = false
            var identifiers: [Int] = []
            for (filter, options) in subscriber.filters {
                if let share = options.share {
                    if share.filter.matches(split) {
                        groups[filter, default: []].append((subscriber.key, options, subscriber.connected))
                    }
                    continue
                }
                guard filter.matches(split), !(options.noLocal && subscriber.key == publisher) else { continue }
                granted = max(granted ?? .atMostOnce, options.qos)
                retainAsPublished = retainAsPublished || options.retainAsPublished
                if let identifier = options.identifier { identifiers.append(identifier) }
            }
            guard let granted else { continue }
            deliveries.append(
                Delivery(
                    key: subscriber.key, qos: min(granted, qos), retain: retainAsPublished && retain,
                    identifiers: identifiers.sorted()))
        }
        for (group, members) in groups where SharedPlacement.delivers(group, placement: placement, node: node) {
            guard let chosen = chooseMember(of: group, members) else { continue }
            deliveries.append(
                Delivery(
                    key: chosen.key, qos: min(chosen.options.qos, qos),
                    retain: chosen.options.retainAsPublished && retain,
                    identifiers: chosen.options.identifier.map { [$0] } ?? [], sharedGroup: group))
        }
        return deliveries
    }

    /// The next member of a shared subscription in turn (members in a fixed order, by session key), the first
    /// connected one from there; when none is connected, the next one.
    public mutating func chooseMember(
        of group: TopicFilter, _ members: [(key: String, options: SubscriptionOptions, connected: Bool)]
    ) -> (key: String, options: SubscriptionOptions)? {
        guard !members.isEmpty else { return nil }
        let ordered = members.sorted { $0.key < $1.key }
        let start = (turns[group] ?? -1) + 1
        for offset in 0..<ordered.count {
            let index = (start + offset) % ordered.count
            if ordered[index].connected {
                turns[group] = index
                return (ordered[index].key, ordered[index].options)
            }
        }
        turns[group] = start % ordered.count
        return (ordered[start % ordered.count].key, ordered[start % ordered.count].options)
    }

    /// Forgets a shared subscription's turn (no session holds it any more).
    public mutating func forget(_ group: TopicFilter) { turns[group] = nil }
}
