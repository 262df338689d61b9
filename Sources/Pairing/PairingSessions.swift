public import Core
public import Crypto
import Foundation

/// The hub's side of one pairing connection: a state machine whose events return actions; the caller does the I/O,
/// looks up the claim and issues the certificate.
public struct HubPairingSession: Sendable {
    public enum Action: Sendable, Equatable {
        /// Write this frame to the device.
        case send([UInt8])
        /// Find the pending claim for this device and call `claimFound(_:)`, or fail the session.
        case lookUpClaim(DeviceID, PairingLabel.Suite)
        /// Issue a certificate for this device from the CSR, whose key must equal `operationalKey` (x963), then call
        /// `issued(_:)`.
        case issueCertificate(DeviceID, operationalKey: [UInt8], csrDER: [UInt8])
        /// The device confirmed: activate it, then send `acknowledgement` (encrypted) so it knows.
        case paired(DeviceID, acknowledgement: [UInt8])
    }

    enum State {
        case start, awaitingDeviceHello, awaitingClaim, awaitingMessage2, awaitingCSR, awaitingIssuance,
            awaitingConfirmation, done, failed
    }

    public let offeredSuites: [PairingLabel.Suite]
    private let hubStaticKeys: [PairingLabel.Suite: NoiseKeyPair]
    private var state = State.start
    private var hubHello: [UInt8] = []
    private var deviceHello: [UInt8] = []
    private var deviceID: DeviceID?
    private var handshake: HandshakeState?
    private var transport: TransportState?
    private var confirmKey: [UInt8] = []
    private var transcript: [UInt8] = []

    /// `hubStaticKeys` are the hub's Noise static keys per suite (sent encrypted in message 3).
    public init(hubStaticKeys: [PairingLabel.Suite: NoiseKeyPair]) {
        self.hubStaticKeys = hubStaticKeys
        offeredSuites = PairingLabel.Suite.allCases.filter { hubStaticKeys[$0] != nil }
    }

    public var pairingDeviceID: DeviceID? { deviceID }

    /// Whether the peer has proved it holds the device's identity key: message 2 of XKpsk3 (`e, ee`) decrypted,
    /// which needs `es`, so the device's static private key (Noise §7.7). Failures before that could come from
    /// anyone and must not count against the device (its lock-out); failures after it (a wrong label secret: the
    /// psk enters in message 3) do.
    public private(set) var deviceKeyProved = false

    /// The hub speaks first: its hello lists the suites it offers.
    public mutating func start() throws(PairingError) -> Action {
        guard state == .start else { throw fail("start called twice") }
        hubHello =
            PairingWire.magic + [PairingWire.version, UInt8(offeredSuites.count)] + offeredSuites.map(\.rawValue)
        state = .awaitingDeviceHello
        return .send(hubHello)
    }

    public mutating func received(_ frame: [UInt8]) throws(PairingError) -> Action {
        switch state {
        case .awaitingDeviceHello:
            guard frame.count >= 4, frame[0] == PairingWire.version, let suite = PairingLabel.Suite(rawValue: frame[1]),
                offeredSuites.contains(suite), Int(frame[2]) == frame.count - 3,
                let text = String(bytes: frame[3...], encoding: .utf8), let id = try? DeviceID(text)
            else { throw fail("bad device hello") }
            deviceHello = frame
            deviceID = id
            state = .awaitingClaim
            return .lookUpClaim(id, suite)
        case .awaitingMessage2:
            do {
                _ = try handshake?.readMessage(frame)
                guard var handshake else { throw fail("no handshake") }
                deviceKeyProved = true
                let message3 = try handshake.writeMessage()
                confirmKey = try handshake.exportKey(label: PairingWire.confirmLabel)
                transport = try handshake.transport()
                self.handshake = handshake
                state = .awaitingCSR
                return .send(message3)
            } catch let error as NoiseError {
                throw fail("handshake failed: \(error.code)", code: .handshakeFailed)
            } catch {
                throw error as? PairingError ?? fail("handshake failed")
            }
        case .awaitingCSR:
            guard let plaintext = try? transport?.decrypt(frame), let handshake, let deviceID else {
                throw fail("CSR request does not decrypt", code: .handshakeFailed)
            }
            var key: [UInt8]?
            var csr: [UInt8]?
            var signature: [UInt8]?
            for (type, value) in try PairingWire.parseFields(plaintext) {
                switch type {
                case 1: key = value
                case 2: csr = value
                case 3: signature = value
                default: throw fail("unknown CSR request field")
                }
            }
            guard let key, let csr, let signature, let publicKey = try? P256.Signing.PublicKey(x963Representation: key),
                let ecdsa = try? P256.Signing.ECDSASignature(rawRepresentation: signature),
                publicKey.isValidSignature(ecdsa, for: PairingWire.csrBindingLabel + handshake.handshakeHash)
            else { throw fail("CSR not bound to this handshake", code: .badProofOfPossession) }
            transcript = plaintext
            state = .awaitingIssuance
            return .issueCertificate(deviceID, operationalKey: key, csrDER: csr)
        case .awaitingConfirmation:
            guard let plaintext = try? transport?.decrypt(frame), let deviceID else {
                throw fail("confirmation does not decrypt", code: .handshakeFailed)
            }
            let fields = try PairingWire.parseFields(plaintext)
            guard fields.count == 1, fields[0].0 == 1,
                HMAC<SHA256>.isValidAuthenticationCode(
                    fields[0].1, authenticating: Array(SHA256.hash(data: transcript)),
                    using: SymmetricKey(data: confirmKey))
            else { throw fail("confirmation MAC does not match", code: .badConfirmation) }
            guard var transport, let acknowledgement = try? transport.encrypt(PairingWire.fields([(1, [1])])) else {
                throw fail("cannot acknowledge")
            }
            self.transport = transport
            state = .done
            return .paired(deviceID, acknowledgement: acknowledgement)
        default:
            throw fail("unexpected message")
        }
    }

    /// The claim for the device named in its hello: its label gives the static key and the secret.
    public mutating func claimFound(_ label: PairingLabel) throws(PairingError) -> Action {
        guard state == .awaitingClaim, label.deviceID == deviceID, deviceHello.count > 1,
            label.suite.rawValue == deviceHello[1], let hubStatic = hubStaticKeys[label.suite]
        else { throw fail("claim does not match the device hello", code: .noClaim) }
        do {
            var handshake = try HandshakeState(
                pattern: .xkpsk3, dh: label.suite.dh, cipher: .aesGCM, initiator: true,
                prologue: PairingWire.prologue(hubHello: hubHello, deviceHello: deviceHello), staticKeyPair: hubStatic,
                remoteStaticKey: label.publicKey, psks: [label.psk])
            let message1 = try handshake.writeMessage()
            self.handshake = handshake
            state = .awaitingMessage2
            return .send(message1)
        } catch {
            throw fail("cannot start the handshake: \(error.code)", code: .handshakeFailed)
        }
    }

    /// The certificate was issued: send every trust anchor in one message.
    public mutating func issued(_ credentials: PairingCredentials) throws(PairingError) -> Action {
        guard state == .awaitingIssuance, var transport else { throw fail("issued out of order") }
        let plaintext = credentials.encoded
        guard let ciphertext = try? transport.encrypt(plaintext) else { throw fail("credentials too large") }
        self.transport = transport
        transcript += plaintext
        state = .awaitingConfirmation
        return .send(ciphertext)
    }

    private mutating func fail(_ detail: String, code: PairingError.Code = .protocolViolation) -> PairingError {
        state = .failed
        return PairingError(code, detail)
    }
}

/// The device's side: it accepts only the hub that knows its label's secret and its identity key.
public struct DevicePairingSession: Sendable {
    public enum Action: Sendable, Equatable {
        case send([UInt8])
        /// Make a fresh operational P-256 key and a PKCS#10 CSR signed by it, then call `csrReady(...)`.
        case makeCSR
        /// Send the confirmation frame and wait for the hub's acknowledgement.
        case confirm([UInt8])
        /// The hub activated the device: store these credentials (key files 0600).
        case paired(PairingCredentials)
    }

    enum State {
        case awaitingHubHello, awaitingMessage1, awaitingMessage3, awaitingCSR, awaitingCredentials,
            awaitingAcknowledgement, done,
            failed
    }

    private let label: PairingLabel
    private let identityKey: NoiseKeyPair
    private var state = State.awaitingHubHello
    private var handshake: HandshakeState?
    private var transport: TransportState?
    private var confirmKey: [UInt8] = []
    private var transcript: [UInt8] = []
    private var credentials: PairingCredentials?

    /// `label` is this device's own label (its id, suite and secret); `identityKey` its static identity key.
    public init(label: PairingLabel, identityKey: NoiseKeyPair) throws(PairingError) {
        guard identityKey.publicKey == label.publicKey else {
            throw PairingError(.invalidLabel, "identity key does not match the label")
        }
        self.label = label
        self.identityKey = identityKey
    }

    public mutating func received(_ frame: [UInt8]) throws(PairingError) -> Action {
        switch state {
        case .awaitingHubHello:
            guard frame.count >= 6, Array(frame.prefix(4)) == PairingWire.magic, frame[4] == PairingWire.version,
                Int(frame[5]) == frame.count - 6, frame[6...].contains(label.suite.rawValue)
            else { throw fail("hub hello does not offer this device's suite", code: .unsupportedSuite) }
            let id = Array(label.deviceID.rawValue.utf8)
            let deviceHello = [PairingWire.version, label.suite.rawValue, UInt8(id.count)] + id
            do {
                handshake = try HandshakeState(
                    pattern: .xkpsk3, dh: label.suite.dh, cipher: .aesGCM, initiator: false,
                    prologue: PairingWire.prologue(hubHello: frame, deviceHello: deviceHello),
                    staticKeyPair: identityKey, psks: [label.psk])
            } catch {
                throw fail("cannot start the handshake", code: .handshakeFailed)
            }
            state = .awaitingMessage1
            return .send(deviceHello)
        case .awaitingMessage1:
            guard var handshake else { throw fail("no handshake") }
            do {
                _ = try handshake.readMessage(frame)
                let message2 = try handshake.writeMessage()
                self.handshake = handshake
                state = .awaitingMessage3
                return .send(message2)
            } catch {
                throw fail("handshake failed: \(error.code)", code: .handshakeFailed)
            }
        case .awaitingMessage3:
            guard var handshake else { throw fail("no handshake") }
            do {
                _ = try handshake.readMessage(frame)
                confirmKey = try handshake.exportKey(label: PairingWire.confirmLabel)
                transport = try handshake.transport()
                self.handshake = handshake
                state = .awaitingCSR
                return .makeCSR
            } catch {
                throw fail("handshake failed: \(error.code)", code: .handshakeFailed)
            }
        case .awaitingCredentials:
            guard let plaintext = try? transport?.decrypt(frame) else {
                throw fail("credentials do not decrypt", code: .handshakeFailed)
            }
            let credentials = try PairingCredentials(decoding: plaintext)
            transcript += plaintext
            let mac = HMAC<SHA256>.authenticationCode(
                for: Array(SHA256.hash(data: transcript)), using: SymmetricKey(data: confirmKey))
            guard var transport, let confirmation = try? transport.encrypt(PairingWire.fields([(1, Array(mac))])) else {
                throw fail("cannot confirm")
            }
            self.transport = transport
            self.credentials = credentials
            state = .awaitingAcknowledgement
            return .confirm(confirmation)
        case .awaitingAcknowledgement:
            guard let plaintext = try? transport?.decrypt(frame), plaintext == PairingWire.fields([(1, [1])]),
                let credentials
            else { throw fail("no valid acknowledgement", code: .handshakeFailed) }
            state = .done
            return .paired(credentials)
        default:
            throw fail("unexpected message")
        }
    }

    /// The CSR for a fresh operational key, bound to this handshake by a signature over its hash.
    public mutating func csrReady(
        operationalKey: P256.Signing.PrivateKey, csrDER: [UInt8]
    ) throws(PairingError) -> Action {
        guard state == .awaitingCSR, var transport, let handshake else { throw fail("CSR out of order") }
        guard let signature = try? operationalKey.signature(for: PairingWire.csrBindingLabel + handshake.handshakeHash)
        else { throw fail("cannot sign") }
        let plaintext = PairingWire.fields([
            (1, Array(operationalKey.publicKey.x963Representation)), (2, csrDER),
            (3, Array(signature.rawRepresentation)),
        ])
        guard let ciphertext = try? transport.encrypt(plaintext) else { throw fail("CSR too large") }
        self.transport = transport
        transcript = plaintext
        state = .awaitingCredentials
        return .send(ciphertext)
    }

    private mutating func fail(_ detail: String, code: PairingError.Code = .protocolViolation) -> PairingError {
        state = .failed
        return PairingError(code, detail)
    }
}
