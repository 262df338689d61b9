public import Crypto
public import Foundation

/// A signed checkpoint of the audit log (`bulwark audit anchor`), meant to be shipped off the machine. The chain
/// alone cannot show that records were cut off its end, nor (without the key) that it was rewritten and re-hashed;
/// an anchor kept elsewhere can: the log must still hold `count` records, record `count` must still hash to `head`,
/// and the records the key protected then must still carry their MACs.
///
/// The file is JSON; the signature (ECDSA P-256 with SHA-256, DER) covers a fixed-width encoding of the checkpoint,
/// not the JSON, so whitespace or key order never matter.
public struct AuditAnchor: Sendable, Equatable {
    /// What the anchor vouches for.
    public struct Checkpoint: Sendable, Equatable {
        /// Records in the log when it was anchored; record `count` is the head.
        public let count: Int64
        /// The chain hash of record `count` (the genesis hash for an empty log).
        public let head: [UInt8]
        /// When it was anchored, to the second.
        public let at: Date
        /// How many records at the start of the log had no MAC (written before the key existed).
        public let unkeyed: Int64

        public init(count: Int64, head: [UInt8], at: Date, unkeyed: Int64) {
            self.count = count
            self.head = head
            self.at = Date(timeIntervalSince1970: at.timeIntervalSince1970.rounded(.down))
            self.unkeyed = unkeyed
        }

        /// The checkpoint of a log (records in order, from 1).
        public init(of records: [AuditRecord], at: Date) {
            self.init(
                count: Int64(records.count), head: records.last?.hash ?? AuditChain.genesis, at: at,
                unkeyed: Int64(records.prefix { $0.mac == nil }.count))
        }

        /// "bulwark-audit-anchor/1" ‖ count ‖ head (32 bytes) ‖ at (Unix seconds) ‖ unkeyed, integers as 64-bit big
        /// endian: fixed widths, so no two checkpoints encode alike.
        var signedBytes: [UInt8] {
            var bytes = Array("bulwark-audit-anchor/1".utf8)
            func integer(_ value: Int64) { withUnsafeBytes(of: value.bigEndian) { bytes += $0 } }
            integer(count)
            bytes += head
            integer(Int64(at.timeIntervalSince1970))
            integer(unkeyed)
            return bytes
        }
    }

    /// Not yet checked: use `verified(by:)`.
    public let unverifiedCheckpoint: Checkpoint
    public let signature: [UInt8]

    static let format = "bulwark-audit-anchor/1"

    /// Signs `checkpoint` (with the hub CA key, or any P-256 key the verifier will be given).
    public init(signing checkpoint: Checkpoint, with key: P256.Signing.PrivateKey) throws {
        unverifiedCheckpoint = checkpoint
        signature = Array(try key.signature(for: checkpoint.signedBytes).derRepresentation)
    }

    /// Parses an anchor file. Refuses anything malformed; the signature is checked by `verified(by:)`.
    public init(json: [UInt8]) throws(StoreError) {
        let invalid = StoreError(.invalid, "not an audit anchor file")
        guard let object = (try? JSONSerialization.jsonObject(with: Data(json))) as? [String: Any],
            object["format"] as? String == Self.format,
            let count = (object["count"] as? Int).map(Int64.init), count >= 0,
            let unkeyed = (object["unkeyed"] as? Int).map(Int64.init), (0...count).contains(unkeyed),
            let head = (object["head"] as? String).flatMap(Self.bytes(hex:)), head.count == 32,
            let atText = object["at"] as? String, let at = try? Date(atText, strategy: .iso8601),
            let signatureText = object["signature"] as? String, let signature = Data(base64Encoded: signatureText)
        else { throw invalid }
        unverifiedCheckpoint = Checkpoint(count: count, head: head, at: at, unkeyed: unkeyed)
        self.signature = Array(signature)
    }

    /// The file's contents.
    public var json: [UInt8] {
        let object: [String: Any] = [
            "format": Self.format, "count": unverifiedCheckpoint.count,
            "head": AuditChain.hex(unverifiedCheckpoint.head),
            "at": unverifiedCheckpoint.at.formatted(.iso8601), "unkeyed": unverifiedCheckpoint.unkeyed,
            "signature": Data(signature).base64EncodedString(),
        ]
        let data =
            (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .prettyPrinted])) ?? Data()
        return Array(data) + [UInt8(ascii: "\n")]
    }

    /// The checkpoint, if `key` signed it; nil otherwise (forged, altered, or another hub's).
    public func verified(by key: P256.Signing.PublicKey) -> Checkpoint? {
        guard let signature = try? P256.Signing.ECDSASignature(derRepresentation: signature),
            key.isValidSignature(signature, for: unverifiedCheckpoint.signedBytes)
        else { return nil }
        return unverifiedCheckpoint
    }

    private static func bytes(hex: String) -> [UInt8]? {
        let digits = Array(hex.utf8)
        guard digits.count % 2 == 0 else { return nil }
        func value(_ digit: UInt8) -> UInt8? {
            switch digit {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit - UInt8(ascii: "a") + 10
            default: nil
            }
        }
        var out: [UInt8] = []
        for index in stride(from: 0, to: digits.count, by: 2) {
            guard let high = value(digits[index]), let low = value(digits[index + 1]) else { return nil }
            out.append(high << 4 | low)
        }
        return out
    }
}
