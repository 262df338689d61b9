import Logging
import NIOCore
import NIOEmbedded
import Testing

@testable import Hub

/// The open-connection limits, and the listener's stop: once every connection is closed, none is admitted (a
/// connection accepted while a listener stops would otherwise stay open with nothing left to close it).
@Suite struct ConnectionCounterTests {
    @Test func nothingIsAdmittedAfterCloseAll() throws {
        let counter = ConnectionCounter(total: 10, perSource: 10)
        let logger = Logger(label: "test")
        let first = EmbeddedChannel()
        #expect(counter.admit(first, source: "10.0.0.1", logger: logger, listener: "MQTT") == nil)
        #expect(counter.open == 1)
        counter.closeAll()
        first.embeddedEventLoop.run()
        #expect(counter.open == 0, "closed, and its slot given back")
        #expect(throws: ChannelError.alreadyClosed) { _ = try first.finish() }
        let late = EmbeddedChannel()
        #expect(counter.admit(late, source: "10.0.0.2", logger: logger, listener: "MQTT") != nil, "refused")
        late.embeddedEventLoop.run()
        #expect(throws: ChannelError.alreadyClosed) { _ = try late.finish() }  // closed by the refusal
        #expect(counter.open == 0)
    }
}
