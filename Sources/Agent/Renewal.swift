import Crypto
import Foundation
import HubClient
import X509

#if canImport(Glibc)
    import Glibc
#endif

/// Certificate renewal with a new key (`POST /v1/device/certificate`, README "Pairing a device"): a fresh P-256 key,
/// its CSR signed by it, sent in a request signed with the current key over the pinned connection. The state
/// directory's `device.key` and `device.crt` are replaced (each atomically, the key 0600) only once the hub answered
/// with a certificate for the new key.
public enum Renewal {
    public static func renew(_ state: AgentState, apiURL: String) async throws -> AgentState {
        let (host, port) = try HubLink.endpoint(apiURL)
        let key = P256.Signing.PrivateKey()
        let csr = try CertificateSigningRequest(
            version: .v1, subject: state.certificate.subject, privateKey: Certificate.PrivateKey(key),
            attributes: CertificateSigningRequest.Attributes(), signatureAlgorithm: .ecdsaWithSHA256)
        let body = try JSONSerialization.data(withJSONObject: ["csr": try csr.serializeAsPEM().pemString])
        let result: HTTPResult
        do {
            result = try await HTTPSClient.request(
                host: host, port: port, tls: try state.credentials.tlsConfiguration(),
                pinned: state.pinned, method: "POST", path: "/v1/device/certificate",
                headers: [("Content-Type", "application/json")], body: Array(body),
                signer: try state.credentials.signer(), profile: state.credentials.profile)
        } catch {
            throw AgentError(.connection, "cannot reach the hub at \(apiURL) (TLS or pin check failed): \(error)")
        }
        guard result.status == 201,
            let object = try? JSONSerialization.jsonObject(with: Data(result.body)) as? [String: Any],
            let pem = object["certificate"] as? String, let issued = try? Certificate(pemEncoded: pem),
            issued.publicKey == Certificate.PublicKey(key.publicKey)
        else {
            throw AgentError(
                result.status == 403 ? .refusedByHub : .connection,
                "renewal refused: \(result.status) \(String(result.bodyText.prefix(200)))")
        }
        // Both new files are written in full first, then renamed; a crash in between leaves a `.new` pair that the
        // next load finishes (AgentState.load), never a key and a certificate that do not belong together.
        try Outbox.write(
            state.keyFile + ".new", Array(key.pemRepresentation.utf8), directory: state.directory, mode: 0o600)
        try Outbox.write(
            state.certificateFile + ".new", Array(issued.pem.utf8), directory: state.directory, mode: 0o644)
        try AgentState.finishReplacement(state.directory)
        return try AgentState.load(state.directory, profile: state.credentials.profile)
    }
}
