import MQTT
import NIOCore
import NIOPosix
import Testing

@testable import Hub

/// What one acknowledgement step writes for each outcome of its store write (MQTT 3.1.1 §3.4, MQTT 5.0 §3.4.2.1 and
/// §3.5.2.1): the code of its PUBACK or PUBREC, the correlation id only on a refusal and only to a client that asked
/// for problem information, the connection closed where 3.1.1 has no code to refuse with, DISCONNECT 0x89 when the
/// store cannot be reached, and the Receive Maximum's count given back with a PUBACK.
@Suite struct AcknowledgementStepTests {
    struct Case: Sendable, CustomTestStringConvertible {
        /// Nil: the step waits for no write (an answer decided before any store write).
        let outcome: StoreWrite?
        /// The code the step answers with when the write went as expected.
        var code: ReasonCode = .success
        let version: ProtocolVersion
        let qos: QoS
        let problemInformation: Bool
        /// The packets written, and whether the connection was closed by the step.
        let expected: [Packet]
        let closes: Bool

        var testDescription: String {
            "\(outcome.map { "\($0)" } ?? "no write, code \(code.rawValue)") \(version) QoS \(qos.rawValue)"
                + (problemInformation ? " problem information" : "")
        }
    }

    static let correlationID = "c0rrelation-id1"

    static var refusal: Properties {
        var properties = Properties()
        properties.userProperties = [("correlation-id", correlationID)]
        return properties
    }

    static let cases: [Case] = {
        var cases: [Case] = []
        for problemInformation in [false, true] {
            let refused = problemInformation ? refusal : Properties()
            for qos in [QoS.atLeastOnce, .exactlyOnce] {
                func answer(_ code: ReasonCode, _ properties: Properties = Properties()) -> Packet {
                    qos == .exactlyOnce
                        ? .pubrec(packetID: 7, reasonCode: code, properties: properties)
                        : .puback(packetID: 7, reasonCode: code, properties: properties)
                }
                for version in [ProtocolVersion.v311, .v5] {
                    let v5 = version == .v5
                    cases += [
                        Case(
                            outcome: .stored, version: version, qos: qos, problemInformation: problemInformation,
                            expected: [answer(.success)], closes: false),
                        // Stored by another node from the same transaction: acknowledged, not delivered here.
                        Case(
                            outcome: .storedElsewhere, version: version, qos: qos,
                            problemInformation: problemInformation, expected: [answer(.success)], closes: false),
                        Case(
                            outcome: .replayed, version: version, qos: qos, problemInformation: problemInformation,
                            expected: v5 ? [answer(.notAuthorized, refused)] : [], closes: !v5),
                        Case(
                            outcome: .failed, version: version, qos: qos, problemInformation: problemInformation,
                            expected: v5 ? [answer(.unspecifiedError, refused)] : [], closes: !v5),
                        Case(
                            outcome: .unavailable, version: version, qos: qos, problemInformation: problemInformation,
                            expected: v5 ? [.disconnect(reasonCode: .serverBusy, properties: refused)] : [],
                            closes: true),
                    ]
                }
                // Answers decided without a write (MQTT 5 only: 3.1.1 has no codes to send): a refusal carries the
                // correlation id; 0x10 No matching subscribers is a success and carries none.
                cases += [
                    Case(
                        outcome: nil, code: .quotaExceeded, version: .v5, qos: qos,
                        problemInformation: problemInformation, expected: [answer(.quotaExceeded, refused)],
                        closes: false),
                    Case(
                        outcome: nil, code: .noMatchingSubscribers, version: .v5, qos: qos,
                        problemInformation: problemInformation, expected: [answer(.noMatchingSubscribers)],
                        closes: false),
                ]
            }
        }
        return cases
    }()

    @Test(arguments: cases)
    func eachOutcomeIsAnsweredAsTheProtocolSays(_ test: Case) async throws {
        let pipe = try PipeChannel()
        defer { pipe.closeReadEnd() }
        let output = FlushCoalescer(pipe.channel)
        let acknowledger = MQTTConnection.Acknowledger(
            output: output, version: test.version, problemInformation: test.problemInformation,
            broker: MQTTBroker(), sessionKey: "step-test", connectionNumber: 1, persistence: nil)
        let queue = AcknowledgementQueue<MQTTConnection.Acknowledgement>(connection: acknowledger)
        if test.qos == .atLeastOnce {
            #expect(acknowledger.unacknowledged.received() == 1)
        } else {
            #expect(acknowledger.unacknowledged.received(qos2: 7) == 1)
        }
        let write = test.outcome.map { _ in StoreOutcome() }
        queue.append(
            after: write,
            MQTTConnection.Acknowledgement(
                packetID: 7, qos: test.qos, code: test.code, correlationID: Self.correlationID, delivery: nil,
                local: nil, logged: nil, savingID: false))
        if let write, let outcome = test.outcome { write.settle(outcome) }
        await queue.wait(untilAtMost: 0)
        // A close the step queued on the loop has run once this submitted task has; without one, the test closes.
        try await pipe.loop.submit {}.get()
        let closedByStep = !pipe.channel.isActive
        if !closedByStep { output.close() }
        try await pipe.channel.closeFuture.get()
        #expect(closedByStep == test.closes)
        #expect(try Self.packets(pipe.readToEnd(), test.version) == test.expected)
        // The Receive Maximum's count, read by counting one more in: a PUBACK on MQTT 5 gives it back; a QoS 2 id
        // refused by its PUBREC leaves the count (a stored one stays until its PUBCOMP).
        let answered = test.expected.contains { if case .puback = $0 { true } else { false } }
        let refusedQoS2 = test.expected.contains {
            if case .pubrec(_, let code, _) = $0 { code.isFailure } else { false }
        }
        if test.qos == .atLeastOnce {
            #expect(acknowledger.unacknowledged.received() == (answered && test.version == .v5 ? 1 : 2))
        } else {
            #expect(acknowledger.unacknowledged.received(qos2: 8) == (refusedQoS2 ? 1 : 2))
        }
    }

    /// The server's packets in `bytes`, decoded as a client reads them.
    static func packets(_ bytes: [UInt8], _ version: ProtocolVersion) throws -> [Packet] {
        var decoder = MQTTDecoder(role: .client, version: version)
        var buffer = ByteBuffer(bytes: bytes)
        var packets: [Packet] = []
        while let packet = try decoder.decode(buffer: &buffer) { packets.append(packet) }
        #expect(buffer.readableBytes == 0, "no bytes left over")
        return packets
    }
}
