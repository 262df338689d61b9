import Foundation
import NIOCore
import Testing

@testable import Hub

#if canImport(Glibc)
    import Glibc
#endif

/// The MQTT connections' buffer allocator: large buffers are mappings resident only where written and gone when
/// freed; small ones stay on the heap; every size change keeps the bytes.
@Suite struct PageBackedAllocatorTests {
    static var page: Int { Int(sysconf(Int32(_SC_PAGESIZE))) }

    /// Where a buffer's storage starts (its reader index at 0).
    static func start(of buffer: inout ByteBuffer) -> UInt {
        buffer.withUnsafeMutableReadableBytes { UInt(bitPattern: $0.baseAddress!) }
    }

    /// The mapping behind a large buffer (its 16-byte header first) and how many of its pages are resident, or nil
    /// when the range is not mapped.
    static func residentPages(of buffer: inout ByteBuffer) -> (pages: Int, resident: Int)? {
        let start = Self.start(of: &buffer) - 16
        guard start % UInt(page) == 0 else { return nil }
        let pages = (buffer.capacity + 16 + page - 1) / page
        var vector = [UInt8](repeating: 0, count: pages)
        guard mincore(UnsafeMutableRawPointer(bitPattern: start), pages * page, &vector) == 0 else { return nil }
        return (pages, vector.filter { $0 & 1 == 1 }.count)
    }

    @Test func aLargeBufferIsAMappingResidentOnlyWhereWritten() throws {
        var buffers: [ByteBuffer] = []
        for _ in 0..<8 {
            // swift-nio-ssl's plaintext buffer is 32 KB; a device's record is a few hundred bytes.
            var buffer = PageBackedAllocator.allocator.buffer(capacity: 32 * 1024)
            buffer.writeBytes([UInt8](repeating: 0xA5, count: 300))
            let mapped = try #require(Self.residentPages(of: &buffer), "a 32 KB buffer is its own mapping")
            #expect(mapped.pages == 9)
            #expect(mapped.resident == 1)
            #expect(buffer.readBytes(length: 300) == [UInt8](repeating: 0xA5, count: 300))
            buffers.append(buffer)
        }
    }

    /// The process's address space in bytes (`VmSize`).
    static func addressSpace() throws -> Int {
        let status = try String(contentsOfFile: "/proc/self/status", encoding: .utf8)
        let line = try #require(status.split(separator: "\n").first { $0.hasPrefix("VmSize:") })
        return try #require(Int(line.split(separator: " ", omittingEmptySubsequences: true)[1])) * 1024
    }

    /// A freed mapping goes back to the system: 16,000 buffers of 32 KB made and freed one after the other leave the
    /// address space as it was (kept, they would add 576 MB; other tests running meanwhile add far less).
    @Test func freedMappingsGoBackToTheSystem() throws {
        let before = try Self.addressSpace()
        for round in 0..<16_000 {
            var buffer = PageBackedAllocator.allocator.buffer(capacity: 32 * 1024)
            buffer.writeInteger(UInt64(round))
            #expect(buffer.readInteger(as: UInt64.self) == UInt64(round))
        }
        #expect(try Self.addressSpace() - before < 300 << 20)
    }

    @Test func smallBuffersStayOnTheHeapAndGrowIntoAMapping() throws {
        var buffer = PageBackedAllocator.allocator.buffer(capacity: 256)
        var expected: [UInt8] = []
        // Heap → heap (realloc), heap → mapping, mapping → larger mapping: the bytes survive each move.
        for round in 0..<200 {
            let chunk = [UInt8](repeating: UInt8(truncatingIfNeeded: round), count: 997)
            buffer.writeBytes(chunk)
            expected += chunk
        }
        #expect(buffer.capacity >= PageBackedAllocator.threshold)
        #expect(Self.residentPages(of: &buffer) != nil)
        #expect(buffer.getBytes(at: 0, length: expected.count) == expected)
        // A copy on write into a fresh buffer of the same allocator keeps the bytes too.
        var copy = buffer
        copy.writeInteger(UInt8(1))
        #expect(copy.getBytes(at: 0, length: expected.count) == expected)
        #expect(buffer.readableBytes == expected.count)
    }

    @Test func anEmptyAndAZeroCapacityBufferWork() {
        var empty = PageBackedAllocator.allocator.buffer(capacity: 0)
        empty.writeString("x")
        #expect(empty.readString(length: 1) == "x")
    }
}
