import Core
import Crypto
import Foundation
import Gateway
import HubClient
import Store
import Testing

/// The gateway pipeline against the live HTTPS device API: each control attacked through the real listener.
@Suite(.serialized) struct GatewayEndToEndTests {
    static let corpusDirectory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("GatewayTests/Fixtures")

    struct CorpusCase: Decodable {
        struct Generate: Decodable {
            let prefix: String
            let `repeat`: String
            let count: Int
            let suffix: String
        }
        let file: String?
        let name: String
        let generate: Generate?
        let status: Int
        let stage: String?

        func body() throws -> [UInt8] {
            if let file {
                return Array(
                    try Data(
                        contentsOf: corpusDirectory.appendingPathComponent("adversarial").appendingPathComponent(file)))
            }
            guard let generate else { return [] }
            return Array(
                (generate.prefix + String(repeating: generate.repeat, count: generate.count) + generate.suffix).utf8)
        }
    }

    /// The same manifest as `PipelineTests.adversarialCorpus`, over HTTPS: each body gets its generic problem
    /// (status and catalogue type only), a detailed audit record under the same correlation id, and the hub keeps
    /// serving; the controls are stored.
    @Test func adversarialCorpusOverTheLiveEndpoint() async throws {
        let hub = try await TestHub.start {
            $0.gateway.deviceRate = 10_000
            $0.gateway.deviceBurst = 10_000
            $0.gateway.routeRate = 10_000
            $0.gateway.routeBurst = 10_000
            $0.gateway.quarantineInvalid = 10_000
            $0.gateway.connectionBurst = 1000  // one connection per case
        }
        let schema = try await hub.operatorRequest(
            "PUT", "/v1/schemas/telemetry",
            raw: Array(try Data(contentsOf: Self.corpusDirectory.appendingPathComponent("telemetry.schema.json"))))
        #expect(schema.status == 201)
        let device = try await hub.enroll("corpus-1")
        let cases = try JSONDecoder().decode(
            [CorpusCase].self,
            from: Data(contentsOf: Self.corpusDirectory.appendingPathComponent("adversarial/manifest.json")))
        #expect(cases.filter { $0.status != 202 }.count >= 50)
        var accepted = 0
        for entry in cases {
            let result = try await device.request(port: hub.devicePort, "POST", "/v1/telemetry", body: try entry.body())
            #expect(result.status == entry.status, "\(entry.name)")
            guard entry.status != 202 else {
                accepted += 1
                continue
            }
            let problem = jsonObject(result)
            #expect(Set(problem.keys) == ["type", "title", "status", "correlationId"], "\(entry.name)")
            #expect(problem["status"] as? Int == entry.status, "\(entry.name)")
            let correlation = try #require(problem["correlationId"] as? String)
            let records = try await hub.server.store.auditRecords(after: 0, limit: 10_000)
            let record = records.first { $0.event.correlationID == correlation }
            #expect(record != nil, "\(entry.name) left no audit record")
            #expect(
                record?.event.detail.contains(entry.stage ?? "?") == true,
                "\(entry.name): \(record?.event.detail ?? "")")
            #expect(record?.event.identity == "urn:bulwark:device:corpus-1")
        }
        #expect(try await hub.server.store.telemetryCount(of: try DeviceID("corpus-1")) == accepted)
        #expect(AuditChain.verify(try await hub.server.store.auditRecords(after: 0, limit: 10_000)) == nil)
        try await hub.stop()
    }

    /// A device flooding at 50× its rate gets 429 (with Retry-After and the RateLimit fields) after its burst,
    /// while a second device at its normal rate is never refused; the flooder is quarantined at the threshold
    /// (403, like any unknown device) and `bulwark device release` lets it back in.
    @Test func floodIsLimitedThenQuarantinedThenReleasedByTheOperator() async throws {
        let hub = try await TestHub.start {
            // One a second: even a loaded run (a request every 200 ms) floods at several times the rate.
            $0.gateway.deviceRate = 1
            $0.gateway.deviceBurst = 10
            $0.gateway.quarantineRateLimited = 40
        }
        let flooder = try await hub.enroll("flooder")
        let normal = try await hub.enroll("steady")
        let body = Array(#"{"temperature":20}"#.utf8)
        let (flooderStatuses, firstRefusal, floodSeconds, floodMinutes) = try await HTTPSClient.withConnection(
            host: "127.0.0.1", port: hub.devicePort, tls: try flooder.credentials.tlsConfiguration()
        ) { connection in
            var statuses: [Int] = []
            var firstRefusal: HTTPResult?
            var floodSeconds = 0.0
            let signer = try flooder.credentials.signer()
            let started = ContinuousClock.now
            // Up to 50 requests per second (fifty times the device's rate) until ten in a row are refused as
            // quarantined. A loaded run sends more slowly, so more are admitted by the refill and the quarantine
            // threshold (40 refusals) comes later: the flood goes on until it does (at most 400 requests).
            var quarantinedInARow = 0
            for _ in 0..<400 where quarantinedInARow < 10 {
                let result = try await connection.send(
                    method: "POST", path: "/v1/telemetry", headers: [("Content-Type", "application/json")], body: body,
                    signer: signer)
                statuses.append(result.status)
                quarantinedInARow = result.status == 403 ? quarantinedInARow + 1 : 0
                if result.status == 429, firstRefusal == nil {
                    firstRefusal = result
                    floodSeconds =
                        Double((ContinuousClock.now - started).components.attoseconds) / 1e18
                        + Double((ContinuousClock.now - started).components.seconds)
                }
                try await Task.sleep(for: .milliseconds(20))
            }
            // Wall-clock minutes the flood touched (a loaded run can take minutes): each may hold one record.
            let minutes = Int((ContinuousClock.now - started).components.seconds / 60) + 2
            return (statuses, firstRefusal, floodSeconds, minutes)
        }
        let normalStatuses = try await HTTPSClient.withConnection(
            host: "127.0.0.1", port: hub.devicePort, tls: try normal.credentials.tlsConfiguration()
        ) { connection in
            var statuses: [Int] = []
            for _ in 0..<8 {
                statuses.append(
                    try await connection.send(
                        method: "POST", path: "/v1/telemetry", headers: [("Content-Type", "application/json")],
                        body: body, signer: try normal.credentials.signer()
                    ).status)
                try await Task.sleep(for: .milliseconds(250))
            }
            return statuses
        }
        #expect(normalStatuses.allSatisfy { $0 == 202 }, "\(normalStatuses)")
        let admitted = flooderStatuses.prefix { $0 == 202 }.count
        // The burst, plus what the rate (1/s) refilled while the flood ran: a loaded run sends more slowly.
        #expect(
            (10...(12 + Int(floodSeconds))).contains(admitted),
            "the burst, then refusals after \(floodSeconds) s: \(flooderStatuses)")
        let refusal = try #require(firstRefusal)
        func header(_ name: String) -> String? { refusal.headers.first { $0.0.lowercased() == name }?.1 }
        #expect(header("retry-after") == "1")
        #expect(header("ratelimit-policy") == #""device";q=10;w=10"#)
        #expect(header("ratelimit") == #""device";r=0;t=1"#)
        #expect(jsonObject(refusal)["type"] as? String == "urn:bulwark:problem:rate-limited")
        #expect(flooderStatuses.suffix(10).allSatisfy { $0 == 403 }, "quarantined: \(flooderStatuses)")
        // Once quarantined, every request is refused as such: nothing slips through between refusals.
        let quarantinedFrom = flooderStatuses.firstIndex(of: 403) ?? flooderStatuses.count
        #expect(flooderStatuses[quarantinedFrom...].allSatisfy { $0 == 403 }, "\(flooderStatuses)")
        // Quarantined at the 40th refusal of a minute (a flood that straddles a minute starts counting again).
        #expect((40..<80).contains(flooderStatuses.filter { $0 == 429 }.count), "\(flooderStatuses)")
        let events = try await hub.securityEvents()
        // One record for the first trip of each minute (the flood takes seconds, minutes on a loaded machine, and can
        // straddle a minute boundary) and one for the trip that quarantined: never one per refused request.
        #expect(
            events.filter { $0.kind == "rate-limited" }.count <= floodMinutes + 1, "trips are counted, not each written"
        )
        #expect(events.contains { $0.kind == "device-quarantined" && $0.identity == "urn:bulwark:device:flooder" })
        #expect(try await hub.server.store.quarantines().map(\.0.rawValue) == ["flooder"])

        // The operator lifts it with the CLI.
        let released = try await run(
            try HubProcessTests.binary,
            [
                "device", "release", "flooder", "--hub", "https://127.0.0.1:\(hub.operatorPort)", "--credentials",
                hub.directory + "/operators",
            ])
        #expect(released.status == 0, "\(released.stderr)")
        #expect(released.stdout.contains("released flooder from quarantine"))
        let after = try await flooder.request(port: hub.devicePort, "POST", "/v1/telemetry", body: body)
        #expect(after.status == 202)
        #expect(try await hub.securityEvents().contains { $0.kind == "device-released" })
        #expect(try await hub.server.store.quarantines().isEmpty)
        try await hub.stop()
    }

    /// A captured signed request is refused when replayed, also after a restart of the hub; a stale `created`, a
    /// tampered body and another device's key are refused; none of them is stored.
    @Test func replayStaleTamperedAndForeignSignaturesAreRefusedAcrossARestart() async throws {
        let directory = try temporaryDirectory("replay")
        var hub = try await TestHub.start(directory: directory)
        let device = try await hub.enroll("replay-1")
        let other = try await hub.enroll("replay-2")
        let body = Array(#"{"temperature":21}"#.utf8)
        let signer = try device.credentials.signer()
        func send(_ headers: [(name: String, value: String)], body: [UInt8] = body) async throws -> HTTPResult {
            try await device.request(
                port: hub.devicePort, "POST", "/v1/telemetry", body: body,
                headers: [("Content-Type", "application/json")] + headers.map { ($0.name, $0.value) }, signed: false)
        }
        let now = Int64(Date().timeIntervalSince1970)
        let captured = try signer.sign(
            method: "POST", path: "/v1/telemetry", body: body, created: now, contentType: "application/json")
        #expect(try await send(captured).status == 202)
        let replayed = try await send(captured)
        #expect(replayed.status == 401)
        #expect(jsonObject(replayed)["type"] as? String == "urn:bulwark:problem:signature-required")

        try await hub.stop(keepData: true)
        hub = try await TestHub.start(directory: directory)
        #expect(try await send(captured).status == 401, "the nonce survived the restart")
        let stale = try signer.sign(
            method: "POST", path: "/v1/telemetry", body: body, created: now - 600, contentType: "application/json")
        #expect(try await send(stale).status == 401)
        let tampered = try signer.sign(
            method: "POST", path: "/v1/telemetry", body: body, created: now, contentType: "application/json")
        #expect(try await send(tampered, body: Array(#"{"temperature":99}"#.utf8)).status == 401)
        let foreign = try other.credentials.signer().sign(
            method: "POST", path: "/v1/telemetry", body: body, created: now, contentType: "application/json")
        #expect(try await send(foreign).status == 401)
        #expect(try await send([]).status == 401, "unsigned")
        #expect(try await hub.server.store.telemetryCount(of: try DeviceID("replay-1")) == 1)
        let kinds = try await hub.securityEvents().filter { $0.identity == "urn:bulwark:device:replay-1" }.map(\.kind)
        #expect(kinds.filter { $0 == "replay" }.count >= 3)
        #expect(kinds.filter { $0 == "bad-signature" }.count == 2)
        try await hub.stop()
    }

    /// `bulwark device send --replay` (the README's quickstart) and `bulwark audit verify`/`tail`: one byte changed
    /// in the database file makes verify fail and name the record.
    @Test func deviceSendReplayAndAuditVerifyFromTheCLI() async throws {
        let directory = try temporaryDirectory("audit")
        let hub = try await TestHub.start(directory: directory)
        let device = try await hub.enroll("cli-1")
        let binary = try HubProcessTests.binary
        let sent = try await run(
            binary,
            [
                "device", "send", "--cert", device.certificateFile, "--key", device.keyFile, "--cacert", device.caFile,
                "--hub", "https://127.0.0.1:\(hub.devicePort)", "--body", #"{"temperature":21.5}"#, "--replay",
            ])
        #expect(sent.status == 0, "\(sent.stdout) \(sent.stderr)")
        #expect(sent.stdout.contains("[first] 202"))
        #expect(sent.stdout.contains("[replayed] 401"))
        try await hub.stop(keepData: true)

        let intact = try await run(binary, ["audit", "verify", "--data", directory])
        #expect(intact.status == 0, "\(intact.stderr)")
        #expect(intact.stdout.contains("audit log intact"))
        let tail = try await run(binary, ["audit", "tail", "--data", directory, "--lines", "5"])
        let lines = tail.stdout.split(separator: "\n")
        #expect(!lines.isEmpty && lines.allSatisfy { (try? JSONSerialization.jsonObject(with: Data($0.utf8))) != nil })
        #expect(tail.stdout.contains(#""kind":"replay""#))

        // Change one byte of the replay record's detail in the file itself.
        let path = directory + "/bulwark.sqlite"
        var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        let range = try #require(bytes.range(of: Data("nonce reused within the window".utf8)))
        bytes[range.lowerBound] = UInt8(ascii: "N")
        try bytes.write(to: URL(fileURLWithPath: path))
        let broken = try await run(binary, ["audit", "verify", "--data", directory])
        #expect(broken.status == 1)
        let replayRecord = try #require(
            tail.stdout.split(separator: "\n").first { $0.contains(#""kind":"replay""#) })
        let sequence = try #require(
            (try JSONSerialization.jsonObject(with: Data(replayRecord.utf8)) as? [String: Any])?["seq"] as? Int)
        #expect(broken.stderr.contains("audit record \(sequence):"), "\(broken.stderr)")
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// Stage 1: connections from one source beyond the burst are closed before any TLS work (the client sees the
    /// handshake fail); another source would not be affected (its bucket is separate, tested in the pipeline).
    @Test func connectionFloodFromOneSourceIsCutBeforeTLS() async throws {
        let hub = try await TestHub.start {
            // One new token every 10 s: the mTLS handshakes of a loaded run cannot earn a fourth (at one every 4 s,
            // a full suite on two cores once earned two).
            $0.gateway.connectionRate = 0.1
            $0.gateway.connectionBurst = 3
        }
        let device = try await hub.enroll("conn-1")
        var outcomes: [Bool] = []
        let started = ContinuousClock.now
        for _ in 0..<6 {
            let ok = (try? await device.request(port: hub.devicePort, "GET", "/v1/device"))?.status == 200
            outcomes.append(ok)
        }
        // enroll used the operator listener; the device listener saw 6 connections: 3 admitted, then refused (a
        // run slow enough to earn a token meanwhile may admit one more per 10 s it took).
        let earned = Int((ContinuousClock.now - started).components.seconds / 10)
        #expect(outcomes.prefix(3) == [true, true, true], "\(outcomes)")
        #expect(
            outcomes.filter { $0 }.count <= 3 + earned && outcomes.contains(false), "\(outcomes), \(earned) earned")
        try await Task.sleep(for: .milliseconds(10_100))
        #expect(try await device.request(port: hub.devicePort, "GET", "/v1/device").status == 200)
        try await hub.stop()
    }

    /// A schema outside the supported subset is refused at registration (API and CLI), naming the keyword.
    @Test func schemasOutsideTheSubsetAreRefusedWhenRegistered() async throws {
        let hub = try await TestHub.start()
        let refused = try await hub.operatorRequest(
            "PUT", "/v1/schemas/telemetry", raw: Array(#"{"type":"object","patternProperties":{}}"#.utf8))
        #expect(refused.status == 400)
        #expect((jsonObject(refused)["message"] as? String)?.contains("patternProperties") == true)
        let file = hub.directory + "/bad.schema.json"
        try #"{"oneOf":[]}"#.write(toFile: file, atomically: true, encoding: .utf8)
        let cli = try await run(
            try HubProcessTests.binary,
            [
                "schema", "add", "telemetry", file, "--hub", "https://127.0.0.1:\(hub.operatorPort)", "--credentials",
                hub.directory + "/operators",
            ])
        #expect(cli.status != 0)
        #expect(cli.stderr.contains("oneOf"))
        #expect(try await hub.server.store.schemas().isEmpty)
        try await hub.stop()
    }

    /// A device quarantined on HTTP is refused on MQTT too (CONNACK not authorized), and released on both.
    @Test func quarantineAppliesToMQTTToo() async throws {
        let hub = try await TestHub.start()
        let device = try await hub.enroll("both-1")
        let id = try DeviceID("both-1")
        let now = Int64(Date().timeIntervalSince1970)
        for _ in 0..<5 { _ = hub.server.gateway.quarantine.record(.replay, device: id, now: now) }
        #expect(hub.server.gateway.quarantine.isQuarantined(id, now: now))
        let refused = try await MQTTClientConnection.withConnection(
            host: "127.0.0.1", port: hub.mqttPort, tls: try device.credentials.tlsConfiguration(), clientID: "both-1"
        ) { _, reason in reason }
        #expect(refused == 0x05, "3.1.1 CONNACK: not authorized")
        hub.server.gateway.release(id)
        let accepted = try await MQTTClientConnection.withConnection(
            host: "127.0.0.1", port: hub.mqttPort, tls: try device.credentials.tlsConfiguration(), clientID: "both-1"
        ) { _, reason in reason }
        #expect(accepted == 0)
        try await hub.stop()
    }
}
