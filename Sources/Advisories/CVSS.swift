/// A CVSS v3 base score computed from a vector string, as the FIRST CVSS v3.1 specification defines it.
///
/// Only the base metric group (§2) is scored; temporal (§3) and environmental (§4) metrics are validated and then
/// ignored, because advisories publish base vectors and Bulwark has no environment to apply.
public struct CVSSv3: Sendable, Equatable {
    private let attackVector: Character
    private let attackComplexity: Character
    private let privilegesRequired: Character
    private let userInteraction: Character
    private let scope: Character
    private let confidentiality: Character
    private let integrity: Character
    private let availability: Character

    /// Parses a vector string such as "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H" (CVSS v3.1 specification §6).
    ///
    /// "CVSS:3.0/" vectors are accepted and scored with the v3.1 formula (v3.1 changed only the rounding and the
    /// wording of metrics). The eight base metrics are mandatory; every metric may appear at most once, in any
    /// order; metric names and values are case-sensitive.
    public init(vector: String) throws(CVSSError) {
        let text = Self.trimmed(vector)
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard let prefix = parts.first, prefix.hasPrefix("CVSS:") else {
            if text.contains("Au:") {
                throw CVSSError("CVSS v2 vector: only CVSS v3.0 and v3.1 vectors are supported")
            }
            throw CVSSError("not a CVSS v3 vector: it must start with \"CVSS:3.1/\" or \"CVSS:3.0/\"")
        }
        let version = prefix.dropFirst("CVSS:".count)
        guard version == "3.1" || version == "3.0" else {
            throw CVSSError("CVSS version \"\(version)\" is not v3: only CVSS v3.0 and v3.1 vectors are supported")
        }
        var metrics: [Substring: Character] = [:]
        for part in parts.dropFirst() {
            guard let colon = part.firstIndex(of: ":") else {
                throw CVSSError("malformed metric \"\(part)\": expected NAME:VALUE")
            }
            let name = part[..<colon]
            let value = part[part.index(after: colon)...]
            guard let allowed = Self.allowedValues[String(name)] else {
                throw CVSSError("unknown metric \"\(name)\"")
            }
            guard value.count == 1, let letter = value.first, allowed.contains(letter) else {
                throw CVSSError("unknown value \"\(value)\" for metric \(name)")
            }
            guard metrics[name] == nil else { throw CVSSError("duplicate metric \(name)") }
            metrics[name] = letter
        }
        func base(_ name: Substring) throws(CVSSError) -> Character {
            guard let value = metrics[name] else { throw CVSSError("missing base metric \(name)") }
            return value
        }
        attackVector = try base("AV")
        attackComplexity = try base("AC")
        privilegesRequired = try base("PR")
        userInteraction = try base("UI")
        scope = try base("S")
        confidentiality = try base("C")
        integrity = try base("I")
        availability = try base("A")
    }

    /// CVSS v3.1 specification §7.1 (base metric equations) with §7.4 weights, rounded with Roundup (Appendix A).
    public var baseScore: Double {
        let changed = scope == "C"
        let impactSubScore =
            1 - (1 - Self.impactWeight(confidentiality)) * (1 - Self.impactWeight(integrity))
            * (1 - Self.impactWeight(availability))
        let impact: Double
        if changed {
            impact = 7.52 * (impactSubScore - 0.029) - 3.25 * Self.power(impactSubScore - 0.02, 15)
        } else {
            impact = 6.42 * impactSubScore
        }
        let exploitability =
            8.22 * Self.attackVectorWeight(attackVector) * (attackComplexity == "L" ? 0.77 : 0.44)
            * Self.privilegesWeight(privilegesRequired, scopeChanged: changed) * (userInteraction == "N" ? 0.85 : 0.62)
        guard impact > 0 else { return 0 }
        if changed {
            return Self.roundUp(min(1.08 * (impact + exploitability), 10))
        }
        return Self.roundUp(min(impact + exploitability, 10))
    }

    /// Qualitative severity rating of the base score (§5).
    public var rating: Severity { Severity(score: baseScore) }

    /// §7.4: Attack Vector N 0.85, A 0.62, L 0.55, P 0.2.
    private static func attackVectorWeight(_ value: Character) -> Double {
        switch value {
        case "N": 0.85
        case "A": 0.62
        case "L": 0.55
        default: 0.2
        }
    }

    /// §7.4: Privileges Required N 0.85; L 0.62 (0.68 if Scope is Changed); H 0.27 (0.5 if Scope is Changed).
    private static func privilegesWeight(_ value: Character, scopeChanged: Bool) -> Double {
        switch value {
        case "N": 0.85
        case "L": scopeChanged ? 0.68 : 0.62
        default: scopeChanged ? 0.5 : 0.27
        }
    }

    /// §7.4: Confidentiality, Integrity and Availability H 0.56, L 0.22, N 0.
    private static func impactWeight(_ value: Character) -> Double {
        switch value {
        case "H": 0.56
        case "L": 0.22
        default: 0
        }
    }

    private static func power(_ base: Double, _ exponent: Int) -> Double {
        var result = 1.0
        for _ in 0..<exponent { result *= base }
        return result
    }

    /// Appendix A: the smallest number with one decimal place that is >= the input, computed on integers (input
    /// times 100,000, rounded) so that floating-point error such as 4.000000000000001 does not round up to 4.1.
    private static func roundUp(_ value: Double) -> Double {
        let product = value * 100_000
        // Scores are within 0...10.8, so the conversion cannot overflow; `Int(_:)` truncates, hence the + 0.5.
        guard product.isFinite, product >= 0, product < 10_000_000 else { return product > 0 ? 10 : 0 }
        let scaled = Int(product + 0.5)
        if scaled % 10_000 == 0 { return Double(scaled) / 100_000 }
        return Double(scaled / 10_000 + 1) / 10
    }

    /// Allowed values of every CVSS v3.1 metric: base (§2, Table 15), temporal (§3) and environmental (§4).
    private static let allowedValues: [String: Set<Character>] = [
        "AV": ["N", "A", "L", "P"], "AC": ["L", "H"], "PR": ["N", "L", "H"], "UI": ["N", "R"], "S": ["U", "C"],
        "C": ["H", "L", "N"], "I": ["H", "L", "N"], "A": ["H", "L", "N"],
        "E": ["X", "H", "F", "P", "U"], "RL": ["X", "U", "W", "T", "O"], "RC": ["X", "C", "R", "U"],
        "CR": ["X", "H", "M", "L"], "IR": ["X", "H", "M", "L"], "AR": ["X", "H", "M", "L"],
        "MAV": ["X", "N", "A", "L", "P"], "MAC": ["X", "L", "H"], "MPR": ["X", "N", "L", "H"], "MUI": ["X", "N", "R"],
        "MS": ["X", "U", "C"], "MC": ["X", "N", "L", "H"], "MI": ["X", "N", "L", "H"], "MA": ["X", "N", "L", "H"],
    ]

    private static func trimmed(_ text: String) -> Substring {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\n" || $0 == "\r" }
        var slice = Substring(text)
        while let first = slice.first, isSpace(first) { slice = slice.dropFirst() }
        while let last = slice.last, isSpace(last) { slice = slice.dropLast() }
        return slice
    }
}

/// Qualitative severity rating scale, CVSS v3.1 specification §5 (Table 14).
public enum Severity: Int, Sendable, Comparable, CaseIterable {
    case none
    case low
    case medium
    case high
    case critical

    /// Case-insensitive "none", "low", "medium", "high" or "critical"; GitHub advisories say "moderate" for medium.
    public init?(label: String) {
        switch label.lowercased() {
        case "none": self = .none
        case "low": self = .low
        case "medium", "moderate": self = .medium
        case "high": self = .high
        case "critical": self = .critical
        default: return nil
        }
    }

    public var label: String {
        switch self {
        case .none: "none"
        case .low: "low"
        case .medium: "medium"
        case .high: "high"
        case .critical: "critical"
        }
    }

    /// §5: None 0.0, Low 0.1-3.9, Medium 4.0-6.9, High 7.0-8.9, Critical 9.0-10.0. Scores are expected on the
    /// one-decimal scale; anything in between falls to the band below the next threshold, NaN and negatives to none.
    public init(score: Double) {
        if score >= 9.0 {
            self = .critical
        } else if score >= 7.0 {
            self = .high
        } else if score >= 4.0 {
            self = .medium
        } else if score > 0 {
            self = .low
        } else {
            self = .none
        }
    }

    public static func < (lhs: Severity, rhs: Severity) -> Bool {
        lhs.rawValue < rhs.rawValue
    }
}

public struct CVSSError: Error, Sendable, CustomStringConvertible {
    public let description: String

    init(_ description: String) {
        self.description = description
    }
}
