import MQTT
import Testing

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
}
