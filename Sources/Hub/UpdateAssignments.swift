import Core
import Foundation
import JSON
import Store
import Synchronization
import TUF

/// The director half of updates (Uptane's split, DESIGN.md): which signed release a device should run. A device's
/// own assignment wins, then its class's, then the fleet default. The hub only chooses among targets that the
/// published, signed targets metadata lists: an assignment cannot introduce bytes, and the agent installs nothing
/// its own TUF client has not verified.
struct UpdateAssignments: Sendable {
    let store: any HubStore
    let repository: String
    let parsed = ParsedTargets()
    /// A staged rollout running on top of the assignments (nil: none configured).
    var rollouts: RolloutController?

    struct Resolved: Sendable {
        let target: String
        let scope: String
        let file: TargetFile?
    }

    func resolve(_ device: DeviceID) async throws -> Resolved? {
        var assigned = try await store.effectiveAssignment(device, defaultClass: EgressMonitor.defaultClass)
        if let rollouts { assigned = try await rollouts.resolve(device, base: assigned) }
        guard let (scope, target) = assigned else { return nil }
        return Resolved(target: target, scope: scope, file: published(target))
    }

    /// The target's entry in the published top-level targets metadata (`metadata/targets.json`), or nil. The parsed
    /// metadata is kept while the file keeps its inode, size and modification time.
    func published(_ path: String) -> TargetFile? {
        parsed.targets(repository + "/metadata/targets.json")?.target(path)
    }

    /// Every target the published top-level targets metadata lists.
    func publishedTargets() -> [TargetFile] {
        Array(parsed.targets(repository + "/metadata/targets.json")?.targets.values ?? [:].values)
    }

    /// The answer to `GET /v1/updates/assignment`: `{"target": null}` or the target with its signed length, hashes
    /// and custom fields (for the agent to compare with what its own TUF client verifies).
    func answer(_ resolved: Resolved?) throws -> String {
        guard let resolved else { return #"{"target":null}"# }
        var object = JSONObject()
        object.set("target", .string(resolved.target))
        object.set("scope", .string(resolved.scope))
        if let file = resolved.file { object.set("file", file.jsonValue) }
        return String(decoding: try CanonicalJSON.encode(.object(object)), as: UTF8.self)
    }
}

/// The published top-level targets metadata, parsed once per version of the file (inode, size, modification time).
final class ParsedTargets: Sendable {
    private let cached = Mutex<(key: [Int64], targets: Targets)?>(nil)

    func targets(_ path: String) -> Targets? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        let key = [
            Int64(info.st_ino), Int64(info.st_size), Int64(info.st_mtim.tv_sec), Int64(info.st_mtim.tv_nsec),
        ]
        if let hit = cached.withLock({ $0 }), hit.key == key { return hit.targets }
        guard let bytes = FileManager.default.contents(atPath: path),
            let metadata = try? Metadata<Targets>.parse(Array(bytes))
        else { return nil }
        cached.withLock { $0 = (key, metadata.signed) }
        return metadata.signed
    }
}
