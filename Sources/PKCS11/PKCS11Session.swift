import CPKCS11
import Crypto
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// One logged-in session on one token, shared by every key on it in this process, re-opened after the token went
/// away (unplugged, reset) and came back. Every call runs under one lock: a PKCS#11 session is single-threaded.
final class PKCS11Session: Sendable {
    let module: PKCS11Module
    /// The token part of the URI and the PIN's source: what selects this session.
    let selector: PKCS11URI

    private struct State {
        var handle: CK_SESSION_HANDLE?
        var tokenLabel = ""
        /// The serial of the token first opened: a later reopen (after an unplug) logs in only to that token, never
        /// to another one that carries the same label.
        var tokenSerial: String?
        /// SHA-256 of a PIN the token refused: not tried again (a token locks after a few wrong PINs) until the PIN
        /// source holds another one.
        var refusedPIN: [UInt8]?
    }

    private let state = Mutex(State())
    private static let sessions = Mutex<[PKCS11URI: PKCS11Session]>([:])

    private init(module: PKCS11Module, selector: PKCS11URI) {
        self.module = module
        self.selector = selector
    }

    /// The module path a URI names, or `BULWARK_PKCS11_MODULE`.
    static func modulePath(_ uri: PKCS11URI) throws(PKCS11Error) -> String {
        if let path = uri.modulePath { return path }
        if let path = getenv("BULWARK_PKCS11_MODULE").map({ String(cString: $0) }), !path.isEmpty {
            guard path.hasPrefix("/") else {
                throw PKCS11Error(.usage, "BULWARK_PKCS11_MODULE must be an absolute path")
            }
            return path
        }
        throw PKCS11Error(
            .usage, "PKCS#11 URI: no module: add ?module-path=/path/to/module.so or set BULWARK_PKCS11_MODULE")
    }

    static func shared(for uri: PKCS11URI) throws(PKCS11Error) -> PKCS11Session {
        var selector = PKCS11URI()
        selector.token = uri.token
        selector.manufacturer = uri.manufacturer
        selector.serial = uri.serial
        selector.model = uri.model
        selector.slotID = uri.slotID
        selector.modulePath = try modulePath(uri)
        selector.pinFile = uri.pinFile
        let module = try PKCS11Module.load(selector.modulePath ?? "")
        return sessions.withLock { sessions in
            if let session = sessions[selector] { return session }
            let session = PKCS11Session(module: module, selector: selector)
            sessions[selector] = session
            return session
        }
    }

    // MARK: - Operations

    func publicKey(_ uri: PKCS11URI) throws(PKCS11Error) -> (PKCS11Curve, [UInt8]) {
        try withSession { handle, label throws(PKCS11Error) in
            // The private key first: that is the one that signs, and the one a missing-key error should name. It must
            // be one that cannot leave the token (made by `bulwark hsm keygen`, or by a tool that set the same).
            let privateKey = try self.one(handle, uri, class: CKO_PRIVATE_KEY, label: label)
            let flags = Self.read(self.module, handle, privateKey, [CKA_SENSITIVE, CKA_EXTRACTABLE, CKA_SIGN])
            let sensitive = flags[0]?.first.map { $0 != 0 } ?? false
            let extractable = flags[1]?.first.map { $0 != 0 } ?? true
            let signs = flags[2]?.first.map { $0 != 0 } ?? false
            guard sensitive, !extractable, signs else {
                throw PKCS11Error(
                    .object,
                    "PKCS#11: the key \(Self.describe(uri)) on token \(label) is "
                        + (signs ? "extractable or not sensitive" : "not a signing key")
                        + ": use a key made by bulwark hsm keygen (sensitive, never extractable)")
            }
            let object = try self.one(handle, uri, class: CKO_PUBLIC_KEY, label: label)
            let values = Self.read(self.module, handle, object, [CKA_EC_PARAMS, CKA_EC_POINT])
            guard let parameters = values[0], let curve = PKCS11Curve(parameters: parameters) else {
                throw PKCS11Error(
                    .object, "PKCS#11: \(Self.describe(uri)) on token \(label) is not a P-256 or P-384 key")
            }
            guard let point = values[1].flatMap(Self.uncompressedPoint) else {
                throw PKCS11Error(
                    .object, "PKCS#11: the public key \(Self.describe(uri)) on token \(label) is unreadable")
            }
            return (curve, point)
        }
    }

    func sign(_ uri: PKCS11URI, digest: [UInt8], size: Int) throws(PKCS11Error) -> [UInt8] {
        try withSession { handle, label throws(PKCS11Error) in
            let key = try self.one(handle, uri, class: CKO_PRIVATE_KEY, label: label)
            var mechanism = CK_MECHANISM(mechanism: CK_MECHANISM_TYPE(CKM_ECDSA), pParameter: nil, ulParameterLen: 0)
            var rv = self.module.f.C_SignInit(handle, &mechanism, key)
            guard rv == CK_RV(CKR_OK) else {
                throw self.module.failure(.operation, "signing with \(Self.describe(uri)) on token \(label) failed", rv)
            }
            var input = digest
            var signature = [UInt8](repeating: 0, count: 2 * size)
            var length = CK_ULONG(signature.count)
            rv = self.module.f.C_Sign(handle, &input, CK_ULONG(input.count), &signature, &length)
            guard rv == CK_RV(CKR_OK), Int(length) == size else {
                throw self.module.failure(.operation, "signing with \(Self.describe(uri)) on token \(label) failed", rv)
            }
            return Array(signature.prefix(size))
        }
    }

    /// The uncompressed points of every EC public key object on the token.
    func publicKeys() throws(PKCS11Error) -> [[UInt8]] {
        try withSession { handle, _ throws(PKCS11Error) in
            try Self.find(self.module, handle, [Self.ulong(CKA_CLASS, CK_ULONG(CKO_PUBLIC_KEY))]).compactMap {
                Self.read(self.module, handle, $0, [CKA_EC_POINT])[0].flatMap(Self.uncompressedPoint)
            }
        }
    }

    func attributes(_ uri: PKCS11URI) throws(PKCS11Error) -> PKCS11KeyAttributes {
        try withSession { handle, label throws(PKCS11Error) in
            let key = try self.one(handle, uri, class: CKO_PRIVATE_KEY, label: label)
            let values = Self.read(
                self.module, handle, key,
                [CKA_SENSITIVE, CKA_EXTRACTABLE, CKA_ALWAYS_SENSITIVE, CKA_NEVER_EXTRACTABLE])
            func flag(_ index: Int) -> Bool { values[index]?.first.map { $0 != 0 } ?? false }
            return PKCS11KeyAttributes(
                sensitive: flag(0), extractable: values[1].map { $0.first != 0 } ?? true, alwaysSensitive: flag(2),
                neverExtractable: flag(3))
        }
    }

    func generate(_ uri: PKCS11URI, curve: PKCS11Curve) throws(PKCS11Error) -> [UInt8] {
        try withSession { handle, label throws(PKCS11Error) in
            let name = uri.object ?? ""
            var query = PKCS11URI()
            query.object = name
            let existing = try Self.find(self.module, handle, [Self.bytes(CKA_LABEL, Array(name.utf8))])
            guard existing.isEmpty else {
                throw PKCS11Error(.object, "PKCS#11: token \(label) already has an object labelled \(name)")
            }
            var id = uri.id ?? []
            if id.isEmpty {
                var generator = SystemRandomNumberGenerator()
                id = (0..<16).map { _ in UInt8.random(in: 0...255, using: &generator) }
            }
            let publicTemplate: [Attribute] = [
                Self.ulong(CKA_CLASS, CK_ULONG(CKO_PUBLIC_KEY)), Self.bool(CKA_TOKEN, true),
                Self.bool(CKA_PRIVATE, false),
                Self.bool(CKA_VERIFY, true), Self.bool(CKA_ENCRYPT, false), Self.bool(CKA_WRAP, false),
                Self.bytes(CKA_EC_PARAMS, curve.parameters),
                Self.bytes(CKA_LABEL, Array(name.utf8)), Self.bytes(CKA_ID, id),
            ]
            let privateTemplate: [Attribute] = [
                Self.ulong(CKA_CLASS, CK_ULONG(CKO_PRIVATE_KEY)), Self.bool(CKA_TOKEN, true),
                Self.bool(CKA_PRIVATE, true),
                Self.bool(CKA_SIGN, true), Self.bool(CKA_SENSITIVE, true), Self.bool(CKA_EXTRACTABLE, false),
                Self.bool(CKA_DERIVE, false), Self.bool(CKA_DECRYPT, false), Self.bool(CKA_UNWRAP, false),
                Self.bytes(CKA_LABEL, Array(name.utf8)), Self.bytes(CKA_ID, id),
            ]
            var mechanism = CK_MECHANISM(
                mechanism: CK_MECHANISM_TYPE(CKM_EC_KEY_PAIR_GEN), pParameter: nil, ulParameterLen: 0)
            var publicHandle: CK_OBJECT_HANDLE = 0
            var privateHandle: CK_OBJECT_HANDLE = 0
            let rv = Self.withTemplate(publicTemplate) { publicAttributes, publicCount in
                Self.withTemplate(privateTemplate) { privateAttributes, privateCount in
                    self.module.f.C_GenerateKeyPair(
                        handle, &mechanism, publicAttributes, publicCount, privateAttributes, privateCount,
                        &publicHandle, &privateHandle)
                }
            }
            guard rv == CK_RV(CKR_OK) else {
                throw self.module.failure(.operation, "generating \(name) on token \(label) failed", rv)
            }
            let point = Self.read(self.module, handle, publicHandle, [CKA_EC_POINT])[0].flatMap(Self.uncompressedPoint)
            guard let point else { throw PKCS11Error(.operation, "PKCS#11: the new key's public point is unreadable") }
            return point
        }
    }

    // MARK: - The session

    /// Runs `body` with a logged-in session, opening one when there is none. When the token answers that the session
    /// is gone (unplugged, reset, closed), the session is dropped and the call is tried once more on a new one; a
    /// later call reopens it in any case, so the key works again once the token is back.
    private func withSession<T>(
        _ body: (CK_SESSION_HANDLE, String) throws(PKCS11Error) -> T
    ) throws(PKCS11Error) -> T {
        let result: Result<T, PKCS11Error> = state.withLock { state in
            for attempt in 0..<2 {
                do throws(PKCS11Error) {
                    let handle: CK_SESSION_HANDLE
                    if let open = state.handle { handle = open } else { handle = try self.open(&state) }
                    return .success(try body(handle, state.tokenLabel))
                } catch {
                    guard PKCS11Module.sessionLost(error.returnValue), state.handle != nil else {
                        if PKCS11Module.sessionLost(error.returnValue) { drop(&state) }
                        return .failure(error)
                    }
                    drop(&state)
                    if attempt == 1 { return .failure(error) }
                }
            }
            return .failure(PKCS11Error(.token, "PKCS#11: the token is not available"))
        }
        return try result.get()
    }

    private func drop(_ state: inout State) {
        if let handle = state.handle { _ = module.f.C_CloseSession(handle) }
        state.handle = nil
    }

    private func open(_ state: inout State) throws(PKCS11Error) -> CK_SESSION_HANDLE {
        let (slot, info) = try findToken(serial: state.tokenSerial)
        // The PIN first: nothing to close when it cannot be read.
        var pin = try readPIN()
        defer { for index in pin.indices { pin[index] = 0 } }
        let digest = Array(SHA256.hash(data: pin))
        if let refused = state.refusedPIN, refused == digest {
            throw PKCS11Error(
                .login,
                "PKCS#11: the PIN for token \(info.label) was refused before and is not tried again (the token would "
                    + "lock): put the right PIN in the PIN source",
                returnValue: 0xA0)
        }
        var handle: CK_SESSION_HANDLE = 0
        var rv = module.f.C_OpenSession(slot, CK_FLAGS(CKF_SERIAL_SESSION | CKF_RW_SESSION), nil, nil, &handle)
        guard rv == CK_RV(CKR_OK) else {
            throw module.failure(.token, "cannot open a session on token \(info.label)", rv)
        }
        rv = module.f.C_Login(handle, CK_USER_TYPE(CKU_USER), &pin, CK_ULONG(pin.count))
        guard rv == CK_RV(CKR_OK) || rv == CK_RV(CKR_USER_ALREADY_LOGGED_IN) else {
            _ = module.f.C_CloseSession(handle)
            if [0xA0, 0xA4, 0xA3].contains(UInt(rv)) { state.refusedPIN = digest }
            switch UInt(rv) {
            case 0xA0:
                throw PKCS11Error(
                    .login, "PKCS#11: the PIN for token \(info.label) is wrong (CKR_PIN_INCORRECT)",
                    returnValue: UInt(rv))
            case 0xA4:
                throw PKCS11Error(
                    .login, "PKCS#11: token \(info.label) is locked after wrong PINs (CKR_PIN_LOCKED)",
                    returnValue: UInt(rv))
            default:
                throw module.failure(.login, "login to token \(info.label) failed", rv)
            }
        }
        state.handle = handle
        state.tokenLabel = info.label
        state.tokenSerial = info.serial
        state.refusedPIN = nil
        return handle
    }

    /// The one present token matching the URI's token attributes.
    private func findToken(serial pinned: String?) throws(PKCS11Error) -> (CK_SLOT_ID, PKCS11TokenInfo) {
        var matches: [(CK_SLOT_ID, PKCS11TokenInfo)] = []
        for slot in try module.slots() {
            guard let info = try? module.tokenInfo(slot), info.initialized else { continue }
            if let token = selector.token, info.label != token { continue }
            if let serial = selector.serial ?? pinned, info.serial != serial { continue }
            if let manufacturer = selector.manufacturer, info.manufacturer != manufacturer { continue }
            if let model = selector.model, info.model != model { continue }
            if let slotID = selector.slotID, info.slot != slotID { continue }
            matches.append((slot, info))
        }
        let wanted = selector.token.map { "token \($0)" } ?? "a token"
        guard let match = matches.first else {
            throw PKCS11Error(
                .token, "PKCS#11: \(wanted) is not present in \(module.path) (unplugged, or another module?)",
                returnValue: UInt(CKR_TOKEN_NOT_PRESENT))
        }
        guard matches.count == 1 else {
            throw PKCS11Error(.token, "PKCS#11: \(matches.count) tokens match \(wanted): add serial= to the URI")
        }
        return match
    }

    /// The PIN from `pin-source=file:` (a file only its owner can read) or `BULWARK_PKCS11_PIN`. Never logged, never
    /// in an error.
    private func readPIN() throws(PKCS11Error) -> [UInt8] {
        if let file = selector.pinFile {
            var info = stat()
            guard stat(file, &info) == 0 else {
                throw PKCS11Error(.login, "PKCS#11: the PIN file \(file) does not exist")
            }
            guard info.st_mode & 0o077 == 0 else {
                throw PKCS11Error(.login, "PKCS#11: the PIN file \(file) is readable by group or others (chmod 600)")
            }
            let fd = Glibc.open(file, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { throw PKCS11Error(.login, "PKCS#11: cannot read the PIN file \(file)") }
            defer { close(fd) }
            var buffer = [UInt8](repeating: 0, count: 256)
            let count = Glibc.read(fd, &buffer, buffer.count)
            guard count > 0 else { throw PKCS11Error(.login, "PKCS#11: the PIN file \(file) is empty") }
            var pin = Array(buffer.prefix(count))
            for index in buffer.indices { buffer[index] = 0 }
            while let last = pin.last, last == 0x0A || last == 0x0D { pin.removeLast() }
            return pin
        }
        if let value = getenv("BULWARK_PKCS11_PIN") {
            let pin = Array(String(cString: value).utf8)
            if !pin.isEmpty { return pin }
        }
        throw PKCS11Error(.login, "PKCS#11: no PIN: add pin-source=file:PATH to the URI or set BULWARK_PKCS11_PIN")
    }

    // MARK: - Objects

    private func one(
        _ handle: CK_SESSION_HANDLE, _ uri: PKCS11URI, class objectClass: UInt, label: String
    ) throws(PKCS11Error) -> CK_OBJECT_HANDLE {
        var template = [Self.ulong(CKA_CLASS, CK_ULONG(objectClass))]
        if let object = uri.object { template.append(Self.bytes(CKA_LABEL, Array(object.utf8))) }
        if let id = uri.id { template.append(Self.bytes(CKA_ID, id)) }
        let found = try Self.find(module, handle, template)
        let what = objectClass == CKO_PRIVATE_KEY ? "private key" : "public key"
        guard let first = found.first else {
            throw PKCS11Error(.object, "PKCS#11: token \(label) has no \(what) \(Self.describe(uri))")
        }
        guard found.count == 1 else {
            throw PKCS11Error(
                .object, "PKCS#11: token \(label) has \(found.count) \(what)s \(Self.describe(uri)): add id=")
        }
        return first
    }

    static func describe(_ uri: PKCS11URI) -> String {
        if let object = uri.object { return "'\(object)'" }
        return "id " + (uri.id ?? []).map { PKCS11URI.hex($0) }.joined()
    }

    struct Attribute {
        let type: CK_ATTRIBUTE_TYPE
        let value: [UInt8]
    }

    static func ulong(_ type: UInt, _ value: CK_ULONG) -> Attribute {
        Attribute(type: CK_ATTRIBUTE_TYPE(type), value: withUnsafeBytes(of: value) { Array($0) })
    }
    static func bool(_ type: UInt, _ value: Bool) -> Attribute {
        Attribute(type: CK_ATTRIBUTE_TYPE(type), value: [value ? 1 : 0])
    }
    static func bytes(_ type: UInt, _ value: [UInt8]) -> Attribute {
        Attribute(type: CK_ATTRIBUTE_TYPE(type), value: value)
    }

    /// Calls `body` with a `CK_ATTRIBUTE` array whose value buffers live for the call.
    static func withTemplate<R>(
        _ attributes: [Attribute], _ body: (UnsafeMutablePointer<CK_ATTRIBUTE>, CK_ULONG) -> R
    ) -> R {
        let buffers = attributes.map { attribute -> UnsafeMutableRawBufferPointer in
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(attribute.value.count, 1), alignment: 8)
            buffer.copyBytes(from: attribute.value)
            return buffer
        }
        defer { for buffer in buffers { buffer.deallocate() } }
        var template = zip(attributes, buffers).map { attribute, buffer in
            CK_ATTRIBUTE(type: attribute.type, pValue: buffer.baseAddress, ulValueLen: CK_ULONG(attribute.value.count))
        }
        return template.withUnsafeMutableBufferPointer { pointer in
            body(pointer.baseAddress ?? UnsafeMutablePointer.allocate(capacity: 0), CK_ULONG(pointer.count))
        }
    }

    static func find(
        _ module: PKCS11Module, _ handle: CK_SESSION_HANDLE, _ template: [Attribute]
    ) throws(PKCS11Error) -> [CK_OBJECT_HANDLE] {
        var rv = withTemplate(template) { module.f.C_FindObjectsInit(handle, $0, $1) }
        guard rv == CK_RV(CKR_OK) else { throw module.failure(.token, "cannot search the token", rv) }
        defer { _ = module.f.C_FindObjectsFinal(handle) }
        var found: [CK_OBJECT_HANDLE] = []
        var batch = [CK_OBJECT_HANDLE](repeating: 0, count: 32)
        while true {
            var count: CK_ULONG = 0
            rv = module.f.C_FindObjects(handle, &batch, CK_ULONG(batch.count), &count)
            guard rv == CK_RV(CKR_OK) else { throw module.failure(.token, "cannot search the token", rv) }
            if count == 0 { break }
            found += batch.prefix(Int(count))
            if found.count > 10_000 { break }
        }
        return found
    }

    /// Reads attributes; a missing or unreadable one (a sensitive value) is nil.
    static func read(
        _ module: PKCS11Module, _ handle: CK_SESSION_HANDLE, _ object: CK_OBJECT_HANDLE, _ types: [UInt]
    ) -> [[UInt8]?] {
        types.map { type in
            var attribute = CK_ATTRIBUTE(type: CK_ATTRIBUTE_TYPE(type), pValue: nil, ulValueLen: 0)
            guard module.f.C_GetAttributeValue(handle, object, &attribute, 1) == CK_RV(CKR_OK),
                attribute.ulValueLen != CK_ULONG.max, attribute.ulValueLen < 1 << 16
            else { return nil }
            var value = [UInt8](repeating: 0, count: Int(attribute.ulValueLen))
            let ok = value.withUnsafeMutableBytes { buffer -> Bool in
                attribute.pValue = buffer.baseAddress
                return module.f.C_GetAttributeValue(handle, object, &attribute, 1) == CK_RV(CKR_OK)
            }
            return ok ? Array(value.prefix(Int(attribute.ulValueLen))) : nil
        }
    }

    /// `CKA_EC_POINT` is the DER OCTET STRING of the uncompressed point (PKCS#11 v2.40 §2.3.3); some modules give
    /// the bare point.
    static func uncompressedPoint(_ value: [UInt8]) -> [UInt8]? {
        if value.count >= 3, value[0] == 0x04, Int(value[1]) == value.count - 2, value[2] == 0x04 {
            return Array(value[2...])
        }
        if value.count >= 4, value[0] == 0x04, value[1] == 0x81, Int(value[2]) == value.count - 3, value[3] == 0x04 {
            return Array(value[3...])
        }
        if value.first == 0x04, value.count == 65 || value.count == 97 { return value }
        return nil
    }
}
