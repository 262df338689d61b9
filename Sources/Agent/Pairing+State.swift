import Foundation
import HubClient
import PKI
import X509

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

extension AgentState {
    /// Writes what pairing gave (`PairingClient.pair`: the device's certificate and operational key, the CA, the hub's
    /// pins, the IRK and, when the hub serves updates, the repository's `root.json`) as the state directory an `Agent`
    /// then runs from: the library's side of `bulwark agent pair`. The directory is 0700 (created, or tightened when
    /// this user owns it; refused otherwise), the key and the IRK 0600; every file is written whole, synced and
    /// renamed; `paired` comes last. `hub` is recorded in `paired` (for `bulwark agent status`).
    public static func store(_ result: PairingClient.Result, in directory: String, hub: String) throws(AgentError) {
        var info = stat()
        if lstat(directory, &info) == 0 {
            guard info.st_mode & S_IFMT == S_IFDIR else {
                throw AgentError(.stateInvalid, "\(directory) exists and is not a directory")
            }
            if info.st_mode & 0o077 != 0, info.st_uid != geteuid() || chmod(directory, 0o700) != 0 {
                throw AgentError(
                    .stateInsecure, "\(directory) is open to group or others; run: chmod 700 \(directory)")
            }
        } else {
            do {
                try FileManager.default.createDirectory(
                    atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            } catch {
                throw AgentError(.stateInvalid, "cannot create the state directory \(directory)")
            }
            guard chmod(directory, 0o700) == 0 else {
                throw AgentError(.stateInvalid, "cannot set mode 700 on \(directory)")
            }
        }
        let certificate: Certificate
        let ca: Certificate
        do {
            certificate = try Certificate(derEncoded: result.credentials.certificateDER)
            ca = try Certificate(derEncoded: result.credentials.caCertificateDER)
        } catch {
            throw AgentError(.stateInvalid, "the hub's pairing answer holds no valid certificate")
        }
        func write(_ name: String, _ text: String, mode: mode_t) throws(AgentError) {
            try Outbox.write(directory + "/" + name, Array(text.utf8), directory: directory, mode: mode)
        }
        try write("device.key", result.operationalKey.pemRepresentation, mode: 0o600)
        try write("irk", Data(result.credentials.irk).base64EncodedString() + "\n", mode: 0o600)
        try write("device.crt", certificate.pem, mode: 0o644)
        try write("ca.crt", ca.pem, mode: 0o644)
        try write(
            "pins", result.credentials.pins.map { Data($0).base64EncodedString() }.joined(separator: "\n") + "\n",
            mode: 0o644)
        if let root = result.credentials.tufRoot {
            // The update repository's root: the trust anchor of the device's TUF client (TUF §5.2).
            let trust = directory + "/trust"
            guard mkdir(trust, 0o700) == 0 || errno == EEXIST else {
                throw AgentError(.stateInvalid, "cannot create \(trust)")
            }
            try Outbox.write(trust + "/root.json", root, directory: trust, mode: 0o644)
        }
        try write("paired", "hub \(hub)\n", mode: 0o644)
    }
}
