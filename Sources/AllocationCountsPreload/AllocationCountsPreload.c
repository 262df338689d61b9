// See include/AllocationCountsPreload.h. Linux/glibc only; elsewhere the library counts nothing.
#include "AllocationCountsPreload.h"
#include <stddef.h>
#include <stdint.h>
#include <errno.h>
#if defined(__linux__) && defined(__GLIBC__)
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

#define WORDS_PER_SLOT (BULWARK_ALLOCATION_SLOT_BYTES / sizeof(uint64_t))
static uint64_t *slots;  // the shared file, or NULL: nothing counted
static unsigned nextSlot;
// initial-exec: a preloaded library's thread-locals live in the static TLS block, so reaching one never allocates.
static __thread uint64_t *mine __attribute__((tls_model("initial-exec")));

// Runs before main (the loader's allocations before it are not counted). Neither getenv, open, ftruncate nor mmap
// allocates, so nothing here re-enters the wrappers below.
__attribute__((constructor)) static void bulwark_allocation_counts_open(void) {
    const char *path = getenv("BULWARK_ALLOCATION_COUNTS");
    if (path == NULL || path[0] == 0) return;
    int descriptor = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (descriptor < 0) return;
    size_t size = (size_t)BULWARK_ALLOCATION_SLOTS * BULWARK_ALLOCATION_SLOT_BYTES;
    void *mapped = MAP_FAILED;
    if (ftruncate(descriptor, (off_t)size) == 0)
        mapped = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, descriptor, 0);
    close(descriptor);
    if (mapped != MAP_FAILED) __atomic_store_n(&slots, (uint64_t *)mapped, __ATOMIC_RELEASE);
}

static inline void counted(void) {
    uint64_t *slot = mine;
    if (__builtin_expect(slot == NULL, 0)) {
        uint64_t *all = __atomic_load_n(&slots, __ATOMIC_ACQUIRE);
        if (all == NULL) return;
        unsigned index = __atomic_fetch_add(&nextSlot, 1, __ATOMIC_RELAXED);
        if (index >= BULWARK_ALLOCATION_SLOTS - 1) index = BULWARK_ALLOCATION_SLOTS - 1;
        slot = all + (size_t)index * WORDS_PER_SLOT;
        mine = slot;
    }
    if (__builtin_expect(slot == slots + (size_t)(BULWARK_ALLOCATION_SLOTS - 1) * WORDS_PER_SLOT, 0))
        __atomic_fetch_add(slot, 1, __ATOMIC_RELAXED);  // the shared last slot
    else
        __atomic_store_n(slot, *slot + 1, __ATOMIC_RELAXED);  // this thread's own: one writer
}

void *malloc(size_t size) { counted(); return __libc_malloc(size); }
void *calloc(size_t count, size_t size) { counted(); return __libc_calloc(count, size); }
void *realloc(void *pointer, size_t size) { counted(); return __libc_realloc(pointer, size); }
void free(void *pointer) { __libc_free(pointer); }
void *memalign(size_t alignment, size_t size) { counted(); return __libc_memalign(alignment, size); }
void *aligned_alloc(size_t alignment, size_t size) { counted(); return __libc_memalign(alignment, size); }
int posix_memalign(void **out, size_t alignment, size_t size) {
    counted();
    void *pointer = __libc_memalign(alignment, size);
    if (pointer == NULL) return ENOMEM;
    *out = pointer;
    return 0;
}
#endif
