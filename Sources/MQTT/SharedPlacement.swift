/// Shared subscriptions across hub nodes (MQTT 5.0 §4.8.2: a message sent to a shared subscription goes to one
/// session of the group): a pure value. Every node hands every message to every other node, so without a choice
/// each node would give it to one of its own members, and a group with members on two nodes would get it twice.
///
/// The node that admits a message places it: for each shared subscription (the whole `$share/GROUP/FILTER`) whose
/// filter matches the topic and that some node has members of, it chooses one node, in turn among the nodes that
/// have a connected member (by node id), or, when none has, among all that have members. The choice travels with
/// the message. A node gives the message to a member of a group only when the group was placed on it, or was not
/// placed at all (the origin did not know of the group yet: then each node that has members delivers, as before).
///
/// What a node knows of the others' groups (`Presence`) is what they last said (a few hundred milliseconds old):
/// a group that gains its first member on a node, or loses its last, may get a message twice, or lose one, while
/// the news travels.
public struct SharedPlacement: Sendable {
    /// A node's shared subscriptions: each group (`$share/GROUP/FILTER`) and whether one of its members there is
    /// connected.
    public typealias Presence = [TopicFilter: Bool]

    /// This node's id (the placement names nodes by it).
    public let node: String
    /// The other nodes' groups, as they last said.
    public private(set) var others: [String: Presence] = [:]
    /// Every group some node has, with its inner filter, for matching.
    private var known: [TopicFilter: TopicFilter] = [:]
    private var own: Presence = [:]
    private var turns = MessageRouter()

    public init(node: String) {
        self.node = node
    }

    /// What this node has now (the broker's sessions).
    public mutating func setOwn(_ presence: Presence) {
        own = presence
        reindex()
    }

    /// The other nodes' groups; a node absent from `nodes` has none (stopped, or silent too long).
    public mutating func setOthers(_ nodes: [String: Presence]) {
        others = nodes.filter { $0.key != node && !$0.value.isEmpty }
        reindex()
    }

    private mutating func reindex() {
        known = [:]
        for presence in [own] + Array(others.values) {
            for group in presence.keys where known[group] == nil {
                if let share = try? SharedFilter.parse(group) { known[group] = share.filter }
            }
        }
        for group in turns.turns.keys where known[group] == nil { turns.forget(group) }
    }

    /// Whether any node has a shared subscription (when none has, no message needs placing).
    public var isEmpty: Bool { known.isEmpty }

    /// For each group matching `topic`, the node whose members get the message (empty when no group matches).
    public mutating func place(_ topic: TopicName) -> [TopicFilter: String] {
        guard !known.isEmpty else { return [:] }
        var placed: [TopicFilter: String] = [:]
        let split = TopicName.Split(topic)
        for (group, filter) in known where filter.matches(split) {
            var candidates: [(key: String, options: SubscriptionOptions, connected: Bool)] = []
            if let connected = own[group] {
                candidates.append((node, SubscriptionOptions(qos: .atMostOnce), connected))
            }
            for (other, presence) in others {
                if let connected = presence[group] {
                    candidates.append((other, SubscriptionOptions(qos: .atMostOnce), connected))
                }
            }
            if let chosen = turns.chooseMember(of: group, candidates) { placed[group] = chosen.key }
        }
        return placed
    }

    /// Whether this node gives a message placed as `placement` to a member of `group`.
    public static func delivers(_ group: TopicFilter, placement: [TopicFilter: String]?, node: String?) -> Bool {
        guard let owner = placement?[group] else { return true }
        return owner == node
    }
}
