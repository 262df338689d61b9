import Core
import Foundation
import Hub
import HubClient
import MQTT
import NIOCore
import Store
import Synchronization
import Testing

/// What a black-box attack run on every listener found, each sent again over real sockets and refused, with a
/// legitimate device served meanwhile.
@Suite(.serialized) struct HardeningTests {
    static func signedHead(
        _ device: TestDevice, method: String = "POST", path: String = "/v1/telemetry", body: [UInt8],
        version: String = "HTTP/1.1", extra: [String]
    ) throws -> String {
        let signed = try device.credentials.signer().sign(
            method: method, path: path, body: body, created: Int64(Date().timeIntervalSince1970),
            contentType: "application/json")
        return "\(method) \(path) \(version)\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            + (signed.map { "\($0.name): \($0.value)\r\n" } + extra.map { $0 + "\r\n" }).joined() + "\r\n"
    }

    /// A legitimate signed request from another device, and how long it took.
    static func served(_ hub: TestHub, _ device: TestDevice) async throws -> (Int, Duration) {
        let clock = ContinuousClock()
        let start = clock.now
        let status = try await device.request(
            port: hub.devicePort, "POST", "/v1/telemetry", body: Array(#"{"ok":1}"#.utf8)
        ).status
        return (status, clock.now - start)
    }

    /// Finding 1: idle TCP connections, a handshake never finished, a head that stops half-way and an idle
    /// keep-alive connection were all held. Each phase has a deadline now, and a source has a connection cap.
    @Test func slowConnectionsAreCutAndCapped() async throws {
        let hub = try await TestHub.start {
            // Short, yet long enough for this test's own steps on a loaded run (one core, every suite). The handshake
            // deadline is the longest: the witness must be served while the held connections still wait for it. (8 s
            // was once too short in CI: opening the thirty connections and serving the witness took longer.)
            $0.httpLimits.handshakeSeconds = 20
            $0.httpLimits.headerSeconds = 5
            $0.httpLimits.idleSeconds = 5
            $0.httpLimits.maxConnectionsPerSource = 10
        }
        let device = try await hub.enroll("slow-a")
        let witness = try await hub.enroll("slow-b")
        let tls = try device.credentials.tlsConfiguration()

        // Plain TCP that never starts TLS, from another address: ten are held (the cap), the rest closed at once.
        let opened = ContinuousClock.now
        var idle: [RawConnection] = []
        for _ in 0..<30 {
            idle.append(try await RawConnection.open(port: hub.devicePort, tls: nil, localAddress: "127.0.0.2"))
        }
        // Closed at once (polled: a loaded run may take a moment to close twenty).
        #expect(
            await AgentTests.eventually(10) { idle.filter { $0.isClosed }.count >= 20 },
            "beyond the per-source cap: closed before TLS")
        let (status, elapsed) = try await Self.served(hub, witness)
        #expect(status == 202)
        // Served while the ten held connections still wait for their handshake deadline: they do not delay it. (How
        // long it took is no proof on a loaded run: 1.56 s once, 4.2 s once, on one core with every suite running.)
        let sinceOpened = ContinuousClock.now - opened
        #expect(
            sinceOpened < .seconds(20),
            "the check below needs the handshake deadline still ahead: \(sinceOpened) since the first was opened")
        #expect(
            idle.filter { !$0.isClosed }.count == 10,
            "a legitimate device is served in \(elapsed) while the held connections are still held")

        // An mTLS connection whose head stops half-way (the X-Slow attack).
        let slowHead = try await RawConnection.open(port: hub.devicePort, tls: tls)
        try await slowHead.send("POST /v1/telemetry HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        // A kept-alive connection after one complete request.
        let keptAlive = try await RawConnection.open(port: hub.devicePort, tls: tls)
        try await keptAlive.send(try Self.signedHead(device, method: "GET", path: "/v1/device", body: [], extra: []))
        await keptAlive.wait(upTo: .seconds(30), until: { $0.contains("\r\n\r\n") })
        #expect(keptAlive.text.hasPrefix("HTTP/1.1 200"))

        // Not cut early: the held connections still wait at 15 s, past the head and idle deadlines (5 s), so the
        // handshake phase has its own deadline, not another phase's. (Skipped if this run is already too late to tell.)
        try await Task.sleep(until: opened + .seconds(15))
        if ContinuousClock.now - opened < .seconds(19) {
            #expect(idle.filter { !$0.isClosed }.count == 10, "a handshake deadline of 20 s cut a connection early")
        }
        // Past every deadline: the handshake's (20 s from `opened`), the head's and the idle one's (5 s from their
        // start). Polled, with room for a loaded run: the guard checks its deadlines lazily.
        let latest = max(opened + .seconds(20), ContinuousClock.now) + .seconds(10)
        while ContinuousClock.now < latest, !(idle + [slowHead, keptAlive]).allSatisfy({ $0.isClosed }) {
            try await Task.sleep(for: .milliseconds(200))
        }
        #expect(idle.allSatisfy { $0.isClosed }, "handshake deadline")
        #expect(slowHead.isClosed, "request-head deadline")
        #expect(keptAlive.isClosed, "idle keep-alive deadline")
        for connection in idle + [slowHead, keptAlive] { await connection.close() }
        try await hub.stop()
    }

    /// A body that trickles is cut at the body deadline, after an idle phase that allowed far longer: the guard
    /// checks its deadlines lazily, and a shorter phase after a longer one must still end on time.
    @Test func aTricklingBodyIsCutAtItsDeadline() async throws {
        let hub = try await TestHub.start {
            $0.httpLimits.handshakeSeconds = 30
            $0.httpLimits.headerSeconds = 30
            $0.httpLimits.idleSeconds = 30
            $0.httpLimits.bodySeconds = 2
        }
        let device = try await hub.enroll("trickle")
        let connection = try await RawConnection.open(
            port: hub.devicePort, tls: try device.credentials.tlsConfiguration())
        try await connection.send(try Self.signedHead(device, method: "GET", path: "/v1/device", body: [], extra: []))
        // (A first request has taken over 5 s with the whole suite and a build on two cores.)
        await connection.wait(upTo: .seconds(30), until: { $0.contains("\r\n\r\n") })
        #expect(connection.text.hasPrefix("HTTP/1.1 200"))
        // The connection is now idle (30 s); a signed request's head, then its body a byte at a time.
        let body = Array(#"{"temperature":21,"note":"a body that never ends"}"#.utf8)
        let start = ContinuousClock.now
        try await connection.send(
            try Self.signedHead(device, body: body, extra: ["Content-Length: \(body.count)"]) + "{")
        var sent = 1
        while !connection.isClosed, ContinuousClock.now - start < .seconds(20), sent < body.count - 1 {
            try await Task.sleep(for: .milliseconds(250))
            try? await connection.send([body[sent]])
            sent += 1
        }
        let elapsed = ContinuousClock.now - start
        #expect(connection.isClosed, "the body deadline did not cut the connection")
        #expect(elapsed >= .milliseconds(1900) && elapsed < .seconds(8), "cut after \(elapsed)")
        #expect(!connection.text.contains("HTTP/1.1 202"), "the incomplete message was not accepted")
        await connection.close()
        try await hub.stop()
    }

    /// Finding 3: framing errors became 503 with error-level logs; `gzip, chunked` was stored raw; chunked on
    /// HTTP/1.0 was accepted; CONNECT got a 404 with the connection left open.
    @Test func badFramingIsTheClientsFault() async throws {
        let hub = try await TestHub.start()
        let device = try await hub.enroll("frame-1")
        let witness = try await hub.enroll("frame-2")
        let tls = try device.credentials.tlsConfiguration()
        let body = Array(#"{"chunked":"bad"}"#.utf8)

        func exchange(_ request: String) async throws -> (answer: String, closed: Bool) {
            let raw = try await RawConnection.open(port: hub.devicePort, tls: tls)
            try await raw.send(request)
            let answer = await raw.wait(upTo: .seconds(20), until: { $0.contains("\r\n\r\n") })
            // Closed right after the answer; polled, as a loaded run may take a moment.
            let closed = await AgentTests.eventually(5) { raw.isClosed }
            await raw.close()
            return (answer, closed)
        }
        let chunked = "Transfer-Encoding: chunked"
        for size in ["zz", "ffffffffffffffffffff"] {
            let (answer, _) = try await exchange(
                try Self.signedHead(device, body: body, extra: [chunked])
                    + "\(size)\r\n{\"chunked\":\"bad\"}\r\n0\r\n\r\n")
            #expect(answer.hasPrefix("HTTP/1.1 400"), "chunk size \(size): \(answer.prefix(40))")
        }
        for coding in ["identity", "xchunked", "gzip, chunked"] {
            let (answer, closed) = try await exchange(
                try Self.signedHead(device, body: body, extra: ["Transfer-Encoding: \(coding)"])
                    + "11\r\n{\"chunked\":\"bad\"}\r\n0\r\n\r\n")
            #expect(answer.hasPrefix("HTTP/1.1 501"), "\(coding): \(answer.prefix(40))")
            #expect(answer.contains("urn:bulwark:problem:not-implemented"))
            #expect(closed, "\(coding): closed")
        }
        let (http10, http10Closed) = try await exchange(
            try Self.signedHead(device, body: body, version: "HTTP/1.0", extra: [chunked])
                + "11\r\n{\"chunked\":\"bad\"}\r\n0\r\n\r\n")
        #expect(http10.hasPrefix("HTTP/1.1 400"), "chunked on HTTP/1.0: \(http10.prefix(40))")
        #expect(http10Closed)
        let (connect, connectClosed) = try await exchange("CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n")
        #expect(connect.hasPrefix("HTTP/1.1 405"), "\(connect.prefix(40))")
        #expect(connect.lowercased().contains("allow: get, post"))
        // NIOHTTP1 leaves Content-Length out of any response to CONNECT: the close delimits it (RFC 9112 §6.3).
        #expect(connectClosed, "405 and close")

        #expect(try await hub.server.store.telemetryCount(of: try DeviceID("frame-1")) == 0, "nothing stored raw")
        // The guard's refusals are audited from a task of their own, after the answer.
        #expect(
            try await AgentTests.eventually(10) {
                try await hub.securityEvents().filter {
                    $0.identity == "urn:bulwark:device:frame-1"
                        && ($0.kind == "invalidMessage" || $0.kind == "invalid-message")
                }.count >= 5
            })
        let (status, elapsed) = try await Self.served(hub, witness)
        // Served meanwhile, not held behind the bad connections' deadlines (with slack for a loaded test run: fresh-clone
        // runs took 0.5 s and, once, over 1.5 s).
        #expect(status == 202 && elapsed < .seconds(5), "\(elapsed)")
        try await hub.stop()
    }

    /// What `openssl s_client` prints once its handshake is done (its session summary).
    static let handshakeDone = "Verify return code"

    /// Finding 6: RFC 8446 §4.6.3 KeyUpdate on every TLS listener: `openssl s_client` sends KeyUpdate
    /// (update_requested), the hub answers with its own and keeps serving the connection.
    @Test func tlsKeyUpdateIsHonouredOnEveryListener() async throws {
        guard let openssl = which("openssl") else {
            Issue.record("openssl is required (scripts/test installs it)")
            return
        }
        let hub = try await TestHub.start()
        let device = try await hub.enroll("ku-1")
        let admin = try hub.operatorClient()
        func sClient(port: Int, client: TestDevice, request: String, expect: String) async throws -> String {
            try await runStaged(
                openssl,
                [
                    "s_client", "-tls1_3", "-connect", "127.0.0.1:\(port)", "-CAfile", client.caFile, "-cert",
                    client.certificateFile, "-key", client.keyFile, "-msg",
                ],
                steps: [
                    (Self.handshakeDone, .milliseconds(300), Array("K\n".utf8)),
                    ("KeyUpdate", .milliseconds(300), Array(request.utf8)),
                ],
                until: expect)
        }
        let deviceGet = try Self.signedHead(device, method: "GET", path: "/v1/device", body: [], extra: [])
        let onDevice = try await sClient(
            port: hub.devicePort, client: device, request: deviceGet, expect: "HTTP/1.1 200")
        #expect(onDevice.contains("KeyUpdate"), "the client sent KeyUpdate")
        #expect(onDevice.contains("<<< TLS 1.3, Handshake [length 0005], KeyUpdate"), "the hub answered it")
        #expect(onDevice.contains("HTTP/1.1 200"))

        let onOperator = try await sClient(
            port: hub.operatorPort, client: admin, request: "GET /v1/devices HTTP/1.1\r\nHost: localhost\r\n\r\n",
            expect: "HTTP/1.1 200")
        #expect(onOperator.contains("<<< TLS 1.3, Handshake [length 0005], KeyUpdate"))
        #expect(onOperator.contains("HTTP/1.1 200"))

        // MQTT: CONNECT first, then (once its CONNACK is printed) KeyUpdate, then PINGREQ.
        var connect = ByteBuffer()
        Packet.connect(ConnectPacket(version: .v311, clientID: "ku-1")).encode(into: &connect, version: .v311)
        let mqtt = try await runStaged(
            openssl,
            [
                "s_client", "-tls1_3", "-connect", "127.0.0.1:\(hub.mqttPort)", "-CAfile", device.caFile, "-cert",
                device.certificateFile, "-key", device.keyFile, "-msg", "-alpn", "mqtt",
            ],
            steps: [
                (Self.handshakeDone, .milliseconds(300), Array(connect.readableBytesView)),
                ("\u{20}\u{02}\u{00}\u{00}", .milliseconds(300), Array("K\n".utf8)),  // after the CONNACK
                ("KeyUpdate", .milliseconds(300), [0xC0, 0x00]),
            ],
            until: "<<< TLS 1.3, Handshake [length 0005], KeyUpdate", settle: .milliseconds(800))
        #expect(mqtt.contains("<<< TLS 1.3, Handshake [length 0005], KeyUpdate"), "the hub answered the KeyUpdate")
        try await hub.stop()
    }

    /// Finding 4 on the live endpoint: noncharacters are refused, canonically equivalent member names are two
    /// members, and the stated limits are the ones applied.
    @Test func iJSONOnTheLiveEndpoint() async throws {
        let hub = try await TestHub.start()
        let device = try await hub.enroll("ij-1")
        func post(_ body: [UInt8]) async throws -> Int {
            try await device.request(port: hub.devicePort, "POST", "/v1/telemetry", body: body).status
        }
        for text in [#"{"s":"\uFFFF"}"#, #"{"s":"\uFDD0"}"#, #"{"s":"\udbff\udfff"}"#, #"{"\uFFFF":1}"#] {
            #expect(try await post(Array(text.utf8)) == 400, "\(text)")
        }
        #expect(try await post(Array(#"{"s":""#.utf8) + [0xEF, 0xBF, 0xBF] + Array(#""}"#.utf8)) == 400, "raw U+FFFF")
        #expect(try await post(Array("{\"\u{E9}\":1,\"e\u{301}\":2}".utf8)) == 202, "two names, not a duplicate")
        #expect(try await post(Array("{\"\u{C5}\":1,\"\u{212B}\":2}".utf8)) == 202)
        let stored = try await hub.server.store.telemetry(of: try DeviceID("ij-1"), limit: 10)
        #expect(stored.contains { $0.body == Array("{\"\u{E9}\":1,\"e\u{301}\":2}".utf8) }, "stored as sent")
        #expect(try await post(Array(("{\"n\":0." + String(repeating: "1", count: 38) + "}").utf8)) == 202)
        #expect(try await post(Array(("{\"n\":0." + String(repeating: "1", count: 39) + "}").utf8)) == 400)
        try await hub.stop()
    }

    /// Finding 5: one device subscribed 200,000 filters; protocol levels 3 and 6 got no CONNACK; two reason codes
    /// were wrong. Another device's QoS 1 round trip stays fast meanwhile.
    @Test func mqttSubscriptionsAreBoundedAndReasonCodesAreRight() async throws {
        let hub = try await TestHub.start()
        let flooder = try await hub.enroll("mqf-1")
        let witness = try await hub.enroll("mqf-2")
        let codes = try await MQTTClientConnection.withConnection(
            host: "127.0.0.1", port: hub.mqttPort, tls: try flooder.credentials.tlsConfiguration(), clientID: "mqf-1",
            version: .v5
        ) { mqtt, _ in
            var all: [[ReasonCode]] = []
            for packet in 0..<5 {
                let filters = try (0..<2_000).map {
                    Subscription(filter: try TopicFilter("devices/mqf-1/x/\(packet)/\($0)"), qos: .atMostOnce)
                }
                try await mqtt.send(
                    .subscribe(packetID: UInt16(packet + 1), subscriptions: filters, properties: .init()))
                while let reply = try await mqtt.next() {
                    if case .suback(_, let codes, _) = reply {
                        all.append(codes)
                        break
                    }
                }
            }
            return all
        }
        let limits = MQTTSettings()
        #expect(codes.count == 5)
        #expect(codes[0].prefix(limits.maxFiltersPerSubscribe).allSatisfy { $0 == 0 })
        #expect(codes[0].dropFirst(limits.maxFiltersPerSubscribe).allSatisfy { $0 == 0x80 }, "beyond one SUBSCRIBE")
        let granted = codes.flatMap { $0 }.filter { $0 == 0 }.count
        #expect(granted == limits.maxSubscriptionsPerSession, "at most the session's quota")
        #expect(codes[4].prefix(limits.maxFiltersPerSubscribe).allSatisfy { $0 == 0x97 }, "0x97 Quota exceeded")

        // The other device's QoS 1 round trip.
        let clock = ContinuousClock()
        let start = clock.now
        let reason = try await MQTTClientConnection.withConnection(
            host: "127.0.0.1", port: hub.mqttPort, tls: try witness.credentials.tlsConfiguration(), clientID: "mqf-2",
            version: .v5
        ) { mqtt, _ in
            try await mqtt.publishAcknowledged(
                topic: try TopicName("devices/mqf-2/telemetry"), payload: Array(#"{"t":1}"#.utf8))
        }
        #expect(reason == 0)
        // Not held up behind the flood (10,000 filters); the bound leaves room for a loaded run (a fresh-clone run took
        // 1.05 s, one core with every suite running 2.55 s, with a compiler beside the suite 5.4 s).
        #expect(clock.now - start < .milliseconds(10_000))

        // One identity cannot open sessions without end: an operator's 17th client id is refused, a known one resumes.
        let admin = try hub.operatorClient()
        func connectAs(_ clientID: String) async throws -> ReasonCode {
            try await MQTTClientConnection.withConnection(
                host: "127.0.0.1", port: hub.mqttPort, tls: try admin.credentials.tlsConfiguration(),
                clientID: clientID, version: .v5, configure: { $0.properties.sessionExpiryInterval = 300 },
                { _, reason in reason })
        }
        for index in 0..<limits.maxSessionsPerIdentity { #expect(try await connectAs("app-\(index)") == 0) }
        #expect(try await connectAs("app-extra") == 0x97, "0x97 Quota exceeded")
        #expect(try await connectAs("app-3") == 0, "an existing session resumes")

        // Reason codes on the wire.
        let tls = try flooder.credentials.tlsConfiguration()
        func disconnectReason(_ publish: [UInt8]) async throws -> ReasonCode? {
            try await MQTTClientConnection.withConnection(
                host: "127.0.0.1", port: hub.mqttPort, tls: tls, clientID: "mqf-1", version: .v5
            ) { mqtt, _ in
                try await mqtt.write(ByteBuffer(bytes: publish))
                while let packet = try await mqtt.next() {
                    if case .disconnect(let reason, _) = packet { return reason }
                }
                return nil
            }
        }
        #expect(try await disconnectReason([0x30, 0x03, 0x00, 0x00, 0x00]) == 0x82, "empty topic, no alias")
        #expect(try await disconnectReason([0x30, 0x07, 0x00, 0x01, 0x61, 0x03, 0x23, 0x00, 0x00]) == 0x94, "alias 0")
        for (level, expected) in [(UInt8(3), [UInt8]([0x20, 0x02, 0x00, 0x01])), (6, [0x20, 0x03, 0x00, 0x84, 0x00])] {
            let raw = try await RawConnection.open(port: hub.mqttPort, tls: tls)
            let body: [UInt8] = [0x00, 0x04] + Array("MQTT".utf8) + [level, 0x02, 0x00, 0x3C, 0x00, 0x01, 0x61]
            try await raw.send([0x10, UInt8(body.count)] + body)
            await raw.wait(upTo: .seconds(20))
            #expect(raw.bytes == expected, "protocol level \(level): CONNACK then close")
            #expect(raw.isClosed)
            await raw.close()
        }
        try await hub.stop()
    }
}

/// Runs a program, writing `steps` to its standard input one after another (each once its output shows `after`,
/// then after its delay) and keeping the input open, until its output contains `until` (then `settle` more) or
/// `timeout`; then ends it. For clients such as `openssl s_client` that act on what arrives between pauses, and read
/// their input only once their handshake is done (however long a loaded run makes it).
func runStaged(
    _ executable: String, _ arguments: [String], steps: [(after: String, Duration, [UInt8])], until: String,
    settle: Duration = .milliseconds(300), timeout: Duration = .seconds(30)
) async throws -> String {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    let input = Pipe()
    let output = Pipe()
    process.standardInput = input
    process.standardOutput = output
    process.standardError = output
    let collected = Mutex(Data())
    output.fileHandleForReading.readabilityHandler = { handle in
        let data = handle.availableData
        collected.withLock { $0.append(data) }
    }
    try process.run()
    defer {
        output.fileHandleForReading.readabilityHandler = nil
        try? input.fileHandleForWriting.close()
        process.stop(within: 10)
    }
    func text() -> String { collected.withLock { String(decoding: $0, as: UTF8.self) } }
    let deadline = ContinuousClock.now + timeout
    for (after, delay, data) in steps {
        while ContinuousClock.now < deadline, !text().contains(after), process.isRunning {
            try await Task.sleep(for: .milliseconds(50))
        }
        try await Task.sleep(for: delay)
        input.fileHandleForWriting.write(Data(data))
    }
    while ContinuousClock.now < deadline, !text().contains(until), process.isRunning {
        try await Task.sleep(for: .milliseconds(50))
    }
    try await Task.sleep(for: settle)
    return text()
}
