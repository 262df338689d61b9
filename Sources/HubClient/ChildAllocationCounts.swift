import Foundation

/// The heap allocations of a child process, counted by `libBulwarkAllocationCounts.so` (the
/// `AllocationCountsPreload` target) preloaded into it: `environment` is what the child is started with, `total()`
/// the running count, read from the file the library keeps while the child runs. For the benchmarks' "allocations
/// per message" of processes we do not link (the hub's binary, mosquitto): each wrapper forwards to glibc's own
/// allocator, and a thread counts in a slot of its own, so the child runs as it would without it.
public struct ChildAllocationCounts: Sendable {
    /// `BULWARK_ALLOCATION_SLOTS` and `BULWARK_ALLOCATION_SLOT_BYTES` in the library's header.
    static let slots = 4096
    static let slotBytes = 64

    public let library: String
    public let file: String

    /// Nil when the library was not built next to the binaries in `libraryDirectory` (`swift build` builds it).
    /// A `file` left from an earlier run is removed.
    public init?(libraryDirectory: String, file: String) {
        let library = libraryDirectory + "/libBulwarkAllocationCounts.so"
        guard FileManager.default.fileExists(atPath: library) else { return nil }
        self.library = library
        self.file = file
        try? FileManager.default.removeItem(atPath: file)
    }

    /// Starts the child with the counting library preloaded, counting into `file`.
    public var environment: [String: String] { ["LD_PRELOAD": library, "BULWARK_ALLOCATION_COUNTS": file] }

    /// Allocations the child made since it started (after the loader's own), or nil when the file is missing or
    /// short (the library was not loaded, or could not map it).
    public func total() -> UInt64? {
        guard let data = FileManager.default.contents(atPath: file), data.count == Self.slots * Self.slotBytes
        else { return nil }
        return data.withUnsafeBytes { bytes in
            (0..<Self.slots).reduce(UInt64(0)) {
                $0 &+ UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: $1 * Self.slotBytes, as: UInt64.self))
            }
        }
    }
}
