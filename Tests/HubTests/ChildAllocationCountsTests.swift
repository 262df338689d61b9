import Foundation
import HubClient
import Testing

/// `libBulwarkAllocationCounts.so`, which the MQTT benchmark preloads into the hub and mosquitto: the count it keeps
/// must follow what the child allocates, on every thread, and must not follow the child into its own children.
@Suite struct ChildAllocationCountsTests {
    static func temporary(_ name: String) -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("alloc-\(UUID())-\(name)").path
    }

    /// Runs python3 with `script` under the library (built once per test) and returns its count.
    func count(_ script: String, library: String) throws -> UInt64? {
        let file = Self.temporary("counts")
        defer { try? FileManager.default.removeItem(atPath: file) }
        let counts = ChildAllocationCounts(library: library, file: file)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = ["-c", script]
        // CPython's own small-object allocator, whatever the caller's environment says: blocks over 512 bytes go to
        // malloc, smaller ones mostly do not.
        process.environment = ProcessInfo.processInfo.environment.merging(counts.environment) { $1 }
            .merging(["PYTHONMALLOC": "pymalloc"]) { $1 }
        try process.run()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        return counts.total()
    }

    func library() throws -> (library: String, directory: String) {
        let directory = Self.temporary("lib")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        return (try ChildAllocationCounts.buildLibrary(into: directory), directory)
    }

    @Test func theCountFollowsWhatTheChildAllocatesOnEveryThread() throws {
        let (library, directory) = try library()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        // A bare start of python3 makes about 1,200, the same number each time.
        let idle = try #require(try count("pass", library: library))
        #expect(idle > 1000)
        // 20,000 buffers of 1,000 bytes: each one malloc.
        let busy = try #require(
            try count("kept = [bytearray(1000) for _ in range(20000)]", library: library))
        #expect(busy >= idle + 20_000 && busy < idle + 22_000, "\(busy) against \(idle) at rest")
        // The same on 8 threads, 2,500 each, all alive at once: each thread counts in its own slot, and all count.
        let threaded = try #require(
            try count(
                """
                import threading
                kept = []
                ready = threading.Barrier(8)
                def work():
                    ready.wait()
                    kept.append([bytearray(1000) for _ in range(2500)])
                threads = [threading.Thread(target=work) for _ in range(8)]
                for t in threads: t.start()
                for t in threads: t.join()
                """, library: library))
        #expect(threaded >= idle + 20_000, "\(threaded) against \(idle) at rest")
        #expect(threaded < idle + 23_000, "\(threaded) against \(idle) at rest")
    }

    /// A child's own child (python3 starting python3) is not counted: the library takes its variables out of the
    /// environment.
    @Test func grandchildrenAreNotCounted() throws {
        let (library, directory) = try library()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let alone = try #require(try count("pass", library: library))
        let withChild = try #require(
            try count(
                "import subprocess; subprocess.run(['python3', '-c', 'kept = [bytearray(1000) for _ in range(20000)]'])",
                library: library))
        #expect(withChild < alone + 20_000, "\(withChild) against \(alone)")
    }

    @Test func withoutTheFileNothingIsCounted() {
        let counts = ChildAllocationCounts(library: "/nonexistent/lib.so", file: Self.temporary("none"))
        #expect(counts.total() == nil)
    }

    @Test func aSourceThatDoesNotBuildIsAnError() throws {
        let directory = Self.temporary("bad")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let source = directory + "/bad.c"
        try "this is not C".write(toFile: source, atomically: true, encoding: .utf8)
        #expect(throws: ClientError.self) { try ChildAllocationCounts.buildLibrary(source: source, into: directory) }
    }
}
