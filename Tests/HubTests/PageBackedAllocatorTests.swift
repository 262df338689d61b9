#if os(Linux)
    import Foundation
    import Glibc
    import NIOCore
    import Testing

    @testable import Hub

    /// The MQTT connections' buffer allocator: large buffers are mappings resident only where written and gone when
    /// freed (or kept for reuse, a bounded number); small ones stay on the heap; at most `maximumMappings` mappings
    /// live at once; every size change keeps the bytes.
    @Suite(.serialized) struct PageBackedAllocatorTests {
        static var page: Int { Int(sysconf(Int32(_SC_PAGESIZE))) }

        /// Where a buffer's storage starts (its reader index at 0).
        static func start(of buffer: inout ByteBuffer) -> UInt {
            buffer.withUnsafeMutableReadableBytes { UInt(bitPattern: $0.baseAddress!) }
        }

        static func isMapped(_ buffer: inout ByteBuffer) -> Bool {
            PageBackedAllocator.isMapped(UnsafeRawPointer(bitPattern: start(of: &buffer))!)
        }

        /// How many pages of a large buffer's mapping (its 16-byte header first) are resident.
        static func residentPages(of buffer: inout ByteBuffer) -> (pages: Int, resident: Int)? {
            let start = Self.start(of: &buffer) - 16
            guard start % UInt(page) == 0 else { return nil }
            let pages = (buffer.capacity + 16 + page - 1) / page
            var vector = [UInt8](repeating: 0, count: pages)
            guard mincore(UnsafeMutableRawPointer(bitPattern: start), pages * page, &vector) == 0 else {
                return nil
            }
            return (pages, vector.filter { $0 & 1 == 1 }.count)
        }

        /// A file of `/proc`, read to its end (its size says 0: `String(contentsOfFile:)` stops at 4 KiB).
        static func procFile(_ path: String) throws -> String {
            let data = try FileHandle(forReadingFrom: URL(fileURLWithPath: path)).readToEnd() ?? Data()
            return String(decoding: data, as: UTF8.self)
        }

        /// The `VmFlags` of the memory region that holds `address` (`/proc/self/smaps`).
        static func regionFlags(_ address: UInt) throws -> [Substring] {
            let smaps = try Self.procFile("/proc/self/smaps")
            var inside = false
            for line in smaps.split(separator: "\n") {
                let fields = line.split(separator: " ", omittingEmptySubsequences: true)
                if let range = fields.first, range.contains("-"), !range.hasSuffix(":") {
                    let bounds = range.split(separator: "-").compactMap { UInt($0, radix: 16) }
                    inside = bounds.count == 2 && bounds[0] <= address && address < bounds[1]
                } else if inside, fields.first == "VmFlags:" {
                    return Array(fields.dropFirst())
                }
            }
            return []
        }

        /// Huge pages are off for the mappings (`nh`): with transparent huge pages `always`, merged mappings could
        /// otherwise fault in 2 MiB at once.
        @Test func mappingsRefuseHugePages() throws {
            var buffer = PageBackedAllocator.allocator.buffer(capacity: 32 * 1024)
            buffer.writeInteger(UInt32(1))
            let flags = try Self.regionFlags(Self.start(of: &buffer))
            #expect(flags.contains("nh"), "VmFlags: \(flags)")
            #expect(!flags.contains("hg"))
        }

        /// A fresh mapping has only the written page resident. A kept one (reused) keeps the pages its earlier user
        /// wrote, so of 80 buffers held at once (the cache holds at most 64) at least 16 are fresh.
        @Test func aLargeBufferIsAMappingResidentOnlyWhereWritten() throws {
            var buffers: [ByteBuffer] = []
            var onePage = 0
            for _ in 0..<(PageBackedAllocator.cachedMappings + 16) {
                // swift-nio-ssl's plaintext buffer is 32 KB; a device's record is a few hundred bytes.
                var buffer = PageBackedAllocator.allocator.buffer(capacity: 32 * 1024)
                buffer.writeBytes([UInt8](repeating: 0xA5, count: 300))
                #expect(Self.isMapped(&buffer))
                let mapped = try #require(Self.residentPages(of: &buffer), "a 32 KB buffer is its own mapping")
                #expect(mapped.pages == 9)
                if mapped.resident == 1 { onePage += 1 }
                #expect(buffer.readBytes(length: 300) == [UInt8](repeating: 0xA5, count: 300))
                buffers.append(buffer)
            }
            #expect(onePage >= 16)
        }

        @Test func smallBuffersStayOnTheHeapAndGrowIntoAMapping() throws {
            var buffer = PageBackedAllocator.allocator.buffer(capacity: 256)
            #expect(!Self.isMapped(&buffer))
            var expected: [UInt8] = []
            // Heap → heap (realloc), heap → mapping, mapping → larger mapping: the bytes survive each move.
            for round in 0..<200 {
                let chunk = [UInt8](repeating: UInt8(truncatingIfNeeded: round), count: 997)
                buffer.writeBytes(chunk)
                expected += chunk
            }
            #expect(buffer.capacity >= PageBackedAllocator.threshold)
            #expect(Self.isMapped(&buffer))
            #expect(buffer.getBytes(at: 0, length: expected.count) == expected)
            // A copy on write into a fresh buffer of the same allocator keeps the bytes too.
            var copy = buffer
            copy.writeInteger(UInt8(1))
            #expect(copy.getBytes(at: 0, length: expected.count) == expected)
            #expect(buffer.readableBytes == expected.count)
        }

        @Test func tinyAndClearedBuffersWork() {
            var tiny = PageBackedAllocator.allocator.buffer(capacity: 1)
            tiny.writeString("xyz")
            #expect(tiny.readString(length: 3) == "xyz")
            // Clearing a shared buffer to no capacity allocates 0 bytes from the allocator.
            var shared = PageBackedAllocator.allocator.buffer(capacity: 64)
            shared.writeString("kept")
            var cleared = shared
            cleared.clear(minimumCapacity: 0)
            cleared.writeString("new")
            #expect(shared.readString(length: 4) == "kept")
            #expect(cleared.readString(length: 3) == "new")
        }

        /// Freed mappings go back to the system beyond the few kept for reuse: 8,000 buffers of 32 KB held at once,
        /// then freed, are unmapped but for those kept (64, and a few more if others take kept ones meanwhile), and
        /// the live count falls back. (Counted by the
        /// allocator: the process's address space moves too much with other suites' threads running meanwhile.)
        @Test func freedMappingsGoBackToTheSystem() throws {
            let liveBefore = PageBackedAllocator.live
            let unmappedBefore = PageBackedAllocator.unmapped
            do {
                var buffers: [ByteBuffer] = []
                for round in 0..<8_000 {
                    var buffer = PageBackedAllocator.allocator.buffer(capacity: 32 * 1024)
                    buffer.writeInteger(UInt64(round))
                    buffers.append(buffer)
                }
                #expect(PageBackedAllocator.live - liveBefore > 7_900)
            }
            #expect(PageBackedAllocator.live - liveBefore < 100)
            #expect(PageBackedAllocator.cached <= PageBackedAllocator.cachedMappings)
            // Other suites' connections taking kept mappings meanwhile make room for a few more of these in the cache.
            #expect(PageBackedAllocator.unmapped - unmappedBefore >= 8_000 - PageBackedAllocator.cachedMappings - 100)
        }

        /// A kept mapping is handed out again (no system call per copy on write of a plaintext buffer).
        @Test func aFreedMappingIsKeptAndReused() {
            var addresses: Set<UInt> = []
            do {
                var buffers: [ByteBuffer] = []
                for _ in 0..<10 {
                    var buffer = PageBackedAllocator.allocator.buffer(capacity: 32 * 1024)
                    addresses.insert(Self.start(of: &buffer))
                    buffers.append(buffer)
                }
            }
            // Other suites' connections may take a kept mapping meanwhile.
            #expect(PageBackedAllocator.cached >= 5)
            var reused = 0
            for _ in 0..<10 {
                var buffer = PageBackedAllocator.allocator.buffer(capacity: 32 * 1024)
                if addresses.contains(Self.start(of: &buffer)) { reused += 1 }
            }
            #expect(reused >= 5)
        }

        /// The number of live mappings is bounded (Linux's `vm.max_map_count`): past `maximumMappings`, large buffers
        /// come from the heap.
        @Test func mappingsAreBounded() {
            var buffers: [ByteBuffer] = []
            buffers.reserveCapacity(PageBackedAllocator.maximumMappings + 16)
            for _ in 0..<(PageBackedAllocator.maximumMappings + 16) {
                buffers.append(PageBackedAllocator.allocator.buffer(capacity: 16 * 1024))
            }
            #expect(PageBackedAllocator.live <= PageBackedAllocator.maximumMappings)
            for index in buffers.indices.suffix(16) {
                #expect(!Self.isMapped(&buffers[index]))
            }
            buffers[buffers.count - 1].writeString("still a buffer")
            #expect(buffers[buffers.count - 1].readString(length: 14) == "still a buffer")
        }
    }
#endif
