import Agent
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The idle agent gives code it no longer runs back to the kernel (`WorkingSet`). The rule that keeps this safe: only
/// private, non-writable file mappings holding no page of their own are dropped; anything the process wrote, even
/// in a mapping that is read-only now (relocated data), is never touched.
struct WorkingSetTests {
    static let sample = """
        55d0c0a00000-55d0c0a10000 r--p 00000000 fe:00 1234                       /usr/bin/bulwark
        Size:                 64 kB
        Rss:                  64 kB
        Anonymous:             0 kB
        Swap:                  0 kB
        VmFlags: rd mr mw me
        55d0c0a10000-55d0c2a10000 r-xp 00010000 fe:00 1234                       /usr/bin/bulwark
        Size:              32768 kB
        Rss:               16816 kB
        Anonymous:             0 kB
        Swap:                  0 kB
        55d0c2a10000-55d0c2b00000 r--p 02010000 fe:00 1234                       /usr/bin/bulwark
        Rss:                 844 kB
        Anonymous:           844 kB
        55d0c2b00000-55d0c2d00000 rw-p 02100000 fe:00 1234                       /usr/bin/bulwark
        Rss:                1964 kB
        Anonymous:           236 kB
        55d0c2d00000-55d0c2e00000 rw-p 00000000 00:00 0                          [heap]
        Rss:                  16 kB
        Anonymous:            16 kB
        7f0000000000-7f0000100000 r-xp 00000000 00:00 0 
        Rss:                  12 kB
        Anonymous:            12 kB
        7f0000100000-7f0000200000 r--s 00000000 fe:00 99                         /dev/shm/shared
        Rss:                   8 kB
        Anonymous:             0 kB
        Swap:                  0 kB
        7f0000200000-7f0000300000 r-xp 00000000 fe:00 0                          /memfd:jit (deleted)
        Rss:                   8 kB
        Anonymous:             0 kB
        Swap:                  0 kB
        7f0000300000-7f0000400000 r-xp 00000000 fe:00 77                         /usr/lib/libswiftCore.so
        Rss:                   0 kB
        Anonymous:             0 kB
        Swap:                  0 kB
        7f0000400000-7f0000500000 r-xp 00000000 fe:00 78                         /usr/lib/libc.so.6
        Rss:                 560 kB
        7f0000500000-7f0000600000 ---p 00000000 fe:00 78                         /usr/lib/libc.so.6
        Rss:                   0 kB
        Anonymous:             0 kB
        Swap:                  0 kB
        7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0                          [vdso]
        Rss:                   8 kB
        Anonymous:             0 kB
        Swap:                  0 kB
        zz-not-a-mapping r-xp 0 fe:00 1 /x
        7f0000600000-7f0000700000 r-xp 00000000 fe:00 79                         /usr/lib/libm.so.6
        Rss:                 180 kB
        Anonymous:             0 kB
        Swap:                  0 kB
        7f0000800000-7f0000900000 r-xp 00000000 fe:00 80                         /usr/lib/libz.so.1
        Rss:                  24 kB
        Anonymous:             0 kB
        Swap:                  4 kB
        7f0000900000-7f0000a00000 r-xp 00000000 fe:00 81                         /opt/my app/libplugin.so (deleted)
        Rss:                  12 kB
        Anonymous:             0 kB
        Swap:                  0 kB
        7f0000a00000-7f0000b00000 r--p 00000000 00:01 2049                       /memfd:buffer (deleted)
        Rss:                  12 kB
        Anonymous:             0 kB
        Swap:                  0 kB
        7f0000b00000-7f0000c00000 r-xp 00000000 fe:00 82                         /usr/lib/libnoswapline.so
        Rss:                  12 kB
        Anonymous:             0 kB
        7f0000700000-7f0000800000 r--p 00000000 fe:00 500                        /var/lib/bulwark/data.bin
        Rss:                  40 kB
        Anonymous:             0 kB
        Swap:                  0 kB
        """

    @Test func onlyUnwrittenReadOnlyFileMappingsAreDroppable() {
        let droppable = WorkingSet.droppable(smaps: Array(Self.sample.utf8))
        #expect(
            droppable == [
                WorkingSet.Mapping(start: 0x55d0_c0a0_0000, end: 0x55d0_c0a1_0000, residentKiB: 64),
                WorkingSet.Mapping(start: 0x55d0_c0a1_0000, end: 0x55d0_c2a1_0000, residentKiB: 16816),
                WorkingSet.Mapping(start: 0x7f00_0060_0000, end: 0x7f00_0070_0000, residentKiB: 180),
                WorkingSet.Mapping(start: 0x7f00_0090_0000, end: 0x7f00_00a0_0000, residentKiB: 12),
            ])
        // Left alone: relocated read-only data (pages of its own), writable data, the heap, anonymous code, a shared
        // mapping, a mapping without an inode, nothing resident, a mapping whose smaps gives no Anonymous line (libc
        // here: unknown is not zero), a guard mapping, the vDSO, a malformed line, code with a page in swap (libz), a
        // mapping whose smaps gives no Swap line, a memfd, and a data file mapped read-only
        // (no executable mapping of it: it could be unmapped, and its addresses reused, while the trim runs).
    }

    #if os(Linux)
        /// The attack on the rule: a private mapping of this very executable that the process wrote and then made
        /// read-only looks like the program's read-only data (`r--p`, the file also mapped executable), as relocated
        /// data does. Dropping it would silently bring back the file's bytes. It must keep what was written; a data
        /// file's mapping stays; the C library's code is dropped and reads back the same.
        @Test func writtenPagesSurviveATrimAndDroppedPagesReadBackTheSame() throws {
            let path = try temporaryDirectory("working-set") + "/file"
            let size = 64 * 1024
            let bytes = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 7) }
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            let descriptor = open(path, O_RDONLY)
            try #require(descriptor >= 0)
            defer { close(descriptor) }

            // The executable, written, then read-only: the page the process wrote is its own (Anonymous > 0).
            let program = open("/proc/self/exe", O_RDONLY)
            try #require(program >= 0)
            defer { close(program) }
            let written = try #require(
                mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, program, 0).flatMap {
                    $0 == MAP_FAILED ? nil : $0
                })
            defer { munmap(written, size) }
            let original = Array(UnsafeRawBufferPointer(start: written, count: size))
            written.storeBytes(of: ~original[4096], toByteOffset: 4096, as: UInt8.self)
            _ = written.load(fromByteOffset: 0, as: UInt8.self)
            try #require(mprotect(written, size, PROT_READ) == 0)

            // Never written: every page the file's.
            let clean = try #require(
                mmap(nil, size, PROT_READ, MAP_PRIVATE, descriptor, 0).flatMap { $0 == MAP_FAILED ? nil : $0 })
            defer { munmap(clean, size) }
            for offset in stride(from: 0, to: size, by: 4096) { _ = clean.load(fromByteOffset: offset, as: UInt8.self) }
            #expect(Self.resident(clean) > 0)

            // Code: the C library's, where `memcpy` is.
            let code = try #require(dlsym(UnsafeMutableRawPointer(bitPattern: 0), "memcpy"))
            let codeBefore = Array(UnsafeRawBufferPointer(start: code, count: 256))
            #expect(Self.resident(code) > 0)

            let before = WorkingSet.residentKiB()
            let released = WorkingSet.trim()
            let after = WorkingSet.residentKiB()
            let codeResident = Self.resident(code)
            #expect(released > 0)
            #expect(after < before, "\(before) → \(after) KiB")
            // (Other tests run beside this one and fault pages back in: the C library's code only has to have lost
            // some of its pages.)
            #expect(codeResident >= 0 && codeResident < 1300, "\(codeResident) KiB of libc's code still resident")

            #expect(Self.resident(written) > 0, "a mapping holding a page the process wrote is left alone")
            #expect(written.load(fromByteOffset: 4096, as: UInt8.self) == ~original[4096])
            #expect(written.load(fromByteOffset: 4097, as: UInt8.self) == original[4097])
            #expect(Self.resident(clean) > 0, "a data file's read-only mapping is left alone")
            #expect(Array(UnsafeRawBufferPointer(start: clean, count: size)) == bytes)
            #expect(Array(UnsafeRawBufferPointer(start: code, count: 256)) == codeBefore)
        }

        /// The attack on paging out: a private, writable mapping of a file of this process's own, every page read and
        /// one written. The unwritten pages leave memory; the written one stays, with what was written; every byte
        /// reads back as before and the file is unchanged.
        @Test func pagingOutKeepsWrittenPagesAndGivesBackTheRest() throws {
            let path = try temporaryDirectory("working-set") + "/data"
            let size = 256 * 1024
            let bytes = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ 1) }
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            let descriptor = open(path, O_RDONLY)
            try #require(descriptor >= 0)
            defer { close(descriptor) }
            let mapping = try #require(
                mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, descriptor, 0).flatMap {
                    $0 == MAP_FAILED ? nil : $0
                })
            defer { munmap(mapping, size) }
            for offset in stride(from: 0, to: size, by: 4096) {
                _ = mapping.load(fromByteOffset: offset, as: UInt8.self)
            }
            mapping.storeBytes(of: ~bytes[8192 + 5], toByteOffset: 8192 + 5, as: UInt8.self)
            let before = Self.resident(mapping)
            #expect(before >= 200, "\(before) KiB resident before")

            let start = UInt(bitPattern: mapping)
            let advised = WorkingSet.pageOutUnwritten(start: start, end: start + UInt(size))
            let after = Self.resident(mapping)
            #expect(advised >= 240, "\(advised) KiB advised")
            #expect(after <= 8 && after >= 4, "\(after) KiB still resident: only the written page should be")

            var expected = bytes
            expected[8192 + 5] = ~bytes[8192 + 5]
            #expect(Array(UnsafeRawBufferPointer(start: mapping, count: size)) == expected)
            #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == Data(bytes))
        }

        /// The resident KiB of the mapping that holds `address`, from this process's smaps.
        static func resident(_ address: UnsafeRawPointer) -> Int {
            let target = UInt(bitPattern: address)
            // (Read to its end: procfs files have no size for Foundation to go by.)
            guard let data = try? FileHandle(forReadingFrom: URL(fileURLWithPath: "/proc/self/smaps")).readToEnd()
            else { return -1 }
            let smaps = String(decoding: data, as: UTF8.self)
            var inside = false
            for line in smaps.split(separator: "\n") {
                guard let first = line.first else { continue }
                if !first.isUppercase {  // a mapping's header (hex digits are lower case); fields are `Name:`
                    let range = line.prefix { $0 != " " }.split(separator: "-").compactMap { UInt($0, radix: 16) }
                    inside = range.count == 2 && range[0] <= target && target < range[1]
                } else if inside, line.hasPrefix("Rss:") {
                    return Int(line.split(separator: " ")[1]) ?? -1
                }
            }
            return -1
        }
    #endif
}
