// set_timer_slack(): the thread's timer slack, set on request only, in the
// thread that runs the loop; and timers that never fire before their
// deadline, with the default slack and with 1 ns. Slack values are read back
// with prctl(PR_GET_TIMERSLACK); timings are never asserted, only that a
// callback runs at or after its deadline.
#include <microloop.hpp>

#include <stdint.h>
#include <sys/prctl.h>

#include <chrono>
#include <thread>

#include "catch.hpp"
#include "test_util.hpp"

using namespace std::chrono;
using microloop::errc;
using microloop::timer_event;

namespace {

typedef microloop::loop<4, 8> slack_loop;

long thread_slack() { return static_cast<long>(prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0)); }

// Puts the calling thread's slack back as it was, whatever the test did.
class slack_guard {
public:
    slack_guard() : saved_(thread_slack()) {}
    ~slack_guard() {
        if (saved_ > 0) prctl(PR_SET_TIMERSLACK, static_cast<unsigned long>(saved_), 0, 0, 0);
    }
    long saved() const { return saved_; }

private:
    long saved_;
};

// What a probe callback does (set_timer_slack(ns) unless ns < 0) and saw:
// the thread's slack, and what set_timer_slack returned.
struct seen {
    slack_loop* loop;
    long ns;
    long slack;
    microloop::error_code err;
    seen() : loop(nullptr), ns(-1), slack(-2) {}
};

// Arms a one-shot that does what `s` says in the loop's thread.
void probe(slack_loop& loop, seen& s, long ns = -1) {
    s.loop = &loop;
    s.ns = ns;
    seen* p = &s;
    loop.after(milliseconds(1), [p](timer_event) {
        if (p->ns >= 0) p->err = p->loop->set_timer_slack(nanoseconds(p->ns));
        p->slack = thread_slack();
    });
}

// The deadline a timer has now (for_each_timer), or -1 if it is not armed.
int64_t deadline_of(slack_loop& loop, microloop::timer_handle h) {
    int64_t d = -1;
    loop.for_each_timer([&](microloop::timer_handle t, nanoseconds deadline, nanoseconds) {
        if (t == h) d = static_cast<int64_t>(deadline.count());
    });
    return d;
}

} // namespace

TEST_CASE("set_timer_slack from a callback takes effect in the loop thread at once", "[timer][slack]") {
    slack_guard guard;
    slack_loop loop;
    seen s1, s2;
    probe(loop, s1, 1);
    REQUIRE(!loop.run());
    CHECK(!s1.err);
    CHECK(s1.slack == 1);
    CHECK(thread_slack() == 1); // the loop's thread keeps it after run()
    // Outside callbacks the loop cannot know the caller is its thread: the
    // value waits for the next start.
    CHECK(!loop.set_timer_slack(microseconds(3)));
    CHECK(thread_slack() == 1);
    CHECK(!loop.poll());
    CHECK(thread_slack() == 3000);
    // 0 restores the thread's default slack (prctl's meaning of 0).
    probe(loop, s2, 0);
    REQUIRE(!loop.run());
    CHECK(!s2.err);
    CHECK(s2.slack == guard.saved());
}

TEST_CASE("set_timer_slack before run() from another thread is applied when the loop runs", "[timer][slack]") {
    slack_loop loop;
    seen s;
    probe(loop, s);
    const long main_before = thread_slack();
    REQUIRE(!loop.set_timer_slack(microseconds(7)));
    CHECK(thread_slack() == main_before); // not applied to the calling thread
    long loop_before = -2;
    microloop::error_code run_err(errc::canceled);
    std::thread t([&] {
        loop_before = thread_slack();
        run_err = loop.run();
    });
    t.join();
    CHECK(!run_err);
    CHECK(loop_before != 7000);
    CHECK(s.slack == 7000);
    CHECK(thread_slack() == main_before);

    // The loop moves to another thread: the slack follows it there.
    seen s2;
    probe(loop, s2);
    std::thread t2([&] { run_err = loop.run_once(seconds(5)); });
    t2.join();
    CHECK(!run_err);
    CHECK(s2.slack == 7000);
}

TEST_CASE("without set_timer_slack the thread's slack is left alone", "[timer][slack]") {
    long before = -2, during = -2, after = -2;
    microloop::error_code run_err(errc::canceled);
    std::thread t([&] {
        prctl(PR_SET_TIMERSLACK, 12345ul, 0, 0, 0);
        before = thread_slack();
        slack_loop loop;
        seen s;
        probe(loop, s);
        run_err = loop.run();
        during = s.slack;
        loop.poll();
        after = thread_slack();
    });
    t.join();
    CHECK(!run_err);
    CHECK(before == 12345);
    CHECK(during == 12345);
    CHECK(after == 12345);
}

TEST_CASE("set_timer_slack refuses bad values and keeps the last good one", "[timer][slack]") {
    slack_guard guard;
    slack_loop loop;
    REQUIRE(!loop.set_timer_slack(microseconds(5)));
    CHECK(loop.set_timer_slack(nanoseconds(-1)) == errc::bad_timeout);
    CHECK(loop.set_timer_slack(seconds(-3)) == errc::bad_timeout);
    CHECK(loop.set_timer_slack(milliseconds(1001)) == errc::bad_timeout);
    CHECK(loop.set_timer_slack(hours(24 * 365 * 1000)) == errc::bad_timeout);
    CHECK(loop.set_timer_slack(duration<double, std::nano>(0.5)) == errc::bad_timeout); // rounds to 0 ns
    CHECK(loop.set_timer_slack(duration<double>(-0.25)) == errc::bad_timeout);
    seen s;
    probe(loop, s);
    REQUIRE(!loop.run());
    CHECK(s.slack == 5000);
    // The largest value accepted.
    CHECK(!loop.set_timer_slack(seconds(1)));
    CHECK(loop.set_timer_slack(seconds(2)) == errc::bad_timeout);
    CHECK(!loop.poll());
    CHECK(thread_slack() == 1000000000);
}

TEST_CASE("timers keep their order and counts with a slack of 1 ns", "[timer][slack]") {
    slack_guard guard;
    slack_loop loop;
    REQUIRE(!loop.set_timer_slack(nanoseconds(1)));
    struct log_t {
        int order[8];
        int n;
    } log = {{0}, 0};
    struct count_t {
        int ticks;     // periods counted
        int last_step; // how many the last call added
    } count = {0, 0};
    int& ticks = count.ticks;
    int& last_step = count.last_step;
    struct one {
        log_t* log;
        int id;
        void operator()(timer_event) const {
            if (log->n < 8) log->order[log->n++] = id;
        }
    };
    // Armed from one callback, the three share the iteration's time, so
    // their order does not depend on how fast this machine arms them (armed
    // outside callbacks, each would count from its own reading of the clock).
    struct starter {
        slack_loop* loop;
        log_t* log;
        void operator()(timer_event) const {
            one a = {log, 3}, b = {log, 1}, c = {log, 2};
            REQUIRE(loop->after(milliseconds(6), a));
            REQUIRE(loop->after(milliseconds(2), b));
            REQUIRE(loop->after(milliseconds(4), c));
        }
    };
    starter start = {&loop, &log};
    REQUIRE(loop.after(nanoseconds(0), start));
    microloop::timer_handle rep = loop.every(milliseconds(1), [&count, &loop](timer_event ev) {
        count.last_step = 1 + static_cast<int>(ev.overruns); // a stall on this noisy machine skips periods
        count.ticks += count.last_step;
        if (count.ticks >= 10) loop.cancel(ev.handle);
    });
    REQUIRE(rep);
    REQUIRE(!loop.run());
    CHECK(thread_slack() == 1);
    REQUIRE(log.n == 3);
    CHECK(log.order[0] == 1);
    CHECK(log.order[1] == 2);
    CHECK(log.order[2] == 3);
    // Every period accounted for, and no call after the one that reached 10.
    CHECK(ticks >= 10);
    CHECK(ticks - last_step < 10);
    CHECK(loop.active() == 0);
}

// The state of the never-early test, reached through one pointer: callbacks
// hold at most 16 bytes.
struct punctual {
    static const int64_t period = 1000000; // the repeating timer's, in ns
    slack_loop loop;
    int64_t due[3];
    int early, loop_early, fired, ticks;
    punctual() : early(0), loop_early(0), fired(0), ticks(0) {}
    void check(int64_t deadline) {
        if (test::now_ns() < deadline) ++early;
        if (loop.now().count() < deadline) ++loop_early;
    }
};

const int64_t punctual::period;

TEST_CASE("a timer never fires before its deadline", "[timer][slack]") {
    slack_guard guard;
    // Each callback compares the real clock, and the loop's time, with the
    // deadline it fired for: a one-shot's from when it was armed, a
    // repeating timer's from its next deadline less the periods it covered.
    for (int with_slack = 0; with_slack < 2; ++with_slack) {
        punctual p;
        if (with_slack) REQUIRE(!p.loop.set_timer_slack(nanoseconds(1)));
        for (int i = 0; i < 3; ++i) {
            punctual* pp = &p;
            microloop::timer_handle h = p.loop.after(microseconds(1500 + 700 * i), [pp, i](timer_event) {
                pp->check(pp->due[i]);
                ++pp->fired;
            });
            REQUIRE(h);
            p.due[i] = deadline_of(p.loop, h);
            REQUIRE(p.due[i] > 0);
        }
        punctual* pp = &p;
        microloop::timer_handle rep = p.loop.every(nanoseconds(punctual::period), [pp](timer_event ev) {
            int64_t next = deadline_of(pp->loop, ev.handle);
            pp->check(next - (static_cast<int64_t>(ev.overruns) + 1) * punctual::period);
            pp->ticks += 1 + static_cast<int>(ev.overruns);
            if (pp->ticks >= 30) pp->loop.cancel(ev.handle);
        });
        REQUIRE(rep);
        REQUIRE(!p.loop.run());
        CHECK(p.fired == 3);
        CHECK(p.ticks >= 30);
        CHECK(p.early == 0);
        CHECK(p.loop_early == 0);
    }
}
