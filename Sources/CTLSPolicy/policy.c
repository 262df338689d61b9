#include "CTLSPolicy.h"

#include <CNIOBoringSSL.h>

int bulwark_tls_fips_policy(void *ctx) {
    SSL_CTX *context = (SSL_CTX *)ctx;
    if (SSL_CTX_set_compliance_policy(context, ssl_compliance_policy_fips_202205) != 1) return 1;
    if (SSL_CTX_set_min_proto_version(context, TLS1_3_VERSION) != 1) return 2;
    if (SSL_CTX_set_max_proto_version(context, TLS1_3_VERSION) != 1) return 2;
    if (SSL_CTX_get_min_proto_version(context) != TLS1_3_VERSION) return 2;
    if (SSL_CTX_get_max_proto_version(context) != TLS1_3_VERSION) return 2;
    return 0;
}
