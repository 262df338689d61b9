import ArgumentParser
import Foundation
import Hub
import HubClient
import TUF
import TUFRepository

/// `bulwark hub`: the hub's own keys, run on the hub's machine (they read and write its data directory).
struct HubCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hub", abstract: "The hub's TLS keys and the pin set devices follow.",
        subcommands: [PublishPins.self, RotateTLSKey.self])

    struct Options: ParsableArguments {
        @Option(help: "Data directory (keys, certificates, the SQLite store).") var data: String?
        @Option(help: "JSON configuration file; BULWARK_* environment variables override it.") var config: String?
        @Option(help: "The update repository (default: tuf.repository of the configuration).") var repo: String?
        @Option(
            help: ArgumentHelp(
                "Key directory of `bulwark tuf` (NAME.pem) holding the targets key and the snapshot and timestamp "
                    + "keys; repeat to combine directories."))
        var keys: [String] = []

        func load() async throws -> (HubConfiguration, String, Keyring) {
            let configuration: HubConfiguration
            do { configuration = try await HubConfiguration.load(dataDirectory: data, configFile: config) } catch {
                throw CleanExit.message("bulwark: \(error)", code: 78)
            }
            guard let repository = repo ?? configuration.tufRepository else {
                throw CleanExit.message(
                    "bulwark: no update repository: pass --repo or set tuf.repository (the pin set is a TUF target)",
                    code: 64)
            }
            guard !keys.isEmpty else { throw CleanExit.message("bulwark: --keys is required", code: 64) }
            var ring = Keyring()
            for directory in keys {
                do {
                    for signer in try KeyDirectory(path: directory).keyring().signers.values { ring.add(signer) }
                } catch { throw CleanExit.message("bulwark: \(error)", code: 66) }
            }
            return (configuration, repository, ring)
        }

        /// This node's pins recorded as its files hold them, and the other nodes' (several nodes on PostgreSQL: each
        /// has TLS keys of its own); none with one node.
        func otherNodePins(_ configuration: HubConfiguration) async throws -> [ClusterPins.Node] {
            do { return try await ClusterPins.syncAndReadOthers(configuration) } catch let error as TamperedPins {
                throw CleanExit.message("bulwark: \(error)", code: 65)
            } catch { throw CleanExit.message("bulwark: \(error)", code: 69) }
        }
    }

    struct PublishPins: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "publish-pins",
            abstract: "Publish every node's pins (key in use, backup) as the TUF target bulwark/pins.json.")
        @OptionGroup var options: Options
        @Option(
            help: ArgumentHelp(
                "Seconds the last pin set that added keys must have been published before another that adds keys, so "
                    + "that devices (refreshing every 6 hours) hold it; a device takes at most two new keys at a time.")
        )
        var settle = 86_400

        func run() async throws {
            let (configuration, repository, keyring) = try await options.load()
            let others = try await options.otherNodePins(configuration)
            do {
                let (version, pins, waiting) = try await TLSKeyRotation.publishCurrent(
                    dataDirectory: configuration.dataDirectory, repository: repository, keyring: keyring,
                    keyPolicy: configuration.cryptoProfile == .fips ? .fips : .any, otherNodes: others,
                    settle: TimeInterval(settle))
                print(
                    "published pin set version \(version): "
                        + pins.map { Data($0).base64EncodedString() }.joined(separator: " "))
                if !waiting.isEmpty {
                    // Published, but not everything: 75 (EX_TEMPFAIL), to be run again.
                    throw CleanExit.message(
                        "bulwark: not yet published: the pins of \(waiting.joined(separator: ", ")) (a set adds at most "
                            + "two keys, and only a running node's); run this again once devices hold this set "
                            + "(--settle) and those nodes run", code: 75)
                }
            } catch let exit as ExitCode { throw exit } catch { throw CleanExit.message("bulwark: \(error)", code: 1) }
        }
    }

    struct RotateTLSKey: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "rotate-tls-key",
            abstract: "Move the hub to its backup TLS key, with a new backup, without stranding a device.",
            discussion: """
                With A the key in use and B the backup: makes C, publishes the pin set {A, B, C} through TUF, makes B
                the key in use (a new certificate) and C the backup (a running hub switches within
                tls.keyCheckSeconds), waits until the hub presents B, then publishes {B, C}. Devices refresh the pin
                set through TUF over their pinned connection. Progress is kept in DATA/hub-rotation.json: after a
                failure, run the command again and it resumes. A new rotation waits --settle seconds after the last.
                """)
        @OptionGroup var options: Options
        @Option(
            help:
                "Seconds to wait for the running hub to present the new key (default: 60, or 3 × tls.keyCheckSeconds).")
        var wait: Int?
        @Option(
            help: ArgumentHelp(
                "Seconds the last rotation's final pin set must have been published before another rotation starts, so "
                    + "that devices (refreshing every 6 hours) hold it."))
        var settle = 86_400
        @Flag(help: "The hub is stopped: publish the final set without waiting for it to present the new key.")
        var noHub = false

        func run() async throws {
            let (configuration, repository, keyring) = try await options.load()
            let host =
                HubConfiguration.bindsEveryInterface(configuration.device.host)
                ? "127.0.0.1" : configuration.device.host
            let port = configuration.device.port
            let others = try await options.otherNodePins(configuration)
            do {
                let result = try await TLSKeyRotation.rotate(
                    dataDirectory: configuration.dataDirectory, hubNames: configuration.hubNames,
                    crlDistributionPoints: try configuration.crlDistributionPoints, repository: repository,
                    keyring: keyring,
                    wait: .seconds(wait ?? max(60, Int(configuration.tlsKeyCheckSeconds * 3) + 10)),
                    settle: TimeInterval(settle), hubRunning: !noHub,
                    keyPolicy: configuration.cryptoProfile == .fips ? .fips : .any, otherNodes: others,
                    presentedPin: { await TLSKeyRotation.presentedPin(host: host, port: port) })
                // The store holds this node's new pins for pairing on every node (the running hub records them
                // too when it switches).
                do { _ = try await ClusterPins.syncAndReadOthers(configuration) } catch {
                    FileHandle.standardError.write(
                        Data("bulwark: warning: the new pins were not recorded in the store: \(error)\n".utf8))
                }
                print(
                    "rotated: retired \(Data(result.previousPin).base64EncodedString()); now "
                        + "\(result.pins.map { Data($0).base64EncodedString() }.joined(separator: " ")) "
                        + "(pin set versions \(result.versions.map(String.init).joined(separator: ", ")))")
            } catch { throw CleanExit.message("bulwark: \(error)", code: 1) }
        }
    }
}
