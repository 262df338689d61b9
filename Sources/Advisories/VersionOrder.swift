/// A package ecosystem as OSV names it, together with the version order used to evaluate OSV
/// `affected[].ranges` for it (OSV schema §Affected ranges: ECOSYSTEM ranges use the ecosystem's own order).
public enum Ecosystem: Hashable, Sendable {
    /// OSV range type SEMVER, and SemVer 2.0.0 generally.
    case semver
    /// PEP 440 §Version scheme.
    case pypi
    /// node-semver ordering: SemVer 2.0.0, a leading "v" or "=" tolerated.
    case npm
    /// Go module versions: SemVer with a leading "v"; pseudo-versions are SemVer prereleases.
    case go
    /// crates.io: SemVer 2.0.0 (Cargo's `semver` crate).
    case cratesIO
    /// Maven `ComparableVersion` (maven-artifact 3.x rules).
    case maven
    /// dpkg version comparison: `[epoch:]upstream[-revision]` (Debian Policy §5.6.12).
    case debian
    /// SwiftURL: SemVer 2.0.0, a leading "v" tolerated.
    case swiftURL

    /// OSV ecosystem names (OSV schema §Affected package, `ecosystem`): "PyPI", "npm", "Go", "crates.io", "Maven",
    /// "Debian" and "Debian:12" (release suffix), "SwiftURL". nil for others.
    public init?(osvName: String) {
        switch osvName {
        case "PyPI": self = .pypi
        case "npm": self = .npm
        case "Go": self = .go
        case "crates.io": self = .cratesIO
        case "Maven": self = .maven
        case "Debian": self = .debian
        case "SwiftURL": self = .swiftURL
        default:
            // OSV appends the release after a colon ("Debian:12"); the release does not change the order.
            guard osvName.hasPrefix("Debian:"), osvName.count > "Debian:".count else { return nil }
            self = .debian
        }
    }

    /// The canonical OSV ecosystem name; "SemVer" (the OSV range type) for `.semver`.
    public var osvName: String {
        switch self {
        case .semver: "SemVer"
        case .pypi: "PyPI"
        case .npm: "npm"
        case .go: "Go"
        case .cratesIO: "crates.io"
        case .maven: "Maven"
        case .debian: "Debian"
        case .swiftURL: "SwiftURL"
        }
    }

    /// The package name as OSV and this ecosystem compare it: PyPI names are normalized per PEP 503 §Normalized
    /// names (lowercase, runs of "-", "_" and "." become one "-"); Maven "group:artifact" and crates.io names are
    /// unchanged.
    ///
    /// Go module paths and npm names are compared case-insensitively: the purl spec lowercases them and SBOM tools
    /// follow it, while OSV records keep the registry's spelling (`github.com/BurntSushi/toml`, `JSONStream`).
    /// SwiftURL names drop a scheme, a trailing `.git` and case, as URLs of one repository differ in them.
    public func normalizedName(_ name: String) -> String {
        switch self {
        case .go, .npm: return name.lowercased()
        case .swiftURL:
            var url = name.lowercased()
            for scheme in ["https://", "http://"] where url.hasPrefix(scheme) { url.removeFirst(scheme.count) }
            if url.hasSuffix(".git") { url.removeLast(4) }
            while url.hasSuffix("/") { url.removeLast() }
            return url
        case .pypi: break
        default: return name
        }
        var out = ""
        var inSeparatorRun = false
        for character in name.lowercased() {
            if character == "-" || character == "_" || character == "." {
                if !inSeparatorRun { out.append("-") }
                inSeparatorRun = true
            } else {
                out.append(character)
                inSeparatorRun = false
            }
        }
        return out
    }
}

/// Version comparison per OSV ecosystem, for evaluating OSV `ranges` events (`introduced`, `fixed`,
/// `last_affected`).
public enum VersionOrder {
    /// -1, 0 or 1 as `a` sorts before, equal to, or after `b`; nil when either version cannot be parsed in this
    /// ecosystem (the caller then treats the range as unknown).
    ///
    /// Surrounding ASCII whitespace is ignored. The literal "0" is OSV's `introduced` minimum (OSV schema
    /// §Affected ranges, `events`: "0" sorts before any other version), so it parses in every ecosystem and sorts
    /// below every other version, including "0.0.0" and its prereleases.
    ///
    /// Versions longer than 256 bytes are refused: real ones are far shorter, and the bound keeps the nesting of
    /// Maven's item lists (one level per "-" or digit/letter transition) shallow for untrusted input.
    public static func compare(_ a: String, _ b: String, in ecosystem: Ecosystem) -> Int? {
        let left = trimmedBytes(a)
        let right = trimmedBytes(b)
        guard left.count <= maximumLength, right.count <= maximumLength else { return nil }
        let zero: [UInt8] = [UInt8(ascii: "0")]
        if left == zero || right == zero {
            if left == right { return 0 }
            // Both sides must still be versions of this ecosystem.
            guard parse(left, ecosystem) != nil, parse(right, ecosystem) != nil else { return nil }
            return left == zero ? -1 : 1
        }
        guard let x = parse(left, ecosystem), let y = parse(right, ecosystem) else { return nil }
        switch (x, y) {
        case (.semantic(let p), .semantic(let q)): return p.compare(to: q)
        case (.pep440(let p), .pep440(let q)): return p.compare(to: q)
        case (.maven(let p), .maven(let q)): return MavenVersion.compare(p, q)
        case (.debian(let p), .debian(let q)): return p.compare(to: q)
        default: return nil
        }
    }

    private static let maximumLength = 256

    private enum Parsed {
        case semantic(SemanticVersion)
        case pep440(PEP440Version)
        case maven(MavenVersion.Item)
        case debian(DebianVersion)
    }

    private static func parse(_ bytes: [UInt8], _ ecosystem: Ecosystem) -> Parsed? {
        switch ecosystem {
        case .semver, .go, .cratesIO, .swiftURL:
            return SemanticVersion(bytes, allowEquals: false).map { .semantic($0) }
        case .npm:
            return SemanticVersion(bytes, allowEquals: true).map { .semantic($0) }
        case .pypi:
            return PEP440Version(bytes).map { .pep440($0) }
        case .maven:
            return MavenVersion.parse(bytes).map { .maven($0) }
        case .debian:
            return DebianVersion(bytes).map { .debian($0) }
        }
    }

    private static func trimmedBytes(_ text: String) -> [UInt8] {
        let bytes = Array(text.utf8)
        var start = 0
        var end = bytes.count
        while start < end, isSpace(bytes[start]) { start += 1 }
        while end > start, isSpace(bytes[end - 1]) { end -= 1 }
        return Array(bytes[start..<end])
    }
}

extension VersionOrder {
    // MARK: - Shared helpers

    private static func isSpace(_ b: UInt8) -> Bool {
        b == 0x20 || b == 0x09 || b == 0x0A || b == 0x0D
    }

    private static func isDigit(_ b: UInt8) -> Bool {
        b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9")
    }

    private static func isLetter(_ b: UInt8) -> Bool {
        (b >= UInt8(ascii: "a") && b <= UInt8(ascii: "z")) || (b >= UInt8(ascii: "A") && b <= UInt8(ascii: "Z"))
    }

    private static func asciiLowercased(_ b: UInt8) -> UInt8 {
        b >= UInt8(ascii: "A") && b <= UInt8(ascii: "Z") ? b + 0x20 : b
    }

    private static func sign<T: Comparable>(_ a: T, _ b: T) -> Int {
        a < b ? -1 : (a == b ? 0 : 1)
    }

    /// Compares byte strings the way C's `strcmp` and Java's `String.compareTo` do for ASCII.
    private static func compareBytes(_ a: [UInt8], _ b: [UInt8]) -> Int {
        if a == b { return 0 }
        return a.lexicographicallyPrecedes(b) ? -1 : 1
    }

    /// An unbounded non-negative decimal number: versions carry dates and build numbers beyond `Int64`, so digits are
    /// compared by length and then lexically instead of being converted.
    private struct Number: Comparable, Hashable {
        /// ASCII digits without leading zeros; empty for zero.
        let digits: [UInt8]

        init(_ bytes: some Collection<UInt8>) {
            digits = Array(bytes.drop(while: { $0 == UInt8(ascii: "0") }))
        }

        static let zero = Number([UInt8]())

        var isZero: Bool { digits.isEmpty }

        static func < (lhs: Number, rhs: Number) -> Bool {
            if lhs.digits.count != rhs.digits.count { return lhs.digits.count < rhs.digits.count }
            return lhs.digits.lexicographicallyPrecedes(rhs.digits)
        }
    }

    // MARK: - SemVer 2.0.0

    /// SemVer 2.0.0 §9-§11, as used by OSV SEMVER ranges, npm, Go, crates.io and SwiftURL.
    ///
    /// Lenient where OSV data is: a leading "v" (and "=" for npm) is dropped, a missing minor or patch counts as 0
    /// ("1.2" is 1.2.0, as OSV's own SEMVER coercion does), and numeric parts may have leading zeros.
    private struct SemanticVersion {
        enum Identifier {
            case numeric(Number)
            case alphanumeric([UInt8])
        }

        var core: [Number]
        var prerelease: [Identifier]

        init?(_ input: [UInt8], allowEquals: Bool) {
            var bytes = input[...]
            if allowEquals, bytes.first == UInt8(ascii: "=") { bytes = bytes.dropFirst() }
            if bytes.first == UInt8(ascii: "v") { bytes = bytes.dropFirst() }
            // SemVer §10: build metadata follows the first "+" and is ignored for precedence (Go's "+incompatible").
            if let plus = bytes.firstIndex(of: UInt8(ascii: "+")) {
                guard Self.identifiers(bytes[(plus + 1)...]) != nil else { return nil }
                bytes = bytes[..<plus]
            }
            // SemVer §9: the prerelease follows the first "-" (Go pseudo-versions put their timestamp here).
            var prereleaseBytes: ArraySlice<UInt8>?
            if let dash = bytes.firstIndex(of: UInt8(ascii: "-")) {
                prereleaseBytes = bytes[(dash + 1)...]
                bytes = bytes[..<dash]
            }
            let parts = bytes.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false)
            guard (1...3).contains(parts.count) else { return nil }
            var core: [Number] = []
            for part in parts {
                guard !part.isEmpty, part.allSatisfy(isDigit) else { return nil }
                core.append(Number(part))
            }
            while core.count < 3 { core.append(.zero) }
            self.core = core
            self.prerelease = []
            if let prereleaseBytes {
                guard let identifiers = Self.identifiers(prereleaseBytes) else { return nil }
                self.prerelease = identifiers.map { part in
                    part.allSatisfy(isDigit) ? .numeric(Number(part)) : .alphanumeric(Array(part))
                }
            }
        }

        /// SemVer §9/§10: dot-separated, non-empty identifiers of [0-9A-Za-z-].
        private static func identifiers(_ bytes: ArraySlice<UInt8>) -> [ArraySlice<UInt8>]? {
            let parts = bytes.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false)
            for part in parts {
                guard !part.isEmpty, part.allSatisfy({ isDigit($0) || isLetter($0) || $0 == UInt8(ascii: "-") }) else {
                    return nil
                }
            }
            return parts
        }

        /// SemVer §11 precedence.
        func compare(to other: SemanticVersion) -> Int {
            for (x, y) in zip(core, other.core) where x != y { return sign(x, y) }
            // §11.3: a prerelease has lower precedence than the release.
            switch (prerelease.isEmpty, other.prerelease.isEmpty) {
            case (true, true): return 0
            case (true, false): return 1
            case (false, true): return -1
            case (false, false): break
            }
            for (x, y) in zip(prerelease, other.prerelease) {
                let result: Int
                switch (x, y) {
                case (.numeric(let m), .numeric(let n)): result = sign(m, n)
                case (.numeric, .alphanumeric): result = -1
                case (.alphanumeric, .numeric): result = 1
                case (.alphanumeric(let m), .alphanumeric(let n)): result = compareBytes(m, n)
                }
                if result != 0 { return result }
            }
            // §11.4.4: a larger set of prerelease fields wins when all preceding ones are equal.
            return sign(prerelease.count, other.prerelease.count)
        }
    }

    // MARK: - PEP 440

    /// PEP 440 §Version scheme, parsed with the grammar of PEP 440 Appendix B (`VERSION_PATTERN`, case-insensitive)
    /// and ordered as `packaging.version` does (§Summary of permitted suffixes and relative ordering).
    private struct PEP440Version {
        /// PEP 440 §Pre-releases: the spellings alpha/beta/c/pre/preview normalize to a/b/rc.
        enum PreKind: Int, Comparable {
            case alpha, beta, releaseCandidate
            static func < (lhs: PreKind, rhs: PreKind) -> Bool { lhs.rawValue < rhs.rawValue }
        }

        enum LocalSegment {
            case numeric(Number)
            case alphanumeric([UInt8])
        }

        var epoch = Number.zero
        var release: [Number] = []
        var pre: (kind: PreKind, number: Number)?
        var post: Number?
        var dev: Number?
        var local: [LocalSegment]?

        init?(_ input: [UInt8]) {
            let bytes = input.map(asciiLowercased)
            var scanner = Scanner(bytes: bytes)
            _ = scanner.take("v")
            guard let first = scanner.digits() else { return nil }
            // PEP 440 §Version epochs: "N!".
            if scanner.take("!") {
                epoch = first
                guard let number = scanner.digits() else { return nil }
                release = [number]
            } else {
                release = [first]
            }
            while scanner.peek() == UInt8(ascii: "."), scanner.peek(1).map(isDigit) == true {
                scanner.index += 1
                guard let number = scanner.digits() else { return nil }
                release.append(number)
            }
            // PEP 440 §Release segment: trailing zeros are insignificant (1.0 == 1.0.0).
            while let last = release.last, last.isZero, release.count > 1 { release.removeLast() }
            pre = Self.preRelease(&scanner)
            post = Self.postRelease(&scanner)
            dev = Self.devRelease(&scanner)
            if scanner.take("+") {
                guard let segments = Self.localSegments(&scanner) else { return nil }
                local = segments
            }
            guard scanner.atEnd else { return nil }
        }

        /// PEP 440 §Pre-release spelling: `[-_.]?(alpha|a|beta|b|preview|pre|c|rc)[-_.]?N?`, implicit number 0.
        private static func preRelease(_ scanner: inout Scanner) -> (kind: PreKind, number: Number)? {
            let start = scanner.index
            scanner.skipSeparator()
            let labels: [(String, PreKind)] = [
                ("alpha", .alpha), ("a", .alpha), ("beta", .beta), ("b", .beta), ("preview", .releaseCandidate),
                ("pre", .releaseCandidate), ("c", .releaseCandidate), ("rc", .releaseCandidate),
            ]
            for (label, kind) in labels where scanner.take(label) {
                return (kind, scanner.optionalNumber())
            }
            scanner.index = start
            return nil
        }

        /// PEP 440 §Post-release spelling: `-N` (implicit) or `[-_.]?(post|rev|r)[-_.]?N?`.
        private static func postRelease(_ scanner: inout Scanner) -> Number? {
            let start = scanner.index
            if scanner.peek() == UInt8(ascii: "-"), scanner.peek(1).map(isDigit) == true {
                scanner.index += 1
                return scanner.digits()
            }
            scanner.skipSeparator()
            for label in ["post", "rev", "r"] where scanner.take(label) {
                return scanner.optionalNumber()
            }
            scanner.index = start
            return nil
        }

        /// PEP 440 §Development release spelling: `[-_.]?dev[-_.]?N?`.
        private static func devRelease(_ scanner: inout Scanner) -> Number? {
            let start = scanner.index
            scanner.skipSeparator()
            if scanner.take("dev") { return scanner.optionalNumber() }
            scanner.index = start
            return nil
        }

        /// PEP 440 §Local version identifiers: `[a-z0-9]+([-_.][a-z0-9]+)*`.
        private static func localSegments(_ scanner: inout Scanner) -> [LocalSegment]? {
            var segments: [LocalSegment] = []
            repeat {
                let start = scanner.index
                while let b = scanner.peek(), isDigit(b) || isLetter(b) { scanner.index += 1 }
                let segment = scanner.bytes[start..<scanner.index]
                guard !segment.isEmpty else { return nil }
                segments.append(segment.allSatisfy(isDigit) ? .numeric(Number(segment)) : .alphanumeric(Array(segment)))
            } while scanner.skipSeparator()
            return segments
        }

        /// `packaging.version._cmpkey`: epoch, release, pre (a dev-only release sorts before its pre-releases),
        /// post, dev, local.
        func compare(to other: PEP440Version) -> Int {
            if epoch != other.epoch { return sign(epoch, other.epoch) }
            for i in 0..<max(release.count, other.release.count) {
                let x = i < release.count ? release[i] : .zero
                let y = i < other.release.count ? other.release[i] : .zero
                if x != y { return sign(x, y) }
            }
            let preOrder = compareKeys(preKey, other.preKey)
            if preOrder != 0 { return preOrder }
            // A missing post-release sorts first, a missing dev-release last.
            let postOrder = compareKeys(post.map { Key.value($0) } ?? .low, other.post.map { Key.value($0) } ?? .low)
            if postOrder != 0 { return postOrder }
            let devOrder = compareKeys(dev.map { Key.value($0) } ?? .high, other.dev.map { Key.value($0) } ?? .high)
            if devOrder != 0 { return devOrder }
            return Self.compareLocal(local, other.local)
        }

        private enum Key {
            case low
            case value(Number)
            case pre(PreKind, Number)
            case high
        }

        private func compareKeys(_ a: Key, _ b: Key) -> Int {
            switch (a, b) {
            case (.low, .low), (.high, .high): 0
            case (.low, _), (_, .high): -1
            case (_, .low), (.high, _): 1
            case (.value(let x), .value(let y)): sign(x, y)
            case (.pre(let k, let x), .pre(let l, let y)): k != l ? sign(k, l) : sign(x, y)
            case (.value, .pre), (.pre, .value): 0  // never built together
            }
        }

        /// 1.0.dev0 sorts before 1.0a1; a final release sorts after its pre-releases.
        private var preKey: Key {
            switch (pre, post, dev) {
            case (nil, nil, .some): .low
            case (nil, _, _): .high
            case (.some(let p), _, _): .pre(p.kind, p.number)
            }
        }

        /// PEP 440 §Local version identifiers: segment-wise; numeric segments sort after alphanumeric ones and
        /// compare as integers; a longer local version wins when the prefix is equal; no local version sorts first.
        private static func compareLocal(_ a: [LocalSegment]?, _ b: [LocalSegment]?) -> Int {
            switch (a, b) {
            case (nil, nil): return 0
            case (nil, .some): return -1
            case (.some, nil): return 1
            case (.some(let x), .some(let y)):
                for (p, q) in zip(x, y) {
                    let result: Int
                    switch (p, q) {
                    case (.numeric(let m), .numeric(let n)): result = sign(m, n)
                    case (.numeric, .alphanumeric): result = 1
                    case (.alphanumeric, .numeric): result = -1
                    case (.alphanumeric(let m), .alphanumeric(let n)): result = compareBytes(m, n)
                    }
                    if result != 0 { return result }
                }
                return sign(x.count, y.count)
            }
        }
    }

    private struct Scanner {
        let bytes: [UInt8]
        var index = 0

        var atEnd: Bool { index == bytes.count }

        func peek(_ offset: Int = 0) -> UInt8? {
            index + offset < bytes.count ? bytes[index + offset] : nil
        }

        mutating func take(_ literal: String) -> Bool {
            let literalBytes = Array(literal.utf8)
            guard index + literalBytes.count <= bytes.count,
                bytes[index..<(index + literalBytes.count)].elementsEqual(literalBytes)
            else { return false }
            index += literalBytes.count
            return true
        }

        mutating func digits() -> Number? {
            let start = index
            while let b = peek(), isDigit(b) { index += 1 }
            return index > start ? Number(bytes[start..<index]) : nil
        }

        @discardableResult
        mutating func skipSeparator() -> Bool {
            guard let b = peek(), b == UInt8(ascii: "-") || b == UInt8(ascii: "_") || b == UInt8(ascii: ".") else {
                return false
            }
            index += 1
            return true
        }

        /// `[-_.]?N?` after a label. The separator is consumed even without digits, as the greedy regular
        /// expression does ("1.0a." is valid); no later part needs it except the implicit post-release "-N", and
        /// a "-" followed by digits here is this label's number in both readings.
        mutating func optionalNumber() -> Number {
            skipSeparator()
            return digits() ?? .zero
        }
    }

    // MARK: - Maven

    /// Maven's `ComparableVersion` (maven-artifact 3.x, as described in the POM reference §Version Order
    /// Specification): items are split on ".", "-" and digit/letter transitions; each "-" and each transition opens a
    /// nested list; trailing null items (0, "", empty lists) are trimmed from every list.
    ///
    /// This is the classic algorithm, which osv.dev's own Maven ordering (`maven.py`) follows, so ranges evaluate
    /// here as osv.dev evaluates them. maven-artifact 3.8+ differs for a qualifier after a dot: it reads `1.0.RC1`
    /// like `1.0-RC1` (equal), where this order (and osv.dev) puts `1.0.RC1` after it.
    private enum MavenVersion {
        enum Item {
            case integer(Number)
            case qualifier(rank: Int, value: [UInt8])
            case list([Item])
        }

        /// `StringItem.QUALIFIERS`; unknown qualifiers rank after them and compare lexically.
        private static let qualifiers = ["alpha", "beta", "milestone", "rc", "snapshot", "", "sp"]
        private static let releaseRank = 5
        private static let unknownRank = 7

        /// A mutable list used while parsing; converted to `Item` once complete.
        private final class Builder {
            enum Node {
                case item(Item)
                case list(Builder)
            }
            var nodes: [Node] = []

            func build() -> Item {
                var items: [Item] = nodes.map { node in
                    switch node {
                    case .item(let item): item
                    case .list(let builder): builder.build()
                    }
                }
                // ListItem.normalize(): drop null items from the end, looking past non-null nested lists.
                var i = items.count - 1
                while i >= 0 {
                    if MavenVersion.isNull(items[i]) {
                        items.remove(at: i)
                    } else if case .list = items[i] {
                        // keep scanning
                    } else {
                        break
                    }
                    i -= 1
                }
                return .list(items)
            }
        }

        static func parse(_ bytes: [UInt8]) -> Item? {
            guard !bytes.isEmpty,
                bytes.allSatisfy({ $0 >= 0x20 && $0 != 0x7F && !isSpace($0) })
            else { return nil }
            // ComparableVersion lowercases with Locale.ENGLISH.
            let text = Array(String(decoding: bytes, as: UTF8.self).lowercased().utf8)
            let root = Builder()
            var list = root
            var digitRun = false
            var start = 0

            func item(_ slice: ArraySlice<UInt8>, digits: Bool, followedByDigit: Bool) -> Item {
                digits ? .integer(Number(slice)) : qualifier(slice, followedByDigit: followedByDigit)
            }
            func openList() {
                let child = Builder()
                list.nodes.append(.list(child))
                list = child
            }

            for (i, c) in text.enumerated() {
                if c == UInt8(ascii: ".") || c == UInt8(ascii: "-") {
                    if i == start {
                        list.nodes.append(.item(.integer(.zero)))
                    } else {
                        list.nodes.append(.item(item(text[start..<i], digits: digitRun, followedByDigit: false)))
                    }
                    start = i + 1
                    if c == UInt8(ascii: "-") { openList() }
                } else if isDigit(c) {
                    if !digitRun && i > start {
                        list.nodes.append(.item(qualifier(text[start..<i], followedByDigit: true)))
                        start = i
                        openList()
                    }
                    digitRun = true
                } else {
                    if digitRun && i > start {
                        list.nodes.append(.item(.integer(Number(text[start..<i]))))
                        start = i
                        openList()
                    }
                    digitRun = false
                }
            }
            if text.count > start {
                list.nodes.append(.item(item(text[start...], digits: digitRun, followedByDigit: false)))
            }
            return root.build()
        }

        /// `StringItem(value, followedByDigit)`: a/b/m directly before a digit mean alpha/beta/milestone; ga, final and
        /// release mean "" (the release itself); cr means rc.
        private static func qualifier(_ slice: ArraySlice<UInt8>, followedByDigit: Bool) -> Item {
            var value = String(decoding: slice, as: UTF8.self)
            if followedByDigit && slice.count == 1 {
                switch value {
                case "a": value = "alpha"
                case "b": value = "beta"
                case "m": value = "milestone"
                default: break
                }
            }
            switch value {
            case "ga", "final", "release": value = ""
            case "cr": value = "rc"
            default: break
            }
            let rank = qualifiers.firstIndex(of: value) ?? unknownRank
            return .qualifier(rank: rank, value: Array(value.utf8))
        }

        private static func isNull(_ item: Item) -> Bool {
            switch item {
            case .integer(let n): n.isZero
            case .qualifier(let rank, _): rank == releaseRank
            case .list(let items): items.isEmpty
            }
        }

        /// `Item.compareTo(Item)`, where nil stands for a missing item (padding of the shorter list).
        static func compare(_ lhs: Item, _ rhs: Item?) -> Int {
            switch lhs {
            case .integer(let n):
                switch rhs {
                case nil: return n.isZero ? 0 : 1
                case .integer(let m): return sign(n, m)
                case .qualifier, .list: return 1
                }
            case .qualifier(let rank, let value):
                switch rhs {
                case nil: return sign(rank, releaseRank)
                case .integer, .list: return -1
                case .qualifier(let otherRank, let otherValue):
                    if rank != otherRank { return sign(rank, otherRank) }
                    return rank == unknownRank ? compareBytes(value, otherValue) : 0
                }
            case .list(let items):
                switch rhs {
                case nil:
                    guard let first = items.first else { return 0 }
                    return compare(first, nil)
                case .integer: return -1
                case .qualifier: return 1
                case .list(let others):
                    for i in 0..<max(items.count, others.count) {
                        let result: Int
                        if i < items.count {
                            result = compare(items[i], i < others.count ? others[i] : nil)
                        } else {
                            result = -compare(others[i], nil)
                        }
                        if result != 0 { return result }
                    }
                    return 0
                }
            }
        }
    }

    // MARK: - Debian

    /// Debian Policy §5.6.12 `Version`: `[epoch:]upstream_version[-debian_revision]`, compared as dpkg's
    /// `verrevcmp` does.
    private struct DebianVersion {
        var epoch: Number
        var upstream: [UInt8]
        var revision: [UInt8]

        init?(_ bytes: [UInt8]) {
            var rest = bytes[...]
            epoch = .zero
            // The epoch is everything before the first colon and must be a non-empty number.
            if let colon = rest.firstIndex(of: UInt8(ascii: ":")) {
                let epochBytes = rest[..<colon]
                guard !epochBytes.isEmpty, epochBytes.allSatisfy(isDigit) else { return nil }
                epoch = Number(epochBytes)
                rest = rest[(colon + 1)...]
            }
            // The revision is everything after the last hyphen; a missing revision compares like "0".
            revision = []
            if let dash = rest.lastIndex(of: UInt8(ascii: "-")) {
                revision = Array(rest[(dash + 1)...])
                guard !revision.isEmpty else { return nil }
                rest = rest[..<dash]
            }
            upstream = Array(rest)
            guard !upstream.isEmpty else { return nil }
            // Policy §5.6.12: upstream uses alphanumerics and . + - ~ (and : after an epoch); the revision
            // alphanumerics and + . ~. dpkg only warns when upstream does not start with a digit, so that is accepted.
            let upstreamExtra = Array(".+-~:".utf8)
            let revisionExtra = Array(".+~".utf8)
            guard upstream.allSatisfy({ isDigit($0) || isLetter($0) || upstreamExtra.contains($0) }),
                revision.allSatisfy({ isDigit($0) || isLetter($0) || revisionExtra.contains($0) })
            else { return nil }
        }

        func compare(to other: DebianVersion) -> Int {
            if epoch != other.epoch { return sign(epoch, other.epoch) }
            let upstreamOrder = Self.verrevcmp(upstream, other.upstream)
            if upstreamOrder != 0 { return upstreamOrder }
            return Self.verrevcmp(revision, other.revision)
        }

        /// dpkg `order()`: "~" sorts before everything, even the end of the part; letters sort before non-letters.
        private static func order(_ c: UInt8?) -> Int {
            guard let c else { return 0 }
            if isDigit(c) { return 0 }
            if isLetter(c) { return Int(c) }
            if c == UInt8(ascii: "~") { return -1 }
            return Int(c) + 256
        }

        /// dpkg `verrevcmp()`: alternately compare the non-digit prefix (by `order`) and the digit run (numerically).
        private static func verrevcmp(_ a: [UInt8], _ b: [UInt8]) -> Int {
            var i = 0
            var j = 0
            func at(_ s: [UInt8], _ k: Int) -> UInt8? { k < s.count ? s[k] : nil }
            while i < a.count || j < b.count {
                while (at(a, i).map { !isDigit($0) } ?? false) || (at(b, j).map { !isDigit($0) } ?? false) {
                    let ac = order(at(a, i))
                    let bc = order(at(b, j))
                    if ac != bc { return sign(ac, bc) }
                    i += 1
                    j += 1
                }
                let aStart = i
                while let c = at(a, i), isDigit(c) { i += 1 }
                let bStart = j
                while let c = at(b, j), isDigit(c) { j += 1 }
                let x = Number(a[aStart..<i])
                let y = Number(b[bStart..<j])
                if x != y { return sign(x, y) }
            }
            return 0
        }
    }
}
