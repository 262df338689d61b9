import Foundation
import Gateway
import NIOCore
import NIOSSL
import NIOTLS
import Prometheus
import Store
import Synchronization

/// The hub's metrics, served as `GET /metrics` on the operator listener to monitor certificates only
/// (`urn:bulwark:monitor:NAME`), in the Prometheus text exposition format 0.0.4.
///
/// Each hub has its own registry (swift-prometheus's `PrometheusCollectorRegistry`, whose instruments are
/// swift-metrics handlers), not the process-wide `MetricsSystem`: several hubs share a test process, and a global
/// factory would also collect every library's own metrics, with labels nobody bounded.
///
/// Label values come from fixed sets only: interfaces, listeners, gateway stages, the problem catalogue, and fixed
/// reason, outcome and step names. No device id, topic, address or certificate ever becomes a label, so a device
/// cannot grow the hub's memory or map the fleet through it; a per-device view is the dashboard's.
public final class HubMetrics: Sendable {
    public enum Interface: String, Sendable, CaseIterable { case http, mqtt }
    public enum Listener: String, Sendable, CaseIterable { case device, `operator`, mqtt, pairing }
    /// Why a TLS handshake failed: the client's certificate was refused (unknown issuer, wrong role, revoked,
    /// expired, none), the protocol (no shared version or cipher, not TLS at all), or it never finished (the peer
    /// left or the deadline passed).
    public enum HandshakeFailure: String, Sendable, CaseIterable { case certificate, `protocol`, incomplete }
    public enum PairingOutcome: String, Sendable, CaseIterable {
        case paired, failed
        case lockedOut = "locked-out"
    }

    /// The update steps a device reports (`DeviceUpdateState.lastStep`); anything else is counted as `other`.
    static let updateSteps = [
        "checking", "downloading", "installed", "trial", "committed", "rolled-back", "refused", "slot-tampered",
    ]

    /// What a scrape reads besides the counters, handed over once the hub's parts exist.
    struct Sources: Sendable {
        var connections: [(Listener, ConnectionCounter)] = []
        var broker: MQTTBroker?
        var claims: PairingClaims?
        var store: (any HubStore)?
        var updates = false
    }

    let registry = PrometheusCollectorRegistry()
    private let sources = Mutex(Sources())
    private let droppedSeen = Mutex(0)
    /// One counter per interface, held apart: every admitted message counts, and a dictionary look-up of its
    /// interface cost more than the increment.
    private let admittedHTTP: Counter
    private let admittedMQTT: Counter
    private let commitDuration: DurationHistogram
    private let commitBatch: ValueHistogram

    /// One metric family: `bulwark_NAME_UNIT` and its help text (promtool wants one for every family).
    struct Family: Sendable {
        let name: String
        let unit: String
        let help: String
        var descriptor: MetricNameDescriptor {
            MetricNameDescriptor(namespace: "bulwark", metricName: name, unitName: unit, helpText: help)
        }
    }

    private static func name(_ name: String, _ unit: String, _ help: String) -> Family {
        Family(name: name, unit: unit, help: help)
    }

    private static let admitted = name(
        "gateway_admitted", "total", "Messages and requests that passed the whole gateway pipeline, per interface.")
    private static let refusals = name(
        "gateway_refusals", "total", "Gateway refusals per interface, pipeline stage and problem type.")
    private static let handshakeFailures = name(
        "tls_handshake_failures", "total", "TLS handshakes that failed, per listener and reason.")
    private static let connectionsOpen = name("connections", "open", "Open connections per listener.")
    private static let pairings = name(
        "pairings", "total", "Pairing attempts that ended, per outcome (paired, failed, locked-out).")
    private static let claimsOpen = name("pairing_claims", "open", "Pairing claims waiting for their device.")
    private static let commitSeconds = name(
        "store_commit_duration", "seconds", "Time from the start of a telemetry group commit to its end.")
    private static let commitMessages = name(
        "store_commit_batch", "messages", "Messages written by one telemetry group commit (one transaction).")
    private static let storeUp = name(
        "store", "up", "1 when the last scrape could read the store, else 0 (the store figures are then stale).")
    private static let devices = name("devices", "", "Enrolled devices per status.")
    private static let expiring = name(
        "device_certificates_expiring", "",
        "Active devices whose newest unrevoked certificate ends within 7 days (still valid now).")
    private static let auditRecords = name("audit", "records", "Records in the tamper-evident audit log.")
    private static let updates = name("update_devices", "", "Devices per last reported update step.")
    private static let mqttSessions = name(
        "mqtt_sessions", "", "MQTT sessions kept by the broker (connected or waiting for a reconnect).")
    private static let mqttConnected = name("mqtt_sessions_connected", "", "MQTT sessions with a connection.")
    private static let mqttInflight = name(
        "mqtt_inflight", "messages", "QoS 1 messages sent to subscribers and not yet acknowledged.")
    private static let mqttQueued = name("mqtt_queued", "messages", "Messages queued for sessions.")
    private static let mqttRetained = name("mqtt_retained", "messages", "Retained messages.")
    private static let mqttRetainedBytes = name("mqtt_retained", "bytes", "Bytes of retained messages and topics.")
    private static let mqttDropped = name(
        "mqtt_dropped_messages", "total", "Messages dropped because a session's queue was full.")

    public init() {
        let registry = registry
        func admittedCounter(_ interface: Interface) -> Counter {
            registry.makeCounter(descriptor: Self.admitted.descriptor, labels: [("interface", interface.rawValue)])
        }
        admittedHTTP = admittedCounter(.http)
        admittedMQTT = admittedCounter(.mqtt)
        commitDuration = registry.makeDurationHistogram(
            descriptor: Self.commitSeconds.descriptor,
            buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5].map {
                Duration.nanoseconds(Int64($0 * 1e9))
            })
        commitBatch = registry.makeValueHistogram(
            descriptor: Self.commitMessages.descriptor, buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512])
        // Every series of a bounded family exists from the start (at 0), so a rate over it is defined before the
        // first event.
        for listener in [Listener.device, .operator, .mqtt] {
            for reason in HandshakeFailure.allCases {
                _ = registry.makeCounter(
                    descriptor: Self.handshakeFailures.descriptor,
                    labels: [("listener", listener.rawValue), ("reason", reason.rawValue)])
            }
        }
        for outcome in PairingOutcome.allCases {
            _ = registry.makeCounter(descriptor: Self.pairings.descriptor, labels: [("outcome", outcome.rawValue)])
        }
    }

    func attach(_ update: (inout Sources) -> Void) { sources.withLock { update(&$0) } }

    func admitted(_ interface: Interface) {
        switch interface {
        case .http: admittedHTTP.increment()
        case .mqtt: admittedMQTT.increment()
        }
    }

    func refused(_ interface: Interface, _ refusal: Refusal) {
        let problem = Problem.catalogue.contains(refusal.problem) ? refusal.problem.slug : "other"
        registry.makeCounter(
            descriptor: Self.refusals.descriptor,
            labels: [("interface", interface.rawValue), ("stage", refusal.stage.rawValue), ("problem", problem)]
        ).increment()
    }

    func handshakeFailed(_ listener: Listener, _ reason: HandshakeFailure) {
        registry.makeCounter(
            descriptor: Self.handshakeFailures.descriptor,
            labels: [("listener", listener.rawValue), ("reason", reason.rawValue)]
        ).increment()
    }

    func pairing(_ outcome: PairingOutcome) {
        registry.makeCounter(descriptor: Self.pairings.descriptor, labels: [("outcome", outcome.rawValue)]).increment()
    }

    /// One telemetry group commit ended (`SQLiteHubStore`'s observer).
    @Sendable func storeCommitted(messages: Int, duration: Duration) {
        commitDuration.record(duration)
        commitBatch.record(Double(messages))
    }

    private func gauge(_ family: Family, _ labels: [(String, String)] = []) -> Gauge {
        labels.isEmpty
            ? registry.makeGauge(descriptor: family.descriptor)
            : registry.makeGauge(descriptor: family.descriptor, labels: labels)
    }

    /// Reads the figures kept elsewhere (connections, the broker, claims, the store) into their gauges, then writes
    /// every metric in the text format.
    func scrape(now: Date) async -> [UInt8] {
        let sources = sources.withLock { $0 }
        for (listener, counter) in sources.connections {
            gauge(Self.connectionsOpen, [("listener", listener.rawValue)]).set(to: Double(counter.open))
        }
        if let broker = sources.broker {
            let figures = await broker.statistics
            gauge(Self.mqttSessions).set(to: Double(figures.sessions))
            gauge(Self.mqttConnected).set(to: Double(figures.connected))
            gauge(Self.mqttInflight).set(to: Double(figures.inflight))
            gauge(Self.mqttQueued).set(to: Double(figures.queued))
            gauge(Self.mqttRetained).set(to: Double(figures.retained))
            gauge(Self.mqttRetainedBytes).set(to: Double(figures.retainedBytes))
            // The broker's count only grows: the counter takes the difference since the last scrape.
            let added = droppedSeen.withLock { seen in
                defer { seen = max(seen, figures.dropped) }
                return max(0, figures.dropped - seen)
            }
            registry.makeCounter(descriptor: Self.mqttDropped.descriptor).increment(by: Int64(added))
        }
        if let claims = sources.claims {
            if let open = try? await claims.openClaims(now: now) { gauge(Self.claimsOpen).set(to: Double(open)) }
        }
        if let store = sources.store {
            do {
                let summary = try await store.fleetSummary(now: now, expiringBefore: now.addingTimeInterval(7 * 86400))
                gauge(Self.devices, [("status", "active")]).set(to: Double(summary.activeDevices))
                gauge(Self.devices, [("status", "revoked")]).set(to: Double(summary.revokedDevices))
                gauge(Self.expiring).set(to: Double(summary.certificatesExpiring))
                gauge(Self.auditRecords).set(to: Double(summary.auditRecords))
                if sources.updates {
                    var other = 0
                    for (step, count) in summary.updateSteps where !Self.updateSteps.contains(step) { other += count }
                    for step in Self.updateSteps {
                        gauge(Self.updates, [("step", step)]).set(to: Double(summary.updateSteps[step] ?? 0))
                    }
                    gauge(Self.updates, [("step", "other")]).set(to: Double(other))
                }
                gauge(Self.storeUp).set(to: 1)
            } catch {
                gauge(Self.storeUp).set(to: 0)
            }
        }
        return registry.emitToBuffer()
    }
}

/// Counts the TLS handshakes that fail on a listener (`bulwark_tls_handshake_failures_total`), then leaves the
/// pipeline once a handshake completed.
final class HandshakeObserver: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    private let metrics: HubMetrics
    private let listener: HubMetrics.Listener
    private var settled = false

    init(metrics: HubMetrics, listener: HubMetrics.Listener) {
        self.metrics = metrics
        self.listener = listener
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted = event as? TLSUserEvent, !settled {
            settled = true
            context.fireUserInboundEventTriggered(event)
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if !settled {
            settled = true
            metrics.handshakeFailed(listener, Self.reason(error))
        }
        context.fireErrorCaught(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !settled {
            settled = true
            metrics.handshakeFailed(listener, .incomplete)
        }
        context.fireChannelInactive()
    }

    /// BoringSSL names a refused or missing client certificate with `CERTIFICATE` in its reason
    /// (`CERTIFICATE_VERIFY_FAILED`, `PEER_DID_NOT_RETURN_A_CERTIFICATE`); a peer that left mid-handshake is
    /// incomplete; any other handshake error is the protocol's.
    static func reason(_ error: any Error) -> HubMetrics.HandshakeFailure {
        if let error = error as? NIOSSLError {
            switch error {
            case .uncleanShutdown: return .incomplete
            case .handshakeFailed(let detail): return "\(detail)".contains("CERTIFICATE") ? .certificate : .protocol
            default: return .protocol
            }
        }
        if error is ChannelError || error is IOError { return .incomplete }
        return .protocol
    }
}
