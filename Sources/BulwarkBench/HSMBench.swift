import ArgumentParser
import Crypto
import Foundation
import PKCS11

#if canImport(Glibc)
    import Glibc
#endif

/// The HSM figure (issue: "p50/p99 of one ECDSA P-256 signature through SoftHSM vs a file key (1,000 each)"): the
/// same message signed through PKCS#11 `C_Sign` on a throwaway SoftHSM2 token and with an in-memory swift-crypto key.
struct HSMBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hsm", abstract: "ECDSA P-256 signature latency through SoftHSM2 (PKCS#11) vs a file key.")
    @Option(help: "Signatures per key.") var count = 1000
    @Option(help: "The PKCS#11 module.") var module = "/usr/lib/softhsm/libsofthsm2.so"

    func run() async throws {
        guard (10...100_000).contains(count) else { throw ValidationError("count 10-100000") }
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("bulwark-hsmbench-\(UUID())").path
        try FileManager.default.createDirectory(atPath: base + "/tokens", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: base) }
        try "directories.tokendir = \(base)/tokens\nobjectstore.backend = file\n".write(
            toFile: base + "/softhsm2.conf", atomically: true, encoding: .utf8)
        setenv("SOFTHSM2_CONF", base + "/softhsm2.conf", 1)
        let util = Process()
        util.executableURL = URL(fileURLWithPath: "/usr/bin/softhsm2-util")
        util.arguments = ["--init-token", "--free", "--label", "bench", "--pin", "1234", "--so-pin", "5678"]
        util.standardOutput = FileHandle.nullDevice
        try util.run()
        util.waitUntilExit()
        guard util.terminationStatus == 0 else { throw ValidationError("softhsm2-util --init-token failed") }
        _ = FileManager.default.createFile(
            atPath: base + "/pin", contents: Data("1234\n".utf8), attributes: [.posixPermissions: 0o600])
        let token = try PKCS11PrivateKey.generate(
            PKCS11URI("pkcs11:token=bench;object=k?module-path=\(module)&pin-source=file:\(base)/pin"), curve: .p256)
        let file = P256.Signing.PrivateKey()
        let message = Array(repeating: UInt8(ascii: "x"), count: 1024)  // about a timestamp.json's signed part

        func measure(_ body: () throws -> Void) rethrows -> (p50: Double, p99: Double, mean: Double) {
            for _ in 0..<min(50, count) { try body() }
            var samples: [Double] = []
            samples.reserveCapacity(count)
            let clock = ContinuousClock()
            for _ in 0..<count {
                let start = clock.now
                try body()
                let elapsed = clock.now - start
                samples.append(Double(elapsed.components.attoseconds) / 1e12 + Double(elapsed.components.seconds) * 1e6)
            }
            samples.sort()
            return (
                samples[samples.count / 2], samples[min(samples.count - 1, samples.count * 99 / 100)],
                samples.reduce(0, +) / Double(samples.count)
            )
        }
        let digest = Array(SHA256.hash(data: message))
        let raw = try measure { _ = try token.signDigest(digest) }
        let checked = try measure { _ = try token.signatureDER(for: message) }
        let inMemory = try measure { _ = try file.signature(for: message).derRepresentation }
        print("ECDSA P-256, \(count) signatures each, 1 KiB message (µs)")
        print("key                                           p50      p99     mean")
        for (name, result) in [
            ("SoftHSM2 C_Sign (digest in, raw r||s out)", raw),
            ("SoftHSM2 as Bulwark signs (hash, C_Sign, verify, DER)", checked),
            ("file key (swift-crypto, in memory)", inMemory),
        ] {
            print(
                name.padding(toLength: 56, withPad: " ", startingAt: 0)
                    + String(format: " %8.1f %8.1f %8.1f", result.p50, result.p99, result.mean))
        }
        print(String(format: "token / file at p50: %.1f×", checked.p50 / inMemory.p50))
    }
}
