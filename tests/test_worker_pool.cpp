// The worker pool: blocking work on its threads, each done in the loop's
// thread, once; shutdown; a long job never holds the loop.
#include "test_util.hpp" // first: the rings' pause point

#include "catch.hpp"

#include <microloop.hpp>

#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>

using namespace std::chrono;

TEST_CASE("worker_pool: a long job does not hold the loop; done runs in the loop's thread", "[pool][thread]") {
    microloop::loop<> loop;
    microloop::worker_pool<2, 4> pool(loop);
    REQUIRE_FALSE(pool.error());
    // The job ends only after the loop has ticked 5 times while it ran: if
    // the job held the loop, it would never see them (and give up after
    // about 20 s with -1). No timing is asserted.
    struct state {
        pthread_t loop_thread, worker_thread;
        std::atomic<int> ticks;
        int dones;
        bool done_on_loop, work_off_loop;
        microloop::work_event ev;
        microloop::loop<>* loop;
        microloop::timer_handle tick;
    } st;
    st.loop_thread = pthread_self();
    st.ticks.store(0);
    st.dones = 0;
    st.done_on_loop = st.work_off_loop = false;
    st.ev = microloop::work_event();
    st.loop = &loop;
    st.tick = loop.every(milliseconds(10), [&st](microloop::timer_event) { st.ticks.fetch_add(1); });
    REQUIRE(st.tick);
    REQUIRE_FALSE(pool.submit(
        [&st] {
            st.work_off_loop = !pthread_equal(pthread_self(), st.loop_thread);
            for (int waited = 0; st.ticks.load() < 5; ++waited) {
                if (waited == 20000) return -1;
                test::sleep_ms(1);
            }
            return 42;
        },
        [&st](microloop::work_event ev) {
            st.done_on_loop = pthread_equal(pthread_self(), st.loop_thread);
            st.ev = ev;
            ++st.dones;
            st.loop->cancel(st.tick);
        }));
    CHECK(pool.in_flight() == 1);
    CHECK_FALSE(loop.run()); // the timer is canceled by done; the pool has nothing left: run() ends
    CHECK(st.dones == 1);
    CHECK(st.ticks.load() >= 5);
    CHECK(st.done_on_loop);
    CHECK(st.work_off_loop);
    CHECK_FALSE(st.ev.status);
    CHECK(st.ev.result == 42);
    CHECK(pool.in_flight() == 0);
}

TEST_CASE("worker_pool: 1,000 submissions through 4 threads and a queue of 8, each done once", "[pool][thread]") {
    microloop::loop<> loop;
    typedef microloop::worker_pool<4, 8> pool_t;
    pool_t pool(loop);
    REQUIRE_FALSE(pool.error());
    const int total = 1000;
    struct state {
        pool_t* pool;
        int submitted, refused, done_count, wrong;
        unsigned char dones[1000];
        bool resubmit_refused;
    } st;
    st.pool = &pool;
    st.submitted = st.refused = st.done_count = st.wrong = 0;
    st.resubmit_refused = false;
    for (int i = 0; i < total; ++i) st.dones[i] = 0;
    struct job {
        static void submit(state* s) {
            const int id = s->submitted;
            microloop::error_code e = s->pool->submit(
                [id] { return static_cast<int64_t>(id) * 3; },
                [s, id](microloop::work_event ev) {
                    ++s->dones[id];
                    ++s->done_count;
                    if (ev.status || ev.result != static_cast<int64_t>(id) * 3) ++s->wrong;
                    // Every third done submits the next one itself: its slot is
                    // free already, so this works with the pool full.
                    if (id % 3 == 0 && s->submitted < 1000) submit(s);
                });
            if (e == microloop::errc::table_full) ++s->refused;
            else if (e) ++s->wrong;
            else ++s->submitted;
        }
    };
    while (st.submitted < total) {
        while (st.submitted < total) {
            int before = st.submitted;
            job::submit(&st);
            if (st.submitted == before) break; // full: let the loop catch up
        }
        REQUIRE_FALSE(loop.run_once(seconds(10)));
    }
    REQUIRE_FALSE(loop.run()); // until every done ran
    CHECK(st.submitted == total);
    CHECK(st.done_count == total);
    CHECK(st.wrong == 0);
    int once = 0;
    for (int i = 0; i < total; ++i) once += st.dones[i] == 1;
    CHECK(once == total);
    CHECK(st.refused > 0); // the queue of 8 did fill up
    CHECK(pool.in_flight() == 0);
}

TEST_CASE("worker_pool: a done may submit while the pool is full", "[pool][thread]") {
    microloop::loop<> loop;
    typedef microloop::worker_pool<1, 2> pool_t;
    pool_t pool(loop);
    struct state {
        pool_t* pool;
        int dones;
        microloop::error_code inner;
    } st = {&pool, 0, microloop::error_code()};
    REQUIRE_FALSE(pool.submit([] {}, [&st](microloop::work_event) {
        ++st.dones;
        CHECK(st.pool->in_flight() == 1); // this one is no longer counted; the other still is
        st.inner = st.pool->submit([] {}, [&st](microloop::work_event) { ++st.dones; });
    }));
    REQUIRE_FALSE(pool.submit([] { test::sleep_ms(20); }, [&st](microloop::work_event) { ++st.dones; }));
    CHECK(pool.submit([] {}, [](microloop::work_event) {}) == microloop::errc::table_full);
    REQUIRE_FALSE(loop.run());
    CHECK_FALSE(st.inner);
    CHECK(st.dones == 3);
}

TEST_CASE("worker_pool: shutdown lets running work finish and cancels what is queued", "[pool][thread]") {
    microloop::loop<> loop;
    typedef microloop::worker_pool<1, 8> pool_t;
    pool_t pool(loop);
    REQUIRE_FALSE(pool.error());
    struct state {
        std::atomic<bool> started;
        std::atomic<int> work_ran;
        int ok, canceled, other;
        int dones[8];
    } st;
    st.started.store(false);
    st.work_ran.store(0);
    st.ok = st.canceled = st.other = 0;
    for (int i = 0; i < 8; ++i) st.dones[i] = 0;
    for (int i = 0; i < 8; ++i)
        REQUIRE_FALSE(pool.submit(
            [&st, i] {
                if (i == 0) {
                    st.started.store(true);
                    test::sleep_ms(50);
                }
                st.work_ran.fetch_add(1);
                return i;
            },
            [&st, i](microloop::work_event ev) {
                ++st.dones[i];
                if (!ev.status && ev.result == i) ++st.ok;
                else if (ev.status == microloop::errc::canceled && ev.result == 0) ++st.canceled;
                else ++st.other;
            }));
    CHECK(pool.submit([] {}, [](microloop::work_event) {}) == microloop::errc::table_full);
    while (!st.started.load()) std::this_thread::yield();
    pool.shutdown(); // one thread, busy with job 0: jobs 1-7 are still queued
    CHECK(st.work_ran.load() == 1);
    CHECK(st.ok == 1);
    CHECK(st.canceled == 7);
    CHECK(st.other == 0);
    for (int i = 0; i < 8; ++i) CHECK(st.dones[i] == 1);
    CHECK(pool.in_flight() == 0);
    CHECK(loop.active() == 0);
    CHECK(pool.submit([] {}, [](microloop::work_event) {}) == microloop::errc::canceled);
    pool.shutdown(); // idempotent
    CHECK_FALSE(loop.run());
}

TEST_CASE("worker_pool: shutdown from inside a done callback; the destructor shuts down", "[pool][thread]") {
    microloop::loop<> loop;
    typedef microloop::worker_pool<2, 16> pool_t;
    struct counts {
        pool_t* pool;
        int dones, canceled;
    } n = {nullptr, 0, 0};
    {
        pool_t pool(loop);
        n.pool = &pool;
        for (int i = 0; i < 16; ++i)
            REQUIRE_FALSE(pool.submit([] { test::sleep_ms(1); }, [&n](microloop::work_event ev) {
                ++n.dones;
                if (ev.status == microloop::errc::canceled) ++n.canceled;
                if (n.dones == 1) n.pool->shutdown(); // runs every other done, here
            }));
        REQUIRE_FALSE(loop.run());
        CHECK(n.dones == 16);
        CHECK(pool.in_flight() == 0);
    }
    CHECK(n.canceled > 0);
    CHECK(loop.active() == 0);
    int late = 0;
    {
        pool_t pool(loop);
        for (int i = 0; i < 16; ++i)
            REQUIRE_FALSE(pool.submit([] { test::sleep_ms(1); }, [&late](microloop::work_event) { ++late; }));
    } // the destructor: each done once
    CHECK(late == 16);
    CHECK(loop.active() == 0);
}

TEST_CASE("worker_pool: null callables are refused; stall reports name the done", "[pool][thread]") {
    microloop::loop<> loop;
    microloop::worker_pool<1, 2> pool(loop);
    int64_t (*no_work)() = nullptr;
    void (*no_done)(microloop::work_event) = nullptr;
    CHECK(pool.submit(no_work, [](microloop::work_event) {}) == microloop::errc::bad_argument);
    CHECK(pool.submit([] {}, no_done) == microloop::errc::bad_argument);
    microloop::source_kind kind = microloop::source_kind::io;
    REQUIRE_FALSE(loop.on_stall(milliseconds(5), [&kind](const microloop::stall_report& r) { kind = r.kind; }));
    REQUIRE_FALSE(pool.submit([] {}, [](microloop::work_event) { test::sleep_ms(10); }));
    REQUIRE_FALSE(loop.run());
    CHECK(kind == microloop::source_kind::work);
    CHECK(std::string(microloop::source_kind_name(kind)) == "work");
}

namespace {

// Waits up to 5 s for `pid`; its exit status, or -1 (killed: it hung or crashed).
int child_status(pid_t pid) {
    int status = 0;
    pid_t r = 0;
    for (int i = 0; i < 250 && r == 0; ++i) {
        r = waitpid(pid, &status, WNOHANG);
        if (r == 0) test::sleep_ms(20);
    }
    if (r == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        return -1;
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

template <class Pred>
bool wait_for(Pred p, int ms = 5000) {
    for (int i = 0; i < ms && !p(); ++i) test::sleep_ms(1);
    return p();
}

} // namespace

// D1 submits into the slot its own job freed (the spare done storage), then
// polls; D2, finished too, runs inside that poll. Before the fix D2's slot
// was freed as well, with no done storage behind it, and D2's submit read the
// free list at index SIZE_MAX. Now D2's slot stays taken while D2 runs
// nested: the pool is full for it, and says so.
TEST_CASE("worker_pool: a done that submits at capacity and polls while another done runs inside the poll",
          "[pool][robust][thread]") {
    microloop::loop<> loop;
    typedef microloop::worker_pool<1, 2> pool_t;
    pool_t pool(loop);
    std::atomic<int> worked(0);
    struct state {
        pool_t* pool;
        microloop::loop<>* loop;
        int dones;
        size_t inner_in_flight;
        microloop::error_code outer, inner;
    } st = {&pool, &loop, 0, 0, microloop::error_code(), microloop::error_code()};
    REQUIRE_FALSE(pool.submit([&worked] { ++worked; }, [&st](microloop::work_event) {
        ++st.dones;
        st.outer = st.pool->submit([] {}, [&st](microloop::work_event) { ++st.dones; });
        st.loop->wake(); // the nested poll looks at the pool
        st.loop->poll();
    }));
    REQUIRE_FALSE(pool.submit([&worked] { ++worked; }, [&st](microloop::work_event) {
        ++st.dones;
        st.inner_in_flight = st.pool->in_flight();
        st.inner = st.pool->submit([] {}, [&st](microloop::work_event) { ++st.dones; });
    }));
    REQUIRE(wait_for([&worked] { return worked.load() == 2; }));
    test::sleep_ms(50); // both on the completion stack
    REQUIRE_FALSE(loop.run());
    CHECK_FALSE(st.outer);
    CHECK(st.inner_in_flight == pool.capacity());
    CHECK(st.inner == microloop::errc::table_full);
    CHECK(st.dones == 3);
    CHECK(pool.in_flight() == 0);
}

// Under ThreadSanitizer too: the child starts no thread.
TEST_CASE("fork: a pool job finished before fork() is not called back in the child after after_fork()",
          "[pool][robust][thread][fork]") {
    microloop::loop<> loop;
    typedef microloop::worker_pool<1, 2> pool_t;
    pool_t pool(loop);
    std::atomic<int> worked(0);
    int dones = 0;
    int64_t result = 0;
    REQUIRE_FALSE(pool.submit(
        [&worked] {
            ++worked;
            return 7;
        },
        [&](microloop::work_event ev) {
            ++dones;
            result = ev.result;
        }));
    REQUIRE(wait_for([&worked] { return worked.load() == 1; }));
    test::sleep_ms(50); // on the completion stack, not called back
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        int code = 0;
        if (loop.after_fork()) code |= 1;
        loop.wake();
        loop.poll(); // before the fix: the parent's entry, a cleared done called (a segfault)
        loop.wake();
        loop.poll();
        if (dones != 0) code |= 2;
        if (pool.in_flight() != 0) code |= 4; // before the fix: wrapped below zero
        if (pool.submit([] {}, [](microloop::work_event) {}) != microloop::errc::forked) code |= 8;
        _exit(code);
    }
    CHECK(child_status(pid) == 0);
    REQUIRE_FALSE(loop.run());
    CHECK(dones == 1);
    CHECK(result == 7);
}

// The child destroys its copy without after_fork() (as exit() would): the
// threads, the finished job A, the running job C and the queued job B are the
// parent's. Before the fix it called A's and B's done (a result, a cancel).
TEST_CASE("fork: a child that destroys an inherited pool without after_fork() runs none of its done callbacks",
          "[pool][robust][thread][fork]") {
    microloop::loop<> loop;
    typedef microloop::worker_pool<1, 4> pool_t;
    pool_t pool(loop);
    std::atomic<int> a_ran(0), c_started(0);
    std::atomic<bool> gate(false);
    int dones = 0;
    REQUIRE_FALSE(pool.submit([&a_ran] { ++a_ran; }, [&dones](microloop::work_event) { ++dones; }));
    REQUIRE(wait_for([&a_ran] { return a_ran.load() == 1; }));
    test::sleep_ms(50);
    REQUIRE_FALSE(pool.submit(
        [&] {
            ++c_started;
            while (!gate.load()) test::sleep_ms(1);
        },
        [&dones](microloop::work_event) { ++dones; }));
    REQUIRE(wait_for([&c_started] { return c_started.load() == 1; }));
    REQUIRE_FALSE(pool.submit([] {}, [&dones](microloop::work_event) { ++dones; }));
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        pool.~pool_t();
        _exit(dones);
    }
    CHECK(child_status(pid) == 0);
    gate.store(true);
    REQUIRE_FALSE(loop.run());
    CHECK(dones == 3);
    CHECK(pool.in_flight() == 0);
}

// A worker stopped between claiming a ring cell and giving it back, while
// the other worker runs job after job and the loop's pushes lap the ring.
// Before the fix, the lap found the stopped worker's cell not free yet and
// the push's assertion fired (without assertions, the job was lost).
TEST_CASE("worker_pool: a worker paused inside the ring's pop while the other laps it", "[pool][robust][thread]") {
    microloop::loop<> loop;
    typedef microloop::worker_pool<2, 2> pool_t;
    pool_t pool(loop);
    test::ring_pause& pause = test::ring_pause::get();
    pause.arm();
    std::atomic<int> ran(0);
    int dones = 0;
    REQUIRE_FALSE(pool.submit([&ran] { ++ran; }, [&dones](microloop::work_event) { ++dones; }));
    REQUIRE(pause.wait_paused(5000));
    for (int k = 0; k < 20; ++k) {
        REQUIRE_FALSE(pool.submit([&ran] { ++ran; }, [&dones](microloop::work_event) { ++dones; }));
        while (dones < k + 1) REQUIRE_FALSE(loop.run_once(seconds(30)));
    }
    CHECK(ran.load() == 20);
    pause.release();
    REQUIRE_FALSE(loop.run());
    CHECK(ran.load() == 21);
    CHECK(dones == 21);
}
