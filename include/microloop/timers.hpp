// SPDX-License-Identifier: MIT
// microloop/timers.hpp - a loop's timers: the fixed table of timer slots
// (callback, period), the heap that orders their deadlines
// (timer_heap.hpp), and what arming, re-arming, cancelling and firing do to
// both. The loop (loop.hpp) validates the arguments, owns the clock and says
// when "now" is; this table does the rest.
#ifndef MICROLOOP_TIMERS_HPP
#define MICROLOOP_TIMERS_HPP

#include <stddef.h>
#include <stdint.h>

#include <utility>

#include "callback.hpp"
#include "config.hpp"
#include "error.hpp"
#include "handle.hpp"
#include "loop_base.hpp"
#include "timer_heap.hpp"

namespace microloop {

struct timer_event {
    timer_handle handle;
    uint32_t overruns; // repeating timers: whole periods skipped after a stall
};

typedef detail::inplace_callback<void(timer_event)> timer_callback;

namespace detail {

// N timers, and one spare slot: a callback that removes its own timer can
// add a new one at once (see slot_pool). Deadlines are nanoseconds on the
// loop's clock; `when` arguments are callables giving one, called only for
// a timer that is made or re-armed (a refused call reads no clock).
template <size_t N>
class timer_table {
public:
    typedef slot_pool<N, 1> pool_type;
    static const size_t slots = pool_type::slots;

    template <class When, class F>
    MICROLOOP_DETAIL_ALWAYS_INLINE timer_handle start(When when, int64_t period, F&& cb) {
        const uint64_t id = pool_.acquire();
        if (id == 0) return timer_handle(errc::table_full);
        const uint16_t slot = slot_of(id);
        entry& t = timers_[slot];
        t.cb.emplace(std::forward<F>(cb));
        t.period = period; // 0: one-shot
        heap_.arm(slot, when());
        return timer_handle::from_id(id);
    }
    // A new deadline (a repeating timer keeps its period); `valid`: the
    // caller's argument was, checked after the handle (a stale one is named
    // first).
    template <class When>
    MICROLOOP_DETAIL_ALWAYS_INLINE error_code rearm(uint64_t id, bool valid, When when) {
        const uint16_t slot = pool_.lookup(id);
        if (slot == pool_.none) return rearm_fired(id, valid, when);
        if (!valid) return errc::bad_timeout;
        heap_.arm(slot, when());
        return error_code();
    }
    error_code cancel(uint64_t id) {
        uint16_t slot = pool_.lookup(id);
        if (slot == pool_.none) return fired_running(id, slot) ? error_code() : error_code(errc::stale_handle);
        release(slot); // its entry, a tombstone now, waits for the top or the slot's next timer
        return error_code();
    }
    // The deadline of a live timer, or false.
    bool deadline(uint64_t id, int64_t& at) const {
        const uint16_t slot = pool_.lookup(id);
        if (slot == pool_.none) return false;
        at = heap_.deadline(slot);
        return true;
    }

    size_t used() const { return pool_.used(); } // live timers are armed
    table_stats stats() const { return pool_.stats(); }
    // f(timer_handle, deadline ns, period ns) for every armed timer.
    template <class F>
    void for_each(F&& f) const {
        for (uint16_t s = 0; s < slots; ++s)
            if (pool_.live(s)) f(timer_handle::from_id(pool_.id_of(s)), heap_.deadline(s), timers_[s].period);
    }

    // The timer pass: timers armed from now on wait for the next pass.
    void begin_pass() { heap_.begin_pass(); }
    // The first deadline, or false if no timer is armed; the top is brought
    // up to date first, so the wait never ends early.
    bool first(int64_t& at) {
        heap_.settle(pool_);
        if (heap_.empty()) return false;
        at = heap_.top().deadline;
        return true;
    }
    bool empty() const { return heap_.empty(); }

    // Fires the timers due at `now` that were armed before the pass began,
    // in deadline order, then arming order, through loop.invoke() (stall
    // reports name them). A repeating timer's next deadline advances by
    // whole periods: periods that passed during a stall are skipped and
    // counted in overruns, not fired in a burst.
    void fire_due(int64_t now, loop_base& loop) {
        for (;;) {
            heap_.settle(pool_);
            if (!heap_.top_due(now)) break;
            const typename timer_heap<slots>::entry top = heap_.top();
            entry& t = timers_[top.slot];
            uint32_t overruns = 0;
            if (t.period > 0) {
                const int64_t missed = (now - top.deadline) / t.period;
                overruns = missed > 0xffffffffll ? 0xffffffffu : static_cast<uint32_t>(missed);
                heap_.advance(top.slot, top.deadline + (missed + 1) * t.period);
            }
            // Its entry, stale now (a one-shot's: dropped, its slot freed
            // below), stays at the top until the next settle(): a callback
            // that re-arms the timer reuses it.
            running_frame f;
            running_.begin(f, top.slot);
            // A one-shot is gone as it fires: its place is free for a timer
            // its callback arms, and its slot is recycled after the callback
            // (also if it throws), unless the callback re-armed it.
            auto done = on_scope_exit([this, &f, &t] { running_.end(f, pool_, t.cb); });
            if (t.period == 0) release(top.slot);
            timer_event ev = {timer_handle::from_id(pool_.id_of(top.slot)), overruns};
            loop.invoke(t.cb, source_kind::timer, ev.handle.id(), -1, ev);
        }
    }

private:
    friend struct test_access;
    struct entry {
        timer_callback cb;
        int64_t period; // 0: one-shot
    };

    void release(uint16_t slot) { running_.release(pool_, timers_[slot].cb, slot); }
    // A one-shot whose callback is running (in any frame, also around a
    // nested iteration) and that is not armed now: fired, or cancelled
    // since. Its handle still acts: rearm() brings it back, cancel() is ok
    // (it is not armed, and stays so). Not a repeating timer its callback
    // cancelled.
    bool fired_running(uint64_t id, uint16_t& slot) const {
        slot = pool_.lookup_retired(id);
        return slot != pool_.none && running_.released(slot) && timers_[slot].period == 0;
    }
    // rearm() of such a one-shot: it takes its place back (errc::table_full
    // if its callback gave the place away); any other handle is stale.
    template <class When>
    error_code rearm_fired(uint64_t id, bool valid, When when) {
        uint16_t slot;
        if (!fired_running(id, slot)) return errc::stale_handle;
        if (!valid) return errc::bad_timeout;
        if (!pool_.revive(slot)) return errc::table_full;
        running_.keep(slot);
        heap_.arm(slot, when());
        return error_code();
    }

    pool_type pool_;
    entry timers_[slots];
    timer_heap<slots> heap_; // when each fires
    // The callbacks running now (nested in each other by poll() calls from
    // callbacks), so removing one defers freeing its storage.
    running_slot running_;
};

template <size_t N> const size_t timer_table<N>::slots;

} // namespace detail
} // namespace microloop

#endif // MICROLOOP_TIMERS_HPP
