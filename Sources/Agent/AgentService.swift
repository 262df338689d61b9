import Foundation
import Logging
import NIOCore
import NIOPosix
public import ServiceLifecycle
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// `bulwark agent run`: the agent's session, and a local Unix socket (`STATE/agent.sock`, mode 0600) where the
/// device's own programs hand it telemetry: one JSON object per line, answered `ok` once the message is on disk (in
/// the outbox) or `error: …`. SIGTERM stops the socket, lets what is in flight be acknowledged, and ends the session
/// with DISCONNECT; whatever is still in the outbox is sent at the next start.
public struct AgentService: Service {
    public let agent: Agent
    public let logger: Logger
    /// Gives the process's working set back to the kernel (`WorkingSet.trim`) 10 s after each connection to the hub
    /// and every this many seconds after; 0 never. For a process that is the agent: it affects the whole process.
    public let trimSeconds: Double

    public init(agent: Agent, logger: Logger, trimSeconds: Double = 0) {
        self.agent = agent
        self.logger = logger
        self.trimSeconds = trimSeconds
    }

    public static func socketPath(_ stateDirectory: String) -> String { stateDirectory + "/agent.sock" }

    public func run() async throws {
        let path = Self.socketPath(agent.configuration.stateDirectory)
        // The socket lives in the state directory, which is 0700 (checked at load): no other user can reach it from the
        // first instant. It is made 0600 too. (Not through umask: that is process-wide, and the agent is a library
        // that shares its process with threads creating files of their own.)
        let server: NIOAsyncChannel<NIOAsyncChannel<ByteBuffer, ByteBuffer>, Never>
        do {
            server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(
                            ByteToMessageHandler(LineDecoder(maximumLength: 256 * 1024)))
                        return try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                    }
                }
        } catch {
            throw AgentError(.connection, "cannot listen on \(path): \(error)")
        }
        chmod(path, 0o600)
        logger.info("agent running", metadata: ["socket": .string(path)])
        let agent = agent
        let trimmer =
            trimSeconds > 0
            ? Task { [logger, trimSeconds] in
                await Self.trimWorkingSet(agent: agent, every: trimSeconds, logger: logger)
            } : nil
        defer { trimmer?.cancel() }
        try await withGracefulShutdownHandler {
            try await withThrowingDiscardingTaskGroup { group in
                group.addTask {
                    try await agent.run()
                }
                try await server.executeThenClose { connections in
                    for try await connection in connections {
                        group.addTask { await Self.serve(connection, agent: agent) }
                    }
                }
            }
        } onGracefulShutdown: {
            server.channel.close(promise: nil)
            Task { await agent.stop() }
        }
        unlink(path)
    }

    /// Trims 10 s after the agent connects (the handshake, the session's start and the first trust refresh are
    /// behind it), then every `every` seconds while it runs, and again 10 s after each reconnection.
    static func trimWorkingSet(agent: Agent, every: Double, logger: Logger) async {
        var wasConnected = false
        var next: ContinuousClock.Instant?
        while !Task.isCancelled {
            let connected = await agent.connection == .connected
            let now = ContinuousClock.now
            if connected, !wasConnected { next = now + .seconds(10) }
            wasConnected = connected
            if let due = next, now >= due {
                // The resident set is read around the trim only when someone will see it.
                if logger.logLevel <= .debug {
                    let before = WorkingSet.residentKiB()
                    let released = WorkingSet.trim()
                    logger.debug(
                        "working set trimmed",
                        metadata: [
                            "before-kib": "\(before)", "after-kib": "\(WorkingSet.residentKiB())",
                            "advised-kib": "\(released)",
                        ])
                } else {
                    WorkingSet.trim()
                }
                next = now + .milliseconds(Int64(every * 1000))
            }
            try? await Task.sleep(for: .seconds(2))
        }
    }

    static func serve(_ connection: NIOAsyncChannel<ByteBuffer, ByteBuffer>, agent: Agent) async {
        try? await connection.executeThenClose { inbound, outbound in
            for try await line in inbound {
                let body = Array(line.readableBytesView)
                if body == Array(Self.updateNow.utf8) {
                    try await updateNow(agent: agent, outbound: outbound)
                    continue
                }
                let reply: String
                do {
                    guard (try? JSONSerialization.jsonObject(with: Data(body))) is [String: Any] else {
                        throw AgentError(.outbox, "not a JSON object")
                    }
                    try await agent.send(body)
                    reply = "ok\n"
                } catch {
                    reply = "error: \(error)\n"
                }
                try await outbound.write(ByteBuffer(string: reply))
            }
        }
    }
}

extension AgentService {
    /// The control line that asks for an update check now (telemetry lines are JSON objects and start with `{`).
    public static let updateNow = "!update-now"

    /// Runs a check and streams `progress RECEIVED TOTAL` lines (at most one per percent), then `done OUTCOME`.
    static func updateNow(agent: Agent, outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>) async throws {
        let (lines, sink) = AsyncStream.makeStream(of: String.self, bufferingPolicy: .bufferingNewest(256))
        let last = Mutex<Int64>(-1)
        let writer = Task {
            for await line in lines { try? await outbound.write(ByteBuffer(string: line)) }
        }
        let outcome = await agent.checkForUpdates { received, total in
            let percent = total > 0 ? received * 100 / total : 100
            let fresh = last.withLock { seen in
                defer { seen = percent }
                return seen != percent
            }
            if fresh { sink.yield("progress \(received) \(total)\n") }
        }
        sink.yield("done \(outcome)\n")
        sink.finish()
        await writer.value
    }
}

/// One line (without its `\n`) per message, bounded: a longer line closes the connection.
struct LineDecoder: ByteToMessageDecoder {
    typealias InboundOut = ByteBuffer
    let maximumLength: Int

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let newline = buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) else {
            if buffer.readableBytes > maximumLength { throw AgentError(.outbox, "line too long") }
            return .needMoreData
        }
        let length = newline - buffer.readerIndex
        guard var line = buffer.readSlice(length: length) else { return .needMoreData }
        buffer.moveReaderIndex(forwardBy: 1)
        if line.readableBytesView.last == UInt8(ascii: "\r") {
            line = line.getSlice(at: line.readerIndex, length: length - 1) ?? line
        }
        context.fireChannelRead(wrapInboundOut(line))
        return .continue
    }
}

/// Sends one line to a running agent's socket and returns its answer; nil when no agent listens there.
public enum AgentSocketClient {
    /// A line-framed connection to the agent's socket; nil when no agent listens (no socket file, or one left by an
    /// agent that is not running).
    static func connect(_ stateDirectory: String) async -> NIOAsyncChannel<ByteBuffer, ByteBuffer>? {
        let path = AgentService.socketPath(stateDirectory)
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        return try? await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(unixDomainSocketPath: path) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        ByteToMessageHandler(LineDecoder(maximumLength: 4096)))
                    return try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
    }

    public static func send(_ body: [UInt8], stateDirectory: String) async throws -> String? {
        guard let channel = await connect(stateDirectory) else { return nil }
        return try await channel.executeThenClose { inbound, outbound in
            try await outbound.write(ByteBuffer(bytes: body + [UInt8(ascii: "\n")]))
            for try await line in inbound { return String(buffer: line) }
            return "error: the agent closed the connection"
        }
    }

    /// Asks a running agent for an update check now; `onProgress` sees the bytes received as they come. Returns the
    /// check's outcome, or nil when no agent listens.
    public static func updateNow(stateDirectory: String, onProgress: (Int64, Int64) -> Void) async throws -> String? {
        guard let channel = await connect(stateDirectory) else { return nil }
        return try await channel.executeThenClose { inbound, outbound in
            try await outbound.write(ByteBuffer(string: AgentService.updateNow + "\n"))
            for try await buffer in inbound {
                let line = String(buffer: buffer)
                if line.hasPrefix("done ") { return String(line.dropFirst(5)) }
                let fields = line.split(separator: " ")
                if fields.count == 3, fields[0] == "progress", let received = Int64(fields[1]),
                    let total = Int64(fields[2])
                {
                    onProgress(received, total)
                }
            }
            return "error: the agent closed the connection"
        }
    }
}
