/// A topic name for PUBLISH: non-empty UTF-8 without wildcards or U+0000, at most 65535 bytes (MQTT 3.1.1
/// §4.7.3, MQTT 5.0 §4.7.3). Parse, don't validate.
public struct TopicName: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: String
    public let levels: [Substring]

    public init(_ text: String) throws(MQTTError) {
        guard !text.isEmpty, text.utf8.count <= 65535 else { throw MQTTError(.topicNameInvalid, "empty or too long") }
        guard !text.utf8.contains(where: { $0 == UInt8(ascii: "+") || $0 == UInt8(ascii: "#") || $0 == 0 }) else {
            throw MQTTError(.topicNameInvalid, "wildcards and U+0000 are not allowed in a topic name")
        }
        rawValue = text
        levels = text.split(separator: "/", omittingEmptySubsequences: false)
    }

    public var description: String { rawValue }
}

/// A topic filter for SUBSCRIBE (MQTT 3.1.1 §4.7.1): `#` only as the whole last level, `+` only as a whole level.
public struct TopicFilter: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: String
    public let levels: [Substring]

    public init(_ text: String) throws(MQTTError) {
        guard !text.isEmpty, text.utf8.count <= 65535, !text.utf8.contains(0) else {
            throw MQTTError(.topicFilterInvalid, "empty, too long or contains U+0000")
        }
        let levels = text.split(separator: "/", omittingEmptySubsequences: false)
        for (index, level) in levels.enumerated() {
            if level.contains("#"), level != "#" || index != levels.count - 1 {
                throw MQTTError(.topicFilterInvalid, "# must be the whole last level")
            }
            if level.contains("+"), level != "+" { throw MQTTError(.topicFilterInvalid, "+ must be a whole level") }
        }
        rawValue = text
        self.levels = levels
    }

    public var description: String { rawValue }

    /// MQTT 3.1.1 §4.7: `+` matches one level, `#` the parent and any number of levels below; topics starting with
    /// `$` are not matched by a leading wildcard (§4.7.2).
    public func matches(_ topic: TopicName) -> Bool {
        if topic.rawValue.hasPrefix("$"), let first = levels.first, first == "+" || first == "#" { return false }
        var index = 0
        for level in levels {
            if level == "#" { return true }
            guard index < topic.levels.count else { return false }
            if level != "+" && level != topic.levels[index] { return false }
            index += 1
        }
        return index == topic.levels.count
    }
}
