import Advisories
import Core
import Crypto
import Foundation
import Gateway
import HTTPTypes
import Hummingbird
import JSON
import Logging
import MQTT
import NIOCore
import PKI
import Pairing
import Store
import TUF
import X509

/// The operator API, served on the operator listener to certificates with the operator role only.
struct OperatorRoutes {
    let store: any HubStore
    let authority: CertificateAuthority
    let revocations: RevocationList
    let claims: PairingClaims
    let rids: RIDDirectory
    let gateway: GatewayPipeline
    let broker: MQTTBroker
    let crl: CRLPublisher
    let assignments: UpdateAssignments?
    /// `fips` refuses a label whose pairing suite is not approved (X25519, ChaCha20-Poly1305) at claim.
    var cryptoProfile = CryptoProfile.standard
    /// Staged rollouts (present when an update repository is configured).
    var rollouts: RolloutController?
    /// The vulnerability gate and its waivers.
    var releaseGate: ReleaseGate?
    /// Hands commands to the other hub nodes (several nodes on one database), where the device may be connected.
    var relay: MessageRelay?
    /// Saves the sessions a command was queued in before it is accepted, on one node (see `command`).
    var persistence: MQTTPersistence?
    /// This node's run (`GET /v1/nodes` marks it).
    var node: NodeDescription?

    func register(on router: Router<HubRequestContext>) {
        router.put("/v1/devices/:id/assignment") { request, context in
            let device = try await enrolledDevice(context, for: "assignment")
            return try await assign(request, context, scope: .device(device), name: "device \(device.rawValue)")
        }
        router.put("/v1/updates/classes/:class/assignment") { request, context in
            guard let name = context.parameters.get("class"), GatewayPipeline.isValidMessageType(name) else {
                throw Self.invalid("class names are 1-64 characters of a-z 0-9 . _ -")
            }
            return try await assign(request, context, scope: .deviceClass(name), name: "class \(name)")
        }
        router.put("/v1/updates/default") { request, context in
            try await assign(request, context, scope: .fleet, name: "the fleet")
        }
        router.get("/v1/crl") { _, context in try await currentCRL(context) }
        router.post("/v1/releases/gate") { request, context in try await gateRelease(request, context) }
        router.get("/v1/releases") { _, context in try await listReleases(context) }
        router.post("/v1/advisories/waivers") { request, context in try await waive(request, context) }
        router.get("/v1/advisories/waivers") { _, context in try await listWaivers(context) }
        router.post("/v1/advisories/rescan") { _, context in try await rescan(context) }
        router.get("/v1/updates/status") { _, _ in try await updateStatus() }
        router.post("/v1/rollouts") { request, context in try await startRollout(request, context) }
        router.get("/v1/rollouts/current") { _, _ in try await rolloutStatus() }
        router.post("/v1/rollouts/current/:action") { _, context in try await changeRollout(context) }
        router.post("/v1/devices") { request, context in try await enroll(request, context) }
        router.get("/v1/devices") { _, _ in try await list() }
        router.get("/v1/nodes") { _, context in try await nodes(context) }
        router.get("/v1/devices/:id") { _, context in try await show(context) }
        router.post("/v1/devices/:id/revoke") { _, context in try await revoke(context) }
        router.post("/v1/operators") { request, context in try await addOperator(request, context) }
        router.post("/v1/applications") { request, context in
            try await addOperator(request, context, role: .application)
        }
        router.post("/v1/monitors") { request, context in try await addOperator(request, context, role: .monitor) }
        router.post("/v1/certificates/:serial/revoke") { _, context in try await revokeCredential(context) }
        router.get("/v1/security-events") { request, _ in try await securityEvents(request) }
        router.post("/v1/pairing/claims") { request, context in try await claim(request, context) }
        router.get("/v1/rids/:rid") { _, context in try resolveRID(context) }
        router.post("/v1/devices/:id/release") { _, context in try await release(context) }
        router.put("/v1/schemas/:name") { request, context in try await putSchema(request, context) }
        router.get("/v1/schemas") { _, context in try await listSchemas(context) }
        router.post("/v1/devices/:id/commands/:name") { request, context in try await command(request, context) }
        router.put("/v1/devices/:id/class") { request, context in try await setClass(request, context) }
        router.get("/v1/policies/egress") { _, context in try await egressPolicies(context) }
        router.post("/v1/policies/egress/:class") { request, context in
            try await changeEgress(request, context, add: true)
        }
        router.post("/v1/policies/egress/:class/remove") { request, context in
            try await changeEgress(request, context, add: false)
        }
    }

    /// Lifts a device's quarantine (and its rate-limit state), persistently; a security event either way.
    func release(_ context: HubRequestContext) async throws -> Response {
        let operatorName = try requireOperator(context)
        let deviceID = try await enrolledDevice(context, for: "release")
        let wasQuarantined = gateway.release(deviceID)
        try await store.setQuarantine(deviceID, until: nil)
        try await store.recordSecurityEvent(
            SecurityEvent(
                at: Date(), kind: "device-released", identity: Identity.device(deviceID).uri,
                correlationID: context.correlationID.rawValue,
                detail: "by \(operatorName)\(wasQuarantined ? "" : " (was not quarantined)")"))
        return try JSONResponse.make(.ok, ["id": deviceID.rawValue, "wasQuarantined": wasQuarantined])
    }

    /// Assigns a target to a device, a class or the fleet (`{"target": PATH}`, or `{"target": null}` to remove it). The
    /// target must be listed in the published, signed targets metadata: the hub chooses among releases, never adds one.
    func assign(_ request: Request, _ context: HubRequestContext, scope: AssignmentScope, name: String) async throws
        -> Response
    {
        let operatorName = try requireOperator(context)
        guard let assignments else {
            throw HubError(
                .conflict, "no-repository", message: "no update repository is configured (tuf.repository)",
                detail: "assign", event: nil)
        }
        let object = try await jsonObject(request)
        let target = object["target"] as? String
        guard target != nil || object["target"] is NSNull else { throw Self.invalid("the body is {\"target\": PATH}") }
        if let target {
            guard let file = assignments.published(target) else {
                throw Self.invalid("\(target) is not a target in the published targets metadata")
            }
            if let refusal = try await releaseGate?.refusal(file) { throw Self.ungated(refusal) }
        }
        try await store.setAssignment(scope, target: target)
        try await store.recordSecurityEvent(
            SecurityEvent(
                at: Date(), kind: "update-assigned", identity: nil, correlationID: context.correlationID.rawValue,
                detail: "\(target ?? "no target") for \(name) by \(operatorName)"))
        return try JSONResponse.make(.ok, ["scope": name, "target": target.map { $0 as Any } ?? NSNull()])
    }

    /// Puts a device in a class (its egress policy), `{"class": NAME}`, or out of it, `{"class": null}`.
    func setClass(_ request: Request, _ context: HubRequestContext) async throws -> Response {
        let operatorName = try requireOperator(context)
        let deviceID = try await enrolledDevice(context, for: "class")
        let object = try await jsonObject(request)
        let name = object["class"] as? String
        if let name, !GatewayPipeline.isValidMessageType(name) {
            throw Self.invalid("class names are 1-64 characters of a-z 0-9 . _ -")
        }
        guard name != nil || object["class"] is NSNull else { throw Self.invalid("the body is {\"class\": NAME}") }
        try await store.setDeviceClass(deviceID, class: name)
        try await store.recordSecurityEvent(
            SecurityEvent(
                at: Date(), kind: "device-class-set", identity: Identity.device(deviceID).uri,
                correlationID: context.correlationID.rawValue, detail: "\(name ?? "none") by \(operatorName)"))
        return try JSONResponse.make(.ok, ["id": deviceID.rawValue, "class": name.map { $0 as Any } ?? NSNull()])
    }

    func egressPolicies(_ context: HubRequestContext) async throws -> Response {
        _ = try requireOperator(context)
        return try JSONResponse.make(.ok, try await store.egressRules())
    }

    /// Adds or removes an egress rule of a class (`{"rule": RULE}`, see `EgressRule`); audited.
    func changeEgress(_ request: Request, _ context: HubRequestContext, add: Bool) async throws -> Response {
        let operatorName = try requireOperator(context)
        guard let name = context.parameters.get("class"), GatewayPipeline.isValidMessageType(name) else {
            throw Self.invalid("class names are 1-64 characters of a-z 0-9 . _ -")
        }
        guard let rule = try await jsonObject(request)["rule"] as? String else {
            throw Self.invalid("the body is {\"rule\": RULE}")
        }
        do { _ = try EgressRule(rule) } catch { throw Self.invalid("rule \(rule): \(error)") }
        let changed =
            add
            ? try await store.addEgressRule(class: name, rule: rule)
            : try await store.removeEgressRule(class: name, rule: rule)
        if changed {
            try await store.recordSecurityEvent(
                SecurityEvent(
                    at: Date(), kind: "egress-policy-changed", identity: nil,
                    correlationID: context.correlationID.rawValue,
                    detail: "\(add ? "allowed" : "removed") \(rule) for class \(name) by \(operatorName)"))
        }
        return try JSONResponse.make(.ok, ["class": name, "rules": try await store.egressRules()[name] ?? []])
    }

    /// Sends a command to a device over MQTT: `devices/<id>/commands/<name>`, QoS 1, the body as the payload
    /// (a strict JSON object). It is delivered now if the device is connected and subscribed, or queued in its
    /// persistent session (bounded by `mqtt.maxQueuedMessages`). Answers 202 with the number of sessions it went to.
    func command(_ request: Request, _ context: HubRequestContext) async throws -> Response {
        let operatorName = try requireOperator(context)
        let deviceID = try await enrolledDevice(context, for: "command")
        guard let name = context.parameters.get("name"), GatewayPipeline.isValidMessageType(name),
            let topic = try? TopicName("devices/\(deviceID.rawValue)/commands/\(name)")
        else { throw Self.invalid("command names are 1-64 characters of a-z 0-9 . _ -") }
        try CrossSiteGuard.requireJSON(request)
        let body = try await DeviceRoutes.collect(request, limit: gateway.policy.maxBodyBytes)
        guard (try? gateway.policy.json.parse(body))?.isObject == true else {
            throw Self.invalid("the command body must be a strict JSON object")
        }
        let message = BrokerMessage(topic: topic, payload: body, qos: .atLeastOnce, retain: false)
        // On its way into the log and to this node's sessions: a session saved meanwhile does not count it as routed.
        let local = relay == nil ? nil : await broker.beginLocal(topic: topic)
        defer { withExtendedLifetime(local) {} }
        if let relay {
            // The device may be connected to another node. Handed on first: a command refused here (503, sent
            // again) has reached no one, on no node.
            do {
                try await store.relayMessage(relay.relayed(message, publisher: nil, placement: local?.placement ?? [:]))
            } catch {
                throw HubError(
                    .serviceUnavailable, "unavailable",
                    message: "the command could not be handed to the other hub nodes; try again",
                    detail: "command \(name) to \(deviceID) not relayed: \(error)", event: nil)
            }
        }
        // Sessions on this node (with several nodes, the others deliver it to theirs).
        let (recipients, holding) = await broker.publishing(message, from: nil, placement: local?.placement)
        // Accepted only once it outlives the process: one node keeps no log to replay from, so the sessions it was
        // queued in or sent to are saved first (otherwise every 250 ms: SIGKILL in between lost accepted commands).
        var saved = true
        if relay == nil, !holding.isEmpty, let persistence { saved = await persistence.flush(saving: holding) }
        let event = SecurityEvent(
            at: Date(), kind: "command-sent", identity: Identity.device(deviceID).uri,
            correlationID: context.correlationID.rawValue,
            detail: "\(name) by \(operatorName), \(body.count) bytes, \(recipients) session(s)"
                + (saved ? "" : ", not saved"))
        do { try await store.recordSecurityEvent(event) } catch {
            // In an outage the audit record may fail too: the answer below must still say what happened.
            guard !saved else { throw error }
            context.logger.error(
                "command-sent not recorded",
                metadata: ["correlation_id": "\(context.correlationID.rawValue)", "error": "\(error)"])
        }
        guard saved else {
            // Already queued (and perhaps delivered): the answer says so rather than inviting a blind resend.
            throw HubError(
                .serviceUnavailable, "unavailable",
                message: "the command is queued but could not be saved: it is delivered unless this hub stops "
                    + "first, and sending it again may deliver it twice",
                detail: "command \(name) to \(deviceID): its sessions not saved", event: nil)
        }
        return try JSONResponse.make(.accepted, ["topic": topic.rawValue, "sessions": recipients])
    }

    /// Registers the JSON Schema of a message type. A schema outside the supported subset is refused with the
    /// keyword it uses, never stored half-understood.
    func putSchema(_ request: Request, _ context: HubRequestContext) async throws -> Response {
        let operatorName = try requireOperator(context)
        guard let name = context.parameters.get("name"), GatewayPipeline.isValidMessageType(name) else {
            throw Self.invalid("message type names are 1-64 characters of a-z 0-9 . _ -")
        }
        try CrossSiteGuard.requireJSON(request)
        let body = try await DeviceRoutes.collect(request, limit: 256 * 1024)
        let schema: JSONSchema
        do { schema = try JSONSchema(bytes: body) } catch { throw Self.invalid("schema refused: \(error)") }
        try await store.putSchema(name: name, body: body, at: Date())
        gateway.setSchema(schema, for: name)
        try await store.recordSecurityEvent(
            SecurityEvent(
                at: Date(), kind: "schema-registered", identity: Identity.operator(operatorName).uri,
                correlationID: context.correlationID.rawValue, detail: "\(name), \(body.count) bytes"))
        return try JSONResponse.make(.created, ["name": name, "bytes": body.count])
    }

    func listSchemas(_ context: HubRequestContext) async throws -> Response {
        _ = try requireOperator(context)
        let schemas = try await store.schemas()
        return try JSONResponse.make(
            .ok,
            schemas.map { name, body in
                [
                    "name": name, "bytes": body.count,
                    "sha256": AuditChain.hex(SHA256.hash(data: body)),
                ] as [String: any Sendable]
            })
    }

    /// The enrolled device named by the `:id` path parameter, or 404.
    private func enrolledDevice(_ context: HubRequestContext, for action: String) async throws -> DeviceID {
        guard let idText = context.parameters.get("id"), let deviceID = try? DeviceID(idText),
            try await store.device(deviceID) != nil
        else {
            throw HubError(
                .notFound, "not-found", message: "no such device", detail: "\(action): no such device", event: nil)
        }
        return deviceID
    }

    private func requireOperator(_ context: HubRequestContext) throws -> OperatorName {
        guard case .operator(let name) = context.peer?.identity else { throw HubError.forbidden("not an operator") }
        return name
    }

    private static func invalid(_ message: String) -> HubError {
        HubError(.badRequest, "invalid-request", message: message, detail: message, event: nil)
    }

    private static func ungated(_ message: String) -> HubError {
        HubError(.conflict, "ungated-release", message: message, detail: message, event: nil)
    }

    private func jsonObject(_ request: Request) async throws -> [String: Any] {
        try CrossSiteGuard.requireJSON(request)
        let body = try await DeviceRoutes.collect(request, limit: 64 * 1024)
        guard let object = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any] else {
            throw Self.invalid("body must be a JSON object")
        }
        return object
    }

    /// Factory provisioning: issues a device certificate from a CSR (proof of possession checked in `PKI`).
    func enroll(_ request: Request, _ context: HubRequestContext) async throws -> Response {
        let operatorName = try requireOperator(context)
        let object = try await jsonObject(request)
        guard let idText = object["id"] as? String, let deviceID = try? DeviceID(idText) else {
            throw Self.invalid(IdentifierError(kind: "device id").description)
        }
        guard let csrText = object["csr"] as? String else { throw Self.invalid("csr (PEM text) is required") }
        let days = (object["days"] as? Int) ?? 90
        let certificate = try issue(for: .device(deviceID), csrText: csrText, days: days)
        try await store.enroll(
            device: deviceID, certificate: HubCredentials.record(certificate, deviceID: deviceID), at: Date())
        try await store.recordSecurityEvent(
            SecurityEvent(
                at: Date(), kind: "device-enrolled", identity: Identity.device(deviceID).uri,
                correlationID: context.correlationID.rawValue,
                detail: "by \(operatorName), serial \(certificate.serialHex)"))
        return try JSONResponse.make(
            .created,
            [
                "id": deviceID.rawValue, "serial": certificate.serialHex, "certificate": certificate.pem,
                "notAfter": JSONResponse.timestamp(certificate.notValidAfter),
            ])
    }

    private func issue(for identity: Identity, csrText: String, days: Int) throws(HubError) -> Certificate {
        do {
            let csr = try CertificateSigningRequest.parse(Array(csrText.utf8))
            return try authority.issueClientCertificate(for: identity, csr: csr, now: Date(), days: days)
        } catch  where error.code == .keyUnavailable {
            throw HubError.caUnavailable("\(identity): \(error)")
        } catch {
            throw HubError(
                .badRequest, "bad-csr", message: error.detail, detail: "\(identity): \(error)", event: "csr-refused")
        }
    }

    /// A node is down when it has not said it is alive (every 5 s) for this long.
    static let nodeDownAfterSeconds = 10.0

    /// A node's state as `bulwark node list` shows it, and as the other nodes count on it: up, down or stopped.
    static func state(of status: HubNodeStatus) -> String {
        status.stopped ? "stopped" : status.silentSeconds > nodeDownAfterSeconds ? "down" : "up"
    }

    /// The hub's nodes heard from in the last day (`bulwark node list`): up, down (silent for 10 s) or stopped.
    func nodes(_ context: HubRequestContext) async throws -> Response {
        _ = try requireOperator(context)
        var nodes = try await store.hubNodes()
        // A single node writes no heartbeat while it runs: the answering node is up, now.
        if !store.sharedByNodes, let node {
            let now = HubNodeStatus(node: node.record, lastSeen: Date(), silentSeconds: 0, stopped: false)
            nodes.removeAll { $0.node.holder == node.holder }
            nodes.insert(now, at: 0)
        }
        return try JSONResponse.make(
            .ok,
            nodes.map { status -> [String: Any] in
                [
                    "id": status.node.holder, "name": status.node.name, "addresses": status.node.addresses,
                    "version": status.node.version, "startedAt": JSONResponse.timestamp(status.node.startedAt),
                    "lastSeen": JSONResponse.timestamp(status.lastSeen),
                    "silentSeconds": (status.silentSeconds * 10).rounded() / 10,
                    "status": Self.state(of: status),
                    "thisNode": status.node.holder == node?.holder,
                ]
            })
    }

    func list() async throws -> Response {
        try JSONResponse.make(.ok, try await store.devices().map(Self.summary))
    }

    func show(_ context: HubRequestContext) async throws -> Response {
        guard let idText = context.parameters.get("id"), let deviceID = try? DeviceID(idText) else {
            throw Self.invalid(IdentifierError(kind: "device id").description)
        }
        guard let record = try await store.device(deviceID) else {
            throw HubError(.notFound, "not-found", message: "no device \(deviceID)", detail: "show", event: nil)
        }
        var summary = Self.summary(record)
        summary["certificates"] = try await store.certificates(of: deviceID).map {
            [
                "serial": $0.serialHex, "spkiSha256": $0.spkiSHA256Hex,
                "notBefore": JSONResponse.timestamp($0.notBefore), "notAfter": JSONResponse.timestamp($0.notAfter),
                "revokedAt": $0.revokedAt.map(JSONResponse.timestamp) ?? NSNull(),
            ] as [String: Any]
        }
        summary["telemetryCount"] = try await store.telemetryCount(of: deviceID)
        summary["class"] = try await store.deviceClass(deviceID).map { $0 as Any } ?? NSNull()
        summary["destinations"] = try await store.destinations(of: deviceID).map {
            [
                "listening": $0.listening, "proto": $0.proto, "address": $0.address, "port": $0.port,
                "firstSeen": JSONResponse.timestamp($0.firstSeen), "lastSeen": JSONResponse.timestamp($0.lastSeen),
                "reports": $0.reports,
            ] as [String: Any]
        }
        if let update = try await store.updateState(of: deviceID) { summary["update"] = Self.json(update) }
        return try JSONResponse.make(.ok, summary)
    }

    static func json(_ update: DeviceUpdateState) -> [String: Any] {
        var object: [String: Any] = [
            "floor": update.floor, "lastStep": update.lastStep, "updatedAt": JSONResponse.timestamp(update.updatedAt),
        ]
        if let installed = update.installedTarget { object["installed"] = installed }
        if let version = update.installedVersion { object["installedVersion"] = version }
        if let slot = update.slot { object["slot"] = slot }
        if let target = update.stepTarget { object["stepTarget"] = target }
        if let reason = update.reason { object["reason"] = reason }
        return object
    }

    /// `GET /v1/updates/status`: per target, the devices that run it, are trying it, and failed or rolled it back;
    /// and every device's state.
    private func rolloutController() throws -> RolloutController {
        guard let rollouts else {
            throw HubError(
                .conflict, "no-repository", message: "no update repository is configured (tuf.repository)",
                detail: "rollout", event: nil)
        }
        return rollouts
    }

    /// `{"target": PATH, "stages": [1, 10, 50, 100], "soakSeconds": 600, "maxFailureRate": 5, "minReported": 90}`.
    func startRollout(_ request: Request, _ context: HubRequestContext) async throws -> Response {
        let by = try requireOperator(context)
        let controller = try rolloutController()
        let object = try await jsonObject(request)
        if let target = object["target"] as? String, let file = assignments?.published(target),
            let refusal = try await releaseGate?.refusal(file)
        {
            throw Self.ungated(refusal)
        }
        guard let target = object["target"] as? String, let stages = object["stages"] as? [Int],
            let soak = (object["soakSeconds"] as? NSNumber)?.doubleValue,
            let rate = (object["maxFailureRate"] as? NSNumber)?.doubleValue
        else { throw Self.invalid("the body is {target, stages: [percent…], soakSeconds, maxFailureRate}") }
        let reported = (object["minReported"] as? NSNumber)?.doubleValue ?? 90
        let (rollout, note) = try await controller.start(
            target: target, stages: stages, soakSeconds: soak, maxFailureRate: rate, minimumReported: reported,
            by: by.rawValue, correlationID: context.correlationID.rawValue)
        var body = Self.json(rollout)
        if let note { body["note"] = note }
        return try JSONResponse.make(.created, body)
    }

    func gate() throws -> ReleaseGate {
        guard let releaseGate else {
            throw HubError(.conflict, "no-gate", message: "the vulnerability gate is off", detail: "gate", event: nil)
        }
        return releaseGate
    }

    /// `{target, sha256, version, securityVersion, sbom: BASE64, vex: BASE64?}` → the gate's decision and report
    /// (the canonical JSON text whose SHA-256 the release's TUF custom carries). 200 either way: `blocked` says.
    func gateRelease(_ request: Request, _ context: HubRequestContext) async throws -> Response {
        let by = try requireOperator(context)
        let gate = try gate()
        try CrossSiteGuard.requireJSON(request)
        let body = try await DeviceRoutes.collect(request, limit: ReleaseGate.maximumBodyBytes)
        // Target paths and versions as agents report them (at most 255 characters, no control characters), so a
        // rescan can find the devices running a release.
        let reportable = { (text: String) in
            (1...255).contains(text.utf8.count) && !text.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7F }
        }
        guard let object = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any],
            let target = object["target"] as? String, reportable(target),
            let sha256 = object["sha256"] as? String, sha256.utf8.count == 64, hexDecode(sha256) != nil,
            let version = object["version"] as? String, reportable(version),
            let number = object["securityVersion"] as? NSNumber, Self.isInteger(number),
            (0...Int64(Int32.max)).contains(number.int64Value),
            let sbomText = object["sbom"] as? String, let sbom = Data(base64Encoded: sbomText)
        else {
            throw Self.invalid(
                "the body is {target, sha256 (hex), version, securityVersion (0-2147483647), sbom (base64), vex?}; "
                    + "target and version are 1-255 bytes without control characters")
        }
        let securityVersion = Int(number.int64Value)
        var vex: [UInt8]?
        if let vexText = object["vex"] as? String {
            guard let data = Data(base64Encoded: vexText) else { throw Self.invalid("vex must be base64") }
            vex = Array(data)
        }
        let (record, report, summary) = try await gate.gate(
            .init(
                target: target, sha256: sha256.lowercased(), version: version, securityVersion: securityVersion,
                sbom: Array(sbom), vex: vex),
            by: by.rawValue, correlationID: context.correlationID.rawValue, now: Date())
        return try JSONResponse.make(
            .ok,
            [
                "blocked": record.blocked, "report": String(decoding: record.report, as: UTF8.self),
                "reportSHA256": record.reportSHA256, "sbomSHA256": report.sbomSHA256,
                "findings": report.findings.map(Self.json), "advisories": summary.records,
                "blockSeverity": report.blockSeverity.label, "checked": report.checked,
                "unchecked": report.unchecked, "uncheckedCount": report.uncheckedCount, "truncated": report.truncated,
                "waivers": report.waiversUsed.map { ["advisory": $0.advisory, "purl": $0.purl, "until": $0.until] },
                "vex": report.vexUsed.map { ["advisory": $0.id, "justification": $0.justification ?? ""] },
            ])
    }

    /// A JSON number that is an integer (not `true`, not `1.5`).
    static func isInteger(_ number: NSNumber) -> Bool {
        let type = String(cString: number.objCType)
        return type != "c" && type != "d" && type != "f" && Double(number.int64Value) == number.doubleValue
    }

    func listReleases(_ context: HubRequestContext) async throws -> Response {
        _ = try requireOperator(context)
        return try JSONResponse.make(
            .ok,
            try await store.releases().map {
                [
                    "target": $0.target, "sha256": $0.sha256, "version": $0.version,
                    "securityVersion": $0.securityVersion, "blocked": $0.blocked, "reportSHA256": $0.reportSHA256,
                    "at": Int64($0.at.timeIntervalSince1970), "by": $0.by,
                ]
            })
    }

    /// `{advisory, purl, reason, until}` (until: seconds since 1970, in the future, at most a year ahead): an
    /// operator's waiver, audited with their name and reason.
    func waive(_ request: Request, _ context: HubRequestContext) async throws -> Response {
        let by = try requireOperator(context)
        _ = try gate()
        let object = try await jsonObject(request)
        let now = Int64(Date().timeIntervalSince1970)
        guard let advisory = object["advisory"] as? String, (1...128).contains(advisory.utf8.count),
            advisory.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value < 0x7F }),
            let purl = object["purl"] as? String, let reason = object["reason"] as? String,
            let until = (object["until"] as? NSNumber)?.int64Value
        else { throw Self.invalid("the body is {advisory, purl, reason, until}") }
        guard (try? PackageURL(parsing: purl)) != nil else { throw Self.invalid("purl is not a package URL") }
        guard !reason.trimmingCharacters(in: .whitespaces).isEmpty, reason.utf8.count <= 1024 else {
            throw Self.invalid("a waiver needs a reason (at most 1024 bytes)")
        }
        guard until > now, until <= now + 366 * 86400 else {
            throw Self.invalid("until must be in the future and at most a year ahead")
        }
        let waiver = Waiver(advisory: advisory, purl: purl, reason: reason, until: until, by: by.rawValue)
        try await store.addWaiver(waiver)
        try await store.recordSecurityEvent(
            SecurityEvent(
                at: Date(), kind: "advisory-waived", identity: nil, correlationID: context.correlationID.rawValue,
                detail: "\(advisory) for \(purl) until \(Date(timeIntervalSince1970: TimeInterval(until))) by "
                    + "\(by.rawValue): \(reason)"))
        return try JSONResponse.make(
            .created, ["advisory": advisory, "purl": purl, "reason": reason, "until": until, "by": by.rawValue])
    }

    func listWaivers(_ context: HubRequestContext) async throws -> Response {
        _ = try requireOperator(context)
        let now = Int64(Date().timeIntervalSince1970)
        return try JSONResponse.make(
            .ok,
            try await store.waivers().map {
                [
                    "advisory": $0.advisory, "purl": $0.purl, "reason": $0.reason, "until": $0.until, "by": $0.by,
                    "active": $0.until > now,
                ]
            })
    }

    /// Re-matches every released SBOM; `deployedBlocking` is true when a device runs a release that would now be
    /// blocked.
    func rescan(_ context: HubRequestContext) async throws -> Response {
        let by = try requireOperator(context)
        let (results, ungated, summary) = try await gate().rescan(
            by: by.rawValue, correlationID: context.correlationID.rawValue, now: Date())
        return try JSONResponse.make(
            .ok,
            [
                "advisories": summary.records,
                "deployedBlocking": results.contains { $0.deployedBlocking }
                    || ungated.contains { !$0.devices.isEmpty },
                "releases": results.map { result in
                    [
                        "target": result.release.target, "version": result.release.version,
                        "blocked": result.blocked, "deployedBlocking": result.deployedBlocking,
                        "devices": result.devices.map(\.rawValue), "sbomUnreadable": result.report == nil,
                        "findings": result.report?.findings.map(Self.json) ?? [],
                    ] as [String: Any]
                },
                "ungated": ungated.map { target in
                    [
                        "target": target.target, "version": target.version ?? "",
                        "devices": target.devices.map(\.rawValue),
                    ] as [String: Any]
                },
            ])
    }

    static func json(_ finding: GateReport.Finding) -> [String: Any] {
        var object: [String: Any] = [
            "advisory": finding.advisory, "aliases": finding.aliases, "purl": finding.purl,
            "severity": finding.severity, "fixed": finding.fixed, "blocking": finding.blocking,
        ]
        if let score = finding.score { object["score"] = score }
        if let waivedBy = finding.waivedBy { object["waivedBy"] = waivedBy }
        if let summary = finding.summary { object["summary"] = summary }
        if finding.versionUnordered { object["versionUnordered"] = true }
        return object
    }

    func rolloutStatus() async throws -> Response {
        let controller = try rolloutController()
        guard let rollout = controller.current.withLock({ $0 }) else {
            throw HubError(.notFound, "not-found", message: "no rollout was started", detail: "rollout", event: nil)
        }
        let now = Date().timeIntervalSince1970
        var body = Self.json(rollout)
        if rollout.state == .running || rollout.state == .paused {
            let cohort = try await controller.cohort(of: rollout, now: now)
            body["cohort"] = cohort.count
            body["committed"] = cohort.filter { $0.0.step == "committed" && $0.1 == nil }.count
            body["failures"] = cohort.compactMap { facts, why in
                why.map { ["device": facts.device.rawValue, "why": $0] }
            }
            body["soakRemainingSeconds"] = max(0, rollout.soakSeconds - (now - rollout.stageStartedAt))
        }
        return try JSONResponse.make(.ok, body)
    }

    func changeRollout(_ context: HubRequestContext) async throws -> Response {
        let by = try requireOperator(context)
        let controller = try rolloutController()
        guard let action = context.parameters.get("action"), ["pause", "resume", "abort"].contains(action) else {
            throw Self.invalid("the action is pause, resume or abort")
        }
        let rollout = try await controller.change(
            action, by: by.rawValue, correlationID: context.correlationID.rawValue)
        return try JSONResponse.make(.ok, Self.json(rollout))
    }

    static func json(_ rollout: Rollout) -> [String: Any] {
        var body: [String: Any] = [
            "id": rollout.id, "target": rollout.target, "stages": rollout.stages, "soakSeconds": rollout.soakSeconds,
            "maxFailureRate": rollout.maxFailureRate, "minReported": rollout.minimumReported,
            "state": rollout.state.rawValue, "stage": rollout.stage + 1,
            "share": Double(rollout.share) / 100,
            "startedAt": JSONResponse.timestamp(Date(timeIntervalSince1970: rollout.startedAt)),
            "stageStartedAt": JSONResponse.timestamp(Date(timeIntervalSince1970: rollout.stageStartedAt)),
        ]
        body["previous"] = rollout.previous ?? NSNull()
        body["reason"] = rollout.reason ?? NSNull()
        return body
    }

    func updateStatus() async throws -> Response {
        let states = try await store.updateStates()
        var targets: [String: [String: Int]] = [:]
        func count(_ target: String?, _ key: String) {
            guard let target else { return }
            targets[target, default: ["running": 0, "trial": 0, "refused": 0, "rolledBack": 0]][key, default: 0] += 1
        }
        for state in states {
            count(state.installedTarget, "running")
            switch state.lastStep {
            case "downloading", "installed", "trial": count(state.stepTarget, "trial")
            case "refused": count(state.stepTarget ?? "(none)", "refused")
            case "rolled-back": count(state.stepTarget, "rolledBack")
            default: break
            }
        }
        return try JSONResponse.make(
            .ok,
            [
                "targets": targets.keys.sorted().map { ["target": $0].merging(targets[$0] ?? [:]) { a, _ in a } },
                "devices": states.map { ["device": $0.deviceID.rawValue].merging(Self.json($0)) { a, _ in a } },
            ] as [String: Any])
    }

    func revoke(_ context: HubRequestContext) async throws -> Response {
        let operatorName = try requireOperator(context)
        guard let idText = context.parameters.get("id"), let deviceID = try? DeviceID(idText) else {
            throw Self.invalid(IdentifierError(kind: "device id").description)
        }
        // A pending claim goes too: a revoked device must not pair back in on a label entered before (a pairing
        // already under way is refused when it tries to activate: the store compares the times).
        try await claims.drop(deviceID)
        let serials: [String]
        do { serials = try await store.revoke(device: deviceID, at: Date()) } catch let error as StoreError
            where error.code == .notFound
        {
            throw HubError(.notFound, "not-found", message: "no device \(deviceID)", detail: "revoke", event: nil)
        }
        revocations.insert(serials)
        await crl.revocationsChanged()
        try await store.recordSecurityEvent(
            SecurityEvent(
                at: Date(), kind: "device-revoked", identity: Identity.device(deviceID).uri,
                correlationID: context.correlationID.rawValue,
                detail: "by \(operatorName), serials \(serials.joined(separator: ","))"))
        return try JSONResponse.make(.ok, ["id": deviceID.rawValue, "revokedSerials": serials])
    }

    /// Revokes an operator, application or monitor certificate by its serial (a device's go with `revoke`): at once
    /// on every listener (handshakes and open keep-alive connections), in the next CRL, audited. The hub's own
    /// certificates and the certificate making the request are refused: neither can be taken away by mistake here.
    func revokeCredential(_ context: HubRequestContext) async throws -> Response {
        let operatorName = try requireOperator(context)
        guard let serial = context.parameters.get("serial")?.lowercased(),
            (1...40).contains(serial.count), serial.allSatisfy(\.isHexDigit)
        else { throw Self.invalid("a serial is 1-40 hexadecimal digits") }
        guard let record = try await store.certificate(serialHex: serial) else {
            throw HubError(.notFound, "not-found", message: "no certificate \(serial)", detail: "revoke", event: nil)
        }
        guard record.deviceID == nil, let identity = Identity(uri: record.subject), identity.deviceID == nil else {
            throw HubError(
                .conflict, "not-a-credential",
                message: "certificate \(serial) is not an operator, application or monitor credential "
                    + "(devices: bulwark device revoke ID)", detail: "revoke \(serial)", event: nil)
        }
        guard serial != context.peer?.serialHex else {
            throw HubError(
                .conflict, "own-certificate", message: "the certificate making this request cannot revoke itself",
                detail: "revoke \(serial)", event: nil)
        }
        let revoked = try await store.revokeCertificate(serialHex: serial, at: Date())
        revocations.insert([serial])
        await crl.revocationsChanged()
        try await store.recordSecurityEvent(
            SecurityEvent(
                at: Date(), kind: "credential-revoked", identity: identity.uri,
                correlationID: context.correlationID.rawValue, detail: "by \(operatorName), serial \(serial)"))
        return try JSONResponse.make(
            .ok,
            [
                "serial": serial, "identity": identity.uri,
                "revokedAt": JSONResponse.timestamp(revoked.revokedAt ?? Date()),
            ])
    }

    /// The hub CA's current CRL (RFC 5280 §5) in DER, as `application/pkix-crl` (RFC 2585 §4.2). Relying parties
    /// without an operator certificate fetch it from the plain `pki.crlAddress` listener instead.
    func currentCRL(_ context: HubRequestContext) async throws -> Response {
        _ = try requireOperator(context)
        guard let list = await crl.current else {
            throw HubError(
                .serviceUnavailable, "unavailable", message: "no CRL yet", detail: "crl: none published", event: nil)
        }
        return Response(
            status: .ok, headers: [.contentType: "application/pkix-crl", .cacheControl: "no-cache"],
            body: ResponseBody(byteBuffer: ByteBuffer(bytes: list.derBytes)))
    }

    /// The credentials an operator issues from a CSR made on the new holder's machine.
    enum CredentialRole: String { case `operator`, application, monitor }

    /// Issues an operator credential; an application one (MQTT fleet access only, no operator API); or a monitor
    /// one (`GET /metrics` on the operator listener only).
    func addOperator(_ request: Request, _ context: HubRequestContext, role: CredentialRole = .operator) async throws
        -> Response
    {
        let by = try requireOperator(context)
        let object = try await jsonObject(request)
        guard let nameText = object["name"] as? String, let name = try? OperatorName(nameText) else {
            throw Self.invalid(IdentifierError(kind: "\(role.rawValue) name").description)
        }
        guard let csrText = object["csr"] as? String else { throw Self.invalid("csr (PEM text) is required") }
        let identity: Identity =
            switch role {
            case .operator: .operator(name)
            case .application: .application(name)
            case .monitor: .monitor(name)
            }
        let certificate = try issue(for: identity, csrText: csrText, days: 397)
        try await store.addCertificate(HubCredentials.record(certificate, deviceID: nil))
        try await store.recordSecurityEvent(
            SecurityEvent(
                at: Date(), kind: "\(role.rawValue)-added", identity: identity.uri,
                correlationID: context.correlationID.rawValue, detail: "by \(by), serial \(certificate.serialHex)"))
        return try JSONResponse.make(
            .created, ["name": name.rawValue, "serial": certificate.serialHex, "certificate": certificate.pem])
    }

    /// The operator entered a device's label: the hub will pair with that device (once, until the claim expires).
    func claim(_ request: Request, _ context: HubRequestContext) async throws -> Response {
        let by = try requireOperator(context)
        let object = try await jsonObject(request)
        guard let text = object["label"] as? String else { throw Self.invalid("label is required") }
        let label: PairingLabel
        do { label = try PairingLabel(text: text) } catch {
            throw HubError(
                .badRequest, "bad-label", message: error.detail, detail: "claim: \(error)",
                event: "pairing-claim-refused")
        }
        guard cryptoProfile.allowsPairingSuite(label.suite.name) else {
            throw HubError(
                .badRequest, "suite-not-approved",
                message: "the label's pairing suite \(label.suite.name) is not allowed by crypto.profile fips "
                    + "(P256_AESGCM_SHA256 only)",
                detail: "claim of \(label.deviceID): suite \(label.suite.name) outside the FIPS profile",
                event: "pairing-claim-refused")
        }
        let expires = try await claims.add(label, now: Date())
        try await store.recordSecurityEvent(
            SecurityEvent(
                at: Date(), kind: "pairing-claimed", identity: Identity.device(label.deviceID).uri,
                correlationID: context.correlationID.rawValue, detail: "by \(by), suite \(label.suite.name)"))
        return try JSONResponse.make(
            .created,
            [
                "deviceId": label.deviceID.rawValue, "suite": label.suite.name,
                "expiresAt": JSONResponse.timestamp(expires),
            ])
    }

    /// Which device announced itself with this rotating identifier (previous, current or next epoch)?
    func resolveRID(_ context: HubRequestContext) throws -> Response {
        guard let text = context.parameters.get("rid"), let rid = RotatingIdentifier.parse(text) else {
            throw Self.invalid("a RID is 16 base32 characters")
        }
        guard let device = rids.resolve(rid) else {
            throw HubError(.notFound, "not-found", message: "no device has that RID now", detail: "rid", event: nil)
        }
        return try JSONResponse.make(.ok, ["rid": text.lowercased(), "deviceId": device.rawValue])
    }

    func securityEvents(_ request: Request) async throws -> Response {
        let limit = min(max(request.uri.queryParameters.get("limit", as: Int.self) ?? 100, 1), 10_000)
        let events = try await store.securityEvents(limit: limit)
        return try JSONResponse.make(
            .ok,
            events.map {
                [
                    "id": $0.id ?? 0, "at": JSONResponse.timestamp($0.at), "kind": $0.kind,
                    "identity": $0.identity ?? NSNull(), "source": $0.source ?? NSNull(),
                    "correlationId": $0.correlationID ?? NSNull(), "detail": $0.detail,
                ] as [String: Any]
            })
    }

    static func summary(_ record: DeviceRecord) -> [String: Any] {
        [
            "id": record.id.rawValue, "status": record.status.rawValue,
            "createdAt": JSONResponse.timestamp(record.createdAt),
            "revokedAt": record.revokedAt.map(JSONResponse.timestamp) ?? NSNull(),
        ]
    }
}
