// SPDX-License-Identifier: MIT
// microloop/hooks.hpp - iteration hooks: callbacks a loop runs at fixed
// points of every iteration (on_prepare before the wait, on_check after the
// dispatch, on_idle while the wait must not block), for hosting libraries
// that expect to be driven by the application's loop. The loop holds one
// table (loop.hpp); its order and rules are stated there and in the README
// (Hosting other libraries).
#ifndef MICROLOOP_HOOKS_HPP
#define MICROLOOP_HOOKS_HPP

#include <stddef.h>
#include <stdint.h>

#include <utility>

#include "callback.hpp"
#include "config.hpp"
#include "error.hpp"
#include "handle.hpp"
#include "loop_base.hpp"

namespace microloop {

typedef basic_handle<struct hook_tag> hook_handle;

// What an iteration hook's callback is told.
struct hook_event {
    hook_handle handle;
};

// Trivially destructible callables only (pointers, references, handles):
// a loop's hook table costs no construction or destruction code.
typedef detail::trivial_callback<void(hook_event)> hook_callback;

namespace detail {

enum hook_kind : unsigned char { hook_idle, hook_prepare, hook_check };

// N hooks of every kind together, removable from anywhere (a spare slot, as
// every table whose callbacks may remove their own source).
template <size_t N>
class hook_table {
public:
    hook_table() : idle_(0), phase_(no_hooks) {}

    // A hook of `kind`, added during loop iteration `iteration`: it first
    // runs in the next one (also when added by a hook before the wait, which
    // runs as if before its iteration began: see the loop's hook_pass()).
    template <class F>
    hook_handle add(hook_kind kind, F&& cb, uint64_t iteration) {
        if (is_null_callable(cb)) return hook_handle(errc::bad_argument);
        const uint64_t id = pool_.acquire();
        if (id == 0) return hook_handle(errc::table_full);
        slot& h = slots_[slot_of(id)];
        h.cb.emplace(std::forward<F>(cb));
        h.added_iter = iteration + (phase_ == before_wait ? 1u : 0u);
        h.kind = kind;
        if (kind == hook_idle) ++idle_;
        return hook_handle::from_id(id);
    }
    error_code remove(hook_handle h) {
        const uint16_t s = pool_.lookup(h.id());
        if (s == pool_.none) return errc::stale_handle;
        if (slots_[s].kind == hook_idle) --idle_;
        running_.release(pool_, slots_[s].cb, s);
        return error_code();
    }

    size_t idle() const { return idle_; } // idle hooks keep run() going
    bool running() const { return phase_ != no_hooks; } // an iteration nested in a hook runs none
    table_stats stats() const { return pool_.stats(); }

    // Runs the hooks of `kind`, in slot order, through loop.invoke() (stall
    // reports name them), but none added in loop iteration `iteration` or in
    // one nested in it.
    void run(hook_kind kind, uint64_t iteration, loop_base& loop) {
        const phase was = phase_;
        phase_ = kind == hook_check ? after_dispatch : before_wait;
        auto restore = on_scope_exit([this, was] { phase_ = was; });
        for (uint16_t s = 0; s < pool_type::slots; ++s) {
            if (!pool_.live(s)) continue;
            slot& h = slots_[s];
            if (h.kind != kind || h.added_iter >= iteration) continue;
            running_frame f;
            running_.begin(f, s);
            auto done = on_scope_exit([this, &f, &h] { running_.end(f, pool_, h.cb); });
            hook_event ev = {hook_handle::from_id(pool_.id_of(s))};
            loop.invoke(h.cb, source_kind::hook, ev.handle.id(), -1, ev);
        }
    }

private:
    // Which hooks are running: none, those before the wait, the check hooks.
    enum phase : unsigned char { no_hooks, before_wait, after_dispatch };
    typedef slot_pool<N, 1> pool_type;
    struct slot {
        hook_callback cb;
        uint64_t added_iter; // not run in the iteration it was added in
        hook_kind kind;
    };

    pool_type pool_;
    slot slots_[pool_type::slots];
    size_t idle_;
    running_slot running_;
    phase phase_;
};

} // namespace detail
} // namespace microloop

#endif // MICROLOOP_HOOKS_HPP
