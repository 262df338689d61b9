import Core
import Crypto
import FuzzSupport
import Pairing

/// The pairing state machines (`HubPairingSession`, `DevicePairingSession`) and the messages they parse: the two
/// hellos, the three Noise XKpsk3 messages, and inside the Noise transport the CSR request, the credentials, the
/// confirmation and the acknowledgement.
///
/// At start the target pairs a hub and a device once and keeps both sessions (value types) before each of the nine
/// frames, so an input is a recipe rather than a transcript (the sessions' ephemeral keys are random):
///
///     byte 0, low 4 bits: 0-8 the frame to tamper with (0 hub hello, 1 device hello, 2-4 Noise messages 1-3,
///                         5 CSR request, 6 credentials, 7 confirmation, 8 acknowledgement); 9-14 plaintext modes
///                         below; 15 an honest run
///     byte 1: bits 0-1 how (0 replace by the payload, 1 XOR the payload in at offset byte 2, 2 cut at byte 2 and
///             append the payload, 3 inject the payload as an extra frame first); bit 2 the suite (P-256 or X25519)
///     byte 2: offset; the rest: payload
///
/// Plaintext modes put the payload inside the Noise transport, with one side played by the target (a hand-written
/// peer using `HandshakeState`): 9 CSR request to the hub; 10 the same with the target appending the handshake-bound
/// signature; 11 confirmation to the hub; 12 junk after the honest confirmation; 13 credentials to the device; 14 the
/// acknowledgement to the device.
///
/// Invariants: an untampered run pairs both sides; a tampered frame never ends in a pairing on both sides; what each
/// side accepts is what the protocol promises (the CSR key is the one that signed the handshake, the device's
/// confirmation covers exactly the CSR request and credentials it saw, credentials are complete).
enum Wire {
    static let magic = Array("BWK1".utf8)
    static func prologue(_ hubHello: [UInt8], _ deviceHello: [UInt8]) -> [UInt8] {
        Array("bulwark pair/1".utf8) + [0] + hubHello + deviceHello
    }
    static let csrBindingLabel = Array("bulwark pair csr/1".utf8)
    static let confirmLabel = "bulwark pair confirm/1"
    static let acknowledgement: [UInt8] = [1, 0, 1, 1]

    static func fields(_ values: [(UInt8, [UInt8])]) -> [UInt8] {
        values.flatMap { [$0.0, UInt8($0.1.count >> 8), UInt8($0.1.count & 0xFF)] + $0.1 }
    }

    static func confirmation(_ transcript: [UInt8], _ confirmKey: [UInt8]) -> [UInt8] {
        fields([
            (
                1,
                Array(
                    HMAC<SHA256>.authenticationCode(
                        for: Array(SHA256.hash(data: transcript)),
                        using: SymmetricKey(data: confirmKey)))
            )
        ])
    }
}

let deviceID = try! DeviceID("dev-fuzz-7")
let operationalKey = try! P256.Signing.PrivateKey(rawRepresentation: FuzzSupport.testBytes("pairing-operational"))
let csrDER = Array("not really a CSR: the hub's PKI checks it, PairingService is not under test here".utf8)
let credentials = PairingCredentials(
    certificateDER: Array(repeating: 0x30, count: 40), caCertificateDER: Array(repeating: 0x31, count: 50),
    pins: [FuzzSupport.testBytes("pin-1"), FuzzSupport.testBytes("pin-2")],
    irk: FuzzSupport.testBytes("irk", count: 16), tufRoot: Array(#"{"signed":{}}"#.utf8))
let hubKeys: [PairingLabel.Suite: NoiseKeyPair] = [
    .p256AESGCMSHA256: try! NoiseDH.p256.keyPair(privateKey: FuzzSupport.testBytes("pairing-hub-p256")),
    .x25519AESGCMSHA256: try! NoiseDH.x25519.keyPair(privateKey: FuzzSupport.testBytes("pairing-hub-x25519")),
]

enum Party { case hub, device }

struct Outcome {
    var hubPaired = false
    var devicePaired: PairingCredentials?
    var issued: (key: [UInt8], csr: [UInt8])?
    var both: Bool { hubPaired && devicePaired != nil }
}

/// Runs the protocol from `frame` delivered to `party` until it ends or a side refuses.
func drive(
    hub: inout HubPairingSession, device: inout DevicePairingSession, label: PairingLabel,
    first: (Party, [UInt8]), hubAlreadyPaired: Bool = false
) -> Outcome {
    var outcome = Outcome()
    outcome.hubPaired = hubAlreadyPaired
    var next: (Party, [UInt8])? = first
    var steps = 0
    while let (party, frame) = next, steps < 20 {
        steps += 1
        next = nil
        do {
            switch party {
            case .device:
                switch try device.received(frame) {
                case .send(let bytes), .confirm(let bytes): next = (.hub, bytes)
                case .makeCSR:
                    guard case .send(let bytes) = try device.csrReady(operationalKey: operationalKey, csrDER: csrDER)
                    else { FuzzSupport.violated("csrReady did not send") }
                    next = (.hub, bytes)
                case .paired(let received): outcome.devicePaired = received
                }
            case .hub:
                var action = try hub.received(frame)
                if case .lookUpClaim(let id, let suite) = action {
                    guard id == label.deviceID, suite == label.suite else { return outcome }
                    action = try hub.claimFound(label)
                }
                if case .issueCertificate(let id, let key, let csr) = action {
                    guard id == label.deviceID else { FuzzSupport.violated("the hub issues for another device") }
                    outcome.issued = (key, csr)
                    action = try hub.issued(credentials)
                }
                switch action {
                case .send(let bytes): next = (.device, bytes)
                case .paired(let id, let acknowledgement):
                    guard id == label.deviceID else { FuzzSupport.violated("the hub paired another device") }
                    outcome.hubPaired = true
                    next = (.device, acknowledgement)
                default: FuzzSupport.violated("unexpected hub action \(action)")
                }
            }
        } catch {
            return outcome
        }
    }
    return outcome
}

/// One suite's recorded pairing and the hand-played peers.
struct Recording: @unchecked Sendable {
    let label: PairingLabel
    let identity: NoiseKeyPair
    /// Sessions before frame k is delivered, the frame, and who receives it.
    var hubs: [HubPairingSession] = []
    var devices: [DevicePairingSession] = []
    var frames: [(Party, [UInt8])] = []

    // Run B: real hub, hand-played device, just after Noise message 3.
    var hubB: HubPairingSession
    var deviceTransportB: TransportState
    var handshakeHashB: [UInt8]
    var confirmKeyB: [UInt8]
    // Run C: hand-played hub, real device, after the CSR request.
    var deviceC: DevicePairingSession
    var hubTransportC: TransportState
    var csrRequestC: [UInt8]
    var confirmKeyC: [UInt8]

    init(suite: PairingLabel.Suite) {
        identity = try! suite.dh.keyPair(privateKey: FuzzSupport.testBytes("pairing-device-\(suite.rawValue)"))
        label = try! PairingLabel(
            suite: suite, deviceID: deviceID, publicKey: identity.publicKey,
            setupSecret: FuzzSupport.testBytes("pairing-secret", count: 16))

        // Run A: both real sessions, recorded.
        var hub = HubPairingSession(hubStaticKeys: hubKeys)
        var device = try! DevicePairingSession(label: label, identityKey: identity)
        guard case .send(let hubHello) = try! hub.start() else { fatalError("start") }
        var next: (Party, [UInt8])? = (.device, hubHello)
        var hubsA: [HubPairingSession] = []
        var devicesA: [DevicePairingSession] = []
        var framesA: [(Party, [UInt8])] = []
        while let (party, frame) = next {
            hubsA.append(hub)
            devicesA.append(device)
            framesA.append((party, frame))
            next = nil
            switch party {
            case .device:
                switch try! device.received(frame) {
                case .send(let bytes), .confirm(let bytes): next = (.hub, bytes)
                case .makeCSR:
                    guard case .send(let bytes) = try! device.csrReady(operationalKey: operationalKey, csrDER: csrDER)
                    else { fatalError("csr") }
                    next = (.hub, bytes)
                case .paired: break
                }
            case .hub:
                var action = try! hub.received(frame)
                if case .lookUpClaim = action { action = try! hub.claimFound(label) }
                if case .issueCertificate = action { action = try! hub.issued(credentials) }
                switch action {
                case .send(let bytes), .paired(_, let bytes): next = (.device, bytes)
                default: fatalError("hub action")
                }
            }
        }
        precondition(framesA.count == 9, "the recorded pairing has \(framesA.count) frames")
        hubs = hubsA
        devices = devicesA
        frames = framesA

        // Run B: the device played by hand.
        var hubB = HubPairingSession(hubStaticKeys: hubKeys)
        guard case .send(let helloB) = try! hubB.start() else { fatalError("start") }
        let id = Array(deviceID.rawValue.utf8)
        let deviceHello = [1, suite.rawValue, UInt8(id.count)] + id
        _ = try! hubB.received(deviceHello)
        guard case .send(let message1) = try! hubB.claimFound(label) else { fatalError("claim") }
        var responder = try! HandshakeState(
            pattern: .xkpsk3, dh: suite.dh, cipher: .aesGCM, initiator: false,
            prologue: Wire.prologue(helloB, deviceHello), staticKeyPair: identity, psks: [label.psk])
        _ = try! responder.readMessage(message1)
        guard case .send(let message3) = try! hubB.received(try! responder.writeMessage()) else { fatalError("m3") }
        _ = try! responder.readMessage(message3)
        self.hubB = hubB
        deviceTransportB = try! responder.transport()
        handshakeHashB = responder.handshakeHash
        confirmKeyB = try! responder.exportKey(label: Wire.confirmLabel)

        // Run C: the hub played by hand.
        var deviceC = try! DevicePairingSession(label: label, identityKey: identity)
        let helloC = Wire.magic + [1, 2, 1, 2]
        guard case .send(let deviceHelloC) = try! deviceC.received(helloC) else { fatalError("hello") }
        var initiator = try! HandshakeState(
            pattern: .xkpsk3, dh: suite.dh, cipher: .aesGCM, initiator: true,
            prologue: Wire.prologue(helloC, deviceHelloC), staticKeyPair: hubKeys[suite]!,
            remoteStaticKey: label.publicKey, psks: [label.psk])
        guard case .send(let message2) = try! deviceC.received(try! initiator.writeMessage()) else { fatalError("m2") }
        _ = try! initiator.readMessage(message2)
        guard case .makeCSR = try! deviceC.received(try! initiator.writeMessage()) else { fatalError("m3") }
        guard case .send(let request) = try! deviceC.csrReady(operationalKey: operationalKey, csrDER: csrDER) else {
            fatalError("csr")
        }
        var hubTransport = try! initiator.transport()
        csrRequestC = try! hubTransport.decrypt(request)
        self.deviceC = deviceC
        hubTransportC = hubTransport
        confirmKeyC = try! initiator.exportKey(label: Wire.confirmLabel)
    }
}

let recordings = [Recording(suite: .p256AESGCMSHA256), Recording(suite: .x25519AESGCMSHA256)]

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = FuzzSupport.bytes(data, size)
    guard input.count >= 3 else { return 0 }
    let step = Int(input[0] & 15)
    let how = input[1] & 3
    let r = recordings[Int(input[1] >> 2) & 1]
    let offset = Int(input[2])
    let payload = Array(input.dropFirst(3))

    switch step {
    case 0...8, 15:
        let k = step == 15 ? 0 : step
        var hub = r.hubs[k]
        var device = r.devices[k]
        let (party, honest) = r.frames[k]
        var frame = honest
        var injected = false
        if step != 15 {
            switch how {
            case 0: frame = payload
            case 1:
                for (i, byte) in payload.enumerated() where !frame.isEmpty { frame[(offset + i) % frame.count] ^= byte }
            case 2: frame = Array(frame.prefix(offset)) + payload
            default: injected = true
            }
        }
        if injected {
            // An extra frame first: the recipient must refuse it, or be unable to pair after it.
            // (The hub pairs on frame 7 and sends frame 8, so from frame 8 on it is already paired.)
            let outcome = drive(
                hub: &hub, device: &device, label: r.label, first: (party, payload), hubAlreadyPaired: k == 8)
            guard !outcome.both || payload == honest else {
                FuzzSupport.violated("an injected frame alone completed a pairing")
            }
        }
        let outcome = drive(hub: &hub, device: &device, label: r.label, first: (party, frame), hubAlreadyPaired: k == 8)
        if frame == honest && !injected {
            guard outcome.both, outcome.devicePaired == credentials else {
                FuzzSupport.violated("an untampered pairing from frame \(k) did not complete")
            }
            // The hub asks for the certificate on frame 5 (the CSR request).
            guard k > 5 || outcome.issued != nil else { FuzzSupport.violated("the hub never asked for a certificate") }
            guard let issued = outcome.issued else { return 0 }
            guard issued.key == Array(operationalKey.publicKey.x963Representation),
                issued.csr == csrDER
            else { FuzzSupport.violated("the hub was asked to issue for the wrong key or CSR") }
        } else if outcome.both {
            FuzzSupport.violated("a pairing completed although frame \(k) was tampered with (mode \(how))")
        }
    case 9, 10, 11, 12:
        var hub = r.hubB
        var transport = r.deviceTransportB
        var request = Wire.fields([
            (1, Array(operationalKey.publicKey.x963Representation)), (2, csrDER),
            (3, Array(try! operationalKey.signature(for: Wire.csrBindingLabel + r.handshakeHashB).rawRepresentation)),
        ])
        if step == 9 { request = payload }
        if step == 10 {
            let signature = try! operationalKey.signature(for: Wire.csrBindingLabel + r.handshakeHashB)
            request = payload + Wire.fields([(3, Array(signature.rawRepresentation))])
        }
        guard let action = try? hub.received(try! transport.encrypt(request)) else { return 0 }
        guard case .issueCertificate(_, let key, _) = action else { FuzzSupport.violated("unexpected \(action)") }
        guard let parsed = try? P256.Signing.PublicKey(x963Representation: key),
            parsed.rawRepresentation == operationalKey.publicKey.rawRepresentation
        else { FuzzSupport.violated("the hub took a CSR key that did not sign the handshake") }
        FuzzSupport.trace("CSR request accepted")
        guard case .send(let sealed) = try! hub.issued(credentials), let plaintext = try? transport.decrypt(sealed)
        else { FuzzSupport.violated("the credentials do not reach the device") }
        var confirmation = Wire.confirmation(request + plaintext, r.confirmKeyB)
        if step == 11 { confirmation = payload }
        if step == 12 { confirmation += payload }
        let outcome = try? hub.received(try! transport.encrypt(confirmation))
        let paired = outcome.map { if case .paired = $0 { true } else { false } } ?? false
        switch step {
        case 9, 10:
            guard paired else { FuzzSupport.violated("the honest confirmation of this CSR request was refused") }
        case 12:
            guard paired == payload.isEmpty else { FuzzSupport.violated("junk after the confirmation was accepted") }
        default:
            if paired { FuzzSupport.trace("confirmation accepted") }
        }
    default:
        var device = r.deviceC
        var transport = r.hubTransportC
        let honestCredentials = Wire.fields([
            (1, credentials.certificateDER), (2, credentials.caCertificateDER), (3, credentials.pins[0]),
            (3, credentials.pins[1]), (4, credentials.irk), (5, credentials.tufRoot!),
        ])
        let sent = step == 13 ? payload : honestCredentials
        guard let action = try? device.received(try! transport.encrypt(sent)) else { return 0 }
        guard case .confirm(let sealed) = action, let confirmation = try? transport.decrypt(sealed) else {
            FuzzSupport.violated("the device accepted credentials without a confirmation: \(action)")
        }
        guard confirmation == Wire.confirmation(r.csrRequestC + sent, r.confirmKeyC) else {
            FuzzSupport.violated("the confirmation does not cover exactly the CSR request and credentials")
        }
        FuzzSupport.trace("credentials accepted")
        let acknowledgement = step == 14 ? payload : Wire.acknowledgement
        guard let done = try? device.received(try! transport.encrypt(acknowledgement)) else {
            guard acknowledgement != Wire.acknowledgement else { FuzzSupport.violated("the honest ack was refused") }
            return 0
        }
        guard acknowledgement == Wire.acknowledgement, case .paired(let received) = done else {
            FuzzSupport.violated("the device took another acknowledgement: \(done)")
        }
        guard received.pins.count >= 2, received.pins.allSatisfy({ $0.count == 32 }), received.irk.count == 16,
            step == 13 || received == credentials
        else { FuzzSupport.violated("the device stored incomplete credentials") }
    }
    return 0
}

@_cdecl("LLVMFuzzerInitialize")
public func initialize(_ argc: FuzzArgc, _ argv: FuzzArgv) -> CInt {
    FuzzSupport.writeSeedsIfRequested {
        var seeds: [[UInt8]] = []
        for suiteBit: UInt8 in [0, 4] {
            let r = recordings[Int(suiteBit >> 2)]
            seeds.append([15, suiteBit, 0])
            for k in 0..<9 {
                let honest = r.frames[k].1
                seeds.append([UInt8(k), suiteBit | 0, 0] + honest)  // replaced by itself: honest
                seeds.append([UInt8(k), suiteBit | 1, 3, 0x01])  // one bit flipped
                seeds.append([UInt8(k), suiteBit | 2, UInt8(min(honest.count, 255) / 2)])  // cut in half
                seeds.append([UInt8(k), suiteBit | 3, 0] + honest)  // replayed twice
            }
            let key = Array(operationalKey.publicKey.x963Representation)
            let request = Wire.fields([(1, key), (2, csrDER)])
            seeds.append([9, suiteBit, 0] + request + Wire.fields([(3, Array(repeating: 1, count: 64))]))
            seeds.append([10, suiteBit, 0] + request)
            seeds.append([10, suiteBit, 0] + Wire.fields([(2, csrDER), (1, key), (1, key), (9, [])]))
            seeds.append([11, suiteBit, 0] + Wire.fields([(1, Array(repeating: 0, count: 32))]))
            seeds.append([12, suiteBit, 0])
            seeds.append([12, suiteBit, 0, 1, 0, 0])
            seeds.append(
                [13, suiteBit, 0]
                    + Wire.fields([
                        (1, credentials.certificateDER), (2, credentials.caCertificateDER), (3, credentials.pins[0]),
                        (3, credentials.pins[1]), (4, credentials.irk),
                    ]))
            seeds.append(
                [13, suiteBit, 0]
                    + Wire.fields([
                        (1, []), (2, []), (3, Array(repeating: 0, count: 32)),
                        (3, Array(repeating: 0, count: 32)), (3, Array(repeating: 0, count: 31)),
                        (4, Array(repeating: 0, count: 16)),
                    ]))
            seeds.append([14, suiteBit, 0] + Wire.acknowledgement)
            seeds.append([14, suiteBit, 0, 1, 0, 1, 2])
        }
        return seeds
    }
    return 0
}
