import Core
import Crypto
import Foundation
import Pairing
import Testing

@Suite struct PairingSessionTests {
    struct Device {
        let label: PairingLabel
        let identity: NoiseKeyPair
    }

    static func device(_ suite: PairingLabel.Suite, id: String = "sensor-7") throws -> Device {
        let identity = suite.dh.generateKeyPair()
        let secret = Array(SymmetricKey(size: .bits128).withUnsafeBytes { Array($0) })
        return Device(
            label: try PairingLabel(
                suite: suite, deviceID: try DeviceID(id), publicKey: identity.publicKey, setupSecret: secret),
            identity: identity)
    }

    static func hubKeys() -> [PairingLabel.Suite: NoiseKeyPair] {
        [.p256AESGCMSHA256: NoiseDH.p256.generateKeyPair(), .x25519AESGCMSHA256: NoiseDH.x25519.generateKeyPair()]
    }

    static let credentials = PairingCredentials(
        certificateDER: [0x30, 1, 2], caCertificateDER: [0x30, 3],
        pins: [[UInt8](repeating: 1, count: 32), [UInt8](repeating: 2, count: 32)],
        irk: [UInt8](repeating: 9, count: 16), tufRoot: nil)

    /// Runs a whole pairing; `claim` is the label the hub holds for the device.
    static func pair(
        device: Device, claim: PairingLabel, csrKey: P256.Signing.PrivateKey = .init(),
        tamper: ((Int, inout [UInt8]) -> Void)? = nil
    ) throws -> (DeviceID, PairingCredentials) {
        var hub = HubPairingSession(hubStaticKeys: hubKeys())
        var agent = try DevicePairingSession(label: device.label, identityKey: device.identity)
        var frame: [UInt8]
        var step = 0
        guard case .send(let hello) = try hub.start() else { throw PairingError(.protocolViolation, "no hello") }
        frame = hello
        var paired: (DeviceID, PairingCredentials)?
        var deviceCredentials: PairingCredentials?
        var toHub = false
        while paired == nil {
            step += 1
            tamper?(step, &frame)
            if toHub {
                switch try hub.received(frame) {
                case .send(let next): frame = next
                case .lookUpClaim(let id, _):
                    #expect(id == device.label.deviceID)
                    guard case .send(let next) = try hub.claimFound(claim) else {
                        throw PairingError(.protocolViolation, "")
                    }
                    frame = next
                case .issueCertificate(let id, let key, let csr):
                    #expect(key == Array(csrKey.publicKey.x963Representation))
                    #expect(csr == [0x30, 0x00])
                    #expect(id == device.label.deviceID)
                    guard case .send(let next) = try hub.issued(credentials) else {
                        throw PairingError(.protocolViolation, "")
                    }
                    frame = next
                case .paired(let id, let acknowledgement):
                    guard case .paired(let received) = try agent.received(acknowledgement) else {
                        throw PairingError(.protocolViolation, "no acknowledgement")
                    }
                    deviceCredentials = received
                    paired = (id, received)
                    continue
                }
            } else {
                switch try agent.received(frame) {
                case .send(let next): frame = next
                case .makeCSR:
                    guard case .send(let next) = try agent.csrReady(operationalKey: csrKey, csrDER: [0x30, 0x00]) else {
                        throw PairingError(.protocolViolation, "")
                    }
                    frame = next
                case .confirm(let confirmation):
                    frame = confirmation
                case .paired:
                    throw PairingError(.protocolViolation, "paired before the acknowledgement")
                }
            }
            toHub.toggle()
            if step > 20 { throw PairingError(.protocolViolation, "did not finish") }
        }
        return try #require(paired)
    }

    @Test(arguments: PairingLabel.Suite.allCases)
    func aClaimedDevicePairsAndReceivesEveryTrustAnchor(_ suite: PairingLabel.Suite) throws {
        let device = try Self.device(suite)
        let (id, received) = try Self.pair(device: device, claim: device.label)
        #expect(id == device.label.deviceID)
        #expect(received == Self.credentials)
    }

    @Test func aHubWithAnotherLabelSecretFails() throws {
        let device = try Self.device(.p256AESGCMSHA256)
        let forged = try PairingLabel(
            suite: device.label.suite, deviceID: device.label.deviceID, publicKey: device.label.publicKey,
            setupSecret: [UInt8](repeating: 7, count: 16))
        #expect(throws: PairingError(.handshakeFailed, "")) { try Self.pair(device: device, claim: forged) }
    }

    @Test func aDeviceWithAnotherIdentityKeyFails() throws {
        let real = try Self.device(.x25519AESGCMSHA256)
        let impostor = try Self.device(.x25519AESGCMSHA256)
        // The impostor copied the label's secret and id but not the identity key.
        let impostorLabel = try PairingLabel(
            suite: real.label.suite, deviceID: real.label.deviceID, publicKey: impostor.identity.publicKey,
            setupSecret: real.label.setupSecret)
        let device = Device(label: impostorLabel, identity: impostor.identity)
        #expect(throws: PairingError(.handshakeFailed, "")) { try Self.pair(device: device, claim: real.label) }
    }

    @Test func aTamperedHelloIsCaughtByThePrologue() throws {
        let device = try Self.device(.p256AESGCMSHA256)
        // A relay rewrites the hub's offered suite list (a downgrade attempt): both sides then hash a different
        // prologue and message 2 fails.
        #expect(throws: PairingError.self) {
            try Self.pair(device: device, claim: device.label) { step, frame in
                if step == 1 { frame = Array(frame.prefix(6)) + [1, 1] }
            }
        }
    }

    @Test func tamperingAfterTheHandshakeIsRefused() throws {
        let device = try Self.device(.p256AESGCMSHA256)
        for step in 5...7 {
            #expect(throws: PairingError.self, "step \(step)") {
                try Self.pair(device: device, claim: device.label) { current, frame in
                    if current == step { frame[frame.count - 1] ^= 1 }
                }
            }
        }
    }

    /// The agent also signs the handshake hash with its operational key (proof of possession and channel binding);
    /// a relay cannot forge that inside the transport, so here we show the request is authenticated end to end.
    @Test func theHubRefusesATamperedCSRRequest() throws {
        let device = try Self.device(.p256AESGCMSHA256)
        var hub = HubPairingSession(hubStaticKeys: Self.hubKeys())
        var agent = try DevicePairingSession(label: device.label, identityKey: device.identity)
        guard case .send(let hello) = try hub.start(), case .send(let deviceHello) = try agent.received(hello),
            case .lookUpClaim = try hub.received(deviceHello), case .send(let m1) = try hub.claimFound(device.label),
            case .send(let m2) = try agent.received(m1), case .send(let m3) = try hub.received(m2),
            case .makeCSR = try agent.received(m3)
        else {
            Issue.record("handshake did not complete")
            return
        }
        let key = P256.Signing.PrivateKey()
        guard case .send(let good) = try agent.csrReady(operationalKey: key, csrDER: [0x30]) else { return }
        var hubCopy = hub
        var tampered = good
        tampered[10] ^= 0x01
        #expect(throws: PairingError.self) { try hubCopy.received(tampered) }
        #expect(try { if case .issueCertificate = try hub.received(good) { return true } else { return false } }())
    }

    @Test func aHubHelloWithoutTheDeviceSuiteIsRefused() throws {
        let device = try Self.device(.x25519AESGCMSHA256)
        var hub = HubPairingSession(hubStaticKeys: [.p256AESGCMSHA256: NoiseDH.p256.generateKeyPair()])
        var agent = try DevicePairingSession(label: device.label, identityKey: device.identity)
        guard case .send(let hello) = try hub.start() else { return }
        #expect(throws: PairingError(.unsupportedSuite, "")) { try agent.received(hello) }
    }
}

@Suite struct PairingLabelTests {
    @Test(arguments: PairingLabel.Suite.allCases)
    func roundTripsAndFitsAVersion6QRCode(_ suite: PairingLabel.Suite) throws {
        let device = try PairingSessionTests.device(suite, id: String(repeating: "d", count: 32))
        let text = device.label.text
        #expect(text.hasPrefix("BWK1:"))
        #expect(text.count <= 154, "QR version 6-M holds 154 alphanumeric characters")
        #expect(text.allSatisfy { "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567:".contains($0) || $0.isNumber })
        #expect(try PairingLabel(text: text) == device.label)
        #expect(try PairingLabel(text: text.lowercased() + "\n") == device.label)
    }

    @Test func refusesMistypedAndMalformedLabels() throws {
        let text = try PairingSessionTests.device(.p256AESGCMSHA256).label.text
        var chars = Array(text)
        chars[20] = chars[20] == "A" ? "B" : "A"
        for bad in [String(chars), "BWK1:", "BWK2:" + text.dropFirst(5), String(text.dropLast(3)), "BWK1:!!!!", ""] {
            #expect(throws: PairingError(.invalidLabel, ""), "\(bad)") { try PairingLabel(text: bad) }
        }
        #expect(throws: PairingError(.invalidLabel, "")) {
            try PairingLabel(
                suite: .x25519AESGCMSHA256, deviceID: try DeviceID(String(repeating: "x", count: 33)),
                publicKey: [UInt8](repeating: 9, count: 32), setupSecret: [UInt8](repeating: 1, count: 16))
        }
    }

    @Test func pskIsHKDFOfTheSecret() {
        let secret = [UInt8](0..<16)
        let expected = HKDF<SHA256>.deriveKey(
            inputKeyMaterial: SymmetricKey(data: secret), info: Array("bulwark pair psk".utf8), outputByteCount: 32)
        #expect(PairingLabel.psk(setupSecret: secret) == expected.withUnsafeBytes { Array($0) })
        #expect(PairingLabel.psk(setupSecret: secret).count == 32)
    }
}

@Suite struct RotatingIdentifierTests {
    @Test func ridsRotateEachEpochAndResolveForNeighbouringEpochsOnly() throws {
        let irk = [UInt8](repeating: 0x42, count: 16)
        let device = try DeviceID("sensor-1")
        let epoch = RotatingIdentifier.epoch(unixSeconds: 1_764_000_000)
        let resolver = RIDResolver(devices: [(device, irk: irk)], epoch: epoch)
        for e in [epoch - 1, epoch, epoch + 1] {
            #expect(resolver.resolve(RotatingIdentifier.rid(irk: irk, epoch: e)) == device)
        }
        #expect(resolver.resolve(RotatingIdentifier.rid(irk: irk, epoch: epoch + 2)) == nil)
        #expect(resolver.resolve(RotatingIdentifier.rid(irk: irk, epoch: epoch - 2)) == nil)
        #expect(resolver.resolve(RotatingIdentifier.rid(irk: [UInt8](repeating: 1, count: 16), epoch: epoch)) == nil)
    }

    @Test func insertingADeviceMatchesARebuild() throws {
        let a = try DeviceID("a")
        let b = try DeviceID("b")
        let irkA = [UInt8](repeating: 1, count: 16)
        let irkB = [UInt8](repeating: 2, count: 16)
        var resolver = RIDResolver(devices: [(a, irk: irkA)], epoch: 500)
        resolver.insert(b, irk: irkB)
        for e: UInt64 in [499, 500, 501] {
            #expect(resolver.resolve(RotatingIdentifier.rid(irk: irkB, epoch: e)) == b)
            #expect(resolver.resolve(RotatingIdentifier.rid(irk: irkA, epoch: e)) == a)
        }
    }

    @Test func twoEpochsShareNothingVisible() {
        let irk = Array(SymmetricKey(size: .bits128).withUnsafeBytes { Array($0) })
        let a = RotatingIdentifier.rid(irk: irk, epoch: 100)
        let b = RotatingIdentifier.rid(irk: irk, epoch: 101)
        #expect(a.count == 10 && b.count == 10)
        #expect(a != b)
        // No shared prefix, suffix or byte position beyond chance for 10 bytes: at most 2 equal positions.
        #expect(zip(a, b).filter { $0 == $1 }.count <= 2)
        #expect(RotatingIdentifier.text(a).count == 16)
        #expect(RotatingIdentifier.parse(RotatingIdentifier.text(a)) == a)
    }

    @Test func epochsAreFifteenMinutes() {
        #expect(RotatingIdentifier.epoch(unixSeconds: 0) == 0)
        #expect(RotatingIdentifier.epoch(unixSeconds: 899) == 0)
        #expect(RotatingIdentifier.epoch(unixSeconds: 900) == 1)
    }
}

@Suite struct AttemptLimiterTests {
    @Test func locksOutExponentiallyAfterTheFreeAttemptsAndForgivesOnSuccess() throws {
        let device = try DeviceID("d")
        var limiter = AttemptLimiter<DeviceID>(policy: .init(freeAttempts: 3, baseLockout: 10, maximumLockout: 100))
        for _ in 0..<2 { limiter.recordFailure(device, now: 0) }
        #expect(limiter.lockedUntil(device, now: 0) == nil)
        limiter.recordFailure(device, now: 0)
        #expect(limiter.lockedUntil(device, now: 0) == 10)
        #expect(limiter.lockedUntil(device, now: 10.5) == nil, "pairing works again after the lock-out")
        limiter.recordFailure(device, now: 11)
        #expect(limiter.lockedUntil(device, now: 11) == 31)
        for _ in 0..<10 { limiter.recordFailure(device, now: 50) }
        #expect(limiter.lockedUntil(device, now: 50) == 150, "capped at the maximum")
        limiter.recordSuccess(device)
        #expect(limiter.lockedUntil(device, now: 50) == nil)
        #expect(limiter.failures(device) == 0)
    }
}
