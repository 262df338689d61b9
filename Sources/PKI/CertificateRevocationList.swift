import Crypto
public import Foundation
import SwiftASN1
public import X509

/// A version 2 CRL (RFC 5280 §5), as the hub CA signs it: swift-certificates has no CRL type, so this is built and
/// read with SwiftASN1. The decoded fields sit next to the bytes that were signed (`tbsBytes`) and the whole DER.
///
///     CertificateList ::= SEQUENCE { tbsCertList TBSCertList, signatureAlgorithm AlgorithmIdentifier,
///                                    signatureValue BIT STRING }
///     TBSCertList ::= SEQUENCE { version INTEGER (v2 = 1), signature AlgorithmIdentifier, issuer Name,
///                                thisUpdate Time, nextUpdate Time OPTIONAL,
///                                revokedCertificates SEQUENCE OF SEQUENCE { userCertificate CertificateSerialNumber,
///                                    revocationDate Time, crlEntryExtensions Extensions OPTIONAL } OPTIONAL,
///                                crlExtensions [0] EXPLICIT Extensions OPTIONAL }
///
/// Only what Bulwark issues is read back: v2, ecdsa-with-SHA256, a nextUpdate and a CRL number (§5.1.2.4 and
/// §5.2.3 make both mandatory for a conforming issuer), and no unknown critical extension.
public struct CertificateRevocationList: Sendable, Hashable {
    /// One revoked certificate (§5.1.2.6).
    public struct Entry: Sendable, Hashable {
        public var serialNumber: Certificate.SerialNumber
        public var revocationDate: Date
        /// §5.3.1: absent rather than `unspecified`.
        public var reason: Reason?

        public init(serialNumber: Certificate.SerialNumber, revocationDate: Date, reason: Reason? = nil) {
            self.serialNumber = serialNumber
            self.revocationDate = revocationDate
            self.reason = reason
        }
    }

    /// CRLReason (§5.3.1). `certificateHold` is the one reversible reason: an entry on hold may leave a later CRL.
    public enum Reason: UInt8, Sendable, Hashable {
        case unspecified = 0
        case keyCompromise = 1
        case caCompromise = 2
        case affiliationChanged = 3
        case superseded = 4
        case cessationOfOperation = 5
        case certificateHold = 6
        case removeFromCRL = 8
        case privilegeWithdrawn = 9
        case aaCompromise = 10
    }

    public let issuer: DistinguishedName
    public let thisUpdate: Date
    public let nextUpdate: Date
    /// CRLNumber (§5.2.3): increases with every CRL the CA issues.
    public let number: UInt64
    /// The keyIdentifier of the AuthorityKeyIdentifier extension (§5.2.1), the CA's subject key identifier.
    public let authorityKeyIdentifier: [UInt8]?
    public let entries: [Entry]
    /// The DER of TBSCertList: the bytes the signature covers.
    public let tbsBytes: [UInt8]
    /// The ECDSA-Sig-Value (DER) from the signatureValue BIT STRING.
    public let signature: [UInt8]
    public let derBytes: [UInt8]

    /// `-----BEGIN X509 CRL-----`, the label of RFC 7468 §6.
    public var pem: String { PEMDocument(type: Self.pemLabel, derBytes: derBytes).pemString }

    public static let pemLabel = "X509 CRL"

    /// Whether `serialNumber` is listed.
    public func lists(_ serialNumber: Certificate.SerialNumber) -> Bool {
        entries.contains { $0.serialNumber == serialNumber }
    }

    /// Whether the signature is the issuer's: ECDSA P-256 with SHA-256 over `tbsBytes`.
    public func isSignatureValid(for publicKey: Certificate.PublicKey) -> Bool {
        guard let key = P256.Signing.PublicKey(publicKey),
            let signature = try? P256.Signing.ECDSASignature(derRepresentation: signature)
        else { return false }
        return key.isValidSignature(signature, for: tbsBytes)
    }

    public init(pemEncoded text: String) throws(PKIError) {
        let document: PEMDocument
        do { document = try PEMDocument(pemString: text) } catch {
            throw PKIError(.malformed, "CRL PEM does not parse: \(error)")
        }
        guard document.discriminator == Self.pemLabel else {
            throw PKIError(.malformed, "PEM label is \(document.discriminator), not \(Self.pemLabel)")
        }
        try self.init(derEncoded: document.derBytes)
    }

    public init(derEncoded bytes: [UInt8]) throws(PKIError) {
        do {
            let root = try DER.parse(bytes)
            var fields: Fields?
            var outerAlgorithm: ASN1ObjectIdentifier?
            var signatureBits: ASN1BitString?
            try DER.sequence(root, identifier: .sequence) { nodes in
                guard let tbs = nodes.next() else { throw PKIError(.malformed, "no TBSCertList") }
                fields = try Self.parseTBS(tbs)
                outerAlgorithm = try Self.parseAlgorithm(&nodes)
                signatureBits = try ASN1BitString(derEncoded: &nodes)
            }
            guard let fields, let signatureBits, outerAlgorithm == Self.ecdsaWithSHA256 else {
                throw PKIError(.malformed, "CRL is not signed with ecdsa-with-SHA256")
            }
            guard signatureBits.paddingBits == 0 else { throw PKIError(.malformed, "signature is not whole octets") }
            issuer = fields.issuer
            thisUpdate = fields.thisUpdate
            nextUpdate = fields.nextUpdate
            number = fields.number
            authorityKeyIdentifier = fields.authorityKeyIdentifier
            entries = fields.entries
            tbsBytes = fields.tbsBytes
            signature = Array(signatureBits.bytes)
            derBytes = bytes
        } catch let error as PKIError {
            throw error
        } catch {
            throw PKIError(.malformed, "CRL does not parse: \(error)")
        }
    }

    // MARK: - Writing (the CA signs; see `CertificateAuthority.issueRevocationList`)

    /// The DER of TBSCertList. Entries are written in serial order so equal inputs give equal bytes; the list is left
    /// out when empty (§5.1.2.6).
    static func tbsCertList(
        issuer: DistinguishedName, thisUpdate: Date, nextUpdate: Date, entries: [Entry], number: UInt64,
        authorityKeyIdentifier: ArraySlice<UInt8>?
    ) throws -> [UInt8] {
        var extensions: [Certificate.Extension] = []
        if let authorityKeyIdentifier {
            extensions.append(
                try Certificate.Extension(
                    AuthorityKeyIdentifier(keyIdentifier: authorityKeyIdentifier), critical: false))
        }
        var numberDER = DER.Serializer()
        try numberDER.serialize(number)
        extensions.append(
            Certificate.Extension(oid: Self.crlNumber, critical: false, value: numberDER.serializedBytes[...]))

        var serializer = DER.Serializer()
        try serializer.appendConstructedNode(identifier: .sequence) { tbs in
            try tbs.serialize(1)  // v2
            try Self.serializeAlgorithm(&tbs)
            try tbs.serialize(issuer)
            try ASN1Time.serialize(thisUpdate, into: &tbs)
            try ASN1Time.serialize(nextUpdate, into: &tbs)
            let sorted = entries.sorted { $0.serialNumber.bytes.lexicographicallyPrecedes($1.serialNumber.bytes) }
            if !sorted.isEmpty {
                try tbs.appendConstructedNode(identifier: .sequence) { list in
                    for entry in sorted {
                        try list.appendConstructedNode(identifier: .sequence) { item in
                            try item.serialize(entry.serialNumber.bytes)
                            try ASN1Time.serialize(entry.revocationDate, into: &item)
                            if let reason = entry.reason {
                                // CRLReason ::= ENUMERATED, a one-octet value for every defined reason.
                                let value: ArraySlice<UInt8> = [0x0A, 0x01, reason.rawValue]
                                try item.serializeSequenceOf([
                                    Certificate.Extension(oid: Self.reasonCode, critical: false, value: value)
                                ])
                            }
                        }
                    }
                }
            }
            try tbs.serialize(explicitlyTaggedWithTagNumber: 0, tagClass: .contextSpecific) { tagged in
                try tagged.serializeSequenceOf(extensions)
            }
        }
        return serializer.serializedBytes
    }

    /// CertificateList from the signed bytes and an ECDSA-Sig-Value.
    static func certificateList(tbs: [UInt8], signature: [UInt8]) throws -> [UInt8] {
        var serializer = DER.Serializer()
        try serializer.appendConstructedNode(identifier: .sequence) { list in
            list.serializeRawBytes(tbs)
            try Self.serializeAlgorithm(&list)
            try list.serialize(ASN1BitString(bytes: signature[...]))
        }
        return serializer.serializedBytes
    }

    // MARK: - Parsing

    private struct Fields {
        var issuer: DistinguishedName
        var thisUpdate: Date
        var nextUpdate: Date
        var number: UInt64
        var authorityKeyIdentifier: [UInt8]?
        var entries: [Entry]
        var tbsBytes: [UInt8]
    }

    private static func parseTBS(_ node: ASN1Node) throws -> Fields {
        try DER.sequence(node, identifier: .sequence) { nodes in
            guard try Int(derEncoded: &nodes) == 1 else { throw PKIError(.malformed, "CRL is not version 2") }
            guard try parseAlgorithm(&nodes) == ecdsaWithSHA256 else {
                throw PKIError(.malformed, "TBSCertList signature is not ecdsa-with-SHA256")
            }
            guard let issuerNode = nodes.next() else { throw PKIError(.malformed, "no issuer") }
            let issuer = try DistinguishedName(derEncoded: issuerNode)
            guard let thisNode = nodes.next() else { throw PKIError(.malformed, "no thisUpdate") }
            let thisUpdate = try ASN1Time.parse(thisNode)
            var rest = nodes
            guard let nextNode = rest.next(), let nextUpdate = try? ASN1Time.parse(nextNode) else {
                throw PKIError(.malformed, "no nextUpdate")
            }
            nodes = rest
            var entries: [Entry] = []
            rest = nodes
            if let list = rest.next(), list.identifier == .sequence {
                nodes = rest
                entries = try DER.sequence(list, identifier: .sequence) { items in
                    var entries: [Entry] = []
                    while let item = items.next() { entries.append(try parseEntry(item)) }
                    return entries
                }
            }
            let extensions =
                try DER.optionalExplicitlyTagged(&nodes, tagNumber: 0, tagClass: .contextSpecific) {
                    try DER.sequence(of: Certificate.Extension.self, identifier: .sequence, rootNode: $0)
                } ?? []
            var number: UInt64?
            var keyIdentifier: [UInt8]?
            for ext in extensions {
                switch ext.oid {
                case crlNumber: number = try UInt64(derEncoded: try DER.parse(ext.value))
                case .X509ExtensionID.authorityKeyIdentifier:
                    keyIdentifier = try AuthorityKeyIdentifier(ext).keyIdentifier.map(Array.init)
                default:
                    if ext.critical { throw PKIError(.malformed, "unknown critical CRL extension \(ext.oid)") }
                }
            }
            guard let number else { throw PKIError(.malformed, "no CRL number") }
            return Fields(
                issuer: issuer, thisUpdate: thisUpdate, nextUpdate: nextUpdate, number: number,
                authorityKeyIdentifier: keyIdentifier, entries: entries, tbsBytes: Array(node.encodedBytes))
        }
    }

    private static func parseEntry(_ node: ASN1Node) throws -> Entry {
        try DER.sequence(node, identifier: .sequence) { fields in
            let serial = try ArraySlice<UInt8>(derEncoded: &fields)
            guard let dateNode = fields.next() else { throw PKIError(.malformed, "no revocationDate") }
            var entry = Entry(
                serialNumber: Certificate.SerialNumber(bytes: serial), revocationDate: try ASN1Time.parse(dateNode))
            if let list = fields.next() {
                for ext in try DER.sequence(of: Certificate.Extension.self, identifier: .sequence, rootNode: list) {
                    if ext.oid == reasonCode {
                        let value = try DER.parse(ext.value)
                        guard value.identifier == .enumerated, case .primitive(let octets) = value.content,
                            octets.count == 1, let first = octets.first, let reason = Reason(rawValue: first)
                        else { throw PKIError(.malformed, "bad CRL reason code") }
                        entry.reason = reason
                    } else if ext.critical {
                        throw PKIError(.malformed, "unknown critical CRL entry extension \(ext.oid)")
                    }
                }
            }
            return entry
        }
    }

    /// AlgorithmIdentifier ::= SEQUENCE { algorithm OID, parameters ANY OPTIONAL }; ECDSA leaves parameters out
    /// (RFC 5758 §3.2).
    private static func parseAlgorithm(_ nodes: inout ASN1NodeCollection.Iterator) throws -> ASN1ObjectIdentifier {
        guard let node = nodes.next() else { throw PKIError(.malformed, "no AlgorithmIdentifier") }
        return try DER.sequence(node, identifier: .sequence) { fields in
            try ASN1ObjectIdentifier(derEncoded: &fields)
        }
    }

    private static func serializeAlgorithm(_ serializer: inout DER.Serializer) throws {
        try serializer.appendConstructedNode(identifier: .sequence) { try $0.serialize(ecdsaWithSHA256) }
    }

    static let ecdsaWithSHA256: ASN1ObjectIdentifier = [1, 2, 840, 10045, 4, 3, 2]
    static let crlNumber: ASN1ObjectIdentifier = [2, 5, 29, 20]
    static let reasonCode: ASN1ObjectIdentifier = [2, 5, 29, 21]
}

/// Time ::= CHOICE { utcTime UTCTime, generalTime GeneralizedTime }. RFC 5280 §5.1.2.4 (by §4.1.2.5): UTCTime for
/// 1950 through 2049, GeneralizedTime from 2050, both in UTC ("Z") with whole seconds.
enum ASN1Time {
    private static let calendar: Calendar = {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = .gmt
        return calendar
    }()

    static func serialize(_ date: Date, into serializer: inout DER.Serializer) throws {
        let parts = calendar.dateComponents([.year, .month, .day, .hour, .minute, .second], from: date)
        guard let year = parts.year, let month = parts.month, let day = parts.day, let hour = parts.hour,
            let minute = parts.minute, let second = parts.second
        else { throw PKIError(.issuance, "date \(date) has no calendar components") }
        if (1950...2049).contains(year) {
            try serializer.serialize(
                UTCTime(year: year, month: month, day: day, hours: hour, minutes: minute, seconds: second))
        } else {
            try serializer.serialize(
                GeneralizedTime(
                    year: year, month: month, day: day, hours: hour, minutes: minute, seconds: second,
                    fractionalSeconds: 0))
        }
    }

    static func parse(_ node: ASN1Node) throws -> Date {
        let parts: DateComponents
        switch node.identifier {
        case .utcTime:
            let time = try UTCTime(derEncoded: node)
            parts = DateComponents(
                year: time.year, month: time.month, day: time.day, hour: time.hours, minute: time.minutes,
                second: time.seconds)
        case .generalizedTime:
            let time = try GeneralizedTime(derEncoded: node)
            parts = DateComponents(
                year: time.year, month: time.month, day: time.day, hour: time.hours, minute: time.minutes,
                second: time.seconds)
        default:
            throw PKIError(.malformed, "a Time is UTCTime or GeneralizedTime, not \(node.identifier)")
        }
        guard let date = calendar.date(from: parts) else { throw PKIError(.malformed, "Time out of range") }
        return date
    }
}
