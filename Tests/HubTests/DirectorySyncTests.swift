import Foundation
import Synchronization
import Testing

@testable import Agent
@testable import Hub

/// A write that promises to survive a power loss syncs the directory after its rename, and a directory that cannot
/// be synced is an error the caller sees, not a success (the agent's state and outbox, the hub's TLS key rotation).
@Suite struct DirectorySyncTests {
    @Test func theAgentsWriteSyncsItsDirectoryOrFails() throws {
        let directory = try temporaryDirectory("dirsync")
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
        let directory = try temporaryDirectory("dirsync")
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

    /// Creators racing for one name: exactly one wins, the file holds the winner's contents (each writes a
    /// temporary file of its own), the others are refused, and no temporary name is left behind; a neighbour named
    /// like the old fixed temporary name (`X.new`) is left alone.
    @Test func racingCreatorsOneWinsAndTheFileIsTheWinners() throws {
        let directory = try temporaryDirectory("dirsync")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try "keep\n".write(toFile: directory + "/key-0.key.new", atomically: false, encoding: .utf8)
        for round in 0..<20 {
            let path = directory + "/key-\(round).key"
            let winners = Mutex<[Int]>([])
            DispatchQueue.concurrentPerform(iterations: 8) { writer in
                if (try? SecretFiles.create(path, contents: "writer \(writer)\n")) != nil {
                    winners.withLock { $0.append(writer) }
                }
            }
            let won = winners.withLock { $0 }
            #expect(won.count == 1, "round \(round): \(won)")
            #expect(try SecretFiles.read(path) == "writer \(won.first ?? -1)\n")
        }
        let names = Set(try FileManager.default.contentsOfDirectory(atPath: directory))
        #expect(names == Set((0..<20).map { "key-\($0).key" } + ["key-0.key.new"]))
        #expect(FileManager.default.contents(atPath: directory + "/key-0.key.new") == Data("keep\n".utf8))
    }

    /// Writers replacing one file at once (two CRL publications, two CLI runs): each writes a temporary file of its
    /// own, so every replace succeeds and the file is always one writer's whole contents; nothing is left beside it,
    /// and a neighbour named like the old fixed temporary name (`X.new`) is left alone.
    @Test func racingReplacersEachLeaveAWholeFile() throws {
        let directory = try temporaryDirectory("dirsync")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/crl.pem"
        try "keep\n".write(toFile: path + ".new", atomically: false, encoding: .utf8)
        let contents = (0..<8).map { String(repeating: "writer \($0)\n", count: 2000) }
        for round in 0..<20 {
            let failures = Mutex<[String]>([])
            DispatchQueue.concurrentPerform(iterations: 8) { writer in
                do { try SecretFiles.writePublic(path, contents: contents[writer]) } catch {
                    failures.withLock { $0.append("\(error)") }
                }
            }
            #expect(failures.withLock { $0 }.isEmpty, "round \(round)")
            let written = try String(contentsOfFile: path, encoding: .utf8)
            #expect(contents.contains(written), "round \(round): a whole writer's contents")
        }
        #expect(Set(try FileManager.default.contentsOfDirectory(atPath: directory)) == ["crl.pem", "crl.pem.new"])
        #expect(FileManager.default.contents(atPath: path + ".new") == Data("keep\n".utf8))
    }

    @Test func aKeyRotationStopsWhenItsRenamesCannotBeSynced() throws {
        let directory = try temporaryDirectory("dirsync")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try TLSKeyFiles(directory).syncDirectory()
        #expect(throws: HubStartupError.self) { try TLSKeyFiles(directory + "/missing").syncDirectory() }
    }
}
