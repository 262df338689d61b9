/// What a message's payload must be (`mqtt.payloads`): the gateway checks it before anything is stored or forwarded.
public enum PayloadFormat: String, Sendable, CaseIterable {
    /// Strict I-JSON (RFC 7493), an object, and for a device the schema of its message type: what HTTP always
    /// requires, and the default for every MQTT topic.
    case json
    /// Well-formed UTF-8 text (Unicode Table 3-7), of any content.
    case utf8
    /// Any bytes.
    case binary
}

/// The check a payload policy asks for: a format, a size limit and, optionally, the content types allowed.
public struct PayloadCheck: Sendable, Equatable {
    public var format: PayloadFormat
    /// The largest payload, in bytes; nil: the hub's `telemetry.maxBodyBytes`.
    public var maxBytes: Int?
    /// When set, an MQTT 5 Content Type (§3.3.2.3.9) given with the message must be one of these media types
    /// (compared without parameters and ASCII case-insensitively; stored lowercased). A message that gives none is
    /// not refused for it: MQTT 3.1.1 cannot give one.
    public var contentTypes: [String]?

    public init(format: PayloadFormat, maxBytes: Int? = nil, contentTypes: [String]? = nil) {
        self.format = format
        self.maxBytes = maxBytes
        self.contentTypes = contentTypes?.map(Self.asciiLowercased)
    }

    /// Today's behaviour, and what a topic no rule matches gets.
    public static let json = PayloadCheck(format: .json)

    /// Whether a content type given with a message is allowed: any when there is no allow-list.
    public func allows(contentType: String) -> Bool {
        guard let contentTypes else { return true }
        let mediaType = contentType.split(separator: ";", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        return contentTypes.contains(Self.asciiLowercased(String(mediaType.trimmingASCIIWhitespace())))
    }

    /// A–Z to a–z only (RFC 9110 §8.3.1 media types are ASCII; Unicode case folding would make U+212A KELVIN SIGN
    /// match `k`).
    static func asciiLowercased(_ text: String) -> String {
        String(decoding: text.utf8.map { (0x41...0x5A).contains($0) ? $0 | 0x20 : $0 }, as: UTF8.self)
    }
}

extension Substring {
    func trimmingASCIIWhitespace() -> Substring {
        var text = self
        while let first = text.first, first == " " || first == "\t" { text = text.dropFirst() }
        while let last = text.last, last == " " || last == "\t" { text = text.dropLast() }
        return text
    }
}
