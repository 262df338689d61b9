import Foundation
import Logging
import ServiceLifecycle
import Store
import TUFRepository

/// The update repository's online roles, kept fresh by the hub (TUF §4.4, §4.6: timestamp and snapshot expire soon
/// so that a freeze attack is noticed; somebody must re-sign them before they do). Only the online keys (timestamp,
/// snapshot) belong in `tuf.onlineKeys`; the root and targets keys stay offline. Each re-signing is audited.
struct TUFResignService: Service {
    let resigner: Resigner
    let store: any HubStore
    let logger: Logger

    func run() async throws {
        try await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                do {
                    let roles = try await resigner.tick()
                    if !roles.isEmpty {
                        logger.info("TUF roles re-signed", metadata: ["roles": .string(roles.joined(separator: ","))])
                        try? await store.recordSecurityEvent(
                            SecurityEvent(
                                at: Date(), kind: "tuf-resigned", identity: nil,
                                detail: "\(roles.joined(separator: ", ")) in \(resigner.directory)"))
                    }
                } catch {
                    logger.error("TUF re-signing failed", metadata: ["error": .string("\(error)")])
                }
                // Cancelled at graceful shutdown: end quietly.
                do { try await Task.sleep(for: resigner.interval) } catch { return }
            }
        }
    }
}

/// Evaluates the staged rollout every `interval` (`rollout.evaluateSeconds`) until the hub stops.
struct RolloutService: Service {
    let controller: RolloutController
    let interval: Duration

    func run() async throws {
        try await cancelWhenGracefulShutdown { await controller.run(interval: interval) }
    }
}
