/// The pairing listener's bounds (`pairing.*` keys). Counted when TCP accepts, before the hub says anything.
public struct PairingSettings: Sendable, Equatable {
    /// Pairing connections held at once, in all and from one source address.
    public var maxConnections = 128
    public var maxConnectionsPerSource = 4
    /// The device's hello must arrive within this time of the hub's; the whole pairing within 30 s.
    public var helloSeconds = 5.0

    public init() {}

    func validate() throws {
        guard (1...100_000).contains(maxConnections), (1...100_000).contains(maxConnectionsPerSource) else {
            throw HubStartupError("pairing.maxConnections and pairing.maxConnectionsPerSource must be 1-100000")
        }
        guard (0.1...30).contains(helloSeconds) else { throw HubStartupError("pairing.helloSeconds must be 0.1-30") }
    }
}
