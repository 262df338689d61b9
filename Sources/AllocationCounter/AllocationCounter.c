// Counts heap allocations for the benchmark's "allocations per message" figure. Defining malloc and friends in
// the executable interposes them for every library the process loads; each wrapper counts and forwards to glibc's
// exported __libc_* implementation, so nothing else changes. Linux/glibc only; elsewhere the count stays 0.
#include "AllocationCounter.h"
#include <stddef.h>
#include <errno.h>
#if defined(__linux__) && defined(__GLIBC__)
#include <malloc.h>
#endif

#if defined(__linux__) && defined(__GLIBC__)
static _Atomic unsigned long allocations = 0;

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

void *malloc(size_t size) { allocations++; return __libc_malloc(size); }
void *calloc(size_t count, size_t size) { allocations++; return __libc_calloc(count, size); }
void *realloc(void *pointer, size_t size) { allocations++; return __libc_realloc(pointer, size); }
void free(void *pointer) { __libc_free(pointer); }
void *aligned_alloc(size_t alignment, size_t size) { allocations++; return __libc_memalign(alignment, size); }
int posix_memalign(void **out, size_t alignment, size_t size) {
    allocations++;
    void *pointer = __libc_memalign(alignment, size);
    if (pointer == NULL) return ENOMEM;
    *out = pointer;
    return 0;
}
unsigned long bulwark_allocation_count(void) { return allocations; }
unsigned long bulwark_heap_in_use(void) {
    struct mallinfo2 info = mallinfo2();
    return (unsigned long)(info.uordblks + info.hblkhd);  // small blocks plus mmapped large ones
}
#else
unsigned long bulwark_allocation_count(void) { return 0; }
unsigned long bulwark_heap_in_use(void) { return 0; }
#endif
