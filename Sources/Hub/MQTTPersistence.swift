import Foundation
import Logging
import MQTT
import ServiceLifecycle
import Store

/// Keeps the broker's persistent sessions and retained messages in the store (MQTT 5.0 §4.1: the session state
/// and retained messages outlive the connection; here they also outlive the process and move between hub nodes).
///
/// - **Saving**: what changed is saved every `interval` (a few hundred milliseconds), in one ordered stream of writes;
///   a node that stops saves everything and lets go of its sessions. A node killed with -9 loses the delivery state
///   of its last interval (not the messages: a device's acknowledged message is in the store before its PUBACK).
/// - **Starting**: a single node takes up every stored session (the holders recorded are its own earlier runs);
///   a node of several takes up the sessions no node holds.
/// - **Moving**: one node holds a session at a time. A client that connects to a node that does not hold its
///   session makes that node ask the holder (a cluster event): the holder sends its connection DISCONNECT 0x8E
///   Session taken over, saves the session and lets go; the new node then takes it. A holder that does not answer
///   within `handOverWait` (it died) loses the session to the new node as last saved.
/// - **A node that dies**: nodes say they are alive every 5 s; one not heard from for `silence` (30 s) has its
///   sessions taken up by the others, with the log replayed into them.
actor MQTTPersistence: Service {
    let store: any HubStore
    let broker: MQTTBroker
    /// This node's run, as recorded with the sessions it holds.
    nonisolated var holder: String { node.holder }
    /// What this node says of itself when it says it is alive.
    let node: NodeDescription
    let interval: Duration
    let handOverWait: Duration
    /// A node not heard from for this long has died: its sessions are taken up.
    let silence: Duration
    let logger: Logger
    /// Changes not written yet (taken from the broker, or a write that failed: retried), newest last.
    private var pendingSessions: [String: StoredMQTTSession?] = [:]
    /// The sessions whose row this node knows it holds in the store (it took them up, or saved them): their saves
    /// only update that row (`MQTTSessionChange.stored`). Several nodes: one that did not answer a hand-over in time
    /// may find its session taken, and ended, by another; its stale save must not bring the session back.
    private var storedKeys: Set<String> = []
    private var pendingRetained: [TopicName: (message: BrokerMessage?, owner: String)] = [:]
    /// Where shared-subscription messages went when a member left, while a session they reached is not saved since:
    /// a message acknowledged once its sessions are saved may have moved on (`flush(saving:)` follows it there), and
    /// the sessions a hand-over joins are written in one transaction.
    private var handedOver = SharedHandOvers()
    /// The sessions of the transaction on its way to the store; how many times a write began to take the broker's
    /// changes and how many of those it has merged; and who waits for either to move (`handOver(key:to:)`).
    private var writing: [MQTTSessionChange] = []
    private var takesBegun = 0
    private var takesMerged = 0
    private var waiting: [CheckedContinuation<Void, Never>] = []

    private func wakeWaiting() {
        for waiter in waiting { waiter.resume() }
        waiting = []
    }
    /// The last write queued: each waits for the one before, so writes reach the store one at a time, in order.
    private var lastFlush: Task<Void, Never>?
    /// A `flush(saving:)` call: what it asks to have saved, and where its answer goes.
    private struct SaveCall {
        let keys: Set<String>
        let retained: TopicName?
        let answer: CheckedContinuation<Bool, Never>
    }
    /// The `flush(saving:)` calls waiting for the write of theirs that is queued, which they share (a group commit):
    /// it takes the broker's changes only once it begins, so a call joins it until then. Nil when none is queued.
    private var gathering: [SaveCall]?

    init(
        store: any HubStore, broker: MQTTBroker, node: NodeDescription, interval: Duration = .milliseconds(250),
        handOverWait: Duration = .seconds(5), silence: Duration = .seconds(30), logger: Logger
    ) {
        self.silence = silence
        self.store = store
        self.broker = broker
        self.node = node
        self.interval = interval
        self.handOverWait = handOverWait
        self.logger = logger
    }

    /// Takes up the stored sessions and retained messages; called before the MQTT listener accepts a connection.
    func load() async throws {
        await broker.setPersistent(sharedByNodes: store.sharedByNodes, node: holder)
        let now = ContinuousClock.now
        let wallClock = Date()
        var retained: [(message: BrokerMessage, owner: String)] = []
        // By the topic's bytes, as the broker and the store hold topics (MQTT 5.0 §4.7.3).
        var savedAt: [TopicKey: Date] = [:]
        for stored in try await store.retainedMessages() {
            savedAt[TopicKey(stored.topic)] = stored.savedAt
            let elapsed = Self.elapsed(since: stored.savedAt, at: wallClock)
            guard let message = BrokerMessage(stored: stored.message, elapsed: elapsed, now: now) else {
                logger.warning(
                    "stored retained message does not decode; skipped", metadata: ["topic": "\(stored.topic)"])
                continue
            }
            retained.append((message, stored.owner))
        }
        // Expired (or over a bound): the copy read here goes, not one another node saved since.
        for topic in await broker.restoreRetained(retained, now: now) {
            try await store.removeRetainedMessage(topic: topic, savedAt: savedAt[TopicKey(topic)])
        }
        try await store.markAlive(node.record)
        if node.named, store.sharedByNodes {
            // An earlier run of this node (`cluster.nodeName`) that was killed is over: the other nodes stop placing
            // shared-subscription messages on it now, not once it has been silent for 10 s.
            var ended = false
            for status in try await store.hubNodes()
            where status.node.name == node.name && status.node.holder != holder && !status.stopped {
                try await store.markStopped(holder: status.node.holder)
                ended = true
            }
            if ended { try await store.announceNodeChange(holder: holder) }
        }
        // One node: the broker starts at its log's head (a session saved from now on has had every message up to
        // it); the log is replayed once the stored sessions are up.
        let logged = store.keepsMessageLog
        let head = logged ? try await store.messageLogHead() : 0
        if logged { await broker.advance(to: head) }
        let sessions = try await store.adoptMQTTSessions(
            holder: holder, all: !store.sharedByNodes, silentFor: store.sharedByNodes ? silence.timeInterval : nil)
        var restored = 0
        for session in sessions where try await takeUp(session) { restored += 1 }
        if logged, restored > 0 { try await replayLog(through: head) }
        savedPositions = [:]
        if restored + retained.count > 0 {
            logger.info("MQTT state restored", metadata: ["sessions": "\(restored)", "retained": "\(retained.count)"])
        }
    }

    /// One node, at start: the position each stored session was saved at, for the log's replay (`replayLog`).
    private var savedPositions: [String: Int64] = [:]
    /// One node: the log is pruned up to here.
    private var logPruned: Int64 = 0
    /// One node: full writes since the log was last pruned up to a new position, and the broker's position at the
    /// last prune.
    private var writesWithoutPrune = 0
    private var logCapped: Int64 = 0
    /// One node: the most messages the log keeps, should its sessions fail to be saved for long.
    static let logKept = 100_000

    /// One node, at start, once the stored sessions are up: each logged message up to `head` goes, once, to the
    /// sessions saved before it (`MQTTBroker.replayLog`), a page at a time: the log is read once, however many
    /// sessions there are, and never held whole.
    private func replayLog(through head: Int64) async throws {
        var after: Int64 = 0
        var replayed = 0
        while after < head {
            let page = try await store.loggedMessages(after: after, limit: 1_000)
            guard let last = page.last?.id else { break }
            // One that expired while the node was down, or (never from this version) does not decode: skipped.
            let messages = page.compactMap { id, relayed in
                id > head ? nil : MessageRelay.message(relayed).map { (id, $0, relayed.publisher) }
            }
            replayed += await broker.replayLog(messages, after: savedPositions)
            after = last
        }
        if replayed > 0 { logger.info("MQTT message log replayed", metadata: ["deliveries": "\(replayed)"]) }
    }

    /// One node, after a write: once a write saved every change, the logged messages up to the position it saved
    /// the sessions at are held by them and go. Every 20th write (5 s) that pruned nothing (it failed, or the
    /// position stood still), only those beyond the newest `logKept` go: a bound on the log whatever happens (a
    /// message dropped that way is lost to a kill, as before the log).
    private func pruneLog(savedAt position: Int64?) async {
        guard store.keepsMessageLog else { return }
        let moved = position.map { $0 > logPruned } ?? false
        // Logged messages delivered since the last prune (none: the log has not grown, and an idle node writes
        // nothing).
        let delivered = broker.relayPosition
        if !moved {
            writesWithoutPrune += 1
            guard writesWithoutPrune % 20 == 0, delivered > logCapped else { return }
        }
        let through = moved ? position ?? logPruned : logPruned
        do {
            try await store.pruneMessageLog(through: through, keeping: Self.logKept)
            logPruned = through
            logCapped = delivered
            if moved { writesWithoutPrune = 0 }
        } catch {
            logger.warning("MQTT message log not pruned; retried", metadata: ["error": "\(error)"])
        }
    }

    func run() async throws {
        // This node says it is alive every 5 s on a timer of its own, so slow saves or a long take-up never make it
        // look dead to the others (`bulwark node list` marks a node down after 10 s of silence). The first beat
        // after a second, once the listeners are bound, records their addresses.
        // A single node (SQLite) records itself once at start and once at stop: a write every 5 s of every hub is
        // work for nothing (`GET /v1/nodes` shows the answering node up from memory).
        let heartbeat = Task { [store, node, logger] in
            guard store.sharedByNodes else { return }
            try? await Task.sleep(for: .seconds(1))
            while !Task.isCancelled {
                do { try await store.markAlive(node.record) } catch {
                    logger.warning("could not say this node is alive", metadata: ["error": "\(error)"])
                }
                try? await Task.sleep(for: .seconds(5))
            }
        }
        defer { heartbeat.cancel() }
        try await cancelWhenGracefulShutdown {
            var ticks = 0
            while !Task.isCancelled {
                do { try await Task.sleep(for: self.interval) } catch { break }
                await self.flush()
                if self.store.sharedByNodes { await self.announceShares() }
                ticks += 1
                if self.store.sharedByNodes, ticks % 20 == 0 { await self.adoptReleased() }
            }
        }
        await flush()
        // Stopped before the sessions are let go, and the other nodes told at once: they place no more messages
        // among this node's shared subscriptions (it reads the log no more).
        heartbeat.cancel()
        _ = await heartbeat.value
        node.shares.withLock { $0 = "" }
        do {
            try await store.markAlive(node.record)
            try await store.markStopped(holder: holder)
            try await store.announceNodeChange(holder: holder)
        } catch {
            logger.warning("could not record that this node stopped", metadata: ["error": "\(error)"])
        }
        await releaseAll()
    }

    /// Writes what changed, after any write still in progress (what cannot be written is logged and retried at the
    /// next flush). True when everything that had changed is written: a caller that acknowledges a message only
    /// once its sessions are saved must not acknowledge it otherwise.
    @discardableResult
    func flush() async -> Bool { await inLine { await self.write() }.value }

    /// As `flush()`, but writing only the sessions with these keys (and the retained message of `retained`), and
    /// saying whether those are saved: one session that cannot be saved must not refuse, or hold up, every message
    /// that reached other sessions (the rest is left to the periodic write). Keys with nothing to save (no change,
    /// a session that is not kept) count as saved.
    ///
    /// The calls that come while a write is in progress share the next one (a group commit): a message from each of
    /// a hundred publishers costs one transaction of their sessions, not a hundred in a row, and each call is
    /// answered for its own keys.
    func flush(saving keys: Set<String>, retained: TopicName? = nil) async -> Bool {
        // Nothing asked (a message that reached no session at QoS 1 or 2): nothing to wait in line for.
        guard !keys.isEmpty || retained != nil else { return true }
        return await withCheckedContinuation { answer in
            let call = SaveCall(keys: keys, retained: retained, answer: answer)
            guard gathering == nil else {
                gathering?.append(call)
                return
            }
            gathering = [call]
            _ = inLine { await self.writeGathered() }
        }
    }

    /// Runs `write` after the last write queued: one at a time, in order. (A `flush(saving:)` call may join a write
    /// queued before a full `flush()` it came after: it is then written first, and the full write takes only what
    /// changed since.)
    private func inLine<Answer: Sendable>(_ write: @escaping @Sendable () async -> Answer) -> Task<Answer, Never> {
        let previous = lastFlush
        let task = Task {
            await previous?.value
            return await write()
        }
        lastFlush = Task { _ = await task.value }
        return task
    }

    /// What the other nodes were last told of this node's shared subscriptions.
    private var announcedShares = ""

    /// Several nodes: when this node's shared subscriptions changed (a group gained its first member here, lost its
    /// last, or its first or last connected one), records them with the heartbeat and tells the other nodes, which
    /// place their messages among them (`SharedPlacement`).
    private func announceShares() async {
        let shares = NodeDescription.encode(await broker.sharedPresence())
        // By bytes: two spellings of a share name that differ only in normalization are two shares.
        guard !shares.utf8.elementsEqual(announcedShares.utf8) else { return }
        node.shares.withLock { $0 = shares }
        do {
            try await store.markAlive(node.record)
            try await store.announceNodeChange(holder: holder)
            announcedShares = shares
        } catch {
            logger.warning("shared subscriptions not announced; retried", metadata: ["error": "\(error)"])
        }
    }

    /// The write `flush(saving:)` calls share: closed to more once it begins, then each call's sessions (and the
    /// sessions their shared-subscription messages went to since) and retained message. Each call is answered as
    /// soon as its answer is known: one whose sessions the shared transactions saved waits for no other's retry.
    private func writeGathered() async {
        let calls = gathering ?? []
        gathering = nil
        await takeChanges()
        defer { forgetSavedHandOvers() }
        // Those asked for, and where their shared-subscription messages went since, and no more: the rest is the
        // periodic write's (its failures, or a slow store, must not hold up these answers).
        let sessions = calls.map { handedOver.following($0.keys) }
        let unsaved = await writeSessions(sessions.reduce(into: Set<String>()) { $0.formUnion($1) })
        // Answered in this order: those with nothing more to write; those whose sessions are saved, once their
        // retained message is; those whose sessions are not, after a retry. None waits for a later kind's writes.
        var retained: [(call: SaveCall, topic: TopicName)] = []
        var refused: [(call: SaveCall, sessions: Set<String>)] = []
        for (call, sessions) in zip(calls, sessions) {
            if !sessions.isDisjoint(with: unsaved) {
                refused.append((call, sessions))
            } else if let topic = call.retained {
                retained.append((call, topic))
            } else {
                call.answer.resume(returning: true)
            }
        }
        for (call, topic) in retained { call.answer.resume(returning: await writeRetained(topic)) }
        for (call, sessions) in refused {
            // A transaction of several calls' sessions was refused: this call's are tried alone, so a session that
            // cannot be saved fails the calls that reached it and no other, as if they had not been merged (a store
            // that is down fails each, a write each, as before the merge). A session handed over to another node
            // meanwhile has no pending change left here and counts as saved: its new holder saves it.
            var saved = false
            if calls.count > 1 { saved = await writeSessions(sessions).isEmpty }
            if saved, let topic = call.retained { saved = await writeRetained(topic) }
            call.answer.resume(returning: saved)
        }
    }

    /// After a write: the hand-overs whose sessions are all saved since are forgotten (`SharedHandOvers.forget`).
    private func forgetSavedHandOvers() { handedOver.forget { pendingSessions.index(forKey: $0) != nil } }

    /// The `flush(saving:)` calls waiting for the write of theirs that is queued (tests).
    var gatheredSaves: Int { gathering?.count ?? 0 }

    /// Takes the broker's changes into those pending; the position of the last message they hold.
    @discardableResult
    private func takeChanges() async -> Int64 {
        takesBegun += 1
        let changes = await broker.takeChanges()
        pendingSessions.merge(changes.sessions) { $1 }
        pendingRetained.merge(changes.retained) { $1 }
        handedOver.record(changes.handedOver)
        takesMerged = takesBegun
        wakeWaiting()
        return changes.position
    }

    /// Writes what changed. The write stops at its first failure (a store that is down fails them all; what is not
    /// written stays pending, for the next write); true when everything was written.
    private func write() async -> Bool {
        let position = await takeChanges()
        defer { forgetSavedHandOvers() }
        guard await writeSessions(Array(pendingSessions.keys)).isEmpty else {
            await pruneLog(savedAt: nil)
            return false
        }
        await pruneLog(savedAt: position)
        for topic in Array(pendingRetained.keys) { guard await writeRetained(topic) else { return false } }
        return true
    }

    /// Writes the pending changes of these sessions, several to a transaction (a message that reached many sessions
    /// costs one commit, not one each; `SharedHandOvers.transactions`); the keys of those not saved: the store
    /// refused their transaction or one before it (their changes stay pending).
    ///
    /// A session handed over to another node (`handOver(key:to:)`) has no pending change here once the hand-over
    /// has waited out this write's transaction holding it, and is left alone; one another node took meanwhile is
    /// refused by the store (saved only by its holder), and let go of here.
    private func writeSessions(_ keys: some Sequence<String>) async -> Set<String> {
        let keys = keys.filter { pendingSessions.index(forKey: $0) != nil }
        var unsaved: Set<String> = []
        guard !keys.isEmpty else { return unsaved }
        let transactions = handedOver.transactions(keys) { (self.pendingSessions[$0] ?? nil)?.state.count ?? 0 }
        for transaction in transactions {
            guard unsaved.isEmpty else {
                unsaved.formUnion(transaction)
                continue
            }
            // What is written, as it stands now, in key order (nodes writing rows they share lock them in the same
            // order on PostgreSQL): a key handed over since has no pending change and is skipped (never taken for a
            // removal); a newer change that comes during the write stays pending.
            let changes = transaction.sorted().compactMap { key in
                pendingSessions[key].map { MQTTSessionChange(key: key, session: $0, stored: storedKeys.contains(key)) }
            }
            // A removal is unmarked before it is written: should its commit be lost to the connection (done, or not),
            // the key's next save inserts or updates, and never finds a row it counted on gone.
            for change in changes where change.session == nil { storedKeys.remove(change.key) }
            writing = changes
            defer {
                writing = []
                wakeWaiting()
            }
            do {
                let held = try await store.saveMQTTSessions(changes, holder: holder, release: false)
                // The rows saved are this node's now, marked at once (before the look below, which may fail). A held
                // key keeps its mark until the look has dealt with it: retried unmarked, its save would insert a row
                // another node removed.
                for change in changes where change.session != nil && !held.contains(change.key) {
                    storedKeys.insert(change.key)
                }
                for key in held.sorted() {
                    if try await store.mqttSessionHolder(key: key).holder != holder {
                        // Another node took it meanwhile (or took it and let go, or ended it): the copy here is stale,
                        // and so is any change of it still to write (should a later look fail, it is not retried).
                        _ = await broker.handOver(key)
                        pendingSessions[key] = nil
                    }
                    storedKeys.remove(key)
                }
            } catch {
                logger.warning(
                    "MQTT sessions not saved; retried", metadata: ["sessions": "\(changes.count)", "error": "\(error)"])
                unsaved.formUnion(transaction)
                continue
            }
            for change in changes where pendingSessions[change.key] == change.session {
                pendingSessions[change.key] = nil
            }
        }
        return unsaved
    }

    /// Writes the pending change of one retained message; false when the store refused it (it stays pending).
    private func writeRetained(_ topic: TopicName) async -> Bool {
        guard let change = pendingRetained[topic] else { return true }
        do {
            if let message = change.message {
                try await store.putRetainedMessage(
                    StoredRetainedMessage(
                        topic: topic.rawValue, owner: change.owner, message: message.stored(now: .now),
                        savedAt: Date()))
            } else {
                try await store.removeRetainedMessage(topic: topic.rawValue)
            }
            pendingRetained[topic] = nil
            return true
        } catch {
            logger.warning("retained message not saved; retried", metadata: ["error": "\(error)"])
            return false
        }
    }

    /// The node stops: every session it holds is saved and let go of, for whichever node takes it up.
    private func releaseAll() async {
        _ = await lastFlush?.value
        let all = await broker.storedSessions()
        var released = 0
        for keys in handedOver.transactions(Array(all.keys), size: { (all[$0] ?? nil)?.state.count ?? 0 }) {
            let changes = keys.sorted().map {
                MQTTSessionChange(key: $0, session: all[$0] ?? nil, stored: storedKeys.contains($0))
            }
            // Tried twice: a transaction PostgreSQL aborted (another node's locks) leaves these sessions held by
            // a node that stopped.
            for attempt in 1...2 {
                do {
                    let held = try await store.saveMQTTSessions(changes, holder: holder, release: true)
                    released += changes.count { $0.session != nil } - held.count
                    break
                } catch {
                    logger.warning(
                        "MQTT sessions not saved at shutdown",
                        metadata: ["sessions": "\(changes.count)", "attempt": "\(attempt)", "error": "\(error)"])
                }
            }
        }
        if released > 0 { logger.info("MQTT sessions saved", metadata: ["sessions": "\(released)"]) }
    }

    /// Several nodes: says this node is alive, and takes up the sessions a node let go of when it stopped or held
    /// when it fell silent for `silence` (died), every 20 intervals (5 s), so someone queues for a client that is
    /// away while a node restarts or after one dies.
    private func adoptReleased() async {
        do {
            for session in try await store.adoptMQTTSessions(
                holder: holder, all: false, silentFor: silence.timeInterval)
            {
                try await takeUp(session)
            }
        } catch {
            logger.warning("released MQTT sessions not taken up; retried", metadata: ["error": "\(error)"])
        }
    }

    /// Before a connection attaches to session `key`: makes sure the session, if one is stored, is held here (asked
    /// of the node holding it, then taken); with `cleanStart` the stored one is removed. Throws when the store
    /// cannot be reached: the connection is refused (Server unavailable), never given an empty session in place
    /// of the one it has.
    ///
    /// Nonisolated, the check for a store of one node first: every CONNECT calls this, and the take-over's frame
    /// (1.1 KB) would otherwise stay in each connection's task for as long as it is connected.
    nonisolated func prepare(key: String, owner: String, maxPerOwner: Int, cleanStart: Bool) async throws {
        guard store.sharedByNodes else { return }
        try await takeOver(key: key, owner: owner, maxPerOwner: maxPerOwner, cleanStart: cleanStart)
    }

    private func takeOver(key: String, owner: String, maxPerOwner: Int, cleanStart: Bool) async throws {
        guard !(await broker.holds(key)) else { return }
        // An identity at its limit of sessions here takes none over from another node (the attach refuses it).
        guard await broker.sessionCount(of: owner) < maxPerOwner else { return }
        var (stored, current) = try await store.mqttSessionHolder(key: key)
        guard stored else { return }
        if current == holder {
            // Held here without a copy in the broker: the session ended on this node, and its removal is on its way
            // in this node's writes: written first, it leaves nothing to take up (MQTT 5.0 §3.1.2.11.2: an ended
            // session is not resumed).
            _ = await flush(saving: [key])
            (stored, current) = try await store.mqttSessionHolder(key: key)
            guard stored else { return }
            // Still here (the store failed the removal): a clean start, or a removal still pending, leaves the row to
            // this node's writes (the new session's save comes after the removal, in order). Removed out of band, it
            // could go between a write's update of the old copy (`stored`) and that write's look at the result,
            // which would then let go of the new session.
            if current == holder, cleanStart || pendingSessions[key] == .some(nil) { return }
        }
        if let other = current, other != holder {
            try await store.requestMQTTSession(key: key, by: holder)
            let deadline = ContinuousClock.now + handOverWait
            while ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(20))
                (stored, current) = try await store.mqttSessionHolder(key: key)
                if !stored || current != other { break }
            }
            if current == other {
                logger.warning(
                    "MQTT session taken from a node that did not hand it over",
                    metadata: ["session": "\(key)", "node": "\(other)"])
            }
        }
        guard let session = try await store.takeMQTTSession(key: key, holder: holder) else { return }
        if cleanStart {
            try await store.removeMQTTSession(key: key, holder: holder)
            storedKeys.remove(key)  // (never this node's: the new session's first save inserts it)
        } else {
            try await takeUp(session)
        }
    }

    /// Restores a stored session into the broker, and (several nodes) replays into it the messages of the log
    /// after the position its last holder saved: those that node had not routed to it before it let go (or died),
    /// up to the head of the log. Messages this node reads from the log later skip the session up to that point.
    /// This node's own messages are delivered here directly, not read from the log: the restore waits (up to half a
    /// second) for a moment when none is on its way, so that each of them is either in the log before the head is
    /// read or delivered after the session is in memory. Replayed: only what the session's (unshared)
    /// subscriptions match, at most its queue's length. False when it does not decode (logged; a new session starts
    /// in its place) or one is held here already.
    @discardableResult
    private func takeUp(_ stored: StoredMQTTSession) async throws -> Bool {
        let now = ContinuousClock.now
        let wallClock = Date()
        guard
            let snapshot = try? SessionSnapshot(
                decoding: stored.state, elapsed: Self.elapsed(since: stored.savedAt, at: wallClock), now: now)
        else {
            logger.warning("stored MQTT session does not decode; skipped", metadata: ["session": "\(stored.key)"])
            return false
        }
        guard store.sharedByNodes else {
            return try await restore(stored, snapshot, quiet: nil, now: now, wallClock: wallClock)
        }
        // Several nodes: this node's own messages wait while the session is taken up, and those on their way
        // finish first (at most 5 s: a store that slow fails their writes); then every own message is either in
        // the log up to the head read below, or delivered after the session is in memory.
        await broker.freeze()
        let deadline = ContinuousClock.now + .seconds(5)
        var state = broker.localState
        while !state.quiet, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(5))
            state = broker.localState
        }
        if !state.quiet {
            logger.warning(
                "MQTT session taken up while an own message was still on its way (it may miss the session)",
                metadata: ["session": "\(stored.key)"])
        }
        let restored: Result<Bool, any Error>
        do {
            restored = .success(
                try await restore(
                    stored, snapshot, quiet: state.quiet ? state.begun : nil, now: now, wallClock: wallClock))
        } catch {
            restored = .failure(error)
        }
        await broker.thaw()  // whatever the outcome: own messages go on
        return try restored.get()
    }

    /// Restores the session with the messages of the log after its saved position replayed into it (only what its
    /// unshared subscriptions match, at most its queue's length), reading on while the log moves.
    private func restore(
        _ stored: StoredMQTTSession, _ snapshot: SessionSnapshot, quiet: Int?, now: ContinuousClock.Instant,
        wallClock: Date
    ) async throws -> Bool {
        // Several nodes: the filters whose messages the other nodes' log replays (a QoS 0 one would only use up the
        // replay's room, its queue's length). One node replays its own log later, through the index (`replayLog`).
        let filters = store.sharedByNodes ? snapshot.filters.filter(\.value.isReplayable).keys : [:].keys
        var replay: [(message: BrokerMessage, publisher: String?)] = []
        var read = snapshot.position
        var quiet = quiet
        while true {
            // One node: its log is replayed once every stored session is up (`replayLog`, from the position each
            // was saved at, `savedPositions`); the broker is at the log's head already.
            var through = broker.relayPosition
            if store.sharedByNodes { through = max(try await store.latestClusterEvent(), through) }
            while store.sharedByNodes, read < through {
                let events = try await store.clusterEvents(after: read)
                for event in events where event.id <= through && replay.count < broker.maxQueued {
                    if case .message(let relayed) = event.change, let message = MessageRelay.message(relayed),
                        case let split = TopicName.Split(message.topic),
                        filters.contains(where: { $0.matches(split) })
                    {
                        replay.append((message, relayed.publisher))
                    }
                }
                guard let last = events.last?.id else { break }
                read = min(last, through)
            }
            read = max(read, through)
            switch await broker.restore(
                stored, snapshot, replay: replay, through: through, quiet: quiet, now: now, wallClock: wallClock)
            {
            case .restored:
                storedKeys.insert(stored.key)
                if !store.sharedByNodes { savedPositions[stored.key] = snapshot.position }
                return true
            case .held: return false
            case .behind: continue  // the log moved on (other nodes' messages): read what came
            case .busy: quiet = nil  // cannot happen while frozen; never loop on it
            }
        }
    }

    /// Wall-clock time from `savedAt` to `now`, never negative: what a stored expiry counts on by.
    static func elapsed(since savedAt: Date, at now: Date) -> Duration {
        .milliseconds(Int64(max(0, now.timeIntervalSince(savedAt)) * 1000))
    }

    /// Another node (`by`) asks for a session its client connected to: handed over if held here. The client here
    /// is sent away at once; the store's part waits only for what may hold an older copy of the session, which
    /// must not land after this one: a take of the broker's changes begun before (its copy is dropped once merged)
    /// and a transaction on its way with the session in it. Later writes find no change of it to write.
    ///
    /// A session that handed shared-subscription messages to other sessions here that are not saved since has those
    /// saved first (a write through the chain, which puts the sessions a hand-over joins in one transaction): saved
    /// alone, and given away, it would leave a message in neither row if this node were killed before its next write.
    func handOver(key: String, to by: String) async {
        guard by != holder, await broker.holds(key) else { return }
        let session = await broker.handOver(key)
        if await broker.handedOverShared(from: key) || handedOver.handedOn(from: key) { await flush() }
        let begun = takesBegun
        while takesMerged < begun || writing.contains(where: { $0.key == key }) {
            await withCheckedContinuation { waiting.append($0) }
        }
        pendingSessions[key] = nil
        let stored = storedKeys.remove(key) != nil
        do {
            if let session {
                // Saved as this node's, then given to the node that asked: never released in between, where a node
                // looking for released sessions could take it first.
                if try await store.saveMQTTSession(session, holder: holder, release: false, stored: stored) {
                    _ = try await store.takeMQTTSession(key: key, holder: by)
                }
            } else {
                try await store.removeMQTTSession(key: key, holder: holder)
            }
        } catch {
            logger.warning("MQTT session not handed over", metadata: ["session": "\(key)", "error": "\(error)"])
        }
    }
}
