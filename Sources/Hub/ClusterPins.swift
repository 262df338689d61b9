import Crypto
import Foundation
import HubClient
import Logging
import PostgresStore
import Store

/// Each node's TLS keys are its own (made in its data directory at its first start, never copied by `node bundle`),
/// so a device must pin every node's. Each node records its pins (key in use, backup) in the store under the id in
/// its `DATA/node.id`, at start and after each key switch; pairing hands a device every node's pins, and
/// `bulwark hub publish-pins` publishes them all through the signed pin set (`PinSet`), which is how devices paired
/// before a node joined learn its key.
///
/// A row carries an HMAC-SHA256 under a key derived from the audit key, which every node holds and the database
/// never does (as pairing claims are sealed): a pin someone wrote into the database is neither handed to a device nor
/// published.
public struct ClusterPins: Sendable {
    let store: any HubStore
    let node: String
    let name: String
    let identity: ServerIdentity
    let key: SymmetricKey
    let logger: Logger

    init(store: any HubStore, node: String, name: String, identity: ServerIdentity, auditKey: AuditKey, logger: Logger)
    {
        self.store = store
        self.node = node
        self.name = name
        self.identity = identity
        self.key = Self.key(auditKey)
        self.logger = logger
    }

    static func key(_ auditKey: AuditKey) -> SymmetricKey { auditKey.derivedKey(for: "node pins") }

    /// A node's record as `publish-pins` reads it: its name, pins, and whether it was recorded in the last
    /// `freshSeconds` (a node running now re-records every `refreshSeconds`).
    public struct Node: Sendable {
        public var name: String
        public var pins: [[UInt8]]
        public var fresh: Bool

        public init(name: String, pins: [[UInt8]], fresh: Bool) {
            self.name = name
            self.pins = pins
            self.fresh = fresh
        }
    }

    /// A running node records its pins again this often, so that a record is fresh while its node runs.
    static let refreshSeconds: TimeInterval = 60
    /// A record older than this is a node not running now: its pins are not handed to devices, and add no key to
    /// the published set. (Someone who can write the database can put back an old record, but not a fresh one: the
    /// time is under the MAC.)
    static let freshSeconds: TimeInterval = 600

    /// Records this node's pins as it presents and holds them now.
    func record(now: Date = Date()) async throws {
        try await store.setNodePins(
            Self.sealed(node: node, name: name, pins: identity.current.pins, now: now, key: key))
    }

    /// What a device is given at pairing: this node's pins first, then those of every other node running now (a
    /// fresh record that verifies), at most `PinSet.maximumPins`. This node's alone when the store does not answer
    /// (the device reaches the others once it refreshes the published pin set).
    func forDevice(now: Date = Date()) async -> [[UInt8]] {
        let own = identity.current.pins
        let records: [NodePinsRecord]
        do { records = try await store.nodePins() } catch {
            logger.warning(
                "the other nodes' pins could not be read; the device gets this node's only",
                metadata: ["error": .string("\(error)")])
            return own
        }
        let (valid, refused) = Self.verify(records.filter { $0.node != node }, key: key)
        for record in refused {
            logger.error(
                "a node's pins in the database do not verify with this hub's audit key: not given to devices",
                metadata: ["node": .string(record.node)])
        }
        let all = Self.distinct(own + valid.filter { Self.isFresh($0, now: now) }.flatMap(\.pins))
        let pins = Array(all.prefix(PinSet.maximumPins))
        if pins.count < all.count {
            logger.error(
                .init(
                    stringLiteral: "the nodes hold more pins than a device keeps (\(PinSet.maximumPins)): some nodes' "
                        + "are left out; take nodes no longer in service out with bulwark node forget"))
        }
        return pins
    }

    /// The pins in their order, each once (the pairing's answer and the published set are both built this way).
    static func distinct(_ pins: [[UInt8]]) -> [[UInt8]] {
        var seen: [[UInt8]] = []
        for pin in pins where !seen.contains(pin) { seen.append(pin) }
        return seen
    }

    /// Recorded in the last `freshSeconds`: its node runs now.
    static func isFresh(_ record: NodePinsRecord, now: Date) -> Bool {
        now.timeIntervalSince(record.updatedAt) < freshSeconds
    }

    static func sealed(node: String, name: String, pins: [[UInt8]], now: Date, key: SymmetricKey) -> NodePinsRecord {
        let millis = Date(millis: now.millis)
        return NodePinsRecord(
            node: node, name: name, pins: pins, updatedAt: millis,
            mac: Array(
                HMAC<SHA256>.authenticationCode(
                    for: signedBytes(node: node, name: name, pins: pins, at: millis), using: key)))
    }

    /// What the MAC covers, each field length-prefixed (no two records share it): the node, its name, when it was
    /// recorded (milliseconds) and the pins.
    static func signedBytes(node: String, name: String, pins: [[UInt8]], at: Date) -> [UInt8] {
        func field(_ bytes: [UInt8]) -> [UInt8] {
            withUnsafeBytes(of: UInt32(bytes.count).bigEndian, Array.init) + bytes
        }
        return Array("bulwark node pins/2".utf8) + field(Array(node.utf8)) + field(Array(name.utf8))
            + withUnsafeBytes(of: at.millis.bigEndian, Array.init) + field(pins.flatMap { $0 })
    }

    /// The records whose MAC verifies (constant time), for a node id of 32 hex digits and two SHA-256 pins (the key
    /// in use and the backup); the others.
    static func verify(_ records: [NodePinsRecord], key: SymmetricKey) -> (
        valid: [NodePinsRecord], refused: [NodePinsRecord]
    ) {
        var valid: [NodePinsRecord] = []
        var refused: [NodePinsRecord] = []
        for record in records {
            let wellFormed =
                isNodeID(record.node) && record.pins.count == 2 && record.pins.allSatisfy { $0.count == 32 }
            if wellFormed,
                HMAC<SHA256>.isValidAuthenticationCode(
                    record.mac,
                    authenticating: signedBytes(
                        node: record.node, name: record.name, pins: record.pins, at: record.updatedAt),
                    using: key)
            {
                valid.append(record)
            } else {
                refused.append(record)
            }
        }
        return (valid, refused)
    }

    static func isNodeID(_ text: String) -> Bool {
        text.utf8.count == 32 && text.utf8.allSatisfy { (48...57).contains($0) || (97...102).contains($0) }
    }

    /// `DATA/node.id`: the data directory's id, made at its first start (not a secret: it names the node's pins).
    static func nodeID(dataDirectory: String) throws -> String {
        let path = dataDirectory + "/node.id"
        if let text = try? String(contentsOfFile: path, encoding: .utf8) {
            let id = text.trimmingCharacters(in: .whitespacesAndNewlines)
            guard isNodeID(id) else {
                throw HubStartupError(
                    "\(path) is not a node id (32 lower-case hex digits): remove it and a new one is made")
            }
            return id
        }
        let id = (0..<16).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
        try SecretFiles.writePublic(path, contents: id + "\n")
        return id
    }

    /// For `bulwark hub publish-pins` and `rotate-tls-key` on a node of several (PostgreSQL; nothing with one node):
    /// records this data directory's pins as its files hold them now (a rotation run while the hub was stopped, or a
    /// record that failed, leaves the store behind), then returns the other nodes'. A record that does not verify is
    /// refused (`TamperedPins`) with its node's id.
    public static func syncAndReadOthers(_ configuration: HubConfiguration, now: Date = Date()) async throws -> [Node] {
        guard let location = try configuration.postgresLocation() else { return [] }
        let auditKey: AuditKey
        do { auditKey = try AuditKey(fileText: try SecretFiles.read(configuration.auditKeyPath)) } catch {
            throw HubStartupError("cannot read the audit key \(configuration.auditKeyPath): \(error)")
        }
        let key = Self.key(auditKey)
        let files = TLSKeyFiles(configuration.dataDirectory)
        try files.requireHub()
        let node = try nodeID(dataDirectory: configuration.dataDirectory)
        let own: [[UInt8]]
        do {
            let lock = try files.lock()
            defer { lock.release() }
            own = try TLSKeyRotation.currentPins(dataDirectory: configuration.dataDirectory)
        }
        let store = try await PostgresHubStore(location: location)
        do {
            let (valid, refused) = verify(try await store.nodePins(), key: key)
            if let bad = refused.first(where: { $0.node != node }) {
                throw TamperedPins(node: bad.node)
            }
            let name =
                configuration.clusterNodeName ?? valid.first { $0.node == node }?.name ?? NodeDescription.hostName
            try await store.setNodePins(sealed(node: node, name: name, pins: own, now: now, key: key))
            try? await store.close()
            return valid.filter { $0.node != node }.map {
                Node(name: $0.name, pins: $0.pins, fresh: isFresh($0, now: now))
            }
        } catch {
            try? await store.close()
            throw error
        }
    }
}

/// A node's pins in the database that do not verify with the hub's audit key: someone other than a node wrote them.
public struct TamperedPins: Error, CustomStringConvertible {
    public let node: String
    public var description: String {
        "the pins recorded for node \(node) do not verify with this hub's audit key: someone other than a node wrote "
            + "them. Refusing to publish; remove the row with bulwark node forget \(node)"
    }
}
