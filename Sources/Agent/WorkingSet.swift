import CWorkingSet

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// The agent process's working set: code and read-only data it touched once (start-up, configuration, the first TLS
/// handshake, TUF's first refresh) are given back to the kernel once it is connected and idle, so that its resident
/// memory is what it keeps using (issue: "agent idle RSS ≤ 15 MiB").
///
/// Why this is needed: the kernel maps file pages around each page fault (`fault_around_bytes`, 64 KiB), so a
/// process that ran a little code in many places holds most of its 35 MB of code resident long after it stopped
/// using it: measured, 38 of the idle agent's 44 MiB of RSS were clean pages of code from the binary, the Swift
/// runtime and Foundation, and 4 MiB its own data.
///
/// What is given back, where two independent rules agree:
/// - `/proc/self/smaps` (proc(5)): private mappings of files that are not writable (`r-xp` code, `r--p` read-only
///   data), hold no page of their own in memory or in swap (`Anonymous: 0 kB`, `Swap: 0 kB`: nothing written there,
///   not even a debugger's breakpoint), of a file also mapped executable;
/// - the dynamic linker's own list (`dl_iterate_phdr`): the read-only load segments (PT_LOAD without PF_W) of the
///   objects it has loaded. Relocated read-only data (PT_GNU_RELRO) lies in a writable segment and is never touched.
///   The `madvise` calls run inside its callback, under the loader's lock, so no object can be closed and its
///   addresses reused meanwhile, and an object still being opened is not listed yet (C, `CWorkingSet`).
/// Every page left is then the file's page, so `madvise(MADV_DONTNEED)` only drops this process's mapping of it: the
/// next access maps it again from the page cache (a minor fault), with the same contents (madvise(2)). No heap,
/// stack or data file is touched.
///
/// The writable load segments are never dropped: a page another thread writes between any check and the call would
/// lose what it wrote. Their pages that are still the file's (present and a file page in `/proc/self/pagemap`: never
/// written) are *paged out* instead (`MADV_PAGEOUT`, Linux 5.4), which never loses data: a page written meanwhile is
/// the process's own then, kept (or swapped). That is most of Swift's type metadata and conformance records: the
/// compiler marks some of them writable, so the linker puts all of `.rodata` in the writable segment (1.7 MB here),
/// and start-up reads it all. The kernel pages out only the pages no other process maps, and only for a process
/// that owns the program's file or may write it (madvise(2)): an agent running as root, or as the owner of its
/// binary; otherwise they stay. Pages that left memory this way are read from storage again on their next use. Then
/// glibc's `malloc_trim` returns the heap's free pages.
public enum WorkingSet {
    /// One mapping that may be dropped: its address range and its resident size.
    public struct Mapping: Sendable, Equatable {
        public let start: UInt
        public let end: UInt
        public let residentKiB: Int

        public init(start: UInt, end: UInt, residentKiB: Int) {
            self.start = start
            self.end = end
            self.residentKiB = residentKiB
        }
    }

    /// The mappings of an smaps text that hold only the file's own pages and cannot be written: private, not
    /// writable, backed by a file (an absolute path and an inode) that is also mapped executable, no anonymous page,
    /// something resident. Pure.
    public static func droppable(smaps: some Collection<UInt8>) -> [Mapping] {
        var found: [(mapping: Mapping, file: [UInt8])] = []
        var executables: Set<[UInt8]> = []
        var candidate: Header?
        var resident = 0
        var anonymous = 0
        var sawAnonymous = false
        var swapped = 0
        var sawSwap = false
        func close() {
            if let header = candidate {
                if header.executable { executables.insert(header.file) }
                if sawAnonymous, anonymous == 0, sawSwap, swapped == 0, resident > 0 {
                    found.append(
                        (Mapping(start: header.start, end: header.end, residentKiB: resident), header.file))
                }
            }
            candidate = nil
        }
        for line in smaps.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: true) {
            guard let first = line.first else { continue }
            if isHex(first) {
                close()
                candidate = header(Array(line))
                resident = 0
                anonymous = 0
                sawAnonymous = false
                swapped = 0
                sawSwap = false
            } else if candidate != nil {
                if let value = field("Rss:", line) {
                    resident = value
                } else if let value = field("Anonymous:", line) {
                    anonymous = value
                    sawAnonymous = true
                } else if let value = field("Swap:", line) {
                    swapped = value
                    sawSwap = true
                }
            }
        }
        close()
        return found.filter { executables.contains($0.file) }.map(\.mapping)
    }

    struct Header {
        let start: UInt
        let end: UInt
        let executable: Bool
        /// The device and inode, which name the file.
        let file: [UInt8]
    }

    /// `START-END PERMS OFFSET DEV INODE PATH`: the mapping when it is private, readable, not writable, and maps a
    /// file by its absolute path with a non-zero inode; nil otherwise (or when the line is malformed).
    static func header(_ line: [UInt8]) -> Header? {
        let fields = line.split(separator: UInt8(ascii: " "), maxSplits: 5, omittingEmptySubsequences: true)
        guard fields.count == 6 else { return nil }
        let range = fields[0].split(separator: UInt8(ascii: "-"))
        let permissions = Array(fields[1])
        guard range.count == 2, let start = hex(range[0]), let end = hex(range[1]), start < end,
            permissions.count == 4, permissions[0] == UInt8(ascii: "r"), permissions[1] == UInt8(ascii: "-"),
            permissions[3] == UInt8(ascii: "p"),
            let inode = decimal(fields[4]), inode != 0,
            fields[5].drop(while: { $0 == UInt8(ascii: " ") }).first == UInt8(ascii: "/")
        else { return nil }
        return Header(
            start: start, end: end, executable: permissions[2] == UInt8(ascii: "x"),
            file: Array(fields[3]) + [UInt8(ascii: " ")] + Array(fields[4]))
    }

    /// Drops what both rules allow, pages out the writable segments' unwritten pages and returns the heap's free
    /// pages; the KiB of address space dropped plus the KiB paged out. Linux with
    /// glibc only (elsewhere: nothing, 0). What it drops is mapped again on use.
    @discardableResult
    public static func trim() -> Int {
        #if os(Linux) && canImport(Glibc)
            guard let smaps = readAll("/proc/self/smaps") else { return 0 }
            let allowed = droppable(smaps: smaps).map { bulwark_range(start: $0.start, end: $0.end) }
            let advised = allowed.withUnsafeBufferPointer {
                bulwark_drop_readonly_segments($0.baseAddress, $0.count)
            }
            let pagedOut = bulwark_page_out_writable_segments()
            let released = max(0, advised / 1024) + max(0, pagedOut / 1024)
            // glibc's `malloc_trim(0)` (malloc.h, which the Glibc module does not export); absent on other C libraries.
            if let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "malloc_trim") {
                _ = unsafeBitCast(symbol, to: (@convention(c) (Int) -> Int32).self)(0)
            }
            return released
        #else
            return 0
        #endif
    }

    /// Pages out the pages in [start, end) that are still the file's own page of a private mapping (never written);
    /// the KiB that left memory. Linux with glibc only (elsewhere: nothing, 0).
    @discardableResult
    public static func pageOutUnwritten(start: UInt, end: UInt) -> Int {
        #if os(Linux) && canImport(Glibc)
            max(0, bulwark_page_out_file_pages(start, end) / 1024)
        #else
            0
        #endif
    }

    /// This process's resident set in KiB (`VmRSS` of `/proc/self/status`), 0 where there is none.
    public static func residentKiB() -> Int {
        guard let status = readAll("/proc/self/status") else { return 0 }
        for line in status.split(separator: UInt8(ascii: "\n")) {
            if let value = field("VmRSS:", line) { return value }
        }
        return 0
    }

    private static func isHex(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains(byte)
    }

    private static func hex(_ digits: some Collection<UInt8>) -> UInt? {
        guard !digits.isEmpty, digits.count <= 16 else { return nil }
        var value: UInt = 0
        for digit in digits {
            switch digit {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): value = value << 4 | UInt(digit - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): value = value << 4 | UInt(digit - UInt8(ascii: "a") + 10)
            default: return nil
            }
        }
        return value
    }

    private static func decimal(_ digits: some Collection<UInt8>) -> UInt64? {
        guard !digits.isEmpty, digits.count <= 19 else { return nil }
        var value: UInt64 = 0
        for digit in digits {
            guard (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(digit) else { return nil }
            value = value * 10 + UInt64(digit - UInt8(ascii: "0"))
        }
        return value
    }

    /// `NAME   1234 kB` → 1234 when the line starts with `name`.
    private static func field(_ name: StaticString, _ line: some Collection<UInt8>) -> Int? {
        let prefix = UnsafeRawBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount)
        guard line.count > prefix.count, line.starts(with: prefix) else { return nil }
        let digits = line.dropFirst(prefix.count).drop(while: { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\t") })
            .prefix(while: { (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) })
        return decimal(digits).map { Int($0) }
    }

    private static func readAll(_ path: String) -> [UInt8]? {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { return nil }
        defer { close(descriptor) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65_536)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            if count < 0, errno == EINTR { continue }
            guard count > 0 else { break }
            bytes.append(contentsOf: chunk[0..<count])
        }
        return bytes
    }
}
