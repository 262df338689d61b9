#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// Makes what was renamed, linked or removed in a directory so far survive a power loss (`fsync` on the directory,
/// POSIX `fsync` and Linux's rename semantics): one place for the hub and the agent, each turning a failure into its
/// own error. The TUF modules keep their own, as they depend on nothing else of Bulwark's.
public enum DirectorySync {
    /// Nil once synced; else what failed (`open` or `fsync`, with the system's reason). `EINTR` is retried.
    public static func sync(_ directory: String) -> String? {
        let descriptor = open(directory.isEmpty ? "." : directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard descriptor >= 0 else {
            let code = errno  // before anything else can change it
            return "cannot open \(directory) to sync it: \(String(cString: strerror(code)))"
        }
        defer { close(descriptor) }
        while fsync(descriptor) != 0 {
            let code = errno
            if code == EINTR { continue }
            return "cannot sync \(directory): \(String(cString: strerror(code)))"
        }
        return nil
    }
}
