import Core
import Crypto
import Foundation
import Hub
import HubClient
import Logging
import NIOSSL
import PKI
import PostgresTestSupport
import Store
import Synchronization
import X509

/// A hub running in this process on ephemeral loopback ports, with a fresh data directory.
final class TestHub: Sendable {
    let server: HubServer
    let directory: String
    let devicePort: Int
    let operatorPort: Int
    let pairingPort: Int
    let mqttPort: Int
    /// The plain CRL listener's port, when `pki.crlAddress` is set.
    let crlPort: Int?
    private let runTask: Task<Void, any Error>

    static func start(
        directory: String? = nil, maxBodyBytes: Int = 64 * 1024, store: (any HubStore)? = nil,
        configure: (inout HubConfiguration) -> Void = { _ in }
    ) async throws -> TestHub {
        let directory = try directory ?? temporaryDirectory("hub")
        var configuration = HubConfiguration(dataDirectory: directory)
        configuration.device.port = 0
        configuration.operatorAPI.port = 0
        configuration.pairing.port = 0
        configuration.mqtt.port = 0
        configuration.maxBodyBytes = maxBodyBytes
        // The phase deadlines are a defence against held connections, tested where a test sets them. Elsewhere they
        // are generous: a whole suite in one process on two loaded cores can take seconds to finish a handshake, and
        // a cut connection there fails a test about something else.
        configuration.httpLimits.handshakeSeconds = 30
        configuration.httpLimits.headerSeconds = 30
        configuration.pairingSettings.helloSeconds = 30
        configuration.mqttSettings.connectDeadlineSeconds = 30
        configure(&configuration)
        let server = try await HubServer.make(
            configuration: configuration, store: store,
            logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }),
            gracefulShutdownSignals: [])
        let task = Task { try await server.run() }
        let ports = await server.listeningPorts()
        return TestHub(server: server, directory: directory, ports: ports, task: task)
    }

    private init(server: HubServer, directory: String, ports: HubPorts, task: Task<Void, any Error>) {
        self.server = server
        self.directory = directory
        self.devicePort = ports.device
        self.operatorPort = ports.operator
        self.pairingPort = ports.pairing
        self.mqttPort = ports.mqtt
        self.crlPort = ports.crl
        self.runTask = task
    }

    func stop(keepData: Bool = false) async throws {
        await server.shutdown()
        try await runTask.value
        if !keepData { try? FileManager.default.removeItem(atPath: directory) }
    }

    var caPEM: [UInt8] { Array(server.credentials.authority.certificate.pem.utf8) }

    var operatorCredentials: ClientCredentials {
        get throws {
            try ClientCredentials(
                certificateFile: directory + "/operators/admin.crt", keyFile: directory + "/operators/admin.key",
                caFile: directory + "/ca.crt")
        }
    }

    /// The bootstrap operator's credential as a client identity (MQTT fleet reader, real clients' files).
    func operatorClient() throws -> TestDevice {
        try TestDevice(
            id: "admin", keyPEM: String(contentsOfFile: directory + "/operators/admin.key", encoding: .utf8),
            certificatePEM: String(contentsOfFile: directory + "/operators/admin.crt", encoding: .utf8),
            caPEM: caPEM, directory: directory)
    }

    func operatorRequest(
        _ method: String, _ path: String, json: [String: Any]? = nil, raw: [UInt8]? = nil
    ) async throws -> HTTPResult {
        let body = try raw ?? json.map { [UInt8](try JSONSerialization.data(withJSONObject: $0)) } ?? []
        return try await HTTPSClient.request(
            host: "127.0.0.1", port: operatorPort, tls: try operatorCredentials.tlsConfiguration(), method: method,
            path: path, headers: [("Content-Type", "application/json")], body: body)
    }

    /// Enrolls a device through the operator API, as `bulwark device enroll` does, and writes its key and
    /// certificate into the data directory for real clients (curl, openssl).
    func enroll(_ id: String) async throws -> TestDevice {
        let key = P256.Signing.PrivateKey()
        let csr = try CertificateSigningRequest(
            version: .v1, subject: try DistinguishedName { CommonName(id) }, privateKey: Certificate.PrivateKey(key),
            attributes: CertificateSigningRequest.Attributes(), signatureAlgorithm: .ecdsaWithSHA256)
        let result = try await operatorRequest(
            "POST", "/v1/devices", json: ["id": id, "csr": try csr.serializeAsPEM().pemString])
        guard result.status == 201,
            let object = try JSONSerialization.jsonObject(with: Data(result.body)) as? [String: Any],
            let pem = object["certificate"] as? String
        else { throw ClientError("enroll \(id) failed: \(result.status) \(result.bodyText)") }
        return try TestDevice(
            id: id, keyPEM: key.pemRepresentation, certificatePEM: pem, caPEM: caPEM, directory: directory)
    }

    /// A certificate signed by the hub CA with whatever validity and identity a test needs (not recorded).
    func issue(_ identity: Identity, now: Date, days: Int) throws -> TestDevice {
        try issue(identity, now: now, lifetime: Double(days) * 86400)
    }

    /// As `issue(_:now:days:)`, for a lifetime in seconds.
    func issue(_ identity: Identity, now: Date, lifetime: TimeInterval) throws -> TestDevice {
        let key = P256.Signing.PrivateKey()
        let csr = try CertificateSigningRequest(
            version: .v1, subject: try DistinguishedName { CommonName("x") }, privateKey: Certificate.PrivateKey(key),
            attributes: CertificateSigningRequest.Attributes(), signatureAlgorithm: .ecdsaWithSHA256)
        let certificate = try server.credentials.authority.issueClientCertificate(
            for: identity, csr: csr, now: now, lifetime: lifetime)
        return try TestDevice(
            id: "issued-\(UUID().uuidString.prefix(8))", keyPEM: key.pemRepresentation, certificatePEM: certificate.pem,
            caPEM: caPEM, directory: directory)
    }

    func securityEvents() async throws -> [SecurityEvent] { try await server.store.securityEvents(limit: 1000) }
}

/// A client identity with its files on disk.
struct TestDevice: Sendable {
    let id: String
    let credentials: ClientCredentials
    let keyFile: String
    let certificateFile: String
    let caFile: String

    init(id: String, keyPEM: String, certificatePEM: String, caPEM: [UInt8], directory: String) throws {
        self.id = id
        credentials = ClientCredentials(
            certificatePEM: Array(certificatePEM.utf8), keyPEM: Array(keyPEM.utf8), caPEM: caPEM)
        keyFile = "\(directory)/\(id)-client.key"
        certificateFile = "\(directory)/\(id)-client.crt"
        caFile = "\(directory)/ca.crt"
        try? FileManager.default.removeItem(atPath: keyFile)
        try SecretFiles.create(keyFile, contents: keyPEM)
        try certificatePEM.write(toFile: certificateFile, atomically: true, encoding: .utf8)
    }

    /// A self-contained CA that is not the hub's, and a device certificate from it that claims `id`.
    static func foreign(id: String, directory: String) throws -> TestDevice {
        let ca = try CertificateAuthority.create(commonName: "Bulwark hub CA", now: Date())
        let key = P256.Signing.PrivateKey()
        let csr = try CertificateSigningRequest(
            version: .v1, subject: try DistinguishedName { CommonName(id) }, privateKey: Certificate.PrivateKey(key),
            attributes: CertificateSigningRequest.Attributes(), signatureAlgorithm: .ecdsaWithSHA256)
        let certificate = try ca.issueClientCertificate(
            for: .device(try DeviceID(id)), csr: csr, now: Date(), days: 30)
        let hubCA = try Array(String(contentsOfFile: directory + "/ca.crt", encoding: .utf8).utf8)
        return try TestDevice(
            id: "foreign-\(id)", keyPEM: key.pemRepresentation, certificatePEM: certificate.pem, caPEM: hubCA,
            directory: directory)
    }

    func request(
        port: Int, _ method: String, _ path: String, body: [UInt8] = [],
        headers: [(String, String)] = [("Content-Type", "application/json")], tls: TLSConfiguration? = nil,
        signed: Bool = true
    ) async throws -> HTTPResult {
        try await HTTPSClient.request(
            host: "127.0.0.1", port: port, tls: try tls ?? credentials.tlsConfiguration(), method: method, path: path,
            headers: headers, body: body, signer: signed ? try credentials.signer() : nil)
    }

    /// Signature header lines for one request (fresh nonce), for curl `-H @file` and raw `openssl s_client`.
    func signatureHeaderLines(method: String = "GET", path: String = "/v1/device", body: [UInt8] = []) throws
        -> [String]
    {
        try credentials.signer().sign(
            method: method, path: path, body: body, created: Int64(Date().timeIntervalSince1970)
        ).map { "\($0.name): \($0.value)" }
    }
}

/// A fresh directory in the temp dir, removed when the test process exits.
func temporaryDirectory(_ name: String) throws -> String { try TemporaryDirectories.make(name) }

func jsonObject(_ result: HTTPResult) -> [String: Any] {
    (try? JSONSerialization.jsonObject(with: Data(result.body))) as? [String: Any] ?? [:]
}

/// Runs a program to completion (bounded by `timeout`) and returns its exit status and output.
///
/// The waiting happens on a dispatch thread, never on Swift's cooperative pool: with two cores the pool has two
/// threads, and a test blocking one while the in-process hub needs the other would deadlock.
@discardableResult
func run(
    _ executable: String, _ arguments: [String], stdin: String? = nil, environment: [String: String]? = nil,
    timeout: TimeInterval = 30
) async throws -> (status: Int32, stdout: String, stderr: String) {
    try await withCheckedThrowingContinuation { continuation in
        DispatchQueue.global().async {
            do {
                continuation.resume(
                    returning: try runBlocking(
                        executable, arguments, stdin: stdin, environment: environment, timeout: timeout))
            } catch {
                continuation.resume(throwing: error)
            }
        }
    }
}

private func runBlocking(
    _ executable: String, _ arguments: [String], stdin: String?, environment: [String: String]?,
    timeout: TimeInterval
) throws -> (status: Int32, stdout: String, stderr: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    if let environment {
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
    }
    let out = Pipe()
    let err = Pipe()
    let input = Pipe()
    process.standardOutput = out
    process.standardError = err
    process.standardInput = input
    // Only this child gets these pipes (as its 0-2): a program another test starts meanwhile must not inherit a
    // write end and keep this reader from ever seeing the end of the output.
    for end in [
        out.fileHandleForReading, out.fileHandleForWriting, err.fileHandleForReading, err.fileHandleForWriting,
        input.fileHandleForReading, input.fileHandleForWriting,
    ] {
        _ = fcntl(end.fileDescriptor, F_SETFD, FD_CLOEXEC)
    }
    try process.run()
    if let stdin { input.fileHandleForWriting.write(Data(stdin.utf8)) }
    try? input.fileHandleForWriting.close()
    let killer = DispatchWorkItem { if process.isRunning { process.terminate() } }
    DispatchQueue.global().asyncAfter(deadline: .now() + timeout, execute: killer)
    // Read both pipes concurrently so a full stderr pipe cannot block the child.
    let stderrData = Mutex(Data())
    let group = DispatchGroup()
    group.enter()
    DispatchQueue.global().async {
        let data = err.fileHandleForReading.readDataToEndOfFile()
        stderrData.withLock { $0 = data }
        group.leave()
    }
    let stdout = out.fileHandleForReading.readDataToEndOfFile()
    group.wait()
    process.waitUntilExit()
    killer.cancel()
    return (
        process.terminationStatus, String(decoding: stdout, as: UTF8.self),
        stderrData.withLock { String(decoding: $0, as: UTF8.self) }
    )
}

/// The path of a program on PATH, or nil.
func which(_ name: String) -> String? {
    for directory in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
        let path = "\(directory)/\(name)"
        if FileManager.default.isExecutableFile(atPath: path) { return path }
    }
    return nil
}
