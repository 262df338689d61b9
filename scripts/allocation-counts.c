// Counts the heap allocations of another process, for the MQTT benchmark's "allocations per message" (the hub's and
// mosquitto's). Built by the benchmark with the toolchain's clang into a shared library that depends on libc alone
// (a library SwiftPM links carries the Swift runtime, which would load into mosquitto with it), then preloaded:
// `LD_PRELOAD=libBulwarkAllocationCounts.so BULWARK_ALLOCATION_COUNTS=<file>`. Never part of Bulwark.
//
// It interposes malloc, calloc, realloc, memalign, aligned_alloc and posix_memalign, forwards each to glibc's own
// `__libc_*` entry point (after the same argument checks glibc makes) and counts it in `<file>`, which it maps shared:
// SLOTS slots of SLOT_BYTES bytes, each starting with a native-endian 64-bit count. Each thread owns a slot (plain
// stores to a cache line of its own: counting adds no contention); threads beyond the last slot share it with atomic
// adds. The total is the sum of the slots, read while the process runs. Allocations before the constructor ran (the
// loader's) are not counted. The constructor removes both variables from the environment, so a child the process
// starts is not counted into the same slots, and a forked child stops counting (it would write its parent's slot).
// Linux/glibc only.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#define SLOTS 4096
#define SLOT_BYTES 64
#define WORDS_PER_SLOT (SLOT_BYTES / sizeof(uint64_t))

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

static uint64_t *slots;  // the shared file, or NULL: nothing counted
static unsigned nextSlot;
// initial-exec: a preloaded library's thread-locals live in the static TLS block, so reaching one never allocates.
static __thread uint64_t *mine __attribute__((tls_model("initial-exec")));

static void forked_child(void) {
    __atomic_store_n(&slots, NULL, __ATOMIC_RELEASE);
    mine = NULL;
}

// Runs before main. getenv, unsetenv, open, ftruncate, mmap and close do not allocate; pthread_atfork may, and runs
// while `slots` is still NULL (forwarded, not counted), so nothing here counts into a map not yet made.
__attribute__((constructor)) static void bulwark_allocation_counts_open(void) {
    const char *path = getenv("BULWARK_ALLOCATION_COUNTS");
    if (path == NULL || path[0] == 0) return;
    int descriptor = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    unsetenv("BULWARK_ALLOCATION_COUNTS");  // `path` is no longer used after the open
    unsetenv("LD_PRELOAD");
    if (descriptor < 0) return;
    size_t size = (size_t)SLOTS * SLOT_BYTES;
    void *mapped = MAP_FAILED;
    if (ftruncate(descriptor, (off_t)size) == 0)
        mapped = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, descriptor, 0);
    close(descriptor);
    if (mapped == MAP_FAILED) return;
    if (pthread_atfork(NULL, NULL, forked_child) != 0) {
        munmap(mapped, size);
        return;
    }
    __atomic_store_n(&slots, (uint64_t *)mapped, __ATOMIC_RELEASE);
}

static inline void counted(void) {
    uint64_t *slot = mine;
    if (__builtin_expect(slot == NULL, 0)) {
        uint64_t *all = __atomic_load_n(&slots, __ATOMIC_ACQUIRE);
        if (all == NULL) return;
        unsigned index = __atomic_fetch_add(&nextSlot, 1, __ATOMIC_RELAXED);
        if (index >= SLOTS - 1) index = SLOTS - 1;
        slot = all + (size_t)index * WORDS_PER_SLOT;
        mine = slot;
    }
    if (__builtin_expect(slot == slots + (size_t)(SLOTS - 1) * WORDS_PER_SLOT, 0))
        __atomic_fetch_add(slot, 1, __ATOMIC_RELAXED);  // the shared last slot
    else
        __atomic_store_n(slot, __atomic_load_n(slot, __ATOMIC_RELAXED) + 1, __ATOMIC_RELAXED);  // one writer
}

static int power_of_two(size_t value) { return value != 0 && (value & (value - 1)) == 0; }

void *malloc(size_t size) { counted(); return __libc_malloc(size); }
void *calloc(size_t count, size_t size) { counted(); return __libc_calloc(count, size); }
void *realloc(void *pointer, size_t size) { counted(); return __libc_realloc(pointer, size); }
void free(void *pointer) { __libc_free(pointer); }
void *memalign(size_t alignment, size_t size) { counted(); return __libc_memalign(alignment, size); }

// C11: the alignment must be a power of two (glibc 2.38 refuses others with EINVAL, as here).
void *aligned_alloc(size_t alignment, size_t size) {
    if (!power_of_two(alignment)) {
        errno = EINVAL;
        return NULL;
    }
    counted();
    return __libc_memalign(alignment, size);
}

// POSIX: EINVAL unless the alignment is a power of two multiple of sizeof(void *); ENOMEM when out of memory.
int posix_memalign(void **out, size_t alignment, size_t size) {
    if (!power_of_two(alignment) || alignment % sizeof(void *) != 0) return EINVAL;
    counted();
    int saved = errno;
    void *pointer = __libc_memalign(alignment, size);
    if (pointer == NULL) {
        int error = errno;
        errno = saved;
        return error != 0 ? error : ENOMEM;
    }
    errno = saved;
    *out = pointer;
    return 0;
}
