@_spi(CustomByteBufferAllocator) import NIOCore
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A `ByteBufferAllocator` for held connections whose large buffers are their own anonymous mappings: a page of
/// them is resident only once written, and all of it goes back to the system when the buffer is freed.
///
/// Why: swift-nio-ssl gives every connection a 32 KB plaintext buffer and a 16 KB outbound buffer for its whole life
/// (`NIOSSLHandler.handlerAdded`, `ByteBufferBIO.init`), and an MQTT device's records use the first few hundred
/// bytes of each. From the C heap, such a block is resident wherever the heap ever wrote before (a freed connection's
/// buffers, a burst's messages): the heap profile of 4,000 held connections put 48 KB per connection in these two,
/// most of the hub's memory for them. Mapped, an idle connection's two buffers cost the pages its records touched.
///
/// Smaller buffers (received bytes, encoded packets) stay on the C heap. Every block carries a 16-byte header
/// saying which it is and, for a mapping, its length (`deallocate` gets no size). Bounds:
/// - at most `maximumMappings` live mappings (Linux refuses a process more than `vm.max_map_count` regions, 65,530
///   by default, and a split region needs one more to unmap); past it, the heap;
/// - only where a page is at most 4 KiB (with 16 or 64 KiB pages the first page, always written, costs more than
///   the heap would);
/// - freed mappings are kept for reuse, up to `cachedMappings`, so that a buffer copied on write per record (a
///   packet split over two TLS records keeps the plaintext buffer referenced) costs no system call; a kept mapping
///   keeps only the pages that were written.
enum PageBackedAllocator {
    /// Buffers of at least this many bytes are mapped.
    static let threshold = 12 * 1024
    static let maximumMappings = 24_576
    static let cachedMappings = 64

    static let allocator = ByteBufferAllocator(
        allocate: pbAllocate, reallocate: pbReallocate, deallocate: pbDeallocate, copy: pbCopy)

    /// Mappings handed out and not freed, and freed ones kept for reuse.
    static var live: Int { mappings.withLock { $0.live } }
    static var cached: Int { mappings.withLock { $0.free.count } }
    /// Mappings given back to the system since the process started.
    static var unmapped: Int { unmappedCount.load(ordering: .relaxed) }

    /// Whether a buffer's storage (`pointer`: its first byte) is a mapping of this allocator.
    static func isMapped(_ pointer: UnsafeRawPointer) -> Bool {
        (pointer - headerBytes).load(as: UInt64.self) == mappedTag
    }
}

private struct Mappings {
    var live = 0
    /// Freed mappings kept for reuse: base address (never 0: each came from a successful `mmap`) and length.
    var free: [(UInt, Int)] = []
}

private let mappings = Mutex(Mappings())
private let unmappedCount = Atomic(0)

private let headerBytes = 16
private let heapTag: UInt64 = 0x6865_6170  // "heap"
private let mappedTag: UInt64 = 0x6D61_7070  // "mapp"
private let pageBytes = Int(sysconf(Int32(_SC_PAGESIZE)))

private func mappedLength(_ size: Int) -> Int {
    (size + headerBytes + pageBytes - 1) / pageBytes * pageBytes
}

/// The header in front of the user's bytes: tag, then the mapping's length (0 on the heap).
private func header(_ user: UnsafeMutableRawPointer) -> UnsafeMutableRawPointer { user - headerBytes }

/// Where a mapped buffer comes from.
private enum MappingSource {
    /// A kept mapping of the length asked for (its base address).
    case kept(UInt)
    /// A new mapping (counted as live already).
    case new
    /// None: at the bound of live mappings.
    case none
}

private func mapped(_ size: Int) -> UnsafeMutableRawPointer? {
    guard pageBytes <= 4096 else { return nil }
    let length = mappedLength(size)
    // A kept mapping of this length, or room for one more.
    let source = mappings.withLock { state -> MappingSource in
        if let index = state.free.lastIndex(where: { $0.1 == length }) {
            state.live += 1
            return .kept(state.free.remove(at: index).0)
        }
        guard state.live < PageBackedAllocator.maximumMappings else { return .none }
        state.live += 1
        return .new
    }
    switch source {
    case .none: return nil
    case .kept(let address): return UnsafeMutableRawPointer(bitPattern: address)! + headerBytes
    case .new: break
    }
    guard let base = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
        base != MAP_FAILED
    else {
        mappings.withLock { $0.live -= 1 }
        return nil
    }
    #if os(Linux)
        // Adjacent mappings merge into one region; with transparent huge pages set to `always`, a fault there could
        // make 2 MiB resident at once (or khugepaged collapse it later), which would defeat the point.
        _ = madvise(base, length, MADV_NOHUGEPAGE)
    #endif
    base.storeBytes(of: mappedTag, as: UInt64.self)
    base.storeBytes(of: UInt64(length), toByteOffset: 8, as: UInt64.self)
    return base + headerBytes
}

private func unmap(_ base: UnsafeMutableRawPointer) {
    let length = Int(base.load(fromByteOffset: 8, as: UInt64.self))
    let kept = mappings.withLock { state in
        state.live -= 1
        guard state.free.count < PageBackedAllocator.cachedMappings else { return false }
        state.free.append((UInt(bitPattern: base), length))
        return true
    }
    guard !kept else { return }
    // Should the system refuse (no region left to split one), its pages at least go back.
    if munmap(base, length) == 0 {
        unmappedCount.add(1, ordering: .relaxed)
    } else {
        _ = madvise(base, length, MADV_DONTNEED)
    }
}

private func onHeap(_ size: Int) -> UnsafeMutableRawPointer? {
    guard let base = malloc(size + headerBytes) else { return nil }
    base.storeBytes(of: heapTag, as: UInt64.self)
    base.storeBytes(of: 0, toByteOffset: 8, as: UInt64.self)
    return base + headerBytes
}

private func pbAllocate(_ size: Int) -> UnsafeMutableRawPointer? {
    size >= PageBackedAllocator.threshold ? (mapped(size) ?? onHeap(size)) : onHeap(size)
}

private func pbDeallocate(_ user: UnsafeMutableRawPointer) {
    let base = header(user)
    if base.load(as: UInt64.self) == mappedTag {
        unmap(base)
    } else {
        free(base)
    }
}

private func pbReallocate(_ user: UnsafeMutableRawPointer?, _ oldSize: Int, _ newSize: Int) -> UnsafeMutableRawPointer?
{
    guard let user else { return pbAllocate(newSize) }
    let base = header(user)
    let isMapped = base.load(as: UInt64.self) == mappedTag
    if !isMapped, newSize < PageBackedAllocator.threshold {
        return realloc(base, newSize + headerBytes).map { $0 + headerBytes }
    }
    if isMapped, Int(base.load(fromByteOffset: 8, as: UInt64.self)) >= mappedLength(newSize) { return user }
    guard let moved = pbAllocate(newSize) else { return nil }
    moved.copyMemory(from: user, byteCount: min(oldSize, newSize))
    pbDeallocate(user)
    return moved
}

private func pbCopy(_ destination: UnsafeMutableRawPointer, _ source: UnsafeRawPointer, _ count: Int) {
    destination.copyMemory(from: source, byteCount: count)
}
