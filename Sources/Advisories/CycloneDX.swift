/// A CycloneDX 1.5 or 1.6 JSON bill of materials (https://cyclonedx.org/docs/1.6/json/) as the gate reads it: every
/// component, nested ones included, must name a package URL and a version, or the SBOM is refused with the JSON
/// pointer of the component. An SBOM that lists nothing is refused too: a gate over nothing proves nothing.
public struct SBOM: Sendable {
    public var specVersion: String
    public var serialNumber: String?
    /// The BOM's `version` (1 when absent): BOM-Links name it.
    public var bomVersion: Int64
    /// `metadata.component` as `name@version`, when given (what the SBOM describes).
    public var subject: String?
    public var components: [Component]
    /// Vulnerability statements embedded in the SBOM (CycloneDX VEX can live in the BOM itself).
    public var statements: [VEXStatement]

    public struct Component: Sendable, Equatable {
        public var bomRef: String?
        public var name: String
        public var version: String
        public var purl: PackageURL
        /// Where it is in the document, for reports.
        public var pointer: String
    }

    /// The spec versions whose JSON schema this reader follows.
    public static let specVersions: Set<String> = ["1.5", "1.6"]
    /// Bounds a hostile SBOM: more components than this is refused.
    public static let maximumComponents = 100_000

    public init(json bytes: [UInt8]) throws(DocumentError) {
        let root = try Node.document(bytes)
        try Self.header(root, versions: Self.specVersions)
        specVersion = try root.requiredString("specVersion")
        serialNumber = try root.optionalString("serialNumber")
        bomVersion = try root.member("version")?.value.integerValue ?? 1
        if let component = try root.member("metadata")?.member("component") {
            let name = try component.optionalString("name")
            let version = try component.optionalString("version")
            subject = name.map { name in version.map { "\(name)@\($0)" } ?? name }
        }
        var components: [Component] = []
        // Depth first in document order, with a stack (linear however flat or deep the tree is).
        var pending = Array(try root.optionalArray("components").reversed())
        while let node = pending.popLast() {
            guard components.count < Self.maximumComponents else {
                throw node.fail("more than \(Self.maximumComponents) components")
            }
            components.append(try Self.component(node))
            pending.append(contentsOf: try node.optionalArray("components").reversed())
        }
        guard !components.isEmpty else {
            throw DocumentError("/components", "the SBOM lists no components: there is nothing to check")
        }
        self.components = components
        statements = try root.optionalArray("vulnerabilities").map(VEXStatement.init)
    }

    /// `bomFormat` is CycloneDX and `specVersion` one this reader follows.
    static func header(_ root: Node, versions: Set<String>) throws(DocumentError) {
        _ = try root.object()
        let format = try root.required("bomFormat")
        guard try format.string() == "CycloneDX" else { throw format.fail("must be \"CycloneDX\"") }
        let version = try root.required("specVersion")
        guard versions.contains(try version.string()) else {
            throw version.fail("must be one of \(versions.sorted().joined(separator: ", "))")
        }
    }

    static func component(_ node: Node) throws(DocumentError) -> Component {
        let name = try node.requiredString("name")
        let versionNode = try node.required("version")
        let version = try versionNode.string()
        guard !version.isEmpty else { throw versionNode.fail("must not be empty") }
        let purlNode = try node.required("purl")
        var purl: PackageURL
        do {
            purl = try PackageURL(parsing: try purlNode.string())
        } catch {
            throw purlNode.fail("not a package URL: \(error)")
        }
        if let stated = purl.version, stated != version {
            throw purlNode.fail("names version \(stated), the component says \(version)")
        }
        purl.version = version
        return Component(
            bomRef: try node.optionalString("bom-ref"), name: name, version: version, purl: purl,
            pointer: node.pointer)
    }

    /// The indices of the components a VEX `affects[].ref` names: its `bom-ref`; a BOM-Link
    /// (`urn:cdx:SERIAL/VERSION#bom-ref`, CycloneDX 1.5 §BOM-Link) to this very SBOM, its serial number and version
    /// both checked (an SBOM without a serial number cannot be linked to); or its package URL *with* a version
    /// (a statement about "lodash" is not a statement about every lodash).
    public func componentIndices(named reference: String) -> [Int] {
        var ref = reference
        if reference.hasPrefix("urn:cdx:") {
            guard let serialNumber, let hash = reference.firstIndex(of: "#") else { return [] }
            let document = reference[reference.index(reference.startIndex, offsetBy: 8)..<hash]
            guard let slash = document.lastIndex(of: "/"),
                Int64(document[document.index(after: slash)...]) == bomVersion
            else { return [] }
            let serial = String(document[..<slash])
            guard "urn:uuid:" + serial == serialNumber || serial == serialNumber else { return [] }
            ref = String(reference[reference.index(after: hash)...])
            return components.indices.filter { components[$0].bomRef == ref }
        }
        let byRef = components.indices.filter { components[$0].bomRef == ref }
        if !byRef.isEmpty { return byRef }
        guard let purl = try? PackageURL(parsing: ref), purl.version != nil else { return [] }
        return components.indices.filter { components[$0].purl.matches(purl) }
    }
}

/// One CycloneDX vulnerability statement (VEX): an `analysis.state` of `not_affected` with a `justification`
/// counts as a waiver for the components it `affects` (CycloneDX 1.6 §vulnerabilities.analysis).
public struct VEXStatement: Sendable, Equatable {
    public var id: String
    public var state: String?
    public var justification: String?
    public var detail: String?
    /// `affects[].ref`, each with the versions its `versions[]` lists as unaffected (nil: every version the ref
    /// names).
    public var affects: [String]
    public var affectedVersions: [[String]?]
    public var pointer: String

    /// The justifications CycloneDX 1.5/1.6 define; anything else is refused.
    public static let justifications: Set<String> = [
        "code_not_present", "code_not_reachable", "requires_configuration", "requires_dependency",
        "requires_environment", "protected_by_compiler", "protected_at_runtime", "protected_at_perimeter",
        "protected_by_mitigating_control",
    ]
    public static let states: Set<String> = [
        "resolved", "resolved_with_pedigree", "exploitable", "in_triage", "false_positive", "not_affected",
    ]

    init(_ node: Node) throws(DocumentError) {
        id = try node.requiredString("id")
        pointer = node.pointer
        let analysis = try node.member("analysis")
        if let stateNode = try analysis?.member("state") {
            let state = try stateNode.string()
            guard Self.states.contains(state) else { throw stateNode.fail("unknown analysis state \(state)") }
            self.state = state
        }
        if let node = try analysis?.member("justification") {
            let justification = try node.string()
            guard Self.justifications.contains(justification) else {
                throw node.fail("unknown justification \(justification)")
            }
            self.justification = justification
        }
        detail = try analysis?.optionalString("detail")
        var refs: [String] = []
        var versions: [[String]?] = []
        for entry in try node.optionalArray("affects") {
            refs.append(try entry.requiredString("ref"))
            if let list = try entry.member("versions") {
                var unaffected: [String] = []
                for item in try list.array() {
                    let status = try item.optionalString("status")
                    guard status == nil || status == "unaffected" else { continue }
                    if let version = try item.optionalString("version") { unaffected.append(version) }
                }
                versions.append(unaffected)
            } else {
                versions.append(nil)
            }
        }
        affects = refs
        affectedVersions = versions
    }

    /// The components of `sbom` this statement waives its advisory for (empty unless `waives`).
    public func waivedIndices(in sbom: SBOM) -> Set<Int> {
        guard waives else { return [] }
        var out = Set<Int>()
        for (ref, versions) in zip(affects, affectedVersions) {
            for index in sbom.componentIndices(named: ref) {
                if let versions, !versions.contains(sbom.components[index].version) { continue }
                out.insert(index)
            }
        }
        return out
    }

    /// Whether this statement waives its advisory for the components it names.
    public var waives: Bool { state == "not_affected" && justification != nil }
}

/// A CycloneDX document carrying only vulnerability statements (a separate VEX file, specVersion 1.4-1.6).
public struct VEXDocument: Sendable {
    public var statements: [VEXStatement]

    public init(json bytes: [UInt8]) throws(DocumentError) {
        let root = try Node.document(bytes)
        try SBOM.header(root, versions: ["1.4", "1.5", "1.6"])
        statements = try root.required("vulnerabilities").array().map(VEXStatement.init)
    }
}
