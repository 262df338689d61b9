#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// An exclusive lock on a repository (`flock` on `REPO/.lock`) for a whole open → publish sequence, so the hub's
/// re-signer and an operator's `bulwark tuf` never both write version N+1 of a role with different contents.
public final class RepositoryLock: Sendable {
    private let descriptor: Int32

    /// Blocks until the lock is held.
    public init(directory: String, name: String = ".lock") throws(RepositoryError) {
        let fd = open(directory + "/" + name, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw RepositoryError(.io, "cannot open the repository lock in \(directory)") }
        while flock(fd, LOCK_EX) != 0 {
            guard errno == EINTR else {
                close(fd)
                throw RepositoryError(.io, "cannot lock the repository \(directory)")
            }
        }
        descriptor = fd
    }

    public func release() {
        flock(descriptor, LOCK_UN)
        close(descriptor)
    }
}
