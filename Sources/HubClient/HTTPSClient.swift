public import Core
import Crypto
import Foundation
public import Gateway
public import NIOCore
import NIOHTTP1
public import NIOPosix
public import NIOSSL
import X509

/// Credentials a client presents: its certificate chain and key (PEM), and the CA that must have signed the
/// server's certificate.
public struct ClientCredentials: Sendable {
    public var certificatePEM: [UInt8]
    public var keyPEM: [UInt8]
    public var caPEM: [UInt8]
    /// `crypto.profile`: `fips` restricts the TLS handshake (`TLSProfile`).
    public var profile = CryptoProfile.standard

    public init(certificatePEM: [UInt8], keyPEM: [UInt8], caPEM: [UInt8]) {
        self.certificatePEM = certificatePEM
        self.keyPEM = keyPEM
        self.caPEM = caPEM
    }

    /// Reads `cert`, `key` and `ca` files.
    public init(certificateFile: String, keyFile: String, caFile: String) throws {
        func read(_ path: String, _ what: String) throws -> [UInt8] {
            guard let data = FileManager.default.contents(atPath: path) else {
                throw ClientError("cannot read the \(what) file \(path)")
            }
            return [UInt8](data)
        }
        self.init(
            certificatePEM: try read(certificateFile, "certificate"), keyPEM: try read(keyFile, "key"),
            caPEM: try read(caFile, "CA certificate"))
    }

    /// TLS 1.3 only, with the client certificate, trusting only the given CA.
    /// The request signer for this credential's key (device keys are P-256).
    public func signer() throws -> MessageSigner {
        guard let text = String(bytes: keyPEM, encoding: .utf8) else { throw ClientError("the key is not PEM text") }
        do { return MessageSigner(key: try P256.Signing.PrivateKey(pemRepresentation: text)) } catch {
            throw ClientError("the key is not a P-256 private key")
        }
    }

    public func tlsConfiguration() throws -> TLSConfiguration {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.minimumTLSVersion = .tlsv13
        tls.certificateChain = try NIOSSLCertificate.fromPEMBytes(certificatePEM).map { .certificate($0) }
        tls.privateKey = .privateKey(try NIOSSLPrivateKey(bytes: keyPEM, format: .pem))
        tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMBytes(caPEM))
        tls.applicationProtocols = ["http/1.1"]
        TLSProfile.configure(&tls, profile: profile)
        return tls
    }

    /// A TLS context for `tlsConfiguration()` under the profile (in `fips`, BoringSSL's compliance policy on it).
    public func tlsContext() throws -> NIOSSLContext {
        try TLSProfile.makeContext(try tlsConfiguration(), profile: profile)
    }
}

/// How a device that paired checks the hub: the certificate must chain to the hub CA it received, *and* the SHA-256
/// of the leaf's SubjectPublicKeyInfo must be one of the pins it received (RFC 7469 `pin-sha256` semantics). A hub
/// presenting another key is refused even when its certificate chains to the CA.
public struct PinnedServer: Sendable {
    public var caCertificateDER: [UInt8]
    public var pins: [[UInt8]]

    public init(caCertificateDER: [UInt8], pins: [[UInt8]]) {
        self.caCertificateDER = caCertificateDER
        self.pins = pins
    }

    /// RFC 7469 §2.4 `pin-sha256`: the SHA-256 of a DER SubjectPublicKeyInfo.
    public static func pin(spki: some DataProtocol) -> [UInt8] { Array(SHA256.hash(data: spki)) }

    /// The pin of the key a certificate (a peer's leaf) carries.
    public static func pin(of certificate: NIOSSLCertificate?) -> [UInt8]? {
        (try? certificate?.extractPublicKey().toSPKIBytes()).map { pin(spki: $0) }
    }

    /// Replaces BoringSSL's verification, so it does both checks itself.
    public func verify(_ certificates: [NIOSSLCertificate], _ promise: EventLoopPromise<NIOSSLVerificationResult>) {
        let ders = certificates.compactMap { try? $0.toDERBytes() }
        let presented = Self.pin(of: certificates.first)
        let pins = self.pins
        let caDER = caCertificateDER
        promise.completeWithTask {
            guard let presented, pins.contains(presented) else { return .failed }
            // A server certificate (RFC 5280 §4.2.1.12 serverAuth): a device's certificate from the same CA, which
            // is for clientAuth only, is never taken for the hub's, even for a key someone got into the pins.
            guard let leafDER = ders.first, let leaf = try? Certificate(derEncoded: leafDER),
                let ca = try? Certificate(derEncoded: caDER),
                (try? leaf.extensions.extendedKeyUsage)??.contains(.serverAuth) == true
            else { return .failed }
            var verifier = Verifier(rootCertificates: CertificateStore([ca])) { RFC5280Policy() }
            let intermediates = CertificateStore(ders.dropFirst().compactMap { try? Certificate(derEncoded: $0) })
            guard case .validCertificate = await verifier.validate(leaf: leaf, intermediates: intermediates) else {
                return .failed
            }
            return .certificateVerified
        }
    }
}

public struct ClientError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

public struct HTTPResult: Sendable {
    public var status: Int
    public var headers: [(String, String)]
    public var body: [UInt8]

    public func header(_ name: String) -> String? {
        headers.first { $0.0.lowercased() == name.lowercased() }?.1
    }

    public var bodyText: String { String(decoding: body, as: UTF8.self) }
}

/// A minimal HTTP/1.1 client over TLS for the hub's APIs: one connection, requests one after another (keep-alive).
public enum HTTPSClient {
    /// Connects, runs `body` with the open connection, then closes it.
    public static func withConnection<Result: Sendable>(
        host: String, port: Int, serverName: String? = "localhost", tls: TLSConfiguration,
        pinned: PinnedServer? = nil, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        profile: CryptoProfile = .standard, _ body: (HTTPConnection) async throws -> Result
    ) async throws -> Result {
        let context = try TLSProfile.makeContext(tls, profile: profile)
        let channel = try await ClientBootstrap(group: group)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(10))
            .connect(host: host, port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let pinned {
                        try channel.pipeline.syncOperations.addHandler(
                            NIOSSLClientHandler(
                                context: context, serverHostname: serverName,
                                customVerificationCallback: { pinned.verify($0, $1) }))
                    } else {
                        try channel.pipeline.syncOperations.addHandler(
                            NIOSSLClientHandler(context: context, serverHostname: serverName))
                    }
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(
                        wrappingChannelSynchronously: channel)
                }
            }
        return try await channel.executeThenClose { inbound, outbound in
            let connection = HTTPConnection(
                host: serverName ?? host, inbound: inbound.makeAsyncIterator(), outbound: outbound,
                channel: channel.channel)
            return try await body(connection)
        }
    }

    /// One request on a new connection.
    public static func request(
        host: String, port: Int, tls: TLSConfiguration, pinned: PinnedServer? = nil, method: String, path: String,
        headers: [(String, String)] = [], body: [UInt8] = [], signer: MessageSigner? = nil,
        profile: CryptoProfile = .standard
    ) async throws -> HTTPResult {
        try await withConnection(host: host, port: port, tls: tls, pinned: pinned, profile: profile) { connection in
            try await connection.send(method: method, path: path, headers: headers, body: body, signer: signer)
        }
    }
}

/// An open keep-alive connection. Not thread-safe: use from one task.
public final class HTTPConnection {
    private let host: String
    private var inbound: NIOAsyncChannelInboundStream<HTTPClientResponsePart>.AsyncIterator
    private let outbound: NIOAsyncChannelOutboundWriter<HTTPClientRequestPart>
    private let channel: any Channel
    /// Responses larger than this are refused (the hub's are small).
    public var maximumResponseBytes = 4 * 1024 * 1024

    init(
        host: String, inbound: NIOAsyncChannelInboundStream<HTTPClientResponsePart>.AsyncIterator,
        outbound: NIOAsyncChannelOutboundWriter<HTTPClientRequestPart>, channel: any Channel
    ) {
        self.host = host
        self.inbound = inbound
        self.outbound = outbound
        self.channel = channel
    }

    /// Closes the connection (from any task): a request waiting on it ends with an error. For timeouts.
    public nonisolated var closer: @Sendable () -> Void {
        let channel = channel
        return { channel.close(promise: nil) }
    }

    /// Sends one request; with a `signer`, signs it first (RFC 9421 in Bulwark's profile: `Content-Digest`,
    /// `Signature-Input` and `Signature` over the method, the path without its query, and the body's digest).
    public func send(
        method: String, path: String, headers: [(String, String)] = [], body: [UInt8] = [],
        signer: MessageSigner? = nil
    ) async throws -> HTTPResult {
        var headers = headers
        if let signer {
            let signaturePath = String(path.prefix { $0 != "?" })
            func field(_ name: String) -> String? {
                let values = headers.filter { $0.0.lowercased() == name }.map(\.1)
                return values.isEmpty ? nil : values.joined(separator: ", ")
            }
            headers += try signer.sign(
                method: method, path: signaturePath, body: body, created: Int64(Date().timeIntervalSince1970),
                contentType: field("content-type"), messageType: field("bulwark-message-type")
            ).map { ($0.name, $0.value) }
        }
        var head = HTTPRequestHead(version: .http1_1, method: HTTPMethod(rawValue: method), uri: path)
        head.headers.add(name: "Host", value: host)
        head.headers.add(name: "Content-Length", value: String(body.count))
        for (name, value) in headers { head.headers.add(name: name, value: value) }
        try await outbound.write(contentsOf: [
            .head(head), .body(.byteBuffer(ByteBuffer(bytes: body))), .end(nil),
        ])
        var result = HTTPResult(status: 0, headers: [], body: [])
        while let part = try await inbound.next() {
            switch part {
            case .head(let responseHead):
                result.status = Int(responseHead.status.code)
                result.headers = responseHead.headers.map { ($0.name, $0.value) }
            case .body(let buffer):
                guard result.body.count + buffer.readableBytes <= maximumResponseBytes else {
                    throw ClientError("response larger than \(maximumResponseBytes) bytes")
                }
                result.body.append(contentsOf: buffer.readableBytesView)
            case .end:
                return result
            }
        }
        throw ClientError("connection closed before the response was complete")
    }

    /// Asks the hub for an HMAC session key for this connection (`POST /v1/device/session`, signed with `signer`'s
    /// certificate key) and returns a signer that uses it: later requests on this connection then cost the hub an
    /// HMAC instead of an ECDSA verification. The key is valid on this connection only.
    public func openSession(signer: MessageSigner) async throws -> MessageSigner {
        let answer = try await send(
            method: "POST", path: "/v1/device/session", headers: [("Content-Type", "application/json")],
            body: Array("{}".utf8), signer: signer)
        guard answer.status == 201,
            let object = try? JSONSerialization.jsonObject(with: Data(answer.body)) as? [String: Any],
            let id = object["keyId"] as? String, let encoded = object["key"] as? String,
            let key = Data(base64Encoded: encoded), key.count == 32,
            let expiresAt = (object["expiresAt"] as? NSNumber)?.int64Value
        else { throw ClientError("the hub did not issue a session key (HTTP \(answer.status))") }
        return MessageSigner(
            session: SessionKey(id: id, key: SymmetricKey(data: key), expiresAt: expiresAt), label: signer.label)
    }

    /// A GET whose body is handed to `onBody` as it arrives, for downloads that must never be held in memory: the
    /// next part is read only when `onBody` has returned (the channel's back-pressure bounds what is buffered).
    /// `onHead` sees the status and headers first and may throw to refuse the response. After a throw the
    /// connection is in an unknown state: close it.
    public func stream(
        path: String, headers: [(String, String)] = [],
        onHead: (Int, [(String, String)]) throws -> Void, onBody: (ByteBuffer) async throws -> Void
    ) async throws {
        var head = HTTPRequestHead(version: .http1_1, method: .GET, uri: path)
        head.headers.add(name: "Host", value: host)
        for (name, value) in headers { head.headers.add(name: name, value: value) }
        try await outbound.write(contentsOf: [.head(head), .end(nil)])
        while let part = try await inbound.next() {
            switch part {
            case .head(let responseHead):
                try onHead(Int(responseHead.status.code), responseHead.headers.map { ($0.name, $0.value) })
            case .body(let buffer):
                try await onBody(buffer)
            case .end:
                return
            }
        }
        throw ClientError("connection closed before the response was complete")
    }
}
