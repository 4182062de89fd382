// Posting work to a loop from other threads, and memory locking.
#include "catch.hpp"

#include <microloop.hpp>
#include <microloop/mailbox.hpp>
#include <microloop/memory.hpp>

#include <sys/mman.h>
#include <sys/resource.h>

#include <atomic>
#include <chrono>
#include <thread>

using namespace std::chrono;

// The sanitizers' runtimes turn mlockall() into a no-op (they would lock
// terabytes of shadow memory), so residency can only be checked without them.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define MICROLOOP_TEST_MLOCK_IS_NOOP 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define MICROLOOP_TEST_MLOCK_IS_NOOP 1
#endif
#endif

TEST_CASE("mailbox: posts from several threads all run, in the loop's thread, in order per poster", "[thread]") {
    microloop::loop<> loop;
    // A message is a pointer and two ints: 12 or 16 bytes, more than the
    // default two pointers on 32-bit targets, so the slot size is given.
    microloop::mailbox<64, 16> box(loop);
    const int threads = 4, per_thread = 2000;
    struct state {
        std::thread::id loop_thread;
        int got;
        int last[4];
        bool in_order, on_loop_thread;
    } st = {std::this_thread::get_id(), 0, {-1, -1, -1, -1}, true, true};
    struct msg {
        state* st;
        int who, seq;
        void operator()() const {
            if (std::this_thread::get_id() != st->loop_thread) st->on_loop_thread = false;
            if (seq != st->last[who] + 1) st->in_order = false;
            st->last[who] = seq;
            ++st->got;
        }
    };
    std::atomic<int> refused(0);
    std::thread workers[threads];
    for (int t = 0; t < threads; ++t)
        workers[t] = std::thread([&box, &st, &refused, t] {
            for (int i = 0; i < per_thread; ++i) {
                msg m = {&st, t, i};
                // A full mailbox refuses instead of blocking: retry.
                while (box.post(m) == microloop::errc::table_full) {
                    refused.fetch_add(1);
                    std::this_thread::yield();
                }
            }
        });
    while (st.got < threads * per_thread) REQUIRE_FALSE(loop.run_once(seconds(10)));
    for (int t = 0; t < threads; ++t) workers[t].join();
    CHECK(st.got == threads * per_thread);
    CHECK(st.in_order);
    CHECK(st.on_loop_thread);
}

TEST_CASE("mailbox: a full mailbox refuses the post and recovers", "[thread]") {
    microloop::loop<> loop;
    microloop::mailbox<4> box(loop);
    int ran = 0;
    for (int i = 0; i < 4; ++i) REQUIRE_FALSE(box.post([&ran] { ++ran; }));
    CHECK(box.post([&ran] { ++ran; }) == microloop::errc::table_full);
    REQUIRE_FALSE(loop.poll());
    CHECK(ran == 4);
    CHECK_FALSE(box.post([&ran] { ++ran; }));
    REQUIRE_FALSE(loop.poll());
    CHECK(ran == 5);
}

TEST_CASE("mailbox: a post wakes a loop blocked with nothing else to do", "[thread]") {
    microloop::loop<> loop;
    microloop::mailbox<> box(loop);
    bool stopped_by_post = false;
    std::thread poster([&] {
        std::this_thread::sleep_for(milliseconds(50));
        box.post([&] {
            stopped_by_post = true;
            loop.stop();
        });
    });
    // The mailbox keeps run() running although no fd or timer exists.
    CHECK(loop.active() == 1);
    CHECK_FALSE(loop.run());
    poster.join();
    CHECK(stopped_by_post);
    box.close();
    CHECK(loop.active() == 0);
    CHECK_FALSE(loop.run()); // returns at once: nothing left
}

TEST_CASE("mailbox: posting more than its capacity runs everything over later iterations", "[thread]") {
    microloop::loop<> loop;
    microloop::mailbox<8> box(loop);
    int ran = 0;
    int posted = 0;
    // Refill as the loop drains: the drain is bounded per wake-up and comes
    // back for the rest.
    for (int round = 0; round < 10; ++round) {
        while (!box.post([&ran] { ++ran; })) ++posted;
        REQUIRE_FALSE(loop.poll());
    }
    while (ran < posted) REQUIRE_FALSE(loop.run_once(seconds(1)));
    CHECK(ran == posted);
    CHECK(posted >= 80);
}

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
