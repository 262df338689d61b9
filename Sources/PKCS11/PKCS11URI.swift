/// A PKCS#11 URI (RFC 7512): which module, token and object a key lives in, and where the PIN comes from.
///
///     pkcs11:token=release;object=targets-1?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/pin
///
/// Path attributes (RFC 7512 §2.3) select the token (`token`, `manufacturer`, `serial`, `model`, `slot-id`) and the
/// object (`object` = `CKA_LABEL`, `id` = `CKA_ID`, `type=private`); each may appear once. Query attributes:
/// `module-path` (the module to load, an absolute path; `BULWARK_PKCS11_MODULE` when absent) and `pin-source` (a
/// `file:` URI). Anything else is refused rather than ignored, since an ignored selector would widen the match:
/// `module-name`, the `library-*` and `slot-*` attributes, control characters in a value. `pin-value` is refused too:
/// a PIN in a URI ends up on command lines, in configuration and in shell history.
/// Values are percent-decoded (RFC 7512 §2.3, RFC 3986 §2.1). This is a pure value: nothing is loaded here.
public struct PKCS11URI: Sendable, Hashable, CustomStringConvertible {
    public var token: String?
    public var manufacturer: String?
    public var serial: String?
    public var model: String?
    public var slotID: UInt?
    public var object: String?
    public var id: [UInt8]?
    /// `private`, `public`, `cert`, `secret-key` or `data` (RFC 7512 §2.3).
    public var type: String?
    public var modulePath: String?
    /// The path of a `pin-source=file:` attribute.
    public var pinFile: String?

    public init() {}

    /// Parses `text`; errors name the attribute, never a value that could be a PIN.
    public init(_ text: String) throws(PKCS11Error) {
        guard text.hasPrefix("pkcs11:") else {
            throw PKCS11Error(.usage, "a PKCS#11 URI starts with pkcs11: (RFC 7512)")
        }
        let rest = text.dropFirst("pkcs11:".count)
        let parts = rest.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        let path = parts.first.map(String.init) ?? ""
        let query = parts.count > 1 ? String(parts[1]) : ""
        var seen: Set<String> = []
        for attribute in path.split(separator: ";", omittingEmptySubsequences: true) {
            let (name, value) = try Self.split(attribute)
            guard seen.insert(name).inserted else {
                throw PKCS11Error(.usage, "PKCS#11 URI: the attribute \(name) appears twice (RFC 7512 §2.3)")
            }
            switch name {
            case "token": token = try Self.text(value, name)
            case "manufacturer": manufacturer = try Self.text(value, name)
            case "serial": serial = try Self.text(value, name)
            case "model": model = try Self.text(value, name)
            case "object": object = try Self.text(value, name)
            case "id": id = try Self.decode(value, name)
            case "type":
                let kind = try Self.text(value, name)
                guard kind == "private" else {
                    throw PKCS11Error(.usage, "PKCS#11 URI: type names a signing key here: private (or leave it out)")
                }
                type = kind
            case "slot-id":
                guard let slot = UInt(try Self.text(value, name)) else {
                    throw PKCS11Error(.usage, "PKCS#11 URI: slot-id must be a decimal number")
                }
                slotID = slot
            default:
                throw PKCS11Error(.usage, "PKCS#11 URI: unknown path attribute \(name)")
            }
        }
        for attribute in query.split(separator: "&", omittingEmptySubsequences: true) {
            let (name, value) = try Self.split(attribute)
            guard seen.insert(name).inserted else {
                throw PKCS11Error(.usage, "PKCS#11 URI: the attribute \(name) appears twice (RFC 7512 §2.4)")
            }
            switch name {
            case "module-path":
                let path = try Self.text(value, name)
                guard path.hasPrefix("/") else {
                    throw PKCS11Error(.usage, "PKCS#11 URI: module-path must be an absolute path")
                }
                modulePath = path
            case "pin-source":
                let source = try Self.text(value, name)
                if source.hasPrefix("file:") {
                    var file = String(source.dropFirst("file:".count))
                    if file.hasPrefix("//") { file = String(file.dropFirst(2)) }  // file:///path
                    guard file.hasPrefix("/") else {
                        throw PKCS11Error(.usage, "PKCS#11 URI: pin-source must be file: with an absolute path")
                    }
                    pinFile = file
                } else if source.hasPrefix("/") {
                    pinFile = source
                } else {
                    throw PKCS11Error(.usage, "PKCS#11 URI: pin-source must be file: with an absolute path")
                }
            case "pin-value":
                throw PKCS11Error(
                    .usage,
                    "PKCS#11 URI: pin-value is refused (a PIN must not be in a URI, a command line or a configuration "
                        + "file); use pin-source=file:PATH or BULWARK_PKCS11_PIN")
            default:
                throw PKCS11Error(.usage, "PKCS#11 URI: unknown query attribute \(name)")
            }
        }
    }

    /// The canonical text: path attributes in a fixed order, values percent-encoded where RFC 7512 requires.
    public var description: String {
        var path: [String] = []
        if let token { path.append("token=" + Self.encode(Array(token.utf8))) }
        if let manufacturer { path.append("manufacturer=" + Self.encode(Array(manufacturer.utf8))) }
        if let model { path.append("model=" + Self.encode(Array(model.utf8))) }
        if let serial { path.append("serial=" + Self.encode(Array(serial.utf8))) }
        if let slotID { path.append("slot-id=\(slotID)") }
        if let object { path.append("object=" + Self.encode(Array(object.utf8))) }
        if let id { path.append("id=" + id.map { "%" + Self.hex($0) }.joined()) }
        if let type { path.append("type=" + type) }
        var query: [String] = []
        if let modulePath { query.append("module-path=" + Self.encode(Array(modulePath.utf8), keepSlash: true)) }
        if let pinFile { query.append("pin-source=file:" + Self.encode(Array(pinFile.utf8), keepSlash: true)) }
        return "pkcs11:" + path.joined(separator: ";") + (query.isEmpty ? "" : "?" + query.joined(separator: "&"))
    }

    /// True when the text is meant as a PKCS#11 URI (rather than a file or key name).
    public static func isURI(_ text: String) -> Bool { text.hasPrefix("pkcs11:") }

    static func split(_ attribute: Substring) throws(PKCS11Error) -> (String, Substring) {
        guard let equals = attribute.firstIndex(of: "=") else {
            throw PKCS11Error(.usage, "PKCS#11 URI: an attribute without a value")
        }
        let name = String(attribute[..<equals])
        guard !name.isEmpty, name.utf8.allSatisfy({ (0x61...0x7A).contains($0) || $0 == 0x2D }) else {
            throw PKCS11Error(.usage, "PKCS#11 URI: a malformed attribute name")
        }
        return (name, attribute[attribute.index(after: equals)...])
    }

    static func decode(_ value: Substring, _ name: String) throws(PKCS11Error) -> [UInt8] {
        var out: [UInt8] = []
        var bytes = Array(value.utf8)[...]
        while let byte = bytes.popFirst() {
            if byte == UInt8(ascii: "%") {
                guard bytes.count >= 2, let high = hexValue(bytes.removeFirst()),
                    let low = hexValue(bytes.removeFirst())
                else { throw PKCS11Error(.usage, "PKCS#11 URI: a bad percent-encoding in \(name)") }
                out.append(high << 4 | low)
            } else {
                out.append(byte)
            }
        }
        return out
    }

    static func text(_ value: Substring, _ name: String) throws(PKCS11Error) -> String {
        let bytes = try decode(value, name)
        guard let text = String(validating: bytes, as: UTF8.self), !text.isEmpty,
            !bytes.contains(where: { $0 < 0x20 || $0 == 0x7F })
        else {
            throw PKCS11Error(.usage, "PKCS#11 URI: \(name) must be non-empty UTF-8 without control characters")
        }
        return text
    }

    static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case 0x30...0x39: return byte - 0x30
        case 0x41...0x46: return byte - 0x41 + 10
        case 0x61...0x66: return byte - 0x61 + 10
        default: return nil
        }
    }

    static func hex(_ byte: UInt8) -> String {
        let digits = Array("0123456789abcdef")
        return String([digits[Int(byte >> 4)], digits[Int(byte & 0xF)]])
    }

    /// RFC 3986 unreserved characters stay; everything else is percent-encoded.
    static func encode(_ bytes: [UInt8], keepSlash: Bool = false) -> String {
        var out = ""
        for byte in bytes {
            let unreserved =
                (0x30...0x39).contains(byte) || (0x41...0x5A).contains(byte) || (0x61...0x7A).contains(byte)
                || byte == 0x2D || byte == 0x2E || byte == 0x5F || byte == 0x7E || (keepSlash && byte == 0x2F)
            out += unreserved ? String(UnicodeScalar(byte)) : "%" + hex(byte).uppercased()
        }
        return out
    }
}

/// Why a PKCS#11 operation failed, in one line that names the module, token or object and what to do. A PIN never
/// appears in it.
public struct PKCS11Error: Error, Equatable, CustomStringConvertible {
    public enum Code: String, Sendable {
        /// The URI or a setting is wrong.
        case usage
        /// The module cannot be loaded or initialised.
        case module
        /// No such token, or it is not present (unplugged).
        case token
        /// The PIN is missing, wrong or locked.
        case login
        /// No such object, or more than one.
        case object
        /// The token refused or failed an operation.
        case operation
    }

    public let code: Code
    public let message: String
    /// The PKCS#11 return value (`CKR_*`), when the module gave one.
    public let returnValue: UInt?

    public init(_ code: Code, _ message: String, returnValue: UInt? = nil) {
        self.code = code
        self.message = message
        self.returnValue = returnValue
    }

    public var description: String { message }
    public static func == (lhs: PKCS11Error, rhs: PKCS11Error) -> Bool {
        lhs.code == rhs.code && lhs.returnValue == rhs.returnValue
    }
}
