import Crypto
import Foundation
import FuzzSupport
import Gateway

/// RFC 9421 signature fields as the gateway checks them: `MessageSignatureProfile.verify`, whose first step is the
/// RFC 9530 `Content-Digest` check (`checkDigest`), then the RFC 8941 dictionaries of `Signature-Input` and
/// `Signature`. Input: method, path, Signature-Input, Signature and Content-Digest separated by "\n" (none can hold
/// a newline in HTTP), then the body (the rest). A field that is absent (too few newlines) is a missing header.
///
/// The device key is a fixed test key generated at start, so seeds signed with it verify. Invariants once a request
/// verifies: the result is deterministic, another key refuses it, another body fails the digest, another method or
/// path fails the signature, and the returned nonce and time obey the profile.
let key = try! P256.Signing.PrivateKey(rawRepresentation: FuzzSupport.testBytes("signature-device-key"))
let otherKey = try! P256.Signing.PrivateKey(rawRepresentation: FuzzSupport.testBytes("signature-other-key"))
let now: Int64 = 1_800_000_000
let profile = MessageSignatureProfile()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = FuzzSupport.bytes(data, size)
    let parts = FuzzSupport.fields(input[...], separator: UInt8(ascii: "\n"), maxFields: 6)
    func text(_ index: Int) -> String? { index < parts.count ? String(decoding: parts[index], as: UTF8.self) : nil }
    let body = parts.count == 6 ? Array(parts[5]) : []
    let request = SignedRequest(
        method: text(0) ?? "POST", path: text(1) ?? "/", signatureInput: text(2), signature: text(3),
        contentDigest: text(4))
    let verified: VerifiedSignature
    do { verified = try profile.verify(request, body: body, key: key.publicKey, now: now) } catch { return 0 }

    FuzzSupport.trace("verified")
    guard (try? profile.verify(request, body: body, key: key.publicKey, now: now)) == verified else {
        FuzzSupport.violated("verification is not deterministic")
    }
    guard abs(verified.created - now) <= profile.maxSkewSeconds else {
        FuzzSupport.violated("stale signature accepted")
    }
    guard (16...128).contains(verified.nonce.utf8.count) else { FuzzSupport.violated("nonce length outside 16-128") }
    func refused(_ request: SignedRequest, _ body: [UInt8], _ key: P256.Signing.PublicKey) -> SignatureFailure.Kind? {
        do {
            _ = try profile.verify(request, body: body, key: key, now: now)
            return nil
        } catch { return error.kind }
    }
    guard refused(request, body, otherKey.publicKey) == .badSignature else {
        FuzzSupport.violated("a signature verified under a second, unrelated key")
    }
    guard refused(request, body + [0x20], key.publicKey) == .digestMismatch else {
        FuzzSupport.violated("another body passed the content-digest check")
    }
    var otherMethod = request
    otherMethod.method += "X"
    var otherPath = request
    otherPath.path += "x"
    guard refused(otherMethod, body, key.publicKey) != nil, refused(otherPath, body, key.publicKey) != nil else {
        FuzzSupport.violated("the signature does not cover the method and path")
    }
    return 0
}

@_cdecl("LLVMFuzzerInitialize")
public func initialize(_ argc: FuzzArgc, _ argv: FuzzArgv) -> CInt {
    FuzzSupport.writeSeedsIfRequested {
        var seeds: [[UInt8]] = []
        func seed(_ method: String, _ path: String, _ fields: [String: String], _ body: [UInt8]) {
            let line = [
                method, path, fields["Signature-Input"] ?? "", fields["Signature"] ?? "",
                fields["Content-Digest"] ?? "",
            ].joined(separator: "\n")
            seeds.append(Array(line.utf8) + [UInt8(ascii: "\n")] + body)
        }
        let signer = MessageSigner(key: key)
        let cases: [(String, String, [UInt8])] = [
            ("POST", "/v1/devices/dev-1/telemetry", Array(#"{"t":21.5}"#.utf8)),
            ("PUT", "/v1/devices/dev-1/state", []), ("GET", "", Array("x\ny\n".utf8)),
        ]
        for (i, (method, path, body)) in cases.enumerated() {
            let headers = try! signer.sign(
                method: method, path: path, body: body, created: now - Int64(i) * 30,
                nonce: "bm9uY2Utbm9uY2Utbm9uY2U\(i)")
            var fields = Dictionary(uniqueKeysWithValues: headers.map { ($0.name, $0.value) })
            seed(method, path, fields, body)
            // Near misses: the digest with sha-512 too, unknown algorithms, parameters reordered or extra.
            let sha512 = ":" + Data64.encode(Array(SHA512.hash(data: body))) + ":"
            fields["Content-Digest"]! += ", sha-512=\(sha512), md5=:AAAA:"
            seed(method, path, fields, body)
            fields["Signature-Input"] = fields["Signature-Input"]!.replacingFirst(
                ";alg=", with: ";keyid=\"k1\";expires=\(now + 5);alg=")
            seed(method, path, fields, body)
        }
        seed(
            "POST", "/",
            [
                "Signature-Input": #"sig=("@method" "@path" "content-digest");created=1;nonce="x""#,
                "Signature": "sig=:AAAA:", "Content-Digest": "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:",
            ], [])
        return seeds
    }
    return 0
}

/// Base64 without Foundation.
enum Data64 {
    static func encode(_ bytes: [UInt8]) -> String {
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
        var out: [UInt8] = []
        var i = 0
        while i < bytes.count {
            let chunk = Array(bytes[i..<min(i + 3, bytes.count)])
            let n =
                (UInt32(chunk[0]) << 16) | (UInt32(chunk.count > 1 ? chunk[1] : 0) << 8)
                | UInt32(chunk.count > 2 ? chunk[2] : 0)
            for j in 0..<4 {
                out.append(j <= chunk.count ? alphabet[Int((n >> UInt32(18 - 6 * j)) & 63)] : UInt8(ascii: "="))
            }
            i += 3
        }
        return String(decoding: out, as: UTF8.self)
    }
}

extension String {
    func replacingFirst(_ target: String, with replacement: String) -> String {
        guard let range = range(of: target) else { return self }
        return replacingCharacters(in: range, with: replacement)
    }
}
