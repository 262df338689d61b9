import Crypto
public import Foundation

/// One record of the tamper-evident audit log: a security event plus its place in the hash chain.
public struct AuditRecord: Sendable, Equatable {
    public var sequence: Int64
    public var event: SecurityEvent
    public var previousHash: [UInt8]
    public var hash: [UInt8]

    public init(sequence: Int64, event: SecurityEvent, previousHash: [UInt8], hash: [UInt8]) {
        self.sequence = sequence
        self.event = event
        self.previousHash = previousHash
        self.hash = hash
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
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data()
        return String(decoding: data, as: UTF8.self)
    }
}

/// The hash chain of the audit log: record n carries SHA-256 of record n−1 and its own hash over a length-prefixed
/// encoding of every field plus that previous hash. Editing, deleting, inserting or reordering any record breaks
/// the chain at that record. (Cutting records off the end leaves a valid shorter chain: ship `audit tail --follow`
/// off the machine to anchor it.)
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

    /// Checks a whole log in order: sequence numbers consecutive from 1, each previous hash equal to the hash of the
    /// record before, each hash recomputed from the record's fields.
    public static func verify(_ records: [AuditRecord]) -> Failure? {
        var previous = genesis
        var expected: Int64 = 1
        for record in records {
            guard record.sequence == expected else {
                return Failure(
                    sequence: record.sequence,
                    reason: record.sequence > expected
                        ? "records \(expected)…\(record.sequence - 1) are missing"
                        : "out of order (expected \(expected))")
            }
            guard record.previousHash == previous else {
                return Failure(sequence: record.sequence, reason: "does not link to the record before it")
            }
            guard hash(sequence: record.sequence, event: record.event, previous: previous) == record.hash else {
                return Failure(sequence: record.sequence, reason: "its content does not match its hash")
            }
            previous = record.hash
            expected += 1
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

    /// The later of two windows of one device (writes may commit out of order; the stored window never goes
    /// backwards): the higher `highest` wins (the in-memory windows only grow, so it already holds the other's
    /// marks), equal ones combine their marks.
    public func merged(with other: StoredCounterWindow?) -> StoredCounterWindow {
        guard let other, other.highest >= highest else { return self }
        return other.highest == highest ? StoredCounterWindow(highest: highest, seen: seen | other.seen) : other
    }
}

extension Date {
    var millis: Int64 { Int64((timeIntervalSince1970 * 1000).rounded()) }
    init(millis: Int64) { self.init(timeIntervalSince1970: Double(millis) / 1000) }
}
