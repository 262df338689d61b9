/// Work that becomes ready in any order and is released in the order it was added: a connection's acknowledgements,
/// each waiting for its own store write, still leave in the order their PUBLISH packets arrived (MQTT 3.1.1 §4.6 and
/// MQTT 5.0 §4.6: "it MUST send PUBACK packets in the order in which the corresponding PUBLISH packets were
/// received"). A value: the caller decides on which thread it lives and what releasing an item means.
public struct InOrderQueue<Item> {
    /// Names one item added, to mark it ready later (the item's position since the queue was made).
    public struct Ticket: Hashable, Sendable {
        fileprivate let sequence: UInt64
    }

    private var items: [(item: Item, ready: Bool)] = []
    /// Index in `items` of the oldest item not yet released (released slots before it are reclaimed in bulk).
    private var head = 0
    /// The sequence number of `items[0]`.
    private var base: UInt64 = 0

    public init() {}

    /// Items added and not yet released.
    public var count: Int { items.count - head }

    public var isEmpty: Bool { count == 0 }

    /// Adds an item behind every item added before it; `ready` when it waits for nothing.
    public mutating func append(_ item: Item, ready: Bool) -> Ticket {
        items.append((item, ready))
        return Ticket(sequence: base + UInt64(items.count - 1))
    }

    /// Marks the ticket's item ready, changing it with `update` (to record what it waited for). A ticket already
    /// released, or never issued by this queue, changes nothing and returns false.
    @discardableResult
    public mutating func markReady(_ ticket: Ticket, _ update: (inout Item) -> Void = { _ in }) -> Bool {
        guard ticket.sequence >= base + UInt64(head), ticket.sequence < base + UInt64(items.count) else { return false }
        let index = Int(ticket.sequence - base)
        guard !items[index].ready else { return false }
        update(&items[index].item)
        items[index].ready = true
        return true
    }

    /// The oldest item, if it is ready: removed and returned. Nil when the queue is empty or its oldest item still
    /// waits (however many younger items are ready).
    public mutating func popReady() -> Item? {
        guard head < items.count, items[head].ready else { return nil }
        let item = items[head].item
        head += 1
        if head == items.count {
            base += UInt64(items.count)
            items.removeAll(keepingCapacity: items.capacity <= 64)
            head = 0
        } else if head >= 32, head * 2 >= items.count {
            base += UInt64(head)
            items.removeFirst(head)
            head = 0
        }
        return item
    }
}

extension InOrderQueue: Sendable where Item: Sendable {}
