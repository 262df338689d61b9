// swift-tools-version:6.2
import PackageDescription

// libFuzzer targets, kept out of the main package: a fuzz executable has no `main` of its own, so a normal
// `swift build` of the main package could not link it. Sources/{MQTT,Core,CRandom,JSON,Gateway,TUF,Pairing,PKI,PKCS11,CPKCS11,Advisories} are symbolic
// links to the real modules; their dependencies match ../Package.swift. See README.md and ../scripts/fuzz.
//
//   cd Fuzz && swift build --sanitize=fuzzer
//   SWIFT_BACKTRACE=enable=no .build/debug/MQTTDecoderFuzz -max_total_time=600 -use_value_profile=1 corpus/mqtt
let crypto = Target.Dependency.product(name: "Crypto", package: "swift-crypto")

/// One libFuzzer entry point per parser; the name of its corpus directory under corpus/ is in scripts/fuzz.
func fuzzTarget(_ name: String, _ dependencies: [Target.Dependency]) -> Target {
    .executableTarget(name: name, dependencies: dependencies)
}

let package = Package(
    name: "bulwark-fuzz",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.0"),
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-asn1.git", from: "1.7.4"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-http-structured-headers.git", from: "1.7.0"),
    ],
    targets: [
        // The modules under test, with the dependencies ../Package.swift gives them.
        .target(name: "Core", dependencies: ["CRandom"], path: "Sources/Core"),
        .target(name: "CRandom", path: "Sources/CRandom"),
        .target(name: "JSON", path: "Sources/JSON"),
        .target(
            name: "MQTT", dependencies: ["Core", .product(name: "NIOCore", package: "swift-nio")], path: "Sources/MQTT"),
        .target(name: "CPKCS11", path: "Sources/CPKCS11", linkerSettings: [.linkedLibrary("dl")]),
        .target(name: "PKCS11", dependencies: ["CPKCS11", crypto], path: "Sources/PKCS11"),
        .target(
            name: "PKI",
            dependencies: [
                "Core", "PKCS11", .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"), crypto,
            ],
            path: "Sources/PKI"
        ),
        .target(
            name: "Gateway",
            dependencies: [
                "Core", "JSON", crypto,
                .product(name: "RawStructuredFieldValues", package: "swift-http-structured-headers"),
            ],
            path: "Sources/Gateway"
        ),
        .target(
            name: "TUF",
            dependencies: ["JSON", crypto, .product(name: "_CryptoExtras", package: "swift-crypto")],
            path: "Sources/TUF"
        ),
        .target(
            name: "Pairing",
            dependencies: ["Core", crypto, .product(name: "NIOCore", package: "swift-nio")],
            path: "Sources/Pairing"
        ),
        .target(name: "Advisories", dependencies: ["TUF", "JSON", crypto], path: "Sources/Advisories"),

        // Shared by the fuzz entry points.
        .target(name: "FuzzSupport", dependencies: [crypto]),

        // The fuzz entry points; scripts/fuzz runs each on corpus/<name> (see README.md).
        fuzzTarget("MQTTDecoderFuzz", ["MQTT", .product(name: "NIOCore", package: "swift-nio")]),
        fuzzTarget("StrictJSONFuzz", ["FuzzSupport", "JSON"]),
        fuzzTarget("TUFJSONFuzz", ["FuzzSupport", "TUF", "JSON"]),
        fuzzTarget("JSONSchemaFuzz", ["FuzzSupport", "Gateway", "JSON"]),
        fuzzTarget("SignatureFieldsFuzz", ["FuzzSupport", "Gateway", crypto]),
        fuzzTarget("TUFMetadataFuzz", ["FuzzSupport", "TUF", "JSON", crypto]),
        fuzzTarget(
            "CSRFuzz",
            [
                "FuzzSupport", "PKI", "Core", crypto, .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ]),
        fuzzTarget("PairingLabelFuzz", ["FuzzSupport", "Pairing", "Core", crypto]),
        fuzzTarget("PairingMessageFuzz", ["FuzzSupport", "Pairing", "Core", crypto]),
        fuzzTarget("NoiseFrameFuzz", ["FuzzSupport", "Pairing", .product(name: "NIOCore", package: "swift-nio")]),
        fuzzTarget("AdvisoriesFuzz", ["FuzzSupport", "Advisories", "JSON"]),
    ]
)
