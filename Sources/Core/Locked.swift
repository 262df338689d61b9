#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// A value behind a `pthread_mutex_t`, for the locks that every message takes on more than one thread: a thread
/// that finds the lock held sleeps in the kernel at once (glibc's default mutex; musl's spins about 100 times
/// first), and the thread that holds it runs. Not recursive: locking it again from inside `withLock` deadlocks.
///
/// `Synchronization.Mutex` first spins (on Linux up to 1,000 `pause` instructions, each about 140 cycles on this
/// machine's CPUs) before it sleeps. That pays when the holder is running on another core and about to let go. On a
/// hub whose threads outnumber its cores, the holder has often been preempted, and the spin burns the time slice
/// the holder needs: with QoS 0 messages handled on the event loops, 17 % of the hub's CPU was that spin, in the
/// gateway's per-source rate limit and the correlation ids' random pool (`perf annotate`, 2026-12-06).
///
/// One allocation for the object and one for the mutex (its address must not move): for long-lived shared state,
/// not for one per connection. Sendable when its value is (what `withLock` hands out may cross threads).
public final class Locked<Value> {
    /// Not checked for exclusive access at run time: only `withLock` reaches it, with the mutex held, so two
    /// accesses never overlap (another thread waits for the lock; this one, locking again, deadlocks first, or
    /// traps in a debug build). The check was a `swift_beginAccess` and `swift_endAccess` on every lock: the
    /// per-device rate table's stripe took one per message (`perf report`, 2026-12-07).
    @exclusivity(unchecked) @usableFromInline var value: Value
    @usableFromInline let mutex: UnsafeMutablePointer<pthread_mutex_t>

    public init(_ value: Value) {
        self.value = value
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        #if DEBUG
            // A debug build checks what the run-time exclusivity check no longer does: locking again from inside
            // `withLock` fails (EDEADLK) and traps, where a release build deadlocks.
            var attributes = pthread_mutexattr_t()
            pthread_mutexattr_init(&attributes)
            pthread_mutexattr_settype(&attributes, Int32(PTHREAD_MUTEX_ERRORCHECK))
            let created = pthread_mutex_init(mutex, &attributes)
            pthread_mutexattr_destroy(&attributes)
        #else
            let created = pthread_mutex_init(mutex, nil)
        #endif
        precondition(created == 0, "pthread_mutex_init failed: \(created)")
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// `body` with the value, the lock held; the value is reached only so.
    @inlinable
    public func withLock<Result>(_ body: (inout Value) throws -> Result) rethrows -> Result {
        let locked = pthread_mutex_lock(mutex)
        precondition(locked == 0, "pthread_mutex_lock failed")
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}

extension Locked: @unchecked Sendable where Value: Sendable {}
