// No heap after construction: every global operator new of this binary is
// replaced by a counting one, and the count is taken only inside a window
// around the code under test (Catch2 itself allocates).
#include <microloop.hpp>

#include <stdlib.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <new>

#include "catch.hpp"
#include "test_util.hpp"

namespace {

std::atomic<bool> counting(false);
std::atomic<long> allocations(0);

void* counted_alloc(size_t n) {
    if (counting.load(std::memory_order_relaxed)) allocations.fetch_add(1, std::memory_order_relaxed);
    return malloc(n ? n : 1);
}

#if defined(__cpp_aligned_new)
void* counted_aligned_alloc(size_t n, std::align_val_t al) {
    if (counting.load(std::memory_order_relaxed)) allocations.fetch_add(1, std::memory_order_relaxed);
    size_t a = static_cast<size_t>(al) < sizeof(void*) ? sizeof(void*) : static_cast<size_t>(al);
    void* p = nullptr;
    return posix_memalign(&p, a, n ? n : 1) == 0 ? p : nullptr;
}
#endif

// Out of line: inlined into a delete-expression, free() would meet a pointer
// from operator new and gcc would warn (-Wmismatched-new-delete).
__attribute__((noinline)) void counted_free(void* p) { free(p); }

// The window: allocations counted between open() and close().
struct alloc_window {
    alloc_window() {
        allocations.store(0);
        counting.store(true);
    }
    long close() {
        counting.store(false);
        return allocations.load();
    }
};

} // namespace

// Out of line, every one: a memory checker that replaces operator new and
// delete (valgrind does) then sees every call, never half of a pair.
#define ML_TEST_NOINLINE __attribute__((noinline))

// operator new must not return null; with -fno-exceptions it cannot throw.
static void* or_bad_alloc(void* p) {
    if (!p) {
#if defined(__cpp_exceptions) || defined(__EXCEPTIONS)
        throw std::bad_alloc();
#else
        abort();
#endif
    }
    return p;
}

ML_TEST_NOINLINE void* operator new(size_t n) {
    return or_bad_alloc(counted_alloc(n));
}
ML_TEST_NOINLINE void* operator new[](size_t n) {
    return or_bad_alloc(counted_alloc(n));
}
ML_TEST_NOINLINE void* operator new(size_t n, const std::nothrow_t&) noexcept { return counted_alloc(n); }
ML_TEST_NOINLINE void* operator new[](size_t n, const std::nothrow_t&) noexcept { return counted_alloc(n); }
ML_TEST_NOINLINE void operator delete(void* p) noexcept { counted_free(p); }
ML_TEST_NOINLINE void operator delete[](void* p) noexcept { counted_free(p); }
ML_TEST_NOINLINE void operator delete(void* p, const std::nothrow_t&) noexcept { counted_free(p); }
ML_TEST_NOINLINE void operator delete[](void* p, const std::nothrow_t&) noexcept { counted_free(p); }
#if defined(__cpp_sized_deallocation)
ML_TEST_NOINLINE void operator delete(void* p, size_t) noexcept { counted_free(p); }
ML_TEST_NOINLINE void operator delete[](void* p, size_t) noexcept { counted_free(p); }
#endif
#if defined(__cpp_aligned_new)
ML_TEST_NOINLINE void* operator new(size_t n, std::align_val_t al) {
    return or_bad_alloc(counted_aligned_alloc(n, al));
}
ML_TEST_NOINLINE void* operator new[](size_t n, std::align_val_t al) {
    return or_bad_alloc(counted_aligned_alloc(n, al));
}
ML_TEST_NOINLINE void* operator new(size_t n, std::align_val_t al, const std::nothrow_t&) noexcept {
    return counted_aligned_alloc(n, al);
}
ML_TEST_NOINLINE void* operator new[](size_t n, std::align_val_t al, const std::nothrow_t&) noexcept {
    return counted_aligned_alloc(n, al);
}
ML_TEST_NOINLINE void operator delete(void* p, std::align_val_t) noexcept { counted_free(p); }
ML_TEST_NOINLINE void operator delete[](void* p, std::align_val_t) noexcept { counted_free(p); }
ML_TEST_NOINLINE void operator delete(void* p, size_t, std::align_val_t) noexcept { counted_free(p); }
ML_TEST_NOINLINE void operator delete[](void* p, size_t, std::align_val_t) noexcept { counted_free(p); }
ML_TEST_NOINLINE void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { counted_free(p); }
ML_TEST_NOINLINE void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { counted_free(p); }
#endif

using namespace std::chrono;
using microloop::io_event;
using microloop::timer_event;

namespace {

typedef microloop::loop<64, 64> big_loop;

struct workload {
    enum { fds = 50, timers = 60 };
    big_loop loop;
    test::fd_pair pair[fds];
    microloop::io_handle io[fds];
    microloop::timer_handle timer[timers];
    long reads, fires, stalls, errors;
};

void on_readable(workload* w, io_event ev) {
    ++w->reads;
    char buf[64];
    while (read(ev.fd, buf, sizeof buf) > 0) {
    }
}

} // namespace

// Whether our operator new is the one in use: a memory checker such as
// valgrind replaces it with its own, and then nothing can be counted.
static bool counting_works() {
    alloc_window win;
    void* volatile p = ::operator new(16);
    ::operator delete(p);
    int* volatile q = new int[4];
    delete[] q;
    return win.close() == 2;
}

TEST_CASE("the counting allocator sees allocations", "[alloc]") {
    if (!counting_works()) WARN("operator new is replaced by the tool running the tests: allocations are not counted");
    else SUCCEED();
}

TEST_CASE("a running loop never allocates", "[alloc]") {
    // Constructed (and its fds made) before the window opens.
    std::unique_ptr<workload> owner(new workload);
    workload* w = owner.get();
    w->reads = w->fires = w->stalls = w->errors = 0;
    for (int i = 0; i < workload::fds; ++i) {
        w->pair[i] = test::make_socketpair();
        REQUIRE(w->pair[i].ok());
    }

    alloc_window win;
    // Capturing lambdas, function pointers and functors alike.
    if (w->loop.on_stall(seconds(10), [w](const microloop::stall_report&) { ++w->stalls; })) ++w->errors;
    for (int i = 0; i < workload::fds; ++i) {
        w->io[i] = w->loop.watch(w->pair[i].a.get(), microloop::readable, [w](io_event ev) { on_readable(w, ev); });
        if (!w->io[i]) ++w->errors;
    }
    for (int i = 0; i < workload::timers; ++i) {
        if (i % 2)
            w->timer[i] = w->loop.every(microseconds(500 + 100 * i), [w](timer_event) { ++w->fires; });
        else
            w->timer[i] = w->loop.after(microseconds(200 * i), [w](timer_event ev) {
                ++w->fires;
                w->loop.rearm(ev.handle, milliseconds(1)); // kept alive from inside
            });
        if (!w->timer[i]) ++w->errors;
    }
    for (int round = 0; round < 200; ++round) {
        for (int i = round % 3; i < workload::fds; i += 3) test::put_byte(w->pair[i].b.get());
        if (w->loop.run_once(milliseconds(5))) ++w->errors;
        if (round % 10 == 0) {
            int k = round / 10;
            // Interest changes, removal and re-adding, cancel and re-arm.
            if (w->loop.modify(w->io[k], microloop::readable | microloop::writable)) ++w->errors;
            if (w->loop.modify(w->io[k], microloop::readable)) ++w->errors;
            if (w->loop.unwatch(w->io[k])) ++w->errors;
            w->io[k] = w->loop.watch(w->pair[k].a.get(), microloop::readable, [w](io_event ev) { on_readable(w, ev); });
            if (!w->io[k]) ++w->errors;
            if (w->loop.cancel(w->timer[k])) ++w->errors;
            w->timer[k] = w->loop.every(milliseconds(1), [w](timer_event) { ++w->fires; });
            if (!w->timer[k]) ++w->errors;
            if (w->loop.rearm(w->timer[k + 20], milliseconds(2))) ++w->errors;
            (void)w->loop.remaining(w->timer[k + 30]);
        }
        if (round % 50 == 0) w->loop.wake();
        w->loop.poll();
    }
    // Failures allocate nothing either.
    if (!w->loop.watch(-1, microloop::readable, [w](io_event ev) { on_readable(w, ev); }).error()) ++w->errors;
    if (!w->loop.unwatch(microloop::io_handle())) ++w->errors;
    for (int i = 0; i < workload::fds; ++i)
        if (w->loop.unwatch(w->io[i])) ++w->errors;
    for (int i = 0; i < workload::timers; ++i)
        if (w->loop.cancel(w->timer[i])) ++w->errors;
    long allocated = win.close();

    if (counting_works()) CHECK(allocated == 0);
    CHECK(w->errors == 0);
    CHECK(w->reads > 200);
    CHECK(w->fires > 60);
    CHECK(w->loop.active() == 0);
}

namespace {

typedef microloop::worker_pool<2, 8> alloc_pool;
typedef microloop::loop_group<2, microloop::loop<8, 8> > alloc_group;

struct pool_workload {
    microloop::loop<> loop;
    alloc_pool pool;
    microloop::mailbox<16> box;
    alloc_group group;
    std::atomic<long> group_ran;
    long submitted, dones, canceled, posted, errors;
    pool_workload() : pool(loop), box(loop), group_ran(0), submitted(0), dones(0), canceled(0), posted(0), errors(0) {}

    void submit() {
        pool_workload* self = this;
        microloop::error_code e = pool.submit([] { return 7; }, [self](microloop::work_event ev) {
            ++self->dones;
            if (ev.status == microloop::errc::canceled) ++self->canceled;
            else if (ev.status || ev.result != 7) ++self->errors;
            if (self->submitted < 200) self->submit(); // from inside done, at capacity
        });
        if (!e) ++submitted;
        else if (e != microloop::errc::table_full) ++errors;
    }
};

} // namespace

TEST_CASE("worker_pool, mailbox and loop_group never allocate after construction", "[alloc][pool]") {
    std::unique_ptr<pool_workload> owner(new pool_workload); // threads and fds made here
    pool_workload* w = owner.get();
    REQUIRE_FALSE(w->pool.error());
    REQUIRE_FALSE(w->group.start(2)); // threads and loops made here

    alloc_window win;
    while (w->submitted < 200) {
        w->submit();
        if (w->loop.run_once(milliseconds(100))) ++w->errors;
    }
    for (int i = 0; i < 8; ++i) w->submit();       // some left queued for shutdown
    for (int i = 0; i < 10; ++i) {
        if (!w->box.post([w] { ++w->posted; })) continue;
        ++w->errors;
    }
    for (size_t i = 0; i < 200; ++i) {
        pool_workload* self = w;
        while (w->group.post(i % 2, [self] { self->group_ran.fetch_add(1); }) == microloop::errc::table_full) {
        }
    }
    while (w->group_ran.load() < 200) {
    }
    if (w->loop.poll()) ++w->errors;
    w->pool.shutdown();
    w->box.close();
    if (w->group.stop()) ++w->errors;
    long allocated = win.close();

    if (counting_works()) CHECK(allocated == 0);
    CHECK(w->errors == 0);
    CHECK(w->dones == w->submitted);
    CHECK(w->posted == 10);
    CHECK(w->group_ran.load() == 200);
}
