import Core
import Foundation
import HubClient
import Store
import Testing

@Suite(.serialized) struct DeviceAPITests {
    @Test func telemetryIsStoredUnderTheCertificateIdentityWhateverTheBodyClaims() async throws {
        let hub = try await TestHub.start()
        let a = try await hub.enroll("device-a")
        _ = try await hub.enroll("device-b")
        let body = Array(#"{"deviceId":"device-b","device":"device-b","temperature":20}"#.utf8)
        let result = try await a.request(
            port: hub.devicePort, "POST", "/v1/telemetry?device=device-b", body: body,
            headers: [("Content-Type", "application/json"), ("X-Device-Id", "device-b")])
        #expect(result.status == 202)
        #expect(jsonObject(result)["id"] is Int)
        #expect(try await hub.server.store.telemetryCount(of: try DeviceID("device-a")) == 1)
        #expect(try await hub.server.store.telemetryCount(of: try DeviceID("device-b")) == 0)
        try await hub.stop()
    }

    @Test func aDeviceSeesOnlyItsOwnRecord() async throws {
        let hub = try await TestHub.start()
        let a = try await hub.enroll("device-a")
        _ = try await hub.enroll("device-b")
        let own = try await a.request(port: hub.devicePort, "GET", "/v1/device")
        #expect(jsonObject(own)["id"] as? String == "device-a")
        #expect(!own.bodyText.contains("device-b"))
        for path in ["/v1/devices/device-b", "/v1/devices", "/v1/device?id=device-b", "/v1/device/device-b"] {
            let other = try await a.request(port: hub.devicePort, "GET", path)
            #expect(!other.bodyText.contains("device-b\""), "\(path) must not reveal device-b")
            if path.hasPrefix("/v1/devices") || path == "/v1/device/device-b" { #expect(other.status == 404) }
        }
        try await hub.stop()
    }

    @Test func revocationBitesOnTheNextRequestOfAnOpenConnection() async throws {
        let hub = try await TestHub.start()
        let device = try await hub.enroll("sensor-9")
        let (first, second) = try await HTTPSClient.withConnection(
            host: "127.0.0.1", port: hub.devicePort, tls: try device.credentials.tlsConfiguration()
        ) { connection in
            let body = Array(#"{"t":1}"#.utf8)
            let headers = [("Content-Type", "application/json")]
            let signer = try device.credentials.signer()
            let first = try await connection.send(
                method: "POST", path: "/v1/telemetry", headers: headers, body: body, signer: signer)
            let revoke = try await hub.operatorRequest("POST", "/v1/devices/sensor-9/revoke")
            #expect(revoke.status == 200)
            let second = try await connection.send(
                method: "POST", path: "/v1/telemetry", headers: headers, body: body, signer: signer)
            return (first, second)
        }
        #expect(first.status == 202)
        #expect(second.status == 403)
        let refusal = jsonObject(second)
        #expect(refusal["type"] as? String == "urn:bulwark:problem:forbidden")
        #expect(
            Set(refusal.keys) == ["type", "title", "status", "correlationId"],
            "an RFC 9457 problem from the catalogue and the correlation id, nothing else")
        #expect(second.headers.contains { $0.0.lowercased() == "content-type" && $0.1 == "application/problem+json" })
        let correlation = try #require(refusal["correlationId"] as? String)
        let events = try await hub.securityEvents()
        #expect(events.contains { $0.kind == "revoked-certificate-used" && $0.correlationID == correlation })
        #expect(try await hub.server.store.telemetryCount(of: try DeviceID("sensor-9")) == 1)

        await #expect(throws: (any Error).self, "a new handshake with the revoked certificate fails") {
            try await device.request(port: hub.devicePort, "GET", "/v1/device")
        }
        try await hub.stop()
    }

    @Test func badBodiesGetAGeneric4xxAndASecurityEventAndTheHubKeepsServing() async throws {
        let hub = try await TestHub.start()
        let device = try await hub.enroll("sensor-3")
        let json = [("Content-Type", "application/json")]
        let cases: [(String, [UInt8], [(String, String)], Int, String)] = [
            ("malformed JSON", Array(#"{"t":"#.utf8), [("Content-Type", "application/json")], 400, "invalid-message"),
            ("not an object", Array("[1,2]".utf8), [("Content-Type", "application/json")], 400, "invalid-message"),
            (
                "invalid UTF-8", [0x7B, 0x22, 0xFF, 0x22, 0x3A, 0x31, 0x7D], [("Content-Type", "application/json")],
                400, "invalid-message"
            ),
            (
                "wrong content type", Array(#"{"t":1}"#.utf8), [("Content-Type", "text/plain")], 415,
                "unsupported-media-type"
            ),
            ("no content type", Array(#"{"t":1}"#.utf8), [], 415, "unsupported-media-type"),
            // Deep nesting within the size limit must not exhaust the parser's stack.
            (
                "60,000 nested arrays", [UInt8](repeating: UInt8(ascii: "["), count: 60_000), json, 400,
                "invalid-message"
            ),
            (
                "10,000 nested objects",
                Array(String(repeating: #"{"a":"#, count: 10_000).utf8) + [0x31]
                    + [UInt8](repeating: UInt8(ascii: "}"), count: 10_000), json, 400, "invalid-message"
            ),
            (
                "over the limit", Array(repeating: 0x20, count: 64 * 1024 + 1), [("Content-Type", "application/json")],
                413, "too-large"
            ),
        ]
        for (name, body, headers, status, code) in cases {
            let result = try await device.request(
                port: hub.devicePort, "POST", "/v1/telemetry", body: body, headers: headers)
            #expect(result.status == status, "\(name)")
            #expect(jsonObject(result)["type"] as? String == "urn:bulwark:problem:\(code)", "\(name)")
            #expect(jsonObject(result)["correlationId"] is String, "\(name)")
        }
        let invalid = try await hub.securityEvents().filter { $0.kind == "invalid-message" }
        #expect(invalid.count == cases.count)
        #expect(invalid.allSatisfy { $0.identity == "urn:bulwark:device:sensor-3" && !$0.detail.isEmpty })
        let still = try await device.request(
            port: hub.devicePort, "POST", "/v1/telemetry", body: Array(#"{"t":2}"#.utf8))
        #expect(still.status == 202)
        #expect(try await hub.server.store.telemetryCount(of: try DeviceID("sensor-3")) == 1)
        try await hub.stop()
    }

    @Test func aChunkedBodyOverTheLimitIsRefusedWithoutReadingItAll() async throws {
        guard let curl = which("curl") else {
            Issue.record("curl is required (scripts/test installs it)")
            return
        }
        let hub = try await TestHub.start()
        let device = try await hub.enroll("sensor-4")
        let big = hub.directory + "/big.json"
        // 8 MiB of JSON-ish bytes, sent chunked (no Content-Length), so only the streaming check can stop it.
        try Data(repeating: 0x20, count: 8 * 1024 * 1024).write(to: URL(fileURLWithPath: big))
        let result = try await run(
            curl,
            [
                "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", device.caFile, "--cert",
                device.certificateFile, "--key", device.keyFile, "-H", "Content-Type: application/json", "-H",
                "Transfer-Encoding: chunked", "--data-binary", "@\(big)",
                "https://127.0.0.1:\(hub.devicePort)/v1/telemetry",
            ])
        // curl may see the 413 or, when the hub closes mid-upload, a reset: either way nothing was stored.
        #expect(result.stdout == "413" || result.status != 0, "got \(result.stdout) \(result.stderr)")
        #expect(try await hub.server.store.telemetryCount(of: try DeviceID("sensor-4")) == 0)
        let ok = try await device.request(port: hub.devicePort, "POST", "/v1/telemetry", body: Array(#"{"t":1}"#.utf8))
        #expect(ok.status == 202)
        try await hub.stop()
    }

    @Test func enrollmentRefusesForgedAndGreedyCSRsOverTheAPI() async throws {
        let hub = try await TestHub.start()
        let invalidID = try await hub.operatorRequest("POST", "/v1/devices", json: ["id": "a/b", "csr": "x"])
        #expect(invalidID.status == 400)
        let garbage = try await hub.operatorRequest("POST", "/v1/devices", json: ["id": "ok", "csr": "not a csr"])
        #expect(garbage.status == 400)
        #expect(jsonObject(garbage)["error"] as? String == "bad-csr")
        #expect(try await hub.server.store.device(try DeviceID("ok")) == nil)
        #expect(try await hub.securityEvents().contains { $0.kind == "csr-refused" })
        try await hub.stop()
    }
}
