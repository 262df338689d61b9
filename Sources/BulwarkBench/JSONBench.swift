import AllocationCounter
import ArgumentParser
import Foundation
import JSON

/// The strict JSON parser on the two documents it is for: a 200-byte telemetry message (I-JSON profile) and a
/// 175 KB `targets.json` (TUF profile), in MB/s and allocations, beside Foundation's `JSONSerialization` in the same
/// process and Python's C `json` module (`json.loads`) in the same run.
struct JSONBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "json", abstract: "Strict JSON parse throughput beside JSONSerialization and Python's json.")
    @Option(help: "Iterations for the 200-byte message (the targets document gets 1/500 of them).")
    var iterations = 500_000
    @Option(help: "The Python interpreter for the peer figure (skipped when absent).") var python = "/usr/bin/python3"
    @Option(help: "Only the rows whose parser name contains this text (for a profiler).") var only: String?

    func run() async throws {
        guard (5000...50_000_000).contains(iterations) else { throw ValidationError("iterations 5000-50000000") }
        let message = Array(telemetry200.utf8)
        let targets = Self.targetsDocument(count: 1000)
        let big = max(10, iterations / 500)
        emit("bulwark-bench json: one thread, median of three runs")
        emit(
            "document                          parser                       ns/document      MB/s   allocations")
        let device = StrictJSON()
        try report("telemetry, 200 B", "StrictJSON I-JSON (tape)", message.count, iterations) {
            _ = try device.parse(message)
        }
        try report("telemetry, 200 B", "StrictJSON I-JSON + value", message.count, iterations) {
            _ = try device.value(message)
        }
        let messageData = Data(message)
        try report("telemetry, 200 B", "Foundation JSONSerialization", message.count, iterations) {
            _ = try JSONSerialization.jsonObject(with: messageData)
        }
        let label = String(format: "targets.json, %.0f KB", Double(targets.count) / 1000)
        try report(label, "StrictJSON TUF (tape)", targets.count, big) { _ = try StrictJSON.tuf.parse(targets) }
        try report(label, "StrictJSON TUF + value", targets.count, big) { _ = try StrictJSON.tuf.value(targets) }
        let value = try StrictJSON.tuf.value(targets)
        try report(label, "canonical JSON of the value", targets.count, big) { _ = try CanonicalJSON.encode(value) }
        let targetsData = Data(targets)
        try report(label, "Foundation JSONSerialization", targets.count, big) {
            _ = try JSONSerialization.jsonObject(with: targetsData)
        }
        for (name, bytes, count) in [("telemetry, 200 B", message, iterations), (label, targets, big)] where only == nil
        {
            if let ns = try pythonLoads(bytes, count: count) {
                emit(line(name, "Python json.loads (C)", ns, bytes.count, .nan))
            } else {
                emit("\(name): Python not available at \(python)")
            }
        }
    }

    func report(_ document: String, _ parser: String, _ size: Int, _ count: Int, _ body: () throws -> Void) throws {
        if let only, !parser.contains(only) { return }
        let (ns, allocations) = try medianOfThree(iterations: count, body)
        emit(line(document, parser, ns, size, allocations))
    }

    func line(_ document: String, _ parser: String, _ ns: Double, _ size: Int, _ allocations: Double) -> String {
        document.padding(toLength: 34, withPad: " ", startingAt: 0)
            + parser.padding(toLength: 29, withPad: " ", startingAt: 0)
            + String(format: "%12.0f %9.0f", ns, Double(size) / ns * 1000)
            + (allocations.isNaN ? "" : String(format: " %13.1f", allocations))
    }

    /// `json.loads` timed by Python itself on the same bytes (median of three `timeit` runs).
    func pythonLoads(_ bytes: [UInt8], count: Int) throws -> Double? {
        guard FileManager.default.isExecutableFile(atPath: python) else { return nil }
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("bulwark-json-\(getpid()).json")
        try Data(bytes).write(to: file)
        defer { try? FileManager.default.removeItem(at: file) }
        let script = """
            import json, sys, timeit
            data = open(sys.argv[1], 'rb').read()
            n = int(sys.argv[2])
            runs = sorted(timeit.repeat(lambda: json.loads(data), number=n, repeat=3))
            print(runs[1] / n * 1e9)
            """
        let output = try UpdateBenchmark.capture(python, ["-c", script, file.path, String(count)])
        return Double(output.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    /// A TUF targets document of `count` targets as python-tuf writes them (length, a sha256 hash, a custom field),
    /// signed by one key: about 175 bytes per target.
    static func targetsDocument(count: Int) -> [UInt8] {
        func hex(_ seed: Int, _ length: Int) -> String {
            var state = UInt64(truncatingIfNeeded: seed) &* 0x9E37_79B9_7F4A_7C15 | 1
            let digits = Array("0123456789abcdef")
            var out = ""
            for _ in 0..<length {
                state ^= state << 13
                state ^= state >> 7
                state ^= state << 17
                out.append(digits[Int(state % 16)])
            }
            return out
        }
        var targets: [String] = []
        for k in 0..<count {
            targets.append(
                #""firmware/device-\#(k)/image-\#(k).bin":{"custom":{"hardware":"rev-\#(k % 7)"},"hashes":{"sha256":"\#(hex(k, 64))"},"length":\#(1000 + k * 37)}"#
            )
        }
        let text =
            #"{"signatures":[{"keyid":"\#(hex(1, 64))","sig":"\#(hex(2, 128))"}],"signed":{"_type":"targets","expires":"2030-01-01T00:00:00Z","spec_version":"1.0.31","targets":{"#
            + targets.joined(separator: ",") + #"},"version":7}}"#
        return Array(text.utf8)
    }

    func emit(_ line: String) { FileHandle.standardOutput.write(Data((line + "\n").utf8)) }
}
