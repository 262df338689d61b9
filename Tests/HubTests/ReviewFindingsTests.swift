import Core
import Crypto
import Foundation
import Gateway
import HubClient
import MQTT
import NIOCore
import NIOPosix
import Pairing
import Store
import SwiftASN1
import Testing
import X509

@testable import Hub

/// Each finding of the white-box review of the crypto and identity code, attacked over real sockets and refused.
@Suite(.serialized) struct ReviewFindingsTests {
    /// Finding 1: the replay stage used the time taken when the request head arrived. A copy of a captured request
    /// whose head is sent at once and whose body arrives after the original nonce left the ledger was stored twice.
    @Test func aCopyWhoseBodyArrivesLateIsStillAReplay() async throws {
        // Skew 12 s: the original and the copy's head (signed at a whole second, then two requests on new mutual-TLS
        // connections) must reach the hub within it even on a loaded test run (6.3 s once, with a fuzzer building;
        // 7.4 s once in a filtered run of 335 tests on 2 cores). The copy's head may come 60 s after its connection's
        // handshake (10 s by default) and its body 120 s after the head (30 s): two requests come between the first
        // two, 25.5 s and a request between the last two, and a loaded run once stretched one of them past its
        // bound, so the guard closed the connection ("I/O on closed channel"). This test attacks the replay stage,
        // not those bounds.
        let hub = try await TestHub.start {
            $0.gateway.signatureSkewSeconds = 12
            $0.httpLimits.headerSeconds = 60
            $0.httpLimits.bodySeconds = 120
        }
        let device = try await hub.enroll("slow-1")
        let body = Array(#"{"temperature":20}"#.utf8)
        // The copy's connection is made first: its handshake is not spent out of the signature's time.
        let raw = try await RawConnection.open(port: hub.devicePort, tls: try device.credentials.tlsConfiguration())
        let signedAt = ContinuousClock.now
        let signed = try device.credentials.signer().sign(
            method: "POST", path: "/v1/telemetry", body: body, created: Int64(Date().timeIntervalSince1970),
            contentType: "application/json")
        let headers = [("Content-Type", "application/json")] + signed.map { ($0.name, $0.value) }
        func send() async throws -> Int {
            try await device.request(
                port: hub.devicePort, "POST", "/v1/telemetry", body: body, headers: headers, signed: false
            ).status
        }
        #expect(try await send() == 202, "the original")
        #expect(try await send() == 401, "an immediate whole copy")

        try await raw.send(
            "POST /v1/telemetry HTTP/1.1\r\nHost: localhost\r\nContent-Length: \(body.count)\r\n"
                + headers.map { "\($0.0): \($0.1)\r\n" }.joined() + "\r\n")
        // The copy's head went out while its signature was fresh (else a stale head, refused whatever the fix, would
        // prove nothing).
        #expect(ContinuousClock.now - signedAt < .seconds(11), "the copy's head was sent too late to test anything")
        // Past the nonce's retention (2 × skew + 1 s = 25 s); another request then expires it from the ledger.
        try await Task.sleep(for: .milliseconds(25_500))
        #expect(
            try await device.request(port: hub.devicePort, "POST", "/v1/telemetry", body: Array(#"{"n":2}"#.utf8))
                .status == 202)
        try await raw.send(body)
        let answer = await raw.wait(until: { $0.contains("\r\n\r\n") })
        #expect(answer.hasPrefix("HTTP/1.1 401"), "\(answer.prefix(80))")
        await raw.close()
        #expect(try await send() == 401, "a whole copy now")
        #expect(try await hub.server.store.telemetryCount(of: try DeviceID("slow-1")) == 2)
        try await hub.stop()
    }

    /// Finding 7: whoever holds a signed request could change its message type or content type and have it stored
    /// under another schema. Both fields are covered components now.
    @Test func theMessageTypeAndContentTypeAreSigned() async throws {
        let hub = try await TestHub.start()
        let schema = Array(#"{"type":"object","properties":{"temperature":{"type":"number"}}}"#.utf8)
        #expect(try await hub.operatorRequest("PUT", "/v1/schemas/env", raw: schema).status == 201)
        let device = try await hub.enroll("typed-1")
        let body = Array(#"{"temperature":20}"#.utf8)
        let signer = try device.credentials.signer()
        func send(signedType: String?, sentType: String?, signedContentType: String? = "application/json")
            async throws -> Int
        {
            let signed = try signer.sign(
                method: "POST", path: "/v1/telemetry", body: body, created: Int64(Date().timeIntervalSince1970),
                contentType: signedContentType, messageType: signedType)
            var headers = [("Content-Type", "application/json")]
            if let sentType { headers.append(("Bulwark-Message-Type", sentType)) }
            return try await device.request(
                port: hub.devicePort, "POST", "/v1/telemetry", body: body,
                headers: headers + signed.map { ($0.name, $0.value) }, signed: false
            ).status
        }
        #expect(try await send(signedType: "env", sentType: "env") == 202)
        #expect(try await send(signedType: nil, sentType: nil) == 202)
        #expect(try await send(signedType: "telemetry", sentType: "env") == 401, "type changed in transit")
        #expect(try await send(signedType: nil, sentType: "env") == 401, "type added in transit")
        #expect(try await send(signedType: "env", sentType: nil) == 401, "type removed in transit")
        #expect(try await send(signedType: nil, sentType: nil, signedContentType: nil) == 401, "content type unsigned")
        #expect(
            try await send(signedType: nil, sentType: nil, signedContentType: "text/plain") == 401,
            "content type changed in transit")
        let stored = try await hub.server.store.telemetry(of: try DeviceID("typed-1"), limit: 10)
        #expect(stored.count == 2)
        // The built-in client signs both fields.
        #expect(
            try await device.request(
                port: hub.devicePort, "POST", "/v1/telemetry", body: body,
                headers: [("Content-Type", "application/json"), ("Bulwark-Message-Type", "env")]
            ).status == 202)
        try await hub.stop()
    }

    /// Finding 4: a data directory that already existed open to others stayed so, and the store came out 0644.
    @Test func theDataDirectoryAndTheStoreArePrivate() async throws {
        let directory = try temporaryDirectory("modes")
        #expect(chmod(directory, 0o755) == 0)
        var hub = try await TestHub.start(directory: directory)
        #expect(try await hub.enroll("mode-1").id == "mode-1")
        #expect(Self.mode(directory) == 0o700, "tightened to 0700")
        for file in ["bulwark.sqlite", "bulwark.sqlite-wal", "bulwark.sqlite-shm"]
        where FileManager.default.fileExists(atPath: directory + "/" + file) {
            #expect(Self.mode(directory + "/" + file) & 0o077 == 0, "\(file) is private")
        }
        try await hub.stop(keepData: true)

        #expect(chmod(directory + "/bulwark.sqlite", 0o644) == 0)
        do {
            hub = try await TestHub.start(directory: directory)
            Issue.record("a store readable by others was accepted")
            try await hub.stop()
        } catch let error as HubStartupError {
            #expect(error.description.contains("bulwark.sqlite is readable by group or others"))
            #expect(error.description.contains("chmod 600"))
        }
        try? FileManager.default.removeItem(atPath: directory)
    }

    static func mode(_ path: String) -> mode_t {
        var info = stat()
        return stat(path, &info) == 0 ? info.st_mode & 0o777 : 0o7777
    }

    /// Finding 6: the pairing certificate was sent before it was stored; a hub dying before the confirmation left a
    /// valid certificate nobody could revoke. It is recorded (revoked until confirmed) before it leaves the hub.
    @Test func aPairingCertificateIsRecordedRevokedBeforeItIsSent() async throws {
        let hub = try await TestHub.start()
        let identity = NoiseDH.p256.generateKeyPair()
        let device = try DeviceID("pend-1")
        let label = try PairingLabel(
            suite: .p256AESGCMSHA256, deviceID: device, publicKey: identity.publicKey,
            setupSecret: [UInt8](repeating: 7, count: 16))
        #expect(try await hub.operatorRequest("POST", "/v1/pairing/claims", json: ["label": label.text]).status == 201)

        let revokedBefore = try await hub.server.store.revokedSerials()
        // A device that takes its certificate and never confirms: stop at the confirmation and look at the store.
        var session = try DevicePairingSession(label: label, identityKey: identity)
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(host: "127.0.0.1", port: hub.pairingPort) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        ByteToMessageHandler(PairingFrameDecoder(), maximumBufferSize: 2 + 65535))
                    try channel.pipeline.syncOperations.addHandler(MessageToByteHandler(PairingFrameEncoder()))
                    return try NIOAsyncChannel<[UInt8], [UInt8]>(wrappingChannelSynchronously: channel)
                }
            }
        let reachedConfirmation = try await channel.executeThenClose { inbound, outbound in
            var frames = inbound.makeAsyncIterator()
            while let frame = try await frames.next() {
                var action = try session.received(frame)
                if case .makeCSR = action {
                    let key = P256.Signing.PrivateKey()
                    let csr = try CertificateSigningRequest(
                        version: .v1, subject: try DistinguishedName { CommonName("pend-1") },
                        privateKey: Certificate.PrivateKey(key), attributes: .init(),
                        signatureAlgorithm: .ecdsaWithSHA256)
                    var serializer = DER.Serializer()
                    try serializer.serialize(csr)
                    action = try session.csrReady(operationalKey: key, csrDER: serializer.serializedBytes)
                }
                switch action {
                case .send(let next): try await outbound.write(next)
                case .confirm: return true
                default: return false
                }
            }
            return false
        }
        #expect(reachedConfirmation, "the device received its credentials")
        let pending = try await hub.server.store.revokedSerials().subtracting(revokedBefore)
        #expect(pending.count == 1, "recorded before it was sent, revoked until the device confirms")
        #expect(hub.server.revocationList.contains(pending.first ?? "-"))
        #expect(try await hub.server.store.certificates(of: device).isEmpty)
        #expect(try await hub.server.store.device(device) == nil)

        // The control: a pairing that confirms leaves one active certificate (and the abandoned one revoked).
        #expect(try await hub.operatorRequest("POST", "/v1/pairing/claims", json: ["label": label.text]).status == 201)
        let paired = try await PairingClient.pair(
            host: "127.0.0.1", port: hub.pairingPort, label: label, identityKey: identity)
        let certificate = try Certificate(derEncoded: paired.credentials.certificateDER)
        let after = try await hub.server.store.certificates(of: device)
        #expect(after.map(\.serialHex) == [certificate.serialHex])
        #expect(after.first?.revokedAt == nil)
        #expect(!hub.server.revocationList.contains(certificate.serialHex))
        #expect(try await hub.server.store.revokedSerials().isSuperset(of: pending), "the abandoned one stays revoked")
        #expect(try await hub.server.store.device(device)?.status == .active)
        try await hub.stop()
    }

    /// Finding 2: failures where the peer proved nothing (a hello naming the device, then garbage) locked the device
    /// out. They count against the stranger's source address now; the device pairs from its own.
    @Test func aStrangerCannotLockADeviceOutOfPairing() async throws {
        let hub = try await TestHub.start {
            $0.pairingFreeAttempts = 2
            $0.pairingLockoutSeconds = 60
        }
        let identity = NoiseDH.p256.generateKeyPair()
        let label = try PairingLabel(
            suite: .p256AESGCMSHA256, deviceID: try DeviceID("cam-9"), publicKey: identity.publicKey,
            setupSecret: [UInt8](repeating: 9, count: 16))
        #expect(try await hub.operatorRequest("POST", "/v1/pairing/claims", json: ["label": label.text]).status == 201)
        // The stranger knows the device id only: its own key, its own secret.
        let strangerKey = NoiseDH.p256.generateKeyPair()
        let stranger = try PairingLabel(
            suite: .p256AESGCMSHA256, deviceID: try DeviceID("cam-9"), publicKey: strangerKey.publicKey,
            setupSecret: [UInt8](repeating: 1, count: 16))
        for _ in 0..<6 {
            let result = try? await PairingClient.pair(
                host: "127.0.0.1", port: hub.pairingPort, label: stranger, identityKey: strangerKey,
                timeout: .seconds(5), localAddress: "127.0.0.2")
            #expect(result == nil)
        }
        // The stranger's source is locked out now: closed before the hub says anything.
        let probe = try await RawConnection.open(port: hub.pairingPort, tls: nil, localAddress: "127.0.0.2")
        await probe.wait(upTo: .seconds(3))
        #expect(probe.isClosed && probe.text.isEmpty)
        await probe.close()
        // The device pairs, from its own address.
        let paired = try await PairingClient.pair(
            host: "127.0.0.1", port: hub.pairingPort, label: label, identityKey: identity)
        #expect(!paired.credentials.certificateDER.isEmpty)
        try await hub.stop()
    }

    /// The adversarial review's finding: a stranger that sent the device's hello and then nothing held the claim for
    /// the whole 30 s, and the real device's attempts meanwhile locked its own address out. The claim is held only
    /// once the device's key is proved, and the silent stranger is cut after the hello deadline.
    @Test func aSilentStrangerHoldsNeitherTheClaimNorTheDeviceOut() async throws {
        let hub = try await TestHub.start {
            $0.pairingFreeAttempts = 2
            // Six seconds: the real device's own hello must fit in it on a loaded machine (3 s did not, once, in a
            // fresh clone's full run).
            $0.pairingSettings.helloSeconds = 6
        }
        let identity = NoiseDH.p256.generateKeyPair()
        let id = try DeviceID("cam-6")
        let label = try PairingLabel(
            suite: .p256AESGCMSHA256, deviceID: id, publicKey: identity.publicKey,
            setupSecret: [UInt8](repeating: 6, count: 16))
        #expect(try await hub.operatorRequest("POST", "/v1/pairing/claims", json: ["label": label.text]).status == 201)
        // The stranger's hello, framed (2-byte length): version, suite, id length, id. Then silence.
        let hello = [UInt8(1), label.suite.rawValue, UInt8(id.rawValue.utf8.count)] + Array(id.rawValue.utf8)
        var strangers: [RawConnection] = []
        for _ in 0..<3 {
            let stranger = try await RawConnection.open(port: hub.pairingPort, tls: nil, localAddress: "127.0.0.2")
            await stranger.wait(upTo: .milliseconds(500), until: { !$0.isEmpty })
            try await stranger.send([0, UInt8(hello.count)] + hello)
            strangers.append(stranger)
        }
        try await Task.sleep(for: .milliseconds(200))
        // The device pairs (no attempt counted against its address): the strangers hold neither its claim nor a slot.
        // The client's timeout allows for a loaded machine (5 s did not, once, in a full run).
        let paired = try await PairingClient.pair(
            host: "127.0.0.1", port: hub.pairingPort, label: label, identityKey: identity, timeout: .seconds(30))
        #expect(!paired.credentials.certificateDER.isEmpty)
        // Cut after the 6-s hello deadline (no proof of the key), before the 30-s session deadline; polled, as a
        // loaded run is slow to get there.
        #expect(
            await AgentTests.eventually(22) { strangers.allSatisfy { $0.isClosed } },
            "cut after the hello deadline (no proof of the key)")
        for stranger in strangers { await stranger.close() }
        try await hub.stop()
    }

    /// The adversarial review's finding: a device revoked while a claim was pending paired back in on that claim.
    @Test func aRevokedDeviceCannotPairBackInOnAnEarlierClaim() async throws {
        let hub = try await TestHub.start()
        let identity = NoiseDH.p256.generateKeyPair()
        let label = try PairingLabel(
            suite: .p256AESGCMSHA256, deviceID: try DeviceID("cam-5"), publicKey: identity.publicKey,
            setupSecret: [UInt8](repeating: 5, count: 16))
        let claim = { try await hub.operatorRequest("POST", "/v1/pairing/claims", json: ["label": label.text]) }
        #expect(try await claim().status == 201)
        _ = try await PairingClient.pair(host: "127.0.0.1", port: hub.pairingPort, label: label, identityKey: identity)
        #expect(try await claim().status == 201, "a second claim, say by mistake")
        #expect(try await hub.operatorRequest("POST", "/v1/devices/cam-5/revoke").status == 200)
        let again = try? await PairingClient.pair(
            host: "127.0.0.1", port: hub.pairingPort, label: label, identityKey: identity, timeout: .seconds(5))
        #expect(again == nil, "the revocation dropped the claim")
        #expect(try await hub.server.store.device(try DeviceID("cam-5"))?.status == .revoked)
        try await hub.stop()
    }

    /// The adversarial review's finding: a DUP resend that arrived while the original's store write was still under
    /// way was acknowledged; if that write then failed, the message was lost. The DUP now waits for the outcome.
    @Test func aDuplicateWaitsForTheOriginalsStoreWrite() async throws {
        let store = FaultyStore(InMemoryHubStore())
        let hub = try await TestHub.start(store: store)
        let device = try await hub.enroll("dup-1")
        let topic = try TopicName("devices/dup-1/telemetry")
        var properties = Properties()
        properties.userProperties = [("counter", "7")]
        let tls = try device.credentials.tlsConfiguration()
        store.delayMilliseconds.store(600, ordering: .relaxed)
        store.failNext.store(1, ordering: .relaxed)
        // The first copy: its write is slow and will fail; the connection drops before its PUBACK.
        try await MQTTClientConnection.withConnection(
            host: "127.0.0.1", port: hub.mqttPort, tls: tls, clientID: "dup-1", version: .v5
        ) { mqtt, _ in
            try await mqtt.send(
                .publish(
                    PublishPacket(
                        topic: topic, payload: Array(#"{"t":7}"#.utf8), qos: .atLeastOnce, packetID: 9,
                        properties: properties)))
            try await Task.sleep(for: .milliseconds(100))
        }
        // The resend, marked DUP, while the first write is still running.
        let reason = try await MQTTClientConnection.withConnection(
            host: "127.0.0.1", port: hub.mqttPort, tls: tls, clientID: "dup-1", version: .v5
        ) { mqtt, _ -> ReasonCode? in
            try await mqtt.send(
                .publish(
                    PublishPacket(
                        topic: topic, payload: Array(#"{"t":7}"#.utf8), qos: .atLeastOnce, duplicate: true,
                        packetID: 9, properties: properties)))
            while let packet = try await mqtt.next() {
                if case .puback(9, let reason, _) = packet { return reason }
            }
            return nil
        }
        #expect(reason == 0)
        #expect(try await store.telemetryCount(of: try DeviceID("dup-1")) == 1, "acknowledged means stored")
        try await hub.stop()
    }

    /// A QoS 0 message whose queued write fails gives its counter back, so the device's resend is stored, not refused
    /// as a replay; one that is stored is counted. The write's reader is one object for the connection's topic, and
    /// the message's counter reaches it through the write's entry (without it, the counter stays taken): an entry of
    /// a `TelemetryQueue` (`queued`, as the SQL stores'), or one made for the write (the protocol's default).
    @Test(arguments: [true, false]) func aFailedQoS0WriteGivesItsCounterBack(_ queued: Bool) async throws {
        let store = FaultyStore(InMemoryHubStore(), queued: queued)
        let hub = try await TestHub.start(store: store)
        let device = try await hub.enroll("q0-1")
        let topic = try TopicName("devices/q0-1/telemetry")
        func publish(_ counter: Int, _ mqtt: MQTTClientConnection) async throws {
            var properties = Properties()
            properties.userProperties = [("counter", "\(counter)")]
            try await mqtt.send(
                .publish(
                    PublishPacket(
                        topic: topic, payload: Array(#"{"t":\#(counter)}"#.utf8), qos: .atMostOnce,
                        properties: properties)))
        }
        let id = try DeviceID("q0-1")
        try await MQTTClientConnection.withConnection(
            host: "127.0.0.1", port: hub.mqttPort, tls: try device.credentials.tlsConfiguration(), clientID: "q0-1",
            version: .v5
        ) { mqtt, _ in
            // A first message to the topic is stored (the reader made for the topic then serves the failing one).
            try await publish(4, mqtt)
            let first = ContinuousClock.now + .seconds(10)
            while try await store.telemetryCount(of: id) < 1, ContinuousClock.now < first {
                try await Task.sleep(for: .milliseconds(20))
            }
            store.failNext.store(1, ordering: .relaxed)
            try await publish(5, mqtt)
            // The write is tried (and fails), then the failure is handled in a task: wait until the counter is free
            // again (or give up after 10 s).
            let deadline = ContinuousClock.now + .seconds(10)
            while store.failNext.load(ordering: .relaxed) > 0, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(20))
            }
            while hub.server.gateway.counters.window(of: id)?.hasSeen(5) == true, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(hub.server.gateway.counters.window(of: id)?.hasSeen(5) != true, "the counter was given back")
            try await publish(5, mqtt)
            try await publish(6, mqtt)
            while try await store.telemetryCount(of: id) < 3, ContinuousClock.now < deadline + .seconds(10) {
                try await Task.sleep(for: .milliseconds(20))
            }
        }
        let stored = try await store.telemetryCount(of: id)
        #expect(stored == 3, "the first, the resend and the next are stored (\(stored))")
        // Every write, stored or failed, is finished once: none is left counted against the flood limit.
        let settled = ContinuousClock.now + .seconds(10)
        while hub.server.mqttPendingQoS0.outstanding != 0, ContinuousClock.now < settled {
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(hub.server.mqttPendingQoS0.outstanding == 0)
        try await hub.stop()
    }

    /// The device's own lock-out still works, for failures after the peer proved the device's key: the right key
    /// with a wrong label secret (the psk enters in message 3).
    @Test func wrongSecretsWithTheDeviceKeyLockTheDeviceOut() async throws {
        let hub = try await TestHub.start {
            $0.pairingFreeAttempts = 2
            // Long enough that a loaded run (the whole suite on 2 cores) still tries within it: an attempt there has
            // taken more than 5 s to be refused.
            $0.pairingLockoutSeconds = 15
        }
        let identity = NoiseDH.p256.generateKeyPair()
        let id = try DeviceID("cam-8")
        let label = try PairingLabel(
            suite: .p256AESGCMSHA256, deviceID: id, publicKey: identity.publicKey,
            setupSecret: [UInt8](repeating: 8, count: 16))
        let wrongSecret = try PairingLabel(
            suite: .p256AESGCMSHA256, deviceID: id, publicKey: identity.publicKey,
            setupSecret: [UInt8](repeating: 3, count: 16))
        #expect(try await hub.operatorRequest("POST", "/v1/pairing/claims", json: ["label": label.text]).status == 201)
        for attempt in 1...2 {
            // Time for the hub to reach the failed proof, even on a loaded machine: a client that gives up first has
            // proved nothing and is not counted (with a 5 s timeout, a loaded CI run once ended here uncounted and the
            // real label then paired).
            let result = try? await PairingClient.pair(
                host: "127.0.0.1", port: hub.pairingPort, label: wrongSecret, identityKey: identity,
                timeout: .seconds(60), localAddress: "127.0.0.3")
            #expect(result == nil)
            let counted = try await ClusterTests.within(10) {
                try await hub.server.store.pairingFailures(of: id)?.count == attempt
            }
            #expect(counted != nil, "wrong attempt \(attempt) counted")
        }
        let locked = try? await PairingClient.pair(
            host: "127.0.0.1", port: hub.pairingPort, label: label, identityKey: identity, timeout: .seconds(12))
        #expect(locked == nil, "locked out after two failures, even for the real label, from any source")
        try await Task.sleep(for: .milliseconds(15_300))
        let paired = try await PairingClient.pair(
            host: "127.0.0.1", port: hub.pairingPort, label: label, identityKey: identity)
        #expect(!paired.credentials.certificateDER.isEmpty, "pairing works again after the lock-out")
        let failures = try await hub.securityEvents().filter { $0.kind == "pairing-failed" }
        #expect(failures.count == 3)
        #expect(failures.contains { $0.detail.contains("lockedOut") })
        try await hub.stop()
    }

    /// Claims and lock-outs live in the store: a restart of the hub forgets neither (it forgot both while they lived
    /// in memory: a locked-out attacker restarted the count by crashing the hub, an operator re-entered labels).
    @Test func aClaimAndALockOutSurviveARestart() async throws {
        let hub = try await TestHub.start {
            $0.pairingFreeAttempts = 1
            $0.pairingLockoutSeconds = 25
        }
        let identity = NoiseDH.p256.generateKeyPair()
        let id = try DeviceID("cam-9")
        let label = try PairingLabel(
            suite: .p256AESGCMSHA256, deviceID: id, publicKey: identity.publicKey,
            setupSecret: [UInt8](repeating: 9, count: 16))
        let wrongSecret = try PairingLabel(
            suite: .p256AESGCMSHA256, deviceID: id, publicKey: identity.publicKey,
            setupSecret: [UInt8](repeating: 4, count: 16))
        #expect(try await hub.operatorRequest("POST", "/v1/pairing/claims", json: ["label": label.text]).status == 201)
        // Time for the hub to reach the failed proof and count it, even on a loaded machine (a client that gives up
        // first has proved nothing, which is not counted against the device).
        let wrong = try? await PairingClient.pair(
            host: "127.0.0.1", port: hub.pairingPort, label: wrongSecret, identityKey: identity,
            timeout: .seconds(60), localAddress: "127.0.0.3")
        #expect(wrong == nil)
        // The device learns of a wrong secret first (it cannot open message 3); the hub counts it once the device
        // closes the connection, which may be after the client returned.
        let counted = try await ClusterTests.within(10) {
            try await hub.server.store.pairingFailures(of: id)?.count == 1
        }
        #expect(counted != nil, "the failure was counted before the restart")
        try await hub.stop(keepData: true)

        let restarted = try await TestHub.start(directory: hub.directory) {
            $0.pairingFreeAttempts = 1
            $0.pairingLockoutSeconds = 25
        }
        #expect(try await restarted.server.store.pendingClaims(at: Date()).map(\.device) == [id])
        let locked = try? await PairingClient.pair(
            host: "127.0.0.1", port: restarted.pairingPort, label: label, identityKey: identity, timeout: .seconds(10))
        #expect(locked == nil, "still locked out after the restart")
        try await Task.sleep(for: .milliseconds(25_300))  // the lock-out (25 s: a restart under load takes a while)
        let paired = try await PairingClient.pair(
            host: "127.0.0.1", port: restarted.pairingPort, label: label, identityKey: identity)
        #expect(!paired.credentials.certificateDER.isEmpty, "the claim made before the restart pairs")
        try await restarted.stop()
    }

    /// Hardening finding 2: 1,000 idle connections to the pairing port held every slot and a legitimate pairing
    /// failed at once. One source now gets a few slots, an idle one is cut after the hello deadline, and a device
    /// from another address pairs meanwhile.
    @Test func aConnectionFloodFromOneSourceDoesNotDenyPairing() async throws {
        // The hello deadline cuts the idle ones; 4 s leaves the device that pairs time to say hello on a loaded machine.
        let hub = try await TestHub.start { $0.pairingSettings.helloSeconds = 4 }
        let identity = NoiseDH.p256.generateKeyPair()
        let label = try PairingLabel(
            suite: .p256AESGCMSHA256, deviceID: try DeviceID("cam-7"), publicKey: identity.publicKey,
            setupSecret: [UInt8](repeating: 7, count: 16))
        #expect(try await hub.operatorRequest("POST", "/v1/pairing/claims", json: ["label": label.text]).status == 201)
        var flood: [RawConnection] = []
        for _ in 0..<200 {
            flood.append(try await RawConnection.open(port: hub.pairingPort, tls: nil, localAddress: "127.0.0.2"))
        }
        // Those beyond the per-source cap are closed at once (polled: a loaded run takes a moment to close 190).
        let cut = await AgentTests.eventually(10) {
            flood.filter { $0.isClosed }.count >= 200 - PairingSettings().maxConnectionsPerSource
        }
        #expect(cut)
        let greeted = flood.filter { !$0.text.isEmpty && !$0.isClosed }.count
        #expect(greeted <= PairingSettings().maxConnectionsPerSource, "\(greeted) idle connections held")

        let clock = ContinuousClock()
        let start = clock.now
        let paired = try await PairingClient.pair(
            host: "127.0.0.1", port: hub.pairingPort, label: label, identityKey: identity, timeout: .seconds(10))
        #expect(!paired.credentials.certificateDER.isEmpty)
        // Inside the client's timeout (well under a second when quiet; 5.2 s once with a compiler beside the suite,
        // the handshake and the ECDH sharing two cores with 200 connections being cut).
        #expect(clock.now - start < .seconds(8), "paired during the flood in \(clock.now - start)")
        // The idle ones that were greeted are cut after the hello deadline (4 s).
        #expect(await AgentTests.eventually(15) { flood.allSatisfy { $0.isClosed } })
        for connection in flood { await connection.close() }
        try await hub.stop()
    }

    /// Finding 9 (also the MQTT issue's reliability bug): when the store write of a QoS 1 message failed, its counter
    /// stayed in the window, so the client's DUP resend was acknowledged although nothing was stored.
    /// Not stored, the message is not acknowledged: DISCONNECT 0x89 ends the connection, and the DUP resend on the
    /// next connection is stored.
    @Test func aMessageThatWasNotStoredGivesItsCounterBack() async throws {
        let store = FaultyStore(InMemoryHubStore())
        let hub = try await TestHub.start(store: store)
        let device = try await hub.enroll("ctr-1")
        let topic = try TopicName("devices/ctr-1/telemetry")
        var properties = Properties()
        properties.userProperties = [("counter", "9")]
        var codes: [ReasonCode] = []
        for duplicate in [false, true] {
            store.failing.store(!duplicate, ordering: .relaxed)
            let answer = try await MQTTClientConnection.withConnection(
                host: "127.0.0.1", port: hub.mqttPort, tls: try device.credentials.tlsConfiguration(),
                clientID: "ctr-1", version: .v5
            ) { mqtt, _ -> Packet? in
                try await mqtt.send(
                    .publish(
                        PublishPacket(
                            topic: topic, payload: Array(#"{"t":1}"#.utf8), qos: .atLeastOnce, duplicate: duplicate,
                            packetID: 5, properties: properties)))
                while let packet = try await mqtt.next() {
                    switch packet {
                    case .puback(5, _, _): return packet
                    case .disconnect:
                        #expect(try await mqtt.next() == nil, "the connection ends after the DISCONNECT")
                        return packet
                    default: continue
                    }
                }
                return nil
            }
            switch answer {
            case .puback(_, let reason, _)?: codes.append(reason)
            case .disconnect(let reason, _)?: codes.append(reason)
            default: Issue.record("no answer: \(String(describing: answer))")
            }
        }
        codes.append(
            try await MQTTClientConnection.withConnection(
                host: "127.0.0.1", port: hub.mqttPort, tls: try device.credentials.tlsConfiguration(),
                clientID: "ctr-1", version: .v5
            ) { mqtt, _ in
                try await mqtt.publishAcknowledged(
                    topic: topic, payload: Array(#"{"t":1}"#.utf8), properties: properties)
            })
        #expect(
            codes == [0x89, 0, 0x87],
            "not stored → DISCONNECT 0x89, no PUBACK; the resend is stored; a third copy is a replay")
        #expect(try await store.telemetryCount(of: try DeviceID("ctr-1")) == 1)
        try await hub.stop()
    }
}
