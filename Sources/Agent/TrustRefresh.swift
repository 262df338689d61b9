import Foundation
import HubClient
import NIOCore
import NIOSSL
import Synchronization
import TUF
import TUFClient
import TUFClientNIO

/// Keeps the hub's pins current through the update repository's signed metadata (never "just trust the network"):
/// the TUF client, starting from the root the device received at pairing (`STATE/trust/root.json`), refreshes over
/// the pinned mutual-TLS connection (TUF §5.3–§5.6: thresholds, rollback and freeze protection), looks up the target
/// `bulwark/pins.json` in the top-level targets role and checks its length and hashes (§5.7); the agent then applies
/// `PinSet.evaluate`: a newer version only, holding the key the hub presents, adding at most two new keys.
///
/// State: `trust/` holds the TUF metadata the client trusts; `pins` the pins in use, one base64 line each, and
/// `pins.version` the version of the published set they came from (absent: the set given at pairing).
public enum TrustRefresh {
    public struct Outcome: Sendable {
        /// The TUF root version trusted after the refresh.
        public var rootVersion: Int
        /// The published pin set, when the repository has one.
        public var pinSet: PinSet?
        public var decision: PinSet.Decision?
    }

    public static func trustDirectory(_ state: AgentState) -> String { state.directory + "/trust" }

    /// Whether the device holds a TUF root (the hub had an update repository when it paired).
    public static func available(_ state: AgentState) -> Bool {
        FileManager.default.fileExists(atPath: trustDirectory(state) + "/root.json")
    }

    /// One refresh: TUF metadata, then the pin set. An accepted pin set is written to the state directory (the
    /// caller reloads the state to use it from the next connection on).
    public static func refresh(_ state: AgentState, apiURL: String, now: Date = Date()) async throws -> Outcome {
        _ = try HubLink.endpoint(apiURL)  // an https:// URL with a host, or a clear error
        let base = apiURL.hasSuffix("/") ? String(apiURL.dropLast()) : apiURL
        let context = try state.credentials.tlsContext()
        let pinned = state.pinned
        let presented = Mutex<[UInt8]?>(nil)
        let fetcher = HTTPFetcher(
            timeout: .seconds(60),
            secureChannel: { channel, _ in
                try channel.pipeline.syncOperations.addHandler(
                    NIOSSLClientHandler(
                        context: context, serverHostname: nil,
                        customVerificationCallback: { certificates, promise in
                            presented.withLock { $0 = PinnedServer.pin(of: certificates.first) }
                            pinned.verify(certificates, promise)
                        }))
            })
        let updater: Updater
        do {
            updater = try Updater(
                metadataBaseURL: base + "/v1/updates/metadata/",
                metadataStore: DirectoryStore(directory: trustDirectory(state)),
                fetcher: fetcher, targetBaseURL: base + "/v1/updates/targets/",
                referenceTime: Timestamp8601(secondsSinceEpoch: Int64(now.timeIntervalSince1970)),
                config: state.updaterConfig)
        } catch {
            throw AgentError(
                .stateInvalid, "\(trustDirectory(state))/root.json is not a TUF root the client can use: pair again")
        }
        try await updater.refresh()
        let rootVersion = Int(await updater.trustedSet.root.signed.common.version)
        // Only the top-level targets role speaks for the hub's pins: a delegated role (hashed bins match every
        // path) never does, even when the top level does not list the file.
        guard let target = await updater.trustedSet.targets?.signed.target(PinSet.targetPath) else {
            return Outcome(rootVersion: rootVersion)
        }
        let candidate: PinSet
        do { candidate = try PinSet(json: try await updater.downloadTarget(target)) } catch let error as PinSetError {
            return Outcome(rootVersion: rootVersion, decision: .refuse("the published pin set is invalid: \(error)"))
        }
        guard let presentedPin = presented.withLock({ $0 }) else {
            throw AgentError(.hubNotTrusted, "the hub's key was not seen on the connection the pin set came over")
        }
        let decision = PinSet.evaluate(
            candidate, currentPins: state.pinned.pins, currentVersion: state.pinSetVersion, presented: presentedPin)
        if decision == .accept { try store(candidate, in: state.directory) }
        return Outcome(rootVersion: rootVersion, pinSet: candidate, decision: decision)
    }

    /// `pins` is replaced atomically, then `pins.version`; a crash between the two leaves the new pins with the old
    /// version, and the same set is simply accepted again.
    static func store(_ pinSet: PinSet, in directory: String) throws {
        let lines = pinSet.pins.map { Data($0).base64EncodedString() + "\n" }.joined()
        try Outbox.write(directory + "/pins", Array(lines.utf8), directory: directory, mode: 0o644)
        try Outbox.write(
            directory + "/pins.version", Array("\(pinSet.version)\n".utf8), directory: directory, mode: 0o644)
    }
}
