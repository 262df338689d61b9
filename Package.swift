// swift-tools-version:6.2
import PackageDescription

// Layers (see ../shared/STYLE.md): CLI → Hub/HubClient → Store → Gateway/PKI/TUF → Core.
// The bottom two layers are pure: no NIOPosix, Hummingbird, files or network.
let package = Package(
    name: "bulwark",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "bulwark", targets: ["CLI"]),
        .executable(name: "bulwark-bench", targets: ["BulwarkBench"]),
        // Loaded by the HSM tests as a PKCS#11 module (never by Bulwark itself).
        .library(name: "BulwarkPKCS11Fault", type: .dynamic, targets: ["PKCS11FaultModule"]),
        .library(name: "BulwarkCore", targets: ["Core"]),
        // The device side as a library: firmware written in Swift embeds the agent (`Agent(configuration:)`).
        .library(name: "BulwarkAgent", targets: ["Agent"]),
        .library(name: "BulwarkTUF", targets: ["TUF"]),
        .library(name: "BulwarkTUFClient", targets: ["TUFClient", "TUFClientNIO"]),
        .library(name: "BulwarkTUFRepository", targets: ["TUFRepository"]),
        // The client-under-test command line of theupdateframework/tuf-conformance (its CLIENT-CLI.md).
        .executable(name: "bulwark-tuf-client", targets: ["TUFConformanceClient"]),
        // bulwark-tuf-client against python-tuf's ngclient over loopback HTTP (BENCH figures in the README).
        .executable(name: "tuf-bench", targets: ["TUFBench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.0"),
        // Deque, for the MQTT delivery window (already built: swift-nio depends on it).
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.1.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-asn1.git", from: "1.7.4"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-configuration.git", from: "1.4.0", traits: ["JSON"]),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
        .package(url: "https://github.com/apple/swift-http-structured-headers.git", from: "1.7.0"),
        // Reads osv.dev's per-ecosystem advisory exports (all.zip) in `bulwark advisories import`.
        .package(url: "https://github.com/weichsel/ZIPFoundation.git", from: "0.9.20"),
        // The hub's /metrics in the Prometheus text format (a registry per hub: several hubs share a test process).
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        // The operator dashboard's server-rendered pages (HTML-escaping templates compiled into the binary).
        .package(url: "https://github.com/hummingbird-project/swift-mustache.git", from: "2.1.1"),
    ],
    targets: [
        // Pure: validated identifiers and error values. Imports only CRandom (`getrandom(2)`, for `RandomPool`).
        .target(name: "Core", dependencies: ["CRandom"]),
        .target(name: "CRandom"),
        // Pure: certificate authority, CSR checks, identities in certificates, SPKI pins.
        .target(
            name: "PKI",
            dependencies: [
                "Core", "PKCS11",
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        // Pure: the admission pipeline shared by HTTP and MQTT.
        // Pure, no Foundation: the one strict JSON parser (I-JSON for messages, TUF's profile for metadata), the value
        // type and canonical JSON.
        .target(name: "JSON"),
        .target(
            name: "Gateway",
            dependencies: [
                "Core", "JSON", .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        // Pure: The Update Framework metadata, canonical JSON, signature verification, the trusted metadata set.
        .target(
            name: "TUF",
            dependencies: [
                "JSON", .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
            ]
        ),
        // The TUF client workflow (§5.1-5.7): Updater, a blocking-socket fetcher with byte limits and timeouts, atomic
        // storage (the NIO fetcher is TUFClientNIO).
        .target(
            name: "TUFClient",
            dependencies: ["TUF", .product(name: "Crypto", package: "swift-crypto")]
        ),
        // The TUF client's fetcher on SwiftNIO (TLS through a seam), apart, so that a client that fetches with
        // `SocketFetcher` (bulwark-tuf-client) links no event loop, HTTP codec or their protocol conformances.
        .target(
            name: "TUFClientNIO",
            dependencies: [
                "TUFClient",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
        .executableTarget(
            name: "TUFConformanceClient",
            dependencies: ["TUF", "TUFClient"],
            // No exported symbols: the Swift runtime's start-up `dladdr` searches 389 dynamic symbols, not 17,127.
            // Full RELRO as for `bulwark` (`-z now`). It stays position-independent although a fixed address would
            // spare the loader 58,000 relocations at start (about 1.3 ms of a warm refresh): this process parses
            // what the network sends, and ASLR of its image is worth more than that.
            linkerSettings: [
                .unsafeFlags(
                    ["-Xlinker", "--no-export-dynamic", "-Xlinker", "-z", "-Xlinker", "now"], .when(platforms: [.linux])
                )
            ]
        ),
        // The repository side: RepositoryEditor, Signer (file keys now, an HSM later), the timestamp/snapshot re-signer.
        .target(
            name: "TUFRepository",
            dependencies: [
                "TUF", "JSON", "PKCS11",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
            ]
        ),
        // `bulwark tuf init | add-target | remove-target | delegate | sign | rotate-key | publish | status`.
        .target(
            name: "TUFCommands",
            dependencies: [
                "TUF", "TUFRepository", "JSON", "PKCS11",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(name: "TUFBench", dependencies: ["TUF", "TUFRepository"]),
        // Pure: the vulnerability gate's rules: version order per ecosystem, package URLs, CVSS v3.1, OSV records,
        // CycloneDX SBOM and VEX, and the gate's decision over them.
        .target(name: "Advisories", dependencies: ["TUF", "JSON", .product(name: "Crypto", package: "swift-crypto")]),
        // Pure: Noise XKpsk3 pairing handshake, its suites, and the pairing state machines.
        .target(
            name: "Pairing",
            dependencies: [
                "Core", .product(name: "Crypto", package: "swift-crypto"),
                // Only for the frame codec (ByteBuffer and the decoder protocols), as the MQTT codec will.
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        // Pure: MQTT 3.1.1 and 5.0 packets, codec and topic matching (NIOCore for ByteBuffer and decoders, Deque for
        // the delivery window).
        .target(
            name: "MQTT",
            dependencies: [
                "Core", .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "DequeModule", package: "swift-collections"),
            ]),
        // Store protocols, in-memory twins, SQLite (GRDB) backend, migrations.
        .target(
            name: "Store",
            dependencies: [
                "Core", "Advisories", .product(name: "GRDB", package: "GRDB.swift"),
                // SQLite's C API, for the one statement run per stored message (`GroupCommitter`).
                .product(name: "GRDBSQLite", package: "GRDB.swift"), .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        // The PostgreSQL backend of `HubStore`, for several hub nodes on one database.
        .target(
            name: "PostgresStore",
            dependencies: [
                "Core", "Store", .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Hub wiring: TLS listeners, routes, key files, configuration, services.
        .target(
            name: "Hub",
            dependencies: [
                "Core", "PKI", "Gateway", "Store", "Pairing", "MQTT", "TUF", "TUFRepository", "HubClient", "PKCS11",
                "Advisories", "JSON", "PostgresStore",
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Mustache", package: "swift-mustache"),
            ]
        ),
        // A small HTTP/1.1 client over mutual TLS (operator CLI, device commands, load generator).
        .target(
            name: "HubClient",
            dependencies: [
                "Core", "PKI", "Pairing", "MQTT", "Gateway", "JSON", "CTLSPolicy",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        // The device agent: durable outbox, pinned MQTT 5 session, commands, certificate renewal.
        .target(
            name: "Agent",
            dependencies: [
                "Core", "PKI", "MQTT", "HubClient", "TUF", "TUFClient", "TUFClientNIO", "JSON", "CWorkingSet", "CSpawn",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "CLI",
            dependencies: [
                "Core", "PKI", "Hub", "HubClient", "Store", "Pairing", "Gateway", "TUFCommands", "Agent", "PKCS11",
                "Advisories", "TUF", "TUFRepository", "JSON", "PostgresStore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "ZIPFoundation", package: "ZIPFoundation"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "X509", package: "swift-certificates"),
            ],
            // Full RELRO: every symbol is bound at start (`-z now`), so the GOT is read-only from then on and nothing
            // is resolved lazily later (which also brought the dynamic linker's code and the libraries' symbol tables
            // back into the idle agent's resident set at its first keep-alive). No exported symbols (the Swift
            // toolchain's `-export-dynamic`): nothing loads against this executable, and its 57,000 dynamic symbols'
            // tables (4.6 MB) were read at every start, about 3 MB of the hub's resident set.
            linkerSettings: [
                .unsafeFlags(
                    ["-Xlinker", "-z", "-Xlinker", "now", "-Xlinker", "--no-export-dynamic"], .when(platforms: [.linux])
                )
            ]
        ),
        // PKCS#11 (RFC 7512 URIs, keys on a token, ECDSA through C_Sign) over a vendored pkcs11.h and dlopen.
        .target(name: "CPKCS11", linkerSettings: [.linkedLibrary("dl")]),
        .target(
            name: "PKCS11",
            dependencies: ["CPKCS11", .product(name: "Crypto", package: "swift-crypto")]
        ),
        // BoringSSL's FIPS compliance policy on a swift-nio-ssl context, in C (see its header).
        // The agent's working-set trim: `dl_iterate_phdr` and `madvise` under the loader's lock (`WorkingSet`).
        .target(name: "CWorkingSet"),
        .target(name: "CSpawn"),
        .target(name: "CTLSPolicy", dependencies: [.product(name: "NIOSSL", package: "swift-nio-ssl")]),
        // A PKCS#11 module for the tests only: forwards to SoftHSM2 and plays an unplugged token on demand.
        .target(name: "PKCS11FaultModule", linkerSettings: [.linkedLibrary("dl")]),
        // The tests' PostgreSQL server (scripts/postgres), a fresh database per store, and temporary directories.
        .target(
            name: "PostgresTestSupport",
            dependencies: ["PostgresStore", "Store", .product(name: "PostgresNIO", package: "postgres-nio")],
            path: "Tests/Support/PostgresTestSupport"
        ),
        // Counts heap allocations for the benchmark (interposes malloc in the bench executable only).
        .target(name: "AllocationCounter"),
        .executableTarget(
            name: "BulwarkBench",
            dependencies: [
                "AllocationCounter", "Core", "PKI", "Hub", "HubClient", "Store", "Pairing", "MQTT", "Gateway", "Agent",
                "TUFRepository", "PKCS11", "Advisories", "JSON", "PostgresStore", "PostgresTestSupport",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(name: "CoreTests", dependencies: ["Core"]),
        .testTarget(name: "JSONTests", dependencies: ["JSON"]),
        .testTarget(name: "AdvisoriesTests", dependencies: ["Advisories", "TUF"]),
        .testTarget(
            name: "PKCS11Tests", dependencies: ["PKCS11", .product(name: "Crypto", package: "swift-crypto")]),
        .testTarget(name: "PKITests", dependencies: ["PKI", .product(name: "X509", package: "swift-certificates")]),
        .testTarget(
            name: "GatewayTests",
            dependencies: [
                "Gateway", "JSON", .product(name: "Crypto", package: "swift-crypto"),
                // The oracle for Gateway's own RFC 9651 parser.
                .product(name: "RawStructuredFieldValues", package: "swift-http-structured-headers"),
            ],
            resources: [.copy("Fixtures")]
        ),
        .testTarget(
            name: "TUFTests",
            dependencies: [
                "TUF", "JSON", "TUFClient", "TUFClientNIO", "TUFRepository",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        // python-tuf (PyPI) reading our repositories and we reading its: scripts/install-deps installs it.
        .testTarget(
            name: "TUFInteropTests", dependencies: ["TUF", "TUFClient", "TUFClientNIO", "TUFRepository", "TUFCommands"]),
        .testTarget(
            name: "PairingTests",
            dependencies: ["Pairing", .product(name: "Crypto", package: "swift-crypto")],
            resources: [.copy("Fixtures")]
        ),
        .testTarget(
            name: "MQTTTests",
            dependencies: ["MQTT", .product(name: "NIOCore", package: "swift-nio")]
        ),
        .testTarget(
            name: "StoreTests",
            dependencies: [
                "Store", "PostgresStore", "PostgresTestSupport", "Core", "Advisories",
                .product(name: "Crypto", package: "swift-crypto"), .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        .testTarget(
            name: "HubTests",
            dependencies: [
                "Hub", "HubClient", "Agent", "PKI", "Store", "Core", "Pairing", "Gateway", "TUFRepository",
                "Advisories", "JSON", "PostgresStore", "PostgresTestSupport",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
    ]
)
