#if defined(__linux__)
#define _GNU_SOURCE
#include <features.h>  // defines __GLIBC__ on glibc
#endif

#if defined(__linux__) && defined(__GLIBC__)
#include <link.h>
#include <sys/mman.h>
#include <unistd.h>
#endif

#include "CWorkingSet.h"

#if defined(__linux__) && defined(__GLIBC__)
struct context {
    const bulwark_range *allowed;
    size_t count;
    uintptr_t page;
    long advised;
};

static int visit(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    struct context *context = data;
    for (ElfW(Half) index = 0; index < info->dlpi_phnum; index++) {
        const ElfW(Phdr) *header = &info->dlpi_phdr[index];
        // Read-only load segments only: relocated read-only data (PT_GNU_RELRO) lies in a writable PT_LOAD.
        if (header->p_type != PT_LOAD || (header->p_flags & PF_W) != 0 || header->p_memsz == 0) continue;
        uintptr_t start = (info->dlpi_addr + header->p_vaddr) & ~(context->page - 1);
        uintptr_t end = (info->dlpi_addr + header->p_vaddr + header->p_memsz + context->page - 1) & ~(context->page - 1);
        for (size_t k = 0; k < context->count; k++) {
            uintptr_t from = start > context->allowed[k].start ? start : context->allowed[k].start;
            uintptr_t to = end < context->allowed[k].end ? end : context->allowed[k].end;
            if (from >= to) continue;
            if (madvise((void *)from, to - from, MADV_DONTNEED) == 0) context->advised += (long)(to - from);
        }
    }
    return 0;
}
#endif

long bulwark_drop_readonly_segments(const bulwark_range *allowed, size_t count) {
#if defined(__linux__) && defined(__GLIBC__)
    struct context context = {allowed, count, (uintptr_t)sysconf(_SC_PAGESIZE), 0};
    dl_iterate_phdr(visit, &context);
    return context.advised;
#else
    (void)allowed;
    (void)count;
    return -1;
#endif
}
