// lock_memory() and unlock_memory(): the process's pages locked, or the
// kernel's reason why not.
#include "catch.hpp"

#include <microloop/memory.hpp>

#include <errno.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/resource.h>

// The sanitizers' runtimes turn mlockall() into a no-op (they would lock
// terabytes of shadow memory), so residency can only be checked without them.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define MICROLOOP_TEST_MLOCK_IS_NOOP 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define MICROLOOP_TEST_MLOCK_IS_NOOP 1
#endif
#endif

TEST_CASE("lock_memory locks the process's pages or says why not", "[memory]") {
    microloop::error_code e = microloop::lock_memory();
    if (e) {
        // Without CAP_IPC_LOCK and with a small RLIMIT_MEMLOCK it must fail
        // cleanly, with the reason from the kernel.
        CHECK(e == microloop::errc::system);
        CHECK((e.sys() == EPERM || e.sys() == ENOMEM || e.sys() == EAGAIN));
        return;
    }
#ifdef MICROLOOP_TEST_MLOCK_IS_NOOP
    CHECK_FALSE(microloop::unlock_memory());
    return;
#endif
    // Locked: a fresh mapping is resident at once (MCL_FUTURE).
    const size_t len = 4 * 4096;
    void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE(p != MAP_FAILED);
    unsigned char vec[4];
    REQUIRE(mincore(p, len, vec) == 0);
    for (int i = 0; i < 4; ++i) CHECK((vec[i] & 1));
    munmap(p, len);
    CHECK_FALSE(microloop::unlock_memory());
}
