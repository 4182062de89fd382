/* tests/bench/heapcount.c - LD_PRELOAD allocation counter for `bench heap`.
 *
 * Counts every call that hands out heap memory (malloc, calloc, realloc,
 * memalign, posix_memalign, aligned_alloc, valloc, pvalloc; C++ operator new
 * goes through malloc) and the bytes asked for, then forwards to glibc's own
 * allocator. The benchmark reads the totals through heapcount_read(), found
 * with dlsym(), before and after each phase.
 *
 *   cc -O2 -shared -fPIC -o heapcount.so heapcount.c
 *   LD_PRELOAD=./heapcount.so ./bench heap ...
 */
#include <errno.h>
#include <stddef.h>

extern void* __libc_malloc(size_t);
extern void* __libc_calloc(size_t, size_t);
extern void* __libc_realloc(void*, size_t);
extern void* __libc_memalign(size_t, size_t);
extern void __libc_free(void*);

static unsigned long calls, bytes;

static void count(size_t n) {
    __atomic_add_fetch(&calls, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&bytes, n, __ATOMIC_RELAXED);
}

void heapcount_read(unsigned long* c, unsigned long* b) {
    *c = __atomic_load_n(&calls, __ATOMIC_RELAXED);
    *b = __atomic_load_n(&bytes, __ATOMIC_RELAXED);
}

void* malloc(size_t n) {
    count(n);
    return __libc_malloc(n);
}
void* calloc(size_t k, size_t n) {
    count(k * n);
    return __libc_calloc(k, n);
}
void* realloc(void* p, size_t n) {
    count(n);
    return __libc_realloc(p, n);
}
void free(void* p) { __libc_free(p); }
void* memalign(size_t a, size_t n) {
    count(n);
    return __libc_memalign(a, n);
}
void* aligned_alloc(size_t a, size_t n) {
    count(n);
    return __libc_memalign(a, n);
}
int posix_memalign(void** out, size_t a, size_t n) {
    void* p;
    count(n);
    p = __libc_memalign(a, n);
    if (!p) return ENOMEM;
    *out = p;
    return 0;
}
void* valloc(size_t n) {
    count(n);
    return __libc_memalign(4096, n);
}
void* pvalloc(size_t n) {
    count(n);
    return __libc_memalign(4096, (n + 4095) & ~(size_t)4095);
}
