import ArgumentParser
import Foundation
import JSON
import PKCS11
import TUF
import TUFRepository

/// `tuf`: create and maintain a TUF repository (TUF §4, §6). Mounted by the main CLI as
/// `bulwark tuf …`. Edits are staged in `REPO/staged/` until `tuf publish` signs them and
/// writes `REPO/metadata/` and `REPO/targets/`.
public struct TUFCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "tuf",
        abstract: "Create and maintain a TUF repository.",
        discussion: """
            Edits (add-target, remove-target, delegate, rotate-key) are staged in REPO/staged;
            'publish' signs them with the keys in --keys and writes REPO/metadata and REPO/targets.
            Private keys live in --keys (NAME.pem, mode 0600), outside the repository, or on a PKCS#11 token:
            wherever a command takes a key, a URI (RFC 7512) such as
            pkcs11:token=release;object=targets-1?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/pin
            names a key made with `bulwark hsm keygen`; --keys then remembers it as NAME.uri. The PIN comes from
            pin-source or BULWARK_PKCS11_PIN, never from the command line.
            """,
        subcommands: [
            Init.self, AddTarget.self, RemoveTarget.self, Delegate.self, Sign.self, RotateKey.self, Publish.self,
            Status.self,
        ]
    )

    public init() {}
}

/// Options every subcommand takes.
struct RepoOptions: ParsableArguments {
    @Option(name: .long, help: "Repository directory (holds metadata/, targets/, staged/)")
    var repo: String

    @Option(name: .long, help: "Private key directory (NAME.pem files, kept outside --repo)")
    var keys: String?

    @Option(
        name: .long,
        help: "standard, or fips: only FIPS 186-5 keys sign or count (default: BULWARK_CRYPTO_PROFILE, else standard)")
    var cryptoProfile: String?

    func keyPolicy() throws -> KeyPolicy {
        let text = cryptoProfile ?? ProcessInfo.processInfo.environment["BULWARK_CRYPTO_PROFILE"] ?? "standard"
        switch text {
        case "standard": return .any
        case "fips": return .fips
        default: throw RepositoryError(.usage, "--crypto-profile must be standard or fips")
        }
    }

    func keyDirectory() throws -> KeyDirectory {
        guard let keys else { throw RepositoryError(.usage, "--keys is required") }
        let repoPath = URL(fileURLWithPath: repo).standardizedFileURL.path
        let keysPath = URL(fileURLWithPath: keys).standardizedFileURL.path
        guard keysPath != repoPath, !keysPath.hasPrefix(repoPath + "/") else {
            throw RepositoryError(.usage, "--keys must not be inside --repo")
        }
        return KeyDirectory(path: keys)
    }

    var repository: FileRepository { FileRepository(directory: repo) }

    func open() throws -> RepositoryEditor {
        var editor = try repository.open()
        editor.keyPolicy = try keyPolicy()
        return editor
    }
}

extension KeyType: ExpressibleByArgument {
    public init?(argument: String) {
        switch argument {
        case "ecdsa", "ecdsa-sha2-nistp256", "p256": self = .ecdsaP256
        case "ed25519": self = .ed25519
        case "rsa", "rsassa-pss-sha256": self = .rsaPSS
        default: return nil
        }
    }
}

/// Runs `body`, turning errors into one short line on stderr and exit status 1.
func report(_ body: () async throws -> Void) async throws {
    do {
        try await body()
    } catch let e as RepositoryError {
        throw CleanExit.failure(e.reason)
    } catch let e as ExitCode {
        throw e
    } catch {
        throw CleanExit.failure("\(error)")
    }
}

enum CleanExit {
    static func failure(_ message: String) -> ExitCode {
        FileHandle.standardError.write(Data(("error: " + message + "\n").utf8))
        return ExitCode.failure
    }
}

extension TUFCommand {
    struct Init: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create keys and version 1 of every top-level role, and publish it."
        )
        @OptionGroup var options: RepoOptions
        @Option(help: "Key type: ecdsa (P-256, default), ed25519 or rsa (RSA-PSS 3072)") var keyType: KeyType =
            .ecdsaP256
        @Option(help: "Number of root keys") var rootKeys: Int = 3
        @Option(help: "Root signature threshold") var rootThreshold: Int = 2
        @Option(
            name: .customLong("key"),
            help: "ROLE=pkcs11:URI: that role's key on a token (ROLE: root-1…root-N, timestamp, snapshot, targets)")
        var tokenKeys: [String] = []
        @Flag(help: "Disable consistent snapshots") var noConsistentSnapshot = false

        func run() async throws {
            try await report {
                let dir = try options.keyDirectory()
                guard rootKeys >= 1, rootThreshold >= 1, rootThreshold <= rootKeys else {
                    throw RepositoryError(.usage, "need 1 <= --root-threshold <= --root-keys")
                }
                var onToken: [String: String] = [:]
                for entry in tokenKeys {
                    let parts = entry.split(separator: "=", maxSplits: 1)
                    guard parts.count == 2, PKCS11URI.isURI(String(parts[1])) else {
                        throw RepositoryError(.usage, "--key takes ROLE=pkcs11:URI")
                    }
                    let role = String(parts[0])
                    let known = ["timestamp", "snapshot", "targets"] + (1...max(rootKeys, 1)).map { "root-\($0)" }
                    guard known.contains(role) else {
                        throw RepositoryError(.usage, "--key: \(role) is not one of \(known.joined(separator: ", "))")
                    }
                    onToken[role] = String(parts[1])
                }
                func key(_ role: String) throws -> any Signer {
                    if let uri = onToken[role] {
                        let signer = try dir.signer(nameOrURI: uri)
                        return signer
                    }
                    return try dir.loadOrGenerate(name: role, type: keyType)
                }
                var ring = Keyring()
                var rootSpec = RoleKeySpec(keys: [], threshold: rootThreshold)
                for i in 1...rootKeys {
                    let s = try key("root-\(i)")
                    rootSpec.keys.append(s.publicKey)
                    ring.add(s)
                }
                var specs: [String: RoleKeySpec] = [:]
                for role in ["timestamp", "snapshot", "targets"] {
                    let s = try key(role)
                    specs[role] = RoleKeySpec(keys: [s.publicKey])
                    ring.add(s)
                }
                var editor = try options.repository.create(
                    root: rootSpec,
                    timestamp: specs["timestamp"] ?? rootSpec,
                    snapshot: specs["snapshot"] ?? rootSpec,
                    targets: specs["targets"] ?? rootSpec,
                    consistentSnapshot: !noConsistentSnapshot
                )
                editor.keyPolicy = try options.keyPolicy()
                try await options.repository.publish(&editor, keyring: ring)
                print("initialized \(options.repo) (root \(rootThreshold) of \(rootKeys), \(keyType.rawValue) keys)")
            }
        }
    }

    struct AddTarget: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "add-target",
            abstract: "Stage a target: hash the file and list it in the responsible role."
        )
        @OptionGroup var options: RepoOptions
        @Option(help: "Target path in the repository (default: the file name)") var name: String?
        @Option(help: "Role to list it in (default: follow delegations)") var role: String?
        @Flag(help: "Also list a SHA-512 hash") var sha512 = false
        @Option(
            help: ArgumentHelp(
                "Security version (anti-rollback): an agent refuses a target below its floor, and raises the floor "
                    + "only when an install of it is committed. Stored in the target's custom fields."))
        var securityVersion: Int?
        @Argument(help: "File to add") var file: String

        func run() async throws {
            try await report {
                var editor = try options.open()
                guard let data = FileManager.default.contents(atPath: file) else {
                    throw RepositoryError(.io, "cannot read \(file)")
                }
                if let securityVersion, !(0...Int(Int32.max)).contains(securityVersion) {
                    throw RepositoryError(.usage, "--security-version must be 0-2147483647")
                }
                let custom = securityVersion.map { version -> JSONValue in
                    var object = JSONObject()
                    object.set("securityVersion", .integer(Int64(version)))
                    return .object(object)
                }
                let path = name ?? URL(fileURLWithPath: file).lastPathComponent
                let listed = try editor.addTarget(
                    path: path, contents: Array(data), role: role, sha512: sha512, custom: custom)
                try options.repository.save(&editor)
                print("staged \(path) in \(listed)")
            }
        }
    }

    struct RemoveTarget: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "remove-target", abstract: "Stage a removal.")
        @OptionGroup var options: RepoOptions
        @Option(help: "Role that lists it (default: follow delegations)") var role: String?
        @Argument(help: "Target path") var path: String

        func run() async throws {
            try await report {
                var editor = try options.open()
                let from = try editor.removeTarget(path: path, role: role)
                try options.repository.save(&editor)
                print("staged removal of \(path) from \(from)")
            }
        }
    }

    struct Delegate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Stage a delegation: by path patterns, classic hashed bins, or succinct hashed bins."
        )
        @OptionGroup var options: RepoOptions
        @Option(help: "Delegating role") var from: String = "targets"
        @Option(help: "Delegated role name (name prefix for bins)") var role: String
        @Option(parsing: .upToNextOption, help: "Path patterns (shell-style)") var paths: [String] = []
        @Option(help: "Classic hashed bins: number of bins (power of two)") var hashBins: Int?
        @Option(help: "Succinct hashed bins (TAP 15): bit length") var succinctBits: Int?
        @Option(help: "Key name in --keys (created if missing; default: the role name), or a pkcs11: URI")
        var key: String?
        @Option(help: "Key type for a new key") var keyType: KeyType = .ecdsaP256
        @Flag(help: "Terminating delegation") var terminating = false

        func run() async throws {
            try await report {
                let modes = [!paths.isEmpty, hashBins != nil, succinctBits != nil].filter { $0 }.count
                guard modes == 1 else {
                    throw RepositoryError(.usage, "give exactly one of --paths, --hash-bins, --succinct-bits")
                }
                let dir = try options.keyDirectory()
                var editor = try options.open()
                let signer = try dir.loadOrGenerate(name: key ?? role, type: keyType)
                let spec = RoleKeySpec(keys: [signer.publicKey])
                if let hashBins {
                    let names = try editor.delegateHashedBins(
                        from: from,
                        namePrefix: role,
                        binCount: hashBins,
                        keys: spec
                    )
                    print("staged \(names.count) hashed bins \(names.first ?? "")…\(names.last ?? "")")
                } else if let succinctBits {
                    let names = try editor.delegateSuccinctBins(
                        from: from,
                        namePrefix: role,
                        bitLength: succinctBits,
                        keys: spec
                    )
                    print("staged \(names.count) succinct bins \(names.first ?? "")…\(names.last ?? "")")
                } else {
                    try editor.delegate(from: from, to: role, paths: paths, keys: spec, terminating: terminating)
                    print("staged delegation \(from) -> \(role)")
                }
                try options.repository.save(&editor)
            }
        }
    }

    struct Sign: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Add signatures to a staged role (e.g. offline root keys)."
        )
        @OptionGroup var options: RepoOptions
        @Option(help: "Role to sign") var role: String
        @Option(
            name: .customLong("key"),
            help: "Key name(s) in --keys or pkcs11: URIs (default: every authorized key in --keys)")
        var keyNames: [String] = []

        func run() async throws {
            try await report {
                let dir = try options.keyDirectory()
                var editor = try options.open()
                guard editor.stagedRoles.contains(role) else {
                    throw RepositoryError(.usage, "\(role) has no staged changes to sign")
                }
                let signers: [any Signer] =
                    keyNames.isEmpty
                    ? Array(try dir.keyring().signers.values) : try keyNames.map { try dir.signer(nameOrURI: $0) }
                let n = try await editor.sign(role: role, with: signers)
                try options.repository.save(&editor)
                print("added \(n) signature(s) to \(role)")
            }
        }
    }

    struct RotateKey: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "rotate-key",
            abstract: "Stage a key rotation for a role (new keys and/or removed key ids)."
        )
        @OptionGroup var options: RepoOptions
        @Option(help: "Role whose keys change (name prefix for succinct bins)") var role: String
        @Option(name: .customLong("add"), help: "Key name in --keys to add (created if missing), or a pkcs11: URI")
        var add: [String] = []
        @Option(name: .customLong("remove"), help: "Key id to remove") var remove: [String] = []
        @Option(help: "New threshold") var threshold: Int?
        @Option(help: "Key type for new keys") var keyType: KeyType = .ecdsaP256

        func run() async throws {
            try await report {
                let dir = try options.keyDirectory()
                var editor = try options.open()
                let keys = try add.map { try dir.loadOrGenerate(name: $0, type: keyType).publicKey }
                try editor.rotateKeys(role: role, add: keys, remove: remove, threshold: threshold)
                try options.repository.save(&editor)
                print("staged key rotation for \(role); new keyids: \(keys.map(KeyID.of).joined(separator: " "))")
            }
        }
    }

    struct Publish: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Sign staged roles, update snapshot and timestamp, and write the repository."
        )
        @OptionGroup var options: RepoOptions
        @Option(help: "Also re-sign timestamp and snapshot if they expire within this many hours")
        var resignWithinHours: Int?

        func run() async throws {
            try await report {
                let dir = try options.keyDirectory()
                let lock = try RepositoryLock(directory: options.repo)
                defer { lock.release() }
                var editor = try options.open()
                let ring = try dir.keyring()
                if let hours = resignWithinHours {
                    for role in ["snapshot", "timestamp"] {
                        _ = try await options.repository.resignIfExpiring(
                            &editor, role: role, within: Int64(hours) * 3600, keyring: ring)
                    }
                }
                let published = try await options.repository.publish(&editor, keyring: ring)
                print(published.isEmpty ? "nothing to publish" : "published " + published.joined(separator: ", "))
            }
        }
    }

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show roles, versions, expiry and signatures.")
        @OptionGroup var options: RepoOptions

        func run() async throws {
            try await report {
                let editor = try options.open()
                print("consistent_snapshot: \(editor.consistentSnapshot)")
                let rows = editor.status()
                let shown = rows.count > 40 ? Array(rows.prefix(40)) : rows
                for r in shown {
                    let mark = r.staged ? " (staged)" : ""
                    print("\(r.name)\tv\(r.version)\texpires \(r.expires)\tsigs \(r.signatures)/\(r.threshold)\(mark)")
                }
                if rows.count > shown.count { print("… \(rows.count - shown.count) more roles") }
            }
        }
    }
}

extension TUFCommand {
    /// Parses `arguments` and runs the subcommand without exiting; failures are thrown
    /// (`ExitCode.failure` after printing `error: …` for repository errors).
    public static func invoke(_ arguments: [String]) async throws {
        var command = try parseAsRoot(arguments)
        if var async = command as? any AsyncParsableCommand {
            try await async.run()
        } else {
            try command.run()
        }
    }

    /// Parses `arguments` (default: the process arguments) and runs the subcommand, then exits:
    /// status 0 on success, 1 with a one-line `error: …` on failure. Use this instead of
    /// `main()`, which on Linux may pick ArgumentParser's synchronous entry point.
    public static func runAndExit(_ arguments: [String]? = nil) async -> Never {
        do {
            try await invoke(arguments ?? Array(CommandLine.arguments.dropFirst()))
            exit(withError: nil)
        } catch {
            exit(withError: error)
        }
    }
}
