import Core
import Crypto
import Foundation
import Hub
import HubClient
import PKI
import Store
import Testing
import X509

/// `POST /v1/device/certificate`: a device renews its certificate with a new key; the old one is revoked once the
/// new one is used, or when the grace period ends.
@Suite(.serialized) struct CertificateRenewalTests {
    struct Renewed {
        let status: Int
        let device: TestDevice?
        let serial: String?
    }

    /// Asks for a certificate for `key` with `device`'s current credentials.
    static func renew(
        _ hub: TestHub, _ device: TestDevice, key: P256.Signing.PrivateKey, body: [UInt8]? = nil
    ) async throws -> Renewed {
        let csr = try CertificateSigningRequest(
            version: .v1, subject: try DistinguishedName { CommonName(device.id) },
            privateKey: Certificate.PrivateKey(key), attributes: .init(), signatureAlgorithm: .ecdsaWithSHA256)
        let request = try body ?? Array(JSONSerialization.data(withJSONObject: ["csr": csr.serializeAsPEM().pemString]))
        let result = try await device.request(port: hub.devicePort, "POST", "/v1/device/certificate", body: request)
        guard result.status == 201, let pem = jsonObject(result)["certificate"] as? String else {
            return Renewed(status: result.status, device: nil, serial: nil)
        }
        let certificate = try Certificate(pemEncoded: pem)
        let renewed = try TestDevice(
            id: device.id + "-r\(certificate.serialHex.prefix(6))", keyPEM: key.pemRepresentation, certificatePEM: pem,
            caPEM: hub.caPEM, directory: hub.directory)
        return Renewed(status: 201, device: renewed, serial: certificate.serialHex)
    }

    /// Whether `device` is served (a signed read of its own record).
    static func served(_ hub: TestHub, _ device: TestDevice) async -> Bool {
        (try? await device.request(port: hub.devicePort, "GET", "/v1/device").status) == 200
    }

    @Test func aDeviceRenewsWithANewKeyAndTheOldCertificateIsRevokedOnceTheNewOneIsUsed() async throws {
        let hub = try await TestHub.start { $0.renewalGraceSeconds = 3600 }
        let device = try await hub.enroll("rn-1")
        let oldSerial = try Certificate(pemEncoded: String(decoding: device.credentials.certificatePEM, as: UTF8.self))
            .serialHex
        let renewed = try await Self.renew(hub, device, key: P256.Signing.PrivateKey())
        #expect(renewed.status == 201)
        let fresh = try #require(renewed.device)
        let issued = try Certificate(pemEncoded: String(decoding: fresh.credentials.certificatePEM, as: UTF8.self))
        #expect(issued.bulwarkIdentity == .device(try DeviceID("rn-1")), "the same identity")
        #expect(await Self.served(hub, device), "the old certificate works until the new one is used")
        #expect(await Self.served(hub, fresh))
        #expect(hub.server.revocationList.contains(oldSerial), "used: the old one is revoked")
        #expect(!(await Self.served(hub, device)))
        #expect(try await hub.server.store.revokedSerials().contains(oldSerial))
        let kinds = try await hub.securityEvents().map(\.kind)
        #expect(kinds.contains("certificate-renewed") && kinds.contains("certificate-superseded"))
        // Telemetry keeps flowing on the new certificate.
        #expect(
            try await fresh.request(port: hub.devicePort, "POST", "/v1/telemetry", body: Array(#"{"t":1}"#.utf8))
                .status == 202)
        try await hub.stop()
    }

    @Test func renewalsThatReuseAKeyOrAreMalformedAreRefused() async throws {
        let hub = try await TestHub.start { $0.gateway.renewalBurst = 20 }
        let device = try await hub.enroll("rn-2")
        let currentKey = try P256.Signing.PrivateKey(
            pemRepresentation: String(decoding: device.credentials.keyPEM, as: UTF8.self))
        #expect(try await Self.renew(hub, device, key: currentKey).status == 400, "the current key")
        #expect(
            try await Self.renew(hub, device, key: P256.Signing.PrivateKey(), body: Array(#"{"csr":1}"#.utf8)).status
                == 400)
        #expect(
            try await Self.renew(hub, device, key: P256.Signing.PrivateKey(), body: Array(#"{"csr":"nope"}"#.utf8))
                .status == 400)
        // A CSR whose signature is not by the key it carries (no proof of possession).
        let key = P256.Signing.PrivateKey()
        var csr = try CertificateSigningRequest(
            version: .v1, subject: try DistinguishedName { CommonName("x") }, privateKey: Certificate.PrivateKey(key),
            attributes: .init(), signatureAlgorithm: .ecdsaWithSHA256)
        csr = try CertificateSigningRequest(
            version: .v1, subject: csr.subject, publicKey: Certificate.PublicKey(P256.Signing.PrivateKey().publicKey),
            attributes: .init(), signatureAlgorithm: .ecdsaWithSHA256, signature: csr.signature)
        let forged = try Array(JSONSerialization.data(withJSONObject: ["csr": csr.serializeAsPEM().pemString]))
        #expect(try await Self.renew(hub, device, key: key, body: forged).status == 400, "no proof of possession")
        // A key once renewed away cannot come back.
        let first = try await Self.renew(hub, device, key: P256.Signing.PrivateKey())
        let fresh = try #require(first.device)
        #expect(try await Self.renew(hub, fresh, key: currentKey).status == 400, "a key the device had before")
        #expect(try await hub.server.store.certificates(of: try DeviceID("rn-2")).count == 2)
        try await hub.stop()
    }

    @Test func revokedAndQuarantinedDevicesCannotRenew() async throws {
        let hub = try await TestHub.start()
        let revoked = try await hub.enroll("rn-3")
        #expect(try await hub.operatorRequest("POST", "/v1/devices/rn-3/revoke").status == 200)
        let refused = try? await Self.renew(hub, revoked, key: P256.Signing.PrivateKey())
        #expect(refused == nil || refused?.status == 403, "a revoked certificate is refused")
        let quarantined = try await hub.enroll("rn-4")
        hub.server.gateway.quarantine.load(
            [(try DeviceID("rn-4"), Int64(Date().timeIntervalSince1970) + 600)],
            now: Int64(Date().timeIntervalSince1970))
        #expect(try await Self.renew(hub, quarantined, key: P256.Signing.PrivateKey()).status == 403)
        #expect(try await hub.server.store.certificates(of: try DeviceID("rn-3")).count == 1)
        #expect(try await hub.server.store.certificates(of: try DeviceID("rn-4")).count == 1)
        try await hub.stop()
    }

    /// A device that asked twice (the first answer lost) holds only the second new certificate; the old one is
    /// revoked when the grace period ends even if the new one was never used.
    @Test func aRepeatedRenewalSupersedesTheUnusedOneAndGraceEnds() async throws {
        // Ten seconds of grace: both renewals and the checks below must fit in it on a loaded machine (six did not,
        // once, with a compiler running beside the suite).
        let hub = try await TestHub.start { $0.renewalGraceSeconds = 10 }
        let device = try await hub.enroll("rn-5")
        let oldSerial = try Certificate(pemEncoded: String(decoding: device.credentials.certificatePEM, as: UTF8.self))
            .serialHex
        let first = try await Self.renew(hub, device, key: P256.Signing.PrivateKey())
        let second = try await Self.renew(hub, device, key: P256.Signing.PrivateKey())
        let lost = try #require(first.device)
        let kept = try #require(second.device)
        #expect(hub.server.revocationList.contains(try #require(first.serial)), "the unused first renewal")
        #expect(!(await Self.served(hub, lost)))
        #expect(await Self.served(hub, device), "the old one still works within the grace period")
        #expect(await AgentTests.eventually(25) { hub.server.revocationList.contains(oldSerial) }, "grace ended")
        #expect(!(await Self.served(hub, device)))
        #expect(await Self.served(hub, kept))
        try await hub.stop()
    }

    /// Each superseding renewal revokes a certificate and re-signs the CRL: the route has its own limit, three at once
    /// (a lost answer or two), then one every ten minutes.
    @Test func renewalsHaveTheirOwnRateLimit() async throws {
        let hub = try await TestHub.start()
        let device = try await hub.enroll("rn-7")
        for _ in 0..<3 { #expect(try await Self.renew(hub, device, key: P256.Signing.PrivateKey()).status == 201) }
        #expect(try await Self.renew(hub, device, key: P256.Signing.PrivateKey()).status == 429)
        try await hub.stop()
    }

    /// The adversarial review's finding: a renewal whose body was held back until the device's first renewal had been
    /// used (and its predecessor revoked) minted a second live certificate. It is refused now.
    @Test func aRenewalHeldBackPastTheRevocationOfItsCertificateIsRefused() async throws {
        let hub = try await TestHub.start()
        let device = try await hub.enroll("rn-6")
        let first = try await Self.renew(hub, device, key: P256.Signing.PrivateKey())
        let renewed = try #require(first.device)
        // The second renewal's head goes now, signed by the old key; its body waits.
        let key = P256.Signing.PrivateKey()
        let csr = try CertificateSigningRequest(
            version: .v1, subject: try DistinguishedName { CommonName("rn-6") },
            privateKey: Certificate.PrivateKey(key),
            attributes: .init(), signatureAlgorithm: .ecdsaWithSHA256)
        let body = try Array(JSONSerialization.data(withJSONObject: ["csr": csr.serializeAsPEM().pemString]))
        let signed = try device.credentials.signer().sign(
            method: "POST", path: "/v1/device/certificate", body: body, created: Int64(Date().timeIntervalSince1970),
            contentType: "application/json")
        let raw = try await RawConnection.open(port: hub.devicePort, tls: try device.credentials.tlsConfiguration())
        try await raw.send(
            "POST /v1/device/certificate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                + "Content-Length: \(body.count)\r\n" + signed.map { "\($0.name): \($0.value)\r\n" }.joined() + "\r\n")
        try await Task.sleep(for: .milliseconds(200))
        // The first renewal is used: the old certificate is revoked.
        #expect(await Self.served(hub, renewed))
        try await raw.send(body)
        let answer = await raw.wait(until: { $0.contains("\r\n\r\n") })
        #expect(answer.hasPrefix("HTTP/1.1 403"), "\(answer.prefix(60))")
        await raw.close()
        #expect(
            try await hub.server.store.certificates(of: try DeviceID("rn-6")).filter { $0.revokedAt == nil }.count == 1)
        try await hub.stop()
    }

    /// The CLI: `bulwark agent renew` on a paired device's state directory, then `agent send` with the new files.
    @Test func agentRenewReplacesTheStateFiles() async throws {
        let hub = try await TestHub.start()
        let cli = PairingEndToEndTests.CLI(binary: try HubProcessTests.binary, hub: hub)
        let work = try temporaryDirectory("renew")
        #expect(try await cli.run(["device", "label", "--id", "cam-r", "--out", work + "/cam-r"]).status == 0)
        #expect(try await cli.run(["pair", "claim", "@\(work)/cam-r/label.txt"]).status == 0)
        #expect(
            try await cli.run([
                "agent", "pair", "--hub", "127.0.0.1:\(hub.pairingPort)", "--label-dir", work + "/cam-r",
            ])
            .status == 0)
        let state = work + "/cam-r/state"
        let before = try String(contentsOfFile: state + "/device.crt", encoding: .utf8)
        let hubURL = "https://127.0.0.1:\(hub.devicePort)"
        let renewed = try await cli.run(["agent", "renew", "--state", state, "--hub", hubURL])
        #expect(renewed.status == 0, "\(renewed.stderr)")
        #expect(renewed.stdout.hasPrefix("renewed: serial"))
        #expect(try String(contentsOfFile: state + "/device.crt", encoding: .utf8) != before)
        var info = stat()
        #expect(stat(state + "/device.key", &info) == 0 && info.st_mode & 0o077 == 0, "the new key is 0600")
        let sent = try await cli.run(["agent", "send", "--state", state, "--hub", hubURL])
        #expect(sent.status == 0, "\(sent.stderr)")
        let oldSerial = try Certificate(pemEncoded: before).serialHex
        #expect(hub.server.revocationList.contains(oldSerial), "the new certificate was used: the old one is revoked")
        try await hub.stop()
    }
}
