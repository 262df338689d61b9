public import Core
public import Hummingbird
public import Logging
public import NIOCore

/// Per-request context: the channel (to read the TLS peer certificate), a correlation id, and the peer identity
/// established by `PeerIdentityMiddleware`.
public struct HubRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    public let channel: any Channel
    public var correlationID = CorrelationID()
    public var peer: PeerCertificate?

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        channel = source.channel
        logger[metadataKey: "correlation_id"] = .string(correlationID.rawValue)
    }

    /// Bodies are read by the routes themselves with their own limit; this only caps Hummingbird's own decoding.
    public var maxUploadSize: Int { 64 * 1024 }
}

/// What the hub knows about the TLS peer of a request.
public struct PeerCertificate: Sendable, Hashable {
    public let identity: Identity
    public let serialHex: String
}
