#ifndef BULWARK_CRANDOM_H
#define BULWARK_CRANDOM_H

#include <stddef.h>
#include <sys/types.h>

/// `getrandom(2)` with no flags: up to `length` bytes from the kernel's CSPRNG, blocking until it is seeded (as
/// `getentropy(3)` does, without its limit of 256 bytes a call). Returns the bytes written (fewer than asked when a
/// signal interrupts a request above 256 bytes), or -1 with `errno` set (ENOSYS where the call does not exist).
/// Swift's Glibc module does not import `getrandom`, and `syscall(2)` is variadic.
ssize_t bulwark_getrandom(void *buffer, size_t length);

#endif
