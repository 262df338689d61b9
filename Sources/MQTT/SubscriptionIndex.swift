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
    private var tree = LevelTree<SmallMap<String, Held>>(empty: SmallMap())

    /// A session's filters that end at a node: how many, and how many of them are replayable (a kept session's,
    /// granted QoS 1 or 2 and not shared: what a hub node replays into a stored session from its log). The size of
    /// one `Int`.
    struct Held: Sendable {
        var filters: Int32 = 0
        var replayable: Int32 = 0
    }

    /// Whether a filter with these options, of a session kept (`kept`) or not, is replayable (`Held.replayable`).
    static func replayable(_ options: SubscriptionOptions, kept: Bool) -> Bool {
        kept && options.isReplayable
    }
    /// Filters held, counted once per session and filter.
    public private(set) var count = 0
    /// Of those, the replayable ones.
    public private(set) var replayableCount = 0

    public init() {}

    /// The levels a subscription is matched by: a shared subscription's inner filter, else the filter.
    static func matchingLevels(_ filter: TopicFilter, _ options: SubscriptionOptions) -> [Substring] {
        options.share?.filter.levels ?? filter.levels
    }

    /// Records that session `key` holds `filter` (once per call: `remove` undoes one `insert` with the same
    /// arguments). `kept`: the session outlives its connection (session expiry above 0).
    public mutating func insert(_ filter: TopicFilter, options: SubscriptionOptions, key: String, kept: Bool = false) {
        let replayable: Int32 = Self.replayable(options, kept: kept) ? 1 : 0
        tree.update(tree.make(Self.matchingLevels(filter, options))) {
            $0[key, default: Held()].filters += 1
            $0[key, default: Held()].replayable += replayable
        }
        count += 1
        replayableCount += Int(replayable)
    }

    /// Undoes one `insert` of the same filter and options for `key`; nodes left empty are released. Removing what
    /// was never inserted changes nothing.
    public mutating func remove(_ filter: TopicFilter, options: SubscriptionOptions, key: String, kept: Bool = false) {
        guard let found = tree.find(Self.matchingLevels(filter, options)), let held = tree[found.node].value[key]
        else { return }
        let replayable: Int32 = Self.replayable(options, kept: kept) && held.replayable > 0 ? 1 : 0
        let left = Held(filters: held.filters - 1, replayable: held.replayable - replayable)
        tree.update(found.node) { $0[key] = left.filters > 0 ? left : nil }
        count -= 1
        replayableCount -= Int(replayable)
        tree.prune(found) { $0.isEmpty }
    }

    /// The sessions holding at least one filter that matches `topic`.
    public func sessions(matching topic: TopicName) -> Set<String> {
        var found = Set<String>()
        walk(matching: topic) { sessions in
            for (key, _) in sessions { found.insert(key) }
            return false
        }
        return found
    }

    /// Whether `sessions(matching:)` would find any session, without collecting them: the broker asks for every
    /// message published while anyone subscribes, and most (a device's telemetry) match no one.
    public func hasSession(matching topic: TopicName) -> Bool { walk(matching: topic) { _ in true } }

    /// Whether a session holds a replayable filter (granted QoS 1 or 2, not shared) that matches `topic`: a single
    /// hub node logs a device's message only for those (its log replays into no shared subscription).
    public func hasReplayableSession(matching topic: TopicName) -> Bool {
        walk(matching: topic) { sessions in sessions.contains { $0.value.replayable > 0 } }
    }

    /// Walks the nodes whose filters match `topic`, handing `visit` each one's sessions (never empty) until it
    /// returns true; true when it did. Depth first, one frame per level of the path taken, with a stack of its own
    /// rather than recursion (a topic may have 65,535 levels): a frame's index is its depth, so the stack never holds
    /// more than the topic's levels and one. The levels are read from the topic's bytes as the walk reaches them
    /// (no split), and the stack is a temporary allocation (on the machine stack for a short topic). §4.7.2: no
    /// wildcard at the first level matches a `$` topic (the same test as `TopicFilter.matches`).
    private func walk(matching topic: TopicName, _ visit: (SmallMap<String, Held>) -> Bool) -> Bool {
        let text = topic.rawValue
        let utf8 = text.utf8
        let levels = topic.levelCount
        let dollar = topic.isDollarTopic
        typealias Frame = (node: Int, start: String.Index, next: String.Index, tried: Int)
        return withUnsafeTemporaryAllocation(of: Frame.self, capacity: levels + 1) { stack in
            stack[0] = (0, utf8.startIndex, utf8.startIndex, 0)
            var depth = 0
            while depth >= 0 {
                let wildcards = depth > 0 || !dollar
                let frame = stack[depth]
                let current = tree[frame.node]
                if frame.tried == 0 {
                    // Entered: a `#` here matches the rest (and this level's parent, `a/#` matching `a`).
                    if wildcards, let hash = current.children[TopicKey("#")], !tree[hash].value.isEmpty,
                        visit(tree[hash].value)
                    {
                        return true
                    }
                    guard depth < levels else {
                        if !current.value.isEmpty, visit(current.value) { return true }
                        depth -= 1
                        continue
                    }
                    let end = utf8[frame.start...].firstIndex(of: UInt8(ascii: "/")) ?? utf8.endIndex
                    let next = end == utf8.endIndex ? end : utf8.index(after: end)
                    stack[depth].next = next
                    stack[depth].tried = 1
                    if let exact = current.children[TopicKey(text[frame.start..<end])] {
                        depth += 1
                        stack[depth] = (exact, next, next, 0)
                        continue
                    }
                }
                if stack[depth].tried == 1 {
                    stack[depth].tried = 2
                    if wildcards, let plus = current.children[TopicKey("+")] {
                        let next = stack[depth].next
                        depth += 1
                        stack[depth] = (plus, next, next, 0)
                        continue
                    }
                }
                depth -= 1
            }
            return false
        }
    }

    /// Nodes in use, the root included (for tests: a removed filter leaves none behind).
    public var nodeCount: Int { tree.nodeCount }
}
