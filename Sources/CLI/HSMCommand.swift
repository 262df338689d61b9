import ArgumentParser
import Crypto
import Foundation
import PKCS11

/// `bulwark hsm`: keys on a PKCS#11 token (an HSM, or SoftHSM2), for TUF roles, the hub's online keys and its CA.
struct HSMCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hsm",
        abstract: "Make and list signing keys on a PKCS#11 token.",
        discussion: """
            Keys are named by PKCS#11 URIs (RFC 7512), e.g.
            pkcs11:token=release;object=targets-1?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/pin
            The PIN comes from pin-source (a file only its owner can read) or BULWARK_PKCS11_PIN; a pin-value in
            the URI is refused. The module is module-path, or BULWARK_PKCS11_MODULE.
            """,
        subcommands: [Keygen.self, List.self])

    /// Exit codes by cause (sysexits): usage 64, object 65, module or token unavailable 69, operation 70, login 77.
    static func fail(_ error: PKCS11Error) -> any Error {
        let code: Int32
        switch error.code {
        case .usage: code = 64
        case .object: code = 65
        case .module, .token: code = 69
        case .operation: code = 70
        case .login: code = 77
        }
        return CleanExit.message("bulwark: \(error)", code: code)
    }

    struct Keygen: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make an ECDSA key pair on the token: the private key sensitive and never extractable.")
        @Argument(help: "The key's URI: token=LABEL;object=NAME (the new key's label), module-path, pin-source.")
        var uri: String
        @Option(help: "p256 or p384 (default p256).") var curve = "p256"

        func run() async throws {
            guard let curve = PKCS11Curve(rawValue: curve) else { throw ValidationError("--curve is p256 or p384") }
            do {
                let parsed = try PKCS11URI(uri)
                let key = try PKCS11PrivateKey.generate(parsed, curve: curve)
                let attributes = try key.attributes()
                let pem =
                    curve == .p256
                    ? try P256.Signing.PublicKey(x963Representation: key.publicKeyX963).pemRepresentation
                    : try P384.Signing.PublicKey(x963Representation: key.publicKeyX963).pemRepresentation
                print(
                    "made \(curve == .p256 ? "P-256" : "P-384") key '\(parsed.object ?? "")' on token \(parsed.token ?? "-")"
                        + " (sensitive: \(attributes.sensitive), extractable: \(attributes.extractable))")
                print("uri \(parsed)")
                print(pem)
            } catch let error as PKCS11Error {
                throw HSMCommand.fail(error)
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List the tokens of a module and the public keys on them (no PIN needed), with their URIs.")
        @Option(help: "The PKCS#11 module (default: BULWARK_PKCS11_MODULE).") var module: String?

        func run() async throws {
            guard let path = module ?? ProcessInfo.processInfo.environment["BULWARK_PKCS11_MODULE"] else {
                throw ValidationError("give --module PATH or set BULWARK_PKCS11_MODULE")
            }
            let tokens: [PKCS11Inventory.Token]
            do { tokens = try PKCS11Inventory.list(modulePath: path) } catch { throw HSMCommand.fail(error) }
            do {
                if tokens.isEmpty { print("no initialised token in \(path)") }
                for token in tokens {
                    let info = token.info
                    print(
                        "token \(info.label)  slot \(info.slot)  \(info.manufacturer) \(info.model)  serial \(info.serial)"
                    )
                    for key in token.keys {
                        var uri = PKCS11URI()
                        uri.token = info.label
                        uri.object = key.label
                        uri.modulePath = path
                        let curve = key.curve.map { $0 == .p256 ? "P-256" : "P-384" } ?? "other"
                        let id = key.id.map { String(format: "%02x", $0) }.joined()
                        print("  key \(key.label)  \(curve)  id \(id)  \(uri)")
                    }
                }
            }
        }
    }
}
