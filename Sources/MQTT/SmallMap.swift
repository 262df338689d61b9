/// A dictionary that holds one entry inline: most nodes of a fleet's subscription tree have one child and one
/// session (`devices/<id>/commands/#`, one per device), and a `Dictionary` of one entry is a heap allocation of about
/// 120 bytes. No entry and one entry allocate nothing; two or more are a `Dictionary`. Iteration order is
/// unspecified, as a dictionary's.
struct SmallMap<Key: Hashable & Sendable, Value: Sendable>: Sendable, Sequence {
    private enum Storage: Sendable {
        case none
        case one(Key, Value)
        case many([Key: Value])
    }

    private var storage = Storage.none

    init() {}

    var isEmpty: Bool {
        if case .none = storage { return true }
        return false
    }

    var count: Int {
        switch storage {
        case .none: 0
        case .one: 1
        case .many(let entries): entries.count
        }
    }

    subscript(key: Key) -> Value? {
        get {
            switch storage {
            case .none: nil
            case .one(let held, let value): held == key ? value : nil
            case .many(let entries): entries[key]
            }
        }
        set {
            switch storage {
            case .none:
                if let newValue { storage = .one(key, newValue) }
            case .one(let held, let value):
                if held == key {
                    storage = newValue.map { .one(key, $0) } ?? .none
                } else if let newValue {
                    storage = .many([held: value, key: newValue])
                }
            case .many(var entries):
                storage = .none  // the dictionary's only reference is `entries` now: changed in place
                entries[key] = newValue
                if entries.count > 1 {
                    storage = .many(entries)
                } else if let (held, value) = entries.first {
                    storage = .one(held, value)
                }
            }
        }
    }

    subscript(key: Key, default value: @autoclosure () -> Value) -> Value {
        get { self[key] ?? value() }
        set { self[key] = newValue }
    }

    var keys: [Key] { map(\.key) }
    var values: [Value] { map(\.value) }

    struct Iterator: IteratorProtocol {
        fileprivate var single: (key: Key, value: Value)?
        fileprivate var many: Dictionary<Key, Value>.Iterator?

        mutating func next() -> (key: Key, value: Value)? {
            if let single {
                self.single = nil
                return single
            }
            return many?.next()
        }
    }

    func makeIterator() -> Iterator {
        switch storage {
        case .none: Iterator(single: nil, many: nil)
        case .one(let key, let value): Iterator(single: (key, value), many: nil)
        case .many(let entries): Iterator(single: nil, many: entries.makeIterator())
        }
    }
}
