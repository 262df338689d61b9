/// The topics held (retained messages), as a tree of topic levels, so that the topics a filter matches are found by
/// walking only the branches the filter can reach: a new subscription to `devices/d1/commands/#` looks at that
/// device's topics, not at every retained message of the fleet. Matching is MQTT 3.1.1 / 5.0 §4.7.1 (`+` one level,
/// `#` the parent level and everything below) with §4.7.2's rule: a filter starting with a wildcard matches no topic
/// whose first level starts with `$`. A pure value.
public struct TopicTree: Sendable {
    struct Node: Sendable {
        var children: [Substring: Int] = [:]
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
            if let child = nodes[node].children[level] {
                node = child
            } else {
                let child = free.popLast() ?? append()
                nodes[node].children[level] = child
                node = child
            }
        }
        if nodes[node].topic == nil { count += 1 }
        nodes[node].topic = topic.rawValue
    }

    /// Lets go of `topic` and of the nodes only it used. Removing a topic not held changes nothing.
    public mutating func remove(_ topic: TopicName) {
        var path: [(node: Int, level: Substring)] = []
        var node = 0
        for level in topic.levels {
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

    /// The topics held that `filter` matches.
    public func topics(matching filter: TopicFilter) -> [String] {
        var found: [String] = []
        walk(0, filter.levels[...], first: true, into: &found)
        return found
    }

    /// Nodes in use, the root included.
    public var nodeCount: Int { nodes.count - free.count }

    private func walk(_ node: Int, _ rest: ArraySlice<Substring>, first: Bool, into found: inout [String]) {
        guard let level = rest.first else {
            if let topic = nodes[node].topic { found.append(topic) }
            return
        }
        switch level {
        case "#":
            // The parent level too (`a/#` matches `a`); at the root there is none.
            if let topic = nodes[node].topic { found.append(topic) }
            for (name, child) in nodes[node].children where !(first && name.hasPrefix("$")) {
                everything(under: child, into: &found)
            }
        case "+":
            for (name, child) in nodes[node].children where !(first && name.hasPrefix("$")) {
                walk(child, rest.dropFirst(), first: false, into: &found)
            }
        default:
            if let child = nodes[node].children[level] { walk(child, rest.dropFirst(), first: false, into: &found) }
        }
    }

    private func everything(under node: Int, into found: inout [String]) {
        if let topic = nodes[node].topic { found.append(topic) }
        for child in nodes[node].children.values { everything(under: child, into: &found) }
    }

    private mutating func append() -> Int {
        nodes.append(Node())
        return nodes.count - 1
    }
}
