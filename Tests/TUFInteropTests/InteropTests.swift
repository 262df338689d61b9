import Foundation
import TUF
import TUFClient
import TUFClientNIO
import TUFCommands
import TUFRepository
import Testing

/// Interoperability with python-tuf (PyPI `tuf`, tested with 7.0.1), both directions, over
/// loopback HTTP served by `python3 -m http.server --bind 127.0.0.1`.
///
/// Needs `python3` with `tuf` installed (`python3 -m pip install tuf`). When it is missing the
/// tests record an issue (they fail) rather than pass silently.
@Suite(.serialized) struct InteropTests {
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().path
    static let scripts = packageRoot + "/scripts/tuf"

    /// python-tuf's version, or `nil` after recording why python-tuf cannot be used.
    static func pythonTUF() -> String? {
        let r = Proc.run("/usr/bin/env", ["python3", "-c", "import tuf, securesystemslib; print(tuf.__version__)"])
        guard r.status == 0 else {
            Issue.record("python3 with python-tuf is not available (python3 -m pip install tuf): \(r.stderr)")
            return nil
        }
        return r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    @Test func ourUpdaterReadsARepositoryMadeByPythonTUF() async throws {
        guard Self.pythonTUF() != nil else { return }
        let repo = Proc.tempDirectory("pyrepo")
        let made = Proc.run("/usr/bin/env", ["python3", Self.scripts + "/make_python_repo.py", repo])
        try #require(made.status == 0, "make_python_repo.py failed: \(made.stderr)")
        let server = try HTTPServer(directory: repo)
        defer { server.stop() }

        let client = Proc.tempDirectory("ourclient")
        let root = try #require(FileManager.default.contents(atPath: repo + "/metadata/1.root.json"))
        try DirectoryStore(directory: client).store("root.json", Array(root))
        try FileManager.default.createDirectory(atPath: client + "/artifacts", withIntermediateDirectories: true)
        let now = Timestamp8601(secondsSinceEpoch: ExpiryDate.now())
        let updater = try Updater(
            metadataBaseURL: server.url + "/metadata/",
            metadataStore: DirectoryStore(directory: client),
            fetcher: HTTPFetcher(),
            targetBaseURL: server.url + "/targets/",
            artifactStore: DirectoryStore(directory: client + "/artifacts"),
            referenceTime: now
        )
        try await updater.refresh()
        // Root (ed25519 + ecdsa, threshold 2), timestamp ecdsa, snapshot rsa-pss, targets ed25519.
        let keytypes = await Set(updater.trustedSet.root.signed.keys.values.map(\.keytype))
        #expect(keytypes == ["ed25519", "ecdsa", "rsa"])
        // "delegated" is signed by ecdsa + rsa (threshold 2); "nested" (ed25519) below it.
        let file = try #require(try await updater.targetInfo(for: "delegated/file.txt"))
        #expect(try await updater.downloadTarget(file) == Array("delegated target from python-tuf\n".utf8))
        let deep = try #require(try await updater.targetInfo(for: "delegated/deep/nested.bin"))
        #expect(try await updater.downloadTarget(deep) == Array((0..<1024).map { UInt8($0 % 256) }))
        #expect(await updater.trustedSet.targetsRole("nested") != nil)
        let top = try #require(try await updater.targetInfo(for: "top.txt"))
        #expect(try await updater.downloadTarget(top).count == 33)
    }

    @Test func pythonNgclientReadsARepositoryMadeByOurCLIAndEditor() async throws {
        guard Self.pythonTUF() != nil else { return }
        let base = Proc.tempDirectory("ourrepo")
        let repo = base + "/repo"
        let keys = base + "/keys"
        let artifact = base + "/hello.txt"
        let binned = base + "/firmware.bin"
        try Data("hello from bulwark\n".utf8).write(to: URL(fileURLWithPath: artifact))
        try Data((0..<3000).map { UInt8($0 % 251) }).write(to: URL(fileURLWithPath: binned))

        // The CLI, in process: ECDSA P-256 keys, 2-of-3 root, succinct bins with an ed25519 key.
        try await cli(["init", "--repo", repo, "--keys", keys])
        try await cli(["add-target", "--repo", repo, "--role", "targets", artifact])
        try await cli([
            "delegate", "--repo", repo, "--keys", keys, "--role", "bin", "--succinct-bits", "3", "--key-type",
            "ed25519",
        ])
        try await cli(["add-target", "--repo", repo, "--name", "fw/firmware.bin", "--sha512", binned])
        try await cli(["publish", "--repo", repo, "--keys", keys])
        // Root rotation through the CLI: an RSA key replaces root-1 (root v2, signed by old and new).
        let old = try KeyDirectory(path: keys).load(name: "root-1").keyid
        try await cli([
            "rotate-key", "--repo", repo, "--keys", keys, "--role", "root", "--add", "root-4", "--key-type", "rsa",
            "--remove", old,
        ])
        try await cli([
            "rotate-key", "--repo", repo, "--keys", keys, "--role", "timestamp", "--add", "timestamp-2", "--remove",
            try KeyDirectory(path: keys).load(name: "timestamp").keyid,
        ])
        try await cli(["publish", "--repo", repo, "--keys", keys])
        #expect(FileManager.default.fileExists(atPath: repo + "/metadata/2.root.json"))

        let server = try HTTPServer(directory: repo)
        defer { server.stop() }
        let client = Proc.tempDirectory("pyclient")
        for (target, length) in [("fw/firmware.bin", 3000), ("hello.txt", 19)] {
            let r = Proc.run(
                "/usr/bin/env",
                [
                    "python3", Self.scripts + "/ngclient_fetch.py", server.url + "/metadata/", server.url + "/targets/",
                    client, target, "--init", repo + "/metadata/1.root.json",
                ]
            )
            #expect(r.status == 0, "ngclient failed for \(target): \(r.stderr)")
            #expect(r.stdout.contains("\"length\": \(length)"), "\(r.stdout)")
        }
        // python-tuf walked the root chain to version 2.
        let trusted = try #require(FileManager.default.contents(atPath: client + "/metadata/root.json"))
        let md = try Metadata<Root>.parse(Array(trusted))
        #expect(md.signed.common.version == 2)
    }

    @Test func cliErrorsAreShortWithExitStatus1() throws {
        // `bulwark tuf …` (scripts/test names the binary in BULWARK_BIN).
        let binary =
            ProcessInfo.processInfo.environment["BULWARK_BIN"] ?? (Self.packageRoot + "/.build/debug/bulwark")
        guard FileManager.default.isExecutableFile(atPath: binary) else {
            Issue.record("\(binary) is not built (swift build)")
            return
        }
        let r = Proc.run(
            binary, ["tuf", "publish", "--repo", Proc.tempDirectory("none") + "/missing", "--keys", "/tmp/k"])
        #expect(r.status == 1)
        #expect(r.stderr.hasPrefix("error: "))
        #expect(r.stderr.split(separator: "\n").count == 1)
        let usage = Proc.run(binary, ["tuf", "delegate", "--repo", "/tmp/x", "--keys", "/tmp/k", "--role", "r"])
        #expect(usage.status == 1)
    }

    /// Every top-level role signed on a PKCS#11 token (SoftHSM2; targets on P-384), through `bulwark hsm keygen` and
    /// `bulwark tuf … --key ROLE=pkcs11:…`: python-tuf's ngclient verifies the signatures and downloads a target.
    @Test func pythonNgclientVerifiesMetadataSignedOnAToken() async throws {
        guard Self.pythonTUF() != nil else { return }
        let binary =
            ProcessInfo.processInfo.environment["BULWARK_BIN"] ?? (Self.packageRoot + "/.build/debug/bulwark")
        let base = Proc.tempDirectory("hsmrepo")
        defer { try? FileManager.default.removeItem(atPath: base) }
        try FileManager.default.createDirectory(atPath: base + "/tokens", withIntermediateDirectories: true)
        try "directories.tokendir = \(base)/tokens\nobjectstore.backend = file\n".write(
            toFile: base + "/softhsm2.conf", atomically: true, encoding: .utf8)
        let environment = ["SOFTHSM2_CONF": base + "/softhsm2.conf"]
        let made = Proc.run(
            "/usr/bin/softhsm2-util",
            ["--init-token", "--free", "--label", "release", "--pin", "1234", "--so-pin", "5678"],
            environment: environment)
        try #require(made.status == 0, "softhsm2-util (scripts/install-deps installs softhsm2): \(made.stderr)")
        let pin = base + "/pin"
        FileManager.default.createFile(
            atPath: pin, contents: Data("1234\n".utf8), attributes: [.posixPermissions: 0o600])
        func uri(_ object: String) -> String {
            "pkcs11:token=release;object=\(object)?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:\(pin)"
        }
        for (object, curve) in [
            ("root-1", "p256"), ("targets-1", "p384"), ("snapshot-1", "p256"), ("timestamp-1", "p256"),
        ] {
            let r = Proc.run(binary, ["hsm", "keygen", uri(object), "--curve", curve], environment: environment)
            #expect(r.status == 0, "\(r.stderr)")
            #expect(r.stdout.contains("extractable: false"))
        }
        let repo = base + "/repo"
        let keys = base + "/keys"
        let artifact = base + "/firmware.bin"
        try Data((0..<5000).map { UInt8($0 % 253) }).write(to: URL(fileURLWithPath: artifact))
        let steps: [[String]] = [
            [
                "tuf", "init", "--repo", repo, "--keys", keys, "--root-keys", "1", "--root-threshold", "1", "--key",
                "root-1=" + uri("root-1"), "--key", "targets=" + uri("targets-1"), "--key",
                "snapshot=" + uri("snapshot-1"), "--key", "timestamp=" + uri("timestamp-1"),
            ],
            ["tuf", "add-target", "--repo", repo, "--name", "fw/firmware.bin", artifact],
            ["tuf", "publish", "--repo", repo, "--keys", keys],
        ]
        for step in steps {
            let r = Proc.run(binary, step, environment: environment)
            try #require(r.status == 0, "\(step[1]): \(r.stderr)")
        }
        // Only references to the token's keys are on disk; no private key file anywhere.
        let entries = try FileManager.default.contentsOfDirectory(atPath: keys).sorted()
        #expect(entries == ["root-1.uri", "snapshot-1.uri", "targets-1.uri", "timestamp-1.uri"])
        let root = try String(contentsOfFile: repo + "/metadata/1.root.json", encoding: .utf8)
        #expect(root.contains("ecdsa-sha2-nistp384") && root.contains("ecdsa-sha2-nistp256"))

        let server = try HTTPServer(directory: repo)
        defer { server.stop() }
        let client = Proc.tempDirectory("pyhsmclient")
        let r = Proc.run(
            "/usr/bin/env",
            [
                "python3", Self.scripts + "/ngclient_fetch.py", server.url + "/metadata/", server.url + "/targets/",
                client, "fw/firmware.bin", "--init", repo + "/metadata/1.root.json",
            ])
        #expect(r.status == 0, "python-tuf refused the token-signed metadata: \(r.stderr)")
        #expect(r.stdout.contains("\"length\": 5000"), "\(r.stdout)")

        // A wrong PIN at signing time: one line, the PIN not echoed, nothing published.
        try "4444\n".write(toFile: pin, atomically: true, encoding: .utf8)
        chmod(pin, 0o600)
        _ = Proc.run(binary, ["tuf", "add-target", "--repo", repo, "--name", "fw/other.bin", artifact])
        let refused = Proc.run(binary, ["tuf", "publish", "--repo", repo, "--keys", keys], environment: environment)
        #expect(refused.status == 1)
        #expect(refused.stderr.contains("PIN") && !refused.stderr.contains("4444"), "\(refused.stderr)")
        #expect(refused.stderr.split(separator: "\n").count == 1)
        #expect(!FileManager.default.fileExists(atPath: repo + "/metadata/3.targets.json"))
        #expect(FileManager.default.fileExists(atPath: repo + "/metadata/2.targets.json"))
    }

    func cli(_ args: [String]) async throws { try await TUFCommand.invoke(args) }
}

/// A child process run to completion.
enum Proc {
    struct Result {
        let status: Int32
        let stdout: String
        let stderr: String
    }

    static func run(_ executable: String, _ args: [String], environment: [String: String] = [:]) -> Result {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable)
        p.arguments = args
        if !environment.isEmpty {
            p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        let out = Pipe()
        let err = Pipe()
        p.standardOutput = out
        p.standardError = err
        do {
            try p.run()
        } catch {
            return Result(status: -1, stdout: "", stderr: "cannot start \(executable)")
        }
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return Result(
            status: p.terminationStatus,
            stdout: String(decoding: o, as: UTF8.self),
            stderr: String(decoding: e, as: UTF8.self)
        )
    }

    static func tempDirectory(_ prefix: String) -> String {
        let path = NSTemporaryDirectory() + "/\(prefix)-\(UInt64.random(in: 0..<UInt64.max))"
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }
}

/// `python3 -u -m http.server 0 --bind 127.0.0.1 --directory DIR`, stopped by its pid.
final class HTTPServer {
    let process = Process()
    let url: String

    struct StartFailed: Error {}

    init(directory: String) throws {
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [
            "python3", "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", directory,
        ]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        // "Serving HTTP on 127.0.0.1 port 40123 (http://127.0.0.1:40123/) ..."
        var text = ""
        while !text.contains(") ...") {
            let chunk = out.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            text += String(decoding: chunk, as: UTF8.self)
        }
        guard let range = text.range(of: "port "),
            let port = Int(text[range.upperBound...].prefix { $0.isNumber })
        else {
            process.terminate()
            throw StartFailed()
        }
        url = "http://127.0.0.1:\(port)"
    }

    /// SIGKILL by pid: a child spawned by the test runner may inherit a blocked SIGTERM.
    func stop() {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }
}
