import Foundation
import Testing

@testable import Agent

#if canImport(Glibc)
    import Glibc
#endif

/// The gate a payload starts behind: it runs only once its pid is on disk, and never when the agent that started it
/// died before writing it (the pid file is how the next start finds and stops what a killed agent left).
@Suite struct PayloadGateTests {
    /// The payload starts from its slot, after its pid and start time are in the pid file.
    @Test func aPayloadRunsOnceItsPidIsRecorded() async throws {
        let directory = try temporaryDirectory("gate")
        let marker = directory + "/ran"
        let pidFile = directory + "/payload.pid"
        let exited = AsyncStream.makeStream(of: Int32.self)
        let payload = try PayloadProcess.launch(
            command: ["/bin/sh", "-c", "echo $$ > \"$0\"", marker], slot: .a, directory: directory, user: nil,
            pidFile: pidFile
        ) { status in exited.continuation.yield(status) }
        var statuses = exited.stream.makeAsyncIterator()
        #expect(await statuses.next() == 0)
        let ran = try String(contentsOfFile: marker, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(ran == "\(payload.pid)", "the payload ran in place of the gate, with the recorded pid")
        let recorded = try String(contentsOfFile: pidFile, encoding: .utf8).split(separator: " ")
        #expect(recorded.first.map(String.init) == "\(payload.pid)")
        #expect(recorded.count == 2 && UInt64(recorded[1].trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0 > 0)
    }

    /// A program the agent cannot run is refused by name before anything starts; a pid file that cannot be written
    /// keeps the payload from running at all.
    @Test func anUnrunnableOrUnrecordablePayloadDoesNotRun() async throws {
        let directory = try temporaryDirectory("gate")
        #expect(throws: UpdateError.self) {
            try PayloadProcess.launch(
                command: [directory + "/missing"], slot: .a, directory: directory, user: nil,
                pidFile: directory + "/payload.pid"
            ) { _ in }
        }
        #expect(!FileManager.default.fileExists(atPath: directory + "/payload.pid"))
        let marker = directory + "/ran"
        let exited = AsyncStream.makeStream(of: Int32.self)
        #expect(throws: UpdateError.self) {
            try PayloadProcess.launch(
                command: ["/usr/bin/touch", marker], slot: .a, directory: directory, user: nil,
                pidFile: directory + "/no-such-directory/payload.pid"
            ) { status in exited.continuation.yield(status) }
        }
        // The start failed and says so; the child's exit (125 at the gate) is not reported as the payload's.
        try await Task.sleep(for: .milliseconds(300))
        exited.continuation.finish()
        var statuses = exited.stream.makeAsyncIterator()
        #expect(await statuses.next() == nil)
        #expect(!FileManager.default.fileExists(atPath: marker), "the payload did not run")
    }

    /// The agent dies after the start and before the pid is written (its end of the gate closes unopened): the
    /// payload never runs, so nothing is left running that the next start could not find.
    @Test func aPayloadWhoseAgentDiedBeforeRecordingItNeverRuns() async throws {
        let directory = try temporaryDirectory("gate")
        let marker = directory + "/ran"
        for line in [nil, "go\n"] {
            var ends: [Int32] = [-1, -1]
            #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &ends) == 0)
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/bin/sh")
            process.arguments = ["-c", PayloadProcess.gateScript, "bulwark-payload", "/usr/bin/touch", marker]
            process.standardInput = FileHandle(fileDescriptor: ends[1], closeOnDealloc: true)
            try process.run()
            // The agent's end closes without "start" (its death), or carries anything else.
            if let line { _ = line.withCString { send(ends[0], $0, strlen($0), Int32(MSG_NOSIGNAL)) } }
            close(ends[0])
            process.waitUntilExit()
            #expect(process.terminationStatus == 125)
            #expect(!FileManager.default.fileExists(atPath: marker), "the payload did not run")
        }
    }
}
