import Core
import Foundation
public import HTTPTypes
public import Hummingbird

/// A refusal. Clients see only `code` (and, on the operator API, `message`) plus the correlation id; `detail` goes to
/// the log and to the security events table. "Unknown", "revoked" and "not allowed" all look the same to a device.
public struct HubError: Error, HTTPResponseError {
    public let status: HTTPResponse.Status
    public let code: String
    /// Safe, short text for operators (never for devices). Must not contain secrets.
    public let message: String?
    /// Operator-only detail for the log and the security events.
    public let detail: String
    /// Kind of security event to record, or nil when the refusal is not security-relevant.
    public let event: String?
    /// The peer's identity URI when it was established before the refusal (for the security event).
    public var identity: String?

    public init(_ status: HTTPResponse.Status, _ code: String, message: String? = nil, detail: String, event: String?) {
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail
        self.event = event
    }

    /// The CA key (on a PKCS#11 token) did not sign: 503, audited as `ca-unavailable`, the token's reason in the log.
    public static func caUnavailable(_ detail: String) -> HubError {
        HubError(
            .serviceUnavailable, "ca-unavailable", message: "the certificate authority is unavailable; try again later",
            detail: detail, event: "ca-unavailable")
    }

    public static func forbidden(_ detail: String, event: String? = "access-denied") -> HubError {
        HubError(.forbidden, "forbidden", detail: detail, event: event)
    }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        let correlationID = (context as? HubRequestContext)?.correlationID.rawValue ?? ""
        return Self.response(status: status, code: code, message: message, correlationID: correlationID)
    }

    static func response(status: HTTPResponse.Status, code: String, message: String?, correlationID: String) -> Response
    {
        var object: [String: String] = ["error": code, "correlationId": correlationID]
        if let message { object["message"] = message }
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data()
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        headers[.cacheControl] = "no-store"
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }
}
