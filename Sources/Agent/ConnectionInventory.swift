import Foundation

/// What the device talks to, read from Linux's `/proc/net/{tcp,tcp6,udp,udp6}` (proc(5)): established connections
/// aggregated by remote address, port and protocol, and the sockets it listens on. Loopback is left out (it is not a
/// network destination), and so is the agent's own session to the hub. The hub compares the report with the egress
/// policy of the device's class.
public enum ConnectionInventory {
    public struct Entry: Sendable, Hashable, Comparable {
        public var proto: String
        public var address: String
        public var port: Int
        public var count: Int

        public static func < (a: Entry, b: Entry) -> Bool {
            (a.proto, a.address, a.port) < (b.proto, b.address, b.port)
        }
    }

    /// At most this many of each list go into a report (the hub's schema says the same).
    static let maximumEntries = 256

    /// Parses one `/proc/net/<proto>` file. TCP state 01 is ESTABLISHED and 0A LISTEN; for UDP, 01 is a connected
    /// socket and 07 a bound one that receives from anyone (listening).
    public static func parse(_ text: String, proto: String) -> (established: [Entry], listening: [Entry]) {
        var established: [Entry] = []
        var listening: [Entry] = []
        let udp = proto.hasPrefix("udp")
        for line in text.split(separator: "\n").dropFirst() {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count > 3, let local = endpoint(fields[1]), let remote = endpoint(fields[2]) else { continue }
            switch fields[3] {
            case "01":
                if !isLoopback(remote.address) {
                    established.append(Entry(proto: proto, address: remote.address, port: remote.port, count: 1))
                }
            case "0A" where !udp, "07" where udp:
                if !isLoopback(local.address) {
                    listening.append(Entry(proto: proto, address: local.address, port: local.port, count: 1))
                }
            default: continue
            }
        }
        return (established, listening)
    }

    /// The report's JSON body (`{"established": [...], "listening": [...]}`) from `procRoot` (normally `/proc`).
    public static func report(procRoot: String = "/proc", excluding: Set<String> = []) -> [UInt8] {
        var established: [String: Entry] = [:]
        var listening: [String: Entry] = [:]
        for proto in ["tcp", "tcp6", "udp", "udp6"] {
            guard let text = try? String(contentsOfFile: "\(procRoot)/net/\(proto)", encoding: .utf8) else { continue }
            let (open, bound) = parse(text, proto: proto)
            for entry in open where !excluding.contains("\(entry.address) \(entry.port)") {
                established[
                    "\(entry.proto) \(entry.address) \(entry.port)",
                    default: Entry(
                        proto: entry.proto, address: entry.address, port: entry.port, count: 0)
                ].count += 1
            }
            for entry in bound { listening["\(entry.proto) \(entry.address) \(entry.port)"] = entry }
        }
        func list(_ entries: [String: Entry]) -> [[String: Any]] {
            entries.values.sorted { ($0.count, $1) > ($1.count, $0) }.prefix(maximumEntries).map {
                ["proto": $0.proto, "address": $0.address, "port": $0.port, "count": $0.count]
            }
        }
        let object: [String: Any] = ["established": list(established), "listening": list(listening)]
        return Array((try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data())
    }

    /// `0100007F:1F90` (IPv4, the 32-bit word in host order, little-endian here) or 32 hex digits (IPv6, four such
    /// words), then the port in hex.
    static func endpoint(_ field: Substring) -> (address: String, port: Int)? {
        let parts = field.split(separator: ":")
        guard parts.count == 2, let port = Int(parts[1], radix: 16) else { return nil }
        let hex = Array(parts[0])
        guard hex.count == 8 || hex.count == 32 else { return nil }
        var bytes: [UInt8] = []
        for word in stride(from: 0, to: hex.count, by: 8) {
            var group: [UInt8] = []
            for index in stride(from: word, to: word + 8, by: 2) {
                guard let byte = UInt8(String(hex[index..<index + 2]), radix: 16) else { return nil }
                group.append(byte)
            }
            bytes += group.reversed()
        }
        if bytes.count == 4 { return (bytes.map(String.init).joined(separator: "."), port) }
        // An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is reported as the IPv4 address it is.
        if bytes[0..<10].allSatisfy({ $0 == 0 }), bytes[10] == 0xFF, bytes[11] == 0xFF {
            return (bytes[12...].map(String.init).joined(separator: "."), port)
        }
        let groups = stride(from: 0, to: 16, by: 2).map {
            String(UInt16(bytes[$0]) << 8 | UInt16(bytes[$0 + 1]), radix: 16)
        }
        return (compress(groups), port)
    }

    /// RFC 5952 §4.2: the longest run of zero groups (two or more) becomes `::`.
    static func compress(_ groups: [String]) -> String {
        var best = (start: -1, length: 0)
        var index = 0
        while index < groups.count {
            guard groups[index] == "0" else {
                index += 1
                continue
            }
            let start = index
            while index < groups.count, groups[index] == "0" { index += 1 }
            if index - start > best.length, index - start >= 2 { best = (start, index - start) }
        }
        guard best.start >= 0 else { return groups.joined(separator: ":") }
        let head = groups[..<best.start].joined(separator: ":")
        let tail = groups[(best.start + best.length)...].joined(separator: ":")
        return head + "::" + tail
    }

    static func isLoopback(_ address: String) -> Bool { address.hasPrefix("127.") || address == "::1" }
}
