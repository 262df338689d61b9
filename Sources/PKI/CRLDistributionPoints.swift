import SwiftASN1
public import X509

/// The CRL Distribution Points extension (RFC 5280 §4.2.1.13, OID 2.5.29.31), which swift-certificates has no type
/// for. Bulwark writes one DistributionPoint whose name is a single fullName URI, so a relying party knows where the
/// hub publishes its CRL; no reasons and no cRLIssuer (the CA signs its own CRL). Non-critical, as §4.2.1.13 asks.
///
///     CRLDistributionPoints ::= SEQUENCE SIZE (1..MAX) OF DistributionPoint
///     DistributionPoint ::= SEQUENCE { distributionPoint [0] DistributionPointName OPTIONAL, ... }
///     DistributionPointName ::= CHOICE { fullName [0] GeneralNames, nameRelativeToCRLIssuer [1] ... }
///
/// `[0] DistributionPointName` is a tagged CHOICE and so explicitly tagged (X.680 §31.2.7) even in the implicitly
/// tagged PKIX module; `fullName [0] GeneralNames` is implicit.
public struct CRLDistributionPoints: Sendable, Hashable {
    public static let oid: ASN1ObjectIdentifier = [2, 5, 29, 31]

    /// The fullName URIs of every distribution point, in order.
    public let uris: [String]

    /// One distribution point naming `uri`, which must be an `http` or `https` URL of printable ASCII (an IA5String;
    /// RFC 5280 §4.2.1.13 says HTTP points serve the DER CRL).
    public init(uri: String) throws(PKIError) {
        let scalars = uri.unicodeScalars
        guard uri.hasPrefix("http://") || uri.hasPrefix("https://"), uri.utf8.count <= 1024,
            scalars.allSatisfy({ (0x21...0x7E).contains($0.value) })
        else { throw PKIError(.invalidRequest, "a CRL distribution point is an http(s) URL of printable ASCII") }
        uris = [uri]
    }

    /// Reads the extension; distribution points named otherwise than by a URI (a directory name, relative names)
    /// are skipped.
    public init(_ ext: Certificate.Extension) throws(PKIError) {
        guard ext.oid == Self.oid else { throw PKIError(.malformed, "not a CRL distribution points extension") }
        do {
            let root = try DER.parse(ext.value)
            uris = try DER.sequence(root, identifier: .sequence) { points in
                var uris: [String] = []
                while let point = points.next() {
                    try DER.sequence(point, identifier: .sequence) { fields in
                        let found = try DER.optionalExplicitlyTagged(&fields, tagNumber: 0, tagClass: .contextSpecific)
                        {
                            name -> [String] in
                            guard name.identifier == Self.fullName, case .constructed(let names) = name.content
                            else { return [] }
                            return try names.compactMap { node -> String? in
                                guard node.identifier == Self.uniformResourceIdentifier else { return nil }
                                return String(try ASN1IA5String(derEncoded: node, withIdentifier: node.identifier))
                            }
                        }
                        uris += found ?? []
                        while fields.next() != nil {}  // reasons, cRLIssuer: not used here
                    }
                }
                return uris
            }
        } catch {
            throw PKIError(.malformed, "CRL distribution points do not parse: \(error)")
        }
    }

    private static let fullName = ASN1Identifier(tagWithNumber: 0, tagClass: .contextSpecific)
    private static let uniformResourceIdentifier = ASN1Identifier(tagWithNumber: 6, tagClass: .contextSpecific)
}

extension CRLDistributionPoints: CertificateExtensionConvertible {
    public func makeCertificateExtension() throws -> Certificate.Extension {
        var serializer = DER.Serializer()
        try serializer.appendConstructedNode(identifier: .sequence) { points in
            for uri in uris {
                try points.appendConstructedNode(identifier: .sequence) { point in
                    try point.serialize(explicitlyTaggedWithTagNumber: 0, tagClass: .contextSpecific) { name in
                        try name.appendConstructedNode(identifier: Self.fullName) { names in
                            try ASN1IA5String(uri).serialize(
                                into: &names, withIdentifier: Self.uniformResourceIdentifier)
                        }
                    }
                }
            }
        }
        return Certificate.Extension(oid: Self.oid, critical: false, value: serializer.serializedBytes[...])
    }
}

extension Certificate.Extensions {
    /// The CRL Distribution Points extension, if present.
    public var crlDistributionPoints: CRLDistributionPoints? {
        get throws(PKIError) {
            guard let ext = self[oid: CRLDistributionPoints.oid] else { return nil }
            return try CRLDistributionPoints(ext)
        }
    }
}
