/// Which sessions hold a subscription that matches a topic, found without looking at every session: a tree with one
/// node per topic level of the filters held (`+` and `#` are children like any level), each node holding the
/// sessions whose filter ends there. A publish walks only the branches its topic can reach, so routing one message
/// costs the same with 10 sessions as with 10,000 (a fleet whose every device subscribes to its own commands).
///
/// Matching is MQTT 3.1.1 §4.7.1 / MQTT 5.0 §4.7.1: `+` matches exactly one level, `#` the parent level and any
/// number below it (`a/#` matches `a`); a topic whose first level starts with `$` is not matched by a filter whose
/// first level is a wildcard (§4.7.2). A shared subscription (`$share/GROUP/FILTER`, §4.8.2) is indexed under
/// its FILTER. A pure value: the broker applies what it returns.
public struct SubscriptionIndex: Sendable {
    /// At each node, the sessions whose filter ends there, each with how many of its filters do (a session may hold
    /// `a/b` and `$share/g/a/b`); one session inline (a device's own commands filter has one).
    private var tree = LevelTree<SmallMap<String, Int>>(empty: SmallMap())
    /// Filters held, counted once per session and filter.
    public private(set) var count = 0

    public init() {}

    /// The levels a subscription is matched by: a shared subscription's inner filter, else the filter.
    static func matchingLevels(_ filter: TopicFilter, _ options: SubscriptionOptions) -> [Substring] {
        options.share?.filter.levels ?? filter.levels
    }

    /// Records that session `key` holds `filter` (once per call: `remove` undoes one `insert`).
    public mutating func insert(_ filter: TopicFilter, options: SubscriptionOptions, key: String) {
        tree.update(tree.make(Self.matchingLevels(filter, options))) { $0[key, default: 0] += 1 }
        count += 1
    }

    /// Undoes one `insert` of the same filter and options for `key`; nodes left empty are released. Removing what
    /// was never inserted changes nothing.
    public mutating func remove(_ filter: TopicFilter, options: SubscriptionOptions, key: String) {
        guard let found = tree.find(Self.matchingLevels(filter, options)), let held = tree[found.node].value[key]
        else { return }
        tree.update(found.node) { $0[key] = held > 1 ? held - 1 : nil }
        count -= 1
        tree.prune(found) { $0.isEmpty }
    }

    /// The sessions holding at least one filter that matches `topic`. Walked with a stack of its own, not by
    /// recursion: a filter may have 65,535 levels.
    public func sessions(matching topic: TopicName) -> Set<String> { sessions(matching: TopicName.Split(topic)) }

    /// `sessions(matching:)` of a topic already split.
    public func sessions(matching topic: TopicName.Split) -> Set<String> {
        var found = Set<String>()
        // §4.7.2: no wildcard at the first level matches a `$` topic (the same test as `TopicFilter.matches`).
        let dollar = topic.isDollarTopic
        let levels = topic.levels
        var pending: [(node: Int, depth: Int)] = [(0, 0)]
        while let (node, depth) = pending.popLast() {
            let wildcards = depth > 0 || !dollar
            let current = tree[node]
            if wildcards, let hash = current.children[TopicKey("#")] {
                for (key, _) in tree[hash].value { found.insert(key) }
            }
            guard depth < levels.count else {
                for (key, _) in current.value { found.insert(key) }
                continue
            }
            if let exact = current.children[TopicKey(levels[depth])] { pending.append((exact, depth + 1)) }
            if wildcards, let plus = current.children[TopicKey("+")] { pending.append((plus, depth + 1)) }
        }
        return found
    }

    /// Whether `sessions(matching:)` would find any session, without splitting the topic or collecting the
    /// sessions: the broker asks for every message published while anyone subscribes, and most (a device's
    /// telemetry) match no one. The levels are read from the topic's bytes as the walk reaches them, and the walk's
    /// stack is a temporary allocation (on the stack for a short topic). The same walk and §4.7.2 rule as
    /// `sessions(matching:)`.
    public func hasSession(matching topic: TopicName) -> Bool {
        let text = topic.rawValue
        let utf8 = text.utf8
        let levels = topic.levelCount
        let dollar = topic.isDollarTopic
        // Each step takes one entry and adds at most two a level deeper: at most one waiting entry per level, and
        // two at the deepest.
        let capacity = levels + 2
        return withUnsafeTemporaryAllocation(of: (node: Int, depth: Int, start: String.Index).self, capacity: capacity)
        {
            stack in
            stack[0] = (0, 0, utf8.startIndex)
            var count = 1
            while count > 0 {
                count -= 1
                let (node, depth, start) = stack[count]
                let wildcards = depth > 0 || !dollar
                let current = tree[node]
                if wildcards, let hash = current.children[TopicKey("#")], !tree[hash].value.isEmpty { return true }
                guard depth < levels else {
                    if !current.value.isEmpty { return true }
                    continue
                }
                let end = utf8[start...].firstIndex(of: UInt8(ascii: "/")) ?? utf8.endIndex
                let next = end == utf8.endIndex ? end : utf8.index(after: end)
                precondition(count + 2 <= capacity)
                if let exact = current.children[TopicKey(text[start..<end])] {
                    stack[count] = (exact, depth + 1, next)
                    count += 1
                }
                if wildcards, let plus = current.children[TopicKey("+")] {
                    stack[count] = (plus, depth + 1, next)
                    count += 1
                }
            }
            return false
        }
    }

    /// Nodes in use, the root included (for tests: a removed filter leaves none behind).
    public var nodeCount: Int { tree.nodeCount }
}
