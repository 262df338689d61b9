#ifndef BULWARK_CPKCS11_H
#define BULWARK_CPKCS11_H

#include <stddef.h>
#include "pkcs11.h"

/// Loads a PKCS#11 module with dlopen (RTLD_NOW | RTLD_LOCAL) and returns its function list (PKCS#11 v2.40
/// §5.2 C_GetFunctionList), or NULL with a short reason in `err`. The module stays loaded for the process's life.
CK_FUNCTION_LIST_PTR cpkcs11_load(const char *path, char *err, size_t errlen);

#endif
