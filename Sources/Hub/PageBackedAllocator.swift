@_spi(CustomByteBufferAllocator) import NIOCore

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
/// saying which it is and, for a mapping, its length (`deallocate` gets no size).
enum PageBackedAllocator {
    /// Buffers of at least this many bytes are mapped.
    static let threshold = 12 * 1024

    static let allocator = ByteBufferAllocator(
        allocate: pbAllocate, reallocate: pbReallocate, deallocate: pbDeallocate, copy: pbCopy)
}

private let headerBytes = 16
private let heapTag: UInt64 = 0x6865_6170  // "heap"
private let mappedTag: UInt64 = 0x6D61_7070  // "mapp"
private let pageBytes = Int(sysconf(Int32(_SC_PAGESIZE)))

private func mappedLength(_ size: Int) -> Int {
    (size + headerBytes + pageBytes - 1) / pageBytes * pageBytes
}

/// The header in front of the user's bytes: tag, then the mapping's length (0 on the heap).
private func header(_ user: UnsafeMutableRawPointer) -> UnsafeMutableRawPointer { user - headerBytes }

private func mapped(_ size: Int) -> UnsafeMutableRawPointer? {
    let length = mappedLength(size)
    guard let base = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
        base != MAP_FAILED
    else { return nil }
    base.storeBytes(of: mappedTag, as: UInt64.self)
    base.storeBytes(of: UInt64(length), toByteOffset: 8, as: UInt64.self)
    return base + headerBytes
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
        munmap(base, Int(base.load(fromByteOffset: 8, as: UInt64.self)))
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
