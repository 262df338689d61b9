public import Crypto
import Foundation
import HubClient
import Logging
import NIOSSL
import Synchronization
public import X509

/// The TLS key and certificate every listener presents *now*, and the backup key devices also pin. A key rotation
/// (`bulwark hub rotate-tls-key`) replaces them in the data directory; `TLSKeyWatcher` loads the new pair and swaps it
/// in here, and each listener builds its next TLS context from it, so new connections get the new key without a
/// restart while established sessions go on.
public final class ServerIdentity: Sendable {
    public struct Keys: Sendable {
        public let certificate: Certificate
        public let key: P256.Signing.PrivateKey
        public let backup: P256.Signing.PublicKey
        /// Grows with each swap; listeners rebuild their TLS context when it changes.
        public let generation: Int

        /// `pin-sha256` values (SHA-256 of the SPKI) of the key in use and of the backup key, in that order.
        public var pins: [[UInt8]] { [key.publicKey, backup].map(ServerIdentity.pin) }
    }

    private let state: Mutex<Keys>

    init(certificate: Certificate, key: P256.Signing.PrivateKey, backup: P256.Signing.PublicKey) {
        state = Mutex(Keys(certificate: certificate, key: key, backup: backup, generation: 1))
    }

    public var current: Keys { state.withLock { $0 } }

    /// Presents `key` with `certificate` from the next connection on. False when they are what is presented already.
    @discardableResult
    func replace(certificate: Certificate, key: P256.Signing.PrivateKey, backup: P256.Signing.PublicKey) -> Bool {
        state.withLock { keys in
            guard keys.certificate != certificate || keys.backup.derRepresentation != backup.derRepresentation
            else { return false }
            keys = Keys(certificate: certificate, key: key, backup: backup, generation: keys.generation + 1)
            return true
        }
    }

    /// RFC 7469 §2.4: the SHA-256 of the DER SubjectPublicKeyInfo.
    public static func pin(_ key: P256.Signing.PublicKey) -> [UInt8] { PinnedServer.pin(spki: key.derRepresentation) }
}

/// One listener's TLS context, rebuilt from `ServerIdentity` when the key or certificate changed.
final class TLSContextSource: Sendable {
    let identity: ServerIdentity
    private let make: @Sendable (ServerIdentity.Keys) throws -> NIOSSLContext
    private let cache: Mutex<(generation: Int, context: NIOSSLContext)>
    private let logger: Logger

    init(
        identity: ServerIdentity, logger: Logger,
        make: @escaping @Sendable (ServerIdentity.Keys) throws -> NIOSSLContext
    ) throws {
        let keys = identity.current
        self.identity = identity
        self.make = make
        self.logger = logger
        cache = Mutex((keys.generation, try make(keys)))
    }

    /// The context for a new connection. A context that cannot be built from new keys leaves the previous one in
    /// use (logged): the hub keeps serving with the key devices already trust.
    var context: NIOSSLContext {
        let keys = identity.current
        return cache.withLock { cached in
            guard cached.generation != keys.generation else { return cached.context }
            do {
                cached = (keys.generation, try make(keys))
            } catch {
                logger.error(
                    "cannot use the new TLS key; still presenting the previous one", metadata: ["error": "\(error)"])
                cached.generation = keys.generation
            }
            return cached.context
        }
    }
}
