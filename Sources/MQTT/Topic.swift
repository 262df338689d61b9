/// A topic name for PUBLISH: non-empty UTF-8 without wildcards or U+0000, at most 65535 bytes (MQTT 3.1.1
/// §4.7.3, MQTT 5.0 §4.7.3). Parse, don't validate.
public struct TopicName: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: String

    /// The topic's levels, split when asked rather than when the topic is made: most of a PUBLISH's way through the
    /// hub reads its topic whole (a connection's cached decision, the stored row, a match-nothing look-up), and
    /// splitting each one at decode was an allocation and 2 % of the hub's CPU per QoS 0 message. A caller that
    /// reads several levels takes them once.
    public var levels: [Substring] { rawValue.isEmpty ? [] : Self.levels(of: rawValue) }

    /// A topic split once, for matching it against many filters (`TopicFilter.matches(_:)`).
    public struct Split: Sendable {
        public let levels: [Substring]
        public let isDollarTopic: Bool

        public init(_ topic: TopicName) {
            levels = topic.levels
            isDollarTopic = topic.isDollarTopic
        }
    }

    /// How many levels the topic has (its `/`s and one), without splitting it.
    public var levelCount: Int {
        rawValue.isEmpty ? 0 : rawValue.utf8.reduce(1) { $1 == UInt8(ascii: "/") ? $0 + 1 : $0 }
    }

    public init(_ text: String) throws(MQTTError) {
        guard !text.isEmpty, text.utf8.count <= 65535 else { throw MQTTError(.topicNameInvalid, "empty or too long") }
        guard !text.utf8.contains(where: { $0 == UInt8(ascii: "+") || $0 == UInt8(ascii: "#") || $0 == 0 }) else {
            throw MQTTError(.topicNameInvalid, "wildcards and U+0000 are not allowed in a topic name")
        }
        rawValue = text
    }

    /// The text split at every `/` (empty levels kept), scanning bytes: `/` is ASCII, so each byte offset is a
    /// character boundary, and no grapheme breaking is needed (`split(separator:)` on the characters was a tenth
    /// of the hub's time per QoS 0 message). The separators are counted first, so the array is allocated once at its
    /// size instead of growing level by level (three allocations for `devices/ID/telemetry`).
    public static func levels(of text: String) -> [Substring] {
        let utf8 = text.utf8
        var levels: [Substring] = []
        levels.reserveCapacity(utf8.reduce(1) { $1 == UInt8(ascii: "/") ? $0 + 1 : $0 })
        var start = utf8.startIndex
        var index = start
        while index != utf8.endIndex {
            if utf8[index] == UInt8(ascii: "/") {
                levels.append(text[start..<index])
                start = utf8.index(after: index)
            }
            index = utf8.index(after: index)
        }
        levels.append(text[start...])
        return levels
    }

    public var description: String { rawValue }

    /// The empty topic of an MQTT 5 PUBLISH that carries a Topic Alias instead (§3.3.2.3.4); the receiver must
    /// replace it with the topic the alias stands for before using it.
    public static let unresolvedAlias = TopicName(uncheckedEmpty: ())

    private init(uncheckedEmpty: Void) {
        rawValue = ""
    }

    public var isUnresolvedAlias: Bool { rawValue.isEmpty }

    /// §4.7.2: a topic whose first byte is `$` (by bytes: a combining mark after it does not hide it).
    public var isDollarTopic: Bool { rawValue.utf8.first == UInt8(ascii: "$") }

    /// By bytes (§4.7.3: topics are never normalized; `String`'s `==` is canonical equivalence).
    public static func == (lhs: TopicName, rhs: TopicName) -> Bool { TopicKey.sameBytes(lhs.rawValue, rhs.rawValue) }

    public func hash(into hasher: inout Hasher) { hasher.combine(TopicKey(rawValue)) }
}

/// A topic filter for SUBSCRIBE (MQTT 3.1.1 §4.7.1): `#` only as the whole last level, `+` only as a whole level.
public struct TopicFilter: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: String
    public let levels: [Substring]

    /// By bytes, as topic names are (a session's filters are keyed by them).
    public static func == (lhs: TopicFilter, rhs: TopicFilter) -> Bool {
        TopicKey.sameBytes(lhs.rawValue, rhs.rawValue)
    }

    public func hash(into hasher: inout Hasher) { hasher.combine(TopicKey(rawValue)) }

    public init(_ text: String) throws(MQTTError) {
        guard !text.isEmpty, text.utf8.count <= 65535, !text.utf8.contains(0) else {
            throw MQTTError(.topicFilterInvalid, "empty, too long or contains U+0000")
        }
        // Levels and wildcards by bytes, as in `TopicName` (a combining mark after `/`, `#` or `+` does not hide it).
        let levels = TopicName.levels(of: text)
        for (index, level) in levels.enumerated() {
            if level.utf8.contains(UInt8(ascii: "#")), level != "#" || index != levels.count - 1 {
                throw MQTTError(.topicFilterInvalid, "# must be the whole last level")
            }
            if level.utf8.contains(UInt8(ascii: "+")), level != "+" {
                throw MQTTError(.topicFilterInvalid, "+ must be a whole level")
            }
        }
        rawValue = text
        self.levels = levels
    }

    public var description: String { rawValue }

    /// MQTT 3.1.1 §4.7: `+` matches one level, `#` the parent and any number of levels below; topics starting with
    /// `$` are not matched by a leading wildcard (§4.7.2). Levels are compared by their bytes (§4.7.3: no
    /// normalization).
    public func matches(_ topic: TopicName) -> Bool { matches(TopicName.Split(topic), device: nil) }

    /// `matches(_:)` of a topic already split (one split for many filters).
    public func matches(_ topic: TopicName.Split) -> Bool { matches(topic, device: nil) }

    /// `matches` with `device` as each `{device}` level, when given (a `PreparedTopicACL` pattern).
    func matches(_ topic: TopicName.Split, device: Substring?) -> Bool {
        if topic.isDollarTopic, let first = levels.first, first == "+" || first == "#" { return false }
        let topicLevels = topic.levels
        var index = 0
        for level in levels {
            if level == "#" { return true }
            guard index < topicLevels.count else { return false }
            if level != "+" && !TopicKey.sameBytes(Self.filled(level, device), topicLevels[index]) { return false }
            index += 1
        }
        return index == topicLevels.count
    }

    /// `level`, or `device` when it is given and `level` is `{device}`.
    @inline(__always) static func filled(_ level: Substring, _ device: Substring?) -> Substring {
        if let device, PreparedTopicACL.isDevice(level) { return device }
        return level
    }

    /// True when every topic `other` can match is also matched by this filter (so a subscription to `other` is
    /// within what this filter allows): `#` covers any rest, `+` covers one level that is not `#`, a name covers
    /// only itself.
    public func covers(_ other: TopicFilter) -> Bool { covers(other, device: nil) }

    /// `covers` with `device` as each `{device}` level, when given (a `PreparedTopicACL` pattern): a requested `+` or
    /// `#` there is not the device's own level.
    func covers(_ other: TopicFilter, device: Substring?) -> Bool {
        if other.rawValue.utf8.first == UInt8(ascii: "$"), let first = levels.first, first == "+" || first == "#" {
            return false
        }
        var index = 0
        for level in levels {
            if level == "#" { return true }
            guard index < other.levels.count else { return false }
            let requested = other.levels[index]
            if requested == "#" { return false }
            if level == "+" {
                index += 1
                continue
            }
            if requested == "+" || !TopicKey.sameBytes(requested, Self.filled(level, device)) { return false }
            index += 1
        }
        return index == other.levels.count
    }
}

/// Least-privilege topic access bound to the certificate's identity (MQTT 3.1.1 §5.4.2 leaves authorization to
/// the server). Patterns are topic filters in which `{device}` stands for the connected device's id; a topic or
/// filter is allowed when a pattern, after substitution, matches (publish) or covers (subscribe) it.
public struct TopicACL: Sendable, Equatable {
    public var publish: [String]
    public var subscribe: [String]

    public init(publish: [String], subscribe: [String]) {
        self.publish = publish
        self.subscribe = subscribe
    }

    /// Devices: their own tree only.
    public static let devices = TopicACL(publish: ["devices/{device}/#"], subscribe: ["devices/{device}/#"])
    /// Operators and applications: read the fleet, send commands.
    public static let fleet = TopicACL(publish: ["devices/+/commands/#"], subscribe: ["devices/#"])

    /// Every pattern must be a valid filter once `{device}` is replaced, and `{device}` must fill a whole level.
    public func validate() throws(MQTTError) {
        for pattern in publish + subscribe {
            for level in TopicName.levels(of: pattern)
            where level.utf8.contains(UInt8(ascii: "{")) && level != "{device}" {
                throw MQTTError(.topicFilterInvalid, "{device} must be a whole topic level in \(pattern)")
            }
            _ = try TopicFilter(Self.substitute(pattern, device: "d"))
        }
    }

    /// The patterns bound to one device (its id as `{device}`). Parses them: where a connection binds them, bind a
    /// `PreparedTopicACL` made once.
    public func bound(to device: String) -> BoundTopicACL { PreparedTopicACL(self).bound(to: device) }

    public func mayPublish(_ topic: TopicName, device: String) -> Bool { bound(to: device).mayPublish(topic) }

    public func maySubscribe(_ filter: TopicFilter, device: String) -> Bool {
        bound(to: device).maySubscribe(filter)
    }

    static func substitute(_ pattern: String, device: String) -> String {
        TopicName.levels(of: pattern).map { $0 == "{device}" ? device : String($0) }.joined(separator: "/")
    }
}

/// A `TopicACL`'s patterns parsed once, with `{device}` kept as a level of its own: binding them to a connection's
/// device copies nothing (a held connection keeps two references, not a copy of every pattern with its id filled
/// in). A `{device}` level matches exactly the level that is the device's id, as the pattern with the id filled in
/// would: not a wildcard, and a pattern that would not parse with the id filled in allows nothing.
public final class PreparedTopicACL: Sendable {
    struct Pattern: Sendable {
        let filter: TopicFilter
        /// The index of the first `{device}` level, if any.
        let deviceLevel: Int?
    }

    let publish: [Pattern]
    let subscribe: [Pattern]

    public init(_ acl: TopicACL) {
        func parse(_ patterns: [String]) -> [Pattern] {
            patterns.compactMap { pattern in
                // Valid with an id filled in (`validate`), so `{device}` is a whole level; `{device}` itself parses.
                guard (try? TopicFilter(TopicACL.substitute(pattern, device: "d"))) != nil,
                    let filter = try? TopicFilter(pattern)
                else { return nil }
                return Pattern(filter: filter, deviceLevel: filter.levels.firstIndex { Self.isDevice($0) })
            }
        }
        publish = parse(acl.publish)
        subscribe = parse(acl.subscribe)
    }

    public func bound(to device: String) -> BoundTopicACL { BoundTopicACL(patterns: self, device: device) }

    static func isDevice(_ level: Substring) -> Bool { level.utf8.count == 8 && level == "{device}" }
}

/// A publish a `BoundTopicACL` allows: where the device's id is in the topic, per the first pattern allowing it.
public struct PublishPermission: Sendable, Equatable {
    /// The index of the pattern's first `{device}` level (nil for a pattern without one).
    public let deviceLevel: Int?
}

/// A `TopicACL` bound to one identity: its prepared patterns and the device id that fills `{device}`.
public struct BoundTopicACL: Sendable {
    let patterns: PreparedTopicACL
    let device: String
    /// A device id that cannot fill a level (empty is a level; `/`, `+`, `#` or U+0000 are not): the patterns
    /// with `{device}` allow nothing, as they would not parse with it filled in.
    let deviceFillsALevel: Bool

    init(patterns: PreparedTopicACL, device: String) {
        self.patterns = patterns
        self.device = device
        deviceFillsALevel = !device.utf8.contains {
            $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: "+") || $0 == UInt8(ascii: "#") || $0 == 0
        }
    }

    public func mayPublish(_ topic: TopicName) -> Bool {
        let split = TopicName.Split(topic)
        return patterns.publish.contains { matches($0, split) }
    }

    public func maySubscribe(_ filter: TopicFilter) -> Bool { patterns.subscribe.contains { covers($0, filter) } }

    /// Whether and where: nil when no publish pattern allows `topic`, else the first pattern that does, with the
    /// index of its `{device}` level (nil in it when the pattern has none; the levels after it name the route and
    /// the message type).
    public func publishing(_ topic: TopicName) -> PublishPermission? { publishing(TopicName.Split(topic)) }

    /// `publishing` of a topic already split.
    public func publishing(_ topic: TopicName.Split) -> PublishPermission? {
        patterns.publish.first { matches($0, topic) }.map { PublishPermission(deviceLevel: $0.deviceLevel) }
    }

    /// `TopicFilter.matches` of the pattern with the device's id as each `{device}` level.
    func matches(_ pattern: PreparedTopicACL.Pattern, _ topic: TopicName.Split) -> Bool {
        guard pattern.deviceLevel != nil else { return pattern.filter.matches(topic) }
        return deviceFillsALevel && pattern.filter.matches(topic, device: device[...])
    }

    /// `TopicFilter.covers` of the pattern with the device's id as each `{device}` level.
    func covers(_ pattern: PreparedTopicACL.Pattern, _ other: TopicFilter) -> Bool {
        guard pattern.deviceLevel != nil else { return pattern.filter.covers(other) }
        return deviceFillsALevel && pattern.filter.covers(other, device: device[...])
    }
}

/// A shared subscription (MQTT 5.0 §4.8.2): `$share/{ShareName}/{Topic Filter}`. Each message that matches the
/// filter goes to one session of those subscribed with the same share name and filter, not to all of them.
public struct SharedFilter: Hashable, Sendable {
    public let group: String
    public let filter: TopicFilter

    /// By bytes, the share name as the filter.
    public static func == (lhs: SharedFilter, rhs: SharedFilter) -> Bool {
        TopicKey.sameBytes(lhs.group, rhs.group) && lhs.filter == rhs.filter
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(group.utf8.count)
        hasher.combine(TopicKey(group))
        hasher.combine(filter)
    }

    /// nil when `filter` is an ordinary filter; an error when it starts with `$share/` but is not a valid shared
    /// subscription [MQTT-4.8.2-1, 4.8.2-2]: the share name must be at least one character without `/`, `+` or `#`,
    /// followed by `/` and a topic filter.
    public static func parse(_ filter: TopicFilter) throws(MQTTError) -> SharedFilter? {
        // By bytes, as the levels are: the share name ends at the first `/` byte.
        let levels = filter.levels
        guard levels.count >= 2, levels[0].utf8.elementsEqual("$share".utf8) else { return nil }
        guard levels.count >= 3 else {
            throw MQTTError(.protocolError, "shared subscription without a topic filter")
        }
        let group = levels[1]
        guard !group.isEmpty, !group.utf8.contains(UInt8(ascii: "+")), !group.utf8.contains(UInt8(ascii: "#")) else {
            throw MQTTError(.protocolError, "shared subscription share name is empty or has a wildcard")
        }
        guard let inner = try? TopicFilter(String(filter.rawValue[levels[2].startIndex...])) else {
            throw MQTTError(.protocolError, "shared subscription topic filter is invalid")
        }
        return SharedFilter(group: String(group), filter: inner)
    }
}
