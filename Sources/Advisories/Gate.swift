import Crypto
public import JSON
import TUF

extension PackageURL {
    /// Whether this component's package URL is the package `pattern` names: same type, namespace and name (as the
    /// ecosystem compares names) and, when the pattern has a version, that version. Qualifiers are not compared.
    public func matches(_ pattern: PackageURL) -> Bool {
        if let mine = osvPackage, let theirs = pattern.osvPackage {
            guard mine.ecosystem == theirs.ecosystem, mine.name == theirs.name else { return false }
        } else {
            guard type == pattern.type, namespace == pattern.namespace, name == pattern.name else { return false }
        }
        return pattern.version.map { $0 == version } ?? true
    }
}

/// An operator's decision that an advisory does not block releases containing a package until a date
/// (`bulwark advisories waive OSV-ID --purl P --reason TEXT --until DATE`).
public struct Waiver: Sendable, Equatable {
    /// The advisory's id or one of its aliases (a CVE id).
    public var advisory: String
    /// A package URL; without a version it covers every version of the package.
    public var purl: String
    public var reason: String
    /// Seconds since 1970: the waiver counts before this instant, not at or after it.
    public var until: Int64
    /// Who waived it (the operator's name from their certificate).
    public var by: String

    public init(advisory: String, purl: String, reason: String, until: Int64, by: String) {
        self.advisory = advisory
        self.purl = purl
        self.reason = reason
        self.until = until
        self.by = by
    }

    /// Whether this waiver, its purl parsed once as `pattern`, covers `record` for `component` at `now`.
    func covers(_ record: OSVRecord, _ component: SBOM.Component, pattern: PackageURL, now: Int64) -> Bool {
        guard now < until, advisory == record.id || record.aliases.contains(advisory) else { return false }
        return component.purl.matches(pattern)
    }
}

/// Where the gate finds the advisories for a package (the imported database; a dictionary in tests).
public protocol AdvisorySource {
    /// Every record with an `affected` entry for `name` (already normalised) in `ecosystem`.
    func records(ecosystem: Ecosystem, name: String) throws -> [OSVRecord]
}

/// The vulnerability gate's decision over one SBOM: every component matched against the advisories, each finding
/// rated, waived (by an operator's waiver or a VEX `not_affected` statement with a justification) or blocking.
/// Pure: the advisories, waivers and the time come in; a report comes out.
public struct GateReport: Sendable {
    public struct Finding: Sendable, Equatable {
        public var advisory: String
        public var aliases: [String]
        public var summary: String?
        public var purl: String
        public var component: String
        /// `low`…`critical`, or `unknown` when the advisory rates nothing Bulwark can read.
        public var severity: String
        /// The CVSS v3 base score, as text with one decimal (`9.8`).
        public var score: String?
        public var severitySource: String
        public var fixed: [String]
        /// True when the component's version could not be placed in its ecosystem's order.
        public var versionUnordered: Bool
        /// `waiver` or `vex` when waived; nil otherwise.
        public var waivedBy: String?
        public var blocking: Bool
    }

    public var subject: String?
    public var sbomSHA256: String
    public var components: Int
    public var blockSeverity: Severity
    public var findings: [Finding]
    /// Components whose package URL names no ecosystem Bulwark has advisories for (`pkg:generic`, `pkg:rpm`, …),
    /// by purl, at most `maximumListed` of them; `uncheckedCount` counts them all.
    public var unchecked: [String]
    public var uncheckedCount: Int
    /// Whether unchecked components block (`release.blockUnchecked`).
    public var blockUnchecked: Bool
    /// More findings than `maximumFindings`: the rest were not rated, and the release is blocked.
    public var truncated: Bool
    /// The waivers the decision used (those that waived a finding at or above the threshold).
    public var waiversUsed: [Waiver]
    public var vexUsed: [VEXStatement]
    public var at: Int64

    public static let maximumFindings = 10_000
    public static let maximumListed = 1_000

    /// Components checked against advisories.
    public var checked: Int { components - uncheckedCount }

    /// Blocked by a finding at or above the threshold that nothing waived; by a report cut short; by an SBOM of
    /// which nothing could be checked (a gate over nothing proves nothing); or, with `blockUnchecked`, by any
    /// component that could not be.
    public var blocked: Bool {
        findings.contains { $0.blocking } || truncated || checked == 0 || (blockUnchecked && uncheckedCount > 0)
    }

    /// Runs the gate. An advisory of unknown severity counts as at the threshold: a product that cannot tell how bad
    /// a known vulnerability is does not ship it unless someone waives it. Components with the same package URL are
    /// matched once.
    public static func evaluate(
        sbom: SBOM, sbomBytes: [UInt8], vex: [VEXStatement] = [], advisories: some AdvisorySource, waivers: [Waiver],
        blockSeverity: Severity, blockUnchecked: Bool = false, now: Int64
    ) throws -> GateReport {
        var findings: [Finding] = []
        var used: [Waiver] = []
        var usedVEX: [VEXStatement] = []
        var truncated = false
        var unchecked: [String] = []
        var uncheckedCount = 0
        // Waivers with their purls parsed once (a waiver whose purl does not parse covers nothing).
        let patterns = waivers.compactMap { waiver in (try? PackageURL(parsing: waiver.purl)).map { (waiver, $0) } }
        // Which advisory ids each waiving VEX statement covers, for which components (resolved once).
        var vexWaived: [(statement: VEXStatement, components: Set<Int>)] = []
        for statement in sbom.statements + vex where statement.waives {
            let indices = statement.waivedIndices(in: sbom)
            if !indices.isEmpty { vexWaived.append((statement, indices)) }
        }
        var cache: [String: [OSVRecord]] = [:]
        var seen = Set<String>()
        components: for (index, component) in sbom.components.enumerated() {
            let purl = component.purl.description
            guard seen.insert(purl).inserted else { continue }
            guard let package = component.purl.osvPackage else {
                uncheckedCount += 1
                if unchecked.count < maximumListed { unchecked.append(purl) }
                continue
            }
            let key = package.ecosystem.osvName + "\u{0}" + package.name
            let records: [OSVRecord]
            if let cached = cache[key] {
                records = cached
            } else {
                records = try advisories.records(ecosystem: package.ecosystem, name: package.name)
                cache[key] = records
            }
            let release = component.purl.debianRelease
            for record in records where record.withdrawn == nil {
                var matched: [OSVRecord.Affected] = []
                var unordered = false
                var fixed: [String] = []
                for entry in record.affected
                where entry.ecosystem == package.ecosystem && entry.name == package.name
                    && Self.sameRelease(entry.ecosystemName, release)
                {
                    switch entry.affects(component.version) {
                    case true?: matched.append(entry)
                    case nil:
                        matched.append(entry)
                        unordered = true
                    case false?: break
                    }
                    fixed += record.fixes(for: entry)
                }
                guard !matched.isEmpty else { continue }
                guard findings.count < maximumFindings else {
                    truncated = true
                    break components
                }
                let assessment = record.assessment(for: matched)
                let atThreshold = assessment.rating.map { $0 >= blockSeverity } ?? true
                var waivedBy: String?
                if let waiver = patterns.first(where: {
                    $0.0.covers(record, component, pattern: $0.1, now: now)
                })?.0 {
                    waivedBy = "waiver"
                    if atThreshold, !used.contains(waiver) { used.append(waiver) }
                } else if let waived = vexWaived.first(where: { entry in
                    (entry.statement.id == record.id || record.aliases.contains(entry.statement.id))
                        && entry.components.contains(index)
                }) {
                    waivedBy = "vex"
                    if atThreshold, !usedVEX.contains(waived.statement) { usedVEX.append(waived.statement) }
                }
                findings.append(
                    Finding(
                        advisory: record.id, aliases: record.aliases, summary: record.summary, purl: purl,
                        component: component.pointer, severity: assessment.rating?.label ?? "unknown",
                        score: assessment.score.map(Self.oneDecimal), severitySource: assessment.source,
                        fixed: fixed, versionUnordered: unordered, waivedBy: waivedBy,
                        blocking: atThreshold && waivedBy == nil))
            }
        }
        findings.sort { ($0.blocking ? 0 : 1, $0.advisory, $0.purl) < ($1.blocking ? 0 : 1, $1.advisory, $1.purl) }
        return GateReport(
            subject: sbom.subject, sbomSHA256: hexEncode(SHA256.hash(data: sbomBytes)),
            components: sbom.components.count, blockSeverity: blockSeverity, findings: findings, unchecked: unchecked,
            uncheckedCount: uncheckedCount, blockUnchecked: blockUnchecked, truncated: truncated, waiversUsed: used,
            vexUsed: usedVEX, at: now)
    }

    /// An OSV entry for one Debian release ("Debian:12") applies to a component of that release only; an entry
    /// or a component that names no release applies across them.
    static func sameRelease(_ ecosystemName: String, _ release: String?) -> Bool {
        guard let release, let colon = ecosystemName.firstIndex(of: ":") else { return true }
        return ecosystemName[ecosystemName.index(after: colon)...].split(separator: ".").first.map(String.init)
            == release
    }

    static func oneDecimal(_ score: Double) -> String {
        let tenths = Int(score * 10 + 0.5)
        return "\(tenths / 10).\(tenths % 10)"
    }

    /// The report as canonical JSON (TUF §4.2's encoding: sorted keys, no whitespace), the bytes whose SHA-256 the
    /// release's TUF `custom` carries.
    public func canonicalJSON() throws -> [UInt8] { try CanonicalJSON.encode(json) }

    public var json: JSONValue {
        var root = JSONObject()
        if let subject { root.set("subject", .string(subject)) }
        root.set("sbomSHA256", .string(sbomSHA256))
        root.set("components", .integer(Int64(components)))
        root.set("blockSeverity", .string(blockSeverity.label))
        root.set("blocked", .bool(blocked))
        root.set("at", .integer(at))
        root.set("checked", .integer(Int64(checked)))
        root.set("unchecked", .array(unchecked.map(JSONValue.string)))
        root.set("uncheckedCount", .integer(Int64(uncheckedCount)))
        root.set("blockUnchecked", .bool(blockUnchecked))
        if truncated { root.set("truncated", .bool(true)) }
        root.set("findings", .array(findings.map(\.json)))
        root.set("waivers", .array(waiversUsed.map(\.json)))
        root.set(
            "vex",
            .array(
                vexUsed.map { statement in
                    var object = JSONObject()
                    object.set("id", .string(statement.id))
                    object.set("justification", .string(statement.justification ?? ""))
                    object.set("affects", .array(statement.affects.map(JSONValue.string)))
                    return .object(object)
                }))
        return .object(root)
    }
}

extension GateReport.Finding {
    public var json: JSONValue {
        var object = JSONObject()
        object.set("advisory", .string(advisory))
        object.set("aliases", .array(aliases.map(JSONValue.string)))
        if let summary { object.set("summary", .string(summary)) }
        object.set("purl", .string(purl))
        object.set("component", .string(component))
        object.set("severity", .string(severity))
        if let score { object.set("score", .string(score)) }
        object.set("severitySource", .string(severitySource))
        object.set("fixed", .array(fixed.map(JSONValue.string)))
        if versionUnordered { object.set("versionUnordered", .bool(true)) }
        if let waivedBy { object.set("waivedBy", .string(waivedBy)) }
        object.set("blocking", .bool(blocking))
        return .object(object)
    }
}

extension Waiver {
    public var json: JSONValue {
        var object = JSONObject()
        object.set("advisory", .string(advisory))
        object.set("purl", .string(purl))
        object.set("reason", .string(reason))
        object.set("until", .integer(until))
        object.set("by", .string(by))
        return .object(object)
    }
}
