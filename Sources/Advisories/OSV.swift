import TUF

/// One advisory in the Open Source Vulnerability format (OSV schema 1.6, https://ossf.github.io/osv-schema/), as
/// osv.dev exports it per ecosystem. Only what matching needs is kept; unknown fields are ignored, as the schema
/// asks of consumers. A record is refused with the JSON pointer of the first problem.
public struct OSVRecord: Sendable, Equatable {
    public var id: String
    /// RFC 3339 time of the last change: an import keeps the newer of two records with one id.
    public var modified: String
    /// Present when the advisory was withdrawn: it no longer matches anything.
    public var withdrawn: String?
    public var aliases: [String]
    public var summary: String?
    public var affected: [Affected]
    /// The record's own severity: its CVSS v3 vector's base score, else its `database_specific.severity` (see
    /// `assessment(for:)` for a finding's, which also reads the matched package's).
    public var severity: Assessment

    /// OSV §affected: one package and the versions of it the advisory covers.
    public struct Affected: Sendable, Equatable {
        /// The OSV ecosystem name as written ("PyPI", "Debian:12"); `ecosystem` is nil when Bulwark has no version
        /// order for it (such entries are kept but match nothing).
        public var ecosystemName: String
        public var ecosystem: Ecosystem?
        /// The package name, normalised as its ecosystem compares names (PEP 503 for PyPI).
        public var name: String
        public var ranges: [Range]
        public var versions: [String]
        /// This package's own severity (OSV 1.6 `affected[].severity`, or its `database_specific.severity`), used
        /// when the record gives no CVSS vector of its own.
        public var severity: Assessment?
    }

    /// OSV §affected[].ranges[]: events over one version order.
    public struct Range: Sendable, Equatable {
        public enum Kind: String, Sendable {
            case semver = "SEMVER"
            case ecosystem = "ECOSYSTEM"
            case git = "GIT"
        }
        public enum Event: Sendable, Equatable {
            case introduced(String)
            case fixed(String)
            case lastAffected(String)
            case limit(String)
            public var version: String {
                switch self {
                case .introduced(let v), .fixed(let v), .lastAffected(let v), .limit(let v): v
                }
            }
        }
        public var kind: Kind
        public var events: [Event]
    }

    /// How severe an advisory is and where that came from.
    public struct Assessment: Sendable, Equatable {
        /// The CVSS v3 base score (nil when the rating came from a label, or nothing said).
        public var score: Double?
        /// nil: the record gives neither a v3 vector nor a label Bulwark knows.
        public var rating: Severity?
        /// `cvss-v3`, `database_specific`, or `unknown`.
        public var source: String
    }

    public init(json bytes: [UInt8]) throws(DocumentError) {
        let root = try Node.document(bytes)
        _ = try root.object()
        id = try root.requiredString("id")
        guard id.utf8.count <= 128, id.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value < 0x7F }) else {
            throw DocumentError("/id", "must be 1-128 printable ASCII characters")
        }
        modified = try root.requiredString("modified")
        withdrawn = try root.optionalString("withdrawn")
        aliases = try root.optionalArray("aliases").map { node throws(DocumentError) in try node.string() }
        summary = try root.optionalString("summary")
        var affected: [Affected] = []
        for node in try root.optionalArray("affected") {
            // An entry without a package describes only GIT commits (OSV §affected): nothing Bulwark matches.
            if try node.member("package") == nil {
                let kinds = try node.optionalArray("ranges").map { range throws(DocumentError) in
                    try range.member("type")?.value.stringValue
                }
                guard !kinds.isEmpty, kinds.allSatisfy({ $0 == "GIT" }) else {
                    throw DocumentError(node.pointer + "/package", "is required")
                }
                continue
            }
            affected.append(try Self.affected(node))
        }
        self.affected = affected
        severity =
            try Self.assessment(root) ?? Assessment(score: nil, rating: nil, source: "unknown")
    }

    /// The severity a `severity[]` array (a CVSS v3 vector) or a `database_specific.severity` label gives; nil when
    /// neither says anything Bulwark can read.
    static func assessment(_ node: Node) throws(DocumentError) -> Assessment? {
        for severity in try node.optionalArray("severity") {
            if let found = try cvss(severity) {
                return Assessment(score: found.score, rating: found.rating, source: "cvss-v3")
            }
        }
        if let text = try node.member("database_specific")?.member("severity")?.value.stringValue,
            let rating = Severity(label: text)
        {
            return Assessment(score: nil, rating: rating, source: "database_specific")
        }
        return nil
    }

    /// A finding's severity: the record's CVSS v3 vector; else the most severe vector among the matched packages'
    /// own entries; else the record's label; else the most severe label among them. A package's severity is never
    /// borrowed from another package's entry.
    public func assessment(for matched: [Affected]) -> Assessment {
        let own = matched.compactMap(\.severity)
        if severity.source == "cvss-v3" { return severity }
        if let worst = own.filter({ $0.source == "cvss-v3" }).max(by: { ($0.score ?? 0) < ($1.score ?? 0) }) {
            return worst
        }
        if severity.rating != nil { return severity }
        if let worst = own.max(by: { ($0.rating ?? .none) < ($1.rating ?? .none) }) { return worst }
        return severity
    }

    /// A `severity[]` entry: a `CVSS_V3` vector is scored (CVSS v3.1 §7.1); other types (CVSS_V2, CVSS_V4, Ubuntu)
    /// are skipped, a malformed v3 vector is refused.
    private static func cvss(_ node: Node) throws(DocumentError) -> (score: Double, rating: Severity)? {
        guard try node.requiredString("type") == "CVSS_V3" else { return nil }
        let scoreNode = try node.required("score")
        do {
            let cvss = try CVSSv3(vector: try scoreNode.string())
            return (cvss.baseScore, cvss.rating)
        } catch {
            throw scoreNode.fail("\(error)")
        }
    }

    private static func affected(_ node: Node) throws(DocumentError) -> Affected {
        var ecosystemName: String
        var name: String
        var ecosystem: Ecosystem?
        let package = try node.required("package")
        if try package.member("ecosystem") == nil, try package.member("name") == nil,
            let purlNode = try package.member("purl")
        {
            // A package named by its purl alone (OSV §affected[].package: `ecosystem` and `name`, or `purl`).
            let purl: PackageURL
            do { purl = try PackageURL(parsing: try purlNode.string()) } catch {
                throw purlNode.fail("not a package URL: \(error)")
            }
            guard let mapped = purl.osvPackage else {
                throw purlNode.fail("names no ecosystem Bulwark orders versions for")
            }
            (ecosystem, name) = (mapped.ecosystem, mapped.name)
            ecosystemName = mapped.ecosystem.osvName
            if let release = purl.debianRelease { ecosystemName += ":" + release }
        } else {
            ecosystemName = try package.requiredString("ecosystem")
            name = try package.requiredString("name")
            ecosystem = Ecosystem(osvName: ecosystemName)
            if let ecosystem { name = ecosystem.normalizedName(name) }
        }
        var ranges: [Range] = []
        for range in try node.optionalArray("ranges") {
            let typeNode = try range.required("type")
            guard let kind = Range.Kind(rawValue: try typeNode.string()) else {
                throw typeNode.fail("must be SEMVER, ECOSYSTEM or GIT")
            }
            var events: [Range.Event] = []
            for event in try range.required("events").array() {
                let members = try event.object()
                guard members.count == 1, let (key, value) = members.members.first, let version = value.stringValue,
                    !version.isEmpty
                else {
                    throw event.fail("must be one of introduced, fixed, last_affected or limit, with a version")
                }
                switch key {
                case "introduced": events.append(.introduced(version))
                case "fixed": events.append(.fixed(version))
                case "last_affected": events.append(.lastAffected(version))
                case "limit": events.append(.limit(version))
                default: throw event.fail("must be one of introduced, fixed, last_affected or limit")
                }
            }
            guard events.contains(where: { if case .introduced = $0 { true } else { false } }) else {
                throw range.fail("a range needs an introduced event")
            }
            ranges.append(Range(kind: kind, events: events))
        }
        let versions = try node.optionalArray("versions").map { node throws(DocumentError) in try node.string() }
        return Affected(
            ecosystemName: ecosystemName, ecosystem: ecosystem, name: name, ranges: ranges, versions: versions,
            severity: try assessment(node))
    }
}

extension OSVRecord.Affected {
    /// Whether `version` of this package is affected (OSV schema §"Evaluation"): listed in `versions`, or inside a
    /// SEMVER or ECOSYSTEM range. nil when the version cannot be ordered in this ecosystem while a range needs it:
    /// the caller treats that as affected (a version Bulwark cannot place is not a safe one).
    ///
    /// A PyPI version with a local segment (`2.0.0+cu118`, a local build of 2.0.0) is affected when either it or its
    /// public version is: PEP 440 orders it after 2.0.0, which would let it slip past `last_affected: 2.0.0`.
    public func affects(_ version: String) -> Bool? {
        let direct = evaluate(version)
        guard ecosystem == .pypi, let plus = version.firstIndex(of: "+") else { return direct }
        let base = evaluate(String(version[..<plus]))
        if direct == true || base == true { return true }
        return direct == nil || base == nil ? nil : false
    }

    func evaluate(_ version: String) -> Bool? {
        guard let ecosystem else { return false }
        if versions.contains(version) { return true }
        if versions.contains(where: { VersionOrder.compare($0, version, in: ecosystem) == 0 }) { return true }
        var unknown = false
        for range in ranges where range.kind != .git {
            switch Self.inside(version, range, order: range.kind == .semver ? .semver : ecosystem) {
            case true?: return true
            case nil: unknown = true
            case false?: break
            }
        }
        return unknown ? nil : false
    }

    /// The schema's algorithm: events sorted by version (an `introduced` of "0" first), then walked: an
    /// `introduced` at or below the version opens the range, a `fixed` at or below it closes it, a `last_affected`
    /// below it closes it; a `limit` at or below it ends the range.
    static func inside(_ version: String, _ range: OSVRecord.Range, order: Ecosystem) -> Bool? {
        var keyed: [(event: OSVRecord.Range.Event, zero: Bool)] = range.events.map {
            if case .introduced(let v) = $0, v == "0" { return ($0, true) }
            return ($0, false)
        }
        var failed = false
        keyed.sort { a, b in
            if a.zero != b.zero { return a.zero }
            if a.zero { return false }
            guard let c = VersionOrder.compare(a.event.version, b.event.version, in: order) else {
                failed = true
                return false
            }
            return c < 0
        }
        if failed { return nil }
        var affected = false
        for (event, zero) in keyed {
            let c = zero ? 1 : VersionOrder.compare(version, event.version, in: order)
            guard let c else { return nil }
            switch event {
            case .introduced: if c >= 0 { affected = true }
            case .fixed: if c >= 0 { affected = false }
            case .lastAffected: if c > 0 { affected = false }
            case .limit: if c >= 0 { return false }
            }
        }
        return affected
    }
}

extension OSVRecord {
    /// The fixed versions the record names for a package (what a report suggests upgrading to).
    public func fixes(for entry: Affected) -> [String] {
        entry.ranges.flatMap { range in
            range.events.compactMap { if case .fixed(let v) = $0 { v } else { nil } }
        }
    }
}
