public import Core
import SwiftASN1
public import X509

/// The hub's policy for client certificates on top of RFC 5280 path validation (which `RFC5280Policy` does:
/// signatures, validity period, CA constraints).
///
/// The leaf must carry EKU clientAuth, must not be a CA, must name exactly one Bulwark identity of the role the
/// listener serves, and its serial must not be revoked.
public struct ClientCertificatePolicy: VerifierPolicy {
    /// The identities a listener serves. The operator listener serves operators, and monitors (which reach only
    /// `GET /metrics` there); MQTT serves devices, and operators and applications as fleet readers, on one port, each
    /// with its own topic access. A monitor certificate is refused on MQTT and the device listener at the handshake.
    public enum Role: Sendable { case device, `operator`, anyIdentity }

    public let verifyingCriticalExtensions: [ASN1ObjectIdentifier] = []
    let role: Role
    let isRevoked: @Sendable (String) -> Bool

    public init(role: Role, isRevoked: @escaping @Sendable (String) -> Bool) {
        self.role = role
        self.isRevoked = isRevoked
    }

    public mutating func chainMeetsPolicyRequirements(chain: UnverifiedCertificateChain) async -> PolicyEvaluationResult
    {
        let leaf = chain.leaf
        guard let eku = try? leaf.extensions.extendedKeyUsage, eku.contains(.clientAuth) else {
            return .failsToMeetPolicy(reason: "leaf lacks EKU clientAuth")
        }
        if let constraints = try? leaf.extensions.basicConstraints, case .isCertificateAuthority = constraints {
            return .failsToMeetPolicy(reason: "leaf is a CA certificate")
        }
        switch (role, leaf.bulwarkIdentity) {
        case (.device, .device?), (.operator, .operator?), (.operator, .monitor?), (.anyIdentity, .device?),
            (.anyIdentity, .operator?), (.anyIdentity, .application?):
            break
        default: return .failsToMeetPolicy(reason: "leaf does not name an identity of the listener's role")
        }
        if isRevoked(leaf.serialHex) {
            return .failsToMeetPolicy(reason: "leaf serial is revoked")
        }
        return .meetsPolicy
    }
}
