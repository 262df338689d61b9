import MQTT
import NIOCore
import NIOEmbedded
import NIOTLS
import Synchronization
import Testing

@testable import Hub

/// The connection's inbox: the decoder's packets in order, then the channel's error or its end after every packet
/// before it; a parked session resumed once per wait, also by the end (so a silent connection still concludes);
/// the channel's reads held while a packet waits.
@Suite struct ConnectionInboxTests {
    static let packets: [Packet] = [
        .pingreq, .puback(packetID: 1, reasonCode: 0, properties: Properties()),
        .disconnect(reasonCode: 0, properties: Properties()),
    ]
    static let ack = Packet.puback(packetID: 7, reasonCode: 0, properties: Properties())

    /// An inbox whose decoder has had its CONNECT (MQTT 5), as after a connection's opening; `opening`: one that
    /// has not.
    static func makeInbox(_ loop: any EventLoop, opening: Bool = false, maximumBufferSize: Int = 1 << 17)
        -> ConnectionInbox
    {
        ConnectionInbox(
            eventLoop: loop,
            decoder: MQTTDecoder(role: .server, maximumPacketSize: 1 << 16, version: opening ? nil : .v5),
            maximumBufferSize: maximumBufferSize)
    }

    /// The bytes of one read that carries `packets`.
    static func read(_ packets: [Packet]) -> ByteBuffer {
        var buffer = ByteBuffer()
        for packet in packets { packet.encode(into: &buffer, version: .v5) }
        return buffer
    }

    final class Session: ParkedSession {
        let resumed = Atomic(0)
        func resume() { resumed.add(1, ordering: .relaxed) }
        var count: Int { resumed.load(ordering: .relaxed) }
        func handlesNow(_ packet: PacketGlance) -> Bool { false }
    }

    /// Counts the reads that pass the inbox towards the socket.
    final class ReadCounter: ChannelOutboundHandler, @unchecked Sendable {
        typealias OutboundIn = ByteBuffer
        var reads = 0
        func read(context: ChannelHandlerContext) {
            reads += 1
            context.read()
        }
    }

    static func inbox() throws -> (EmbeddedChannel, ConnectionInbox, ReadCounter) {
        let channel = EmbeddedChannel()
        let counter = ReadCounter()
        let inbox = Self.makeInbox(channel.eventLoop)
        try channel.pipeline.syncOperations.addHandler(counter)
        try channel.pipeline.syncOperations.addHandler(inbox)
        return (channel, inbox, counter)
    }

    static func packet(_ taken: ConnectionInbox.Taken) -> Packet? {
        if case .packet(let packet) = taken { return packet }
        return nil
    }

    /// An inbox on a channel whose loop runs on its own thread: the connection's side is used from test tasks, as
    /// from a connection's tasks.
    static func asyncInbox() async throws -> (NIOAsyncTestingChannel, ConnectionInbox) {
        let channel = NIOAsyncTestingChannel()
        let inbox = Self.makeInbox(channel.eventLoop)
        try await channel.pipeline.addHandler(inbox)
        return (channel, inbox)
    }

    static func fail(_ channel: NIOAsyncTestingChannel) async throws {
        try await channel.testingEventLoop.executeInContext {
            channel.pipeline.fireErrorCaught(MQTTError(.malformedPacket, "test"))
        }
    }

    @Test func packetsInOrderThenTheEnd() async throws {
        let (channel, inbox) = try await Self.asyncInbox()
        try await channel.writeInbound(Self.read(Array(Self.packets.prefix(2))))
        try await channel.writeInbound(Self.read([Packet]()))
        try await channel.writeInbound(Self.read([Self.packets[2]]))
        var seen: [Packet] = []
        for _ in Self.packets { if let packet = try await inbox.next() { seen.append(packet) } }
        #expect(seen == Self.packets)
        _ = try? await channel.finish()
        #expect(try await inbox.next() == nil)
        #expect(try await inbox.next() == nil, "the end stays the end")
    }

    @Test func theChannelsErrorComesAfterItsPacketsAndNothingAfterIt() async throws {
        let (channel, inbox) = try await Self.asyncInbox()
        try await channel.writeInbound(Self.read(Self.packets))
        try await Self.fail(channel)
        try await channel.writeInbound(Self.read([Packet.pingreq]))  // after the error: never handed on
        for packet in Self.packets { #expect(try await inbox.next() == packet) }
        await #expect(throws: MQTTError.self) { _ = try await inbox.next() }
        #expect(throws: MQTTError.self) { _ = try inbox.take(orPark: Session()) }
        _ = try? await channel.finish()
    }

    @Test(.timeLimit(.minutes(1))) func aWaitingTaskGetsThePacketOrTheErrorWhenItArrives() async throws {
        let (channel, inbox) = try await Self.asyncInbox()
        async let first = inbox.next()
        while !inbox.hasWaiter { try await Task.sleep(for: .milliseconds(1)) }
        try await channel.writeInbound(Self.read([Packet.pingreq, Self.ack]))
        #expect(try await first == .pingreq)
        #expect(try await inbox.next() == Self.ack)
        async let second = inbox.next()
        while !inbox.hasWaiter { try await Task.sleep(for: .milliseconds(1)) }
        try await Self.fail(channel)
        do {
            _ = try await second
            Issue.record("the waiting task gets the error")
        } catch is MQTTError {}
        _ = try? await channel.finish()
    }

    @Test func takingFromAnotherThreadLetsTheChannelReadAgain() async throws {
        let (channel, inbox) = try await Self.asyncInbox()
        let counter = ReadCounter()
        try await channel.pipeline.addHandler(counter, position: .first)
        try await channel.writeInbound(Self.read([Packet.pingreq]))
        try await channel.testingEventLoop.executeInContext { channel.read() }
        #expect(try await channel.testingEventLoop.executeInContext { counter.reads } == 0)
        #expect(Self.packet(try inbox.take(orPark: Session())) == .pingreq)
        await channel.testingEventLoop.run()
        #expect(try await channel.testingEventLoop.executeInContext { counter.reads } == 1)
        _ = try? await channel.finish()
    }

    @Test func aParkedSessionIsResumedOnceByThePacketsAndByTheEnd() throws {
        let (channel, inbox, _) = try Self.inbox()
        let session = Session()
        guard case .parked = try inbox.take(orPark: session) else {
            Issue.record("an empty inbox parks the session")
            return
        }
        #expect(session.count == 0)
        try channel.writeInbound(Self.read([Packet.pingreq]))
        #expect(session.count == 1, "the first packet resumes it")
        try channel.writeInbound(Self.read([Self.ack]))
        #expect(session.count == 1, "resumed once: the turn it started takes what follows")
        #expect(Self.packet(try inbox.take(orPark: session)) == .pingreq)
        #expect(Self.packet(try inbox.take(orPark: session)) == Self.ack)
        guard case .parked = try inbox.take(orPark: session) else {
            Issue.record("parked again once the queue is empty")
            return
        }
        // A silent connection that ends still gets a turn, which finds the end and concludes the session.
        _ = try? channel.finish()
        #expect(session.count == 2)
        guard case .ended = try inbox.take(orPark: session) else {
            Issue.record("the end after every packet")
            return
        }
        #expect(session.count == 2)
    }

    /// A session that handles some packets at once (`handleNow`): PINGREQ wholly, DISCONNECT with a turn to
    /// finish it; anything else not.
    final class HandlingSession: ParkedSession {
        let resumed = Atomic(0)
        /// Set and read on the test's thread (the embedded event loop's).
        nonisolated(unsafe) var handled: [Packet] = []
        func resume() { resumed.add(1, ordering: .relaxed) }
        var count: Int { resumed.load(ordering: .relaxed) }
        func handlesNow(_ packet: PacketGlance) -> Bool {
            switch packet {
            case .pingreq, .disconnect: true
            default: false
            }
        }
        func handleNow(_ packet: consuming Packet) -> HandledNow {
            let packet = copy packet
            handled.append(packet)
            if case .disconnect = packet { return .doneWithTurn }
            return .done
        }
    }

    static let disconnect = Packet.disconnect(reasonCode: 0, properties: Properties())

    @Test func aParkedSessionHandlesWhatItCanAtOnceAndTheRestWaitsInOrder() throws {
        let (channel, inbox, counter) = try Self.inbox()
        let session = HandlingSession()
        guard case .parked = try inbox.take(orPark: session) else {
            Issue.record("an empty inbox parks the session")
            return
        }
        try channel.writeInbound(Self.read([Packet.pingreq, .pingreq]))
        #expect(session.handled == [.pingreq, .pingreq])
        #expect(session.count == 0, "both handled at once: no turn")
        #expect(inbox.slots == 0)
        channel.read()
        #expect(counter.reads == 1, "nothing waits, so reads go on")
        // The first packet it cannot handle waits, and every packet after it waits behind it, in order.
        try channel.writeInbound(Self.read([Packet.pingreq, Self.ack, .pingreq, Self.disconnect]))
        #expect(session.handled == [.pingreq, .pingreq, .pingreq])
        #expect(session.count == 1, "one turn for what waits")
        try channel.writeInbound(Self.read([Packet.pingreq]))
        #expect(session.handled.count == 3, "not at once while packets wait or a turn runs")
        #expect(Self.packet(try inbox.take(orPark: session)) == Self.ack)
        #expect(Self.packet(try inbox.take(orPark: session)) == .pingreq)
        #expect(Self.packet(try inbox.take(orPark: session)) == Self.disconnect)
        #expect(Self.packet(try inbox.take(orPark: session)) == .pingreq)
        guard case .parked = try inbox.take(orPark: session) else {
            Issue.record("parked again once the queue is empty")
            return
        }
        #expect(session.count == 1)
        _ = try? channel.finish()
    }

    @Test func whatItLeavesForATurnResumesTheSessionBeforeThePacketsAfterIt() throws {
        let (channel, inbox, _) = try Self.inbox()
        let session = HandlingSession()
        _ = try inbox.take(orPark: session)
        try channel.writeInbound(Self.read([Self.disconnect]))
        #expect(session.handled == [Self.disconnect])
        #expect(session.count == 1, "a turn, with nothing queued")
        guard case .parked = try inbox.take(orPark: session) else {
            Issue.record("the turn finds nothing queued and parks")
            return
        }
        try channel.writeInbound(Self.read([Self.disconnect, .pingreq]))
        #expect(session.handled == [Self.disconnect, Self.disconnect], "the packet after it waits for the turn")
        #expect(session.count == 2)
        #expect(Self.packet(try inbox.take(orPark: session)) == .pingreq)
        // The end after packets handled at once still resumes the session, which finds it.
        _ = try inbox.take(orPark: session)
        try channel.writeInbound(Self.read([Packet.pingreq]))
        #expect(session.count == 2)
        _ = try? channel.finish()
        #expect(session.count == 3)
        guard case .ended = try inbox.take(orPark: session) else {
            Issue.record("the end")
            return
        }
    }

    @Test func anErrorResumesAParkedSession() throws {
        let (channel, inbox, _) = try Self.inbox()
        let session = Session()
        _ = try inbox.take(orPark: session)
        channel.pipeline.fireErrorCaught(MQTTError(.malformedPacket, "test"))
        #expect(session.count == 1)
        #expect(throws: MQTTError.self) { _ = try inbox.take(orPark: session) }
        _ = try? channel.finish()
    }

    @Test func readsAreHeldWhileTheLatestReadWaitsUntouched() throws {
        let (channel, inbox, counter) = try Self.inbox()
        channel.read()
        #expect(counter.reads == 1, "an empty inbox lets reads through")
        try channel.writeInbound(Self.read([Packet.pingreq, Self.ack]))
        channel.read()
        channel.read()
        #expect(counter.reads == 1, "held while the read's packets wait untouched")
        let session = Session()
        #expect(Self.packet(try inbox.take(orPark: session)) == .pingreq)
        channel.embeddedEventLoop.run()
        #expect(counter.reads == 2, "taking the first of them lets the channel read again, once")
        // The next read arrives while a packet of the previous one still waits: held again until it is reached.
        try channel.writeInbound(Self.read([Packet.disconnect(reasonCode: 0, properties: Properties())]))
        channel.read()
        #expect(counter.reads == 2)
        #expect(Self.packet(try inbox.take(orPark: session)) == Self.ack)
        channel.embeddedEventLoop.run()
        #expect(counter.reads == 2, "the latest read's packet still waits")
        #expect(Self.packet(try inbox.take(orPark: session)) == .disconnect(reasonCode: 0, properties: Properties()))
        channel.embeddedEventLoop.run()
        #expect(counter.reads == 3)
        _ = try? channel.finish()
    }

    @Test func aClientOneReadAheadDoesNotGrowTheQueue() throws {
        let (channel, inbox, _) = try Self.inbox()
        let session = Session()
        try channel.writeInbound(Self.read([Packet.pingreq, Packet.pingreq]))
        for round in 0..<1000 {
            // Taking the first packet of a read lets the next one in while the other still waits.
            #expect(Self.packet(try inbox.take(orPark: session)) == .pingreq)
            channel.embeddedEventLoop.run()
            try channel.writeInbound(Self.read([Packet.pingreq, Packet.pingreq]))
            #expect(Self.packet(try inbox.take(orPark: session)) == .pingreq)
            #expect(inbox.slots <= 3, "round \(round): \(inbox.slots) slots")
        }
        _ = try? channel.finish()
    }

    @Test func theHandshakeEndsTheSmallReads() throws {
        let (channel, _, _) = try Self.inbox()
        try channel.setOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: 512)).wait()
        channel.pipeline.fireUserInboundEventTriggered(TLSUserEvent.handshakeCompleted(negotiatedProtocol: "mqtt"))
        let allocator = try channel.getOption(.recvAllocator).wait()
        #expect(allocator is AdaptiveRecvByteBufferAllocator, "the receive buffer adapts once the handshake is done")
        _ = try? channel.finish()
    }

    /// MQTT §3.1.2.10: a connection silent for longer than 1.5 × its keep-alive is closed by its loop's sweep, within
    /// a second after the deadline and never before it; a packet moves the deadline; a closed connection leaves the
    /// sweep, whose timer stops with the last one.
    @Test func theSweepClosesASilentConnectionAndAPacketKeepsIt() throws {
        let loop = EmbeddedEventLoop()
        let sweep = KeepAliveSweep(eventLoop: loop)
        var inboxes: [(EmbeddedChannel, ConnectionInbox)] = []
        for _ in 0..<2 {
            let (channel, inbox) = try Self.connected(on: loop)
            try Self.startKeepAlive(inbox, sweep, on: loop)
            inboxes.append((channel, inbox))
        }
        let (pinging, silent) = (inboxes[0].0, inboxes[1].0)
        #expect(sweep.watchedCount == 2 && sweep.isSweeping)
        loop.advanceTime(by: .seconds(1))
        #expect(pinging.isActive && silent.isActive, "1 s of silence is within 1.5 s")
        try pinging.writeInbound(Self.read([Packet.pingreq]))
        _ = try inboxes[0].1.take(orPark: Session())  // handled at once
        loop.advanceTime(by: .seconds(1))
        #expect(!silent.isActive, "2 s of silence: closed at the sweep after its deadline")
        #expect(pinging.isActive, "1 s since its PINGREQ")
        #expect(sweep.watchedCount == 1)
        loop.advanceTime(by: .milliseconds(400))
        #expect(pinging.isActive, "no sweep between seconds")
        loop.advanceTime(by: .milliseconds(600))
        #expect(!pinging.isActive, "2 s since its PINGREQ")
        #expect(sweep.watchedCount == 0 && !sweep.isSweeping, "the timer stops with the last connection")
        for (channel, _) in inboxes { _ = try? channel.finish() }
    }

    /// A connected channel on `loop` with an inbox (MQTT 5, after its CONNECT).
    static func connected(on loop: EmbeddedEventLoop) throws -> (EmbeddedChannel, ConnectionInbox) {
        let channel = EmbeddedChannel(loop: loop)
        let inbox = Self.makeInbox(loop)
        try channel.pipeline.syncOperations.addHandler(inbox)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1883)).wait()
        return (channel, inbox)
    }

    /// Starts the inbox's keep-alive of 1.5 s on `sweep` and runs the loop until it has started.
    static func startKeepAlive(_ inbox: ConnectionInbox, _ sweep: KeepAliveSweep, on loop: EmbeddedEventLoop) throws {
        let started = inbox.startKeepAlive(timeout: .milliseconds(1500), sweep: sweep)
        loop.run()
        try started.wait()
    }

    /// A keep-alive asked for while the channel closes leaves nothing watched (the sweep would keep the inbox for
    /// ever): the start finds the channel inactive, and the handler's removal unwatches in any case.
    @Test func aClosedChannelStartsNoKeepAlive() throws {
        let loop = EmbeddedEventLoop()
        let sweep = KeepAliveSweep(eventLoop: loop)
        let (channel, inbox) = try Self.connected(on: loop)
        // Asked before the close, run after it (as a connection's task asks while the channel closes): the handler
        // is still in the pipeline then, but the channel is no longer active.
        let started = inbox.startKeepAlive(timeout: .seconds(1), sweep: sweep)
        try channel.close().wait()
        loop.run()
        try started.wait()
        #expect(sweep.watchedCount == 0 && !sweep.isSweeping)
    }

    // MARK: Decoding (`MQTTBatchDecoder` as `ByteToMessageHandler` called it; see also `MQTTBatchDecoderTests`)

    static func opening() throws -> [Packet] {
        let topic = try TopicName("devices/d1/telemetry")
        return [.connect(ConnectPacket(version: .v5, clientID: "d1"))]
            + (1...5).map {
                .publish(PublishPacket(topic: topic, payload: [UInt8($0)], qos: .atLeastOnce, packetID: UInt16($0)))
            }
            + [
                .pingreq,
                .publish(PublishPacket(topic: topic, payload: Array(repeating: 9, count: 300), qos: .atMostOnce)),
            ]
    }

    /// Writes `bytes` in reads of `chunk` bytes, taking what each read queued; returns the packets and the error
    /// the inbox handed on, if any (nothing is taken after it).
    static func feed(_ bytes: ByteBuffer, chunk: Int, inbox: ConnectionInbox, channel: EmbeddedChannel) throws
        -> (packets: [Packet], error: (any Error)?)
    {
        var packets: [Packet] = []
        var rest = bytes
        let session = Session()
        while rest.readableBytes > 0 {
            try channel.writeInbound(rest.readSlice(length: min(chunk, rest.readableBytes))!)
            while true {
                do {
                    guard case .packet(let packet) = try inbox.take(orPark: session) else { break }
                    packets.append(packet)
                } catch {
                    return (packets, error)
                }
            }
        }
        return (packets, nil)
    }

    @Test(arguments: [1, 2, 3, 7, 31, 64, 1_000])
    func everyPacketInOrderAtEveryReadSize(_ chunk: Int) throws {
        let channel = EmbeddedChannel()
        let inbox = Self.makeInbox(channel.eventLoop, opening: true)
        try channel.pipeline.syncOperations.addHandler(inbox)
        let packets = try Self.opening()
        let (taken, error) = try Self.feed(Self.read(packets), chunk: chunk, inbox: inbox, channel: channel)
        #expect(error == nil)
        #expect(taken == packets)
        _ = try? channel.finish()
    }

    /// A malformed packet after valid ones in the same read: the valid ones first, then its error, and nothing after
    /// it (a valid packet that follows it in the read, or in a later read, is never handed on).
    @Test(
        arguments: [
            [0x30, 0x80, 0x80, 0x80, 0x80, 0x01],  // a remaining length in five bytes
            [0x36, 0x03, 0x00, 0x01, 0x61],  // a PUBLISH at QoS 3
            [0x10, 0x02, 0x00, 0x00],  // a second CONNECT
        ] as [[UInt8]])
    func theValidPacketsBeforeAMalformedOneComeFirstThenItsError(_ malformed: [UInt8]) throws {
        let channel = EmbeddedChannel()
        let inbox = Self.makeInbox(channel.eventLoop, opening: true)
        try channel.pipeline.syncOperations.addHandler(inbox)
        let packets = try Self.opening()
        var bytes = Self.read(Array(packets.prefix(3)))
        bytes.writeBytes(malformed)
        bytes.writeImmutableBuffer(Self.read([packets[3]]))
        let (taken, error) = try Self.feed(bytes, chunk: .max, inbox: inbox, channel: channel)
        #expect(taken == Array(packets.prefix(3)))
        #expect(error is MQTTError)
        // A later read is not decoded.
        try channel.writeInbound(Self.read([.pingreq]))
        #expect(throws: MQTTError.self) { try inbox.take(orPark: Session()) }
        _ = try? channel.finish()
    }

    /// More unread bytes than the maximum buffer are refused as `ByteToMessageHandler` refused them, also when they
    /// arrive in small reads of one packet that never completes.
    @Test func aPacketThatOutgrowsTheBufferIsRefused() throws {
        let channel = EmbeddedChannel()
        let inbox = Self.makeInbox(channel.eventLoop, maximumBufferSize: 100)
        try channel.pipeline.syncOperations.addHandler(inbox)
        let topic = try TopicName("devices/d1/telemetry")
        let large = Self.read([.publish(PublishPacket(topic: topic, payload: Array(repeating: 1, count: 300)))])
        let (taken, error) = try Self.feed(large, chunk: 50, inbox: inbox, channel: channel)
        #expect(taken.isEmpty)
        #expect(error is ByteToMessageDecoderError.PayloadTooLargeError)
        _ = try? channel.finish()
    }

    /// MQTT §3.1.2.10: the bytes of a packet that never completes do not keep a connection; a packet does.
    @Test func aTrickleOfAnIncompletePacketDoesNotKeepTheConnection() throws {
        let loop = EmbeddedEventLoop()
        let sweep = KeepAliveSweep(eventLoop: loop)
        let (channel, inbox) = try Self.connected(on: loop)
        try Self.startKeepAlive(inbox, sweep, on: loop)
        var publish = Self.read([.publish(PublishPacket(topic: try TopicName("devices/d1/t"), payload: [1, 2, 3]))])
        for _ in 0..<2 {
            loop.advanceTime(by: .milliseconds(900))
            try channel.writeInbound(publish.readSlice(length: 1)!)
        }
        loop.advanceTime(by: .milliseconds(200))
        #expect(!channel.isActive, "2 s with no complete packet")
        _ = try? channel.finish()
    }

    /// Packets waiting to be handled are the hub's delay, not the client's silence (its reads are held meanwhile, so
    /// a PINGREQ it sent may sit unread): the keep-alive starts again, and counts once the queue is empty.
    @Test func packetsWaitingForTheHubAreNotSilence() throws {
        let loop = EmbeddedEventLoop()
        let sweep = KeepAliveSweep(eventLoop: loop)
        let (channel, inbox) = try Self.connected(on: loop)
        try Self.startKeepAlive(inbox, sweep, on: loop)
        try channel.writeInbound(Self.read([.pingreq]))  // queued at 0 s, not taken
        loop.advanceTime(by: .seconds(3))
        #expect(channel.isActive, "3 s with its packet waiting for the hub")
        #expect(Self.packet(try inbox.take(orPark: Session())) == .pingreq)  // taken at 3 s
        loop.advanceTime(by: .seconds(1))
        #expect(channel.isActive, "1 s since the hub was last behind")
        loop.advanceTime(by: .seconds(1))
        #expect(!channel.isActive, "2 s of silence once the queue is empty")
        _ = try? channel.finish()
    }
}
