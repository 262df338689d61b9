public import Core
public import Foundation

public enum DeviceStatus: String, Sendable, Codable {
    case active, revoked
}

public struct DeviceRecord: Sendable, Equatable, Codable {
    public var id: DeviceID
    public var status: DeviceStatus
    public var createdAt: Date
    public var revokedAt: Date?

    public init(id: DeviceID, status: DeviceStatus, createdAt: Date, revokedAt: Date? = nil) {
        self.id = id
        self.status = status
        self.createdAt = createdAt
        self.revokedAt = revokedAt
    }
}

/// A device certificate renewed (a new key): the previous one is revoked once the device has used the new one, or at
/// `graceUntil` at the latest.
public struct PendingRenewal: Sendable, Equatable {
    public var newSerialHex: String
    public var previousSerialHex: String
    public var deviceID: DeviceID
    public var graceUntil: Date

    public init(newSerialHex: String, previousSerialHex: String, deviceID: DeviceID, graceUntil: Date) {
        self.newSerialHex = newSerialHex
        self.previousSerialHex = previousSerialHex
        self.deviceID = deviceID
        self.graceUntil = graceUntil
    }
}

/// Who an update assignment is for: one device, a device class, or the whole fleet (the default).
public enum AssignmentScope: Sendable, Hashable {
    case device(DeviceID)
    case deviceClass(String)
    case fleet

    var key: String {
        switch self {
        case .device(let id): "device:\(id.rawValue)"
        case .deviceClass(let name): "class:\(name)"
        case .fleet: "fleet"
        }
    }
}

/// A destination a device's agent reported, as the hub keeps it: when first and last seen, in how many reports.
public struct DestinationRecord: Sendable, Equatable {
    public var listening: Bool
    public var proto: String
    public var address: String
    public var port: Int
    public var firstSeen: Date
    public var lastSeen: Date
    public var reports: Int

    public init(
        listening: Bool, proto: String, address: String, port: Int, firstSeen: Date, lastSeen: Date, reports: Int
    ) {
        self.listening = listening
        self.proto = proto
        self.address = address
        self.port = port
        self.firstSeen = firstSeen
        self.lastSeen = lastSeen
        self.reports = reports
    }
}

/// A certificate the hub issued. `subject` is the identity URI; `deviceID` is set for device certificates.
public struct CertificateRecord: Sendable, Equatable {
    public var serialHex: String
    public var subject: String
    public var deviceID: DeviceID?
    public var spkiSHA256Hex: String
    public var notBefore: Date
    public var notAfter: Date
    public var revokedAt: Date?
    public var der: [UInt8]

    public init(
        serialHex: String, subject: String, deviceID: DeviceID?, spkiSHA256Hex: String, notBefore: Date,
        notAfter: Date, revokedAt: Date? = nil, der: [UInt8]
    ) {
        self.serialHex = serialHex
        self.subject = subject
        self.deviceID = deviceID
        self.spkiSHA256Hex = spkiSHA256Hex
        self.notBefore = notBefore
        self.notAfter = notAfter
        self.revokedAt = revokedAt
        self.der = der
    }
}

/// A revoked certificate as the CRL lists it (RFC 5280 §5.1.2.6): its serial, when it was revoked, until when it is
/// valid (an entry may leave the CRL once the certificate has expired), and its device, nil for a certificate issued
/// by pairing and never confirmed.
public struct RevokedCertificate: Sendable, Equatable {
    public var serialHex: String
    public var revokedAt: Date
    public var notAfter: Date
    public var deviceID: DeviceID?

    public init(serialHex: String, revokedAt: Date, notAfter: Date, deviceID: DeviceID?) {
        self.serialHex = serialHex
        self.revokedAt = revokedAt
        self.notAfter = notAfter
        self.deviceID = deviceID
    }
}

/// A message to store. The public initializer calls the synthesized memberwise one, which is why `body` is stored
/// first: its labels then differ from the public one's. An initializer that assigns a struct's `var` properties one by
/// one built the record in a temporary and copied it out, retaining and releasing each reference once more, for every
/// message (`scripts/count-references`); the memberwise one builds it in place (Swift 6.3, -O).
public struct NewTelemetry: Sendable {
    public var body: [UInt8]
    public var deviceID: DeviceID
    public var receivedAt: Date
    public var correlationID: String
    /// The message type whose schema the gateway checked (so consumers know which contract the body meets).
    public var messageType: String?
    /// The request nonce to remember (HTTP), stored in the same transaction as the message.
    public var nonce: StoredNonce?
    /// The device's counter window after this message (MQTT), stored in the same transaction.
    public var counterWindow: StoredCounterWindow?
    /// The message's MQTT counter. With it, the store accepts the counter into the device's stored window in the
    /// message's transaction (and stores that window): a counter the stored window already holds, or one too old
    /// for it, is refused with `replayed` and nothing is stored. This is what refuses, across hub nodes, a message
    /// replayed to a node whose in-memory window has not seen it; `counterWindow` is then not used.
    public var counter: UInt64?
    /// The MQTT message to hand to the other hub nodes, in the message's own transaction (a store of several nodes:
    /// a message acknowledged here reaches their subscribers even if this node dies the next moment).
    public var relay: RelayedMessage?
}

extension NewTelemetry {
    public init(
        deviceID: DeviceID, receivedAt: Date, correlationID: String, body: [UInt8], nonce: StoredNonce? = nil,
        counterWindow: StoredCounterWindow? = nil, counter: UInt64? = nil, messageType: String? = nil,
        relay: RelayedMessage? = nil
    ) {
        self.init(
            body: body, deviceID: deviceID, receivedAt: receivedAt, correlationID: correlationID,
            messageType: messageType, nonce: nonce, counterWindow: counterWindow, counter: counter, relay: relay)
    }
}

/// A stored message, read back. Its public initializer calls the memberwise one, `body` stored first, as
/// `NewTelemetry`'s does: one record made for every message of every page read.
public struct TelemetryRecord: Sendable, Equatable {
    public var body: [UInt8]
    /// Unique in the store, and increasing with the order a device's messages were queued. Across devices ids follow
    /// batches, not arrival: the SQLite store numbers each batch's messages device by device (one row each).
    public var id: Int64
    public var deviceID: DeviceID
    public var receivedAt: Date
    public var correlationID: String
    /// The message type whose schema the gateway checked, as it was stored (`NewTelemetry.messageType`).
    public var messageType: String?
}

extension TelemetryRecord {
    public init(
        id: Int64, deviceID: DeviceID, receivedAt: Date, correlationID: String, body: [UInt8],
        messageType: String? = nil
    ) {
        self.init(
            body: body, id: id, deviceID: deviceID, receivedAt: receivedAt, correlationID: correlationID,
            messageType: messageType)
    }
}

/// A refusal or an operator action worth an operator's attention. `detail` holds what the client never sees.
/// What a device last reported about its updates (`devices/<id>/events/update`): the release it runs (committed),
/// its slot and anti-rollback floor, and the last step with the release it concerned and why.
/// How a backend reads one page of the fleet overview, the same for SQLite and PostgreSQL: a page past the middle is
/// read from the other end, in the opposite order, and reversed (a database keeps offset + limit rows while it
/// sorts, so the last page would cost a sort of every device). The order is total (ties by id), so the reversal is
/// exact.
public struct DevicePagePlan: Sendable, Equatable {
    public let limit: Int
    /// The offset to read from, counted from whichever end `fromEnd` says.
    public let offset: Int
    public let fromEnd: Bool
    /// The order to read in (the query's, flipped when reading from the end).
    public let descending: Bool
    /// The devices column the query sorts by.
    public let sortColumn: String

    /// Nil when the page is empty.
    public init?(_ query: DeviceQuery, total: Int) {
        let offset = max(0, query.offset)
        let limit = max(0, min(query.limit, total - offset))
        guard limit > 0 else { return nil }
        fromEnd = offset > total - offset - limit
        descending = query.descending != fromEnd
        self.limit = limit
        self.offset = fromEnd ? total - offset - limit : offset
        sortColumn =
            switch query.sort {
            case .id: "d.id"
            case .status: "d.status"
            case .lastSeen: "d.last_seen"
            case .expiry: "d.cert_not_after"
            }
    }
}

/// What the fleet overview asks for: a filter, an order and a page.
public struct DeviceQuery: Sendable, Equatable {
    public enum Sort: String, Sendable, CaseIterable { case id, status, lastSeen, expiry }
    /// Devices whose id contains this text (case-insensitive); nil or empty: all.
    public var search: String?
    public var status: DeviceStatus?
    public var sort = Sort.id
    public var descending = false
    public var offset = 0
    public var limit = 50

    public init() {}
}

/// One row of the fleet overview. The last time the hub stored a message from the device stands for "last seen".
public struct DeviceOverview: Sendable, Equatable {
    public var id: DeviceID
    public var status: DeviceStatus
    public var deviceClass: String?
    public var installedVersion: String?
    public var lastStep: String?
    /// Unix seconds; nil when not quarantined (the caller compares with now).
    public var quarantinedUntil: Int64?
    /// The latest end of the device's unrevoked certificates.
    public var certificateNotAfter: Date?
    public var lastSeen: Date?

    public init(id: DeviceID, status: DeviceStatus) {
        self.id = id
        self.status = status
    }
}

/// Fleet-wide counts for monitoring: what `/metrics` reports from the store at each scrape.
public struct FleetSummary: Sendable, Equatable {
    public var activeDevices = 0
    public var revokedDevices = 0
    /// Active devices whose newest unrevoked certificate is still valid at `now` and ends before `expiringBefore`
    /// (a certificate replaced by a renewal, in its grace period, does not count).
    public var certificatesExpiring = 0
    /// Records in the audit log (its head's sequence number).
    public var auditRecords: Int64 = 0
    /// Devices per last reported update step (`committed`, `rolled-back`, …).
    public var updateSteps: [String: Int] = [:]

    public init() {}
}

public struct DeviceUpdateState: Sendable, Equatable {
    public var deviceID: DeviceID
    /// The committed release's target path and version (nil before the first commit).
    public var installedTarget: String?
    public var installedVersion: String?
    public var slot: String?
    public var floor: Int
    /// `checking`, `downloading`, `installed`, `trial`, `committed`, `rolled-back`, `refused`, `slot-tampered`.
    public var lastStep: String
    public var stepTarget: String?
    public var reason: String?
    /// The device's report sequence: an older report (resent, or stored late) never overwrites a newer one.
    public var sequence: Int64
    public var updatedAt: Date

    public init(
        deviceID: DeviceID, installedTarget: String?, installedVersion: String?, slot: String?, floor: Int,
        lastStep: String, stepTarget: String?, reason: String?, sequence: Int64 = 0, updatedAt: Date
    ) {
        self.sequence = sequence
        self.deviceID = deviceID
        self.installedTarget = installedTarget
        self.installedVersion = installedVersion
        self.slot = slot
        self.floor = floor
        self.lastStep = lastStep
        self.stepTarget = stepTarget
        self.reason = reason
        self.updatedAt = updatedAt
    }
}

public struct SecurityEvent: Sendable, Equatable {
    public var id: Int64?
    public var at: Date
    public var kind: String
    public var identity: String?
    public var source: String?
    public var correlationID: String?
    public var detail: String

    public init(
        id: Int64? = nil, at: Date, kind: String, identity: String? = nil, source: String? = nil,
        correlationID: String? = nil, detail: String
    ) {
        self.id = id
        self.at = at
        self.kind = kind
        self.identity = identity
        self.source = source
        self.correlationID = correlationID
        self.detail = detail
    }
}

public struct StoreError: Error, Equatable, CustomStringConvertible {
    /// `replayed`: the message's nonce or counter is already stored (another hub node took it first); nothing was
    /// stored.
    public enum Code: String, Sendable { case notFound, conflict, unavailable, invalid, replayed }
    public let code: Code
    public let detail: String
    public init(_ code: Code, _ detail: String) {
        self.code = code
        self.detail = detail
    }
    public static func == (lhs: StoreError, rhs: StoreError) -> Bool { lhs.code == rhs.code }
    public var description: String { "\(code.rawValue): \(detail)" }
}

/// A release that went through the vulnerability gate (`POST /v1/releases/gate`): the target it will be published
/// as, its SBOM and VEX as submitted, and the gate's report (canonical JSON). `advisories rescan` re-matches these.
public struct ReleaseRecord: Sendable, Equatable {
    /// The TUF target path and the SHA-256 of its bytes: what devices report running.
    public var target: String
    public var sha256: String
    public var version: String
    public var securityVersion: Int
    public var sbom: [UInt8]
    public var vex: [UInt8]?
    public var report: [UInt8]
    public var reportSHA256: String
    public var blocked: Bool
    public var at: Date
    /// The operator who submitted it.
    public var by: String

    public init(
        target: String, sha256: String, version: String, securityVersion: Int, sbom: [UInt8], vex: [UInt8]?,
        report: [UInt8], reportSHA256: String, blocked: Bool, at: Date, by: String
    ) {
        self.target = target
        self.sha256 = sha256
        self.version = version
        self.securityVersion = securityVersion
        self.sbom = sbom
        self.vex = vex
        self.report = report
        self.reportSHA256 = reportSHA256
        self.blocked = blocked
        self.at = at
        self.by = by
    }
}

/// An MQTT message on its way from the node that admitted it to the subscribers of the other nodes.
public struct RelayedMessage: Sendable, Equatable {
    /// The node that admitted it (and delivered it to its own subscribers): the others deliver it.
    public var origin: String
    /// The publishing session's key (its retained messages are counted per publisher).
    public var publisher: String?
    /// The PUBLISH as MQTT 5 encodes it: topic, payload, QoS, RETAIN and the properties subscribers receive
    /// (after the hub's envelope placing it among the nodes' shared subscriptions, when it has one).
    public var packet: [UInt8]
    /// When the origin handed it on (read back from the store): a message's expiry counts from there.
    public var at: Date?

    public init(origin: String, publisher: String?, packet: [UInt8], at: Date? = nil) {
        self.origin = origin
        self.publisher = publisher
        self.packet = packet
        self.at = at
    }
}

/// A pending pairing claim: the operator entered the device's label and it waits for the device, on whichever hub
/// node it reaches. The label (it holds the setup secret) is sealed by the hub before it is stored.
public struct StoredClaim: Sendable, Equatable {
    public var device: DeviceID
    /// The pairing suite's name (the dashboard shows it without unsealing the label).
    public var suite: String
    public var sealedLabel: [UInt8]
    public var expires: Date

    public init(device: DeviceID, suite: String, sealedLabel: [UInt8], expires: Date) {
        self.device = device
        self.suite = suite
        self.sealedLabel = sealedLabel
        self.expires = expires
    }
}

/// A device's failed pairing attempts (each after the peer proved the device's key), counted on every node.
public struct PairingFailures: Sendable, Equatable {
    public var count: Int
    public var last: Date

    public init(count: Int, last: Date) {
        self.count = count
        self.last = last
    }
}

/// An MQTT session kept for a client that may come back (MQTT 5.0 §4.1, MQTT 3.1.1 §4.1): in the store so it
/// survives a restart of the hub and follows its client to another hub node. One node holds it in memory at a time
/// (`holder`, that node's run); the others ask that node to hand it over (`requestMQTTSession`).
public struct StoredMQTTSession: Sendable, Equatable {
    /// The identity and client id (`MQTTBroker`'s session key).
    public var key: String
    /// The identity (certificate URI) that holds the session.
    public var owner: String
    public var expirySeconds: Int
    /// When its client went away; nil while one is connected.
    public var disconnectedAt: Date?
    /// Subscriptions, unacknowledged and queued deliveries, QoS 2 ids awaiting PUBREL: `MQTT.SessionSnapshot`.
    public var state: [UInt8]
    /// When `state` was taken (Message Expiry Intervals count on from it).
    public var savedAt: Date

    public init(
        key: String, owner: String, expirySeconds: Int, disconnectedAt: Date?, state: [UInt8], savedAt: Date
    ) {
        self.key = key
        self.owner = owner
        self.expirySeconds = expirySeconds
        self.disconnectedAt = disconnectedAt
        self.state = state
        self.savedAt = savedAt
    }
}

/// One session's change for `HubStore.saveMQTTSessions`: the session to save, or (nil) the session with `key` to
/// remove.
public struct MQTTSessionChange: Sendable, Equatable {
    public var key: String
    public var session: StoredMQTTSession?
    /// The session's row was stored and held by the saving node when it last knew (it took the session up, or
    /// saved it, and has not removed it since): the save only updates that row. A row gone meanwhile was removed by
    /// another node, which took the session (from a node that did not answer in time) and ended it: nothing is
    /// written and the key is returned as held, so a stale copy never brings back a session its client ended
    /// elsewhere.
    public var stored: Bool

    /// Changes the hub writes in one transaction, at most: a broadcast to a large fleet, or a fleet reconnecting at
    /// once, is a few commits, each short enough not to hold up the telemetry commits waiting behind it.
    public static let perTransaction = 500
    /// Bytes of session state the hub writes in one transaction, at most (beyond one session): a session's state
    /// holds its queue, up to a thousand messages of up to 16 MiB each under `mqtt.payloads`. As a telemetry batch's
    /// bound (32 MiB), a quarter of it.
    public static let bytesPerTransaction = 8 << 20

    public init(key: String, session: StoredMQTTSession?, stored: Bool = false) {
        self.key = key
        self.session = session
        self.stored = stored
    }
}

/// A topic's retained message (MQTT 5.0 §3.3.1.3), kept in the store so it survives a restart of every node.
public struct StoredRetainedMessage: Sendable, Equatable {
    public var topic: String
    /// The session that published it (the per-publisher bound counts it).
    public var owner: String
    /// The message as `MQTT.OutboundMessage.stored(now:)` encodes it.
    public var message: [UInt8]
    public var savedAt: Date

    public init(topic: String, owner: String, message: [UInt8], savedAt: Date) {
        self.topic = topic
        self.owner = owner
        self.message = message
        self.savedAt = savedAt
    }
}

/// The TLS pins one node's data directory holds (`pin-sha256` of its key in use, then of its backup key), by the id
/// in its `DATA/node.id`. Each node has keys of its own: pairing hands a device the pins of every node, and
/// `bulwark hub publish-pins` publishes them all, so a device trusts whichever node it reaches.
public struct NodePinsRecord: Sendable, Equatable {
    public var node: String
    /// `cluster.nodeName` when it was recorded (for the operator: the id is what counts).
    public var name: String
    public var pins: [[UInt8]]
    public var updatedAt: Date
    /// HMAC-SHA256 of the node, name and pins under a key derived from the audit key (`ClusterPins`): the database
    /// never holds that key, so a row it was given by anyone else does not verify.
    public var mac: [UInt8]

    public init(node: String, name: String, pins: [[UInt8]], updatedAt: Date, mac: [UInt8] = []) {
        self.node = node
        self.name = name
        self.pins = pins
        self.updatedAt = updatedAt
        self.mac = mac
    }

    /// The pins as stored: base64, space-separated.
    public var encodedPins: String { pins.map { Data($0).base64EncodedString() }.joined(separator: " ") }

    public static func decodePins(_ text: String) -> [[UInt8]] {
        text.split(separator: " ").compactMap { Data(base64Encoded: String($0)).map { [UInt8]($0) } }
    }
}

/// A hub node's run as it describes itself in its heartbeat (`bulwark node list`).
public struct HubNodeRecord: Sendable, Equatable {
    /// This run's id (the holder recorded with its MQTT sessions); a restarted node is a new run.
    public var holder: String
    /// `cluster.nodeName`, by default the machine's host name.
    public var name: String
    /// The listeners' addresses, `device=HOST:PORT mqtt=HOST:PORT …`.
    public var addresses: String
    public var version: String
    public var startedAt: Date
    /// Its shared MQTT subscriptions, as it encodes them (the others place their messages among them).
    public var shares: String

    public init(
        holder: String, name: String, addresses: String, version: String, startedAt: Date, shares: String = ""
    ) {
        self.holder = holder
        self.name = name
        self.addresses = addresses
        self.version = version
        self.startedAt = startedAt
        self.shares = shares
    }
}

/// A node as the store last heard from it.
public struct HubNodeStatus: Sendable, Equatable {
    public var node: HubNodeRecord
    /// Its last heartbeat, by the store's clock (the database server's, with several nodes).
    public var lastSeen: Date
    /// Seconds since then, by the same clock.
    public var silentSeconds: Double
    /// It stopped cleanly (it said so as it stopped).
    public var stopped: Bool

    public init(node: HubNodeRecord, lastSeen: Date, silentSeconds: Double, stopped: Bool) {
        self.node = node
        self.lastSeen = lastSeen
        self.silentSeconds = silentSeconds
        self.stopped = stopped
    }
}
