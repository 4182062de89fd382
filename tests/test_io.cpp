// fd watchers on real pipes, socketpairs and loopback TCP: readiness in each
// set, interest changes, removal, and what callbacks may do to the loop.
#include <microloop.hpp>

#include <limits.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/socket.h>

#include <chrono>

#include "catch.hpp"
#include "test_util.hpp"

using namespace std::chrono;
using microloop::errc;
using microloop::io_event;
using test::canary;
using test::noop_io;
using test::noop_timer;

namespace {

typedef microloop::loop<8, 8> small_loop;

} // namespace

TEST_CASE("a pipe with data is readable", "[io]") {
    small_loop loop;
    test::fd_pair p = test::make_pipe();
    REQUIRE(p.ok());
    test::io_log log;
    microloop::io_handle h = loop.watch(p.a.get(), microloop::readable, [&log](io_event ev) {
        log.add(ev);
        test::drain(ev.fd);
    });
    REQUIRE(h);
    CHECK(loop.active() == 1);

    loop.poll();
    CHECK(log.n == 0); // nothing written yet

    REQUIRE(test::put_byte(p.b.get()));
    loop.run_once(seconds(1));
    REQUIRE(log.n == 1);
    CHECK(log.e[0].fd == p.a.get());
    CHECK(log.e[0].events == microloop::readable);
    CHECK(log.e[0].id == h.id());

    loop.poll();
    CHECK(log.n == 1); // drained: not ready any more
}

TEST_CASE("a socketpair is readable with data and writable when empty", "[io]") {
    small_loop loop;
    test::fd_pair s = test::make_socketpair();
    REQUIRE(s.ok());
    test::io_log log;

    microloop::io_handle w = loop.watch(s.a.get(), microloop::writable, [&log](io_event ev) { log.add(ev); });
    REQUIRE(w);
    loop.run_once(seconds(1));
    REQUIRE(log.n == 1);
    CHECK(log.e[0].events == microloop::writable);

    // Both sets at once: one call carrying both bits.
    REQUIRE(!loop.modify(w, microloop::readable | microloop::writable));
    REQUIRE(test::put_byte(s.b.get()));
    loop.run_once(seconds(1));
    REQUIRE(log.n == 2);
    CHECK(log.e[1].events == (microloop::readable | microloop::writable));

    // Only readable asked for: writable readiness is not reported.
    REQUIRE(!loop.modify(w, microloop::readable));
    loop.run_once(seconds(1));
    REQUIRE(log.n == 3);
    CHECK(log.e[2].events == microloop::readable);
}

TEST_CASE("out-of-band TCP data makes the priority (except) set ready", "[io]") {
    small_loop loop;
    test::fd_pair t = test::make_tcp_pair();
    REQUIRE(t.ok());
    test::io_log log;
    microloop::io_handle h = loop.watch(t.b.get(), microloop::priority, [&log](io_event ev) { log.add(ev); });
    REQUIRE(h);

    loop.poll();
    CHECK(log.n == 0);

    char c = '!';
    REQUIRE(send(t.a.get(), &c, 1, MSG_OOB) == 1);
    test::run_until(loop, [&log] { return log.n > 0; });
    REQUIRE(log.n >= 1);
    CHECK(log.e[0].events == microloop::priority);
    CHECK(log.e[0].fd == t.b.get());

    // Reading the urgent byte clears the condition.
    char got = 0;
    REQUIRE(recv(t.b.get(), &got, 1, MSG_OOB) == 1);
    CHECK(got == '!');
    int before = log.n;
    loop.poll();
    CHECK(log.n == before);
}

TEST_CASE("modify pauses, resumes and switches interest", "[io]") {
    small_loop loop;
    test::fd_pair s = test::make_socketpair();
    REQUIRE(s.ok());
    test::io_log log;
    microloop::io_handle h = loop.watch(s.a.get(), microloop::readable, [&log](io_event ev) { log.add(ev); });
    REQUIRE(h);
    REQUIRE(test::put_byte(s.b.get()));

    // Paused: the data is there but nobody is called, and the watcher no
    // longer keeps run() running.
    REQUIRE(!loop.modify(h, 0));
    CHECK(loop.active() == 0);
    loop.poll();
    CHECK(log.n == 0);
    CHECK(!loop.run()); // returns at once: nothing active

    REQUIRE(!loop.modify(h, microloop::readable));
    CHECK(loop.active() == 1);
    loop.run_once(seconds(1));
    REQUIRE(log.n == 1);
    CHECK(log.e[0].events == microloop::readable);

    // readable -> writable: the unread byte no longer matters.
    REQUIRE(!loop.modify(h, microloop::writable));
    loop.run_once(seconds(1));
    REQUIRE(log.n == 2);
    CHECK(log.e[1].events == microloop::writable);
}

TEST_CASE("unwatch stops callbacks and frees the fd", "[io]") {
    small_loop loop;
    test::fd_pair p = test::make_pipe();
    REQUIRE(p.ok());
    test::io_log log;
    microloop::io_handle h = loop.watch(p.a.get(), microloop::readable, [&log](io_event ev) { log.add(ev); });
    REQUIRE(h);
    REQUIRE(test::put_byte(p.b.get()));
    REQUIRE(!loop.unwatch(h));
    CHECK(loop.active() == 0);
    loop.poll();
    CHECK(log.n == 0);
    CHECK(loop.unwatch(h) == microloop::errc::stale_handle);

    // The fd may be watched again.
    microloop::io_handle h2 = loop.watch(p.a.get(), microloop::readable, [&log](io_event ev) { log.add(ev); });
    REQUIRE(h2);
    CHECK(h2 != h);
    loop.run_once(seconds(1));
    CHECK(log.n == 1);
}

TEST_CASE("run() returns when the last watcher is removed", "[io]") {
    small_loop loop;
    test::fd_pair p = test::make_pipe();
    REQUIRE(p.ok());
    REQUIRE(test::put_byte(p.b.get()));
    int calls = 0;
    struct ctx {
        small_loop* loop;
        int* calls;
    } c = {&loop, &calls};
    REQUIRE(loop.watch(p.a.get(), microloop::readable, [&c](io_event ev) {
        ++*c.calls;
        c.loop->unwatch(ev.handle);
    }));
    CHECK(!loop.run());
    CHECK(calls == 1);
    CHECK(loop.active() == 0);
}

// ---- callbacks that change the loop while it dispatches --------------------------

namespace {

struct reentry {
    small_loop loop;
    microloop::io_handle h[4];
    int calls[4];
    test::fd_pair pair[4];
    reentry() {
        for (int i = 0; i < 4; ++i) {
            calls[i] = 0;
            pair[i] = test::make_socketpair();
        }
    }
};

} // namespace

TEST_CASE("a watcher that removes itself is not called again", "[io]") {
    reentry r;
    REQUIRE(r.pair[0].ok());
    REQUIRE(test::put_byte(r.pair[0].b.get()));
    r.h[0] = r.loop.watch(r.pair[0].a.get(), microloop::readable | microloop::writable, [&r](io_event ev) {
        ++r.calls[0];
        CHECK(!r.loop.unwatch(ev.handle));
        CHECK(r.loop.unwatch(ev.handle) == microloop::errc::stale_handle);
        CHECK(r.loop.modify(ev.handle, microloop::readable) == microloop::errc::stale_handle);
    });
    REQUIRE(r.h[0]);
    r.loop.run_once(seconds(1));
    r.loop.poll();
    r.loop.poll();
    CHECK(r.calls[0] == 1);
}

TEST_CASE("a ready watcher removed by an earlier callback is not called", "[io]") {
    reentry r;
    REQUIRE(r.pair[0].ok());
    REQUIRE(r.pair[1].ok());
    // Both ready in the same select(); whichever runs first removes the other.
    REQUIRE(test::put_byte(r.pair[0].b.get()));
    REQUIRE(test::put_byte(r.pair[1].b.get()));
    r.h[0] = r.loop.watch(r.pair[0].a.get(), microloop::readable, [&r](io_event ev) {
        ++r.calls[0];
        test::drain(ev.fd);
        CHECK(!r.loop.unwatch(r.h[1]));
    });
    r.h[1] = r.loop.watch(r.pair[1].a.get(), microloop::readable, [&r](io_event ev) {
        ++r.calls[1];
        test::drain(ev.fd);
        CHECK(!r.loop.unwatch(r.h[0]));
    });
    REQUIRE(r.h[0]);
    REQUIRE(r.h[1]);
    r.loop.run_once(seconds(1));
    CHECK(r.calls[0] + r.calls[1] == 1);
    r.loop.poll();
    CHECK(r.calls[0] + r.calls[1] == 1);
    CHECK(r.loop.active() == 1);
}

TEST_CASE("a watcher paused before a nested poll() is not called by the outer scan", "[io]") {
    reentry r;
    for (int i = 0; i < 3; ++i) REQUIRE(r.pair[i].ok());
    REQUIRE(r.pair[0].a.get() < r.pair[2].a.get());
    REQUIRE(test::put_byte(r.pair[0].b.get()));
    REQUIRE(test::put_byte(r.pair[2].b.get()));
    // pair[0]'s callback pauses pair[2]'s watcher, ready in this select(),
    // then runs a nested poll() that dispatches pair[1]: once it returns, the
    // outer scan must still know that the watchers changed.
    r.h[0] = r.loop.watch(r.pair[0].a.get(), microloop::readable, [&r](io_event ev) {
        ++r.calls[0];
        test::drain(ev.fd);
        CHECK(!r.loop.modify(r.h[2], 0));
        REQUIRE(test::put_byte(r.pair[1].b.get()));
        r.loop.poll();
    });
    r.h[1] = r.loop.watch(r.pair[1].a.get(), microloop::readable, [&r](io_event ev) {
        ++r.calls[1];
        test::drain(ev.fd);
    });
    r.h[2] = r.loop.watch(r.pair[2].a.get(), microloop::readable, [&r](io_event) { ++r.calls[2]; });
    REQUIRE(r.h[0]);
    REQUIRE(r.h[1]);
    REQUIRE(r.h[2]);
    r.loop.run_once(seconds(1));
    CHECK(r.calls[0] == 1);
    CHECK(r.calls[1] == 1);
    CHECK(r.calls[2] == 0);
    CHECK(r.loop.active() == 2); // the paused watcher is not active
}

TEST_CASE("a watcher added in a callback for a ready fd waits for the next iteration", "[io]") {
    reentry r;
    for (int i = 0; i < 3; ++i) REQUIRE(r.pair[i].ok());
    // pair[0].a < pair[1].a < pair[2].a, so the scan reaches the new fds
    // after the callback that adds them.
    REQUIRE(r.pair[0].a.get() < r.pair[1].a.get());
    REQUIRE(r.pair[1].a.get() < r.pair[2].a.get());

    r.h[2] = r.loop.watch(r.pair[2].a.get(), microloop::readable, [&r](io_event) { ++r.calls[3]; });
    REQUIRE(r.h[2]);
    r.h[0] = r.loop.watch(r.pair[0].a.get(), microloop::readable, [&r](io_event ev) {
        if (r.calls[0]++ > 0) return;
        test::drain(ev.fd);
        // A new fd that is ready right now ...
        r.h[1] = r.loop.watch(r.pair[1].a.get(), microloop::readable, [&r](io_event) { ++r.calls[1]; });
        // ... and an fd whose ready watcher is replaced by a new one.
        r.loop.unwatch(r.h[2]);
        r.h[2] = r.loop.watch(r.pair[2].a.get(), microloop::readable, [&r](io_event) { ++r.calls[2]; });
    });
    REQUIRE(r.h[0]);
    // Ready in this order after the watches: epoll reports fds in the order
    // they became ready, select() in fd order; both reach pair[0] first.
    REQUIRE(test::put_byte(r.pair[0].b.get()));
    REQUIRE(test::put_byte(r.pair[1].b.get()));
    REQUIRE(test::put_byte(r.pair[2].b.get()));
    r.loop.run_once(seconds(1));
    CHECK(r.calls[0] == 1);
    CHECK(r.calls[1] == 0);
    CHECK(r.calls[2] == 0);
    CHECK(r.calls[3] == 0);

    r.loop.poll();
    CHECK(r.calls[1] == 1);
    CHECK(r.calls[2] == 1);
    CHECK(r.calls[3] == 0);
}

namespace {

struct self_replace {
    microloop::loop<3, 2> loop;
    reentry r;
};

// A capture that notices being destroyed or overwritten while in use.
struct guard {
    enum : uint32_t { alive = 0x600dcafe };
    uint32_t magic;
    self_replace* s;
    explicit guard(self_replace* owner) : magic(alive), s(owner) {}
    guard(const guard& o) : magic(o.magic), s(o.s) {}
    ~guard() { magic = 0xdeadbeef; }
};

} // namespace

TEST_CASE("a callback may unwatch itself and watch a new fd (its slot is not reused under it)", "[io]") {
    // Capacity 3, two used: if the running watcher's slot were recycled at
    // unwatch(), the new watcher would be built over the running callback.
    self_replace s;
    reentry& r = s.r;
    for (int i = 0; i < 4; ++i) REQUIRE(r.pair[i].ok());
    REQUIRE(test::put_byte(r.pair[0].b.get()));
    REQUIRE(test::put_byte(r.pair[2].b.get()));
    REQUIRE(s.loop.watch(r.pair[1].a.get(), microloop::readable, [&r](io_event) { ++r.calls[1]; }));

    guard g(&s);
    r.h[0] = s.loop.watch(r.pair[0].a.get(), microloop::readable, [g](io_event ev) {
        CHECK(g.magic == static_cast<uint32_t>(guard::alive));
        self_replace* s = g.s;
        ++s->r.calls[0];
        CHECK(!s->loop.unwatch(ev.handle));
        s->r.h[2] = s->loop.watch(s->r.pair[2].a.get(), microloop::readable, [s](io_event e2) {
            ++s->r.calls[2];
            test::drain(e2.fd);
        });
        CHECK(s->r.h[2]);
        // Still our own captures, not the new watcher's.
        CHECK(g.magic == static_cast<uint32_t>(guard::alive));
        CHECK(g.s == s);
        CHECK(s->r.h[2] != ev.handle);
    });
    REQUIRE(r.h[0]);
    s.loop.run_once(seconds(1));
    CHECK(r.calls[0] == 1);
    CHECK(r.calls[2] == 0);
    s.loop.run_once(seconds(1));
    CHECK(r.calls[0] == 1);
    CHECK(r.calls[2] == 1);
    // The freed slot is usable once the callback has returned.
    CHECK(s.loop.watch(r.pair[3].a.get(), microloop::readable, [](io_event) {}));
}

TEST_CASE("timers and watchers may remove each other", "[io][timer]") {
    reentry r;
    REQUIRE(r.pair[0].ok());
    REQUIRE(test::put_byte(r.pair[0].b.get()));
    microloop::timer_handle t;
    struct ctx {
        reentry* r;
        microloop::timer_handle* t;
    } c = {&r, &t};
    // The watcher cancels a timer that is due in the same iteration.
    t = r.loop.after(milliseconds(0), [&r](microloop::timer_event) { ++r.calls[1]; });
    REQUIRE(t);
    r.h[0] = r.loop.watch(r.pair[0].a.get(), microloop::readable, [&c](io_event ev) {
        if (c.r->calls[0]++ == 0) CHECK(!c.r->loop.cancel(*c.t));
        test::drain(ev.fd);
    });
    REQUIRE(r.h[0]);
    test::sleep_ms(2);
    r.loop.run_once(seconds(1));
    CHECK(r.calls[0] == 1);
    CHECK(r.calls[1] == 0);

    // A timer unwatches a watcher that is ready.
    REQUIRE(test::put_byte(r.pair[0].b.get()));
    REQUIRE(r.loop.after(milliseconds(0), [&r](microloop::timer_event) {
        ++r.calls[2];
        CHECK(!r.loop.unwatch(r.h[0]));
    }));
    test::sleep_ms(2);
    r.loop.run_once(seconds(1)); // the fd goes first: the watcher runs, then the timer removes it
    r.loop.poll();
    CHECK(r.calls[2] == 1);
    CHECK(r.calls[0] == 2);
    CHECK(r.loop.active() == 0);
}

// ---- the word-at-a-time fd_set scan and the FD_ISSET path ---------------------------

namespace {

// Many fds spread over several words of fd_set, including the last fd
// select() can take.
struct spread {
    enum { count = 12 };
    test::fd_pair pair[count];
    int fds[count]; // the watched read ends, ascending
    int n;
    spread() : n(0) {
        struct rlimit rl;
        int top = FD_SETSIZE - 1;
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
            rl.rlim_cur < static_cast<rlim_t>(FD_SETSIZE))
            top = static_cast<int>(rl.rlim_cur) - 1;
        // Targets in different words: word 0 (low fds), and high ones.
        const int targets[count] = {-1, -1, 63, 64, 65, 127, 128, 300, 511, 700, top - 1, top};
        for (int i = 0; i < count; ++i) {
            pair[i] = test::make_socketpair();
            if (!pair[i].ok()) return;
            if (targets[i] >= 0 && targets[i] > pair[i].a.get()) {
                int moved = fcntl(pair[i].a.get(), F_DUPFD_CLOEXEC, targets[i]);
                if (moved < 0) return;
                pair[i].a.reset(moved);
            }
        }
        for (int i = 0; i < count; ++i) fds[n++] = pair[i].a.get();
    }
};

} // namespace

TEST_CASE("select results are read the same on every fd_set path", "[io]") {
    // The build picks the path with MICROLOOP_FDSET_WORDS; the suite runs
    // once with each, and this must pass in both.
#if MICROLOOP_FDSET_WORDS
    CHECK(microloop::detail::fdset_is_words()); // true on every Linux libc
#else
    CHECK(!microloop::detail::fdset_is_words());
#endif
    spread s;
    REQUIRE(s.n == spread::count);
    microloop::basic_loop<microloop::capacity<16, 4>, microloop::monotonic_clock, microloop::use_select> loop;
    test::io_log log;
    microloop::io_handle h[spread::count];
    for (int i = 0; i < spread::count; ++i) {
        h[i] = loop.watch(s.fds[i], microloop::readable | microloop::priority, [&log](io_event ev) {
            log.add(ev);
            test::drain(ev.fd);
        });
        REQUIRE(h[i]);
    }
    loop.poll();
    CHECK(log.n == 0);

    // Every other fd ready, then all of them, then the rest; each round is
    // dispatched in ascending fd order, each ready fd exactly once.
    const int rounds[3][2] = {{0, 2}, {0, 1}, {1, 2}};
    for (int round = 0; round < 3; ++round) {
        log.n = 0;
        int expect[spread::count], ne = 0;
        for (int i = rounds[round][0]; i < spread::count; i += rounds[round][1]) {
            REQUIRE(test::put_byte(s.pair[i].b.get()));
            expect[ne++] = s.fds[i];
        }
        loop.run_once(seconds(1));
        REQUIRE(log.n == ne);
        for (int i = 0; i < ne; ++i) {
            CHECK(log.e[i].fd == expect[i]);
            CHECK(log.e[i].events == microloop::readable);
        }
    }

    // Writable, on the highest fds only (the word scan's edge).
    log.n = 0;
    REQUIRE(!loop.modify(h[spread::count - 1], microloop::writable));
    REQUIRE(!loop.modify(h[spread::count - 3], microloop::writable));
    loop.run_once(seconds(1));
    REQUIRE(log.n == 2);
    CHECK(log.e[0].fd == s.fds[spread::count - 3]);
    CHECK(log.e[1].fd == s.fds[spread::count - 1]);
    CHECK(log.e[1].events == microloop::writable);

    // Removing the highest fd lowers what select() is asked to scan, and
    // the rest still work.
    for (int i = spread::count - 1; i >= spread::count / 2; --i) REQUIRE(!loop.unwatch(h[i]));
    log.n = 0;
    REQUIRE(test::put_byte(s.pair[0].b.get()));
    REQUIRE(test::put_byte(s.pair[spread::count / 2 - 1].b.get()));
    loop.run_once(seconds(1));
    REQUIRE(log.n == 2);
    CHECK(log.e[0].fd == s.fds[0]);
    CHECK(log.e[1].fd == s.fds[spread::count / 2 - 1]);
}

// ---- an fd callback that throws -----------------------------------------------------

#if defined(__cpp_exceptions) || defined(__EXCEPTIONS)
using test::boom;

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
#endif

// ---- bad fds, bad events, fds closed behind the loop's back -------------------------

TEST_CASE("bad fds are refused before they reach an fd_set", "[error]") {
    // select() only: epoll takes any fd (tests/test_backend_epoll.cpp).
    microloop::basic_loop<microloop::capacity<4, 4>, microloop::monotonic_clock, microloop::use_select> loop;
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
    test::small_loop loop;
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

TEST_CASE("an fd can have only one watcher", "[error]") {
    test::small_loop loop;
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

TEST_CASE("an fd closed while watched is reported once and disabled", "[error]") {
    test::small_loop loop;
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

TEST_CASE("a watcher closing its own fd and another's", "[error]") {
    test::small_loop loop;
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

TEST_CASE("a watcher that unwatches itself after a nested poll() keeps its closure and slot until it returns",
          "[robust][io]") {
    reentry r;
    for (int i = 0; i < 3; ++i) REQUIRE(r.pair[i].ok());
    REQUIRE(test::put_byte(r.pair[0].b.get()));
    int alive = 0;
    {
        test::life l(&alive);
        // The nested poll() runs pair[1]'s watcher; then pair[0]'s removes
        // itself and watches pair[2]: the running closure must survive both.
        r.h[0] = r.loop.watch(r.pair[0].a.get(), microloop::readable, [&r, l](io_event ev) {
            ++r.calls[0];
            test::drain(ev.fd);
            REQUIRE(test::put_byte(r.pair[1].b.get()));
            CHECK(!r.loop.poll());
            CHECK(!r.loop.unwatch(ev.handle));
            r.calls[2] = *l.alive;
            r.h[2] = r.loop.watch(r.pair[2].a.get(), microloop::readable, noop_io);
            CHECK(r.h[2]);
            r.calls[3] = *l.alive;
        });
    }
    r.h[1] = r.loop.watch(r.pair[1].a.get(), microloop::readable, [&r](io_event ev) {
        ++r.calls[1];
        test::drain(ev.fd);
    });
    REQUIRE(r.h[0]);
    REQUIRE(r.h[1]);
    REQUIRE(alive == 1);
    r.loop.run_once(seconds(1));
    CHECK(r.calls[0] == 1);
    CHECK(r.calls[1] == 1);
    CHECK(r.calls[2] == 1); // alive after unwatch()
    CHECK(r.calls[3] == 1); // alive after a new watch()
    CHECK(alive == 0);      // destroyed once it returned
    CHECK(r.loop.stats().io.used == 2);
    CHECK(!r.loop.unwatch(r.h[1]));
    CHECK(!r.loop.unwatch(r.h[2]));
}
