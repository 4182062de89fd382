// SPDX-License-Identifier: MIT
// microloop/loop.hpp - the loop: fd watchers, timers, signals and child
// processes in one object of fixed capacity, on a loop_base (the wake-up fd
// and the hooks through which modules' completions arrive).
#ifndef MICROLOOP_LOOP_HPP
#define MICROLOOP_LOOP_HPP

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
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
#include "loop_base.hpp"
#include "signal.hpp"
#include "slack.hpp"

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

typedef detail::inplace_callback<void(io_event)> io_callback;
typedef detail::inplace_callback<void(timer_event)> timer_callback;

namespace detail {

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

// The clock timers run on: CLOCK_MONOTONIC, which never jumps with the
// wall-clock time. A loop's second template parameter may replace it with
// any class that has `int64_t now_ns() const` (nanoseconds, never
// decreasing), such as manual_clock.
struct monotonic_clock {
    int64_t now_ns() const { return detail::monotonic_ns(); }
};

// A clock that moves only when told: timer tests (ours and users') run in
// virtual time, deterministically, with no sleeping. Drive such a loop with
// poll() (or run_once(zero)) after each advance(): a wait for a timer would
// otherwise sleep in real time for the virtual interval.
//
//     microloop::basic_loop<microloop::capacity<4, 4>, microloop::manual_clock> loop;
//     loop.after(seconds(10), cb);
//     loop.clock().advance(seconds(10));
//     loop.poll();                                // cb runs
class manual_clock {
public:
    manual_clock() : now_(0) {}
    int64_t now_ns() const { return now_; }
    void set(int64_t ns) { now_ = ns > now_ ? ns : now_; } // never backwards
    template <class Rep, class Period>
    void advance(std::chrono::duration<Rep, Period> d) {
        set(now_ + static_cast<int64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(d).count()));
    }

private:
    int64_t now_;
};

// Compile-time capacities: how many fd watchers, timers, signal watchers and
// child watchers one loop can hold. Each slot costs memory (see README).
template <size_t Io = 64, size_t Timers = 64, size_t Signals = 8, size_t Children = 8>
struct capacity {
    static const size_t io = Io, timers = Timers, signals = Signals, children = Children;
};


// The loop. Every table lives inside the object, sized by Cap (a capacity<>);
// nothing is allocated after construction. One loop per thread: only wake()
// and stop() may be called from other threads (and wake() from a signal
// handler). Timers run on Clock (monotonic_clock, or manual_clock in tests).
template <class Cap, class Clock = monotonic_clock>
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

    // ---- timers -----------------------------------------------------------
    // Fire once after `timeout`.
    template <class Rep, class Period, class F>
    timer_handle after(std::chrono::duration<Rep, Period> timeout, F&& cb) {
        return add_timer(timeout, std::chrono::nanoseconds::zero(), std::forward<F>(cb));
    }
    // Fire every `period`, first after one period. Deadlines advance by the
    // period, never by when the callback ran, so the timer does not drift.
    // A period of zero (or one that rounds to 0 ns) is errc::bad_timeout.
    template <class Rep, class Period, class F>
    timer_handle every(std::chrono::duration<Rep, Period> period, F&& cb) {
        if (period == std::chrono::duration<Rep, Period>::zero()) return timer_handle(errc::bad_timeout);
        return add_timer(period, period, std::forward<F>(cb));
    }
    // The general form: first after `timeout`, then every `repeat` (0: once;
    // a non-zero repeat that rounds to 0 ns is errc::bad_timeout).
    template <class Rep1, class Period1, class Rep2, class Period2, class F>
    timer_handle add_timer(std::chrono::duration<Rep1, Period1> timeout, std::chrono::duration<Rep2, Period2> repeat,
                           F&& cb);
    // Re-schedule to fire `timeout` from now (a repeating timer keeps its
    // period). A one-shot timer is gone when its callback runs (its handle
    // is stale there, its place free for a new timer), unless that callback
    // re-arms it: then it takes its place back (errc::table_full if the
    // callback gave the place to another timer).
    template <class Rep, class Period>
    error_code rearm(timer_handle h, std::chrono::duration<Rep, Period> timeout);
    error_code cancel(timer_handle h);
    // Time left before the timer fires (zero if due).
    std::chrono::nanoseconds remaining(timer_handle h) const;

    // ---- running ----------------------------------------------------------
    // Until stop() or until no active watcher or timer is left. Returns ok,
    // or why the loop cannot go on: errc::system (select() failed; sys() has
    // the errno), errc::forked (see after_fork()). A callback that throws
    // leaves every table consistent; the exception propagates out of run()
    // and the loop can be run again.
    error_code run();
    // One iteration: wait (forever, or at most max_wait), dispatch, return.
    // A stop() ends the wait and is used up, as in run().
    error_code run_once() { return drive(-1, true); }
    template <class Rep, class Period>
    error_code run_once(std::chrono::duration<Rep, Period> max_wait) {
        int64_t ns;
        if (!detail::to_ns(max_wait, ns)) return errc::bad_timeout;
        return drive(ns, true);
    }
    // One iteration that does not wait.
    error_code poll() { return drive(0, true); }
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

    // ---- fork ---------------------------------------------------------------
    // A forked child that wants to keep using this loop calls after_fork()
    // first: the loop gets its own wake-up fd and signal routing, and drops
    // what it inherited pending from the parent (signal counts, mailbox
    // posts, AIO operations in flight, child watchers: those belong to the
    // parent). Watchers, timers and signal watchers carry on. Until then the
    // child cannot disturb the parent: its signal handler and its loop leave
    // the shared wake-up fd alone, and its run() returns errc::forked the first
    // time it would have read from it. errc::bad_argument in the process
    // that made the loop; errc::system if no wake-up fd could be made.
    error_code after_fork();

    // ---- time -----------------------------------------------------------------
    // Inside callbacks: the loop time, taken after each wait, so every
    // callback of one iteration sees the same "now" and timers armed in them
    // are relative to it. Outside callbacks (start-up, between run() calls)
    // the clock is read afresh, so after(1s) means one second from now.
    std::chrono::nanoseconds now() { return std::chrono::nanoseconds(arm_time()); }
    void update_now() { refresh_now(); }
    Clock& clock() { return clock_; }
    // How late Linux may wake the loop's select() for a timer: the thread's
    // timer slack (prctl PR_SET_TIMERSLACK, 50 us by default). The loop
    // leaves it alone unless this is called. Takes effect in the loop's
    // thread: at once when called from a callback, otherwise when run(),
    // run_once() or poll() next starts, in the thread running the loop
    // (the start returns errc::system if prctl refuses there, and drops the
    // request; each start costs one prctl call once a slack was asked for).
    // Not for other threads while the loop runs. nanoseconds(1) is as
    // punctual as the kernel allows; 0 restores the thread's default slack
    // (prctl's meaning of 0). errc::bad_timeout: negative, above one second,
    // or non-zero and rounding to 0 ns; errc::system: prctl failed (errno).
    template <class Rep, class Period>
    error_code set_timer_slack(std::chrono::duration<Rep, Period> slack) {
        int64_t ns;
        if (!detail::to_ns(slack, ns) || !detail::timer_slack::valid(ns) ||
            (ns == 0 && slack != std::chrono::duration<Rep, Period>::zero()))
            return errc::bad_timeout;
        return slack_.request(ns, dispatching_);
    }

    // ---- introspection ------------------------------------------------------
    // Watchers with a non-zero interest, armed timers, and what modules
    // (signals, AIO) keep pending.
    size_t active() const { return active_io_ + timer_pool_.used() + hooks_active(); }
    struct loop_stats {
        table_stats io, timers, signals, children;
    };
    // How full each table is and was at most: size capacities from a real run.
    loop_stats stats() const {
        loop_stats s = {io_pool_.stats(), timer_pool_.stats(), signals_.signal_stats(), signals_.child_stats()};
        return s;
    }
    // f(io_handle, int fd, unsigned events) for every fd watcher.
    template <class F>
    void for_each_io(F&& f) const {
        for (uint16_t s = 0; s < io_pool_.slots; ++s)
            if (io_pool_.live(s)) f(io_handle::from_id(io_[s].id), io_[s].fd, io_[s].interest);
    }
    // f(timer_handle, std::chrono::nanoseconds deadline, std::chrono::nanoseconds period)
    // for every armed timer, in no particular order; the deadline is on
    // clock()'s scale (compare it with now()), the period 0 for one-shots.
    template <class F>
    void for_each_timer(F&& f) const {
        for (uint16_t s = 0; s < timer_pool_.slots; ++s)
            if (timer_pool_.live(s)) // live timers are armed
                f(timer_handle::from_id(timer_pool_.id_of(s)), std::chrono::nanoseconds(keys_[s].deadline),
                  std::chrono::nanoseconds(timers_[s].period));
    }

private:
    friend struct detail::test_access;
    // One spare slot per table: a callback that removes its own source can
    // add a new one at once (see slot_pool).
    typedef detail::slot_pool<Cap::io, 1> io_pool;
    typedef detail::slot_pool<Cap::timers, 1> timer_pool;
    typedef typename std::conditional<(io_pool::slots < 255), uint8_t, uint16_t>::type fd_slot_t;
    static const fd_slot_t no_slot = static_cast<fd_slot_t>(~0u);
    static const uint16_t no_pos = 0xffff;
    // One entry at most per slot: the armed timers and the tombstones of
    // cancelled ones (see timer_key).
    static const size_t heap_cap = timer_pool::slots;
    enum { rd = 0, wr = 1, ex = 2 };

    struct io_slot {
        io_callback cb;
        int fd;
        unsigned interest;
        uint64_t added_iter; // not dispatched in the iteration it was added in
        uint64_t id;         // its handle's id, fixed while the watcher lives
    };
    // What a timer needs when it fires.
    struct timer_slot {
        timer_callback cb;
        int64_t period; // 0: one-shot
    };
    // 16 bytes: four siblings fill one 64-byte cache line. The key
    // (deadline, seq) orders the heap.
    struct heap_entry {
        int64_t deadline;
        uint32_t seq; // arming order: equal deadlines fire first-armed first
        uint16_t slot;
    };
    // A slot's timer as it was last armed, and where its heap entry is.
    // The entry's key may be behind: a re-arm to a later deadline writes
    // only here, and cancel() only frees the slot, leaving its entry as a
    // tombstone (the entry of a slot with no live timer). The heap stays
    // ordered by its keys, each at or before its timer's real one, so a top
    // whose key is current is the real first; a stale top is re-keyed and
    // sifted down, a tombstone dropped, when it is looked at
    // (heap_settle()). A tombstone never fires and is reused by the next
    // timer of its slot. 16 bytes.
    struct timer_key {
        int64_t deadline;
        uint32_t seq; // the last arming's
        uint16_t pos; // the heap entry, or no_pos
    };

    int64_t now_ns() {
        if (!now_valid_) refresh_now();
        return now_;
    }
    void refresh_now() {
        now_ = clock_.now_ns();
        now_valid_ = true;
    }
    // What timers are armed relative to: the iteration's time inside
    // callbacks, the clock's time outside them.
    int64_t arm_time() {
        if (!dispatching_) refresh_now();
        return now_ns();
    }

    void set_interest(io_slot& io, unsigned events);
    void recompute_maxfd();
    void release_io(uint16_t slot) { running_io_.release(io_pool_, io_[slot].cb, slot); }
    void release_timer(uint16_t slot) { running_timer_.release(timer_pool_, timers_[slot].cb, slot); }
    void call_io(uint16_t s, int fd, unsigned events);
    bool disable_bad_fds();

    void heap_place(uint32_t pos, const heap_entry& e) {
        heap_[pos] = e;
        keys_[e.slot].pos = static_cast<uint16_t>(pos);
    }
    static bool heap_less(const heap_entry& a, const heap_entry& b) {
        return a.deadline < b.deadline || (a.deadline == b.deadline && a.seq < b.seq);
    }
    uint32_t next_seq() {
        if (seq_ == UINT32_MAX) renumber_seqs();
        return seq_++;
    }
    void renumber_seqs();
    void heap_arm(uint16_t slot, int64_t deadline);
    error_code rearm_running(uint64_t id, bool valid, int64_t ns);
    void heap_sift(uint32_t at, heap_entry e);
    void heap_settle();

    error_code iterate(int64_t max_wait_ns);
    // run() (once == false), run_once() and poll(): iterate() has this one
    // call site, so it is inlined and an iteration costs no extra call.
    error_code drive(int64_t max_wait_ns, bool once);
    int64_t select_timeout(int64_t until);
    void dispatch_io(const unsigned long* r, const unsigned long* w, const unsigned long* e, int nwords, int nready);
    void dispatch_fd(int fd, unsigned ready);
    template <bool Stall>
    bool dispatch_readers(const unsigned long* r, int nwords, int& i, unsigned long& bits, int& nready);
    void end_io() {
        uint16_t s = running_io_.current();
        if (s != io_pool_.none) running_io_.end(io_pool_, io_[s].cb);
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
    uint64_t iteration_; // 64 bits: never wraps onto a watcher's added_iter

    io_pool io_pool_;
    io_slot io_[io_pool::slots];

    timer_pool timer_pool_;
    timer_slot timers_[timer_pool::slots];
    timer_key keys_[timer_pool::slots];
    // The 4-ary heap, libev's layout: the children of entry i are 4i+1..4i+4,
    // and heap_ starts up to three entries into heap_store_ so that each group
    // of four siblings shares one cache line: a sift reads one line per level.
    heap_entry heap_store_[heap_cap + 3];
    heap_entry* heap_; // set once by the constructor; the loop never moves
    uint16_t heap_size_;
    // Arming order. Timers armed while the timer pass runs have a seq at or
    // above seq_mark_ and wait for the next pass. Before seq_ could wrap,
    // the armed timers are renumbered 0..n-1 in order, so no comparison
    // ever meets a wrapped counter (renumber_seqs()).
    uint32_t seq_;
    uint32_t seq_mark_;

    // The callback running now, so removing it defers freeing its storage.
    detail::running_slot running_io_, running_timer_;

    int64_t now_;
    bool now_valid_;
    bool dispatching_; // inside an iteration, after the wait: callbacks use now_
    bool wake_seen_;   // the wake-up fd was ready in this iteration
    bool io_changed_;  // a watcher was added, modified or removed since the scan of ready fds began
    bool fdset_words_;
    Clock clock_;
    detail::timer_slack slack_; // set_timer_slack()

    detail::signal_table<Cap::signals, Cap::children> signals_; // a loop_hook
};

// ============================================================================
// Implementation
// ============================================================================

template <class Cap, class Clock>
basic_loop<Cap, Clock>::basic_loop()
    : maxfd_(-1), active_io_(0), iteration_(0), heap_size_(0), seq_(0), seq_mark_(0), now_(0), now_valid_(false),
      dispatching_(false), wake_seen_(false), io_changed_(false), fdset_words_(detail::fdset_is_words()), signals_(*this) {
    for (int i = 0; i < 3; ++i) {
        FD_ZERO(&master_[i]);
        nwatch_[i] = 0;
    }
    memset(watched_, 0, sizeof watched_);
    for (size_t i = 0; i < FD_SETSIZE; ++i) fd_slot_[i] = no_slot;
    for (size_t i = 0; i < timer_pool::slots; ++i) keys_[i].pos = no_pos; // (seq is read only through pos)
    // Entry 1 (the first of the root's children) on a 64-byte boundary, when
    // the storage's alignment allows it.
    const uintptr_t first = reinterpret_cast<uintptr_t>(&heap_store_[1]);
    const uintptr_t skip = (64u - first % 64u) % 64u / sizeof(heap_entry);
    heap_ = heap_store_ + (skip <= 3u ? skip : 0u);
    if (wake_fd_ >= 0) {
        FD_SET(wake_fd_, &master_[rd]);
        maxfd_ = wake_fd_;
    }
}

template <class Cap, class Clock> const typename basic_loop<Cap, Clock>::fd_slot_t basic_loop<Cap, Clock>::no_slot;
template <class Cap, class Clock> const uint16_t basic_loop<Cap, Clock>::no_pos;
template <class Cap, class Clock> const size_t basic_loop<Cap, Clock>::heap_cap;

// Callbacks of live slots are destroyed with the slot arrays.
template <class Cap, class Clock>
basic_loop<Cap, Clock>::~basic_loop() {}

// ---- fd watchers ------------------------------------------------------------

template <class Cap, class Clock>
template <class F>
io_handle basic_loop<Cap, Clock>::watch(int fd, unsigned events, F&& cb) {
    // Checked before anything touches an fd_set: FD_SET beyond FD_SETSIZE
    // writes past the end of the set.
    if (fd < 0) return io_handle(errc::bad_fd);
    if (fd >= FD_SETSIZE) return io_handle(errc::fd_out_of_range);
    if (events & ~(readable | writable | priority)) return io_handle(errc::bad_argument);
    if (detail::is_null_callable(cb)) return io_handle(errc::bad_argument);
    if (fd_slot_[fd] != no_slot || fd == wake_fd_) return io_handle(errc::already_watched);
    uint64_t id = io_pool_.acquire();
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

template <class Cap, class Clock>
error_code basic_loop<Cap, Clock>::modify(io_handle h, unsigned events) {
    uint16_t slot = io_pool_.lookup(h.id());
    if (slot == io_pool_.none) return errc::stale_handle;
    if (events & ~(readable | writable | priority)) return errc::bad_argument;
    set_interest(io_[slot], events);
    return error_code();
}

template <class Cap, class Clock>
error_code basic_loop<Cap, Clock>::unwatch(io_handle h) {
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

template <class Cap, class Clock>
void basic_loop<Cap, Clock>::set_interest(io_slot& io, unsigned events) {
    static const unsigned bit[3] = {readable, writable, priority};
    io_changed_ = true; // every watch(), modify() and unwatch() passes here
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

template <class Cap, class Clock>
void basic_loop<Cap, Clock>::recompute_maxfd() {
    maxfd_ = wake_fd_;
    for (int w = detail::fd_words - 1; w >= 0; --w) {
        if (watched_[w]) {
            int fd = w * detail::word_bits + (detail::word_bits - 1 - __builtin_clzl(watched_[w]));
            if (fd > maxfd_) maxfd_ = fd;
            return;
        }
    }
}

// Runs watcher s's callback, which may remove the watcher or anything else,
// or throw.
template <class Cap, class Clock>
MICROLOOP_DETAIL_ALWAYS_INLINE void basic_loop<Cap, Clock>::call_io(uint16_t s, int fd, unsigned events) {
    io_slot& io = io_[s];
    running_io_.begin(s);
    auto done = detail::on_scope_exit([this] { end_io(); });
    io_event ev = {io_handle::from_id(io.id), fd, events};
    invoke(io.cb, source_kind::io, io.id, fd, ev);
}

// select() failed with EBADF: some watched fd was closed behind our back.
// Find each one, report it to its watcher once, and disable the watcher.
// False if no watcher owns a bad fd (the wake-up fd itself was closed).
template <class Cap, class Clock>
bool basic_loop<Cap, Clock>::disable_bad_fds() {
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

template <class Cap, class Clock>
template <class Rep1, class Period1, class Rep2, class Period2, class F>
timer_handle basic_loop<Cap, Clock>::add_timer(std::chrono::duration<Rep1, Period1> timeout,
                                               std::chrono::duration<Rep2, Period2> repeat, F&& cb) {
    int64_t after_ns, period_ns;
    if (!detail::to_ns(timeout, after_ns) || !detail::to_ns(repeat, period_ns)) return timer_handle(errc::bad_timeout);
    // A repeat finer than a nanosecond would silently make a one-shot.
    if (period_ns == 0 && repeat != std::chrono::duration<Rep2, Period2>::zero())
        return timer_handle(errc::bad_timeout);
    if (detail::is_null_callable(cb)) return timer_handle(errc::bad_argument);
    uint64_t id = timer_pool_.acquire();
    if (id == 0) return timer_handle(errc::table_full);
    uint16_t slot = static_cast<uint16_t>(id & 0xffffu);
    timer_slot& t = timers_[slot];
    t.cb.emplace(std::forward<F>(cb));
    t.period = period_ns;
    heap_arm(slot, arm_time() + after_ns);
    return timer_handle::from_id(id);
}

template <class Cap, class Clock>
template <class Rep, class Period>
error_code basic_loop<Cap, Clock>::rearm(timer_handle h, std::chrono::duration<Rep, Period> timeout) {
    int64_t ns = 0;
    const bool valid = detail::to_ns(timeout, ns); // checked after the handle: a stale one is named first
    const uint16_t slot = timer_pool_.lookup(h.id());
    if (slot == timer_pool_.none) return rearm_running(h.id(), valid, ns);
    if (!valid) return errc::bad_timeout;
    heap_arm(slot, arm_time() + ns);
    return error_code();
}

// The one-shot whose callback is running, re-armed from it (not a repeating
// timer its callback cancelled); any other handle rearm() found stale.
template <class Cap, class Clock>
error_code basic_loop<Cap, Clock>::rearm_running(uint64_t id, bool valid, int64_t ns) {
    const uint16_t slot = timer_pool_.lookup_retired(id);
    if (slot == timer_pool_.none || !running_timer_.released(slot) || timers_[slot].period != 0)
        return errc::stale_handle;
    if (!valid) return errc::bad_timeout;
    if (!timer_pool_.revive(slot)) return errc::table_full;
    running_timer_.keep();
    heap_arm(slot, arm_time() + ns);
    return error_code();
}

template <class Cap, class Clock>
error_code basic_loop<Cap, Clock>::cancel(timer_handle h) {
    uint16_t slot = timer_pool_.lookup(h.id());
    if (slot == timer_pool_.none) return errc::stale_handle;
    release_timer(slot); // its entry, a tombstone now, waits for the top or the slot's next timer

    return error_code();
}

template <class Cap, class Clock>
std::chrono::nanoseconds basic_loop<Cap, Clock>::remaining(timer_handle h) const {
    uint16_t slot = timer_pool_.lookup(h.id());
    if (slot == timer_pool_.none) return std::chrono::nanoseconds::zero();
    int64_t left = keys_[slot].deadline - clock_.now_ns();
    return std::chrono::nanoseconds(left > 0 ? left : 0);
}

// Arms `slot`'s timer at `deadline` with a fresh seq, as a new arming. An
// entry already in the heap (the timer's own, or the tombstone of the slot's
// last timer) is kept: moved up if the new key is earlier, else left as it
// is, stale, for heap_settle(). O(1) for a re-arm to a later deadline.
template <class Cap, class Clock>
MICROLOOP_DETAIL_HOT_INLINE void basic_loop<Cap, Clock>::heap_arm(uint16_t slot, int64_t deadline) {
    const uint32_t seq = next_seq(); // first: renumbering moves entries
    timer_key& k = keys_[slot];
    k.deadline = deadline;
    k.seq = seq;
    uint32_t at = k.pos;
    if (at == no_pos) {
        if (heap_size_ >= heap_cap) return; // never true: one entry per slot
        at = heap_size_++;
    } else if (deadline >= heap_[at].deadline) {
        return; // its key is earlier than the new one: the heap stays ordered
    }
    heap_entry e = {deadline, seq, slot};
    heap_sift(at, e);
}

// Moves `e` from `at` up or down to where it belongs and stores it:
// O(log n). The heap is 4-ary (as libev's): half the depth of a binary heap,
// so an entry moves through half as many levels, and siblings sit next to
// each other in memory.
template <class Cap, class Clock>
void basic_loop<Cap, Clock>::heap_sift(uint32_t at, heap_entry e) {
    const uint32_t pos = at;
    while (at > 0) {
        uint32_t parent = (at - 1u) / 4u;
        if (!heap_less(e, heap_[parent])) break;
        heap_place(at, heap_[parent]);
        at = parent;
    }
    // Moved up: smaller than what it passed, so than their children.
    // heap_size_ never exceeds the capacity; the clamp tells the optimiser so
    // (gcc -O2 warns of out-of-bounds reads with capacities below 3).
    const uint32_t size = at != pos ? 0u : heap_size_ < heap_cap ? heap_size_ : static_cast<uint32_t>(heap_cap);
    for (;;) {
        uint32_t first = 4u * at + 1u;
        if (first >= size) break;
        uint32_t best = first;
        if (size - first >= 4u) { // all four siblings: two pairs, then their winners
            const uint32_t a = heap_less(heap_[first + 1u], heap_[first]) ? first + 1u : first;
            const uint32_t b = heap_less(heap_[first + 3u], heap_[first + 2u]) ? first + 3u : first + 2u;
            best = heap_less(heap_[b], heap_[a]) ? b : a;
        } else {
            for (uint32_t c = first + 1u; c < size; ++c)
                if (heap_less(heap_[c], heap_[best])) best = c;
        }
        if (!heap_less(heap_[best], e)) break;
        heap_place(at, heap_[best]);
        at = best;
    }
    heap_place(at, e);
}

// Brings the top up to date: while its key is behind its timer's, it is
// re-keyed and sifted down, or dropped if its slot holds no live timer (a
// tombstone, or a one-shot that fired).
template <class Cap, class Clock>
void basic_loop<Cap, Clock>::heap_settle() {
    while (heap_size_ > 0) {
        const uint16_t slot = heap_[0].slot;
        timer_key& k = keys_[slot];
        const bool live = timer_pool_.live(slot);
        if (live && heap_[0].seq == k.seq) return;
        heap_entry e = {k.deadline, k.seq, slot};
        if (!live) { // the last entry takes its place
            k.pos = no_pos;
            if (--heap_size_ == 0) return;
            e = heap_[heap_size_];
        }
        heap_sift(0, e);
    }
}

// seq_ is about to wrap (after 2^32 armings): give the armed timers the
// numbers 0..n-1 in their arming order, move the mark with them, and rebuild
// the heap. O(n log n), once per 4 billion armings. Deadlines and the order
// of equal deadlines are unchanged; no comparison ever sees a wrapped value.
// Every entry gets its slot's key first (a tombstone's, later or not, is as
// good as its own: the heap is rebuilt).
template <class Cap, class Clock>
void basic_loop<Cap, Clock>::renumber_seqs() {
    const uint32_t n = heap_size_ < heap_cap ? heap_size_ : static_cast<uint32_t>(heap_cap);
    for (uint32_t i = 0; i < n; ++i) {
        const timer_key& k = keys_[heap_[i].slot];
        heap_[i].deadline = k.deadline;
        heap_[i].seq = k.seq;
    }
    // Heapsort on seq alone, in place (no allocation): a max-heap, then
    // repeatedly the largest to the end.
    struct by_seq {
        static void sift_down(heap_entry* a, uint32_t at, uint32_t size) {
            heap_entry e = a[at];
            for (;;) {
                uint32_t c = 2u * at + 1u;
                if (c >= size) break;
                if (c + 1u < size && a[c + 1u].seq > a[c].seq) ++c;
                if (a[c].seq <= e.seq) break;
                a[at] = a[c];
                at = c;
            }
            a[at] = e;
        }
    };
    for (uint32_t i = n / 2u; i-- > 0;) by_seq::sift_down(heap_, i, n);
    for (uint32_t end = n; end > 1u; --end) {
        heap_entry top = heap_[0];
        heap_[0] = heap_[end - 1u];
        heap_[end - 1u] = top;
        by_seq::sift_down(heap_, 0, end - 1u);
    }
    // Sorted by seq is not yet a heap by deadline: renumber and insert the
    // entries again, one by one (heap_sift also records every position).
    uint32_t mark = 0;
    for (uint32_t i = 0; i < n; ++i) {
        heap_entry e = heap_[i];
        if (e.seq < seq_mark_) mark = i + 1u;
        e.seq = keys_[e.slot].seq = i;
        heap_size_ = static_cast<uint16_t>(i + 1u);
        heap_sift(i, e);
    }
    seq_mark_ = mark;
    seq_ = n;
}

// ---- the iteration ----------------------------------------------------------

template <class Cap, class Clock>
error_code basic_loop<Cap, Clock>::run() {
    return drive(-1, false);
}

template <class Cap, class Clock>
error_code basic_loop<Cap, Clock>::drive(int64_t max_wait_ns, bool once) {
    error_code result = slack_.apply();
    // run(): until stop() or nothing is left; run_once(), poll(): one iteration.
    while (!result && (once || (!stop_.load(std::memory_order_relaxed) && active() > 0))) {
        result = iterate(max_wait_ns);
        if (once) break;
    }
    stop_.store(false, std::memory_order_relaxed); // left set, it would make every later wait zero
    return result;
}

// Nanoseconds select() may sleep: until the first timer or `until`, -1 for
// no limit.
template <class Cap, class Clock>
int64_t basic_loop<Cap, Clock>::select_timeout(int64_t until) {
    // Past deadlines clamp to 0: a difference of exactly -1 must not read as
    // "no limit".
    int64_t wait = until < 0 ? -1 : (until > now_ ? until - now_ : 0);
    heap_settle(); // the top's key is its timer's: never wake early
    if (heap_size_ > 0) {
        int64_t t = heap_[0].deadline > now_ ? heap_[0].deadline - now_ : 0;
        if (wait < 0 || t < wait) wait = t;
    }
    return wait;
}

template <class Cap, class Clock>
MICROLOOP_DETAIL_ALWAYS_INLINE error_code basic_loop<Cap, Clock>::iterate(int64_t max_wait_ns) {
    if (forked_ | broken_) return forked_ ? error_code(errc::forked) : error_code(errc::system, wake_errno_);
    ++iteration_;
    seq_mark_ = seq_;
    // The clock is read only when something depends on it: with no timer and
    // no time limit (run() with fds only, or poll()'s zero wait) the loop pays
    // nothing for time, and timers armed in callbacks read it themselves.
    const bool timed = timer_pool_.used() > 0 || max_wait_ns > 0; // live timers are armed
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
        // holds the wake-up fd; the others are usually empty and passed as NULL.
        const size_t bytes = (static_cast<size_t>(nfds) + detail::word_bits - 1) / detail::word_bits *
                             sizeof(unsigned long);
        ptr[rd] = &set[rd];
        ptr[wr] = nwatch_[wr] ? &set[wr] : nullptr;
        ptr[ex] = nwatch_[ex] ? &set[ex] : nullptr;
        if (fdset_words_) {
            memcpy(ptr[rd], &master_[rd], bytes);
            if (ptr[wr]) memcpy(ptr[wr], &master_[wr], bytes);
            if (ptr[ex]) memcpy(ptr[ex], &master_[ex], bytes);
        } else {
            for (int s = 0; s < 3; ++s)
                if (ptr[s]) *ptr[s] = master_[s];
        }
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
            tv.tv_sec = detail::narrow<time_t>(us / 1000000 > max_s ? max_s : us / 1000000);
            tv.tv_usec = detail::narrow<suseconds_t>(us % 1000000);
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

    // From here on callbacks run: timers they arm count from now_.
    const bool outer = dispatching_;
    dispatching_ = true;
    auto done = detail::on_scope_exit([this, outer] {
        dispatching_ = outer;
        if (outer) io_changed_ = true; // a nested iteration ran callbacks: the outer scan takes the careful path
    });
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
                if (!detail::test_bit(watched_, fd) && fd != wake_fd_) continue;
                for (int s = 0; s < 3; ++s)
                    if (ptr[s] && FD_ISSET(fd, ptr[s])) detail::set_bit(words[s], fd);
            }
            for (int s = 0; s < 3; ++s) sets[s] = ptr[s] ? words[s] : nullptr;
        }
        dispatch_io(sets[rd], sets[wr], sets[ex], nwords, n); // one call site: inlined
        if (forked_ | broken_) return forked_ ? error_code(errc::forked) : error_code(errc::system, wake_errno_);
    }
    if (heap_size_ > 0) dispatch_timers();
    return error_code();
}

// Ready fds are found a word at a time. nready is select()'s count of set
// bits: the scan stops when it is used up. The wake-up fd is drained after the
// watchers ran, as before. Inlined into its one caller, iterate(): with one
// ready fd per iteration, the call would cost more than the scan.
//
// Two paths, chosen once per iteration. The lean one serves the common case,
// only readers and no stall detection: until a callback changes the fd
// watchers, every ready bit is a watcher that existed at select() time with
// its read interest (the masters held exactly those), so it is called without
// looking anything else up. The first watch(), modify() or unwatch() (or a
// nested iteration) sets io_changed_, and the rest of the scan continues on
// the careful path, which looks every fd up again (dispatch_fd).
template <class Cap, class Clock>
MICROLOOP_DETAIL_ALWAYS_INLINE void basic_loop<Cap, Clock>::dispatch_io(const unsigned long* r, const unsigned long* w,
                                                                         const unsigned long* e, int nwords,
                                                                         int nready) {
    int i = 0;
    unsigned long bits = 0; // the careful path resumes with what is left of word i
    bool resume = false;
    if (!w && !e) {
        if (stall_ns_ == 0 ? dispatch_readers<false>(r, nwords, i, bits, nready)
                           : dispatch_readers<true>(r, nwords, i, bits, nready))
            i = nwords; // done
        else
            resume = true;
    }
    // An unused set reads as empty. Not const: zeros in .bss cost no text,
    // in .rodata they would.
    static unsigned long none[detail::fd_words] = {};
    if (!w) w = none;
    if (!e) e = none;
    for (; i < nwords && nready > 0; ++i) {
        for (bits = resume ? bits : (r[i] | w[i] | e[i]), resume = false; bits; bits &= bits - 1) {
            int bit = __builtin_ctzl(bits);
            unsigned long rb = (r[i] >> bit) & 1ul, wb = (w[i] >> bit) & 1ul, eb = (e[i] >> bit) & 1ul;
            nready -= static_cast<int>(rb + wb + eb);
            dispatch_fd(i * detail::word_bits + bit,
                        (rb ? readable : 0u) | (wb ? writable : 0u) | (eb ? priority : 0u));
        }
    }
    if (wake_seen_) {
        wake_seen_ = false;
        drain_wake();
    }
}

// The lean path: true when the scan is complete; false when a callback
// changed the fd watchers, with i, bits and nready where the careful path
// takes over (the fd that was running is done). With stall detection on
// (Stall), the clock is read once per callback, after it: a callback's time
// runs from the previous reading (the end of the previous callback, or the
// start of the scan), which adds only the loop's own few instructions
// between two callbacks to it.
template <class Cap, class Clock>
template <bool Stall>
MICROLOOP_DETAIL_ALWAYS_INLINE bool basic_loop<Cap, Clock>::dispatch_readers(const unsigned long* r, int nwords,
                                                                              int& i, unsigned long& bits,
                                                                              int& nready) {
    io_changed_ = false;
    int64_t t0 = Stall ? detail::monotonic_ns() : 0;
    // Ends the running callback's bookkeeping once, when the scan ends or a
    // callback throws: while nothing changes, no callback has removed its
    // own watcher and there is nothing to free.
    auto done = detail::on_scope_exit([this] { end_io(); });
    for (; i < nwords && nready > 0; ++i) {
        for (bits = r[i]; bits;) {
            const int fd = i * detail::word_bits + __builtin_ctzl(bits);
            bits &= bits - 1;
            --nready;
            const fd_slot_t s = fd_slot_[fd];
            if (s == no_slot) { // the wake-up fd: drained after the watchers
                if (fd == wake_fd_) wake_seen_ = true;
                continue;
            }
            io_slot& io = io_[s];
            running_io_.begin(s);
            io_event ev = {io_handle::from_id(io.id), fd, readable};
            io.cb(ev);
            if (Stall) {
                const int64_t t1 = detail::monotonic_ns();
                t0 = t1 - t0 >= stall_ns_ ? report_stall(source_kind::io, io.id, fd, t1 - t0) : t1;
            }
            if (io_changed_) return false;
        }
    }
    return true;
}

// One ready fd, looked up in fd_slot_ at the moment it is dispatched, so a
// watcher removed by an earlier callback of this iteration is never called.
template <class Cap, class Clock>
MICROLOOP_DETAIL_ALWAYS_INLINE void basic_loop<Cap, Clock>::dispatch_fd(int fd, unsigned ready) {
    fd_slot_t s = fd_slot_[fd];
    if (s == no_slot) { // the wake-up fd (drained after the watchers), or unwatched meanwhile
        if (fd == wake_fd_) wake_seen_ = true;
        return;
    }
    io_slot& io = io_[s];
    unsigned events = ready & io.interest;
    if (events == 0 || io.added_iter == iteration_) return;
    call_io(s, fd, events);
}

template <class Cap, class Clock>
void basic_loop<Cap, Clock>::dispatch_timers() {
    for (;;) {
        heap_settle();
        // Timers armed during this pass (seq_mark_ on) wait for the next.
        if (heap_size_ == 0 || heap_[0].deadline > now_ || heap_[0].seq >= seq_mark_) break;
        const heap_entry top = heap_[0];
        timer_slot& t = timers_[top.slot];
        uint32_t overruns = 0;
        if (t.period > 0) {
            // Next deadline = this one + whole periods; periods that passed
            // during a stall are skipped and counted, not fired in a burst.
            int64_t missed = (now_ - top.deadline) / t.period;
            overruns = missed > 0xffffffffll ? 0xffffffffu : static_cast<uint32_t>(missed);
            const uint32_t seq = next_seq();
            keys_[top.slot].deadline = top.deadline + (missed + 1) * t.period;
            keys_[top.slot].seq = seq;
        }
        // Its entry, stale now (a one-shot's: dropped, its slot freed below),
        // stays at the top until the next heap_settle(): a callback that
        // re-arms the timer reuses it.
        running_timer_.begin(top.slot);
        // A one-shot is gone as it fires: its place is free for a timer its
        // callback arms, and its slot is recycled after the callback (also if
        // it throws), unless the callback re-armed it.
        if (t.period == 0) release_timer(top.slot);
        auto done = detail::on_scope_exit([this, &t] { running_timer_.end(timer_pool_, t.cb); });
        timer_event ev = {timer_handle::from_id(timer_pool_.id_of(top.slot)), overruns};
        invoke(t.cb, source_kind::timer, ev.handle.id(), -1, ev);
    }
}

// ---- fork ---------------------------------------------------------------------

template <class Cap, class Clock>
error_code basic_loop<Cap, Clock>::after_fork() {
    if (getpid() == owner_pid_) return errc::bad_argument;
    if (wake_fd_ >= 0) FD_CLR(wake_fd_, &master_[rd]);
    error_code e = renew_wake_fd();
    if (wake_fd_ >= 0) FD_SET(wake_fd_, &master_[rd]);
    recompute_maxfd();
    if (e) return e;
    for (loop_hook* h = hooks_; h;) {
        loop_hook* next = h->next; // a hook may detach itself
        if (h->on_fork) h->on_fork(h);
        h = next;
    }
    signals_.after_fork(); // the first hook attached: the last one called
    return error_code();
}


template <size_t Io = 64, size_t Timers = 64, size_t Signals = 8, size_t Children = 8>
using loop = basic_loop<capacity<Io, Timers, Signals, Children> >;

} // namespace microloop

#endif // MICROLOOP_LOOP_HPP
