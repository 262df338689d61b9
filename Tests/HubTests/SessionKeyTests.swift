import Core
import Crypto
import Foundation
import HubClient
import Store
import Testing

@testable import Gateway

/// `hmac-sha256` session keys (`POST /v1/device/session`): one ECDSA-signed request buys a key for one connection;
/// every attack on a signed request is refused the same way with it, and the key is worth nothing anywhere else.
@Suite(.serialized) struct SessionKeyTests {
    let body = Array(#"{"t":1}"#.utf8)
    let json = [("Content-Type", "application/json")]

    func telemetry(_ connection: HTTPConnection, _ signer: MessageSigner, body: [UInt8]? = nil) async throws
        -> HTTPResult
    {
        try await connection.send(
            method: "POST", path: "/v1/telemetry", headers: json, body: body ?? self.body, signer: signer)
    }

    /// Signs with `signer`, then sends the request as given by `edit` (to replay or tamper with it).
    func sendSigned(
        _ connection: HTTPConnection, _ signer: MessageSigner, nonce: String,
        edit: ([(String, String)]) -> [(String, String)] = { $0 }
    ) async throws -> HTTPResult {
        let fields = try signer.sign(
            method: "POST", path: "/v1/telemetry", body: body, created: Int64(Date().timeIntervalSince1970),
            nonce: nonce, contentType: "application/json"
        ).map { ($0.name, $0.value) }
        return try await connection.send(
            method: "POST", path: "/v1/telemetry", headers: edit(json + fields), body: body)
    }

    @Test func aSessionKeySignsOnItsConnectionAndNowhereElse() async throws {
        let hub = try await TestHub.start()
        let device = try await hub.enroll("sensor-s1")
        let tls = try device.credentials.tlsConfiguration()
        let ecdsa = try device.credentials.signer()
        let session = try await HTTPSClient.withConnection(host: "127.0.0.1", port: hub.devicePort, tls: tls) {
            connection in
            let session = try await connection.openSession(signer: ecdsa)
            #expect(try await telemetry(connection, session).status == 202)
            #expect(try await telemetry(connection, session).status == 202, "each request has its own nonce")

            // The replayed request: same nonce, same connection.
            #expect(try await sendSigned(connection, session, nonce: "replayed-nonce-0001").status == 202)
            #expect(try await sendSigned(connection, session, nonce: "replayed-nonce-0001").status == 401)
            // A tampered body under a valid HMAC: the digest no longer matches.
            let tampered = try await connection.send(
                method: "POST", path: "/v1/telemetry",
                headers: json
                    + (try session.sign(
                        method: "POST", path: "/v1/telemetry", body: body, created: Int64(Date().timeIntervalSince1970),
                        nonce: "tampered-nonce-0001", contentType: "application/json"
                    ).map { ($0.name, $0.value) }), body: Array(#"{"t":2}"#.utf8))
            #expect(tampered.status == 401)
            // The right keyid with another key.
            let forged = MessageSigner(
                session: SessionKey(id: try sessionID(session), key: SymmetricKey(size: .bits256), expiresAt: .max))
            #expect(try await telemetry(connection, forged).status == 401)
            // A session key does not buy the next one: the session route takes ECDSA only.
            let again = try await connection.send(
                method: "POST", path: "/v1/device/session", headers: json, body: Array("{}".utf8), signer: session)
            #expect(again.status == 401)
            // Nor a new certificate: renewal must be signed by the certificate's own key.
            let renewal = try await connection.send(
                method: "POST", path: "/v1/device/certificate", headers: json,
                body: Array(#"{"csr":"not checked: the signature is refused first"}"#.utf8), signer: session)
            #expect(renewal.status == 401)
            return session
        }
        #expect(try await hub.server.store.telemetryCount(of: try DeviceID("sensor-s1")) == 3)
        // Only the session request's (ECDSA) nonce is durable: a session-signed request can never verify after a
        // restart (its key is gone), so its nonce lives in memory only.
        let durable = try await hub.server.store.liveNonces(now: Int64(Date().timeIntervalSince1970))
        #expect(durable.count == 1, "\(durable.map(\.1.nonce))")
        #expect(!durable.contains { $0.1.nonce == "replayed-nonce-0001" })

        // The same key on a new connection of the same device: that connection has no session.
        let elsewhere = try await HTTPSClient.withConnection(host: "127.0.0.1", port: hub.devicePort, tls: tls) {
            try await telemetry($0, session)
        }
        #expect(elsewhere.status == 401)
        let events = try await hub.securityEvents()
        #expect(events.contains { $0.kind == "session-key-issued" && $0.identity == "urn:bulwark:device:sensor-s1" })
        #expect(events.contains { $0.kind == "replay" || $0.kind == "bad-signature" })
        #expect(try await hub.server.store.telemetryCount(of: try DeviceID("sensor-s1")) == 3)
        try await hub.stop()
    }

    @Test func anotherDevicesSessionIsNotThisConnections() async throws {
        let hub = try await TestHub.start()
        let a = try await hub.enroll("sensor-s2")
        let b = try await hub.enroll("sensor-s3")
        let stolen = try await HTTPSClient.withConnection(
            host: "127.0.0.1", port: hub.devicePort, tls: try a.credentials.tlsConfiguration()
        ) { try await $0.openSession(signer: try a.credentials.signer()) }
        // B, with A's key and keyid, on B's own connection (which has no session): refused.
        let status = try await HTTPSClient.withConnection(
            host: "127.0.0.1", port: hub.devicePort, tls: try b.credentials.tlsConfiguration()
        ) { connection in
            _ = try await connection.openSession(signer: try b.credentials.signer())
            return try await telemetry(connection, stolen).status
        }
        #expect(status == 401)
        #expect(try await hub.server.store.telemetryCount(of: try DeviceID("sensor-s3")) == 0)
        try await hub.stop()
    }

    @Test func anExpiredSessionKeyIsRefusedAndRevocationStillBites() async throws {
        // Ten seconds: long enough for a loaded machine to use a key, revoke the device and use the key again before
        // it expires (six was not, once, with a compiler running beside the suite).
        let hub = try await TestHub.start { $0.gateway.sessionKeySeconds = 10 }
        let device = try await hub.enroll("sensor-s4")
        let (expired, revoked) = try await HTTPSClient.withConnection(
            host: "127.0.0.1", port: hub.devicePort, tls: try device.credentials.tlsConfiguration()
        ) { connection in
            var session = try await connection.openSession(signer: try device.credentials.signer())
            #expect(try await telemetry(connection, session).status == 202)
            try await Task.sleep(for: .seconds(11))
            // The signer refuses its expired key; one that lies about the expiry is refused by the hub.
            await #expect(throws: SessionKeyExpired.self) { try await telemetry(connection, session) }
            let (id, key) = try sessionIDAndKey(session)
            let lying = MessageSigner(session: SessionKey(id: id, key: key, expiresAt: .max))
            let expired = try await telemetry(connection, lying).status
            session = try await connection.openSession(signer: try device.credentials.signer())
            #expect(try await telemetry(connection, session).status == 202, "a new key on the same connection")
            #expect(try await hub.operatorRequest("POST", "/v1/devices/sensor-s4/revoke").status == 200)
            return (expired, try await telemetry(connection, session).status)
        }
        #expect(expired == 401)
        #expect(revoked == 403)
        try await hub.stop()
    }

    @Test func sessionsCanBeTurnedOff() async throws {
        let hub = try await TestHub.start { $0.gateway.sessionKeySeconds = 0 }
        let device = try await hub.enroll("sensor-s5")
        let answer = try await device.request(
            port: hub.devicePort, "POST", "/v1/device/session", body: Array("{}".utf8), headers: json)
        #expect(answer.status == 404)
        try await hub.stop()
    }

    /// A session signer's keyid and key (read back through a signature it makes: the key is not exposed).
    func sessionIDAndKey(_ signer: MessageSigner) throws -> (String, SymmetricKey) {
        guard case .hmac(let session) = signer.algorithm else { throw ClientError("not a session signer") }
        return (session.id, session.key)
    }

    /// The keyid a session signer puts in its signatures.
    func sessionID(_ signer: MessageSigner) throws -> String {
        let input =
            try signer.sign(method: "GET", path: "/", body: [], created: 0, nonce: "0123456789abcdef0123")
            .first { $0.name == "Signature-Input" }?.value ?? ""
        guard let start = input.range(of: "keyid=\""), let end = input[start.upperBound...].firstIndex(of: "\"") else {
            throw ClientError("no keyid")
        }
        return String(input[start.upperBound..<end])
    }
}
