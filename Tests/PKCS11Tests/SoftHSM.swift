import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Throwaway SoftHSM2 tokens for the tests (Debian `softhsm2`, installed by scripts/install-deps): a token directory
/// and `softhsm2.conf` under a temp dir. SoftHSM reads `SOFTHSM2_CONF` and its token directory once per process, at
/// `C_Initialize`, and does not see tokens made later by softhsm2-util; so the tests of this process take their
/// tokens (each its own label, PIN and keys) from a pool made before the first load, and a child process gets a
/// directory of its own (`isolated`, `environment`).
struct SoftHSM: Sendable {
    static let module = "/usr/lib/softhsm/libsofthsm2.so"
    static var available: Bool { FileManager.default.fileExists(atPath: module) && util != nil }
    static var util: String? {
        ["/usr/bin/softhsm2-util", "/usr/local/bin/softhsm2-util"].first {
            FileManager.default.isExecutableFile(atPath: $0)
        }
    }

    let directory: String
    let label: String
    let pin: String

    var conf: String { directory + "/softhsm2.conf" }
    var environment: [String: String] { ["SOFTHSM2_CONF": conf] }

    /// This process's SoftHSM directory, made (and put in SOFTHSM2_CONF) at first use.
    static let processDirectory: String = {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("bulwark-softhsm-\(UUID())").path
        try? makeDirectory(directory)
        setenv("SOFTHSM2_CONF", directory + "/softhsm2.conf", 1)
        return directory
    }()

    static func makeDirectory(_ directory: String) throws {
        try FileManager.default.createDirectory(atPath: directory + "/tokens", withIntermediateDirectories: true)
        try "directories.tokendir = \(directory)/tokens\nobjectstore.backend = file\nlog.level = ERROR\n".write(
            toFile: directory + "/softhsm2.conf", atomically: true, encoding: .utf8)
    }

    /// The tokens of this process's tests, by label, with their PINs.
    static let poolLabels: [String: String] = [
        "p256": "1234", "p384": "1234", "errors": "4321", "errors-wrong": "2468", "errors-open": "4321",
        "unplug": "1234",
    ]
    static let pool: Result<[String: SoftHSM], SoftHSMError> = {
        var tokens: [String: SoftHSM] = [:]
        for (label, pin) in poolLabels {
            let token = SoftHSM(directory: processDirectory, label: label, pin: pin)
            do { try token.initialize() } catch { return .failure(SoftHSMError("\(error)")) }
            tokens[label] = token
        }
        return .success(tokens)
    }()

    /// This process's token `label` (one of `poolLabels`).
    static func token(_ label: String) throws -> SoftHSM {
        guard let token = try pool.get()[label] else { throw SoftHSMError("no pool token \(label)") }
        return token
    }

    /// A new token in a directory of its own, for a child process.
    static func isolated(_ label: String = "release", pin: String = "1234") throws -> SoftHSM {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("bulwark-softhsm-\(UUID())").path
        try makeDirectory(directory)
        let token = SoftHSM(directory: directory, label: label, pin: pin)
        try token.initialize()
        return token
    }

    func initialize() throws {
        guard let util = Self.util else { throw SoftHSMError("softhsm2-util is not installed") }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: util)
        process.arguments = ["--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", "5678"]
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw SoftHSMError("softhsm2-util --init-token failed") }
    }

    /// A PIN file (mode 0600) holding this token's PIN.
    func pinFile() throws -> String {
        let path = directory + "/pin-\(label)"
        if !FileManager.default.fileExists(atPath: path) {
            _ = FileManager.default.createFile(
                atPath: path, contents: Data((pin + "\n").utf8), attributes: [.posixPermissions: 0o600])
        }
        return path
    }

    /// `pkcs11:token=LABEL;object=NAME?module-path=…&pin-source=file:…`
    func uri(_ object: String, module: String = SoftHSM.module) throws -> String {
        "pkcs11:token=\(label);object=\(object)?module-path=\(module)&pin-source=file:\(try pinFile())"
    }

    func remove() { try? FileManager.default.removeItem(atPath: directory) }
}

struct SoftHSMError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
