import Core
import Foundation
import Gateway
import HTTPTypes
import Hummingbird
import Mustache
import NIOCore
import ServiceLifecycle
import Store
import Synchronization

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
    let streams = Slots<String>(total: 64, perHolder: 4)
    /// The audit page verifies the whole log: one verification at a time, however many tabs (or links) ask.
    let verifications = Slots<String>(total: 1, perHolder: 1)

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
        var stages: [String: Int] = [:]
        for event in events {
            kinds[event.kind, default: 0] += 1
            if let stage = Self.stage(of: event.detail) { stages[stage, default: 0] += 1 }
        }
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
                "stages": Stage.allCases.compactMap { stage in
                    stages[stage.rawValue].map { ["stage": stage.rawValue, "count": $0] }
                },
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

    /// The pipeline stage a refusal's audit record names (`WHAT: STAGE: DETAIL`, as `GatewayRecorder` writes it).
    static func stage(of detail: String) -> String? {
        detail.components(separatedBy: ": ").first { Stage(rawValue: $0) != nil }
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

    /// Server-sent events (HTML Living Standard §9.2): each new audit record as a `record` event with its sequence
    /// number as the event id (a reconnecting `EventSource` sends it back as `Last-Event-ID` and resumes after it),
    /// its JSON put into the page as text. The store is polled every 250 ms; at most 50 records a second go out and
    /// the rest are counted in a `dropped` event, so a flood of refusals never makes the browser (or this stream) the
    /// bottleneck; a comment every 15 s keeps a quiet stream inside the listener's write deadline. A stream ends
    /// when its connection closes, its certificate is revoked, the hub shuts down, or after 10 minutes (the browser
    /// reconnects). At most 4 streams per certificate and 64 in all.
    func stream(_ request: Request, _ context: HubRequestContext) async throws -> Response {
        try Self.requireOperator(context)
        let store = routes.store
        let revocations = routes.revocations
        let serial = context.peer?.serialHex ?? ""
        let channel = context.channel
        let streams = streams
        let resume = Self.lastEventID.flatMap { request.headers[$0] }.flatMap { Int64($0) }
        var after = resume ?? request.uri.queryParameters.get("after", as: Int64.self) ?? 0
        let head = try await store.securityEvents(limit: 1).first?.id ?? 0
        // Nothing asked (or nonsense): from now. An id beyond the log (a restored database) resumes from its head,
        // so what is written next is shown or counted rather than skipped up to the old id.
        if after <= 0 || after > head { after = head }
        let start = after
        return Response(
            status: .ok, headers: [.contentType: "text/event-stream; charset=utf-8", .cacheControl: "no-store"],
            body: ResponseBody { writer in
                guard streams.acquire(serial) else {
                    try await writer.write(ByteBuffer(string: ": too many streams\nretry: 10000\n\n"))
                    try await writer.finish(nil)
                    return
                }
                defer { streams.release(serial) }
                var last = start
                let end = ContinuousClock.now + .seconds(600)
                var budget = 50
                var window = ContinuousClock.now
                var lastWrite = ContinuousClock.now
                try await writer.write(ByteBuffer(string: "retry: 1000\n\n"))
                while ContinuousClock.now < end, channel.isActive, !revocations.contains(serial), !Task.isCancelled,
                    !Task.isShuttingDownGracefully
                {
                    if ContinuousClock.now - window >= .seconds(1) {
                        window = ContinuousClock.now
                        budget = 50
                    }
                    var chunk = ""
                    if budget > 0 {
                        for record in try await store.auditRecords(after: last, limit: budget) {
                            last = record.sequence
                            budget -= 1
                            chunk += "id: \(record.sequence)\nevent: record\ndata: \(Self.eventJSON(record.event))\n\n"
                        }
                    }
                    if budget == 0 {
                        // Over the budget, records are counted, not read: sequence numbers have no gaps, so the
                        // newest one says how many there were (a flood costs this stream one query per poll).
                        let head = try await store.securityEvents(limit: 1).first?.id ?? last
                        if head > last {
                            chunk += "id: \(head)\nevent: dropped\ndata: {\"count\":\(head - last)}\n\n"
                            last = head
                        }
                    }
                    if chunk.isEmpty, ContinuousClock.now - lastWrite >= .seconds(15) { chunk = ": ping\n\n" }
                    if !chunk.isEmpty {
                        try await writer.write(ByteBuffer(string: chunk))
                        lastWrite = ContinuousClock.now
                    }
                    try await Task.sleep(for: .milliseconds(250))
                }
                try await writer.finish(nil)
            })
    }

    static let lastEventID = HTTPField.Name("Last-Event-ID")

    /// One record as a JSON object (JSONSerialization escapes every string; the browser reads it as text).
    static func eventJSON(_ event: SecurityEvent) -> String {
        let data =
            (try? JSONSerialization.data(withJSONObject: eventValues(event), options: [.sortedKeys])) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }

    /// The chain verified now, with the hub's audit key (as `bulwark audit verify` does).
    func audit(_ context: HubRequestContext) async throws -> Response {
        try Self.requireOperator(context)
        guard verifications.acquire("") else {
            throw HubError(
                .serviceUnavailable, "busy", message: "the audit log is being verified; reload in a moment",
                detail: "audit page: a verification is already running", event: nil)
        }
        defer { verifications.release("") }
        let records = try await routes.store.allAuditRecords()
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
        let pending = try await claims.pending(now: Date())
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
            ["name": $0.key, "value": $0.value is NSNull ? "" : "\($0.value)"]
        }
        return try page("rollouts", context, title: "Rollouts", ["fields": fields ?? [], "updates": updatesConfigured])
    }

    static func requireOperator(_ context: HubRequestContext) throws {
        guard case .operator = context.peer?.identity else {
            throw HubError.forbidden("the dashboard is for operators")
        }
    }
}

/// Security headers on every dashboard response; `/ui/actions/…` take POST with a JSON body only. (Which site a
/// request comes from is checked for the whole listener by `CrossSiteGuard`.)
struct DashboardGuard: RouterMiddleware {
    typealias Context = HubRequestContext

    static let fixedHeaders: [(HTTPField.Name, String)] = [
        ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"), ("X-Frame-Options", "DENY"),
        ("Cross-Origin-Opener-Policy", "same-origin"), ("Cross-Origin-Resource-Policy", "same-origin"),
    ].compactMap { name, value in HTTPField.Name(name).map { ($0, value) } }
    static let serverTiming = HTTPField.Name("Server-Timing")

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response)
        async throws -> Response
    {
        if request.method != .get, request.method != .head {
            guard request.method == .post else { throw HubError.forbidden("dashboard actions are POST requests") }
            // Only the dashboard's own script calls these: a request must show it comes from this origin (Fetch
            // Metadata, or from a browser without it an Origin naming this listener), not merely not from another.
            let site = CrossSiteGuard.site.flatMap { request.headers[$0] }
            let origin = request.headers[.origin]
            let sameOrigin =
                if let site { site == "same-origin" } else { origin == "https://" + (request.head.authority ?? "") }
            guard sameOrigin else {
                throw HubError.forbidden(
                    "dashboard action without same-origin evidence (Sec-Fetch-Site \(site ?? "-"), "
                        + "Origin \(origin ?? "-"))", event: nil)
            }
            try CrossSiteGuard.requireJSON(request)
        }
        let started = ContinuousClock.now
        var response = try await next(request, context)
        // W3C Server Timing: the hub's own time for the page (browsers show it; the benchmark reads it).
        if let field = Self.serverTiming {
            let milliseconds = (ContinuousClock.now - started) / .microseconds(1) / 1000
            response.headers[field] = "app;dur=" + String(format: "%.2f", milliseconds)
        }
        response.headers[.contentSecurityPolicy] = Dashboard.contentSecurityPolicy
        for (name, value) in Self.fixedHeaders { response.headers[name] = value }
        if response.headers[.cacheControl] == nil { response.headers[.cacheControl] = "no-store" }
        return response
    }
}

/// The operator listener's defence against cross-site requests, for every route (the dashboard's and the operator
/// API's): once a browser holds an operator certificate, any page it visits could otherwise make it send requests
/// to the hub with that certificate.
///
/// Fetch Metadata (W3C, `Sec-Fetch-Site`) and `Origin` (RFC 6454 §7) decide: a request whose `Sec-Fetch-Site` is
/// present and not `same-origin`, or whose `Origin` is present and not this listener's own, is refused, except a
/// top-level navigation (`GET`, `Sec-Fetch-Mode: navigate`, `Sec-Fetch-Dest: document`; a link to a dashboard page)
/// and a request the user typed (`Sec-Fetch-Site: none`). Clients that are no browser (the CLI, curl, Prometheus)
/// send neither field and pass. Refusals are audited once per certificate and minute.
struct CrossSiteGuard: RouterMiddleware {
    typealias Context = HubRequestContext

    static let site = HTTPField.Name("Sec-Fetch-Site")
    static let mode = HTTPField.Name("Sec-Fetch-Mode")
    static let destination = HTTPField.Name("Sec-Fetch-Dest")
    let audited = OncePerWindow()

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response)
        async throws -> Response
    {
        if let refusal = Self.refusal(request) {
            let key = context.peer?.serialHex ?? "-"
            let first = audited.first(key, now: Int64(Date().timeIntervalSince1970) / 60)
            throw HubError.forbidden(refusal, event: first ? "cross-site-request-refused" : nil)
        }
        return try await next(request, context)
    }

    static func refusal(_ request: Request) -> String? {
        let site = Self.site.flatMap { request.headers[$0] }
        let origin = request.headers[.origin]
        let navigation =
            request.method == .get && mode.flatMap { request.headers[$0] } == "navigate"
            && destination.flatMap { request.headers[$0] } == "document"
        if let site, site != "same-origin", !(site == "none" && request.method == .get), !navigation {
            return "cross-site \(request.method) \(request.uri.path) refused (Sec-Fetch-Site \(site))"
        }
        if let origin, origin != "https://" + (request.head.authority ?? ""), !navigation {
            return "cross-origin \(request.method) \(request.uri.path) refused (Origin \(origin))"
        }
        return nil
    }

    /// A state change carries a JSON body, which an HTML form cannot send (it can send `text/plain`, which is
    /// refused here whatever it contains).
    static func requireJSON(_ request: Request) throws {
        let type = request.headers[.contentType]?.split(separator: ";").first?.trimmingCharacters(in: .whitespaces)
        guard type?.lowercased() == "application/json" else {
            throw HubError(
                .unsupportedMediaType, "unsupported-media-type", message: "the body must be application/json",
                detail: "\(request.method) \(request.uri.path) with Content-Type \(type ?? "-")", event: nil)
        }
    }
}
