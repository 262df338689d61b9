import Crypto
import Foundation
import Testing

@testable import Gateway

@Suite struct SignatureTests {
    let key = P256.Signing.PrivateKey()
    let profile = MessageSignatureProfile(maxSkewSeconds: 60)
    let body = Array(#"{"temperature":21.5}"#.utf8)
    let now: Int64 = 1_796_000_000

    func request(
        _ headers: [(name: String, value: String)], method: String = "POST", path: String = "/v1/telemetry",
        session: SessionKey? = nil
    ) -> SignedRequest {
        func field(_ name: String) -> String? { headers.first { $0.name == name }?.value }
        return SignedRequest(
            method: method, path: path, signatureInput: field("Signature-Input"), signature: field("Signature"),
            contentDigest: field("Content-Digest"), session: session)
    }

    func signed(created: Int64? = nil, nonce: String = "n0nce-0123456789abcdef", session: SessionKey? = nil) throws
        -> SignedRequest
    {
        request(
            try MessageSigner(key: key).sign(
                method: "POST", path: "/v1/telemetry", body: body, created: created ?? now, nonce: nonce),
            session: session)
    }

    func failure(_ request: SignedRequest, body: [UInt8]? = nil, key: P256.Signing.PublicKey? = nil)
        -> SignatureFailure.Kind?
    {
        do {
            _ = try profile.verify(request, body: body ?? self.body, key: key ?? self.key.publicKey, now: now)
            return nil
        } catch { return error.kind }
    }

    /// The session key's precomputed HMAC state (its pads derived once) gives RFC 4231's answer, and the same
    /// answer as swift-crypto's one-shot HMAC for every message when one key serves many (the state is copied per
    /// message, never changed).
    @Test func sessionKeyHMACMatchesRFC4231AndTheOneShotHMAC() {
        let session = SessionKey(id: "k", key: SymmetricKey(data: Array("Jefe".utf8)), expiresAt: 0)
        let vector = session.authenticationCode(Array("what do ya want for nothing?".utf8))
        #expect(
            vector.map { String(format: "%02x", $0) }.joined()
                == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843", "RFC 4231 test case 2")
        let random = SessionKey.generate(now: 0, lifetimeSeconds: 60)
        for length in [0, 1, 55, 56, 63, 64, 65, 200, 1000] {
            let message = (0..<length).map { _ in UInt8.random(in: 0...255) }
            #expect(
                Array(random.authenticationCode(message))
                    == Array(HMAC<SHA256>.authenticationCode(for: message, using: random.key)), "\(length) bytes")
        }
    }

    /// The signer's own nonces: 16 random bytes each, so 24 base64 characters the profile accepts, never repeated in
    /// 20,000 draws, and with every output byte value seen (not a constant or a counter).
    @Test func defaultNoncesAreRandomAndWellFormed() throws {
        var seen = Set<String>()
        var bytes = Set<UInt8>()
        for _ in 0..<20_000 {
            let nonce = MessageSigner.randomNonce()
            #expect(nonce.utf8.count == 24 && nonce.hasSuffix("==") && MessageSignatureProfile.isSafeToken(nonce))
            #expect(seen.insert(nonce).inserted, "a nonce came twice")
            bytes.formUnion(try #require(Data(base64Encoded: nonce)))
        }
        #expect(bytes.count == 256)
        // And a signed request carries such a nonce, accepted once.
        let headers = try MessageSigner(key: key).sign(method: "POST", path: "/v1/telemetry", body: body, created: now)
        let verified = try profile.verify(request(headers), body: body, key: key.publicKey, now: now)
        #expect(verified.nonce.utf8.count == 24)
    }

    @Test func roundTrip() throws {
        let verified = try profile.verify(try signed(), body: body, key: key.publicKey, now: now)
        #expect(verified == VerifiedSignature(created: now, nonce: "n0nce-0123456789abcdef"))
    }

    @Test func attacksAreRefused() throws {
        let good = try signed()
        // Tampered body (digest no longer matches).
        #expect(failure(good, body: Array(#"{"temperature":99.5}"#.utf8)) == .digestMismatch)
        // Body and digest both replaced: the signature covers the digest.
        var swapped = good
        swapped.contentDigest = "sha-256=:\(Data(SHA256.hash(data: [1, 2, 3])).base64EncodedString()):"
        #expect(failure(swapped, body: [1, 2, 3]) == .badSignature)
        // Another device's key.
        #expect(failure(good, key: P256.Signing.PrivateKey().publicKey) == .badSignature)
        // Method or path changed.
        var retargeted = good
        retargeted.path = "/v1/device"
        #expect(failure(retargeted) == .badSignature)
        retargeted = good
        retargeted.method = "PUT"
        #expect(failure(retargeted) == .badSignature)
        // Ten minutes old, or from the future.
        #expect(failure(try signed(created: now - 600)) == .stale)
        #expect(failure(try signed(created: now + 600)) == .stale)
        // Missing pieces.
        var missing = good
        missing.signature = nil
        #expect(failure(missing) == .missing)
        missing = good
        missing.contentDigest = nil
        #expect(failure(missing) == .missing)
    }

    @Test func profileIsEnforced() throws {
        let good = try signed()
        func with(input: String) -> SignedRequest {
            var r = good
            r.signatureInput = input
            return r
        }
        let list = #"("@method" "@path" "content-digest")"#
        #expect(
            failure(with(input: #"bulwark=("@method" "@path");created=\#(now);nonce="n0nce-0123456789abcdef""#))
                == .unsupported)
        #expect(failure(with(input: #"bulwark=\#(list);nonce="n0nce-0123456789abcdef""#)) == .unsupported)
        #expect(failure(with(input: #"bulwark=\#(list);created=\#(now)"#)) == .unsupported)
        #expect(failure(with(input: #"bulwark=\#(list);created=\#(now);nonce="short""#)) == .unsupported)
        #expect(
            failure(
                with(input: #"bulwark=\#(list);created=\#(now);nonce="n0nce-0123456789abcdef";alg="rsa-pss-sha512""#))
                == .unsupported)
        // hmac-sha256 is known, but this request's connection has no session key.
        #expect(
            failure(with(input: #"bulwark=\#(list);created=\#(now);nonce="n0nce-0123456789abcdef";alg="hmac-sha256""#))
                == .noSession)
        #expect(failure(with(input: #"other=\#(list);created=\#(now);nonce="n0nce-0123456789abcdef""#)) == .malformed)
        #expect(failure(with(input: "bulwark=(((")) == .malformed)
        // Changing any signed parameter breaks the signature.
        #expect(
            failure(
                with(
                    input:
                        #"bulwark=\#(list);created=\#(now - 1);nonce="n0nce-0123456789abcdef";alg="ecdsa-p256-sha256""#)
            ) == .badSignature)
        // A DER signature instead of raw r‖s is refused.
        var der = good
        let derSignature = try key.signature(for: Data("x".utf8)).derRepresentation.base64EncodedString()
        der.signature = "bulwark=:\(derSignature):"
        #expect(failure(der) == .badSignature)
    }

    /// Content-Type and Bulwark-Message-Type decide how a message is stored: when a request carries them the
    /// signature must cover them, so whoever holds a captured request cannot re-type it (review finding 7).
    @Test func theTypeFieldsMustBeSignedWhenPresent() throws {
        let signer = MessageSigner(key: key)
        func request(contentType: String?, messageType: String?, signedContentType: String?, signedType: String?)
            throws -> SignedRequest
        {
            var signed = self.request(
                try signer.sign(
                    method: "POST", path: "/v1/telemetry", body: body, created: now, nonce: "n0nce-0123456789abcdef",
                    contentType: signedContentType, messageType: signedType))
            signed.contentType = contentType
            signed.messageType = messageType
            return signed
        }
        let json = "application/json"
        #expect(
            failure(try request(contentType: json, messageType: "env", signedContentType: json, signedType: "env"))
                == nil)
        #expect(
            failure(try request(contentType: json, messageType: nil, signedContentType: json, signedType: nil)) == nil)
        #expect(
            failure(try request(contentType: json, messageType: "env", signedContentType: json, signedType: "other"))
                == .badSignature, "type changed")
        #expect(
            failure(try request(contentType: "text/plain", messageType: nil, signedContentType: json, signedType: nil))
                == .badSignature, "content type changed")
        #expect(
            failure(try request(contentType: json, messageType: "env", signedContentType: json, signedType: nil))
                == .unsupported, "type added")
        #expect(
            failure(try request(contentType: json, messageType: nil, signedContentType: nil, signedType: nil))
                == .unsupported, "content type not covered")
        #expect(
            failure(try request(contentType: nil, messageType: nil, signedContentType: json, signedType: nil))
                == .unsupported, "content type removed")
    }

    /// RFC 9530 Appendix: the sha-256 digest of `{"hello": "world"}` (with the space), as the RFC gives it.
    @Test func contentDigestKnownAnswer() throws {
        try MessageSignatureProfile.checkDigest(
            "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:", body: Array(#"{"hello": "world"}"#.utf8))
        #expect(throws: SignatureFailure.self) {
            try MessageSignatureProfile.checkDigest(
                "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:", body: Array(#"{"hello":"world"}"#.utf8))
        }
    }

    /// RFC 9421 §3.3.3 `hmac-sha256` with the connection's session key: the same checks, and the key is the
    /// connection's, never one the request names.
    @Test func hmacSessionSignatures() throws {
        let session = SessionKey(id: "session-1", key: SymmetricKey(size: .bits256), expiresAt: now + 60)
        func hmacRequest(_ signer: MessageSigner, connection: SessionKey?, nonce: String = "n0nce-0123456789abcdef")
            throws -> SignedRequest
        {
            request(
                try signer.sign(method: "POST", path: "/v1/telemetry", body: body, created: now, nonce: nonce),
                session: connection)
        }
        let signer = MessageSigner(session: session)
        let good = try hmacRequest(signer, connection: session)
        #expect(try profile.verify(good, body: body, key: key.publicKey, now: now).nonce == "n0nce-0123456789abcdef")
        #expect(good.signatureInput?.contains(#"alg="hmac-sha256""#) == true)
        #expect(good.signatureInput?.contains(#"keyid="session-1""#) == true)

        // No session on this connection, or another one: refused whatever the keyid says.
        #expect(failure(try hmacRequest(signer, connection: nil)) == .noSession)
        let other = SessionKey(id: "session-2", key: SymmetricKey(size: .bits256), expiresAt: now + 60)
        #expect(failure(try hmacRequest(signer, connection: other)) == .noSession)
        // The right keyid, another key.
        let forged = SessionKey(id: "session-1", key: SymmetricKey(size: .bits256), expiresAt: now + 60)
        #expect(failure(try hmacRequest(MessageSigner(session: forged), connection: session)) == .badSignature)
        // A body changed under the signature.
        #expect(failure(good, body: Array(#"{"temperature":99}"#.utf8)) == .digestMismatch)
        // A key that expired after the request was signed (the signer itself refuses an expired key).
        let shortLived = SessionKey(id: "session-1", key: session.key, expiresAt: now + 5)
        let late = try hmacRequest(MessageSigner(session: shortLived), connection: shortLived)
        #expect(throws: SignatureFailure(.stale, "session key expired")) {
            try profile.verify(late, body: body, key: key.publicKey, now: now + 10)
        }
        #expect(throws: SessionKeyExpired()) {
            try MessageSigner(session: shortLived).sign(
                method: "POST", path: "/v1/telemetry", body: body, created: now + 5)
        }
        // An ECDSA signature relabelled hmac-sha256 does not pass, nor an HMAC relabelled ECDSA.
        var relabelled = try signed(session: session)
        relabelled.signatureInput = relabelled.signatureInput?.replacingOccurrences(
            of: "ecdsa-p256-sha256", with: "hmac-sha256"
        )
        #expect(failure(relabelled) != nil)
        var downgraded = good
        downgraded.signatureInput = good.signatureInput?.replacingOccurrences(
            of: "hmac-sha256", with: "ecdsa-p256-sha256")
        #expect(failure(downgraded) == .badSignature)
    }
}
