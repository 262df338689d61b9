public import Advisories
import Configuration
public import Core
public import Foundation
public import PostgresStore
import Store
import SystemPackage

/// The hub's settings: a JSON file (`--config FILE`) with `BULWARK_*` environment variables overriding it
/// (`device.port` ← `BULWARK_DEVICE_PORT`), through apple/swift-configuration.
///
/// No setting holds a secret. A database URL that carries a password is refused at start-up; the password belongs
/// in a file named by `database.passwordFile` (`BULWARK_DATABASE_PASSWORD_FILE`).
public struct HubConfiguration: Sendable, Equatable {
    public struct Listener: Sendable, Equatable {
        public var host: String
        public var port: Int

        public init(host: String, port: Int) {
            self.host = host
            self.port = port
        }
    }

    public var dataDirectory: String
    public var device = Listener(host: "127.0.0.1", port: 8443)
    public var operatorAPI = Listener(host: "127.0.0.1", port: 8444)
    /// The pairing listener (Noise over TCP; no TLS needed).
    public var pairing = Listener(host: "127.0.0.1", port: 8445)
    /// The MQTT listener (TLS 1.3, device certificate required).
    public var mqtt = Listener(host: "127.0.0.1", port: 8883)
    /// How long a pairing claim stays valid.
    public var claimLifetimeSeconds = 600
    /// Failed pairings per device before lock-out, and the first lock-out (doubling with each further failure).
    public var pairingFreeAttempts = 5
    public var pairingLockoutSeconds = 30.0
    /// Lifetime of device certificates issued by renewal, and how long a renewed certificate's predecessor stays
    /// valid when the device does not use the new one (`pki.deviceCertificateDays`, `pki.renewalGraceSeconds`).
    public var deviceCertificateDays = 90
    /// A lifetime in seconds instead of days (`pki.deviceCertificateSeconds`, 60 s to 397 days), for fleets that
    /// want short-lived device certificates.
    public var deviceCertificateSeconds: Double?
    public var renewalGraceSeconds = 86_400.0

    /// The lifetime of every device certificate the hub issues (pairing and renewal).
    public var deviceCertificateLifetime: TimeInterval {
        deviceCertificateSeconds ?? Double(deviceCertificateDays) * 86400
    }
    /// How often the hub looks for a rotated TLS key in the data directory (`bulwark hub rotate-tls-key`).
    public var tlsKeyCheckSeconds = 5.0
    /// Update downloads in progress at once, in all and per device (`updates.maxDownloads*`).
    public var maxDownloads = 256
    public var maxDownloadsPerDevice = 2
    /// Deadlines and connection caps of the device and operator HTTPS listeners (`http.*`).
    public var httpLimits = HTTPLimits()
    /// Connection caps and the hello deadline of the pairing listener (`pairing.*`).
    public var pairingSettings = PairingSettings()
    /// `sqlite:PATH` (default `sqlite:<data>/bulwark.sqlite`) or `postgres://USER@HOST:PORT/DB?sslmode=verify-full`
    /// (see `PostgresLocation`), its password in `database.passwordFile` and the CA of its TLS certificate in
    /// `database.caFile`.
    public var databaseURL: String?
    public var databasePasswordFile: String?
    public var databaseCAFile: String?
    /// How often a node reads the changes other nodes recorded, in case a notification was missed
    /// (`cluster.reconcileSeconds`; notifications normally bring them within milliseconds).
    public var clusterReconcileSeconds = 5.0
    /// How long a node whose client connected waits for the node holding its MQTT session to hand it over, before
    /// it takes the session as last saved (`cluster.sessionHandOverSeconds`: the holder may have died).
    public var clusterSessionHandOverSeconds = 5.0
    /// How far this node's clock may be from the database server's before it refuses to start
    /// (`cluster.maxClockSkewSeconds`; signed requests allow `gateway.signatureSkewSeconds`, 60 s by default).
    public var clusterMaxClockSkewSeconds = 30.0
    /// The name this node gives itself in `bulwark node list` (`cluster.nodeName`; the host name by default).
    public var clusterNodeName: String?
    /// Largest telemetry body accepted; larger ones are refused with 413 before they are read whole.
    public var maxBodyBytes = 64 * 1024
    /// Extra DNS names for the hub's TLS certificate (localhost and 127.0.0.1 are always included).
    public var hubNames: [String] = []
    public var logLevel = "info"
    /// Rate limits, signature clock skew, quarantine thresholds, JSON limits (`gateway.*`).
    public var gateway = GatewaySettings()
    /// Broker limits and topic access patterns (`mqtt.*`).
    public var mqttSettings = MQTTSettings()
    /// The TUF repository whose timestamp and snapshot the hub re-signs (`tuf.repository`), the directory holding
    /// only those online keys (`tuf.onlineKeys`), how often it checks, and how close to expiry a role is re-signed.
    public var tufRepository: String?
    public var tufOnlineKeys: String?
    /// The CA key on a PKCS#11 token (`ca.key`, a `pkcs11:` URI made with `bulwark hsm keygen`); nil keeps it in
    /// `DATA/ca.key`. The PIN comes from the URI's pin-source or BULWARK_PKCS11_PIN, never from this file.
    public var caKeyURI: String?
    /// `crypto.profile`: `standard`, or `fips` for FIPS-approved algorithms only on every listener, in pairing and in
    /// TUF (see `CryptoProfile`).
    public var cryptoProfile = CryptoProfile.standard
    /// How often a staged rollout's current stage is evaluated (`rollout.evaluateSeconds`).
    public var rolloutEvaluateSeconds = 10.0
    /// The vulnerability gate blocks a release with an unwaived advisory rated at or above this
    /// (`release.blockSeverity`: low, medium, high or critical; default high).
    public var releaseBlockSeverity = Severity.high
    /// The imported OSV advisories (`advisories.database`; default `<data>/advisories.db`).
    public var advisoriesDatabase: String?
    /// `release.blockUnchecked`: a component whose package URL names no ecosystem with advisories (`pkg:generic`,
    /// `pkg:rpm`) blocks the release (default false: listed in the report; an SBOM with nothing checkable always
    /// blocks).
    public var releaseBlockUnchecked = false
    /// `release.requireGate`: the hub assigns (and rolls out) only targets whose signed custom carries the report of
    /// a gate run that passed for those very bytes (default false).
    public var releaseRequireGate = false
    public var tufResignIntervalSeconds = 3600
    public var tufTimestampWithinSeconds = 6 * 3600
    public var tufSnapshotWithinSeconds = 2 * 86400
    /// The plain-HTTP listener serving only the CRL, read-only and unauthenticated (`pki.crlAddress`, host:port; off
    /// when nil; certificates then name no distribution point), and how long each CRL is valid (`pki.crlValidityDays`).
    /// See `crlDistributionPointURL`.
    public var crlAddress: Listener?
    public var crlValidityDays = 7
    /// The audit log's MAC key (`audit.keyFile`, `BULWARK_AUDIT_KEY_FILE`), a 0600 file; default `<data>/audit.key`.
    /// Keep it off the data disk where possible: whoever holds the database and this key can rewrite the log.
    public var auditKeyFile: String?

    public init(dataDirectory: String) {
        self.dataDirectory = dataDirectory
    }

    /// The settings `bulwark node init` and `node join --database` write into the data directory (the database, the
    /// node's name): the node then starts with `bulwark serve --data DIR` alone.
    public static let nodeFileName = "node.json"

    /// The settings of `DATA/node.json`, absolute paths: the database's URL, password file and CA file, and the
    /// node's name. No secret: the password stays in its own file.
    public static func nodeFile(
        databaseURL: String, passwordFile: String?, caFile: String?, nodeName: String?
    ) throws -> String {
        func absolute(_ path: String) -> String {
            path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
        }
        var database: [String: Any] = ["url": databaseURL]
        if let passwordFile { database["passwordFile"] = absolute(passwordFile) }
        if let caFile { database["caFile"] = absolute(caFile) }
        var object: [String: Any] = ["database": database]
        if let nodeName { object["cluster"] = ["nodeName": nodeName] }
        let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .prettyPrinted])
        return String(decoding: data, as: UTF8.self) + "\n"
    }

    /// Reads the file (if given) and the environment, then validates. Errors say which setting is wrong.
    public static func load(
        dataDirectory: String?, configFile: String?, environment: [String: String] = ProcessInfo.processInfo.environment
    ) async throws -> HubConfiguration {
        var providers: [any ConfigProvider] = [
            EnvironmentVariablesProvider(environmentVariables: environment).prefixKeys(with: ["bulwark"])
        ]
        if let configFile {
            guard FileManager.default.fileExists(atPath: configFile) else {
                throw HubStartupError("configuration file \(configFile) does not exist")
            }
            do {
                providers.append(try await FileProvider<HubFileSnapshot>(filePath: FilePath(configFile)))
            } catch {
                throw HubStartupError("configuration file \(configFile) is not valid JSON")
            }
        }
        var reader = ConfigReader(providers: providers)
        let dataDirectory = dataDirectory ?? reader.string(forKey: "data", default: "./bulwark-data")
        // A node made by `bulwark node init` or `node join --database` keeps its database settings in DATA/node.json:
        // read last, so that the environment and --config override it.
        let nodeFile = dataDirectory + "/" + nodeFileName
        if FileManager.default.fileExists(atPath: nodeFile) {
            do { providers.append(try await FileProvider<HubFileSnapshot>(filePath: FilePath(nodeFile))) } catch {
                throw HubStartupError("\(nodeFile) is not valid JSON")
            }
            reader = ConfigReader(providers: providers)
        }
        var config = HubConfiguration(dataDirectory: dataDirectory)
        config.device.host = reader.string(forKey: "device.host", default: config.device.host)
        config.device.port = reader.int(forKey: "device.port", default: config.device.port)
        config.operatorAPI.host = reader.string(forKey: "operator.host", default: config.operatorAPI.host)
        config.operatorAPI.port = reader.int(forKey: "operator.port", default: config.operatorAPI.port)
        config.mqtt.host = reader.string(forKey: "mqtt.host", default: config.mqtt.host)
        config.mqtt.port = reader.int(forKey: "mqtt.port", default: config.mqtt.port)
        config.pairing.host = reader.string(forKey: "pairing.host", default: config.pairing.host)
        config.pairing.port = reader.int(forKey: "pairing.port", default: config.pairing.port)
        config.claimLifetimeSeconds = reader.int(forKey: "pairing.claimLifetimeSeconds", default: 600)
        config.pairingFreeAttempts = reader.int(forKey: "pairing.freeAttempts", default: 5)
        config.pairingLockoutSeconds = reader.double(forKey: "pairing.lockoutSeconds", default: 30)
        config.deviceCertificateDays = reader.int(
            forKey: "pki.deviceCertificateDays", default: config.deviceCertificateDays)
        config.renewalGraceSeconds = reader.double(
            forKey: "pki.renewalGraceSeconds", default: config.renewalGraceSeconds)
        config.deviceCertificateSeconds = reader.double(forKey: "pki.deviceCertificateSeconds")
        config.tlsKeyCheckSeconds = reader.double(forKey: "tls.keyCheckSeconds", default: config.tlsKeyCheckSeconds)
        config.maxDownloads = reader.int(forKey: "updates.maxDownloads", default: config.maxDownloads)
        config.maxDownloadsPerDevice = reader.int(
            forKey: "updates.maxDownloadsPerDevice", default: config.maxDownloadsPerDevice)
        var http = HTTPLimits()
        http.handshakeSeconds = reader.double(forKey: "http.handshakeSeconds", default: http.handshakeSeconds)
        http.headerSeconds = reader.double(forKey: "http.headerSeconds", default: http.headerSeconds)
        http.bodySeconds = reader.double(forKey: "http.bodySeconds", default: http.bodySeconds)
        http.idleSeconds = reader.double(forKey: "http.idleSeconds", default: http.idleSeconds)
        http.maxConnections = reader.int(forKey: "http.maxConnections", default: http.maxConnections)
        http.maxConnectionsPerSource = reader.int(
            forKey: "http.maxConnectionsPerSource", default: http.maxConnectionsPerSource)
        config.httpLimits = http
        config.pairingSettings.maxConnections = reader.int(
            forKey: "pairing.maxConnections", default: config.pairingSettings.maxConnections)
        config.pairingSettings.maxConnectionsPerSource = reader.int(
            forKey: "pairing.maxConnectionsPerSource", default: config.pairingSettings.maxConnectionsPerSource)
        config.pairingSettings.helloSeconds = reader.double(
            forKey: "pairing.helloSeconds", default: config.pairingSettings.helloSeconds)
        config.databaseURL = reader.string(forKey: "database.url")
        config.databasePasswordFile = reader.string(forKey: "database.passwordFile")
        config.databaseCAFile = reader.string(forKey: "database.caFile")
        config.clusterReconcileSeconds = reader.double(
            forKey: "cluster.reconcileSeconds", default: config.clusterReconcileSeconds)
        config.clusterSessionHandOverSeconds = reader.double(
            forKey: "cluster.sessionHandOverSeconds", default: config.clusterSessionHandOverSeconds)
        config.clusterMaxClockSkewSeconds = reader.double(
            forKey: "cluster.maxClockSkewSeconds", default: config.clusterMaxClockSkewSeconds)
        config.clusterNodeName = reader.string(forKey: "cluster.nodeName")
        config.maxBodyBytes = reader.int(forKey: "telemetry.maxBodyBytes", default: config.maxBodyBytes)
        config.hubNames = reader.stringArray(forKey: "hub.names", default: [])
        config.logLevel = reader.string(forKey: "log.level", default: config.logLevel)
        var gateway = GatewaySettings()
        gateway.deviceRate = reader.double(forKey: "gateway.deviceRate", default: gateway.deviceRate)
        gateway.deviceBurst = reader.int(forKey: "gateway.deviceBurst", default: gateway.deviceBurst)
        gateway.routeRate = reader.double(forKey: "gateway.routeRate", default: gateway.routeRate)
        gateway.routeBurst = reader.int(forKey: "gateway.routeBurst", default: gateway.routeBurst)
        gateway.updatesRate = reader.double(forKey: "gateway.updatesRate", default: gateway.updatesRate)
        gateway.updatesBurst = reader.int(forKey: "gateway.updatesBurst", default: gateway.updatesBurst)
        gateway.sourceRate = reader.double(forKey: "gateway.sourceRate", default: gateway.sourceRate)
        gateway.sourceBurst = reader.int(forKey: "gateway.sourceBurst", default: gateway.sourceBurst)
        gateway.connectionRate = reader.double(forKey: "gateway.connectionRate", default: gateway.connectionRate)
        gateway.connectionBurst = reader.int(forKey: "gateway.connectionBurst", default: gateway.connectionBurst)
        gateway.signatureSkewSeconds = reader.int(
            forKey: "gateway.signatureSkewSeconds", default: gateway.signatureSkewSeconds)
        gateway.quarantineSeconds = reader.int(forKey: "gateway.quarantineSeconds", default: gateway.quarantineSeconds)
        gateway.quarantineRateLimited = reader.int(
            forKey: "gateway.quarantine.rateLimited", default: gateway.quarantineRateLimited)
        gateway.quarantineInvalid = reader.int(forKey: "gateway.quarantine.invalid", default: gateway.quarantineInvalid)
        gateway.quarantineReplay = reader.int(forKey: "gateway.quarantine.replay", default: gateway.quarantineReplay)
        gateway.quarantineBadSignature = reader.int(
            forKey: "gateway.quarantine.badSignature", default: gateway.quarantineBadSignature)
        gateway.quarantineEgress = reader.int(forKey: "gateway.quarantine.egress")
        gateway.renewalBurst = reader.int(forKey: "gateway.renewalBurst", default: gateway.renewalBurst)
        gateway.renewalIntervalSeconds = reader.double(
            forKey: "gateway.renewalIntervalSeconds", default: gateway.renewalIntervalSeconds)
        gateway.requireSchema = reader.bool(forKey: "gateway.requireSchema", default: gateway.requireSchema)
        gateway.sessionKeySeconds = reader.int(forKey: "gateway.sessionKeySeconds", default: gateway.sessionKeySeconds)
        gateway.jsonMaxDepth = reader.int(forKey: "gateway.jsonMaxDepth", default: gateway.jsonMaxDepth)
        gateway.jsonMaxMembers = reader.int(forKey: "gateway.jsonMaxMembers", default: gateway.jsonMaxMembers)
        gateway.jsonMaxStringBytes = reader.int(
            forKey: "gateway.jsonMaxStringBytes", default: gateway.jsonMaxStringBytes)
        gateway.jsonMaxNumberLength = reader.int(
            forKey: "gateway.jsonMaxNumberLength", default: gateway.jsonMaxNumberLength)
        config.gateway = gateway
        var mqtt = MQTTSettings()
        mqtt.maxConnections = reader.int(forKey: "mqtt.maxConnections", default: mqtt.maxConnections)
        mqtt.maxConnectionsPerSource = reader.int(
            forKey: "mqtt.maxConnectionsPerSource", default: mqtt.maxConnectionsPerSource)
        mqtt.connectDeadlineSeconds = reader.double(
            forKey: "mqtt.connectDeadlineSeconds", default: mqtt.connectDeadlineSeconds)
        mqtt.maxQueuedMessages = reader.int(forKey: "mqtt.maxQueuedMessages", default: mqtt.maxQueuedMessages)
        mqtt.maxSessionExpirySeconds = reader.int(
            forKey: "mqtt.maxSessionExpirySeconds", default: mqtt.maxSessionExpirySeconds)
        mqtt.maxRetainedMessages = reader.int(forKey: "mqtt.maxRetainedMessages", default: mqtt.maxRetainedMessages)
        mqtt.maxRetainedPerClient = reader.int(forKey: "mqtt.maxRetainedPerClient", default: mqtt.maxRetainedPerClient)
        mqtt.maxRetainedBytes = reader.int(forKey: "mqtt.maxRetainedBytes", default: mqtt.maxRetainedBytes)
        mqtt.receiveMaximum = reader.int(forKey: "mqtt.receiveMaximum", default: mqtt.receiveMaximum)
        mqtt.topicAliasMaximum = reader.int(forKey: "mqtt.topicAliasMaximum", default: mqtt.topicAliasMaximum)
        mqtt.maxKeepAliveSeconds = reader.int(forKey: "mqtt.maxKeepAliveSeconds", default: mqtt.maxKeepAliveSeconds)
        mqtt.maxSubscriptionsPerSession = reader.int(
            forKey: "mqtt.maxSubscriptionsPerSession", default: mqtt.maxSubscriptionsPerSession)
        mqtt.maxSessionsPerIdentity = reader.int(
            forKey: "mqtt.maxSessionsPerIdentity", default: mqtt.maxSessionsPerIdentity)
        mqtt.maxFiltersPerSubscribe = reader.int(
            forKey: "mqtt.maxFiltersPerSubscribe", default: mqtt.maxFiltersPerSubscribe)
        mqtt.devicePublish = reader.stringArray(forKey: "mqtt.devicePublish", default: mqtt.devicePublish)
        mqtt.deviceSubscribe = reader.stringArray(forKey: "mqtt.deviceSubscribe", default: mqtt.deviceSubscribe)
        mqtt.fleetPublish = reader.stringArray(forKey: "mqtt.fleetPublish", default: mqtt.fleetPublish)
        mqtt.fleetSubscribe = reader.stringArray(forKey: "mqtt.fleetSubscribe", default: mqtt.fleetSubscribe)
        if let payloads = try PayloadRulesConfiguration.load(
            file: configFile, environment: reader.string(forKey: "mqtt.payloads"))
        {
            mqtt.payloads = payloads
        }
        config.mqttSettings = mqtt
        config.tufRepository = reader.string(forKey: "tuf.repository")
        config.tufOnlineKeys = reader.string(forKey: "tuf.onlineKeys")
        config.caKeyURI = reader.string(forKey: "ca.key")
        config.rolloutEvaluateSeconds = reader.double(
            forKey: "rollout.evaluateSeconds", default: config.rolloutEvaluateSeconds)
        if let text = reader.string(forKey: "release.blockSeverity") {
            guard let severity = Severity(label: text), severity != .none else {
                throw HubStartupError("release.blockSeverity must be low, medium, high or critical")
            }
            config.releaseBlockSeverity = severity
        }
        config.advisoriesDatabase = reader.string(forKey: "advisories.database")
        config.releaseBlockUnchecked = reader.bool(forKey: "release.blockUnchecked", default: false)
        config.releaseRequireGate = reader.bool(forKey: "release.requireGate", default: false)
        if let profile = reader.string(forKey: "crypto.profile") {
            do { config.cryptoProfile = try CryptoProfile(parsing: profile) } catch {
                throw HubStartupError(error.description)
            }
        }
        config.tufResignIntervalSeconds = reader.int(
            forKey: "tuf.resignIntervalSeconds", default: config.tufResignIntervalSeconds)
        config.tufTimestampWithinSeconds = reader.int(
            forKey: "tuf.timestampWithinSeconds", default: config.tufTimestampWithinSeconds)
        config.tufSnapshotWithinSeconds = reader.int(
            forKey: "tuf.snapshotWithinSeconds", default: config.tufSnapshotWithinSeconds)
        config.auditKeyFile = reader.string(forKey: "audit.keyFile")
        config.crlAddress = try reader.string(forKey: "pki.crlAddress").map(Self.crlListener)
        config.crlValidityDays = reader.int(forKey: "pki.crlValidityDays", default: config.crlValidityDays)
        try config.validate()
        return config
    }

    public func validate() throws {
        if let url = databaseURL {
            let secretParameters: Set<String> = ["password", "passwd", "pwd", "sslpassword", "pass"]
            if let components = URLComponents(string: url),
                components.password != nil
                    || (components.queryItems ?? []).contains(where: { secretParameters.contains($0.name.lowercased()) }
                    )
            {
                throw HubStartupError(
                    "database.url must not contain a password; put the password in a file with mode 0600 and name it "
                        + "in database.passwordFile (environment: BULWARK_DATABASE_PASSWORD_FILE)")
            }
            guard try url.hasPrefix("sqlite:") || postgresLocation() != nil else {
                throw HubStartupError(
                    "database.url must read sqlite:PATH or postgres://USER@HOST:PORT/DATABASE?sslmode=verify-full")
            }
        }
        for (name, listener) in [("device", device), ("operator", operatorAPI), ("pairing", pairing), ("mqtt", mqtt)] {
            guard (0...65535).contains(listener.port) else {
                throw HubStartupError("\(name).port must be between 0 and 65535")
            }
        }
        guard (1...100).contains(pairingFreeAttempts), (0.1...86400).contains(pairingLockoutSeconds) else {
            throw HubStartupError("pairing.freeAttempts must be 1-100 and pairing.lockoutSeconds 0.1-86400")
        }
        guard (0.05...3600).contains(clusterReconcileSeconds) else {
            throw HubStartupError("cluster.reconcileSeconds must be between 0.05 and 3600")
        }
        guard (0.1...300).contains(clusterSessionHandOverSeconds) else {
            throw HubStartupError("cluster.sessionHandOverSeconds must be between 0.1 and 300")
        }
        if let name = clusterNodeName,
            !(1...64).contains(name.utf8.count) || name.utf8.contains(where: { $0 < 0x21 || $0 > 0x7E })
        {
            throw HubStartupError("cluster.nodeName must be 1-64 printable ASCII characters without spaces")
        }
        guard (10...86400).contains(claimLifetimeSeconds) else {
            throw HubStartupError("pairing.claimLifetimeSeconds must be between 10 and 86400")
        }
        guard (1024...(16 * 1024 * 1024)).contains(maxBodyBytes) else {
            throw HubStartupError("telemetry.maxBodyBytes must be between 1024 and 16777216")
        }
        try gateway.validate()
        try mqttSettings.validate()
        try pairingSettings.validate()
        try validateCRL()
        try httpLimits.validate()
        guard (1...100_000).contains(maxDownloads), (1...100).contains(maxDownloadsPerDevice) else {
            throw HubStartupError("updates.maxDownloads must be 1-100000 and updates.maxDownloadsPerDevice 1-100")
        }
        guard (1...397).contains(deviceCertificateDays), (0...(30 * 86_400)).contains(renewalGraceSeconds) else {
            throw HubStartupError("pki.deviceCertificateDays must be 1-397 and pki.renewalGraceSeconds 0-2592000")
        }
        if let seconds = deviceCertificateSeconds, !(60...(397 * 86400)).contains(seconds) {
            throw HubStartupError("pki.deviceCertificateSeconds must be 60-34300800")
        }
        guard (0.05...3600).contains(tlsKeyCheckSeconds) else {
            throw HubStartupError("tls.keyCheckSeconds must be 0.05-3600")
        }
        guard (tufRepository == nil) == (tufOnlineKeys == nil) else {
            throw HubStartupError("tuf.repository and tuf.onlineKeys go together")
        }
        if let repository = tufRepository, let keys = tufOnlineKeys {
            let repo = URL(fileURLWithPath: repository).standardizedFileURL.path
            let keyPath = URL(fileURLWithPath: keys).standardizedFileURL.path
            guard !(keyPath + "/").hasPrefix(repo + "/") else {
                throw HubStartupError("tuf.onlineKeys must not be inside tuf.repository (it would be published)")
            }
        }
        guard (10...86400).contains(tufResignIntervalSeconds), (60...(30 * 86400)).contains(tufTimestampWithinSeconds),
            (60...(365 * 86400)).contains(tufSnapshotWithinSeconds)
        else {
            throw HubStartupError(
                "tuf.resignIntervalSeconds must be 10-86400, tuf.timestampWithinSeconds 60-2592000, "
                    + "tuf.snapshotWithinSeconds 60-31536000")
        }
        // A role must be looked at at least twice within its re-signing window, or it can expire between two passes.
        guard tufTimestampWithinSeconds >= 2 * tufResignIntervalSeconds,
            tufSnapshotWithinSeconds >= 2 * tufResignIntervalSeconds
        else {
            throw HubStartupError(
                "tuf.timestampWithinSeconds and tuf.snapshotWithinSeconds must be at least twice tuf.resignIntervalSeconds"
            )
        }
    }

    public var auditKeyPath: String { auditKeyFile ?? dataDirectory + "/audit.key" }

    /// The PostgreSQL store named by `database.url`, nil for the embedded one.
    public func postgresLocation() throws -> PostgresLocation? {
        guard let url = databaseURL, url.hasPrefix("postgres://") || url.hasPrefix("postgresql://") else { return nil }
        do {
            return try PostgresLocation(url: url, passwordFile: databasePasswordFile, caFile: databaseCAFile)
        } catch let error as StoreError {
            throw HubStartupError(error.detail)
        }
    }

    public var sqlitePath: String {
        if let url = databaseURL, url.hasPrefix("sqlite:") { return String(url.dropFirst("sqlite:".count)) }
        return dataDirectory + "/bulwark.sqlite"
    }
}

/// Why the hub refused to start, in words that say what to do. Never contains a secret.
public struct HubStartupError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
