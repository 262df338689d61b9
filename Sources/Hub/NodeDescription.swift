import Core
import Foundation
import JSON
import MQTT
import Store
import Synchronization

/// What this node's run says of itself in its heartbeat (`bulwark node list`): a name, the version, when it started
/// and the addresses its listeners bound (filled in as each binds; with port 0 only then is the port known).
final class NodeDescription: Sendable {
    let holder: String
    let name: String
    /// The name was configured (`cluster.nodeName`), so it names one node: its earlier runs are over when it starts.
    let named: Bool
    let startedAt: Date
    private let addresses = Mutex<[String: String]>([:])
    /// Its shared MQTT subscriptions, encoded (`encode(_:)`).
    let shares = Mutex("")

    init(holder: String = UUID().uuidString, name: String, named: Bool = false, startedAt: Date = Date()) {
        self.holder = holder
        self.name = name
        self.named = named
        self.startedAt = startedAt
    }

    func bound(_ listener: String, host: String, port: Int) {
        addresses.withLock { $0[listener] = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
    }

    var record: HubNodeRecord {
        HubNodeRecord(
            holder: holder, name: name,
            addresses: addresses.withLock { $0.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" } }
                .joined(separator: " "),
            version: BulwarkVersion.current, startedAt: startedAt, shares: shares.withLock { $0 })
    }

    /// A node's shared subscriptions as its heartbeat records them: a JSON object, each `$share/GROUP/FILTER` to
    /// whether one of its members there is connected.
    /// Keys are the filters' bytes: two filters that differ only in Unicode normalization are two shares (MQTT 5.0
    /// §4.7.3), which a `[String: Bool]` would hold as one (and `Dictionary(uniqueKeysWithValues:)` trap on).
    static func encode(_ presence: SharedPlacement.Presence) -> String {
        var object = JSONObject()
        for (filter, connected) in presence { object.set(filter.rawValue, .bool(connected)) }
        return String(decoding: JSONValue.object(object).serialized(sortingKeys: true), as: UTF8.self)
    }

    /// A heartbeat's shares: one object, each key a filter (at most 65,535 bytes, six per byte escaped), as many as
    /// the node holds (the text's size bounds them). The TUF profile: keys by bytes, and Unicode noncharacters
    /// (U+FFFF, U+FDD0…) accepted, which MQTT allows in a topic filter: under I-JSON one device's share name could
    /// make a node's whole announcement unreadable to the others.
    static let sharesParser: StrictJSON = {
        var parser = StrictJSON(maxDepth: 2, maxMembers: .max, maxStringBytes: 65_535 * 6, maxNumberLength: 1)
        parser.profile = .tuf
        return parser
    }()

    /// Another node's shared subscriptions; what does not decode is skipped (an empty text is none).
    static func decode(_ text: String) -> SharedPlacement.Presence {
        guard !text.isEmpty, let document = try? sharesParser.parse(Array(text.utf8)), document.isObject else {
            return [:]
        }
        var presence: SharedPlacement.Presence = [:]
        for (key, value) in document.members(document.root) {
            guard let filter = document.string(key), let connected = document.bool(value) else { continue }
            if let group = try? TopicFilter(filter), (try? SharedFilter.parse(group)) != nil {
                presence[group] = connected
            }
        }
        return presence
    }

    /// The default name: the machine's host name.
    static var hostName: String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count) == 0 else { return "node" }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
