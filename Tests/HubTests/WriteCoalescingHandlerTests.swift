import Dispatch
import NIOCore
import NIOEmbedded
import NIOPosix
import Testing

@testable import Hub

#if canImport(Glibc)
    import Glibc
#endif

/// Small writes between two flushes leave as one buffer, in order; large ones keep their place; every promise is
/// kept; nothing is sent before a flush, and what is unflushed at a close fails.
@Suite struct WriteCoalescingHandlerTests {
    static func bytes(_ values: [UInt8]) -> ByteBuffer { ByteBuffer(bytes: values) }

    /// Everything the channel wrote to the "socket", one element per write that reached it.
    static func written(_ channel: EmbeddedChannel) throws -> [[UInt8]] {
        var out: [[UInt8]] = []
        while let buffer = try channel.readOutbound(as: ByteBuffer.self) { out.append(Array(buffer.readableBytesView)) }
        return out
    }

    @Test func smallWritesLeaveAsOneBufferAtTheFlush() throws {
        let channel = EmbeddedChannel(handler: WriteCoalescingHandler())
        var promises: [EventLoopFuture<Void>] = []
        for value in 0..<5 as Range<UInt8> {
            let promise = channel.eventLoop.makePromise(of: Void.self)
            channel.write(Self.bytes([0x40, 2, 0, value]), promise: promise)
            promises.append(promise.futureResult)
        }
        #expect(try Self.written(channel).isEmpty, "nothing goes before the flush")
        channel.flush()
        #expect(try Self.written(channel) == [(0..<5).flatMap { [0x40, 2, 0, UInt8($0)] }])
        for promise in promises { try promise.wait() }
        // The next flush starts a new buffer.
        channel.write(Self.bytes([1]), promise: nil)
        channel.flush()
        #expect(try Self.written(channel) == [[1]])
        #expect(try channel.finish().isClean)
    }

    @Test func aLargeWriteKeepsItsPlace() throws {
        let channel = EmbeddedChannel(handler: WriteCoalescingHandler())
        let large = [UInt8](repeating: 9, count: WriteCoalescingHandler.copyLimit + 1)
        channel.write(Self.bytes([1]), promise: nil)
        channel.write(Self.bytes([2]), promise: nil)
        channel.write(Self.bytes(large), promise: nil)
        channel.write(Self.bytes([3]), promise: nil)
        channel.flush()
        #expect(try Self.written(channel) == [[1, 2], large, [3]])
        // A merged buffer stays within one TLS record.
        let piece = [UInt8](repeating: 7, count: WriteCoalescingHandler.copyLimit)
        for _ in 0..<9 { channel.write(Self.bytes(piece), promise: nil) }
        channel.flush()
        let sizes = try Self.written(channel).map(\.count)
        #expect(
            sizes == [8 * piece.count, piece.count] && sizes.allSatisfy { $0 <= WriteCoalescingHandler.mergedLimit })
        #expect(try channel.finish().isClean)
    }

    /// Stands for the TLS handler below: keeps unflushed writes and fails them when the channel closes.
    final class FailsUnflushedOnClose: ChannelOutboundHandler {
        typealias OutboundIn = ByteBuffer
        var unflushed: [(ByteBuffer, EventLoopPromise<Void>?)] = []
        func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
            unflushed.append((unwrapOutboundIn(data), promise))
        }
        func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
            for (_, promise) in unflushed { promise?.fail(ChannelError.ioOnClosedChannel) }
            context.close(mode: mode, promise: promise)
        }
    }

    @Test func unflushedWritesFailWithTheClose() throws {
        let below = FailsUnflushedOnClose()
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandlers([below, WriteCoalescingHandler()])
        let first = channel.eventLoop.makePromise(of: Void.self)
        let second = channel.eventLoop.makePromise(of: Void.self)
        channel.write(Self.bytes([1]), promise: first)
        channel.write(Self.bytes([2]), promise: second)
        _ = try? channel.close().wait()
        #expect(below.unflushed.map { Array($0.0.readableBytesView) } == [[1, 2]])
        #expect(throws: (any Error).self) { try first.futureResult.wait() }
        #expect(throws: (any Error).self) { try second.futureResult.wait() }
    }
}

/// `FlushCoalescer` writes at once on the event loop, but never ahead of a write another thread handed the loop
/// before: the bytes leave in the order the writes were called.
@Suite struct FlushCoalescerTests {
    @Test func aWriteOnTheLoopWaitsForOneQueuedBeforeIt() throws {
        let pipe = try PipeChannel()
        let (loop, channel) = (pipe.loop, pipe.channel)
        defer {
            try? channel.close().wait()
            pipe.closeReadEnd()
        }
        let coalescer = FlushCoalescer(channel)
        let rounds = 50
        for round in 0..<rounds {
            let value = UInt8(round * 3 % 250)
            try loop.submit {
                coalescer.write(ByteBuffer(bytes: [value]))  // on the loop, nothing queued: at once
                // Another thread's write, called (and queued) while the loop is busy here...
                let called = DispatchSemaphore(value: 0)
                DispatchQueue.global().async {
                    coalescer.write(ByteBuffer(bytes: [value + 1]))
                    called.signal()
                }
                called.wait()
                // ...goes before this one, called after it.
                coalescer.write(ByteBuffer(bytes: [value + 2]))
            }.wait()
        }
        var received: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 512)
        while received.count < rounds * 3 {
            let count = read(pipe.readEnd, &chunk, chunk.count)
            #expect(count > 0)
            if count <= 0 { break }
            received += chunk.prefix(count)
        }
        var expected: [UInt8] = []
        for round in 0..<rounds {
            let value = UInt8(round * 3 % 250)
            expected += [value, value + 1, value + 2]
        }
        #expect(received == expected)
    }

    /// A close made through the coalescer is not overtaken: what was written before it goes out, nothing written
    /// after it does (on the loop at once, or queued from another thread while the loop is busy).
    @Test(arguments: [false, true])
    func nothingWrittenAfterACloseGoesOut(closeFromAnotherThread: Bool) throws {
        let pipe = try PipeChannel()
        defer { pipe.closeReadEnd() }
        let (loop, channel) = (pipe.loop, pipe.channel)
        let coalescer = FlushCoalescer(channel)
        try loop.submit {
            coalescer.write(ByteBuffer(bytes: [1]))
            if closeFromAnotherThread {
                let called = DispatchSemaphore(value: 0)
                DispatchQueue.global().async {
                    coalescer.close(after: ByteBuffer(bytes: [2]))
                    called.signal()
                }
                called.wait()
            } else {
                coalescer.close(after: ByteBuffer(bytes: [2]))
            }
            coalescer.write(ByteBuffer(bytes: [3]))
        }.wait()
        try channel.closeFuture.wait()
        let received = pipe.readToEnd()
        #expect(received == [1, 2])
    }

    /// Packets encoded into the shared buffer (PUBACKs) keep their place among the other writes, from the loop and
    /// from another thread, and go out before a close; nothing encoded after the close does.
    @Test func encodedPacketsKeepTheirPlace() throws {
        let pipe = try PipeChannel()
        defer { pipe.closeReadEnd() }
        let (loop, channel) = (pipe.loop, pipe.channel)
        let coalescer = FlushCoalescer(channel)
        try loop.submit {
            coalescer.write { $0.writeInteger(UInt8(1)) }  // into the shared buffer
            coalescer.write { $0.writeInteger(UInt8(2)) }
            let called = DispatchSemaphore(value: 0)
            DispatchQueue.global().async {
                coalescer.write(ByteBuffer(bytes: [3]))  // queued while the loop is busy here
                called.signal()
            }
            called.wait()
            coalescer.write { $0.writeInteger(UInt8(4)) }  // behind the queued write, not in the shared buffer
            coalescer.write(ByteBuffer(bytes: [5]))
            coalescer.close(after: ByteBuffer(bytes: [6]))
            coalescer.write { $0.writeInteger(UInt8(7)) }
        }.wait()
        try channel.closeFuture.wait()
        let received = pipe.readToEnd()
        #expect(received == [1, 2, 3, 4, 5, 6])
    }
}

/// A channel that writes into a pipe whose other end the test reads: what left the channel, byte for byte.
struct PipeChannel {
    let loop: any EventLoop
    let channel: any Channel
    let readEnd: Int32

    init() throws {
        var fds: [Int32] = [0, 0]
        try #require(pipe(&fds) == 0)
        // Close-on-exec: a child process another test starts must not inherit the write end, or the read to the
        // end would wait for that child to exit. (`pipe2` is not imported; a process started between the two calls
        // could still inherit it.)
        for fd in fds { try #require(fcntl(fd, F_SETFD, FD_CLOEXEC) == 0) }
        loop = MultiThreadedEventLoopGroup.singleton.next()
        channel = try NIOPipeBootstrap(group: loop).takingOwnershipOfDescriptor(output: fds[1]).wait()
        readEnd = fds[0]
    }

    /// Every byte written until the channel closed.
    func readToEnd() -> [UInt8] {
        var received: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16)
        while true {
            let count = read(readEnd, &chunk, chunk.count)
            if count < 0, errno == EINTR { continue }
            if count <= 0 { break }
            received += chunk.prefix(count)
        }
        return received
    }

    func closeReadEnd() { close(readEnd) }
}
