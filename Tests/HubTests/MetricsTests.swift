import Core
import Crypto
import Foundation
import Hub
import HubClient
import MQTT
import NIOPosix
import PKI
import Pairing
import Store
import Testing
import X509

/// `/metrics`: a monitor certificate reads it and nothing else; it counts what the hub did with bounded labels only;
/// promtool accepts it; a real Prometheus server scrapes it over mutual TLS.
@Suite(.serialized) struct MetricsTests {
    /// A monitor credential issued through the operator API, as `bulwark operator add NAME --monitor` does.
    static func monitor(_ hub: TestHub, name: String = "prometheus") async throws -> TestDevice {
        let key = P256.Signing.PrivateKey()
        let csr = try CertificateSigningRequest(
            version: .v1, subject: try DistinguishedName { CommonName(name) }, privateKey: Certificate.PrivateKey(key),
            attributes: CertificateSigningRequest.Attributes(), signatureAlgorithm: .ecdsaWithSHA256)
        let issued = try await hub.operatorRequest(
            "POST", "/v1/monitors", json: ["name": name, "csr": try csr.serializeAsPEM().pemString])
        #expect(issued.status == 201)
        let pem = try #require(jsonObject(issued)["certificate"] as? String)
        return try TestDevice(
            id: name, keyPEM: key.pemRepresentation, certificatePEM: pem, caPEM: hub.caPEM, directory: hub.directory)
    }

    static func get(_ hub: TestHub, _ client: TestDevice, _ path: String, method: String = "GET") async throws
        -> HTTPResult
    {
        try await client.request(port: hub.operatorPort, method, path, headers: [], signed: false)
    }

    /// The value of one series in the text format (`name{labels} value`), or nil.
    /// Enrols `id` through the operator API with a certificate of 3 days (within the 7 days that count as
    /// expiring); returns the status.
    static func enrollShortLived(_ hub: TestHub, _ id: String) async throws -> Int {
        let csr = try CertificateSigningRequest(
            version: .v1, subject: try DistinguishedName { CommonName("short") },
            privateKey: Certificate.PrivateKey(P256.Signing.PrivateKey()),
            attributes: CertificateSigningRequest.Attributes(), signatureAlgorithm: .ecdsaWithSHA256)
        return try await hub.operatorRequest(
            "POST", "/v1/devices", json: ["id": id, "csr": try csr.serializeAsPEM().pemString, "days": 3]
        ).status
    }

    static func value(_ text: String, _ series: String) -> Double? {
        for line in text.split(separator: "\n") where line.hasPrefix(series + " ") {
            return Double(line.dropFirst(series.count + 1))
        }
        return nil
    }

    @Test func aMonitorReadsMetricsAndNothingElse() async throws {
        let hub = try await TestHub.start()
        let device = try await hub.enroll("metrics-d1")
        let monitor = try await Self.monitor(hub)
        #expect(try await hub.securityEvents().contains { $0.kind == "monitor-added" })

        let scraped = try await Self.get(hub, monitor, "/metrics")
        #expect(scraped.status == 200)
        #expect(scraped.header("Content-Type") == "text/plain; version=0.0.4; charset=utf-8")
        #expect(scraped.bodyText.contains("# HELP bulwark_gateway_admitted_total "))
        #expect(Self.value(scraped.bodyText, #"bulwark_devices{status="active"}"#) == 1)

        // Everything else on the operator listener is refused to a monitor, whatever the path or method: 403, not
        // 404, so it learns no route.
        for (method, path) in [
            ("GET", "/v1/devices"), ("POST", "/v1/devices"), ("GET", "/v1/crl"), ("GET", "/metrics/"),
            ("GET", "/Metrics"), ("POST", "/metrics"), ("DELETE", "/metrics"), ("GET", "/v1/no-such-route"),
            ("POST", "/v1/devices/metrics-d1/revoke"),
        ] {
            let result = try await Self.get(hub, monitor, path, method: method)
            #expect(result.status == 403, "\(method) \(path) answered \(result.status)")
        }
        #expect(try await hub.server.store.device(try DeviceID("metrics-d1"))?.status == .active)
        // An operator's certificate is refused on /metrics, however spelt: a scraper's credential is not an
        // operator's.
        for path in ["/metrics", "//metrics", "/metrics/", "/metrics//", "/metrics?x=1"] {
            #expect(try await hub.operatorRequest("GET", path).status == 403, "\(path)")
        }
        // Device and application certificates are refused at the operator listener's handshake, and a monitor's at
        // the device listener's and the MQTT listener's.
        await #expect(throws: (any Error).self) { _ = try await Self.get(hub, device, "/metrics") }
        await #expect(throws: (any Error).self) {
            _ = try await monitor.request(port: hub.devicePort, "GET", "/v1/device", signed: false)
        }
        await #expect(throws: (any Error).self) {
            try await MQTTClientConnection.withConnection(
                host: "127.0.0.1", port: hub.mqttPort, tls: try monitor.credentials.tlsConfiguration(),
                clientID: "scraper", version: .v5
            ) { _, _ in }
        }
        let application = try hub.issue(.application(try OperatorName("dash")), now: Date(), days: 1)
        await #expect(throws: (any Error).self) { _ = try await Self.get(hub, application, "/metrics") }
        // The monitor's refusals are audited under its identity, once a (calendar) minute, not one record per
        // request: one, or two when the requests straddled a minute.
        let denied = try await hub.securityEvents().filter {
            $0.kind == "access-denied" && $0.identity == "urn:bulwark:monitor:prometheus"
        }
        #expect((1...2).contains(denied.count), "\(denied.count)")

        // Revoking the monitor's certificate ends its access at once; a device's certificate and the operator's own
        // are not revoked this way.
        let serial = try #require(
            try await hub.server.store.securityEvents(limit: 100).first { $0.kind == "monitor-added" }?.detail
                .split(separator: " ").last.map(String.init))
        let own = try Certificate(
            pemEncoded: String(contentsOfFile: hub.directory + "/operators/admin.crt", encoding: .utf8)
        ).serialHex
        let deviceSerial = try #require(try await hub.server.store.certificates(of: try DeviceID("metrics-d1")).first)
            .serialHex
        #expect(try await hub.operatorRequest("POST", "/v1/certificates/\(deviceSerial)/revoke").status == 409)
        #expect(try await hub.operatorRequest("POST", "/v1/certificates/\(own)/revoke").status == 409)
        #expect(try await hub.operatorRequest("POST", "/v1/certificates/abcdef/revoke").status == 404)
        #expect(try await hub.operatorRequest("POST", "/v1/certificates/\(serial)/revoke").status == 200)
        #expect(try await hub.securityEvents().contains { $0.kind == "credential-revoked" })
        let afterRevocation = try? await Self.get(hub, monitor, "/metrics")
        #expect(afterRevocation == nil || afterRevocation?.status == 403)
        try await hub.stop()
    }

    /// The counters move with what happens: admissions, refusals per stage, failed handshakes, pairing claims,
    /// commits, expiring certificates; label values stay within fixed sets (no device id, topic or address).
    @Test func metricsCountWhatHappenedWithBoundedLabels() async throws {
        let hub = try await TestHub.start()
        let device = try await hub.enroll("metrics-d2")
        let monitor = try await Self.monitor(hub)
        // A certificate that ends within 7 days is counted as expiring.
        #expect(try await Self.enrollShortLived(hub, "metrics-short") == 201)

        // HTTP: one message admitted, then the same signed request replayed.
        let body = Array(#"{"temperature":21}"#.utf8)
        let signed = try device.credentials.signer().sign(
            method: "POST", path: "/v1/telemetry", body: body, created: Int64(Date().timeIntervalSince1970),
            contentType: "application/json")
        for expected in [202, 401] {
            let result = try await device.request(
                port: hub.devicePort, "POST", "/v1/telemetry", body: body,
                headers: [("Content-Type", "application/json")] + signed.map { ($0.name, $0.value) }, signed: false)
            #expect(result.status == expected)
        }
        // MQTT: one message admitted, one that is not JSON.
        let codes = try await MQTTBrokerTests.connect(hub, device) { mqtt, _ in
            let codes = [
                try await mqtt.publishAcknowledged(
                    topic: try TopicName("devices/metrics-d2/telemetry"), payload: Array(#"{"t":1}"#.utf8)),
                try await mqtt.publishAcknowledged(
                    topic: try TopicName("devices/metrics-d2/telemetry"), payload: Array("not json".utf8)),
            ]
            // The broker's gauges while this session is connected.
            let during = try await Self.get(hub, monitor, "/metrics").bodyText
            #expect(Self.value(during, "bulwark_mqtt_sessions_connected") == 1, "\(during)")
            #expect(Self.value(during, "bulwark_mqtt_sessions").map { $0 >= 1 } == true)
            #expect(Self.value(during, #"bulwark_connections_open{listener="mqtt"}"#) == 1)
            for idle in [
                "bulwark_mqtt_inflight_messages", "bulwark_mqtt_queued_messages", "bulwark_mqtt_retained_messages",
                "bulwark_mqtt_retained_bytes", "bulwark_mqtt_dropped_messages_total",
            ] {
                #expect(Self.value(during, idle) == 0, "\(idle)")
            }
            return codes
        }
        #expect(codes == [0, 0x99])
        // A device pairing without a claim: a failed pairing.
        let stranger = NoiseDH.p256.generateKeyPair()
        let unclaimed = try PairingLabel(
            suite: .p256AESGCMSHA256, deviceID: try DeviceID("metrics-unclaimed"), publicKey: stranger.publicKey,
            setupSecret: [UInt8](repeating: 5, count: 16))
        _ = try? await PairingClient.pair(
            host: "127.0.0.1", port: hub.pairingPort, label: unclaimed, identityKey: stranger)
        // A certificate from another CA: a failed handshake on the device listener.
        let foreign = try TestDevice.foreign(id: "metrics-x", directory: hub.directory)
        _ = try? await foreign.request(port: hub.devicePort, "GET", "/v1/device")
        // A pairing claim waiting for its device.
        let label = try PairingLabel(
            suite: .p256AESGCMSHA256, deviceID: try DeviceID("metrics-pair"),
            publicKey: NoiseDH.p256.generateKeyPair().publicKey, setupSecret: [UInt8](repeating: 4, count: 16))
        #expect(try await hub.operatorRequest("POST", "/v1/pairing/claims", json: ["label": label.text]).status == 201)

        var text = ""
        let settled = try await AgentTests.eventually(10) {
            text = try await Self.get(hub, monitor, "/metrics").bodyText
            return Self.value(text, #"bulwark_tls_handshake_failures_total{listener="device",reason="certificate"}"#)
                == 1 && Self.value(text, #"bulwark_pairings_total{outcome="failed"}"#) == 1
        }
        #expect(settled, "\(text)")
        #expect(Self.value(text, #"bulwark_gateway_admitted_total{interface="http"}"#).map { $0 >= 1 } == true)
        #expect(Self.value(text, #"bulwark_gateway_admitted_total{interface="mqtt"}"#) == 1)
        #expect(
            Self.value(
                text, #"bulwark_gateway_refusals_total{interface="http",stage="replay",problem="signature-required"}"#)
                == 1)
        #expect(
            Self.value(
                text, #"bulwark_gateway_refusals_total{interface="mqtt",stage="json",problem="invalid-message"}"#)
                == 1)
        #expect(Self.value(text, #"bulwark_devices{status="active"}"#) == 2)
        #expect(Self.value(text, "bulwark_device_certificates_expiring") == 1)
        #expect(Self.value(text, "bulwark_pairing_claims_open") == 1)
        #expect(Self.value(text, "bulwark_store_commit_batch_messages_count").map { $0 >= 2 } == true)
        #expect(Self.value(text, "bulwark_store_commit_duration_seconds_count").map { $0 >= 2 } == true)
        #expect(Self.value(text, #"bulwark_pairings_total{outcome="paired"}"#) == 0)
        #expect(Self.value(text, #"bulwark_pairings_total{outcome="locked-out"}"#) == 0)
        #expect(Self.value(text, "bulwark_audit_records").map { $0 >= 3 } == true)
        #expect(Self.value(text, "bulwark_store_up") == 1)
        #expect(Self.value(text, #"bulwark_connections_open{listener="operator"}"#).map { $0 >= 1 } == true)

        // Bounded labels: every label value is from a fixed set; no device id, topic, address or name leaks.
        let allowed: Set<String> = Set(
            [
                "http", "mqtt", "device", "operator", "pairing", "certificate", "protocol", "incomplete", "paired",
                "failed", "locked-out", "active", "revoked", "other", "+Inf",
            ]
                + [
                    "connection", "identity", "quarantine", "authorization", "rate-limit", "size", "json", "schema",
                    "replay",
                ]
                + [
                    "forbidden", "signature-required", "rate-limited", "too-large", "unsupported-media-type",
                    "invalid-message", "bad-request", "not-found", "conflict", "unavailable", "method-not-allowed",
                    "not-implemented",
                ])
        let labelValue = try Regex(#"[a-z_]+="([^"]*)""#)
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            for match in line.matches(of: labelValue) {
                let value = String(match.output[1].substring ?? "")
                #expect(
                    allowed.contains(value) || Double(value) != nil, "unbounded label value \(value) in \(line)")
            }
        }
        for secret in ["metrics-d2", "metrics-short", "metrics-pair", "127.0.0.1", "prometheus", "devices/"] {
            #expect(!text.contains(secret), "\(secret) appears in /metrics")
        }

        // promtool (Prometheus's own linter) accepts the exposition.
        let promtool = try #require(which("promtool"), "promtool is required (Debian prometheus)")
        let checked = try await run(promtool, ["check", "metrics"], stdin: text)
        #expect(checked.status == 0, "\(checked.stdout) \(checked.stderr)")
        try await hub.stop()
    }

    /// With an update repository, devices are counted per last reported update step (a fixed set; anything else is
    /// `other`, so a device cannot invent a label value), and promtool accepts the family.
    @Test func updateStepsAreCountedWithBoundedLabels() async throws {
        let repository = try await PinRotationTests.Repository.make("metrics-updates")
        defer { try? FileManager.default.removeItem(atPath: repository.base) }
        let hub = try await PinRotationTests.hub(repository)
        let monitor = try await Self.monitor(hub)
        for (name, step) in [("metrics-u1", "committed"), ("metrics-u2", "committed"), ("metrics-u3", "<made-up>")] {
            _ = try await hub.enroll(name)
            try await hub.server.store.recordUpdateState(
                DeviceUpdateState(
                    deviceID: try DeviceID(name), installedTarget: nil, installedVersion: nil, slot: nil, floor: 0,
                    lastStep: step, stepTarget: nil, reason: nil, sequence: 1, updatedAt: Date()))
        }
        let text = try await Self.get(hub, monitor, "/metrics").bodyText
        #expect(Self.value(text, #"bulwark_update_devices{step="committed"}"#) == 2, "\(text)")
        #expect(Self.value(text, #"bulwark_update_devices{step="other"}"#) == 1)
        #expect(Self.value(text, #"bulwark_update_devices{step="rolled-back"}"#) == 0)
        #expect(!text.contains("made-up"))
        let promtool = try #require(which("promtool"), "promtool is required (Debian prometheus)")
        let checked = try await run(promtool, ["check", "metrics"], stdin: text)
        #expect(checked.status == 0, "\(checked.stdout) \(checked.stderr)")
        try await hub.stop()
    }

    /// A real Prometheus server, started on 127.0.0.1, scrapes the hub over mutual TLS with the monitor
    /// certificate, and its query API returns the refusal a replay caused.
    @Test func prometheusScrapesTheHubOverMutualTLS() async throws {
        let prometheus = try #require(which("prometheus"), "prometheus is required (Debian prometheus)")
        let curl = try #require(which("curl"))
        let hub = try await TestHub.start()
        let device = try await hub.enroll("metrics-prom")
        let monitor = try await Self.monitor(hub)
        let directory = try temporaryDirectory("prometheus")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let port = try await CRLTests.freePort()
        let configuration = """
            global:
              scrape_interval: 3s
              scrape_timeout: 3s
            scrape_configs:
              - job_name: bulwark
                scheme: https
                static_configs:
                  - targets: ["127.0.0.1:\(hub.operatorPort)"]
                tls_config:
                  ca_file: \(monitor.caFile)
                  cert_file: \(monitor.certificateFile)
                  key_file: \(monitor.keyFile)
                  server_name: localhost
                  min_version: TLS13
            """
        try configuration.write(toFile: directory + "/prometheus.yml", atomically: true, encoding: .utf8)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: prometheus)
        process.arguments = [
            "--config.file=\(directory)/prometheus.yml", "--storage.tsdb.path=\(directory)/data",
            "--web.listen-address=127.0.0.1:\(port)",
        ]
        let log = try #require(FileHandle(forWritingAtPath: "/dev/null"))
        process.standardOutput = log
        process.standardError = FileHandle(forWritingAtPath: "/dev/null")
        try process.run()
        defer { process.stop(within: 10) }
        func query(_ expression: String) async throws -> String {
            try await run(
                curl,
                [
                    "-s", "--max-time", "5", "-G", "http://127.0.0.1:\(port)/api/v1/query", "--data-urlencode",
                    "query=\(expression)",
                ]
            ).stdout
        }
        // The target is up (Prometheus completed the mutual-TLS scrape) …
        var answer = ""
        // A scrape of the debug-build hub can take over a second while the whole suite loads both cores: the
        // timeout is 3 s and the wait a minute (alone, the first scrape succeeds within a few seconds).
        let up = try await AgentTests.eventually(60) {
            answer = try await query(#"up{job="bulwark"}"#)
            return answer.contains(#","1"]"#)
        }
        #expect(up, "Prometheus never scraped the hub: \(answer)")
        // … then a replay, which the next scrapes report.
        let body = Array(#"{"t":2}"#.utf8)
        let signed = try device.credentials.signer().sign(
            method: "POST", path: "/v1/telemetry", body: body, created: Int64(Date().timeIntervalSince1970),
            contentType: "application/json")
        for _ in 0..<2 {
            _ = try await device.request(
                port: hub.devicePort, "POST", "/v1/telemetry", body: body,
                headers: [("Content-Type", "application/json")] + signed.map { ($0.name, $0.value) }, signed: false)
        }
        let expression = #"bulwark_gateway_refusals_total{stage="replay"}"#
        let counted = try await AgentTests.eventually(60) {
            answer = try await query(expression)
            return answer.contains(#","1"]"#)
        }
        #expect(counted, "\(answer)")
        try await hub.stop()
    }
}
