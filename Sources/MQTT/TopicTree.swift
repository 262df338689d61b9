/// The topics held (retained messages), as a tree of topic levels, so that the topics a filter matches are found by
/// walking only the branches the filter can reach: a new subscription to `devices/d1/commands/#` looks at that
/// device's topics, not at every retained message of the fleet. Matching is MQTT 3.1.1 / 5.0 §4.7.1 (`+` one level,
/// `#` the parent level and everything below) with §4.7.2's rule: a filter starting with a wildcard matches no topic
/// whose first level starts with `$`. A pure value.
public struct TopicTree: Sendable {
    /// At each node, the topic that ends there, when one is held.
    private var tree = LevelTree<String?>(empty: nil)
    public private(set) var count = 0

    public init() {}

    /// Holds `topic` (once, however often it is inserted).
    public mutating func insert(_ topic: TopicName) {
        let node = tree.make(topic.levels)
        if tree[node].value == nil { count += 1 }
        tree.update(node) { $0 = topic.rawValue }
    }

    /// Lets go of `topic` and of the nodes only it used. Removing a topic not held changes nothing.
    public mutating func remove(_ topic: TopicName) {
        guard let found = tree.find(topic.levels), tree[found.node].value != nil else { return }
        tree.update(found.node) { $0 = nil }
        count -= 1
        tree.prune(found) { $0 == nil }
    }

    /// The topics held that `filter` matches. Walked with a stack of its own, not by recursion: a topic may have
    /// 65,535 levels.
    public func topics(matching filter: TopicFilter) -> [String] {
        var found: [String] = []
        let levels = filter.levels
        var pending: [(node: Int, depth: Int)] = [(0, 0)]
        while let (node, depth) = pending.popLast() {
            guard depth < levels.count else {
                if let topic = tree[node].value { found.append(topic) }
                continue
            }
            // §4.7.2: a wildcard at the first level matches no `$` topic.
            let first = depth == 0
            switch levels[depth] {
            case "#":
                // The parent level too (`a/#` matches `a`; the root holds no topic), then everything below.
                if let topic = tree[node].value { found.append(topic) }
                var below = tree[node].children.compactMap {
                    first && $0.key.text.utf8.first == UInt8(ascii: "$") ? nil : $0.value
                }
                while let next = below.popLast() {
                    if let topic = tree[next].value { found.append(topic) }
                    for (_, child) in tree[next].children { below.append(child) }
                }
            case "+":
                for (name, child) in tree[node].children where !(first && name.text.utf8.first == UInt8(ascii: "$")) {
                    pending.append((child, depth + 1))
                }
            case let level:
                if let child = tree[node].children[TopicKey(level)] { pending.append((child, depth + 1)) }
            }
        }
        return found
    }

    /// Nodes in use, the root included.
    public var nodeCount: Int { tree.nodeCount }
}
