// The loop itself: run(), run_once() and poll(), stop() and wake() (also
// from other threads), the wake-up fd, select() interrupted by signals, stall
// reports, fork() and after_fork(), module hooks, tables used to the last
// slot, stats() and the visitors.
#include <microloop.hpp>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>

#include "catch.hpp"
#include "test_util.hpp"

using namespace std::chrono;
using microloop::errc;
using microloop::io_event;
using microloop::timer_event;
using test::canary;
using test::noop_io;
using test::noop_timer;
using test::small_loop;
using test::virtual_loop;


// ---- running and stopping -----------------------------------------------------------

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

// ---- wake() and stop() from other threads -------------------------------------------

namespace {

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

// ---- refused arguments, full tables -------------------------------------------------

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

// ---- the wake-up fd -----------------------------------------------------------------

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

// ---- fork ---------------------------------------------------------------------------

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

TEST_CASE("fork: a child that skips after_fork() gets errc::forked with no wake-up pending; nothing of the parent's runs",
          "[loop][robust][fork]") {
    microloop::loop<2, 2> loop;
    test::fd_pair p = test::make_pipe();
    REQUIRE(p.ok());
    int reads = 0, fires = 0;
    REQUIRE(loop.watch(p.a.get(), microloop::readable, [&reads](io_event) { ++reads; })); // reads nothing
    REQUIRE(loop.after(milliseconds(0), [&fires](timer_event) { ++fires; }));
    REQUIRE(test::put_byte(p.b.get())); // the watcher is ready and the timer due; no wake-up is pending
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        int fail = 0;
        if (loop.poll() != errc::forked) fail |= 1;
        if (loop.run_once(milliseconds(10)) != errc::forked) fail |= 2;
        if (!fail && loop.run_once() != errc::forked) fail |= 4; // (before the fix: not reached)
        if (!fail && loop.run() != errc::forked) fail |= 8;       // (before the fix: it would never return)
        if (reads != 0) fail |= 16;
        if (fires != 0) fail |= 32;
        _exit(fail);
    }
    CHECK(wait_exit(pid) == 0);
    // The parent's watcher and timer are untouched.
    REQUIRE(!loop.poll());
    CHECK(reads == 1);
    CHECK(fires == 1);
}

TEST_CASE("fork: a child forked from a callback gets errc::forked from the run() it returns into", "[loop][robust][fork]") {
    typedef microloop::loop<2, 2> loop_t;
    struct state {
        loop_t loop;
        int ticks, at_fork;
        pid_t pid;
        microloop::timer_handle tick;
    };
    static state st;
    st.ticks = 0;
    st.at_fork = -1;
    st.pid = -1;
    st.tick = st.loop.every(milliseconds(1), [](timer_event) {
        ++st.ticks;
        if (st.pid == 0 && st.ticks > st.at_fork + 20) _exit(99); // the child's run() went on with the parent's timers
    });
    REQUIRE(st.tick);
    REQUIRE(st.loop.after(milliseconds(5), [](timer_event) {
        st.at_fork = st.ticks;
        st.pid = fork();
        if (st.pid != 0) st.loop.cancel(st.tick); // run() ends with nothing active (a stop() would wake the child)
    }));
    microloop::error_code e = st.loop.run();
    if (st.pid == 0) _exit(e == errc::forked ? 0 : 98);
    REQUIRE(st.pid > 0);
    CHECK(!e);
    CHECK(wait_exit(st.pid) == 0);
}

TEST_CASE("stop() leaves no wake-up behind: the next run_once(max_wait) waits", "[loop][robust]") {
    microloop::loop<1, 2> loop;
    microloop::mailbox<4> box(loop);
    // From a callback.
    REQUIRE(loop.after(milliseconds(0), [&loop](timer_event) { loop.stop(); }));
    REQUIRE(!loop.run());
    steady_clock::time_point t0 = steady_clock::now();
    REQUIRE(!loop.run_once(milliseconds(300)));
    CHECK(steady_clock::now() - t0 >= milliseconds(250)); // before the fix: at once
    // From outside, before the loop runs: the run_once() it stops returns at
    // once, the one after waits.
    loop.stop();
    REQUIRE(!loop.run_once(seconds(5)));
    t0 = steady_clock::now();
    REQUIRE(!loop.run_once(milliseconds(300)));
    CHECK(steady_clock::now() - t0 >= milliseconds(250));
    // A wake-up that came with the stop for other work is kept: the post runs
    // at the next iteration, it does not wait for another wake-up.
    struct work {
        microloop::loop<1, 2>* loop;
        microloop::mailbox<4>* box;
        int posted;
    } w = {&loop, &box, 0};
    int& posted = w.posted;
    REQUIRE(loop.after(milliseconds(0), [&w](timer_event) {
        REQUIRE(!w.box->post([&w] { ++w.posted; }));
        w.loop->stop();
    }));
    REQUIRE(!loop.run());
    CHECK(posted == 0);
    for (int i = 0; i < 3 && posted == 0; ++i) REQUIRE(!loop.run_once(seconds(5)));
    CHECK(posted == 1);
    box.close();
}

// ---- a table of N holds N -----------------------------------------------------------

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

// ---- introspection ------------------------------------------------------------------

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

// ---- iteration hooks: on_prepare, on_check, on_idle ------------------------------------

namespace {

// What happened, in order, as one letter each (no heap).
struct trace {
    char s[64];
    size_t n;
    trace() : n(0) { s[0] = 0; }
    void add(char c) {
        if (n + 1 < sizeof s) {
            s[n++] = c;
            s[n] = 0;
        }
    }
    std::string str() const { return std::string(s); }
};

typedef microloop::basic_loop<microloop::capacity<4, 4, 2, 2, 3> > hook_loop;

} // namespace

TEST_CASE("hooks: idle, prepare, the wait, fds, timers, check: that order, once per iteration", "[loop][hooks]") {
    static hook_loop loop;
    static trace t;
    t = trace();
    test::fd_pair p = test::make_pipe();
    REQUIRE(p.ok());
    REQUIRE(test::put_byte(p.b.get()));
    auto io = loop.watch(p.a.get(), microloop::readable, [](io_event) { t.add('f'); });
    auto tm = loop.after(milliseconds(0), [](timer_event) { t.add('t'); });
    auto idle = loop.on_idle([](microloop::hook_event) { t.add('i'); });
    auto prep = loop.on_prepare([](microloop::hook_event) { t.add('p'); });
    auto check = loop.on_check([](microloop::hook_event) { t.add('c'); });
    REQUIRE((io && tm && idle && prep && check));
    test::sleep_ms(1);
    REQUIRE_FALSE(loop.run_once());
    CHECK(t.str() == "ipftc");
    REQUIRE_FALSE(loop.poll());
    CHECK(t.str() == "ipftcipfc"); // the fd is still readable; the one-shot is gone
    CHECK(loop.stats().hooks.used == 3);
    CHECK_FALSE(loop.unwatch(idle));
    CHECK_FALSE(loop.unwatch(prep));
    CHECK_FALSE(loop.unwatch(check));
    CHECK(loop.unwatch(check) == errc::stale_handle);
    CHECK_FALSE(loop.unwatch(io));
}

TEST_CASE("hooks: what a prepare hook changes counts for that very wait", "[loop][hooks]") {
    static hook_loop loop;
    static trace t;
    static int rfd;
    static microloop::io_handle paused;
    t = trace();
    test::fd_pair p = test::make_pipe(), q = test::make_pipe();
    REQUIRE((p.ok() && q.ok()));
    REQUIRE(test::put_byte(p.b.get()));
    REQUIRE(test::put_byte(q.b.get()));
    rfd = p.a.get();
    paused = loop.watch(q.a.get(), 0, [](io_event) { t.add('q'); }); // paused: not in the sets
    REQUIRE(paused);
    // A watcher added, one resumed and a timer armed by the prepare hook are
    // all dispatched after the wait that follows it, in the same iteration.
    auto prep = loop.on_prepare([](microloop::hook_event ev) {
        t.add('p');
        loop.watch(rfd, microloop::readable, [](io_event e) {
            t.add('f');
            loop.unwatch(e.handle);
        });
        loop.modify(paused, microloop::readable);
        loop.after(milliseconds(0), [](timer_event) { t.add('t'); });
        loop.unwatch(ev.handle);
    });
    REQUIRE(prep);
    // run_once() without a limit would block forever if the wait did not
    // see them: nothing else is watched.
    REQUIRE_FALSE(loop.run_once());
    std::string s = t.str();
    CHECK(s.size() == 4);
    CHECK(s[0] == 'p');
    CHECK(s.find('f') != std::string::npos);
    CHECK(s.find('q') != std::string::npos);
    CHECK(s.back() == 't');
    CHECK_FALSE(loop.unwatch(paused));
}

TEST_CASE("hooks: an idle hook keeps the wait from blocking and keeps run() going; prepare and check do not", "[loop][hooks]") {
    static hook_loop loop;
    static int idles, prepares, checks;
    idles = prepares = checks = 0;
    // Only prepare and check hooks: nothing to wait for, run() returns at once.
    auto prep = loop.on_prepare([](microloop::hook_event) { ++prepares; });
    auto check = loop.on_check([](microloop::hook_event) { ++checks; });
    REQUIRE((prep && check));
    REQUIRE_FALSE(loop.run());
    CHECK(prepares == 0);
    CHECK(checks == 0);
    // An idle hook is work: run() goes on until it removes itself, and no
    // iteration blocks (nothing else would ever wake this loop).
    auto idle = loop.on_idle([](microloop::hook_event ev) {
        if (++idles == 100) loop.unwatch(ev.handle);
    });
    REQUIRE(idle);
    REQUIRE_FALSE(loop.run());
    CHECK(idles == 100);
    CHECK(prepares == 100);
    CHECK(checks == 100);
    CHECK(loop.active() == 0);
    loop.unwatch(prep);
    loop.unwatch(check);
}

TEST_CASE("hooks: removed from inside their own callback, their place is free at once", "[loop][hooks][robust]") {
    static microloop::basic_loop<microloop::capacity<2, 2, 1, 1, 1> > loop; // one hook
    static int first, second;
    first = second = 0;
    auto h = loop.on_check([](microloop::hook_event ev) {
        ++first;
        CHECK_FALSE(loop.unwatch(ev.handle));
        CHECK(loop.unwatch(ev.handle) == errc::stale_handle);
        // A table of one holds one: the replacement fits at once, and first
        // runs in the next iteration.
        CHECK(loop.on_check([](microloop::hook_event) { ++second; }));
    });
    REQUIRE(h);
    CHECK(loop.on_prepare([](microloop::hook_event) {}).error() == errc::table_full);
    for (int i = 0; i < 3; ++i) REQUIRE_FALSE(loop.poll());
    CHECK(first == 1);
    CHECK(second == 2);
    CHECK(loop.stats().hooks.used == 1);
    CHECK(loop.stats().hooks.capacity == 1);
}

TEST_CASE("hooks: a hook added during an iteration first runs in the next; none run in a nested iteration", "[loop][hooks]") {
    static hook_loop loop;
    static int prepares, checks, calls;
    prepares = checks = calls = 0;
    test::fd_pair p = test::make_pipe();
    REQUIRE(p.ok());
    REQUIRE(test::put_byte(p.b.get()));
    auto prep = loop.on_prepare([](microloop::hook_event) { ++prepares; });
    // Iteration 1: the watcher adds a check hook, which waits for iteration 2.
    auto io = loop.watch(p.a.get(), microloop::readable, [](io_event ev) {
        CHECK(loop.on_check([](microloop::hook_event) { ++checks; }));
        loop.unwatch(ev.handle);
    });
    REQUIRE((io && prep));
    REQUIRE_FALSE(loop.poll());
    CHECK(prepares == 1);
    CHECK(checks == 0);
    REQUIRE_FALSE(loop.poll());
    CHECK(prepares == 2);
    CHECK(checks == 1);
    // A poll() nested in a callback runs no hooks; the outer iteration does.
    auto again = loop.watch(p.a.get(), microloop::readable, [](io_event ev) {
        if (calls++ == 0) CHECK_FALSE(loop.poll());
        loop.unwatch(ev.handle);
    });
    REQUIRE(again);
    REQUIRE_FALSE(loop.poll());
    CHECK(calls == 2); // the nested poll() called it too
    CHECK(prepares == 3);
    CHECK(checks == 2);
    loop.unwatch(prep);
}

TEST_CASE("hooks: bad arguments and stall reports name the hook", "[loop][hooks][error]") {
    static hook_loop loop;
    void (*null_fn)(microloop::hook_event) = nullptr;
    CHECK(loop.on_prepare(null_fn).error() == errc::bad_argument);
    CHECK(loop.unwatch(microloop::hook_handle()) == errc::stale_handle);
    static microloop::source_kind kind;
    static uint64_t id;
    kind = microloop::source_kind::io;
    id = 0;
    REQUIRE_FALSE(loop.on_stall(milliseconds(1), [](const microloop::stall_report& r) {
        kind = r.kind;
        id = r.id;
    }));
    auto h = loop.on_idle([](microloop::hook_event ev) {
        test::sleep_ms(3);
        loop.unwatch(ev.handle);
    });
    REQUIRE(h);
    REQUIRE_FALSE(loop.poll());
    CHECK(kind == microloop::source_kind::hook);
    CHECK(id == h.id());
    CHECK(std::string(microloop::source_kind_name(kind)) == "hook");
    REQUIRE_FALSE(loop.on_stall(milliseconds(0), [](const microloop::stall_report&) {}));
}

#if defined(__cpp_exceptions) || defined(__EXCEPTIONS)
TEST_CASE("hooks: a hook that throws leaves the loop usable, its hooks running again", "[loop][hooks][robust]") {
    static hook_loop loop;
    static int calls;
    calls = 0;
    auto h = loop.on_prepare([](microloop::hook_event) {
        if (++calls == 1) throw test::boom();
    });
    auto keep = loop.every(milliseconds(1), noop_timer); // something to run for
    REQUIRE((h && keep));
    CHECK_THROWS_AS(loop.poll(), test::boom);
    REQUIRE_FALSE(loop.poll());
    CHECK(calls == 2);
    loop.unwatch(h);
    loop.cancel(keep);
}
#endif

// ---- what a driver of its own needs: fd lookup, absolute deadlines, stopped() -----------

TEST_CASE("watcher(fd) finds the watcher of an fd, or says why there is none", "[loop][io]") {
    static hook_loop loop;
    test::fd_pair p = test::make_pipe();
    REQUIRE(p.ok());
    auto h = loop.watch(p.a.get(), microloop::readable, noop_io);
    REQUIRE(h);
    CHECK(loop.watcher(p.a.get()) == h);
    CHECK(loop.watcher(p.b.get()).error() == errc::not_watched);
    CHECK(loop.watcher(-1).error() == errc::bad_fd);
    REQUIRE_FALSE(loop.unwatch(h));
    CHECK(loop.watcher(p.a.get()).error() == errc::not_watched);
}

TEST_CASE("at() and rearm_at(): absolute deadlines on the loop's clock", "[loop][timers]") {
    static virtual_loop loop;
    static int fired;
    fired = 0;
    loop.clock().set(1000000000); // 1 s
    auto h = loop.at(seconds(5), [](timer_event) { ++fired; });
    REQUIRE(h);
    CHECK(loop.remaining(h) == seconds(4));
    loop.clock().advance(milliseconds(3999));
    REQUIRE_FALSE(loop.poll());
    CHECK(fired == 0);
    REQUIRE_FALSE(loop.rearm_at(h, seconds(10)));
    loop.clock().advance(seconds(1)); // 5 s: the old deadline, no longer its own
    REQUIRE_FALSE(loop.poll());
    CHECK(fired == 0);
    loop.clock().advance(seconds(5));
    REQUIRE_FALSE(loop.poll());
    CHECK(fired == 1);
    // A deadline already past fires at the next pass; bad ones are refused.
    auto past = loop.at(seconds(1), [](timer_event) { ++fired; });
    REQUIRE(past);
    REQUIRE_FALSE(loop.poll());
    CHECK(fired == 2);
    CHECK(loop.at(seconds(-1), noop_timer).error() == errc::bad_timeout);
    auto live = loop.every(seconds(1), noop_timer);
    REQUIRE(live);
    CHECK(loop.rearm_at(live, seconds(-1)) == errc::bad_timeout);
    CHECK(loop.rearm_at(h, seconds(20)) == errc::stale_handle); // fired and gone
    loop.cancel(live);
}

TEST_CASE("stopped() tells a driver that run_once() ended on a stop(), which it used up", "[loop]") {
    static hook_loop loop;
    static int ticks;
    ticks = 0;
    auto t = loop.every(milliseconds(1), [](timer_event) {
        if (++ticks == 2) loop.stop();
    });
    REQUIRE(t);
    int rounds = 0;
    while (rounds < 1000) { // a driver of its own
        ++rounds;
        REQUIRE_FALSE(loop.run_once());
        if (loop.stopped()) break;
    }
    CHECK(ticks == 2);
    REQUIRE_FALSE(loop.poll());
    CHECK_FALSE(loop.stopped());
    loop.cancel(t);
}
