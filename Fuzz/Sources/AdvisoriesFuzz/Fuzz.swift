import Advisories
import FuzzSupport

/// The vulnerability gate's parsers, all fed untrusted bytes: a CycloneDX SBOM and VEX (from a release author), an
/// OSV record (from a downloaded export), package URLs, CVSS vectors and version strings. Invariants: nothing
/// crashes; an accepted package URL's canonical form parses back to the same URL; an accepted CVSS v3 vector scores
/// within 0-10; version order is antisymmetric and reflexive in every ecosystem.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = FuzzSupport.bytes(data, size)
    if let sbom = try? SBOM(json: input) {
        for component in sbom.components {
            guard let again = try? PackageURL(parsing: component.purl.description), again == component.purl else {
                FuzzSupport.violated("a component's purl does not round-trip: \(component.purl)")
            }
        }
    }
    _ = try? VEXDocument(json: input)
    if let record = try? OSVRecord(json: input) {
        for entry in record.affected { _ = entry.affects("1.0.0") }
    }
    let text = String(decoding: input.prefix(512), as: UTF8.self)
    if let purl = try? PackageURL(parsing: text) {
        guard let again = try? PackageURL(parsing: purl.description), again == purl else {
            FuzzSupport.violated("purl does not round-trip: \(text) → \(purl.description)")
        }
    }
    if let cvss = try? CVSSv3(vector: text), !(0...10).contains(cvss.baseScore) {
        FuzzSupport.violated("CVSS score out of range: \(cvss.baseScore)")
    }
    let parts = FuzzSupport.fields(input[...], separator: UInt8(ascii: " "), maxFields: 2)
    if parts.count == 2 {
        let a = String(decoding: parts[0], as: UTF8.self)
        let b = String(decoding: parts[1], as: UTF8.self)
        for ecosystem: Ecosystem in [.semver, .pypi, .npm, .go, .cratesIO, .maven, .debian, .swiftURL] {
            let forward = VersionOrder.compare(a, b, in: ecosystem)
            let backward = VersionOrder.compare(b, a, in: ecosystem)
            guard forward.map({ -$0 }) == backward else {
                FuzzSupport.violated("\(ecosystem) order is not antisymmetric for \(a) and \(b)")
            }
            if VersionOrder.compare(a, a, in: ecosystem).map({ $0 != 0 }) == true {
                FuzzSupport.violated("\(ecosystem) order is not reflexive for \(a)")
            }
        }
    }
    return 0
}
