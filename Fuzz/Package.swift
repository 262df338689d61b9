// swift-tools-version:6.2
import PackageDescription

// libFuzzer targets, kept out of the main package: a fuzz executable has no `main` of its own, so a normal
// `swift build` of the main package could not link it. Sources/MQTT is a symbolic link to the real module.
//
//   cd Fuzz && swift build --sanitize=fuzzer
//   SWIFT_BACKTRACE=enable=no .build/debug/MQTTDecoderFuzz -max_total_time=600 -use_value_profile=1 corpus/mqtt
let package = Package(
    name: "bulwark-fuzz",
    platforms: [.macOS(.v15)],
    dependencies: [.package(url: "https://github.com/apple/swift-nio.git", from: "2.101.0")],
    targets: [
        .target(name: "MQTT", dependencies: [.product(name: "NIOCore", package: "swift-nio")], path: "Sources/MQTT"),
        .executableTarget(
            name: "MQTTDecoderFuzz",
            dependencies: ["MQTT", .product(name: "NIOCore", package: "swift-nio")]
        ),
    ]
)
