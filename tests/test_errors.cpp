// Every error the core reports, stale handles, fds closed behind the loop's
// back, signals interrupting select(), stop(), and stall reports. After each
// failure the loop must keep working.
#include <microloop.hpp>

#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/time.h>

#include <chrono>

#include "catch.hpp"
#include "test_util.hpp"

using namespace std::chrono;
using microloop::errc;
using microloop::io_event;
using microloop::timer_event;

namespace {

typedef microloop::loop<4, 4> small_loop;

// A pipe watcher that proves the loop still works: write, iterate, count.
struct canary {
    test::fd_pair p;
    int calls;
    microloop::io_handle h;

    template <class Loop>
    explicit canary(Loop& loop) : p(test::make_pipe()), calls(0) {
        h = loop.watch(p.a.get(), microloop::readable, [this](io_event ev) {
            ++calls;
            test::drain(ev.fd);
        });
    }
    template <class Loop>
    bool alive(Loop& loop) {
        int before = calls;
        if (!test::put_byte(p.b.get())) return false;
        loop.run_once(seconds(1));
        return calls == before + 1;
    }
};

void noop_io(io_event) {}
void noop_timer(timer_event) {}

} // namespace

TEST_CASE("error codes have messages and compare", "[error]") {
    for (int i = 0; i <= static_cast<int>(errc::canceled); ++i) {
        const char* m = microloop::message(static_cast<errc>(i));
        REQUIRE(m);
        CHECK(strlen(m) > 0);
        CHECK(strcmp(m, "unknown error") != 0);
    }
    microloop::error_code ok, bad(errc::bad_fd), sys(errc::system, EIO);
    CHECK(!ok);
    CHECK(bad);
    CHECK(bad == errc::bad_fd);
    CHECK(bad != errc::ok);
    CHECK(sys.sys() == EIO);
    CHECK(sys != microloop::error_code(errc::system, EAGAIN));

    microloop::io_handle none;
    CHECK(!none);
    CHECK(none.error() == errc::stale_handle);
    microloop::timer_handle failed(errc::table_full);
    CHECK(!failed);
    CHECK(failed.error() == errc::table_full);
}

TEST_CASE("bad fds are refused before they reach an fd_set", "[error]") {
    small_loop loop;
    canary c(loop);
    REQUIRE(c.h);

    microloop::io_handle h = loop.watch(-1, microloop::readable, noop_io);
    CHECK(!h);
    CHECK(h.error() == errc::bad_fd);
    CHECK(loop.watch(INT_MIN, microloop::readable, noop_io).error() == errc::bad_fd);

    // A real fd at FD_SETSIZE or above, when the fd limit allows one.
    struct rlimit rl;
    int high = -1;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < static_cast<rlim_t>(FD_SETSIZE + 8) &&
            (rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= static_cast<rlim_t>(FD_SETSIZE + 8))) {
            struct rlimit raised = rl;
            raised.rlim_cur = FD_SETSIZE + 8;
            setrlimit(RLIMIT_NOFILE, &raised);
        }
        high = fcntl(c.p.b.get(), F_DUPFD_CLOEXEC, FD_SETSIZE);
    }
    test::unique_fd high_fd(high);
    if (high >= 0) {
        CHECK(loop.watch(high, microloop::readable, noop_io).error() == errc::fd_out_of_range);
        CHECK(loop.watch(high, microloop::writable, noop_io).error() == errc::fd_out_of_range);
    }
    CHECK(loop.watch(FD_SETSIZE, microloop::readable, noop_io).error() == errc::fd_out_of_range);
    CHECK(loop.watch(INT_MAX, microloop::priority, noop_io).error() == errc::fd_out_of_range);
    CHECK(loop.active() == 1);
    CHECK(c.alive(loop));
    high_fd.reset();
    if (high >= 0) setrlimit(RLIMIT_NOFILE, &rl);
}

TEST_CASE("unknown event bits are a bad argument", "[error]") {
    small_loop loop;
    canary c(loop);
    REQUIRE(c.h);
    test::fd_pair p = test::make_pipe();
    REQUIRE(p.ok());
    CHECK(loop.watch(p.a.get(), microloop::io_error, noop_io).error() == errc::bad_argument);
    CHECK(loop.watch(p.a.get(), 0x100u, noop_io).error() == errc::bad_argument);
    CHECK(loop.watch(p.a.get(), microloop::readable | 0x80000000u, noop_io).error() == errc::bad_argument);
    CHECK(loop.modify(c.h, microloop::readable | microloop::io_error) == errc::bad_argument);
    CHECK(loop.modify(c.h, ~0u) == errc::bad_argument);
    // The failed modify() left the watcher as it was.
    CHECK(loop.active() == 1);
    CHECK(c.alive(loop));
    // The fd refused above was not half-registered.
    CHECK(loop.watch(p.a.get(), microloop::readable, noop_io));
}

TEST_CASE("a null function pointer is refused, not called", "[error]") {
    small_loop loop;
    canary c(loop);
    REQUIRE(c.h);
    test::fd_pair p = test::make_pipe();
    REQUIRE(p.ok());
    void (*no_io)(io_event) = nullptr;
    void (*no_timer)(timer_event) = nullptr;
    void (*no_stall)(const microloop::stall_report&) = nullptr;
    CHECK(loop.watch(p.a.get(), microloop::readable, no_io).error() == errc::bad_argument);
    CHECK(loop.after(milliseconds(1), no_timer).error() == errc::bad_argument);
    CHECK(loop.every(milliseconds(1), no_timer).error() == errc::bad_argument);
    CHECK(loop.on_stall(milliseconds(1), no_stall) == errc::bad_argument);
    CHECK(loop.active() == 1);
    CHECK(c.alive(loop));
    // Function names and non-null pointers are fine.
    CHECK(loop.watch(p.a.get(), microloop::readable, noop_io));
    void (*tp)(timer_event) = noop_timer;
    CHECK(loop.after(milliseconds(1), tp));
}

TEST_CASE("an fd can have only one watcher", "[error]") {
    small_loop loop;
    canary c(loop);
    REQUIRE(c.h);
    CHECK(loop.watch(c.p.a.get(), microloop::writable, noop_io).error() == errc::already_watched);
    CHECK(c.alive(loop)); // the first watcher is untouched
    REQUIRE(!loop.modify(c.h, 0));
    // A paused watcher still holds its fd.
    CHECK(loop.watch(c.p.a.get(), microloop::readable, noop_io).error() == errc::already_watched);
    REQUIRE(!loop.unwatch(c.h));
    CHECK(loop.watch(c.p.a.get(), microloop::readable, noop_io));
}

TEST_CASE("full tables are refused and usable again once freed", "[error]") {
    microloop::loop<2, 2> loop;
    canary c(loop);
    REQUIRE(c.h);
    test::fd_pair p = test::make_socketpair();
    REQUIRE(p.ok());
    microloop::io_handle h2 = loop.watch(p.a.get(), microloop::readable, noop_io);
    REQUIRE(h2);
    CHECK(loop.watch(p.b.get(), microloop::readable, noop_io).error() == errc::table_full);

    microloop::timer_handle t1 = loop.after(seconds(10), noop_timer);
    microloop::timer_handle t2 = loop.every(seconds(10), noop_timer);
    REQUIRE(t1);
    REQUIRE(t2);
    microloop::timer_handle t3 = loop.after(seconds(10), noop_timer);
    CHECK(!t3);
    CHECK(t3.error() == errc::table_full);
    CHECK(loop.cancel(t3) == errc::stale_handle);
    CHECK(loop.active() == 4);
    CHECK(c.alive(loop));

    REQUIRE(!loop.unwatch(h2));
    CHECK(loop.watch(p.b.get(), microloop::readable, noop_io));
    REQUIRE(!loop.cancel(t1));
    CHECK(loop.after(seconds(10), noop_timer));
    CHECK(c.alive(loop));
}

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

TEST_CASE("stale and invalid handles are refused and never touch a newer source", "[error]") {
    small_loop loop;
    test::fd_pair p = test::make_pipe();
    REQUIRE(p.ok());
    test::io_log log;
    microloop::io_handle old = loop.watch(p.a.get(), microloop::readable, [&log](io_event ev) { log.add(ev); });
    REQUIRE(old);
    REQUIRE(!loop.unwatch(old));
    CHECK(loop.unwatch(old) == errc::stale_handle); // twice

    // The slot is reused by the next watcher; the old handle names it no more.
    microloop::io_handle fresh = loop.watch(p.a.get(), microloop::readable, [&log](io_event ev) {
        log.add(ev);
        test::drain(ev.fd);
    });
    REQUIRE(fresh);
    CHECK((fresh.id() & 0xffffu) == (old.id() & 0xffffu)); // same slot
    CHECK(fresh != old);
    CHECK(loop.unwatch(old) == errc::stale_handle);
    CHECK(loop.modify(old, 0) == errc::stale_handle);
    REQUIRE(test::put_byte(p.b.get()));
    loop.run_once(seconds(1));
    REQUIRE(log.n == 1);
    CHECK(log.e[0].id == fresh.id());

    // Default-constructed, failed and forged handles.
    CHECK(loop.unwatch(microloop::io_handle()) == errc::stale_handle);
    CHECK(loop.modify(microloop::io_handle(), microloop::readable) == errc::stale_handle);
    CHECK(loop.unwatch(microloop::io_handle(errc::bad_fd)) == errc::stale_handle);
    CHECK(loop.unwatch(microloop::io_handle::from_id(0xffffffffu)) == errc::stale_handle);
    CHECK(loop.unwatch(microloop::io_handle::from_id(fresh.id() + 0x10000u)) == errc::stale_handle);
    CHECK(loop.unwatch(microloop::io_handle::from_id((fresh.id() & 0xffff0000u) | 3u)) == errc::stale_handle);
    CHECK(loop.cancel(microloop::timer_handle()) == errc::stale_handle);
    CHECK(loop.rearm(microloop::timer_handle(), milliseconds(1)) == errc::stale_handle);
    CHECK(loop.cancel(microloop::timer_handle::from_id(fresh.id())) == errc::stale_handle); // slot 0 has no timer

    // Timers the same way.
    microloop::timer_handle t_old = loop.after(seconds(10), noop_timer);
    REQUIRE(t_old);
    REQUIRE(!loop.cancel(t_old));
    int fired = 0;
    microloop::timer_handle t_new = loop.after(milliseconds(1), [&fired](timer_event) { ++fired; });
    REQUIRE(t_new);
    CHECK(loop.cancel(t_old) == errc::stale_handle);
    CHECK(loop.rearm(t_old, seconds(10)) == errc::stale_handle);
    CHECK(loop.remaining(t_old) == nanoseconds::zero());
    test::run_until(loop, [&fired] { return fired > 0; });
    CHECK(fired == 1);

    CHECK(loop.active() == 1); // the fresh watcher
    CHECK(!loop.unwatch(fresh));
}

TEST_CASE("an fd closed while watched is reported once and disabled", "[error]") {
    small_loop loop;
    canary c(loop);
    REQUIRE(c.h);
    test::fd_pair victim = test::make_socketpair();
    REQUIRE(victim.ok());
    test::io_log log;
    microloop::io_handle h = loop.watch(victim.a.get(), microloop::readable, [&log](io_event ev) { log.add(ev); });
    REQUIRE(h);
    microloop::timer_handle t = loop.every(milliseconds(5), noop_timer); // a timeout in every select()
    REQUIRE(t);

    int closed_fd = victim.a.release();
    REQUIRE(close(closed_fd) == 0);

    for (int i = 0; i < 5; ++i) CHECK(!loop.run_once(milliseconds(20)));
    REQUIRE(log.n == 1);
    CHECK(log.e[0].events == microloop::io_error);
    CHECK(log.e[0].fd == closed_fd);
    CHECK(log.e[0].id == h.id());
    CHECK(loop.active() == 2); // disabled: only the canary and the timer remain active
    CHECK(c.alive(loop));
    CHECK(c.alive(loop));
    CHECK(log.n == 1);

    // The loop neither spins nor exits: run_once(max_wait) with no timer
    // waits its time.
    REQUIRE(!loop.unwatch(h));
    REQUIRE(!loop.cancel(t));
    int64_t t0 = test::now_ns();
    CHECK(!loop.run_once(milliseconds(30)));
    CHECK(test::now_ns() - t0 >= 30000000);
}

TEST_CASE("the loop's own wake-up fd closed behind its back is an error, not a spin", "[error]") {
    // The kernel hands out the lowest free fd: the loop's wake-up fd gets the
    // number just freed here.
    int probe = open("/dev/null", O_RDONLY | O_CLOEXEC);
    REQUIRE(probe >= 0);
    close(probe);
    small_loop loop;
    REQUIRE(fcntl(probe, F_GETFD) != -1);
    close(probe); // what a "close every fd" routine would do
    // select() now fails with EBADF, and no watcher owns the bad fd: the loop
    // must say so rather than return success with nothing done, forever.
    microloop::error_code e = loop.run_once(milliseconds(10));
    CHECK(e == errc::system);
    CHECK(e.sys() == EBADF);
}

TEST_CASE("a watcher closing its own fd and another's", "[error]") {
    small_loop loop;
    test::fd_pair a = test::make_socketpair(), b = test::make_socketpair();
    REQUIRE(a.ok());
    REQUIRE(b.ok());
    test::io_log log;
    struct ctx {
        test::io_log* log;
        test::fd_pair* b;
    } c = {&log, &b};
    // a's watcher closes b's fd but does not unwatch it: b is reported as an
    // io_error in a later iteration, once.
    REQUIRE(loop.watch(a.a.get(), microloop::readable, [&c](io_event ev) {
        c.log->add(ev);
        test::drain(ev.fd);
        c.b->a.reset();
    }));
    int bfd = b.a.get();
    REQUIRE(loop.watch(bfd, microloop::writable, [&log](io_event ev) { log.add(ev); }));
    REQUIRE(test::put_byte(a.b.get()));
    for (int i = 0; i < 4; ++i) loop.run_once(milliseconds(20));
    int errors = 0;
    for (int i = 0; i < log.n; ++i)
        if (log.e[i].events == microloop::io_error) {
            ++errors;
            CHECK(log.e[i].fd == bfd);
        }
    CHECK(errors == 1);
    CHECK(log.count_fd(a.a.get()) == 1);
}

TEST_CASE("run() returns when nothing is active, and after stop() from a callback", "[error]") {
    small_loop loop;
    CHECK(!loop.run()); // nothing at all

    test::fd_pair s = test::make_socketpair();
    REQUIRE(s.ok());
    int calls = 0;
    struct ctx {
        small_loop* loop;
        int* calls;
    } c = {&loop, &calls};
    microloop::io_handle h = loop.watch(s.a.get(), microloop::writable, [&c](io_event) {
        if (++*c.calls == 3) c.loop->stop();
    });
    REQUIRE(h);
    CHECK(!loop.run());
    CHECK(calls == 3);
    // stop() ends only the run() it was called in.
    CHECK(!loop.run_once(seconds(1)));
    CHECK(calls == 4);
    REQUIRE(!loop.modify(h, 0));
    int64_t t0 = test::now_ns();
    CHECK(!loop.run()); // the paused watcher keeps nothing running
    CHECK(test::now_ns() - t0 < 1000000000);
}

// ---- select() interrupted by a signal ------------------------------------------------

namespace {

volatile sig_atomic_t alarms;
void on_alarm(int) { alarms = alarms + 1; }

// SIGALRM every `ms` with a handler installed without SA_RESTART, so that
// select() fails with EINTR; restored on destruction.
struct alarm_storm {
    struct sigaction old_action;
    explicit alarm_storm(int ms) {
        alarms = 0;
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_alarm;
        sigemptyset(&sa.sa_mask);
        sa.sa_flags = 0;
        sigaction(SIGALRM, &sa, &old_action);
        struct itimerval it;
        it.it_interval.tv_sec = 0;
        it.it_interval.tv_usec = ms * 1000;
        it.it_value = it.it_interval;
        setitimer(ITIMER_REAL, &it, nullptr);
    }
    ~alarm_storm() {
        struct itimerval off;
        memset(&off, 0, sizeof off);
        setitimer(ITIMER_REAL, &off, nullptr);
        // Ignoring discards a SIGALRM still pending (valgrind delivers late),
        // which the default action would turn into the end of the process.
        struct sigaction ignore;
        memset(&ignore, 0, sizeof ignore);
        ignore.sa_handler = SIG_IGN;
        sigaction(SIGALRM, &ignore, nullptr);
        sigaction(SIGALRM, &old_action, nullptr);
    }
};

} // namespace

TEST_CASE("select() interrupted by a signal is resumed with the time left", "[error]") {
    small_loop loop;
    bool fired = false;
    int64_t t0 = test::now_ns(); // before arming: the deadline counts from then
    REQUIRE(loop.after(milliseconds(100), [&fired](timer_event) { fired = true; }));
    {
        alarm_storm storm(15);
        // One iteration: the timer fires in it, however many signals arrive.
        CHECK(!loop.run_once(milliseconds(2000)));
        CHECK(fired);
        CHECK(alarms > 0);
    }
    int64_t took = test::now_ns() - t0;
    CHECK(took >= 100000000);
    CHECK(took < 1900000000);

    // Nothing to do: the interrupted wait is not cut short either.
    {
        alarm_storm storm(10);
        t0 = test::now_ns();
        CHECK(!loop.run_once(milliseconds(120)));
        CHECK(test::now_ns() - t0 >= 120000000);
        CHECK(alarms > 0);
    }
}

// ---- stall reports ----------------------------------------------------------------------

namespace {

struct stalls {
    microloop::stall_report r[8];
    int n;
    stalls() : n(0) {}
    void add(const microloop::stall_report& s) {
        if (n < 8) r[n] = s;
        ++n;
    }
};

} // namespace

TEST_CASE("on_stall names the callback that blocked the loop", "[error]") {
    small_loop loop;
    stalls st;
    REQUIRE(!loop.on_stall(milliseconds(20), [&st](const microloop::stall_report& r) { st.add(r); }));

    SECTION("a timer") {
        microloop::timer_handle h = loop.after(milliseconds(1), [](timer_event) { test::sleep_ms(50); });
        REQUIRE(h);
        CHECK(!loop.run());
        REQUIRE(st.n == 1);
        CHECK(st.r[0].kind == microloop::source_kind::timer);
        CHECK(st.r[0].id == h.id());
        CHECK(st.r[0].detail == -1);
        CHECK(st.r[0].duration_ns >= 50000000);
    }

    SECTION("an fd watcher, among quick ones") {
        test::fd_pair p = test::make_pipe(), q = test::make_pipe();
        REQUIRE(p.ok());
        REQUIRE(q.ok());
        microloop::io_handle quick = loop.watch(q.a.get(), microloop::readable, [](io_event ev) {
            test::drain(ev.fd);
        });
        microloop::io_handle slow = loop.watch(p.a.get(), microloop::readable, [](io_event ev) {
            test::drain(ev.fd);
            test::sleep_ms(50);
        });
        REQUIRE(quick);
        REQUIRE(slow);
        REQUIRE(test::put_byte(p.b.get()));
        REQUIRE(test::put_byte(q.b.get()));
        loop.run_once(seconds(1));
        REQUIRE(st.n == 1);
        CHECK(st.r[0].kind == microloop::source_kind::io);
        CHECK(st.r[0].id == slow.id());
        CHECK(st.r[0].detail == p.a.get());
        CHECK(st.r[0].duration_ns >= 50000000);

        // A zero threshold turns reports off.
        REQUIRE(!loop.on_stall(nanoseconds(0), [&st](const microloop::stall_report& r) { st.add(r); }));
        REQUIRE(test::put_byte(p.b.get()));
        loop.run_once(seconds(1));
        CHECK(st.n == 1);
    }
}
