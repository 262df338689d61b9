import Foundation
import Synchronization

/// Fresh directories in the temp dir for a test process, removed when it exits: a full run made some 1,600 (agents'
/// state, update slots, markers, stores) and left them in /tmp. One registry for every test target that makes them.
public enum TemporaryDirectories {
    /// A new, empty directory named `bulwark-NAME-UUID` (removed at exit, and `bulwark-NAME-UUID.log` with it).
    public static func make(_ name: String) throws -> String {
        _ = removeAtExit
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("bulwark-\(name)-\(UUID())").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        made.withLock { $0.append(path) }
        return path
    }

    private static let made = Mutex<[String]>([])

    /// Registers, once, their removal at the process's exit.
    private static let removeAtExit: Void = {
        atexit {
            // With the log a `HubProcess` writes beside its data directory (`DIRECTORY.log`), if any.
            for path in TemporaryDirectories.made.withLock({ $0 }) {
                try? FileManager.default.removeItem(atPath: path)
                try? FileManager.default.removeItem(atPath: path + ".log")
            }
        }
    }()
}
