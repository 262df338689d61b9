import ArgumentParser
import Core
import Foundation
import Hub
import TUF

/// `bulwark crypto report`: every algorithm a hub uses, per listener and role, and whether FIPS approves it.
struct CryptoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "crypto", abstract: "The algorithms in use.", subcommands: [Report.self])

    struct Report: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print, per listener and role, every algorithm the hub uses and whether it is FIPS-approved.",
            discussion: """
                Reads the hub's configuration (--config, BULWARK_* variables) and data directory as `serve` does.
                crypto.profile fips allows FIPS-approved algorithms only; this is a profile of approved algorithms
                (BoringSSL and swift-crypto as SwiftPM builds them), not a FIPS 140-3 validated module. Exit 1 when
                the profile is fips and anything listed is not approved.
                """)
        @Option(help: "Data directory.") var data: String?
        @Option(help: "JSON configuration file.") var config: String?

        struct Line {
            let place: String
            let algorithm: String
            let approved: Bool
        }

        func run() async throws {
            let configuration: HubConfiguration
            do { configuration = try await HubConfiguration.load(dataDirectory: data, configFile: config) } catch {
                throw CleanExit.message("bulwark: \(error)", code: 78)
            }
            let profile = configuration.cryptoProfile
            var lines: [Line] = []
            func add(_ place: String, _ algorithm: String, _ approved: Bool) {
                lines.append(Line(place: place, algorithm: algorithm, approved: approved))
            }
            let listeners: [(String, HubConfiguration.Listener)] = [
                ("device", configuration.device), ("operator", configuration.operatorAPI), ("mqtt", configuration.mqtt),
            ]
            for (name, listener) in listeners {
                let place = "listener \(name) \(listener.host):\(listener.port)"
                add(place, "TLS 1.3 only (no earlier version)", true)
                for suite in profile.tls13CipherSuites {
                    add(place, "cipher suite \(suite)", !suite.contains("CHACHA"))
                }
                for group in profile.tlsGroups { add(place, "key exchange \(group)", !group.hasPrefix("X25519")) }
                add(place, "server certificate ECDSA P-256 with SHA-256", true)
                add(place, "client certificates ECDSA P-256 or P-384, verified against the hub CA", true)
            }
            let pairing = "listener pairing \(configuration.pairing.host):\(configuration.pairing.port)"
            add(pairing, "Noise XKpsk3 P256_AESGCM_SHA256 (ECDH P-256, AES-256-GCM, SHA-256, HKDF)", true)
            if profile == .standard {
                add(pairing, "Noise XKpsk3 25519_AESGCM_SHA256 (X25519)", false)
            }
            if let crl = configuration.crlAddress {
                add("listener crl \(crl.host):\(crl.port)", "plain HTTP; the CRL is signed by the CA", true)
            }
            let data = configuration.dataDirectory
            if let uri = try? String(contentsOfFile: data + "/ca.key.uri", encoding: .utf8) {
                add("certificate authority", "ECDSA on a PKCS#11 token (\(Self.tokenName(uri)))", true)
            } else {
                add("certificate authority", "ECDSA P-256 with SHA-256, key in \(data)/ca.key", true)
            }
            add("device API", "request signatures (RFC 9421) ECDSA P-256 with SHA-256", true)
            add("audit log", "HMAC-SHA-256 chain", true)
            add("pairing identifiers", "rotating identifiers HMAC-SHA-256", true)
            if let repository = configuration.tufRepository {
                if let bytes = FileManager.default.contents(atPath: repository + "/metadata/root.json"),
                    let root = try? Metadata<Root>.parse(Array(bytes))
                {
                    for role in ["root", "targets", "snapshot", "timestamp"] {
                        for keyid in root.signed.roles[role]?.keyids ?? [] {
                            guard let key = root.signed.keys[keyid] else { continue }
                            add("tuf \(role)", "key \(keyid.prefix(16)) \(key.scheme)", KeyPolicy.fips.allows(key))
                        }
                    }
                    add("tuf", "target hashes SHA-256 (and SHA-512 when listed)", true)
                } else {
                    add("tuf", "\(repository)/metadata/root.json is unreadable", false)
                }
            }
            print(
                "profile \(profile.rawValue)"
                    + (profile == .fips
                        ? ": FIPS-approved algorithms only (a profile of approved algorithms, not a validated module)"
                        : ": FIPS-approved algorithms plus X25519 and ChaCha20-Poly1305"))
            let width = lines.map(\.place.count).max() ?? 0
            for line in lines {
                print(
                    line.place.padding(toLength: width, withPad: " ", startingAt: 0) + "  "
                        + (line.approved ? "approved      " : "NOT approved  ") + line.algorithm)
            }
            if profile == .fips, lines.contains(where: { !$0.approved }) { throw ExitCode(1) }
        }

        /// `token=…;object=…` of a URI, without its query (module path, PIN source).
        static func tokenName(_ uri: String) -> String {
            let text = uri.trimmingCharacters(in: .whitespacesAndNewlines)
            return String(text.split(separator: "?", maxSplits: 1).first ?? "")
        }
    }
}
