// tests/test_util.hpp - helpers shared by the core tests: fds that close
// themselves, real pipes and sockets, the clock, a fixed-size event log (no
// heap, so the allocation test can use it too), the loops and callbacks
// several test files use, and the library's test hook (detail::test_access).
#ifndef MICROLOOP_TEST_UTIL_HPP
#define MICROLOOP_TEST_UTIL_HPP

// The rings' pause point (MICROLOOP_DETAIL_TEST_YIELD, detail/threads.hpp),
// for the files that include this one before any microloop header:
// test::ring_pause stops the next thread that claims a ring entry, right
// after its claim, until released. Disarmed, a relaxed load.
#include <sched.h>
#include <string.h>
#include <time.h>

#include <atomic>

namespace test {
struct ring_pause {
    std::atomic<bool> armed, paused, released;
    static ring_pause& get() {
        static ring_pause p;
        return p;
    }
    // The next thread to claim an entry stops there.
    void arm() {
        paused.store(false);
        released.store(false);
        armed.store(true);
    }
    // Waits (up to ms) until a thread has stopped; false if none did.
    bool wait_paused(int ms) {
        for (int i = 0; i < ms * 10 && !paused.load(); ++i) {
            struct timespec ts = {0, 100000};
            nanosleep(&ts, nullptr);
        }
        return paused.load();
    }
    void release() { released.store(true); }
    void point(const char* where) {
        if (!armed.load(std::memory_order_relaxed) || strcmp(where, "spmc_ring::pop claimed") != 0) return;
        bool expected = true;
        if (!armed.compare_exchange_strong(expected, false)) return;
        paused.store(true);
        while (!released.load()) sched_yield();
    }

private:
    ring_pause() : armed(false), paused(false), released(false) {}
};
} // namespace test
#ifndef MICROLOOP_DETAIL_TEST_YIELD
#define MICROLOOP_DETAIL_TEST_YIELD(where) ::test::ring_pause::get().point(where)
#endif

#include <microloop.hpp>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <chrono>

namespace test {

// Owns an fd; release() hands it over to a test that closes it itself.
class unique_fd {
public:
    explicit unique_fd(int fd = -1) : fd_(fd) {}
    ~unique_fd() { reset(); }
    unique_fd(unique_fd&& o) : fd_(o.release()) {}
    unique_fd& operator=(unique_fd&& o) {
        if (this != &o) reset(o.release());
        return *this;
    }
    unique_fd(const unique_fd&) = delete;
    unique_fd& operator=(const unique_fd&) = delete;

    int get() const { return fd_; }
    int release() {
        int fd = fd_;
        fd_ = -1;
        return fd;
    }
    void reset(int fd = -1) {
        if (fd_ >= 0) ::close(fd_);
        fd_ = fd;
    }

private:
    int fd_;
};

// Two connected fds. For a pipe, a is the read end and b the write end; for
// sockets both ends read and write. Both are -1 if they could not be made.
struct fd_pair {
    unique_fd a, b;
    bool ok() const { return a.get() >= 0 && b.get() >= 0; }
};

inline fd_pair make_pipe() {
    fd_pair p;
    int fds[2];
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) == 0) {
        p.a.reset(fds[0]);
        p.b.reset(fds[1]);
    }
    return p;
}

inline fd_pair make_socketpair() {
    fd_pair p;
    int fds[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) == 0) {
        p.a.reset(fds[0]);
        p.b.reset(fds[1]);
    }
    return p;
}

// A connected TCP pair on 127.0.0.1: a is the client, b the accepted server
// side. TCP because only it has out-of-band data (select's except set).
inline fd_pair make_tcp_pair() {
    fd_pair p;
    unique_fd listener(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (listener.get() < 0) return p;
    struct sockaddr_in addr = {};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    socklen_t len = sizeof addr;
    if (bind(listener.get(), reinterpret_cast<struct sockaddr*>(&addr), sizeof addr) != 0 ||
        listen(listener.get(), 1) != 0 ||
        getsockname(listener.get(), reinterpret_cast<struct sockaddr*>(&addr), &len) != 0)
        return p;
    unique_fd client(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (client.get() < 0 || connect(client.get(), reinterpret_cast<struct sockaddr*>(&addr), sizeof addr) != 0)
        return p;
    unique_fd server(accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (server.get() < 0) return p;
    p.a = static_cast<unique_fd&&>(client);
    p.b = static_cast<unique_fd&&>(server);
    return p;
}

inline bool put_byte(int fd, char c = 'x') { return write(fd, &c, 1) == 1; }

// Reads whatever is there without blocking; the number of bytes read.
inline long drain(int fd) {
    char buf[256];
    long total = 0;
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n <= 0) return total;
        total += n;
    }
}

inline int64_t now_ns() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

// Sleeps at least `ms` milliseconds, signals or not.
inline void sleep_ms(int ms) {
    int64_t until = now_ns() + static_cast<int64_t>(ms) * 1000000;
    for (;;) {
        int64_t left = until - now_ns();
        if (left <= 0) return;
        struct timespec ts = {static_cast<time_t>(left / 1000000000), static_cast<long>(left % 1000000000)};
        nanosleep(&ts, nullptr);
    }
}

// What fd callbacks saw, in order. Fixed size: never allocates.
struct io_log {
    struct entry {
        int fd;
        unsigned events;
        uint64_t id;
    };
    entry e[256];
    int n;

    io_log() : n(0) {}
    void add(microloop::io_event ev) {
        if (n < 256) {
            e[n].fd = ev.fd;
            e[n].events = ev.events;
            e[n].id = ev.handle.id();
            ++n;
        }
    }
    int count_fd(int fd) const {
        int c = 0;
        for (int i = 0; i < n; ++i) c += e[i].fd == fd;
        return c;
    }
};

// Runs iterations (each waiting at most 1 s) until done() or `max` of them.
template <class Loop, class Pred>
int run_until(Loop& loop, Pred done, int max = 50) {
    int i = 0;
    while (!done() && i < max) {
        loop.run_once(std::chrono::seconds(1));
        ++i;
    }
    return i;
}

// Do-nothing callbacks, for sources a test only counts or refuses.
inline void noop_io(microloop::io_event) {}
inline void noop_timer(microloop::timer_event) {}

// What the callbacks of the exception tests throw.
struct boom {};

// Counts its live copies: captured by a callback, it tells whether the loop
// still holds that callback's closure (1) or has destroyed it (0).
struct life {
    int* alive;
    explicit life(int* a) : alive(a) { ++*alive; }
    life(const life& o) : alive(o.alive) { ++*alive; }
    ~life() { --*alive; }
    life& operator=(const life&) = delete;
};

// Four of each kind: the loop of the error-path and cross-thread tests.
typedef microloop::loop<4, 4> small_loop;

// A loop on the manual clock: timers in virtual time.
typedef microloop::basic_loop<microloop::capacity<4, 16, 2, 2>, microloop::manual_clock> virtual_loop;

// Big counts are divided by this: MICROLOOP_TEST_SCALE if set, else 1 on x86
// and 10 elsewhere (the armhf and mips CI runs are emulated by qemu-user).
inline int scale() {
    const char* s = getenv("MICROLOOP_TEST_SCALE");
    if (s && atoi(s) > 0) return atoi(s);
#if defined(__x86_64__) || defined(__i386__)
    return 1;
#else
    return 10;
#endif
}

// A pipe watcher that proves the loop still works: write, iterate, count.
struct canary {
    fd_pair p;
    int calls;
    microloop::io_handle h;

    template <class Loop>
    explicit canary(Loop& loop) : p(make_pipe()), calls(0) {
        h = loop.watch(p.a.get(), microloop::readable, [this](microloop::io_event ev) {
            ++calls;
            drain(ev.fd);
        });
    }
    template <class Loop>
    bool alive(Loop& loop) {
        int before = calls;
        if (!put_byte(p.b.get())) return false;
        loop.run_once(std::chrono::seconds(1));
        return calls == before + 1;
    }
};

} // namespace test

// The one definition of the library's test hook: it reaches the counters
// that take hours or years to wrap in real use. The tests tagged [robust] use
// it: promises that must hold for the life of a device (counters that wrap,
// clocks read at the wrong moment, callbacks that throw, fork(), periods that
// round to nothing, tables used to the last slot), each of which failed
// before the fix it covers. Wrap paths are reached in milliseconds by
// starting the counters near their limits.
namespace microloop {
namespace detail {
struct test_access {
    template <class Loop>
    static uint32_t timer_seq(const Loop& l) {
        return l.timers_.heap_.seq_;
    }
    template <class Loop>
    static void set_timer_seq(Loop& l, uint32_t seq) {
        l.timers_.heap_.seq_ = seq;
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
    static auto timer_pool(Loop& l) -> decltype((l.timers_.pool_)) {
        return l.timers_.pool_;
    }
    // How long select() would wait now, with no other limit (-1: forever).
    template <class Loop>
    static int64_t select_timeout(Loop& l) {
        return l.select_timeout(-1);
    }
};
} // namespace detail
} // namespace microloop

#endif // MICROLOOP_TEST_UTIL_HPP
