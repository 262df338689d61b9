import Core
import Foundation
import HubClient
import NIOSSL
import Testing

/// Who may complete a handshake with the device listener, tried with our client and with real ones.
@Suite(.serialized) struct MutualTLSTests {
    @Test func onlyAnEnrolledDeviceOverTLS13GetsIn() async throws {
        let hub = try await TestHub.start()
        let device = try await hub.enroll("sensor-1")

        let ok = try await device.request(port: hub.devicePort, "GET", "/v1/device")
        #expect(ok.status == 200)
        #expect(jsonObject(ok)["id"] as? String == "sensor-1")

        var tls12 = try device.credentials.tlsConfiguration()
        tls12.minimumTLSVersion = .tlsv12
        tls12.maximumTLSVersion = .tlsv12
        await #expect(throws: (any Error).self, "TLS 1.2 only") {
            try await device.request(port: hub.devicePort, "GET", "/v1/device", tls: tls12)
        }

        var anonymous = try device.credentials.tlsConfiguration()
        anonymous.certificateChain = []
        anonymous.privateKey = nil
        await #expect(throws: (any Error).self, "no client certificate") {
            try await device.request(port: hub.devicePort, "GET", "/v1/device", tls: anonymous)
        }

        let foreign = try TestDevice.foreign(id: "sensor-1", directory: hub.directory)
        await #expect(throws: (any Error).self, "certificate from a foreign CA naming the same device") {
            try await foreign.request(port: hub.devicePort, "GET", "/v1/device")
        }

        let expired = try hub.issue(.device(try DeviceID("sensor-1")), now: Date() - 10 * 86400, days: 1)
        await #expect(throws: (any Error).self, "expired certificate") {
            try await expired.request(port: hub.devicePort, "GET", "/v1/device")
        }

        let operatorOnDevice = try hub.operatorCredentials
        await #expect(throws: (any Error).self, "operator certificate on the device listener") {
            try await HTTPSClient.request(
                host: "127.0.0.1", port: hub.devicePort, tls: try operatorOnDevice.tlsConfiguration(), method: "GET",
                path: "/v1/device")
        }
        await #expect(throws: (any Error).self, "device certificate on the operator listener") {
            try await device.request(port: hub.operatorPort, "GET", "/v1/devices")
        }

        let refusals = try await hub.securityEvents().filter { $0.kind == "tls-client-refused" }
        #expect(refusals.count >= 3, "foreign, expired and wrong-role certificates are security events")
        try await hub.stop()
    }

    @Test func curlAndOpenSSLSeeTheSameRules() async throws {
        guard let curl = which("curl"), let openssl = which("openssl") else {
            Issue.record("curl and openssl are required (scripts/test installs them)")
            return
        }
        let hub = try await TestHub.start()
        let device = try await hub.enroll("sensor-2")
        let foreign = try TestDevice.foreign(id: "sensor-2", directory: hub.directory)
        let expired = try hub.issue(.device(try DeviceID("sensor-2")), now: Date() - 10 * 86400, days: 1)
        let url = "https://127.0.0.1:\(hub.devicePort)/v1/device"
        func curlStatus(_ extra: [String]) async throws -> String {
            try await run(
                curl, ["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", device.caFile] + extra + [url]
            )
            .stdout
        }
        let headerFile = hub.directory + "/signature-headers.txt"
        try (try device.signatureHeaderLines().joined(separator: "\n") + "\n").write(
            toFile: headerFile, atomically: true, encoding: .utf8)
        #expect(
            try await curlStatus(["--cert", device.certificateFile, "--key", device.keyFile, "-H", "@" + headerFile])
                == "200")
        // The same signed headers a second time: the nonce was used.
        #expect(
            try await curlStatus(["--cert", device.certificateFile, "--key", device.keyFile, "-H", "@" + headerFile])
                == "401")
        #expect(
            try await curlStatus(["--cert", device.certificateFile, "--key", device.keyFile, "--tls-max", "1.2"])
                == "000")
        #expect(try await curlStatus([]) == "000")
        #expect(try await curlStatus(["--cert", foreign.certificateFile, "--key", foreign.keyFile]) == "000")
        #expect(try await curlStatus(["--cert", expired.certificateFile, "--key", expired.keyFile]) == "000")

        let request =
            "GET /v1/device HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            + (try device.signatureHeaderLines().map { $0 + "\r\n" }.joined()) + "\r\n"
        func sClient(_ extra: [String]) async throws -> String {
            let result = try await run(
                openssl,
                ["s_client", "-connect", "127.0.0.1:\(hub.devicePort)", "-CAfile", device.caFile, "-quiet", "-ign_eof"]
                    + extra, stdin: request, timeout: 15)
            return result.stdout + result.stderr
        }
        let good = try await sClient(["-cert", device.certificateFile, "-key", device.keyFile])
        #expect(good.contains("HTTP/1.1 200"))
        let tls12 = try await sClient(["-cert", device.certificateFile, "-key", device.keyFile, "-tls1_2"])
        #expect(!tls12.contains("HTTP/1.1"))
        #expect(tls12.contains("alert protocol version") || tls12.contains("no protocols available"))
        let noCertificate = try await sClient([])
        #expect(!noCertificate.contains("HTTP/1.1"))
        #expect(noCertificate.contains("certificate required"))
        let foreignResult = try await sClient(["-cert", foreign.certificateFile, "-key", foreign.keyFile])
        #expect(!foreignResult.contains("HTTP/1.1"))
        let expiredResult = try await sClient(["-cert", expired.certificateFile, "-key", expired.keyFile])
        #expect(!expiredResult.contains("HTTP/1.1"))
        try await hub.stop()
    }
}
