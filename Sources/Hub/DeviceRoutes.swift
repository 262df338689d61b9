import Core
import Foundation
import Gateway
import HTTPTypes
import Hummingbird
import JSON
import NIOCore
import NIOHTTP1
import PKI
import Store
import X509

/// The device API, served on the device listener. The device is always the one named by its client certificate:
/// nothing in the body, a header or the URL can name another. Every request passes the gateway pipeline; every
/// request is signed (RFC 9421, see `MessageSignatureProfile`), reads included.
struct DeviceRoutes {
    let store: any HubStore
    let gateway: GatewayPipeline
    let maxBodyBytes: Int
    let renewal: RenewalSettings
    let events: DeviceEvents
    let sessions: SessionKeys

    /// The header that names a message's type (its schema); absent means `telemetry`.
    static let messageTypeField = HTTPField.Name("Bulwark-Message-Type")!
    static let signatureInputField = HTTPField.Name("Signature-Input")!
    static let signatureField = HTTPField.Name("Signature")!
    static let contentDigestField = HTTPField.Name("Content-Digest")!
    /// The routes an `hmac-sha256` session signature is accepted on.
    static let sessionRoutes: Set<String> = ["telemetry", "device"]

    func register(on router: Router<HubRequestContext>) {
        router.post("/v1/telemetry") { request, context in try await telemetry(request, context) }
        router.get("/v1/device") { request, context in try await ownRecord(request, context) }
        router.post("/v1/device/certificate") { request, context in try await renew(request, context) }
        router.post("/v1/device/session") { request, context in try await session(request, context) }
    }

    func inbound(_ request: Request, _ context: HubRequestContext, route: String) throws -> InboundMessage {
        guard let peer = context.peer else { throw HubError.forbidden("no peer identity") }
        let fields = Self.signedFields(request.headers)
        let contentType = fields.contentType
        let messageType = fields.messageType
        var message = InboundMessage(
            identity: peer.identity, route: route, source: context.sourceText,
            contentType: contentType, messageType: messageType, body: [],
            transport: .http(
                SignedRequest(
                    method: request.method.rawValue, path: request.uri.path,
                    signatureInput: fields.signatureInput, signature: fields.signature,
                    contentDigest: fields.contentDigest, contentType: contentType,
                    messageType: messageType,
                    // Only where a session key may stand in for the certificate's key: never for the next session key
                    // nor for a new certificate (each must be signed by the device's own key).
                    session: Self.sessionRoutes.contains(route)
                        ? sessions.key(on: context.channel, device: peer.identity.uri) : nil),
                key: peer.publicKey))
        message.deviceKey = peer.deviceKey
        message.sourceAddress = context.sourceKey
        return message
    }

    /// The fields the signature profile reads.
    struct SignedFields: Equatable {
        var contentType: String?
        var messageType: String?
        var signatureInput: String?
        var signature: String?
        var contentDigest: String?
    }

    /// Every line of each field combined as RFC 9421 §2.1 (and RFC 9110 §5.3) does, `, ` between them: what the
    /// signature covers is what the stages see. One pass over the fields; a field on one line is not copied.
    static func signedFields(_ fields: HTTPFields) -> SignedFields {
        var result = SignedFields()
        func add(_ slot: inout String?, _ value: String) { slot = slot.map { $0 + ", " + value } ?? value }
        for field in fields {
            switch field.name {
            case .contentType: add(&result.contentType, field.value)
            case messageTypeField: add(&result.messageType, field.value)
            case signatureInputField: add(&result.signatureInput, field.value)
            case signatureField: add(&result.signature, field.value)
            case contentDigestField: add(&result.contentDigest, field.value)
            default: continue
            }
        }
        return result
    }

    /// Stores one message and answers 202 only once it (and its nonce) is durable.
    func telemetry(_ request: Request, _ context: HubRequestContext) async throws -> Response {
        var message = try inbound(request, context, route: "telemetry")
        let identity = message.identity.uri
        let now = GatewayTime.now()
        let device: DeviceID
        switch gateway.admitEnvelope(message, now: now) {
        case .success(let admitted): device = admitted
        case .failure(let refusal): throw GatewayError(refusal: refusal, identity: identity)
        }
        // A body the HTTP layer cannot frame (a chunk size that is not hex, or one too large) is the client's fault:
        // a 400 counted toward the device's invalid-message quarantine (RFC 9112 §7.1).
        message.body = try await body(of: request, device: device, identity: identity)
        // The replay stage reads the clock only now that the whole body is here: a copy of a captured request whose
        // head is sent at once and whose body trickles in later must meet the `created` window and the nonce ledger
        // as they are when it completes, not as they were when its head arrived (README, "Replay").
        let admitted: Admitted
        switch gateway.admitContent(device, message, now: GatewayTime.now()) {
        case .success(let value): admitted = value
        case .failure(let refusal): throw GatewayError(refusal: refusal, identity: identity)
        }
        let id: Int64
        do {
            id = try await store.appendTelemetry(
                NewTelemetry(
                    deviceID: device, receivedAt: Date(), correlationID: context.correlationID.rawValue,
                    body: message.body,
                    nonce: admitted.nonce.flatMap {
                        $0.durable ? StoredNonce(nonce: $0.value, expiresAt: $0.expiresAt) : nil
                    },
                    messageType: admitted.messageType))
        } catch let error as StoreError where error.code == .replayed {
            // Another hub node stored this nonce first: a replay across nodes (the nonce stays taken here too).
            throw GatewayError(
                refusal: gateway.replayedElsewhere(
                    device, detail: "nonce already stored (by another hub node)", now: GatewayTime.now()),
                identity: identity)
        } catch {
            // Nothing was acknowledged: the device may retry with the same nonce.
            if let nonce = admitted.nonce { gateway.nonces.release(device: device, nonce: nonce.value) }
            throw error
        }
        // The device's own telemetry (not its update and connection reports): what a rollout watches for silence.
        if !DeviceEvents.observed(admitted.messageType) { events.signals.telemetry(device) }
        if DeviceEvents.observed(admitted.messageType) {
            await events.observe(
                device, messageType: admitted.messageType, body: message.body,
                correlationID: context.correlationID.rawValue)
        }
        // Both values are generated here (an integer and URL-safe Base64): no escaping is needed.
        return JSONResponse.make(
            .accepted, text: #"{"correlationId":"\#(context.correlationID.rawValue)","id":\#(id)}"#)
    }

    /// Certificate renewal with a new key: the body is `{"csr": PEM}`, a PKCS#10 request for a *fresh* P-256 (or
    /// P-384) key signed by that key (RFC 2986 §3, proof of possession), in a request signed by the current
    /// certificate's key (RFC 9421), so the device proves it holds both. The hub refuses an unknown, revoked or
    /// quarantined device (the envelope stages), and a key the device already had; it issues a certificate for the
    /// same identity, records which certificate it replaces, and audits it. The replaced certificate is revoked when
    /// the device first presents the new one, or at the end of `pki.renewalGraceSeconds` (`CertificateRenewals`).
    func renew(_ request: Request, _ context: HubRequestContext) async throws -> Response {
        guard let peer = context.peer else { throw HubError.forbidden("no peer identity") }
        let (device, identity, document, now) = try await admitSignedJSON(request, context, route: "certificate")
        func refused(_ detail: String) -> GatewayError {
            GatewayError(
                refusal: gateway.malformedRequest(device, problem: .invalidMessage, detail: detail, now: now),
                identity: identity)
        }
        guard document.count(document.root) == 1, let csr = document.member("csr", of: document.root),
            let pem = document.string(csr)
        else {
            throw refused("renewal: the body must be {\"csr\": PEM}")
        }
        guard let record = try await store.device(device), record.status == .active else {
            throw HubError.forbidden("renewal: device record missing or not active")
        }
        let certificate: Certificate
        do {
            let csr = try CertificateSigningRequest.parse(Array(pem.utf8))
            let key = csr.publicKey.spkiSHA256Hex
            if try await store.certificates(of: device).contains(where: { $0.spkiSHA256Hex == key }) {
                throw refused("renewal: the CSR's key is one this device already had (a renewal needs a new key)")
            }
            certificate = try renewal.authority.issueClientCertificate(
                for: .device(device), csr: csr, now: Date(), lifetime: renewal.certificateLifetime)
        } catch let error as PKIError where error.code == .keyUnavailable {
            throw HubError.caUnavailable("renewal of \(device): \(error)")
        } catch let error as PKIError {
            throw refused("renewal: \(error)")
        }
        // Revoked while the body was arriving (its first renewal was used meanwhile): no second live certificate.
        guard !renewal.revocations.contains(peer.serialHex) else {
            throw HubError.forbidden("renewal: the certificate being renewed was revoked meanwhile")
        }
        let pending = PendingRenewal(
            newSerialHex: certificate.serialHex, previousSerialHex: peer.serialHex, deviceID: device,
            graceUntil: Date().addingTimeInterval(renewal.graceSeconds))
        let superseded: [String]
        do {
            superseded = try await store.recordRenewal(
                certificate: HubCredentials.record(certificate, deviceID: device), renewal: pending)
        } catch let error as StoreError where error.code == .conflict || error.code == .notFound {
            throw HubError.forbidden("renewal: \(error)")
        }
        await renewal.renewals.add(pending, superseding: superseded)
        try await store.recordSecurityEvent(
            SecurityEvent(
                at: Date(), kind: "certificate-renewed", identity: identity,
                source: context.channel.remoteAddress?.ipAddress, correlationID: context.correlationID.rawValue,
                detail: "serial \(certificate.serialHex) replaces \(peer.serialHex)"
                    + (superseded.isEmpty
                        ? "" : "; unused earlier renewal \(superseded.joined(separator: ", ")) revoked")))
        return try JSONResponse.make(
            .created,
            [
                "certificate": certificate.pem, "serial": certificate.serialHex,
                "notAfter": JSONResponse.timestamp(certificate.notValidAfter),
                "correlationId": context.correlationID.rawValue,
            ] as [String: any Sendable])
    }

    /// An HMAC session key for this connection (`SessionKey`): the request is signed with the certificate's key
    /// (ECDSA, RFC 9421) like any other, its body is `{}`, and its nonce is recorded before the key is handed out. The
    /// answer carries the key once, over the mutual-TLS connection it is bound to; issuing is audited
    /// (`session-key-issued`). Later requests on the connection may be signed `hmac-sha256` with `keyid` set to the
    /// answer's `keyId`.
    func session(_ request: Request, _ context: HubRequestContext) async throws -> Response {
        guard sessions.lifetimeSeconds > 0 else {
            throw HubError(
                .notFound, "not-found", detail: "session keys are off (gateway.sessionKeySeconds 0)", event: nil)
        }
        let (device, identity, document, now) = try await admitSignedJSON(request, context, route: "session")
        guard document.isObject, document.count(document.root) == 0 else {
            throw GatewayError(
                refusal: gateway.malformedRequest(
                    device, problem: .invalidMessage, detail: "session: the body must be {}", now: now),
                identity: identity)
        }
        guard let key = sessions.issue(device: identity, on: context.channel, now: now.unixSeconds) else {
            throw HubError(.serviceUnavailable, "unavailable", detail: "session: the connection closed", event: nil)
        }
        try await store.recordSecurityEvent(
            SecurityEvent(
                at: Date(), kind: "session-key-issued", identity: identity,
                source: context.channel.remoteAddress?.ipAddress, correlationID: context.correlationID.rawValue,
                detail: "keyid \(key.id), expires \(key.expiresAt)"))
        return try JSONResponse.make(
            .created,
            [
                "keyId": key.id, "key": key.encodedKey, "alg": MessageSignatureProfile.hmacAlgorithm,
                "expiresAt": Int(key.expiresAt), "correlationId": context.correlationID.rawValue,
            ] as [String: any Sendable])
    }

    /// The whole pipeline for a signed JSON request whose body the route interprets itself (no schema, no message
    /// store): the envelope stages, the body, size and type, strict JSON, the signature and nonce; the nonce is made
    /// durable before the route acts on the request.
    func admitSignedJSON(
        _ request: Request, _ context: HubRequestContext, route: String
    ) async throws -> (device: DeviceID, identity: String, document: JSONDocument, now: GatewayTime) {
        var message = try inbound(request, context, route: route)
        let identity = message.identity.uri
        let device: DeviceID
        switch gateway.admitEnvelope(message, now: GatewayTime.now()) {
        case .success(let admitted): device = admitted
        case .failure(let refusal): throw GatewayError(refusal: refusal, identity: identity)
        }
        message.body = try await body(of: request, device: device, identity: identity)
        let now = GatewayTime.now()
        let document: JSONDocument
        let nonce: ClaimedNonce?
        do throws(Refusal) {
            try gateway.checkSizeAndType(device, message, now: now)
            document = try gateway.parse(device, message, now: now)
            (nonce, _) = try gateway.checkReplay(device, message, now: now)
        } catch {
            throw GatewayError(refusal: error, identity: identity)
        }
        if let nonce, nonce.durable {
            try await recordNonce(nonce, device: device, identity: identity)
        }
        return (device, identity, document, now)
    }

    /// Stores the nonce of a signed request that carries no message; one another hub node stored first is a replay.
    func recordNonce(_ nonce: ClaimedNonce, device: DeviceID, identity: String) async throws {
        do {
            try await store.recordNonce(
                device: device, nonce: StoredNonce(nonce: nonce.value, expiresAt: nonce.expiresAt))
        } catch let error as StoreError where error.code == .replayed {
            throw GatewayError(
                refusal: gateway.replayedElsewhere(
                    device, detail: "nonce already stored (by another hub node)", now: GatewayTime.now()),
                identity: identity)
        }
    }

    /// The body, refused as the gateway's size or framing stage would.
    func body(of request: Request, device: DeviceID, identity: String) async throws -> [UInt8] {
        do { return try await Self.collect(request, limit: maxBodyBytes) } catch is HubError {
            throw GatewayError(refusal: gateway.oversized(device, now: GatewayTime.now()), identity: identity)
        } catch let error as HTTPParserError {
            throw GatewayError(
                refusal: gateway.malformedRequest(
                    device, problem: .badRequest, detail: "HTTP framing: \(error)", now: GatewayTime.now()),
                identity: identity)
        }
    }

    /// The caller's own record; nothing about any other device. Signed like every device request (empty body).
    func ownRecord(_ request: Request, _ context: HubRequestContext) async throws -> Response {
        let message = try inbound(request, context, route: "device")
        let now = GatewayTime.now()
        let device: DeviceID
        switch gateway.admitEnvelope(message, now: now) {
        case .success(let admitted): device = admitted
        case .failure(let refusal): throw GatewayError(refusal: refusal, identity: message.identity.uri)
        }
        let nonce: ClaimedNonce?
        do throws(Refusal) {
            (nonce, _) = try gateway.checkReplay(device, message, now: now)
        } catch {
            throw GatewayError(refusal: error, identity: message.identity.uri)
        }
        if let nonce, nonce.durable {
            try await recordNonce(nonce, device: device, identity: message.identity.uri)
        }
        guard let record = try await store.device(device), record.status == .active
        else { throw HubError.forbidden("device record missing or not active") }
        let certificates = try await store.certificates(of: device)
        return try JSONResponse.make(
            .ok,
            [
                "id": device.rawValue,
                "status": record.status.rawValue,
                "createdAt": JSONResponse.timestamp(record.createdAt),
                "certificates": certificates.map {
                    ["serial": $0.serialHex, "notAfter": JSONResponse.timestamp($0.notAfter)] as [String: any Sendable]
                },
                "telemetryCount": try await store.telemetryCount(of: device),
            ] as [String: any Sendable])
    }

    /// Reads the body up to `limit` bytes. A declared or actual length over the limit is refused as soon as it is
    /// known, without buffering the rest.
    static func collect(_ request: Request, limit: Int) async throws -> [UInt8] {
        let tooLarge = HubError(
            .contentTooLarge, "payload-too-large", detail: "body exceeds \(limit) bytes", event: "invalid-message")
        if let declared = request.headers[.contentLength].flatMap(Int.init), declared > limit { throw tooLarge }
        var body: [UInt8] = []
        for try await chunk in request.body {
            guard body.count + chunk.readableBytes <= limit else { throw tooLarge }
            body.append(contentsOf: chunk.readableBytesView)
        }
        return body
    }
}

enum JSONResponse {
    static func make(_ status: HTTPResponse.Status, _ object: Any) throws -> Response {
        let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        headers[.cacheControl] = "no-store"
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    static func make(_ status: HTTPResponse.Status, text: String) -> Response {
        Response(status: status, headers: jsonHeaders, body: .init(byteBuffer: ByteBuffer(string: text)))
    }

    /// Built once: every JSON answer carries the same two fields.
    static let jsonHeaders: HTTPFields = {
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        headers[.cacheControl] = "no-store"
        return headers
    }()

    static func timestamp(_ date: Date) -> String { date.formatted(.iso8601) }
}
