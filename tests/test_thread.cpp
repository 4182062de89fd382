// wake() and stop() from other threads reach a loop blocked in select().
#include <microloop.hpp>

#include <atomic>
#include <chrono>
#include <thread>

#include "catch.hpp"
#include "test_util.hpp"

using namespace std::chrono;

namespace {

typedef microloop::loop<4, 4> small_loop;

// Calls f after `ms` milliseconds on another thread; joined on destruction.
struct later {
    std::thread t;
    template <class F>
    later(int ms, F f) : t([ms, f] {
                             test::sleep_ms(ms);
                             f();
                         }) {}
    ~later() { t.join(); }
};

} // namespace

TEST_CASE("wake() from another thread ends a run_once() that waits forever", "[thread]") {
    small_loop loop;
    int64_t t0 = test::now_ns();
    // Catch2 assertions belong to the test's own thread: the waker only
    // records its result.
    std::atomic<bool> woke_ok(false);
    {
        later waker(50, [&loop, &woke_ok] { woke_ok.store(!loop.wake()); });
        CHECK(!loop.run_once()); // nothing watched, no timer: only wake() ends it
    }
    CHECK(woke_ok.load());
    CHECK(test::now_ns() - t0 >= 40000000);

    // Many wake()s coalesce into one pending byte; none is lost after that.
    for (int i = 0; i < 1000; ++i) CHECK(!loop.wake());
    CHECK(!loop.run_once());
    {
        later waker(20, [&loop] { loop.wake(); });
        CHECK(!loop.run_once());
    }
}

TEST_CASE("stop() from another thread ends run()", "[thread]") {
    small_loop loop;
    test::fd_pair p = test::make_pipe();
    REQUIRE(p.ok());
    // A watcher that never fires keeps run() running until stop().
    REQUIRE(loop.watch(p.a.get(), microloop::readable, [](microloop::io_event) {}));
    int64_t t0 = test::now_ns();
    {
        later stopper(50, [&loop] { loop.stop(); });
        CHECK(!loop.run());
    }
    CHECK(test::now_ns() - t0 >= 40000000);

    // And a blocked run_once(); the stop is used up by it, not left to make
    // every later wait return at once.
    {
        later stopper(30, [&loop] { loop.stop(); });
        CHECK(!loop.run_once());
    }
    t0 = test::now_ns();
    CHECK(!loop.run_once(milliseconds(30)));
    CHECK(test::now_ns() - t0 >= 25000000);
}

TEST_CASE("wake() from many threads while the loop runs", "[thread]") {
    small_loop loop;
    // A watcher that never fires keeps run() going until the last thread's
    // stop() (which may come before run() starts: then it returns at once).
    test::fd_pair p = test::make_pipe();
    REQUIRE(p.ok());
    microloop::io_handle idle = loop.watch(p.a.get(), microloop::readable, [](microloop::io_event) {});
    REQUIRE(idle);
    std::atomic<int> done(0);
    const int threads = 4, per_thread = 2000;
    struct ctx {
        small_loop* loop;
        std::atomic<int>* done;
    } c = {&loop, &done};
    std::thread t[threads];
    for (int i = 0; i < threads; ++i)
        t[i] = std::thread([&c] {
            for (int k = 0; k < per_thread; ++k) c.loop->wake();
            if (c.done->fetch_add(1) + 1 == threads) c.loop->stop();
        });
    CHECK(!loop.run());
    for (int i = 0; i < threads; ++i) t[i].join();
    CHECK(done.load() == threads);
    // Nothing is left pending that would make the loop spin.
    loop.run_once(milliseconds(1)); // consumes the last byte, if any
    int64_t t0 = test::now_ns();
    CHECK(!loop.run_once(milliseconds(30)));
    CHECK(test::now_ns() - t0 >= 25000000);
}
