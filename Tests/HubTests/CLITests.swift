import Foundation
import HubClient
import Testing

/// The operator CLI as a user runs it, against the real binary.
@Suite(.serialized) struct CLITests {
    @Test func operatorCommandsEndToEnd() async throws {
        let binary = try HubProcessTests.binary
        let directory = try temporaryDirectory("cli")
        let hub = try HubProcess(binary: binary, directory: directory)
        defer { #expect(hub.stop(within: 30), "the hub exits within 30 s of SIGTERM") }
        let ports = try await hub.waitForPorts()
        let environment = [
            "BULWARK_HUB": "https://127.0.0.1:\(ports.operator)", "BULWARK_CREDENTIALS": directory + "/operators",
        ]
        func bulwark(_ arguments: [String]) async throws -> (status: Int32, stdout: String, stderr: String) {
            try await run(binary, arguments, environment: environment, timeout: 30)
        }

        let work = try temporaryDirectory("cli-work")
        try await run(
            "/usr/bin/env", ["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", work + "/d.key"])
        try await run(
            "/usr/bin/env",
            ["openssl", "req", "-new", "-key", work + "/d.key", "-subj", "/CN=d", "-out", work + "/d.csr"])

        let enrolled = try await bulwark([
            "device", "enroll", "--id", "cli-1", "--csr", work + "/d.csr", "--out", work + "/d.crt",
        ])
        #expect(enrolled.status == 0, "\(enrolled.stderr)")
        #expect(enrolled.stdout.contains("enrolled cli-1"))
        let x509 = try await run("/usr/bin/env", ["openssl", "x509", "-in", work + "/d.crt", "-noout", "-text"]).stdout
        #expect(x509.contains("URI:urn:bulwark:device:cli-1"))
        #expect(x509.contains("TLS Web Client Authentication"))
        #expect(x509.contains("CA:FALSE"))

        #expect(try await bulwark(["device", "list"]).stdout.contains("cli-1\tactive"))
        #expect(try await bulwark(["device", "show", "cli-1"]).stdout.contains("\"spkiSha256\""))

        let added = try await bulwark(["operator", "add", "bob", "--out", work + "/bob"])
        #expect(added.status == 0, "\(added.stderr)")
        var keyInfo = stat()
        #expect(stat(work + "/bob/bob.key", &keyInfo) == 0 && keyInfo.st_mode & 0o077 == 0, "bob.key is 0600")
        let asBob = try await run(
            binary, ["device", "revoke", "cli-1", "--credentials", work + "/bob", "--as", "bob"],
            environment: ["BULWARK_HUB": "https://127.0.0.1:\(ports.operator)"])
        #expect(asBob.status == 0, "\(asBob.stderr)")
        #expect(try await bulwark(["device", "list"]).stdout.contains("cli-1\trevoked"))
        #expect(try await bulwark(["events", "--limit", "5"]).stdout.contains("\"kind\":\"device-revoked\""))

        // A monitoring credential: curl with it reads /metrics and nothing else.
        let monitor = try await bulwark(["operator", "add", "prom", "--monitor", "--out", work + "/prom"])
        #expect(monitor.status == 0, "\(monitor.stderr)")
        #expect(monitor.stdout.contains("monitor prom"))
        func curl(_ path: String) async throws -> String {
            try await run(
                "/usr/bin/env",
                [
                    "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", work + "/prom/ca.crt", "--cert",
                    work + "/prom/prom.crt", "--key", work + "/prom/prom.key",
                    "https://localhost:\(ports.operator)\(path)",
                ]
            ).stdout
        }
        #expect(try await curl("/metrics") == "200")
        #expect(try await curl("/v1/devices") == "403")
        let serial = try #require(monitor.stdout.split(separator: " ").last).trimmingCharacters(
            in: .whitespacesAndNewlines)
        let revoked = try await bulwark(["operator", "revoke", serial])
        #expect(revoked.status == 0, "\(revoked.stderr)")
        #expect(revoked.stdout.contains("urn:bulwark:monitor:prom"))
        #expect(try await curl("/metrics") != "200", "a revoked monitor reads nothing")
        #expect(try await bulwark(["operator", "add", "x", "--monitor", "--application"]).status == 64)

        let unknown = try await bulwark(["device", "revoke", "nope"])
        #expect(unknown.status != 0)
        #expect(unknown.stderr.contains("404") && unknown.stderr.contains("correlation id"))
        let keyAsCSR = try await bulwark(["device", "enroll", "--id", "x", "--csr", work + "/d.key"])
        #expect(keyAsCSR.status == 65)
        #expect(keyAsCSR.stderr.contains("nothing was sent"))
        #expect(!keyAsCSR.stderr.contains("PRIVATE KEY"), "a key passed by mistake is never echoed")
        try "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n".write(
            toFile: work + "/bad.csr", atomically: true, encoding: .utf8)
        let badCSR = try await bulwark(["device", "enroll", "--id", "x", "--csr", work + "/bad.csr"])
        #expect(badCSR.status == 1)
        #expect(badCSR.stderr.contains("bad-csr"))
    }
}

extension CLITests {
    /// `bulwark demo`: a hub, paired agents, a misbehaving device refused then quarantined, a command, a release
    /// with one rollback, the dashboard's address with a PKCS#12 bundle that opens it; Ctrl-C (SIGINT) stops
    /// everything and removes the directory with the demo's keys.
    @Test func theDemoShowsTheWholeSystemAndCleansUp() async throws {
        let binary = try HubProcessTests.binary
        let work = try temporaryDirectory("demo")
        defer { try? FileManager.default.removeItem(atPath: work) }
        let logFile = work + "/demo.log"
        FileManager.default.createFile(atPath: logFile, contents: nil)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["demo", "--devices", "3", "--seconds", "600"]
        process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: logFile))
        process.standardError = FileHandle.nullDevice
        try process.runWithDefaultSignalMask()
        defer {
            // On a failed expectation: Ctrl-C first, so the demo still removes its keys; SIGKILL only if it hangs.
            if process.isRunning { kill(process.processIdentifier, SIGINT) }
            let end = Date().addingTimeInterval(30)
            while process.isRunning, Date() < end { usleep(100_000) }
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        }
        func output() -> String { (try? String(contentsOfFile: logFile, encoding: .utf8)) ?? "" }
        let deadline = ContinuousClock.now + .seconds(180)
        while !output().contains("Ctrl-C stops the demo"), process.isRunning, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(200))
        }
        let ready = output()
        let lines = ready.split(separator: "\n")
        let base = try #require(
            lines.first { $0.contains("Ctrl-C stops the demo") }?.split(separator: " ").last.map(String.init),
            "\(ready)")
        let port = try #require(
            lines.first { $0.contains("dashboard: https://localhost:") }?.split(separator: ":").last?
                .split(separator: "/").first.flatMap { Int($0) }, "\(ready)")
        // The bundle opens with the password the demo wrote, and the dashboard answers to the certificate in it.
        let password = try String(contentsOfFile: base + "/operator.p12.password", encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let curl = try #require(which("curl"))
        let page = try await run(
            curl,
            [
                "-s", "--max-time", "20", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", base + "/hub/ca.crt",
                "--cert-type", "P12", "--cert", base + "/operator.p12:" + password,
                "https://localhost:\(port)/ui",
            ], timeout: 30)
        #expect(page.stdout == "200", "\(page)")
        let without = try await run(
            curl,
            [
                "-s", "--max-time", "20", "-o", "/dev/null", "--cacert", base + "/hub/ca.crt",
                "https://localhost:\(port)/ui",
            ],
            timeout: 30)
        #expect(without.status != 0, "no certificate, no dashboard")
        // Ctrl-C: the one way out stops the agents and the hub and removes the directory.
        kill(process.processIdentifier, SIGINT)
        let stopBy = ContinuousClock.now + .seconds(60)
        while process.isRunning, ContinuousClock.now < stopBy { try await Task.sleep(for: .milliseconds(100)) }
        #expect(!process.isRunning, "the demo did not stop on SIGINT")
        if !process.isRunning { #expect(process.terminationStatus == 0) }
        let out = output()
        for expected in [
            "paired 3 devices", "3 agents connected", "refused 429", "then 401", "a 70 KB message: 413",
            "quarantined: every request now 403", "demo-01 ran the command \"blink\"", "operator.p12",
            "2 of 3 devices verified it through TUF", "demo-02: rolled back sensor-app-1.0.tar", "stopping",
            "stopped; \(base) removed",
        ] {
            #expect(out.contains(expected), "missing \(expected) in \(out)")
        }
        #expect(!FileManager.default.fileExists(atPath: base), "\(base) was left behind")
    }
}
