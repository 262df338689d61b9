import Crypto
import Foundation
import JSON
import Testing
import _CryptoExtras

@testable import TUF

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

    /// The P-256 keys of the usual SPKI form are verified through BoringSSL's C API (`P256Direct`), the others
    /// through swift-crypto: both must decide alike. Valid signatures, other messages and keys, and each signature
    /// altered (a byte flipped anywhere, a byte appended, the last removed, s replaced by n - s, a zero r, r or s equal
    /// to n, a long-form length, a zero-padded integer), over random messages; a point off the curve is an unusable
    /// key either way.
    @Test func p256DirectDecidesAsSwiftCrypto() throws {
        var generator = SystemRandomNumberGenerator()
        let other = P256.Signing.PrivateKey()
        for round in 0..<60 {
            let sk = P256.Signing.PrivateKey()
            let point = ArraySlice(sk.publicKey.x963Representation)
            let message = (0..<Int.random(in: 0...300, using: &generator)).map { _ in
                UInt8.random(in: 0...255, using: &generator)
            }
            let signature = try sk.signature(for: message)
            let der = Array(signature.derRepresentation)
            func swiftCrypto(_ der: [UInt8], _ message: [UInt8], _ key: P256.Signing.PublicKey) -> Bool {
                guard let s = try? P256.Signing.ECDSASignature(derRepresentation: der) else { return false }
                return key.isValidSignature(s, for: message)
            }
            var candidates: [[UInt8]] = [der, der + [0], Array(der.dropLast())]
            var flipped = der
            flipped[Int.random(in: 0..<der.count, using: &generator)] ^= 1 << UInt8(round % 8)
            candidates.append(flipped)
            // The same signature with s' = n - s: ECDSA accepts both (no low-s rule in FIPS 186-5).
            let raw = Array(signature.rawRepresentation)
            let n: [UInt8] = [
                0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xBC,
                0xE6, 0xFA, 0xAD, 0xA7, 0x17, 0x9E, 0x84, 0xF3, 0xB9, 0xCA, 0xC2, 0xFC, 0x63, 0x25, 0x51,
            ]
            var s = Array(raw[32...])
            var borrow = 0
            for i in (0..<32).reversed() {
                let d = Int(n[i]) - Int(s[i]) - borrow
                s[i] = UInt8((d + 256) % 256)
                borrow = d < 0 ? 1 : 0
            }
            if let flippedS = try? P256.Signing.ECDSASignature(rawRepresentation: Array(raw[..<32]) + s) {
                candidates.append(Array(flippedS.derRepresentation))
            }
            candidates.append([0x30, 0x06, 0x02, 0x01, 0x00, 0x02, 0x01, 0x01])  // r = 0
            // Other encodings of the valid (r, s): a long-form length, a non-minimal integer; and s = n, r = n.
            func integer(_ bytes: [UInt8], pad: Bool = false) -> [UInt8] {
                var b = Array(bytes.drop { $0 == 0 })
                if b.first.map({ $0 >= 0x80 }) ?? true { b.insert(0, at: 0) }
                if pad { b.insert(0, at: 0) }
                return [0x02, UInt8(b.count)] + b
            }
            let r = Array(raw[..<32])
            let body = integer(r) + integer(Array(raw[32...]))
            candidates.append([0x30, 0x81, UInt8(body.count)] + body)
            let padded = integer(r, pad: true) + integer(Array(raw[32...]))
            candidates.append([0x30, UInt8(padded.count)] + padded)
            for (a, b) in [(r, n), (n, Array(raw[32...]))] {
                let bad = integer(a) + integer(b)
                candidates.append([0x30, UInt8(bad.count)] + bad)
            }
            for candidate in candidates {
                for (m, key) in [(message, sk.publicKey), (message + [1], sk.publicKey), (message, other.publicKey)] {
                    let expected = swiftCrypto(candidate, m, key)
                    let direct = P256Direct.isValid(
                        point: ArraySlice(key.x963Representation), derSignature: candidate, message: m)
                    #expect(direct == expected, "round \(round): \(candidate)")
                }
            }
            #expect(P256Direct.isValid(point: point, derSignature: der, message: message) == true)
        }
        var offCurve = Array(other.publicKey.x963Representation)
        offCurve[64] ^= 1
        #expect(P256Direct.isValid(point: offCurve[...], derSignature: [], message: []) == nil)
        #expect((try? P256.Signing.PublicKey(x963Representation: offCurve)) == nil)
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

    /// Past 16 counted keys the counting switches from lists to hashed sets: 24 distinct keys reach 24 and no more;
    /// the 21st key listed again under 8 aliases after all 24 (inserted after the switch) and every keyid listed a
    /// second time add nothing.
    @Test func manyKeysAreCountedOnceEachOnBothSidesOfTheSwitch() throws {
        let signers = (0..<24).map { _ in TestSigner() }
        var keys: [String: Key] = [:]
        for s in signers { keys[s.keyid] = try Key(json: try need(s.keyJSON.objectValue)) }
        let sigs = try signers.map { try signature($0.keyid, $0.sign(data)) }
        let ids = signers.map(\.keyid)
        try Threshold.verify(signedBytes: data, signatures: sigs, keyids: ids, threshold: 24, keys: keys, role: "t")
        let aliases = (0..<8).map { "alias\($0)-" + signers[20].keyid }
        var aliased = keys
        for a in aliases { aliased[a] = keys[signers[20].keyid] }
        let all = try sigs + aliases.map { try signature($0, signers[20].sign(data)) }
        for keyids in [ids, ids + aliases, ids + ids, ids + aliases + ids] {
            #expect(throws: TUFError(.thresholdNotReached, "")) {
                try Threshold.verify(
                    signedBytes: data, signatures: all, keyids: keyids, threshold: 25, keys: aliased, role: "t")
            }
        }
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

/// TUF §4.3: one key contributes one signature, however its KEY object spells it. A root listing one key twice in two
/// spellings with threshold 2, signed once, must not verify (white-box review finding 3).
@Suite struct KeySpellingTests {
    let data = Array("signed bytes".utf8)

    func verify(_ first: Key, _ second: Key, _ signatures: [Signature], threshold: Int64 = 2) throws {
        try Threshold.verify(
            signedBytes: data, signatures: signatures, keyids: ["k1", "k2"], threshold: threshold,
            keys: ["k1": first, "k2": second], role: "timestamp")
    }

    @Test func ed25519HexInUpperAndLowerCaseIsOneKey() throws {
        let sk = Curve25519.Signing.PrivateKey()
        let hex = hexEncode(sk.publicKey.rawRepresentation)
        let lower = try key("ed25519", "ed25519", hex)
        let upper = try key("ed25519", "ed25519", hex.uppercased())
        let sig = hexEncode(try sk.signature(for: data))
        let signatures = [Signature(keyid: "k1", sig: sig), Signature(keyid: "k2", sig: sig)]
        #expect(try SignatureVerifier.isValid(key: upper, signatureHex: sig, data: data), "both spellings verify")
        #expect(throws: TUFError(.thresholdNotReached, "")) { try verify(lower, upper, signatures) }
        try verify(lower, upper, signatures, threshold: 1)
        // Two different keys, each signing, still reach 2.
        let other = Curve25519.Signing.PrivateKey()
        try verify(
            lower, try key("ed25519", "ed25519", hexEncode(other.publicKey.rawRepresentation)),
            [Signature(keyid: "k1", sig: sig), Signature(keyid: "k2", sig: hexEncode(try other.signature(for: data)))])
    }

    @Test func ecdsaKeytypeAliasesAreOneKey() throws {
        let sk = P256.Signing.PrivateKey()
        let pem = sk.publicKey.pemRepresentation
        let signatures = [
            Signature(keyid: "k1", sig: hexEncode(try sk.signature(for: data).derRepresentation)),
            Signature(keyid: "k2", sig: hexEncode(try sk.signature(for: data).derRepresentation)),
        ]
        #expect(throws: TUFError(.thresholdNotReached, "")) {
            try verify(
                try key("ecdsa", "ecdsa-sha2-nistp256", pem),
                try key("ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256", pem),
                signatures)
        }
    }

    @Test func pemWithOtherLineBreaksIsOneKey() throws {
        let sk = P256.Signing.PrivateKey()
        let pem = sk.publicKey.pemRepresentation
        // The same SPKI with CRLF line ends, blank lines and no final newline.
        let body = Array(sk.publicKey.derRepresentation.base64EncodedString())
        let lines = stride(from: 0, to: body.count, by: 64).map { String(body[$0..<min($0 + 64, body.count)]) }
        let rewrapped = (["-----BEGIN PUBLIC KEY-----"] + lines + ["-----END PUBLIC KEY-----"]).joined(
            separator: "\r\n\r\n")
        #expect(rewrapped != pem)
        let second = try key("ecdsa", "ecdsa-sha2-nistp256", rewrapped)
        let signatures = [
            Signature(keyid: "k1", sig: hexEncode(try sk.signature(for: data).derRepresentation)),
            Signature(keyid: "k2", sig: hexEncode(try sk.signature(for: data).derRepresentation)),
        ]
        #expect(try SignatureVerifier.isValid(key: second, signatureHex: signatures[1].sig, data: data))
        #expect(throws: TUFError(.thresholdNotReached, "")) {
            try verify(try key("ecdsa", "ecdsa-sha2-nistp256", pem), second, signatures)
        }
        #expect(
            SignatureVerifier.material(of: try key("ecdsa", "ecdsa-sha2-nistp256", pem))
                == SignatureVerifier.material(of: second))
    }

    /// An Ed25519 key spelled as PEM (securesystemslib writes hex) is not a usable key: it never counts, so it cannot
    /// stand in as a second spelling of a key that signed.
    @Test func ed25519SpelledAsPEMNeverCounts() throws {
        let sk = Curve25519.Signing.PrivateKey()
        let hex = try key("ed25519", "ed25519", hexEncode(sk.publicKey.rawRepresentation))
        let der =
            [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00] + sk.publicKey.rawRepresentation
        let pem = "-----BEGIN PUBLIC KEY-----\n\(Data(der).base64EncodedString())\n-----END PUBLIC KEY-----\n"
        let spelledAsPEM = try key("ed25519", "ed25519", pem)
        #expect(SignatureVerifier.material(of: spelledAsPEM) == nil)
        let sig = hexEncode(try sk.signature(for: data))
        #expect(throws: TUFError(.thresholdNotReached, "")) {
            try verify(hex, spelledAsPEM, [Signature(keyid: "k1", sig: sig), Signature(keyid: "k2", sig: sig)])
        }
    }

    /// On a case-insensitive file system `Root.json` is `root.json`: a delegated role with such a name could
    /// overwrite the client's trusted root or timestamp (white-box review finding 8).
    @Test(arguments: ["Root", "ROOT", "Timestamp", "sNaPsHoT", "Targets", "\u{17F}napshot", "root.", "timestamp "])
    func delegatedNamesThatFoldToTopLevelNamesAreRefused(_ name: String) throws {
        #expect(Delegations.isTopLevelName(name))
        let json = obj([
            "keys": obj([:]),
            "roles": .array([
                obj([
                    "name": .string(name), "keyids": .array([]), "threshold": .integer(1), "terminating": .bool(false),
                    "paths": .array([.string("*")]),
                ])
            ]),
        ])
        let targets = obj([
            "_type": .string("targets"), "spec_version": .string("1.0.31"), "version": .integer(1),
            "expires": .string("2030-01-01T00:00:00Z"), "targets": obj([:]), "delegations": json,
        ])
        #expect(throws: TUFError(.invalidMetadata, "")) {
            try Metadata<Targets>.parse(envelope(targets, [TestSigner()]))
        }
        // The control: the same delegation under an ordinary name parses.
        var fine = try need(targets.objectValue)
        var delegations = try need(json.objectValue)
        var role = try need(delegations["roles"]?.arrayValue?.first?.objectValue)
        role.set("name", .string("bins"))
        delegations.set("roles", .array([.object(role)]))
        fine.set("delegations", .object(delegations))
        _ = try Metadata<Targets>.parse(envelope(.object(fine), [TestSigner()]))
    }

    @Test(arguments: ["bins", "roots", "my-root", "timestamps"])
    func otherNamesAreFine(_ name: String) {
        #expect(!Delegations.isTopLevelName(name))
    }

    /// The ASCII shortcut decides as the Unicode folding does: every top-level name in random case with random
    /// trailing dots and spaces (and leading ones, which do not fold away), and random ASCII names of 1-12 bytes.
    @Test func theASCIIShortcutAgreesWithUnicodeFolding() {
        var generator = SystemRandomNumberGenerator()
        var names: [String] = []
        for role in Root.topLevelRoles {
            for _ in 0..<200 {
                var name = String(role.map { Bool.random(using: &generator) ? Character($0.uppercased()) : $0 })
                for _ in 0..<Int.random(in: 0...3, using: &generator) { name += Bool.random() ? "." : " " }
                if Int.random(in: 0..<8, using: &generator) == 0 { name = " " + name }
                names.append(name)
            }
        }
        let alphabet = Array("rootimesapgnRTOIMESAPGN. -_x0")
        for _ in 0..<2_000 {
            names.append(
                String((0..<Int.random(in: 1...12, using: &generator)).map { _ in alphabet.randomElement()! }))
        }
        var topLevel = 0
        for name in names {
            let folded = Delegations.foldsToTopLevelName(name)
            #expect(Delegations.isTopLevelName(name) == folded, "\(name.debugDescription)")
            if folded { topLevel += 1 }
        }
        #expect(topLevel > 600, "the generated names include top-level names")
    }

    /// A delegated role is checked where it lies when its file is read and built only when looked up, so the check
    /// must refuse exactly what the builder refuses: 3,000 random roles, most of them broken in one way (a field
    /// missing or of the wrong type, threshold 0, keyids repeated by bytes or only under Unicode equivalence, both
    /// `paths` and `path_hash_prefixes`), and the valid ones delegate the same paths either way.
    @Test func theInPlaceRoleCheckAgreesWithTheBuilder() throws {
        var generator = SystemRandomNumberGenerator()
        // "é" precomposed and decomposed, and "K" beside KELVIN SIGN: equal as `String`s, different bytes.
        let keyidChoices = ["aa", "bb", "cc", "\u{E9}", "e\u{301}", "K", "\u{212A}", "dd", "ee", "ff", "11", "22"]
        var accepted = 0
        var refused = 0
        for _ in 0..<3_000 {
            var role: [(String, JSONValue)] = [
                ("name", .string("role-\(Int.random(in: 0..<50, using: &generator))")),
                (
                    "keyids",
                    .array(
                        (0..<Int.random(in: 1...10, using: &generator)).map { _ in
                            .string(keyidChoices.randomElement(using: &generator)!)
                        })
                ),
                ("threshold", .integer(Int64.random(in: 0...2, using: &generator))),
                ("terminating", .bool(Bool.random(using: &generator))),
            ]
            switch Int.random(in: 0..<4, using: &generator) {
            case 0: role.append(("paths", .array([.string("dir/*"), .string("f?.txt")])))
            case 1: role.append(("path_hash_prefixes", .array([.string("0"), .string("8a"), .string("f")])))
            case 2:
                role.append(("paths", .array([.string("*")])))
                role.append(("path_hash_prefixes", .array([.string("0")])))
            default: break
            }
            switch Int.random(in: 0..<8, using: &generator) {
            case 0: role.remove(at: Int.random(in: 0..<role.count, using: &generator))
            case 1:
                let index = Int.random(in: 0..<role.count, using: &generator)
                role[index].1 = [.integer(7), .string("x"), .bool(true), .array([.integer(1)]), .null].randomElement(
                    using: &generator)!
            case 2: role.append(("custom", .string("kept")))
            default: break
            }
            var object = JSONObject()
            for (name, value) in role { object.set(name, value) }
            var text = String(decoding: JSONValue.object(object).serialized(sortingKeys: false), as: UTF8.self)
            // A keyid written escaped now and then ("\u0061a" is "aa"): the check compares unescaped bytes.
            if Bool.random(using: &generator), let range = text.range(of: #""aa""#) {
                text.replaceSubrange(range, with: #""\u0061a""#)
            }
            let document = try StrictJSON.tuf.parse(Array(text.utf8))
            let checked = try? DelegatedRole.Fields(document, document.root)
            let built = try? DelegatedRole(json: ObjectNode(document: document, element: document.root))
            #expect(
                (checked == nil) == (built == nil),
                "\(String(decoding: JSONValue.object(object).serialized(sortingKeys: false), as: UTF8.self))")
            guard let checked, let built else {
                refused += 1
                continue
            }
            accepted += 1
            #expect(checked.terminating == built.terminating)
            var digest: [UInt8]?
            for path in ["dir/a", "fa.txt", "other/x", "x", "dir/sub/a", "f.txt"] {
                #expect(
                    checked.isDelegated(document, targetPath: path, digest: &digest)
                        == built.isDelegated(targetPath: path))
                digest = nil
            }
        }
        #expect(accepted > 300 && refused > 300, "both kinds were generated (\(accepted) accepted, \(refused) refused)")
    }

    /// The roles list as a whole: a duplicate name or a top-level name anywhere refuses the file, and the lazy
    /// look-ups give what the built roles give.
    @Test func aDelegationsRolesListIsCheckedWholeAndReadLazily() throws {
        func role(_ name: String, _ prefixes: [String]) -> JSONValue {
            var o = JSONObject()
            o.set("name", .string(name))
            o.set("keyids", .array([.string("aa")]))
            o.set("threshold", .integer(1))
            o.set("terminating", .bool(name.hasSuffix("t")))
            o.set("path_hash_prefixes", .array(prefixes.map { .string($0) }))
            return .object(o)
        }
        func delegations(_ roles: [JSONValue]) throws -> Delegations {
            var o = JSONObject()
            o.set("keys", .object(JSONObject()))
            o.set("roles", .array(roles))
            return try Delegations(json: o)
        }
        let good = try delegations(
            (0..<16).map { role("bin-\(String($0, radix: 16))\($0 % 3 == 0 ? "t" : "")", [String($0, radix: 16)]) }
                + [role("catch-all", ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "a", "b", "c", "d", "e", "f"])])
        let built = try #require(good.roles)
        #expect(built.count == 17)
        #expect(good.delegatedRoleNames == built.map(\.name))
        for index in 0..<200 {
            let path = "target-\(index).bin"
            let expected = built.filter { $0.isDelegated(targetPath: path) }.map { "\($0.name) \($0.terminating)" }
            #expect(good.rolesFor(targetPath: path).map { "\($0.name) \($0.terminating)" } == expected)
            #expect(good.firstRole(for: path) == built.first { $0.isDelegated(targetPath: path) }?.name)
        }
        #expect(good.roleKeys(for: "bin-3t")?.keyids == ["aa"])
        #expect(good.roleKeys(for: "bin-3") == nil)
        for role in built {
            #expect(good.roleKeys(for: role.name)?.keyids == role.keyids)
            #expect(good.roleKeys(for: role.name)?.threshold == role.threshold)
        }
        #expect(try Delegations(json: try #require(good.jsonValue.objectValue)) == good)

        // Glob paths with a terminating role first; names equal only under Unicode equivalence are two roles
        // (python-tuf compares names as code points), each found by its own bytes.
        func pathRole(_ name: String, _ paths: [String], terminating: Bool, keyid: String) -> JSONValue {
            var o = JSONObject()
            o.set("name", .string(name))
            o.set("keyids", .array([.string(keyid)]))
            o.set("threshold", .integer(1))
            o.set("terminating", .bool(terminating))
            o.set("paths", .array(paths.map { .string($0) }))
            return .object(o)
        }
        let globs = try delegations([
            pathRole("firmware", ["fw/*.bin"], terminating: true, keyid: "aa"),
            pathRole("caf\u{E9}", ["fw/*", "docs/?.txt"], terminating: false, keyid: "bb"),
            pathRole("cafe\u{301}", ["*"], terminating: false, keyid: "cc"),
        ])
        #expect(globs.rolesFor(targetPath: "fw/a.bin").map(\.name) == ["firmware", "caf\u{E9}"])
        #expect(globs.rolesFor(targetPath: "fw/a.bin").map(\.terminating) == [true, false])
        #expect(globs.rolesFor(targetPath: "docs/a.txt").map(\.name) == ["caf\u{E9}"])
        #expect(globs.rolesFor(targetPath: "x").map { Array($0.name.utf8) } == [Array("cafe\u{301}".utf8)])
        #expect(globs.roleKeys(for: "caf\u{E9}")?.keyids == ["bb"])
        #expect(globs.roleKeys(for: "cafe\u{301}")?.keyids == ["cc"])
        #expect(throws: TUFError.self) { try delegations([role("a", ["0"]), role("\u{17F}napshot", ["1"])]) }
        #expect(throws: TUFError.self) { try delegations([role("a", ["0"]), role("b", ["1"]), role("a", ["2"])]) }
        #expect(throws: TUFError.self) { try delegations([role("a", ["0"]), role("Snapshot.", ["1"])]) }
        #expect(throws: TUFError.self) { try delegations([role("a", ["0"]), .string("not a role")]) }
    }
}
