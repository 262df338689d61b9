/// Work that becomes ready in any order and is released in the order it was added: a connection's acknowledgements,
/// each waiting for its own store write, still leave in the order their PUBLISH packets arrived (MQTT 3.1.1 §4.6 and
/// MQTT 5.0 §4.6: "it MUST send PUBACK packets in the order in which the corresponding PUBLISH packets were
/// received"). A value: the caller decides on which thread it lives and what releasing an item means.
public struct InOrderQueue<Item> {
    public typealias Ticket = InOrderTicket

    // Inlinable (with its storage): a generic type used from another module is otherwise run unspecialized, looking
    // up its element types' metadata on every call (7 % of the hub's time per QoS 1 message under perf).
    // An item is moved out when released, leaving nil (copied out, each of its references was retained, and
    // released again when the slots were reclaimed).
    @usableFromInline var items: [(item: Item?, ready: Bool)] = []
    /// Index in `items` of the oldest item not yet released (released slots before it are reclaimed in bulk).
    @usableFromInline var head = 0
    /// The sequence number of `items[0]`.
    @usableFromInline var base: UInt64 = 0

    @inlinable public init() {}

    /// Items added and not yet released.
    @inlinable public var count: Int { items.count - head }

    @inlinable public var isEmpty: Bool { count == 0 }

    /// Adds an item behind every item added before it; `ready` when it waits for nothing. The item is taken, not
    /// copied in.
    @inlinable
    public mutating func append(_ item: consuming Item, ready: Bool) -> Ticket {
        items.append((item, ready))
        return Ticket(sequence: base + UInt64(items.count - 1))
    }

    /// Marks the ticket's item ready, changing it with `update` (to record what it waited for). A ticket already
    /// released, or never issued by this queue, changes nothing and returns false.
    @inlinable @discardableResult
    public mutating func markReady(_ ticket: Ticket, _ update: (inout Item) -> Void = { _ in }) -> Bool {
        guard ticket.sequence >= base + UInt64(head), ticket.sequence < base + UInt64(items.count) else { return false }
        let index = Int(ticket.sequence - base)
        guard !isReady(index) else { return false }
        update(&items[index].item!)
        items[index].ready = true
        return true
    }

    /// The oldest item, if it is ready: removed and returned. Nil when the queue is empty or its oldest item still
    /// waits (however many younger items are ready).
    @inlinable
    public mutating func popReady() -> Item? {
        guard head < items.count, isReady(head) else { return nil }
        let item = items[head].item.take()
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

extension InOrderQueue {
    /// Whether slot `index` is ready, read where it lies: `items[index].ready` read the whole slot through the
    /// array's getter, copying its item (each of its references retained, and released again) to look at a flag.
    @inlinable
    func isReady(_ index: Int) -> Bool {
        items.withUnsafeBufferPointer { $0[index].ready }
    }
}

extension InOrderQueue: Sendable where Item: Sendable {}

/// Names one item added to an `InOrderQueue`, to mark it ready later (the item's position since the queue was made).
/// Not nested in the generic queue: one type whatever the items, so a holder of a ticket (a store write's outcome)
/// need not know what the queue holds.
public struct InOrderTicket: Hashable, Sendable {
    @usableFromInline let sequence: UInt64

    @inlinable init(sequence: UInt64) { self.sequence = sequence }
}
