/// The retained messages (MQTT 5.0 §3.3.1.3, MQTT 3.1.1 §3.3.1.3), one per topic, as a value, within three bounds:
/// in all, per publisher and in bytes (payload + topic), so one client cannot fill the server's memory with retained
/// messages on topics of its own. Over a bound a message is still delivered, just not retained.
public struct RetainedMessages: Sendable {
    public let maxMessages: Int
    public let maxPerOwner: Int
    public let maxBytes: Int
    /// By topic, compared by bytes (`TopicKey`): topics that differ only in Unicode normalization are two topics.
    private var messages: [TopicKey: (message: OutboundMessage, owner: String)] = [:]
    /// The topics held, for `matching`: a new subscription looks only at the topics its filter can reach.
    private var topics = TopicTree()
    private var perOwner: [String: Int] = [:]
    public private(set) var bytes = 0
    /// No message held expires before this (nil: none expires): `removeExpired` looks at nothing until then.
    private var earliestExpiry: ContinuousClock.Instant?

    public init(maxMessages: Int, maxPerOwner: Int, maxBytes: Int) {
        self.maxMessages = maxMessages
        self.maxPerOwner = maxPerOwner
        self.maxBytes = maxBytes
    }

    public var count: Int { messages.count }

    /// When the first retained message expires (nil: none has a Message Expiry Interval).
    public var nextExpiry: ContinuousClock.Instant? { earliestExpiry }

    /// Sets the topic's retained message, or clears it (an empty payload). False when a bound kept it from being
    /// retained (the topic's previous one is gone all the same: it was replaced).
    @discardableResult
    public mutating func retain(_ message: OutboundMessage, owner: String) -> Bool {
        let topic = TopicKey(message.topic.rawValue)
        remove(topic)
        guard !message.payload.isEmpty else { return true }
        let size = Self.size(of: message)
        guard messages.count < maxMessages, perOwner[owner, default: 0] < maxPerOwner, bytes + size <= maxBytes else {
            return false
        }
        messages[topic] = (message, owner)
        topics.insert(message.topic)
        if let expiresAt = message.expiresAt { earliestExpiry = min(earliestExpiry ?? expiresAt, expiresAt) }
        perOwner[owner, default: 0] += 1
        bytes += size
        return true
    }

    /// The retained messages a new subscription to `filter` receives (those not expired at `now`).
    public func matching(_ filter: TopicFilter, now: ContinuousClock.Instant) -> [OutboundMessage] {
        topics.topics(matching: filter).compactMap { messages[TopicKey($0)]?.message }.filter { !$0.expired(at: now) }
    }

    /// Drops the messages whose Message Expiry Interval has passed (§3.3.2.3.3): they are no longer retained.
    /// Returns their topics and owners. Looks at the messages only once the earliest expiry has come, so calling it
    /// on every connection costs nothing while none is due.
    @discardableResult
    public mutating func removeExpired(now: ContinuousClock.Instant) -> [(topic: String, owner: String)] {
        guard let earliest = earliestExpiry, earliest <= now else { return [] }
        var removed: [(topic: String, owner: String)] = []
        for (topic, entry) in messages where entry.message.expired(at: now) {
            remove(topic)
            removed.append((topic.text, entry.owner))
        }
        earliestExpiry = messages.values.lazy.compactMap(\.message.expiresAt).min()
        return removed
    }

    private mutating func remove(_ topic: TopicKey) {
        guard let previous = messages.removeValue(forKey: topic) else { return }
        topics.remove(previous.message.topic)
        perOwner[previous.owner, default: 1] -= 1
        if perOwner[previous.owner] == 0 { perOwner[previous.owner] = nil }
        // What was charged for the message held.
        bytes -= Self.size(of: previous.message)
    }

    /// What a message is charged against `maxBytes`: payload, topic, and what each topic level costs in the tree of
    /// topics (a node and its table: a topic of 60,000 empty levels is not 60 KB but some megabytes).
    public static func size(of message: OutboundMessage) -> Int {
        message.payload.count + message.topic.rawValue.utf8.count + levelCost * message.topic.levelCount
    }

    /// Bytes charged per topic level (a tree node with its one-entry table of children, measured order of
    /// magnitude).
    public static let levelCost = 128
}
