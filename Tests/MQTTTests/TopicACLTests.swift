import Testing

@testable import MQTT

/// Topic access bound to the certificate's identity: substitution of `{device}`, publish by matching, subscribe by
/// covering (a requested filter may not reach beyond what the pattern allows).
struct TopicACLTests {
    let acl = TopicACL.devices

    @Test func devicesPublishOnlyUnderTheirOwnTree() throws {
        #expect(acl.mayPublish(try TopicName("devices/d1/telemetry"), device: "d1"))
        #expect(acl.mayPublish(try TopicName("devices/d1"), device: "d1"))
        #expect(!acl.mayPublish(try TopicName("devices/d2/telemetry"), device: "d1"))
        #expect(!acl.mayPublish(try TopicName("devices/d1x/telemetry"), device: "d1"))
        #expect(!acl.mayPublish(try TopicName("$SYS/devices/d1/x"), device: "d1"))
    }

    @Test func subscriptionsMustBeCoveredNotMerelyOverlap() throws {
        for allowed in ["devices/d1/#", "devices/d1/+/state", "devices/d1/telemetry", "devices/d1/+"] {
            #expect(acl.maySubscribe(try TopicFilter(allowed), device: "d1"), "\(allowed)")
        }
        // Each of these matches some of d1's topics but also other devices' (or everything).
        for refused in [
            "#", "+/d1/#", "devices/+/telemetry", "devices/#", "devices/d2/#", "+", "$share/g/devices/d1/#",
        ] {
            #expect(!acl.maySubscribe(try TopicFilter(refused), device: "d1"), "\(refused)")
        }
    }

    @Test func fleetPatternsReadEverythingUnderDevicesAndCommandOnly() throws {
        let fleet = TopicACL.fleet
        #expect(fleet.maySubscribe(try TopicFilter("devices/+/state"), device: ""))
        #expect(fleet.maySubscribe(try TopicFilter("devices/#"), device: ""))
        #expect(!fleet.maySubscribe(try TopicFilter("#"), device: ""))
        #expect(!fleet.maySubscribe(try TopicFilter("$SYS/#"), device: ""))
        #expect(fleet.mayPublish(try TopicName("devices/d1/commands/reboot"), device: ""))
        #expect(!fleet.mayPublish(try TopicName("devices/d1/telemetry"), device: ""))
    }

    @Test func patternsAreValidatedAtStartup() throws {
        #expect(throws: MQTTError.self) { try TopicACL(publish: ["devices/x{device}/#"], subscribe: []).validate() }
        #expect(throws: MQTTError.self) { try TopicACL(publish: ["devices/#/x"], subscribe: []).validate() }
        try TopicACL(publish: ["fleet/{device}/up/#"], subscribe: ["fleet/{device}/down/+"]).validate()
        let custom = TopicACL(publish: ["fleet/{device}/up/#"], subscribe: ["fleet/{device}/down/+"])
        #expect(custom.mayPublish(try TopicName("fleet/d1/up/x/y"), device: "d1"))
        #expect(!custom.maySubscribe(try TopicFilter("fleet/d1/down/#"), device: "d1"))
    }

    /// A prepared ACL keeps `{device}` as a level and compares it with the device's id when it matches: it must
    /// decide as the patterns with the id filled in would, for every pattern, topic and filter here (among them a
    /// topic level spelled `{device}`, a requested `+` or `#` at the device's level, `$` topics, another device,
    /// an id that is a prefix of another, empty levels, and a pattern with `{device}` twice).
    @Test func preparedPatternsDecideAsThePatternsWithTheIdFilledIn() throws {
        let patterns = [
            "devices/{device}/#", "devices/{device}", "devices/+/{device}/x", "{device}/#", "a/{device}/b/{device}",
            "devices/{device}/+/state", "devices/#", "#", "+/x", "+/{device}/#", "+/{device}",
        ]
        let topics = [
            "devices/d1", "devices/d1/telemetry", "devices/d2/telemetry", "devices/d1x/t", "devices/{device}/t",
            "devices/z/d1/x", "d1/anything", "d1", "$SYS/d1/x", "a/d1/b/d1", "a/d1/b/d2", "devices//t",
            "devices/d1/s/state", "devices/d1/s/state/x", "$SYS/d1", "x/d1", "x/d1/y", "/", "x//y",
        ]
        let filters = [
            "devices/d1/#", "devices/d1/+", "devices/+/#", "devices/#", "devices/d1", "devices/d2/#",
            "devices/{device}/#", "d1/#", "+/#", "#", "a/d1/b/d1", "a/d1/b/+", "a/+/b/d1", "devices/d1/+/state",
            "devices/d1/x/state", "$SYS/#", "devices/z/d1/x", "$SYS/d1/#", "$SYS/d1", "+/d1/#", "+/+/#", "//#",
        ]
        for pattern in patterns {
            let acl = TopicACL(publish: [pattern], subscribe: [pattern])
            for device in ["d1", "d2", "d1x", ""] {  // "": an operator's (no device id)
                let substituted = try TopicFilter(TopicACL.substitute(pattern, device: device))
                let bound = PreparedTopicACL(acl).bound(to: device)
                let deviceLevel = TopicName.levels(of: pattern).firstIndex { $0 == "{device}" }
                for topic in try topics.map({ try TopicName($0) }) {
                    #expect(
                        bound.mayPublish(topic) == substituted.matches(topic), "\(pattern) as \(device): \(topic)")
                    #expect((bound.publishing(topic) != nil) == substituted.matches(topic))
                    #expect(bound.publishing(topic)?.deviceLevel == (substituted.matches(topic) ? deviceLevel : nil))
                }
                for filter in try filters.map({ try TopicFilter($0) }) {
                    #expect(
                        bound.maySubscribe(filter) == substituted.covers(filter),
                        "\(pattern) as \(device): \(filter)")
                }
            }
        }
    }

    /// `publishing` answers whether any pattern allows a topic and where the device's id is in it (the hub asks it
    /// once per topic a connection publishes to): for every pair of the patterns above, in both orders, as
    /// `mayPublish` says, with the device level of the first pattern that allows the topic on its own.
    @Test func publishingAnswersAsMayPublishAndDeviceLevel() throws {
        let patterns = [
            "devices/{device}/#", "fleet/{device}/up/#", "{device}/#", "devices/#", "+/{device}", "#", "a/{device}/b",
        ]
        let topics = [
            "devices/d1/telemetry", "fleet/d1/up/x", "d1/devices/x", "devices/d2/x", "x/d1", "a/d1/b", "d1", "$SYS/d1",
            "fleet/d1/up",
        ]
        for first in patterns {
            for second in patterns where second != first {
                let bound = PreparedTopicACL(TopicACL(publish: [first, second], subscribe: [])).bound(to: "d1")
                for topic in try topics.map({ try TopicName($0) }) {
                    let permission = bound.publishing(topic)
                    #expect((permission != nil) == bound.mayPublish(topic), "\(first), \(second): \(topic)")
                    let deciding = [first, second].first {
                        PreparedTopicACL(TopicACL(publish: [$0], subscribe: [])).bound(to: "d1").mayPublish(topic)
                    }
                    let level = deciding.flatMap { TopicName.levels(of: $0).firstIndex { $0 == "{device}" } }
                    #expect(permission?.deviceLevel == level, "\(first), \(second): \(topic)")
                }
            }
        }
        // The first pattern that allows a topic decides: `d1/x` is allowed by both, with the id at level 0 by
        // `{device}/#` only.
        let topic = try TopicName("d1/x")
        let deviceFirst = PreparedTopicACL(TopicACL(publish: ["{device}/#", "#"], subscribe: [])).bound(to: "d1")
        #expect(deviceFirst.publishing(topic) == PublishPermission(deviceLevel: 0))
        let anyFirst = PreparedTopicACL(TopicACL(publish: ["#", "{device}/#"], subscribe: [])).bound(to: "d1")
        #expect(anyFirst.publishing(topic) == PublishPermission(deviceLevel: nil))
        #expect(anyFirst.publishing(try TopicName("$SYS/x")) == nil)
    }
}
