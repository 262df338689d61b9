#ifndef BULWARK_CTLSPOLICY_H
#define BULWARK_CTLSPOLICY_H

/// Puts the swift-nio-ssl context `ctx` (its BoringSSL `SSL_CTX *`) under BoringSSL's
/// `ssl_compliance_policy_fips_202205` (TLS 1.3: AES-GCM only; P-256/P-384; approved signatures), then sets TLS 1.3 as
/// both the minimum and the maximum again (the policy allows TLS 1.2) and checks that it holds.
/// Returns 0 on success, 1 when the policy is refused, 2 when TLS 1.3 only cannot be set or does not hold.
///
/// In C so that no Swift module imports swift-nio-ssl's BoringSSL headers: a Swift module that saw both them and
/// swift-crypto's (which TUF imports) would not compile (the two copies define the same structs differently).
int bulwark_tls_fips_policy(void *ctx);

#endif
