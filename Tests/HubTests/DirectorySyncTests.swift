import Foundation
import Testing

@testable import Agent
@testable import Hub

/// A write that promises to survive a power loss syncs the directory after its rename, and a directory that cannot
/// be synced is an error the caller sees, not a success (the agent's state and outbox, the hub's TLS key rotation).
@Suite struct DirectorySyncTests {
    static func directory() throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("bulwark-dirsync-\(UUID())").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    @Test func theAgentsWriteSyncsItsDirectoryOrFails() throws {
        let directory = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try Outbox.write(directory + "/state.json", Array("{}".utf8), directory: directory)
        #expect(FileManager.default.contents(atPath: directory + "/state.json") == Data("{}".utf8))
        // A directory that cannot be opened for its sync: the write is not reported as durable.
        #expect(throws: AgentError.self) {
            try Outbox.write(directory + "/other.json", Array("{}".utf8), directory: directory + "/missing")
        }
    }

    @Test func aKeyRotationStopsWhenItsRenamesCannotBeSynced() throws {
        let directory = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try TLSKeyFiles(directory).syncDirectory()
        #expect(throws: HubStartupError.self) { try TLSKeyFiles(directory + "/missing").syncDirectory() }
    }
}
