// Timers against the real monotonic clock. Timing is asserted through order,
// counts and the loop's own time, with generous margins: CI machines are
// noisy and the suite also runs under emulation.
#include <microloop.hpp>

#include <chrono>

#include "catch.hpp"
#include "test_util.hpp"

using namespace std::chrono;
using microloop::timer_event;

namespace {

typedef microloop::loop<4, 16> timer_loop;

// The order timers fired in, by the number each was given.
struct order_log {
    int who[32];
    int n;
    order_log() : n(0) {}
    void add(int id) {
        if (n < 32) who[n++] = id;
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
