/// Periodically re-signs the online roles before they expire (TUF §4.4, §4.6: timestamp and
/// snapshot have short expiry so that a freeze attack is noticed quickly).
///
/// Each tick opens the repository from disk (so it sees what other writers published), calls
/// `resignIfExpiring` for snapshot then timestamp, and sleeps `interval`. Run it in a task and
/// cancel the task to stop it.
public struct Resigner: Sendable {
    public let directory: String
    public let keyring: Keyring
    public let interval: Duration
    /// Re-sign a role when it expires within this many seconds, per role.
    public let within: [String: Int64]
    public var expiry: ExpiryPolicy
    public var clock: @Sendable () -> Int64

    public init(
        directory: String,
        keyring: Keyring,
        interval: Duration = .seconds(3600),
        within: [String: Int64] = ["snapshot": 2 * 86400, "timestamp": 6 * 3600],
        expiry: ExpiryPolicy = ExpiryPolicy(),
        clock: @escaping @Sendable () -> Int64 = ExpiryDate.now
    ) {
        self.directory = directory
        self.keyring = keyring
        self.interval = interval
        self.within = within
        self.expiry = expiry
        self.clock = clock
    }

    /// One pass. Returns the roles re-signed.
    @discardableResult
    public func tick() async throws -> [String] {
        // One writer at a time (an operator's `bulwark tuf publish` takes the same lock), and only the published
        // metadata: staged edits wait for their operator.
        let lock = try RepositoryLock(directory: directory)
        defer { lock.release() }
        let repository = FileRepository(directory: directory)
        var editor = try repository.open(expiry: expiry, clock: clock, includeStaged: false)
        var done: [String] = []
        for role in ["snapshot", "timestamp"] {
            guard let seconds = within[role] else { continue }
            if try await repository.resignIfExpiring(&editor, role: role, within: seconds, keyring: keyring) {
                done.append(role)
            }
        }
        return done
    }

    /// Ticks until the task is cancelled. A failed tick is reported to `onError` and retried
    /// at the next interval.
    public func run(onError: @Sendable (any Error) -> Void = { _ in }) async {
        while !Task.isCancelled {
            do {
                try await tick()
            } catch {
                onError(error)
            }
            do {
                try await Task.sleep(for: interval)
            } catch {
                return
            }
        }
    }
}
