import NIOCore
import NIOPosix
import Synchronization

/// A channel on a real event loop that takes every write and keeps none, for tests that give the broker a
/// connection without a socket. The broker writes from its own executor, so its channel must be safe to use from
/// any thread: an `EmbeddedChannel` is not (NIO prints an API-misuse error each time and says a future version will
/// crash, and `SWIFTNIO_STRICT`, which `scripts/test` sets, crashes now). Every operation goes through the pipeline,
/// which hops to the loop; whether it is open, which other threads read, is locked. A channel not closed is kept (the
/// pipeline and the channel hold each other, as with any NIO channel until it closes); should one be freed open, its
/// close future fails then (a promise freed unfulfilled traps in a debug build).
final class DiscardingChannel: Channel, ChannelCore, @unchecked Sendable {
    let eventLoop: any EventLoop
    let allocator = ByteBufferAllocator()
    private let closePromise: EventLoopPromise<Void>
    private var _pipeline: ChannelPipeline!
    private let open = Mutex(true)

    init(on eventLoop: any EventLoop = MultiThreadedEventLoopGroup.singleton.next()) {
        self.eventLoop = eventLoop
        closePromise = eventLoop.makePromise()
        _pipeline = ChannelPipeline(channel: self)
    }

    deinit {
        if isActive { closePromise.fail(ChannelError.alreadyClosed) }
    }

    var closeFuture: EventLoopFuture<Void> { closePromise.futureResult }
    var pipeline: ChannelPipeline { _pipeline }
    var localAddress: SocketAddress? { nil }
    var remoteAddress: SocketAddress? { nil }
    var parent: (any Channel)? { nil }
    var isWritable: Bool { isActive }
    var isActive: Bool { open.withLock { $0 } }
    var _channelCore: any ChannelCore { self }
    var syncOptions: (any NIOSynchronousChannelOptions)? { nil }

    func setOption<Option: ChannelOption>(_ option: Option, value: Option.Value) -> EventLoopFuture<Void> {
        eventLoop.makeFailedFuture(ChannelError.operationUnsupported)
    }

    func getOption<Option: ChannelOption>(_ option: Option) -> EventLoopFuture<Option.Value> {
        eventLoop.makeFailedFuture(ChannelError.operationUnsupported)
    }

    func localAddress0() throws -> SocketAddress { throw ChannelError.operationUnsupported }
    func remoteAddress0() throws -> SocketAddress { throw ChannelError.operationUnsupported }
    func register0(promise: EventLoopPromise<Void>?) { promise?.succeed() }
    func registerAlreadyConfigured0(promise: EventLoopPromise<Void>?) { promise?.succeed() }
    func bind0(to: SocketAddress, promise: EventLoopPromise<Void>?) { promise?.fail(ChannelError.operationUnsupported) }

    func connect0(to: SocketAddress, promise: EventLoopPromise<Void>?) {
        promise?.fail(ChannelError.operationUnsupported)
    }

    func write0(_ data: NIOAny, promise: EventLoopPromise<Void>?) {
        if isActive { promise?.succeed() } else { promise?.fail(ChannelError.ioOnClosedChannel) }
    }

    func flush0() {}
    func read0() {}

    func close0(error: any Error, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        let wasOpen = open.withLock { open in
            defer { open = false }
            return open
        }
        guard wasOpen else {
            promise?.fail(ChannelError.alreadyClosed)
            return
        }
        removeHandlers(pipeline: pipeline)  // the pipeline lets go of the channel: no cycle is left
        promise?.succeed()
        closePromise.succeed()
    }

    func triggerUserOutboundEvent0(_ event: Any, promise: EventLoopPromise<Void>?) { promise?.succeed() }
    func channelRead0(_ data: NIOAny) {}
    func errorCaught0(error: any Error) {}
}
