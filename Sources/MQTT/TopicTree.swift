/// The topics held (retained messages), as a tree of topic levels, so that the topics a filter matches are found by
/// walking only the branches the filter can reach: a new subscription to `devices/d1/commands/#` looks at that
/// device's topics, not at every retained message of the fleet. Matching is MQTT 3.1.1 / 5.0 §4.7.1 (`+` one level,
/// `#` the parent level and everything below) with §4.7.2's rule: a filter starting with a wildcard matches no topic
/// whose first level starts with `$`. A pure value.
public struct TopicTree: Sendable {
    struct Node: Sendable {
        /// Keyed by copies of the levels: a `Substring` would keep the whole topic that made the node alive.
        var children: [String: Int] = [:]
        /// The topic that ends here, when one is held.
        var topic: String?
    }

    /// Node 0 is the root; removed nodes are reused (`free`).
    private var nodes = [Node()]
    private var free: [Int] = []
    public private(set) var count = 0

    public init() {}

    /// Holds `topic` (once, however often it is inserted).
    public mutating func insert(_ topic: TopicName) {
        var node = 0
        for level in topic.levels {
            if let child = nodes[node].children[String(level)] {
                node = child
            } else {
                let child = free.popLast() ?? append()
                nodes[node].children[String(level)] = child
                node = child
            }
        }
        if nodes[node].topic == nil { count += 1 }
        nodes[node].topic = topic.rawValue
    }

    /// Lets go of `topic` and of the nodes only it used. Removing a topic not held changes nothing.
    public mutating func remove(_ topic: TopicName) {
        var path: [(node: Int, level: String)] = []
        var node = 0
        for level in topic.levels.lazy.map(String.init) {
            guard let child = nodes[node].children[level] else { return }
            path.append((node, level))
            node = child
        }
        guard nodes[node].topic != nil else { return }
        nodes[node].topic = nil
        count -= 1
        while let (parent, level) = path.last, nodes[node].topic == nil, nodes[node].children.isEmpty {
            nodes[parent].children[level] = nil
            nodes[node] = Node()
            free.append(node)
            path.removeLast()
            node = parent
        }
    }

    /// The topics held that `filter` matches. Walked with a stack of its own, not by recursion: a topic may have
    /// 65,535 levels.
    public func topics(matching filter: TopicFilter) -> [String] {
        var found: [String] = []
        let levels = filter.levels
        var pending: [(node: Int, depth: Int)] = [(0, 0)]
        while let (node, depth) = pending.popLast() {
            guard depth < levels.count else {
                if let topic = nodes[node].topic { found.append(topic) }
                continue
            }
            // §4.7.2: a wildcard at the first level matches no `$` topic.
            let first = depth == 0
            switch levels[depth] {
            case "#":
                // The parent level too (`a/#` matches `a`; the root holds no topic), then everything below.
                if let topic = nodes[node].topic { found.append(topic) }
                var below = nodes[node].children.compactMap { first && $0.key.hasPrefix("$") ? nil : $0.value }
                while let next = below.popLast() {
                    if let topic = nodes[next].topic { found.append(topic) }
                    below.append(contentsOf: nodes[next].children.values)
                }
            case "+":
                for (name, child) in nodes[node].children where !(first && name.hasPrefix("$")) {
                    pending.append((child, depth + 1))
                }
            case let level:
                if let child = nodes[node].children[String(level)] { pending.append((child, depth + 1)) }
            }
        }
        return found
    }

    /// Nodes in use, the root included.
    public var nodeCount: Int { nodes.count - free.count }

    private mutating func append() -> Int {
        nodes.append(Node())
        return nodes.count - 1
    }
}
