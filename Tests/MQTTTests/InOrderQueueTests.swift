import MQTT
import Testing

/// Acknowledgements leave in the order their packets arrived (MQTT 5.0 §4.6), whatever order their writes finish in.
@Suite struct InOrderQueueTests {
    @Test func aReadyItemWaitsForEveryOlderOne() {
        var queue = InOrderQueue<Int>()
        let first = queue.append(1, ready: false)
        _ = queue.append(2, ready: true)
        let third = queue.append(3, ready: false)
        var released: [Int?] = [queue.popReady()]
        #expect(released == [nil], "2 is ready but 1 is not")
        let thirdMarked = queue.markReady(third) { $0 = 30 }
        released = [queue.popReady()]
        #expect(thirdMarked && released == [nil])
        let firstMarked = queue.markReady(first) { $0 = 10 }
        released = [queue.popReady(), queue.popReady(), queue.popReady(), queue.popReady()]
        #expect(firstMarked && released == [10, 2, 30, nil])
        #expect(queue.isEmpty)
    }

    @Test func aTicketCountsOnceAndNotAfterRelease() {
        var queue = InOrderQueue<String>()
        let ticket = queue.append("a", ready: false)
        let once = queue.markReady(ticket)
        let twice = queue.markReady(ticket) { $0 = "changed" }
        #expect(once && !twice, "marked twice")
        let released = queue.popReady()
        let afterRelease = queue.markReady(ticket)
        #expect(released == "a" && !afterRelease)
        // A ticket of an item released before the storage was reclaimed does not name the item now in its slot.
        let next = queue.append("b", ready: false)
        let stale = queue.markReady(ticket)
        let waiting = queue.popReady()
        #expect(next != ticket && !stale && waiting == nil)
    }

    /// Random completion orders over many items (and storage reclaimed on the way): the release order is always
    /// the order of addition, and each item leaves once.
    @Test func randomCompletionOrdersReleaseInArrivalOrder() {
        var random = SubscriptionIndexTests.Seeded(state: 7)
        for _ in 0..<200 {
            var queue = InOrderQueue<Int>()
            var tickets: [(Int, InOrderQueue<Int>.Ticket)] = []
            var released: [Int] = []
            var added = 0
            for _ in 0..<Int.random(in: 1...300, using: &random) {
                if Bool.random(using: &random) || tickets.isEmpty {
                    let ready = Int.random(in: 0..<4, using: &random) == 0
                    let ticket = queue.append(added, ready: ready)
                    if !ready { tickets.append((added, ticket)) }
                    added += 1
                } else {
                    let (value, ticket) = tickets.remove(at: Int.random(in: 0..<tickets.count, using: &random))
                    var seen: Int?
                    let marked = queue.markReady(ticket) { seen = $0 }
                    #expect(marked && seen == value)
                }
                while let item = queue.popReady() { released.append(item) }
                #expect(queue.count == added - released.count)
            }
            for (_, ticket) in tickets { queue.markReady(ticket) }
            while let item = queue.popReady() { released.append(item) }
            #expect(released == Array(0..<added))
        }
    }
}
