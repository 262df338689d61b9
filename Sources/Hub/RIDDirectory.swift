import Core
import Foundation
import Logging
import Pairing
import ServiceLifecycle
import Store
import Synchronization

/// Resolves rotating identifiers to devices for the hub (O(1) lookups in a table for epochs e−1, e, e+1). The
/// table is rebuilt from the store at start and at each epoch boundary, and extended when a device pairs.
final class RIDDirectory: Service {
    private let store: any HubStore
    private let resolver = Mutex(RIDResolver(devices: [], epoch: 0))
    private let logger: Logger

    init(store: any HubStore, logger: Logger) {
        self.store = store
        self.logger = logger
    }

    static func currentEpoch() -> UInt64 { RotatingIdentifier.epoch(unixSeconds: Int64(Date().timeIntervalSince1970)) }

    func rebuild() async throws {
        let keys = try await store.identityResolvingKeys()
        let epoch = Self.currentEpoch()
        let fresh = RIDResolver(devices: keys.map { ($0.0, irk: $0.1) }, epoch: epoch)
        resolver.withLock { $0 = fresh }
    }

    func resolve(_ rid: [UInt8]) -> DeviceID? { resolver.withLock { $0.resolve(rid) } }

    func insert(_ device: DeviceID, irk: [UInt8]) { resolver.withLock { $0.insert(device, irk: irk) } }

    /// Rebuilds at start and then at every epoch boundary until shutdown.
    func run() async throws {
        try await rebuild()
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            let now = Date().timeIntervalSince1970
            let next =
                Double(Int64(now) / RotatingIdentifier.epochSeconds + 1) * Double(RotatingIdentifier.epochSeconds)
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: .seconds(next - now + 0.01)) }
            if Task.isShuttingDownGracefully { break }
            do { try await rebuild() } catch {
                logger.error("RID table rebuild failed", metadata: ["error": "\(error)"])
            }
        }
    }
}
