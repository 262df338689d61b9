import Crypto
import Foundation
import PKCS11
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite struct PKCS11URITests {
    @Test func parsesTheRFC7512Form() throws {
        let uri = try PKCS11URI(
            "pkcs11:token=release;object=targets-1;id=%01%a2?module-path=/usr/lib/softhsm/libsofthsm2.so"
                + "&pin-source=file:/etc/bulwark/pin")
        #expect(uri.token == "release")
        #expect(uri.object == "targets-1")
        #expect(uri.id == [0x01, 0xA2])
        #expect(uri.modulePath == "/usr/lib/softhsm/libsofthsm2.so")
        #expect(uri.pinFile == "/etc/bulwark/pin")
        #expect(try PKCS11URI(uri.description) == uri, "the canonical text parses back to the same URI")
    }

    @Test func decodesPercentEncodedValues() throws {
        let uri = try PKCS11URI("pkcs11:token=My%20Token;object=a%3Bb?pin-source=file:///run/pin")
        #expect(uri.token == "My Token")
        #expect(uri.object == "a;b")
        #expect(uri.pinFile == "/run/pin")
        #expect(uri.description.contains("token=My%20Token"))
        #expect(uri.description.contains("object=a%3Bb"))
    }

    @Test(arguments: [
        ("token=x;object=y", "starts with pkcs11:"),
        ("pkcs11:token=a;token=b", "appears twice"),
        ("pkcs11:token=a?pin-value=1234", "pin-value is refused"),
        ("pkcs11:colour=blue", "unknown path attribute"),
        ("pkcs11:token=a?fun=1", "unknown query attribute"),
        ("pkcs11:token=%zz", "bad percent-encoding"),
        ("pkcs11:token", "without a value"),
        ("pkcs11:token=a?pin-source=relative/pin", "absolute path"),
        ("pkcs11:type=door", "type names a signing key"),
        ("pkcs11:token=", "non-empty"),
        ("pkcs11:token=a%00b", "control characters"),
        ("pkcs11:token=a?module-name=softhsm2", "unknown query attribute"),
        ("pkcs11:token=a;slot-description=x", "unknown path attribute"),
        ("pkcs11:token=a?module-path=libsofthsm2.so", "absolute path"),
        ("pkcs11:token=a;type=public", "type names a signing key"),
    ])
    func refusesMalformedURIs(text: String, reason: String) {
        #expect {
            try PKCS11URI(text)
        } throws: { error in
            let message = "\(error)"
            return message.contains(reason) && !message.contains("1234")
        }
    }
}

/// On SoftHSM2, which scripts/install-deps installs: without it these fail rather than skip.
@Suite struct SoftHSMTests {
    @Test(arguments: [PKCS11Curve.p256, .p384])
    func aKeyMadeOnTheTokenIsSensitiveNonExtractableAndSigns(curve: PKCS11Curve) throws {
        let token = try SoftHSM.token(curve.rawValue)
        let key = try PKCS11PrivateKey.generate(PKCS11URI(try token.uri("signing-\(curve)")), curve: curve)
        let attributes = try key.attributes()
        #expect(attributes.sensitive)
        #expect(!attributes.extractable)
        #expect(attributes.alwaysSensitive)
        #expect(attributes.neverExtractable)

        let message = Array("the canonical JSON of signed".utf8)
        let signature = try key.signatureDER(for: message)
        switch curve {
        case .p256:
            let publicKey = try P256.Signing.PublicKey(x963Representation: key.publicKeyX963)
            let parsed = try P256.Signing.ECDSASignature(derRepresentation: signature)
            #expect(publicKey.isValidSignature(parsed, for: message))
            #expect(!publicKey.isValidSignature(parsed, for: message + [0]), "a changed message fails")
        case .p384:
            let publicKey = try P384.Signing.PublicKey(x963Representation: key.publicKeyX963)
            let parsed = try P384.Signing.ECDSASignature(derRepresentation: signature)
            #expect(publicKey.isValidSignature(parsed, for: message))
            #expect(!publicKey.isValidSignature(parsed, for: message + [0]), "a changed message fails")
        }

        // Opened again by its URI (another use of the same token): the same public key.
        let reopened = try PKCS11PrivateKey.open(try token.uri("signing-\(curve)"))
        #expect(reopened.publicKeyX963 == key.publicKeyX963)
        #expect(throws: PKCS11Error.self, "a label is used once") {
            try PKCS11PrivateKey.generate(PKCS11URI(try token.uri("signing-\(curve)")), curve: curve)
        }
    }

    @Test func badInputGivesOneClearLineWithoutThePIN() throws {
        let token = try SoftHSM.token("errors")
        _ = try PKCS11PrivateKey.generate(PKCS11URI(try token.uri("k")), curve: .p256)

        // The wrong PIN (a second token, so the first one's login is not reused).
        let other = try SoftHSM.token("errors-wrong")
        let wrongPIN = token.directory + "/wrong-pin-\(other.label)"
        _ = FileManager.default.createFile(
            atPath: wrongPIN, contents: Data("999999\n".utf8), attributes: [.posixPermissions: 0o600])
        let wrong = "pkcs11:token=\(other.label);object=k?module-path=\(SoftHSM.module)&pin-source=file:\(wrongPIN)"
        let login = try #require(throws: PKCS11Error.self) { try PKCS11PrivateKey.open(wrong) }
        #expect(login.code == .login)
        #expect(login.description.contains("wrong") && !login.description.contains("999999"))
        #expect(!login.description.contains("\n"))

        // No such object.
        let missing = try #require(throws: PKCS11Error.self) { try PKCS11PrivateKey.open(try token.uri("nope")) }
        #expect(missing.code == .object)
        #expect(missing.description.contains("'nope'"))

        // No such module.
        let module = try #require(throws: PKCS11Error.self) {
            try PKCS11PrivateKey.open(try token.uri("k", module: "/nonexistent/libp11.so"))
        }
        #expect(module.code == .module)
        #expect(module.description.contains("/nonexistent/libp11.so"))

        // No such token.
        let absent = try #require(throws: PKCS11Error.self) {
            try PKCS11PrivateKey.open("pkcs11:token=absent;object=k?module-path=\(SoftHSM.module)")
        }
        #expect(absent.code == .token)

        // A PIN file others can read.
        let open = token.directory + "/open-pin"
        _ = FileManager.default.createFile(
            atPath: open, contents: Data("4321\n".utf8), attributes: [.posixPermissions: 0o644])
        let third = try SoftHSM.token("errors-open")
        // The same wrong PIN is not tried again (a token locks after a few): refused without a login.
        let again = try #require(throws: PKCS11Error.self) { try PKCS11PrivateKey.open(wrong) }
        #expect(again.description.contains("not tried again"), "\(again)")

        let exposed = try #require(throws: PKCS11Error.self) {
            try PKCS11PrivateKey.open(
                "pkcs11:token=\(third.label);object=k?module-path=\(SoftHSM.module)&pin-source=file:\(open)")
        }
        #expect(exposed.code == .login)
        #expect(exposed.description.contains("chmod 600"))
    }

    @Test func anUnpluggedTokenFailsLoudlyAndWorksAgainWhenItIsBack() throws {
        guard let fault = SoftHSMTests.faultModule else {
            Issue.record("the fault-injecting module libBulwarkPKCS11Fault.so is not built")
            return
        }
        let token = try SoftHSM.token("unplug")
        let marker = token.directory + "/unplugged-\(token.label)"
        setenv("BULWARK_P11_FAULT_MODULE", SoftHSM.module, 1)
        setenv("BULWARK_P11_FAULT_FILE", marker, 1)
        _ = try PKCS11PrivateKey.generate(PKCS11URI(try token.uri("k")), curve: .p256)
        let key = try PKCS11PrivateKey.open(try token.uri("k", module: fault))
        _ = try key.signatureDER(for: [1, 2, 3])

        _ = FileManager.default.createFile(atPath: marker, contents: Data())
        let error = try #require(throws: PKCS11Error.self) { try key.signatureDER(for: [1, 2, 3]) }
        #expect(error.description.contains("CKR_DEVICE_REMOVED") || error.description.contains("not present"))
        #expect(throws: PKCS11Error.self) { try key.signatureDER(for: [4]) }

        try FileManager.default.removeItem(atPath: marker)
        let signature = try key.signatureDER(for: [1, 2, 3])
        let publicKey = try P256.Signing.PublicKey(x963Representation: key.publicKeyX963)
        #expect(
            publicKey.isValidSignature(try P256.Signing.ECDSASignature(derRepresentation: signature), for: [1, 2, 3]))
    }

    /// The test-only module next to the bulwark binary (`swift build` makes it).
    static var faultModule: String? {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let directory =
            ProcessInfo.processInfo.environment["BULWARK_BIN"].map {
                URL(fileURLWithPath: $0).deletingLastPathComponent().path
            } ?? root.appendingPathComponent(".build/debug").path
        let path = directory + "/libBulwarkPKCS11Fault.so"
        return FileManager.default.fileExists(atPath: path) ? path : nil
    }
}
