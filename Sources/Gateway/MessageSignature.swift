public import Crypto

/// The parts of an HTTP request that RFC 9421 HTTP Message Signatures cover in Bulwark's profile.
///
/// Its public initializer calls the memberwise one, `session` stored first (and a constant, so that the memberwise
/// one has no default for it) so that their labels differ, as `InboundMessage`'s does: one is made for every signed
/// request, and an initializer assigning `var`s one by one built it in a temporary and copied it out.
public struct SignedRequest: Sendable {
    /// The HMAC key the hub issued on the connection this request arrived on, if any: what an `hmac-sha256`
    /// signature is checked with. Never chosen by the request (its `keyid` must name it).
    public let session: SessionKey?
    public var method: String
    public var path: String
    public var signatureInput: String?
    public var signature: String?
    public var contentDigest: String?
    /// The request's `Content-Type` and `Bulwark-Message-Type` field values (all lines of each, joined with ", " as
    /// RFC 9421 §2.1 combines them), or nil when the request has none. Whichever is present must be signed.
    public var contentType: String?
    public var messageType: String?
}

extension SignedRequest {
    public init(
        method: String, path: String, signatureInput: String?, signature: String?, contentDigest: String?,
        contentType: String? = nil, messageType: String? = nil, session: SessionKey? = nil
    ) {
        self.init(
            session: session, method: method, path: path, signatureInput: signatureInput, signature: signature,
            contentDigest: contentDigest, contentType: contentType, messageType: messageType)
    }
}

/// A per-connection HMAC key (RFC 9421 §3.3.3, `hmac-sha256`): the hub issues it to a device, over the device's
/// mutual-TLS connection, in answer to an ECDSA-signed request (`POST /v1/device/session`), and checks `hmac-sha256`
/// signatures of later requests on that connection with it. One ECDSA verification then covers a keep-alive
/// connection. It lives only in the hub's memory and ends with the connection or at `expiresAt`; it is never
/// valid on another connection, so a copy of it (or of a signed request) is no use without the device's TLS key.
public struct SessionKey: Sendable {
    /// The `keyid` requests name it by (random, not secret).
    public let id: String
    public let key: SymmetricKey
    /// Unix seconds.
    public let expiresAt: Int64
    /// HMAC's state after the key's inner and outer pads (RFC 2104 §2), computed once: each message copies it
    /// instead of deriving the pads from the key again.
    let keyed: HMAC<SHA256>

    public init(id: String, key: SymmetricKey, expiresAt: Int64) {
        self.id = id
        self.key = key
        self.expiresAt = expiresAt
        self.keyed = HMAC<SHA256>(key: key)
    }

    /// HMAC-SHA256 of `message` with this key.
    func authenticationCode(_ message: [UInt8]) -> HMAC<SHA256>.MAC {
        var mac = keyed
        mac.update(data: message)
        return mac.finalize()
    }

    /// A fresh key (256 bits from the system's CSPRNG through swift-crypto) and id (128 bits).
    public static func generate(now: Int64, lifetimeSeconds: Int64) -> SessionKey {
        SessionKey(
            id: SymmetricKey(size: .bits128).withUnsafeBytes { base64Encode($0) }, key: SymmetricKey(size: .bits256),
            expiresAt: now + lifetimeSeconds)
    }

    /// The key as sent to the device, once (base64).
    public var encodedKey: String { key.withUnsafeBytes { base64Encode($0) } }
}

/// A signature that verified: what the replay check needs.
public struct VerifiedSignature: Sendable, Equatable {
    public let created: Int64
    public let nonce: String
    /// Signed with the connection's session key (`hmac-sha256`) rather than the certificate's.
    public var session = false
}

/// Why a signed request was refused (for the log and audit record; the client sees one generic problem).
public struct SignatureFailure: Error, Equatable, CustomStringConvertible {
    public enum Kind: String, Sendable {
        case missing = "no signature"
        case malformed = "malformed signature fields"
        case unsupported = "unsupported signature parameters or components"
        case digestMismatch = "content-digest does not match the body"
        case stale = "created outside the allowed clock skew"
        case badSignature = "signature does not verify with the certificate's key"
        case noSession = "hmac-sha256 without this connection's session key"
    }
    public let kind: Kind
    public let detail: String
    init(_ kind: Kind, _ detail: String = "") {
        self.kind = kind
        self.detail = detail
    }
    public var description: String { detail.isEmpty ? kind.rawValue : "\(kind.rawValue): \(detail)" }
}

/// Bulwark's profile of RFC 9421 (HTTP Message Signatures) with RFC 9530 `Content-Digest`.
///
/// Every device request carries one signature (any label) whose covered components are exactly `"@method"`,
/// `"@path"` and `"content-digest"` (§2.2.1, §2.2.6, §2.1), plus `"content-type"` and `"bulwark-message-type"`
/// whenever the request carries those fields (§2.1: a field that decides how the hub stores the message must not be
/// changeable by whoever holds a captured request), with the parameters `created` (required, within
/// `maxSkew` of the hub's clock), `nonce` (required, 16–128 characters of `[A-Za-z0-9+/=_-]`), and optionally
/// `keyid`, `alg` and `expires`. The signature base is built as §2.5 describes. Two algorithms:
/// - `ecdsa-p256-sha256` (§3.3.4, the default when `alg` is absent): ECDSA P-256 with SHA-256 in the raw `r ‖ s` form,
///   always with the key of the client certificate (`keyid` never chooses it);
/// - `hmac-sha256` (§3.3.3): HMAC-SHA256 with the `SessionKey` the hub issued on this very connection, which `keyid`
///   must name and `alg` must state; compared in constant time. Everything else (components, `created`, `nonce`,
///   the nonce ledger) is the same, so a replayed request is refused the same way.
public struct MessageSignatureProfile: Sendable {
    public static let algorithm = "ecdsa-p256-sha256"
    public static let hmacAlgorithm = "hmac-sha256"
    static let components = ["@method", "@path", "content-digest"]
    static let contentTypeComponent = "content-type"
    static let messageTypeComponent = "bulwark-message-type"

    /// The four possible sets (without or with each optional field), built once: each request picks one.
    private static let componentSets = [
        components, components + [contentTypeComponent], components + [messageTypeComponent],
        components + [contentTypeComponent, messageTypeComponent],
    ]
    /// Each set as the inner list of `Signature-Input` (§4.1): `("@method" "@path" …)`.
    private static let componentLists = componentSets.map { "(" + $0.map { "\"\($0)\"" }.joined(separator: " ") + ")" }

    private static func variant(contentType: String?, messageType: String?) -> Int {
        (contentType == nil ? 0 : 1) + (messageType == nil ? 0 : 2)
    }

    /// The covered components a request with these fields must sign (in the order the signer lists them).
    static func requiredComponents(contentType: String?, messageType: String?) -> [String] {
        componentSets[variant(contentType: contentType, messageType: messageType)]
    }

    /// The same, as the signer writes them in `Signature-Input`.
    static func componentList(contentType: String?, messageType: String?) -> String {
        componentLists[variant(contentType: contentType, messageType: messageType)]
    }
    public var maxSkewSeconds: Int64

    public init(maxSkewSeconds: Int64 = 60) { self.maxSkewSeconds = maxSkewSeconds }

    /// Verifies the digest of `body` and the signature of `request` with `key` at `now` (Unix seconds).
    public func verify(
        _ request: SignedRequest, body: [UInt8], key: P256.Signing.PublicKey, now: Int64
    ) throws(SignatureFailure) -> VerifiedSignature {
        guard let inputField = request.signatureInput, let signatureField = request.signature,
            let digestField = request.contentDigest
        else { throw SignatureFailure(.missing) }
        try Self.checkDigest(digestField, body: body)

        // §4.1 Signature-Input and §4.2 Signature are structured dictionaries (RFC 9651 §3.2).
        let inputs: [(key: String, value: StructuredField.Member)]
        let signatures: [(key: String, value: StructuredField.Member)]
        do {
            inputs = try StructuredField.dictionary(inputField)
            signatures = try StructuredField.dictionary(signatureField)
        } catch {
            throw SignatureFailure(.malformed, "not structured dictionaries")
        }
        guard inputs.count == 1, signatures.count == 1 else {
            throw SignatureFailure(.unsupported, "exactly one signature expected")
        }
        let label = inputs[0].key
        guard case .innerList(let items, let inputParameters) = inputs[0].value, signatures[0].key == label,
            case .item(let signatureItem) = signatures[0].value,
            case .byteSequence(let encoded) = signatureItem.value,
            let signatureBytes = base64Decode(encoded)
        else { throw SignatureFailure(.malformed, "signature label or value") }

        var covered: [String] = []
        for item in items {
            guard case .string(let name) = item.value, item.parameters.isEmpty else {
                throw SignatureFailure(.unsupported, "component identifiers must be plain strings")
            }
            covered.append(name)
        }
        let required = Self.requiredComponents(contentType: request.contentType, messageType: request.messageType)
        // The same components in any order: as many, and each required one present (the required are distinct).
        guard covered.count == required.count, required.allSatisfy(covered.contains) else {
            throw SignatureFailure(.unsupported, "covered components must be \(required.joined(separator: ", "))")
        }

        var created: Int64?
        var nonce: String?
        var expires: Int64?
        var keyid: String?
        var hmac = false
        var parameters = ""
        for (name, value) in inputParameters {
            switch (name, value) {
            case ("created", .integer(let value)):
                created = value
                parameters += ";created=\(value)"
            case ("expires", .integer(let value)):
                expires = value
                parameters += ";expires=\(value)"
            case ("nonce", .string(let value)) where Self.isSafeToken(value):
                nonce = value
                parameters += ";nonce=\"\(value)\""
            case ("keyid", .string(let value)) where Self.isSafeToken(value, minimum: 1):
                keyid = value
                parameters += ";keyid=\"\(value)\""
            case ("alg", .string(let value)) where value == Self.algorithm || value == Self.hmacAlgorithm:
                hmac = value == Self.hmacAlgorithm
                parameters += ";alg=\"\(value)\""
            default:
                throw SignatureFailure(.unsupported, "parameter \(Self.printable(name))")
            }
        }
        guard let created, let nonce else { throw SignatureFailure(.unsupported, "created and nonce are required") }
        guard abs(now - created) <= maxSkewSeconds else {
            throw SignatureFailure(.stale, "created \(created), now \(now)")
        }
        if let expires, expires < now { throw SignatureFailure(.stale, "expired at \(expires)") }

        let base = Self.signatureBase(
            covered: covered, parameters: parameters, method: request.method, path: request.path,
            contentDigest: digestField, contentType: request.contentType, messageType: request.messageType)
        if hmac {
            guard let session = request.session, let keyid, keyid == session.id else {
                throw SignatureFailure(.noSession, "keyid \(Self.printable(keyid ?? ""))")
            }
            guard now < session.expiresAt else { throw SignatureFailure(.stale, "session key expired") }
            // `==` between a MAC and bytes is swift-crypto's constant-time comparison (`safeCompare`).
            guard session.authenticationCode(base) == signatureBytes else {
                throw SignatureFailure(.badSignature, "hmac-sha256")
            }
        } else {
            guard let signature = try? P256.Signing.ECDSASignature(rawRepresentation: signatureBytes),
                key.isValidSignature(signature, for: SHA256.hash(data: base))
            else { throw SignatureFailure(.badSignature) }
        }
        return VerifiedSignature(created: created, nonce: nonce, session: hmac)
    }

    /// RFC 9421 §2.5: one line per covered component in the order listed, then `"@signature-params"`. Written as
    /// bytes into one buffer (it is built twice per request: by the signer and by the hub).
    static func signatureBase(
        covered: [String], parameters: String, method: String, path: String, contentDigest: String,
        contentType: String?, messageType: String?
    ) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(
            256 + path.utf8.count + contentDigest.utf8.count + parameters.utf8.count + (contentType?.utf8.count ?? 0)
                + (messageType?.utf8.count ?? 0))
        func line(_ name: String, _ value: Substring.UTF8View) {
            out.append(UInt8(ascii: "\""))
            out.append(contentsOf: name.utf8)
            out.append(contentsOf: [UInt8(ascii: "\""), UInt8(ascii: ":"), 0x20])
            out.append(contentsOf: value)
            out.append(0x0A)
        }
        for name in covered {
            switch name {
            case "@method": line(name, Substring(method).utf8)
            case "@path": line(name, Substring(path.isEmpty ? "/" : path).utf8)
            case contentTypeComponent: line(name, trimmed(contentType ?? ""))
            case messageTypeComponent: line(name, trimmed(messageType ?? ""))
            default: line("content-digest", trimmed(contentDigest))
            }
        }
        out.append(contentsOf: #""@signature-params": ("#.utf8)
        for (i, name) in covered.enumerated() {
            if i > 0 { out.append(0x20) }
            out.append(UInt8(ascii: "\""))
            out.append(contentsOf: name.utf8)
            out.append(UInt8(ascii: "\""))
        }
        out.append(UInt8(ascii: ")"))
        out.append(contentsOf: parameters.utf8)
        return out
    }

    /// A field value without leading and trailing spaces and tabs (RFC 9421 §2.1), as a view: nothing is copied.
    static func trimmed(_ text: String) -> Substring.UTF8View {
        var view = Substring(text).utf8
        while let first = view.first, first == 0x20 || first == 0x09 { view = view.dropFirst() }
        while let last = view.last, last == 0x20 || last == 0x09 { view = view.dropLast() }
        return view
    }

    /// RFC 9530 §2: a dictionary of algorithm → digest. `sha-256` and `sha-512` are checked; at least one must be
    /// present, and every one present must match.
    static func checkDigest(_ field: String, body: [UInt8]) throws(SignatureFailure) {
        let digests: [(key: String, value: StructuredField.Member)]
        do { digests = try StructuredField.dictionary(field) } catch {
            throw SignatureFailure(.malformed, "content-digest")
        }
        var checked = 0
        for (algorithm, value) in digests {
            guard case .item(let item) = value, case .byteSequence(let encoded) = item.value,
                let expected = base64Decode(encoded)
            else { throw SignatureFailure(.malformed, "content-digest value") }
            let actual: [UInt8]
            switch algorithm {
            case "sha-256": actual = Array(SHA256.hash(data: body))
            case "sha-512": actual = Array(SHA512.hash(data: body))
            default: continue  // §2: unknown algorithms are ignored
            }
            // Digests are public values, but a constant-time comparison costs nothing here.
            guard actual.count == expected.count,
                zip(actual, expected).reduce(UInt8(0), { $0 | ($1.0 ^ $1.1) }) == 0
            else { throw SignatureFailure(.digestMismatch) }
            checked += 1
        }
        guard checked > 0 else { throw SignatureFailure(.unsupported, "no sha-256 or sha-512 digest") }
    }

    static func isSafeToken(_ text: String, minimum: Int = 16) -> Bool {
        (minimum...128).contains(text.utf8.count)
            && text.utf8.allSatisfy {
                switch $0 {
                case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
                    UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "+"), UInt8(ascii: "/"), UInt8(ascii: "="),
                    UInt8(ascii: "_"), UInt8(ascii: "-"):
                    true
                default: false
                }
            }
    }

    /// ASCII-printable and short: safe to put attacker-chosen text into a log line or an audit record.
    public static func printable(_ text: String, limit: Int = 32) -> String {
        String(text.unicodeScalars.prefix(limit).map { $0.isASCII && $0.value >= 0x20 ? Character($0) : "?" })
    }
}

/// Signing was asked of a session key past its `expiresAt`.
public struct SessionKeyExpired: Error, Equatable {}

/// The device side of the profile: signs a request with the device's certificate key, or with the session key the
/// hub issued on the connection (`hmac-sha256`).
public struct MessageSigner: Sendable {
    enum Algorithm: Sendable {
        case ecdsa(P256.Signing.PrivateKey)
        case hmac(SessionKey)
    }
    let algorithm: Algorithm
    public let label: String

    public init(key: P256.Signing.PrivateKey, label: String = "bulwark") {
        algorithm = .ecdsa(key)
        self.label = label
    }

    /// Signs with a session key: only on the connection the hub issued it on.
    public init(session: SessionKey, label: String = "bulwark") {
        algorithm = .hmac(session)
        self.label = label
    }

    /// 16 bytes from the system's CSPRNG (the standard library's generator: getrandom(2) on Linux, falling back to
    /// /dev/urandom where the call is missing; every platform the agent builds for, Musl included), in base64: a
    /// request's nonce. A symmetric key from swift-crypto cost a zeroed, reference-counted allocation per request.
    static func randomNonce() -> String {
        var generator = SystemRandomNumberGenerator()
        let bytes = (generator.next() as UInt64, generator.next() as UInt64)
        return withUnsafeBytes(of: bytes) { base64Encode($0) }
    }

    /// The `Content-Digest`, `Signature-Input` and `Signature` header fields for one request. `nonce` defaults to
    /// 16 random bytes in base64 (`randomNonce`). `contentType` and `messageType`
    /// are the values of the request's `Content-Type` and `Bulwark-Message-Type` fields, which the signature must
    /// cover whenever the request carries them.
    public func sign(
        method: String, path: String, body: [UInt8], created: Int64, nonce: String? = nil,
        contentType: String? = nil, messageType: String? = nil
    ) throws -> [(name: String, value: String)] {
        // The hub counts a signature with an expired session key as an offence: ask for a new key instead.
        if case .hmac(let session) = algorithm, created >= session.expiresAt { throw SessionKeyExpired() }
        let nonce = nonce ?? Self.randomNonce()
        let digest = "sha-256=:\(base64Encode(Array(SHA256.hash(data: body)))):"
        let parameters: String
        switch algorithm {
        case .ecdsa:
            parameters = ";created=\(created);nonce=\"\(nonce)\";alg=\"\(MessageSignatureProfile.algorithm)\""
        case .hmac(let session):
            parameters =
                ";created=\(created);nonce=\"\(nonce)\";keyid=\"\(session.id)\";alg=\"\(MessageSignatureProfile.hmacAlgorithm)\""
        }
        let covered = MessageSignatureProfile.requiredComponents(contentType: contentType, messageType: messageType)
        let base = MessageSignatureProfile.signatureBase(
            covered: covered, parameters: parameters, method: method, path: path, contentDigest: digest,
            contentType: contentType, messageType: messageType)
        let signature: [UInt8]
        switch algorithm {
        case .ecdsa(let key): signature = Array(try key.signature(for: SHA256.hash(data: base)).rawRepresentation)
        case .hmac(let session): signature = Array(session.authenticationCode(base))
        }
        let list = MessageSignatureProfile.componentList(contentType: contentType, messageType: messageType)
        return [
            ("Content-Digest", digest),
            ("Signature-Input", "\(label)=\(list)\(parameters)"),
            ("Signature", "\(label)=:\(base64Encode(signature)):"),
        ]
    }
}
