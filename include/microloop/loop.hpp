// SPDX-License-Identifier: MIT
// microloop/loop.hpp - the select() loop: fd watchers, timers, wake-up pipe,
// and the hooks through which signals and AIO completions arrive.
#ifndef MICROLOOP_LOOP_HPP
#define MICROLOOP_LOOP_HPP

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>
#include <sys/select.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <type_traits>

#include "callback.hpp"
#include "config.hpp"
#include "error.hpp"
#include "handle.hpp"

// For the hot path only (internal).
#if defined(__GNUC__)
#define MICROLOOP_DETAIL_ALWAYS_INLINE __attribute__((always_inline)) inline
#else
#define MICROLOOP_DETAIL_ALWAYS_INLINE inline
#endif

namespace microloop {

// What an fd watcher asks for, and what its callback is told.
enum : unsigned {
    readable = 1u,  // read set: data, EOF, a connection to accept
    writable = 2u,  // write set
    priority = 4u,  // except set: out-of-band data, tty packet mode, sysfs GPIO edges
    io_error = 8u   // only reported: the fd was closed while watched (EBADF); the
                    // watcher is disabled, unwatch() it
};

struct io_event {
    io_handle handle;
    int fd;
    unsigned events; // the ready subset of what was asked for, or io_error
};

struct timer_event {
    timer_handle handle;
    uint32_t overruns; // repeating timers: whole periods skipped after a stall
};

// What kind of callback a stall report names.
enum class source_kind : unsigned char { io, timer, signal, aio, child };

// Given to the stall callback when a callback ran longer than the threshold.
struct stall_report {
    source_kind kind;
    uint32_t id;          // the handle's id()
    int detail;           // the fd, signal number or pid; -1 for timers
    int64_t duration_ns;  // how long the callback ran
};

typedef detail::inplace_callback<void(io_event)> io_callback;
typedef detail::inplace_callback<void(timer_event)> timer_callback;
typedef detail::inplace_callback<void(const stall_report&)> stall_callback;

typedef basic_handle<struct signal_tag> signal_handle;
typedef basic_handle<struct child_tag> child_handle;
namespace detail {
template <size_t Signals, size_t Children>
class signal_table; // signal.hpp, included at the end of this file
} // namespace detail

namespace detail {

inline int64_t monotonic_ns() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
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

// a before b, for counters that wrap
inline bool serial_before(uint32_t a, uint32_t b) { return static_cast<int32_t>(a - b) < 0; }

const int word_bits = static_cast<int>(CHAR_BIT * sizeof(unsigned long));
const int fd_words = (FD_SETSIZE + word_bits - 1) / word_bits;

// fd >= 0 always; unsigned arithmetic makes / and % plain shifts and masks.
inline unsigned word_of(int fd) { return static_cast<unsigned>(fd) / static_cast<unsigned>(word_bits); }
inline unsigned long bit_of(int fd) { return 1ul << (static_cast<unsigned>(fd) % static_cast<unsigned>(word_bits)); }
inline void set_bit(unsigned long* w, int fd) { w[word_of(fd)] |= bit_of(fd); }
inline void clear_bit(unsigned long* w, int fd) { w[word_of(fd)] &= ~bit_of(fd); }
inline bool test_bit(const unsigned long* w, int fd) { return (w[word_of(fd)] & bit_of(fd)) != 0; }

// Does this libc lay fd_set out as an array of unsigned long words with fd n
// at bit n % word_bits of word n / word_bits? Every Linux libc does, but POSIX
// does not promise it, so it is checked once rather than assumed.
inline bool fdset_is_words() {
#if MICROLOOP_FDSET_WORDS
    if (sizeof(fd_set) % sizeof(unsigned long) != 0 ||
        sizeof(fd_set) < static_cast<size_t>(fd_words) * sizeof(unsigned long) || word_bits + 3 >= FD_SETSIZE)
        return false;
    fd_set s;
    FD_ZERO(&s);
    FD_SET(1, &s);
    FD_SET(word_bits + 3, &s);
    unsigned long w[2];
    memcpy(w, &s, sizeof w);
    return w[0] == 2ul && w[1] == 8ul;
#else
    return false;
#endif
}

} // namespace detail

// Compile-time capacities: how many fd watchers, timers, signal watchers and
// child watchers one loop can hold. Each slot costs memory (see README).
template <size_t Io = 64, size_t Timers = 64, size_t Signals = 8, size_t Children = 8>
struct capacity {
    static const size_t io = Io, timers = Timers, signals = Signals, children = Children;
};

// How a module (signals, AIO) hangs off a loop without the loop knowing its
// type: after the wake-up pipe is drained, the loop calls on_wake of every
// attached hook in its own thread; `active` counts the sources the module
// keeps pending, which keep run() running. The hook lives in the module.
struct loop_hook {
    void (*on_wake)(loop_hook* self);
    size_t active;
    loop_hook* next;
};

// The part of a loop that does not depend on its capacities: what modules
// and other threads talk to.
class loop_base {
public:
    // Interrupt a waiting select() from another thread or a signal handler
    // (async-signal-safe; errno is preserved).
    error_code wake();
    // Make run() return after the current iteration. Thread-safe.
    void stop() {
        stop_.store(true, std::memory_order_relaxed);
        wake();
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
    // The write end of the wake-up pipe, for a module's signal handler that
    // must write to it directly; -1 if the pipe could not be made.
    int wake_fd() const { return wake_wr_; }

    // Runs a user callback, reporting it if it stalled the loop. For modules.
    template <class Cb, class Ev>
    void invoke(Cb& cb, Ev ev, source_kind kind, uint32_t id, int what) {
        if (stall_ns_ == 0) {
            cb(ev);
            return;
        }
        int64_t t0 = detail::monotonic_ns();
        cb(ev);
        int64_t took = detail::monotonic_ns() - t0;
        if (took >= stall_ns_) {
            stall_report r = {kind, id, what, took};
            stall_cb_(r);
        }
    }

protected:
    loop_base();
    ~loop_base();
    loop_base(const loop_base&) = delete;
    loop_base& operator=(const loop_base&) = delete;

    void drain_wake();
    size_t hooks_active() const {
        size_t n = 0;
        for (const loop_hook* h = hooks_; h; h = h->next) n += h->active;
        return n;
    }

    int wake_rd_, wake_wr_;
    int wake_errno_; // why the wake pipe could not be made, or 0
    std::atomic<bool> wake_pending_;
    std::atomic<bool> stop_;
    loop_hook* hooks_;
    int64_t stall_ns_;
    stall_callback stall_cb_;
};

// The loop. Every table lives inside the object, sized by Cap (a capacity<>);
// nothing is allocated after construction. One loop per thread: only wake()
// and stop() may be called from other threads (and wake() from a signal
// handler).
template <class Cap>
class basic_loop : public loop_base {
public:
    basic_loop();
    ~basic_loop();

    // ---- fd watchers ----------------------------------------------------
    // Watch fd for `events` (readable | writable | priority); cb(io_event).
    template <class F>
    io_handle watch(int fd, unsigned events, F&& cb);
    // Change what is watched; 0 pauses the watcher without removing it.
    error_code modify(io_handle h, unsigned events);
    error_code unwatch(io_handle h);

    // ---- timers (CLOCK_MONOTONIC) -----------------------------------------
    // Fire once after `timeout`.
    template <class Rep, class Period, class F>
    timer_handle after(std::chrono::duration<Rep, Period> timeout, F&& cb) {
        return add_timer(timeout, std::chrono::nanoseconds::zero(), std::forward<F>(cb));
    }
    // Fire every `period`, first after one period. Deadlines advance by the
    // period, never by when the callback ran, so the timer does not drift.
    template <class Rep, class Period, class F>
    timer_handle every(std::chrono::duration<Rep, Period> period, F&& cb) {
        if (period == std::chrono::duration<Rep, Period>::zero()) return timer_handle(errc::bad_timeout);
        return add_timer(period, period, std::forward<F>(cb));
    }
    // The general form: first after `timeout`, then every `repeat` (0: once).
    template <class Rep1, class Period1, class Rep2, class Period2, class F>
    timer_handle add_timer(std::chrono::duration<Rep1, Period1> timeout, std::chrono::duration<Rep2, Period2> repeat,
                           F&& cb);
    // Re-schedule to fire `timeout` from now (a repeating timer keeps its
    // period). Also valid inside the callback of a one-shot timer, which
    // keeps it alive; a one-shot timer that fired and was not re-armed is gone.
    template <class Rep, class Period>
    error_code rearm(timer_handle h, std::chrono::duration<Rep, Period> timeout);
    error_code cancel(timer_handle h);
    // Time left before the timer fires (zero if due).
    std::chrono::nanoseconds remaining(timer_handle h) const;

    // ---- running ----------------------------------------------------------
    // Until stop() or until no active watcher or timer is left.
    error_code run();
    // One iteration: wait (forever, or at most max_wait), dispatch, return.
    // A stop() ends the wait and is used up, as in run().
    error_code run_once() { return iterate_once(-1); }
    template <class Rep, class Period>
    error_code run_once(std::chrono::duration<Rep, Period> max_wait) {
        int64_t ns;
        if (!detail::to_ns(max_wait, ns)) return errc::bad_timeout;
        return iterate_once(ns);
    }
    // One iteration that does not wait.
    error_code poll() { return iterate_once(0); }
    using loop_base::stop;
    using loop_base::wake;

    // ---- signals and child processes (signal.hpp) ---------------------------
    // cb(signal_event) runs in the loop, never in signal context. One watcher
    // per signal in the whole process; unwatching restores the old disposition.
    template <class F>
    signal_handle on_signal(int signo, F&& cb) { return signals_.add(signo, std::forward<F>(cb)); }
    error_code unwatch(signal_handle h) { return signals_.remove(h); }
    // cb(child_event) once, when child `pid` has terminated and been reaped.
    template <class F>
    child_handle on_child(pid_t pid, F&& cb) { return signals_.add_child(pid, std::forward<F>(cb)); }
    error_code unwatch(child_handle h) { return signals_.remove_child(h); }

    // Loop time: taken after each wait, so every callback of one iteration
    // sees the same "now" and timers armed in them are relative to it.
    std::chrono::nanoseconds now() { return std::chrono::nanoseconds(now_ns()); }
    void update_now() { refresh_now(); }
    // Watchers with a non-zero interest, armed timers, and what modules
    // (signals, AIO) keep pending.
    size_t active() const { return active_io_ + heap_size_ + hooks_active(); }

private:
    typedef typename std::conditional<(Cap::io < 255), uint8_t, uint16_t>::type fd_slot_t;
    static const fd_slot_t no_slot = static_cast<fd_slot_t>(~0u);
    static const uint16_t no_pos = 0xffff;
    enum { rd = 0, wr = 1, ex = 2 };

    struct io_slot {
        io_callback cb;
        int fd;
        unsigned interest;
        uint32_t added_iter; // not dispatched in the iteration it was added in
        uint32_t id;         // its handle's id, fixed while the watcher lives
    };
    struct timer_slot {
        timer_callback cb;
        int64_t period; // 0: one-shot
        uint16_t heap_pos;
    };
    struct heap_entry {
        int64_t deadline;
        uint32_t seq; // arming order: equal deadlines fire first-armed first
        uint16_t slot;
    };

    int64_t now_ns() {
        if (!now_valid_) refresh_now();
        return now_;
    }
    void refresh_now() {
        now_ = detail::monotonic_ns();
        now_valid_ = true;
    }

    void set_interest(io_slot& io, unsigned events);
    void recompute_maxfd();
    void release_io(uint16_t slot) { running_io_.release(io_pool_, io_[slot].cb, slot); }
    void release_timer(uint16_t slot) { running_timer_.release(timer_pool_, timers_[slot].cb, slot); }
    void call_io(uint16_t s, int fd, unsigned events);
    bool disable_bad_fds();

    void heap_place(uint16_t pos, const heap_entry& e) {
        heap_[pos] = e;
        timers_[e.slot].heap_pos = pos;
    }
    static bool heap_less(const heap_entry& a, const heap_entry& b) {
        return a.deadline < b.deadline || (a.deadline == b.deadline && detail::serial_before(a.seq, b.seq));
    }
    void heap_sift(uint16_t pos, heap_entry e);
    void heap_push(uint16_t slot, int64_t deadline);
    void heap_remove(uint16_t pos);

    error_code iterate(int64_t max_wait_ns);
    error_code iterate_once(int64_t max_wait_ns) {
        error_code result = iterate(max_wait_ns);
        stop_.store(false, std::memory_order_relaxed); // left set, it would make every later wait zero
        return result;
    }
    int64_t select_timeout(int64_t until) const;
    void dispatch_io(const unsigned long* r, const unsigned long* w, const unsigned long* e, int nwords, int nready);
    void dispatch_fd(int fd, unsigned ready);
    fd_set* copy_set(fd_set& to, const fd_set& from, size_t bytes) const {
        if (fdset_words_) memcpy(&to, &from, bytes);
        else to = from;
        return &to;
    }
    void dispatch_timers();

    // fd sets: the masters are edited by watch/modify/unwatch and copied for
    // each select(); watched_ is our own bitmap of fds with a watcher.
    fd_set master_[3];
    unsigned long watched_[detail::fd_words];
    fd_slot_t fd_slot_[FD_SETSIZE];
    int maxfd_;
    unsigned nwatch_[3]; // watchers interested in each set: an empty set is passed as NULL
    size_t active_io_;

    detail::slot_pool<Cap::io> io_pool_;
    io_slot io_[Cap::io];

    detail::slot_pool<Cap::timers> timer_pool_;
    timer_slot timers_[Cap::timers];
    heap_entry heap_[Cap::timers];
    uint16_t heap_size_;
    uint32_t seq_;        // next arming sequence number
    uint32_t seq_mark_;   // seq_ when this iteration began
    uint32_t iteration_;

    // The callback running now, so removing it defers freeing its storage.
    detail::running_slot running_io_, running_timer_;

    int64_t now_;
    bool now_valid_;
    bool wake_seen_; // the wake pipe was ready in this iteration
    bool fdset_words_;

    detail::signal_table<Cap::signals, Cap::children> signals_; // a loop_hook
};

// ============================================================================
// Implementation
// ============================================================================

template <class Cap>
basic_loop<Cap>::basic_loop()
    : maxfd_(-1), active_io_(0), heap_size_(0), seq_(0), seq_mark_(0), iteration_(0), now_(0), now_valid_(false), wake_seen_(false),
      fdset_words_(detail::fdset_is_words()), signals_(*this) {
    for (int i = 0; i < 3; ++i) {
        FD_ZERO(&master_[i]);
        nwatch_[i] = 0;
    }
    memset(watched_, 0, sizeof watched_);
    for (size_t i = 0; i < FD_SETSIZE; ++i) fd_slot_[i] = no_slot;
    if (wake_rd_ >= 0) {
        FD_SET(wake_rd_, &master_[rd]);
        maxfd_ = wake_rd_;
    }
}

template <class Cap> const typename basic_loop<Cap>::fd_slot_t basic_loop<Cap>::no_slot;
template <class Cap> const uint16_t basic_loop<Cap>::no_pos;

// Callbacks of live slots are destroyed with the slot arrays.
template <class Cap>
basic_loop<Cap>::~basic_loop() {}

// ---- fd watchers ------------------------------------------------------------

template <class Cap>
template <class F>
io_handle basic_loop<Cap>::watch(int fd, unsigned events, F&& cb) {
    // Checked before anything touches an fd_set: FD_SET beyond FD_SETSIZE
    // writes past the end of the set.
    if (fd < 0) return io_handle(errc::bad_fd);
    if (fd >= FD_SETSIZE) return io_handle(errc::fd_out_of_range);
    if (events & ~(readable | writable | priority)) return io_handle(errc::bad_argument);
    if (detail::is_null_callable(cb)) return io_handle(errc::bad_argument);
    if (fd_slot_[fd] != no_slot || fd == wake_rd_) return io_handle(errc::already_watched);
    uint32_t id = io_pool_.acquire();
    if (id == 0) return io_handle(errc::table_full);

    uint16_t slot = static_cast<uint16_t>(id & 0xffffu);
    io_slot& io = io_[slot];
    io.cb.emplace(std::forward<F>(cb));
    io.fd = fd;
    io.interest = 0;
    io.added_iter = iteration_;
    io.id = id;
    fd_slot_[fd] = static_cast<fd_slot_t>(slot);
    detail::set_bit(watched_, fd);
    if (fd > maxfd_) maxfd_ = fd;
    set_interest(io, events);
    return io_handle::from_id(id);
}

template <class Cap>
error_code basic_loop<Cap>::modify(io_handle h, unsigned events) {
    uint16_t slot = io_pool_.lookup(h.id());
    if (slot == io_pool_.none) return errc::stale_handle;
    if (events & ~(readable | writable | priority)) return errc::bad_argument;
    set_interest(io_[slot], events);
    return error_code();
}

template <class Cap>
error_code basic_loop<Cap>::unwatch(io_handle h) {
    uint16_t slot = io_pool_.lookup(h.id());
    if (slot == io_pool_.none) return errc::stale_handle;
    io_slot& io = io_[slot];
    set_interest(io, 0);
    fd_slot_[io.fd] = no_slot;
    detail::clear_bit(watched_, io.fd);
    if (io.fd == maxfd_) recompute_maxfd();
    release_io(slot);
    return error_code();
}

template <class Cap>
void basic_loop<Cap>::set_interest(io_slot& io, unsigned events) {
    static const unsigned bit[3] = {readable, writable, priority};
    if ((io.interest != 0) != (events != 0)) active_io_ += events ? 1 : static_cast<size_t>(-1);
    for (int s = 0; s < 3; ++s) {
        bool was = (io.interest & bit[s]) != 0, is = (events & bit[s]) != 0;
        if (was == is) continue;
        if (is) {
            FD_SET(io.fd, &master_[s]);
            ++nwatch_[s];
        } else {
            FD_CLR(io.fd, &master_[s]);
            --nwatch_[s];
        }
    }
    io.interest = events;
}

template <class Cap>
void basic_loop<Cap>::recompute_maxfd() {
    maxfd_ = wake_rd_;
    for (int w = detail::fd_words - 1; w >= 0; --w) {
        if (watched_[w]) {
            int fd = w * detail::word_bits + (detail::word_bits - 1 - __builtin_clzl(watched_[w]));
            if (fd > maxfd_) maxfd_ = fd;
            return;
        }
    }
}

// Runs watcher s's callback, which may remove the watcher or anything else.
template <class Cap>
MICROLOOP_DETAIL_ALWAYS_INLINE void basic_loop<Cap>::call_io(uint16_t s, int fd, unsigned events) {
    io_slot& io = io_[s];
    running_io_.begin(s);
    io_event ev = {io_handle::from_id(io.id), fd, events};
    invoke(io.cb, ev, source_kind::io, ev.handle.id(), fd);
    running_io_.end(io_pool_, io.cb);
}

// select() failed with EBADF: some watched fd was closed behind our back.
// Find each one, report it to its watcher once, and disable the watcher.
// False if no watcher owns a bad fd (the wake-up pipe itself was closed).
template <class Cap>
bool basic_loop<Cap>::disable_bad_fds() {
    bool found = false;
    for (int fd = 0; fd <= maxfd_; ++fd) {
        fd_slot_t s = fd_slot_[fd];
        if (s == no_slot || io_[s].interest == 0) continue;
        if (fcntl(fd, F_GETFD) != -1 || errno != EBADF) continue;
        io_slot& io = io_[s];
        found = true;
        set_interest(io, 0);
        call_io(s, fd, io_error);
    }
    return found;
}

// ---- timers -----------------------------------------------------------------

template <class Cap>
template <class Rep1, class Period1, class Rep2, class Period2, class F>
timer_handle basic_loop<Cap>::add_timer(std::chrono::duration<Rep1, Period1> timeout,
                                               std::chrono::duration<Rep2, Period2> repeat, F&& cb) {
    int64_t after_ns, period_ns;
    if (!detail::to_ns(timeout, after_ns) || !detail::to_ns(repeat, period_ns)) return timer_handle(errc::bad_timeout);
    if (detail::is_null_callable(cb)) return timer_handle(errc::bad_argument);
    uint32_t id = timer_pool_.acquire();
    if (id == 0) return timer_handle(errc::table_full);
    uint16_t slot = static_cast<uint16_t>(id & 0xffffu);
    timer_slot& t = timers_[slot];
    t.cb.emplace(std::forward<F>(cb));
    t.period = period_ns;
    heap_push(slot, now_ns() + after_ns);
    return timer_handle::from_id(id);
}

template <class Cap>
template <class Rep, class Period>
error_code basic_loop<Cap>::rearm(timer_handle h, std::chrono::duration<Rep, Period> timeout) {
    uint16_t slot = timer_pool_.lookup(h.id());
    if (slot == timer_pool_.none) return errc::stale_handle;
    int64_t ns;
    if (!detail::to_ns(timeout, ns)) return errc::bad_timeout;
    timer_slot& t = timers_[slot];
    if (t.heap_pos != no_pos) {
        // Armed: re-keyed in place, one sift instead of a remove and a push.
        // A fresh seq, as a push would give, keeps equal deadlines in arming order.
        heap_entry e = {now_ns() + ns, seq_++, slot};
        heap_sift(t.heap_pos, e);
    } else {
        heap_push(slot, now_ns() + ns);
    }
    return error_code();
}

template <class Cap>
error_code basic_loop<Cap>::cancel(timer_handle h) {
    uint16_t slot = timer_pool_.lookup(h.id());
    if (slot == timer_pool_.none) return errc::stale_handle;
    if (timers_[slot].heap_pos != no_pos) heap_remove(timers_[slot].heap_pos);
    release_timer(slot);
    return error_code();
}

template <class Cap>
std::chrono::nanoseconds basic_loop<Cap>::remaining(timer_handle h) const {
    uint16_t slot = timer_pool_.lookup(h.id());
    if (slot == timer_pool_.none || timers_[slot].heap_pos == no_pos) return std::chrono::nanoseconds::zero();
    int64_t left = heap_[timers_[slot].heap_pos].deadline - detail::monotonic_ns();
    return std::chrono::nanoseconds(left > 0 ? left : 0);
}

// Moves `e` from `pos` up or down to where it belongs: O(log n). The heap is
// 4-ary (as libev's): half the depth of a binary heap, so an entry moves
// through half as many levels, and siblings sit next to each other in memory.
template <class Cap>
void basic_loop<Cap>::heap_sift(uint16_t pos, heap_entry e) {
    uint32_t at = pos;
    while (at > 0) {
        uint32_t parent = (at - 1u) / 4u;
        if (!heap_less(e, heap_[parent])) break;
        heap_place(static_cast<uint16_t>(at), heap_[parent]);
        at = parent;
    }
    // heap_size_ never exceeds the capacity; the clamp tells the optimiser so
    // (gcc -O2 warns of out-of-bounds reads with capacities below 3).
    const uint32_t size = heap_size_ < Cap::timers ? heap_size_ : static_cast<uint32_t>(Cap::timers);
    for (;;) {
        uint32_t first = 4u * at + 1u;
        if (first >= size) break;
        uint32_t end = size - first > 4u ? first + 4u : size, best = first;
        for (uint32_t c = first + 1u; c < end; ++c)
            if (heap_less(heap_[c], heap_[best])) best = c;
        if (!heap_less(heap_[best], e)) break;
        heap_place(static_cast<uint16_t>(at), heap_[best]);
        at = best;
    }
    heap_place(static_cast<uint16_t>(at), e);
}

template <class Cap>
void basic_loop<Cap>::heap_push(uint16_t slot, int64_t deadline) {
    heap_entry e = {deadline, seq_++, slot};
    heap_sift(heap_size_++, e);
}

template <class Cap>
void basic_loop<Cap>::heap_remove(uint16_t pos) {
    timers_[heap_[pos].slot].heap_pos = no_pos;
    if (pos != --heap_size_) heap_sift(pos, heap_[heap_size_]);
}

// ---- the iteration ----------------------------------------------------------

template <class Cap>
error_code basic_loop<Cap>::run() {
    error_code result;
    while (!stop_.load(std::memory_order_relaxed) && active() > 0) {
        result = iterate(-1);
        if (result) break;
    }
    stop_.store(false, std::memory_order_relaxed);
    return result;
}

// Nanoseconds select() may sleep: until the first timer or `until`, -1 for
// no limit.
template <class Cap>
int64_t basic_loop<Cap>::select_timeout(int64_t until) const {
    // Past deadlines clamp to 0: a difference of exactly -1 must not read as
    // "no limit".
    int64_t wait = until < 0 ? -1 : (until > now_ ? until - now_ : 0);
    if (heap_size_ > 0) {
        int64_t t = heap_[0].deadline > now_ ? heap_[0].deadline - now_ : 0;
        if (wait < 0 || t < wait) wait = t;
    }
    return wait;
}

template <class Cap>
error_code basic_loop<Cap>::iterate(int64_t max_wait_ns) {
    ++iteration_;
    seq_mark_ = seq_;
    // The clock is read only when something depends on it: with no timer and
    // no time limit (run() with fds only, or poll()'s zero wait) the loop pays
    // nothing for time, and timers armed in callbacks read it themselves.
    const bool timed = heap_size_ > 0 || max_wait_ns > 0;
    int64_t until = -1;
    if (timed) {
        refresh_now();
        if (max_wait_ns >= 0) until = now_ + max_wait_ns;
    } else {
        now_valid_ = false;
    }

    fd_set set[3];
    fd_set* ptr[3];
    int n, nfds;
    for (;;) {
        nfds = maxfd_ + 1;
        // Only the words select() will look at are copied. The read set always
        // holds the wake pipe; the others are usually empty and passed as NULL.
        const size_t bytes = (static_cast<size_t>(nfds) + detail::word_bits - 1) / detail::word_bits *
                             sizeof(unsigned long);
        ptr[rd] = copy_set(set[rd], master_[rd], bytes);
        ptr[wr] = nwatch_[wr] ? copy_set(set[wr], master_[wr], bytes) : nullptr;
        ptr[ex] = nwatch_[ex] ? copy_set(set[ex], master_[ex], bytes) : nullptr;
        int64_t wait = timed ? select_timeout(until) : max_wait_ns; // untimed: -1 (forever) or 0
        if (stop_.load(std::memory_order_relaxed)) wait = 0;
        struct timeval tv, *tvp = nullptr;
        if (wait == 0) { // poll(), or a timer already due: no divisions
            tv.tv_sec = 0;
            tv.tv_usec = 0;
            tvp = &tv;
        } else if (wait > 0) {
            // Rounded up: waking before the deadline would only spin.
            int64_t us = (wait + 999) / 1000;
            const int64_t max_s = 0x7fffffff; // fits a 32-bit time_t
            tv.tv_sec = static_cast<time_t>(us / 1000000 > max_s ? max_s : us / 1000000);
            tv.tv_usec = static_cast<suseconds_t>(us % 1000000);
            tvp = &tv;
        }
        n = select(nfds, ptr[rd], ptr[wr], ptr[ex], tvp);
        if (timed) refresh_now();
        if (n >= 0) break;
        if (errno == EINTR) continue; // retried with what is left of the timeout
        if (errno == EBADF) {
            // Retrying would fail the same way: with nothing to disable,
            // report it instead of spinning.
            if (!disable_bad_fds()) return error_code(errc::system, EBADF);
            n = 0;
            break;
        }
        return error_code(errc::system, errno);
    }

    if (n > 0) {
        const int nwords = static_cast<int>((static_cast<unsigned>(nfds) + detail::word_bits - 1) / detail::word_bits);
        const unsigned long* sets[3];
        unsigned long words[3][detail::fd_words];
        if (fdset_words_) {
            for (int s = 0; s < 3; ++s) sets[s] = reinterpret_cast<const unsigned long*>(ptr[s]); // NULL stays NULL
        } else {
            // Portable path: translate the result sets into words through
            // FD_ISSET, for the fds we watch only.
            memset(words, 0, sizeof words);
            for (int fd = 0; fd < nfds; ++fd) {
                if (!detail::test_bit(watched_, fd) && fd != wake_rd_) continue;
                for (int s = 0; s < 3; ++s)
                    if (ptr[s] && FD_ISSET(fd, ptr[s])) detail::set_bit(words[s], fd);
            }
            for (int s = 0; s < 3; ++s) sets[s] = ptr[s] ? words[s] : nullptr;
        }
        dispatch_io(sets[rd], sets[wr], sets[ex], nwords, n); // one call site: inlined
    }
    if (heap_size_ > 0) dispatch_timers();
    return error_code();
}

// Ready fds are found a word at a time. nready is select()'s count of set
// bits: the scan stops when it is used up. The wake pipe is drained after the
// watchers ran, as before. Inlined into its one caller, iterate(): with one
// ready fd per iteration, the call would cost more than the scan.
template <class Cap>
MICROLOOP_DETAIL_ALWAYS_INLINE void basic_loop<Cap>::dispatch_io(const unsigned long* r, const unsigned long* w,
                                                                  const unsigned long* e, int nwords,
                                                                  int nready) {
    if (!w && !e) {
        // Only readers (the common case): the scan keeps its state in registers.
        for (int i = 0; i < nwords && nready > 0; ++i)
            for (unsigned long bits = r[i]; bits; bits &= bits - 1, --nready)
                dispatch_fd(i * detail::word_bits + __builtin_ctzl(bits), readable);
    } else {
        static const unsigned long none[detail::fd_words] = {}; // an unused set reads as empty
        if (!w) w = none;
        if (!e) e = none;
        for (int i = 0; i < nwords && nready > 0; ++i) {
            for (unsigned long bits = r[i] | w[i] | e[i]; bits; bits &= bits - 1) {
                int bit = __builtin_ctzl(bits);
                unsigned long rb = (r[i] >> bit) & 1ul, wb = (w[i] >> bit) & 1ul, eb = (e[i] >> bit) & 1ul;
                nready -= static_cast<int>(rb + wb + eb);
                dispatch_fd(i * detail::word_bits + bit,
                            (rb ? readable : 0u) | (wb ? writable : 0u) | (eb ? priority : 0u));
            }
        }
    }
    if (wake_seen_) {
        wake_seen_ = false;
        drain_wake();
    }
}

// One ready fd, looked up in fd_slot_ at the moment it is dispatched, so a
// watcher removed by an earlier callback of this iteration is never called.
template <class Cap>
MICROLOOP_DETAIL_ALWAYS_INLINE void basic_loop<Cap>::dispatch_fd(int fd, unsigned ready) {
    fd_slot_t s = fd_slot_[fd];
    if (s == no_slot) { // the wake pipe (drained after the watchers), or unwatched meanwhile
        if (fd == wake_rd_) wake_seen_ = true;
        return;
    }
    io_slot& io = io_[s];
    unsigned events = ready & io.interest;
    if (events == 0 || io.added_iter == iteration_) return;
    call_io(s, fd, events);
}

template <class Cap>
void basic_loop<Cap>::dispatch_timers() {
    while (heap_size_ > 0 && heap_[0].deadline <= now_ && detail::serial_before(heap_[0].seq, seq_mark_)) {
        const heap_entry top = heap_[0];
        timer_slot& t = timers_[top.slot];
        uint32_t overruns = 0;
        if (t.period > 0) {
            // Next deadline = this one + whole periods; periods that passed
            // during a stall are skipped and counted, not fired in a burst.
            int64_t missed = (now_ - top.deadline) / t.period;
            overruns = missed > 0xffffffffll ? 0xffffffffu : static_cast<uint32_t>(missed);
            heap_entry next = {top.deadline + (missed + 1) * t.period, seq_++, top.slot};
            heap_sift(0, next);
        } else {
            heap_remove(0);
        }
        running_timer_.begin(top.slot);
        timer_event ev = {timer_handle::from_id(timer_pool_.id_of(top.slot)), overruns};
        invoke(t.cb, ev, source_kind::timer, ev.handle.id(), -1);
        if (!running_timer_.end(timer_pool_, t.cb) && t.heap_pos == no_pos)
            release_timer(top.slot); // a one-shot timer that was not re-armed
    }
}

// ---- loop_base: the wake-up pipe ---------------------------------------------

inline loop_base::loop_base()
    : wake_rd_(-1), wake_wr_(-1), wake_errno_(0), wake_pending_(false), stop_(false), hooks_(nullptr),
      stall_ns_(0) {
    // Non-blocking so neither a full pipe nor an empty one can block the
    // loop or a signal handler; close-on-exec so children do not inherit it.
    int p[2];
    if (pipe2(p, O_NONBLOCK | O_CLOEXEC) != 0) {
        wake_errno_ = errno;
    } else if (p[0] >= FD_SETSIZE) {
        close(p[0]);
        close(p[1]);
        wake_errno_ = EMFILE;
    } else {
        wake_rd_ = p[0];
        wake_wr_ = p[1];
    }
}

inline loop_base::~loop_base() {
    if (wake_rd_ >= 0) close(wake_rd_);
    if (wake_wr_ >= 0) close(wake_wr_);
}

inline error_code loop_base::wake() {
    if (wake_wr_ < 0) return error_code(errc::system, wake_errno_);
    if (wake_pending_.exchange(true)) return error_code(); // a byte is on its way already
    int saved = errno;
    char byte = 1;
    ssize_t r;
    do r = write(wake_wr_, &byte, 1);
    while (r < 0 && errno == EINTR);
    errno = saved; // a full pipe (EAGAIN) wakes the loop just as well
    return error_code();
}

inline void loop_base::drain_wake() {
    // Cleared after draining, before the hooks run: a wake() that saw the
    // flag set published its work before we clear it, so the hooks see that
    // work; a wake() after the clear writes a byte the next select() sees.
    // (Cleared before draining, the read could swallow the byte of a wake()
    // whose flag stays set, and every later wake() would then skip its write.)
    // An exchange, not a store, so that what the waker published before
    // wake() is visible here. Modules keep their own pending flags; the pipe
    // only wakes the loop.
    char buf[64];
    while (read(wake_rd_, buf, sizeof buf) == static_cast<ssize_t>(sizeof buf)) {
    }
    wake_pending_.exchange(false);
    for (loop_hook* h = hooks_; h;) {
        loop_hook* next = h->next; // a hook may detach itself
        h->on_wake(h);
        h = next;
    }
}

template <size_t Io = 64, size_t Timers = 64, size_t Signals = 8, size_t Children = 8>
using loop = basic_loop<capacity<Io, Timers, Signals, Children> >;

} // namespace microloop

#include "signal.hpp" // completes detail::signal_table

#endif // MICROLOOP_LOOP_HPP
