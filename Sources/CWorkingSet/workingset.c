#if defined(__linux__)
#define _GNU_SOURCE
#include <features.h>  // defines __GLIBC__ on glibc
#endif

#if defined(__linux__) && defined(__GLIBC__)
#include <fcntl.h>
#include <link.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21  // Linux 5.4 (madvise(2)); older kernels answer EINVAL and nothing happens
#endif
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

#if defined(__linux__) && defined(__GLIBC__)
/// Pages out [start, end) and returns the bytes of it no longer present afterwards: the kernel pages out only what
/// no other process maps, and only for a process that owns the file or may write it (madvise(2)), answering 0
/// either way.
static long page_out_run(int pagemap, uintptr_t start, uintptr_t end, uintptr_t page) {
    if (madvise((void *)start, end - start, MADV_PAGEOUT) != 0) return 0;
    long gone = 0;
    uint64_t entries[512];
    for (uintptr_t address = start; address < end;) {
        size_t count = (end - address) / page;
        if (count > 512) count = 512;
        ssize_t got = pread(pagemap, entries, count * sizeof(uint64_t), (off_t)(address / page * sizeof(uint64_t)));
        if (got <= 0) break;
        count = (size_t)got / sizeof(uint64_t);
        for (size_t i = 0; i < count; i++, address += page) {
            if ((entries[i] >> 63 & 1) == 0) gone += (long)page;
        }
    }
    return gone;
}

/// Pages out the runs of pages in [start, end) that /proc/self/pagemap shows present and still the file's
/// (bit 63 present, bit 61 file page: proc_pid_pagemap(5); in a private file mapping, a page not yet copied on
/// write); the bytes that left memory.
static long page_out_file_pages(int pagemap, uintptr_t start, uintptr_t end, uintptr_t page) {
    long advised = 0;
    uint64_t entries[512];
    uintptr_t run = 0, address = start;
    while (address < end) {
        size_t count = (end - address) / page;
        if (count > 512) count = 512;
        ssize_t got = pread(pagemap, entries, count * sizeof(uint64_t), (off_t)(address / page * sizeof(uint64_t)));
        if (got <= 0) break;
        count = (size_t)got / sizeof(uint64_t);
        for (size_t i = 0; i < count; i++, address += page) {
            int file = (entries[i] >> 63 & 1) && (entries[i] >> 61 & 1);
            if (file && run == 0) run = address;
            if (!file && run != 0) {
                advised += page_out_run(pagemap, run, address, page);
                run = 0;
            }
        }
    }
    if (run != 0) advised += page_out_run(pagemap, run, address, page);
    return advised;
}

struct writable_context {
    int pagemap;
    uintptr_t page;
    long advised;
};

static int visit_writable(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    struct writable_context *context = data;
    for (ElfW(Half) index = 0; index < info->dlpi_phnum; index++) {
        const ElfW(Phdr) *header = &info->dlpi_phdr[index];
        if (header->p_type != PT_LOAD || (header->p_flags & PF_W) == 0 || header->p_filesz == 0) continue;
        // Only whole pages that lie within the part read from the file (the rest is .bss, anonymous anyway).
        uintptr_t start = (info->dlpi_addr + header->p_vaddr + context->page - 1) & ~(context->page - 1);
        uintptr_t end = (info->dlpi_addr + header->p_vaddr + header->p_filesz) & ~(context->page - 1);
        if (start < end) context->advised += page_out_file_pages(context->pagemap, start, end, context->page);
    }
    return 0;
}
#endif

long bulwark_page_out_file_pages(uintptr_t start, uintptr_t end) {
#if defined(__linux__) && defined(__GLIBC__)
    int pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (pagemap < 0) return -1;
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    long advised = page_out_file_pages(pagemap, start & ~(page - 1), (end + page - 1) & ~(page - 1), page);
    close(pagemap);
    return advised;
#else
    (void)start;
    (void)end;
    return -1;
#endif
}

long bulwark_page_out_writable_segments(void) {
#if defined(__linux__) && defined(__GLIBC__)
    int pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (pagemap < 0) return -1;
    struct writable_context context = {pagemap, (uintptr_t)sysconf(_SC_PAGESIZE), 0};
    dl_iterate_phdr(visit_writable, &context);
    close(pagemap);
    return context.advised;
#else
    return -1;
#endif
}

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
