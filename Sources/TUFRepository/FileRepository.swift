import Foundation
import TUF

/// What saving or publishing a repository does to its files, in order: paths relative to the repository directory.
/// `RepositoryEditor.publish` plans artifacts first, then targets roles, snapshot, root, and timestamp last;
/// `stage` plans `staged/`. Nothing is written until `FileRepository.apply` runs it.
public struct RepositoryPlan: Sendable, Equatable {
    public enum Step: Sendable, Equatable {
        case write(path: String, bytes: [UInt8])
        case remove(path: String)
    }

    public var steps: [Step] = []
    /// The roles a publish signed, in the order their files are written (empty for `stage`).
    public var published: [String] = []

    public init() {}

    /// The files written, in order.
    public var written: [String] {
        steps.compactMap { if case .write(let path, _) = $0 { path } else { nil } }
    }
}

/// A TUF repository in a directory, as python-tuf and our `Updater` lay it out (see `RepositoryEditor`): it reads
/// the files an editor loads and applies the plans an editor returns, each file written atomically (a temporary
/// file, fsync, rename) in the plan's order. The editor itself never touches a file.
public struct FileRepository: Sendable {
    public let directory: String

    public init(directory: String) { self.directory = directory }

    public var metadataDirectory: String { directory + "/metadata" }
    public var targetsDirectory: String { directory + "/targets" }

    /// Loads the repository (see `RepositoryEditor.load`).
    public func open(
        expiry: ExpiryPolicy = ExpiryPolicy(), clock: @escaping @Sendable () -> Int64 = ExpiryDate.now,
        includeStaged: Bool = true
    ) throws(RepositoryError) -> RepositoryEditor {
        do {
            return try RepositoryEditor.load(expiry: expiry, clock: clock, includeStaged: includeStaged) {
                path throws(RepositoryError) in try Files.read(try resolve(path))
            }
        } catch {
            guard error.code == .repository, error.reason.hasPrefix("no metadata for role") else { throw error }
            throw RepositoryError(.repository, "\(error.reason) in \(directory)")
        }
    }

    /// Creates the top-level roles of a new repository in memory; refuses a directory that already holds one.
    public func create(
        root: RoleKeySpec, timestamp: RoleKeySpec, snapshot: RoleKeySpec, targets: RoleKeySpec,
        consistentSnapshot: Bool = true, expiry: ExpiryPolicy = ExpiryPolicy(),
        clock: @escaping @Sendable () -> Int64 = ExpiryDate.now
    ) throws(RepositoryError) -> RepositoryEditor {
        if FileManager.default.fileExists(atPath: metadataDirectory + "/root.json")
            || FileManager.default.fileExists(atPath: directory + "/staged/root.json")
        {
            throw RepositoryError(.usage, "a repository already exists in \(directory)")
        }
        return try RepositoryEditor.create(
            root: root, timestamp: timestamp, snapshot: snapshot, targets: targets,
            consistentSnapshot: consistentSnapshot, expiry: expiry, clock: clock)
    }

    /// Runs a plan: each write atomically, in order (`staged/` is owner-only: it is not served); each removal. A
    /// versioned root (`metadata/N.root.json`) already written with other bytes is never replaced: clients may hold
    /// it, and a plan made for another repository must not overwrite this one's history.
    public func apply(_ plan: RepositoryPlan) throws(RepositoryError) {
        for step in plan.steps {
            switch step {
            case .write(let path, let bytes):
                let full = try resolve(path)
                if Self.isVersionedRoot(path), let existing = try Files.read(full), existing != bytes {
                    throw RepositoryError(.repository, "\(path) exists with other contents; refusing to replace it")
                }
                let parent = String(full[..<(full.lastIndex(of: "/") ?? full.endIndex)])
                if path.hasPrefix("staged/") {
                    try Files.makeDirectory(parent, mode: 0o700)
                } else {
                    try Files.makeDirectory(parent)
                }
                try Files.writeAtomically(bytes, to: full)
            case .remove(let path):
                Files.remove(try resolve(path))
            }
        }
    }

    static func isVersionedRoot(_ path: String) -> Bool {
        guard path.hasPrefix("metadata/"), path.hasSuffix(".root.json") else { return false }
        let number = path.dropFirst("metadata/".count).dropLast(".root.json".count)
        return !number.isEmpty && number.allSatisfy(\.isASCII) && number.allSatisfy(\.isNumber)
    }

    /// Writes the editor's staged edits (and the artifacts added since its last plan). The editor changes only when
    /// every write succeeded, so a failed save can be retried.
    public func save(_ editor: inout RepositoryEditor) throws(RepositoryError) {
        var next = editor
        try apply(try next.stage())
        editor = next
    }

    /// Signs and publishes (see `RepositoryEditor.publish`); returns the roles published. The editor records the
    /// publish only when every file was written: after a failure it still holds the staged state, and a retry plans
    /// the same files again.
    @discardableResult
    public func publish(_ editor: inout RepositoryEditor, keyring: Keyring) async throws -> [String] {
        var next = editor
        let plan = try await next.publish(keyring: keyring)
        try apply(plan)
        editor = next
        return plan.published
    }

    /// Re-signs `role` when it expires within `seconds` and publishes; returns whether it did.
    @discardableResult
    public func resignIfExpiring(
        _ editor: inout RepositoryEditor, role: String, within seconds: Int64, keyring: Keyring
    ) async throws -> Bool {
        var next = editor
        guard let plan = try await next.resignIfExpiring(role: role, within: seconds, keyring: keyring) else {
            return false
        }
        try apply(plan)
        editor = next
        return true
    }

    /// A plan's path inside the repository: relative, `/`-separated, with no empty, `.` or `..` segment (the
    /// editor plans only such paths; this holds it to that).
    func resolve(_ path: String) throws(RepositoryError) -> String {
        let segments = path.split(separator: "/", omittingEmptySubsequences: false)
        guard !path.hasPrefix("/"), !segments.isEmpty,
            !segments.contains(where: { $0.isEmpty || $0 == "." || $0 == ".." })
        else { throw RepositoryError(.repository, "refusing to write outside the repository: \(path)") }
        return directory + "/" + path
    }
}
