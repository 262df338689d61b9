import Crypto
import TUF
import Testing
import _CryptoExtras

func key(_ keytype: String, _ scheme: String, _ pub: String) throws -> Key {
    try Key(
        json: try need(
            obj(["keytype": .string(keytype), "scheme": .string(scheme), "keyval": obj(["public": .string(pub)])])
                .objectValue
        )
    )
}

@Suite struct SignatureTests {
    let message = Array("signed bytes".utf8)

    @Test func ed25519() throws {
        let sk = Curve25519.Signing.PrivateKey()
        let k = try key("ed25519", "ed25519", hexEncode(sk.publicKey.rawRepresentation))
        let sig = hexEncode(try sk.signature(for: message))
        #expect(try SignatureVerifier.isValid(key: k, signatureHex: sig, data: message))
        #expect(try !SignatureVerifier.isValid(key: k, signatureHex: sig, data: message + [0]))
        #expect(try !SignatureVerifier.isValid(key: k, signatureHex: "", data: message))
        #expect(try !SignatureVerifier.isValid(key: k, signatureHex: "zz", data: message))
    }

    @Test(arguments: ["ecdsa", "ecdsa-sha2-nistp256"])
    func ecdsaP256(_ keytype: String) throws {
        let sk = P256.Signing.PrivateKey()
        let k = try key(keytype, "ecdsa-sha2-nistp256", sk.publicKey.pemRepresentation)
        let sig = hexEncode(try sk.signature(for: message).derRepresentation)
        #expect(try SignatureVerifier.isValid(key: k, signatureHex: sig, data: message))
        #expect(try !SignatureVerifier.isValid(key: k, signatureHex: sig, data: message + [0]))
        // Raw r||s is not the TUF encoding (DER is).
        let raw = hexEncode(try sk.signature(for: message).rawRepresentation)
        #expect(try !SignatureVerifier.isValid(key: k, signatureHex: raw, data: message))
    }

    @Test func ecdsaP384() throws {
        let sk = P384.Signing.PrivateKey()
        let k = try key("ecdsa", "ecdsa-sha2-nistp384", sk.publicKey.pemRepresentation)
        let sig = hexEncode(try sk.signature(for: message).derRepresentation)
        #expect(try SignatureVerifier.isValid(key: k, signatureHex: sig, data: message))
        #expect(try !SignatureVerifier.isValid(key: k, signatureHex: sig, data: Array("other".utf8)))
    }

    @Test func rsaPSSSignedBySwiftCrypto() throws {
        let sk = try _RSA.Signing.PrivateKey(keySize: .bits2048)
        let k = try key("rsa", "rsassa-pss-sha256", sk.publicKey.pemRepresentation)
        let sig = hexEncode(try sk.signature(for: message, padding: .PSS).rawRepresentation)
        #expect(try SignatureVerifier.isValid(key: k, signatureHex: sig, data: message))
        #expect(try !SignatureVerifier.isValid(key: k, signatureHex: sig, data: message + [1]))
    }

    /// Signatures made by python `cryptography` with salt lengths other than the digest length
    /// (maximum, 0, 20): swift-crypto's PSS verification would refuse these.
    @Test(arguments: ["digest", "max", "zero", "salt20"])
    func rsaPSSAnySaltLength(_ variant: String) throws {
        let k = try key("rsa", "rsassa-pss-sha256", Vectors.rsaPublicPEM)
        let msg = try need(hexDecode(Vectors.rsaMessageHex))
        let sig = try need(Vectors.rsaPSS[variant])
        #expect(try SignatureVerifier.isValid(key: k, signatureHex: sig, data: msg))
        #expect(try !SignatureVerifier.isValid(key: k, signatureHex: sig, data: msg + [0x20]))
        let pkcs = try key("rsa", "rsa-pkcs1v15-sha256", Vectors.rsaPublicPEM)
        #expect(try SignatureVerifier.isValid(key: pkcs, signatureHex: Vectors.rsaPKCS1v15, data: msg))
        #expect(try !SignatureVerifier.isValid(key: pkcs, signatureHex: sig, data: msg))
    }

    @Test func unsupportedKeyTypeIsAnError() throws {
        let k = try key("dsa", "dsa-sha1", "00")
        #expect(throws: TUFError(.unsupportedKey, "")) {
            try SignatureVerifier.isValid(key: k, signatureHex: "00", data: [1])
        }
        let bad = try key("ed25519", "ed25519", "abcd")
        #expect(throws: TUFError(.unsupportedKey, "")) {
            try SignatureVerifier.isValid(key: bad, signatureHex: "00", data: [1])
        }
    }
}

@Suite struct ThresholdTests {
    let data = Array("payload".utf8)

    func signature(_ keyid: String, _ sig: String) throws -> Signature {
        let env = try Metadata<Timestamp>.parse(
            Array(
                #"{"signed":{"_type":"timestamp","spec_version":"1.0","version":1,"expires":"2030-01-01T00:00:00Z","meta":{"snapshot.json":{"version":1}}},"signatures":[{"keyid":"\#(keyid)","sig":"\#(sig)"}]}"#
                    .utf8
            )
        )
        return env.signatures[0]
    }

    @Test func countsEachKeyOnce() throws {
        let a = TestSigner()
        let b = TestSigner()
        let keys = [
            a.keyid: try Key(json: try need(a.keyJSON.objectValue)),
            b.keyid: try Key(json: try need(b.keyJSON.objectValue)),
        ]
        let sigs = [try signature(a.keyid, a.sign(data))]
        try Threshold.verify(
            signedBytes: data,
            signatures: sigs,
            keyids: [a.keyid, b.keyid],
            threshold: 1,
            keys: keys,
            role: "t"
        )
        #expect(throws: TUFError(.thresholdNotReached, "")) {
            try Threshold.verify(
                signedBytes: data,
                signatures: sigs,
                keyids: [a.keyid, b.keyid],
                threshold: 2,
                keys: keys,
                role: "t"
            )
        }
        // A keyid listed twice by the role still counts once.
        #expect(throws: TUFError(.thresholdNotReached, "")) {
            try Threshold.verify(
                signedBytes: data,
                signatures: sigs,
                keyids: [a.keyid, a.keyid],
                threshold: 2,
                keys: keys,
                role: "t"
            )
        }
        // The same key under a second keyid (a delegator's "2 of 2" held by one key) still counts once.
        let alias = "alias-" + a.keyid
        #expect(throws: TUFError(.thresholdNotReached, "")) {
            try Threshold.verify(
                signedBytes: data,
                signatures: sigs + [try signature(alias, a.sign(data))],
                keyids: [a.keyid, alias],
                threshold: 2,
                keys: keys.merging([alias: keys[a.keyid]!]) { first, _ in first },
                role: "t"
            )
        }
        // Duplicate keyids in signatures are refused outright.
        #expect(throws: TUFError(.invalidMetadata, "")) {
            try Threshold.verify(
                signedBytes: data,
                signatures: sigs + sigs,
                keyids: [a.keyid],
                threshold: 1,
                keys: keys,
                role: "t"
            )
        }
        // An invalid extra signature does not spoil a met threshold.
        let both = sigs + [try signature(b.keyid, "00")]
        try Threshold.verify(
            signedBytes: data,
            signatures: both,
            keyids: [a.keyid, b.keyid],
            threshold: 1,
            keys: keys,
            role: "t"
        )
    }

    @Test func metadataWithDuplicateSignatureKeyidsIsRefused() {
        let text =
            #"{"signed":{"_type":"timestamp","spec_version":"1.0","version":1,"expires":"2030-01-01T00:00:00Z","meta":{"snapshot.json":{"version":1}}},"signatures":[{"keyid":"aa","sig":"00"},{"keyid":"aa","sig":"00"}]}"#
        #expect(throws: TUFError(.invalidMetadata, "")) { try Metadata<Timestamp>.parse(Array(text.utf8)) }
    }

    @Test func roleWithDuplicateKeyidsIsRefused() throws {
        let repo = TestRepository()
        var root = try need(repo.rootJSON().objectValue)
        var roles = try need(root["roles"]?.objectValue)
        let id = repo.snapshotSigner.keyid
        roles.set("snapshot", obj(["keyids": .array([.string(id), .string(id)]), "threshold": .integer(2)]))
        root.set("roles", .object(roles))
        #expect(throws: TUFError(.invalidMetadata, "")) {
            try Metadata<Root>.parse(envelope(.object(root), [repo.rootSigner]))
        }
    }
}
