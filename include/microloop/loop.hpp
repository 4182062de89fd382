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
#include "fd_events.hpp"
#include "handle.hpp"
#include "hooks.hpp"
#include "loop_base.hpp"
#include "backend/epoll.hpp"
#include "backend/select.hpp"
#include "clock.hpp"
#include "signal.hpp"
#include "slack.hpp"
#include "timers.hpp"

namespace microloop {

// Compile-time capacities: how many fd watchers, timers, signal watchers,
// child watchers and iteration hooks (on_prepare, on_check, on_idle) one
// loop can hold. Each slot costs memory (see README). Each is at most 65,533
// (one slot per table is the spare; more is a static_assert).
template <size_t Io = 64, size_t Timers = 64, size_t Signals = 8, size_t Children = 8, size_t Hooks = 4>
struct capacity {
    static const size_t io = Io, timers = Timers, signals = Signals, children = Children, hooks = Hooks;
};

// The loop. Every table lives inside the object, sized by Cap (a capacity<>);
// nothing is allocated after construction. One loop per thread: only wake()
// and stop() may be called from other threads (and wake() from a signal
// handler). Timers run on Clock (monotonic_clock, or manual_clock in tests).
// Fds are waited for by Backend: use_select, or use_epoll (no fd ceiling);
// the default is MICROLOOP_BACKEND's (config.hpp).
template <class Cap, class Clock = monotonic_clock, class Backend = MICROLOOP_DETAIL_BACKEND>
class basic_loop : public loop_base {
public:
    typedef Backend backend_type;
    basic_loop();
    ~basic_loop();

    // ---- fd watchers ----------------------------------------------------
    // Watch fd for `events` (readable | writable | priority); cb(io_event).
    // unwatch() before closing fd (see io_error).
    template <class F>
    io_handle watch(int fd, unsigned events, F&& cb);
    // Change what is watched; 0 pauses the watcher without removing it.
    error_code modify(io_handle h, unsigned events);
    error_code unwatch(io_handle h);
    // The watcher of `fd`, for glue that knows only fds (a hosted library's
    // socket callbacks); an invalid handle if there is none (errc::not_watched,
    // or bad_fd / fd_out_of_range for an fd no watcher can have). One
    // watcher per fd: a second watch() of it is errc::already_watched.
    io_handle watcher(int fd) const;

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
    // period). A one-shot timer is gone when it fires (its place free for a
    // new timer), but inside its own callback (also around a poll() nested
    // in it) its handle acts for every call: rearm() brings it back into its
    // place (errc::table_full if the callback gave the place to another
    // timer), cancel() returns ok and makes sure it does not come back,
    // remaining() is zero unless it was re-armed. Once that callback has
    // returned without re-arming it, the handle is stale for everything.
    template <class Rep, class Period>
    error_code rearm(timer_handle h, std::chrono::duration<Rep, Period> timeout);
    error_code cancel(timer_handle h) { return timers_.cancel(h.id()); }
    // Absolute deadlines, on clock()'s scale (the scale of now() and
    // for_each_timer(); for monotonic_clock, CLOCK_MONOTONIC): fire once at
    // `deadline`, or re-schedule to it. A deadline already past fires at the
    // next timer pass; errc::bad_timeout if negative or beyond 100 years.
    template <class Rep, class Period, class F>
    timer_handle at(std::chrono::duration<Rep, Period> deadline, F&& cb);
    template <class Rep, class Period>
    error_code rearm_at(timer_handle h, std::chrono::duration<Rep, Period> deadline) {
        int64_t ns = 0;
        const bool valid = detail::to_ns(deadline, ns);
        return timers_.rearm(h.id(), valid, [ns] { return ns; });
    }
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
    // Whether the last run(), run_once() or poll() ended on a stop(), which
    // it used up: for a driver that calls run_once() in a loop of its own.
    bool stopped() const { return stopped_; }

    // ---- iteration hooks ------------------------------------------------------
    // For hosting a library that wants to be driven by the application's loop
    // (GLib's prepare/check, sd-bus, a library's "sync the interest" call).
    // Each iteration runs, in this order: the idle hooks, the prepare hooks,
    // the wait, the fd, signal, child, AIO and mailbox callbacks, the timers,
    // the check hooks. What a prepare hook changes (watchers, timers) counts
    // for that very wait. While an idle hook exists the wait does not block.
    // Idle hooks keep run() going, as a pending source does; prepare and
    // check hooks do not (they add to iterations, they are not work).
    // Hooks run only in the outermost iteration, not in one nested in a
    // callback or a hook; a hook added during an iteration first runs in
    // the next one. Removable from anywhere, their own callback included.
    // cb(hook_event); errc::table_full beyond Cap::hooks.
    template <class F>
    hook_handle on_prepare(F&& cb) { return add_hook(detail::hook_prepare, std::forward<F>(cb)); }
    template <class F>
    hook_handle on_check(F&& cb) { return add_hook(detail::hook_check, std::forward<F>(cb)); }
    template <class F>
    hook_handle on_idle(F&& cb) { return add_hook(detail::hook_idle, std::forward<F>(cb)); }
    error_code unwatch(hook_handle h) { return hooks_table_.remove(h); }

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
    size_t active() const { return active_io_ + timers_.used() + hooks_active() + hooks_table_.idle(); }
    struct loop_stats {
        table_stats io, timers, signals, children, hooks;
    };
    // How full each table is and was at most: size capacities from a real run.
    loop_stats stats() const {
        loop_stats s = {io_pool_.stats(), timers_.stats(), signals_.signal_stats(), signals_.child_stats(),
                        hooks_table_.stats()};
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
        timers_.for_each([&f](timer_handle h, int64_t deadline, int64_t period) {
            f(h, std::chrono::nanoseconds(deadline), std::chrono::nanoseconds(period));
        });
    }

private:
    friend struct detail::test_access;
    // One spare slot per table: a callback that removes its own source can
    // add a new one at once (see slot_pool).
    typedef detail::slot_pool<Cap::io, 1> io_pool;
    typedef typename Backend::template of<io_pool::slots>::type backend;
    template <size_t>
    friend class detail::select_backend; // calls the core's io_ready() and friends, inlined
    template <size_t>
    friend class detail::epoll_backend;

    struct io_slot {
        io_callback cb;
        int fd;
        unsigned interest;
        uint64_t added_iter; // not dispatched in the iteration it was added in
        uint64_t id;         // its handle's id, fixed while the watcher lives
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
    void release_io(uint16_t slot) { running_io_.release(io_pool_, io_[slot].cb, slot); }
    void call_io(uint16_t s, int fd, unsigned events);
    template <class F>
    hook_handle add_hook(detail::hook_kind kind, F&& cb) {
        hook_pass_ = &basic_loop::hook_pass; // the first hook: from now on iterations run them
        return hooks_table_.add(kind, std::forward<F>(cb), iteration_);
    }
    static bool hook_pass(basic_loop& self, bool before_wait);

    error_code iterate(int64_t max_wait_ns);
    // run() (once == false), run_once() and poll(): iterate() has this one
    // call site, so it is inlined and an iteration costs no extra call.
    error_code drive(int64_t max_wait_ns, bool once);
    int64_t select_timeout(int64_t until);
    // What the backend calls back with ready fds (see backend/select.hpp).
    bool stall_on() const { return stall_ns_ != 0; }
    bool io_changed() const { return io_changed_; }
    typedef detail::running_frame reader_frame;
    template <bool Stall>
    int64_t begin_readers(reader_frame& f) {
        io_changed_ = false;
        running_io_.begin(f, io_pool_.none);
        return Stall ? detail::monotonic_ns() : 0;
    }
    void end_readers(reader_frame& f) { end_io(f); }
    template <bool Stall>
    void reader_ready(reader_frame& f, uint16_t s, int fd, int64_t& t0);
    void io_ready(uint16_t s, int fd, unsigned ready);
    bool io_closed(uint16_t s, int fd);
    bool io_lost(uint16_t s, int fd);
    // The frame's slot is a live or retired watcher's (0xffff: none ran).
    void end_io(detail::running_frame& f) { running_io_.end(f, io_pool_, io_[f.slot < io_pool::slots ? f.slot : 0].cb); }

    backend backend_; // the fd -> watcher table and the wait
    size_t active_io_;
    // The iteration whose callbacks run (back to the outer one when a nested
    // iteration ends), and how many began: 64 bits, never wraps.
    uint64_t iteration_, iterations_;

    io_pool io_pool_;
    io_slot io_[io_pool::slots];

    detail::timer_table<Cap::timers> timers_;

    // The callbacks running now (nested in each other by poll() calls from
    // callbacks), so removing one defers freeing its storage.
    detail::running_slot running_io_;

    detail::hook_table<Cap::hooks> hooks_table_;
    bool (*hook_pass_)(basic_loop&, bool); // null until the first hook: see hook_pass()
    bool stopped_; // the last drive() ended on a stop()

    int64_t now_;
    bool now_valid_;
    bool dispatching_; // inside an iteration, after the wait: callbacks use now_
    bool io_changed_;  // a watcher was added, modified or removed since the scan of ready fds began
    Clock clock_;
    detail::timer_slack slack_; // set_timer_slack()

    detail::signal_table<Cap::signals, Cap::children> signals_; // a loop_hook
};

// ============================================================================
// Implementation
// ============================================================================

template <class Cap, class Clock, class Backend>
basic_loop<Cap, Clock, Backend>::basic_loop()
    : backend_(wake_fd_), active_io_(0), iteration_(0), iterations_(0), hook_pass_(nullptr), stopped_(false), now_(0),
      now_valid_(false), dispatching_(false),
      io_changed_(false), signals_(*this) {}

// Callbacks of live slots are destroyed with the slot arrays.
template <class Cap, class Clock, class Backend>
basic_loop<Cap, Clock, Backend>::~basic_loop() {}

// ---- fd watchers ------------------------------------------------------------

template <class Cap, class Clock, class Backend>
template <class F>
io_handle basic_loop<Cap, Clock, Backend>::watch(int fd, unsigned events, F&& cb) {
    if (fd < 0) return io_handle(errc::bad_fd);
    if (!backend::fits(fd)) return io_handle(errc::fd_out_of_range); // before anything touches the backend
    if (events & ~(readable | writable | priority)) return io_handle(errc::bad_argument);
    if (detail::is_null_callable(cb)) return io_handle(errc::bad_argument);
    if (backend_.watched(fd)) return io_handle(errc::already_watched);
    uint64_t id = io_pool_.acquire();
    if (id == 0) return io_handle(errc::table_full);

    uint16_t slot = detail::slot_of(id);
    io_slot& io = io_[slot];
    io.cb.emplace(std::forward<F>(cb));
    io.fd = fd;
    io.interest = 0;
    io.added_iter = iteration_;
    io.id = id;
    backend_.add(fd, slot);
    set_interest(io, events);
    return io_handle::from_id(id);
}

template <class Cap, class Clock, class Backend>
error_code basic_loop<Cap, Clock, Backend>::modify(io_handle h, unsigned events) {
    uint16_t slot = io_pool_.lookup(h.id());
    if (slot == io_pool_.none) return errc::stale_handle;
    if (events & ~(readable | writable | priority)) return errc::bad_argument;
    set_interest(io_[slot], events);
    return error_code();
}

template <class Cap, class Clock, class Backend>
error_code basic_loop<Cap, Clock, Backend>::unwatch(io_handle h) {
    uint16_t slot = io_pool_.lookup(h.id());
    if (slot == io_pool_.none) return errc::stale_handle;
    io_slot& io = io_[slot];
    set_interest(io, 0);
    backend_.remove(io.fd);
    release_io(slot);
    return error_code();
}

template <class Cap, class Clock, class Backend>
io_handle basic_loop<Cap, Clock, Backend>::watcher(int fd) const {
    if (fd < 0) return io_handle(errc::bad_fd);
    if (!backend::fits(fd)) return io_handle(errc::fd_out_of_range);
    const uint16_t s = backend_.slot(fd);
    if (s == io_pool_.none) return io_handle(errc::not_watched);
    return io_handle::from_id(io_[s].id);
}

template <class Cap, class Clock, class Backend>
void basic_loop<Cap, Clock, Backend>::set_interest(io_slot& io, unsigned events) {
    io_changed_ = true; // every watch(), modify() and unwatch() passes here
    if ((io.interest != 0) != (events != 0)) active_io_ += events ? 1 : static_cast<size_t>(-1);
    backend_.set(io.fd, io.interest, events);
    io.interest = events;
}

// Runs watcher s's callback, which may remove the watcher or anything else,
// or throw.
template <class Cap, class Clock, class Backend>
MICROLOOP_DETAIL_ALWAYS_INLINE void basic_loop<Cap, Clock, Backend>::call_io(uint16_t s, int fd, unsigned events) {
    io_slot& io = io_[s];
    detail::running_frame f;
    running_io_.begin(f, s);
    auto done = detail::on_scope_exit([this, &f] { end_io(f); });
    io_event ev = {io_handle::from_id(io.id), fd, events};
    invoke(io.cb, source_kind::io, io.id, fd, ev);
}

// The backend found some watched fd closed behind our back (select()'s
// EBADF): if `fd` is one, report it to its watcher once and disable the
// watcher. True if it was.
template <class Cap, class Clock, class Backend>
bool basic_loop<Cap, Clock, Backend>::io_closed(uint16_t s, int fd) {
    io_slot& io = io_[s];
    if (io.interest == 0) return false;
    if (fcntl(fd, F_GETFD) != -1 || errno != EBADF) return false;
    set_interest(io, 0);
    call_io(s, fd, io_error);
    return true;
}

// The backend lost `fd`'s registration (epoll: closed behind our back):
// report it to its watcher once and disable the watcher, as io_closed()
// does. False if the watcher was added in this iteration: it is reported in
// the next one.
template <class Cap, class Clock, class Backend>
bool basic_loop<Cap, Clock, Backend>::io_lost(uint16_t s, int fd) {
    io_slot& io = io_[s];
    if (io.interest == 0) return true;
    if (io.added_iter == iteration_) return false;
    set_interest(io, 0);
    call_io(s, fd, io_error);
    return true;
}

// ---- timers -----------------------------------------------------------------

template <class Cap, class Clock, class Backend>
template <class Rep1, class Period1, class Rep2, class Period2, class F>
timer_handle basic_loop<Cap, Clock, Backend>::add_timer(std::chrono::duration<Rep1, Period1> timeout,
                                               std::chrono::duration<Rep2, Period2> repeat, F&& cb) {
    int64_t after_ns, period_ns;
    if (!detail::to_ns(timeout, after_ns) || !detail::to_ns(repeat, period_ns)) return timer_handle(errc::bad_timeout);
    // A repeat finer than a nanosecond would silently make a one-shot.
    if (period_ns == 0 && repeat != std::chrono::duration<Rep2, Period2>::zero())
        return timer_handle(errc::bad_timeout);
    if (detail::is_null_callable(cb)) return timer_handle(errc::bad_argument);
    return timers_.start([this, after_ns] { return arm_time() + after_ns; }, period_ns, std::forward<F>(cb));
}

template <class Cap, class Clock, class Backend>
template <class Rep, class Period, class F>
timer_handle basic_loop<Cap, Clock, Backend>::at(std::chrono::duration<Rep, Period> deadline, F&& cb) {
    int64_t at_ns;
    if (!detail::to_ns(deadline, at_ns)) return timer_handle(errc::bad_timeout);
    if (detail::is_null_callable(cb)) return timer_handle(errc::bad_argument);
    return timers_.start([at_ns] { return at_ns; }, 0, std::forward<F>(cb));
}

template <class Cap, class Clock, class Backend>
template <class Rep, class Period>
error_code basic_loop<Cap, Clock, Backend>::rearm(timer_handle h, std::chrono::duration<Rep, Period> timeout) {
    int64_t ns = 0;
    const bool valid = detail::to_ns(timeout, ns);
    return timers_.rearm(h.id(), valid, [this, ns] { return arm_time() + ns; });
}

template <class Cap, class Clock, class Backend>
std::chrono::nanoseconds basic_loop<Cap, Clock, Backend>::remaining(timer_handle h) const {
    int64_t at;
    if (!timers_.deadline(h.id(), at)) return std::chrono::nanoseconds::zero();
    int64_t left = at - clock_.now_ns();
    return std::chrono::nanoseconds(left > 0 ? left : 0);
}

// ---- iteration hooks ----------------------------------------------------------

// Before the wait: the idle and prepare hooks, in the outermost iteration
// only (not in one nested in a callback or a hook); true if the wait must not
// block: an idle hook was there, or the hooks removed the last active source
// (run() then returns instead of waiting for nothing). After the dispatch:
// the check hooks, unless this iteration is nested in a hook. Reached through
// hook_pass_, set by the first on_prepare/on_check/on_idle: a program that
// adds no hook links none of this.
template <class Cap, class Clock, class Backend>
bool basic_loop<Cap, Clock, Backend>::hook_pass(basic_loop& self, bool before_wait) {
    const uint64_t iteration = self.iteration_;
    detail::hook_table<Cap::hooks>& hooks = self.hooks_table_;
    if (hooks.running()) return false;
    if (!before_wait) {
        hooks.run(detail::hook_check, iteration, self);
        return false;
    }
    if (self.dispatching_) return false;
    const bool idle = hooks.idle() != 0;
    // What the hooks watch now counts for this iteration's wait: they run as
    // if before it began (a watcher added in iteration n is dispatched from
    // n + 1 on).
    --self.iteration_;
    auto restore = detail::on_scope_exit([&self, iteration] { self.iteration_ = iteration; });
    hooks.run(detail::hook_idle, iteration, self);
    hooks.run(detail::hook_prepare, iteration, self);
    return idle || hooks.idle() != 0 || self.active() == 0;
}

// ---- the iteration ----------------------------------------------------------

template <class Cap, class Clock, class Backend>
error_code basic_loop<Cap, Clock, Backend>::run() {
    return drive(-1, false);
}

template <class Cap, class Clock, class Backend>
error_code basic_loop<Cap, Clock, Backend>::drive(int64_t max_wait_ns, bool once) {
    error_code result = slack_.apply();
    // run(): until stop() or nothing is left; run_once(), poll(): one iteration.
    while (!result && (once || (!stop_.load(std::memory_order_relaxed) && active() > 0))) {
        result = iterate(max_wait_ns);
        if (once) break;
    }
    stopped_ = use_up_stop(); // and the wake-up stop() wrote for it
    return result;
}

// Nanoseconds select() may sleep: until the first timer or `until`, -1 for
// no limit.
template <class Cap, class Clock, class Backend>
int64_t basic_loop<Cap, Clock, Backend>::select_timeout(int64_t until) {
    // Past deadlines clamp to 0: a difference of exactly -1 must not read as
    // "no limit".
    int64_t wait = until < 0 ? -1 : (until > now_ ? until - now_ : 0);
    int64_t first;
    if (timers_.first(first)) {
        int64_t t = first > now_ ? first - now_ : 0;
        if (wait < 0 || t < wait) wait = t;
    }
    return wait;
}

template <class Cap, class Clock, class Backend>
MICROLOOP_DETAIL_ALWAYS_INLINE error_code basic_loop<Cap, Clock, Backend>::iterate(int64_t max_wait_ns) {
    if (faulted()) return fault();
    // A nested iteration (poll() from a callback) keeps the outer one's
    // records on this stack and puts them back when it ends: its number (what
    // watchers added meanwhile are compared with) and its time.
    // (Saved only when nested: the outermost iteration pays one test.)
    const bool outer = dispatching_;
    struct outer_state {
        uint64_t iteration;
        int64_t now;
        bool now_valid;
    } saved;
    if (outer) saved = outer_state{iteration_, now_, now_valid_};
    auto done = detail::on_scope_exit([this, outer, &saved] {
        dispatching_ = outer;
        if (outer) {
            iteration_ = saved.iteration;
            now_ = saved.now;
            now_valid_ = saved.now_valid;
            io_changed_ = true; // a nested iteration ran callbacks: the outer scan takes the careful path
        }
    });
    iteration_ = ++iterations_;
    // Iteration hooks (none: one test): before the timer pass begins, so
    // that timers a prepare hook arms count for this iteration.
    if (hook_pass_ && hook_pass_(*this, true)) max_wait_ns = 0;
    timers_.begin_pass();
    // The clock is read only when something depends on it: with no timer and
    // no time limit (run() with fds only, or poll()'s zero wait) the loop pays
    // nothing for time, and timers armed in callbacks read it themselves.
    const bool timed = timers_.used() > 0 || max_wait_ns > 0; // live timers are armed
    int64_t until = -1;
    if (timed) {
        refresh_now();
        if (max_wait_ns >= 0) until = now_ + max_wait_ns;
    } else {
        now_valid_ = false;
    }

    typename backend::fd_sets sets;
    typename backend::ready_sets ready;
    int n;
    for (;;) {
        n = backend_.wait(sets, ready, [&]() -> int64_t {
            const int64_t wait = timed ? select_timeout(until) : max_wait_ns; // untimed: -1 (forever) or 0
            return stop_.load(std::memory_order_relaxed) ? 0 : wait;
        });
        if (timed) refresh_now();
        if (n >= 0) break;
        if (errno == EINTR) continue; // retried with what is left of the timeout
        if (errno == EBADF) {
            // Retrying would fail the same way: with nothing to disable,
            // report it instead of spinning.
            if (!backend_.report_closed(*this)) return error_code(errc::system, EBADF);
            n = 0;
            break;
        }
        return error_code(errc::system, errno);
    }

    // From here on callbacks run: timers they arm count from now_.
    dispatching_ = true;
    if (n > 0) {
        // The wake-up fd is drained after the watchers ran.
        if (backend_.dispatch(*this, ready, n)) drain_wake(); // one call site: inlined
        if (faulted()) return fault();
    }
    if (!timers_.empty()) timers_.fire_due(now_, *this);
    // The check hooks, in the outermost iteration (one nested in a callback
    // has outer set; one nested in a hook: hook_pass() sees it).
    if (hook_pass_ && !outer) hook_pass_(*this, false);
    return error_code();
}

// A ready reader on the backend's lean scan (only readers, nothing changed
// since the wait: see backend/select.hpp): called without looking anything
// else up. With stall detection on (Stall), the clock is read once per
// callback, after it: a callback's time runs from the previous reading (the
// end of the previous callback, or the start of the scan), which adds only
// the loop's own few instructions between two callbacks to it.
template <class Cap, class Clock, class Backend>
template <bool Stall>
MICROLOOP_DETAIL_ALWAYS_INLINE void basic_loop<Cap, Clock, Backend>::reader_ready(detail::running_frame& f, uint16_t s, int fd, int64_t& t0) {
    io_slot& io = io_[s];
    f.slot = s;
    io_event ev = {io_handle::from_id(io.id), fd, readable};
    io.cb(ev);
    if (Stall) {
        const int64_t t1 = detail::monotonic_ns();
        t0 = t1 - t0 >= stall_ns_ ? report_stall(source_kind::io, io.id, fd, t1 - t0) : t1;
    }
}

// A ready fd and its watcher, slot s, as the backend looked it up at the
// moment it is dispatched, so a watcher removed by an earlier callback of
// this iteration is never called.
template <class Cap, class Clock, class Backend>
MICROLOOP_DETAIL_ALWAYS_INLINE void basic_loop<Cap, Clock, Backend>::io_ready(uint16_t s, int fd, unsigned ready) {
    io_slot& io = io_[s];
    unsigned events = ready & io.interest;
    if (events == 0 || io.added_iter >= iteration_) return; // added in this iteration or one nested in it
    call_io(s, fd, events);
}

// ---- fork ---------------------------------------------------------------------

template <class Cap, class Clock, class Backend>
error_code basic_loop<Cap, Clock, Backend>::after_fork() {
    if (getpid() == owner_pid_) return errc::bad_argument;
    const int old = wake_fd_;
    error_code e = renew_wake_fd();
    backend_.replace_wake_fd(old, wake_fd_);
    if (e) return e;
    for (loop_hook* h = hooks_; h;) {
        loop_hook* next = h->next; // a hook may detach itself
        if (h->on_fork) h->on_fork(h);
        h = next;
    }
    signals_.after_fork(); // the first hook attached: the last one called
    return error_code();
}

template <size_t Io = 64, size_t Timers = 64, size_t Signals = 8, size_t Children = 8, size_t Hooks = 4>
using loop = basic_loop<capacity<Io, Timers, Signals, Children, Hooks> >;

// A loop on epoll whatever MICROLOOP_BACKEND says: the same API, no fd
// ceiling (see README, Choosing a backend).
template <size_t Io = 64, size_t Timers = 64, size_t Signals = 8, size_t Children = 8, size_t Hooks = 4>
using epoll_loop = basic_loop<capacity<Io, Timers, Signals, Children, Hooks>, monotonic_clock, use_epoll>;

} // namespace microloop

#endif // MICROLOOP_LOOP_HPP
