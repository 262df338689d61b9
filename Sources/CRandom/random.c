#include "CRandom.h"

#include <errno.h>

#if defined(__linux__)
#include <sys/random.h>
#endif

ssize_t bulwark_getrandom(void *buffer, size_t length) {
#if defined(__linux__)
    return getrandom(buffer, length, 0);
#else
    (void)buffer;
    (void)length;
    errno = ENOSYS;
    return -1;
#endif
}
