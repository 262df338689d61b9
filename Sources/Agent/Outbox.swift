import Core
import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A message the agent accepted and has not yet seen acknowledged by the hub.
public struct OutboxMessage: Sendable, Equatable {
    public enum Kind: String, Sendable { case telemetry, event }

    public let sequence: UInt64
    /// The MQTT counter (the replay window's, `$counter`/`counter` property): fixed when the message is accepted, so
    /// a resend after a lost PUBACK or a restart carries the same one and the hub recognises it (stored once).
    public let counter: UInt64
    public let kind: Kind
    /// The topic below `devices/<id>/`: `telemetry`, `events/command-result`, ...
    public let route: String
    public let body: [UInt8]
}

/// The agent's on-disk queue (`STATE/outbox`): a message is a file, written and synced before `append` returns, and
/// removed once the hub acknowledged it; so an accepted message survives `kill -9` and is sent after a restart. The
/// queue is bounded in bytes: when it is full the oldest *telemetry* goes first (counted in `dropped`); commands'
/// results and other events are never dropped for telemetry.
///
/// Counters come from a lease kept in `STATE/outbox/counter`: the next 4,096 are reserved on disk before any is used,
/// and a start resumes above the lease and above the wall clock in milliseconds, so counters never repeat, even
/// after a crash or a re-pairing that lost the directory (the hub keeps the device's window).
public final class Outbox: Sendable {
    private struct State {
        var messages: [OutboxMessage] = []
        var bytes = 0
        var nextSequence: UInt64 = 1
        var nextCounter: UInt64 = 1
        var leaseEnd: UInt64 = 0
        var dropped = 0
    }

    public let directory: String
    public let maxBytes: Int
    private let state = Mutex(State())
    static let lease: UInt64 = 4096

    public init(directory: String, maxBytes: Int, now: Date = Date()) throws(AgentError) {
        self.directory = directory
        self.maxBytes = maxBytes
        if mkdir(directory, 0o700) != 0, errno != EEXIST {
            throw AgentError(.outbox, "cannot create \(directory): \(String(cString: strerror(errno)))")
        }
        var loaded = State()
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        for name in names.sorted() where name.hasSuffix(".msg") {
            let path = directory + "/" + name
            guard let data = FileManager.default.contents(atPath: path), let message = Self.decode(data),
                "\(String(format: "%016llu", message.sequence)).msg" == name
            else {
                // A file cut short by a crash before its rename cannot exist (it is renamed once synced): anything
                // else unreadable is set aside, not sent and not fatal.
                rename(path, path + ".bad")
                continue
            }
            loaded.messages.append(message)
            loaded.bytes += message.body.count
        }
        loaded.nextSequence = (loaded.messages.last?.sequence ?? 0) + 1
        let stored =
            UInt64(
                (try? String(contentsOfFile: directory + "/counter", encoding: .utf8))?
                    .trimmingCharacters(in: .whitespacesAndNewlines) ?? "") ?? 0
        let clock = UInt64(max(0, now.timeIntervalSince1970 * 1000))
        loaded.nextCounter = max(stored, clock, (loaded.messages.map(\.counter).max() ?? 0) + 1, 1)
        state.withLock { $0 = loaded }
    }

    /// Accepts a message: it is on disk when this returns.
    @discardableResult
    public func append(kind: OutboxMessage.Kind, route: String, body: [UInt8]) throws(AgentError) -> OutboxMessage {
        try state.withLock { state throws(AgentError) -> OutboxMessage in
            if state.nextCounter >= state.leaseEnd {
                let end = state.nextCounter + Self.lease
                try Self.write(directory + "/counter", Array("\(end)\n".utf8), directory: directory)
                state.leaseEnd = end
            }
            let message = OutboxMessage(
                sequence: state.nextSequence, counter: state.nextCounter, kind: kind, route: route, body: body)
            try Self.write(Self.path(directory, message.sequence), Self.encode(message), directory: directory)
            state.nextSequence += 1
            state.nextCounter += 1
            state.messages.append(message)
            state.bytes += body.count
            // Over the bound: the oldest telemetry goes first (never events, never the message just accepted
            // unless it is the only telemetry left).
            while state.bytes > maxBytes,
                let index = state.messages.firstIndex(where: { $0.kind == .telemetry })
            {
                let old = state.messages.remove(at: index)
                state.bytes -= old.body.count
                state.dropped += 1
                unlink(Self.path(directory, old.sequence))
            }
            return message
        }
    }

    /// The hub acknowledged (or definitively refused) the message: forget it.
    public func remove(_ sequence: UInt64) {
        state.withLock { state in
            guard let index = state.messages.firstIndex(where: { $0.sequence == sequence }) else { return }
            state.bytes -= state.messages.remove(at: index).body.count
            unlink(Self.path(directory, sequence))
        }
    }

    public var pending: [OutboxMessage] { state.withLock { $0.messages } }
    public var depth: Int { state.withLock { $0.messages.count } }
    public var dropped: Int { state.withLock { $0.dropped } }

    static func path(_ directory: String, _ sequence: UInt64) -> String {
        directory + "/" + String(format: "%016llu", sequence) + ".msg"
    }

    static func encode(_ message: OutboxMessage) -> [UInt8] {
        let object: [String: Any] = [
            "sequence": message.sequence, "counter": message.counter, "kind": message.kind.rawValue,
            "route": message.route, "body": Data(message.body).base64EncodedString(),
        ]
        return Array((try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data())
    }

    static func decode(_ data: Data) -> OutboxMessage? {
        guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
            let sequence = (object["sequence"] as? NSNumber)?.uint64Value,
            let counter = (object["counter"] as? NSNumber)?.uint64Value,
            let kind = (object["kind"] as? String).flatMap(OutboxMessage.Kind.init(rawValue:)),
            let route = object["route"] as? String,
            let body = (object["body"] as? String).flatMap({ Data(base64Encoded: $0) })
        else { return nil }
        return OutboxMessage(sequence: sequence, counter: counter, kind: kind, route: route, body: Array(body))
    }

    /// Writes a temporary file, syncs it, renames it over `path` and syncs the directory: after a crash the file is
    /// either absent or whole, and once this returns the new file survives a power loss. A directory that cannot be
    /// opened or synced is an error (the rename may then not survive one), as in the TUF client's `Storage`.
    static func write(_ path: String, _ bytes: [UInt8], directory: String, mode: mode_t = 0o600) throws(AgentError) {
        let temporary = path + ".tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
        guard fd >= 0 else {
            throw AgentError(.outbox, "cannot write \(temporary): \(String(cString: strerror(errno)))")
        }
        var written = 0
        while written < bytes.count {
            let n = bytes[written...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            guard n > 0 else {
                close(fd)
                throw AgentError(.outbox, "cannot write \(temporary): \(String(cString: strerror(errno)))")
            }
            written += n
        }
        guard fsync(fd) == 0, close(fd) == 0, rename(temporary, path) == 0 else {
            throw AgentError(.outbox, "cannot write \(path): \(String(cString: strerror(errno)))")
        }
        if let failure = DirectorySync.sync(directory) { throw AgentError(.outbox, failure) }
    }
}
