import Crypto
import Foundation
import JSON
import TUF
import TUFRepository
import Testing
import _CryptoExtras

/// `crypto.profile: fips` in TUF: only FIPS 186-5 keys sign (`bulwark tuf`) and count towards thresholds (the client).
/// A repository whose roles are signed by a 2048-bit RSA-PSS key verifies under the standard profile and is refused,
/// with the reason, under the FIPS one, on both sides.
@Suite struct KeyPolicyTests {
    static func rsa2048(_ name: String) throws -> FileSigner {
        try FileSigner(pem: try _RSA.Signing.PrivateKey(keySize: .bits2048).pkcs8PEMRepresentation, name: name)
    }

    @Test func fipsAllowsFIPS186KeysOnly() throws {
        #expect(KeyPolicy.fips.allows(try FileSigner.generate(name: "p", type: .ecdsaP256).publicKey))
        #expect(KeyPolicy.fips.allows(try FileSigner.generate(name: "e", type: .ed25519).publicKey))
        #expect(KeyPolicy.fips.allows(try FileSigner.generate(name: "r", type: .rsaPSS).publicKey), "RSA-PSS 3072")
        #expect(!KeyPolicy.fips.allows(try Self.rsa2048("short").publicKey), "RSA-PSS 2048 is below 3072 bits")
        var o = JSONObject()
        var keyval = JSONObject()
        keyval.set("public", .string(try _RSA.Signing.PrivateKey(keySize: .bits3072).publicKey.pemRepresentation))
        o.set("keytype", .string("rsa"))
        o.set("scheme", .string("rsa-pkcs1v15-sha256"))
        o.set("keyval", .object(keyval))
        #expect(!KeyPolicy.fips.allows(try Key(json: o)), "PKCS#1 v1.5 is not in the profile")
        #expect(KeyPolicy.any.allows(try Key(json: o)))
    }

    @Test func aRepositorySignedByA2048BitKeyIsRefusedUnderFIPSOnBothSides() async throws {
        let dir = makeTempDirectory("fips")
        let short = try Self.rsa2048("short")
        let spec = RoleKeySpec(keys: [short.publicKey])
        var editor = try FileRepository(directory: dir).create(
            root: spec, timestamp: spec, snapshot: spec, targets: spec)
        try await FileRepository(directory: dir).publish(&editor, keyring: Keyring([short]))
        let root = try #require(FileManager.default.contents(atPath: dir + "/metadata/1.root.json"))
        let now = Timestamp8601(secondsSinceEpoch: Int64(Date().timeIntervalSince1970))

        // The client: standard accepts it, fips refuses and says why.
        _ = try TrustedMetadataSet(rootBytes: Array(root), referenceTime: now)
        let refused = try #require(throws: TUFError.self) {
            try TrustedMetadataSet(rootBytes: Array(root), referenceTime: now, keyPolicy: .fips)
        }
        #expect(refused.reason.contains("outside the FIPS profile"), "\(refused.reason)")

        // The repository tools: a fips editor refuses to sign or publish with it, or on top of it.
        var fips = try FileRepository(directory: dir).open()
        fips.keyPolicy = .fips
        try fips.addTarget(path: "a.txt", contents: Array("a".utf8))
        let signing = try await #require(throws: RepositoryError.self) {
            try await FileRepository(directory: dir).publish(&fips, keyring: Keyring([short]))
        }
        #expect(signing.reason.contains("outside the FIPS profile"))
        let good = try FileSigner.generate(name: "good", type: .ecdsaP256)
        let listed = try await #require(throws: RepositoryError.self) {
            try await FileRepository(directory: dir).publish(&fips, keyring: Keyring([good]))
        }
        #expect(listed.reason.contains("lists key"), "\(listed.reason)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/metadata/2.targets.json"))
    }
}
