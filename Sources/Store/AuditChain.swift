public import Core
import Crypto
public import Foundation

/// One record of the tamper-evident audit log: a security event plus its place in the hash chain.
public struct AuditRecord: Sendable, Equatable {
    public var sequence: Int64
    public var event: SecurityEvent
    public var previousHash: [UInt8]
    public var hash: [UInt8]
    /// HMAC of `hash` under the audit key (`AuditKey`); nil for records written before the key existed.
    public var mac: [UInt8]?

    public init(sequence: Int64, event: SecurityEvent, previousHash: [UInt8], hash: [UInt8], mac: [UInt8]? = nil) {
        self.sequence = sequence
        self.event = event
        self.previousHash = previousHash
        self.hash = hash
        self.mac = mac
    }

    /// One JSON line for `bulwark audit tail`.
    public var jsonLine: String {
        var object: [String: Any] = [
            "seq": sequence, "at": event.at.formatted(.iso8601), "kind": event.kind, "detail": event.detail,
            "prev": AuditChain.hex(previousHash), "hash": AuditChain.hex(hash),
        ]
        if let identity = event.identity { object["identity"] = identity }
        if let source = event.source { object["source"] = source }
        if let correlation = event.correlationID { object["correlationId"] = correlation }
        if let mac { object["mac"] = AuditChain.hex(mac) }
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data()
        return String(decoding: data, as: UTF8.self)
    }
}

/// The hash chain of the audit log: record n carries SHA-256 of record n−1 and its own hash over a length-prefixed
/// encoding of every field plus that previous hash. Editing, deleting, inserting or reordering any record breaks
/// the chain at that record. Hashes alone are unkeyed: whoever can write the database can edit a record and re-hash
/// everything after it. So each record also carries a MAC under `AuditKey`, kept outside the database, and cutting
/// records off the end (which leaves a valid shorter chain) is caught against a signed `AuditAnchor` kept elsewhere.
public enum AuditChain {
    public static let genesis = [UInt8](repeating: 0, count: 32)

    public static func hash(sequence: Int64, event: SecurityEvent, previous: [UInt8]) -> [UInt8] {
        var input = Array("bulwark-audit/1".utf8)
        input += previous
        func integer(_ value: Int64) { withUnsafeBytes(of: value.bigEndian) { input += $0 } }
        func field(_ text: String?) {
            guard let text else {
                input.append(0)
                return
            }
            input.append(1)
            let bytes = Array(text.utf8)
            withUnsafeBytes(of: UInt32(bytes.count).bigEndian) { input += $0 }
            input += bytes
        }
        integer(sequence)
        integer(event.at.millis)
        field(event.kind)
        field(event.identity)
        field(event.source)
        field(event.correlationID)
        field(event.detail)
        return Array(SHA256.hash(data: input))
    }

    /// Why verification failed, naming the first bad record.
    public struct Failure: Error, Equatable, CustomStringConvertible {
        public let sequence: Int64
        public let reason: String
        public var description: String { "audit record \(sequence): \(reason)" }
    }

    /// What a successful verification established.
    public struct Summary: Sendable, Equatable {
        public var count: Int64
        public var head: [UInt8]
        /// Records carrying a MAC; `unkeyed` records before them carry none (written before the key existed).
        public var keyed: Int64
        public var unkeyed: Int64
        /// False when no key was given: the MACs' presence was checked, not their values.
        public var macsChecked: Bool
        public var anchors: Int
    }

    /// Checks the chain only (as `verify(_:key:anchors:)` without a key or anchors).
    public static func verify(_ records: [AuditRecord]) -> Failure? {
        if case .failure(let failure) = verify(records, key: nil) { return failure }
        return nil
    }

    /// Checks a whole log in order: sequence numbers consecutive from 1, each previous hash equal to the hash of the
    /// record before, each hash recomputed from the record's fields; MACs present on all records but a leading run
    /// written before the key existed (none from the key's `keyedFrom` on) and, given the key, each one valid; then
    /// each (already signature-checked) anchor: the log still reaches its count, record `count` still has its head
    /// hash, and exactly its unkeyed prefix is still unkeyed.
    public static func verify(
        _ records: [AuditRecord], key: AuditKey?, anchors: [AuditAnchor.Checkpoint] = []
    ) -> Result<Summary, Failure> {
        var previous = genesis
        var expected: Int64 = 1
        var unkeyed: Int64 = 0
        for record in records {
            guard record.sequence == expected else {
                return .failure(
                    Failure(
                        sequence: record.sequence,
                        reason: record.sequence > expected
                            ? "records \(expected)…\(record.sequence - 1) are missing"
                            : "out of order (expected \(expected))"))
            }
            guard record.previousHash == previous else {
                return .failure(Failure(sequence: record.sequence, reason: "does not link to the record before it"))
            }
            guard hash(sequence: record.sequence, event: record.event, previous: previous) == record.hash else {
                return .failure(Failure(sequence: record.sequence, reason: "its content does not match its hash"))
            }
            if let mac = record.mac {
                if let key, !key.isValid(mac: mac, for: record.hash) {
                    return .failure(
                        Failure(
                            sequence: record.sequence,
                            reason: "its MAC does not match (edited and re-hashed without the audit key)"))
                }
            } else if unkeyed != record.sequence - 1 {
                return .failure(
                    Failure(
                        sequence: record.sequence, reason: "has no MAC after keyed records (its MAC was removed)"))
            } else if let keyedFrom = key?.keyedFrom, record.sequence >= keyedFrom {
                return .failure(
                    Failure(
                        sequence: record.sequence,
                        reason: "has no MAC but the audit key protects records from \(keyedFrom) on (MAC removed)"))
            } else {
                unkeyed += 1
            }
            previous = record.hash
            expected += 1
        }
        for anchor in anchors {
            if let failure = check(records, unkeyed: unkeyed, against: anchor) { return .failure(failure) }
        }
        return .success(
            Summary(
                count: Int64(records.count), head: previous, keyed: Int64(records.count) - unkeyed, unkeyed: unkeyed,
                macsChecked: key != nil, anchors: anchors.count))
    }

    /// One anchor against a log whose chain already verified.
    private static func check(
        _ records: [AuditRecord], unkeyed: Int64, against anchor: AuditAnchor.Checkpoint
    ) -> Failure? {
        let at = anchor.at.formatted(.iso8601)
        guard Int64(records.count) >= anchor.count else {
            return Failure(
                sequence: Int64(records.count) + 1,
                reason: "missing: the log was truncated to \(records.count) records, but the anchor of \(at) "
                    + "vouches for \(anchor.count)")
        }
        guard anchor.count == 0 || records[Int(anchor.count) - 1].hash == anchor.head else {
            return Failure(
                sequence: anchor.count,
                reason: "does not match the head hash of the anchor of \(at) (the log was rewritten before it)")
        }
        // Keyed before the anchor: the unkeyed prefix is fixed for good. Not yet keyed: only a longer run may follow.
        guard anchor.unkeyed == anchor.count ? unkeyed >= anchor.unkeyed : unkeyed == anchor.unkeyed else {
            return Failure(
                sequence: min(unkeyed, anchor.unkeyed) + 1,
                reason: unkeyed > anchor.unkeyed
                    ? "has no MAC but the anchor of \(at) says it had one (MAC removed)"
                    : "has a MAC but the anchor of \(at) says it was written before the key existed")
        }
        return nil
    }

    /// Lower-case hex (hashes in the audit output and the schema listing).
    public static func hex(_ bytes: some Sequence<UInt8>) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(bytes.underestimatedCount * 2)
        for byte in bytes {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0xF)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// A nonce admitted with a message, kept until it can no longer be replayed.
public struct StoredNonce: Sendable, Equatable {
    public var nonce: String
    public var expiresAt: Int64
    public init(nonce: String, expiresAt: Int64) {
        self.nonce = nonce
        self.expiresAt = expiresAt
    }
}

/// A device's counter window (highest counter and the bitmap below it).
public struct StoredCounterWindow: Sendable, Equatable {
    public var highest: UInt64
    public var seen: UInt64
    public init(highest: UInt64, seen: UInt64) {
        self.highest = highest
        self.seen = seen
    }

    /// This window with `counter` marked, or nil when the window already holds it (a message stored before: a
    /// replay). A counter too old for the window is not refused here: the admitting node's own window checked it,
    /// and writes of one device may reach the store out of order (counter 5 after counter 70), so "too old" in the
    /// store does not mean "seen". The window is then returned as it is.
    public func accepting(_ counter: UInt64) -> StoredCounterWindow? {
        var window = CounterWindow(highest: highest, seen: seen)
        switch window.accept(counter) {
        case .accepted: return StoredCounterWindow(highest: window.highest, seen: window.seen)
        case .replayed: return nil
        case .tooOld: return counter > 0 ? self : nil
        }
    }

    /// The later of two windows of one device (writes may commit out of order; the stored window never goes
    /// backwards): the higher `highest` wins (the in-memory windows only grow, so it already holds the other's
    /// marks), equal ones combine their marks.
    public func merged(with other: StoredCounterWindow?) -> StoredCounterWindow {
        guard let other, other.highest >= highest else { return self }
        return other.highest == highest ? StoredCounterWindow(highest: highest, seen: seen | other.seen) : other
    }
}

/// Times as the stores keep them: whole milliseconds since 1970 (one definition for every store and for what signs
/// a stored time, such as a node's pins record).
extension Date {
    package var millis: Int64 { Int64((timeIntervalSince1970 * 1000).rounded()) }
    package init(millis: Int64) { self.init(timeIntervalSince1970: Double(millis) / 1000) }
}
