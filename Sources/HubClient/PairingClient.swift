public import Crypto
import Foundation
import NIOCore
import NIOPosix
public import Pairing
import SwiftASN1
import X509

/// The device side of pairing over TCP: runs `DevicePairingSession`, makes the operational key and its CSR, and
/// returns what to store. Bounded by `timeout`.
public enum PairingClient {
    public struct Result: Sendable {
        public let credentials: PairingCredentials
        public let operationalKey: P256.Signing.PrivateKey
    }

    /// `localAddress` binds the connection's source address (tests use other loopback addresses, 127.0.0.2, to be
    /// another source).
    public static func pair(
        host: String, port: Int, label: PairingLabel, identityKey: NoiseKeyPair, timeout: Duration = .seconds(30),
        localAddress: String? = nil
    ) async throws -> Result {
        var session = try DevicePairingSession(label: label, identityKey: identityKey)
        var bootstrap = ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(10))
        if let localAddress { bootstrap = bootstrap.bind(to: try SocketAddress(ipAddress: localAddress, port: 0)) }
        let channel =
            try await bootstrap
            .connect(host: host, port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        ByteToMessageHandler(PairingFrameDecoder(), maximumBufferSize: 2 + 65535))
                    try channel.pipeline.syncOperations.addHandler(MessageToByteHandler(PairingFrameEncoder()))
                    return try NIOAsyncChannel<[UInt8], [UInt8]>(wrappingChannelSynchronously: channel)
                }
            }
        let deadline = ContinuousClock.now + timeout
        return try await channel.executeThenClose { inbound, outbound in
            var frames = inbound.makeAsyncIterator()
            var operationalKey: P256.Signing.PrivateKey?
            while ContinuousClock.now < deadline {
                guard let frame = try await frames.next() else {
                    throw PairingError(
                        .handshakeFailed, "the hub closed the connection (no claim, locked out, or refused)")
                }
                var action = try session.received(frame)
                if case .makeCSR = action {
                    let key = P256.Signing.PrivateKey()
                    operationalKey = key
                    let csr = try CertificateSigningRequest(
                        version: .v1, subject: try DistinguishedName { CommonName(label.deviceID.rawValue) },
                        privateKey: Certificate.PrivateKey(key), attributes: CertificateSigningRequest.Attributes(),
                        signatureAlgorithm: .ecdsaWithSHA256)
                    var serializer = DER.Serializer()
                    try serializer.serialize(csr)
                    action = try session.csrReady(operationalKey: key, csrDER: serializer.serializedBytes)
                }
                switch action {
                case .send(let next), .confirm(let next):
                    try await outbound.write(next)
                case .paired(let credentials):
                    guard let operationalKey else { throw PairingError(.protocolViolation, "no operational key") }
                    return Result(credentials: credentials, operationalKey: operationalKey)
                case .makeCSR:
                    throw PairingError(.protocolViolation, "CSR requested twice")
                }
            }
            throw PairingError(.handshakeFailed, "pairing timed out")
        }
    }
}
