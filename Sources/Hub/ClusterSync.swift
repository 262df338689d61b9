import Foundation
import Gateway
import Logging
import MQTT
import ServiceLifecycle
import Store

/// Applies the changes other hub nodes record (`ClusterEvent`: revocations, quarantines and releases, schemas) to what
/// this node holds in memory, so they bite here too: a revoked device's open MQTT connection is closed the moment
/// its serial reaches the revocation list (its watcher), and the gateway refuses a quarantined device at its next
/// message.
///
/// Woken by the store's notifications (LISTEN/NOTIFY on PostgreSQL) and, should one be missed, every
/// `cluster.reconcileSeconds`: the events are read from the database by id, so a missed wake-up only delays them.
/// A node applies its own events again; every change is idempotent. A single-node store records none.
actor ClusterSync: Service {
    private let store: any HubStore
    private let revocations: RevocationList
    private let gateway: GatewayPipeline
    private let crl: CRLPublisher
    /// Delivers the MQTT messages other nodes relayed to this node's subscribers (nil: none are delivered here).
    private let broker: MQTTBroker?
    private let relay: MessageRelay?
    /// Hands over the MQTT sessions other nodes ask for.
    private let persistence: MQTTPersistence?
    private let interval: Duration
    private let logger: Logger
    /// The last event applied: read before the gateway's state was restored, so nothing between is skipped.
    private var position: Int64
    private var syncing = false
    private var again = false
    /// A schema change whose reload failed: reloaded at the next sync (the events are not read again, so the
    /// messages among them are not delivered twice).
    private var schemasPending = false

    init(
        store: any HubStore, revocations: RevocationList, gateway: GatewayPipeline, crl: CRLPublisher,
        broker: MQTTBroker? = nil, relay: MessageRelay? = nil, persistence: MQTTPersistence? = nil, position: Int64,
        interval: Duration, logger: Logger
    ) {
        self.store = store
        self.persistence = persistence
        self.broker = broker
        self.relay = relay
        self.revocations = revocations
        self.gateway = gateway
        self.crl = crl
        self.position = position
        self.interval = interval
        self.logger = logger
    }

    func run() async throws {
        let store = store
        let interval = interval
        // The other nodes' shared subscriptions, before this node places its first message among them.
        await refreshNodes()
        try await cancelWhenGracefulShutdown {
            await withTaskGroup(of: Void.self) { group in
                group.addTask {
                    for await _ in store.clusterNotifications() { await self.sync() }
                }
                group.addTask {
                    while !Task.isCancelled {
                        do { try await Task.sleep(for: interval) } catch { return }
                        await self.sync()
                        await self.refreshNodes()
                    }
                }
            }
        }
    }

    /// Reads and applies every event after `position`; a call while one runs makes that one read again.
    func sync() async {
        if syncing {
            again = true
            return
        }
        syncing = true
        defer { syncing = false }
        repeat {
            again = false
            do {
                if schemasPending { try await reloadSchemas() }
                let events = try await store.clusterEvents(after: position)
                if !events.isEmpty {
                    await apply(events)
                    position = events[events.count - 1].id
                    again = true  // read until nothing is left (a page holds at most 500)
                }
            } catch {
                logger.warning("cluster events not applied; retried", metadata: ["error": .string("\(error)")])
                return
            }
        } while again
    }

    /// Reads what the live nodes last said of their shared MQTT subscriptions, for placing this node's messages
    /// (`SharedPlacement`): when one announces a change, and every reconcile (a node that stopped or fell silent
    /// for `OperatorRoutes.nodeDownAfterSeconds` drops out).
    func refreshNodes() async {
        guard let broker, let relay else { return }
        // One read at a time, the last one started after the latest request: an older read never lands last.
        if refreshing {
            refreshAgain = true
            return
        }
        refreshing = true
        defer { refreshing = false }
        repeat {
            refreshAgain = false
            await readNodes(broker, relay)
        } while refreshAgain
    }

    private var refreshing = false
    private var refreshAgain = false

    private func readNodes(_ broker: MQTTBroker, _ relay: MessageRelay) async {
        do {
            var others: [String: SharedPlacement.Presence] = [:]
            for status in try await store.hubNodes()
            where status.node.holder != relay.origin && OperatorRoutes.state(of: status) == "up" {
                others[status.node.holder] = NodeDescription.decode(status.node.shares)
            }
            await broker.setOthersShared(others)
        } catch {
            logger.warning("hub nodes not read; retried", metadata: ["error": .string("\(error)")])
        }
    }

    private func reloadSchemas() async throws {
        schemasPending = true
        for (name, body) in try await store.schemas() {
            HubServer.applySchema(name: name, body: body, to: gateway, logger: logger)
        }
        schemasPending = false
    }

    /// Applies a page of events. Nothing here throws: a failed schema reload is retried at the next sync, so the
    /// page is never applied twice (its messages would be delivered twice).
    private func apply(_ events: [ClusterEvent]) async {
        let now = Int64(Date().timeIntervalSince1970)
        var revoked = false
        var schemas = false
        var nodes = false
        for event in events {
            switch event.change {
            case .revoked(let serials):
                revocations.insert(serials)
                revoked = true
            case .activated(let serial):
                revocations.activated(serial)
            case .quarantined(let device, let until):
                gateway.quarantine.load([(device, until)], now: now)
            case .released(let device):
                _ = gateway.release(device)
            case .schema:
                schemas = true
            case .message(let relayed):
                // Another node's message, once (this node delivered its own when it admitted them).
                guard let broker, let relay, relayed.origin != relay.origin else { continue }
                // Skipped when it expired on its way, or (never from a node of this version) does not decode.
                guard let (message, placement) = MessageRelay.decode(relayed) else { continue }
                await broker.publish(
                    message, from: relayed.publisher, stored: true, position: event.id, placement: placement)
            case .sessionWanted(let key, let by):
                await persistence?.handOver(key: key, to: by)
            case .nodeChanged(let holder):
                nodes = nodes || holder != relay?.origin
            }
        }
        if let last = events.last { await broker?.advance(to: last.id) }
        if revoked { await crl.revocationsChanged() }
        if nodes { await refreshNodes() }
        if schemas {
            do { try await reloadSchemas() } catch {
                logger.warning("schemas not reloaded; retried", metadata: ["error": .string("\(error)")])
            }
        }
    }
}
