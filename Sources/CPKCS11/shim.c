#include "CPKCS11.h"

#include <dlfcn.h>
#include <stdio.h>

CK_FUNCTION_LIST_PTR cpkcs11_load(const char *path, char *err, size_t errlen) {
    void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (handle == NULL) {
        const char *reason = dlerror();
        snprintf(err, errlen, "%s", reason ? reason : "dlopen failed");
        return NULL;
    }
    CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(handle, "C_GetFunctionList");
    if (get == NULL) {
        snprintf(err, errlen, "it has no C_GetFunctionList (not a PKCS#11 module)");
        return NULL;
    }
    CK_FUNCTION_LIST_PTR list = NULL;
    CK_RV rv = get(&list);
    if (rv != CKR_OK || list == NULL) {
        snprintf(err, errlen, "C_GetFunctionList returned 0x%lx", (unsigned long)rv);
        return NULL;
    }
    return list;
}
