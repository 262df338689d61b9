import Core
import Crypto
public import Foundation
public import Gateway
import Hummingbird
import HummingbirdTLS
public import Logging
import NIOCore
import PKCS11
import PKI
import PostgresStore
public import ServiceLifecycle
public import Store
import Synchronization
import TUF
import TUFRepository
public import UnixSignals

#if canImport(Glibc)
    import Glibc
#endif

/// The running hub: the device listener and the operator listener, each a Hummingbird application with mutual TLS,
/// in one `ServiceGroup`. On SIGINT/SIGTERM in-flight requests finish, then the store is closed.
public final class HubServer: Sendable {
    public let configuration: HubConfiguration
    public let store: any HubStore
    public let credentials: HubCredentials
    let revocations: RevocationList
    /// The serials refused at every handshake and request (tests look at it).
    public var revocationList: RevocationList { revocations }
    public let gateway: GatewayPipeline
    /// The MQTT broker (tests read what it knows).
    let broker: MQTTBroker
    /// The MQTT listener's sessions and connection tasks (tests read them).
    let mqttSessions = SessionTally()
    /// The MQTT listener's QoS 0 writes in flight (tests read them).
    let mqttPendingQoS0 = PendingWrites()
    private let group: ServiceGroup
    private let logger: Logger
    private let ports: AsyncStream<(String, Int)>

    /// What a start does before anything else, and all `bulwark node init` and `node join` do: the store opened (and
    /// migrated), the clock and the audit key checked against it, the credentials made or loaded and the CA agreed
    /// with the other nodes on the database, this node's TLS pins recorded.
    public struct Prepared: Sendable {
        public let store: any HubStore
        public let credentials: HubCredentials
        let auditKey: AuditKey
        let metrics: HubMetrics
        let clusterPins: ClusterPins
    }

    public static func prepare(
        configuration: HubConfiguration, store: (any HubStore)? = nil, logger: Logger
    ) async throws -> Prepared {
        try configuration.validate()
        if let notice = try SecretFiles.makePrivateDirectory(configuration.dataDirectory) {
            logger.warning("data directory tightened", metadata: ["detail": .string(notice)])
        }
        let metrics = HubMetrics()
        let opened: any HubStore
        if let store {
            opened = store
        } else if let location = try configuration.postgresLocation() {
            do {
                opened = try await PostgresHubStore(
                    location: location, logger: logger,
                    onCommit: metrics.storeCommitted)
            } catch let error as StoreError {
                throw HubStartupError(error.detail)
            }
        } else {
            opened = try Self.openSQLite(configuration.sqlitePath, onCommit: metrics.storeCommitted)
        }
        let store = opened
        try await checkClock(store: store, now: Date(), limit: configuration.clusterMaxClockSkewSeconds)
        // Before anything is audited: every record from now on carries a MAC. A log (shared with other hub nodes)
        // whose newest record carries a MAC under another key is refused: this node's records would not verify.
        let logLength = try await store.securityEvents(limit: 1).first?.id ?? 0
        let newest = try await store.auditRecords(after: max(0, logLength - 1), limit: 1).first
        let keyFileExists = FileManager.default.fileExists(atPath: configuration.auditKeyPath)
        let recordedFingerprint = try await store.agreedSetting("audit-key", proposing: nil)
        if !keyFileExists, newest?.mac != nil || recordedFingerprint != nil {
            throw HubStartupError(
                "the audit log is keyed and \(configuration.auditKeyPath) is missing: copy the audit key of the node "
                    + "that keyed it (another hub node on this database) or set audit.keyFile")
        }
        let auditKey = try AuditKeyFile.loadOrCreate(configuration.auditKeyPath, logLength: logLength)
        // The log's newest MAC is checked before the fingerprint is proposed: a node with the wrong key must not
        // record its fingerprint first and lock the right ones out.
        let newestVerifies = newest.map { record in record.mac.map { auditKey.isValid(mac: $0, for: record.hash) } }
        let agreed =
            newestVerifies == .some(.some(false))
            ? nil : try await store.agreedSetting("audit-key", proposing: auditKey.fingerprint)
        if newestVerifies == .some(.some(false)) || agreed.map({ $0 != auditKey.fingerprint }) == true {
            // A key this start created is not left behind to fail every later start.
            if !keyFileExists { try? FileManager.default.removeItem(atPath: configuration.auditKeyPath) }
            throw HubStartupError(
                "\(configuration.auditKeyPath) is not the key of this audit log (its newest record's MAC, or the key "
                    + "the other hub nodes on this database recorded, does not match): every node needs the same key")
        }
        try await store.setAuditKey(auditKey)
        // Hub nodes on one database are one hub: one CA. A node that would make a CA of its own is refused.
        if try await store.agreedSetting("ca-certificate", proposing: nil) != nil,
            !FileManager.default.fileExists(atPath: configuration.dataDirectory + "/ca.crt")
        {
            throw HubStartupError(
                "the database belongs to hub nodes with a CA this data directory does not have: start this node from "
                    + "a copy of another node's CA (ca.crt and its key), not with a CA of its own")
        }
        let credentials = try await HubCredentials.loadOrCreate(
            dataDirectory: configuration.dataDirectory, hubNames: configuration.hubNames, store: store, now: Date(),
            crlDistributionPoints: try configuration.crlDistributionPoints, caKeyURI: configuration.caKeyURI)
        let caFingerprint = Array(SHA256.hash(data: credentials.authority.certificate.derBytes))
        guard try await store.agreedSetting("ca-certificate", proposing: caFingerprint) == caFingerprint else {
            throw HubStartupError(
                "this node's CA (\(configuration.dataDirectory)/ca.crt) is not the CA of the other hub nodes on this "
                    + "database: devices enrolled by them would not be trusted here, nor ours there")
        }
        // This node's TLS pins, where pairing on any node reads every node's.
        let clusterPins = ClusterPins(
            store: store, node: try ClusterPins.nodeID(dataDirectory: configuration.dataDirectory),
            name: configuration.clusterNodeName ?? NodeDescription.hostName, identity: credentials.identity,
            auditKey: auditKey, logger: logger)
        try await clusterPins.record()
        return Prepared(
            store: store, credentials: credentials, auditKey: auditKey, metrics: metrics, clusterPins: clusterPins)
    }

    /// Opens the store (SQLite by default), creates or loads the credentials and builds both listeners.
    public static func make(
        configuration: HubConfiguration, store: (any HubStore)? = nil, logger: Logger,
        gracefulShutdownSignals: [UnixSignal] = [.sigterm, .sigint]
    ) async throws -> HubServer {
        let prepared = try await prepare(configuration: configuration, store: store, logger: logger)
        let (store, credentials, auditKey, metrics, clusterPins) = (
            prepared.store, prepared.credentials, prepared.auditKey, prepared.metrics, prepared.clusterPins
        )
        let crl = CRLPublisher(
            authority: credentials.authority, store: store, dataDirectory: configuration.dataDirectory,
            validityDays: configuration.crlValidityDays,
            logger: {
                var crlLogger = logger
                crlLogger[metadataKey: "service"] = "crl"
                return crlLogger
            }())
        try await crl.publish()
        let gateway = GatewayPipeline(policy: configuration.gateway.policy(maxBodyBytes: configuration.maxBodyBytes))
        // Other nodes' changes are followed from here: read first, so none made while the state loads is skipped.
        let clusterPosition = try await store.latestClusterEvent()
        try await restoreGatewayState(gateway, store: store, logger: logger)
        let revocations = RevocationList(try await store.revokedSerials())
        let renewals = CertificateRenewals(store: store, revocations: revocations, crl: crl, logger: logger)
        try await renewals.load()
        if let key = credentials.authority.tokenKey, let repository = configuration.tufRepository,
            let bytes = FileManager.default.contents(atPath: repository + "/metadata/root.json"),
            let root = try? Metadata<Root>.parse(Array(bytes))
        {
            try refuseOfflineKeys(onTokensOf: [key], root: root.signed)
        }
        let deviceSignals = DeviceSignals()
        var rollouts: RolloutController?
        if let repository = configuration.tufRepository {
            var rolloutLogger = logger
            rolloutLogger[metadataKey: "service"] = "rollouts"
            let controller = RolloutController(
                store: store, signals: deviceSignals,
                assignments: UpdateAssignments(store: store, repository: repository),
                logger: rolloutLogger)
            try await controller.load()
            rollouts = controller
        }
        let broker = MQTTBroker(
            maxQueued: configuration.mqttSettings.maxQueuedMessages,
            maxRetained: configuration.mqttSettings.maxRetainedMessages,
            maxRetainedPerOwner: configuration.mqttSettings.maxRetainedPerClient,
            maxRetainedBytes: configuration.mqttSettings.maxRetainedBytes)
        // This node's id for this run: the sessions it holds and the messages it hands on are recorded with it.
        var mqttLogger = logger
        mqttLogger[metadataKey: "service"] = "mqtt-state"
        let persistence = MQTTPersistence(
            store: store, broker: broker,
            node: NodeDescription(
                name: configuration.clusterNodeName ?? NodeDescription.hostName,
                named: configuration.clusterNodeName != nil),
            handOverWait: .milliseconds(Int64(configuration.clusterSessionHandOverSeconds * 1000)), logger: mqttLogger)
        await broker.advance(to: clusterPosition)
        try await persistence.load()
        return try HubServer(
            configuration: configuration, store: store, credentials: credentials, revocations: revocations,
            gateway: gateway, logger: logger, signals: gracefulShutdownSignals, crl: crl, renewals: renewals,
            deviceSignals: deviceSignals, rollouts: rollouts, metrics: metrics, auditKey: auditKey,
            clusterPosition: clusterPosition, broker: broker, persistence: persistence, clusterPins: clusterPins)
    }

    /// Refuses to serve on a clock more than `limit` seconds off the database server's (several nodes): signatures'
    /// `created` windows, nonce expiry and certificate validity all read it. An embedded store has no other clock.
    public static func checkClock(store: any HubStore, now: Date, limit: Double) async throws {
        guard let databaseTime = try await store.databaseTime() else { return }
        let skew = now.timeIntervalSince(databaseTime)
        guard abs(skew) <= limit else {
            throw HubStartupError(
                "this machine's clock is \(Int(skew.rounded())) s off the database server's (more than "
                    + "cluster.maxClockSkewSeconds = \(Int(limit))): signatures, nonces and certificate expiry depend "
                    + "on time. Set the clock (NTP) and start again")
        }
    }

    /// Opens the embedded store with its files private to this user (README, "Data directory").
    static func openSQLite(_ path: String, onCommit: (@Sendable (Int, Duration) -> Void)? = nil) throws
        -> SQLiteHubStore
    {
        try SecretFiles.prepareStoreFile(path)
        let previous = umask(0o077)
        defer { umask(previous) }
        return try SQLiteHubStore(path: path, onCommit: onCommit)
    }

    private init(
        configuration: HubConfiguration, store: any HubStore, credentials: HubCredentials, revocations: RevocationList,
        gateway: GatewayPipeline, logger: Logger, signals: [UnixSignal], crl: CRLPublisher,
        renewals: CertificateRenewals, deviceSignals: DeviceSignals, rollouts: RolloutController?,
        metrics: HubMetrics, auditKey: AuditKey, clusterPosition: Int64, broker: MQTTBroker,
        persistence: MQTTPersistence, clusterPins: ClusterPins
    ) throws {
        self.gateway = gateway
        self.broker = broker
        self.configuration = configuration
        self.store = store
        self.credentials = credentials
        self.revocations = revocations
        self.logger = logger
        let (ports, portsContinuation) = AsyncStream.makeStream(of: (String, Int).self)
        self.ports = ports
        let node = persistence.node
        let bound: @Sendable (String, String, Int) -> Void = { name, host, port in
            node.bound(name, host: host, port: port)
            portsContinuation.yield((name, port))
        }
        let cache = PeerCertificateCache(deviceKeys: gateway.deviceKeys)
        let sessions = SessionKeys(lifetimeSeconds: Int64(configuration.gateway.sessionKeySeconds))
        let events = DeviceEvents(
            egress: EgressMonitor(
                store: store, gateway: gateway,
                recorder: GatewayRecorder(store: store, logger: logger, signals: deviceSignals)),
            updates: UpdateReports(store: store, logger: logger), signals: deviceSignals)
        func assignments(_ repository: String) -> UpdateAssignments {
            var assignments = UpdateAssignments(store: store, repository: repository)
            assignments.rollouts = rollouts
            return assignments
        }

        let limits = configuration.httpLimits
        var openConnections: [(HubMetrics.Listener, ConnectionCounter)] = []
        func application(
            name: HubMetrics.Listener, listener: HubConfiguration.Listener, role: ClientCertificatePolicy.Role,
            routes: (Router<HubRequestContext>) -> Void
        ) throws -> some Service {
            let name = name.rawValue
            let connections = ConnectionCounter(total: limits.maxConnections, perSource: limits.maxConnectionsPerSource)
            openConnections.append((HubMetrics.Listener(rawValue: name) ?? .device, connections))
            let router = Router(context: HubRequestContext.self)
            router.add(
                middleware: ErrorReportingMiddleware(
                    store: store, problems: role == .device,
                    recorder: GatewayRecorder(
                        store: store, logger: logger, signals: deviceSignals, metrics: metrics, interface: .http),
                    metrics: role == .device ? metrics : nil))
            router.add(
                middleware: PeerIdentityMiddleware(revocations: revocations, cache: cache, renewals: renewals))
            routes(router)
            let appLogger = {
                var logger = logger
                logger[metadataKey: "listener"] = .string(name)
                return logger
            }()
            let recorder = GatewayRecorder(
                store: store, logger: appLogger, signals: deviceSignals, metrics: metrics, interface: .http)
            // A request the guard refused for its framing: logged at notice, audited, and counted toward the
            // device's invalid-message quarantine when the certificate names a device.
            let onRefusal: @Sendable (FramingRefusal) -> Void = { refusal in
                let identity = refusal.peerCertificate.flatMap { cache.peer(forDER: $0)?.identity }
                Task {
                    let what = "HTTP framing"
                    if let device = identity?.deviceID {
                        await recorder.record(
                            gateway.malformedRequest(
                                device, problem: refusal.problem, detail: refusal.detail, now: .now()),
                            identity: identity?.uri, source: refusal.source, correlationID: refusal.correlationID,
                            what: what)
                    } else {
                        await recorder.record(
                            Refusal(
                                problem: refusal.problem, stage: .size, detail: refusal.detail,
                                auditKind: "invalid-message"),
                            identity: identity?.uri, source: refusal.source, correlationID: refusal.correlationID,
                            what: what)
                    }
                }
            }
            let (contexts, verify) = try HubTLS.serverContexts(
                credentials: credentials, role: role, revocations: revocations, store: store, logger: appLogger,
                profile: configuration.cryptoProfile)
            return Application(
                router: router,
                server: .gatedTLS(
                    contexts: contexts, verify: verify, gateway: gateway, listener: name, connections: connections,
                    limits: limits, onRefusal: onRefusal,
                    observer: HubMetrics.Listener(rawValue: name).map { (metrics, $0) }),
                configuration: .init(address: .hostname(listener.host, port: listener.port), serverName: nil),
                onServerRunning: { channel in
                    let port = channel.localAddress?.port ?? listener.port
                    appLogger.info("listening", metadata: ["address": .string("\(listener.host):\(port)")])
                    bound(name, listener.host, port)
                },
                logger: appLogger)
        }

        let device = try application(name: .device, listener: configuration.device, role: .device) {
            DeviceRoutes(
                store: store, gateway: gateway, maxBodyBytes: configuration.maxBodyBytes,
                renewal: RenewalSettings(
                    authority: credentials.authority, renewals: renewals, revocations: revocations,
                    certificateLifetime: configuration.deviceCertificateLifetime,
                    graceSeconds: configuration.renewalGraceSeconds), events: events,
                sessions: sessions
            ).register(on: $0)
            if let repository = configuration.tufRepository {
                UpdateRoutes(
                    repository: repository, gateway: gateway,
                    downloads: DownloadSlots(
                        total: configuration.maxDownloads, perHolder: configuration.maxDownloadsPerDevice),
                    assignments: assignments(repository)
                ).register(on: $0)
            }
        }
        let rids = RIDDirectory(store: store, logger: logger)
        let claims = PairingClaims(
            store: store, auditKey: auditKey, lifetime: TimeInterval(configuration.claimLifetimeSeconds),
            policy: .init(
                freeAttempts: configuration.pairingFreeAttempts, baseLockout: configuration.pairingLockoutSeconds,
                maximumLockout: max(3600, configuration.pairingLockoutSeconds)), metrics: metrics)
        // Several nodes on one database hand MQTT messages to each other.
        let relay = store.sharedByNodes ? MessageRelay(origin: persistence.holder) : nil
        var operatorRoutes = OperatorRoutes(
            store: store, authority: credentials.authority, revocations: revocations, claims: claims, rids: rids,
            gateway: gateway, broker: broker, crl: crl,
            assignments: configuration.tufRepository.map(assignments), cryptoProfile: configuration.cryptoProfile,
            rollouts: rollouts,
            releaseGate: ReleaseGate(
                store: store,
                databasePath: configuration.advisoriesDatabase ?? configuration.dataDirectory + "/advisories.db",
                blockSeverity: configuration.releaseBlockSeverity,
                blockUnchecked: configuration.releaseBlockUnchecked, requireGate: configuration.releaseRequireGate,
                publishedTargets: configuration.tufRepository.map(assignments).map { assignments in
                    { assignments.publishedTargets() }
                }))
        operatorRoutes.relay = relay
        operatorRoutes.persistence = persistence
        operatorRoutes.node = node
        let dashboard = try Dashboard(
            routes: operatorRoutes, claims: claims, auditKey: auditKey,
            updatesConfigured: configuration.tufRepository != nil)
        let operatorApp = try application(name: .operator, listener: configuration.operatorAPI, role: .operator) {
            $0.add(middleware: CrossSiteGuard())
            MonitorGate.register(on: $0, metrics: metrics)
            operatorRoutes.register(on: $0)
            dashboard.register(on: $0)
        }
        var pairing = PairingListener(
            host: configuration.pairing.host, port: configuration.pairing.port, credentials: credentials,
            claims: claims, store: store, revocations: revocations, rids: rids,
            settings: configuration.pairingSettings,
            logger: {
                var pairingLogger = logger
                pairingLogger[metadataKey: "listener"] = "pairing"
                return pairingLogger
            }(), onBound: { bound("pairing", configuration.pairing.host, $0) })
        pairing.tufRepository = configuration.tufRepository
        pairing.pins = clusterPins
        pairing.certificateLifetime = configuration.deviceCertificateLifetime
        var mqtt = MQTTListener(
            host: configuration.mqtt.host, port: configuration.mqtt.port, credentials: credentials,
            revocations: revocations, store: store, rids: rids, broker: broker, gateway: gateway,
            settings: configuration.mqttSettings, renewals: renewals, events: events,
            cryptoProfile: configuration.cryptoProfile, metrics: metrics, sessions: mqttSessions,
            pendingQoS0: mqttPendingQoS0,
            logger: {
                var mqttLogger = logger
                mqttLogger[metadataKey: "listener"] = "mqtt"
                return mqttLogger
            }(), onBound: { bound("mqtt", configuration.mqtt.host, $0) })
        mqtt.relay = relay
        // One node: its own message log keeps a device's message for the sessions it reached until they are saved.
        mqtt.messageLog = store.keepsMessageLog ? MessageRelay(origin: persistence.holder) : nil
        mqtt.persistence = persistence
        metrics.attach {
            $0.connections =
                openConnections + [(.mqtt, mqtt.connections), (.pairing, pairing.connections)]
            $0.broker = broker
            $0.claims = claims
            $0.store = store
            $0.updates = configuration.tufRepository != nil
        }
        // Services stop in the reverse order: the MQTT state is saved after the listener has closed its connections.
        var services: [any Service] = [persistence, device, operatorApp, pairing, rids, mqtt]
        var tlsLogger = logger
        tlsLogger[metadataKey: "service"] = "tls"
        services.append(
            TLSKeyWatcher(
                files: TLSKeyFiles(configuration.dataDirectory), authority: credentials.authority,
                identity: credentials.identity, store: store, pins: clusterPins,
                interval: .milliseconds(Int64(configuration.tlsKeyCheckSeconds * 1000)), logger: tlsLogger))
        services.append(CRLRefreshService(publisher: crl, interval: .seconds(3600), logger: logger))
        services.append(
            RenewalSweepService(
                renewals: renewals,
                interval: .milliseconds(Int64(min(60, max(0.5, configuration.renewalGraceSeconds / 4)) * 1000))))
        if let address = configuration.crlAddress {
            var crlLogger = logger
            crlLogger[metadataKey: "listener"] = "crl"
            services.append(
                CRLListener(
                    host: address.host, port: address.port, publisher: crl, logger: crlLogger,
                    onBound: { bound("crl", address.host, $0) }))
        }
        if let repository = configuration.tufRepository, let keys = configuration.tufOnlineKeys {
            var tufLogger = logger
            tufLogger[metadataKey: "service"] = "tuf"
            services.append(
                TUFResignService(
                    resigner: Resigner(
                        directory: repository,
                        keyring: try Self.onlineKeyring(
                            repository: repository, keys: keys, profile: configuration.cryptoProfile),
                        interval: .seconds(configuration.tufResignIntervalSeconds),
                        within: [
                            "snapshot": Int64(configuration.tufSnapshotWithinSeconds),
                            "timestamp": Int64(configuration.tufTimestampWithinSeconds),
                        ]), store: store, logger: tufLogger))
        }
        services.append(
            ClusterSync(
                store: store, revocations: revocations, gateway: gateway, crl: crl, broker: broker, relay: relay,
                persistence: persistence, position: clusterPosition,
                interval: .milliseconds(Int64(configuration.clusterReconcileSeconds * 1000)), logger: logger))
        if let rollouts {
            services.append(
                RolloutService(
                    controller: rollouts, interval: .milliseconds(Int64(configuration.rolloutEvaluateSeconds * 1000))))
        }
        group = ServiceGroup(
            configuration: .init(services: services, gracefulShutdownSignals: signals, logger: logger))
    }

    /// The keys of `tuf.onlineKeys`, which must all be keys the published root authorizes for timestamp or snapshot:
    /// a root or targets key left there would make an internet-facing hub an offline-role signer.
    static func onlineKeyring(repository: String, keys: String, profile: CryptoProfile = .standard) throws -> Keyring {
        let ring = try KeyDirectory(path: keys).keyring()
        if profile == .fips, let outside = ring.signers.values.first(where: { !KeyPolicy.fips.allows($0.publicKey) }) {
            throw HubStartupError(
                "tuf.onlineKeys: key \(outside.keyid.prefix(16)) (\(outside.publicKey.scheme)) is outside crypto.profile "
                    + "fips (ECDSA P-256/P-384, RSA-PSS of 3072 bits or more, Ed25519)")
        }
        guard let bytes = FileManager.default.contents(atPath: repository + "/metadata/root.json"),
            let root = try? Metadata<Root>.parse(Array(bytes))
        else { throw HubStartupError("tuf.repository has no readable metadata/root.json") }
        let online = Set(["timestamp", "snapshot"].flatMap { root.signed.roles[$0]?.keyids ?? [] })
        let foreign = ring.signers.keys.filter { !online.contains($0) }
        guard foreign.isEmpty, !ring.signers.isEmpty else {
            throw HubStartupError(
                "tuf.onlineKeys must hold only the timestamp and snapshot keys of the published root "
                    + "(\(foreign.count) other key(s) found)")
        }
        try refuseOfflineKeys(
            onTokensOf: ring.signers.values.compactMap { ($0 as? PKCS11Signer)?.key }, root: root.signed)
        return ring
    }

    /// Whoever holds a token's PIN can sign with every key on it: a token the hub logs into (for its online keys or
    /// its CA) must not also hold a root, targets or delegated-targets key of the published repository, or the
    /// internet-facing hub could sign as an offline role. Such keys belong on another token, with another PIN.
    static func refuseOfflineKeys(onTokensOf keys: [PKCS11PrivateKey], root: Root) throws {
        guard !keys.isEmpty else { return }
        var offline: [[UInt8]: String] = [:]
        for role in ["root", "targets"] {
            for keyid in root.roles[role]?.keyids ?? [] {
                guard let key = root.keys[keyid], let pem = key.publicValue else { continue }
                if let p256 = try? P256.Signing.PublicKey(pemRepresentation: pem) {
                    offline[Array(p256.x963Representation)] = role
                } else if let p384 = try? P384.Signing.PublicKey(pemRepresentation: pem) {
                    offline[Array(p384.x963Representation)] = role
                }
            }
        }
        for key in keys {
            let onToken: [[UInt8]]
            do { onToken = try key.publicKeysOnToken() } catch { throw HubStartupError("\(error)") }
            if let role = onToken.lazy.compactMap({ offline[$0] }).first {
                throw HubStartupError(
                    "the token \(key.uri.token ?? "-") the hub logs into also holds a \(role) key of the published root: "
                        + "the hub could sign as \(role). Keep offline roles on another token (another PIN)")
            }
        }
    }

    /// Runs until a shutdown signal (or `shutdown()`); closes the store after the listeners stopped.
    public func run() async throws {
        do {
            try await group.run()
        } catch {
            try? await store.close()
            throw error
        }
        try await store.close()
        logger.info("hub stopped")
    }

    /// Waits until every listener is bound and returns the ports (useful with port 0).
    public func listeningPorts() async -> HubPorts {
        var seen: [String: Int] = [:]
        for await (name, port) in ports {
            seen[name] = port
            if let device = seen["device"], let operatorPort = seen["operator"], let pairing = seen["pairing"],
                let mqtt = seen["mqtt"], configuration.crlAddress == nil || seen["crl"] != nil
            {
                return HubPorts(device: device, operator: operatorPort, pairing: pairing, mqtt: mqtt, crl: seen["crl"])
            }
        }
        return HubPorts(
            device: seen["device"] ?? 0, operator: seen["operator"] ?? 0, pairing: seen["pairing"] ?? 0,
            mqtt: seen["mqtt"] ?? 0, crl: seen["crl"])
    }

    public func shutdown() async {
        await group.triggerGracefulShutdown()
    }
}

public struct HubPorts: Sendable {
    public let device: Int
    public let `operator`: Int
    public let pairing: Int
    public let mqtt: Int
    /// The plain CRL listener's port, when `pki.crlAddress` is set.
    public var crl: Int? = nil
}
