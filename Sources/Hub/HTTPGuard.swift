import Core
import Gateway
import NIOCore
import NIOHTTP1
import NIOSSL
import NIOTLS

/// Time bounds of an HTTPS connection (`http.*` keys), and its caps (counted when TCP accepts, before TLS).
public struct HTTPLimits: Sendable, Equatable {
    /// The TLS handshake must complete within this time of the accept.
    public var handshakeSeconds = 5.0
    /// The first request's head must be complete within this time of the handshake.
    public var headerSeconds = 10.0
    /// A request's body must be complete within this time of its head (a body that trickles is cut).
    public var bodySeconds = 30.0
    /// A kept-alive connection with no request in progress is closed after this time (the next head must be complete
    /// by then).
    public var idleSeconds = 60.0
    /// Open connections of one listener in all, and from one source address.
    public var maxConnections = 10_000
    public var maxConnectionsPerSource = 256

    public init() {}

    func validate() throws {
        for (name, value) in [
            ("handshakeSeconds", handshakeSeconds), ("headerSeconds", headerSeconds), ("bodySeconds", bodySeconds),
            ("idleSeconds", idleSeconds),
        ] where !(0.1...3600).contains(value) {
            throw HubStartupError("http.\(name) must be 0.1-3600")
        }
        guard (1...1_000_000).contains(maxConnections), (1...1_000_000).contains(maxConnectionsPerSource) else {
            throw HubStartupError("http.maxConnections and http.maxConnectionsPerSource must be 1-1000000")
        }
    }
}

/// Why the guard refused a request before the router saw it (for the log and the audit record), with the peer's
/// certificate (DER) when the handshake gave one.
struct FramingRefusal: Sendable {
    let problem: Problem
    let detail: String
    var correlationID = ""
    var peerCertificate: [UInt8]?
    var source: String?
}

/// Sits between NIOHTTP1's request decoder and Hummingbird's codec, where it still sees the HTTP version and the
/// `Transfer-Encoding` field (HTTPTypes drops both). It
/// - bounds each phase of a connection: the TLS handshake, the first request head, a request body, and the idle time
///   between kept-alive requests (a slow client that stops mid-head or mid-body is closed, not held);
/// - refuses request framing the hub does not accept, before any route runs (RFC 9112 §6.1): a transfer coding
///   other than exactly `chunked` (501: `gzip, chunked` would otherwise be stored raw), `Transfer-Encoding` on an
///   HTTP/1.0 request (400: faulty framing), and `CONNECT` (405, then close: there is nothing to tunnel to).
/// A refused request gets an RFC 9457 problem and the connection is closed; what follows on it is ignored.
final class HTTPGuardHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private let limits: HTTPLimits
    private let onRefusal: @Sendable (FramingRefusal) -> Void
    /// When the current phase of the client's request must have ended (nil: none runs).
    private var deadline: NIODeadline?
    /// When the response being written must next have moved (nil: none is being written). Apart from `deadline`,
    /// so a client that pipelines a request while not reading a download cannot lift the download's deadline.
    private var responseDeadline: NIODeadline?
    /// One check scheduled at a time, never more than `granularity` ahead: every phase lasts at least that long, so
    /// a new deadline is never earlier than the scheduled check, and a request moves its deadline without touching
    /// the event loop's timer heap (scheduling and cancelling a task per phase was 3 % of a signed request's CPU).
    private var check: Scheduled<Void>?
    private let granularity: TimeAmount
    private var handshakeDone = false
    private var requestOpen = false
    /// Requests whose response has not ended yet (more than one when a client pipelines).
    private var responsesPending = 0
    private var refused = false

    init(limits: HTTPLimits, onRefusal: @escaping @Sendable (FramingRefusal) -> Void) {
        self.limits = limits
        self.onRefusal = onRefusal
        self.granularity = .nanoseconds(Int64(min(limits.headerSeconds, limits.bodySeconds, limits.idleSeconds) * 1e9))
    }

    func handlerAdded(context: ChannelHandlerContext) {
        arm(context, seconds: limits.handshakeSeconds)
    }

    func handlerRemoved(context: ChannelHandlerContext) { stopChecking() }

    func channelInactive(context: ChannelHandlerContext) {
        stopChecking()
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted = event as? TLSUserEvent, !handshakeDone {
            handshakeDone = true
            arm(context, seconds: limits.headerSeconds)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !refused else { return }
        switch unwrapInboundIn(data) {
        case .head(let head):
            if let refusal = Self.check(head) {
                refuse(context, refusal)
                return
            }
            requestOpen = true
            responsesPending += 1
            arm(context, seconds: limits.bodySeconds)
        case .body:
            break
        case .end:
            requestOpen = false
            if responsesPending > 0 { deadline = nil } else { armIdle(context) }
        }
        context.fireChannelRead(data)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // After a refusal the decoder may still complain about the bytes that followed: they are ignored.
        guard !refused else { return }
        context.fireErrorCaught(error)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch (unwrapOutboundIn(data), refused) {
        case (.head, false), (.body, false):
            // A response in progress must keep moving: a client that stops reading (a download it never takes)
            // would otherwise hold the connection and its download slot for ever.
            let now = context.eventLoop.now
            responseDeadline = now + .nanoseconds(Int64(limits.bodySeconds * 1e9))
            if check == nil, let due = responseDeadline { schedule(context, at: min(due, now + granularity)) }
        case (.end, _):
            responseDeadline = nil
        case (_, true):
            break
        }
        if case .end = unwrapOutboundIn(data) {
            responsesPending = max(0, responsesPending - 1)
            // A response may finish before its request (an early 413): the body deadline keeps running then.
            if !requestOpen, responsesPending == 0 { armIdle(context) }
        }
        context.write(data, promise: promise)
    }

    /// The framing rules, on the head as NIOHTTP1 parsed it.
    static func check(_ head: HTTPRequestHead) -> FramingRefusal? {
        if head.method == .CONNECT {
            return FramingRefusal(problem: .methodNotAllowed, detail: "CONNECT is not served")
        }
        let codings = head.headers[canonicalForm: "transfer-encoding"].map { $0.lowercased() }
        guard !codings.isEmpty else { return nil }
        if head.version.major == 1, head.version.minor == 0 {
            return FramingRefusal(problem: .badRequest, detail: "Transfer-Encoding on an HTTP/1.0 request")
        }
        guard codings == ["chunked"] else {
            return FramingRefusal(
                problem: .notImplemented,
                detail: "transfer coding \(MessageSignatureProfile.printable(codings.joined(separator: ", ")))")
        }
        return nil
    }

    private func refuse(_ context: ChannelHandlerContext, _ refusal: FramingRefusal) {
        refused = true
        // One last deadline that nothing moves: the refusal must be taken by then (a client that does not read it
        // would otherwise hold the connection until its write drained, that is for ever).
        let now = context.eventLoop.now
        deadline = now + .nanoseconds(Int64(limits.bodySeconds * 1e9))
        responseDeadline = nil
        if check == nil, let due = deadline { schedule(context, at: min(due, now + granularity)) }
        var refusal = refusal
        refusal.correlationID = CorrelationID().rawValue
        refusal.peerCertificate = try? context.pipeline.syncOperations.nioSSL_peerCertificate()?.toDERBytes()
        refusal.source = context.channel.remoteAddress?.ipAddress
        onRefusal(refusal)
        let body = ByteBuffer(string: refusal.problem.json(correlationID: refusal.correlationID))
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: ProblemResponse.contentType)
        headers.add(name: "Content-Length", value: String(body.readableBytes))
        headers.add(name: "Cache-Control", value: "no-store")
        headers.add(name: "Connection", value: "close")
        if refusal.problem == .methodNotAllowed { headers.add(name: "Allow", value: "GET, POST") }
        let status = HTTPResponseStatus(statusCode: refusal.problem.status)
        context.write(
            wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))),
            promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in context.close(promise: nil) }
    }

    private func armIdle(_ context: ChannelHandlerContext) { arm(context, seconds: limits.idleSeconds) }

    private func arm(_ context: ChannelHandlerContext, seconds: Double) {
        guard !refused else { return }
        let now = context.eventLoop.now
        let due = now + .nanoseconds(Int64(seconds * 1e9))
        deadline = due
        if check == nil { schedule(context, at: min(due, now + granularity)) }
    }

    private func schedule(_ context: ChannelHandlerContext, at time: NIODeadline) {
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        check = context.eventLoop.scheduleTask(deadline: time) {
            let (handler, context) = loopBound.value
            handler.check = nil
            guard let deadline = [handler.deadline, handler.responseDeadline].compactMap({ $0 }).min() else { return }
            let now = context.eventLoop.now
            if now >= deadline {
                // The deadline of this phase passed: a client that stalls holds no connection for longer.
                context.channel.close(promise: nil)
            } else {
                handler.schedule(context, at: min(deadline, now + handler.granularity))
            }
        }
    }

    private func stopChecking() {
        deadline = nil
        responseDeadline = nil
        check?.cancel()
        check = nil
    }
}

@available(*, unavailable)
extension HTTPGuardHandler: Sendable {}
