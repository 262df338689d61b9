import Foundation
import Gateway
import JSON

/// The hub's TLS key pins as the hub publishes them: a TUF target `bulwark/pins.json`, signed by the targets role,
/// so a device takes a new pin set only with the repository's threshold signatures and TUF's rollback and freeze
/// protection (TUF §5.6, §5.7), never from the network alone.
///
///     {"pins":["<base64 SHA-256 of the SubjectPublicKeyInfo>", ...],"version":N}
///
/// It holds every hub node's key in use and backup key (each node has keys of its own), the node that publishes
/// first: RFC 7469 §4.3 asks for at least one backup pin. `version` grows with every publication.
public struct PinSet: Sendable, Equatable {
    public static let targetPath = "bulwark/pins.json"
    /// Seven nodes' keys in use and backups, and the retiring key of a rotation, fit; more would only widen what is
    /// trusted.
    public static let maximumPins = 16

    public var version: Int
    public var pins: [[UInt8]]

    public init(version: Int, pins: [[UInt8]]) {
        self.version = version
        self.pins = pins
    }

    /// Parses a published pin set strictly: exactly the two members, a version in 1...2^31-1, 1...16 distinct SHA-256
    /// pins in base64.
    public init(json: [UInt8]) throws(PinSetError) {
        guard json.count <= 4096, case .object(let object)? = try? StrictJSON().value(json),
            Set(object.keys) == ["pins", "version"]
        else { throw PinSetError("not a pin set document (an object with pins and version only)") }
        guard case .integer(let number)? = object["version"], (1...Int64(Int32.max)).contains(number) else {
            throw PinSetError("the pin set version must be an integer from 1")
        }
        guard case .array(let values)? = object["pins"], (1...Self.maximumPins).contains(values.count) else {
            throw PinSetError("a pin set holds 1 to \(Self.maximumPins) pins")
        }
        let texts = values.compactMap { value -> String? in
            if case .string(let text) = value { return text }
            return nil
        }
        guard texts.count == values.count else { throw PinSetError("a pin is the base64 of a SHA-256 digest") }
        var pins: [[UInt8]] = []
        for text in texts {
            guard let raw = Data(base64Encoded: text), raw.count == 32 else {
                throw PinSetError("a pin is the base64 of a SHA-256 digest")
            }
            guard !pins.contains([UInt8](raw)) else { throw PinSetError("a pin is listed twice") }
            pins.append([UInt8](raw))
        }
        self.init(version: Int(number), pins: pins)
    }

    /// The document as the hub publishes it (members sorted, no white space).
    public var json: [UInt8] {
        let list = pins.map { "\"" + Data($0).base64EncodedString() + "\"" }.joined(separator: ",")
        return Array("{\"pins\":[\(list)],\"version\":\(version)}".utf8)
    }

    /// What a device does with a pin set that TUF verified.
    public enum Decision: Sendable, Equatable {
        /// Take it: it is newer and keeps continuity with what the device trusts now.
        case accept
        /// The device already holds this version.
        case unchanged
        /// Keep the current pins; the reason is for the device's status and log.
        case refuse(String)
    }

    /// The device's rule for a pin set that passed TUF: a newer version only; it must contain the key the hub
    /// presents on the pinned connection it came over (so the hub does not drop the key it proves it holds), and it
    /// may add at most two keys the device does not pin yet. A rotation adds one ({A,B} → {A,B,C} → {B,C}), a node
    /// that joins two (its key in use and its backup); so whoever holds the repository's keys still cannot swap a
    /// device's pins for unrelated ones in one step, and a key they add is of no use without a certificate from the
    /// hub CA, which the device checks as well.
    public static func evaluate(
        _ candidate: PinSet, currentPins: [[UInt8]], currentVersion: Int, presented: [UInt8]
    ) -> Decision {
        if candidate.version == currentVersion, Set(candidate.pins) == Set(currentPins) { return .unchanged }
        guard candidate.version > currentVersion else {
            return .refuse(
                "pin set version \(candidate.version) is not newer than the one held (\(currentVersion))")
        }
        guard candidate.pins.contains(presented) else {
            return .refuse("pin set version \(candidate.version) leaves out the key the hub presents: refused")
        }
        let added = candidate.pins.filter { !currentPins.contains($0) }.count
        guard added <= 2 else {
            return .refuse("pin set version \(candidate.version) adds \(added) keys at once (at most two): refused")
        }
        return .accept
    }
}

public struct PinSetError: Error, Equatable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
