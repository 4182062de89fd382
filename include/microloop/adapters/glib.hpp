// SPDX-License-Identifier: MIT
// microloop/adapters/glib.hpp - a GLib main context hosted on a microloop
// loop: loop.run() drives GLib's sources (GIO watches, timeouts, idles,
// child watches, wake-ups from other threads) next to the loop's own.
//
// ---- Usage -------------------------------------------------------------------
//
//     #include <microloop.hpp>
//     #include <microloop/adapters/glib.hpp>   // needs glib-2.0 (pkg-config)
//
//     static microloop::loop<> loop;
//     int main() {
//         microloop::glib_adapter<microloop::loop<> > glib(loop);  // the default context
//         if (glib.error()) return 1;          // owned by another thread, or no hook slot
//         g_timeout_add(100, on_timeout, nullptr);  // GLib's API as usual
//         loop.every(std::chrono::seconds(1), tick);
//         return loop.run() ? 1 : 0;           // until loop.stop(): GLib's wake-up fd
//     }                                        // is always watched
//
//   glib_adapter<Loop, MaxPollFds = 16, Api = glib_api>(loop, context = nullptr)
//       Hosts `context` (nullptr: g_main_context_default()), which it refs,
//       and acquires (g_main_context_acquire) for its whole life: construct
//       it in the loop's thread. error(): errc::already_watched if another
//       thread owns the context, errc::table_full if the loop has no free
//       hook slot (it takes one prepare and one check hook); then it does
//       nothing. Costs one loop timer, and one fd watcher per distinct fd
//       GLib polls.
//   stats(): GPollFDs and fds now, the most GPollFDs GLib asked for at once,
//       iterations in which GLib asked for more than MaxPollFds (overflows),
//       watchers or timers the loop refused (refused), dispatches.
//   last_error(): why the latest refusal or overflow happened
//       (errc::table_full, already_watched, fd_out_of_range...).
//
// ---- How it works --------------------------------------------------------------
//
// Each iteration of the loop, in its prepare hook: g_main_context_prepare(),
// then g_main_context_query() into a fixed array of MaxPollFds GPollFDs. The
// GPollFDs are merged by fd (GLib may poll one fd twice: two watches on one
// fd, a source with two GPollFDs on it: GLib 2.74 merges them itself in
// g_main_context_query(), the adapter does not count on it); each distinct fd gets one loop
// watcher for the union of the events, and only what changed since the
// last iteration is watched, modified or unwatched. One loop timer is armed
// to GLib's timeout (cancelled for -1; 0 when a source is ready already).
// The fd callbacks record what the loop reported. In the check hook each
// GPollFD gets its share of its fd's readiness, masked by what it asked for
// (readable -> G_IO_IN, writable -> G_IO_OUT, priority -> G_IO_PRI; an fd
// closed behind the loop's back -> G_IO_ERR | G_IO_NVAL), then
// g_main_context_check() and, if it says so, g_main_context_dispatch():
// GLib's callbacks run in the check hook.
//
// select() has no hang-up event: a peer's hang-up is G_IO_IN, and the
// source's read finds the end of file. GLib's query masks G_IO_HUP and
// G_IO_ERR out of the events it hands over, so a GPollFD that asked for
// nothing else (events 0) is not watched: merge it with a reader, or read.
//
// More GPollFDs than MaxPollFds: the first MaxPollFds (GLib lists them by
// priority, so its lowest-priority fds are the ones left out) are polled,
// the rest are not; nothing is written past the array; stats().overflows
// counts the iterations, last_error() is errc::table_full. Raise MaxPollFds.
//
// Not from the adapter's own callbacks: destroying it (GLib is dispatching).
// Nothing of microloop's allocates; GLib allocates as it always does.
#ifndef MICROLOOP_ADAPTERS_GLIB_HPP
#define MICROLOOP_ADAPTERS_GLIB_HPP

#include <glib.h>
#include <stddef.h>
#include <stdint.h>

#include <chrono>

#include "../error.hpp"
#include "../handle.hpp"
#include "../loop.hpp"

namespace microloop {

struct glib_stats {
    unsigned pollfds;            // GPollFDs handed to GLib at the last prepare (at most the capacity)
    unsigned fds;                // distinct fds watched for them now
    unsigned pollfds_high_water; // the most GPollFDs GLib asked for at once, also beyond the capacity
    unsigned capacity;           // MaxPollFds
    uint64_t overflows;          // iterations in which GLib asked for more than the capacity
    uint64_t refused;            // watch(), modify() or timer calls the loop refused
    uint64_t dispatches;         // g_main_context_dispatch() calls
};

// The four calls of GLib's iteration the adapter makes, as a parameter so
// that a test can stand between it and GLib.
struct glib_api {
    static gboolean prepare(GMainContext* c, gint* max_priority) { return g_main_context_prepare(c, max_priority); }
    static gint query(GMainContext* c, gint max_priority, gint* timeout, GPollFD* fds, gint n) {
        return g_main_context_query(c, max_priority, timeout, fds, n);
    }
    static gboolean check(GMainContext* c, gint max_priority, GPollFD* fds, gint n) {
        return g_main_context_check(c, max_priority, fds, n);
    }
    static void dispatch(GMainContext* c) { g_main_context_dispatch(c); }
};

template <class Loop, size_t MaxPollFds = 16, class Api = glib_api>
class glib_adapter {
    static_assert(MaxPollFds > 0 && MaxPollFds < 0x7fff, "glib_adapter: MaxPollFds out of range");

public:
    explicit glib_adapter(Loop& host, GMainContext* ctx = nullptr);
    ~glib_adapter() { detach(); }
    glib_adapter(const glib_adapter&) = delete;
    glib_adapter& operator=(const glib_adapter&) = delete;

    // Set-up: ok, errc::already_watched (another thread owns the context),
    // errc::table_full (no hook slot in the loop).
    error_code error() const { return error_; }
    // The latest refusal or overflow while running.
    error_code last_error() const { return last_error_; }
    GMainContext* context() const { return ctx_; }
    const glib_stats& stats() const { return stats_; }

private:
    static const uint16_t none = 0xffffu;
    // One per distinct fd GLib polls; a slot keeps its index while its fd is
    // wanted, so the watcher's callback can name it.
    struct fd_entry {
        io_handle h;       // valid while watched
        int fd;
        unsigned want;     // union of the events of its GPollFDs, this prepare
        unsigned interest; // what its watcher asks the loop for
        unsigned ready;    // what the loop reported since the last prepare
        bool used;
        bool seen;
    };

    void prepare();
    void check();
    void sync_fds();
    void sync_timer(gint timeout);
    void apply(uint16_t i);
    void drop(uint16_t i);
    void detach();
    uint16_t find(int fd) const {
        for (uint16_t i = 0; i < MaxPollFds; ++i)
            if (entries_[i].used && entries_[i].fd == fd) return i;
        return none;
    }
    void refuse(error_code e) {
        ++stats_.refused;
        last_error_ = e;
    }
    static unsigned to_events(gushort ev) {
        return ((ev & G_IO_IN) ? readable : 0u) | ((ev & G_IO_OUT) ? writable : 0u) |
               ((ev & G_IO_PRI) ? priority : 0u);
    }

    Loop& loop_;
    GMainContext* ctx_;
    bool acquired_;
    bool prepared_; // the prepare hook ran this iteration: the check hook may check
    gint max_priority_;
    unsigned n_; // GPollFDs in pollfds_
    error_code error_, last_error_;
    hook_handle prepare_hook_, check_hook_;
    timer_handle timer_;
    glib_stats stats_;
    GPollFD pollfds_[MaxPollFds];
    uint16_t entry_of_[MaxPollFds]; // pollfds_[k]'s fd_entry, or none
    fd_entry entries_[MaxPollFds];
};

// ============================================================================
// Implementation
// ============================================================================

template <class Loop, size_t MaxPollFds, class Api>
glib_adapter<Loop, MaxPollFds, Api>::glib_adapter(Loop& host, GMainContext* ctx)
    : loop_(host), ctx_(ctx ? ctx : g_main_context_default()), acquired_(false), prepared_(false),
      max_priority_(G_MAXINT), n_(0) {
    stats_ = glib_stats();
    stats_.capacity = static_cast<unsigned>(MaxPollFds);
    for (size_t i = 0; i < MaxPollFds; ++i) {
        entries_[i].fd = -1;
        entries_[i].want = entries_[i].interest = entries_[i].ready = 0;
        entries_[i].used = entries_[i].seen = false;
        entry_of_[i] = none;
    }
    g_main_context_ref(ctx_);
    if (!g_main_context_acquire(ctx_)) {
        error_ = errc::already_watched;
        return;
    }
    acquired_ = true;
    prepare_hook_ = loop_.on_prepare([this](hook_event) { prepare(); });
    check_hook_ = loop_.on_check([this](hook_event) { check(); });
    if (!prepare_hook_ || !check_hook_) {
        error_ = !prepare_hook_ ? prepare_hook_.error() : check_hook_.error();
        detach();
        return;
    }
    // Watch GLib's fds (its wake-up fd at least) and arm its timeout now:
    // run() only runs while something is active, and hooks do not count.
    prepare();
    prepared_ = false;
}

template <class Loop, size_t MaxPollFds, class Api>
void glib_adapter<Loop, MaxPollFds, Api>::detach() {
    if (prepare_hook_) loop_.unwatch(prepare_hook_);
    if (check_hook_) loop_.unwatch(check_hook_);
    prepare_hook_ = check_hook_ = hook_handle();
    for (uint16_t i = 0; i < MaxPollFds; ++i)
        if (entries_[i].used) drop(i);
    loop_.cancel(timer_); // stale if it fired: refused, harmlessly
    timer_ = timer_handle();
    n_ = 0;
    stats_.pollfds = stats_.fds = 0;
    if (acquired_) g_main_context_release(ctx_);
    acquired_ = false;
    if (ctx_) g_main_context_unref(ctx_);
    ctx_ = nullptr;
}

// Before the wait: what GLib wants polled, and for how long.
template <class Loop, size_t MaxPollFds, class Api>
void glib_adapter<Loop, MaxPollFds, Api>::prepare() {
    gint max_priority = G_MAXINT;
    const bool ready = Api::prepare(ctx_, &max_priority) != FALSE;
    gint timeout = -1;
    const gint wanted = Api::query(ctx_, max_priority, &timeout, pollfds_, static_cast<gint>(MaxPollFds));
    const unsigned w = wanted > 0 ? static_cast<unsigned>(wanted) : 0u;
    if (w > stats_.pollfds_high_water) stats_.pollfds_high_water = w;
    if (w > MaxPollFds) {
        // GLib filled the first MaxPollFds and told us how many it has.
        ++stats_.overflows;
        last_error_ = errc::table_full;
        n_ = static_cast<unsigned>(MaxPollFds);
    } else {
        n_ = w;
    }
    stats_.pollfds = n_;
    max_priority_ = max_priority;
    sync_fds();
    sync_timer(ready ? 0 : timeout);
    prepared_ = true;
}

// Merge the GPollFDs by fd and bring the watchers in line: only what changed.
template <class Loop, size_t MaxPollFds, class Api>
void glib_adapter<Loop, MaxPollFds, Api>::sync_fds() {
    for (uint16_t i = 0; i < MaxPollFds; ++i) {
        entries_[i].seen = false;
        entries_[i].want = 0;
        entries_[i].ready = 0;
    }
    for (unsigned k = 0; k < n_; ++k) {
        const uint16_t i = pollfds_[k].fd < 0 ? none : find(pollfds_[k].fd);
        entry_of_[k] = i;
        if (i == none) continue;
        entries_[i].seen = true;
        entries_[i].want |= to_events(pollfds_[k].events);
    }
    // First free the fds GLib no longer polls: then the new ones always
    // find a slot (never more distinct fds than GPollFDs).
    for (uint16_t i = 0; i < MaxPollFds; ++i)
        if (entries_[i].used && !entries_[i].seen) drop(i);
    for (unsigned k = 0; k < n_; ++k) {
        if (entry_of_[k] != none || pollfds_[k].fd < 0) continue;
        uint16_t i = find(pollfds_[k].fd); // added for an earlier GPollFD of this prepare?
        if (i == none) {
            for (i = 0; i < MaxPollFds && entries_[i].used; ++i) {
            }
            MICROLOOP_ASSERT(i < MaxPollFds);
            fd_entry& e = entries_[i];
            e.h = io_handle();
            e.fd = pollfds_[k].fd;
            e.want = e.interest = e.ready = 0;
            e.used = e.seen = true;
        }
        entry_of_[k] = i;
        entries_[i].want |= to_events(pollfds_[k].events);
    }
    unsigned fds = 0;
    for (uint16_t i = 0; i < MaxPollFds; ++i) {
        if (!entries_[i].used) continue;
        apply(i);
        if (entries_[i].h) ++fds;
    }
    stats_.fds = fds;
}

template <class Loop, size_t MaxPollFds, class Api>
void glib_adapter<Loop, MaxPollFds, Api>::apply(uint16_t i) {
    fd_entry& e = entries_[i];
    if (e.want == 0) { // G_IO_HUP/G_IO_ERR alone, or nothing: select() cannot say
        if (e.h) loop_.unwatch(e.h);
        e.h = io_handle();
        e.interest = 0;
        return;
    }
    if (e.h) {
        if (e.want == e.interest) return;
        if (error_code err = loop_.modify(e.h, e.want)) {
            refuse(err);
            return;
        }
        e.interest = e.want;
        return;
    }
    // New, or refused before (retried every iteration while GLib wants it).
    e.h = loop_.watch(e.fd, e.want, [this, i](io_event ev) {
        fd_entry& en = entries_[i];
        en.ready |= ev.events;
        if (ev.events & io_error) { // closed behind the loop's back: the watcher is disabled
            loop_.unwatch(en.h);
            en.h = io_handle();
            en.interest = 0;
        }
    });
    if (!e.h) {
        refuse(e.h.error());
        e.interest = 0;
        return;
    }
    e.interest = e.want;
}

template <class Loop, size_t MaxPollFds, class Api>
void glib_adapter<Loop, MaxPollFds, Api>::drop(uint16_t i) {
    fd_entry& e = entries_[i];
    if (e.h) loop_.unwatch(e.h);
    e.h = io_handle();
    e.used = e.seen = false;
    e.fd = -1;
    e.want = e.interest = e.ready = 0;
}

template <class Loop, size_t MaxPollFds, class Api>
void glib_adapter<Loop, MaxPollFds, Api>::sync_timer(gint timeout) {
    if (timeout < 0) {
        loop_.cancel(timer_); // stale if it fired already: harmless
        timer_ = timer_handle();
        return;
    }
    const std::chrono::milliseconds d(timeout);
    if (timer_ && !loop_.rearm(timer_, d)) return;
    // None yet, or the one-shot fired: a new one. It only ends the wait;
    // GLib's check finds its sources due.
    timer_ = loop_.after(d, [](timer_event) {});
    if (!timer_) refuse(timer_.error());
}

// After the wait and the loop's callbacks: GLib's share of what happened.
template <class Loop, size_t MaxPollFds, class Api>
void glib_adapter<Loop, MaxPollFds, Api>::check() {
    if (!prepared_) return; // no prepare since the last check (a hook added mid-iteration)
    prepared_ = false;
    for (unsigned k = 0; k < n_; ++k) {
        GPollFD& p = pollfds_[k];
        unsigned rev = 0;
        if (entry_of_[k] != none) {
            const unsigned r = entries_[entry_of_[k]].ready;
            if (r & io_error) {
                rev = G_IO_ERR | G_IO_NVAL;
            } else {
                if ((r & readable) && (p.events & G_IO_IN)) rev |= G_IO_IN;
                if ((r & writable) && (p.events & G_IO_OUT)) rev |= G_IO_OUT;
                if ((r & priority) && (p.events & G_IO_PRI)) rev |= G_IO_PRI;
            }
        }
        p.revents = static_cast<gushort>(rev);
    }
    if (Api::check(ctx_, max_priority_, pollfds_, static_cast<gint>(n_))) {
        ++stats_.dispatches;
        Api::dispatch(ctx_);
    }
}

} // namespace microloop

#endif // MICROLOOP_ADAPTERS_GLIB_HPP
