import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// The heap allocations of a child process, counted by `libBulwarkAllocationCounts.so` (built from
/// `scripts/allocation-counts.c`) preloaded into it: `environment` is what the child is started with, `total()` the
/// running count, read from the file the library keeps while the child runs. For the benchmarks' "allocations per
/// message" of processes we do not link (the hub's binary, mosquitto): each wrapper forwards to glibc's own
/// allocator, and a thread counts in a slot of its own, so the child runs as it would without it.
public struct ChildAllocationCounts: Sendable {
    /// `SLOTS` and `SLOT_BYTES` in the library's source.
    static let slots = 4096
    static let slotBytes = 64

    public let library: String
    public let file: String

    /// The library's source in this package, found from this file's path: the benchmark runs where it was built.
    public static var packageSource: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("scripts/allocation-counts.c").path
    }

    /// Builds the library from `source` with clang (the Swift toolchain's) into `directory`; returns its path. The
    /// library depends on libc alone: SwiftPM links what it builds against the Swift runtime, which would load into
    /// mosquitto with it.
    public static func buildLibrary(source: String = packageSource, into directory: String) throws -> String {
        let library = directory + "/libBulwarkAllocationCounts.so"
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["clang", "-O2", "-shared", "-fPIC", "-pthread", "-o", library, source]
        let errors = Pipe()
        process.standardError = errors
        process.standardOutput = errors
        try process.run()
        let output = errors.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw ClientError("clang could not build \(source): \(String(decoding: output, as: UTF8.self))")
        }
        return library
    }

    /// Counts into `file` (removed if it is there from an earlier run) for a child started with `environment`.
    public init(library: String, file: String) {
        self.library = library
        self.file = file
        try? FileManager.default.removeItem(atPath: file)
    }

    /// Starts the child with the counting library preloaded, counting into `file`.
    public var environment: [String: String] { ["LD_PRELOAD": library, "BULWARK_ALLOCATION_COUNTS": file] }

    /// Allocations the child made since it started (after the loader's own), or nil when the file is missing or
    /// short (the library was not loaded, or could not map it). The file is mapped, and each count read with one
    /// aligned 8-byte load (single-copy atomic on x86-64 and arm64), so a count the child is writing is never read
    /// half old and half new, as a `read(2)` copy could be.
    public func total() -> UInt64? {
        let descriptor = open(file, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { return nil }
        defer { close(descriptor) }
        let size = Self.slots * Self.slotBytes
        var status = stat()
        guard fstat(descriptor, &status) == 0, status.st_size == size,
            let mapped = mmap(nil, size, PROT_READ, MAP_SHARED, descriptor, 0),
            mapped != UnsafeMutableRawPointer(bitPattern: -1)
        else { return nil }
        defer { munmap(mapped, size) }
        var sum: UInt64 = 0
        for slot in 0..<Self.slots {
            sum &+= mapped.load(fromByteOffset: slot * Self.slotBytes, as: UInt64.self)
        }
        return sum
    }
}
