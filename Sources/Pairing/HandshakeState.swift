import Crypto

/// Noise §5.3 HandshakeState for one party, driven by a `HandshakePattern`.
///
/// Pure: the ephemeral key pairs come from a parameter (random in production, fixed in known-answer tests), and
/// every message is bytes in, bytes out.
public struct HandshakeState: Sendable {
    public let protocolName: String
    public let isInitiator: Bool
    private let pattern: HandshakePattern
    private let dh: NoiseDH
    private var symmetric: SymmetricState
    private var s: NoiseKeyPair?
    private var e: NoiseKeyPair?
    private(set) var rs: [UInt8]?
    private(set) var re: [UInt8]?
    private var psks: [[UInt8]]
    private var messageIndex = 0
    private let makeEphemeral: @Sendable () -> NoiseKeyPair

    /// Noise §5.3 Initialize(). `psks` are consumed in order by "psk" tokens and must be 32 bytes each.
    public init(
        pattern: HandshakePattern, dh: NoiseDH, cipher: NoiseCipher, initiator: Bool, prologue: [UInt8],
        staticKeyPair: NoiseKeyPair? = nil, remoteStaticKey: [UInt8]? = nil, psks: [[UInt8]] = [],
        ephemeral: (@Sendable () -> NoiseKeyPair)? = nil
    ) throws(NoiseError) {
        protocolName = "Noise_\(pattern.name)_\(dh.rawValue)_\(cipher.rawValue)_SHA256"
        isInitiator = initiator
        self.pattern = pattern
        self.dh = dh
        symmetric = SymmetricState(protocolName: protocolName, cipher: cipher)
        s = staticKeyPair
        rs = remoteStaticKey
        guard psks.allSatisfy({ $0.count == 32 }) else { throw NoiseError(.missingKey, "a PSK must be 32 bytes") }
        self.psks = psks
        makeEphemeral = ephemeral ?? { dh.generateKeyPair() }
        if let rs, rs.count != dh.publicKeyLength {
            throw NoiseError(.invalidPublicKey, "remote static key has the wrong length")
        }
        symmetric.mixHash(prologue)
        // Pre-messages: the initiator's first, then the responder's (§7.1). Only "s" and "e" may appear.
        for (tokens, ofInitiator) in [(pattern.initiatorPreMessage, true), (pattern.responderPreMessage, false)] {
            for token in tokens {
                let mine = ofInitiator == initiator
                let key: [UInt8]?
                switch token {
                case .s: key = mine ? s?.publicKey : rs
                case .e: key = mine ? e?.publicKey : re
                default: throw NoiseError(.wrongState, "invalid pre-message token")
                }
                guard let key else { throw NoiseError(.missingKey, "pre-message key missing") }
                symmetric.mixHash(key)
                if token == .e && pattern.usesPSK { symmetric.mixKey(key) }
            }
        }
    }

    public var isComplete: Bool { messageIndex >= pattern.messages.count }
    public var isMyTurn: Bool { !isComplete && (messageIndex % 2 == 0) == isInitiator }
    /// The handshake hash `h`, for channel binding (Noise §11.2). Final once the handshake is complete.
    public var handshakeHash: [UInt8] { symmetric.handshakeHash }
    /// The peer's static public key once known (from the pre-message or a received "s" token).
    public var remoteStaticKey: [UInt8]? { rs }

    /// Noise §5.3 WriteMessage(payload).
    public mutating func writeMessage(_ payload: [UInt8] = []) throws(NoiseError) -> [UInt8] {
        guard isMyTurn else { throw NoiseError(.wrongState, "not this party's turn to write") }
        var buffer: [UInt8] = []
        for token in pattern.messages[messageIndex] {
            switch token {
            case .e:
                let ephemeral = makeEphemeral()
                e = ephemeral
                buffer += ephemeral.publicKey
                symmetric.mixHash(ephemeral.publicKey)
                if pattern.usesPSK { symmetric.mixKey(ephemeral.publicKey) }
            case .s:
                guard let s else { throw NoiseError(.missingKey, "static key pair missing") }
                buffer += try symmetric.encryptAndHash(s.publicKey)
            case .psk:
                guard !psks.isEmpty else { throw NoiseError(.missingKey, "PSK missing") }
                symmetric.mixKeyAndHash(psks.removeFirst())
            default:
                try mixDH(token)
            }
        }
        buffer += try symmetric.encryptAndHash(payload)
        guard buffer.count <= 65535 else { throw NoiseError(.malformedMessage, "message over 65535 bytes") }
        messageIndex += 1
        return buffer
    }

    /// Noise §5.3 ReadMessage(message). On any error the state must be discarded (the handshake is over).
    public mutating func readMessage(_ message: [UInt8]) throws(NoiseError) -> [UInt8] {
        guard !isComplete, !isMyTurn else { throw NoiseError(.wrongState, "not this party's turn to read") }
        guard message.count <= 65535 else { throw NoiseError(.malformedMessage, "message over 65535 bytes") }
        var rest = message[...]
        func take(_ count: Int) throws(NoiseError) -> [UInt8] {
            guard rest.count >= count else { throw NoiseError(.malformedMessage, "message too short") }
            defer { rest = rest.dropFirst(count) }
            return Array(rest.prefix(count))
        }
        for token in pattern.messages[messageIndex] {
            switch token {
            case .e:
                let key = try take(dh.publicKeyLength)
                if key == e?.publicKey || key == s?.publicKey {
                    throw NoiseError(.reflectedKey, "peer sent one of our own public keys")
                }
                re = key
                symmetric.mixHash(key)
                if pattern.usesPSK { symmetric.mixKey(key) }
            case .s:
                let length = dh.publicKeyLength + (symmetric.cipherState.hasKey ? NoiseCipher.tagLength : 0)
                let key = try symmetric.decryptAndHash(try take(length))
                if key == s?.publicKey || key == e?.publicKey {
                    throw NoiseError(.reflectedKey, "peer sent one of our own public keys")
                }
                rs = key
            case .psk:
                guard !psks.isEmpty else { throw NoiseError(.missingKey, "PSK missing") }
                symmetric.mixKeyAndHash(psks.removeFirst())
            default:
                try mixDH(token)
            }
        }
        let payload = try symmetric.decryptAndHash(Array(rest))
        messageIndex += 1
        return payload
    }

    /// "ee", "es", "se", "ss": the letters name the initiator's key then the responder's (Noise §7.1).
    private mutating func mixDH(_ token: NoiseToken) throws(NoiseError) {
        let (localIsEphemeral, remoteIsEphemeral): (Bool, Bool)
        switch token {
        case .ee: (localIsEphemeral, remoteIsEphemeral) = (true, true)
        case .ss: (localIsEphemeral, remoteIsEphemeral) = (false, false)
        case .es: (localIsEphemeral, remoteIsEphemeral) = isInitiator ? (true, false) : (false, true)
        case .se: (localIsEphemeral, remoteIsEphemeral) = isInitiator ? (false, true) : (true, false)
        default: throw NoiseError(.wrongState, "not a DH token")
        }
        guard let local = localIsEphemeral ? e : s, let remote = remoteIsEphemeral ? re : rs else {
            throw NoiseError(.missingKey, "a key for \(token) is missing")
        }
        symmetric.mixKey(try dh.dh(local, remote))
    }

    /// A secret for use beside the transport (e.g. a key-confirmation MAC), derived from the final chaining key with
    /// a label, so it is independent of the Split() keys: HKDF(ck, label, 2)[1].
    public func exportKey(label: String) throws(NoiseError) -> [UInt8] {
        guard isComplete else { throw NoiseError(.wrongState, "handshake not complete") }
        return symmetric.exportKey(label: Array(label.utf8))
    }

    /// Split() after the last handshake message: the transport cipher states for this party.
    public func transport() throws(NoiseError) -> TransportState {
        guard isComplete else { throw NoiseError(.wrongState, "handshake not complete") }
        let (initiatorToResponder, responderToInitiator) = symmetric.split()
        return isInitiator
            ? TransportState(send: initiatorToResponder, receive: responderToInitiator)
            : TransportState(send: responderToInitiator, receive: initiatorToResponder)
    }
}

/// The transport phase: one cipher state per direction (Noise §5.3 Split()).
public struct TransportState: Sendable {
    var send: CipherState
    var receive: CipherState

    public mutating func encrypt(_ plaintext: [UInt8]) throws(NoiseError) -> [UInt8] {
        guard plaintext.count + NoiseCipher.tagLength <= 65535 else {
            throw NoiseError(.malformedMessage, "message over 65535 bytes")
        }
        return try send.encrypt(ad: [], plaintext)
    }

    public mutating func decrypt(_ ciphertext: [UInt8]) throws(NoiseError) -> [UInt8] {
        try receive.decrypt(ad: [], ciphertext)
    }
}
