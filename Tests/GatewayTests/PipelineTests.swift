import Core
import Crypto
import Foundation
import Testing

@testable import Gateway

@Suite struct ReplayTests {
    @Test func counterWindow() {
        var window = CounterWindow()
        #expect(window.accept(0) == .tooOld)
        #expect(window.accept(1) == .accepted)
        #expect(window.accept(1) == .replayed)
        #expect(window.accept(5) == .accepted)
        #expect(window.accept(3) == .accepted)  // out of order inside the window
        #expect(window.accept(3) == .replayed)
        #expect(window.accept(200) == .accepted)
        #expect(window.accept(136) == .tooOld)  // 200 − 64 is outside
        #expect(window.accept(137) == .accepted)  // 200 − 63 is the oldest inside
        #expect(window.accept(5) == .tooOld)
        // A restart restores the same window: old counters stay closed.
        var restored = CounterWindow(highest: window.highest, seen: window.seen)
        #expect(restored.accept(200) == .replayed)
        #expect(restored.accept(137) == .replayed)
        #expect(restored.accept(136) == .tooOld)
        #expect(restored.accept(UInt64.max) == .accepted)
        #expect(restored.accept(UInt64.max) == .replayed)
    }

    @Test func nonceLedger() throws {
        let device = try DeviceID("d1")
        let other = try DeviceID("d2")
        let ledger = NonceLedger(retentionSeconds: 121, capacity: 100, perDeviceCapacity: 3)
        #expect(ledger.claim(device: device, nonce: "a", now: 1000) == .fresh(expiresAt: 1121))
        #expect(ledger.claim(device: device, nonce: "a", now: 1100) == .replayed)
        #expect(ledger.claim(device: other, nonce: "a", now: 1100) == .fresh(expiresAt: 1221))  // per device
        #expect(ledger.claim(device: device, nonce: "b", now: 1100) == .fresh(expiresAt: 1221))
        #expect(ledger.claim(device: device, nonce: "c", now: 1100) == .fresh(expiresAt: 1221))
        #expect(ledger.claim(device: device, nonce: "d", now: 1100) == .full)  // this device's share is used
        #expect(ledger.claim(device: device, nonce: "a", now: 1121) == .fresh(expiresAt: 1242))  // expired, then new
        // Keys are hashed once when made: a device and nonce that spell the same text together are still two keys,
        // and a released nonce (its message not stored) frees the device's share and can be claimed again.
        let joined = try DeviceID("d1a")
        #expect(ledger.claim(device: joined, nonce: "b", now: 1121) == .fresh(expiresAt: 1242))
        #expect(ledger.claim(device: other, nonce: "ab", now: 1121) == .fresh(expiresAt: 1242))
        #expect(ledger.claim(device: device, nonce: "e", now: 1121) == .full)
        ledger.release(device: device, nonce: "c")
        #expect(ledger.claim(device: device, nonce: "c", now: 1122) == .fresh(expiresAt: 1243))
        #expect(ledger.claim(device: device, nonce: "c", now: 1122) == .replayed)
        // A nonce released and claimed again leaves its first slot behind: that slot neither removes the new claim
        // when its own time comes nor holds up the nonces claimed after it.
        let reused = NonceLedger(retentionSeconds: 121)
        _ = reused.claim(device: device, nonce: "w", now: 995)  // 1116: keeps the walk before a's first slot
        _ = reused.claim(device: device, nonce: "a", now: 1000)  // first slot: 1121
        _ = reused.claim(device: device, nonce: "x", now: 1010)  // 1131
        reused.release(device: device, nonce: "a")
        #expect(reused.claim(device: device, nonce: "a", now: 1100) == .fresh(expiresAt: 1221))
        #expect(reused.claim(device: device, nonce: "y", now: 1140) == .fresh(expiresAt: 1261))
        #expect(reused.count == 2, "w and x expired although a's first slot (1121) came before x")
        #expect(reused.claim(device: device, nonce: "a", now: 1200) == .replayed)
        #expect(reused.claim(device: device, nonce: "a", now: 1221) == .fresh(expiresAt: 1342))
        // A restart: the persisted entries come back.
        let restarted = NonceLedger(retentionSeconds: 121)
        restarted.load([(device, "b", 1221), (device, "old", 900)], now: 1150)
        #expect(restarted.claim(device: device, nonce: "b", now: 1150) == .replayed)
        #expect(restarted.count == 1)
    }

    @Test func quarantine() throws {
        let device = try DeviceID("d1")
        let book = QuarantineBook(policy: QuarantinePolicy(thresholds: [.replay: 3], durationSeconds: 600))
        #expect(book.record(.replay, device: device, now: 60).quarantinedUntil == nil)
        #expect(book.record(.replay, device: device, now: 61).quarantinedUntil == nil)
        #expect(book.record(.replay, device: device, now: 62).quarantinedUntil == 662)
        #expect(book.isQuarantined(device, now: 661))
        #expect(!book.isQuarantined(device, now: 662))
        // Offences in different minutes do not add up.
        #expect(book.record(.replay, device: device, now: 1000).countThisMinute == 1)
        _ = book.record(.replay, device: device, now: 1001)
        _ = book.record(.replay, device: device, now: 1002)
        #expect(book.isQuarantined(device, now: 1003))
        #expect(book.release(device))
        #expect(!book.isQuarantined(device, now: 1003))
        // Restored after a restart (an expired entry is not), and one device's quarantine ending leaves another's
        // in force: the count `isQuarantined` answers from without its lock follows every change.
        let other = try DeviceID("d2")
        book.load([(device, 2000), (other, 900)], now: 1003)
        #expect(book.isQuarantined(device, now: 1500) && !book.isQuarantined(other, now: 1500))
        for second in 1500..<1503 { _ = book.record(.replay, device: other, now: Int64(second)) }
        #expect(!book.isQuarantined(device, now: 2000))
        #expect(book.isQuarantined(other, now: 2000))
        #expect(!book.isQuarantined(other, now: 2102))
    }
}

@Suite struct PipelineTests {
    let key = P256.Signing.PrivateKey()

    func pipeline(_ configure: (inout GatewayPolicy) -> Void = { _ in }) throws -> GatewayPipeline {
        var policy = GatewayPolicy()
        configure(&policy)
        let pipeline = GatewayPipeline(policy: policy)
        pipeline.setSchema(try JSONSchema(bytes: try fixture("telemetry.schema.json")), for: "telemetry")
        return pipeline
    }

    func message(
        _ body: [UInt8], device: String = "d1", at: GatewayTime, nonce: String? = nil,
        key: P256.Signing.PrivateKey? = nil
    ) throws -> InboundMessage {
        let headers = try MessageSigner(key: key ?? self.key).sign(
            method: "POST", path: "/v1/telemetry", body: body, created: at.unixSeconds, nonce: nonce)
        func field(_ name: String) -> String? { headers.first { $0.name == name }?.value }
        return InboundMessage(
            identity: .device(try DeviceID(device)), route: "telemetry", source: "192.0.2.1",
            contentType: "application/json", messageType: nil, body: body,
            transport: .http(
                SignedRequest(
                    method: "POST", path: "/v1/telemetry", signatureInput: field("Signature-Input"),
                    signature: field("Signature"), contentDigest: field("Content-Digest")),
                key: self.key.publicKey))
    }

    /// The schema table: each message type gets its own schema (replaced when registered again) among more names
    /// than the short list holds, and a name that is not a valid message type is refused as such even when a
    /// schema was registered under it.
    /// A pipeline whose rate limits and quarantine never get in the way, for the schema stage's tests.
    func unlimitedPipeline() throws -> GatewayPipeline {
        let unlimited = RateLimit(rate: 1e9, burst: 1_000_000)
        return try pipeline {
            $0.messagesPerDevice = unlimited
            $0.messagesPerRoute = unlimited
            $0.messagesPerSource = unlimited
            $0.quarantine.thresholds = [:]
        }
    }

    /// A device's MQTT message of message type `type`, without a counter.
    func typed(_ type: String, _ body: String, device: String) throws -> InboundMessage {
        InboundMessage(
            identity: .device(try DeviceID(device)), route: "telemetry", source: "192.0.2.9", contentType: nil,
            messageType: type, body: Array(body.utf8), transport: .mqtt(counter: nil))
    }

    @Test func schemasAreFoundByMessageTypeOnly() throws {
        let gateway = try unlimitedPipeline()
        let at = time(0)
        func admit(_ type: String, _ body: String) throws -> Refusal? {
            let message = try typed(type, body, device: "s1")
            if case .failure(let refusal) = gateway.admit(message, now: at) { return refusal }
            return nil
        }
        let names = (0..<40).map { "type-\($0)" }
        for (index, name) in names.enumerated() {
            gateway.setSchema(
                try JSONSchema(bytes: Array(#"{"properties":{"v":{"const":\#(index)}}}"#.utf8)), for: name)
            // Each registered so far admits its own value and refuses its neighbour's.
            for (earlier, other) in names.prefix(index + 1).enumerated() {
                #expect(try admit(other, #"{"v":\#(earlier)}"#) == nil, "\(other) after \(name)")
                #expect(try admit(other, #"{"v":\#(earlier + 1)}"#)?.stage == .schema, "\(other) after \(name)")
            }
        }
        gateway.setSchema(try JSONSchema(bytes: Array(#"{"properties":{"v":{"const":"x"}}}"#.utf8)), for: "type-3")
        #expect(try admit("type-3", #"{"v":"x"}"#) == nil && admit("type-3", #"{"v":3}"#)?.stage == .schema)
        #expect(try admit("type-40", #"{"v":1}"#)?.detail.contains("no schema registered") == true)
        gateway.setSchema(try JSONSchema(bytes: Array("{}".utf8)), for: "Not Valid")
        #expect(try admit("Not Valid", #"{"v":1}"#)?.detail == "message type name is not valid")
    }

    /// A connection's schema hint stands for the pipeline's table only while no schema is registered: a hint kept
    /// from before a registration does not let through what the new schema refuses, and a hint for one message type
    /// is not used for another.
    @Test func aSchemaHintStandsOnlyForTheTableItWasMadeFrom() throws {
        let gateway = try unlimitedPipeline()
        let at = time(0)
        func admit(_ type: String, _ body: String, _ hint: GatewayPipeline.SchemaHint) throws -> Refusal? {
            var message = try typed(type, body, device: "h1")
            message.schemaHint = hint
            if case .failure(let refusal) = gateway.admit(message, now: at) { return refusal }
            return nil
        }
        gateway.setSchema(try JSONSchema(bytes: Array(#"{"properties":{"v":{"const":1}}}"#.utf8)), for: "type-a")
        let hint = gateway.schemaHint(for: "type-a", current: nil)
        #expect(gateway.schemaHint(for: "type-a", current: hint) === hint, "kept while nothing is registered")
        #expect(try admit("type-a", #"{"v":1}"#, hint) == nil)
        #expect(try admit("type-a", #"{"v":2}"#, hint)?.stage == .schema)
        // The operator tightens the schema: the kept hint is stale, and the new schema applies.
        gateway.setSchema(try JSONSchema(bytes: Array(#"{"properties":{"v":{"const":2}}}"#.utf8)), for: "type-a")
        #expect(try admit("type-a", #"{"v":1}"#, hint)?.stage == .schema)
        #expect(try admit("type-a", #"{"v":2}"#, hint) == nil)
        let fresh = gateway.schemaHint(for: "type-a", current: hint)
        #expect(fresh !== hint)
        // "type-b" has no schema: refused as such, whatever the hint for "type-a" says.
        #expect(try admit("type-b", #"{"v":2}"#, fresh)?.detail.contains("no schema registered") == true)
        // Another pipeline's hint, of the same generation, is not used either.
        let other = try unlimitedPipeline()
        for _ in 0..<2 { other.setSchema(try JSONSchema(bytes: Array("{}".utf8)), for: "type-a") }
        let foreign = other.schemaHint(for: "type-a", current: nil)
        #expect(foreign.generation == fresh.generation)
        #expect(try admit("type-a", #"{"v":1}"#, foreign)?.stage == .schema)
    }

    /// The adversarial corpus against the pipeline directly (the same manifest runs against the live endpoint in
    /// HubTests): every body is refused at its stage with its status, and the controls pass.
    @Test func adversarialCorpus() throws {
        let cases = try CorpusCase.all()
        #expect(cases.filter { $0.status != 202 }.count >= 50)
        let gateway = try pipeline { $0.messagesPerDevice = RateLimit(rate: 1000, burst: 1000) }
        for (index, entry) in cases.enumerated() {
            let at = time(Double(index) * 0.001)
            // Each case from its own device, so quarantine thresholds do not mix the cases up.
            let result = gateway.admit(try message(try entry.body(), device: "c\(index)", at: at), now: at)
            switch result {
            case .success:
                #expect(entry.status == 202, "\(entry.name) was admitted")
            case .failure(let refusal):
                #expect(refusal.problem.status == entry.status, "\(entry.name): \(refusal)")
                #expect(refusal.stage.rawValue == entry.stage, "\(entry.name): \(refusal)")
                #expect(refusal.auditKind != nil, "\(entry.name) leaves no audit record")
                #expect(!refusal.detail.isEmpty)
            }
        }
    }

    @Test func floodingDeviceIsLimitedThenQuarantinedWhileAnotherIsUntouched() throws {
        let gateway = try pipeline {
            $0.messagesPerDevice = RateLimit(rate: 10, burst: 20)
            $0.messagesPerRoute = RateLimit(rate: 10, burst: 20)
            $0.quarantine = QuarantinePolicy(thresholds: [.rateLimited: 50], durationSeconds: 300)
        }
        let body = Array(#"{"temperature":1}"#.utf8)
        var flooderAdmitted = 0
        var flooderRefused: [Refusal] = []
        var normalRefused = 0
        // Two seconds: the flooder sends at 100/s (10× its rate), the other device at 10/s.
        for tick in 0..<200 {
            let at = time(Double(tick) * 0.01)
            switch gateway.admit(try message(body, device: "flooder", at: at), now: at) {
            case .success: flooderAdmitted += 1
            case .failure(let refusal): flooderRefused.append(refusal)
            }
            if tick % 10 == 0, case .failure = gateway.admit(try message(body, device: "normal", at: at), now: at) {
                normalRefused += 1
            }
        }
        #expect(normalRefused == 0)
        #expect(flooderAdmitted >= 20 && flooderAdmitted <= 42, "burst 20 plus 10/s for 2 s")
        let first = try #require(flooderRefused.first)
        #expect(first.problem == .tooManyRequests)
        #expect(first.retryAfterSeconds == 1)
        #expect(first.auditKind == "rate-limited")
        #expect(flooderRefused.dropFirst().first?.auditKind == nil, "repeated trips are counted, not each audited")
        let quarantining = try #require(flooderRefused.first { $0.quarantinedUntil != nil })
        #expect(quarantining.auditKind == "rate-limited")
        // In quarantine: the generic 403, no audit record, no further work.
        let later = time(2.5)
        guard case .failure(let refusal) = gateway.admit(try message(body, device: "flooder", at: later), now: later)
        else { throw TestFailure("quarantined device admitted") }
        #expect(refusal.problem == .forbidden && refusal.stage == .quarantine && refusal.auditKind == nil)
        #expect(gateway.release(try DeviceID("flooder")))
        let released = time(3)
        guard case .success = gateway.admit(try message(body, device: "flooder", at: released), now: released) else {
            throw TestFailure("released device refused")
        }
    }

    @Test func replayedAndForeignSignaturesAreRefused() throws {
        let gateway = try pipeline()
        let body = Array(#"{"temperature":1}"#.utf8)
        let at = time(0)
        let captured = try message(body, at: at, nonce: "captured-nonce-0001")
        guard case .success(let admitted) = gateway.admit(captured, now: at) else { throw TestFailure("refused") }
        #expect(admitted.nonce?.value == "captured-nonce-0001")
        // The same request again, one second later.
        guard case .failure(let replay) = gateway.admit(captured, now: time(1)) else { throw TestFailure("replayed") }
        #expect(replay.problem == .unauthenticated && replay.stage == .replay && replay.auditKind == "replay")
        // Signed by another key than the certificate's.
        let foreign = try message(body, at: at, key: P256.Signing.PrivateKey())
        guard case .failure(let bad) = gateway.admit(foreign, now: at) else { throw TestFailure("foreign key") }
        #expect(bad.auditKind == "bad-signature")
        // Unsigned.
        var unsigned = try message(body, at: at)
        unsigned.transport = .http(
            SignedRequest(
                method: "POST", path: "/v1/telemetry", signatureInput: nil, signature: nil, contentDigest: nil),
            key: key.publicKey)
        guard case .failure(let missing) = gateway.admit(unsigned, now: at) else { throw TestFailure("unsigned") }
        #expect(missing.problem == .unauthenticated)
    }

    @Test func mqttCounterWindow() throws {
        let gateway = try pipeline()
        let at = time(0)
        func publish(_ counter: UInt64?) -> Result<Admitted, Refusal> {
            gateway.admit(
                InboundMessage(
                    identity: .device(try! DeviceID("m1")), route: "telemetry", source: "192.0.2.9",
                    contentType: nil, messageType: "telemetry", body: Array(#"{"temperature":2}"#.utf8),
                    transport: .mqtt(counter: counter)), now: at)
        }
        guard case .success(let first) = publish(7) else { throw TestFailure("refused") }
        #expect(first.counterWindow?.highest == 7)
        guard case .failure(let replay) = publish(7) else { throw TestFailure("replayed counter admitted") }
        #expect(replay.stage == .replay)
        guard case .success = publish(nil) else { throw TestFailure("no counter refused") }
    }

    /// MQTT 3.1.1 carries the counter as the payload's `$counter` member: taken out before the schema (which does
    /// not allow extra members here), checked by the window; malformed or disagreeing counters are refused.
    @Test func mqttCounterMember() throws {
        let gateway = try pipeline()
        let at = time(0)
        func publish(_ body: String, property: UInt64? = nil) throws -> Result<Admitted, Refusal> {
            gateway.admit(
                InboundMessage(
                    identity: .device(try DeviceID("m2")), route: "telemetry", source: "192.0.2.9", contentType: nil,
                    messageType: "telemetry", body: Array(body.utf8), transport: .mqtt(counter: property)), now: at)
        }
        // The schema sees the message without its envelope member: a schema that allows nothing else admits it.
        gateway.setSchema(
            try JSONSchema(
                bytes: Array(#"{"properties":{"temperature":{"type":"number"}},"additionalProperties":false}"#.utf8)),
            for: "telemetry")
        guard case .success(let first) = try publish(#"{"$counter":3,"temperature":2}"#) else {
            throw TestFailure("refused")
        }
        #expect(first.counterWindow?.highest == 3)
        let document = try #require(first.document)
        #expect(document.member("$counter", of: document.root) != nil, "the body is stored as sent")
        guard case .failure(let extra) = try publish(#"{"$counter":4,"temperature":2,"x":1}"#) else {
            throw TestFailure("a member the schema does not allow was admitted")
        }
        #expect(extra.stage == .schema)
        // Nor does a `const` of the whole message see it (the review's finding on the tape walk).
        gateway.setSchema(try JSONSchema(bytes: Array(#"{"const":{"temperature":2}}"#.utf8)), for: "telemetry")
        guard case .success = try publish(#"{"$counter":5,"temperature":2}"#) else {
            throw TestFailure("a const root refused the envelope member")
        }
        guard case .failure(let replay) = try publish(#"{"$counter":3,"temperature":2}"#) else {
            throw TestFailure("replayed member admitted")
        }
        #expect(replay.stage == .replay && replay.problem == .unauthenticated)
        for bad in [#"{"$counter":-1}"#, #"{"$counter":1.5}"#, #"{"$counter":"4"}"#, #"{"$counter":1e300}"#] {
            guard case .failure(let refusal) = try publish(bad) else { throw TestFailure("\(bad) admitted") }
            #expect(refusal.problem == .invalidMessage, "\(bad)")
        }
        guard case .failure(let disagree) = try publish(#"{"$counter":9,"temperature":2}"#, property: 10) else {
            throw TestFailure("disagreeing counters admitted")
        }
        #expect(disagree.problem == .invalidMessage)
    }

    @Test func operatorsAndUnknownRoutesAreNotDevices() throws {
        let gateway = try pipeline()
        let at = time(0)
        var fromOperator = try message(Array(#"{"temperature":1}"#.utf8), at: at)
        fromOperator.identity = .operator(try OperatorName("admin"))
        guard case .failure(let refusal) = gateway.admit(fromOperator, now: at) else { throw TestFailure("admitted") }
        #expect(refusal.problem == .forbidden && refusal.stage == .identity)
        var elsewhere = try message(Array(#"{"temperature":1}"#.utf8), at: at)
        elsewhere.route = "admin"
        guard case .failure(let denied) = gateway.admit(elsewhere, now: at) else { throw TestFailure("admitted") }
        #expect(denied.stage == .authorization)
    }

    /// A NAT address over its shared budget is refused without counting against the devices behind it, and a
    /// flooding device is stopped by its own limit before it spends the shared budget.
    @Test func sourceLimitIsNotTheDevicesOffence() throws {
        let gateway = try pipeline {
            $0.messagesPerSource = RateLimit(rate: 1, burst: 5)
            $0.quarantine = QuarantinePolicy(thresholds: [.rateLimited: 3], durationSeconds: 60)
        }
        let at = time(0)
        var refusals: [Refusal] = []
        for index in 0..<20 {
            if case .failure(let refusal) = gateway.admit(
                try message(Array(#"{"temperature":1}"#.utf8), device: "nat-\(index)", at: at), now: at)
            {
                refusals.append(refusal)
            }
        }
        #expect(refusals.count == 15)
        #expect(refusals.allSatisfy { $0.limit?.name == "source" && $0.auditKind == nil && $0.quarantinedUntil == nil })
        #expect(!gateway.quarantine.isQuarantined(try DeviceID("nat-19"), now: at.unixSeconds))
    }

    /// A connection's pinned source cell (`pinSource`) draws on its source's one budget; a cell pinned for another
    /// source (a fresh budget) does not let a message past its own source's exhausted one.
    @Test func aSourceCellIsHonouredOnlyForItsOwnSource() throws {
        let gateway = try pipeline { $0.messagesPerSource = RateLimit(rate: 1, burst: 5) }
        let at = time(0)
        let own = try #require(gateway.pinSource(nil, source: "192.0.2.1"))
        let foreign = try #require(gateway.pinSource(nil, source: "198.51.100.7"))
        var outcomes: [String] = []
        for index in 0..<8 {
            var message = try message(Array(#"{"temperature":1}"#.utf8), device: "src-\(index)", at: at)
            message.sourceCell = [nil, own, foreign][index % 3]
            switch gateway.admit(message, now: at) {
            case .success: outcomes.append("admitted")
            case .failure(let refusal): outcomes.append(refusal.limit?.name ?? "\(refusal.stage)")
            }
        }
        #expect(outcomes == Array(repeating: "admitted", count: 5) + Array(repeating: "source", count: 3))
        // The foreign cell's own budget is untouched.
        #expect(gateway.sourceLimiter.decide(foreign, now: at.monotonicNanos) == .admit(remaining: 4))
    }

    @Test func aStoredSchemaThatNoLongerCompilesRefusesEverything() throws {
        let gateway = try pipeline()
        gateway.setSchema(.refuseAll, for: "telemetry")
        let at = time(0)
        guard
            case .failure(let refusal) = gateway.admit(try message(Array(#"{"temperature":1}"#.utf8), at: at), now: at)
        else { throw TestFailure("admitted") }
        #expect(refusal.stage == .schema)
    }

    @Test func connectionRatePerSource() {
        let gateway = GatewayPipeline()
        var refused = 0
        for _ in 0..<100 where gateway.admitConnection(source: "198.51.100.7", now: time(0)) != nil { refused += 1 }
        #expect(refused == 60)  // burst 40
        #expect(gateway.admitConnection(source: "198.51.100.8", now: time(0)) == nil)
    }
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
