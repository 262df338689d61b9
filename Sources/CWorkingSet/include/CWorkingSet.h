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

#endif
