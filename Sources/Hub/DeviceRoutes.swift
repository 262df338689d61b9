import Core
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import Store

/// The device API, served on the device listener. The device is always the one named by its client certificate:
/// nothing in the body, a header or the URL can name another.
struct DeviceRoutes {
    let store: any HubStore
    let maxBodyBytes: Int

    func register(on router: Router<HubRequestContext>) {
        router.post("/v1/telemetry") { request, context in try await telemetry(request, context) }
        router.get("/v1/device") { request, context in try await ownRecord(request, context) }
    }

    /// Stores one telemetry message and answers 202 only once it is durable.
    func telemetry(_ request: Request, _ context: HubRequestContext) async throws -> Response {
        guard case .device(let deviceID) = context.peer?.identity else { throw HubError.forbidden("not a device") }
        guard let contentType = request.headers[.contentType], Self.isJSON(contentType) else {
            throw HubError(
                .unsupportedMediaType, "unsupported-media-type",
                detail: "content type \(request.headers[.contentType] ?? "none") is not application/json",
                event: "invalid-message")
        }
        let body = try await Self.collect(request, limit: maxBodyBytes)
        guard (try? JSONSerialization.jsonObject(with: Data(body))) is [String: Any] else {
            throw HubError(
                .badRequest, "malformed", detail: "telemetry body is not a JSON object (\(body.count) bytes)",
                event: "invalid-message")
        }
        let id = try await store.appendTelemetry(
            NewTelemetry(
                deviceID: deviceID, receivedAt: Date(), correlationID: context.correlationID.rawValue, body: body))
        // Both values are generated here (an integer and hex digits): no escaping is needed.
        return JSONResponse.make(
            .accepted, text: #"{"correlationId":"\#(context.correlationID.rawValue)","id":\#(id)}"#)
    }

    /// The caller's own record; nothing about any other device.
    func ownRecord(_ request: Request, _ context: HubRequestContext) async throws -> Response {
        guard case .device(let deviceID) = context.peer?.identity,
            let record = try await store.device(deviceID), record.status == .active
        else { throw HubError.forbidden("device record missing or not active") }
        let certificates = try await store.certificates(of: deviceID)
        return try JSONResponse.make(
            .ok,
            [
                "id": deviceID.rawValue,
                "status": record.status.rawValue,
                "createdAt": JSONResponse.timestamp(record.createdAt),
                "certificates": certificates.map {
                    ["serial": $0.serialHex, "notAfter": JSONResponse.timestamp($0.notAfter)] as [String: any Sendable]
                },
                "telemetryCount": try await store.telemetryCount(of: deviceID),
            ] as [String: any Sendable])
    }

    static func isJSON(_ contentType: String) -> Bool {
        let mediaType = contentType.split(separator: ";", maxSplits: 1)[0].trimmingCharacters(in: .whitespaces)
        return mediaType.lowercased() == "application/json"
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
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        headers[.cacheControl] = "no-store"
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: text)))
    }

    static func timestamp(_ date: Date) -> String { date.formatted(.iso8601) }
}
