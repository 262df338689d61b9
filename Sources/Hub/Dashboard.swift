import Core
import Foundation
import HTTPTypes
import Hummingbird
import Mustache
import NIOCore
import ServiceLifecycle
import Store

/// The operator dashboard, on the operator listener under `/ui`.
///
/// The browser presents an operator certificate: mutual TLS is the login (no password, no session cookie to
/// steal). Monitor certificates are kept out by `MonitorGate`; device and application certificates never complete
/// the listener's handshake; every handler checks the operator role again.
///
/// Defences: pages are rendered server-side from HTML-escaping templates (`DashboardAssets`); every response
/// carries a strict Content-Security-Policy (scripts and styles from this origin only, no inline code, no framing,
/// no form posts elsewhere) and `X-Content-Type-Options: nosniff`; state-changing routes (`/ui/actions/…`) accept
/// only POST with a JSON body and a same-origin `Sec-Fetch-Site` (or, from a browser that sends none, an `Origin`
/// equal to the page's), so a cross-site form or script cannot revoke a device; each action is audited under the
/// operator's identity by the operator API it calls.
struct Dashboard {
    let routes: OperatorRoutes
    let claims: PairingClaims
    let auditKey: AuditKey?
    let updatesConfigured: Bool
    let library: MustacheLibrary

    static let contentSecurityPolicy =
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        + "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    static let pageSize = 50

    init(routes: OperatorRoutes, claims: PairingClaims, auditKey: AuditKey?, updatesConfigured: Bool) throws {
        self.routes = routes
        self.claims = claims
        self.auditKey = auditKey
        self.updatesConfigured = updatesConfigured
        var library = MustacheLibrary()
        for (name, text) in DashboardAssets.templates { try library.register(text, named: name) }
        self.library = library
    }

    func register(on router: Router<HubRequestContext>) {
        let ui = router.group("ui").add(middleware: DashboardGuard())
        ui.get { request, context in try await overview(request, context) }
        ui.get("devices/:id") { _, context in try await device(context) }
        ui.get("events") { _, context in try await events(context) }
        ui.get("events/stream") { request, context in try await stream(request, context) }
        ui.get("audit") { _, context in try await audit(context) }
        ui.get("claims") { _, context in try await claimsPage(context) }
        ui.get("rollouts") { _, context in try await rollouts(context) }
        ui.get("assets/app.js") { _, _ in
            Self.asset(DashboardAssets.script, type: "text/javascript; charset=utf-8")
        }
        ui.get("assets/app.css") { _, _ in Self.asset(DashboardAssets.styleSheet, type: "text/css; charset=utf-8") }
        ui.post("actions/devices/:id/revoke") { _, context in try await routes.revoke(context) }
        ui.post("actions/devices/:id/release") { _, context in try await routes.release(context) }
        ui.post("actions/claims") { request, context in try await routes.claim(request, context) }
    }

    static func asset(_ text: String, type: String) -> Response {
        Response(
            status: .ok, headers: [.contentType: type, .cacheControl: "no-cache"],
            body: ResponseBody(byteBuffer: ByteBuffer(string: text)))
    }

    private func page(_ template: String, _ context: HubRequestContext, title: String, _ values: [String: Any])
        throws -> Response
    {
        var values = values
        values["title"] = title
        values["operator"] = context.peer?.identity.uri ?? ""
        guard let html = library.render(values, withTemplate: template) else {
            throw HubError(.internalServerError, "internal", detail: "no template \(template)", event: nil)
        }
        return Response(
            status: .ok, headers: [.contentType: "text/html; charset=utf-8"],
            body: ResponseBody(byteBuffer: ByteBuffer(string: html)))
    }

    static func time(_ date: Date?) -> String { date.map { $0.formatted(.iso8601) } ?? "" }

    // MARK: Pages

    /// The fleet: filtered, sorted and paginated by the store (one page of `pageSize` rows per request).
    func overview(_ request: Request, _ context: HubRequestContext) async throws -> Response {
        try Self.requireOperator(context)
        let parameters = request.uri.queryParameters
        var query = DeviceQuery()
        query.search = parameters.get("q").map { String($0.prefix(64)) }
        query.status = parameters.get("status").flatMap { DeviceStatus(rawValue: String($0)) }
        query.sort = parameters.get("sort").flatMap { DeviceQuery.Sort(rawValue: String($0)) } ?? .id
        query.descending = parameters.get("desc") == "1"
        let requested = max(1, min(parameters.get("page", as: Int.self) ?? 1, 1_000_000))
        query.limit = Self.pageSize
        query.offset = (requested - 1) * Self.pageSize
        let (total, devices) = try await routes.store.devicePage(query)
        let pages = max(1, (total + Self.pageSize - 1) / Self.pageSize)
        let now = Date()
        let soon = now.addingTimeInterval(7 * 86400)
        func link(_ page: Int) -> String {
            var components = URLComponents()
            components.path = "/ui"
            components.queryItems = [
                URLQueryItem(name: "q", value: query.search ?? ""),
                URLQueryItem(name: "status", value: query.status?.rawValue ?? ""),
                URLQueryItem(name: "sort", value: query.sort.rawValue),
                URLQueryItem(name: "desc", value: query.descending ? "1" : "0"),
                URLQueryItem(name: "page", value: String(page)),
            ]
            return components.string ?? "/ui"
        }
        let labels: [DeviceQuery.Sort: String] = [
            .id: "device id", .status: "status", .lastSeen: "last seen", .expiry: "certificate expiry",
        ]
        return try page(
            "overview", context, title: "Fleet",
            [
                "search": query.search ?? "", "statusActive": query.status == .active,
                "statusRevoked": query.status == .revoked, "descending": query.descending,
                "sorts": DeviceQuery.Sort.allCases.map {
                    ["value": $0.rawValue, "label": labels[$0] ?? $0.rawValue, "selected": $0 == query.sort]
                },
                "total": total, "page": requested, "pages": pages,
                "previous": requested > 1 ? [link(requested - 1)] : [],
                "next": requested < pages ? [link(requested + 1)] : [],
                "devices": devices.map { device -> [String: Any] in
                    let quarantined = device.quarantinedUntil.map { Double($0) > now.timeIntervalSince1970 } ?? false
                    return [
                        "id": device.id.rawValue, "status": device.status.rawValue,
                        "lastSeen": Self.time(device.lastSeen), "deviceClass": device.deviceClass ?? "",
                        "installed": device.installedVersion ?? "",
                        "quarantine": quarantined
                            ? "until "
                                + Self.time(device.quarantinedUntil.map { Date(timeIntervalSince1970: Double($0)) })
                            : "",
                        "expiry": Self.time(device.certificateNotAfter),
                        "expiryClass": (device.certificateNotAfter.map { $0 < soon } ?? false) ? "expiring" : "",
                    ]
                },
            ])
    }

    func device(_ context: HubRequestContext) async throws -> Response {
        try Self.requireOperator(context)
        guard let text = context.parameters.get("id"), let id = try? DeviceID(text),
            let record = try await routes.store.device(id)
        else { throw HubError(.notFound, "not-found", message: "no such device", detail: "dashboard", event: nil) }
        let store = routes.store
        let events = try await store.securityEvents(identity: Identity.device(id).uri, limit: 200)
        var kinds: [String: Int] = [:]
        for event in events { kinds[event.kind, default: 0] += 1 }
        let quarantine = try await store.quarantines().first { $0.0 == id }.flatMap { device, until in
            Double(until) > Date().timeIntervalSince1970
                ? Self.time(Date(timeIntervalSince1970: Double(until))) : nil
        }
        return try page(
            "device", context, title: "Device \(id.rawValue)",
            [
                "id": id.rawValue, "status": record.status.rawValue, "active": record.status == .active,
                "quarantine": quarantine.map { [$0] } ?? [],
                "deviceClass": try await store.deviceClass(id).map { [$0] } ?? [],
                "certificates": try await store.certificates(of: id).reversed().map {
                    [
                        "serial": $0.serialHex, "notBefore": Self.time($0.notBefore),
                        "notAfter": Self.time($0.notAfter),
                        "revoked": Self.time($0.revokedAt),
                    ]
                },
                "kinds": kinds.sorted { $0.key < $1.key }.map { ["kind": $0.key, "count": $0.value] },
                "messages": try await store.telemetry(of: id, limit: 20).map {
                    [
                        "at": Self.time($0.receivedAt), "correlationID": $0.correlationID,
                        "body": String(decoding: $0.body.prefix(2048), as: UTF8.self),
                    ]
                },
                "destinations": try await store.destinations(of: id).map {
                    [
                        "direction": $0.listening ? "listening" : "outbound", "proto": $0.proto,
                        "address": $0.address, "port": $0.port, "lastSeen": Self.time($0.lastSeen),
                    ]
                },
                "events": events.prefix(50).map(Self.eventValues),
            ])
    }

    static func eventValues(_ event: SecurityEvent) -> [String: Any] {
        [
            "id": event.id ?? 0, "at": time(event.at), "kind": event.kind, "identity": event.identity ?? "",
            "detail": event.detail,
        ]
    }

    func events(_ context: HubRequestContext) async throws -> Response {
        try Self.requireOperator(context)
        let recent = try await routes.store.securityEvents(limit: 50)
        return try page(
            "events", context, title: "Live events",
            ["head": recent.first?.id ?? 0, "events": recent.map(Self.eventValues)])
    }

    /// Server-sent events (HTML Living Standard §9.2): each new audit record as a `record` event (JSON, put into the
    /// page as text), polled from the store every 250 ms; at most 50 a second go out, the rest are counted in a
    /// `dropped` event, so a flood of refusals never makes the browser (or this stream) the bottleneck. The stream
    /// ends after 10 minutes (the browser reconnects) and when the hub shuts down.
    func stream(_ request: Request, _ context: HubRequestContext) async throws -> Response {
        try Self.requireOperator(context)
        let store = routes.store
        var after = request.uri.queryParameters.get("after", as: Int64.self) ?? 0
        if after <= 0 { after = try await store.securityEvents(limit: 1).first?.id ?? 0 }
        let start = after
        let headers: HTTPFields = [
            .contentType: "text/event-stream; charset=utf-8", .cacheControl: "no-store",
        ]
        return Response(
            status: .ok, headers: headers,
            body: ResponseBody { writer in
                var last = start
                let end = ContinuousClock.now + .seconds(600)
                var budget = 50
                var window = ContinuousClock.now
                try await writer.write(ByteBuffer(string: "retry: 1000\n\n"))
                while ContinuousClock.now < end, !Task.isCancelled, !Task.isShuttingDownGracefully {
                    let records = try await store.auditRecords(after: last, limit: 500)
                    if ContinuousClock.now - window >= .seconds(1) {
                        window = ContinuousClock.now
                        budget = 50
                    }
                    var dropped = 0
                    var chunk = ""
                    for record in records {
                        last = record.sequence
                        guard budget > 0 else {
                            dropped += 1
                            continue
                        }
                        budget -= 1
                        chunk += "event: record\ndata: \(Self.eventJSON(record.event))\n\n"
                    }
                    if dropped > 0 { chunk += "event: dropped\ndata: {\"count\":\(dropped)}\n\n" }
                    if !chunk.isEmpty { try await writer.write(ByteBuffer(string: chunk)) }
                    try await Task.sleep(for: .milliseconds(250))
                }
                try await writer.finish(nil)
            })
    }

    /// One record as a JSON object (JSONSerialization escapes every string; the browser reads it as text).
    static func eventJSON(_ event: SecurityEvent) -> String {
        let object: [String: Any] = [
            "id": event.id ?? 0, "at": time(event.at), "kind": event.kind, "identity": event.identity ?? "",
            "detail": event.detail,
        ]
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }

    /// The chain verified now, with the hub's audit key (as `bulwark audit verify` does).
    func audit(_ context: HubRequestContext) async throws -> Response {
        try Self.requireOperator(context)
        var records: [AuditRecord] = []
        while true {
            let next = try await routes.store.auditRecords(after: records.last?.sequence ?? 0, limit: 10_000)
            records += next
            if next.count < 10_000 { break }
        }
        var values: [String: Any] = [:]
        switch AuditChain.verify(records, key: auditKey) {
        case .success(let summary):
            values = [
                "status": summary.macsChecked
                    ? "intact (hashes and MACs checked)" : "intact (MACs NOT checked: no key)",
                "statusClass": summary.macsChecked ? "good" : "bad",
                "head": summary.head.map { String(format: "%02x", $0) }.joined(), "count": summary.count,
                "keyed": summary.keyed, "unkeyed": summary.unkeyed > 0 ? [summary.unkeyed] : [],
            ]
        case .failure(let failure):
            values = [
                "status": "NOT intact: \(failure)", "statusClass": "bad", "head": "-", "count": records.count,
                "keyed": 0, "unkeyed": [],
            ]
        }
        return try page("audit", context, title: "Audit log", values)
    }

    func claimsPage(_ context: HubRequestContext) async throws -> Response {
        try Self.requireOperator(context)
        let pending = await claims.pending(now: Date())
        return try page(
            "claims", context, title: "Pairing claims",
            [
                "claims": pending.map {
                    ["device": $0.device.rawValue, "suite": $0.suite, "expires": Self.time($0.expires)]
                }
            ])
    }

    func rollouts(_ context: HubRequestContext) async throws -> Response {
        try Self.requireOperator(context)
        let latest = try await routes.store.latestRollout()
        let fields = latest.map { OperatorRoutes.json($0) }?.sorted { $0.key < $1.key }.map {
            ["name": $0.key, "value": "\($0.value)"]
        }
        return try page("rollouts", context, title: "Rollouts", ["fields": fields ?? [], "updates": updatesConfigured])
    }

    static func requireOperator(_ context: HubRequestContext) throws {
        guard case .operator = context.peer?.identity else {
            throw HubError.forbidden("the dashboard is for operators")
        }
    }
}

/// Security headers on every dashboard response, and the cross-site check on every state-changing request.
struct DashboardGuard: RouterMiddleware {
    typealias Context = HubRequestContext

    static let fixedHeaders: [(HTTPField.Name, String)] = [
        ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"), ("X-Frame-Options", "DENY"),
        ("Cross-Origin-Opener-Policy", "same-origin"), ("Cross-Origin-Resource-Policy", "same-origin"),
    ].compactMap { name, value in HTTPField.Name(name).map { ($0, value) } }
    static let fetchSite = HTTPField.Name("Sec-Fetch-Site")

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response)
        async throws -> Response
    {
        if request.method != .get, request.method != .head {
            try Self.checkSameOrigin(request)
        }
        var response = try await next(request, context)
        response.headers[.contentSecurityPolicy] = Dashboard.contentSecurityPolicy
        for (name, value) in Self.fixedHeaders { response.headers[name] = value }
        if response.headers[.cacheControl] == nil { response.headers[.cacheControl] = "no-store" }
        return response
    }

    /// Fetch Metadata (W3C, `Sec-Fetch-Site`): only `same-origin` may change state. A browser that sends no
    /// `Sec-Fetch-Site` must send an `Origin` naming this host. A request with neither is no browser's and is
    /// refused too (scripts use the operator API, not `/ui`). The body must be JSON: an HTML form cannot send it.
    static func checkSameOrigin(_ request: Request) throws {
        guard request.method == .post else { throw HubError.forbidden("dashboard actions are POST requests") }
        let site = fetchSite.flatMap { request.headers[$0] }
        let origin = request.headers[.origin]
        let host = request.head.authority ?? ""
        let sameOrigin: Bool =
            if let site { site == "same-origin" } else { origin.map { $0 == "https://" + host } ?? false }
        guard sameOrigin else {
            throw HubError.forbidden(
                "cross-site dashboard action refused (Sec-Fetch-Site \(site ?? "-"), Origin \(origin ?? "-"))",
                event: "dashboard-cross-site-refused")
        }
        let type = request.headers[.contentType]?.split(separator: ";").first?.trimmingCharacters(in: .whitespaces)
        guard type?.lowercased() == "application/json" else {
            throw HubError(
                .unsupportedMediaType, "unsupported-media-type", message: "dashboard actions take a JSON body",
                detail: "dashboard action with Content-Type \(type ?? "-")", event: nil)
        }
    }
}
