import Core
public import Foundation
public import Gateway
import HTTPTypes
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import JSON
import Logging
import NIOCore
import NIOHTTP1
import NIOSSL
import Store

/// The gateway settings of `HubConfiguration` (`gateway.*` keys), turned into a `GatewayPolicy`.
public struct GatewaySettings: Sendable, Equatable {
    public var deviceRate = 10.0
    public var deviceBurst = 20
    public var routeRate = 10.0
    public var routeBurst = 20
    public var sourceRate = 1000.0
    public var sourceBurst = 2000
    public var connectionRate = 20.0
    public var connectionBurst = 40
    public var signatureSkewSeconds = 60
    public var quarantineSeconds = 900
    public var quarantineRateLimited = 100
    public var quarantineInvalid = 20
    public var quarantineReplay = 5
    public var quarantineBadSignature = 5
    /// Egress violations per minute that quarantine a device; nil: they are only reported.
    public var quarantineEgress: Int?
    public var requireSchema = false
    /// Certificate renewals per device: a burst, then one per interval (`gateway.renewalBurst`,
    /// `gateway.renewalIntervalSeconds`).
    public var renewalBurst = 3
    public var renewalIntervalSeconds = 600.0
    /// Update requests per device (`gateway.updatesRate`, `gateway.updatesBurst`): their own, larger limit, since a
    /// check is a burst (TUF metadata, the assignment) and a download is resumed by ranges.
    public var updatesRate = 20.0
    public var updatesBurst = 60
    public var jsonMaxDepth = 16
    public var jsonMaxMembers = 1000
    /// Longest string (name or value) in bytes as sent, escapes included, and longest number literal in characters.
    public var jsonMaxStringBytes = 16 * 1024
    public var jsonMaxNumberLength = 40
    /// Seconds an HMAC session key lives (`gateway.sessionKeySeconds`, `POST /v1/device/session`); 0: not offered, so
    /// every request needs its own ECDSA signature.
    public var sessionKeySeconds = 3600

    public init() {}

    func policy(maxBodyBytes: Int) -> GatewayPolicy {
        var policy = GatewayPolicy()
        policy.messagesPerDevice = RateLimit(rate: deviceRate, burst: deviceBurst)
        policy.messagesPerRoute = RateLimit(rate: routeRate, burst: routeBurst)
        policy.messagesPerSource = RateLimit(rate: sourceRate, burst: sourceBurst)
        policy.connectionsPerSource = RateLimit(rate: connectionRate, burst: connectionBurst)
        policy.signatures = MessageSignatureProfile(maxSkewSeconds: Int64(signatureSkewSeconds))
        var thresholds: [Offence: Int] = [
            .rateLimited: quarantineRateLimited, .invalidMessage: quarantineInvalid, .replay: quarantineReplay,
            .badSignature: quarantineBadSignature,
        ]
        if let quarantineEgress { thresholds[.egress] = quarantineEgress }
        policy.quarantine = QuarantinePolicy(thresholds: thresholds, durationSeconds: Int64(quarantineSeconds))
        policy.routeLimits["certificate"] = RateLimit(rate: 1 / renewalIntervalSeconds, burst: renewalBurst)
        policy.routeLimits["updates"] = RateLimit(rate: updatesRate, burst: updatesBurst)
        policy.requireSchema = requireSchema
        policy.json = StrictJSON(
            maxDepth: jsonMaxDepth, maxMembers: jsonMaxMembers, maxStringBytes: jsonMaxStringBytes,
            maxNumberLength: jsonMaxNumberLength)
        policy.maxBodyBytes = maxBodyBytes
        return policy
    }

    func validate() throws {
        let rates = [deviceRate, routeRate, sourceRate, connectionRate, updatesRate]
        let bursts = [deviceBurst, routeBurst, sourceBurst, connectionBurst, updatesBurst]
        guard rates.allSatisfy({ (0.001...1_000_000).contains($0) }),
            bursts.allSatisfy({ (1...1_000_000).contains($0) })
        else { throw HubStartupError("gateway rates must be 0.001-1000000 per second and bursts 1-1000000") }
        guard (1...3600).contains(signatureSkewSeconds) else {
            throw HubStartupError("gateway.signatureSkewSeconds must be between 1 and 3600")
        }
        guard (1...(30 * 86400)).contains(quarantineSeconds),
            [quarantineRateLimited, quarantineInvalid, quarantineReplay, quarantineBadSignature, quarantineEgress ?? 1]
                .allSatisfy({ $0 >= 1 })
        else { throw HubStartupError("gateway.quarantine* thresholds must be at least 1 and the duration 1 s-30 days") }
        guard (1...100).contains(renewalBurst), (1...(30 * 86400)).contains(renewalIntervalSeconds) else {
            throw HubStartupError("gateway.renewalBurst must be 1-100 and gateway.renewalIntervalSeconds 1-2592000")
        }
        guard (0...86400).contains(sessionKeySeconds) else {
            throw HubStartupError("gateway.sessionKeySeconds must be 0 (off) to 86400")
        }
        guard (1...64).contains(jsonMaxDepth), (1...100_000).contains(jsonMaxMembers) else {
            throw HubStartupError("gateway.jsonMaxDepth must be 1-64 and gateway.jsonMaxMembers 1-100000")
        }
        guard (1...(16 * 1024 * 1024)).contains(jsonMaxStringBytes), (1...1000).contains(jsonMaxNumberLength) else {
            throw HubStartupError(
                "gateway.jsonMaxStringBytes must be 1-16777216 and gateway.jsonMaxNumberLength 1-1000")
        }
    }
}

extension GatewayTime {
    /// Monotonic nanoseconds for rate limits, wall-clock seconds for signatures, nonces and quarantines: the latter
    /// from `wall`, for a caller that also keeps the instant (a stored message's time of arrival), so the clock is
    /// read once for both.
    static func now(wall: Date = Date()) -> GatewayTime {
        GatewayTime(
            monotonicNanos: Int64(DispatchTime.now().uptimeNanoseconds),
            unixSeconds: Int64(wall.timeIntervalSince1970))
    }
}

/// A refusal by the gateway pipeline, on its way to `ErrorReportingMiddleware`.
struct GatewayError: Error {
    let refusal: Refusal
    let identity: String?
}

/// Writes what a refusal leaves behind: its audit record (when the pipeline asks for one) and, when it started a
/// quarantine, the quarantine itself (persisted, so a restart keeps it) with its own audit record. Shared by the
/// HTTP and MQTT paths.
struct GatewayRecorder: Sendable {
    let store: any HubStore
    let logger: Logger
    /// Counts refusals per device for staged rollouts (a device whose refusals jump after an update).
    var signals: DeviceSignals?
    /// Counts refusals per interface, stage and problem (`/metrics`).
    var metrics: HubMetrics?
    var interface = HubMetrics.Interface.http

    func record(_ refusal: Refusal, identity: String?, source: String?, correlationID: String, what: String) async {
        logger.notice(
            "gateway refused",
            metadata: [
                "stage": .string(refusal.stage.rawValue), "problem": .string(refusal.problem.slug),
                "detail": .string(refusal.detail), "peer": .string(identity ?? "-"),
                "correlation_id": .string(correlationID),
            ])
        metrics?.refused(interface, refusal)
        if let signals, let identity, let device = Identity(uri: identity)?.deviceID { signals.refusal(device) }
        if let kind = refusal.auditKind {
            try? await store.recordSecurityEvent(
                SecurityEvent(
                    at: Date(), kind: kind, identity: identity, source: source, correlationID: correlationID,
                    detail: "\(what): \(refusal.stage.rawValue): \(refusal.detail)"))
        }
        if let until = refusal.quarantinedUntil, let identity, let device = Identity(uri: identity)?.deviceID {
            try? await store.setQuarantine(device, until: until)
            try? await store.recordSecurityEvent(
                SecurityEvent(
                    at: Date(), kind: "device-quarantined", identity: identity, source: source,
                    correlationID: correlationID,
                    detail: "quarantined until \(Date(timeIntervalSince1970: Double(until)).formatted(.iso8601)) "
                        + "after \(refusal.auditKind ?? refusal.problem.slug)"))
        }
    }
}

enum ProblemResponse {
    static let contentType = "application/problem+json"
    static let policyField = HTTPField.Name("RateLimit-Policy")!
    static let rateLimitField = HTTPField.Name("RateLimit")!

    /// RFC 9457 problem details, plus for 429 `Retry-After` (RFC 9110 §10.2.3) and the `RateLimit-Policy` and
    /// `RateLimit` fields of draft-ietf-httpapi-ratelimit-headers-09 (§2, §3): quota, window and what remains.
    static func make(_ problem: Problem, correlationID: String, refusal: Refusal? = nil) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = contentType
        headers[.cacheControl] = "no-store"
        if let seconds = refusal?.retryAfterSeconds {
            headers[.retryAfter] = String(seconds)
            if let (name, limit) = refusal?.limit {
                headers[policyField] = "\"\(name)\";q=\(limit.burst);w=\(limit.windowSeconds)"
                headers[rateLimitField] = "\"\(name)\";r=0;t=\(seconds)"
            }
        }
        return Response(
            status: HTTPResponse.Status(code: problem.status), headers: headers,
            body: .init(byteBuffer: ByteBuffer(string: problem.json(correlationID: correlationID))))
    }

    /// The catalogue entry for a refusal that did not come from the pipeline.
    static func problem(forStatus status: Int) -> Problem {
        Problem.catalogue.first { $0.status == status && $0 != .unauthenticated } ?? .unavailable
    }
}

/// Stage 1 of the pipeline: per-source connection rate and the open-connection caps (in all and per source),
/// checked when TCP accepts, before any TLS work is done; then `HTTPGuardHandler` bounds each phase of the
/// connection and refuses framing the hub does not accept.
struct ConnectionGate<Base: ServerChildChannel>: ServerChildChannel {
    typealias Value = Base.Value
    let base: Base
    let gateway: GatewayPipeline
    /// Each listener has its own budget per source: a device flood from one address does not lock operators out.
    let listener: String
    let connections: ConnectionCounter
    let limits: HTTPLimits
    let onRefusal: @Sendable (FramingRefusal) -> Void
    /// Counts connections refused by their source's rate (`/metrics`).
    var metrics: HubMetrics?

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        let source = channel.remoteAddress?.ipAddress ?? "unknown"
        if let refusal = gateway.admitConnection(source: "\(listener) \(source)", now: .now()) {
            metrics?.refused(.http, refusal)
            logger.debug("connection refused before TLS", metadata: ["detail": .string(refusal.detail)])
            channel.close(promise: nil)
            return channel.eventLoop.makeFailedFuture(GatewayError(refusal: refusal, identity: nil))
        }
        if let refused = connections.admit(channel, source: source, logger: logger, listener: listener) {
            return channel.eventLoop.makeFailedFuture(refused)
        }
        let limits = limits
        let onRefusal = onRefusal
        return base.setup(channel: channel, logger: logger).flatMapThrowing { value in
            let decoder = try channel.pipeline.syncOperations.handler(
                type: ByteToMessageHandler<HTTPRequestDecoder>.self)
            try channel.pipeline.syncOperations.addHandler(
                HTTPGuardHandler(limits: limits, onRefusal: onRefusal), position: .after(decoder))
            return value
        }
    }

    func handle(value: Value, logger: Logger) async { await base.handle(value: value, logger: logger) }
}

extension HTTPServerBuilder {
    /// HTTP/1.1 over TLS with the pipeline's connection gate in front of the TLS handler.
    static func gatedTLS(
        contexts: TLSContextSource,
        verify: @escaping @Sendable ([NIOSSLCertificate], EventLoopPromise<NIOSSLVerificationResult>) -> Void,
        gateway: GatewayPipeline, listener: String,
        connections: ConnectionCounter, limits: HTTPLimits, onRefusal: @escaping @Sendable (FramingRefusal) -> Void,
        observer: (HubMetrics, HubMetrics.Listener)? = nil
    ) -> HTTPServerBuilder {
        HTTPServerBuilder { responder in
            ConnectionGate(
                base: RotatingTLSChannel(
                    base: HTTP1Channel(responder: responder), contexts: contexts, verify: verify, observer: observer),
                gateway: gateway, listener: listener, connections: connections, limits: limits, onRefusal: onRefusal,
                metrics: observer?.0)
        }
    }
}

extension HubServer {
    /// Loads what the gateway must remember across restarts: schemas, live nonces, counter windows, quarantines.
    static func restoreGatewayState(_ gateway: GatewayPipeline, store: any HubStore, logger: Logger) async throws {
        for (name, body) in try await store.schemas() {
            applySchema(name: name, body: body, to: gateway, logger: logger)
        }
        let now = Int64(Date().timeIntervalSince1970)
        gateway.nonces.load(
            try await store.liveNonces(now: now).map { ($0.0, $0.1.nonce, $0.1.expiresAt) }, now: now)
        gateway.counters.load(
            try await store.counterWindows().map { ($0.0, CounterWindow(highest: $0.1.highest, seen: $0.1.seen)) })
        gateway.quarantine.load(try await store.quarantines(), now: now)
        // The agent's own event types, unless an operator registered a schema of that name.
        for (name, schema) in builtInSchemas where gateway.schema(for: name) == nil {
            gateway.setSchema(try JSONSchema(bytes: Array(schema.utf8)), for: name)
        }
    }

    /// Sets a stored schema on the gateway; one that no longer compiles refuses its messages (and says so).
    static func applySchema(name: String, body: [UInt8], to gateway: GatewayPipeline, logger: Logger) {
        do { gateway.setSchema(try JSONSchema(bytes: body), for: name) } catch {
            gateway.setSchema(.refuseAll, for: name)
            logger.error(
                "stored schema no longer compiles; messages of this type are refused",
                metadata: ["type": .string(name), "error": .string("\(error)")])
        }
    }

    /// `devices/<id>/events/command-result`: what `bulwark agent run` reports after running an operator's command.
    static let builtInSchemas = [
        (UpdateReports.messageType, UpdateReports.schema),
        (
            "command-result",
            #"{"type":"object","required":["command","exitCode","timedOut"],"additionalProperties":false,"properties":{"command":{"type":"string","maxLength":64},"exitCode":{"type":"integer"},"timedOut":{"type":"boolean"},"output":{"type":"string","maxLength":4096}}}"#
        ),
        (
            EgressMonitor.messageType,
            #"{"type":"object","required":["established","listening"],"additionalProperties":false,"properties":{"established":{"type":"array","maxItems":256,"items":{"type":"object","required":["proto","address","port"],"additionalProperties":false,"properties":{"proto":{"enum":["tcp","tcp6","udp","udp6"]},"address":{"type":"string","maxLength":45},"port":{"type":"integer","minimum":0,"maximum":65535},"count":{"type":"integer","minimum":1}}}},"listening":{"type":"array","maxItems":256,"items":{"type":"object","required":["proto","address","port"],"additionalProperties":false,"properties":{"proto":{"enum":["tcp","tcp6","udp","udp6"]},"address":{"type":"string","maxLength":45},"port":{"type":"integer","minimum":0,"maximum":65535},"count":{"type":"integer","minimum":1}}}}}}"#
        ),
    ]
}

extension SourceAddress {
    /// The key of a socket's peer address (nil for a Unix socket or none).
    init?(_ address: SocketAddress?) {
        switch address {
        case .v4(let v4): self.init(ipv4: UInt32(bigEndian: v4.address.sin_addr.s_addr))
        case .v6(let v6):
            let bytes = withUnsafeBytes(of: v6.address.sin6_addr) { Array($0) }
            guard bytes.count == 16 else { return nil }
            func word(_ offset: Int) -> UInt64 { bytes[offset..<offset + 8].reduce(0) { $0 << 8 | UInt64($1) } }
            self.init(high: word(0), low: word(8))
        default: return nil
        }
    }
}
