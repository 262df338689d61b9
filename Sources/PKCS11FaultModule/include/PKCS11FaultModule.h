#ifndef BULWARK_PKCS11_FAULT_MODULE_H
#define BULWARK_PKCS11_FAULT_MODULE_H
// A PKCS#11 module for tests only: it forwards every call to the module named by BULWARK_P11_FAULT_MODULE and, while
// the file named by BULWARK_P11_FAULT_FILE exists, answers the calls that reach the token with CKR_DEVICE_REMOVED
// (an unplugged token).
#endif
