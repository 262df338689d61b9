import MQTT
import NIOCore
import NIOSSL
import NIOTLS
import Synchronization

/// A session whose connection has nothing queued: no task runs for it until its inbox has something (a packet, an
/// error, the end), and then `resume` starts one.
protocol ParkedSession: AnyObject, Sendable {
    func resume()
    /// Whether `handleNow` takes the packet glanced at (a device's QoS 0 or 1 PUBLISH, a PINGREQ); if not, it is
    /// queued for the session's next turn, as are the ones after it. Changes nothing.
    func handlesNow(_ packet: PacketGlance) -> Bool
    /// Handles `packet`, which `handlesNow` accepted just before, at once, on the channel's event loop, without
    /// waiting. Called only while the session is parked with nothing queued, so no turn runs and it has the session
    /// to itself. The packet is moved in (`consuming`): one borrowed and then copied into the session rules had each
    /// of its references retained and released once more.
    func handleNow(_ packet: consuming Packet) -> HandledNow
}

extension ParkedSession {
    func handleNow(_ packet: consuming Packet) -> HandledNow { preconditionFailure("handlesNow said no") }
}

/// What `ParkedSession.handlesNow` decides on: a packet's kind, and a PUBLISH's flags. Read where the packet lies in
/// the read: a packet handed to a call the compiler cannot see into was copied first (each of its references
/// retained, and released after the call), and `handlesNow` is called on a protocol.
enum PacketGlance {
    case publish(qos: QoS, retain: Bool, duplicate: Bool)
    case pingreq, disconnect, other

    @inline(__always)
    init(_ packet: borrowing Packet) {
        if let flags = packet.publishFlags {
            self = .publish(qos: flags.qos, retain: flags.retain, duplicate: flags.duplicate)
            return
        }
        switch packet {
        case .pingreq: self = .pingreq
        case .disconnect: self = .disconnect
        default: self = .other
        }
    }

    /// A PUBLISH's QoS and its RETAIN and DUP flags; nil for any other packet.
    var publishFlags: (qos: QoS, retain: Bool, duplicate: Bool)? {
        guard case .publish(let qos, let retain, let duplicate) = self else { return nil }
        return (qos, retain, duplicate)
    }
}

/// What `ParkedSession.handleNow` did with a packet.
enum HandledNow {
    /// All of it.
    case done
    /// Its synchronous part; the session's next turn must run (at once) to finish it, before the packets after it.
    case doneWithTurn
}

/// A connection's inbound side, in place of `NIOAsyncChannel` and `ByteToMessageHandler`: it decodes each read
/// (`MQTTBatchDecoder`, called as `ByteToMessageHandler` calls it) and queues its packets, and the connection takes
/// them one at a time. One handler rather than two: a held connection keeps one object and one context for it.
/// While the connection is opening, a task waits for its CONNECT (`next`); once its session is attached, a task runs
/// only while something is queued (`take(orPark:)`): a held connection that sends nothing has no task, so it keeps
/// no task, no async frames and no stream state. A read that finds the session parked with nothing queued is first
/// offered to it on the event loop (`ParkedSession.handleNow`): what it handles there needs no task at all.
///
/// The order is the decoder's: the packets of a read, then (once they are taken) its error or the end of the
/// channel; nothing after either. Back-pressure as `NIOAsyncChannel` gave it with a watermark of one batch: the
/// channel's reads are held while the latest read's packets wait untouched, and released when the connection takes
/// the first of them, so the next read (on the event loop) overlaps the handling of this one's packets.
final class ConnectionInbox: ChannelDuplexHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer

    /// What `take(orPark:)` found.
    enum Taken {
        case packet(Packet)
        /// Nothing queued: the session is parked and resumes on the next event.
        case parked
        /// The channel has ended (after every packet it delivered).
        case ended
    }

    private struct State {
        var packets: [Packet] = []
        var next = 0
        /// The first error of the channel (a malformed packet, TLS), handed on after the packets before it.
        var failure: (any Error)?
        var ended = false
        /// A task waiting in `next`.
        var waiter: CheckedContinuation<Packet?, any Error>?
        var parked: (any ParkedSession)?
        /// Where the latest read's packets start in `packets`, until the connection takes the first of them.
        var latestRead: Int?
        /// A read the channel asked for while the latest read's packets waited.
        var readHeld = false

        var hasEvent: Bool { next < packets.count || failure != nil || ended }

        /// The next packet, then the failure or the end; nil when nothing is queued. `resumeRead` when the queue
        /// just emptied with a read held.
        mutating func take() -> (Result<Packet?, any Error>?, resumeRead: Bool) {
            guard next < packets.count else {
                if let failure { return (.failure(failure), false) }
                return (ended ? .success(nil) : nil, false)
            }
            let packet = packets[next]
            var resume = false
            if let latestRead, next >= latestRead {
                self.latestRead = nil
                resume = readHeld
                readHeld = false
            }
            next += 1
            if next == packets.count {
                packets = []
                next = 0
            } else {
                packets[next - 1] = .pingreq  // the packet leaves the queue as it is taken
            }
            return (.success(packet), resume)
        }

        /// Queues a read's packets (nothing after the channel's error or end).
        mutating func enqueue(_ batch: [Packet]) {
            guard !batch.isEmpty, failure == nil, !ended else { return }
            if next == packets.count {
                packets = batch
                next = 0
                latestRead = 0
            } else {
                // The taken packets' slots go first: a client that keeps one packet ahead of the connection must not
                // grow the queue with every packet it ever sent.
                packets.removeSubrange(0..<next)
                next = 0
                latestRead = packets.count
                packets.append(contentsOf: batch)
            }
        }
    }

    /// Inline in the inbox (a `Mutex`, not a boxed lock: one allocation less for every held connection).
    private let state = Mutex(State())
    private let eventLoop: any EventLoop
    /// Set and read on the event loop only.
    private var context: ChannelHandlerContext?
    /// The keep-alive the connection is held to (1.5 × the one agreed in CONNECT or CONNACK) and the sweep that
    /// checks it; nil without one. On the event loop only.
    private var keepAlive: (timeout: TimeAmount, sweep: KeepAliveSweep)?
    /// When the last packet arrived (or the keep-alive started). On the event loop only.
    private var lastPacket = NIODeadline.uptimeNanoseconds(0)
    /// The connection's decoder, the bytes of a packet not yet complete, and whether decoding stopped (nothing is
    /// decoded after an error, or once the connection is closed for its silence). On the event loop only.
    private var decoder: MQTTBatchDecoder
    private var partial: ByteBuffer?
    private var decodingStopped = false
    /// More unread bytes than this are refused, as `ByteToMessageHandler`'s `maximumBufferSize` (the decoder refuses
    /// a packet larger than its maximum from its header, before its bytes are buffered).
    private let maximumBufferSize: Int

    init(eventLoop: any EventLoop, decoder: MQTTDecoder, maximumBufferSize: Int) {
        self.eventLoop = eventLoop
        self.decoder = MQTTBatchDecoder(decoder)
        self.maximumBufferSize = maximumBufferSize
    }

    // MARK: The channel's side (on its event loop)

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        stopKeepAlive()
        deliver { $0.ended = true }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !decodingStopped else { return }
        var buffer = unwrapInboundIn(data)
        if var partial {
            self.partial = nil
            partial.writeBuffer(&buffer)
            buffer = partial
        }
        // Every complete packet of the read (one batch, unless an error follows some of them), then its error:
        // `MQTTBatchDecoder` is called until it returns nothing or the buffer is empty, as `ByteToMessageHandler`
        // calls it (the decoder is fuzzed called so).
        var batch: [Packet] = []
        var failure: (any Error)?
        do {
            while buffer.readableBytes > 0, let packets = try decoder.decode(buffer: &buffer) {
                if batch.isEmpty { batch = packets } else { batch += packets }
            }
            if buffer.readableBytes > maximumBufferSize { throw ByteToMessageDecoderError.PayloadTooLargeError() }
            if buffer.readableBytes > 0 { partial = buffer }
        } catch {
            decodingStopped = true
            failure = error
        }
        // MQTT §3.1.2.10: a control packet, not a byte, keeps the connection (a client trickling an incomplete
        // packet does not).
        guard !batch.isEmpty || failure != nil else { return }
        if keepAlive != nil, !batch.isEmpty { lastPacket = eventLoop.now }
        var turn = false
        // A parked session with nothing queued handles what it can of the read at once, here (no task, no thread
        // switch: a device's common QoS 0 and QoS 1 PUBLISH); the first packet it cannot, and all after it, are
        // queued. Each packet it handles is moved out of the read, reversed so that it is taken from the end
        // (reversed in its buffer: `Array.reverse` swapped by copies, retaining and releasing each packet).
        let session = batch.isEmpty ? nil : unparkedForNow()
        if let session, Self.handles(session, batch, at: 0) {
            batch.withUnsafeMutableBufferPointer { $0.reverse() }
            // Each packet checked once: the first above, each next one after the one before it is handled.
            repeat {
                if case .doneWithTurn = session.handleNow(batch.removeLast()) {
                    turn = true
                    break
                }
            } while !batch.isEmpty && Self.handles(session, batch, at: batch.count - 1)
            batch.withUnsafeMutableBufferPointer { $0.reverse() }
        }
        deliver(resuming: turn) { state in
            if let session { state.parked = session }
            // The read's own array, what is left of it (no copy).
            if !batch.isEmpty { state.enqueue(batch) }
            if let failure, state.failure == nil, !state.ended { state.failure = failure }
        }
    }

    /// Whether `session` takes the read's packet at `index` now (glanced at where it lies: `PacketGlance`).
    private static func handles(_ session: any ParkedSession, _ batch: [Packet], at index: Int) -> Bool {
        session.handlesNow(PacketGlance(batch[index]))
    }

    /// The parked session, taken out of the inbox while the event loop hands it packets (`handleNow`), when nothing
    /// is queued before them; nil otherwise. Everything that could queue an event or resume a turn meanwhile runs on
    /// this event loop, so the session is parked again (in the same lock as the read's rest is queued, and resumed
    /// if anything is queued) before any turn can start.
    private func unparkedForNow() -> (any ParkedSession)? {
        state.withLock { state in
            guard let parked = state.parked, !state.hasEvent else { return nil }
            state.parked = nil
            return parked
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        deliver { state in
            if state.failure == nil, !state.ended { state.failure = error }
        }
    }

    /// The handshake read 512 bytes at a time (the listener's receive allocator), so that a held connection keeps a
    /// small receive buffer; from here the buffer adapts to the traffic (a device sending telemetry in bursts).
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted = event as? TLSUserEvent {
            try? context.channel.syncOptions?.setOption(
                .recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 512, maximum: 65536))
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        stopKeepAlive()
        deliver { $0.ended = true }
        context.fireChannelInactive()
    }

    // MARK: Keep-alive (MQTT 3.1.1 §3.1.2.10, MQTT 5.0 §3.1.2.10)

    /// Holds the connection to `timeout` from now on: `sweep` closes it once no packet arrived for longer. Nothing
    /// when the channel has already closed.
    func startKeepAlive(timeout: TimeAmount, sweep: KeepAliveSweep) -> EventLoopFuture<Void> {
        eventLoop.submit { [self] in
            guard keepAlive == nil, let context, context.channel.isActive else { return }
            lastPacket = eventLoop.now
            keepAlive = (timeout, sweep)
            sweep.watch(self)
        }
    }

    /// Whether the connection has been silent for longer than its keep-alive at `now` (for the sweep). While packets
    /// it sent wait to be handled, the hub is behind, not the client silent (its reads are held, so its PINGREQ may
    /// sit unread in the socket): its clock starts again.
    func isSilent(at now: NIODeadline) -> Bool {
        guard let keepAlive else { return false }
        if state.withLock({ $0.next < $0.packets.count }) {
            lastPacket = now
            return false
        }
        return now - lastPacket > keepAlive.timeout
    }

    /// Closes the connection for its silence (for the sweep), once. Below TLS, as the keep-alive handler at the front
    /// of the pipeline did: a peer that went silent is treated as a failed network (§3.1.2.10), so the hub does not
    /// send close_notify and wait for an answer that will not come (swift-nio-ssl's shutdown timeout, 5 s), and
    /// nothing it still decrypts meanwhile is handled.
    func closeForSilence() {
        guard let context, keepAlive != nil else { return }
        stopKeepAlive()
        decodingStopped = true
        if let tls = try? context.pipeline.syncOperations.context(handlerType: NIOSSLServerHandler.self) {
            tls.close(promise: nil)
        } else {
            context.close(promise: nil)
        }
    }

    private func stopKeepAlive() {
        guard let keepAlive else { return }
        self.keepAlive = nil
        keepAlive.sweep.unwatch(self)
    }

    func read(context: ChannelHandlerContext) {
        let hold = state.withLock { state in
            guard state.latestRead != nil else { return false }
            state.readHeld = true
            return true
        }
        if !hold { context.read() }
    }

    /// Applies an event, then hands the waiting task its packet or resumes the parked session (also with no event,
    /// when `resuming`).
    private func deliver(resuming: Bool = false, _ change: (inout State) -> Void) {
        enum Wake {
            case none
            case waiter(CheckedContinuation<Packet?, any Error>, Result<Packet?, any Error>, resumeRead: Bool)
            case parked(any ParkedSession)
        }
        let wake: Wake = state.withLock { state in
            change(&state)
            if let waiter = state.waiter {
                let (taken, resumeRead) = state.take()
                guard let taken else { return .none }
                state.waiter = nil
                return .waiter(waiter, taken, resumeRead: resumeRead)
            }
            if let parked = state.parked, state.hasEvent || resuming {
                state.parked = nil
                return .parked(parked)
            }
            return .none
        }
        switch wake {
        case .none: break
        case .waiter(let waiter, let taken, let resumeRead):
            if resumeRead { resumeReading() }
            waiter.resume(with: taken)
        case .parked(let parked): parked.resume()
        }
    }

    private func resumeReading() {
        if eventLoop.inEventLoop {
            context?.read()
        } else {
            eventLoop.execute { self.context?.read() }
        }
    }

    /// For tests: the queue's slots (taken packets not yet compacted away included), and whether a task waits.
    var slots: Int { state.withLock { $0.packets.count } }
    var hasWaiter: Bool { state.withLock { $0.waiter != nil } }

    // MARK: The connection's side (any thread)

    /// The next packet, waiting for it; nil at the end of the channel; throws the channel's error after the packets
    /// before it. For the opening, while one task serves the connection.
    func next() async throws -> Packet? {
        let (ready, resumeRead) = state.withLock { $0.take() }
        if resumeRead { resumeReading() }
        if let ready { return try ready.get() }
        return try await withCheckedThrowingContinuation { continuation in
            let (ready, resumeRead) = state.withLock { state in
                let (taken, resumeRead) = state.take()
                if taken == nil { state.waiter = continuation }
                return (taken, resumeRead)
            }
            if resumeRead { resumeReading() }
            if let ready { continuation.resume(with: ready) }
        }
    }

    /// The next packet if one is queued; otherwise the end or the channel's error, or, with nothing to hand on,
    /// `parked`: `session` is resumed (once) when the next event arrives.
    func take(orPark session: any ParkedSession) throws -> Taken {
        let (taken, resumeRead) = state.withLock { state in
            let (taken, resumeRead) = state.take()
            if taken == nil { state.parked = session }
            return (taken, resumeRead)
        }
        if resumeRead { resumeReading() }
        guard let taken else { return .parked }
        guard let packet = try taken.get() else { return .ended }
        return .packet(packet)
    }
}
