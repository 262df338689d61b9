import Foundation
import TUF
import TUFRepository
import Testing

@testable import TUFClient

@Suite struct RepositoryEditorTests {
    @Test func thresholdRootRotationChainIsAcceptedByTheClient() async throws {
        let dir = makeTempDirectory()
        let keys = try TestKeys()
        let clock = TestClock()
        var editor = try makeEditor(dir, keys: keys, clock: clock)
        try await FileRepository(directory: dir).publish(&editor, keyring: keys.keyring)
        let client = try makeClient(for: dir)
        let server = RepositoryServer(dir)

        // v2: replace root-1 by a new key; 2 of 3 of the old keys and 2 of 3 of the new keys sign.
        let newRoot = try FileSigner.generate(name: "root-4", type: .ed25519)
        try editor.rotateKeys(role: "root", add: [newRoot.publicKey], remove: [keys.root[0].keyid])
        var ring = Keyring([keys.root[1], keys.root[2], newRoot, keys.timestamp, keys.snapshot, keys.targets])
        try await FileRepository(directory: dir).publish(&editor, keyring: ring)
        // v3: threshold up to 3 of 3.
        try editor.rotateKeys(role: "root", threshold: 3)
        try await FileRepository(directory: dir).publish(&editor, keyring: ring)
        #expect(editor.version(of: "root") == 3)

        server.sync()
        let updater = try makeUpdater(server: server, client: client, at: clock.timestamp)
        try await updater.refresh()
        #expect(await updater.trustedSet.root.signed.common.version == 3)
        #expect(await updater.trustedSet.root.signed.roles["root"]?.threshold == 3)

        // v4 signed by the new keys only would miss nothing, but signed by only 2 of the 3
        // current keys it fails the old threshold (3): publish refuses and writes nothing.
        try editor.rotateKeys(role: "root", threshold: 2)
        ring = Keyring([keys.root[1], newRoot, keys.timestamp, keys.snapshot, keys.targets])
        await #expect(throws: RepositoryError(.threshold, "")) {
            try await FileRepository(directory: dir).publish(&editor, keyring: ring)
        }
        #expect(!FileManager.default.fileExists(atPath: dir + "/metadata/4.root.json"))
    }

    @Test func publishRefusesARootNotSignedByTheOldThreshold() async throws {
        let dir = makeTempDirectory()
        let keys = try TestKeys()
        var editor = try makeEditor(dir, keys: keys)
        try await FileRepository(directory: dir).publish(&editor, keyring: keys.keyring)
        let new = try (1...3).map { try FileSigner.generate(name: "n\($0)", type: .ecdsaP256) }
        try editor.rotateKeys(role: "root", add: new.map(\.publicKey), remove: keys.root.map(\.keyid))
        // Only one old key is available: the old root's threshold (2) is not met.
        let ring = Keyring(new + [keys.root[0], keys.timestamp, keys.snapshot, keys.targets])
        await #expect(throws: RepositoryError(.threshold, "")) {
            try await FileRepository(directory: dir).publish(&editor, keyring: ring)
        }
        // Another holder of an old key signs the staged root (tuf sign); now it publishes.
        try await editor.sign(role: "root", with: [keys.root[1]])
        try await FileRepository(directory: dir).publish(&editor, keyring: ring)
        #expect(editor.version(of: "root") == 2)
        // The client accepts the rotation.
        let client = try makeClient(for: dir)
        let updater = try makeUpdater(server: RepositoryServer(dir), client: client, at: TestClock().timestamp)
        try await updater.refresh()
        #expect(await updater.trustedSet.root.signed.common.version == 2)
    }

    @Test(arguments: ["timestamp", "snapshot", "targets", "delegated"])
    func rotatesTheKeysOfEachRole(role: String) async throws {
        let dir = makeTempDirectory()
        let keys = try TestKeys()
        let clock = TestClock()
        var editor = try makeEditor(dir, keys: keys, clock: clock)
        let delegatedKey = try FileSigner.generate(name: "delegated", type: .ed25519)
        try editor.delegate(to: "delegated", paths: ["d/*"], keys: RoleKeySpec(keys: [delegatedKey.publicKey]))
        try editor.addTarget(path: "d/one.txt", contents: Array("one".utf8))
        var ring = keys.keyring
        ring.add(delegatedKey)
        try await FileRepository(directory: dir).publish(&editor, keyring: ring)
        let client = try makeClient(for: dir)
        let server = RepositoryServer(dir)
        try await makeUpdater(server: server, client: client, at: clock.timestamp).refresh()

        let replacement = try FileSigner.generate(name: "new-\(role)", type: .rsaPSS)
        let old: FileSigner =
            switch role {
            case "timestamp": keys.timestamp
            case "snapshot": keys.snapshot
            case "targets": keys.targets
            default: delegatedKey
            }
        try editor.rotateKeys(role: role, add: [replacement.publicKey], remove: [old.keyid])
        try editor.addTarget(path: "d/two.txt", contents: Array("two".utf8))
        ring.add(replacement)
        try await FileRepository(directory: dir).publish(&editor, keyring: ring)

        server.sync()
        let updater = try makeUpdater(server: server, client: client, at: clock.timestamp)
        let info = try #require(try await updater.targetInfo(for: "d/two.txt"))
        #expect(try await updater.downloadTarget(info) == Array("two".utf8))
        // The old key is gone from the delegating metadata.
        let published = try FileRepository(directory: dir).open()
        #expect(!published.status().isEmpty)
        let md = try Metadata<Root>.parse(
            Array(try #require(FileManager.default.contents(atPath: dir + "/metadata/root.json"))))
        if role != "delegated" {
            #expect(md.signed.roles[role]?.keyids == [replacement.keyid])
            #expect(md.signed.keys[old.keyid] == nil)
        } else {
            let t = try Metadata<Targets>.parse(
                Array(try #require(FileManager.default.contents(atPath: dir + "/metadata/targets.json"))))
            #expect(t.signed.delegations?.keys[old.keyid] == nil)
            #expect(t.signed.delegations?.roleKeys(for: "delegated")?.keyids == [replacement.keyid])
        }
    }

    @Test(arguments: [false, true])
    func hashedBinsAreResolvedByTheClient(succinct: Bool) async throws {
        let dir = makeTempDirectory()
        let keys = try TestKeys(rootCount: 1)
        let clock = TestClock()
        var editor = try makeEditor(dir, keys: keys, rootThreshold: 1, clock: clock)
        let binKey = try FileSigner.generate(name: "bins", type: .ecdsaP256)
        let names =
            succinct
            ? try editor.delegateSuccinctBins(
                namePrefix: "bin", bitLength: 5, keys: RoleKeySpec(keys: [binKey.publicKey]))
            : try editor.delegateHashedBins(
                namePrefix: "bins", binCount: 16, keys: RoleKeySpec(keys: [binKey.publicKey]))
        #expect(names.count == (succinct ? 32 : 16))
        var listedIn: [String: String] = [:]
        for i in 0..<60 {
            let path = "pkg/file-\(i).txt"
            listedIn[path] = try editor.addTarget(path: path, contents: Array("content \(i)".utf8), sha512: true)
        }
        var ring = keys.keyring
        ring.add(binKey)
        try await FileRepository(directory: dir).publish(&editor, keyring: ring)
        #expect(Set(listedIn.values).isSubset(of: Set(names)))
        #expect(editor.targets(of: "targets").isEmpty)

        let client = try makeClient(for: dir)
        let updater = try makeUpdater(server: RepositoryServer(dir), client: client, at: clock.timestamp)
        for i in [0, 17, 59] {
            let path = "pkg/file-\(i).txt"
            let info = try #require(try await updater.targetInfo(for: path))
            #expect(try await updater.downloadTarget(info) == Array("content \(i)".utf8))
            // The client read exactly the bin the editor chose.
            #expect(await updater.trustedSet.targetsRole(try #require(listedIn[path])) != nil)
        }
        #expect(try await updater.targetInfo(for: "pkg/missing.txt") == nil)
    }

    @Test func resignsTimestampAndSnapshotBeforeTheyExpire() async throws {
        let dir = makeTempDirectory()
        let keys = try TestKeys(rootCount: 1)
        let clock = TestClock()
        var editor = try makeEditor(dir, keys: keys, rootThreshold: 1, clock: clock)
        try await FileRepository(directory: dir).publish(&editor, keyring: keys.keyring)
        let client = try makeClient(for: dir)
        let server = RepositoryServer(dir)

        #expect(
            try await FileRepository(directory: dir).resignIfExpiring(
                &editor, role: "timestamp", within: 6 * 3600, keyring: keys.keyring) == false)
        clock.advance(20 * 3600)  // timestamp (1 day) now expires within 6 h
        #expect(
            try await FileRepository(directory: dir).resignIfExpiring(
                &editor, role: "timestamp", within: 6 * 3600, keyring: keys.keyring))
        #expect(editor.version(of: "timestamp") == 2)
        #expect(editor.version(of: "snapshot") == 1)

        // The resigner loop type: snapshot (7 days) re-signed when within 2 days, timestamp with it.
        clock.advance(5 * 86400 + 3600)
        let resigner = Resigner(
            directory: dir,
            keyring: keys.keyring,
            interval: .seconds(1),
            within: ["snapshot": 2 * 86400, "timestamp": 6 * 3600],
            clock: clock.reader
        )
        #expect(try await resigner.tick() == ["snapshot"])
        let reopened = try FileRepository(directory: dir).open()
        #expect(reopened.version(of: "snapshot") == 2)
        #expect(reopened.version(of: "timestamp") == 3)

        // Without re-signing the client would have refused the expired snapshot; now it refreshes.
        server.sync()
        try await makeUpdater(server: server, client: client, at: clock.timestamp).refresh()
        #expect(trustedVersion(client, "snapshot") == 2)
    }

    @Test func consistentSnapshotLayout() async throws {
        let dir = makeTempDirectory()
        let keys = try TestKeys(rootCount: 1)
        var editor = try makeEditor(dir, keys: keys, rootThreshold: 1)
        try editor.addTarget(path: "dir/a.txt", contents: Array("a".utf8), sha512: true)
        try await FileRepository(directory: dir).publish(&editor, keyring: keys.keyring)
        try editor.addTarget(path: "b.txt", contents: Array("b".utf8))
        try await FileRepository(directory: dir).publish(&editor, keyring: keys.keyring)
        let files = Set(try FileManager.default.contentsOfDirectory(atPath: dir + "/metadata"))
        for f in [
            "1.root.json", "root.json", "timestamp.json", "1.snapshot.json", "2.snapshot.json",
            "1.targets.json", "2.targets.json", "3.targets.json",
        ].dropLast() {
            #expect(files.contains(f), "\(f)")
        }
        #expect(!files.contains("2.root.json"))
        #expect(!files.contains { $0.hasSuffix(".timestamp.json") })
        let a = Array("a".utf8)
        let sha256 = hexEncode(Hashing.digest("sha256", a) ?? [])
        let sha512 = hexEncode(Hashing.digest("sha512", a) ?? [])
        #expect(FileManager.default.contents(atPath: "\(dir)/targets/dir/\(sha256).a.txt") == Data(a))
        #expect(FileManager.default.contents(atPath: "\(dir)/targets/dir/\(sha512).a.txt") == Data(a))
        #expect(!FileManager.default.fileExists(atPath: "\(dir)/targets/dir/a.txt"))
        // Nothing staged after publish; the staged directory holds no role files.
        #expect(editor.stagedRoles.isEmpty)

        // Without consistent snapshots: plain names.
        let plain = makeTempDirectory()
        var p = try makeEditor(plain, keys: keys, rootThreshold: 1, consistent: false)
        try p.addTarget(path: "a.txt", contents: a)
        try await FileRepository(directory: plain).publish(&p, keyring: keys.keyring)
        #expect(FileManager.default.fileExists(atPath: "\(plain)/targets/a.txt"))
        #expect(FileManager.default.fileExists(atPath: "\(plain)/metadata/snapshot.json"))
        #expect(!FileManager.default.fileExists(atPath: "\(plain)/metadata/1.snapshot.json"))
        let client = try makeClient(for: plain)
        let updater = try makeUpdater(server: RepositoryServer(plain), client: client, at: TestClock().timestamp)
        let info = try #require(try await updater.targetInfo(for: "a.txt"))
        #expect(try await updater.downloadTarget(info) == a)
    }

    @Test func stagedEditsSurviveReopenAndPublishIsAtomicOnFailure() async throws {
        let dir = makeTempDirectory()
        let keys = try TestKeys(rootCount: 1)
        var editor = try makeEditor(dir, keys: keys, rootThreshold: 1)
        try await FileRepository(directory: dir).publish(&editor, keyring: keys.keyring)
        try editor.addTarget(path: "x.txt", contents: Array("x".utf8))
        try FileRepository(directory: dir).save(&editor)
        var reopened = try FileRepository(directory: dir).open()
        #expect(reopened.stagedRoles == ["targets"])
        #expect(reopened.version(of: "targets") == 2)
        // Missing the targets key: nothing is written.
        let before = try FileManager.default.contentsOfDirectory(atPath: dir + "/metadata").sorted()
        await #expect(throws: RepositoryError(.threshold, "")) {
            try await FileRepository(directory: dir).publish(
                &reopened, keyring: Keyring([keys.root[0], keys.timestamp, keys.snapshot]))
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir + "/metadata").sorted() == before)
        try await FileRepository(directory: dir).publish(&reopened, keyring: keys.keyring)
        #expect(try FileRepository(directory: dir).open().stagedRoles.isEmpty)
        #expect(throws: RepositoryError(.usage, "")) { try reopened.addTarget(path: "../etc/passwd", contents: []) }
        #expect(throws: RepositoryError(.usage, "")) { try reopened.removeTarget(path: "nope.txt") }
    }

    @Test(arguments: KeyType.allCases)
    func keyFilesAreWrittenPrivatelyAndSignaturesVerify(type: KeyType) async throws {
        let dir = KeyDirectory(path: makeTempDirectory("tufkeys"))
        let signer = try dir.generate(name: "k", type: type)
        var st = stat()
        #expect(stat(dir.path + "/k.pem", &st) == 0)
        #expect(st.st_mode & 0o777 == 0o600)
        #expect(throws: RepositoryError(.key, "")) { try dir.generate(name: "k", type: type) }
        let loaded = try dir.load(name: "k")
        #expect(loaded.keyid == signer.keyid)
        let message = Array("canonical bytes".utf8)
        let sig = try await loaded.sign(message)
        #expect(try SignatureVerifier.isValid(key: loaded.publicKey, signatureHex: hexEncode(sig), data: message))
        // Group-readable key files are refused; the error names the key, not its contents.
        chmod(dir.path + "/k.pem", 0o644)
        do {
            _ = try dir.load(name: "k")
            Issue.record("a group-readable key was loaded")
        } catch {
            #expect(!error.description.contains("PRIVATE"))
        }
        #expect(throws: RepositoryError(.usage, "")) { try dir.generate(name: "../escape", type: type) }
    }

    /// The editor is pure: `publish` returns what to write, in order (artifacts, targets roles, snapshot, root,
    /// timestamp last), and `FileRepository` writes exactly that, never outside the repository.
    @Test func publishReturnsThePlanInWriteOrderAndFileRepositoryAppliesIt() async throws {
        let keys = try TestKeys()
        let spec = { (key: FileSigner) in RoleKeySpec(keys: [key.publicKey]) }
        var editor = try RepositoryEditor.create(
            root: RoleKeySpec(keys: keys.root.map(\.publicKey), threshold: 2), timestamp: spec(keys.timestamp),
            snapshot: spec(keys.snapshot), targets: spec(keys.targets))
        try editor.delegateSuccinctBins(bitLength: 1, keys: spec(keys.targets))
        let a = Array("artifact".utf8)
        let listed = try editor.addTarget(path: "fw/a.bin", contents: a)
        #expect(listed.hasPrefix("bin-"), "routed by TUF's own succinct bins")
        let sha256 = hexEncode(Hashing.digest("sha256", a) ?? [])
        let plan = try await editor.publish(keyring: keys.keyring)
        #expect(plan.written.first == "targets/fw/\(sha256).a.bin", "artifacts before the metadata listing them")
        #expect(plan.written.last == "metadata/timestamp.json", "timestamp last")
        let order = [
            "metadata/1.targets.json", "metadata/1.\(listed).json", "metadata/1.snapshot.json",
            "metadata/1.root.json",
        ].map { plan.written.firstIndex(of: $0) ?? -1 }
        #expect(!order.contains(-1) && order.last ?? 0 < plan.written.count - 1, "\(plan.written)")
        #expect(plan.published.last == "timestamp")
        #expect(editor.stagedRoles.isEmpty)

        let dir = makeTempDirectory()
        try FileRepository(directory: dir).apply(plan)
        let client = try makeClient(for: dir)
        let updater = try makeUpdater(server: RepositoryServer(dir), client: client, at: TestClock().timestamp)
        let info = try #require(try await updater.targetInfo(for: "fw/a.bin"))
        #expect(try await updater.downloadTarget(info) == a)

        var escape = RepositoryPlan()
        escape.steps = [.write(path: "metadata/../../escaped", bytes: [1])]
        #expect(throws: RepositoryError(.repository, "")) { try FileRepository(directory: dir).apply(escape) }
    }

    /// What the editor's review found: a failed write leaves the editor able to retry; an edit clients would refuse
    /// is refused before it is staged; a role of the wrong type is never signed; a plan for another repository cannot
    /// rewrite this one's root history.
    @Test func failuresLeaveNothingHalfDone() async throws {
        let dir = makeTempDirectory()
        let keys = try TestKeys()
        let repository = FileRepository(directory: dir)
        var editor = try makeEditor(dir, keys: keys)
        try await repository.publish(&editor, keyring: keys.keyring)

        // The artifact cannot be written (a file where targets/fw should be a directory): publish fails, and a
        // retry once the obstacle is gone writes the artifact and the metadata.
        try editor.addTarget(path: "fw/a.bin", contents: Array("a".utf8))
        try FileManager.default.createDirectory(atPath: dir + "/targets", withIntermediateDirectories: true)
        try Data("x".utf8).write(to: URL(fileURLWithPath: dir + "/targets/fw"))
        await #expect(throws: RepositoryError.self) { try await repository.publish(&editor, keyring: keys.keyring) }
        #expect(editor.stagedRoles.contains("targets"), "still staged after the failed write")
        try FileManager.default.removeItem(atPath: dir + "/targets/fw")
        try await repository.publish(&editor, keyring: keys.keyring)
        let client = try makeClient(for: dir)
        let updater = try makeUpdater(server: RepositoryServer(dir), client: client, at: TestClock().timestamp)
        let info = try #require(try await updater.targetInfo(for: "fw/a.bin"))
        #expect(try await updater.downloadTarget(info) == Array("a".utf8))

        // Two paths equal under Unicode equivalence (NFC and NFD "é"): clients refuse such targets metadata.
        try editor.addTarget(path: "caf\u{E9}.txt", contents: [1])
        try editor.addTarget(path: "cafe\u{301}.txt", contents: [2])
        #expect(throws: RepositoryError.self) { try repository.save(&editor) }
        #expect(!FileManager.default.fileExists(atPath: dir + "/staged/targets.json"))
        await #expect(throws: RepositoryError.self) { try await repository.publish(&editor, keyring: keys.keyring) }

        // A plan that would rewrite the repository's first root (another repository's, say) is refused.
        var root = RepositoryPlan()
        root.steps = [.write(path: "metadata/1.root.json", bytes: Array("{}".utf8))]
        #expect(throws: RepositoryError.self) { try repository.apply(root) }
    }

    @Test func aRoleOfTheWrongTypeIsNotSigned() async throws {
        let dir = makeTempDirectory()
        let keys = try TestKeys()
        var editor = try makeEditor(dir, keys: keys)
        try await FileRepository(directory: dir).publish(&editor, keyring: keys.keyring)
        // A timestamp.json whose _type says snapshot (as a broken or hostile writer might leave it).
        let path = dir + "/metadata/timestamp.json"
        let text = try String(contentsOfFile: path, encoding: .utf8)
        try text.replacingOccurrences(of: "\"_type\":\"timestamp\"", with: "\"_type\":\"snapshot\"")
            .write(toFile: path, atomically: true, encoding: .utf8)
        var reopened = try FileRepository(directory: dir).open()
        try reopened.bumpVersion(role: "timestamp")
        await #expect(throws: RepositoryError.self) {
            try await FileRepository(directory: dir).publish(&reopened, keyring: keys.keyring)
        }
    }

    @Test func expiresFormat() {
        #expect(ExpiryDate.format(0) == "1970-01-01T00:00:00Z")
        #expect(ExpiryDate.format(951_782_400) == "2000-02-29T00:00:00Z")
        #expect(ExpiryDate.format(4_102_444_799) == "2099-12-31T23:59:59Z")
        for s: Int64 in [0, 86399, 1_700_000_000, 4_102_444_799] {
            #expect((try? Timestamp8601(parsing: ExpiryDate.format(s)))?.secondsSinceEpoch == s)
        }
    }
}
