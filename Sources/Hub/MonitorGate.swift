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
/// application certificates never get this far (the listener's TLS policy refuses them at the handshake). Every
/// refusal is audited (`access-denied`) under the certificate's identity.
struct MonitorGate: RouterMiddleware {
    typealias Context = HubRequestContext

    static let path = "/metrics"

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response)
        async throws -> Response
    {
        let monitor = if case .monitor = context.peer?.identity { true } else { false }
        let metrics = request.uri.path == Self.path
        guard monitor == metrics else {
            throw HubError.forbidden(
                monitor
                    ? "a monitor certificate reads GET /metrics only (asked \(request.method) \(request.uri.path))"
                    : "/metrics is served to monitor certificates only")
        }
        guard !metrics || request.method == .get || request.method == .head else {
            throw HubError.forbidden("a monitor certificate reads GET /metrics only (asked \(request.method))")
        }
        return try await next(request, context)
    }

    /// Adds the gate and the `/metrics` route (Prometheus text format 0.0.4).
    static func register(on router: Router<HubRequestContext>, metrics: HubMetrics) {
        router.add(middleware: MonitorGate())
        router.get(RouterPath(path)) { _, _ in
            let body = await metrics.scrape(now: Date())
            return Response(
                status: .ok,
                headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8", .cacheControl: "no-store"],
                body: ResponseBody(byteBuffer: ByteBuffer(bytes: body)))
        }
    }
}
