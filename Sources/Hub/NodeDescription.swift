import Core
import Foundation
import Store
import Synchronization

/// What this node's run says of itself in its heartbeat (`bulwark node list`): a name, the version, when it started
/// and the addresses its listeners bound (filled in as each binds; with port 0 only then is the port known).
final class NodeDescription: Sendable {
    let holder: String
    let name: String
    let startedAt: Date
    private let addresses = Mutex<[String: String]>([:])

    init(holder: String = UUID().uuidString, name: String, startedAt: Date = Date()) {
        self.holder = holder
        self.name = name
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
            version: BulwarkVersion.current, startedAt: startedAt)
    }

    /// The default name: the machine's host name.
    static var hostName: String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count) == 0 else { return "node" }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
