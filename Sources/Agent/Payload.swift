import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// The device application, run from a slot as a child process of the agent: `agent.payload` with `{slot}` replaced
/// by the slot's directory, started in that directory with `BULWARK_SLOT` (a or b) and `BULWARK_SLOT_DIR` set. When
/// the agent runs as root and `agent.payloadUser` names a user, the payload runs as that user (through util-linux's
/// `setpriv --reuid --regid --init-groups`), so it cannot write the agent's state, its trust anchors or its own
/// slots. Its pid is kept in `STATE/payload.pid`, so a payload left behind by an agent that was killed is stopped
/// at the next start instead of running twice.
final class PayloadProcess: @unchecked Sendable {
    // `process` is set once at launch; `Process` itself is thread-safe for the calls made here.
    private let process: Process
    let pid: Int32
    let slot: Slot

    private init(process: Process, slot: Slot) {
        self.process = process
        self.pid = process.processIdentifier
        self.slot = slot
    }

    var isRunning: Bool { process.isRunning }

    /// `argv` run as `user` when the agent is root (util-linux `setpriv`: real and effective ids, groups), as is
    /// otherwise.
    static func privileges(_ argv: [String], user: String?) throws -> [String] {
        guard !argv.isEmpty else { throw UpdateError("agent.payload is empty") }
        guard let user, geteuid() == 0 else { return argv }
        guard let entry = getpwnam(user) else { throw UpdateError("agent.payloadUser \(user) does not exist") }
        guard let setpriv = DirectorySlotStore.executable(["/usr/bin/setpriv", "/bin/setpriv"]) else {
            throw UpdateError("agent.payloadUser needs setpriv (util-linux), which is not installed")
        }
        return [setpriv, "--reuid=\(entry.pointee.pw_uid)", "--regid=\(entry.pointee.pw_gid)", "--init-groups", "--"]
            + argv
    }

    /// Signals the payload's process group when it leads one (it does when started through `setsid`), else it.
    private func signal(_ number: Int32) {
        if getpgid(pid) == pid { kill(-pid, number) } else { kill(pid, number) }
    }

    static func launch(
        command: [String], slot: Slot, directory: String, user: String?, pidFile: String,
        onExit: @escaping @Sendable (Int32) -> Void
    ) throws -> PayloadProcess {
        let argv = try privileges(command.map { $0.replacingOccurrences(of: "{slot}", with: directory) }, user: user)
        // Foundation starts the child in its own process group (pgid = pid; `setpriv` execs in place), so stopping the
        // group stops whatever the payload started too.
        let process = Process()
        process.executableURL = URL(fileURLWithPath: argv[0])
        process.arguments = Array(argv.dropFirst())
        process.currentDirectoryURL = URL(fileURLWithPath: directory)
        var environment = ProcessInfo.processInfo.environment
        environment["BULWARK_SLOT"] = slot.rawValue
        environment["BULWARK_SLOT_DIR"] = directory
        process.environment = environment
        process.standardInput = FileHandle.nullDevice
        process.terminationHandler = { finished in onExit(finished.terminationStatus) }
        do { try process.run() } catch {
            throw UpdateError("cannot start the payload \(argv[0]): \(error.localizedDescription)")
        }
        let payload = PayloadProcess(process: process, slot: slot)
        try? Outbox.write(
            pidFile, Array("\(payload.pid)\n".utf8), directory: (pidFile as NSString).deletingLastPathComponent)
        return payload
    }

    /// SIGTERM, then SIGKILL after `grace` seconds.
    func stop(grace: Double = 5) async {
        guard process.isRunning else { return }
        signal(SIGTERM)
        let deadline = Date().addingTimeInterval(grace)
        while process.isRunning, Date() < deadline { try? await Task.sleep(for: .milliseconds(20)) }
        if process.isRunning { signal(SIGKILL) }
        let reaped = Date().addingTimeInterval(5)
        while process.isRunning, Date() < reaped { try? await Task.sleep(for: .milliseconds(10)) }
        // What it started and left behind goes with it.
        if getpgid(pid) == pid || errno == ESRCH { kill(-pid, SIGKILL) }
    }

    /// Stops a payload a previous run of the agent left (its pid in `pidFile`, its command line under `slotsRoot`).
    static func stopLeftover(pidFile: String, slotsRoot: String, procRoot: String = "/proc") {
        guard let text = try? String(contentsOfFile: pidFile, encoding: .utf8),
            let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 1
        else { return }
        defer { unlink(pidFile) }
        // Only a process still running in a slot directory (its working directory) is ours: a pid reused after a
        // reboot by anything else is left alone.
        guard
            let cwd = try? FileManager.default.destinationOfSymbolicLink(atPath: "\(procRoot)/\(pid)/cwd"),
            cwd == slotsRoot + "/a" || cwd == slotsRoot + "/b"
        else { return }
        if getpgid(pid) == pid { kill(-pid, SIGKILL) } else { kill(pid, SIGKILL) }
    }
}
