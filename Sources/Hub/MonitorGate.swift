import Core
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore

/// The operator listener serves two roles: operators (the operator API) and monitors (`GET /metrics` only).
///
/// The gate runs before every route of that listener: a monitor certificate (`urn:bulwark:monitor:NAME`) reaches
/// `GET /metrics` and nothing else (any other path, however spelt, is 403, not 404, so it learns no route), and
/// `/metrics` answers monitors only: an operator's key never needs to sit on a monitoring server. Device and
/// application certificates never get this far (the listener's TLS policy refuses them at the handshake). A refusal
/// is audited (`access-denied`) under the certificate's identity, once per certificate and minute: a leaked monitor
/// key hammering a keep-alive connection must not turn each request into an audit record.
struct MonitorGate: RouterMiddleware {
    typealias Context = HubRequestContext

    static let path = "/metrics"
    let audited = OncePerWindow()

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response)
        async throws -> Response
    {
        let monitor = if case .monitor = context.peer?.identity { true } else { false }
        // A monitor gets the exact path only; everyone else is kept off every spelling the router would route to
        // `/metrics` (it drops empty segments: `//metrics`, `/metrics/`).
        let path = request.uri.path
        let metrics = monitor ? path == Self.path : path.split(separator: "/") == ["metrics"]
        let allowed = monitor ? metrics && (request.method == .get || request.method == .head) : !metrics
        guard allowed else {
            let key = "\(context.peer?.serialHex ?? "-")"
            let event = audited.first(key, now: Int64(Date().timeIntervalSince1970) / 60) ? "access-denied" : nil
            throw HubError.forbidden(
                monitor
                    ? "a monitor certificate reads GET /metrics only (asked \(request.method) \(path))"
                    : "/metrics is served to monitor certificates only", event: event)
        }
        return try await next(request, context)
    }

    /// Adds the gate and the `/metrics` route (Prometheus text format 0.0.4).
    static func register(on router: Router<HubRequestContext>, metrics: HubMetrics) {
        router.add(middleware: MonitorGate())
        router.get(RouterPath(path)) { _, context in
            // Checked again where the answer is made, whatever the path looked like on the way.
            guard case .monitor = context.peer?.identity else {
                throw HubError.forbidden("/metrics is served to monitor certificates only")
            }
            let body = await metrics.scrape(now: Date())
            return Response(
                status: .ok,
                headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8", .cacheControl: "no-store"],
                body: ResponseBody(byteBuffer: ByteBuffer(bytes: body)))
        }
    }
}
