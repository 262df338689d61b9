import ArgumentParser
import Crypto
import Foundation
import Hub
import X509

struct OperatorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "operator", abstract: "Manage operator, application and monitor credentials.",
        subcommands: [Add.self, Revoke.self])

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Revoke an operator, application or monitor certificate by its serial (at once, and in the CRL).")
        @OptionGroup var connection: OperatorConnection
        @Argument(help: "The certificate's serial (hex), as `operator add` printed it.") var serial: String

        func run() async throws {
            let (_, object) = try await connection.request(
                method: "POST", path: "/v1/certificates/\(serial)/revoke", json: [:])
            let identity = (object as? [String: Any])?["identity"] as? String ?? "?"
            print("revoked \(serial) (\(identity))")
        }
    }

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Issue another operator credential. The key is made here and never sent to the hub.")
        @OptionGroup var connection: OperatorConnection
        @Argument(help: "Name of the new operator.") var name: String
        @Option(help: "Directory for <name>.key (0600), <name>.crt and ca.crt.") var out: String?
        @Flag(help: "An application credential instead: reads the fleet and sends commands over MQTT, no operator API.")
        var application = false
        @Flag(help: "A monitoring credential instead (Prometheus): reads GET /metrics on the operator listener only.")
        var monitor = false

        func validate() throws {
            if application && monitor { throw ValidationError("--application and --monitor exclude each other") }
        }

        func run() async throws {
            let directory = out ?? "./\(name)-credentials"
            let key = P256.Signing.PrivateKey()
            let csr = try CertificateSigningRequest(
                version: .v1, subject: try DistinguishedName { CommonName(name) },
                privateKey: Certificate.PrivateKey(key), attributes: CertificateSigningRequest.Attributes(),
                signatureAlgorithm: .ecdsaWithSHA256)
            let (_, object) = try await connection.request(
                method: "POST", path: application ? "/v1/applications" : monitor ? "/v1/monitors" : "/v1/operators",
                json: ["name": name, "csr": try csr.serializeAsPEM().pemString])
            let serial = (object as? [String: Any])?["serial"] as? String ?? "?"
            guard let pem = (object as? [String: Any])?["certificate"] as? String else {
                throw CleanExit.message("bulwark: the hub's answer has no certificate", code: 1)
            }
            do {
                try SecretFiles.makePrivateDirectory(directory)
                try SecretFiles.create("\(directory)/\(name).key", contents: key.pemRepresentation)
                try SecretFiles.writePublic("\(directory)/\(name).crt", contents: pem)
                let environment = ProcessInfo.processInfo.environment
                let caPath =
                    connection.cacert ?? environment["BULWARK_CACERT"]
                    ?? "\(connection.credentials ?? environment["BULWARK_CREDENTIALS"] ?? "./bulwark-data/operators")/ca.crt"
                if let ca = try? String(contentsOfFile: caPath, encoding: .utf8) {
                    try SecretFiles.writePublic("\(directory)/ca.crt", contents: ca)
                }
            } catch let error as HubStartupError {
                throw CleanExit.message("bulwark: \(error)", code: 73)
            }
            print(
                application
                    ? "application \(name): credentials in \(directory) (MQTT only), serial \(serial)"
                    : monitor
                        ? "monitor \(name): credentials in \(directory) (GET /metrics on the operator listener only), "
                            + "serial \(serial)"
                        : "operator \(name): credentials in \(directory) (use --credentials \(directory) --as \(name)), "
                            + "serial \(serial)")
        }
    }
}
