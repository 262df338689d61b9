import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// What a program the agent starts inherits: its standard input, output and error, and nothing else.
///
/// Foundation's `Process` closes the descriptors it made itself, not every descriptor of the agent: measured, a
/// payload (`sleep`) started by an agent inside a process held one of the agent's TCP sockets and the write ends
/// of other programs' pipes. A payload is the device's least trusted code; the agent's connection to the hub is
/// none of its business, and a socket it keeps open keeps that connection from ever closing for the hub.
enum Descriptors {
    /// Marks every open descriptor above 2 close-on-exec, just before a program is started. (A descriptor opened by
    /// another thread after this, without close-on-exec, can still slip through: sockets and pipes the agent makes
    /// itself are close-on-exec already.)
    static func closeOnExec() {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd") else { return }
        for entry in entries {
            guard let descriptor = Int32(entry), descriptor > 2 else { continue }
            let flags = fcntl(descriptor, F_GETFD)
            if flags >= 0, flags & FD_CLOEXEC == 0 { _ = fcntl(descriptor, F_SETFD, flags | FD_CLOEXEC) }
        }
    }
}
