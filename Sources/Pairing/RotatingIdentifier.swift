public import Core
public import Crypto
import Foundation

/// Resolvable rotating identifiers, after Bluetooth's resolvable private addresses:
/// `RID = Trunc80(HMAC-SHA256(IRK, "bulwark-rid/1" ‖ epoch))`, epoch = ⌊unix seconds / 900⌋ as 8 bytes big-endian.
///
/// A passive observer sees a new 80-bit value every 15 minutes, unlinkable without the 128-bit IRK; the hub, which
/// holds every device's IRK, resolves it in O(1).
public enum RotatingIdentifier {
    public static let epochSeconds: Int64 = 900
    static let label = Array("bulwark-rid/1".utf8)

    public static func epoch(unixSeconds: Int64) -> UInt64 { UInt64(max(0, unixSeconds) / epochSeconds) }

    public static func rid(irk: [UInt8], epoch: UInt64) -> [UInt8] {
        var message = label
        for shift in stride(from: 56, through: 0, by: -8) {
            message.append(UInt8(truncatingIfNeeded: epoch >> UInt64(shift)))
        }
        return Array(HMAC<SHA256>.authenticationCode(for: message, using: SymmetricKey(data: irk)).prefix(10))
    }

    /// The RID as 16 base32 characters (80 bits), usable as an MQTT client id.
    public static func text(_ rid: [UInt8]) -> String { Base32.encode(rid).lowercased() }

    public static func parse(_ text: String) -> [UInt8]? {
        guard text.utf8.count == 16, let bytes = Base32.decode(text.uppercased()), bytes.count == 10 else { return nil }
        return bytes
    }
}

/// Resolves RIDs of the previous, current and next epoch to devices through one hash table, rebuilt each epoch.
public struct RIDResolver: Sendable {
    /// 80 bits packed into two integers: hashing is two words, not ten bytes.
    struct Key: Hashable {
        let high: UInt64
        let low: UInt16
        init?(_ rid: [UInt8]) {
            guard rid.count == 10 else { return nil }
            high = rid.prefix(8).reduce(0) { $0 << 8 | UInt64($1) }
            low = UInt16(rid[8]) << 8 | UInt16(rid[9])
        }
    }

    public private(set) var epoch: UInt64
    private var table: [Key: DeviceID] = [:]

    public init(devices: [(DeviceID, irk: [UInt8])], epoch: UInt64) {
        self.epoch = epoch
        rebuild(devices: devices, epoch: epoch)
    }

    /// Recomputes the table for epochs e−1, e, e+1 (3 HMACs per device).
    public mutating func rebuild(devices: [(DeviceID, irk: [UInt8])], epoch: UInt64) {
        self.epoch = epoch
        var table: [Key: DeviceID] = [:]
        table.reserveCapacity(devices.count * 3)
        for (device, irk) in devices {
            for e in [epoch &- 1, epoch, epoch &+ 1] {
                if let key = Key(RotatingIdentifier.rid(irk: irk, epoch: e)) { table[key] = device }
            }
        }
        self.table = table
    }

    /// Adds one device (a new pairing) without rebuilding: 3 HMACs.
    public mutating func insert(_ device: DeviceID, irk: [UInt8]) {
        for e in [epoch &- 1, epoch, epoch &+ 1] {
            if let key = Key(RotatingIdentifier.rid(irk: irk, epoch: e)) { table[key] = device }
        }
    }

    public func resolve(_ rid: [UInt8]) -> DeviceID? {
        guard let key = Key(rid) else { return nil }
        return table[key]
    }
}
