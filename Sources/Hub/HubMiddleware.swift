import Core
import Crypto
import Foundation
import Gateway
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import NIOHTTP1
import NIOSSL
import PKI
import Store
import Synchronization
import X509

/// Outermost middleware: turns every error into a short generic body with the correlation id, and sends the detail
/// to the log and (for security-relevant refusals) the security events table.
///
/// On the device listener (`problems`) every refusal is an RFC 9457 problem from the fixed catalogue; the operator
/// listener keeps `{"error","message","correlationId"}`, whose message operators need.
struct ErrorReportingMiddleware: RouterMiddleware {
    typealias Context = HubRequestContext
    let store: any HubStore
    var problems = false
    var recorder: GatewayRecorder?
    /// On the device listener: counts the requests that passed the pipeline (`/metrics`).
    var metrics: HubMetrics?

    func handle(
        _ request: Request, context: Context, next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        do {
            let response = try await next(request, context)
            if let metrics, response.status.code < 400 { metrics.admitted(.http) }
            return response
        } catch let error as GatewayError {
            await recorder?.record(
                error.refusal, identity: error.identity, source: context.channel.remoteAddress?.ipAddress,
                correlationID: context.correlationID.rawValue, what: "\(request.method) \(request.uri.path)")
            return ProblemResponse.make(
                error.refusal.problem, correlationID: context.correlationID.rawValue, refusal: error.refusal)
        } catch let error as HubError {
            context.logger.notice(
                "request refused",
                metadata: [
                    "status": .stringConvertible(error.status.code), "code": .string(error.code),
                    "detail": .string(error.detail), "path": .string(request.uri.path),
                    "peer": .string(error.identity ?? "-"),
                ])
            if let kind = error.event {
                try? await store.recordSecurityEvent(
                    SecurityEvent(
                        at: Date(), kind: kind, identity: error.identity,
                        source: context.channel.remoteAddress?.ipAddress, correlationID: context.correlationID.rawValue,
                        detail: "\(request.method) \(request.uri.path): \(error.detail)"))
            }
            if problems {
                return ProblemResponse.make(
                    ProblemResponse.problem(forStatus: error.status.code), correlationID: context.correlationID.rawValue
                )
            }
            return HubError.response(
                status: error.status, code: error.code, message: error.message,
                correlationID: context.correlationID.rawValue)
        } catch let error as HTTPError {
            if problems {
                return ProblemResponse.make(
                    ProblemResponse.problem(forStatus: error.status.code), correlationID: context.correlationID.rawValue
                )
            }
            let code = error.status == .notFound ? "not-found" : error.status.code < 500 ? "bad-request" : "internal"
            return HubError.response(
                status: error.status, code: code, message: nil, correlationID: context.correlationID.rawValue)
        } catch let error as HTTPParserError {
            // The client's framing, not the hub's failure: a 400 logged at notice (RFC 9112 §6.1, §7.1).
            context.logger.notice("malformed request", metadata: ["error": .string("\(error)")])
            return refusal(.badRequest, context)
        } catch  where Self.clientWentAway(error) {
            // A client that closed mid-request (no close_notify, reset): nothing to answer, nothing wrong here.
            context.logger.notice("client closed the connection mid-request", metadata: ["error": .string("\(error)")])
            return refusal(.badRequest, context)
        } catch {
            context.logger.error("request failed", metadata: ["error": .string("\(error)")])
            if problems {
                return ProblemResponse.make(.unavailable, correlationID: context.correlationID.rawValue)
            }
            return HubError.response(
                status: .serviceUnavailable, code: "unavailable", message: nil,
                correlationID: context.correlationID.rawValue)
        }
    }
}

extension ErrorReportingMiddleware {
    func refusal(_ problem: Problem, _ context: Context) -> Response {
        if problems { return ProblemResponse.make(problem, correlationID: context.correlationID.rawValue) }
        return HubError.response(
            status: .init(code: problem.status), code: problem.slug, message: nil,
            correlationID: context.correlationID.rawValue)
    }

    static func clientWentAway(_ error: any Error) -> Bool {
        if let error = error as? NIOSSLError, case .uncleanShutdown = error { return true }
        if let error = error as? ChannelError {
            return error == .eof || error == .ioOnClosedChannel || error == .alreadyClosed
                || error == .outputClosed || error == .inputClosed
        }
        // A reset or a broken pipe is the peer's doing; any other I/O error is the hub's and stays an error.
        if let error = error as? IOError { return [ECONNRESET, EPIPE, ECONNABORTED].contains(error.errnoCode) }
        return false
    }
}

/// Establishes who the peer is from the TLS client certificate on every request, and refuses certificates revoked
/// since the handshake: revocation takes effect on the next request of an open keep-alive connection.
struct PeerIdentityMiddleware: RouterMiddleware {
    typealias Context = HubRequestContext
    let revocations: RevocationList
    let cache: PeerCertificateCache
    let renewals: CertificateRenewals
    let revokedUse = OncePerWindow()
    let connections = ConnectionPeers()

    /// The peer of a connection: read from the TLS handler (a hop to the channel's event loop) on its first request,
    /// then remembered for the connection's life (a keep-alive connection presents one certificate). Revocation is
    /// still checked on every request.
    func connectionPeer(_ channel: any Channel) async throws -> ConnectionPeers.Entry? {
        if let known = connections.peer(of: channel) { return known }
        guard let certificate = try? await channel.nioSSL_peerCertificate().get(),
            let der = try? certificate.toDERBytes(),
            let peer = cache.peer(forDER: der)
        else { return nil }
        let address = channel.remoteAddress
        let entry = ConnectionPeers.Entry(
            channel: channel, peer: peer, source: address?.ipAddress ?? "unknown", sourceAddress: SourceAddress(address)
        )
        connections.remember(entry, for: channel)
        return entry
    }

    func handle(
        _ request: Request, context: Context, next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        guard let connection = try await connectionPeer(context.channel) else {
            throw HubError.forbidden("no usable client certificate on the connection")
        }
        let peer = connection.peer
        var context = context
        context.peer = peer
        context.source = connection.source
        context.sourceAddress = connection.sourceAddress
        context.logger[metadataKey: "peer"] = .string(peer.identity.uri)
        do {
            if revocations.contains(peer.serialHex) {
                // Audited once per certificate per minute: an open connection hammering with a revoked
                // certificate must not turn each request into a disk write.
                let audit = revokedUse.first(peer.serialHex, now: Int64(Date().timeIntervalSince1970) / 60)
                throw HubError.forbidden(
                    "certificate \(peer.serialHex) was revoked", event: audit ? "revoked-certificate-used" : nil)
            }
            // A renewed certificate in use: the one it replaced is revoked now.
            await renewals.used(peer.serialHex)
            return try await next(request, context)
        } catch var error as HubError {
            // The outer middleware sees the context from before the peer was known: carry it on the error.
            error.identity = error.identity ?? peer.identity.uri
            throw error
        }
    }
}

/// The peer of each open connection, and its remote address, forgotten when it closes.
final class ConnectionPeers: Sendable {
    struct Entry: Sendable {
        /// Held (and compared) so that an entry is never taken for another channel allocated at a freed channel's
        /// address before the closed one's removal has run: removal is queued on the event loop by `closeFuture`.
        let channel: any Channel
        let peer: PeerCertificate
        let source: String
        let sourceAddress: SourceAddress?
    }

    private let peers = Mutex<[ObjectIdentifier: Entry]>([:])

    func peer(of channel: any Channel) -> Entry? {
        peers.withLock { $0[ObjectIdentifier(channel)] }.flatMap { $0.channel === channel ? $0 : nil }
    }

    func remember(_ peer: Entry, for channel: any Channel) {
        let key = ObjectIdentifier(channel)
        guard channel.isActive else { return }
        peers.withLock { $0[key] = peer }
        channel.closeFuture.whenComplete { _ in self.peers.withLock { _ = $0.removeValue(forKey: key) } }
    }

    var count: Int { peers.withLock { $0.count } }
}

/// Remembers which keys were seen in the current window (bounded; cleared when the window changes or it fills).
final class OncePerWindow: Sendable {
    private let state = Mutex<(window: Int64, seen: Set<String>)>((0, []))

    func first(_ key: String, now window: Int64) -> Bool {
        state.withLock { state in
            if state.window != window || state.seen.count > 10_000 { state = (window, []) }
            return state.seen.insert(key).inserted
        }
    }
}

/// Parsing a certificate costs microseconds, and a keep-alive connection presents the same one on every request:
/// remember the identity per certificate (bounded; cleared when full).
final class PeerCertificateCache: Sendable {
    /// The DER bytes as a dictionary key, hashed in bulk (hashing `[UInt8]` element by element is slow).
    struct Key: Hashable {
        let der: [UInt8]
        func hash(into hasher: inout Hasher) { der.withUnsafeBytes { hasher.combine(bytes: $0) } }
    }

    private let entries = Mutex<[Key: PeerCertificate]>([:])
    private let capacity = 50_000
    /// A device's id is interned here, once per certificate, for the gateway's rate limits.
    private let deviceKeys: DeviceKeys

    init(deviceKeys: DeviceKeys) { self.deviceKeys = deviceKeys }

    func peer(forDER der: [UInt8]) -> PeerCertificate? {
        let key = Key(der: der)
        if let hit = entries.withLock({ $0[key] }) { return hit }
        guard let certificate = try? Certificate(derEncoded: der), let identity = certificate.bulwarkIdentity else {
            return nil
        }
        let peer = PeerCertificate(
            identity: identity, serialHex: certificate.serialHex,
            publicKey: P256.Signing.PublicKey(certificate.publicKey),
            deviceKey: identity.deviceID.map(deviceKeys.key(for:)))
        entries.withLock {
            if $0.count >= capacity { $0.removeAll(keepingCapacity: true) }
            $0[key] = peer
        }
        return peer
    }
}
