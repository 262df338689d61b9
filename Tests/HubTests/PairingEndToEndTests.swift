import Core
import Crypto
import Foundation
import Hub
import HubClient
import Hummingbird
import HummingbirdTLS
import Logging
import NIOPosix
import NIOSSL
import PKI
import Pairing
import ServiceLifecycle
import Store
import Testing
import X509

/// Pairing as a user does it from the README, with the real binary for the device and operator sides.
@Suite(.serialized) struct PairingEndToEndTests {
    struct CLI {
        let binary: String
        let hub: TestHub
        func run(_ arguments: [String]) async throws -> (status: Int32, stdout: String, stderr: String) {
            try await HubTests.run(
                binary, arguments,
                environment: [
                    "BULWARK_HUB": "https://127.0.0.1:\(hub.operatorPort)",
                    "BULWARK_CREDENTIALS": hub.directory + "/operators",
                ], timeout: 30)
        }
    }

    @Test func labelClaimPairAndSendWithPinnedTrust() async throws {
        let hub = try await TestHub.start()
        let cli = CLI(binary: try HubProcessTests.binary, hub: hub)
        let work = try temporaryDirectory("pair")
        let labelled = try await cli.run(["device", "label", "--id", "cam-1", "--out", work + "/cam-1"])
        #expect(labelled.status == 0, "\(labelled.stderr)")
        var info = stat()
        for file in ["identity.key", "label.txt"] {
            #expect(stat("\(work)/cam-1/\(file)", &info) == 0 && info.st_mode & 0o077 == 0, "\(file) is 0600")
        }
        if which("qrencode") != nil { #expect(FileManager.default.fileExists(atPath: work + "/cam-1/label.png")) }

        #expect(try await cli.run(["pair", "claim", "@\(work)/cam-1/label.txt"]).status == 0)
        let paired = try await cli.run([
            "agent", "pair", "--hub", "127.0.0.1:\(hub.pairingPort)", "--label-dir", work + "/cam-1",
        ])
        #expect(paired.status == 0, "\(paired.stderr)")
        for file in ["device.key", "irk"] {
            #expect(stat("\(work)/cam-1/state/\(file)", &info) == 0 && info.st_mode & 0o077 == 0, "\(file) is 0600")
        }
        let pins = try String(contentsOfFile: work + "/cam-1/state/pins", encoding: .utf8).split(separator: "\n")
        #expect(pins.count == 2, "the pin in use and a backup pin")
        #expect(pins.first.map(String.init) == Data(hub.server.credentials.pins[0]).base64EncodedString())

        let sent = try await cli.run([
            "agent", "send", "--state", work + "/cam-1/state", "--hub", "https://127.0.0.1:\(hub.devicePort)",
        ])
        #expect(sent.status == 0, "\(sent.stderr)")
        #expect(sent.stdout.hasPrefix("202"))
        let device = try DeviceID("cam-1")
        #expect(try await hub.server.store.telemetryCount(of: device) == 1)
        #expect(try await hub.server.store.identityResolvingKeys().map(\.0) == [device])
        #expect(try await hub.securityEvents().contains { $0.kind == "device-paired" })

        // The device announces itself by its rotating identifier; the hub resolves it.
        let rid = try await cli.run(["agent", "rid", "--state", work + "/cam-1/state"]).stdout
            .trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(rid.count == 16)
        let resolved = try await hub.operatorRequest("GET", "/v1/rids/\(rid)")
        #expect(jsonObject(resolved)["deviceId"] as? String == "cam-1")
        #expect(try await hub.operatorRequest("GET", "/v1/rids/aaaaaaaaaaaaaaaa").status == 404)

        // One owner: the device refuses to pair again; after a reset the used claim is gone.
        #expect(
            try await cli.run([
                "agent", "pair", "--hub", "127.0.0.1:\(hub.pairingPort)", "--label-dir", work + "/cam-1",
            ])
            .status == 75)
        let again = try await cli.run([
            "agent", "pair", "--hub", "127.0.0.1:\(hub.pairingPort)", "--label-dir", work + "/cam-1", "--reset",
        ])
        #expect(again.status == 1, "the claim was used once")
        try await hub.stop()
    }

    /// A pinned key is not enough: the certificate must be a server's (serverAuth). A device's certificate from the
    /// same CA, for a key someone got into the pins (a row written into a cluster's database), is refused.
    @Test func aDevicesCertificateIsNeverTakenForTheHubsEvenWithItsKeyPinned() async throws {
        let hub = try await TestHub.start()
        let device = try await hub.enroll("eku-1")
        let deviceCertificate = try NIOSSLCertificate(bytes: device.credentials.certificatePEM, format: .pem)
        let hubCertificate = try NIOSSLCertificate(
            bytes: Array(hub.server.credentials.serverCertificate.pem.utf8), format: .pem)
        let pinned = PinnedServer(
            caCertificateDER: hub.server.credentials.authority.certificate.derBytes,
            pins: [deviceCertificate, hubCertificate].compactMap { PinnedServer.pin(of: $0) })
        func verdict(_ certificate: NIOSSLCertificate) async throws -> NIOSSLVerificationResult {
            let promise = MultiThreadedEventLoopGroup.singleton.next().makePromise(of: NIOSSLVerificationResult.self)
            pinned.verify([certificate], promise)
            return try await promise.futureResult.get()
        }
        #expect(try await verdict(hubCertificate) == .certificateVerified, "the hub's own certificate")
        #expect(try await verdict(deviceCertificate) == .failed, "a clientAuth certificate with a pinned key")
        try await hub.stop()
    }

    @Test func aHubPresentingAnotherKeyIsRefusedByThePinEvenWithAValidChain() async throws {
        let hub = try await TestHub.start()
        let cli = CLI(binary: try HubProcessTests.binary, hub: hub)
        let work = try temporaryDirectory("pin")
        #expect(try await cli.run(["device", "label", "--id", "cam-2", "--out", work + "/cam-2"]).status == 0)
        #expect(try await cli.run(["pair", "claim", "@\(work)/cam-2/label.txt"]).status == 0)
        #expect(
            try await cli.run([
                "agent", "pair", "--hub", "127.0.0.1:\(hub.pairingPort)", "--label-dir", work + "/cam-2",
            ])
            .status == 0)

        // An impostor hub with a certificate from the very same CA (say, a stolen CA key) but another key.
        let impostorKey = P256.Signing.PrivateKey()
        let certificate = try hub.server.credentials.authority.issueServerCertificate(
            publicKey: impostorKey.publicKey, dnsNames: ["localhost"], ipAddresses: [[127, 0, 0, 1]], now: Date())
        let (impostor, port) = try await Self.startTLSServer(
            certificate: certificate, key: impostorKey, ca: hub.server.credentials.authority.certificate)
        let refused = try await cli.run([
            "agent", "send", "--state", work + "/cam-2/state", "--hub", "https://127.0.0.1:\(port)",
        ])
        #expect(refused.status == 69, "\(refused.stdout) \(refused.stderr)")
        #expect(refused.stderr.contains("pin check"))
        let accepted = try await cli.run([
            "agent", "send", "--state", work + "/cam-2/state", "--hub", "https://127.0.0.1:\(hub.devicePort)",
        ])
        #expect(accepted.status == 0, "\(accepted.stderr)")
        await impostor.triggerGracefulShutdown()
        try await hub.stop()
    }

    @Test func aClaimIsUsedOnceEvenByConcurrentSessions() async throws {
        let hub = try await TestHub.start()
        let identity = NoiseDH.p256.generateKeyPair()
        let label = try PairingLabel(
            suite: .p256AESGCMSHA256, deviceID: try DeviceID("race-1"), publicKey: identity.publicKey,
            setupSecret: [UInt8](repeating: 3, count: 16))
        #expect(try await hub.operatorRequest("POST", "/v1/pairing/claims", json: ["label": label.text]).status == 201)
        let successes = await withTaskGroup(of: Int.self) { group in
            for _ in 0..<8 {
                group.addTask {
                    (try? await PairingClient.pair(
                        host: "127.0.0.1", port: hub.pairingPort, label: label, identityKey: identity)) == nil ? 0 : 1
                }
            }
            return await group.reduce(0, +)
        }
        #expect(successes == 1)
        #expect(try await hub.server.store.certificates(of: try DeviceID("race-1")).count == 1)
        try await hub.stop()
    }

    static func startTLSServer(
        certificate: Certificate, key: P256.Signing.PrivateKey, ca: Certificate
    ) async throws -> (ServiceGroup, Int) {
        var tls = TLSConfiguration.makeServerConfiguration(
            certificateChain: [.certificate(try NIOSSLCertificate(bytes: certificate.derBytes, format: .der))],
            privateKey: .privateKey(try NIOSSLPrivateKey(bytes: Array(key.pemRepresentation.utf8), format: .pem)))
        tls.minimumTLSVersion = .tlsv13
        let router = Router()
        router.post("/v1/telemetry") { _, _ in Response(status: .accepted) }
        let (ports, continuation) = AsyncStream.makeStream(of: Int.self)
        let logger = Logger(label: "impostor", factory: { _ in SwiftLogNoOpLogHandler() })
        let app = Application(
            router: router, server: try .tls(.http1(), tlsConfiguration: tls),
            configuration: .init(address: .hostname("127.0.0.1", port: 0)),
            onServerRunning: { continuation.yield($0.localAddress?.port ?? 0) }, logger: logger)
        let group = ServiceGroup(configuration: .init(services: [app], gracefulShutdownSignals: [], logger: logger))
        Task { try await group.run() }
        for await port in ports { return (group, port) }
        return (group, 0)
    }
}
