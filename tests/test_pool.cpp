// Several cores: mailbox edges (many posters, close() from a callback and
// racing posts), the worker pool, and loop groups.
#include "catch.hpp"

#include <microloop.hpp>

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>

#include "test_util.hpp"

using namespace std::chrono;

namespace {

// Big counts are divided by this: MICROLOOP_TEST_SCALE if set, else 1 on x86
// and 10 elsewhere (the armhf and mips CI runs are emulated by qemu-user).
int scale() {
    const char* s = getenv("MICROLOOP_TEST_SCALE");
    if (s && atoi(s) > 0) return atoi(s);
#if defined(__x86_64__) || defined(__i386__)
    return 1;
#else
    return 10;
#endif
}

// What one posting thread's items report to the loop thread.
struct order_log {
    pthread_t loop_thread;
    long got[4];
    long last[4];
    bool in_order, on_loop_thread;
    void init() {
        loop_thread = pthread_self();
        for (int i = 0; i < 4; ++i) {
            got[i] = 0;
            last[i] = -1;
        }
        in_order = on_loop_thread = true;
    }
    void saw(int who, long seq) {
        if (!pthread_equal(pthread_self(), loop_thread)) on_loop_thread = false;
        if (seq != last[who] + 1) in_order = false; // also catches an item run twice
        last[who] = seq;
        ++got[who];
    }
};

struct item {
    order_log* log;
    int who;
    int seq;
    void operator()() const { log->saw(who, seq); }
};

} // namespace

TEST_CASE("mailbox: 4 threads post 100,000 items each: all run once, in order per thread", "[pool][thread]") {
    microloop::loop<> loop;
    microloop::mailbox<256> box(loop);
    const int threads = 4;
    const int per_thread = 100000 / scale();
    order_log log;
    log.init();
    std::atomic<long> refused(0);
    std::thread posters[threads];
    for (int t = 0; t < threads; ++t)
        posters[t] = std::thread([&box, &log, &refused, t, per_thread] {
            long mine = 0;
            for (int i = 0; i < per_thread; ++i) {
                item m = {&log, t, i};
                while (box.post(m) == microloop::errc::table_full) { // refused, not blocked: retry
                    ++mine;
                    std::this_thread::yield();
                }
            }
            refused.fetch_add(mine);
        });
    long total = 0;
    while (total < long(threads) * per_thread) {
        REQUIRE_FALSE(loop.run_once(seconds(10)));
        total = log.got[0] + log.got[1] + log.got[2] + log.got[3];
    }
    for (int t = 0; t < threads; ++t) posters[t].join();
    REQUIRE_FALSE(loop.poll()); // nothing more arrives
    for (int t = 0; t < threads; ++t) {
        CHECK(log.got[t] == per_thread);
        CHECK(log.last[t] == per_thread - 1);
    }
    CHECK(log.in_order);
    CHECK(log.on_loop_thread);
    INFO("mailbox full, post retried: " << refused.load() << " times");
    CHECK(refused.load() >= 0);
}

TEST_CASE("mailbox: close() from inside a posted callback drops the rest", "[pool][thread]") {
    microloop::loop<> loop;
    microloop::mailbox<16> box(loop);
    struct state {
        microloop::mailbox<16>* box;
        int ran;
        size_t dropped;
    } st = {&box, 0, 99};
    for (int i = 0; i < 10; ++i)
        REQUIRE_FALSE(box.post([&st, i] {
            ++st.ran;
            if (i == 2) st.dropped = st.box->close();
        }));
    CHECK(loop.active() == 1);
    REQUIRE_FALSE(loop.poll());
    CHECK(st.ran == 3);
    CHECK(st.dropped == 7);
    CHECK(box.post([&st] { ++st.ran; }) == microloop::errc::canceled);
    CHECK(box.close() == 0);
    CHECK(loop.active() == 0);
    CHECK_FALSE(loop.run()); // nothing keeps it running
    CHECK(st.ran == 3);
}

TEST_CASE("mailbox: posts racing close(): each one ran, was refused or was counted as dropped", "[pool][thread]") {
    for (int variant = 0; variant < 2; ++variant) {
        CAPTURE(variant); // 0: close() between iterations; 1: from inside a posted callback
        microloop::loop<> loop;
        microloop::mailbox<64> box(loop);
        const int threads = 4;
        order_log log;
        log.init();
        std::atomic<long> accepted(0), canceled(0);
        std::atomic<bool> go(false);
        std::thread posters[threads];
        for (int t = 0; t < threads; ++t)
            posters[t] = std::thread([&, t] {
                while (!go.load()) std::this_thread::yield();
                long ok = 0;
                for (int i = 0;; ++i) {
                    item m = {&log, t, i};
                    microloop::error_code e;
                    while ((e = box.post(m)) == microloop::errc::table_full) std::this_thread::yield();
                    if (e == microloop::errc::canceled) break; // the mailbox is closed: every later post too
                    if (e) return;                              // unexpected: shows as a count mismatch
                    ++ok;
                }
                accepted.fetch_add(ok);
                canceled.fetch_add(1);
            });
        go.store(true);
        size_t dropped = 0;
        const long close_after = 20000 / scale();
        bool closed = false;
        while (!closed) {
            REQUIRE_FALSE(loop.run_once(seconds(10)));
            long total = log.got[0] + log.got[1] + log.got[2] + log.got[3];
            if (total < close_after) continue;
            if (variant == 0) {
                dropped = box.close();
                closed = true;
            } else {
                struct closer {
                    microloop::mailbox<64>* box;
                    size_t* dropped;
                    void operator()() const { *dropped = box->close(); }
                };
                closer c = {&box, &dropped};
                while (box.post(c) == microloop::errc::table_full) REQUIRE_FALSE(loop.poll());
                while (loop.active() > 0) REQUIRE_FALSE(loop.run_once(seconds(10)));
                closed = true;
            }
        }
        for (int t = 0; t < threads; ++t) posters[t].join();
        REQUIRE_FALSE(loop.poll());
        long ran = log.got[0] + log.got[1] + log.got[2] + log.got[3];
        CHECK(canceled.load() == threads);
        CHECK(accepted.load() == ran + long(dropped));
        CHECK(log.in_order);
        CHECK(log.on_loop_thread);
        CHECK(loop.active() == 0);
    }
}

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

typedef microloop::loop_group<4, microloop::loop<8, 8> > group4;

struct echo_fixture {
    group4* group;
    test::fd_pair pair[4];
    pthread_t thread[4];
    std::atomic<int> ready;
    microloop::io_handle watcher[4];
};

} // namespace

TEST_CASE("loop_group: 4 loops on 4 threads serve their own sockets at once; stop() joins them", "[pool][thread]") {
    group4 group;
    echo_fixture fx;
    fx.group = &group;
    fx.ready.store(0);
    for (int i = 0; i < 4; ++i) {
        fx.pair[i] = test::make_socketpair();
        REQUIRE(fx.pair[i].ok());
    }
    CHECK(group.size() == 0);
    CHECK(group.post(0, [] {}) == microloop::errc::canceled); // not started
    REQUIRE_FALSE(group.start(4));
    CHECK(group.size() == 4);
    CHECK(group.start(4) == microloop::errc::bad_argument); // already running
    CHECK(group.post(4, [] {}) == microloop::errc::bad_argument);
    for (size_t i = 0; i < 4; ++i)
        REQUIRE_FALSE(group.post(i, [&fx, i] {
            fx.thread[i] = pthread_self();
            // An echo server on this loop's end of pair i.
            fx.watcher[i] = fx.group->loop(i).watch(fx.pair[i].a.get(), microloop::readable, [](microloop::io_event ev) {
                char buf[64];
                ssize_t n = read(ev.fd, buf, sizeof buf);
                if (n > 0 && write(ev.fd, buf, static_cast<size_t>(n)) != n) return;
            });
            fx.ready.fetch_add(fx.watcher[i] ? 1 : 100);
        }));
    while (fx.ready.load() < 4) std::this_thread::yield();
    REQUIRE(fx.ready.load() == 4);
    for (int i = 0; i < 4; ++i) {
        CHECK_FALSE(pthread_equal(fx.thread[i], pthread_self()));
        for (int k = 0; k < i; ++k) CHECK_FALSE(pthread_equal(fx.thread[i], fx.thread[k]));
    }
    // Every round: a byte to each of the 4 loops at once, then the 4 echoes.
    const int rounds = 2000 / scale();
    int echoed = 0;
    for (int r = 0; r < rounds; ++r) {
        char c = static_cast<char>('a' + r % 26);
        for (int i = 0; i < 4; ++i) REQUIRE(test::put_byte(fx.pair[i].b.get(), c));
        for (int i = 0; i < 4; ++i) {
            struct pollfd p = {fx.pair[i].b.get(), POLLIN, 0};
            REQUIRE(poll(&p, 1, 10000) == 1);
            char got = 0;
            REQUIRE(read(fx.pair[i].b.get(), &got, 1) == 1);
            echoed += got == c;
        }
    }
    CHECK(echoed == 4 * rounds);
    int64_t t0 = test::now_ns();
    CHECK_FALSE(group.stop());
    int64_t took_ms = (test::now_ns() - t0) / 1000000;
    CHECK(took_ms < 2000);
    CHECK(group.size() == 0);
    for (size_t i = 0; i < 4; ++i) CHECK_FALSE(group.result(i));
    CHECK(group.post(0, [] {}) == microloop::errc::canceled);
    CHECK_FALSE(group.stop()); // again: nothing to do
    // A group starts again after stop().
    REQUIRE_FALSE(group.start(2, true));
    CHECK(group.size() == 2);
    CHECK_FALSE(group.stop());
}

TEST_CASE("loop_group: default size, posts from many threads, stop() from the main loop's signal callback",
          "[pool][thread]") {
    typedef microloop::loop_group<64, microloop::loop<8, 8>, 64> group_t;
    static group_t group; // large: not on the stack
    REQUIRE_FALSE(group.start());
    size_t cpus = microloop::online_cpus();
    CHECK(group.size() == (cpus < 64 ? cpus : 64));
    const int threads = 4, per_thread = 20000 / scale();
    std::atomic<long> ran(0), accepted(0);
    std::thread posters[threads];
    for (int t = 0; t < threads; ++t)
        posters[t] = std::thread([&, t] {
            long ok = 0;
            for (int i = 0; i < per_thread; ++i) {
                microloop::error_code e;
                while ((e = group.post(static_cast<size_t>(i + t) % group.size(), [&ran] { ran.fetch_add(1); })) ==
                       microloop::errc::table_full)
                    std::this_thread::yield();
                if (!e) ++ok;
            }
            accepted.fetch_add(ok);
        });
    for (int t = 0; t < threads; ++t) posters[t].join();
    CHECK(accepted.load() == long(threads) * per_thread);
    while (ran.load() < accepted.load()) std::this_thread::yield();

    static microloop::loop<> main_loop;
    struct outcome {
        bool stopped;
        microloop::error_code result;
    } out = {false, microloop::error_code(microloop::errc::system)};
    auto sig = main_loop.on_signal(SIGUSR2, [&out](microloop::signal_event) {
        out.result = group.stop();
        out.stopped = true;
        main_loop.stop();
    });
    REQUIRE(sig);
    REQUIRE(kill(getpid(), SIGUSR2) == 0);
    auto guard = main_loop.after(seconds(10), [](microloop::timer_event) { main_loop.stop(); });
    REQUIRE_FALSE(main_loop.run());
    CHECK(out.stopped);
    CHECK_FALSE(out.result);
    CHECK(group.size() == 0);
    main_loop.cancel(guard);
    main_loop.unwatch(sig);
}
