import Advisories
import Testing

@Suite struct CVSSTests {
    /// NVD base vectors and their published v3.1 base scores, each also checked by hand against §7.1.
    @Test(arguments: [
        ("AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", 9.8, Severity.critical),
        ("AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H", 10.0, .critical),  // CVE-2021-44228 (Log4Shell)
        ("AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N", 7.5, .high),
        ("AV:L/AC:L/PR:L/UI:N/S:U/C:H/I:H/A:H", 7.8, .high),
        ("AV:N/AC:L/PR:N/UI:R/S:C/C:L/I:L/A:N", 6.1, .medium),
        ("AV:N/AC:H/PR:N/UI:N/S:U/C:L/I:N/A:N", 3.7, .low),
        ("AV:P/AC:H/PR:H/UI:R/S:U/C:N/I:N/A:N", 0.0, .none),
        ("AV:N/AC:L/PR:L/UI:N/S:C/C:H/I:H/A:H", 9.9, .critical),
        ("AV:A/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", 8.8, .high),
        ("AV:N/AC:L/PR:H/UI:N/S:C/C:L/I:L/A:N", 5.5, .medium),
        ("AV:N/AC:L/PR:H/UI:R/S:C/C:L/I:L/A:N", 4.8, .medium),
        ("AV:N/AC:L/PR:N/UI:N/S:U/C:L/I:N/A:N", 5.3, .medium),
        ("AV:N/AC:H/PR:N/UI:R/S:U/C:L/I:N/A:N", 3.1, .low),
        ("AV:L/AC:L/PR:H/UI:N/S:U/C:L/I:N/A:N", 2.3, .low),
        ("AV:P/AC:L/PR:N/UI:N/S:U/C:N/I:L/A:N", 2.4, .low),
        ("AV:N/AC:L/PR:N/UI:N/S:C/C:L/I:N/A:N", 5.8, .medium),
    ])
    func scoresBaseVector(_ metrics: String, _ score: Double, _ rating: Severity) throws {
        let cvss = try CVSSv3(vector: "CVSS:3.1/" + metrics)
        #expect(cvss.baseScore == score)
        #expect(cvss.rating == rating)
    }

    @Test func scoresVersion30WithTheSameFormula() throws {
        let v30 = try CVSSv3(vector: "CVSS:3.0/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H")
        #expect(v30.baseScore == 9.8)
        #expect(v30 == (try CVSSv3(vector: "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H")))
    }

    @Test func acceptsMetricsInAnyOrder() throws {
        let cvss = try CVSSv3(vector: "CVSS:3.1/A:H/I:H/C:H/S:C/UI:N/PR:N/AC:L/AV:N")
        #expect(cvss.baseScore == 10.0)
    }

    @Test func ignoresTemporalAndEnvironmentalMetrics() throws {
        let base = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"
        let temporal = "/E:P/RL:O/RC:C"
        let environmental = "/CR:H/IR:X/AR:L/MAV:L/MAC:H/MPR:H/MUI:R/MS:C/MC:N/MI:L/MA:X"
        let cvss = try CVSSv3(vector: base + temporal + environmental)
        #expect(cvss.baseScore == 9.8)
    }

    @Test(arguments: [
        ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H", "missing base metric A"),
        ("CVSS:3.1/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", "missing base metric AV"),
        ("CVSS:3.1", "missing base metric AV"),
        ("CVSS:3.1/AV:N/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", "duplicate metric AV"),
        ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H/E:P/E:U", "duplicate metric E"),
        ("CVSS:3.1/AV:X/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", "unknown value \"X\" for metric AV"),
        ("CVSS:3.1/AV:NN/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", "unknown value"),
        ("CVSS:3.1/AV:n/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", "unknown value"),
        ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H/E:Z", "unknown value"),
        ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H/XX:N", "unknown metric \"XX\""),
        ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H/", "malformed metric"),
        ("CVSS:3.1//AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", "malformed metric"),
        ("CVSS:3.1/AV", "malformed metric"),
        ("AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", "must start with \"CVSS:3.1/\""),
        ("cvss:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", "must start with"),
        ("", "must start with"),
        ("AV:N/AC:L/Au:N/C:P/I:P/A:P", "CVSS v2"),
        ("CVSS:2.0/AV:N/AC:L/Au:N/C:P/I:P/A:P", "is not v3"),
        ("CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N", "is not v3"),
        ("CVSS:3.2/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", "is not v3"),
    ])
    func refusesInvalidVectors(_ vector: String, _ reason: String) {
        let error = #expect(throws: CVSSError.self) { try CVSSv3(vector: vector) }
        #expect(error?.description.contains(reason) == true, "\(vector): \(error?.description ?? "no error")")
    }
}

@Suite struct SeverityTests {
    @Test func ratesScoresPerSection5() {
        #expect(Severity(score: 0.0) == .none)
        #expect(Severity(score: 0.1) == .low)
        #expect(Severity(score: 3.9) == .low)
        #expect(Severity(score: 4.0) == .medium)
        #expect(Severity(score: 6.9) == .medium)
        #expect(Severity(score: 7.0) == .high)
        #expect(Severity(score: 8.9) == .high)
        #expect(Severity(score: 9.0) == .critical)
        #expect(Severity(score: 10.0) == .critical)
        #expect(Severity(score: -1) == .none)
        #expect(Severity(score: .nan) == .none)
    }

    @Test func readsLabelsCaseInsensitively() {
        #expect(Severity(label: "CRITICAL") == .critical)
        #expect(Severity(label: "High") == .high)
        #expect(Severity(label: "MODERATE") == .medium)
        #expect(Severity(label: "medium") == .medium)
        #expect(Severity(label: "low") == .low)
        #expect(Severity(label: "None") == Severity.none)
        #expect(Severity(label: "severe") == nil)
        #expect(Severity(label: "") == nil)
    }

    @Test func labelsRoundTrip() {
        for severity in Severity.allCases {
            #expect(Severity(label: severity.label) == severity)
        }
        #expect(Severity.allCases.map(\.label) == ["none", "low", "medium", "high", "critical"])
    }

    @Test func ordersBySeverity() {
        #expect(Severity.allCases == Severity.allCases.sorted())
        let ascending: [Severity] = [.none, .low, .medium, .high, .critical]
        for (lower, higher) in zip(ascending, ascending.dropFirst()) {
            #expect(lower < higher)
            #expect(!(higher < lower))
        }
        #expect(Severity.allCases.max() == .critical)
    }
}
