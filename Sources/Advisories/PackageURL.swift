/// A package URL (purl), parsed as package-url spec PURL-SPECIFICATION.rst §"How to parse a purl string in its
/// components" describes, with the type-specific normalisation of PURL-TYPES.rst for pypi, npm, github, gitlab and
/// bitbucket.
public struct PackageURL: Hashable, Sendable, CustomStringConvertible {
    /// Lowercased.
    public var type: String
    /// Percent-decoded segments joined by "/"; nil when absent.
    public var namespace: String?
    /// Percent-decoded.
    public var name: String
    /// Percent-decoded; nil when absent or empty.
    public var version: String?
    /// Keys lowercased, values percent-decoded; pairs with an empty value are dropped, as the spec says.
    public var qualifiers: [String: String]
    /// Percent-decoded segments joined by "/", without empty, "." and ".." segments; nil when absent.
    public var subpath: String?

    /// Parses `pkg:type/namespace/name@version?qualifiers#subpath`.
    ///
    /// Lenient where the spec's examples are: slashes after "pkg:" ("pkg://npm/…") are skipped, as the spec's
    /// "strip leading and trailing '/'" step does, and an "@" only separates the version when it follows the last
    /// "/", so an unencoded npm scope ("pkg:npm/@angular/core") still parses.
    public init(parsing text: String) throws(PackageURLError) {
        guard !text.isEmpty else { throw PackageURLError("empty purl") }
        guard text.prefix(4).lowercased() == "pkg:" else { throw PackageURLError("purl must start with \"pkg:\"") }
        var remainder = Substring(text)

        // Subpath: right of the last "#".
        subpath = nil
        if let hash = remainder.lastIndex(of: "#") {
            var segments: [String] = []
            for segment in remainder[remainder.index(after: hash)...].split(separator: "/")
            where segment != "." && segment != ".." {
                segments.append(try Self.decoded(segment, "subpath"))
            }
            subpath = segments.isEmpty ? nil : segments.joined(separator: "/")
            remainder = remainder[..<hash]
        }

        // Qualifiers: right of the last "?".
        qualifiers = [:]
        if let question = remainder.lastIndex(of: "?") {
            var seen: Set<String> = []
            for pair in remainder[remainder.index(after: question)...].split(separator: "&") {
                let key: Substring
                let value: Substring
                if let equals = pair.firstIndex(of: "=") {
                    key = pair[..<equals]
                    value = pair[pair.index(after: equals)...]
                } else {
                    key = pair
                    value = ""
                }
                let lowered = key.lowercased()
                guard Self.isValidQualifierKey(lowered) else {
                    throw PackageURLError("invalid qualifier key \"\(key)\"")
                }
                guard seen.insert(lowered).inserted else { throw PackageURLError("duplicate qualifier \"\(lowered)\"") }
                let decodedValue = try Self.decoded(value, "qualifier \(lowered)")
                if !decodedValue.isEmpty { qualifiers[lowered] = decodedValue }
            }
            remainder = remainder[..<question]
        }

        // Scheme: left of the first ":".
        guard let colon = remainder.firstIndex(of: ":"), remainder[..<colon].lowercased() == "pkg" else {
            throw PackageURLError("purl must start with \"pkg:\"")
        }
        remainder = remainder[remainder.index(after: colon)...]
        while remainder.first == "/" { remainder = remainder.dropFirst() }
        while remainder.last == "/" { remainder = remainder.dropLast() }

        // Type: left of the first "/".
        let typeEnd = remainder.firstIndex(of: "/") ?? remainder.endIndex
        let rawType = remainder[..<typeEnd]
        guard !rawType.isEmpty else { throw PackageURLError("purl has no type") }
        type = rawType.lowercased()
        guard Self.isValidType(type) else { throw PackageURLError("invalid purl type \"\(rawType)\"") }
        remainder = typeEnd < remainder.endIndex ? remainder[remainder.index(after: typeEnd)...] : ""

        // Version: right of the last "@" that follows the last "/".
        version = nil
        let lastSlash = remainder.lastIndex(of: "/")
        if let at = remainder.lastIndex(of: "@"), lastSlash.map({ at > $0 }) ?? true {
            let decodedVersion = try Self.decoded(remainder[remainder.index(after: at)...], "version")
            version = decodedVersion.isEmpty ? nil : decodedVersion
            remainder = remainder[..<at]
        }

        // Name: right of the last "/"; namespace: the segments before it.
        let nameStart = remainder.lastIndex(of: "/").map { remainder.index(after: $0) } ?? remainder.startIndex
        var decodedName = try Self.decoded(remainder[nameStart...], "name")
        guard !decodedName.isEmpty else { throw PackageURLError("purl has no name") }
        var segments: [String] = []
        if nameStart > remainder.startIndex {
            for segment in remainder[..<remainder.index(before: nameStart)].split(separator: "/") {
                let decodedSegment = try Self.decoded(segment, "namespace")
                guard !decodedSegment.contains("/") else {
                    throw PackageURLError("purl namespace segment contains \"/\"")
                }
                segments.append(decodedSegment)
            }
        }
        var decodedNamespace = segments.isEmpty ? nil : segments.joined(separator: "/")

        // PURL-TYPES.rst: names (and namespaces) that the registry treats case-insensitively are lowercased.
        switch type {
        case "pypi":
            decodedName = String(decodedName.lowercased().map { $0 == "_" ? "-" : $0 })
            decodedNamespace = decodedNamespace?.lowercased()
        case "npm", "github", "gitlab", "bitbucket":
            decodedName = decodedName.lowercased()
            decodedNamespace = decodedNamespace?.lowercased()
        default:
            break
        }
        name = decodedName
        namespace = decodedNamespace
    }

    /// The canonical form (PURL-SPECIFICATION.rst §"How to build purl string from its components"): qualifiers
    /// sorted by key, each component percent-encoded except RFC 3986 unreserved characters and ":".
    public var description: String {
        var out = "pkg:" + type + "/"
        if let namespace {
            out += namespace.split(separator: "/").map { Self.encoded($0) }.joined(separator: "/") + "/"
        }
        out += Self.encoded(name[...])
        if let version { out += "@" + Self.encoded(version[...]) }
        if !qualifiers.isEmpty {
            let pairs = qualifiers.sorted { $0.key < $1.key }.map {
                $0.key + "=" + Self.encoded($0.value[...], keepingSlash: true)
            }
            out += "?" + pairs.joined(separator: "&")
        }
        if let subpath {
            out += "#" + subpath.split(separator: "/").map { Self.encoded($0) }.joined(separator: "/")
        }
        return out
    }

    /// The OSV ecosystem and package name for this purl, normalised as the ecosystem compares names
    /// (`Ecosystem.normalizedName`), or nil when Bulwark cannot match it: pypi → PyPI; npm → "@scope/name" or
    /// "name"; golang → "namespace/name"; cargo → crates.io; maven → "group:artifact"; deb of the `debian` namespace
    /// → Debian, by its *source* package (the `upstream` qualifier, which OSV's Debian records name, else the
    /// binary name); swift → SwiftURL "namespace/name" (pkg:swift/github.com/apple/swift-nio → github.com/apple/
    /// swift-nio). Other Debian-based distributions (ubuntu) have advisories of their own: not matched here.
    public var osvPackage: (ecosystem: Ecosystem, name: String)? {
        let package: (Ecosystem, String)
        switch type {
        case "pypi":
            package = (.pypi, name)
        case "npm":
            guard let namespace else { return (.npm, Ecosystem.npm.normalizedName(name)) }
            package = (.npm, (namespace.hasPrefix("@") ? namespace : "@" + namespace) + "/" + name)
        case "golang":
            package = (.go, namespace.map { $0 + "/" + name } ?? name)
        case "cargo":
            package = (.cratesIO, name)
        case "maven":
            guard let namespace else { return nil }
            package = (.maven, namespace + ":" + name)
        case "deb":
            guard namespace?.lowercased() == "debian" else { return nil }
            let source = qualifiers["upstream"].map { String($0.split(separator: "@", maxSplits: 1).first ?? "") }
            package = (.debian, source.flatMap { $0.isEmpty ? nil : $0 } ?? name)
        case "swift":
            guard let namespace else { return nil }
            package = (.swiftURL, namespace + "/" + name)
        default:
            return nil
        }
        return (package.0, package.0.normalizedName(package.1))
    }

    /// The Debian release a deb purl names (`distro=debian-12` or `distro=bookworm`), as OSV's ecosystem suffix
    /// ("12"); nil when it names none.
    public var debianRelease: String? {
        guard type == "deb", let distro = qualifiers["distro"]?.lowercased() else { return nil }
        let codenames = [
            "buster": "10", "bullseye": "11", "bookworm": "12", "trixie": "13", "forky": "14", "duke": "15",
        ]
        if let number = codenames[distro] { return number }
        if distro.hasPrefix("debian-") {
            let version = distro.dropFirst(7)
            return version.split(separator: ".").first.map(String.init)
        }
        return nil
    }

    /// PURL-SPECIFICATION.rst §Rules for each purl component, `type`: ASCII letters, digits, ".", "+" and "-",
    /// not starting with a digit.
    private static func isValidType(_ type: String) -> Bool {
        guard let first = type.utf8.first, !isDigit(first) else { return false }
        return type.utf8.allSatisfy { isLetter($0) || isDigit($0) || $0 == 0x2E || $0 == 0x2B || $0 == 0x2D }
    }

    /// §Rules for each purl component, `qualifiers`: keys are ASCII letters, digits, ".", "-" and "_", not
    /// starting with a digit.
    private static func isValidQualifierKey(_ key: String) -> Bool {
        guard let first = key.utf8.first, !isDigit(first) else { return false }
        return key.utf8.allSatisfy { isLetter($0) || isDigit($0) || $0 == 0x2E || $0 == 0x2D || $0 == 0x5F }
    }

    private static func isDigit(_ b: UInt8) -> Bool { b >= 0x30 && b <= 0x39 }

    private static func isLetter(_ b: UInt8) -> Bool { (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) }

    private static func hexValue(_ b: UInt8) -> UInt8? {
        switch b {
        case 0x30...0x39: b - 0x30
        case 0x41...0x46: b - 0x41 + 10
        case 0x61...0x66: b - 0x61 + 10
        default: nil
        }
    }

    /// Percent-decodes a component; a "%" must be followed by two hex digits and the result must be UTF-8.
    private static func decoded(_ text: Substring, _ component: String) throws(PackageURLError) -> String {
        let bytes = Array(text.utf8)
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        var i = 0
        while i < bytes.count {
            if bytes[i] == 0x25 {
                guard i + 2 < bytes.count, let high = hexValue(bytes[i + 1]), let low = hexValue(bytes[i + 2])
                else { throw PackageURLError("bad percent escape in \(component)") }
                out.append(high << 4 | low)
                i += 3
            } else {
                out.append(bytes[i])
                i += 1
            }
        }
        guard let decoded = String(validating: out, as: UTF8.self) else {
            throw PackageURLError("\(component) is not UTF-8 once percent-decoded")
        }
        return decoded
    }

    /// Percent-encodes everything but RFC 3986 unreserved characters and ":" (which the spec says is never
    /// encoded); "/" stays literal in qualifier values, as in the spec's `download_url=https://…` example.
    private static func encoded(_ text: Substring, keepingSlash: Bool = false) -> String {
        let hex = Array("0123456789ABCDEF".utf8)
        var out: [UInt8] = []
        for b in text.utf8 {
            if isLetter(b) || isDigit(b) || b == 0x2D || b == 0x2E || b == 0x5F || b == 0x7E || b == 0x3A
                || (keepingSlash && b == 0x2F)
            {
                out.append(b)
            } else {
                out.append(0x25)
                out.append(hex[Int(b >> 4)])
                out.append(hex[Int(b & 0x0F)])
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}

public struct PackageURLError: Error, Sendable, CustomStringConvertible {
    public let description: String

    init(_ description: String) {
        self.description = description
    }
}
