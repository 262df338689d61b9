public import Core

/// The kinds of identity a payload rule names (`identities`); a monitor never reaches MQTT.
public enum IdentityKind: String, Sendable, CaseIterable {
    case device, `operator`, application

    public init?(_ identity: Identity) {
        switch identity {
        case .device: self = .device
        case .operator: self = .operator
        case .application: self = .application
        case .monitor: return nil
        }
    }
}

/// One `mqtt.payloads` rule: the topics (a topic filter in which `{device}` is a whole level) and the identities it
/// applies to, and what their payloads must be.
public struct PayloadRule: Sendable, Equatable {
    public var topics: String
    public var identities: Set<IdentityKind>
    public var check: PayloadCheck

    public init(topics: String, identities: Set<IdentityKind> = Set(IdentityKind.allCases), check: PayloadCheck) {
        self.topics = topics
        self.identities = identities
        self.check = check
    }

    public func validate() throws(MQTTError) {
        for level in TopicName.levels(of: topics) where level.utf8.contains(UInt8(ascii: "{")) && level != "{device}" {
            throw MQTTError(.topicFilterInvalid, "{device} must be a whole topic level in \(topics)")
        }
        _ = try TopicFilter(TopicACL.substitute(topics, device: "d"))
        guard !identities.isEmpty else { throw MQTTError(.topicFilterInvalid, "\(topics): no identities") }
    }
}

/// The payload policies in order: the first rule whose identities include the publisher and whose topics match
/// the topic decides; a topic no rule matches gets `json` (strict JSON, and for a device the schema).
public struct PayloadRules: Sendable, Equatable {
    public var rules: [PayloadRule]

    public init(_ rules: [PayloadRule] = []) { self.rules = rules }

    /// The rules that apply to one identity, with `{device}` filled in, parsed once per connection: for a device
    /// its own id, for an operator or application any one level (its topics name many devices).
    public func bound(to identity: Identity) -> BoundPayloadRules {
        guard let kind = IdentityKind(identity) else { return BoundPayloadRules(rules: []) }
        let device = identity.deviceID?.rawValue ?? "+"
        return BoundPayloadRules(
            rules: rules.compactMap { rule in
                guard rule.identities.contains(kind),
                    let filter = try? TopicFilter(TopicACL.substitute(rule.topics, device: device))
                else { return nil }
                return (filter, rule.check)
            })
    }
}

/// `PayloadRules` bound to one identity.
public struct BoundPayloadRules: Sendable {
    let rules: [(filter: TopicFilter, check: PayloadCheck)]

    /// What a payload published to `topic` must be.
    public func check(for topic: TopicName) -> PayloadCheck {
        rules.isEmpty ? .json : check(for: TopicName.Split(topic))
    }

    /// `check(for:)` of a topic already split.
    public func check(for topic: TopicName.Split) -> PayloadCheck {
        for rule in rules where rule.filter.matches(topic) { return rule.check }
        return .json
    }

    /// True when no rule applies: every topic is `json` (nothing to look up per message).
    public var isEmpty: Bool { rules.isEmpty }
}
