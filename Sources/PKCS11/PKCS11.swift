import CPKCS11
import Crypto
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The elliptic curves of keys made and used on a token (FIPS 186-5 ECDSA).
public enum PKCS11Curve: String, Sendable, CaseIterable {
    case p256
    case p384

    /// DER of the named curve's OID (`CKA_EC_PARAMS`, PKCS#11 v2.40 §2.3.3).
    var parameters: [UInt8] {
        switch self {
        case .p256: return [0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07]
        case .p384: return [0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22]
        }
    }

    init?(parameters: [UInt8]) {
        guard let curve = Self.allCases.first(where: { $0.parameters == parameters }) else { return nil }
        self = curve
    }
}

/// A loaded PKCS#11 module (`dlopen` + `C_GetFunctionList` + `C_Initialize` with OS locking, PKCS#11 v2.40 §5.4).
/// One per path for the process's life: PKCS#11 allows one `C_Initialize` per application.
final class PKCS11Module: Sendable {
    let path: String
    nonisolated(unsafe) let functions: UnsafeMutablePointer<CK_FUNCTION_LIST>

    private static let loaded = Mutex<[String: PKCS11Module]>([:])

    private init(path: String, functions: UnsafeMutablePointer<CK_FUNCTION_LIST>) {
        self.path = path
        self.functions = functions
    }

    static func load(_ path: String) throws(PKCS11Error) -> PKCS11Module {
        let result: Result<PKCS11Module, PKCS11Error> = loaded.withLock { modules in
            if let module = modules[path] { return .success(module) }
            var info = stat()
            guard stat(path, &info) == 0 else {
                return .failure(PKCS11Error(.module, "the PKCS#11 module \(path) does not exist"))
            }
            var reason = [CChar](repeating: 0, count: 512)
            guard let list = cpkcs11_load(path, &reason, reason.count) else {
                let text = String(
                    decoding: reason.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
                return .failure(PKCS11Error(.module, "the PKCS#11 module \(path) cannot be loaded: \(text)"))
            }
            var arguments = CK_C_INITIALIZE_ARGS()
            arguments.flags = CK_FLAGS(CKF_OS_LOCKING_OK)
            let rv = withUnsafeMutablePointer(to: &arguments) {
                list.pointee.C_Initialize?(UnsafeMutableRawPointer($0))
            }
            guard let rv, rv == CK_RV(CKR_OK) || rv == CK_RV(CKR_CRYPTOKI_ALREADY_INITIALIZED) else {
                return .failure(
                    PKCS11Error(
                        .module, "the PKCS#11 module \(path) failed to initialise (\(PKCS11Module.name(rv ?? 0)))",
                        returnValue: rv.map(UInt.init)))
            }
            let module = PKCS11Module(path: path, functions: list)
            modules[path] = module
            return .success(module)
        }
        return try result.get()
    }

    var f: CK_FUNCTION_LIST { functions.pointee }

    /// The slots that hold a token.
    func slots() throws(PKCS11Error) -> [CK_SLOT_ID] {
        var count: CK_ULONG = 0
        var rv = f.C_GetSlotList(CK_BBOOL(CK_TRUE), nil, &count)
        guard rv == CK_RV(CKR_OK) else { throw failure(.token, "cannot list the slots of \(path)", rv) }
        var slots = [CK_SLOT_ID](repeating: 0, count: Int(count))
        rv = f.C_GetSlotList(CK_BBOOL(CK_TRUE), &slots, &count)
        guard rv == CK_RV(CKR_OK) else { throw failure(.token, "cannot list the slots of \(path)", rv) }
        return Array(slots.prefix(Int(count)))
    }

    func tokenInfo(_ slot: CK_SLOT_ID) throws(PKCS11Error) -> PKCS11TokenInfo {
        var info = CK_TOKEN_INFO()
        let rv = f.C_GetTokenInfo(slot, &info)
        guard rv == CK_RV(CKR_OK) else { throw failure(.token, "cannot read the token in slot \(slot)", rv) }
        return PKCS11TokenInfo(
            slot: UInt(slot), label: Self.padded(info.label), manufacturer: Self.padded(info.manufacturerID),
            model: Self.padded(info.model), serial: Self.padded(info.serialNumber),
            loginRequired: info.flags & CK_FLAGS(CKF_LOGIN_REQUIRED) != 0,
            initialized: info.flags & CK_FLAGS(CKF_TOKEN_INITIALIZED) != 0)
    }

    func failure(_ code: PKCS11Error.Code, _ what: String, _ rv: CK_RV) -> PKCS11Error {
        PKCS11Error(code, "PKCS#11: \(what) (\(Self.name(rv)))", returnValue: UInt(rv))
    }

    /// A fixed-width, space-padded PKCS#11 text field.
    static func padded<T>(_ field: T) -> String {
        withUnsafeBytes(of: field) { raw in
            var bytes = Array(raw)
            while let last = bytes.last, last == 0x20 || last == 0 { bytes.removeLast() }
            return String(decoding: bytes, as: UTF8.self)
        }
    }

    /// The name of a return value, for messages (PKCS#11 v2.40 §5.1).
    static func name(_ rv: CK_RV) -> String {
        let names: [UInt: String] = [
            0x00: "CKR_OK", 0x05: "CKR_GENERAL_ERROR", 0x06: "CKR_FUNCTION_FAILED", 0x07: "CKR_ARGUMENTS_BAD",
            0x30: "CKR_DEVICE_ERROR", 0x31: "CKR_DEVICE_MEMORY", 0x32: "CKR_DEVICE_REMOVED",
            0x60: "CKR_KEY_HANDLE_INVALID", 0x68: "CKR_KEY_FUNCTION_NOT_PERMITTED", 0x70: "CKR_MECHANISM_INVALID",
            0x82: "CKR_OBJECT_HANDLE_INVALID", 0xA0: "CKR_PIN_INCORRECT", 0xA4: "CKR_PIN_LOCKED",
            0xB0: "CKR_SESSION_CLOSED", 0xB3: "CKR_SESSION_HANDLE_INVALID", 0xE0: "CKR_TOKEN_NOT_PRESENT",
            0xE1: "CKR_TOKEN_NOT_RECOGNIZED", 0xE2: "CKR_TOKEN_WRITE_PROTECTED", 0x100: "CKR_USER_ALREADY_LOGGED_IN",
            0x101: "CKR_USER_NOT_LOGGED_IN", 0x150: "CKR_BUFFER_TOO_SMALL", 0x190: "CKR_CRYPTOKI_NOT_INITIALIZED",
            0x191: "CKR_CRYPTOKI_ALREADY_INITIALIZED",
        ]
        return names[UInt(rv)] ?? "CKR 0x" + String(UInt(rv), radix: 16)
    }

    /// Return values after which the session is gone and a new one (with a new login) may succeed: an unplugged or
    /// reset token, a closed session.
    static func sessionLost(_ rv: UInt?) -> Bool {
        guard let rv else { return false }
        return [0x30, 0x32, 0x60, 0x82, 0xB0, 0xB3, 0xE0, 0xE1, 0x101, 0x190].contains(rv)
    }
}

/// What `C_GetTokenInfo` says about a token.
public struct PKCS11TokenInfo: Sendable, Equatable {
    public let slot: UInt
    public let label: String
    public let manufacturer: String
    public let model: String
    public let serial: String
    public let loginRequired: Bool
    public let initialized: Bool
}

/// The security attributes of a private key, read from the token (PKCS#11 v2.40 §4.9).
public struct PKCS11KeyAttributes: Sendable, Equatable {
    public let sensitive: Bool
    public let extractable: Bool
    public let alwaysSensitive: Bool
    public let neverExtractable: Bool
}

/// A private key on a token, addressed by a PKCS#11 URI. Signing opens (and after a failure re-opens) one session per
/// token, logs in with the PIN from `pin-source` or `BULWARK_PKCS11_PIN`, and runs `C_Sign` with `CKM_ECDSA` over a
/// digest computed here. Calls on one token are serialised (a PKCS#11 session is single-threaded). The private key
/// never leaves the token: it is made sensitive and not extractable, and nothing here can read it.
public final class PKCS11PrivateKey: Sendable {
    public let uri: PKCS11URI
    public let curve: PKCS11Curve
    /// The public key as X9.63 (uncompressed point), from the token's public key object.
    public let publicKeyX963: [UInt8]
    let session: PKCS11Session

    init(uri: PKCS11URI, curve: PKCS11Curve, publicKeyX963: [UInt8], session: PKCS11Session) {
        self.uri = uri
        self.curve = curve
        self.publicKeyX963 = publicKeyX963
        self.session = session
    }

    /// The SubjectPublicKeyInfo DER of the public key.
    public var publicKeySPKI: [UInt8] {
        switch curve {
        case .p256:
            return (try? P256.Signing.PublicKey(x963Representation: publicKeyX963).derRepresentation).map(Array.init)
                ?? []
        case .p384:
            return (try? P384.Signing.PublicKey(x963Representation: publicKeyX963).derRepresentation).map(Array.init)
                ?? []
        }
    }

    /// Opens the key named by `uri` (its `object` label or `id`), checking that it is there.
    public static func open(_ uri: PKCS11URI) throws(PKCS11Error) -> PKCS11PrivateKey {
        guard uri.object != nil || uri.id != nil else {
            throw PKCS11Error(.usage, "PKCS#11 URI: name the key with object= (its label) or id=")
        }
        let session = try PKCS11Session.shared(for: uri)
        let (curve, point) = try session.publicKey(uri)
        return PKCS11PrivateKey(uri: uri, curve: curve, publicKeyX963: point, session: session)
    }

    /// `open` from the URI's text.
    public static func open(_ text: String) throws(PKCS11Error) -> PKCS11PrivateKey {
        try open(PKCS11URI(text))
    }

    /// Makes a key pair on the token: the private key sensitive, not extractable, usable only to sign; the public key
    /// with the same label and a random `CKA_ID`. Refuses a label that is taken.
    public static func generate(_ uri: PKCS11URI, curve: PKCS11Curve) throws(PKCS11Error) -> PKCS11PrivateKey {
        guard uri.object != nil else { throw PKCS11Error(.usage, "PKCS#11 URI: name the new key with object=") }
        let session = try PKCS11Session.shared(for: uri)
        let point = try session.generate(uri, curve: curve)
        return PKCS11PrivateKey(uri: uri, curve: curve, publicKeyX963: point, session: session)
    }

    /// ECDSA over `digest` (already hashed: SHA-256 for P-256, SHA-384 for P-384), as raw r‖s (PKCS#11 v2.40 §2.3.6).
    public func signDigest(_ digest: [UInt8]) throws(PKCS11Error) -> [UInt8] {
        try session.sign(uri, digest: digest, size: curve == .p256 ? 64 : 96)
    }

    /// An ECDSA signature over `message` in DER (what X.509, TLS and securesystemslib's `ecdsa-sha2-nistp*` use),
    /// hashed with SHA-256 on P-256 and SHA-384 on P-384. The signature is checked against the public key before it
    /// is returned: a token that answers with a wrong signature is an error, not a bad signature published.
    public func signatureDER(for message: [UInt8]) throws(PKCS11Error) -> [UInt8] {
        switch curve {
        case .p256:
            let digest = SHA256.hash(data: message)
            let raw = try signDigest(Array(digest))
            guard let signature = try? P256.Signing.ECDSASignature(rawRepresentation: raw),
                let key = try? P256.Signing.PublicKey(x963Representation: publicKeyX963),
                key.isValidSignature(signature, for: digest)
            else {
                throw PKCS11Error(.operation, "PKCS#11: the token's signature does not verify (\(uri.object ?? "key"))")
            }
            return Array(signature.derRepresentation)
        case .p384:
            let digest = SHA384.hash(data: message)
            let raw = try signDigest(Array(digest))
            guard let signature = try? P384.Signing.ECDSASignature(rawRepresentation: raw),
                let key = try? P384.Signing.PublicKey(x963Representation: publicKeyX963),
                key.isValidSignature(signature, for: digest)
            else {
                throw PKCS11Error(.operation, "PKCS#11: the token's signature does not verify (\(uri.object ?? "key"))")
            }
            return Array(signature.derRepresentation)
        }
    }

    /// The public keys (uncompressed points) of every key on this key's token: whoever holds this key's PIN can sign
    /// with all of them, so the hub refuses to run with a token that also holds an offline role's key.
    public func publicKeysOnToken() throws(PKCS11Error) -> [[UInt8]] {
        try session.publicKeys()
    }

    /// The private key's `CKA_SENSITIVE`, `CKA_EXTRACTABLE`, `CKA_ALWAYS_SENSITIVE` and `CKA_NEVER_EXTRACTABLE`.
    public func attributes() throws(PKCS11Error) -> PKCS11KeyAttributes {
        try session.attributes(uri)
    }
}

/// Tokens and public keys a module offers (`bulwark hsm list`), read without a PIN.
public enum PKCS11Inventory {
    public struct Key: Sendable {
        public let label: String
        public let id: [UInt8]
        public let curve: PKCS11Curve?
    }

    public struct Token: Sendable {
        public let info: PKCS11TokenInfo
        public let keys: [Key]
    }

    public static func list(modulePath: String) throws(PKCS11Error) -> [Token] {
        let module = try PKCS11Module.load(modulePath)
        var tokens: [Token] = []
        for slot in try module.slots() {
            let info = try module.tokenInfo(slot)
            guard info.initialized else { continue }
            var handle: CK_SESSION_HANDLE = 0
            let rv = module.f.C_OpenSession(slot, CK_FLAGS(CKF_SERIAL_SESSION), nil, nil, &handle)
            guard rv == CK_RV(CKR_OK) else {
                throw module.failure(.token, "cannot open a session on \(info.label)", rv)
            }
            defer { _ = module.f.C_CloseSession(handle) }
            let found = try PKCS11Session.find(
                module, handle, [PKCS11Session.ulong(CKA_CLASS, CK_ULONG(CKO_PUBLIC_KEY))])
            var keys: [Key] = []
            for object in found {
                let values = PKCS11Session.read(module, handle, object, [CKA_LABEL, CKA_ID, CKA_EC_PARAMS])
                keys.append(
                    Key(
                        label: String(decoding: values[0] ?? [], as: UTF8.self), id: values[1] ?? [],
                        curve: values[2].flatMap { PKCS11Curve(parameters: $0) }))
            }
            tokens.append(Token(info: info, keys: keys.sorted { $0.label < $1.label }))
        }
        return tokens
    }
}
