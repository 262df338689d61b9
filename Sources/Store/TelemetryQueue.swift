import Core
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// The queue in front of a telemetry group committer (SQLite's and PostgreSQL's): messages are queued in arrival order
/// and taken in batches, with at most one batch in flight. Whoever queues a message into an idle queue starts the
/// writer; the writer takes batches until the queue is empty, which makes it idle again. Each message's result is
/// resolved once its batch committed (or failed).
///
/// Queueing takes no lock: the queued entries are a stack (Treiber's) that each `append` pushes onto with one
/// compare-and-swap, and the writer takes whole (one exchange), oldest first once reversed. Under one lock the two
/// event loops and the writer waited for each other on every message: a third of the hub's `futex` calls under a QoS 0
/// load (`perf record -e syscalls:sys_enter_futex`, 2026-12-07). Taking the whole stack, never one entry, leaves no
/// ABA problem: a pushed entry is never pushed again, and a push whose expected top was taken and its address reused
/// links below what is the top, which is right.
public final class TelemetryQueue: Sendable {
    /// A message and the result its batch resolves. A class: the writer's thread copies and destroys entries (the
    /// batch taken from the queue, the loops over it), and a copy of a struct retained and released each of the
    /// message's references there, each one last written by a connection's thread; an entry is one reference. It is
    /// also the result its batch resolves: one allocation per queued message.
    public final class Entry: PendingResult, @unchecked Sendable {
        public let message: NewTelemetry
        /// The thread that queued it, where it is freed once its batch is done (`Returns`). Never freed itself.
        /// Unmanaged: read without a reference count (an `unowned(unsafe)` one was retained at each read).
        let origin: Unmanaged<Returns>?
        /// The entry queued before it (its address; 0 for none) while it is in the stack. Written before the push
        /// that publishes it, read by the writer after the exchange that takes it.
        fileprivate var below: UInt = 0

        /// `reader`, when given, hears its outcome (and nothing else can wait for it: `PendingResult`).
        init(_ message: consuming NewTelemetry, origin: Unmanaged<Returns>?, reader: (any PendingResultReader)?) {
            self.message = message
            self.origin = origin
            super.init(reader: reader)
        }

        /// An entry outside any queue, for a store that writes each message itself: whoever makes it writes
        /// `message` and resolves it once with the outcome (`HubStore.writeUnqueued`).
        public convenience init(unqueued message: consuming NewTelemetry, reader: any PendingResultReader) {
            self.init(message, origin: nil, reader: reader)
        }
    }

    /// The stack's top: the newest queued entry's address (the stack holds a reference to each of its entries,
    /// `Unmanaged`), or `idle` (nothing queued and no writer), or 0 (nothing queued, the writer running).
    private let top = Atomic<UInt>(TelemetryQueue.idle)
    private static let idle: UInt = 1
    /// Entries the writer took from the stack, oldest first, that its last batch left (a batch's bounds). The
    /// writer's alone (one batch at a time): a lock no one else takes.
    private let taken = Locked(Taken())

    /// `entries[head...]`, oldest first; the slots before `head` were moved into batches (nil). A batch is moved
    /// out slot by slot: under load most batches are cut at `maximumCount` (QoS 0 at 300,000 messages a second
    /// queues more than 512 per commit), and copying the batch out and removing it from the rest retained and
    /// released each entry once more (`scripts/count-references`: 11 per QoS 0 message).
    private struct Taken {
        var entries: [Entry?] = []
        var head = 0

        var count: Int { entries.count - head }

        /// The oldest `count` entries, moved out.
        mutating func removeOldest(_ count: Int) -> [Entry] {
            let batch = [Entry](unsafeUninitializedCapacity: count) { buffer, initialized in
                for index in 0..<count { (buffer.baseAddress! + index).initialize(to: entries[head + index].take()!) }
                initialized = count
            }
            head += count
            if head == entries.count {
                // A burst's capacity is given back (a stalled commit may have let a million entries queue up).
                entries.removeAll(keepingCapacity: entries.capacity <= 4_096)
                head = 0
            } else if head * 2 >= entries.count {
                // The moved-out slots are nil: removed without releasing anything, the rest moved down.
                entries.removeFirst(head)
                head = 0
            }
            return batch
        }
    }
    /// At most this many messages in one batch, and at most `maximumBytes` of bodies and relayed packets (a batch
    /// always takes its first message).
    private let maximumCount: Int
    private let maximumBytes: Int

    public init(maximumCount: Int, maximumBytes: Int = .max) {
        self.maximumCount = maximumCount
        self.maximumBytes = maximumBytes
    }

    deinit {
        var address = top.load(ordering: .acquiring)
        guard address != Self.idle else { return }
        while address != 0 { address = Self.entry(at: address).takeRetainedValue().below }
    }

    private static func entry(at address: UInt) -> Unmanaged<Entry> {
        Unmanaged.fromOpaque(UnsafeRawPointer(bitPattern: address).unsafelyUnwrapped)
    }

    /// Queues the message; `start` is true when no batch is in flight and the caller must start the writer. Its
    /// outcome goes to `reader` when one is given, else it is read from the entry (`value`, `whenComplete`).
    /// Takes `message` over: queued without a copy (each copy counts every reference the message holds).
    /// Entries of this thread's earlier batches that came back are freed here, after the message is queued.
    public func append(_ message: consuming NewTelemetry, reader: (any PendingResultReader)? = nil)
        -> (result: Entry, start: Bool)
    {
        let origin = Returns.current()
        let entry = Entry(message, origin: origin, reader: reader)
        return (entry, push(.passRetained(entry), origin: origin))
    }

    /// As `append(_:reader:)`, for a writer whose reader is all that hears the outcome: returns only whether the
    /// caller must start the writer. The new entry's reference goes to the stack, not also to the caller (which
    /// let it go at once: a retain and a release per message).
    public func append(_ message: consuming NewTelemetry, heardBy reader: any PendingResultReader) -> Bool {
        let origin = Returns.current()
        return push(.passRetained(Entry(message, origin: origin, reader: reader)), origin: origin)
    }

    /// Pushes an entry (the stack takes the reference passed) and frees what came back to this thread; true when
    /// the writer was idle.
    private func push(_ entry: Unmanaged<Entry>, origin: Unmanaged<Returns>?) -> Bool {
        let address = UInt(bitPattern: entry.toOpaque())
        var expected = top.load(ordering: .relaxed)
        while true {
            entry._withUnsafeGuaranteedRef { $0.below = expected == Self.idle ? 0 : expected }
            let (pushed, found) = top.compareExchange(
                expected: expected, desired: address, successOrdering: .releasing, failureOrdering: .relaxed)
            if pushed { break }
            expected = found
        }
        origin?._withUnsafeGuaranteedRef { $0.reclaim() }
        return expected == Self.idle
    }

    /// The next batch, in queue order; empty when the queue is empty, and then the writer must stop (the next
    /// `append` starts it again).
    public func nextBatch() -> [Entry] {
        taken.withLock { taken -> [Entry] in
            if taken.count < maximumCount { takeStack(into: &taken.entries) }
            while taken.count == 0 {
                // Nothing queued: the writer stops, unless an entry was pushed meanwhile.
                let current = top.load(ordering: .acquiring)
                if current == Self.idle { return [] }
                if current == 0 {
                    let stopped = top.compareExchange(expected: 0, desired: Self.idle, ordering: .acquiringAndReleasing)
                    if stopped.exchanged { return [] }
                    continue
                }
                takeStack(into: &taken.entries)
            }
            var count = min(taken.count, maximumCount)
            if maximumBytes < .max {
                count = 0
                var bytes = 0
                let head = taken.head
                taken.entries.withUnsafeBufferPointer { entries in
                    for index in head..<(head + min(entries.count - head, maximumCount)) {
                        // Read in place: each entry bound in the loop was retained and released.
                        bytes += Unmanaged.passUnretained(entries[index].unsafelyUnwrapped)._withUnsafeGuaranteedRef {
                            $0.message.body.count + ($0.message.relay?.packet.count ?? 0)
                        }
                        if count > 0, bytes > maximumBytes { break }
                        count += 1
                    }
                }
            }
            // Moved, not copied: each copied entry retained every reference in its message, on the writer's thread,
            // where the connections' threads had just written them.
            return taken.removeOldest(count)
        }
    }

    /// Takes every entry of the stack (none when it is empty), appended to `taken` oldest first; the stack is left
    /// empty with the writer running.
    private func takeStack(into taken: inout [Entry?]) {
        var newest = top.load(ordering: .relaxed)
        while true {
            guard newest != 0, newest != Self.idle else { return }
            let (exchanged, found) = top.compareExchange(
                expected: newest, desired: 0, successOrdering: .acquiring, failureOrdering: .relaxed)
            if exchanged { break }
            newest = found
        }
        let start = taken.count
        var address = newest
        while address != 0 {
            // The stack's reference moves into `taken` (an entry bound first was retained for the array and
            // released after it).
            let entry = Self.entry(at: address)
            address = entry._withUnsafeGuaranteedRef { $0.below }
            taken.append(entry.takeRetainedValue())
        }
        // Reversed in its buffer: a slice's `reverse` swapped by copies, retaining and releasing each entry.
        taken.withUnsafeMutableBufferPointer { entries in
            var newer = UnsafeMutableBufferPointer(rebasing: entries[start...])
            newer.reverse()
        }
    }

    /// Resolves a committed batch: each message's id, or a replay for a message the batch refused (nil id: its
    /// counter already in the stored window, or its nonce already stored and live).
    /// Pass the batch's last reference (`consume`): its entries then go back to their threads (`Returns`) to be freed
    /// there.
    public static func committed(_ batch: consuming [Entry], ids: [Int64?]) {
        precondition(ids.count == batch.count, "one id (or nil) per message of the batch")
        Returns.finish(batch) { index in
            ids[index].map { .success($0) } ?? .failure(StoreError(.replayed, "nonce or counter already stored"))
        }
    }

    /// Fails every message of a batch that did not commit (as `committed`, pass its last reference).
    public static func failed(_ batch: consuming [Entry], _ error: StoreError) {
        Returns.finish(batch) { _ in .failure(error) }
    }
}

extension TelemetryQueue {
    /// Where the entries a thread queued come back, once their batch is done, to be freed by that thread at its next
    /// `append`.
    ///
    /// glibc frees a chunk into the arena of the thread that allocated it, under that arena's lock. The writer
    /// freed each entry and its message's body, which the event loops had allocated, while those loops allocated the
    /// next ones from the same arenas: the writer and the loops took turns sleeping on the arenas' locks. With QoS 0
    /// messages, about half of the hub's 0.44 `futex` calls per message were `malloc` and `free` waiting so
    /// (`perf record -e syscalls:sys_enter_futex --call-graph dwarf`, 2026-12-07).
    ///
    /// Bounded: a thread holds at most `maximumCount` entries and `maximumBytes` of their bodies and relayed packets
    /// (besides the entries themselves and their strings); the writer frees the rest of a batch itself, as before. A
    /// thread that stops queueing keeps at most that much until it queues again or exits. One per thread, made at
    /// its first `append` and never freed: when its thread exits, it frees what it holds, keeps nothing more, and
    /// waits for the next thread that queues (so an entry's `origin` is never dangling).
    final class Returns: @unchecked Sendable {
        static let maximumCount = 1_024
        static let maximumBytes = 1 << 20

        private struct Held {
            var entries: [Entry] = []
            var bytes = 0
            /// False while its thread has exited and no other took it: nothing is kept for it.
            var owned = true
        }

        private let held = Locked(Held())
        /// How many entries `held` has, read without the lock: a thread with nothing back does not take it.
        private let count = Atomic(0)

        /// Only `current` makes them (and tests).
        init() {}

        /// Frees what came back to this thread (call it on the thread that owns it).
        func reclaim() {
            guard count.load(ordering: .relaxed) > 0 else { return }
            let taken = held.withLock { held -> [Entry] in
                count.store(0, ordering: .relaxed)
                held.bytes = 0
                var taken: [Entry] = []
                swap(&taken, &held.entries)
                return taken
            }
            withExtendedLifetime(taken) {}  // freed here, outside the lock
        }

        /// Takes `entries` over for their thread, unless that would hold more than the bounds (then they are left).
        /// They leave `entries` inside the lock: the thread cannot free its references before these are gone, so
        /// the last one is its own.
        func keep(_ entries: inout [Entry], bytes: Int) {
            held.withLock { held in
                guard held.owned, held.entries.count + entries.count <= Self.maximumCount,
                    held.bytes + bytes <= Self.maximumBytes
                else { return }
                if held.entries.isEmpty {
                    swap(&held.entries, &entries)
                } else {
                    held.entries.append(contentsOf: entries)
                    entries.removeAll()
                }
                held.bytes += bytes
                count.store(held.entries.count, ordering: .relaxed)
            }
        }

        /// Resolves each entry of a done batch, oldest first, with `result(index)`, and hands the entries back to
        /// the threads that queued them (a batch holds few threads' entries). `batch` should be the last reference
        /// to its array: another would keep each entry alive past its thread's references, and the entry would be
        /// freed wherever that one goes. Each entry is moved out of the batch into its thread's group (an entry
        /// read in place was retained around its `resolve` and again for its group, and each released with the
        /// batch), and its thread is compared by address, not held.
        static func finish(
            _ batch: consuming [Entry], _ result: (Int) -> Result<PendingResult.Value, any Error>
        ) {
            var batch = batch
            batch.withUnsafeMutableBufferPointer { $0.reverse() }  // taken from the end: oldest first
            var groups: [(origin: Unmanaged<Returns>, entries: [Entry], bytes: Int)] = []
            var index = 0
            while let entry = batch.popLast() {
                entry.resolve(result(index))
                index += 1
                guard let origin = entry.origin else { continue }
                // As a batch counts them (`nextBatch`): the body and the packet relayed to other nodes.
                let bytes = entry.message.body.count + (entry.message.relay?.packet.count ?? 0)
                if let group = groups.firstIndex(where: { $0.origin.toOpaque() == origin.toOpaque() }) {
                    groups[group].entries.append(consume entry)
                    groups[group].bytes += bytes
                } else {
                    groups.append((origin, [consume entry], bytes))
                }
            }
            // Never freed (`Returns`): unretained is safe.
            for index in groups.indices {
                groups[index].origin.takeUnretainedValue().keep(&groups[index].entries, bytes: groups[index].bytes)
            }
        }

        /// The calling thread's; nil when the process has no thread-specific key left (entries are then freed by
        /// the writer). Unmanaged: never freed, so held without a reference count.
        static func current() -> Unmanaged<Returns>? {
            guard let key else { return nil }
            if let pointer = pthread_getspecific(key) { return Unmanaged<Returns>.fromOpaque(pointer) }
            let returns = spare.withLock { $0.popLast() } ?? Unmanaged.passRetained(Returns()).takeUnretainedValue()
            guard pthread_setspecific(key, Unmanaged.passUnretained(returns).toOpaque()) == 0 else {
                spare.withLock { $0.append(returns) }
                return nil
            }
            returns.held.withLock { $0.owned = true }
            return Unmanaged.passUnretained(returns)
        }

        /// Those of exited threads, for the next threads that queue.
        private static let spare = Locked<[Returns]>([])

        private static let key: pthread_key_t? = {
            var key = pthread_key_t()
            #if canImport(Darwin)
                let created = pthread_key_create(&key) { Returns.exited($0) }
            #else
                let created = pthread_key_create(&key) { pointer in
                    if let pointer { Returns.exited(pointer) }
                }
            #endif
            return created == 0 ? key : nil
        }()

        private static func exited(_ pointer: UnsafeMutableRawPointer) {
            let returns = Unmanaged<Returns>.fromOpaque(pointer).takeUnretainedValue()
            returns.retire()
            spare.withLock { $0.append(returns) }
        }

        /// Its thread exited: what it holds is freed, and nothing more is kept until another thread takes it.
        func retire() {
            held.withLock { $0.owned = false }
            reclaim()
        }
    }
}
