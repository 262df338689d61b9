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
    public func sessions(matching topic: TopicName) -> Set<String> {
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

    /// Nodes in use, the root included (for tests: a removed filter leaves none behind).
    public var nodeCount: Int { tree.nodeCount }
}
