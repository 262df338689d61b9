#ifndef BULWARK_ALLOCATION_COUNTER_H
#define BULWARK_ALLOCATION_COUNTER_H
/// Heap allocations made by this process so far (malloc, calloc, realloc, posix_memalign, aligned_alloc), counted
/// by wrappers that forward to glibc's own entry points. Linked into the benchmark only.
unsigned long bulwark_allocation_count(void);
/// Bytes of heap in use (glibc mallinfo2().uordblks), for memory figures; 0 elsewhere.
unsigned long bulwark_heap_in_use(void);
#endif
