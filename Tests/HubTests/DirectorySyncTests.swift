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

    /// A key file appears whole under its name or not at all (written to a temporary file, synced, linked in, the
    /// directory synced), is private from the first byte, and is never overwritten.
    @Test func aKeyFileIsCreatedWholeAndNeverOverwritten() throws {
        let directory = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/hub.key"
        try SecretFiles.create(path, contents: "first\n")
        #expect(try SecretFiles.read(path) == "first\n")
        let mode = try #require(try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int)
        #expect(mode == 0o600)
        #expect(throws: HubStartupError.self) { try SecretFiles.create(path, contents: "second\n") }
        #expect(try SecretFiles.read(path) == "first\n")
        // Nothing left beside it, after a success or a refusal.
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory) == ["hub.key"])
        // A certificate replaced in place, public.
        try SecretFiles.writePublic(directory + "/hub.crt", contents: "one\n")
        try SecretFiles.writePublic(directory + "/hub.crt", contents: "two\n")
        #expect(FileManager.default.contents(atPath: directory + "/hub.crt") == Data("two\n".utf8))
        let publicMode = try #require(
            try FileManager.default.attributesOfItem(atPath: directory + "/hub.crt")[.posixPermissions] as? Int)
        #expect(publicMode == 0o644)
        #expect(Set(try FileManager.default.contentsOfDirectory(atPath: directory)) == ["hub.key", "hub.crt"])
        #expect(throws: HubStartupError.self) { try SecretFiles.syncDirectory(directory + "/missing") }
    }

    @Test func aKeyRotationStopsWhenItsRenamesCannotBeSynced() throws {
        let directory = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try TLSKeyFiles(directory).syncDirectory()
        #expect(throws: HubStartupError.self) { try TLSKeyFiles(directory + "/missing").syncDirectory() }
    }
}
