#ifndef BULWARK_CWORKINGSET_H
#define BULWARK_CWORKINGSET_H

#include <stddef.h>
#include <stdint.h>

/// A range of addresses, [start, end).
typedef struct {
    uintptr_t start;
    uintptr_t end;
} bulwark_range;

/// Drops this process's pages of the read-only load segments (PT_LOAD without PF_W) of every object the dynamic
/// linker has loaded, where they fall inside one of `allowed` (sorted, not overlapping). The `madvise` calls run
/// inside `dl_iterate_phdr`'s callback, under the loader's lock: no object can be closed and unmapped meanwhile, and
/// an object still being opened is not listed yet. Returns the bytes advised, or -1 where this cannot be done
/// (not glibc on Linux).
long bulwark_drop_readonly_segments(const bulwark_range *allowed, size_t count);

/// Pages out (`MADV_PAGEOUT`, Linux 5.4) this process's pages in [start, end) that are still the file's own page of
/// a mapping: present and a file page in /proc/self/pagemap, so never written. Unlike `MADV_DONTNEED`, paging out
/// never loses data: a page written between the pagemap read and the call is the process's own (anonymous) page
/// then, which the kernel keeps or swaps out. The kernel pages out only pages no other process maps, and only for a
/// process that owns the file or may write it (root, or the agent's own copy); elsewhere nothing happens. Returns
/// the bytes that left memory, or -1 where this cannot be done. (In a shared mapping a file page may hold writes;
/// paging it out writes them back first: nothing is lost either.)
long bulwark_page_out_file_pages(uintptr_t start, uintptr_t end);

/// The same over the writable load segments (PT_LOAD with PF_W, the part read from the file) of every object the
/// dynamic linker has loaded, inside `dl_iterate_phdr`'s callback: the clean pages of data (Swift's type metadata
/// and conformance records, read-only in substance but placed by the linker in the writable segment) that start-up
/// read and nothing wrote. Returns the bytes that left memory, or -1.
long bulwark_page_out_writable_segments(void);

#endif
