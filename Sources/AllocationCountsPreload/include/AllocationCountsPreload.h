#ifndef BULWARK_ALLOCATION_COUNTS_PRELOAD_H
#define BULWARK_ALLOCATION_COUNTS_PRELOAD_H
/// Counts the heap allocations of another process, for the MQTT benchmark's "allocations per message" (the hub's and
/// mosquitto's). Loaded with `LD_PRELOAD=libBulwarkAllocationCounts.so` and `BULWARK_ALLOCATION_COUNTS=<file>`, it
/// interposes malloc, calloc, realloc, posix_memalign, aligned_alloc and memalign, forwards each to glibc's own
/// `__libc_*` entry point and counts it in the file, which it maps shared: `BULWARK_ALLOCATION_SLOTS` slots of
/// `BULWARK_ALLOCATION_SLOT_BYTES` bytes, each starting with a little-endian 64-bit count. Each thread owns a slot
/// (a plain store to a cache line of its own, so counting costs no contention); threads beyond the last slot share
/// it with atomic adds. The total is the sum of the slots' counts, read by the benchmark while the process runs.
/// Allocations before the library's constructor ran (the loader's own) are not counted. Never linked into Bulwark.
#define BULWARK_ALLOCATION_SLOTS 4096
#define BULWARK_ALLOCATION_SLOT_BYTES 64
#endif
