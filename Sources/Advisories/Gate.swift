public import Crypto
public import TUF

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

    func covers(_ record: OSVRecord, _ component: SBOM.Component, now: Int64) -> Bool {
        guard now < until, advisory == record.id || record.aliases.contains(advisory),
            let pattern = try? PackageURL(parsing: purl)
        else { return false }
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
    /// The waivers the decision used (those that waived a finding at or above the threshold).
    public var waiversUsed: [Waiver]
    public var vexUsed: [VEXStatement]
    public var at: Int64
    public var blocked: Bool { findings.contains { $0.blocking } }

    /// Runs the gate. An advisory of unknown severity counts as at the threshold: a product that cannot tell how bad
    /// a known vulnerability is does not ship it unless someone waives it.
    public static func evaluate(
        sbom: SBOM, sbomBytes: [UInt8], vex: [VEXStatement] = [], advisories: some AdvisorySource, waivers: [Waiver],
        blockSeverity: Severity, now: Int64
    ) throws -> GateReport {
        var findings: [Finding] = []
        var used: [Waiver] = []
        var usedVEX: [VEXStatement] = []
        let statements = (sbom.statements + vex).filter(\.waives)
        var cache: [String: [OSVRecord]] = [:]
        for component in sbom.components {
            guard let package = component.purl.osvPackage else { continue }
            let key = package.ecosystem.osvName + "\u{0}" + package.name
            let records: [OSVRecord]
            if let cached = cache[key] {
                records = cached
            } else {
                records = try advisories.records(ecosystem: package.ecosystem, name: package.name)
                cache[key] = records
            }
            for record in records where record.withdrawn == nil {
                var hit = false
                var unordered = false
                var fixed: [String] = []
                for entry in record.affected
                where entry.ecosystem == package.ecosystem && entry.name == package.name {
                    switch entry.affects(component.version) {
                    case true?: hit = true
                    case nil:
                        hit = true
                        unordered = true
                    case false?: break
                    }
                    fixed += record.fixes(for: entry)
                }
                guard hit else { continue }
                let rating = record.severity.rating
                let atThreshold = rating.map { $0 >= blockSeverity } ?? true
                var waivedBy: String?
                if let waiver = waivers.first(where: { $0.covers(record, component, now: now) }) {
                    waivedBy = "waiver"
                    if atThreshold, !used.contains(waiver) { used.append(waiver) }
                } else if let statement = statements.first(where: { statement in
                    (statement.id == record.id || record.aliases.contains(statement.id))
                        && statement.affects.contains { sbom.components(named: $0).contains(component) }
                }) {
                    waivedBy = "vex"
                    if atThreshold, !usedVEX.contains(statement) { usedVEX.append(statement) }
                }
                findings.append(
                    Finding(
                        advisory: record.id, aliases: record.aliases, summary: record.summary,
                        purl: component.purl.description, component: component.pointer,
                        severity: rating?.label ?? "unknown", score: record.severity.score.map(Self.oneDecimal),
                        severitySource: record.severity.source, fixed: fixed, versionUnordered: unordered,
                        waivedBy: waivedBy, blocking: atThreshold && waivedBy == nil))
            }
        }
        findings.sort { ($0.blocking ? 0 : 1, $0.advisory, $0.purl) < ($1.blocking ? 0 : 1, $1.advisory, $1.purl) }
        return GateReport(
            subject: sbom.subject, sbomSHA256: hexEncode(SHA256.hash(data: sbomBytes)),
            components: sbom.components.count, blockSeverity: blockSeverity, findings: findings, waiversUsed: used,
            vexUsed: usedVEX, at: now)
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
