import Agent
import Core
import Foundation
import Hub
import Pairing
import Testing

/// `crypto.profile: fips`, attacked from the outside with OpenSSL: on every TLS listener a client offering only
/// ChaCha20-Poly1305, or only X25519, gets no connection; AES-GCM on P-256/P-384 works. The same offers succeed on a
/// standard hub, so the refusals are the profile's doing. A 25519 pairing label is refused at claim, with the reason.
@Suite(.serialized) struct CryptoProfileTests {
    /// `openssl s_client` with the operator's certificate (a full mutual-TLS handshake); what it negotiated.
    static func handshake(port: Int, hub: TestHub, _ options: [String]) async throws -> String {
        let result = try await run(
            "/usr/bin/env",
            [
                "openssl", "s_client", "-connect", "127.0.0.1:\(port)", "-cert",
                hub.directory + "/operators/admin.crt", "-key", hub.directory + "/operators/admin.key", "-CAfile",
                hub.directory + "/ca.crt",
            ] + (options.contains("-tls1_2") ? options : ["-tls1_3"] + options), stdin: "", timeout: 20)
        return result.stdout + result.stderr
    }

    static func negotiated(_ output: String) -> String? {
        guard let line = output.split(separator: "\n").first(where: { $0.contains("Cipher is ") }) else { return nil }
        let cipher = line.components(separatedBy: "Cipher is ").last
        return cipher == "(NONE)" ? nil : cipher
    }

    @Test func fipsListenersRefuseChaChaAndX25519AndAcceptAESGCMOnNISTCurves() async throws {
        let hub = try await TestHub.start { $0.cryptoProfile = .fips }
        for (name, port) in [("device", hub.devicePort), ("operator", hub.operatorPort), ("mqtt", hub.mqttPort)] {
            let chacha = try await Self.handshake(
                port: port, hub: hub, ["-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"])
            #expect(Self.negotiated(chacha) == nil, "\(name) accepted ChaCha20: \(chacha)")
            let x25519 = try await Self.handshake(port: port, hub: hub, ["-groups", "X25519"])
            #expect(Self.negotiated(x25519) == nil, "\(name) accepted X25519: \(x25519)")
            // BoringSSL's FIPS policy allows TLS 1.2 by itself: the hub keeps TLS 1.3 only.
            let tls12 = try await Self.handshake(
                port: port, hub: hub, ["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"])
            #expect(Self.negotiated(tls12) == nil, "\(name) accepted TLS 1.2: \(tls12)")
            let approved = try await Self.handshake(
                port: port, hub: hub, ["-ciphersuites", "TLS_AES_256_GCM_SHA384", "-groups", "P-384"])
            #expect(Self.negotiated(approved) == "TLS_AES_256_GCM_SHA384", "\(name): \(approved)")
            let p256 = try await Self.handshake(
                port: port, hub: hub, ["-ciphersuites", "TLS_AES_128_GCM_SHA256", "-groups", "P-256"])
            #expect(Self.negotiated(p256) == "TLS_AES_128_GCM_SHA256", "\(name): \(p256)")
        }
        try await hub.stop()
    }

    @Test func standardListenersAcceptWhatFipsRefuses() async throws {
        let hub = try await TestHub.start()
        let chacha = try await Self.handshake(
            port: hub.devicePort, hub: hub, ["-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256", "-groups", "X25519"])
        #expect(Self.negotiated(chacha) == "TLS_CHACHA20_POLY1305_SHA256", "\(chacha)")
        let tls12 = try await Self.handshake(port: hub.devicePort, hub: hub, ["-tls1_2"])
        #expect(Self.negotiated(tls12) == nil, "TLS 1.2 accepted: \(tls12)")
        try await hub.stop()
    }

    /// A fips agent (its TLS contexts under the same policy, its TUF client under `KeyPolicy.fips`) works with a fips
    /// hub: connected over MQTT, telemetry stored.
    @Test func aFipsAgentWorksWithAFipsHub() async throws {
        let hub = try await TestHub.start { $0.cryptoProfile = .fips }
        let state = try AgentTests.stateDirectory(hub, try await hub.enroll("fips-agent"))
        var configuration = AgentTests.configuration(hub, state)
        configuration.cryptoProfile = .fips
        let agent = try Agent(configuration: configuration)
        #expect(try AgentState.load(state, profile: .fips).updaterConfig.keyPolicy == .fips)
        let task = Task { try await agent.run() }
        #expect(await AgentTests.eventually(15) { await agent.connection == .connected })
        try await agent.send(Array(#"{"t":1}"#.utf8))
        #expect(
            try await AgentTests.eventually(15) {
                try await hub.server.store.telemetry(of: try DeviceID("fips-agent"), limit: 10).count == 1
            })
        await agent.stop()
        _ = await task.result
        try await hub.stop()
    }

    @Test func fipsRefusesA25519LabelAtClaimAndSaysWhy() async throws {
        let hub = try await TestHub.start { $0.cryptoProfile = .fips }
        let x25519 = NoiseDH.x25519.generateKeyPair()
        let refusedLabel = try PairingLabel(
            suite: .x25519AESGCMSHA256, deviceID: try DeviceID("fips-25519"), publicKey: x25519.publicKey,
            setupSecret: [UInt8](repeating: 3, count: 16))
        let refused = try await hub.operatorRequest("POST", "/v1/pairing/claims", json: ["label": refusedLabel.text])
        #expect(refused.status == 400)
        #expect(refused.bodyText.contains("suite-not-approved") && refused.bodyText.contains("25519_AESGCM_SHA256"))
        #expect(try await hub.securityEvents().contains { $0.kind == "pairing-claim-refused" })

        let p256 = NoiseDH.p256.generateKeyPair()
        let label = try PairingLabel(
            suite: .p256AESGCMSHA256, deviceID: try DeviceID("fips-p256"), publicKey: p256.publicKey,
            setupSecret: [UInt8](repeating: 4, count: 16))
        #expect(try await hub.operatorRequest("POST", "/v1/pairing/claims", json: ["label": label.text]).status == 201)
        try await hub.stop()
    }
}

/// `bulwark crypto report` from the outside: what a fips hub lists is all approved; a standard hub lists ChaCha20 and
/// X25519 as not approved; under fips the CLI refuses to make a 25519 label.
@Suite struct CryptoReportTests {
    @Test func theReportListsEveryListenerAndMarksWhatIsNotApproved() async throws {
        let binary = try HubProcessTests.binary
        let base = try temporaryDirectory("crypto-report")
        try #"{"crypto":{"profile":"fips"}}"#.write(toFile: base + "/fips.json", atomically: true, encoding: .utf8)
        let fips = try await run(
            binary, ["crypto", "report", "--data", base + "/data", "--config", base + "/fips.json"])
        #expect(fips.status == 0, "\(fips.stderr)")
        #expect(fips.stdout.hasPrefix("profile fips") && fips.stdout.contains("not a validated module"))
        for listener in ["listener device", "listener operator", "listener mqtt", "listener pairing"] {
            #expect(fips.stdout.contains(listener))
        }
        #expect(!fips.stdout.contains("NOT approved"), "\(fips.stdout)")
        #expect(!fips.stdout.contains("CHACHA") && !fips.stdout.contains("X25519"))

        let standard = try await run(binary, ["crypto", "report", "--data", base + "/data"])
        #expect(standard.status == 0)
        #expect(standard.stdout.contains("NOT approved  cipher suite TLS_CHACHA20_POLY1305_SHA256"))
        #expect(standard.stdout.contains("NOT approved  key exchange X25519"))

        let label = try await run(
            binary, ["device", "label", "--id", "d-1", "--out", base + "/label", "--suite", "25519"],
            environment: ["BULWARK_CRYPTO_PROFILE": "fips"])
        #expect(label.status != 0 && label.stderr.contains("not approved"), "\(label.stderr)")
    }
}
