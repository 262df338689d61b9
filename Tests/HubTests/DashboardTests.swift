import Core
import Crypto
import Foundation
import Hub
import HubClient
import MQTT
import Pairing
import Store
import Testing
import X509

/// The operator dashboard: escaped pages with a strict CSP, same-origin JSON actions only, operators only; and the
/// whole of it in a real browser (Chromium through Playwright).
@Suite(.serialized) struct DashboardTests {
    static let payload = #"{"note":"<script>window.__xss=1</script><img src=x onerror=\"window.__xss=2\">"}"#
    static let scriptPath = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("scripts/dashboard-check.py").path

    /// A device paired as a real one is: its label claimed by the operator, then the pairing protocol.
    static func paired(_ hub: TestHub, _ id: String) async throws -> TestDevice {
        let identity = NoiseDH.p256.generateKeyPair()
        let label = try PairingLabel(
            suite: .p256AESGCMSHA256, deviceID: try DeviceID(id), publicKey: identity.publicKey,
            setupSecret: [UInt8](repeating: 7, count: 16))
        #expect(try await hub.operatorRequest("POST", "/v1/pairing/claims", json: ["label": label.text]).status == 201)
        let result = try await PairingClient.pair(
            host: "127.0.0.1", port: hub.pairingPort, label: label, identityKey: identity)
        return try TestDevice(
            id: id, keyPEM: result.operationalKey.pemRepresentation,
            certificatePEM: try Certificate(derEncoded: result.credentials.certificateDER).pem, caPEM: hub.caPEM,
            directory: hub.directory)
    }

    /// A device that sent the XSS payload as an accepted message (HTTP) and as a refused MQTT message type.
    static func hostileDevice(_ hub: TestHub, _ id: String, pair: Bool = false) async throws -> TestDevice {
        let device = pair ? try await paired(hub, id) : try await hub.enroll(id)
        let sent = try await device.request(port: hub.devicePort, "POST", "/v1/telemetry", body: Array(payload.utf8))
        #expect(sent.status == 202)
        let code = try await MQTTBrokerTests.connect(hub, device) { mqtt, _ in
            try await mqtt.publishAcknowledged(
                topic: try TopicName("devices/\(id)/telemetry/<script>window.__xss=3<"), payload: Array("{}".utf8))
        }
        #expect(code != 0)
        return device
    }

    static func operatorGet(_ hub: TestHub, _ path: String) async throws -> HTTPResult {
        try await hub.operatorRequest("GET", path)
    }

    @Test func pagesAreEscapedAndCarryAStrictPolicy() async throws {
        let hub = try await TestHub.start()
        _ = try await Self.hostileDevice(hub, "ui-d1")
        // Through pairing: a hostile label pasted into the claim form, and a device pairing without a claim.
        let hostileLabel = #"{"label":"BWK1<script>window.__xss=5</script>"}"#
        let claimed = try await HTTPSClient.request(
            host: "localhost", port: hub.operatorPort, tls: try hub.operatorCredentials.tlsConfiguration(),
            method: "POST", path: "/ui/actions/claims",
            headers: [("Content-Type", "application/json"), ("Sec-Fetch-Site", "same-origin")],
            body: Array(hostileLabel.utf8))
        #expect(claimed.status == 400)
        #expect(!claimed.bodyText.contains("<script>"))
        let stranger = NoiseDH.p256.generateKeyPair()
        let unclaimed = try PairingLabel(
            suite: .p256AESGCMSHA256, deviceID: try DeviceID("ui-unclaimed"), publicKey: stranger.publicKey,
            setupSecret: [UInt8](repeating: 1, count: 16))
        await #expect(throws: (any Error).self) {
            _ = try await PairingClient.pair(
                host: "127.0.0.1", port: hub.pairingPort, label: unclaimed, identityKey: stranger)
        }
        // The hub records the failed session after the client gave up.
        _ = try await AgentTests.eventually(15) {
            try await hub.securityEvents().contains { $0.kind == "pairing-failed" }
        }
        let events = try await Self.operatorGet(hub, "/ui/events").bodyText
        #expect(events.contains("pairing-claim-refused") && events.contains("pairing-failed"), "\(events)")
        for path in ["/ui", "/ui/devices/ui-d1", "/ui/events", "/ui/audit", "/ui/claims", "/ui/rollouts"] {
            let page = try await Self.operatorGet(hub, path)
            #expect(page.status == 200, "\(path)")
            #expect(page.header("Content-Type") == "text/html; charset=utf-8", "\(path)")
            let csp = page.header("Content-Security-Policy") ?? ""
            #expect(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "\(path)")
            #expect(!csp.contains("unsafe-inline"), "\(path)")
            #expect(page.header("X-Content-Type-Options") == "nosniff", "\(path)")
            #expect(!page.bodyText.contains("<script>window"), "\(path) carries the payload unescaped")
            #expect(!page.bodyText.contains("<img src=x"), "\(path) carries the payload unescaped")
            #expect(!page.bodyText.contains("<script>\n") && !page.bodyText.contains("onclick="), "\(path)")
        }
        let device = try await Self.operatorGet(hub, "/ui/devices/ui-d1").bodyText
        #expect(device.contains("&lt;script&gt;window.__xss=1&lt;/script&gt;"), "the message is shown, as text")
        #expect(device.contains("&lt;script&gt;window.__xss=3"), "the refused topic is in the audit records")
        #expect(device.contains("<tr><td>schema</td><td>1</td></tr>"), "refusals by pipeline stage")
        #expect(try await Self.operatorGet(hub, "/ui/audit").bodyText.contains("intact (hashes and MACs checked)"))
        #expect(try await Self.operatorGet(hub, "/ui/devices/nope").status == 404)
        // Pagination and filters are the store's: the overview shows one page and how many match.
        let filtered = try await Self.operatorGet(hub, "/ui?q=UI-D&status=active&sort=lastSeen&desc=1").bodyText
        #expect(filtered.contains(#"<span id="total">1</span>"#))
        #expect(try await Self.operatorGet(hub, "/ui?q=zzz").bodyText.contains(#"<span id="total">0</span>"#))
        // No template can write a value unescaped.
        let assets = try String(
            contentsOfFile: URL(fileURLWithPath: Self.scriptPath).deletingLastPathComponent()
                .deletingLastPathComponent().appendingPathComponent("Sources/Hub/DashboardAssets.swift").path,
            encoding: .utf8)
        for unescaped in ["{{{", "{{&", "{{%", "{{="] { #expect(!assets.contains(unescaped), "\(unescaped)") }
        try await hub.stop()
    }

    /// The pages show what the store holds: the overview's columns (last seen, class, installed version,
    /// quarantine, an expiry within 7 days marked), the device page's destinations, the claims and the audit
    /// chain's head; and an audit log changed behind the hub's back reads "NOT intact".
    @Test func pagesShowWhatTheStoreHoldsAndATamperedLog() async throws {
        let hub = try await TestHub.start()
        let device = try await hub.enroll("ui-d6")
        let id = try DeviceID("ui-d6")
        let store = hub.server.store
        #expect(
            try await device.request(port: hub.devicePort, "POST", "/v1/telemetry", body: Array(#"{"t":1}"#.utf8))
                .status == 202)
        try await store.setDeviceClass(id, class: "meters")
        try await store.setQuarantine(id, until: Int64(Date().timeIntervalSince1970) + 3600)
        try await store.recordUpdateState(
            DeviceUpdateState(
                deviceID: id, installedTarget: "app-2.1.tar", installedVersion: "2.1", slot: "b", floor: 0,
                lastStep: "committed", stepTarget: nil, reason: nil, sequence: 1, updatedAt: Date()))
        try await store.recordDestinations(
            id, [(listening: false, proto: "tcp", address: "203.0.113.7", port: 8883)], at: Date())
        let row = try #require(
            try await Self.operatorGet(hub, "/ui?q=ui-d6").bodyText.split(separator: "\n").first {
                $0.contains(#"data-device="ui-d6""#)
            })
        let cells = row.components(separatedBy: "<td").dropFirst().map { String($0) }
        #expect(cells.count == 7, "\(row)")
        if cells.count == 7 {
            #expect(cells[1].contains(">active<"))
            #expect(
                cells[2].contains(String(Calendar.current.component(.year, from: Date()))), "last seen: \(cells[2])")
            #expect(cells[3].contains(">meters<") && cells[4].contains(">2.1<"))
            #expect(cells[5].contains(">until "), "quarantine: \(cells[5])")
            #expect(!cells[6].contains("expiring"), "a 90-day certificate is not marked")
        }
        let page = try await Self.operatorGet(hub, "/ui/devices/ui-d6").bodyText
        #expect(page.contains("<td>outbound</td><td>tcp</td><td>203.0.113.7</td><td>8883</td>"))
        #expect(page.contains("quarantined until") && page.contains("class meters"))
        // A certificate ending within 7 days is marked.
        #expect(try await MetricsTests.enrollShortLived(hub, "ui-short") == 201)
        #expect(try await Self.operatorGet(hub, "/ui?q=ui-short").bodyText.contains(#"class="expiring""#))
        // The audit page: intact with its head, then a record changed in the database file.
        let intact = try await Self.operatorGet(hub, "/ui/audit").bodyText
        #expect(intact.contains("intact (hashes and MACs checked)"))
        let head = try #require(try await store.allAuditRecords().last).hash.map { String(format: "%02x", $0) }
            .joined()
        #expect(intact.contains(head), "the chain's head is shown")
        let sqlite = try #require(which("sqlite3"))
        let tampered = try await run(
            sqlite,
            [hub.directory + "/bulwark.sqlite", "UPDATE audit_log SET detail = 'nothing happened' WHERE seq = 2"])
        #expect(tampered.status == 0, "\(tampered.stderr)")
        let broken = try await Self.operatorGet(hub, "/ui/audit").bodyText
        #expect(broken.contains("NOT intact"), "\(broken)")
        #expect(!broken.contains(head))
        try await hub.stop()
    }

    /// Actions are POSTs with a JSON body from this origin only: a cross-site form, a request without Fetch Metadata
    /// or Origin, another origin and a form body are all refused; a monitor gets no dashboard.
    @Test func actionsAreSameOriginJSONOnly() async throws {
        let hub = try await TestHub.start()
        _ = try await hub.enroll("ui-d2")
        func post(_ headers: [(String, String)], body: String = "{}") async throws -> Int {
            try await HTTPSClient.request(
                host: "localhost", port: hub.operatorPort, tls: try hub.operatorCredentials.tlsConfiguration(),
                method: "POST", path: "/ui/actions/devices/ui-d2/revoke", headers: headers, body: Array(body.utf8)
            ).status
        }
        let json = ("Content-Type", "application/json")
        #expect(try await post([json]) == 403, "no Sec-Fetch-Site, no Origin")
        #expect(try await post([json, ("Sec-Fetch-Site", "cross-site")]) == 403)
        #expect(try await post([json, ("Sec-Fetch-Site", "same-site")]) == 403)
        #expect(try await post([json, ("Origin", "https://evil.example")]) == 403)
        #expect(try await post([json, ("Origin", "null")]) == 403)
        #expect(try await post([json, ("Origin", "https://localhost:1")]) == 403, "another port is another origin")
        #expect(
            try await post(
                [("Content-Type", "application/x-www-form-urlencoded"), ("Sec-Fetch-Site", "same-origin")], body: "a=b")
                == 415)
        #expect(try await hub.server.store.device(try DeviceID("ui-d2"))?.status == .active)
        #expect(try await hub.securityEvents().contains { $0.kind == "cross-site-request-refused" })
        // The operator API on the same listener is guarded the same way: a cross-site form or no-cors fetch cannot
        // revoke, claim or command, and a text/plain body is not JSON whatever it holds.
        func api(_ method: String, _ path: String, _ headers: [(String, String)], body: String = "") async throws
            -> Int
        {
            try await HTTPSClient.request(
                host: "localhost", port: hub.operatorPort, tls: try hub.operatorCredentials.tlsConfiguration(),
                method: method, path: path, headers: headers, body: Array(body.utf8)
            ).status
        }
        let crossSite = [
            ("Sec-Fetch-Site", "cross-site"), ("Sec-Fetch-Mode", "navigate"), ("Sec-Fetch-Dest", "document"),
        ]
        #expect(try await api("POST", "/v1/devices/ui-d2/revoke", crossSite) == 403)
        #expect(try await api("POST", "/v1/devices/ui-d2/revoke", [("Origin", "https://evil.example")]) == 403)
        let label = #"{"label":"x"}"#
        #expect(try await api("POST", "/v1/pairing/claims", [("Content-Type", "text/plain")], body: label) == 415)
        #expect(
            try await api(
                "POST", "/v1/devices/ui-d2/commands/x", [("Content-Type", "text/plain")], body: label) == 415)
        // A cross-site page cannot make the hub do work by loading dashboard URLs as images; a link (a top-level
        // navigation) to a page still works.
        let image = try await api(
            "GET", "/ui/audit",
            [("Sec-Fetch-Site", "cross-site"), ("Sec-Fetch-Mode", "no-cors"), ("Sec-Fetch-Dest", "image")])
        #expect(image == 403)
        #expect(try await api("GET", "/ui", crossSite) == 200)
        #expect(try await hub.server.store.device(try DeviceID("ui-d2"))?.status == .active)
        // This client sends `Host: localhost` (a browser adds the port): its origin is https://localhost.
        #expect(try await post([json, ("Origin", "https://localhost")]) == 200, "Origin only")
        #expect(try await hub.server.store.device(try DeviceID("ui-d2"))?.status == .revoked)
        _ = try await hub.enroll("ui-d2")
        #expect(try await post([json, ("Sec-Fetch-Site", "same-origin")]) == 200)
        #expect(try await hub.server.store.device(try DeviceID("ui-d2"))?.status == .revoked)
        #expect(
            try await hub.securityEvents().contains { $0.kind == "device-revoked" && $0.detail.contains("by admin") })
        // The two other actions, release and claim: refused cross-site, done and audited same-origin.
        func action(_ path: String, _ headers: [(String, String)], body: String = "{}") async throws -> HTTPResult {
            try await HTTPSClient.request(
                host: "localhost", port: hub.operatorPort, tls: try hub.operatorCredentials.tlsConfiguration(),
                method: "POST", path: path, headers: [json] + headers, body: Array(body.utf8))
        }
        _ = try await hub.enroll("ui-d4")
        try await hub.server.store.setQuarantine(
            try DeviceID("ui-d4"), until: Int64(Date().timeIntervalSince1970) + 3600)
        #expect(try await action("/ui/actions/devices/ui-d4/release", [("Sec-Fetch-Site", "cross-site")]).status == 403)
        #expect(
            try await hub.server.store.devicePage(DeviceQuery()).devices.first { $0.id.rawValue == "ui-d4" }?
                .quarantinedUntil != nil)
        #expect(
            try await action("/ui/actions/devices/ui-d4/release", [("Sec-Fetch-Site", "same-origin")]).status == 200)
        #expect(
            try await hub.server.store.devicePage(DeviceQuery()).devices.first { $0.id.rawValue == "ui-d4" }?
                .quarantinedUntil == nil)
        #expect(
            try await hub.securityEvents().contains {
                $0.kind == "device-released" && $0.detail.hasPrefix("by admin")
                    && $0.identity == "urn:bulwark:device:ui-d4"
            })
        let validLabel = try PairingLabel(
            suite: .p256AESGCMSHA256, deviceID: try DeviceID("ui-d5"),
            publicKey: NoiseDH.p256.generateKeyPair().publicKey, setupSecret: [UInt8](repeating: 3, count: 16))
        let claim = #"{"label":"\#(validLabel.text)"}"#
        #expect(try await action("/ui/actions/claims", [("Origin", "https://evil.example")], body: claim).status == 403)
        #expect(!(try await Self.operatorGet(hub, "/ui/claims").bodyText.contains("ui-d5")))
        #expect(try await action("/ui/actions/claims", [("Sec-Fetch-Site", "same-origin")], body: claim).status == 201)
        #expect(try await Self.operatorGet(hub, "/ui/claims").bodyText.contains("ui-d5"))
        #expect(
            try await hub.securityEvents().contains {
                $0.kind == "pairing-claimed" && $0.detail.hasPrefix("by admin")
                    && $0.identity == "urn:bulwark:device:ui-d5"
            })
        let monitor = try await MetricsTests.monitor(hub)
        #expect(try await MetricsTests.get(hub, monitor, "/ui").status == 403)
        #expect(try await MetricsTests.get(hub, monitor, "/ui/events/stream").status == 403)
        try await hub.stop()
    }

    /// Live events as server-sent events: a record written after the stream opened arrives as a `record` event.
    @Test func liveEventsStream() async throws {
        let hub = try await TestHub.start()
        let device = try await hub.enroll("ui-d3")
        let curl = try #require(which("curl"))
        let directory = hub.directory
        let head = try await hub.server.store.securityEvents(limit: 1).first?.id ?? 0
        async let streamed = run(
            curl,
            [
                "-s", "-N", "--max-time", "12", "--cacert", directory + "/ca.crt", "--cert",
                directory + "/operators/admin.crt", "--key", directory + "/operators/admin.key",
                "https://localhost:\(hub.operatorPort)/ui/events/stream?after=\(head)",
            ], timeout: 20)
        // The stream polls the store every 250 ms; on a loaded run its connection can take a second or two.
        try await Task.sleep(for: .milliseconds(1500))
        let signed = try device.credentials.signer().sign(
            method: "POST", path: "/v1/telemetry", body: [123, 125], created: Int64(Date().timeIntervalSince1970),
            contentType: "application/json")
        for _ in 0..<2 {
            _ = try await device.request(
                port: hub.devicePort, "POST", "/v1/telemetry", body: [123, 125],
                headers: [("Content-Type", "application/json")] + signed.map { ($0.name, $0.value) }, signed: false)
        }
        let output = try await streamed.stdout
        #expect(output.contains("event: record"), "\(output)")
        #expect(output.contains("urn:bulwark:device:ui-d3"), "\(output)")
        try await hub.stop()
    }

    /// A flood is sampled: at most 50 records a second reach the stream, and the rest arrive as one `dropped` event
    /// whose count and id account for every record (nothing skipped silently, nothing counted twice).
    @Test func liveEventsAreSampledUnderAFlood() async throws {
        let hub = try await TestHub.start()
        try await hub.server.store.recordSecurityEvent(SecurityEvent(at: Date(), kind: "test_flood", detail: "first"))
        // The stream starts after this record (`after=0` would mean "from now").
        let head = try #require(try await hub.server.store.securityEvents(limit: 1).first?.id)
        for index in 0..<130 {
            try await hub.server.store.recordSecurityEvent(
                SecurityEvent(at: Date(), kind: "test_flood", identity: "urn:bulwark:device:flood", detail: "\(index)"))
        }
        let curl = try #require(which("curl"))
        let output = try await run(
            curl,
            [
                "-s", "-N", "--max-time", "10", "--cacert", hub.directory + "/ca.crt", "--cert",
                hub.directory + "/operators/admin.crt", "--key", hub.directory + "/operators/admin.key",
                "https://localhost:\(hub.operatorPort)/ui/events/stream?after=\(head)",
            ], timeout: 20
        ).stdout
        var ids: [Int64] = []
        var records = 0
        var dropped: [Int64] = []
        var recordsBeforeDrop = 0
        for event in output.components(separatedBy: "\n\n") {
            let lines = event.split(separator: "\n")
            guard let id = lines.first(where: { $0.hasPrefix("id: ") }).flatMap({ Int64($0.dropFirst(4)) }) else {
                continue
            }
            ids.append(id)
            if lines.contains("event: record") {
                records += 1
                if dropped.isEmpty { recordsBeforeDrop += 1 }
            } else if lines.contains("event: dropped"), let data = lines.first(where: { $0.hasPrefix("data: ") }) {
                let count = data.split(separator: ":").last.flatMap { Int64($0.dropLast()) } ?? -1
                dropped.append(count)
            }
        }
        #expect(recordsBeforeDrop == 50, "\(output.prefix(2000))")
        #expect(dropped.first ?? 0 >= 80, "\(dropped)")
        #expect(ids == ids.sorted() && Set(ids).count == ids.count, "ids rise: \(ids)")
        let last = try #require(ids.last)
        #expect(last >= head + 130)
        #expect(Int64(records) + dropped.reduce(0, +) == last - head, "every record is shown or counted once")
        try await hub.stop()
    }

    /// The dashboard in Chromium (Playwright): no certificate, no page; the overview lists a device; its injected
    /// scripts do not run; a replay appears in the live events within 2 s; revoking through the UI (with its
    /// confirmation) makes the device's next request fail.
    @Test func theDashboardWorksInARealBrowser() async throws {
        let python = try #require(which("python3"))
        #expect(FileManager.default.isExecutableFile(atPath: "/usr/bin/chromium"), "Debian chromium is required")
        let hub = try await TestHub.start()
        let device = try await Self.hostileDevice(hub, "ui-browser", pair: true)
        // A captured signed request, sent once now; the browser test replays it.
        let body = Array(#"{"t":1}"#.utf8)
        let signed = try device.credentials.signer().sign(
            method: "POST", path: "/v1/telemetry", body: body, created: Int64(Date().timeIntervalSince1970),
            contentType: "application/json")
        let work = try temporaryDirectory("dashboard")
        defer { try? FileManager.default.removeItem(atPath: work) }
        try (signed.map { "\($0.name): \($0.value)" } + ["Content-Type: application/json"]).joined(separator: "\n")
            .write(toFile: work + "/headers", atomically: true, encoding: .utf8)
        try Data(body).write(to: URL(fileURLWithPath: work + "/body"))
        let replay =
            "curl -s -o /dev/null -w '%{http_code}' --cacert \(device.caFile) --cert \(device.certificateFile) "
            + "--key \(device.keyFile) -H @\(work)/headers --data-binary @\(work)/body "
            + "https://localhost:\(hub.devicePort)/v1/telemetry"
        #expect(try await run("/bin/sh", ["-c", replay]).stdout == "202")

        let result = try await run(
            python,
            [
                Self.scriptPath, "https://localhost:\(hub.operatorPort)", hub.directory + "/ca.crt",
                hub.directory + "/operators/admin.crt", hub.directory + "/operators/admin.key", "ui-browser", replay,
                work,
            ], timeout: 120)
        #expect(result.status == 0, "\(result.stdout) \(result.stderr)")
        #expect(result.stdout.contains(#""deviceStatus": "revoked""#), "\(result.stdout)")
        #expect(FileManager.default.fileExists(atPath: work + "/overview.png"))
        // The device's next request fails: its certificate was revoked through the UI.
        let after = try? await device.request(port: hub.devicePort, "GET", "/v1/device")
        #expect(after == nil || after?.status == 403)
        if let keep = ProcessInfo.processInfo.environment["BULWARK_DASHBOARD_SCREENSHOTS"] {
            for name in ["overview.png", "device.png"] {
                try? FileManager.default.removeItem(atPath: keep + "/" + name)
                try FileManager.default.copyItem(atPath: work + "/" + name, toPath: keep + "/" + name)
            }
        }
        try await hub.stop()
    }
}
