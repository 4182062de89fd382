// SPDX-License-Identifier: MIT
// microloop/loop_base.hpp - the seam between a loop and its modules: what
// signals, AIO, mailboxes, worker pools and other threads need of a loop
// (the wake-up fd, the module hooks, stall reports, fork detection), without
// its capacities, its timers or its backend. Modules include this, never
// loop.hpp.
#ifndef MICROLOOP_LOOP_BASE_HPP
#define MICROLOOP_LOOP_BASE_HPP

#include <errno.h>
#include <pthread.h> // pthread_atfork() (not on glibc: see register_atfork_child()), in the libc itself
#include <stdint.h>
#include <sys/eventfd.h>
#include <sys/select.h> // FD_SETSIZE: the wake-up fd must fit the select() sets
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>

#include "callback.hpp"
#include "config.hpp"
#include "error.hpp"

namespace microloop {

// What kind of callback a stall report names.
enum class source_kind : unsigned char { io, timer, signal, aio, child, post, work, hook };

// "io", "timer", "signal", "aio", "child", "post" (a mailbox callback),
// "work" (a worker_pool's done callback) or "hook" (on_prepare, on_check,
// on_idle).
inline const char* source_kind_name(source_kind k) {
    switch (k) {
    case source_kind::io: return "io";
    case source_kind::timer: return "timer";
    case source_kind::signal: return "signal";
    case source_kind::aio: return "aio";
    case source_kind::child: return "child";
    case source_kind::post: return "post";
    case source_kind::work: return "work";
    case source_kind::hook: return "hook";
    }
    return "unknown";
}

// Given to the stall callback when a callback ran longer than the threshold.
struct stall_report {
    source_kind kind;
    uint64_t id;          // the handle's id(); 0 for a mailbox callback
    int detail;           // the fd, signal number or pid; -1 for timers and posts
    int64_t duration_ns;  // how long the callback ran
};

typedef detail::inplace_callback<void(const stall_report&)> stall_callback;

namespace detail {

struct test_access; // lets the tests reach internal counters (wrap tests)

// What a loop's Backend argument is (use_select, use_epoll): it names the
// backend class for a loop's watcher slot count.
template <template <size_t> class B>
struct backend_tag {
    template <size_t Slots>
    struct of {
        typedef B<Slots> type;
    };
};

// static_cast for types whose width depends on the target (time_t, pid_t,
// int64_t...): written in a template, so the cast that is a no-op on one
// target is not flagged by -Wuseless-cast there and still narrows explicitly
// (-Wconversion) on another.
template <class To, class From>
To narrow(From v) {
    return static_cast<To>(v);
}

// Wakes a loop through its eventfd: async-signal-safe, never blocks, never
// raises SIGPIPE. 0, or the errno (EBADF if the fd was closed). Adds `n` to
// the counter: 1, or stop_mark from stop().
inline int wake_write(int fd, uint64_t n = 1) {
    ssize_t r;
    do r = write(fd, &n, sizeof n);
    while (r < 0 && errno == EINTR);
    return r >= 0 || errno == EAGAIN ? 0 : errno; // EAGAIN: the counter is full, the loop is awake
}

// What stop() adds to the eventfd's counter: far above anything the other
// writers (wake() and the signal handlers, one each per wake-up) can add up
// to, so that the loop can take back the stop's share and keep theirs.
static const uint64_t stop_mark = uint64_t(1) << 40;

#if defined(__GLIBC__)
} // namespace detail
} // namespace microloop
// glibc: the function behind pthread_atfork(), in its libc.so since 2.3.2
// (pthread_atfork() itself is in libpthread_nonshared.a before 2.28), taken
// as a weak reference: a static program that never calls fork() does not
// link the fork handler machinery (2 KiB of armhf text) for nothing, and
// one that does finds it there. __dso_handle unregisters the handler if the
// code holding it is a shared library that is unloaded.
extern "C" int __register_atfork(void (*)(void), void (*)(void), void (*)(void), void*) __attribute__((weak));
extern "C" void* __dso_handle __attribute__((weak, visibility("hidden")));
namespace microloop {
namespace detail {
// 0 (registered), an errno, or -1 (this program has no fork()).
inline int register_atfork_child(void (*child)(void)) {
    if (!&__register_atfork) return -1;
    return __register_atfork(nullptr, nullptr, child, &__dso_handle);
}
#else
inline int register_atfork_child(void (*child)(void)) { return pthread_atfork(nullptr, nullptr, child); }
#endif

// Fork detection for one load and compare: a pthread_atfork() child handler,
// registered once per process (by the first loop made), counts the forks in
// the child. The count changes only in a child, before any thread of its own
// exists, so reading it is never a race. Constant-initialised, no heap; a
// template so that a header defines it once per program.
template <class = void>
struct fork_count {
    static unsigned forks;
    // 0: not registered, 1: registering, 2: registered, 3: no fork() in this
    // program (a static one that never calls it), so the count never moves.
    static std::atomic<int> state;
    static void child() { ++forks; }
    // Registers the handler unless it is already (cheap after the first call).
    static void watch() {
        if (state.load(std::memory_order_acquire) != 0) return;
        int expected = 0;
        if (!state.compare_exchange_strong(expected, 1)) return; // another thread is at it
        const int rc = register_atfork_child(&child);
        state.store(rc == 0 ? 2 : rc < 0 ? 3 : 0); // ENOMEM: the next loop tries again
    }
};
template <class T>
unsigned fork_count<T>::forks = 0;
template <class T>
std::atomic<int> fork_count<T>::state(0);

// Taken in a process, says later whether this is a forked child of it: the
// fork count while the handler is registered (or there is no fork()),
// getpid() (a system call) if registering failed.
class fork_stamp {
public:
    fork_stamp() : forks_(0), pid_(0) {}
    void take(pid_t pid) { // pid: getpid()
        fork_count<>::watch();
        forks_ = fork_count<>::forks;
        pid_ = pid;
    }
    bool forked() const {
        return fork_count<>::state.load(std::memory_order_relaxed) >= 2 ? forks_ != fork_count<>::forks
                                                                        : getpid() != pid_;
    }
    unsigned forks() const { return forks_; }

private:
    unsigned forks_;
    pid_t pid_;
};

inline int64_t monotonic_ns() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return narrow<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

// A duration in nanoseconds; false when negative, NaN or beyond 100 years
// (which also keeps every deadline sum far from int64 overflow). Integral
// counts are compared in whole days: in d's own unit, 100 years overflows
// for periods finer than a nanosecond.
template <class Rep, class Period>
bool to_ns(std::chrono::duration<Rep, Period> d, int64_t& out) {
    typedef std::chrono::duration<long long, std::ratio<86400> > days;
    if (d < std::chrono::duration<Rep, Period>::zero() || d != d) return false; // d != d: NaN
    if (std::chrono::treat_as_floating_point<Rep>::value ? d > days(36525)
                                                        : std::chrono::duration_cast<days>(d) > days(36525))
        return false;
    out = static_cast<int64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(d).count());
    return true;
}
} // namespace detail

// How a module (signals, AIO, a mailbox) hangs off a loop without the loop
// knowing its type: after the wake-up fd is drained, the loop calls on_wake
// of every attached hook in its own thread; `active` counts the sources the
// module keeps pending, which keep run() running; on_fork (or null) is
// called by after_fork() in a forked child, to drop what belongs to the
// parent. The hook lives in the module.
struct loop_hook {
    void (*on_wake)(loop_hook* self);
    void (*on_fork)(loop_hook* self);
    size_t active;
    loop_hook* next;
};

// The part of a loop that does not depend on its capacities: what modules
// and other threads talk to.
class loop_base {
public:
    // Interrupt a waiting select() from another thread or a signal handler
    // (async-signal-safe; errno is preserved). errc::forked in a forked
    // child that has not called after_fork(): the fd is the parent's.
    error_code wake();
    // Make run() return after the current iteration. Thread-safe. The
    // wake-up it writes is taken back when the request is used up, so that
    // it does not end the next run_once()'s wait too. In a forked child that
    // has not called after_fork() it writes nothing (the fd is the parent's).
    void stop() {
        stop_.store(true, std::memory_order_relaxed);
        if (wake_fd_ < 0 || forked()) return;
        int saved = errno;
        detail::wake_write(wake_fd_, detail::stop_mark); // not through wake_pending_: see use_up_stop()
        errno = saved;
    }

    // Blocking-callback detection: call cb(stall_report) after any callback
    // that ran longer than `threshold`, naming it. Costs two clock reads per
    // callback while on; a zero threshold turns it off.
    template <class Rep, class Period, class F>
    error_code on_stall(std::chrono::duration<Rep, Period> threshold, F&& cb) {
        int64_t ns;
        if (!detail::to_ns(threshold, ns)) return errc::bad_timeout;
        if (detail::is_null_callable(cb)) return errc::bad_argument;
        stall_cb_.emplace(std::forward<F>(cb));
        stall_ns_ = ns;
        return error_code();
    }

    // For modules: register a hook; detach it before the module goes away.
    void attach(loop_hook* h) {
        h->next = hooks_;
        hooks_ = h;
    }
    void detach(loop_hook* h) {
        for (loop_hook** p = &hooks_; *p; p = &(*p)->next)
            if (*p == h) {
                *p = h->next;
                return;
            }
    }
    // The wake-up fd (an eventfd), for a module's signal handler that must
    // write to it directly (detail::wake_write()); -1 if it could not be made.
    int wake_fd() const { return wake_fd_; }

    // Runs a user callback, reporting it if it stalled the loop. For modules.
    // Stalls are measured on the real monotonic clock, whatever the timers use.
    template <class Cb, class... Ev>
    void invoke(Cb& cb, source_kind kind, uint64_t id, int what, Ev... ev) {
        if (stall_ns_ == 0) {
            cb(ev...);
            return;
        }
        int64_t t0 = detail::monotonic_ns();
        cb(ev...);
        int64_t took = detail::monotonic_ns() - t0;
        if (took >= stall_ns_) report_stall(kind, id, what, took);
    }

    // Calls the stall callback; the clock afterwards, so that its own time is
    // not charged to the next callback.
    int64_t report_stall(source_kind kind, uint64_t id, int what, int64_t took) {
        stall_report r = {kind, id, what, took};
        stall_cb_(r);
        return detail::monotonic_ns();
    }

    // Which process made this loop, or called after_fork() last.
    pid_t owner_pid() const { return owner_pid_; }
    // Whether this is a forked child that has not called after_fork().
    bool forked() const { return forked_ || stamp_.forked(); }

protected:
    loop_base();
    ~loop_base();
    loop_base(const loop_base&) = delete;
    loop_base& operator=(const loop_base&) = delete;

    void drain_wake();
    error_code renew_wake_fd();
    // Whether the loop cannot go on (forked, or the wake-up fd broken):
    // checked every iteration, so it is one load and compare. fault() says why.
    bool faulted() const { return fault_key_ != detail::fork_count<>::forks; }
    error_code fault() const {
        return broken_ && !forked() ? error_code(errc::system, wake_errno_) : error_code(errc::forked);
    }
    void set_fault() { fault_key_ = stamp_.forks() - 1; } // never equal again: the count only grows
    // The end of a run(), run_once() or poll(): the stop request is used up.
    bool use_up_stop(); // true if there was a stop() to use up
    int read_wake(uint64_t& count);
    size_t hooks_active() const {
        size_t n = 0;
        for (const loop_hook* h = hooks_; h; h = h->next) n += h->active;
        return n;
    }

    // The self-pipe, as an eventfd: one fd instead of two, a counter that
    // cannot fill up, and no SIGPIPE if someone closes it behind our back
    // (a daemon that "closes every fd above 2"): then wake() and run()
    // report errc::system instead of the process dying or the loop spinning.
    int wake_fd_;
    int wake_errno_; // why the wake-up fd could not be made or was found broken, or 0
    pid_t owner_pid_; // the wake-up fd is shared with forked children: only this process reads it
    detail::fork_stamp stamp_; // taken with owner_pid_
    unsigned fault_key_;       // stamp_.forks() while all is well (see faulted())
    bool forked_;     // found to be a forked child on reading the wake-up fd (a fork the handler missed)
    bool broken_;     // the wake-up fd was closed or replaced behind our back
    std::atomic<bool> wake_pending_;
    std::atomic<bool> stop_;
    loop_hook* hooks_;
    int64_t stall_ns_;
    stall_callback stall_cb_;
};

// ---- loop_base: the wake-up fd ---------------------------------------------

inline loop_base::loop_base()
    : wake_fd_(-1), wake_errno_(0), owner_pid_(0), fault_key_(0), forked_(false), broken_(false),
      wake_pending_(false),
      stop_(false), hooks_(nullptr), stall_ns_(0) {
    renew_wake_fd();
}

// Makes the wake-up fd (again, after a fork: the child closes its copy of
// the parent's, which stays the parent's). Non-blocking so that neither
// wake() nor a signal handler can block; close-on-exec so exec'd programs do
// not inherit it.
inline error_code loop_base::renew_wake_fd() {
    if (wake_fd_ >= 0) close(wake_fd_);
    wake_fd_ = -1;
    wake_errno_ = 0;
    owner_pid_ = getpid();
    stamp_.take(owner_pid_);
    fault_key_ = stamp_.forks();
    forked_ = false;
    broken_ = false;
    wake_pending_.store(false);
    stop_.store(false);
    int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fd < 0) {
        wake_errno_ = errno;
    } else if (fd >= FD_SETSIZE) {
        close(fd);
        wake_errno_ = EMFILE;
    } else {
        wake_fd_ = fd;
        return error_code();
    }
    return error_code(errc::system, wake_errno_);
}

inline loop_base::~loop_base() {
    if (wake_fd_ >= 0) close(wake_fd_);
}

inline error_code loop_base::wake() {
    if (wake_fd_ < 0) return error_code(errc::system, wake_errno_);
    if (forked()) return errc::forked;
    if (wake_pending_.exchange(true)) return error_code(); // a wake-up is on its way already
    int saved = errno;
    int e = detail::wake_write(wake_fd_);
    errno = saved;
    if (e == 0) return error_code();
    // Broken (closed behind our back): say so, and let the next call try
    // again rather than believe a wake-up is pending.
    wake_pending_.store(false);
    return error_code(errc::system, e);
}

// Reads (and so empties) the wake-up fd's counter: 1 with the count, 0 if
// it was empty, -1 if it is not an eventfd any more (closed, and the number
// reused): then it is never read again, and iterate() reports it.
inline int loop_base::read_wake(uint64_t& count) {
    ssize_t r;
    do r = read(wake_fd_, &count, sizeof count);
    while (r < 0 && errno == EINTR);
    if (r == static_cast<ssize_t>(sizeof count)) return 1;
    if (r < 0 && errno == EAGAIN) return 0;
    wake_errno_ = r < 0 ? errno : EBADF;
    broken_ = true;
    set_fault();
    return -1;
}

inline void loop_base::drain_wake() {
    // After fork() the child shares this fd with the parent. Reading it in
    // the child would take the parent's wake-ups while the parent's
    // wake_pending_ stays set, and every later wake() of the parent would be
    // skipped: the child leaves it alone (iterate() then returns
    // errc::forked). The fork handler catches a fork before any wake-up
    // (faulted()); this getpid(), one per wake-up, never per event, catches
    // what it cannot see (a raw clone(), a failed registration).
    if (getpid() != owner_pid_) {
        forked_ = true;
        set_fault();
        return;
    }
    // Cleared after reading, before the hooks run: a wake() that saw the
    // flag set published its work before we clear it, so the hooks see that
    // work; a wake() after the clear writes again and the next select() sees
    // it. (Cleared before reading, the read could swallow the write of a
    // wake() whose flag stays set, and every later wake() would then skip
    // its write.) An exchange, not a store, so that what the waker published
    // before wake() is visible here. Modules keep their own pending flags;
    // the fd only wakes the loop.
    uint64_t count;
    if (read_wake(count) < 0) return;
    wake_pending_.exchange(false);
    // If a hook's callback throws, the hooks after it (and the rest of its
    // own work) get their turn in the next iteration.
    auto rewake = detail::on_scope_exit([this] { wake(); });
    for (loop_hook* h = hooks_; h;) {
        loop_hook* next = h->next; // a hook may detach itself
        h->on_wake(h);
        h = next;
    }
    rewake.dismiss();
}

// stop() added stop_mark to the eventfd's counter rather than going through
// wake_pending_, so that its share can be told from the others': the loop
// reads the counter and puts back what is not the stop's (a post's, a
// signal's wake-up), which the next iteration then sees. A stop() racing this
// (its request arriving after the one used up here) keeps its own mark, and
// at worst ends one wait early.
inline bool loop_base::use_up_stop() {
    if (!stop_.load(std::memory_order_relaxed)) return false;
    stop_.store(false, std::memory_order_relaxed); // left set, it would make every later wait zero
    if (wake_fd_ < 0 || faulted() || forked()) return true;
    uint64_t count;
    if (read_wake(count) > 0 && count % detail::stop_mark != 0) detail::wake_write(wake_fd_, count % detail::stop_mark);
    return true;
}

} // namespace microloop

#endif // MICROLOOP_LOOP_BASE_HPP
