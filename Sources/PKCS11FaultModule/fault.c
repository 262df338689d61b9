// A test fixture, never loaded by Bulwark itself: a PKCS#11 module that forwards to a real one (SoftHSM2 in the
// tests) and behaves as an unplugged token while a marker file exists.
#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>

#include "../CPKCS11/include/pkcs11.h"

static CK_FUNCTION_LIST real;
static CK_FUNCTION_LIST wrapped;
static int loaded = 0;

static int unplugged(void) {
    const char *marker = getenv("BULWARK_P11_FAULT_FILE");
    return marker != NULL && access(marker, F_OK) == 0;
}

static CK_RV fault_OpenSession(CK_SLOT_ID slot, CK_FLAGS flags, void *app, CK_NOTIFY notify, CK_SESSION_HANDLE_PTR s) {
    if (unplugged()) return CKR_DEVICE_REMOVED;
    return real.C_OpenSession(slot, flags, app, notify, s);
}
static CK_RV fault_Login(CK_SESSION_HANDLE s, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin, CK_ULONG len) {
    if (unplugged()) return CKR_DEVICE_REMOVED;
    return real.C_Login(s, user, pin, len);
}
static CK_RV fault_FindObjectsInit(CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR t, CK_ULONG n) {
    if (unplugged()) return CKR_DEVICE_REMOVED;
    return real.C_FindObjectsInit(s, t, n);
}
static CK_RV fault_SignInit(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k) {
    if (unplugged()) return CKR_DEVICE_REMOVED;
    return real.C_SignInit(s, m, k);
}
static CK_RV fault_Sign(CK_SESSION_HANDLE s, CK_BYTE_PTR d, CK_ULONG n, CK_BYTE_PTR sig, CK_ULONG_PTR len) {
    if (unplugged()) return CKR_DEVICE_REMOVED;
    return real.C_Sign(s, d, n, sig, len);
}
static CK_RV fault_GetTokenInfo(CK_SLOT_ID slot, CK_TOKEN_INFO_PTR info) {
    if (unplugged()) return CKR_TOKEN_NOT_PRESENT;
    return real.C_GetTokenInfo(slot, info);
}

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list) {
    if (!loaded) {
        const char *path = getenv("BULWARK_P11_FAULT_MODULE");
        if (path == NULL) return CKR_GENERAL_ERROR;
        void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (handle == NULL) return CKR_GENERAL_ERROR;
        CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(handle, "C_GetFunctionList");
        CK_FUNCTION_LIST_PTR inner = NULL;
        if (get == NULL || get(&inner) != CKR_OK || inner == NULL) return CKR_GENERAL_ERROR;
        real = *inner;
        wrapped = *inner;
        wrapped.C_OpenSession = fault_OpenSession;
        wrapped.C_Login = fault_Login;
        wrapped.C_FindObjectsInit = fault_FindObjectsInit;
        wrapped.C_SignInit = fault_SignInit;
        wrapped.C_Sign = fault_Sign;
        wrapped.C_GetTokenInfo = fault_GetTokenInfo;
        loaded = 1;
    }
    *list = &wrapped;
    return CKR_OK;
}
