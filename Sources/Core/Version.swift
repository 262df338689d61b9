/// Bulwark's version, as `bulwark --version` prints it and each hub node reports it (`bulwark node list`).
public enum BulwarkVersion {
    public static let current = "0.9.0"
}
