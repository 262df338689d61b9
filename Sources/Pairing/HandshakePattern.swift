/// Noise §7 message tokens, plus "psk" (§9.2).
public enum NoiseToken: Sendable, Equatable {
    case e, s, ee, es, se, ss, psk
}

/// A handshake pattern: pre-message tokens and the message patterns, initiator first (Noise §7.1).
public struct HandshakePattern: Sendable {
    public let name: String
    public let initiatorPreMessage: [NoiseToken]
    public let responderPreMessage: [NoiseToken]
    public let messages: [[NoiseToken]]

    /// Noise §9.4: XK with psk3, the "psk" token at the end of the third message.
    ///
    ///     XKpsk3:
    ///       <- s
    ///       ...
    ///       -> e, es
    ///       <- e, ee
    ///       -> s, se, psk
    public static let xkpsk3 = HandshakePattern(
        name: "XKpsk3", initiatorPreMessage: [], responderPreMessage: [.s],
        messages: [[.e, .es], [.e, .ee], [.s, .se, .psk]])

    /// Noise §7.5 XK (no PSK).
    public static let xk = HandshakePattern(
        name: "XK", initiatorPreMessage: [], responderPreMessage: [.s], messages: [[.e, .es], [.e, .ee], [.s, .se]])

    var usesPSK: Bool { messages.contains { $0.contains(.psk) } }
}
