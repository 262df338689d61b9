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

    /// Records this node's pins as it presents and holds them now.
    func record(now: Date = Date()) async throws {
        try await store.setNodePins(
            Self.sealed(node: node, name: name, pins: identity.current.pins, now: now, key: key))
    }

    /// What a device is given at pairing: this node's pins first, then every other node's that verify, at most
    /// `PinSet.maximumPins`. This node's alone when the store does not answer (the device reaches the others once it
    /// refreshes the published pin set).
    func forDevice() async -> [[UInt8]] {
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
        let others = valid.flatMap(\.pins)
        let pins = Self.union(own, others)
        if pins.count < Set(own + others).count {
            logger.error(
                .init(
                    stringLiteral: "the nodes hold more pins than a device keeps (\(PinSet.maximumPins)): some nodes' "
                        + "are left out; take nodes no longer in service out with bulwark node forget"))
        }
        return pins
    }

    /// `own` then `others` without repeats, at most `PinSet.maximumPins` (the agent refuses more).
    static func union(_ own: [[UInt8]], _ others: [[UInt8]]) -> [[UInt8]] {
        var pins: [[UInt8]] = []
        for pin in own + others where !pins.contains(pin) && pins.count < PinSet.maximumPins { pins.append(pin) }
        return pins
    }

    static func sealed(node: String, name: String, pins: [[UInt8]], now: Date, key: SymmetricKey) -> NodePinsRecord {
        NodePinsRecord(
            node: node, name: name, pins: pins, updatedAt: now,
            mac: Array(
                HMAC<SHA256>.authenticationCode(for: signedBytes(node: node, name: name, pins: pins), using: key)))
    }

    static func signedBytes(node: String, name: String, pins: [[UInt8]]) -> [UInt8] {
        Array("bulwark node pins/1 \(node) \(name) ".utf8) + pins.flatMap { $0 }
    }

    /// The records whose MAC verifies (constant time) and whose pins are 1 to 3 SHA-256 digests; the others.
    static func verify(_ records: [NodePinsRecord], key: SymmetricKey) -> (
        valid: [NodePinsRecord], refused: [NodePinsRecord]
    ) {
        var valid: [NodePinsRecord] = []
        var refused: [NodePinsRecord] = []
        for record in records {
            let wellFormed = (1...3).contains(record.pins.count) && record.pins.allSatisfy { $0.count == 32 }
            if wellFormed,
                HMAC<SHA256>.isValidAuthenticationCode(
                    record.mac, authenticating: signedBytes(node: record.node, name: record.name, pins: record.pins),
                    using: key)
            {
                valid.append(record)
            } else {
                refused.append(record)
            }
        }
        return (valid, refused)
    }

    /// `DATA/node.id`: the data directory's id, made at its first start (not a secret: it names the node's pins).
    static func nodeID(dataDirectory: String) throws -> String {
        let path = dataDirectory + "/node.id"
        if let text = try? String(contentsOfFile: path, encoding: .utf8) {
            let id = text.trimmingCharacters(in: .whitespacesAndNewlines)
            guard id.count == 32, id.allSatisfy(\.isHexDigit) else {
                throw HubStartupError("\(path) is not a node id (32 hex digits): remove it and a new one is made")
            }
            return id
        }
        let id = (0..<16).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
        try SecretFiles.writePublic(path, contents: id + "\n")
        return id
    }

    /// For `bulwark hub publish-pins` and `rotate-tls-key` on a node of several (PostgreSQL; nothing with one node):
    /// records this data directory's pins as its files hold them now (a rotation run while the hub was stopped, or a
    /// record that failed, leaves the store behind), then returns the other nodes' pins, by name. A row that does not
    /// verify is refused with its node's id.
    public static func syncAndReadOthers(_ configuration: HubConfiguration) async throws -> [(
        name: String, pins: [[UInt8]]
    )] {
        guard let location = try configuration.postgresLocation() else { return [] }
        let auditKey: AuditKey
        do { auditKey = try AuditKey(fileText: try SecretFiles.read(configuration.auditKeyPath)) } catch {
            throw HubStartupError("cannot read the audit key \(configuration.auditKeyPath): \(error)")
        }
        let key = Self.key(auditKey)
        let node = try nodeID(dataDirectory: configuration.dataDirectory)
        let own = try TLSKeyRotation.currentPins(dataDirectory: configuration.dataDirectory)
        let store = try await PostgresHubStore(location: location)
        do {
            let records = try await store.nodePins()
            let name =
                configuration.clusterNodeName ?? records.first { $0.node == node }?.name ?? NodeDescription.hostName
            try await store.setNodePins(sealed(node: node, name: name, pins: own, now: Date(), key: key))
            try? await store.close()
            let (valid, refused) = verify(records.filter { $0.node != node }, key: key)
            if let bad = refused.first {
                throw HubStartupError(
                    "the pins recorded for node \(bad.node) do not verify with this hub's audit key: someone other than "
                        + "a node wrote them. Refusing to publish; remove the row with bulwark node forget \(bad.node)")
            }
            return valid.map { ($0.name, $0.pins) }
        } catch {
            try? await store.close()
            throw error
        }
    }
}
