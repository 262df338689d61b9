public import TUF

/// Limits for one update. Defaults are python-tuf's `UpdaterConfig` defaults.
public struct UpdaterConfig: Sendable {
    /// TUF §5.3.3: cap on root versions fetched in one update. python-tuf's default is 256
    /// (`max_root_rotations`), which we keep; an attacker serving endless valid-looking roots
    /// cannot keep the client busy forever.
    public var maxRootRotations = 256
    /// TUF §5.6.7: cap on roles visited in one delegation search (python-tuf: 32).
    public var maxDelegations = 32
    /// Byte limits for metadata without a listed length (TUF §5.3.3, §5.4.1, §5.5.1, §5.6.1).
    public var rootMaxLength = 512_000
    public var timestampMaxLength = 16_384
    public var snapshotMaxLength = 2_000_000
    public var targetsMaxLength = 5_000_000
    /// TUF §5.7.3 with consistent snapshots: fetch artifacts as `dir/HASH.name`.
    public var prefixTargetsWithHash = true
    /// Which keys count towards thresholds: `.fips` under `crypto.profile: fips`.
    public var keyPolicy = KeyPolicy.any

    public init() {}
}
