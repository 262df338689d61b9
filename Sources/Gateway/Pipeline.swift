public import Core
public import Crypto
import JSON
import Synchronization

/// Configuration of the gateway pipeline. Defaults suit a sensor fleet; the hub reads them from its configuration.
public struct GatewayPolicy: Sendable {
    /// New connections per source address, checked before any TLS work.
    public var connectionsPerSource = RateLimit(rate: 20, burst: 40)
    /// Messages per source address (many devices behind one NAT share it).
    public var messagesPerSource = RateLimit(rate: 1000, burst: 2000)
    /// Messages per device, all routes together.
    public var messagesPerDevice = RateLimit(rate: 10, burst: 20)
    /// Messages per device and route (or topic class).
    public var messagesPerRoute = RateLimit(rate: 10, burst: 20)
    /// Routes with a limit of their own instead of `messagesPerRoute`: update downloads come in bursts (a TUF refresh,
    /// then the target, resumed by ranges).
    /// Renewals are rare (each re-signs the CRL when it supersedes one): three at once, then one every ten minutes.
    public var routeLimits: [String: RateLimit] = [
        "updates": RateLimit(rate: 20, burst: 60), "certificate": RateLimit(rate: 1.0 / 600, burst: 3),
    ]
    public var maxBodyBytes = 64 * 1024
    public var json = StrictJSON()
    public var signatures = MessageSignatureProfile()
    public var quarantine = QuarantinePolicy()
    /// Routes (or topic classes) a device may send to.
    public var deviceRoutes: Set<String> = [
        "telemetry", "device", "events", "state", "certificate", "updates", "session",
    ]
    /// The message type used when a message names none.
    public var defaultMessageType = "telemetry"
    /// Refuse message types that have no registered schema (the default type is always allowed).
    public var requireSchema = false

    public init() {}
}

/// Time as the pipeline sees it: a monotonic clock for rate limits and the wall clock for signatures, nonces and
/// quarantines (which must mean the same after a restart).
public struct GatewayTime: Sendable {
    public var monotonicNanos: Int64
    public var unixSeconds: Int64
    public init(monotonicNanos: Int64, unixSeconds: Int64) {
        self.monotonicNanos = monotonicNanos
        self.unixSeconds = unixSeconds
    }
}

/// How a message reached the gateway, with what that protocol adds for replay protection.
public enum Transport: Sendable {
    /// An HTTP request, signed per RFC 9421 (or not, which is refused), and the certificate's public key.
    case http(SignedRequest, key: P256.Signing.PublicKey?)
    /// An MQTT PUBLISH, with the device's counter when it sent one.
    case mqtt(counter: UInt64?)
}

/// One message as the I/O layer hands it over. `identity` comes from the client certificate, never the message.
///
/// The two public initializers call the synthesized memberwise one, which is why `payload` and `declaredText` are
/// stored first: its labels then differ from theirs. An initializer that assigns a struct's `var` properties one by
/// one built the message in a temporary and copied it out, retaining and releasing each of its references once more
/// (5 reference-count operations per message, `scripts/count-references`); the memberwise one builds it in place
/// (Swift 6.3, -O).
public struct InboundMessage: Sendable {
    /// What the payload must be (MQTT: the `mqtt.payloads` rule its topic matched; HTTP: always JSON).
    public var payload: PayloadCheck
    /// The sender declared the payload UTF-8 text (an MQTT 5 Payload Format Indicator of 1, §3.3.2.3.2): it is
    /// checked as such whatever the format.
    public var declaredText: Bool
    public var identity: Identity
    public var route: String
    public var source: String
    public var contentType: String?
    public var messageType: String?
    public var body: [UInt8]
    public var transport: Transport
    /// The device's interned key (`GatewayPipeline.deviceKeys`), set once per connection when the certificate names
    /// a device; nil makes the pipeline intern the id itself (a `String` hash).
    public var deviceKey: DeviceKey?
    /// `source` as a fixed-width key, set by the hub from the socket address; nil makes the pipeline derive it from
    /// the text.
    public var sourceAddress: SourceAddress?
    /// The source's pinned cell in the pipeline's `sourceLimiter` (`pinSource`), kept by the caller for its
    /// connection; nil makes the pipeline decide by the source's key, under its stripe's lock.
    public var sourceCell: RateLimiterTable<SourceAddress>.Cell?
    /// The schema look-up a connection keeps for its topic's message type (`schemaHint(for:)`), used while no schema
    /// has been registered since it was made; nil makes the pipeline look the schema up under its lock.
    public var schemaHint: GatewayPipeline.SchemaHint?
}

extension InboundMessage {
    public init(
        identity: Identity, route: String, source: String, contentType: String?, messageType: String?,
        body: [UInt8], transport: Transport
    ) {
        self.init(
            payload: .json, declaredText: false, identity: identity, route: route, source: source,
            contentType: contentType, messageType: messageType, body: body, transport: transport)
    }

    /// Every field at once (MQTT): a message built whole, not changed field by field after it is made.
    public init(
        identity: Identity, route: String, source: String, contentType: String?, messageType: String?,
        body: [UInt8], transport: Transport, payload: PayloadCheck, declaredText: Bool, deviceKey: DeviceKey?,
        sourceAddress: SourceAddress?, sourceCell: RateLimiterTable<SourceAddress>.Cell? = nil,
        schemaHint: GatewayPipeline.SchemaHint? = nil
    ) {
        self.init(
            payload: payload, declaredText: declaredText, identity: identity, route: route, source: source,
            contentType: contentType, messageType: messageType, body: body, transport: transport,
            deviceKey: deviceKey, sourceAddress: sourceAddress, sourceCell: sourceCell, schemaHint: schemaHint)
    }
}

/// The pipeline's stages, in order (the first, connection limiting, runs before TLS in `admitConnection`).
public enum Stage: String, Sendable, CaseIterable {
    case connection, identity, quarantine, authorization
    case rateLimit = "rate-limit"
    case size, format, json, schema, replay
}

/// A refusal: the problem for the client, the detail for operators, and what the hub should record.
///
/// Its public initializer calls the memberwise one, `detail` stored first so that their labels differ, as
/// `InboundMessage`'s does: one refusal is made for every message a flood sends.
public struct Refusal: Error, Sendable, CustomStringConvertible {
    /// Operator-only detail: which field, which limit. Never sent to the client; never contains the body.
    public let detail: String
    public let problem: Problem
    public let stage: Stage
    public var retryAfterSeconds: Int?
    /// The limit that tripped (for the RateLimit-Policy / RateLimit headers).
    public var limit: (name: String, limit: RateLimit)?
    /// The audit record kind to append, or nil when this refusal need not be recorded individually (repeated rate
    /// limit trips within a minute are counted, not each written: a flood must not become a disk flood).
    /// A constant, so that the memberwise initializer (which this module could call) has no default for it: a refusal
    /// made without saying whether it is audited would not compile.
    public let auditKind: String?
    /// Set when this refusal put the device in quarantine (until then, Unix seconds).
    public let quarantinedUntil: Int64?

    public var description: String { "\(stage.rawValue): \(problem.slug): \(detail)" }
}

extension Refusal {
    public init(
        problem: Problem, stage: Stage, detail: String, retryAfterSeconds: Int? = nil,
        limit: (name: String, limit: RateLimit)? = nil, auditKind: String?, quarantinedUntil: Int64? = nil
    ) {
        self.init(
            detail: detail, problem: problem, stage: stage, retryAfterSeconds: retryAfterSeconds, limit: limit,
            auditKind: auditKind, quarantinedUntil: quarantinedUntil)
    }
}

/// What an admitted message carries on to the store.
/// A nonce the ledger accepted for a request, and until when it is kept.
public struct ClaimedNonce: Sendable {
    public let value: String
    public let expiresAt: Int64
    /// Whether the store must keep it with the message. Not for a session-signed request: its key lives only in this
    /// process's memory and dies with the connection, so after a restart no copy of the request can verify again,
    /// and writing a random key into the nonce index for every request would only cost the store.
    public let durable: Bool
}

public struct Admitted: Sendable {
    public let device: DeviceID
    public let messageType: String
    /// The body as the parser read it (a tape over the bytes); nil for a `utf8` or `binary` payload.
    public let document: JSONDocument?
    /// The nonce the ledger accepted (to persist with the message when `durable`, and to give back if the message
    /// cannot be stored).
    public let nonce: ClaimedNonce?
    /// The counter window to persist with the message.
    public let counterWindow: CounterWindow?
    /// The MQTT counter this message claimed in the window (to give back if it cannot be stored).
    public var counter: UInt64? = nil
}

/// The one admission pipeline for every device-facing protocol (HTTP now, MQTT too). Pure: it decides, the hub does
/// the I/O. Each stage is a method so the benchmark can time it; `admit` runs them in the documented order:
/// identity → quarantine → authorization → rate limits → size and content type → strict JSON → schema → replay.
public final class GatewayPipeline: Sendable {
    public let policy: GatewayPolicy
    public let connectionLimiter: RateLimiterTable<String>
    public let sourceLimiter: RateLimiterTable<SourceAddress>
    /// Devices interned to dense keys, so the per-device limits index arrays.
    public let deviceKeys = DeviceKeys()
    public let deviceLimiter: DenseRateTable
    /// Device × route, for the routes without their own limit: slot `key × sharedRoutes + slot of the route`.
    public let routeLimiter: DenseRateTable
    /// The routes rate limits and authorization know, in a fixed order (compared, not hashed: there are a few).
    let routes: [String]
    /// Per position in `routes`, plus one last for a route not listed: whether devices may use it, and its limit.
    let routeRules: [RouteRules]
    let sharedRoutes: Int

    struct RouteRules: Sendable {
        enum Limit: Sendable {
            /// The route's own limit, replacing the shared one.
            case own(DenseRateTable)
            /// Its slot in the shared device × route table.
            case shared(slot: Int)
        }
        let open: Bool
        let limit: Limit
    }
    public let nonces: NonceLedger
    public let counters = CounterWindows()
    public let quarantine: QuarantineBook
    private let schemas = Locked(SchemaTable())
    /// Raised, under `schemas`' lock, each time a schema is registered: a `SchemaHint` made before is not used.
    private let schemaGeneration = Atomic(0)
    /// What a `SchemaHint` holds to name this pipeline (its address cannot be another pipeline's meanwhile).
    private let hintOwner = Owner()

    /// A message type's schema as the pipeline's table held it at `generation`: a connection keeps one for its
    /// topic and hands it with each message, so that the schema stage takes no lock while no schema is registered
    /// (both event loops took it for every message: a third of the hub's `futex` calls under a QoS 0 load once the
    /// rate tables', the telemetry queue's and the quarantine's had gone, 2026-12-07).
    public final class SchemaHint: Sendable {
        public let messageType: String
        public let generation: Int
        let registered: (schema: JSONSchema, valid: Bool)?
        let owner: Owner

        init(messageType: String, generation: Int, registered: (schema: JSONSchema, valid: Bool)?, owner: Owner) {
            self.messageType = messageType
            self.generation = generation
            self.registered = registered
            self.owner = owner
        }
    }

    /// A hint for `messageType` (nil: the policy's default type), or `current` when no schema was registered since
    /// it was made.
    public func schemaHint(for messageType: String?, current: SchemaHint?) -> SchemaHint {
        let name = messageType ?? policy.defaultMessageType
        let generation = schemaGeneration.load(ordering: .acquiring)
        if let current, current.owner === hintOwner, current.messageType == name, current.generation == generation {
            return current
        }
        return schemas.withLock { table in
            SchemaHint(
                messageType: name, generation: schemaGeneration.load(ordering: .relaxed), registered: table[name],
                owner: hintOwner)
        }
    }

    /// The registered schemas by message type. A hub registers a handful, so a look-up compares names in a list
    /// (a short name compares as two words) instead of hashing the name, and a name found in it was checked when it
    /// was registered: together a tenth of the schema stage per message in a profile. Beyond `listed` names it
    /// hashes.
    struct SchemaTable {
        static let listed = 16
        private var list: [(name: String, schema: JSONSchema, valid: Bool)] = []
        private var byName: [String: (schema: JSONSchema, valid: Bool)] = [:]

        subscript(name: String) -> (schema: JSONSchema, valid: Bool)? {
            get {
                guard byName.count <= Self.listed else { return byName[name] }
                for entry in list where entry.name == name { return (entry.schema, entry.valid) }
                return nil
            }
        }

        mutating func set(_ schema: JSONSchema, for name: String) {
            let entry = (schema, GatewayPipeline.isValidMessageType(name))
            byName[name] = entry
            if let index = list.firstIndex(where: { $0.name == name }) {
                list[index] = (name, entry.0, entry.1)
            } else if byName.count <= Self.listed {
                list.append((name, entry.0, entry.1))
            }
        }
    }

    public init(policy: GatewayPolicy = GatewayPolicy()) {
        self.policy = policy
        connectionLimiter = RateLimiterTable(limit: policy.connectionsPerSource)
        sourceLimiter = RateLimiterTable(limit: policy.messagesPerSource)
        deviceLimiter = DenseRateTable(limit: policy.messagesPerDevice)
        routeLimiter = DenseRateTable(limit: policy.messagesPerRoute)
        routes = policy.deviceRoutes.union(policy.routeLimits.keys).sorted()
        var rules: [RouteRules] = []
        var shared = 0
        for route in routes + [nil] {
            let open = route.map { policy.deviceRoutes.contains($0) } ?? false
            if let route, let own = policy.routeLimits[route] {
                rules.append(RouteRules(open: open, limit: .own(DenseRateTable(limit: own))))
            } else {
                rules.append(RouteRules(open: open, limit: .shared(slot: shared)))
                shared += 1
            }
        }
        routeRules = rules
        sharedRoutes = shared
        // Each device can hold at most (burst + rate × retention) live nonces, since every one came with an admitted
        // request; the whole ledger is capped at 4 million entries (about 400 MB at most).
        let retention = 2 * policy.signatures.maxSkewSeconds + 1
        let perDevice =
            policy.messagesPerDevice.burst
            + Int((policy.messagesPerDevice.rate * Double(retention)).rounded(.up)) + 16
        nonces = NonceLedger(retentionSeconds: retention, capacity: 4_000_000, perDeviceCapacity: perDevice)
        quarantine = QuarantineBook(policy: policy.quarantine)
    }

    // MARK: Schemas

    public func setSchema(_ schema: JSONSchema, for messageType: String) {
        schemas.withLock { table in
            table.set(schema, for: messageType)
            schemaGeneration.add(1, ordering: .releasing)
        }
    }

    public func schema(for messageType: String) -> JSONSchema? { schemas.withLock { $0[messageType]?.schema } }

    /// Message type names: 1–64 characters of `[a-z0-9._-]`, so they can double as topic levels.
    public static func isValidMessageType(_ name: String) -> Bool {
        (1...64).contains(name.utf8.count)
            && name.utf8.allSatisfy {
                (UInt8(ascii: "a")...UInt8(ascii: "z")).contains($0)
                    || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0)
                    || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "-")
            }
    }

    // MARK: Stage 1: connections

    /// Runs when a TCP connection is accepted, before the TLS handshake: per-source connection rate.
    public func admitConnection(source: String, now: GatewayTime) -> Refusal? {
        if case .deny(let wait) = connectionLimiter.decide(source, now: now.monotonicNanos) {
            return Refusal(
                problem: .tooManyRequests, stage: .connection,
                detail: "connection rate from \(source) over \(policy.connectionsPerSource)",
                retryAfterSeconds: Self.seconds(wait), limit: ("connections", policy.connectionsPerSource),
                auditKind: nil)
        }
        return nil
    }

    // MARK: The message stages

    public func admit(_ message: InboundMessage, now: GatewayTime) -> Result<Admitted, Refusal> {
        admitEnvelope(message, now: now).flatMap { admitContent($0, message, now: now) }
    }

    /// The stages that need no body: identity, quarantine, authorization, rate limits. An HTTP request runs these
    /// before its body is read, so a quarantined or flooding device costs no body buffering.
    public func admitEnvelope(_ message: InboundMessage, now: GatewayTime) -> Result<DeviceID, Refusal> {
        do {
            let device = try checkIdentity(message)
            try checkQuarantine(device, now: now)
            try checkAuthorization(device, message)
            try checkRateLimits(device, message, now: now)
            return .success(device)
        } catch {
            return .failure(error)
        }
    }

    /// The stages over the body: size and content type, the payload's format (text), strict JSON, schema, replay.
    /// A `utf8` or `binary` payload (an `mqtt.payloads` rule) has no JSON or schema stage: its message type is
    /// only checked as a name, and its counter can only come from the transport.
    public func admitContent(_ device: DeviceID, _ message: InboundMessage, now: GatewayTime) -> Result<
        Admitted, Refusal
    > {
        do {
            try checkSizeAndType(device, message, now: now)
            try checkFormat(device, message, now: now)
            let document: JSONDocument?
            let messageType: String
            // MQTT: the counter from the transport, or from the payload's `$counter` member (the message itself is
            // not copied to carry it).
            var counter: UInt64? = nil
            if case .mqtt(let property) = message.transport { counter = property }
            if message.payload.format == .json {
                let parsed = try parse(device, message, now: now)
                let (taken, counterMember) = try takeCounter(device, message, parsed, now: now)
                counter = taken
                messageType = try checkSchema(device, message, parsed, skipping: counterMember, now: now)
                document = parsed
            } else {
                messageType = try checkMessageType(device, message, now: now)
                document = nil
            }
            let (nonce, window) =
                if case .mqtt = message.transport {
                    try checkCounter(device, counter, now: now)
                } else {
                    try checkReplay(device, message, now: now)
                }
            var admitted = Admitted(
                device: device, messageType: messageType, document: document, nonce: nonce, counterWindow: window)
            if window != nil { admitted.counter = counter }
            return .success(admitted)
        } catch {
            return .failure(error)
        }
    }

    /// A request the HTTP layer could not frame (a malformed chunk, a transfer coding other than chunked): counted
    /// toward the device's invalid-message quarantine like an invalid body.
    public func malformedRequest(_ device: DeviceID, problem: Problem, detail: String, now: GatewayTime) -> Refusal {
        offence(.invalidMessage, device, now: now, problem: problem, stage: .size, detail: detail)
    }

    /// A message whose nonce or counter the store refused as already stored: another hub node admitted it first
    /// (each node's replay check is in memory; the database is the one check they share). Counted as a replay.
    public func replayedElsewhere(_ device: DeviceID, detail: String, now: GatewayTime) -> Refusal {
        offence(.replay, device, now: now, problem: .unauthenticated, stage: .replay, detail: detail)
    }

    /// An egress violation the agent's connection report showed: counted toward quarantine only when the policy
    /// has a threshold for it. Returns when the device was quarantined by it.
    public func egressViolation(_ device: DeviceID, now: GatewayTime) -> Int64? {
        guard policy.quarantine.thresholds[.egress] != nil else { return nil }
        return quarantine.record(.egress, device: device, now: now.unixSeconds).quarantinedUntil
    }

    /// The size stage for a body refused while it was still arriving (it is never buffered whole).
    public func oversized(_ device: DeviceID, now: GatewayTime) -> Refusal {
        offence(
            .invalidMessage, device, now: now, problem: .payloadTooLarge, stage: .size,
            detail: "body exceeds \(policy.maxBodyBytes) bytes")
    }

    public func checkIdentity(_ message: InboundMessage) throws(Refusal) -> DeviceID {
        guard let device = message.identity.deviceID else {
            throw Refusal(
                problem: .forbidden, stage: .identity, detail: "\(message.identity) is not a device",
                auditKind: "access-denied")
        }
        return device
    }

    /// A quarantined device gets the generic 403 and no further work (not even an audit record per request).
    public func checkQuarantine(_ device: DeviceID, now: GatewayTime) throws(Refusal) {
        if quarantine.isQuarantined(device, now: now.unixSeconds) {
            throw Refusal(problem: .forbidden, stage: .quarantine, detail: "device is quarantined", auditKind: nil)
        }
    }

    public func checkAuthorization(_ device: DeviceID, _ message: InboundMessage) throws(Refusal) {
        guard routeRules[routeIndex(message.route)].open else {
            throw Refusal(
                problem: .forbidden, stage: .authorization, detail: "route \(message.route) is not open to devices",
                auditKind: "access-denied")
        }
    }

    /// The device's own limits first, so a flooding device is stopped before it spends its neighbours' shared
    /// source budget; a refusal by the source limit is not counted against the device (many devices share a NAT).
    public func checkRateLimits(_ device: DeviceID, _ message: InboundMessage, now: GatewayTime) throws(Refusal) {
        let key = Int(deviceKey(device, message).rawValue)
        if case .deny(let wait) = deviceLimiter.decide(key, now: now.monotonicNanos) {
            throw rateLimited(device, "device", policy.messagesPerDevice, wait, now)
        }
        switch routeRules[routeIndex(message.route)].limit {
        case .own(let own):
            if case .deny(let wait) = own.decide(key, now: now.monotonicNanos) {
                throw rateLimited(device, "route", own.limit, wait, now)
            }
        case .shared(let slot):
            if case .deny(let wait) = routeLimiter.decide(key * sharedRoutes + slot, now: now.monotonicNanos) {
                throw rateLimited(device, "route", policy.messagesPerRoute, wait, now)
            }
        }
        let source = Self.sourceKey(message.sourceAddress, message.source)
        let decision =
            if let cell = message.sourceCell, sourceLimiter.holds(cell, for: source) {
                sourceLimiter.decide(cell, now: now.monotonicNanos)
            } else {
                sourceLimiter.decide(source, now: now.monotonicNanos)
            }
        if case .deny(let wait) = decision {
            throw Refusal(
                problem: .tooManyRequests, stage: .rateLimit,
                detail: "source limit \(policy.messagesPerSource) exceeded for \(message.source)",
                retryAfterSeconds: Self.seconds(wait), limit: ("source", policy.messagesPerSource), auditKind: nil)
        }
    }

    /// The cell a connection keeps for its source address and hands the pipeline with each message
    /// (`InboundMessage.sourceCell`), so that its messages' source limit takes no lock; nil when the source table is
    /// full. `address` nil: the source's key is derived from its text, as for a message.
    public func pinSource(_ address: SourceAddress?, source: String) -> RateLimiterTable<SourceAddress>.Cell? {
        sourceLimiter.pin(Self.sourceKey(address, source))
    }

    /// The source limiter's key for a message or a connection: its parsed address, else one derived from its text.
    /// One function for both, as a cell is honoured only for the key it was pinned for (`holds`).
    static func sourceKey(_ address: SourceAddress?, _ source: String) -> SourceAddress {
        address ?? SourceAddress(text: source)
    }

    /// The message's interned key when the hub set it for this device, else the device's key from the table.
    func deviceKey(_ device: DeviceID, _ message: InboundMessage) -> DeviceKey {
        guard let key = message.deviceKey else { return deviceKeys.key(for: device) }
        assert(deviceKeys.device(of: key) == device, "a message carries another device's key")
        return key
    }

    /// The route's position in `routes`, or `routes.count` for a route not listed.
    func routeIndex(_ route: String) -> Int {
        for (index, known) in routes.enumerated() where known == route { return index }
        return routes.count
    }

    func rateLimited(_ device: DeviceID, _ name: String, _ limit: RateLimit, _ wait: Int64, _ now: GatewayTime)
        -> Refusal
    {
        var refusal = offence(
            .rateLimited, device, now: now, problem: .tooManyRequests, stage: .rateLimit,
            detail: "\(name) limit \(limit) exceeded")
        refusal.retryAfterSeconds = Self.seconds(wait)
        refusal.limit = (name, limit)
        return refusal
    }

    public func checkSizeAndType(_ device: DeviceID, _ message: InboundMessage, now: GatewayTime) throws(Refusal) {
        let limit = message.payload.maxBytes ?? policy.maxBodyBytes
        guard message.body.count <= limit else {
            throw offence(
                .invalidMessage, device, now: now, problem: .payloadTooLarge, stage: .size,
                detail: "body of \(message.body.count) bytes exceeds \(limit)")
        }
        if case .http = message.transport {
            guard let contentType = message.contentType, Self.isJSON(contentType) else {
                throw offence(
                    .invalidMessage, device, now: now, problem: .unsupportedMediaType, stage: .size,
                    detail: "content type \(MessageSignatureProfile.printable(message.contentType ?? "none"))")
            }
        }
    }

    /// The format stage: a `utf8` payload, or one its sender declared text (MQTT 5.0 §3.3.2.3.2: the receiver may
    /// check it and answers 0x99 when it is not), must be well-formed UTF-8; a content type the sender gave (MQTT 5.0
    /// §3.3.2.3.9) must be on the policy's allow-list when it has one. A JSON payload's UTF-8 is the parser's work.
    public func checkFormat(_ device: DeviceID, _ message: InboundMessage, now: GatewayTime) throws(Refusal) {
        if let violation = Self.formatViolation(
            message.body, contentType: message.contentType, declaredText: message.declaredText, check: message.payload)
        {
            throw offence(
                .invalidMessage, device, now: now, problem: violation.problem, stage: .format,
                detail: violation.detail)
        }
    }

    /// The format stage's rule alone, for a payload that is not a device's (an operator's or an application's
    /// publish): nil when it passes. JSON is not parsed here.
    public static func formatViolation(
        _ body: [UInt8], contentType: String?, declaredText: Bool, check: PayloadCheck
    ) -> (problem: Problem, detail: String)? {
        if check.format != .json, check.format == .utf8 || declaredText, !UTF8Text.isValid(body) {
            return (.invalidMessage, "payload is not well-formed UTF-8")
        }
        if let contentType, !check.allows(contentType: contentType) {
            return (
                .unsupportedMediaType,
                "content type \(MessageSignatureProfile.printable(contentType, limit: 80)) is not allowed here"
            )
        }
        return nil
    }

    /// The message type of a payload without a schema (`utf8`, `binary`): only its name is checked.
    public func checkMessageType(_ device: DeviceID, _ message: InboundMessage, now: GatewayTime) throws(Refusal)
        -> String
    {
        let messageType = message.messageType ?? policy.defaultMessageType
        guard Self.isValidMessageType(messageType) else {
            throw offence(
                .invalidMessage, device, now: now, problem: .invalidMessage, stage: .schema,
                detail: "message type name is not valid")
        }
        return messageType
    }

    public func parse(_ device: DeviceID, _ message: InboundMessage, now: GatewayTime) throws(Refusal) -> JSONDocument {
        let document: JSONDocument
        do { document = try policy.json.parse(message.body) } catch {
            throw offence(
                .invalidMessage, device, now: now, problem: .invalidMessage, stage: .json,
                detail: "strict JSON: \(error)")
        }
        guard document.kind(document.root) == .object else {
            throw offence(
                .invalidMessage, device, now: now, problem: .invalidMessage, stage: .json,
                detail: "top level is \(document.kind(document.root).typeName), not object")
        }
        return document
    }

    /// The reserved top-level member of an MQTT payload that carries the device's message counter: MQTT 3.1.1 has
    /// no properties, so this is its envelope field; MQTT 5 devices may use it or the `counter` user property.
    public static let counterMember = "$counter"
    /// The MQTT 5 user property (§3.3.2.3.7) that carries the counter.
    public static let counterProperty = "counter"

    /// MQTT only: the device's counter, from the payload's `$counter` member when there is one (returned too, so the
    /// schema check skips it: the schema sees the message without it; the replay stage checks it), else the
    /// transport's. A counter must be an integer 0…2^53−1; when both the property and the member are present they
    /// must agree. Nil and nil for a message that is not MQTT.
    public func takeCounter(
        _ device: DeviceID, _ message: InboundMessage, _ document: JSONDocument, now: GatewayTime
    ) throws(Refusal) -> (counter: UInt64?, member: JSONElement?) {
        guard case .mqtt(let property) = message.transport else { return (nil, nil) }
        guard let member = document.member(Self.counterMember, of: document.root) else { return (property, nil) }
        guard let number = document.int64(member), number >= 0, number <= 9_007_199_254_740_991 else {
            throw malformedCounter(device, now: now)
        }
        let counter = UInt64(number)
        if let property, property != counter {
            throw offence(
                .invalidMessage, device, now: now, problem: .invalidMessage, stage: .replay,
                detail: "counter property and \(Self.counterMember) member differ")
        }
        return (counter, member)
    }

    /// A counter that is not an unsigned integer (in the property or the member).
    public func malformedCounter(_ device: DeviceID, now: GatewayTime) -> Refusal {
        offence(
            .invalidMessage, device, now: now, problem: .invalidMessage, stage: .replay,
            detail: "counter is not an integer 0-2^53-1")
    }

    /// Chooses the schema by message type (a header on HTTP, the topic on MQTT) and validates.
    public func checkSchema(
        _ device: DeviceID, _ message: InboundMessage, _ document: JSONDocument, skipping: JSONElement? = nil,
        now: GatewayTime
    ) throws(Refusal) -> String {
        let messageType = message.messageType ?? policy.defaultMessageType
        let registered =
            if let hint = message.schemaHint, hint.owner === hintOwner, hint.messageType == messageType,
                hint.generation == schemaGeneration.load(ordering: .acquiring)
            {
                hint.registered
            } else {
                schemas.withLock { $0[messageType] }
            }
        guard registered?.valid == true || Self.isValidMessageType(messageType) else {
            throw offence(
                .invalidMessage, device, now: now, problem: .invalidMessage, stage: .schema,
                detail: "message type name is not valid")
        }
        guard let schema = registered?.schema else {
            if policy.requireSchema || messageType != policy.defaultMessageType {
                throw offence(
                    .invalidMessage, device, now: now, problem: .invalidMessage, stage: .schema,
                    detail: "no schema registered for message type \(messageType)")
            }
            return messageType
        }
        if let violation = schema.validate(document, skipping: skipping) {
            throw offence(
                .invalidMessage, device, now: now, problem: .invalidMessage, stage: .schema,
                detail: "\(messageType): \(MessageSignatureProfile.printable(violation.description, limit: 160))")
        }
        return messageType
    }

    /// HTTP: the RFC 9421 signature with the certificate's key, then the nonce. MQTT: the counter window, when the
    /// device sent a counter.
    public func checkReplay(
        _ device: DeviceID, _ message: InboundMessage, now: GatewayTime
    ) throws(Refusal) -> (ClaimedNonce?, CounterWindow?) {
        switch message.transport {
        case .http(let request, let key):
            guard let key else {
                throw Refusal(
                    problem: .forbidden, stage: .replay, detail: "certificate key is not P-256",
                    auditKind: "bad-signature")
            }
            let verified: VerifiedSignature
            do {
                verified = try policy.signatures.verify(request, body: message.body, key: key, now: now.unixSeconds)
            } catch {
                let kind: Offence =
                    error.kind == .badSignature || error.kind == .digestMismatch || error.kind == .noSession
                    ? .badSignature : .replay
                throw offence(kind, device, now: now, problem: .unauthenticated, stage: .replay, detail: "\(error)")
            }
            switch nonces.claim(device: device, nonce: verified.nonce, now: now.unixSeconds) {
            case .fresh(let expiresAt):
                return (ClaimedNonce(value: verified.nonce, expiresAt: expiresAt, durable: !verified.session), nil)
            case .replayed:
                throw offence(
                    .replay, device, now: now, problem: .unauthenticated, stage: .replay,
                    detail: "nonce reused within the window")
            case .full:
                // Cannot happen within the device's own rate (see `init`): the hub is over capacity.
                throw Refusal(
                    problem: .unavailable, stage: .replay, detail: "nonce ledger full", retryAfterSeconds: 1,
                    auditKind: "gateway-capacity")
            }
        case .mqtt(let counter):
            return try checkCounter(device, counter, now: now)
        }
    }

    /// MQTT: the device's counter against its window (none sent: nothing to check).
    func checkCounter(_ device: DeviceID, _ counter: UInt64?, now: GatewayTime) throws(Refusal) -> (
        ClaimedNonce?, CounterWindow?
    ) {
        guard let counter else { return (nil, nil) }
        let (decision, window) = counters.accept(device: device, counter: counter)
        guard decision == .accepted else {
            throw offence(
                .replay, device, now: now, problem: .unauthenticated, stage: .replay,
                detail:
                    "counter \(counter) \(decision == .replayed ? "replayed" : "too old") (highest \(window.highest))"
            )
        }
        return (nil, window)
    }

    /// Counts an offence toward quarantine and builds the refusal. Repeated rate-limit trips in one minute are
    /// audited once; other offences are bounded by their (lower) quarantine thresholds.
    func offence(
        _ kind: Offence, _ device: DeviceID, now: GatewayTime, problem: Problem, stage: Stage, detail: String
    ) -> Refusal {
        let record = quarantine.record(kind, device: device, now: now.unixSeconds)
        let audit = kind != .rateLimited || record.countThisMinute == 1 || record.quarantinedUntil != nil
        return Refusal(
            problem: problem, stage: stage, detail: detail, auditKind: audit ? kind.rawValue : nil,
            quarantinedUntil: record.quarantinedUntil)
    }

    /// Lifts a device's quarantine and its rate-limit state (`bulwark device release`).
    @discardableResult
    public func release(_ device: DeviceID) -> Bool {
        deviceLimiter.reset(Int(deviceKeys.key(for: device).rawValue))
        return quarantine.release(device)
    }

    /// Whether the media type (before any parameter, without surrounding whitespace) is `application/json`, compared
    /// ASCII case-insensitively (RFC 9110 §8.3.1), on the bytes: no string is built per request.
    static func isJSON(_ contentType: String) -> Bool {
        let wanted = Array("application/json".utf8)
        var utf8 = contentType.utf8[...]
        if let semicolon = utf8.firstIndex(of: UInt8(ascii: ";")) { utf8 = utf8[..<semicolon] }
        while let first = utf8.first, first == 0x20 || first == 0x09 { utf8 = utf8.dropFirst() }
        while let last = utf8.last, last == 0x20 || last == 0x09 { utf8 = utf8.dropLast() }
        guard utf8.count == wanted.count else { return false }
        for (byte, expected) in zip(utf8, wanted) {
            let lower = (0x41...0x5A).contains(byte) ? byte | 0x20 : byte
            guard lower == expected else { return false }
        }
        return true
    }

    static func seconds(_ nanos: Int64) -> Int { max(1, Int((nanos + 999_999_999) / 1_000_000_000)) }
}
