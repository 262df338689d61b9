import NIOCore

/// Merges the small writes made between two flushes into one buffer, so that TLS seals one record and the socket
/// gets one write per flush, not one per packet: a group commit acknowledges many QoS 1 messages of a connection at
/// once, and each PUBACK (4 bytes) was a TLS record of its own (22 bytes of overhead, one AEAD seal, one
/// `context.write` through the TLS handler).
///
/// Every write of the channel passes through it in pipeline order, so the order of the bytes on the wire is the order
/// of the writes: a write too large to copy first sends what is merged, then goes itself. A write's promise
/// completes with the merged write it went out in. What is merged but not flushed when the channel closes is failed
/// with the close, as the TLS handler fails its unflushed writes.
final class WriteCoalescingHandler: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// Writes up to this size are copied into the merged buffer; larger ones go as they are.
    static let copyLimit = 2048
    /// At most one TLS record of plaintext (RFC 8446 §5.1) in one merged buffer.
    static let mergedLimit = 16 * 1024

    private var merged: ByteBuffer?
    /// Whether `merged` is a buffer of this handler's own (else it is the first write's, not to be written into).
    private var owned = false
    private var promises: [EventLoopPromise<Void>] = []

    init() {}

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let buffer = unwrapOutboundIn(data)
        guard buffer.readableBytes <= Self.copyLimit else {
            send(context)
            context.write(data, promise: promise)
            return
        }
        if let first = merged, first.readableBytes + buffer.readableBytes > Self.mergedLimit { send(context) }
        if merged == nil {
            merged = buffer
            owned = false
        } else {
            if !owned {
                var own = context.channel.allocator.buffer(capacity: 1024)
                own.writeImmutableBuffer(merged!)
                merged = own
                owned = true
            }
            merged!.writeImmutableBuffer(buffer)
        }
        if let promise { promises.append(promise) }
    }

    func flush(context: ChannelHandlerContext) {
        send(context)
        context.flush()
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        // Written, not flushed: the next handler fails it with the close, as it would have failed each write.
        send(context)
        context.close(mode: mode, promise: promise)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        send(context)
    }

    /// Passes on what is merged, with one promise for all the writes in it.
    private func send(_ context: ChannelHandlerContext) {
        guard let buffer = merged else { return }
        merged = nil
        owned = false
        guard !promises.isEmpty else {
            context.write(wrapOutboundOut(buffer), promise: nil)
            return
        }
        let waiting = promises
        promises = []
        if waiting.count == 1 {
            context.write(wrapOutboundOut(buffer), promise: waiting[0])
            return
        }
        let promise = context.eventLoop.makePromise(of: Void.self)
        for each in waiting { promise.futureResult.cascade(to: each) }
        context.write(wrapOutboundOut(buffer), promise: promise)
    }
}
