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
final class PayloadProcess: Sendable {
    private let process: ChildProcess
    let pid: Int32
    let slot: Slot

    private let started: UInt64?

    private init(process: ChildProcess, slot: Slot) {
        self.process = process
        self.pid = process.pid
        self.slot = slot
        started = Self.startTime(process.pid)
    }

    /// Running until it exits: a zombie has exited, whether or not its waiting thread reaped it yet.
    var isRunning: Bool {
        guard process.isRunning else { return false }
        guard let started else { return true }
        return Self.isRunning(pid, started: started)
    }

    /// When a process started, in clock ticks since boot (`/proc/PID/stat` field 22, after the parenthesised name).
    static func startTime(_ pid: Int32, procRoot: String = "/proc") -> UInt64? {
        guard let stat = try? String(contentsOfFile: "\(procRoot)/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return nil }
        let rest = stat[stat.index(after: close)...].split(separator: " ")
        // Fields 3… follow the name: field 22 is the 20th of them.
        return rest.count > 19 ? UInt64(rest[19]) : nil
    }

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
        var command = command.map { $0.replacingOccurrences(of: "{slot}", with: directory) }
        // The program as the agent names it (relative to the agent's working directory, not looked up in PATH), and
        // one it cannot run is refused here, with its name, rather than by the shell of the gate.
        if let program = command.first {
            let path = URL(fileURLWithPath: program).path
            guard access(path, X_OK) == 0 else {
                throw UpdateError("cannot start the payload \(program): \(String(cString: strerror(errno)))")
            }
            command[0] = path
        }
        let argv = try privileges(command, user: user)
        // The child leads a process group of its own (pgid = pid; `setpriv` execs in place), so stopping the group
        // stops whatever the payload started too.
        //
        // The child waits at a gate (`/bin/sh` reading one line from a socket) until its pid is on disk, then execs
        // the payload in place (same pid, same start time). An agent killed between the start and the write closes
        // its end, and the child exits without running the payload: a payload never runs without its pid recorded,
        // so the next start always finds and stops what a killed agent left.
        let gate = DirectorySlotStore.executable(["/bin/sh"])
        let (executable, arguments) =
            gate.map { ($0, ["-c", Self.gateScript, "bulwark-payload"] + argv) } ?? (argv[0], Array(argv.dropFirst()))
        var environment = ProcessInfo.processInfo.environment
        environment["BULWARK_SLOT"] = slot.rawValue
        environment["BULWARK_SLOT_DIR"] = directory
        // A socket pair rather than a pipe: the agent's write cannot raise SIGPIPE (MSG_NOSIGNAL), and both ends are
        // close-on-exec, so no other child keeps the gate open.
        var ends: [Int32] = [-1, -1]
        if gate != nil, socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &ends) != 0 {
            throw UpdateError("cannot start the payload \(argv[0]): \(String(cString: strerror(errno)))")
        }
        let opener = ends[0]
        // Its standard output and error are the agent's (the journal, under systemd).
        let process: ChildProcess
        do {
            process = try ChildProcess.start(
                executable, arguments, environment: environment, directory: directory,
                stdin: gate == nil ? .null : .descriptor(ends[1]), stdout: .inherit, stderr: .inherit, onExit: onExit)
        } catch {
            if gate != nil {
                close(opener)
                close(ends[1])
            }
            throw UpdateError("cannot start the payload \(argv[0]): \(error)")
        }
        if gate != nil { close(ends[1]) }
        let payload = PayloadProcess(process: process, slot: slot)
        // The pid with its start time (`/proc/PID/stat` field 22): after a kill -9 of the agent, the next start stops
        // exactly this process (and its group), wherever it moved its working directory, and never a reused pid.
        do {
            try Outbox.write(
                pidFile, Array("\(payload.pid) \(Self.startTime(payload.pid) ?? 0)\n".utf8),
                directory: (pidFile as NSString).deletingLastPathComponent)
        } catch {
            // Unrecorded, it must not run: the gate closes unopened and the child exits 125. The start failed, so
            // that exit is not reported as the payload's too (the handler cleared before the gate closes).
            process.clearHandler()
            if gate != nil { close(opener) }
            throw UpdateError("cannot start the payload \(argv[0]): \(error.message)")
        }
        if gate != nil {
            var sent = -1
            repeat {
                sent = "start\n".withCString { send(opener, $0, 6, Int32(MSG_NOSIGNAL)) }
            } while sent < 0
                && errno == EINTR
            if sent != 6 { process.clearHandler() }  // before the gate closes: the child's 125 is not reported
            close(opener)
            guard sent == 6 else {
                kill(payload.pid, SIGKILL)
                throw UpdateError("cannot start the payload \(argv[0]): the gate could not be opened")
            }
        }
        return payload
    }

    /// The gate: one line `start` on stdin, or exit 125 without running the payload (end of file: the agent died
    /// before the payload's pid was on disk); then the payload, with stdin from /dev/null, in place of the shell.
    static let gateScript = #"read -r go && [ "$go" = start ] || exit 125; exec "$@" </dev/null"#

    /// SIGTERM, then SIGKILL after `grace` seconds.
    func stop(grace: Double = 5) async {
        guard isRunning else { return }
        signal(SIGTERM)
        let deadline = Date().addingTimeInterval(grace)
        while isRunning, Date() < deadline { try? await Task.sleep(for: .milliseconds(20)) }
        if isRunning { signal(SIGKILL) }
        let reaped = Date().addingTimeInterval(5)
        while isRunning, Date() < reaped { try? await Task.sleep(for: .milliseconds(10)) }
        // What it started and left behind goes with it.
        let group = getpgid(pid)
        if group == pid || (group == -1 && errno == ESRCH) { kill(-pid, SIGKILL) }
    }

    /// Stops a payload a previous run of the agent left (its pid and start time in `pidFile`: a reused pid is never
    /// signalled), and waits until it is gone or a zombie, so the payload started next never runs beside it. The wait
    /// blocks (up to 5 s, normally milliseconds) on purpose: it runs before the updater's boot decision, and an
    /// `await` here would let another request into the updater first.
    static func stopLeftover(pidFile: String, slotsRoot: String, procRoot: String = "/proc") {
        guard let text = try? String(contentsOfFile: pidFile, encoding: .utf8) else { return }
        defer { unlink(pidFile) }
        let fields = text.split(whereSeparator: \.isWhitespace)
        guard fields.count == 2, let pid = Int32(fields[0]), pid > 1, let started = UInt64(fields[1]), started > 0,
            startTime(pid, procRoot: procRoot) == started
        else { return }
        let sent = getpgid(pid) == pid ? kill(-pid, SIGKILL) : kill(pid, SIGKILL)
        guard sent == 0 else { return }  // gone already, or not ours to signal: nothing to wait for
        let deadline = ContinuousClock.now + .seconds(5)
        while ContinuousClock.now < deadline, isRunning(pid, started: started, procRoot: procRoot) { usleep(10_000) }
    }

    /// Whether `pid` is still the process that started at `started` and has not exited (a zombie has: it only
    /// waits for its new parent to reap it).
    static func isRunning(_ pid: Int32, started: UInt64, procRoot: String = "/proc") -> Bool {
        guard startTime(pid, procRoot: procRoot) == started,
            let stat = try? String(contentsOfFile: "\(procRoot)/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return false }
        return stat[stat.index(after: close)...].split(separator: " ").first != "Z"
    }
}
