import Foundation
import HubClient
import Logging
import Store

/// Each node's TLS keys are its own (made in its data directory at its first start, never copied by `node bundle`),
/// so a device must pin every node's. Each node records its pins (key in use, backup) in the store under the id in
/// its `DATA/node.id`, at start and after each key switch; pairing hands a device every node's pins, and
/// `bulwark hub publish-pins` publishes them all through the signed pin set (`PinSet`), which is how devices paired
/// before a node joined learn its key.
struct ClusterPins: Sendable {
    let store: any HubStore
    let node: String
    let name: String
    let identity: ServerIdentity
    let logger: Logger

    /// Records this node's pins as it presents and holds them now.
    func record(now: Date = Date()) async throws {
        try await store.setNodePins(NodePinsRecord(node: node, name: name, pins: identity.current.pins, updatedAt: now))
    }

    /// What a device is given at pairing: this node's pins first, then every other node's, at most
    /// `PinSet.maximumPins`. This node's alone when the store does not answer (the device reaches the others once it
    /// refreshes the published pin set).
    func forDevice() async -> [[UInt8]] {
        let own = identity.current.pins
        do {
            let others = try await store.nodePins().filter { $0.node != node }.flatMap(\.pins)
            return Self.union(own, others)
        } catch {
            logger.warning(
                "the other nodes' pins could not be read; the device gets this node's only",
                metadata: ["error": .string("\(error)")])
            return own
        }
    }

    /// `own` then `others` without repeats, at most `PinSet.maximumPins` (the agent refuses more).
    static func union(_ own: [[UInt8]], _ others: [[UInt8]]) -> [[UInt8]] {
        var pins: [[UInt8]] = []
        for pin in own + others where !pins.contains(pin) && pins.count < PinSet.maximumPins { pins.append(pin) }
        return pins
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
}
