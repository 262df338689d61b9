import MQTT
import Testing

/// Shared subscriptions across hub nodes, decided without a broker: the node that admits a message gives each
/// matching group to one node, in turn among those with a connected member (else among all with members), and
/// each node's router delivers to a group only what was given to it, or not placed at all.
@Suite struct SharedPlacementTests {
    @Test func eachMatchingGroupGoesToOneNodeInTurnPreferringConnectedMembers() throws {
        let workers = try TopicFilter("$share/workers/devices/+/telemetry")
        let audit = try TopicFilter("$share/audit/devices/#")
        let other = try TopicFilter("$share/x/operators/#")
        let topic = try TopicName("devices/d1/telemetry")
        var placement = SharedPlacement(node: "b")
        #expect(placement.isEmpty)
        #expect(placement.place(topic) == [:], "no group anywhere: nothing to place")

        placement.setOwn([workers: true])
        placement.setOthers(["a": [workers: true, audit: false], "c": [workers: true], "b": [other: true], "d": [:]])
        #expect(placement.others.keys.sorted() == ["a", "c"], "itself and nodes without groups are left out")
        // workers: a, b and c have connected members, in turn by node id; audit: only a has members (away).
        var turns: [String] = []
        for _ in 0..<6 {
            let placed = placement.place(topic)
            #expect(placed[audit] == "a")
            #expect(placed[other] == nil, "a group whose filter does not match is not placed")
            turns.append(try #require(placed[workers]))
        }
        #expect(turns == ["a", "b", "c", "a", "b", "c"])

        // Only b's member is connected now: b gets every message while it stays so.
        placement.setOthers(["a": [workers: false], "c": [workers: false]])
        #expect((0..<3).map { _ in placement.place(topic)[workers] } == ["b", "b", "b"])
        // b's member left too: its group is gone here, and the others' members (all away) take turns.
        placement.setOwn([:])
        #expect(Set((0..<4).compactMap { _ in placement.place(topic)[workers] }) == ["a", "c"])
        placement.setOthers([:])
        #expect(placement.isEmpty && placement.place(topic) == [:])
    }

    @Test func aNodeDeliversToAGroupOnlyWhatWasPlacedOnItOrNotPlaced() throws {
        let workers = try TopicFilter("$share/workers/devices/+/telemetry")
        let placed = [workers: "a"]
        #expect(SharedPlacement.delivers(workers, placement: placed, node: "a"))
        #expect(!SharedPlacement.delivers(workers, placement: placed, node: "b"))
        #expect(SharedPlacement.delivers(workers, placement: [:], node: "b"), "not placed: each node delivers")
        #expect(SharedPlacement.delivers(workers, placement: nil, node: "b"), "one node: no placement")

        // The router applies it: an ordinary subscription is unaffected.
        var router = MessageRouter()
        let subscribers = [
            try MessageRouterTests.subscriber("w", [("$share/workers/devices/+/telemetry", .init(qos: .atLeastOnce))]),
            try MessageRouterTests.subscriber("f", [("devices/#", .init(qos: .atLeastOnce))]),
        ]
        let topic = try TopicName("devices/d1/telemetry")
        func keys(_ node: String) -> [String] {
            router.route(
                topic: topic, qos: .atLeastOnce, retain: false, publisher: nil, subscribers: subscribers,
                placement: placed, node: node
            ).map(\.key).sorted()
        }
        #expect(keys("a") == ["f", "w"])
        #expect(keys("b") == ["f"])
    }
}
