import NIOConcurrencyHelpers
import NIOCore

/// MQTT 3.1.1 §3.1.2.10 and MQTT 5.0 §3.1.2.10: a connection that sends no control packet for one and a half times
/// its keep-alive is closed. One sweep per event loop checks the connections of that loop once a second, in place of
/// a timer and two channel handlers per connection (about half a kilobyte each, with 10,000 devices held 5 MB): a
/// silent connection is closed within a second after its deadline, never before it, below TLS (no close_notify to
/// wait for: `ConnectionInbox.closeForSilence`).
///
/// Used on its event loop only (`watch`, `unwatch` and the sweep itself run there).
final class KeepAliveSweep: @unchecked Sendable {
    /// How often the connections are checked: the most a close can come after its deadline.
    static let interval = TimeAmount.seconds(1)

    private let eventLoop: any EventLoop
    private var watched: [ObjectIdentifier: ConnectionInbox] = [:]
    /// Runs while something is watched.
    private var task: RepeatedTask?

    init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    func watch(_ inbox: ConnectionInbox) {
        eventLoop.assertInEventLoop()
        watched[ObjectIdentifier(inbox)] = inbox
        if task == nil {
            task = eventLoop.scheduleRepeatedTask(initialDelay: Self.interval, delay: Self.interval) { [self] _ in
                sweep()
            }
        }
    }

    func unwatch(_ inbox: ConnectionInbox) {
        eventLoop.assertInEventLoop()
        guard watched.removeValue(forKey: ObjectIdentifier(inbox)) != nil, watched.isEmpty else { return }
        task?.cancel()
        task = nil
    }

    /// Closes every watched connection past its deadline (closing one unwatches it, so they are found first).
    func sweep() {
        let now = eventLoop.now
        let silent = watched.values.filter { $0.isSilent(at: now) }
        for inbox in silent { inbox.closeForSilence() }
    }

    /// For tests: the connections watched, and whether the sweep's timer runs.
    var watchedCount: Int { watched.count }
    var isSweeping: Bool { task != nil }
}

/// The listener's sweeps, one per event loop, made when a loop's first connection starts its keep-alive.
final class KeepAliveSweeps: Sendable {
    private let sweeps = NIOLockedValueBox<[ObjectIdentifier: KeepAliveSweep]>([:])

    func sweep(for eventLoop: any EventLoop) -> KeepAliveSweep {
        sweeps.withLockedValue { sweeps in
            if let sweep = sweeps[ObjectIdentifier(eventLoop)] { return sweep }
            let sweep = KeepAliveSweep(eventLoop: eventLoop)
            sweeps[ObjectIdentifier(eventLoop)] = sweep
            return sweep
        }
    }
}
