import AllocationCounter
import ArgumentParser
import Core
import Crypto
import Foundation
import Gateway
import HubClient

#if canImport(Glibc)
    import Glibc
#endif

/// The gateway pipeline's cost per 200-byte message, stage by stage (ns and heap allocations), the rate limiter's
/// decision time and memory for 100,000 devices, and signed-request verifications per second on one core beside
/// `openssl speed -seconds 3 ecdsap256` in the same run.
struct GatewayBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gateway", abstract: "Pipeline cost per stage, rate-limit decisions, signature verification.")
    @Option(help: "Iterations per stage.") var iterations = 200_000
    @Option(help: "Seconds for the signature measure (and openssl speed).") var seconds = 3
    @Option(help: "The openssl binary.") var openssl = "/usr/bin/openssl"

    func run() async throws {
        guard (1000...10_000_000).contains(iterations), (1...30).contains(seconds) else {
            throw ValidationError("iterations 1000-10000000, seconds 1-30")
        }
        let body = Array(Self.telemetry.utf8)
        precondition(body.count == 200)
        var policy = GatewayPolicy()
        policy.messagesPerDevice = RateLimit(rate: 1e9, burst: 1_000_000_000)
        policy.messagesPerRoute = RateLimit(rate: 1e9, burst: 1_000_000_000)
        policy.messagesPerSource = RateLimit(rate: 1e9, burst: 1_000_000_000)
        let pipeline = GatewayPipeline(policy: policy)
        pipeline.setSchema(try JSONSchema(bytes: Array(Self.schema.utf8)), for: "telemetry")
        let device = try DeviceID("bench-1")
        let message = {
            var message = InboundMessage(
                identity: .device(device), route: "telemetry", source: "192.0.2.1", contentType: "application/json",
                messageType: "telemetry", body: body, transport: .mqtt(counter: nil))
            // As the hub does: the device is interned once, when its connection's certificate is read.
            message.deviceKey = pipeline.deviceKeys.key(for: device)
            message.sourceAddress = SourceAddress(ipv4: 0xC000_0201)
            return message
        }()
        let now = GatewayTime(monotonicNanos: 1_000_000_000, unixSeconds: Int64(Date().timeIntervalSince1970))
        let document = try pipeline.policy.json.parse(body)

        emit(
            "bulwark-bench gateway: 200-byte JSON telemetry, \(iterations) iterations per stage, one thread "
                + "(no signature check in the pipeline rows)")
        emit("stage                                   ns/message   allocations/message")
        var total = 0.0
        let stages: [(String, () throws -> Void)] = [
            ("identity", { _ = try pipeline.checkIdentity(message) }),
            ("quarantine", { try pipeline.checkQuarantine(device, now: now) }),
            ("authorization", { try pipeline.checkAuthorization(device, message) }),
            ("rate limits (source, device, route)", { try pipeline.checkRateLimits(device, message, now: now) }),
            ("size and content type", { try pipeline.checkSizeAndType(device, message, now: now) }),
            ("strict JSON parse", { _ = try pipeline.parse(device, message, now: now) }),
            ("schema (11 keywords)", { _ = try pipeline.checkSchema(device, message, document, now: now) }),
        ]
        for (name, stage) in stages {
            let (ns, allocations) = try measure(stage)
            total += ns
            emit(row(name, ns, allocations))
        }
        let (whole, wholeAllocations) = try measure {
            guard case .success = pipeline.admit(message, now: now) else { throw ValidationError("refused") }
        }
        emit(row("sum of the stages", total, .nan))
        emit(row("whole pipeline (admit)", whole, wholeAllocations))

        // One rate-limit decision among 100,000 devices (visited in a shuffled order, so most are cache misses),
        // and the limiter's memory: by interned key (what the pipeline does), and by id in a hashed table.
        let limit = RateLimit(rate: 10, burst: 20)
        let devices = try (0..<100_000).map { try DeviceID("device-\($0)") }.shuffled()
        let keys = DeviceKeys()
        let interned = devices.map { Int(keys.key(for: $0).rawValue) }.shuffled()
        let dense = DenseRateTable(limit: limit)
        for (index, key) in interned.enumerated() { _ = dense.decide(key, now: Int64(index)) }
        var index = 0
        let (decision, decisionAllocations) = try measure {
            _ = dense.decide(interned[index], now: 2_000_000)
            index = (index + 1) % interned.count
        }
        emit(row("one rate-limit decision (100k interned)", decision, decisionAllocations))
        let (interning, _) = try measure {
            _ = keys.key(for: devices[index])
            index = (index + 1) % devices.count
        }
        emit(row("interning a device id (once per conn.)", interning, .nan))
        let table = RateLimiterTable<DeviceID>(limit: limit)
        let before = bulwark_heap_in_use()
        for (index, id) in devices.enumerated() { _ = table.decide(id, now: Int64(index)) }
        let bytes = Double(bulwark_heap_in_use() - before)
        let (hashed, _) = try measure {
            _ = table.decide(devices[index], now: 2_000_000)
            index = (index + 1) % devices.count
        }
        emit(row("(by id, hashed table, 100k keys)", hashed, .nan))
        emit(
            String(
                format: "rate limiter memory for 100,000 devices: %.1f MiB by interned key, %.1f MiB by id",
                Double(dense.bytes) / 1_048_576, bytes / 1_048_576))

        // Signed-request verification on one core: the whole RFC 9421 check (parse, digest, ECDSA P-256).
        let key = P256.Signing.PrivateKey()
        let signer = MessageSigner(key: key)
        let profile = MessageSignatureProfile(maxSkewSeconds: 60)
        let requests = try (0..<256).map { _ -> SignedRequest in
            let headers = try signer.sign(
                method: "POST", path: "/v1/telemetry", body: body, created: now.unixSeconds,
                contentType: "application/json")
            func field(_ name: String) -> String? { headers.first { $0.name == name }?.value }
            return SignedRequest(
                method: "POST", path: "/v1/telemetry", signatureInput: field("Signature-Input"),
                signature: field("Signature"), contentDigest: field("Content-Digest"), contentType: "application/json")
        }
        let clock = ContinuousClock()
        let start = clock.now
        var verified = 0
        while clock.now - start < .seconds(seconds) {
            for request in requests {
                _ = try profile.verify(request, body: body, key: key.publicKey, now: now.unixSeconds)
                verified += 1
            }
        }
        let elapsed = clock.now - start
        let perSecond =
            Double(verified) / elapsed.seconds
        let opensslRate = try opensslVerifyRate()
        emit(String(format: "signed-request verifications/s, one core:  %.0f", perSecond))
        if let opensslRate {
            emit(String(format: "openssl speed ecdsap256 verify/s, one core: %.0f", opensslRate))
            emit(String(format: "ratio: %.2f", perSecond / opensslRate))
        } else {
            emit("openssl speed: not available (install openssl)")
        }
    }

    func measure(_ body: () throws -> Void) throws -> (Double, Double) {
        try medianOfThree(iterations: iterations, body)
    }

    func opensslVerifyRate() throws -> Double? {
        guard FileManager.default.isExecutableFile(atPath: openssl) else { return nil }
        let output = try UpdateBenchmark.capture(openssl, ["speed", "-seconds", String(seconds), "ecdsap256"])
        // "256 bits ecdsa (nistp256)   0.0000s   0.0001s  47960.0  16420.0": the last number is verify/s.
        let line = output.split(separator: "\n").last { $0.contains("nistp256") }
        return line.flatMap { $0.split(separator: " ").last.flatMap { Double($0) } }
    }

    func row(_ name: String, _ ns: Double, _ allocations: Double) -> String { benchRow(name, ns, allocations) }

    func emit(_ line: String) { FileHandle.standardOutput.write(Data((line + "\n").utf8)) }

    static let telemetry = telemetry200

    static let schema = """
        {"type":"object","properties":{"temperature":{"type":"number","minimum":-50,"maximum":150},
        "humidity":{"type":"number","minimum":0,"maximum":100},"battery":{"type":"number","exclusiveMinimum":0},
        "count":{"type":"integer","minimum":0},"at":{"type":"string","format":"date-time"},
        "status":{"enum":["ok","degraded","fault"]},"unit":{"const":"C"},
        "readings":{"type":"array","items":{"type":"number"},"maxItems":16},
        "firmware":{"type":"string","maxLength":32},"tags":{"type":"object","additionalProperties":{"type":"string"}},
        "pad":{"type":"string"}},"required":["temperature"],"additionalProperties":false}
        """
}

/// The 200-byte telemetry message of the gateway and JSON benchmarks.
let telemetry200 =
    #"{"temperature":21.5,"humidity":40.25,"battery":3.71,"count":12,"at":"2026-11-30T12:00:00Z","status":"ok","unit":"C","readings":[1,2,3],"firmware":"1.4.2","tags":{"room":"kitchen"},"pad":""#
    .padding(toLength: 198, withPad: "x", startingAt: 0) + #""}"#

/// The middle value of rounds' measures (the mean of the two middle ones for an even count); nan for none, or when
/// any value is nan (nothing counted).
func median(_ values: [Double]) -> Double {
    guard !values.isEmpty, !values.contains(where: \.isNaN) else { return .nan }
    let sorted = values.sorted()
    return (sorted[(sorted.count - 1) / 2] + sorted[sorted.count / 2]) / 2
}

/// Median of three runs of `iterations` calls (after a warm-up): nanoseconds and heap allocations per call.
func medianOfThree(iterations: Int, _ body: () throws -> Void) throws -> (Double, Double) {
    for _ in 0..<min(10_000, iterations) { try body() }
    var samples: [(Double, Double)] = []
    for _ in 0..<3 {
        let allocationsBefore = bulwark_allocation_count()
        let start = DispatchTime.now().uptimeNanoseconds
        for _ in 0..<iterations { try body() }
        let ns = Double(DispatchTime.now().uptimeNanoseconds - start) / Double(iterations)
        samples.append((ns, Double(bulwark_allocation_count() - allocationsBefore) / Double(iterations)))
    }
    return samples.sorted { $0.0 < $1.0 }[1]
}

func benchRow(_ name: String, _ ns: Double, _ allocations: Double) -> String {
    name.padding(toLength: 40, withPad: " ", startingAt: 0) + String(format: "%10.0f", ns)
        + (allocations.isNaN ? "" : String(format: "   %10.1f", allocations))
}
