// PKI
