import Foundation
import HubClient
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The hub with its CA key and its online TUF keys on a PKCS#11 token (SoftHSM2 behind the test-only fault module, so
/// the token can be unplugged while the hub runs): certificates it issues verify with `openssl verify`; with the token
/// gone, enrolment answers 503 and the re-signer logs its failure; both work again once the token is back.
@Suite(.serialized) struct HSMHubTests {
    @Test func caAndOnlineKeysOnATokenFailLoudlyWhenItIsUnpluggedAndRecover() async throws {
        let binary = try HubProcessTests.binary
        let fault = URL(fileURLWithPath: binary).deletingLastPathComponent().path + "/libBulwarkPKCS11Fault.so"
        try #require(FileManager.default.fileExists(atPath: fault), "swift build makes \(fault)")
        let softhsm = "/usr/lib/softhsm/libsofthsm2.so"
        let base = try temporaryDirectory("hsm-hub")
        let marker = base + "/unplugged"
        let environment = try await Self.token("hub", in: base).merging([
            "BULWARK_P11_FAULT_MODULE": softhsm, "BULWARK_P11_FAULT_FILE": marker,
        ]) { $1 }
        let pin = base + "/pin"
        _ = FileManager.default.createFile(
            atPath: pin, contents: Data("1234\n".utf8), attributes: [.posixPermissions: 0o600])
        func uri(_ object: String, _ module: String) -> String {
            "pkcs11:token=hub;object=\(object)?module-path=\(module)&pin-source=file:\(pin)"
        }
        for object in ["ca", "timestamp-1", "snapshot-1"] {
            let made = try await run(binary, ["hsm", "keygen", uri(object, softhsm)], environment: environment)
            try #require(made.status == 0, "\(made.stderr)")
        }

        // A repository whose online roles are on the token (through the fault module), the others in files.
        let repository = base + "/repo"
        let keys = base + "/keys"
        let created = try await run(
            binary,
            [
                "tuf", "init", "--repo", repository, "--keys", keys, "--key", "timestamp=" + uri("timestamp-1", fault),
                "--key", "snapshot=" + uri("snapshot-1", fault),
            ], environment: environment)
        try #require(created.status == 0, "\(created.stderr)")
        let online = base + "/online"
        try FileManager.default.createDirectory(
            atPath: online, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        for name in ["timestamp-1", "snapshot-1"] {
            try FileManager.default.copyItem(atPath: "\(keys)/\(name).uri", toPath: "\(online)/\(name).uri")
        }
        func timestampVersion() -> Int {
            let data = FileManager.default.contents(atPath: repository + "/metadata/timestamp.json") ?? Data()
            let object = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any]
            return (object?["signed"] as? [String: Any])?["version"] as? Int ?? -1
        }

        let data = base + "/data"
        let hub = try HubProcess(
            binary: binary, directory: data,
            environment: environment.merging([
                "BULWARK_CA_KEY": uri("ca", fault), "BULWARK_TUF_REPOSITORY": repository,
                "BULWARK_TUF_ONLINE_KEYS": online, "BULWARK_TUF_RESIGN_INTERVAL_SECONDS": "10",
                "BULWARK_TUF_TIMESTAMP_WITHIN_SECONDS": "172800", "BULWARK_TUF_SNAPSHOT_WITHIN_SECONDS": "172800",
            ]) { $1 })
        defer { #expect(hub.stop(within: 30), "the hub exits within 30 s of SIGTERM") }
        let ports = try await hub.waitForPorts()
        #expect(FileManager.default.fileExists(atPath: data + "/ca.key.uri"))
        #expect(!FileManager.default.fileExists(atPath: data + "/ca.key"), "no CA key file: the key is on the token")
        let operatorCredentials = try ClientCredentials(
            certificateFile: data + "/operators/admin.crt", keyFile: data + "/operators/admin.key",
            caFile: data + "/ca.crt")

        // A device certificate signed on the token verifies with OpenSSL against the hub's CA certificate.
        let device = try await HubProcessTests().enroll(
            "hsm-dev-1", operatorPort: ports.operator, operatorCredentials, data)
        try Data(device.certificatePEM).write(to: URL(fileURLWithPath: base + "/dev.crt"))
        let verified = try await run(
            "/usr/bin/env", ["openssl", "verify", "-CAfile", data + "/ca.crt", base + "/dev.crt"])
        #expect(verified.status == 0 && verified.stdout.contains("OK"), "\(verified.stdout)\(verified.stderr)")
        // The re-signer signed on the token at its first pass.
        #expect(timestampVersion() >= 2)

        // Unplugged: enrolment answers 503 with a correlation id, the reason goes to the log; the re-signer fails
        // loudly at its next pass.
        _ = FileManager.default.createFile(atPath: marker, contents: Data())
        let versionWhileUnplugged = timestampVersion()
        let refused = try await enrollRequest("hsm-dev-2", operatorPort: ports.operator, operatorCredentials, base)
        #expect(refused.status == 503, "\(refused.bodyText)")
        #expect(refused.bodyText.contains("ca-unavailable") && !refused.bodyText.contains("PKCS#11"))
        #expect(hub.log.contains("CKR_DEVICE_REMOVED") || hub.log.contains("not present"))
        var resignFailed = false
        for _ in 0..<150 where !resignFailed {
            try await Task.sleep(for: .milliseconds(100))
            resignFailed = hub.log.contains("TUF re-signing failed")
        }
        #expect(resignFailed, "the re-signer reports the unplugged token")
        #expect(timestampVersion() == versionWhileUnplugged)

        // Back: both work again, without a restart.
        try FileManager.default.removeItem(atPath: marker)
        let again = try await enrollRequest("hsm-dev-2", operatorPort: ports.operator, operatorCredentials, base)
        #expect(again.status == 201, "\(again.bodyText)")
        var resigned = false
        for _ in 0..<150 where !resigned {
            try await Task.sleep(for: .milliseconds(100))
            resigned = timestampVersion() > versionWhileUnplugged
        }
        #expect(resigned, "the re-signer signs again once the token is back")
        #expect(!hub.log.contains("1234"), "the PIN never reaches the log")
    }

    /// A wrong PIN, a missing module, a missing object: one line each, its exit code, the PIN never echoed; the hub
    /// refuses to start on them the same way.
    @Test func badTokenSettingsGiveOneClearLine() async throws {
        let binary = try HubProcessTests.binary
        let softhsm = "/usr/lib/softhsm/libsofthsm2.so"
        let base = try temporaryDirectory("hsm-errors")
        let environment = try await Self.token("hub", in: base)
        let made = try await run(
            binary, ["hsm", "keygen", "pkcs11:token=hub;object=ca?module-path=\(softhsm)"],
            environment: environment.merging(["BULWARK_PKCS11_PIN": "1234"]) { $1 })
        try #require(made.status == 0, "\(made.stderr)")

        let cases: [(uri: String, pin: String, code: Int32, says: String)] = [
            ("pkcs11:token=hub;object=ca?module-path=\(softhsm)", "987654", 77, "PIN for token hub is wrong"),
            ("pkcs11:token=hub;object=ca?module-path=/usr/lib/nothing/libp11.so", "1234", 69, "does not exist"),
            ("pkcs11:token=hub;object=missing?module-path=\(softhsm)", "1234", 65, "no private key 'missing'"),
        ]
        for item in cases {
            let keygenEnvironment = environment.merging(["BULWARK_PKCS11_PIN": item.pin]) { $1 }
            // `hsm keygen` on a taken label opens the token first: the same failures, as the operator sees them.
            let result = try await run(
                binary, ["hsm", "keygen", item.uri.replacingOccurrences(of: "object=missing", with: "object=ca")],
                environment: keygenEnvironment)
            if item.code != 65 {
                #expect(result.status == item.code, "\(item.says): \(result.stderr)")
                #expect(result.stderr.contains(item.says), "\(result.stderr)")
                #expect(result.stderr.split(separator: "\n").count == 1)
                #expect(!result.stderr.contains(item.pin))
            }
            // The hub refuses to start, in one line naming the cause.
            let data = base + "/data-\(item.code)"
            let serve = try await run(
                binary, ["serve", "--data", data],
                environment: keygenEnvironment.merging(["BULWARK_CA_KEY": item.uri]) { $1 }, timeout: 20)
            #expect(serve.status != 0)
            #expect(serve.stderr.contains(item.says), "\(serve.stderr)")
            #expect(!serve.stderr.contains(item.pin) && !serve.stdout.contains(item.pin))
        }
    }

    /// A token the hub logs into (for its online keys) that also holds the targets key: the hub could sign as the
    /// targets role, so it refuses to start and says why.
    @Test func aTokenThatAlsoHoldsAnOfflineRoleKeyIsRefused() async throws {
        let binary = try HubProcessTests.binary
        let softhsm = "/usr/lib/softhsm/libsofthsm2.so"
        let base = try temporaryDirectory("hsm-offline")
        let environment = try await Self.token("one", in: base).merging(["BULWARK_PKCS11_PIN": "1234"]) { $1 }
        func uri(_ object: String) -> String { "pkcs11:token=one;object=\(object)?module-path=\(softhsm)" }
        for object in ["targets-1", "timestamp-1", "snapshot-1"] {
            let made = try await run(binary, ["hsm", "keygen", uri(object)], environment: environment)
            try #require(made.status == 0, "\(made.stderr)")
        }
        let repository = base + "/repo"
        let keys = base + "/keys"
        let created = try await run(
            binary,
            [
                "tuf", "init", "--repo", repository, "--keys", keys, "--key", "targets=" + uri("targets-1"), "--key",
                "timestamp=" + uri("timestamp-1"), "--key", "snapshot=" + uri("snapshot-1"),
            ], environment: environment)
        try #require(created.status == 0, "\(created.stderr)")
        let online = base + "/online"
        try FileManager.default.createDirectory(
            atPath: online, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        for name in ["timestamp-1", "snapshot-1"] {
            try FileManager.default.copyItem(atPath: "\(keys)/\(name).uri", toPath: "\(online)/\(name).uri")
        }
        let serve = try await run(
            binary, ["serve", "--data", base + "/data"],
            environment: environment.merging([
                "BULWARK_TUF_REPOSITORY": repository, "BULWARK_TUF_ONLINE_KEYS": online,
            ]) { $1 }, timeout: 20)
        #expect(serve.status != 0)
        #expect(serve.stderr.contains("also holds a targets key"), "\(serve.stderr)")
    }

    /// A SoftHSM2 token directory of its own under `base` with one token (`label`, PIN 1234), for child processes;
    /// returns their environment (`SOFTHSM2_CONF`).
    static func token(_ label: String, in base: String) async throws -> [String: String] {
        try FileManager.default.createDirectory(atPath: base + "/tokens", withIntermediateDirectories: true)
        try "directories.tokendir = \(base)/tokens\nobjectstore.backend = file\n".write(
            toFile: base + "/softhsm2.conf", atomically: true, encoding: .utf8)
        let environment = ["SOFTHSM2_CONF": base + "/softhsm2.conf"]
        let made = try await run(
            "/usr/bin/softhsm2-util",
            ["--init-token", "--free", "--label", label, "--pin", "1234", "--so-pin", "5678"],
            environment: environment)
        try #require(made.status == 0, "softhsm2-util (scripts/install-deps installs softhsm2): \(made.stderr)")
        return environment
    }

    func enrollRequest(
        _ id: String, operatorPort: Int, _ credentials: ClientCredentials, _ directory: String
    ) async throws -> HTTPResult {
        let keyFile = directory + "/\(id).key"
        if !FileManager.default.fileExists(atPath: keyFile) {
            let key = try await run("/usr/bin/env", ["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout"])
            try key.stdout.write(toFile: keyFile, atomically: true, encoding: .utf8)
        }
        let csr = try await run("/usr/bin/env", ["openssl", "req", "-new", "-key", keyFile, "-subj", "/CN=\(id)"])
        return try await HTTPSClient.request(
            host: "127.0.0.1", port: operatorPort, tls: try credentials.tlsConfiguration(), method: "POST",
            path: "/v1/devices", headers: [("Content-Type", "application/json")],
            body: [UInt8](try JSONSerialization.data(withJSONObject: ["id": id, "csr": csr.stdout])))
    }
}
