// Promises that must hold for the life of a device: counters that wrap,
// clocks read at the wrong moment, callbacks that throw, fork(), periods that
// round to nothing, tables used to the last slot. Each test here failed
// before the fix it covers. Wrap paths are reached in milliseconds by
// starting the counters near their limits (detail::test_access).
#include <microloop.hpp>
#include <microloop/aio.hpp>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "catch.hpp"
#include "test_util.hpp"

using namespace std::chrono;
using microloop::errc;
using microloop::io_event;
using microloop::timer_event;

// The one definition of the library's test hook: it reaches the counters
// that take hours or years to wrap in real use.
namespace microloop {
namespace detail {
struct test_access {
    template <class Loop>
    static uint32_t timer_seq(const Loop& l) {
        return l.heap_.seq_;
    }
    template <class Loop>
    static void set_timer_seq(Loop& l, uint32_t seq) {
        l.heap_.seq_ = seq;
    }
    // Sets the generation of a free slot of a pool, as if it had been reused
    // that many times.
    template <class Pool>
    static void set_generation(Pool& pool, uint16_t slot, uint64_t generation) {
        pool.gen_[slot] = generation << 1;
    }
    template <class Loop>
    static typename Loop::io_pool& io_pool(Loop& l) {
        return l.io_pool_;
    }
    template <class Loop>
    static typename Loop::timer_pool& timer_pool(Loop& l) {
        return l.timer_pool_;
    }
    // How long select() would wait now, with no other limit (-1: forever).
    template <class Loop>
    static int64_t select_timeout(Loop& l) {
        return l.select_timeout(-1);
    }
};
} // namespace detail
} // namespace microloop

namespace {

using microloop::detail::test_access;
typedef microloop::basic_loop<microloop::capacity<4, 16, 2, 2>, microloop::manual_clock> virtual_loop;

struct order_log {
    int who[64];
    int n;
    order_log() : n(0) {}
    void add(int id) {
        if (n < 64) who[n++] = id;
    }
};

void noop_timer(timer_event) {}
void noop_io(io_event) {}

// The first 64 firings, and how many there were.
struct record_log {
    order_log log;
    int fired;
    record_log() : fired(0) {}
};
struct logged {
    record_log* r;
    int id;
    void operator()(timer_event) const {
        r->log.add(id);
        ++r->fired;
    }
};

} // namespace

// ---- 1. the timer arming sequence wraps --------------------------------------

TEST_CASE("a timer armed 2^31 armings before the others still fires (no spin)", "[robust][timer]") {
    virtual_loop loop;
    order_log log;
    // A "daily" timer armed first, then as many re-arms as a busy daemon makes
    // in hours (jumped over here): it is more than 2^31 armings behind.
    REQUIRE(loop.after(hours(24), [&log](timer_event) { log.add(1); }));
    microloop::timer_handle busy = loop.after(seconds(1), noop_timer);
    REQUIRE(busy);
    test_access::set_timer_seq(loop, 0x80000005u);
    for (int i = 0; i < 10; ++i) REQUIRE(!loop.rearm(busy, seconds(1)));
    loop.clock().advance(hours(24));
    REQUIRE(!loop.poll());
    REQUIRE(log.n == 1); // before the fix: never, and every select() timeout was 0
    CHECK(loop.stats().timers.used == 0);
}

TEST_CASE("across the sequence wrap, equal deadlines keep arming order and same-pass timers wait", "[robust][timer]") {
    virtual_loop loop;
    order_log log;
    struct ctx {
        virtual_loop* loop;
        order_log* log;
    } shared = {&loop, &log};
    struct chain {
        ctx* c;
        int id;
        void operator()(timer_event) const {
            c->log->add(id);
            if (id < 100) {
                // Armed during the timer pass with a zero timeout: the next
                // pass, never this one, even if the sequence wraps now.
                chain next = {c, id + 100};
                REQUIRE(c->loop->after(nanoseconds(0), next));
            }
        }
    };
    test_access::set_timer_seq(loop, UINT32_MAX - 3u);
    for (int i = 0; i < 6; ++i) {
        chain c = {&shared, i};
        REQUIRE(loop.after(milliseconds(10), c)); // the sequence wraps in the middle
    }
    CHECK(test_access::timer_seq(loop) < 16u); // renumbered, far from the limit
    // And again during the timer pass: the third callback's arming wraps it,
    // with three due timers still waiting and two chained ones armed.
    test_access::set_timer_seq(loop, UINT32_MAX - 2u);
    loop.clock().advance(milliseconds(10));
    REQUIRE(!loop.poll());
    REQUIRE(log.n == 6);
    for (int i = 0; i < 6; ++i) CHECK(log.who[i] == i);
    REQUIRE(!loop.poll());
    REQUIRE(log.n == 12);
    for (int i = 0; i < 6; ++i) CHECK(log.who[6 + i] == 100 + i);
    CHECK(loop.stats().timers.used == 0);
}

TEST_CASE("renumbering keeps a large heap valid and in order", "[robust][timer]") {
    microloop::basic_loop<microloop::capacity<1, 200>, microloop::manual_clock> loop;
    struct record {
        order_log log; // the first 64 firings
        int fired;
    } r0;
    r0.fired = 0;
    order_log& log = r0.log;
    int& fired = r0.fired;
    struct rec {
        record* r;
        int id;
        void operator()(timer_event) const {
            r->log.add(id);
            ++r->fired;
        }
    };
    test_access::set_timer_seq(loop, UINT32_MAX - 100u);
    // Deadlines 0..9 ms, 20 timers each, armed round-robin: each group of
    // equal deadlines must fire in arming order.
    for (int i = 0; i < 200; ++i) {
        rec r = {&r0, i};
        REQUIRE(loop.after(milliseconds(i % 10), r));
    }
    for (int ms = 0; ms < 10; ++ms) {
        int before = fired;
        REQUIRE(!loop.poll());
        CHECK(fired - before == 20);
        loop.clock().advance(milliseconds(1));
    }
    CHECK(fired == 200);
    // Deadline 0 first, in arming order: 0, 10, 20, ...
    for (int i = 0; i < 20; ++i) CHECK(log.who[i] == 10 * i);
}

TEST_CASE("renumbering keeps timers re-armed to a later deadline and drops cancelled ones", "[robust][timer]") {
    microloop::basic_loop<microloop::capacity<1, 32>, microloop::manual_clock> loop;
    record_log r0;
    microloop::timer_handle h[32];
    test_access::set_timer_seq(loop, UINT32_MAX - 40u);
    for (int i = 0; i < 32; ++i) {
        logged r = {&r0, i};
        REQUIRE((h[i] = loop.after(milliseconds(1 + i % 4), r)));
    }
    // The odd ones cancelled, the even ones re-armed to 10 ms (later than
    // they were) in reverse order; the sequence wraps in the middle of the
    // re-arms.
    for (int i = 1; i < 32; i += 2) REQUIRE(!loop.cancel(h[i]));
    for (int i = 30; i >= 0; i -= 2) REQUIRE(!loop.rearm(h[i], milliseconds(10)));
    CHECK(test_access::timer_seq(loop) < 64u); // renumbered
    for (int i = 0; i < 32; i += 2) CHECK(loop.remaining(h[i]) == milliseconds(10));
    CHECK(loop.active() == 16);
    for (int ms = 0; ms < 9; ++ms) {
        loop.clock().advance(milliseconds(1));
        REQUIRE(!loop.poll());
    }
    CHECK(r0.fired == 0);
    loop.clock().advance(milliseconds(1));
    REQUIRE(!loop.poll());
    REQUIRE(r0.fired == 16);
    for (int k = 0; k < 16; ++k) CHECK(r0.log.who[k] == 30 - 2 * k);
    CHECK(loop.active() == 0);
}

TEST_CASE("select() waits for a re-armed timer's new deadline, not its old one, nor a cancelled timer's", "[robust][timer]") {
    virtual_loop loop;
    microloop::timer_handle a = loop.after(milliseconds(10), noop_timer);
    microloop::timer_handle b = loop.after(milliseconds(5), noop_timer);
    REQUIRE(a);
    REQUIRE(b);
    REQUIRE(!loop.poll()); // the loop's time: 0
    CHECK(test_access::select_timeout(loop) == 5000000);
    REQUIRE(!loop.rearm(b, milliseconds(30)));
    CHECK(test_access::select_timeout(loop) == 10000000);
    REQUIRE(!loop.rearm(a, milliseconds(20)));
    CHECK(test_access::select_timeout(loop) == 20000000);
    REQUIRE(!loop.cancel(a));
    CHECK(test_access::select_timeout(loop) == 30000000);
    REQUIRE(!loop.cancel(b));
    CHECK(test_access::select_timeout(loop) == -1);
}

// ---- 2. timers armed outside callbacks --------------------------------------

TEST_CASE("a timer armed outside callbacks counts from the clock's now, not the last iteration's", "[robust][timer]") {
    virtual_loop loop;
    REQUIRE(!loop.poll()); // the loop time is taken: 0
    loop.clock().advance(seconds(1)); // a second of work outside the loop
    microloop::timer_handle h = loop.after(seconds(1), noop_timer);
    REQUIRE(h);
    CHECK(loop.remaining(h) == seconds(1)); // before the fix: 0
    REQUIRE(!loop.poll());
    CHECK(loop.remaining(h) == seconds(1)); // not fired
    loop.clock().advance(seconds(1));
    REQUIRE(!loop.poll());
    CHECK(loop.remaining(h) == nanoseconds(0));
    CHECK(loop.stats().timers.used == 0); // fired
    CHECK(loop.now() == seconds(2));
}

TEST_CASE("inside callbacks, timers share the iteration's time", "[robust][timer]") {
    virtual_loop loop;
    microloop::timer_handle chained;
    REQUIRE(loop.after(milliseconds(10), [&loop, &chained](timer_event) {
        loop.clock().advance(seconds(5)); // a slow callback
        chained = loop.after(seconds(1), noop_timer);
    }));
    loop.clock().advance(milliseconds(10));
    REQUIRE(!loop.poll());
    REQUIRE(chained);
    int seen = 0;
    loop.for_each_timer([&](microloop::timer_handle h, nanoseconds deadline, nanoseconds period) {
        ++seen;
        CHECK(h == chained);
        CHECK(deadline == milliseconds(1010)); // the iteration's 10 ms + 1 s
        CHECK(period == nanoseconds(0));
    });
    CHECK(seen == 1);
}

TEST_CASE("a timer armed after real time passed outside the loop waits its full timeout", "[robust][timer]") {
    microloop::loop<1, 2> loop;
    REQUIRE(!loop.run_once(milliseconds(1))); // a timed iteration: the loop time is taken
    test::sleep_ms(200);
    microloop::timer_handle h = loop.after(milliseconds(400), noop_timer);
    REQUIRE(h);
    CHECK(loop.remaining(h) > milliseconds(300)); // before the fix: about 200 ms
}

// ---- 3. callbacks that throw --------------------------------------------------

#if defined(__cpp_exceptions) || defined(__EXCEPTIONS)
namespace {
struct boom {};
} // namespace

TEST_CASE("an fd callback that throws leaves the tables consistent", "[robust][io]") {
    microloop::loop<4, 4> loop;
    test::fd_pair a = test::make_pipe(), b = test::make_pipe(), c = test::make_pipe();
    REQUIRE((a.ok() && b.ok() && c.ok()));
    int b_calls = 0, c_calls = 0;
    microloop::io_handle ha = loop.watch(a.a.get(), microloop::readable, [](io_event) { throw boom(); });
    microloop::io_handle hb = loop.watch(b.a.get(), microloop::readable, [&b_calls](io_event ev) {
        ++b_calls;
        test::drain(ev.fd);
    });
    REQUIRE((ha && hb));
    REQUIRE(test::put_byte(a.b.get()));
    bool thrown = false;
    try {
        loop.run_once(seconds(1));
    } catch (boom&) {
        thrown = true;
    }
    REQUIRE(thrown);
    // The scenario that corrupted the slot table: unwatch the thrower, let
    // another callback run, add a watcher. b must keep its slot and its data.
    REQUIRE(!loop.unwatch(ha));
    REQUIRE(test::put_byte(b.b.get()));
    loop.run_once(seconds(1));
    CHECK(b_calls == 1);
    microloop::io_handle hc = loop.watch(c.a.get(), microloop::readable, [&c_calls](io_event ev) {
        ++c_calls;
        test::drain(ev.fd);
    });
    REQUIRE(hc);
    CHECK((hc.id() & 0xffffu) != (hb.id() & 0xffffu));
    REQUIRE(test::put_byte(b.b.get()));
    loop.run_once(seconds(1));
    CHECK(b_calls == 2);
    CHECK(c_calls == 0);
    CHECK(!loop.unwatch(hb)); // still live
    CHECK(loop.stats().io.used == 1);
}

TEST_CASE("a timer callback that throws: a one-shot is gone, a repeating one keeps going", "[robust][timer]") {
    virtual_loop loop;
    int ticks = 0;
    microloop::timer_handle once = loop.after(milliseconds(1), [](timer_event) { throw boom(); });
    microloop::timer_handle rep = loop.every(milliseconds(1), [&ticks](timer_event) {
        if (++ticks == 1) throw boom();
    });
    REQUIRE((once && rep));
    loop.clock().advance(milliseconds(1));
    int throws = 0;
    for (int i = 0; i < 2; ++i) {
        try {
            loop.poll();
        } catch (boom&) {
            ++throws;
        }
    }
    CHECK(throws == 2);
    CHECK(loop.cancel(once) == errc::stale_handle);
    CHECK(loop.stats().timers.used == 1);
    loop.clock().advance(milliseconds(1));
    REQUIRE(!loop.poll());
    CHECK(ticks == 2);
    REQUIRE(!loop.cancel(rep));
    CHECK(loop.stats().timers.used == 0);
    // Every slot can be taken again.
    for (int i = 0; i < 16; ++i) CHECK(loop.after(seconds(1), noop_timer));
    CHECK(loop.after(seconds(1), noop_timer).error() == errc::table_full);
}

TEST_CASE("a signal or mailbox callback that throws: the rest still arrives", "[robust][signal][thread]") {
    microloop::loop<2, 2, 4> loop;
    microloop::mailbox<8> box(loop);
    int usr1 = 0, usr2 = 0, posts = 0;
    microloop::signal_handle h1 = loop.on_signal(SIGUSR1, [&usr1](microloop::signal_event) {
        ++usr1;
        throw boom();
    });
    microloop::signal_handle h2 = loop.on_signal(SIGUSR2, [&usr2](microloop::signal_event) { ++usr2; });
    REQUIRE((h1 && h2));
    REQUIRE(!box.post([&posts] {
        ++posts;
        throw boom();
    }));
    REQUIRE(!box.post([&posts] { ++posts; }));
    REQUIRE(kill(getpid(), SIGUSR1) == 0);
    REQUIRE(kill(getpid(), SIGUSR2) == 0);
    int throws = 0;
    for (int i = 0; i < 20 && (usr2 == 0 || posts < 2); ++i) {
        try {
            loop.run_once(milliseconds(100));
        } catch (boom&) {
            ++throws;
        }
    }
    CHECK(usr1 == 1);
    CHECK(usr2 == 1);
    CHECK(posts == 2);
    CHECK(throws == 2);
    // And the loop is not deaf afterwards.
    REQUIRE(kill(getpid(), SIGUSR2) == 0);
    for (int i = 0; i < 20 && usr2 < 2; ++i) loop.run_once(milliseconds(100));
    CHECK(usr2 == 2);
    CHECK(!loop.unwatch(h1));
    CHECK(!loop.unwatch(h2));
    box.close();
}

TEST_CASE("a child callback that throws frees its slot", "[robust][child]") {
    microloop::loop<1, 1, 1, 1> loop;
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) _exit(3);
    REQUIRE(loop.on_child(pid, [](microloop::child_event) { throw boom(); }));
    bool thrown = false;
    for (int i = 0; i < 100 && !thrown; ++i) {
        try {
            loop.run_once(milliseconds(100));
        } catch (boom&) {
            thrown = true;
        }
    }
    REQUIRE(thrown);
    CHECK(loop.stats().children.used == 0);
    CHECK(loop.active() == 0);
}
#endif

// ---- 4. periods that round to nothing ------------------------------------------

TEST_CASE("a repeating period that rounds to 0 ns is refused, not turned into a one-shot", "[robust][timer]") {
    microloop::loop<1, 4> loop;
    typedef duration<long long, std::pico> picoseconds;
    CHECK(loop.every(picoseconds(500), noop_timer).error() == errc::bad_timeout);
    CHECK(loop.every(duration<double>(1e-10), noop_timer).error() == errc::bad_timeout);
    CHECK(loop.add_timer(milliseconds(1), picoseconds(999), noop_timer).error() == errc::bad_timeout);
    CHECK(loop.every(picoseconds(1000), noop_timer)); // 1 ns is a period
    CHECK(loop.after(picoseconds(500), noop_timer));  // a one-shot may round to "now"
    CHECK(loop.stats().timers.used == 2);
}

// ---- 5. handle generations ------------------------------------------------------

TEST_CASE("a kept handle stays stale after 32,768 and more reuses of its slot", "[robust]") {
    microloop::loop<1, 1, 1, 1> loop;
    test::fd_pair p = test::make_pipe();
    REQUIRE(p.ok());
    const int cycles = 32768; // the 16-bit generation of 1.0 came back here

    microloop::io_handle io0 = loop.watch(p.a.get(), microloop::readable, noop_io);
    REQUIRE(!loop.unwatch(io0));
    microloop::timer_handle t0 = loop.after(seconds(1), noop_timer);
    REQUIRE(!loop.cancel(t0));
    microloop::signal_handle s0 = loop.on_signal(SIGUSR1, [](microloop::signal_event) {});
    REQUIRE(!loop.unwatch(s0));
    microloop::continuation_table<1> table;
    microloop::continuation_id c0 = table.emplace<int>(1);
    REQUIRE(!table.release(c0));
    int failures = 0;
    for (int i = 1; i < cycles; ++i) {
        failures += static_cast<bool>(loop.unwatch(loop.watch(p.a.get(), microloop::readable, noop_io)));
        failures += static_cast<bool>(loop.cancel(loop.after(seconds(1), noop_timer)));
        failures += static_cast<bool>(table.release(table.emplace<int>(i)));
        failures += static_cast<bool>(loop.unwatch(loop.on_signal(SIGUSR1, [](microloop::signal_event) {})));
    }
    REQUIRE(failures == 0);
    microloop::io_handle io1 = loop.watch(p.a.get(), microloop::readable, noop_io);
    microloop::timer_handle t1 = loop.after(seconds(1), noop_timer);
    microloop::signal_handle s1 = loop.on_signal(SIGUSR1, [](microloop::signal_event) {});
    microloop::continuation_id c1 = table.emplace<int>(7);
    REQUIRE((io1 && t1 && s1 && c1));
    CHECK(loop.unwatch(io0) == errc::stale_handle); // before the fix: removed io1
    CHECK(loop.cancel(t0) == errc::stale_handle);
    CHECK(loop.unwatch(s0) == errc::stale_handle);
    CHECK(table.release(c0) == errc::stale_handle);
    CHECK(table.get<int>(c0) == nullptr);
    CHECK(loop.stats().io.used == 1);
    CHECK(!loop.unwatch(io1));
    CHECK(!loop.cancel(t1));
    CHECK(!loop.unwatch(s1));
    CHECK(!table.release(c1));
}

TEST_CASE("the generation wraps after 2^48 - 1 reuses, skipping 0", "[robust]") {
    microloop::detail::slot_pool<1> pool;
    const uint64_t max = microloop::detail::slot_pool<1>::max_generation;
    test_access::set_generation(pool, 0, max - 1u);
    uint64_t a = pool.acquire();
    CHECK((a >> 16) == max);
    CHECK(microloop::io_handle::from_id(a).valid());
    pool.release(0);
    uint64_t b = pool.acquire();
    CHECK((b >> 16) == 1u); // not 0: 0 never names a live source
    CHECK(microloop::io_handle::from_id(b).valid());
    CHECK(pool.lookup(a) == pool.none);
    CHECK(pool.lookup(b) == 0);

    // The same through a loop: a handle from just before the wrap is stale after it.
    microloop::loop<1, 1> loop;
    test_access::set_generation(test_access::timer_pool(loop), 0, max - 1u);
    microloop::timer_handle last = loop.after(seconds(1), noop_timer);
    REQUIRE(last);
    REQUIRE(!loop.cancel(last));
    microloop::timer_handle first = loop.after(seconds(1), noop_timer);
    REQUIRE(first);
    CHECK((first.id() >> 16) == 1u);
    CHECK(loop.cancel(last) == errc::stale_handle);
    CHECK(!loop.cancel(first));
}

TEST_CASE("handles: no implicit construction from an errc; failures carry errno", "[robust]") {
    static_assert(!std::is_convertible<errc, microloop::io_handle>::value, "io_handle h = errc::ok must not compile");
    static_assert(!std::is_convertible<errc, microloop::timer_handle>::value, "");
    CHECK(microloop::io_handle(errc::ok).error() == errc::stale_handle); // never a handle that says "ok"
    CHECK(!microloop::io_handle(errc::ok).valid());
    microloop::io_handle sys(microloop::error_code(errc::system, EMFILE));
    CHECK(sys.error() == errc::system);
    CHECK(sys.error().sys() == EMFILE);
    // A failed on_child() says why in the handle, not only in errno.
    microloop::loop<1, 1, 1, 1> loop;
    microloop::child_handle not_ours = loop.on_child(1, [](microloop::child_event) {}); // init is nobody's child here
    CHECK(not_ours.error() == errc::bad_argument);
    CHECK(not_ours.error().sys() == ECHILD);
}

// ---- 6. fork --------------------------------------------------------------------

namespace {
// Waits for pid and returns its exit code, or -1.
int wait_exit(pid_t pid) {
    int status = 0;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}
} // namespace

TEST_CASE("fork: a child that keeps its copy of the loop cannot make the parent deaf", "[robust][fork][thread]") {
    microloop::loop<2, 2, 2> loop;
    microloop::mailbox<4> box(loop);
    int usr1 = 0;
    microloop::signal_handle h = loop.on_signal(SIGUSR1, [&usr1](microloop::signal_event) { ++usr1; });
    REQUIRE(h);
    // A wake-up byte is in the shared pipe when the child is made.
    REQUIRE(!loop.wake());
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        // The child receives a signal before exec, and runs its copy of the
        // loop without after_fork(): it must touch nothing of the parent's.
        kill(getpid(), SIGUSR1);
        microloop::error_code e;
        for (int i = 0; i < 5 && !e; ++i) e = loop.run_once(milliseconds(20));
        _exit(e == errc::forked ? 0 : 1 + static_cast<int>(e.code()));
    }
    CHECK(wait_exit(pid) == 0); // the child saw errc::forked
    REQUIRE(!loop.poll());     // the parent takes its own byte
    CHECK(usr1 == 0);          // the child's signal woke nothing here
    // wake(), stop() and posts from another thread still reach the parent.
    int posted = 0;
    std::thread poster([&box, &posted] {
        test::sleep_ms(50);
        box.post([&posted] { ++posted; });
    });
    for (int i = 0; i < 20 && posted == 0; ++i) loop.run_once(milliseconds(250));
    poster.join();
    CHECK(posted == 1); // before the fix: the child drained the byte and this wait timed out
    REQUIRE(kill(getpid(), SIGUSR1) == 0);
    for (int i = 0; i < 20 && usr1 == 0; ++i) loop.run_once(milliseconds(100));
    CHECK(usr1 == 1);
    CHECK(!loop.unwatch(h));
    box.close();
}

TEST_CASE("fork: after_fork() gives the child a loop of its own; inherited pending state is dropped",
          "[robust][fork]") {
    microloop::loop<2, 2, 2, 2> loop;
    microloop::mailbox<4> box(loop);
    int usr1 = 0;
    REQUIRE(loop.on_signal(SIGUSR1, [&usr1](microloop::signal_event) { ++usr1; }));
    int parent_posts = 0;
    REQUIRE(!box.post([&parent_posts] { ++parent_posts; })); // queued, not run yet
    // A signal arrives just before the fork: counted, not yet dispatched.
    REQUIRE(kill(getpid(), SIGUSR1) == 0);
    CHECK(loop.after_fork() == errc::bad_argument); // not in the process that made it
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        int fail = 0;
        if (loop.after_fork()) _exit(10);
        // The parent's pending signal and post are the parent's.
        if (loop.poll()) fail |= 1;
        if (usr1 != 0) fail |= 2;
        if (parent_posts != 0) fail |= 4;
        // The child's own signals, posts and timers work.
        kill(getpid(), SIGUSR1);
        int fired = 0;
        loop.after(milliseconds(10), [&fired](timer_event) { ++fired; });
        box.post([&fired] { ++fired; });
        for (int i = 0; i < 50 && (usr1 == 0 || fired < 2); ++i) loop.run_once(milliseconds(50));
        if (usr1 != 1) fail |= 8;
        if (fired != 2) fail |= 16;
        _exit(fail);
    }
    CHECK(wait_exit(pid) == 0);
    for (int i = 0; i < 20 && (usr1 == 0 || parent_posts == 0); ++i) loop.run_once(milliseconds(100));
    CHECK(usr1 == 1);
    CHECK(parent_posts == 1);
    box.close();
}

TEST_CASE("fork: after_fork() drops the child watchers inherited from the parent, without a call",
          "[robust][fork][child]") {
    microloop::loop<2, 2, 2, 2> loop;
    test::fd_pair p = test::make_pipe();
    REQUIRE(p.ok());
    // The parent's child, which stays alive until the parent writes a byte.
    pid_t kid = fork();
    REQUIRE(kid >= 0);
    if (kid == 0) {
        char c;
        _exit(read(p.a.get(), &c, 1) == 1 ? 0 : 1);
    }
    int calls = 0;
    REQUIRE(loop.on_child(kid, [&calls](microloop::child_event) { ++calls; }));
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        int fail = 0;
        if (loop.after_fork()) _exit(10);
        // The watcher names the parent's child, which this process cannot reap.
        if (loop.stats().children.used != 0) fail |= 1;
        if (loop.active() != 0) fail |= 2;
        if (loop.poll()) fail |= 4;
        if (calls != 0) fail |= 8;
        _exit(fail);
    }
    CHECK(wait_exit(pid) == 0);
    // The parent's watcher is untouched: it reports its child once.
    CHECK(loop.stats().children.used == 1);
    REQUIRE(test::put_byte(p.b.get()));
    for (int i = 0; i < 50 && calls == 0; ++i) loop.run_once(milliseconds(100));
    CHECK(calls == 1);
}

TEST_CASE("fork: after_fork() skips a module hook without on_fork", "[robust][fork]") {
    microloop::loop<1, 1> loop;
    microloop::loop_hook hook;
    hook.on_wake = [](microloop::loop_hook*) {};
    hook.on_fork = nullptr; // nothing of the parent's to drop
    hook.active = 0;
    hook.next = nullptr;
    loop.attach(&hook);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        int fail = 0;
        if (loop.after_fork()) fail |= 1;
        if (loop.poll()) fail |= 2;
        _exit(fail);
    }
    CHECK(wait_exit(pid) == 0);
    loop.detach(&hook);
}

template <class Disk>
void fork_with_aio_in_flight() {
    microloop::loop<1, 1> loop;
    Disk disk(loop);
    test::fd_pair p = test::make_pipe(); // a read on an empty pipe stays in flight
    REQUIRE(p.ok());
    static char buf[16];
    microloop::aio_handle h = disk.read(p.a.get(), buf, sizeof buf, 0, [](microloop::aio_event) {});
    REQUIRE(h);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        // Before the fix the destructor waited forever for the parent's read.
        disk.~Disk();
        _exit(0);
    }
    int status = 0;
    pid_t r = 0;
    for (int i = 0; i < 100 && r == 0; ++i) {
        r = waitpid(pid, &status, WNOHANG);
        if (r == 0) test::sleep_ms(20);
    }
    if (r == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
    }
    CHECK(r == pid);
    CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
    REQUIRE(test::put_byte(p.b.get()));
    CHECK(disk.in_flight() == 1);
    for (int i = 0; i < 50 && disk.in_flight() > 0; ++i) loop.run_once(milliseconds(100));
    CHECK(disk.in_flight() == 0);
}

TEST_CASE("fork: a child that inherits an aio module with work in flight exits without waiting for it",
          "[robust][fork][aio]") {
    fork_with_aio_in_flight<microloop::aio<2> >();
}

TEST_CASE("fork (POSIX engine): a child that inherits an aio module with work in flight exits without waiting",
          "[robust][fork][aio][posix_aio]") {
    fork_with_aio_in_flight<microloop::aio<2, microloop::posix_aio_engine> >();
}

// ---- 7. a table of N holds N ------------------------------------------------------

TEST_CASE("capacity 1: a callback can replace its own source", "[robust]") {
    microloop::loop<1, 1, 1, 1> loop;
    test::fd_pair a = test::make_pipe(), b = test::make_pipe();
    REQUIRE((a.ok() && b.ok()));

    // A one-shot chaining the next one, three times.
    int chained = 0;
    struct next_timer {
        microloop::loop<1, 1, 1, 1>* loop;
        int* n;
        void operator()(timer_event) const {
            if (++*n < 3) CHECK(loop->after(milliseconds(1), *this));
        }
    };
    next_timer t = {&loop, &chained};
    REQUIRE(loop.after(milliseconds(1), t));
    for (int i = 0; i < 50 && chained < 3; ++i) loop.run_once(milliseconds(100));
    CHECK(chained == 3);

    // An fd watcher that unwatches itself and watches another fd; a signal
    // watcher that unwatches itself and watches another signal.
    struct state {
        microloop::loop<1, 1, 1, 1>* loop;
        int other_fd;
        int b_calls, usr2;
        microloop::io_handle second;
        microloop::signal_handle next_sig;
    } st = {&loop, b.a.get(), 0, 0, microloop::io_handle(), microloop::signal_handle()};
    REQUIRE(loop.watch(a.a.get(), microloop::readable, [&st](io_event ev) {
        test::drain(ev.fd);
        CHECK(!st.loop->unwatch(ev.handle));
        st.second = st.loop->watch(st.other_fd, microloop::readable, [&st](io_event e) {
            ++st.b_calls;
            test::drain(e.fd);
        });
        CHECK(st.second);
    }));
    REQUIRE(test::put_byte(a.b.get()));
    loop.run_once(seconds(1));
    REQUIRE(st.second);
    REQUIRE(test::put_byte(b.b.get()));
    loop.run_once(seconds(1));
    CHECK(st.b_calls == 1);
    CHECK(!loop.unwatch(st.second));

    REQUIRE(loop.on_signal(SIGUSR1, [&st](microloop::signal_event ev) {
        CHECK(!st.loop->unwatch(ev.handle));
        st.next_sig = st.loop->on_signal(SIGUSR2, [&st](microloop::signal_event) { ++st.usr2; });
        CHECK(st.next_sig);
    }));
    REQUIRE(kill(getpid(), SIGUSR1) == 0);
    for (int i = 0; i < 20 && !st.next_sig; ++i) loop.run_once(milliseconds(100));
    REQUIRE(st.next_sig);
    REQUIRE(kill(getpid(), SIGUSR2) == 0);
    for (int i = 0; i < 20 && st.usr2 == 0; ++i) loop.run_once(milliseconds(100));
    CHECK(st.usr2 == 1);
    CHECK(!loop.unwatch(st.next_sig));

    // A child watcher that watches the next child from its callback.
    pid_t first = fork();
    REQUIRE(first >= 0);
    if (first == 0) _exit(0);
    int reaped = 0;
    REQUIRE(loop.on_child(first, [&](microloop::child_event) {
        ++reaped;
        pid_t again = fork();
        if (again == 0) _exit(0);
        CHECK(loop.on_child(again, [&reaped](microloop::child_event) { ++reaped; }));
    }));
    for (int i = 0; i < 100 && reaped < 2; ++i) loop.run_once(milliseconds(100));
    CHECK(reaped == 2);

    // The spare slot is not a second slot: N live at most.
    CHECK(loop.after(seconds(1), noop_timer));
    CHECK(loop.after(seconds(1), noop_timer).error() == errc::table_full);
    CHECK(loop.stats().timers.high_water == 1);
}

TEST_CASE("a closed mailbox refuses posts instead of touching a detached loop", "[robust][thread]") {
    microloop::loop<1, 1> loop;
    microloop::mailbox<4> box(loop);
    int ran = 0;
    REQUIRE(!box.post([&ran] { ++ran; }));
    REQUIRE(!loop.poll());
    CHECK(ran == 1);
    box.close();
    box.close(); // twice is fine
    CHECK(box.post([&ran] { ++ran; }) == errc::canceled); // before: a null loop pointer
    CHECK(loop.active() == 0);
}

// ---- introspection and the virtual clock ------------------------------------------

TEST_CASE("stats() and the visitors describe what a loop holds", "[robust]") {
    virtual_loop loop;
    test::fd_pair p = test::make_pipe();
    REQUIRE(p.ok());
    microloop::io_handle io = loop.watch(p.a.get(), microloop::readable | microloop::priority, noop_io);
    microloop::timer_handle t1 = loop.after(seconds(2), noop_timer);
    microloop::timer_handle t2 = loop.every(seconds(1), noop_timer);
    microloop::timer_handle t3 = loop.after(seconds(3), noop_timer);
    REQUIRE((io && t1 && t2 && t3));
    REQUIRE(!loop.cancel(t3));
    virtual_loop::loop_stats s = loop.stats();
    CHECK(s.io.used == 1);
    CHECK(s.io.capacity == 4);
    CHECK(s.timers.used == 2);
    CHECK(s.timers.capacity == 16);
    CHECK(s.timers.high_water == 3);
    CHECK(s.signals.capacity == 2);
    CHECK(s.children.used == 0);
    int ios = 0;
    loop.for_each_io([&](microloop::io_handle h, int fd, unsigned events) {
        ++ios;
        CHECK(h == io);
        CHECK(fd == p.a.get());
        CHECK(events == (microloop::readable | microloop::priority));
    });
    CHECK(ios == 1);
    int timers = 0;
    loop.for_each_timer([&](microloop::timer_handle h, nanoseconds deadline, nanoseconds period) {
        ++timers;
        if (h == t1) {
            CHECK(deadline == seconds(2));
            CHECK(period == nanoseconds(0));
        } else {
            CHECK(h == t2);
            CHECK(deadline == seconds(1));
            CHECK(period == seconds(1));
        }
    });
    CHECK(timers == 2);

    microloop::continuation_table<4> table;
    microloop::made<int> m = table.make<int>(5);
    REQUIRE(m);
    *m += 1;
    CHECK(*table.get<int>(m.id()) == 6);
    int entries = 0;
    table.for_each([&](microloop::continuation_id id) {
        ++entries;
        CHECK(id == m.id());
    });
    CHECK(entries == 1);
    CHECK(table.stats().high_water == 1);
    CHECK(microloop::source_kind_name(microloop::source_kind::timer) == std::string("timer"));
}

TEST_CASE("a manual clock runs timers in virtual time, deterministically", "[robust][timer]") {
    virtual_loop loop;
    order_log log;
    struct rec {
        order_log* log;
        int id;
        void operator()(timer_event ev) const { log->add(id * 10 + static_cast<int>(ev.overruns)); }
    };
    rec a = {&log, 1}, b = {&log, 2};
    REQUIRE(loop.every(hours(1), a));
    REQUIRE(loop.after(minutes(90), b));
    loop.clock().advance(minutes(59));
    REQUIRE(!loop.poll());
    CHECK(log.n == 0);
    loop.clock().advance(minutes(1));
    REQUIRE(!loop.poll());
    loop.clock().advance(minutes(30));
    REQUIRE(!loop.poll());
    loop.clock().advance(hours(3)); // a stall: two periods skipped and counted
    REQUIRE(!loop.poll());
    REQUIRE(log.n == 3);
    CHECK(log.who[0] == 10);
    CHECK(log.who[1] == 20);
    CHECK(log.who[2] == 12);
}

TEST_CASE("SIGCHLD: a second signal watcher is refused; one next to child watchers gets every arrival",
          "[robust][signal][child]") {
    microloop::loop<1, 1, 2, 2> loop;
    int chld = 0, reaped = 0;
    microloop::signal_handle first = loop.on_signal(SIGCHLD, [&chld](microloop::signal_event) { ++chld; });
    REQUIRE(first);
    // Before: accepted, and only the first watcher was ever called.
    CHECK(loop.on_signal(SIGCHLD, [](microloop::signal_event) {}).error() == errc::already_watched);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) _exit(0);
    REQUIRE(loop.on_child(pid, [&reaped](microloop::child_event) { ++reaped; }));
    for (int i = 0; i < 100 && (reaped == 0 || chld == 0); ++i) loop.run_once(milliseconds(100));
    CHECK(reaped == 1);
    CHECK(chld >= 1);
    CHECK(!loop.unwatch(first));
    // Given back: it may be watched again.
    microloop::signal_handle again = loop.on_signal(SIGCHLD, [](microloop::signal_event) {});
    CHECK(again);
    CHECK(!loop.unwatch(again));
}

// ---- second adversarial round ----------------------------------------------------

namespace {
bool blocked_here(int signo) {
    sigset_t now;
    sigprocmask(SIG_BLOCK, nullptr, &now);
    return sigismember(&now, signo) == 1;
}
} // namespace

TEST_CASE("unwatching a signal puts back the thread's mask bit as it was", "[robust][signal]") {
    sigset_t one, saved;
    sigemptyset(&one);
    sigaddset(&one, SIGUSR1);
    sigaddset(&one, SIGCHLD);
    REQUIRE(sigprocmask(SIG_BLOCK, &one, &saved) == 0); // a daemon blocking them during start-up
    {
        microloop::loop<1, 1, 2, 1> loop;
        microloop::signal_handle h = loop.on_signal(SIGUSR1, [](microloop::signal_event) {});
        REQUIRE(h);
        CHECK_FALSE(blocked_here(SIGUSR1)); // unblocked while watched
        REQUIRE(!loop.unwatch(h));
        CHECK(blocked_here(SIGUSR1)); // before the fix: left unblocked
        REQUIRE(loop.on_signal(SIGUSR1, [](microloop::signal_event) {}));
        microloop::signal_handle c = loop.on_signal(SIGCHLD, [](microloop::signal_event) {});
        REQUIRE(c);
        CHECK_FALSE(blocked_here(SIGCHLD));
        REQUIRE(!loop.unwatch(c));
        CHECK(blocked_here(SIGCHLD));
    } // destroyed with the SIGUSR1 watcher on
    CHECK(blocked_here(SIGUSR1));
    // A signal that was not blocked stays unblocked.
    sigset_t usr2;
    sigemptyset(&usr2);
    sigaddset(&usr2, SIGUSR2);
    sigprocmask(SIG_UNBLOCK, &usr2, nullptr);
    {
        microloop::loop<1, 1, 1> loop;
        REQUIRE(loop.on_signal(SIGUSR2, [](microloop::signal_event) {}));
    }
    CHECK_FALSE(blocked_here(SIGUSR2));
    sigprocmask(SIG_SETMASK, &saved, nullptr);
}

TEST_CASE("destroying a continuation table runs each destructor once, even one that releases another entry",
          "[robust][continuation]") {
    typedef microloop::continuation_table<4, 64> table_t;
    struct counts {
        int destroyed[4];
    };
    struct request {
        table_t* table;
        counts* c;
        int index;
        microloop::continuation_id child; // a sub-request this one owns
        request(table_t* t, counts* k, int i) : table(t), c(k), index(i), child() {}
        ~request() {
            ++c->destroyed[index];
            if (table) table->release(child); // stale after the table retired it: refused, not run twice
        }
    };
    counts c = {{0, 0, 0, 0}};
    {
        table_t table;
        // The sub-requests take the first slots, their parents the later
        // ones: the table's destructor meets each child before its parent.
        microloop::continuation_id kid0 = table.emplace<request>(nullptr, &c, 0);
        microloop::continuation_id kid1 = table.emplace<request>(nullptr, &c, 1);
        microloop::made<request> parent0 = table.make<request>(&table, &c, 2);
        microloop::made<request> parent1 = table.make<request>(&table, &c, 3);
        REQUIRE((kid0 && kid1 && parent0 && parent1));
        parent0->child = kid0;
        parent1->child = kid1;
    }
    for (int i = 0; i < 4; ++i) CHECK(c.destroyed[i] == 1); // before the fix: the children twice
}

template <class Disk>
void fsync_after_earlier_ops_on_its_fd() {
    microloop::loop<1, 1> loop;
    Disk disk(loop);
    test::fd_pair gate = test::make_pipe(); // D reads it: in flight until a byte comes
    int full[2];
    REQUIRE(gate.ok());
    REQUIRE(pipe(full) == 0); // blocking: W's write waits in the libc's thread
    test::unique_fd full_r(full[0]), full_w(full[1]);
    int flags = fcntl(full[1], F_GETFL);
    fcntl(full[1], F_SETFL, flags | O_NONBLOCK);
    static char junk[4096];
    while (write(full[1], junk, sizeof junk) > 0) {
    }
    fcntl(full[1], F_SETFL, flags);

    struct order_rec {
        char seen[8];
        int n;
    } rec = {{0}, 0};
    static char byte_in[1], byte_out[1] = {'w'};
    // D takes slot 0, W slot 1; D finishes and frees slot 0, which F, the
    // fsync submitted after W on W's fd, then takes: slot order is F, W.
    REQUIRE(disk.read(gate.a.get(), byte_in, 1, 0, [&rec](microloop::aio_event) { rec.seen[rec.n++] = 'D'; }));
    REQUIRE(disk.write(full[1], byte_out, 1, 0, [&rec](microloop::aio_event) { rec.seen[rec.n++] = 'W'; }));
    REQUIRE(test::put_byte(gate.b.get()));
    for (int i = 0; i < 50 && rec.n == 0; ++i) loop.run_once(milliseconds(100));
    REQUIRE(rec.n == 1);
    REQUIRE(rec.seen[0] == 'D');
    REQUIRE(disk.fsync(full[1], [&rec](microloop::aio_event) { rec.seen[rec.n++] = 'F'; }));
    // Let W through, then give both time to finish before the loop looks.
    fcntl(full[0], F_SETFL, O_NONBLOCK);
    test::drain(full[0]);
    test::sleep_ms(200);
    for (int i = 0; i < 50 && rec.n < 3; ++i) loop.run_once(milliseconds(100));
    REQUIRE(rec.n == 3);
    CHECK(rec.seen[1] == 'W'); // before the fix: F, then W
    CHECK(rec.seen[2] == 'F');
}

TEST_CASE("aio: on one fd, callbacks run in submission order (an fsync never before an earlier write)",
          "[robust][aio]") {
    fsync_after_earlier_ops_on_its_fd<microloop::aio<4> >();
}

TEST_CASE("aio (POSIX engine): on one fd, an fsync is never called back before an earlier write",
          "[robust][aio][posix_aio]") {
    fsync_after_earlier_ops_on_its_fd<microloop::aio<4, microloop::posix_aio_engine> >();
}

TEST_CASE("the wake-up fd closed or replaced behind the loop's back: errors, never a spin or a SIGPIPE",
          "[robust][error]") {
    // In a child: before the fix a wake-up after "close every fd above 2"
    // raised SIGPIPE (the pipe's read end closed) or spun on EOF (its write
    // end closed), so the process may die; the parent judges by its exit.
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        int fail = 0;
        {
            microloop::loop<1, 1> loop;
            microloop::mailbox<2> box(loop);
            REQUIRE(loop.after(seconds(5), noop_timer)); // something to wait for
            close(loop.wake_fd());
            microloop::error_code w = loop.wake();
            if (!(w == errc::system && w.sys() == EBADF)) fail |= 1;
            if (!box.post([] {})) fail |= 2; // the post is queued, its wake-up refused
            int64_t t0 = test::now_ns();
            microloop::error_code r = loop.run();
            if (r != errc::system) fail |= 4;
            if (test::now_ns() - t0 > 1000000000) fail |= 8; // returned, did not wait or spin
            loop.stop(); // a wake-up too: no SIGPIPE
            box.close();
        }
        {
            // The number reused by another file: the loop notices the first
            // time it reads, and reads it never again.
            microloop::loop<1, 1> loop;
            REQUIRE(loop.after(seconds(5), noop_timer));
            int fd = loop.wake_fd();
            close(fd);
            int other = open("/dev/null", O_RDONLY | O_CLOEXEC); // readable, at EOF at once
            if (other != fd) fail |= 16;
            int64_t t0 = test::now_ns();
            microloop::error_code r = loop.run();
            if (r != errc::system) fail |= 32;
            if (test::now_ns() - t0 > 1000000000) fail |= 64;
            if (loop.poll() != errc::system) fail |= 128; // and stays so
        }
        _exit(fail);
    }
    int status = 0;
    REQUIRE(waitpid(pid, &status, 0) == pid);
    CHECK_FALSE(WIFSIGNALED(status)); // before the fix: SIGPIPE
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("a real-time signal's sigqueue() value reaches the callback", "[robust][signal]") {
    microloop::loop<1, 1, 2> loop;
    struct seen_t {
        int calls;
        int last;
        pid_t pid;
    } seen = {0, -1, 0};
    const int rt = SIGRTMIN + 2;
    REQUIRE(loop.on_signal(rt, [&seen](microloop::signal_event ev) {
        ++seen.calls;
        seen.last = ev.value.sival_int;
        seen.pid = ev.pid;
    }));
    union sigval v;
    memset(&v, 0, sizeof v);
    v.sival_int = 42;
    REQUIRE(sigqueue(getpid(), rt, v) == 0);
    for (int i = 0; i < 20 && seen.calls == 0; ++i) loop.run_once(milliseconds(100));
    CHECK(seen.calls == 1);
    CHECK(seen.last == 42); // the latest sender's value, as for pid and uid
    CHECK(seen.pid == getpid());
    // kill() carries no value: zero.
    REQUIRE(kill(getpid(), rt) == 0);
    for (int i = 0; i < 20 && seen.calls == 1; ++i) loop.run_once(milliseconds(100));
    CHECK(seen.calls == 2);
    CHECK(seen.last == 0);
}

TEST_CASE("unblock_signals() gives an exec'd child a clean mask", "[robust][signal]") {
    sigset_t saved;
    REQUIRE(sigprocmask(SIG_BLOCK, nullptr, &saved) == 0);
    REQUIRE(!microloop::block_signals()); // the README's recipe for threads
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        if (microloop::unblock_signals()) _exit(2);
        // What an exec'd program would start with: SIGTERM not blocked.
        sigset_t now;
        sigprocmask(SIG_BLOCK, nullptr, &now);
        _exit(sigismember(&now, SIGTERM) == 0 && sigismember(&now, SIGINT) == 0 ? 0 : 1);
    }
    int status = 0;
    REQUIRE(waitpid(pid, &status, 0) == pid);
    CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
    sigprocmask(SIG_SETMASK, &saved, nullptr);
}

TEST_CASE("capacity 0 for any kind: a timers-only loop builds and runs", "[robust][timer]") {
    microloop::loop<0, 2, 0, 0> loop;
    int fired = 0;
    REQUIRE(loop.after(milliseconds(1), [&fired](timer_event) { ++fired; }));
    CHECK(loop.watch(0, microloop::readable, noop_io).error() == errc::table_full);
    CHECK(loop.on_signal(SIGUSR1, [](microloop::signal_event) {}).error() == errc::table_full);
    CHECK(loop.on_child(1, [](microloop::child_event) {}).error() == errc::table_full);
    CHECK(!loop.run());
    CHECK(fired == 1);
    microloop::basic_loop<microloop::capacity<0, 0, 0, 0> > nothing;
    CHECK(nothing.after(milliseconds(1), noop_timer).error() == errc::table_full);
    CHECK(!nothing.run()); // nothing active: returns at once
}

TEST_CASE("a repeating timer cancelled in its callback cannot be re-armed through its stale handle", "[robust][timer]") {
    virtual_loop loop;
    struct state {
        virtual_loop* loop;
        int calls;
    } st = {&loop, 0};
    REQUIRE(loop.every(milliseconds(1), [&st](timer_event ev) {
        ++st.calls;
        CHECK(!st.loop->cancel(ev.handle));
        CHECK(st.loop->rearm(ev.handle, milliseconds(1)) == errc::stale_handle);
    }));
    loop.clock().advance(milliseconds(1));
    REQUIRE(!loop.poll());
    loop.clock().advance(milliseconds(5));
    REQUIRE(!loop.poll());
    CHECK(st.calls == 1);
    CHECK(loop.stats().timers.used == 0);
}
