public import Core
public import Crypto
public import Gateway
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
    /// The connection's remote address as text and as the rate limiter's key, read once per connection with its peer
    /// (the channel's address getter takes a lock and formatting it allocates: both per request before).
    public internal(set) var source: String?
    public internal(set) var sourceAddress: SourceAddress?

    /// The remote address as text, from the connection's cache when the peer middleware has run.
    public var sourceText: String { source ?? channel.remoteAddress?.ipAddress ?? "unknown" }

    /// The remote address as the rate limiter's key, from the same cache.
    public var sourceKey: SourceAddress? { sourceAddress ?? SourceAddress(channel.remoteAddress) }

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        channel = source.channel
        logger[metadataKey: "correlation_id"] = .string(correlationID.rawValue)
    }

    /// Bodies are read by the routes themselves with their own limit; this only caps Hummingbird's own decoding.
    public var maxUploadSize: Int { 64 * 1024 }
}

/// What the hub knows about the TLS peer of a request: who it is, which certificate, and its key (to check
/// request signatures with the certificate's key and no other).
public struct PeerCertificate: Sendable {
    public let identity: Identity
    public let serialHex: String
    public let publicKey: P256.Signing.PublicKey?
    /// The device's interned key in the hub's gateway (devices only).
    public let deviceKey: DeviceKey?

    public init(
        identity: Identity, serialHex: String, publicKey: P256.Signing.PublicKey? = nil, deviceKey: DeviceKey? = nil
    ) {
        self.identity = identity
        self.serialHex = serialHex
        self.publicKey = publicKey
        self.deviceKey = deviceKey
    }
}
