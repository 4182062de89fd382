// Timers against the real monotonic clock. Timing is asserted through order,
// counts and the loop's own time, with generous margins: CI machines are
// noisy and the suite also runs under emulation.
#include <microloop.hpp>

#include <math.h>
#include <stdint.h>

#include <chrono>
#include <ratio>

#include "catch.hpp"
#include "test_util.hpp"

using namespace std::chrono;
using microloop::errc;
using microloop::timer_event;
using microloop::detail::test_access;
using test::canary;
using test::noop_timer;
using test::small_loop;
using test::virtual_loop;

namespace {

typedef microloop::loop<4, 16> timer_loop;

// The order timers fired in, by the number each was given (the first 64).
struct order_log {
    int who[64];
    int n;
    order_log() : n(0) {}
    void add(int id) {
        if (n < 64) who[n++] = id;
    }
};

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

struct tick {
    order_log* log;
    int id;
    void operator()(timer_event) const { log->add(id); }
};

} // namespace

TEST_CASE("timers fire in deadline order", "[timer]") {
    timer_loop loop;
    order_log log;
    tick a = {&log, 30}, b = {&log, 10}, c = {&log, 20};
    REQUIRE(loop.after(milliseconds(30), a));
    REQUIRE(loop.after(milliseconds(10), b));
    REQUIRE(loop.after(milliseconds(20), c));
    CHECK(loop.active() == 3);
    CHECK(!loop.run());
    REQUIRE(log.n == 3);
    CHECK(log.who[0] == 10);
    CHECK(log.who[1] == 20);
    CHECK(log.who[2] == 30);
    CHECK(loop.active() == 0);
}

TEST_CASE("equal deadlines fire in arming order", "[timer]") {
    timer_loop loop;
    order_log log;
    // Armed back to back, they share the loop time and so the deadline.
    microloop::timer_handle h[8];
    for (int i = 0; i < 8; ++i) {
        tick t = {&log, i};
        h[i] = loop.after(milliseconds(5), t);
        REQUIRE(h[i]);
    }
    // Re-arming moves a timer behind the others with the same deadline.
    REQUIRE(!loop.rearm(h[2], milliseconds(5)));
    CHECK(!loop.run());
    REQUIRE(log.n == 8);
    const int expect[8] = {0, 1, 3, 4, 5, 6, 7, 2};
    for (int i = 0; i < 8; ++i) CHECK(log.who[i] == expect[i]);
}

TEST_CASE("a one-shot timer fires once and its handle goes stale", "[timer]") {
    timer_loop loop;
    int calls = 0;
    microloop::timer_handle seen;
    struct ctx {
        int* calls;
        microloop::timer_handle* seen;
    } c = {&calls, &seen};
    microloop::timer_handle h = loop.after(milliseconds(5), [&c](timer_event ev) {
        ++*c.calls;
        *c.seen = ev.handle;
        CHECK(ev.overruns == 0);
    });
    REQUIRE(h);
    CHECK(!loop.run());
    CHECK(calls == 1);
    CHECK(seen == h);
    CHECK(loop.cancel(h) == microloop::errc::stale_handle);
    CHECK(loop.rearm(h, milliseconds(1)) == microloop::errc::stale_handle);
    CHECK(loop.remaining(h) == nanoseconds::zero());
    loop.poll();
    CHECK(calls == 1);
}

namespace {

// Each firing of a repeating timer, in loop time.
struct firings {
    int64_t at[64];
    uint32_t overruns[64];
    int n;
    int stall_at; // sleep in this firing (-1: never)
    int stall_ms;
    firings() : n(0), stall_at(-1), stall_ms(0) {}
};

struct periodic {
    timer_loop* loop;
    firings* f;
    void operator()(timer_event ev) const {
        if (f->n < 64) {
            f->at[f->n] = loop->now().count();
            f->overruns[f->n] = ev.overruns;
        }
        if (f->n++ == f->stall_at) test::sleep_ms(f->stall_ms);
    }
};

// Firing k is due at start + m_k * period, m_1 = 1 and m_(k+1) = m_k +
// overruns_k + 1. A timer that does not drift and skips what it missed fires
// at most one period after the last deadline it reports as passed, however
// late the machine is: the lateness never accumulates.
void check_no_drift(const firings& f, int64_t start, int64_t period) {
    int64_t m = 1;
    for (int k = 0; k < f.n && k < 64; ++k) {
        int64_t last_passed = start + (m + f.overruns[k]) * period;
        INFO("firing " << k << ": " << (f.at[k] - start) << " ns after the start, " << f.overruns[k] << " overruns");
        CHECK(f.at[k] >= last_passed);
        CHECK(f.at[k] < last_passed + period);
        m += f.overruns[k] + 1;
    }
}

} // namespace

TEST_CASE("a repeating timer does not drift", "[timer]") {
    timer_loop loop;
    firings f;
    const int64_t period = 10000000;
    int64_t start = loop.now().count(); // every() arms relative to this loop time
    periodic p = {&loop, &f};
    microloop::timer_handle h = loop.every(milliseconds(10), p);
    REQUIRE(h);
    while (f.n < 30) REQUIRE(!loop.run_once());
    check_no_drift(f, start, period);
    // 30 firings cover at least 30 periods, and not many more unless the
    // machine stalled (which the overruns then account for).
    int64_t covered = 0;
    for (int k = 0; k < 30; ++k) covered += f.overruns[k] + 1;
    CHECK(f.at[29] - start >= 30 * period);
    CHECK(f.at[29] - start < (covered + 1) * period);
    REQUIRE(!loop.cancel(h));
}

TEST_CASE("a repeating timer skips the periods a stall missed, without a burst", "[timer]") {
    timer_loop loop;
    firings f;
    f.stall_at = 2;
    f.stall_ms = 55; // five and a half periods
    const int64_t period = 10000000;
    int64_t start = loop.now().count();
    periodic p = {&loop, &f};
    microloop::timer_handle h = loop.every(milliseconds(10), p);
    REQUIRE(h);
    while (f.n < 6) REQUIRE(!loop.run_once());
    REQUIRE(!loop.cancel(h));
    check_no_drift(f, start, period);
    // The firing after the stall reports what was missed ...
    CHECK(f.overruns[3] >= 3);
    // ... and the next one waits for its own deadline instead of catching up
    // (check_no_drift: a burst would fire a period or more late each time).
    CHECK(f.at[4] > f.at[3]);
}

TEST_CASE("cancel", "[timer]") {
    timer_loop loop;
    order_log log;
    tick a = {&log, 1}, b = {&log, 2}, c = {&log, 3};
    microloop::timer_handle h1 = loop.after(milliseconds(5), a);
    microloop::timer_handle h2 = loop.every(milliseconds(5), b);
    microloop::timer_handle h3 = loop.after(milliseconds(10), c);
    REQUIRE(h1);
    REQUIRE(h2);
    REQUIRE(h3);
    CHECK(!loop.cancel(h1));
    CHECK(!loop.cancel(h2));
    CHECK(loop.cancel(h1) == microloop::errc::stale_handle);
    CHECK(loop.active() == 1);
    CHECK(!loop.run());
    REQUIRE(log.n == 1);
    CHECK(log.who[0] == 3);
}

TEST_CASE("a timer cancelled by an earlier callback of the same iteration does not fire", "[timer]") {
    timer_loop loop;
    order_log log;
    microloop::timer_handle victim;
    struct ctx {
        timer_loop* loop;
        microloop::timer_handle* victim;
    } c = {&loop, &victim};
    REQUIRE(loop.after(milliseconds(5), [&c](timer_event) { CHECK(!c.loop->cancel(*c.victim)); }));
    tick t = {&log, 1};
    victim = loop.after(milliseconds(5), t); // same deadline, armed second
    REQUIRE(victim);
    CHECK(!loop.run());
    CHECK(log.n == 0);
}

TEST_CASE("rearm", "[timer]") {
    timer_loop loop;

    SECTION("pushes the deadline back") {
        order_log log;
        tick a = {&log, 1}, b = {&log, 2};
        microloop::timer_handle h1 = loop.after(milliseconds(5), a);
        REQUIRE(loop.after(milliseconds(30), b));
        REQUIRE(!loop.rearm(h1, milliseconds(60)));
        CHECK(!loop.run());
        REQUIRE(log.n == 2);
        CHECK(log.who[0] == 2);
        CHECK(log.who[1] == 1);
    }

    SECTION("a one-shot timer re-armed in its own callback stays alive") {
        int calls = 0;
        struct ctx {
            timer_loop* loop;
            int* calls;
        } c = {&loop, &calls};
        microloop::timer_handle h = loop.after(milliseconds(2), [&c](timer_event ev) {
            if (++*c.calls < 3) CHECK(!c.loop->rearm(ev.handle, milliseconds(2)));
        });
        REQUIRE(h);
        CHECK(!loop.run());
        CHECK(calls == 3);
        CHECK(loop.cancel(h) == microloop::errc::stale_handle); // not re-armed the third time
    }

    SECTION("a one-shot timer re-armed with zero fires in the next iteration, not this one") {
        int calls = 0;
        struct ctx {
            timer_loop* loop;
            int* calls;
        } c = {&loop, &calls};
        REQUIRE(loop.after(milliseconds(1), [&c](timer_event ev) {
            if (++*c.calls < 100) c.loop->rearm(ev.handle, nanoseconds(0));
        }));
        test::sleep_ms(2);
        loop.run_once(seconds(1));
        CHECK(calls == 1);
        loop.poll();
        CHECK(calls == 2);
        CHECK(!loop.run());
        CHECK(calls == 100);
    }

    SECTION("a repeating timer keeps its period") {
        firings f;
        periodic p = {&loop, &f};
        microloop::timer_handle h = loop.every(milliseconds(5), p);
        int64_t t0 = loop.now().count(); // rearm() counts from this loop time
        REQUIRE(!loop.rearm(h, milliseconds(1)));
        while (f.n < 3) loop.run_once();
        CHECK(f.at[0] >= t0 + 1000000);
        CHECK(f.at[1] >= t0 + 6000000);
        CHECK(f.at[2] >= t0 + 11000000);
        CHECK(!loop.cancel(h));
    }

    SECTION("a timer that cancels itself and arms another") {
        order_log log;
        struct ctx {
            timer_loop* loop;
            order_log* log;
        } c = {&loop, &log};
        microloop::timer_handle h = loop.every(milliseconds(2), [&c](timer_event ev) {
            c.log->add(1);
            CHECK(!c.loop->cancel(ev.handle));
            CHECK(c.loop->cancel(ev.handle) == microloop::errc::stale_handle);
            tick t = {c.log, 2};
            CHECK(c.loop->after(milliseconds(1), t));
        });
        REQUIRE(h);
        CHECK(!loop.run());
        REQUIRE(log.n == 2);
        CHECK(log.who[0] == 1);
        CHECK(log.who[1] == 2);
    }
}

TEST_CASE("remaining() counts down", "[timer]") {
    timer_loop loop;
    microloop::timer_handle h = loop.after(milliseconds(200), [](timer_event) {});
    REQUIRE(h);
    nanoseconds left = loop.remaining(h);
    CHECK(left <= milliseconds(200));
    CHECK(left > milliseconds(100));
    test::sleep_ms(20);
    CHECK(loop.remaining(h) < left);
    REQUIRE(!loop.rearm(h, milliseconds(1)));
    test::sleep_ms(5);
    CHECK(loop.remaining(h) == nanoseconds::zero()); // due
    CHECK(!loop.cancel(h));
    CHECK(loop.remaining(h) == nanoseconds::zero());
    CHECK(loop.remaining(microloop::timer_handle()) == nanoseconds::zero());
}

TEST_CASE("the select() timeout is rounded up, so a timer does not make the loop spin", "[timer]") {
    timer_loop loop;
    bool fired = false;
    REQUIRE(loop.after(microseconds(1500), [&fired](timer_event) { fired = true; }));
    int iterations = 0;
    while (!fired && iterations < 1000) {
        REQUIRE(!loop.run_once());
        ++iterations;
    }
    CHECK(fired);
    CHECK(iterations <= 3);

    // The same below a microsecond, where truncation would give a zero
    // timeout.
    fired = false;
    REQUIRE(loop.after(nanoseconds(700), [&fired](timer_event) { fired = true; }));
    iterations = 0;
    while (!fired && iterations < 1000) {
        REQUIRE(!loop.run_once());
        ++iterations;
    }
    CHECK(fired);
    CHECK(iterations <= 3);
}

TEST_CASE("run_once(max_wait) returns after max_wait when nothing happens", "[timer]") {
    timer_loop loop;
    REQUIRE(loop.after(seconds(10), [](timer_event) {}));
    int64_t t0 = test::now_ns();
    REQUIRE(!loop.run_once(milliseconds(30)));
    int64_t took = test::now_ns() - t0;
    CHECK(took >= 30000000);
    CHECK(took < 5000000000);
    t0 = test::now_ns();
    REQUIRE(!loop.poll());
    CHECK(test::now_ns() - t0 < 5000000000);
}

// ---- re-arms to a later deadline and cancels leave the heap entry behind -------
// A re-arm to a later deadline only records the new deadline, and a cancel
// only marks the timer dead; the heap entry is brought up to date (or
// dropped) when it reaches the top. None of that may show: in virtual time,
// exactly.

namespace {
typedef microloop::basic_loop<microloop::capacity<4, 16>, microloop::manual_clock> vt_loop;

struct counter {
    int* n;
    void operator()(timer_event) const { ++*n; }
};
} // namespace

TEST_CASE("a timer re-armed to a later deadline fires at the new one, not the old", "[timer]") {
    vt_loop loop;
    int fired = 0;
    counter c = {&fired};
    microloop::timer_handle h = loop.after(milliseconds(10), c);
    REQUIRE(h);
    REQUIRE(!loop.rearm(h, milliseconds(30)));
    CHECK(loop.remaining(h) == milliseconds(30));
    int listed = 0;
    loop.for_each_timer([&](microloop::timer_handle t, nanoseconds deadline, nanoseconds) {
        ++listed;
        CHECK(t == h);
        CHECK(deadline == milliseconds(30));
    });
    CHECK(listed == 1);
    loop.clock().advance(milliseconds(10)); // the old deadline
    REQUIRE(!loop.poll());
    CHECK(fired == 0);
    CHECK(loop.remaining(h) == milliseconds(20));
    CHECK(loop.active() == 1);
    loop.clock().advance(milliseconds(19));
    REQUIRE(!loop.poll());
    CHECK(fired == 0);
    CHECK(loop.remaining(h) == milliseconds(1));
    loop.clock().advance(milliseconds(1));
    REQUIRE(!loop.poll());
    CHECK(fired == 1);
    CHECK(loop.active() == 0);

    // A repeating timer keeps its period from the re-armed deadline on.
    microloop::timer_handle p = loop.every(milliseconds(10), c);
    REQUIRE(p);
    REQUIRE(!loop.rearm(p, milliseconds(25)));
    loop.clock().advance(milliseconds(10));
    REQUIRE(!loop.poll());
    CHECK(fired == 1);
    loop.clock().advance(milliseconds(15));
    REQUIRE(!loop.poll());
    CHECK(fired == 2);
    CHECK(loop.remaining(p) == milliseconds(10));
    loop.clock().advance(milliseconds(10));
    REQUIRE(!loop.poll());
    CHECK(fired == 3);
    REQUIRE(!loop.cancel(p));
}

TEST_CASE("equal deadlines fire in the order of their last arming, also after re-arms to a later deadline", "[timer]") {
    vt_loop loop;
    order_log log;
    microloop::timer_handle h[8];
    for (int i = 0; i < 7; ++i) {
        tick t = {&log, i};
        h[i] = loop.after(milliseconds(1 + i), t); // earlier than 20 ms: re-armed later, in place
        REQUIRE(h[i]);
    }
    tick last = {&log, 7};
    h[7] = loop.after(milliseconds(50), last); // later than 20 ms: moves up
    REQUIRE(h[7]);
    const int order[8] = {3, 0, 6, 7, 1, 5, 2, 4};
    for (int i = 0; i < 8; ++i) REQUIRE(!loop.rearm(h[order[i]], milliseconds(20)));
    // Twice for 5: behind the others again.
    REQUIRE(!loop.rearm(h[5], milliseconds(20)));
    for (int i = 0; i < 8; ++i) CHECK(loop.remaining(h[i]) == milliseconds(20));
    for (int ms = 0; ms < 19; ++ms) {
        loop.clock().advance(milliseconds(1));
        REQUIRE(!loop.poll());
    }
    CHECK(log.n == 0);
    loop.clock().advance(milliseconds(1));
    REQUIRE(!loop.poll());
    REQUIRE(log.n == 8);
    const int expect[8] = {3, 0, 6, 7, 1, 2, 4, 5};
    for (int i = 0; i < 8; ++i) CHECK(log.who[i] == expect[i]);
}

TEST_CASE("a cancelled timer never fires, and the next timer in its place fires on time", "[timer]") {
    vt_loop loop;
    order_log log;
    tick a = {&log, 1}, b = {&log, 2}, c = {&log, 3}, d = {&log, 4};
    microloop::timer_handle ha = loop.after(milliseconds(10), a);
    REQUIRE(ha);
    REQUIRE(!loop.cancel(ha));
    CHECK(loop.active() == 0);
    CHECK(loop.cancel(ha) == microloop::errc::stale_handle);
    CHECK(loop.rearm(ha, milliseconds(1)) == microloop::errc::stale_handle);
    CHECK(loop.remaining(ha) == nanoseconds::zero());
    int listed = 0;
    loop.for_each_timer([&listed](microloop::timer_handle, nanoseconds, nanoseconds) { ++listed; });
    CHECK(listed == 0);
    CHECK(!loop.run()); // nothing armed: returns at once
    // Later than the cancelled one's deadline, then earlier.
    microloop::timer_handle hb = loop.after(milliseconds(30), b);
    REQUIRE(hb);
    CHECK(hb != ha);
    REQUIRE(!loop.cancel(hb));
    microloop::timer_handle hc = loop.after(milliseconds(5), c);
    REQUIRE(hc);
    microloop::timer_handle hd = loop.after(milliseconds(30), d);
    REQUIRE(hd);
    CHECK(loop.active() == 2);
    for (int ms = 0; ms < 30; ++ms) {
        loop.clock().advance(milliseconds(1));
        REQUIRE(!loop.poll());
        if (ms == 4) CHECK(log.n == 1);
    }
    REQUIRE(log.n == 2);
    CHECK(log.who[0] == 3);
    CHECK(log.who[1] == 4);
    CHECK(loop.active() == 0);
}

TEST_CASE("a table of N timers holds N, whatever was cancelled before", "[timer]") {
    typedef microloop::basic_loop<microloop::capacity<1, 4>, microloop::manual_clock> small_loop;
    small_loop loop;
    int fired = 0;
    counter c = {&fired};
    microloop::timer_handle h[4];
    for (int round = 0; round < 3; ++round) {
        for (int i = 0; i < 4; ++i) {
            h[i] = loop.after(milliseconds(10 * (round + 1) + i), c);
            REQUIRE(h[i]);
        }
        CHECK(loop.after(milliseconds(1), c).error() == microloop::errc::table_full);
        for (int i = 0; i < 4; ++i) REQUIRE(!loop.cancel(h[i]));
    }
    // Four live; a repeating one cancels itself and arms a new timer from its
    // callback: four live and one cancelled in the heap at once.
    for (int i = 0; i < 3; ++i) REQUIRE((h[i] = loop.after(milliseconds(100), c)));
    struct swap_self {
        small_loop* loop;
        int* fired;
        void operator()(timer_event ev) const {
            ++*fired;
            REQUIRE(!loop->cancel(ev.handle));
            counter k = {fired};
            REQUIRE(loop->after(milliseconds(5), k));
            CHECK(loop->after(milliseconds(5), k).error() == microloop::errc::table_full);
        }
    } s = {&loop, &fired};
    REQUIRE(loop.every(milliseconds(10), s));
    loop.clock().advance(milliseconds(10));
    REQUIRE(!loop.poll());
    CHECK(fired == 1);
    CHECK(loop.stats().timers.used == 4);
    loop.clock().advance(milliseconds(5));
    REQUIRE(!loop.poll());
    CHECK(fired == 2);
    for (int i = 0; i < 3; ++i) CHECK(loop.remaining(h[i]) == milliseconds(85));
    loop.clock().advance(milliseconds(85));
    REQUIRE(!loop.poll());
    CHECK(fired == 5);
    CHECK(loop.active() == 0);
}

TEST_CASE("a one-shot re-armed, cancelled and re-armed again from its own callback fires once more", "[timer]") {
    vt_loop loop;
    struct self {
        vt_loop* loop;
        int* fired;
        void operator()(timer_event ev) const {
            if (++*fired > 1) return;
            REQUIRE(!loop->rearm(ev.handle, milliseconds(50)));
            REQUIRE(!loop->cancel(ev.handle));
            REQUIRE(!loop->rearm(ev.handle, milliseconds(20)));
            CHECK(loop->remaining(ev.handle) == milliseconds(20));
        }
    };
    int fired = 0;
    self s = {&loop, &fired};
    microloop::timer_handle h = loop.after(milliseconds(10), s);
    REQUIRE(h);
    loop.clock().advance(milliseconds(10));
    REQUIRE(!loop.poll());
    CHECK(fired == 1);
    CHECK(loop.remaining(h) == milliseconds(20));
    loop.clock().advance(milliseconds(20));
    REQUIRE(!loop.poll());
    CHECK(fired == 2);
    CHECK(loop.active() == 0);
    loop.clock().advance(milliseconds(50));
    REQUIRE(!loop.poll());
    CHECK(fired == 2);
}

// ---- the timer arming sequence wraps ------------------------------------------------

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

// ---- timers armed outside callbacks -------------------------------------------------

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

// ---- a timer callback that throws ---------------------------------------------------

#if defined(__cpp_exceptions) || defined(__EXCEPTIONS)
using test::boom;

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
#endif

// ---- periods that round to nothing --------------------------------------------------

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

// ---- the virtual clock, and stale handles of repeating timers -----------------------

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

// ---- bad timeouts -------------------------------------------------------------------

TEST_CASE("bad timeouts are refused", "[error]") {
    small_loop loop;
    canary c(loop);
    REQUIRE(c.h);
    typedef duration<long long, std::ratio<86400> > days;

    CHECK(loop.after(milliseconds(-1), noop_timer).error() == errc::bad_timeout);
    CHECK(loop.after(nanoseconds(-1), noop_timer).error() == errc::bad_timeout);
    CHECK(loop.every(milliseconds(0), noop_timer).error() == errc::bad_timeout);
    CHECK(loop.every(seconds(-5), noop_timer).error() == errc::bad_timeout);
    CHECK(loop.after(days(36526), noop_timer).error() == errc::bad_timeout); // > 100 years
    CHECK(loop.after(hours::max(), noop_timer).error() == errc::bad_timeout);
    CHECK(loop.after(duration<unsigned long long>::max(), noop_timer).error() == errc::bad_timeout);
    CHECK(loop.add_timer(milliseconds(1), milliseconds(-1), noop_timer).error() == errc::bad_timeout);
    CHECK(loop.add_timer(days(40000), milliseconds(1), noop_timer).error() == errc::bad_timeout);
    // Not a number is not a duration.
    CHECK(loop.after(duration<double>(NAN), noop_timer).error() == errc::bad_timeout);
    CHECK(loop.after(duration<double>(INFINITY), noop_timer).error() == errc::bad_timeout);
    CHECK(loop.run_once(duration<double, std::milli>(NAN)) == errc::bad_timeout);
    CHECK(loop.run_once(milliseconds(-1)) == errc::bad_timeout);
    CHECK(loop.on_stall(milliseconds(-1), [](const microloop::stall_report&) {}) == errc::bad_timeout);
    CHECK(loop.active() == 1); // nothing was armed by the failures

    microloop::timer_handle t = loop.after(seconds(10), noop_timer);
    REQUIRE(t);
    CHECK(loop.rearm(t, milliseconds(-1)) == errc::bad_timeout);
    CHECK(loop.rearm(t, days(36526)) == errc::bad_timeout);
    CHECK(loop.rearm(t, duration<double>(NAN)) == errc::bad_timeout);
    CHECK(loop.remaining(t) > seconds(5)); // untouched by the failed rearm()

    // The largest accepted ones work and fit.
    microloop::timer_handle far = loop.after(days(36525), noop_timer);
    CHECK(far);
    CHECK(loop.remaining(far) > days(36524));
    CHECK(loop.every(days(36525), noop_timer));
    REQUIRE(!loop.cancel(far));
    // A unit finer than the nanosecond: 106 days, not an overflow.
    microloop::timer_handle pico = loop.after(duration<long long, std::pico>::max(), noop_timer);
    CHECK(pico);
    CHECK(loop.remaining(pico) > days(100));
    CHECK(loop.remaining(pico) < days(107));
    CHECK(c.alive(loop));
}

// ---- nested iterations ------------------------------------------------------------

TEST_CASE("a one-shot re-arms itself from its own callback after a nested poll() ran another timer",
          "[robust][timer]") {
    virtual_loop loop;
    struct state {
        virtual_loop* loop;
        int outer, inner;
        errc rearmed;
    } st = {&loop, 0, 0, errc::system};
    microloop::timer_handle h = loop.after(milliseconds(1), [&st](timer_event ev) {
        if (++st.outer > 1) return;
        REQUIRE(st.loop->after(milliseconds(0), [&st](timer_event) { ++st.inner; }));
        CHECK(!st.loop->poll()); // fires the new timer
        st.rearmed = st.loop->rearm(ev.handle, milliseconds(5)).code();
    });
    REQUIRE(h);
    loop.clock().advance(milliseconds(1));
    REQUIRE(!loop.poll());
    CHECK(st.inner == 1);
    CHECK(st.rearmed == errc::ok);
    CHECK(loop.remaining(h) == milliseconds(5));
    loop.clock().advance(milliseconds(5));
    REQUIRE(!loop.poll());
    CHECK(st.outer == 2);
    CHECK(loop.stats().timers.used == 0);
}

TEST_CASE("a table of 2 timers holds 2 after one-shots ran nested poll()s from their callbacks", "[robust][timer]") {
    typedef microloop::basic_loop<microloop::capacity<1, 2, 0, 0>, microloop::manual_clock> two_timers;
    two_timers loop;
    for (int round = 0; round < 4; ++round) {
        INFO("round " << round);
        int inner = 0;
        REQUIRE(loop.after(milliseconds(1), [&loop, &inner](timer_event) {
            REQUIRE(loop.after(milliseconds(0), [&inner](timer_event) { ++inner; }));
            CHECK(!loop.poll());
        }));
        loop.clock().advance(milliseconds(1));
        REQUIRE(!loop.poll());
        CHECK(inner == 1);
        CHECK(loop.stats().timers.used == 0);
    }
    microloop::timer_handle a = loop.after(milliseconds(1), noop_timer);
    microloop::timer_handle b = loop.after(milliseconds(1), noop_timer);
    CHECK(a);
    CHECK(b);
}

TEST_CASE("inside its own callback a one-shot's handle acts for every call: cancel() is ok and it stays gone",
          "[robust][timer]") {
    virtual_loop loop;
    struct state {
        virtual_loop* loop;
        int calls;
        errc first, second;
        bool zero;
    } st = {&loop, 0, errc::system, errc::system, false};
    microloop::timer_handle h = loop.after(milliseconds(1), [&st](timer_event ev) {
        ++st.calls;
        st.first = st.loop->cancel(ev.handle).code();
        st.second = st.loop->cancel(ev.handle).code();
        st.zero = st.loop->remaining(ev.handle) == nanoseconds::zero();
    });
    REQUIRE(h);
    loop.clock().advance(milliseconds(1));
    REQUIRE(!loop.poll());
    CHECK(st.calls == 1);
    CHECK(st.first == errc::ok);
    CHECK(st.second == errc::ok);
    CHECK(st.zero);
    // Once its callback returned without re-arming it: stale for everything.
    CHECK(loop.cancel(h) == errc::stale_handle);
    CHECK(loop.rearm(h, milliseconds(1)) == errc::stale_handle);
    CHECK(loop.remaining(h) == nanoseconds::zero());
    // Re-armed, then cancelled, in its callback: it does not come back.
    int fired = 0;
    microloop::timer_handle g = loop.after(milliseconds(1), [&loop, &fired](timer_event ev) {
        ++fired;
        CHECK(!loop.rearm(ev.handle, milliseconds(1)));
        CHECK(!loop.cancel(ev.handle));
        CHECK(!loop.cancel(ev.handle));
        CHECK(loop.remaining(ev.handle) == nanoseconds::zero());
    });
    REQUIRE(g);
    loop.clock().advance(milliseconds(1));
    REQUIRE(!loop.poll());
    loop.clock().advance(milliseconds(5));
    REQUIRE(!loop.poll());
    CHECK(fired == 1);
    CHECK(loop.active() == 0);
    CHECK(loop.stats().timers.used == 0);
}
