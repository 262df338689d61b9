import Foundation
import HubClient
import Testing

/// `libBulwarkAllocationCounts.so`, which the MQTT benchmark preloads into the hub and mosquitto: the count it keeps
/// must follow what the child allocates.
@Suite struct ChildAllocationCountsTests {
    /// The library next to the bulwark binary (`swift build` makes it), as `PKCS11Tests.faultModule` finds its module.
    static var libraryDirectory: String {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        return ProcessInfo.processInfo.environment["BULWARK_BIN"].map {
            URL(fileURLWithPath: $0).deletingLastPathComponent().path
        } ?? root.appendingPathComponent(".build/debug").path
    }

    /// Runs python3 with `script` under the library and returns its count.
    func count(_ script: String) throws -> UInt64? {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("alloc-\(UUID()).counts").path
        defer { try? FileManager.default.removeItem(atPath: file) }
        let counts = try #require(ChildAllocationCounts(libraryDirectory: Self.libraryDirectory, file: file))
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", script]
        process.environment = ProcessInfo.processInfo.environment.merging(counts.environment) { $1 }
        try process.run()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        return counts.total()
    }

    @Test func theCountFollowsWhatTheChildAllocates() throws {
        // 20,000 buffers of 1,000 bytes: each one malloc (CPython hands blocks over 512 bytes to the C allocator); a
        // bare start of python3 makes about 50,000, the same number each time.
        let idle = try #require(try count("pass"))
        let busy = try #require(try count("kept = [bytearray(1000) for _ in range(20000)]"))
        #expect(idle > 0)
        #expect(busy >= idle + 20_000)
        #expect(busy < idle + 22_000)
    }

    @Test func withoutTheFileNothingIsCounted() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("alloc-\(UUID()).counts").path
        let counts = try #require(ChildAllocationCounts(libraryDirectory: Self.libraryDirectory, file: file))
        #expect(counts.total() == nil)
        #expect(ChildAllocationCounts(libraryDirectory: "/nonexistent", file: file) == nil)
    }
}
