import Core
import Foundation
import MQTT
import NIOCore
import Store
import Synchronization

/// The broker's name for a message on its way to subscribers.
typealias BrokerMessage = OutboundMessage

/// The connection currently attached to a session.
struct BrokerConnection: Sendable {
    let channel: any Channel
    let version: ProtocolVersion
    /// QoS 1 deliveries the client accepts unacknowledged: its MQTT 5 Receive Maximum (§3.1.2.11.3), capped.
    let receiveMaximum: Int
    /// The client's MQTT 5 Maximum Packet Size (§3.1.2.11.4): larger deliveries are dropped for this client.
    let maximumPacketSize: Int
    /// Topic aliases the hub may use towards this client: its MQTT 5 Topic Alias Maximum (§3.1.2.11.5), capped
    /// (`MQTTBroker.maxOutboundAliases`); 0 for none and for MQTT 3.1.1.
    var topicAliasMaximum = 0
}

/// Sessions, subscriptions, retained messages and QoS 1 delivery (MQTT 3.1.1 §3.1.2.4 and §4.3.2, MQTT 5.0 §4.1,
/// §3.3.1.3, §4.9), held in memory and kept in the store by `MQTTPersistence`: every change marks the session (or
/// the retained topic) to be saved, and `takeChanges` hands the marked ones over as values to write. A session whose
/// expiry is 0 ends with its connection and is never saved. Every queue is bounded.
actor MQTTBroker {
    final class Session {
        /// Its key in `sessions` (identity and client id).
        let key: String
        /// The identity (certificate) that holds the session.
        var owner = ""
        var filters: [TopicFilter: SubscriptionOptions] = [:]
        var connection: BrokerConnection?
        /// False between `attach` and `resume`: nothing may reach the client before its CONNACK (§3.2.0-1 MQTT 5).
        var ready = false
        var connectionNumber = 0
        var expirySeconds = 0
        /// The store holds (or is about to hold) this session: a change that ends it must remove it there.
        var saved = false
        /// Messages of the log up to here were replayed into it when it was taken up (`restore`).
        var replayedThrough: Int64 = 0
        var disconnectedAt: ContinuousClock.Instant?
        /// What is sent to the client: in flight (redelivered with DUP on resume, or their PUBREL sent again) and
        /// queued, with packet ids and outbound topic aliases.
        var window: DeliveryWindow
        /// QoS 2 packet ids received from the client, stored and answered with PUBREC, whose PUBREL has not come
        /// (§4.3.3 [MQTT-4.3.3-9]: a PUBLISH with one of them is a copy, stored and delivered once). They belong to
        /// the session: a PUBREL may come on the next connection.
        var receivedQoS2 = Set<UInt16>()
        /// QoS 2 packet ids of fleet messages delivered here and not yet answered, because the sessions now holding
        /// each message (its value) are not saved yet (one node: `MQTTPersistence.flush(saving:)`). A PUBLISH with
        /// one is a copy too, never delivered again; unlike `receivedQoS2` they are not saved with the session, so a
        /// restart that lost the deliveries forgets the id as well and the resend is delivered (never lost).
        var unsavedQoS2: [UInt16: UnsavedQoS2] = [:]
        /// Connections that were taken over and are still finishing their store writes (their QoS 2 ids are not
        /// all in `receivedQoS2` yet), and who waits for them (a connection waits only for older ones).
        var draining = Set<Int>()
        var drained: [CheckedContinuation<Void, Never>] = []
        /// The will of the connection that ended last, waiting out its Will Delay Interval (§3.1.3.2.2): resumed with
        /// true when it is due or the session ends, false when a new connection takes up the session.
        var pendingWill: (connectionNumber: Int, waiter: CheckedContinuation<Bool, Never>, timer: Task<Void, Never>)?

        func endPendingWill(publish: Bool) {
            guard let pending = pendingWill else { return }
            pendingWill = nil
            pending.timer.cancel()
            pending.waiter.resume(returning: publish)
        }
        /// A connection is attached and its CONNACK has gone out.
        var isReady: Bool { connection != nil && ready }
        /// When the session ends unless its client comes back first (nil while connected).
        var expiresAt: ContinuousClock.Instant? { disconnectedAt.map { $0 + .seconds(expirySeconds) } }

        init(key: String, maxQueued: Int) {
            self.key = key
            window = DeliveryWindow(maxQueued: maxQueued)
        }

        /// What the attached connection accepts, for the window.
        var link: DeliveryWindow.Link? {
            connection.map {
                DeliveryWindow.Link(
                    version: $0.version, receiveMaximum: $0.receiveMaximum, maximumPacketSize: $0.maximumPacketSize,
                    topicAliasMaximum: $0.topicAliasMaximum, ready: ready, writable: $0.channel.isWritable)
            }
        }
    }

    /// At most this many topic aliases per connection towards a client, whatever it allows (each holds a topic).
    static let maxOutboundAliases = 256

    /// A fleet QoS 2 message delivered and not yet answered (`Session.unsavedQoS2`): the connection that received
    /// it (so that a later session or connection reusing the id is never taken for it), the sessions now holding
    /// it and its retained topic, which must be saved before its PUBREC.
    struct UnsavedQoS2: Sendable, Equatable {
        var connectionNumber: Int
        var holding: Set<String>
        var retained: TopicName?
    }

    /// What a QoS 2 PUBLISH from a client is to its session.
    enum QoS2Arrival: Sendable {
        /// Not held: store it (then `storedQoS2`).
        case new
        /// A copy of one stored whose PUBREL has not come: PUBREC again, nothing stored or delivered.
        case copy
        /// A copy of a fleet message delivered to these sessions, whose saves have not succeeded yet: PUBREC once
        /// they have (`savedQoS2`), nothing delivered again.
        case unsavedCopy(UnsavedQoS2)
        /// The session already holds `maxQoS2PerSession` ids awaiting PUBREL: refused (quota).
        case full
    }

    /// What a PUBREC from a client is to its session.
    typealias PubrecOutcome = DeliveryWindow.PubrecOutcome

    struct Attached: Sendable {
        let sessionPresent: Bool
        let connectionNumber: Int
    }

    let maxQueued: Int
    private var sessions: [String: Session] = [:]
    /// Sessions per owner (identity), for `maxPerOwner`.
    private var owners: [String: Int] = [:]
    /// Which sessions' subscriptions match a topic (a publish looks only at those): a pure value, behind a lock so
    /// that `needsPublish` may read it without entering the actor (only the actor changes it). A lock that sleeps at
    /// once (`Locked`): every connection's publish takes it, and `Mutex` spun on it (12-06).
    private let index = Locked(SubscriptionIndex())
    /// One per topic, bounded in all, per publisher and in bytes: a pure value.
    private var retained: RetainedMessages
    private var nextConnection = 0
    /// No session kept for its client's return expires before this (nil: none is waiting): until then a sweep looks
    /// at nothing, so every connect and publish may ask for one.
    private var earliestExpiry: ContinuousClock.Instant?
    /// Who receives each message (subscription matching, shared-subscription turns): a pure value, applied here.
    private var router = MessageRouter()
    /// Deliveries dropped because a queue was full, a subscriber was not keeping up (QoS 0) or a packet was over
    /// the client's maximum size.
    private(set) var dropped = 0
    /// Sessions changed since the last `takeChanges` (saved then, or removed when they ended), and retained topics.
    private var changedSessions = Set<String>()
    private var changedRetained: [TopicName: (message: BrokerMessage?, owner: String)] = [:]
    /// Since the last `takeChanges`: the sessions a leaving shared-subscription member's unacknowledged messages went
    /// to, by the leaving member's key. A message acknowledged once its session is saved must then wait for these.
    private var handedOverShared: [String: Set<String>] = [:]
    /// Whether changes are recorded for a store (`MQTTPersistence`); off, nothing is kept for it.
    var persistent = false
    /// Subscriptions across all sessions, readable without entering the actor: a publish that nobody subscribed to
    /// (and that is not retained) skips the broker entirely.
    nonisolated let subscriptions = Atomic<Int>(0)

    nonisolated var hasSubscriptions: Bool { subscriptions.load(ordering: .relaxed) > 0 }
    /// Of those, the replayable ones (`SubscriptionIndex.replayableCount`: a kept session's, QoS 1 or 2, unshared),
    /// readable without the index's lock: while there is none, no device message is logged or looked up for it.
    private nonisolated let replayableSubscriptions = Atomic<Int>(0)

    /// Changes the index (only the actor does), and the count of its replayable filters with it.
    private func changeIndex(_ change: (inout SubscriptionIndex) -> Void) {
        let (before, after) = index.withLock { index -> (Int, Int) in
            let before = index.replayableCount
            change(&index)
            return (before, index.replayableCount)
        }
        replayableSubscriptions.store(after, ordering: .relaxed)
        // Only a replayable filter added or removed (or a session's becoming kept or not) changes an answer.
        if after != before { indexChanges.add(1, ordering: .releasing) }
    }

    /// How many times the index's replayable filters changed: an answer read from it (`hasReplayableSubscriber`)
    /// holds while this has not moved since it was read before the answer.
    nonisolated var indexGeneration: Int { indexChanges.load(ordering: .acquiring) }
    private nonisolated let indexChanges = Atomic<Int>(0)

    /// Sets a session's expiry; its filters are indexed again when that makes it kept or not (they are replayable
    /// only while it is).
    private func setExpiry(_ session: Session, _ seconds: Int) {
        let (was, now) = (session.expirySeconds > 0, seconds > 0)
        session.expirySeconds = seconds
        guard was != now, !session.filters.isEmpty else { return }
        changeIndex { index in
            for (filter, options) in session.filters {
                index.remove(filter, options: options, key: session.key, kept: was)
                index.insert(filter, options: options, key: session.key, kept: now)
            }
        }
    }
    /// When the first session or retained message expires, in nanoseconds after `clockBase` (`Int64.max`: none),
    /// readable without entering the actor: a publish made once that time has come enters the actor, whose sweep
    /// ends them (see `sweepExpired`).
    private nonisolated let sweepDue = Atomic<Int64>(.max)
    private nonisolated let clockBase = ContinuousClock.now

    /// Whether `publish` would do anything for this local message: false when it is not retained, no expiry is due,
    /// and no subscription matches its topic. Then the publisher's connection skips the broker (a task and an actor
    /// hop per message). A subscription being added meanwhile may or may not see the message, as when the publish
    /// enters the actor just before it.
    nonisolated func needsPublish(_ message: BrokerMessage) -> Bool {
        if message.retain { return true }
        // The clock is read only when an expiry is due at all (most of the time none is).
        let due = sweepDue.load(ordering: .relaxed)
        if due != .max, Self.nanoseconds(clockBase.duration(to: .now)) >= due { return true }
        guard hasSubscriptions else { return false }
        return index.withLock { $0.hasSession(matching: message.topic) }
    }

    /// Whether a session holds a subscription to `topic` now that a single node's log replays (QoS 1 or 2, not
    /// shared): its device messages are logged (`MQTTListener.messageLog`).
    nonisolated func hasReplayableSubscriber(_ topic: TopicName) -> Bool {
        replayableSubscriptions.load(ordering: .relaxed) > 0
            && index.withLock { $0.hasReplayableSession(matching: topic) }
    }

    private func noteExpiries() {
        let due = [earliestExpiry, retained.nextExpiry].compactMap { $0 }.min()
        sweepDue.store(due.map { Self.nanoseconds(clockBase.duration(to: $0)) } ?? .max, ordering: .relaxed)
    }

    private static func nanoseconds(_ duration: Duration) -> Int64 {
        let (seconds, attoseconds) = duration.components
        let (whole, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        return overflow ? (seconds < 0 ? .min : .max) : whole + attoseconds / 1_000_000_000
    }

    init(
        maxQueued: Int = 1_000, maxRetained: Int = 100_000, maxRetainedPerOwner: Int = 100,
        maxRetainedBytes: Int = 64 << 20
    ) {
        self.maxQueued = maxQueued
        retained = RetainedMessages(
            maxMessages: maxRetained, maxPerOwner: maxRetainedPerOwner, maxBytes: maxRetainedBytes)
    }

    /// Attaches a connection to the session `key` (identity and client id). An existing connection on the same
    /// session is closed first (MQTT 3.1.1 §3.1.4-2; MQTT 5 with DISCONNECT 0x8E Session taken over). With
    /// `cleanStart` the old session is discarded; otherwise it resumes: unacknowledged deliveries are sent again
    /// with DUP set (§4.4), then the queue, once `resume` is called after the CONNACK went out.
    /// Attaches a connection to its session (a new one, or the one it resumes or takes over); nil when `owner`
    /// already holds `maxPerOwner` other sessions (an operator or application opening client ids without end).
    func attach(
        key: String, owner: String, maxPerOwner: Int, cleanStart: Bool, expirySeconds: Int,
        connection: BrokerConnection
    ) -> Attached? {
        sweepExpired()
        if sessions[key] == nil, owners[owner, default: 0] >= maxPerOwner { return nil }
        let wasSaved = sessions[key]?.saved ?? false
        if let session = sessions[key], let previous = session.connection {
            Self.takenOver(previous)
            session.draining.insert(session.connectionNumber)
        }
        // A will still waiting out its delay: a new connection to the session means it is not sent
        // [MQTT-3.1.3-9]; a clean start ends that session, which sends it (§3.1.3.2.2, via `forget`).
        if !cleanStart, let session = sessions[key] { session.endPendingWill(publish: false) }
        if cleanStart, let discarded = sessions[key] {
            remove(key)
            forget(discarded)
        }
        let existing = cleanStart ? nil : sessions[key]
        let present = existing != nil
        let session = existing ?? Session(key: key, maxQueued: maxQueued)
        // A clean start replaces a session the store keeps: the new one is saved over it, or removes it.
        session.saved = session.saved || wasSaved
        if existing == nil {
            session.owner = owner
            add(session)
        }
        nextConnection += 1
        session.connection = connection
        session.connectionNumber = nextConnection
        setExpiry(session, expirySeconds)
        session.disconnectedAt = nil
        session.ready = false
        session.window.attached()
        changed(key, session, presence: true)
        return Attached(sessionPresent: present, connectionNumber: nextConnection)
    }

    /// Starts deliveries on a connection whose CONNACK has been sent: unacknowledged ones again (DUP), then the
    /// queue.
    func resume(key: String, connectionNumber: Int) {
        guard let session = sessions[key], session.connectionNumber == connectionNumber,
            let connection = session.connection
        else { return }
        session.ready = true
        guard let link = session.link else { return }
        apply(session.window.resume(link: link, now: .now), to: connection)
        changed(key)
    }

    /// Detaches the connection (if it is still the session's); a session with expiry 0 ends now.
    func detach(key: String, connectionNumber: Int, expirySeconds: Int? = nil) {
        guard let session = sessions[key] else { return }
        if session.draining.remove(connectionNumber) != nil {
            for waiter in session.drained { waiter.resume() }
            session.drained = []
        }
        guard session.connectionNumber == connectionNumber else { return }
        session.connection = nil
        session.ready = false
        // Kept: the store keeps the session beyond this connection (a DISCONNECT may have set its expiry to 0).
        handOverShared(from: key, session, kept: persistent && (expirySeconds ?? session.expirySeconds) > 0)
        if let expirySeconds { setExpiry(session, expirySeconds) }
        if session.expirySeconds == 0 {
            forget(session)
            remove(key)
        } else {
            session.disconnectedAt = .now
            awaitingReturn(session)
        }
        changed(key, session, presence: true)
    }

    /// Adds subscriptions, writes the SUBACK, then the retained messages they match (MQTT 5.0 §3.3.1.3: Retain
    /// Handling 0 always, 1 only for a new subscription, 2 never; the RETAIN flag is set on these).
    /// Packets still buffered from a connection that was taken over are ignored (`connectionNumber`).
    /// Adds the granted subscriptions and answers the SUBACK. A new filter beyond `maxSubscriptions` for the session
    /// is refused with `quotaExceeded` in its place in `codes` (a filter already held is only updated).
    func subscribe(
        key: String, connectionNumber: Int,
        _ subscriptions: [(index: Int, TopicFilter, SubscriptionOptions, retainHandling: UInt8)],
        codes: [ReasonCode], packetID: UInt16, maxSubscriptions: Int, quotaExceeded: ReasonCode
    ) {
        guard let session = sessions[key], session.connectionNumber == connectionNumber,
            let connection = session.connection, session.ready
        else { return }
        var codes = codes
        var accepted: [(TopicFilter, SubscriptionOptions, retainHandling: UInt8)] = []
        for (index, filter, options, retainHandling) in subscriptions {
            if session.filters[filter] == nil,
                session.filters.count + accepted.filter({ session.filters[$0.0] == nil }).count >= maxSubscriptions
            {
                codes[index] = quotaExceeded
            } else {
                accepted.append((filter, options, retainHandling))
            }
        }
        // In the index before the SUBACK leaves: `needsPublish` reads the index without entering the actor, so a
        // publish made after the client has its SUBACK finds the new subscription.
        var added: [Bool] = []
        for (filter, options, _) in accepted {
            let previous = session.filters[filter]
            added.append(previous == nil)
            session.filters[filter] = options
            let kept = session.expirySeconds > 0
            if let previous {
                // Replaced (§3.8.4): the index holds the new options (a QoS 0 subscription now at 1 is replayable).
                changeIndex {
                    $0.remove(filter, options: previous, key: key, kept: kept)
                    $0.insert(filter, options: options, key: key, kept: kept)
                }
            } else {
                changeIndex { $0.insert(filter, options: options, key: key, kept: kept) }
                self.subscriptions.add(1, ordering: .relaxed)
                if options.share != nil { sharedFilters += 1 }
            }
        }
        Self.write(.suback(packetID: packetID, reasonCodes: codes, properties: .init()), connection)
        if !accepted.isEmpty { changed(key) }
        for ((filter, options, retainHandling), isNew) in zip(accepted, added) {
            // §3.3.1.3 and §4.8.2: no retained messages for a shared subscription.
            guard options.share == nil, retainHandling == 0 || (retainHandling == 1 && isNew) else { continue }
            let now = ContinuousClock.now
            for message in retained.matching(filter, now: now) {
                deliver(
                    message.copy(
                        qos: min(options.qos, message.qos), retain: true,
                        identifiers: options.identifier.map { [$0] } ?? []), to: session)
            }
        }
    }

    /// Removes subscriptions; for each, whether it existed (MQTT 5 UNSUBACK 0x11 otherwise).
    func unsubscribe(key: String, connectionNumber: Int, _ filters: [TopicFilter]) -> [Bool] {
        guard let session = sessions[key], session.connectionNumber == connectionNumber else {
            return filters.map { _ in false }
        }
        changed(key)
        return filters.map { filter in
            guard let options = session.filters.removeValue(forKey: filter) else { return false }
            changeIndex { $0.remove(filter, options: options, key: key, kept: session.expirySeconds > 0) }
            subscriptions.subtract(1, ordering: .relaxed)
            if options.share != nil {
                sharedFilters -= 1
                releaseShareTurn(filter, leaving: session)
            }
            return true
        }
    }

    /// Ends a delivery the client completed, a QoS 1 one with PUBACK or a QoS 2 one with PUBCOMP after its PUBREL,
    /// and sends what was waiting for the window. An id in flight for no delivery is ignored; false when the packet
    /// does not fit the delivery (a PUBACK for QoS 2, a PUBCOMP before PUBREL): a protocol error.
    func acknowledge(key: String, connectionNumber: Int, packetID: UInt16, qos: QoS = .atLeastOnce) -> Bool {
        guard let session = sessions[key], session.connectionNumber == connectionNumber else { return true }
        let (valid, output) = session.window.acknowledge(packetID, qos: qos, link: session.link, now: .now)
        apply(output, to: session.connection)
        changed(key)
        return valid
    }

    /// A PUBREC from the client (§4.3.3, §3.5.2.1): below 0x80 the client has the message and the PUBREL goes
    /// out; from 0x80 the delivery ends there. `unknown`: the caller answers PUBREL 0x92 Packet Identifier not
    /// found (MQTT 5; a plain PUBREL on 3.1.1), waiting for a client that does not read. A PUBREC to a QoS 1
    /// delivery is a protocol error.
    func received(key: String, connectionNumber: Int, packetID: UInt16, reasonCode: ReasonCode) -> PubrecOutcome {
        guard let session = sessions[key], session.connectionNumber == connectionNumber,
            let connection = session.connection, let link = session.link
        else { return .released }
        let (outcome, output) = session.window.received(packetID, reasonCode: reasonCode, link: link, now: .now)
        apply(output, to: connection)
        changed(key)
        return outcome
    }

    /// What a QoS 2 PUBLISH with `packetID` on connection `connectionNumber` is to the session. While an older
    /// connection that was taken over is still finishing its store writes, waits for it first, so a copy resent
    /// after the take-over sees the original's outcome; a connection never waits for itself or a newer one.
    func arrivedQoS2(key: String, connectionNumber: Int, packetID: UInt16, limit: Int) async -> QoS2Arrival {
        guard let session = sessions[key] else { return .new }
        while session.draining.contains(where: { $0 < connectionNumber }) {
            await withCheckedContinuation { session.drained.append($0) }
        }
        if session.receivedQoS2.contains(packetID) { return .copy }
        if let unsaved = session.unsavedQoS2[packetID] { return .unsavedCopy(unsaved) }
        return session.receivedQoS2.count + session.unsavedQoS2.count >= limit ? .full : .new
    }

    /// What holds a fleet QoS 2 message received on connection `connectionNumber` is saved: its id becomes one to
    /// save with the publisher's session (`receivedQoS2`), even if the publisher is on a newer connection now; an
    /// id a newer session or connection holds for a message of its own is left alone.
    func savedQoS2(key: String, connectionNumber: Int, packetID: UInt16) {
        guard let session = sessions[key], session.unsavedQoS2[packetID]?.connectionNumber == connectionNumber
        else { return }
        session.unsavedQoS2[packetID] = nil
        session.receivedQoS2.insert(packetID)
        changed(key)
    }

    /// A QoS 2 message from the client is stored; its PUBREC is about to go out. True when the id is now to be
    /// saved with the session (a kept one, `changed`); false when there is nothing to save.
    func storedQoS2(key: String, connectionNumber: Int, packetID: UInt16) -> Bool {
        guard let session = sessions[key],
            session.connectionNumber == connectionNumber || session.draining.contains(connectionNumber)
        else { return false }
        session.receivedQoS2.insert(packetID)
        changed(key)
        return changedSessions.contains(key)
    }

    /// Waits out a will's delay for connection `connectionNumber`, which has ended: true when the will is due (the
    /// delay passed or the session ended), false when a new connection took up the session first or the waiting
    /// task is cancelled (a hub shutdown). One will waits per session: a newer connection's replaces it.
    func willDue(key: String, connectionNumber: Int, seconds: Int) async -> Bool {
        guard let session = sessions[key] else { return true }  // the session has ended: due now
        guard session.connectionNumber == connectionNumber, session.connection == nil else { return false }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { waiter in
                session.endPendingWill(publish: false)
                let timer = Task {
                    try? await Task.sleep(for: .seconds(seconds))
                    guard !Task.isCancelled else { return }
                    self.willTimerFired(key: key, connectionNumber: connectionNumber)
                }
                session.pendingWill = (connectionNumber, waiter, timer)
            }
        } onCancel: {
            Task { await self.cancelWill(key: key, connectionNumber: connectionNumber) }
        }
    }

    private func willTimerFired(key: String, connectionNumber: Int) {
        guard let session = sessions[key], session.pendingWill?.connectionNumber == connectionNumber else { return }
        session.endPendingWill(publish: true)
    }

    private func cancelWill(key: String, connectionNumber: Int) {
        guard let session = sessions[key], session.pendingWill?.connectionNumber == connectionNumber else { return }
        session.endPendingWill(publish: false)
    }

    /// A PUBREL from the client: the id is free again. False when it was not held (PUBCOMP 0x92 on MQTT 5).
    func releaseQoS2(key: String, packetID: UInt16) -> Bool {
        changed(key)
        // An id still unsaved has had no PUBREC: its PUBREL is out of turn and finds nothing (0x92).
        return sessions[key]?.receivedQoS2.remove(packetID) != nil
    }

    /// Updates the retained message of the topic (an empty payload removes it, MQTT 3.1.1 §3.3.1.3) and delivers to
    /// every session with a matching subscription, at the lower of the two QoS levels. Returns the number of
    /// sessions it went to.
    ///
    /// A session whose subscriptions overlap gets one copy (MQTT 5.0 §3.3.4 lets the server choose; MQTT 3.1.1
    /// §3.3.5 asks for the maximum QoS), at the highest QoS granted, carrying the Subscription Identifiers of all
    /// the matching subscriptions [MQTT-3.3.4-4]. A No Local subscription never matches its own session's publish
    /// [MQTT-3.8.3-3]. Each shared subscription (§4.8.2) that matches gives the message to one of its sessions, in
    /// turn, preferring a connected one.
    ///
    /// A message another node relayed (`stored`: its node keeps the retained message in the store) changes the
    /// retained message here without saving it again.
    ///
    /// With several nodes, `placement` says which node's members of each shared subscription get it
    /// (`SharedPlacement`): the origin's choice, from `beginLocal(topic:)` or read with the message from the log.
    @discardableResult
    func publish(
        _ message: BrokerMessage, from publisher: String?, stored: Bool = false, position: Int64? = nil,
        placement: [TopicFilter: String]? = nil
    ) -> Int {
        publishing(
            message, from: publisher, stored: stored, position: position, placement: placement, collectHolding: false
        ).count
    }

    /// As `publish`: how many sessions the message reached, and the keys of those that now hold it to deliver or
    /// confirm (QoS 1 and 2), whose saved state it changed. With `unsavedQoS2` (a fleet QoS 2 message on one node),
    /// the publisher's session holds its packet id, unsaved, with what holds the message, in the same turn of the
    /// actor as the delivery, until `savedQoS2` (a connection taken over and still finishing its work holds it too,
    /// as `storedQoS2` stores one). Without `collectHolding` (`publish`), `holding` stays empty.
    func publishing(
        _ message: BrokerMessage, from publisher: String?, stored: Bool = false, position: Int64? = nil,
        placement: [TopicFilter: String]? = nil, unsavedQoS2: (packetID: UInt16, connectionNumber: Int)? = nil,
        collectHolding: Bool = true
    ) -> (count: Int, holding: Set<String>) {
        if let position { positions.withLock { $0.advance(to: position) } }
        if message.retain { retain(message, owner: publisher ?? "hub", stored: stored) }
        // Only the sessions whose subscriptions match (the index); one taken up with the log replayed into it past
        // this message has it already. The router matches the topic against each session's filters: split once.
        let split = TopicName.Split(message.topic)
        let deliveries = router.route(
            topic: split, qos: message.qos, retain: message.retain, publisher: publisher,
            subscribers: index.withLock { $0.sessions(matching: message.topic) }.lazy.compactMap {
                key -> MessageRouter.Subscriber? in
                guard let session = self.sessions[key], position == nil || session.replayedThrough < position!
                else { return nil }
                return MessageRouter.Subscriber(key: key, filters: session.filters, connected: session.isReady)
            }, placement: placement, node: shared?.node)
        var holding = Set<String>()
        for delivery in deliveries {
            guard let session = sessions[delivery.key] else { continue }
            deliver(
                message.copy(
                    qos: delivery.qos, retain: delivery.retain, identifiers: delivery.identifiers,
                    sharedGroup: delivery.sharedGroup), to: session)
            if delivery.qos != .atMostOnce {
                changed(delivery.key)
                if collectHolding { holding.insert(delivery.key) }
            }
        }
        if let unsavedQoS2, let publisher, let session = sessions[publisher],
            session.connectionNumber == unsavedQoS2.connectionNumber
                || session.draining.contains(unsavedQoS2.connectionNumber)
        {
            session.unsavedQoS2[unsavedQoS2.packetID] = UnsavedQoS2(
                connectionNumber: unsavedQoS2.connectionNumber, holding: holding,
                retained: message.retain ? message.topic : nil)
        }
        sweepExpired()
        return (deliveries.count, holding)
    }

    /// A member of shared subscriptions whose connection ended: the messages it was given through them and has not
    /// acknowledged (sent or queued) go to another connected member of the same group, if there is one (§4.8.2:
    /// rather than waiting for this client to come back). From a session the store keeps (`kept`), only to another
    /// that outlives its connection: an acknowledged message must not move from a saved session into one that ends
    /// with its client.
    private func handOverShared(from key: String, _ session: Session, kept: Bool) {
        // QoS 2 deliveries in flight stay: §4.8.2 [MQTT-4.8.2-4, 4.8.2-5], they are completed to this client only.
        var handedOver = Set<Int>()
        for (position, message) in session.window.sharedUnacknowledged() {
            guard let group = message.sharedGroup else { continue }
            // Every member, as `route` sees them (so the turn keeps its meaning); the one leaving is not connected.
            let members = sessions.compactMap {
                otherKey, other -> (key: String, options: SubscriptionOptions, connected: Bool)? in
                guard let options = other.filters[group] else { return nil }
                // A session that outlives its connection (several nodes also save connected expiry-0 sessions, but
                // those end when their client leaves, with whatever they hold).
                let eligible = !kept || other.expirySeconds > 0
                return (otherKey, options, otherKey != key && other.isReady && eligible)
            }
            guard members.contains(where: \.connected), let chosen = router.chooseMember(of: group, members),
                chosen.key != key, let target = sessions[chosen.key]
            else { continue }
            handedOver.insert(position)
            changed(chosen.key)
            if persistent { handedOverShared[key, default: []].insert(chosen.key) }
            deliver(
                message.copy(
                    qos: min(chosen.options.qos, message.qos), retain: message.retain,
                    identifiers: chosen.options.identifier.map { [$0] } ?? [], sharedGroup: group), to: target)
        }
        session.window.remove(handedOver: handedOver)
    }

    // MARK: Kept in the store (`MQTTPersistence`)

    /// Changes are recorded for a store from now on; with several nodes, a connected session with expiry 0 is
    /// recorded too (so a connection to another node takes it over), else only sessions a client may come back to.
    func setPersistent(sharedByNodes: Bool, node: String) {
        persistent = true
        keepsConnectedSessions = sharedByNodes
        if sharedByNodes { shared = SharedPlacement(node: node) }
    }

    // MARK: Shared subscriptions across nodes

    /// Several nodes: which node's members of a shared subscription get each message (nil with one node).
    private var shared: SharedPlacement?
    /// Shared subscriptions across all sessions (while 0, there is nothing to look for).
    private var sharedFilters = 0

    /// This node's shared subscriptions now, each with whether a member is connected; kept for placing this node's
    /// messages (`MQTTPersistence` tells the other nodes when it changes).
    func sharedPresence() -> SharedPlacement.Presence {
        var presence: SharedPlacement.Presence = [:]
        if sharedFilters > 0 {
            for session in sessions.values {
                for (filter, options) in session.filters where options.share != nil {
                    presence[filter] = presence[filter] == true || session.isReady
                }
            }
        }
        shared?.setOwn(presence)
        return presence
    }

    /// What the other nodes last said of their shared subscriptions (the live ones).
    func setOthersShared(_ nodes: [String: SharedPlacement.Presence]) { shared?.setOthers(nodes) }

    /// What this node knows of the other nodes' shared subscriptions.
    var othersShared: [String: SharedPlacement.Presence] { shared?.others ?? [:] }
    private var keepsConnectedSessions = false

    /// Marks the session to be saved: any change of one a client may come back to; for one with expiry 0 (kept only
    /// while connected, with several nodes) only its coming and going (`presence`).
    private func changed(_ key: String, _ session: Session? = nil, presence: Bool = false) {
        guard persistent, let session = session ?? sessions[key] else { return }
        // An expiry-0 session that was never saved has nothing in the store to update or remove (one node).
        guard session.expirySeconds > 0 || (presence && (keepsConnectedSessions || session.saved)) else { return }
        changedSessions.insert(key)
    }

    /// What changed since the last call, as values to write: each changed session as it stands (nil: it ended, or
    /// has expiry 0 and is never kept), each changed retained topic (nil: cleared), and where shared-subscription
    /// messages were handed over (`handedOverShared`).
    func takeChanges(now: ContinuousClock.Instant = .now, wallClock: Date = Date()) -> Changes {
        var saved: [String: StoredMQTTSession?] = [:]
        let position = savedPosition
        for key in changedSessions {
            let session = stored(key, now: now, wallClock: wallClock, position: position)
            saved[key] = session
            sessions[key]?.saved = session != nil
        }
        changedSessions = []
        defer {
            changedRetained = [:]
            handedOverShared = [:]
        }
        return Changes(
            sessions: saved, retained: changedRetained, handedOver: handedOverShared, position: position)
    }

    /// Whether the session handed shared-subscription messages to other sessions since the last `takeChanges`.
    func handedOverShared(from key: String) -> Bool { handedOverShared[key] != nil }

    /// What `takeChanges` hands over.
    struct Changes {
        var sessions: [String: StoredMQTTSession?]
        var retained: [TopicName: (message: BrokerMessage?, owner: String)]
        var handedOver: [String: Set<String>]
        /// The position the sessions were saved at (`savedPosition`).
        var position: Int64
    }

    /// The session as the store keeps it (at `position` in the log, by default `savedPosition`); nil when there is
    /// none to keep.
    private func stored(_ key: String, now: ContinuousClock.Instant, wallClock: Date, position: Int64? = nil)
        -> StoredMQTTSession?
    {
        guard let session = sessions[key],
            session.expirySeconds > 0 || (keepsConnectedSessions && session.connection != nil)
        else { return nil }
        let snapshot = SessionSnapshot(
            filters: session.filters, window: session.window.saved, receivedQoS2: session.receivedQoS2,
            position: position ?? savedPosition)
        return StoredMQTTSession(
            key: key, owner: session.owner, expirySeconds: session.expirySeconds,
            disconnectedAt: session.connection != nil
                ? nil : wallClock - (now - (session.disconnectedAt ?? now)).timeInterval,
            state: snapshot.encoded(now: now), savedAt: wallClock)
    }

    /// Whether this node holds the session in memory.
    func holds(_ key: String) -> Bool { sessions[key] != nil }

    /// What `restore` did.
    enum Restored: Equatable {
        case restored
        /// A session with this key is held here already: nothing changed.
        case held
        /// This node has routed messages of the log up to this position since the caller read it: the messages up
        /// to it must be replayed too (read them and call again). Nothing changed.
        case behind(Int64)
        /// A message of this node's own went into the log since `quiet` (or is still on its way to local delivery):
        /// the caller waits a moment and reads again. Nothing changed.
        case busy
    }

    /// Takes up a session from the store, disconnected (its expiry counting from when its client went away, or from
    /// the save when it was connected then: its node stopped), then replays into it the messages of the log that
    /// its last holder had not routed to it (`replay`: those after `snapshot.position` up to `through`; at least
    /// once, in log order; not to its shared subscriptions, whose groups had them from another member).
    func restore(
        _ stored: StoredMQTTSession, _ snapshot: SessionSnapshot,
        replay: [(message: BrokerMessage, publisher: String?)] = [], through: Int64 = 0, quiet: Int? = nil,
        now: ContinuousClock.Instant = .now, wallClock: Date = Date()
    ) -> Restored {
        guard sessions[stored.key] == nil else { return .held }
        let (relayPosition, noneOnItsWay, begun) = positions.withLock { ($0.relay, $0.writes.isEmpty, $0.begun) }
        guard relayPosition <= max(through, snapshot.position) else { return .behind(relayPosition) }
        if let quiet, quiet != begun || !noneOnItsWay { return .busy }
        let session = Session(key: stored.key, maxQueued: maxQueued)
        session.owner = stored.owner
        session.filters = snapshot.filters
        session.expirySeconds = stored.expirySeconds
        changeIndex { index in
            for (filter, options) in snapshot.filters {
                index.insert(filter, options: options, key: stored.key, kept: stored.expirySeconds > 0)
            }
        }
        session.window = DeliveryWindow(maxQueued: maxQueued, restoring: snapshot.window)
        session.receivedQoS2 = snapshot.receivedQoS2
        let away = max(0, wallClock.timeIntervalSince(stored.disconnectedAt ?? stored.savedAt))
        session.disconnectedAt = now - .milliseconds(Int64(away * 1000))
        awaitingReturn(session)
        session.saved = true
        session.replayedThrough = through
        add(session)
        subscriptions.add(session.filters.count, ordering: .relaxed)
        sharedFilters += session.filters.values.count { $0.share != nil }
        let own = MessageRouter.Subscriber(
            key: stored.key, filters: session.filters.filter { $0.value.share == nil }, connected: false)
        for (message, publisher) in replay {
            for delivery in router.route(
                topic: message.topic, qos: message.qos, retain: message.retain, publisher: publisher,
                subscribers: [own])
            {
                deliver(
                    message.copy(qos: delivery.qos, retain: delivery.retain, identifiers: delivery.identifiers),
                    to: session)
            }
        }
        if !replay.isEmpty { changed(stored.key) }
        return .restored
    }

    /// One node at start, its stored sessions restored: routes each logged message (in id order) to the sessions
    /// saved before it (`saved`: the position each was saved at), by what their unshared subscriptions at QoS 1 or 2
    /// match (a QoS 0 message is never queued for a client that is away; a shared group is not replayed to: each
    /// member would get a copy), as `publish` would have. At least once: a session saved while a message was on its
    /// way may have it already. Returns how many deliveries it made.
    func replayLog(
        _ messages: [(id: Int64, message: BrokerMessage, publisher: String?)], after saved: [String: Int64]
    ) -> Int {
        var count = 0
        // Each session's replayable filters, picked out once for all the messages.
        var replayable: [String: [TopicFilter: SubscriptionOptions]] = [:]
        for (id, message, publisher) in messages {
            let subscribers = index.withLock { $0.sessions(matching: message.topic) }.compactMap {
                key -> MessageRouter.Subscriber? in
                guard let position = saved[key], position < id, let session = sessions[key] else { return nil }
                let filters = replayable[key] ?? session.filters.filter(\.value.isReplayable)
                replayable[key] = filters
                return filters.isEmpty ? nil : MessageRouter.Subscriber(key: key, filters: filters, connected: false)
            }
            guard !subscribers.isEmpty else { continue }
            for delivery in router.route(
                topic: message.topic, qos: message.qos, retain: message.retain, publisher: publisher,
                subscribers: subscribers)
            {
                guard let session = sessions[delivery.key] else { continue }
                deliver(
                    message.copy(qos: delivery.qos, retain: delivery.retain, identifiers: delivery.identifiers),
                    to: session)
                changed(delivery.key)
                count += 1
            }
        }
        return count
    }

    /// Every message of the log up to `position` has been routed here (`ClusterSync`; a single node: the head of its
    /// message log when it starts).
    func advance(to position: Int64) { positions.withLock { $0.advance(to: position) } }

    /// Where this node stands in the log, and its own messages on their way into it and to its sessions. Behind a
    /// lock of its own: a single node's logged message begins on the event loop that read it (`beginLogged`), and
    /// ends wherever its last reference goes, neither with a hop to the actor.
    private struct Positions {
        /// The last message of the log this node has read (`ClusterSync`) and routed to its sessions; on a single
        /// node, the newest logged message delivered here (`publish(position:)`; older ones may be on their way).
        var relay: Int64 = 0
        /// This node's own messages on their way (`LocalWrite`): the position each began at. Such a message is
        /// skipped by this node's `ClusterSync` (it is delivered here directly), so until it is, a session saved
        /// now must not count it as routed.
        var writes: [Int: Int64] = [:]
        var begun = 0

        mutating func advance(to position: Int64) { relay = max(relay, position) }

        mutating func begin() -> Int {
            begun += 1
            writes[begun] = relay
            return begun
        }

        /// Where the log stands for a session saved now: every message up to it was routed to this node's sessions.
        var saved: Int64 { min(relay, writes.values.min() ?? .max) }
    }

    private nonisolated let positions = Locked(Positions())

    /// The last message of the log routed to this node's sessions (`Positions.relay`).
    nonisolated var relayPosition: Int64 { positions.withLock { $0.relay } }

    /// Where the log stands for a session saved now: every message up to it was routed to this node's sessions.
    nonisolated var savedPosition: Int64 { positions.withLock { $0.saved } }

    /// A message of this node's own is about to go into the log (several nodes' `cluster_events`, or a single
    /// node's message log; nil without a store): until the returned value is released (after its local delivery,
    /// or when it was not delivered) saves do not count past it.
    ///
    /// It also places the message on `topic` among the nodes' shared subscriptions (`LocalWrite.placement`): the
    /// relay hands the choice on and this node's delivery follows it.
    func beginLocal(topic: TopicName) async -> LocalWrite? {
        guard persistent else { return nil }
        // A take-up in progress (`freeze`): this message waits, so it is either in the log before the take-up
        // reads the head, or delivered after the session is in memory.
        while freezes > 0 { await withCheckedContinuation { frozen.append($0) } }
        return LocalWrite(broker: self, id: positions.withLock { $0.begin() }, placement: shared?.place(topic) ?? [:])
    }

    /// A single node's message about to go into its message log, as `beginLocal` and without a hop to the actor: a
    /// single node takes sessions up only before its listeners accept (nothing freezes), and places nothing among
    /// other nodes.
    nonisolated func beginLogged() -> LocalWrite {
        LocalWrite(broker: self, id: positions.withLock { $0.begin() }, placement: [:])
    }

    nonisolated func endLocal(_ id: Int) { positions.withLock { _ = $0.writes.removeValue(forKey: id) } }

    /// Take-ups in progress, and the own messages waiting for them to finish (`beginLocal`).
    private var freezes = 0
    private var frozen: [CheckedContinuation<Void, Never>] = []

    /// Holds this node's new own messages back while a session is taken up (`MQTTPersistence.takeUp`): those on
    /// their way finish, no new one starts, until `thaw`.
    func freeze() { freezes += 1 }

    func thaw() {
        freezes -= 1
        guard freezes == 0 else { return }
        let waiting = frozen
        frozen = []
        for waiter in waiting { waiter.resume() }
    }

    /// Whether no own message is on its way now, and how many have begun (`restore(quiet:)` checks nothing began
    /// since).
    nonisolated var localState: (quiet: Bool, begun: Int) { positions.withLock { ($0.writes.isEmpty, $0.begun) } }

    /// Hands a session over to another node, whose client connected there: the connection here gets DISCONNECT
    /// 0x8E Session taken over (MQTT 5; 3.1.1: it is closed, §3.1.4-2) and the session leaves memory as it stands
    /// (not ended: no will is published). Nil when this node does not hold it.
    func handOver(_ key: String, now: ContinuousClock.Instant = .now, wallClock: Date = Date()) -> StoredMQTTSession? {
        guard let session = sessions[key] else { return nil }
        let saved = stored(key, now: now, wallClock: wallClock).map {
            var saved = $0
            saved.disconnectedAt = saved.disconnectedAt ?? wallClock
            return saved
        }
        if let connection = session.connection {
            Self.takenOver(connection)
            session.connection = nil
        }
        remove(key)
        changedSessions.remove(key)
        forget(session, ended: false)
        return saved
    }

    /// A connection whose session another connection takes: DISCONNECT 0x8E Session taken over (MQTT 5.0
    /// §3.1.4-3), then closed (MQTT 3.1.1 §3.1.4-2: closed only).
    private static func takenOver(_ connection: BrokerConnection) {
        if connection.version == .v5 {
            write(.disconnect(reasonCode: .sessionTakenOver, properties: .init()), connection)
        }
        connection.channel.close(promise: nil)
    }

    /// Every session held, as the store keeps them (a node that stops lets go of them all).
    func storedSessions(now: ContinuousClock.Instant = .now, wallClock: Date = Date()) -> [String: StoredMQTTSession?] {
        var all: [String: StoredMQTTSession?] = [:]
        for key in sessions.keys { all[key] = stored(key, now: now, wallClock: wallClock) }
        return all
    }

    /// Takes up retained messages from the store (within the same bounds as any); returns the topics of those not
    /// kept (expired, or over a bound), for the store to drop too.
    func restoreRetained(
        _ messages: [(message: BrokerMessage, owner: String)], now: ContinuousClock.Instant = .now
    ) -> [String] {
        defer { noteExpiries() }
        return messages.compactMap { message, owner in
            !message.expired(at: now) && retained.retain(message, owner: owner) ? nil : message.topic.rawValue
        }
    }

    var sessionCount: Int { sessions.count }
    /// Filters in the subscription index (for tests: every session's filters, and no others).
    var indexedFilters: Int { index.withLock { $0.count } }

    func sessionCount(of owner: String) -> Int { owners[owner, default: 0] }

    /// Puts a new session in `sessions` (in place of any with its key), counted for its owner.
    private func add(_ session: Session) {
        remove(session.key)
        sessions[session.key] = session
        owners[session.owner, default: 0] += 1
    }

    /// Takes a session out of `sessions` (its subscriptions leave the index in `forget`).
    @discardableResult
    private func remove(_ key: String) -> Session? {
        guard let session = sessions.removeValue(forKey: key) else { return nil }
        let left = owners[session.owner, default: 1] - 1
        owners[session.owner] = left > 0 ? left : nil
        return session
    }
    var retainedCount: Int { retained.count }

    /// Fleet-wide figures for `/metrics`: sessions (connected or kept for a reconnect), QoS 1 messages sent and not
    /// yet acknowledged, messages queued for sessions, retained messages and their bytes, and messages dropped
    /// because a queue was full.
    var statistics:
        (sessions: Int, connected: Int, inflight: Int, queued: Int, retained: Int, retainedBytes: Int, dropped: Int)
    {
        var connected = 0
        var inflight = 0
        var queued = 0
        for session in sessions.values {
            if session.connection != nil { connected += 1 }
            inflight += session.window.inflight.count
            queued += session.window.waiting
        }
        return (sessions.count, connected, inflight, queued, retained.count, retained.bytes, dropped)
    }

    /// Sets or (empty payload) clears the topic's retained message within the limits: in all, per owner (the
    /// publisher's session) and in bytes. Over a limit the message is still delivered, just not retained.
    private func retain(_ message: BrokerMessage, owner: String, stored: Bool) {
        let kept = retained.retain(message, owner: owner)
        noteExpiries()
        if !kept { dropped += 1 }
        // Replaced or cleared either way: the store follows (a message over a bound is not kept there either).
        if persistent, !stored {
            changedRetained[message.topic] = (
                kept && !message.payload.isEmpty ? message : nil, owner
            )
        }
    }

    private func deliver(_ message: BrokerMessage, to session: Session) {
        apply(session.window.deliver(message, link: session.link, now: .now), to: session.connection)
    }

    /// Writes what the window produced, in order, and counts what it dropped.
    private func apply(_ output: DeliveryWindow.Output, to connection: BrokerConnection?) {
        dropped += output.dropped
        guard let connection, !output.writes.isEmpty else { return }
        for buffer in output.writes { connection.channel.write(buffer, promise: nil) }
        connection.channel.flush()
    }

    static func write(_ packet: Packet, _ connection: BrokerConnection) {
        var buffer = ByteBuffer()
        packet.encode(into: &buffer, version: connection.version)
        connection.channel.writeAndFlush(buffer, promise: nil)
    }

    /// A session whose client went away: when it expires, unless the client comes back first.
    private func awaitingReturn(_ session: Session) {
        guard let due = session.expiresAt else { return }
        earliestExpiry = min(earliestExpiry ?? due, due)
        noteExpiries()
    }

    /// Ends sessions whose client has been away longer than their expiry (MQTT 5.0 §3.1.2.11.2), and drops expired
    /// retained messages. Looks at the sessions only once the earliest expiry has come (a connect or a publish costs
    /// the same with 10,000 sessions).
    private func sweepExpired() {
        let now = ContinuousClock.now
        // A retained message past its Message Expiry Interval is no longer retained (§3.3.2.3.3); nothing is looked at
        // until the earliest expiry comes. Its stored copy stays until a node starts and drops it (only that copy:
        // `MQTTPersistence.load`): every reader checks the expiry, and deleting by topic here could drop a newer
        // message another node saved meanwhile.
        _ = retained.removeExpired(now: now)
        defer { noteExpiries() }
        guard let earliest = earliestExpiry, earliest <= now else { return }
        let expired = sessions.filter { $0.value.expiresAt.map { $0 <= now } ?? false }
        // Removed first, then forgotten: two members of one shared subscription expiring together each see the
        // group as gone, and its turn is released.
        for (key, session) in expired {
            remove(key)
            changed(key, session, presence: true)
        }
        for session in expired.values { forget(session) }
        earliestExpiry = sessions.values.lazy.compactMap(\.expiresAt).min()
    }

    /// Lets go of a session that left `sessions`: it `ended` (a will waiting out its delay is due now,
    /// §3.1.3.2.2), or moved to another node (its will is not published here).
    private func forget(_ session: Session, ended: Bool = true) {
        changeIndex { index in
            for (filter, options) in session.filters {
                index.remove(filter, options: options, key: session.key, kept: session.expirySeconds > 0)
            }
        }
        subscriptions.subtract(session.filters.count, ordering: .relaxed)
        sharedFilters -= session.filters.values.count { $0.share != nil }
        for waiter in session.drained { waiter.resume() }
        session.drained = []
        session.draining = []
        session.endPendingWill(publish: ended)
        for (filter, options) in session.filters where options.share != nil {
            releaseShareTurn(filter, leaving: session)
        }
    }

    /// Forgets a shared subscription's turn once no other session holds it (the table holds only live groups).
    private func releaseShareTurn(_ group: TopicFilter, leaving session: Session) {
        guard !sessions.values.contains(where: { $0 !== session && $0.filters[group] != nil })
        else { return }
        router.forget(group)
    }
}

extension Duration {
    /// Seconds, as Foundation counts them.
    var timeInterval: TimeInterval { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}

/// One of this node's own messages on its way into the log and to local delivery (`MQTTBroker.beginLocal`): ends
/// when released, whatever path the message took.
final class LocalWrite: Sendable {
    let broker: MQTTBroker
    let id: Int
    /// Which node's members of each matching shared subscription get the message (`SharedPlacement`).
    let placement: [TopicFilter: String]

    init(broker: MQTTBroker, id: Int, placement: [TopicFilter: String]) {
        self.broker = broker
        self.id = id
        self.placement = placement
    }

    deinit { broker.endLocal(id) }
}
