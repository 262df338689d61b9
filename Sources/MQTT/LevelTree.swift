/// A tree of topic levels held in one array (node 0 is the root; removed nodes are reused), each node with a value:
/// the storage `SubscriptionIndex` (filters, sessions at their end) and `TopicTree` (topics) share. Children are
/// keyed by copies of the levels (a `Substring` would keep the whole topic or filter that made the node alive),
/// compared by their bytes (`TopicKey`), held in a `SmallMap`.
struct LevelTree<Value: Sendable>: Sendable {
    struct Node: Sendable {
        /// One child inline (a device's own levels have one each), more in a dictionary.
        var children = SmallMap<TopicKey, Int>()
        var value: Value
    }

    private(set) var nodes: [Node]
    private var free: [Int] = []
    private let empty: Value

    /// A tree with only the root, whose value (and every new node's) is `empty`.
    init(empty: Value) {
        self.empty = empty
        nodes = [Node(value: empty)]
    }

    subscript(node: Int) -> Node { nodes[node] }

    /// The node at the end of `levels`, made (with the nodes before it) when missing.
    mutating func make(_ levels: some Sequence<Substring>) -> Int {
        var node = 0
        for level in levels.lazy.map(TopicKey.init) {
            if let child = nodes[node].children[level] {
                node = child
            } else {
                let child = free.popLast() ?? append()
                nodes[node].children[level] = child
                node = child
            }
        }
        return node
    }

    /// The node at the end of `levels` with the path to it (each parent and the level below it); nil when it is
    /// not in the tree.
    func find(_ levels: some Sequence<Substring>) -> (node: Int, path: [(parent: Int, level: TopicKey)])? {
        var path: [(parent: Int, level: TopicKey)] = []
        var node = 0
        for level in levels.lazy.map(TopicKey.init) {
            guard let child = nodes[node].children[level] else { return nil }
            path.append((node, level))
            node = child
        }
        return (node, path)
    }

    mutating func update(_ node: Int, _ body: (inout Value) -> Void) { body(&nodes[node].value) }

    /// Releases the node found at the end of `path`, and its parents in turn, while each has no children and a value
    /// `isEmpty` calls empty.
    mutating func prune(_ found: (node: Int, path: [(parent: Int, level: TopicKey)]), isEmpty: (Value) -> Bool) {
        var (node, path) = found
        while let (parent, level) = path.last, nodes[node].children.isEmpty, isEmpty(nodes[node].value) {
            nodes[parent].children[level] = nil
            nodes[node] = Node(value: empty)
            free.append(node)
            path.removeLast()
            node = parent
        }
    }

    /// Nodes in use, the root included.
    var nodeCount: Int { nodes.count - free.count }

    private mutating func append() -> Int {
        nodes.append(Node(value: empty))
        return nodes.count - 1
    }
}
