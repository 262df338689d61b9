import Store

/// Where shared-subscription messages went when a member left (MQTT 5.0 §4.8.2: its unacknowledged messages go to
/// another member), for the order of session saves: a pure value that `MQTTPersistence` keeps beside its pending
/// changes.
///
/// A message acknowledged once the sessions holding it are saved may since have moved from the member it reached
/// (A) to another (B), and on (C): the save the acknowledgement waits for includes where it went (`following`).
/// And the sessions a hand-over joins are written in one transaction (`transactions`): A's save without the message
/// must never commit before B's with it, and with messages going both ways between two members no order of two
/// transactions would do.
struct SharedHandOvers: Equatable {
    /// From the leaving member's session key to the keys of the sessions that got its messages.
    private(set) var edges: [String: Set<String>] = [:]

    /// Records the hand-overs the broker reported (`MQTTBroker.Changes.handedOver`).
    mutating func record(_ handedOver: [String: Set<String>]) {
        edges.merge(handedOver) { $0.union($1) }
    }

    /// `keys`, with the sessions their messages were handed to, and those these handed theirs to, in turn.
    func following(_ keys: Set<String>) -> Set<String> {
        edges.isEmpty ? keys : Self.reach(from: keys, edges)
    }

    /// Whether the session handed messages to sessions not saved since.
    func handedOn(from key: String) -> Bool { edges[key] != nil }

    /// `start`, and every key reached from it through `next`.
    private static func reach<Next: Sequence<String>>(from start: Set<String>, _ next: [String: Next]) -> Set<String> {
        var reached = start
        var queue = Array(start)
        while let key = queue.popLast() {
            guard let others = next[key] else { continue }
            for other in others where reached.insert(other).inserted { queue.append(other) }
        }
        return reached
    }

    /// Forgets the hand-overs from which no session with a change still to write (`pending`) can be reached: the
    /// message is in a saved session, whatever the leaving member's row says. A chain through a saved session to an
    /// unsaved one is kept whole.
    mutating func forget(unless pending: (String) -> Bool) {
        guard !edges.isEmpty else { return }
        var into: [String: [String]] = [:]
        for (from, receivers) in edges {
            for receiver in receivers { into[receiver, default: []].append(from) }
        }
        // Every session from which a pending one can be reached, walking the hand-overs backwards.
        let leads = Self.reach(from: Set(edges.keys).union(into.keys).filter(pending), into)
        var kept: [String: Set<String>] = [:]
        for (from, receivers) in edges {
            let left = receivers.filter { leads.contains($0) }
            if !left.isEmpty { kept[from] = left }
        }
        edges = kept
    }

    /// `keys` in transactions, in their order: the sessions a hand-over joins (either way, through any session)
    /// always in the same one, even beyond the bounds; otherwise at most `perTransaction` sessions and
    /// `bytesPerTransaction` bytes of state (`size`) to one.
    func transactions(
        _ keys: [String], size: (String) -> Int, perTransaction: Int = MQTTSessionChange.perTransaction,
        bytesPerTransaction: Int = MQTTSessionChange.bytesPerTransaction
    ) -> [[String]] {
        var transactions: [[String]] = []
        var current: [String] = []
        var bytes = 0
        func add(_ unit: some Collection<String>) {
            let unitBytes = unit.reduce(0) { $0 + size($1) }
            if !current.isEmpty,
                current.count + unit.count > perTransaction || bytes + unitBytes > bytesPerTransaction
            {
                transactions.append(current)
                current = []
                bytes = 0
            }
            current += unit
            bytes += unitBytes
        }
        if edges.isEmpty {
            for key in keys { add(CollectionOfOne(key)) }
        } else {
            var joined: [String: [String]] = [:]
            for (from, receivers) in edges {
                for receiver in receivers {
                    joined[from, default: []].append(receiver)
                    joined[receiver, default: []].append(from)
                }
            }
            var position: [String: Int] = [:]
            for (index, key) in keys.enumerated() { position[key] = index }
            var placed = Set<String>()
            for key in keys where !placed.contains(key) {
                guard joined[key] != nil else {
                    add(CollectionOfOne(key))
                    continue
                }
                // The group of `key`: every session joined to it, of those to write, in the order given.
                let group = Self.reach(from: [key], joined)
                placed.formUnion(group)
                add(group.compactMap { position[$0] }.sorted().map { keys[$0] })
            }
        }
        if !current.isEmpty { transactions.append(current) }
        return transactions
    }
}
