// The epoll backend's own cases, on epoll_loop<> whatever MICROLOOP_BACKEND
// says: fds above FD_SETSIZE, the fd -> watcher map, fds closed behind the
// loop's back (dup'd or not, the number reused), regular files, and fork.
// Everything else epoll must do alike is the rest of the suite, run with
// -DMICROLOOP_BACKEND=epoll.
#include <microloop.hpp>

#include <fcntl.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>

#include "catch.hpp"
#include "test_util.hpp"

using namespace std::chrono;
using microloop::errc;
using microloop::io_event;

namespace {

typedef microloop::epoll_loop<8, 8> eloop;

// RLIMIT_NOFILE raised to at least `want` for the test's life, if the hard
// limit allows; ok() says whether it does.
struct nofile {
    struct rlimit saved;
    bool raised, ok_;
    explicit nofile(rlim_t want) : raised(false), ok_(false) {
        if (getrlimit(RLIMIT_NOFILE, &saved) != 0) return;
        if (saved.rlim_cur == RLIM_INFINITY || saved.rlim_cur >= want) {
            ok_ = true;
            return;
        }
        if (saved.rlim_max != RLIM_INFINITY && saved.rlim_max < want) return;
        struct rlimit r = saved;
        r.rlim_cur = want;
        ok_ = raised = setrlimit(RLIMIT_NOFILE, &r) == 0;
    }
    ~nofile() {
        if (raised) setrlimit(RLIMIT_NOFILE, &saved);
    }
    bool ok() const { return ok_; }
};

// Moves p's read end to number fd (free now).
inline void onto(test::fd_pair& p, int fd) {
    if (p.a.get() == fd) return;
    REQUIRE(dup3(p.a.get(), fd, O_CLOEXEC) == fd);
    p.a.reset(fd);
}

} // namespace

TEST_CASE("epoll: fds at and above FD_SETSIZE are watched", "[io][epoll]") {
    nofile lim(FD_SETSIZE * 4);
    if (!lim.ok()) {
        WARN("RLIMIT_NOFILE's hard limit is below " << FD_SETSIZE * 4 << ": skipped");
        return;
    }
    eloop loop;
    test::fd_pair p[3];
    const int targets[3] = {FD_SETSIZE, FD_SETSIZE + 1, FD_SETSIZE * 4 - 1};
    test::io_log log;
    for (int i = 0; i < 3; ++i) {
        p[i] = test::make_socketpair();
        REQUIRE(p[i].ok());
        int moved = fcntl(p[i].a.get(), F_DUPFD_CLOEXEC, targets[i]);
        REQUIRE(moved >= targets[i]);
        p[i].a.reset(moved);
        REQUIRE(loop.watch(moved, microloop::readable, [&log](io_event ev) {
            log.add(ev);
            test::drain(ev.fd);
        }));
    }
    CHECK(loop.watch(p[0].a.get(), microloop::readable, test::noop_io).error() == errc::already_watched);
    for (int i = 0; i < 3; ++i) REQUIRE(test::put_byte(p[i].b.get()));
    loop.run_once(seconds(1));
    REQUIRE(log.n == 3);
    for (int i = 0; i < 3; ++i) CHECK(log.count_fd(p[i].a.get()) == 1);
    // Writable too, on the highest.
    microloop::io_handle w;
    loop.for_each_io([&](microloop::io_handle h, int fd, unsigned) {
        if (fd == p[2].a.get()) w = h;
    });
    REQUIRE(!loop.modify(w, microloop::writable));
    log.n = 0;
    loop.run_once(seconds(1));
    REQUIRE(log.n == 1);
    CHECK(log.e[0].fd == p[2].a.get());
    CHECK(log.e[0].events == microloop::writable);
}

TEST_CASE("epoll: the fd map holds a full table through watch/unwatch churn", "[io][epoll]") {
    // Open addressing with backward-shift deletion: every fd found, never a
    // ghost, whatever the order of removals.
    enum { n = 24 };
    microloop::epoll_loop<n, 1> loop;
    test::fd_pair p[n];
    microloop::io_handle h[n];
    int calls[n] = {};
    struct cb {
        int* c;
        void operator()(io_event ev) const {
            ++*c;
            test::drain(ev.fd);
        }
    };
    for (int i = 0; i < n; ++i) REQUIRE((p[i] = test::make_pipe()).ok());
    unsigned seed = 12345;
    for (int round = 0; round < 200; ++round) {
        for (int i = 0; i < n; ++i) {
            seed = seed * 1103515245u + 12345u;
            const bool want = (seed >> 16) & 1u;
            if (want && !h[i]) {
                h[i] = loop.watch(p[i].a.get(), microloop::readable, cb{&calls[i]});
                REQUIRE(h[i]);
            } else if (!want && h[i]) {
                REQUIRE(!loop.unwatch(h[i]));
                h[i] = microloop::io_handle();
            }
        }
        for (int i = 0; i < n; ++i) {
            CHECK((loop.watch(p[i].a.get(), microloop::readable, test::noop_io).error() == errc::already_watched) ==
                  static_cast<bool>(h[i]));
            if (!h[i]) { // the probe above watched it: take it back
                microloop::io_handle probe;
                loop.for_each_io([&](microloop::io_handle x, int fd, unsigned) {
                    if (fd == p[i].a.get()) probe = x;
                });
                REQUIRE(probe);
                REQUIRE(!loop.unwatch(probe));
            }
        }
        int before[n];
        for (int i = 0; i < n; ++i) {
            before[i] = calls[i];
            REQUIRE(test::put_byte(p[i].b.get()));
        }
        loop.poll();
        for (int i = 0; i < n; ++i) {
            CHECK(calls[i] - before[i] == (h[i] ? 1 : 0));
            test::drain(p[i].a.get());
        }
    }
}

TEST_CASE("epoll: every ready fd is dispatched once, in any order", "[io][epoll]") {
    enum { n = 12 };
    microloop::epoll_loop<n, 1> loop;
    test::fd_pair p[n];
    test::io_log log;
    for (int i = 0; i < n; ++i) {
        REQUIRE((p[i] = test::make_socketpair()).ok());
        REQUIRE(loop.watch(p[i].a.get(), microloop::readable | microloop::priority, [&log](io_event ev) {
            log.add(ev);
            test::drain(ev.fd);
        }));
    }
    for (int i = n - 1; i >= 0; i -= 2) REQUIRE(test::put_byte(p[i].b.get()));
    loop.run_once(seconds(1));
    REQUIRE(log.n == n / 2);
    for (int i = 0; i < n; ++i) CHECK(log.count_fd(p[i].a.get()) == (i % 2 ? 1 : 0));
    for (int i = 0; i < log.n; ++i) CHECK(log.e[i].events == microloop::readable);
}

TEST_CASE("epoll: an fd closed and its number reused by an unwatched file is an io_error", "[error][epoll]") {
    // select() would watch the new file in its place; epoll knows better.
    eloop loop;
    test::fd_pair a = test::make_socketpair();
    REQUIRE(a.ok());
    test::io_log log;
    microloop::io_handle h = loop.watch(a.a.get(), microloop::readable, [&log](io_event ev) { log.add(ev); });
    REQUIRE(h);
    const int fd = a.a.release();
    close(fd);
    test::fd_pair b = test::make_pipe(); // takes the number
    REQUIRE(b.ok());
    onto(b, fd);
    REQUIRE(test::put_byte(b.b.get()));
    for (int i = 0; i < 5; ++i) loop.run_once(milliseconds(10));
    REQUIRE(log.n == 1);
    CHECK(log.e[0].events == microloop::io_error);
    CHECK(log.e[0].fd == fd);
    // A new watcher of the number gets the new file's events.
    REQUIRE(!loop.unwatch(h));
    REQUIRE(loop.watch(fd, microloop::readable, [&log](io_event ev) {
        log.add(ev);
        test::drain(ev.fd);
    }));
    loop.run_once(seconds(1));
    REQUIRE(log.n == 2);
    CHECK(log.e[1].events == microloop::readable);
}

TEST_CASE("epoll: an fd closed while a dup keeps its file open is an io_error, never a spin, never a newer watcher's",
          "[error][epoll]") {
    eloop loop;
    test::fd_pair a = test::make_socketpair();
    REQUIRE(a.ok());
    test::io_log log;
    microloop::io_handle h = loop.watch(a.a.get(), microloop::readable, [&log](io_event ev) { log.add(ev); });
    REQUIRE(h);
    test::unique_fd dup_fd(dup(a.a.get())); // keeps the file, and its registration, alive
    REQUIRE(dup_fd.get() >= 0);
    const int fd = a.a.release();
    close(fd);
    REQUIRE(test::put_byte(a.b.get())); // the file is readable, and stays so (nobody can read fd)
    for (int i = 0; i < 300 && log.count_fd(fd) < 400; ++i) {
        bool err = false;
        for (int k = 0; k < log.n; ++k) err |= log.e[k].events == microloop::io_error;
        if (err) break;
        loop.run_once(milliseconds(10));
    }
    int errors = 0;
    for (int k = 0; k < log.n; ++k) errors += log.e[k].events == microloop::io_error;
    REQUIRE(errors == 1);
    CHECK(log.e[log.n - 1].events == microloop::io_error);
    // Disabled, and the loop does not spin on the old registration.
    const int before = log.n;
    int64_t t0 = test::now_ns();
    CHECK(!loop.run_once(milliseconds(30)));
    CHECK(test::now_ns() - t0 >= 25000000);
    CHECK(log.n == before);
    // A new watcher of the old file through another fd gets its data.
    REQUIRE(!loop.unwatch(h));
    test::io_log log2;
    REQUIRE(loop.watch(dup_fd.get(), microloop::readable, [&log2](io_event ev) {
        log2.add(ev);
        test::drain(ev.fd);
    }));
    loop.run_once(seconds(1));
    REQUIRE(log2.n == 1);
    CHECK(log2.e[0].events == microloop::readable);
    CHECK(log2.e[0].fd == dup_fd.get());
}

TEST_CASE("epoll: unwatch, close, and a new watcher of the number with a dup of the old file alive", "[io][epoll]") {
    // The order a careful program uses: unwatch first. The old file's
    // events, still ready, never reach the new watcher.
    eloop loop;
    test::fd_pair a = test::make_socketpair();
    REQUIRE(a.ok());
    int old_calls = 0, new_calls = 0;
    microloop::io_handle h = loop.watch(a.a.get(), microloop::readable, [&old_calls](io_event) { ++old_calls; });
    REQUIRE(h);
    test::unique_fd dup_fd(dup(a.a.get()));
    REQUIRE(test::put_byte(a.b.get()));
    const int fd = a.a.get();
    // Closed before unwatch(): EPOLL_CTL_DEL fails, the registration lives on.
    close(a.a.release());
    REQUIRE(!loop.unwatch(h));
    test::fd_pair b = test::make_pipe();
    onto(b, fd);
    REQUIRE(loop.watch(fd, microloop::readable, [&new_calls](io_event ev) {
        ++new_calls;
        test::drain(ev.fd);
    }));
    for (int i = 0; i < 3; ++i) loop.run_once(milliseconds(10));
    CHECK(old_calls == 0);
    CHECK(new_calls == 0);
    REQUIRE(test::put_byte(b.b.get()));
    loop.run_once(seconds(1));
    CHECK(new_calls == 1);
}

TEST_CASE("epoll: a regular file is always ready, as select() says; paused, it does not spin", "[io][epoll]") {
    char path[] = "/tmp/microloop-epoll-XXXXXX";
    test::unique_fd f(mkstemp(path));
    REQUIRE(f.get() >= 0);
    unlink(path);
    eloop loop;
    int calls = 0;
    unsigned seen = 0;
    microloop::io_handle h = loop.watch(f.get(), microloop::readable | microloop::writable | microloop::priority,
                                        [&](io_event ev) {
                                            ++calls;
                                            seen |= ev.events;
                                        });
    REQUIRE(h);
    for (int i = 0; i < 3; ++i) loop.run_once(seconds(1));
    CHECK(calls == 3);
    CHECK(seen == (microloop::readable | microloop::writable));
    REQUIRE(!loop.modify(h, 0));
    int64_t t0 = test::now_ns();
    loop.run_once(milliseconds(30));
    CHECK(test::now_ns() - t0 >= 25000000);
    CHECK(calls == 3);
    REQUIRE(!loop.modify(h, microloop::readable));
    loop.poll();
    CHECK(calls == 4);
    REQUIRE(!loop.unwatch(h));
}

TEST_CASE("epoll: a forked child gets its own instance; nothing it does reaches the parent", "[io][epoll]") {
    eloop loop;
    test::fd_pair a = test::make_socketpair(), b = test::make_socketpair();
    REQUIRE(a.ok());
    REQUIRE(b.ok());
    int a_calls = 0, b_calls = 0;
    microloop::io_handle ha = loop.watch(a.a.get(), microloop::readable, [&a_calls](io_event ev) {
        ++a_calls;
        test::drain(ev.fd);
    });
    microloop::io_handle hb = loop.watch(b.a.get(), microloop::readable, [&b_calls](io_event ev) {
        ++b_calls;
        test::drain(ev.fd);
    });
    REQUIRE(ha);
    REQUIRE(hb);
    test::fd_pair sync = test::make_pipe();
    REQUIRE(sync.ok());
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        int fail = 0;
        // Before after_fork(): edits that a shared instance would pass on.
        if (loop.unwatch(ha)) fail |= 1;
        if (loop.modify(hb, 0)) fail |= 2;
        // after_fork(): its own instance, the watchers it kept registered.
        if (loop.after_fork()) fail |= 4;
        if (loop.modify(hb, microloop::readable)) fail |= 8;
        char c = 'x';
        if (write(b.b.get(), &c, 1) != 1) fail |= 16;
        loop.run_once(seconds(1));
        if (b_calls != 1 || a_calls != 0) fail |= 32;
        // A new watcher, then close every fd it shares with the parent.
        microloop::io_handle hs = loop.watch(sync.a.get(), microloop::readable, test::noop_io);
        if (!hs) fail |= 64;
        loop.unwatch(hs);
        close(a.a.get());
        close(b.a.get());
        _exit(fail);
    }
    int status = 0;
    REQUIRE(waitpid(pid, &status, 0) == pid);
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
    // The parent's watchers are untouched.
    REQUIRE(test::put_byte(a.b.get()));
    loop.run_once(seconds(1));
    CHECK(a_calls == 1);
    REQUIRE(test::put_byte(b.b.get()));
    loop.run_once(seconds(1));
    CHECK(b_calls == 1);
    CHECK(loop.active() == 2);
}

TEST_CASE("epoll: a forked child that never calls after_fork() leaves the parent alone", "[io][epoll]") {
    eloop loop;
    test::fd_pair a = test::make_socketpair();
    REQUIRE(a.ok());
    int calls = 0;
    microloop::io_handle h = loop.watch(a.a.get(), microloop::readable, [&calls](io_event ev) {
        ++calls;
        test::drain(ev.fd);
    });
    REQUIRE(h);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        int fail = 0;
        if (loop.modify(h, microloop::writable)) fail |= 1;
        loop.poll(); // its own instance: the parent's registration stays readable-only
        if (loop.unwatch(h)) fail |= 2;
        _exit(fail);
    }
    int status = 0;
    REQUIRE(waitpid(pid, &status, 0) == pid);
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
    loop.run_once(milliseconds(20)); // not writable-ready: nothing
    CHECK(calls == 0);
    REQUIRE(test::put_byte(a.b.get()));
    loop.run_once(seconds(1));
    CHECK(calls == 1);
}
