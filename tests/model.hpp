// tests/model.hpp - a reference model of a loop's fd watchers, timers (in
// virtual time) and a continuation table, driven by a stream of choices:
// random ones from a seed (tests/test_torture.cpp) or a fuzzer's bytes
// (tests/fuzz/fuzz_loop.cpp). One model, two drivers.
//
// Each step performs one operation on the real objects (watch, modify,
// unwatch, fill or drain a pipe, arm, re-arm or cancel a timer, advance the
// virtual clock, poll, emplace/make/get/take/release a continuation, or an
// action on a stale or made-up handle) and the same operation on the model,
// and compares the results. Callbacks do the same from inside the loop: a
// callback checks that it is the one the model expected, then performs a few
// operations of its own, often on its own source. After every step the
// tables are compared whole: stats() (used, capacity, high_water),
// for_each_io(), for_each_timer(), remaining(), active(), the continuation
// ids, values and live objects.
//
// What the model holds the loop to:
// - fds: in each iteration, the watchers whose fd was ready (a pipe's read
//   end with bytes in it, a write end always) for their interest when
//   select() ran are called once, in ascending fd order, with the ready
//   subset of their interest at the time of the call; never a watcher removed
//   meanwhile, nor one added during the iteration.
// - timers: in each iteration whose wait began with timers armed, those due
//   at the iteration's time and armed before the iteration began fire, by
//   deadline, then arming order (a re-arm is a new arming); a repeating
//   timer's next deadline is the previous + (overruns + 1) * period; a
//   one-shot that fired and was not re-armed in its callback is gone.
//   Timers armed in callbacks count from the iteration's time, also when a
//   callback advances the clock (the iteration's time is read at most once).
// - nesting: a callback may call poll() (two levels at most): the nested
//   iteration is predicted like any other, at the clock's time then; the
//   outer one goes on with its own select() result, time and arming mark.
//   A removed source whose callback still runs holds its slot until then
//   (a table may be full below its capacity by what nested levels hold).
//   A fired one-shot's handle acts for rearm() and cancel() in its callback.
// - handles: every action on a stale or made-up handle returns
//   errc::stale_handle and changes nothing; a new handle never equals a
//   recent one; failures carry the right errc.
// - a pipe's bytes are all read back: nothing lost.
//
// No heap: every table is a fixed array. Failures are recorded, not thrown:
// the first one is kept in message() with the source line; the driver
// reports it with its seed and step.
#ifndef MICROLOOP_TESTS_MODEL_HPP
#define MICROLOOP_TESTS_MODEL_HPP

#include <microloop.hpp>

#include <fcntl.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/select.h>
#include <unistd.h>

#include <chrono>
#include <type_traits>

namespace model {

using std::chrono::nanoseconds;
using microloop::errc;
using microloop::error_code;

// Where the choices come from: a seeded generator, or a fuzzer's bytes (one
// byte per choice below 256, two above; zero once they are used up).
class chooser {
public:
    static chooser seeded(uint64_t seed) {
        chooser c;
        c.state_ = seed;
        return c;
    }
    static chooser bytes(const uint8_t* data, size_t size) {
        chooser c;
        c.data_ = data;
        c.size_ = size;
        return c;
    }
    // A number in [0, n), n >= 1.
    unsigned pick(unsigned n) {
        if (n <= 1) return 0;
        if (!data_) {
            // splitmix64
            uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
            z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
            z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
            z ^= z >> 31;
            return static_cast<unsigned>(((z >> 32) * n) >> 32);
        }
        unsigned v = next_byte();
        if (n > 256) v = v << 8 | next_byte();
        return v % n;
    }
    bool one_in(unsigned n) { return pick(n) == 0; }
    // Only for bytes: all of them used.
    bool exhausted() const { return data_ && pos_ >= size_; }

private:
    chooser() : state_(0), data_(nullptr), size_(0), pos_(0) {}
    unsigned next_byte() { return pos_ < size_ ? data_[pos_++] : 0u; }

    uint64_t state_;
    const uint8_t* data_;
    size_t size_, pos_;
};

// Two stored types, so that get<T>/take<T> of the wrong type are tried. b
// counts its live objects: a leak or a double destruction shows.
struct cont_a {
    uint64_t value;
    explicit cont_a(uint64_t v) : value(v) {}
};
struct cont_b {
    uint64_t value;
    int* live;
    cont_b(uint64_t v, int* l) : value(v), live(l) { ++*live; }
    ~cont_b() { --*live; }
    cont_b(const cont_b&) = delete;
    cont_b& operator=(const cont_b&) = delete;
};

// What happened, to show a run reached every path.
struct counters {
    uint64_t steps, polls, nested_polls, io_calls, timer_calls, overruns, stale_refused, table_full, bad_input, bytes_read,
        cont_taken;
};

class world {
public:
    static const int npipes = 8;
    static const int nfds = 2 * npipes; // read ends (readable when bytes > 0), write ends (always writable)
    static const int io_cap = 6;        // below nfds: watch() meets table_full
    static const int timer_cap = 8;
    static const int cont_cap = 8;
    static const int ring_size = 16; // retired handles kept per kind
    static const int max_bytes = 8;  // per pipe, far below a pipe's capacity

    typedef microloop::basic_loop<microloop::capacity<io_cap, timer_cap, 1, 1>, microloop::manual_clock> loop_type;
    // select() results are dispatched in ascending fd order; epoll's in the
    // kernel's order (README, Choosing a backend): then each ready fd's
    // watcher is called once, in any order.
    static const bool in_fd_order = std::is_same<loop_type::backend_type, microloop::use_select>::value;
    typedef microloop::continuation_table<cont_cap, 32> table_type;

    explicit world(chooser& c)
        : c_(c), b_live_(0), failed_(false), pipes_ok_(true), in_poll_(false), in_callback_(false), io_phase_(false),
          iter_now_known_(false), iter_now_(0), poll_no_(0), seq_(0), mark_(0), cursor_(-1),
          self_io_(-1), self_timer_(-1), self_timer_id_(0), self_io_id_(0), firing_(), firing_active_(false), depth_(0),
          polls_begun_(0), max_io_(0), max_timers_(0), max_cont_(0), value_(1) {
        msg_[0] = '\0';
        memset(&n_, 0, sizeof n_);
        for (int i = 0; i < nfds; ++i) fd_[i] = -1;
        for (int p = 0; p < npipes; ++p) {
            int f[2];
            if (pipe2(f, O_NONBLOCK | O_CLOEXEC) != 0 || f[0] >= FD_SETSIZE || f[1] >= FD_SETSIZE) {
                pipes_ok_ = false;
                continue;
            }
            fd_[p] = f[0];
            fd_[npipes + p] = f[1];
            bytes_[p] = 0;
        }
        // The order select() results are dispatched in: ascending fd.
        for (int i = 0; i < nfds; ++i) order_[i] = i;
        for (int i = 1; i < nfds; ++i)
            for (int j = i; j > 0 && fd_[order_[j]] < fd_[order_[j - 1]]; --j) {
                int t = order_[j];
                order_[j] = order_[j - 1];
                order_[j - 1] = t;
            }
        for (int i = 0; i < nfds; ++i) pos_of_[order_[i]] = i;
        for (int i = 0; i < nfds; ++i) {
            io_[i].live = false;
            snap_[i] = 0;
        }
        for (int i = 0; i < timer_cap; ++i) tm_[i].live = false;
        for (int i = 0; i < cont_cap; ++i) ct_[i].live = false;
        ring_init(io_ring_);
        ring_init(tm_ring_);
        ring_init(ct_ring_);
    }
    ~world() {
        for (int i = 0; i < nfds; ++i)
            if (fd_[i] >= 0) close(fd_[i]);
    }
    world(const world&) = delete;
    world& operator=(const world&) = delete;

    bool ready() const { return pipes_ok_; }
    bool failed() const { return failed_; }
    const char* message() const { return msg_; }
    const counters& count() const { return n_; }
    loop_type& loop() { return loop_; }

    // One operation from outside any callback, then the whole-table check.
    void step() {
        if (failed_) return;
        ++n_.steps;
        switch (pick_op(false)) {
        case op_poll: do_poll(); break;
        case op_advance: advance(); break;
        default: break; // done by pick_op
        }
        check_tables();
    }

    // Removes everything, checks that every table is empty and that an
    // iteration calls nothing.
    void finish() {
        if (failed_) return;
        for (int i = 0; i < nfds; ++i)
            if (io_[i].live) {
                expect(loop_.unwatch(io_[i].h), errc::ok, __LINE__, "unwatch at the end");
                retire_io(i);
            }
        for (int i = 0; i < timer_cap; ++i)
            if (tm_[i].live) {
                expect(loop_.cancel(tm_[i].h), errc::ok, __LINE__, "cancel at the end");
                retire_timer(i);
            }
        for (int i = 0; i < cont_cap; ++i)
            if (ct_[i].live) {
                expect(table_.release(ct_[i].id), errc::ok, __LINE__, "release at the end");
                retire_cont(i);
            }
        check_tables();
        for (int p = 0; p < npipes; ++p) drain(p);
        loop_.clock().advance(std::chrono::hours(1));
        do_poll();
        check_tables();
        loop_type::loop_stats s = loop_.stats();
        verify(s.io.used == 0 && s.timers.used == 0 && table_.size() == 0 && b_live_ == 0, __LINE__,
               "tables not empty at the end: io %zu timers %zu continuations %zu b objects %d", s.io.used,
               s.timers.used, table_.size(), b_live_);
        verify(loop_.active() == 0, __LINE__, "active() %zu at the end", loop_.active());
    }

private:
    // ---- the model's state ------------------------------------------------
    struct io_model {
        bool live;
        microloop::io_handle h;
        unsigned interest;
        uint64_t added_poll; // not dispatched in this poll
    };
    struct timer_model {
        bool live, armed;
        microloop::timer_handle h;
        int64_t deadline_ns, period_ns;
        uint64_t seq; // arming order
    };
    struct cont_model {
        bool live;
        bool is_b;
        microloop::continuation_id id;
        uint64_t value;
    };
    struct ring {
        uint64_t id[ring_size];
        int next;
    };

    enum op {
        op_poll,
        op_advance,
        op_watch,
        op_modify,
        op_unwatch,
        op_rewatch,
        op_fill,
        op_drain,
        op_add_timer,
        op_rearm,
        op_cancel,
        op_remaining,
        op_now,
        op_cont_add,
        op_cont_get,
        op_cont_take,
        op_cont_release,
        op_check,
        op_count
    };

    // ---- failures -------------------------------------------------------------
    void fail(int line, const char* fmt, ...) __attribute__((format(printf, 3, 4))) {
        if (failed_) return;
        failed_ = true;
        int k = snprintf(msg_, sizeof msg_, "model.hpp:%d: ", line);
        if (k < 0) k = 0;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg_ + k, sizeof msg_ - static_cast<size_t>(k), fmt, ap);
        va_end(ap);
    }
    void verify(bool ok, int line, const char* fmt, ...) __attribute__((format(printf, 4, 5))) {
        if (ok || failed_) return;
        failed_ = true;
        int k = snprintf(msg_, sizeof msg_, "model.hpp:%d: ", line);
        if (k < 0) k = 0;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg_ + k, sizeof msg_ - static_cast<size_t>(k), fmt, ap);
        va_end(ap);
    }
    void expect(error_code got, errc want, int line, const char* what) {
        verify(got == want, line, "%s: got %s, expected %s", what, got.message(), microloop::message(want));
        if (want == errc::stale_handle && got == want) ++n_.stale_refused;
    }

    // ---- handles ----------------------------------------------------------------
    static void ring_init(ring& r) {
        for (int i = 0; i < ring_size; ++i) r.id[i] = microloop::io_handle().id(); // invalid
        r.next = 0;
    }
    static void ring_put(ring& r, uint64_t id) {
        r.id[r.next] = id;
        r.next = (r.next + 1) % ring_size;
    }
    bool ring_has(const ring& r, uint64_t id) const {
        for (int i = 0; i < ring_size; ++i)
            if (r.id[i] == id) return true;
        return false;
    }
    bool io_live_id(uint64_t id) const {
        for (int i = 0; i < nfds; ++i)
            if (io_[i].live && io_[i].h.id() == id) return true;
        return false;
    }
    bool timer_live_id(uint64_t id) const {
        if (firing_active_ && firing_.id() == id) return true; // usable in its callback: not a plain dead handle
        for (int d = 0; d < depth_; ++d)
            if (outer_[d]->firing_active && outer_[d]->firing.id() == id) return true; // its callback runs too
        for (int i = 0; i < timer_cap; ++i)
            if (tm_[i].live && tm_[i].h.id() == id) return true;
        return false;
    }
    bool cont_live_id(uint64_t id) const {
        for (int i = 0; i < cont_cap; ++i)
            if (ct_[i].live && ct_[i].id.id() == id) return true;
        return false;
    }
    // A handle that names nothing: a retired one, or one made up (slot and
    // generation small, so it lands in and just past the tables).
    template <class H>
    H dead_handle(const ring& r, bool (world::*live)(uint64_t) const) {
        uint64_t id;
        if (c_.one_in(4)) {
            id = static_cast<uint64_t>(c_.pick(4)) << 16 | c_.pick(12);
            if (c_.one_in(8)) id = 0xffffu | static_cast<uint64_t>(c_.pick(256)) << 16; // a failure handle
        } else {
            id = r.id[c_.pick(ring_size)];
        }
        if ((this->*live)(id)) id = H().id(); // made up, but live: use a plain invalid one
        return H::from_id(id);
    }
    // A new handle is valid and is none of the recent ones.
    template <class H>
    void check_new(H h, const ring& r, int line) {
        verify(h.valid() && !h.error(), line, "a new handle is not valid (id %llx)",
               static_cast<unsigned long long>(h.id()));
        verify(!ring_has(r, h.id()), line, "a new handle equals a retired one (id %llx)",
               static_cast<unsigned long long>(h.id()));
    }
    template <class H>
    void check_failed(H h, errc want, int line, const char* what) {
        verify(!h.valid() && h.error() == want, line, "%s: handle %s, expected %s", what,
               h.valid() ? "valid" : h.error().message(), microloop::message(want));
        if (want == errc::table_full) ++n_.table_full;
        else ++n_.bad_input;
    }

    int live_io() const {
        int k = 0;
        for (int i = 0; i < nfds; ++i) k += io_[i].live;
        return k;
    }
    // The firing one-shot's entry if its callback re-armed it, else -1.
    int firing_index() const {
        for (int i = 0; i < timer_cap; ++i)
            if (tm_[i].live && tm_[i].h == firing_) return i;
        return -1;
    }
    // A table is full at its capacity, or when its spare slot and more are
    // held by removed sources whose callbacks still run (one per nesting
    // level at most): a table of N holds N, less what nested iterations hold
    // beyond the one spare.
    int held(bool timers) const {
        uint64_t ids[max_depth + 1];
        int n = 0;
        for (int d = 0; d <= depth_; ++d) {
            const bool cur = d == depth_;
            uint64_t id = 0;
            if (timers) {
                bool fa = cur ? firing_active_ : outer_[d]->firing_active;
                microloop::timer_handle fh = cur ? firing_ : outer_[d]->firing;
                int st = cur ? self_timer_ : outer_[d]->self_timer;
                uint64_t sid = cur ? self_timer_id_ : outer_[d]->self_timer_id;
                if (fa) {
                    bool live = false;
                    for (int i = 0; i < timer_cap; ++i) live |= tm_[i].live && tm_[i].h == fh;
                    if (!live) id = fh.id();
                } else if (st >= 0 && !(tm_[st].live && tm_[st].h.id() == sid)) {
                    id = sid;
                }
            } else {
                int si = cur ? self_io_ : outer_[d]->self_io;
                uint64_t sid = cur ? self_io_id_ : outer_[d]->self_io_id;
                if (si >= 0 && !(io_[si].live && io_[si].h.id() == sid)) id = sid;
            }
            if (id == 0) continue;
            bool dup = false;
            for (int k = 0; k < n; ++k) dup |= ids[k] == id;
            if (!dup) ids[n++] = id;
        }
        return n;
    }
    // What stats().used says: the live sources, and the held slots beyond
    // the one spare (they are as unusable as live ones).
    int in_use(bool timers) const {
        const int h = held(timers);
        return (timers ? live_timers() : live_io()) + (h > 1 ? h - 1 : 0);
    }
    bool io_full() const { return live_io() == io_cap || live_io() + held(false) >= io_cap + 1; }
    bool timers_full() const { return live_timers() == timer_cap || live_timers() + held(true) >= timer_cap + 1; }
    int live_timers() const {
        int k = 0;
        for (int i = 0; i < timer_cap; ++i) k += tm_[i].live;
        return k;
    }
    int armed_timers() const {
        int k = 0;
        for (int i = 0; i < timer_cap; ++i) k += tm_[i].live && tm_[i].armed;
        return k;
    }
    int live_cont() const {
        int k = 0;
        for (int i = 0; i < cont_cap; ++i) k += ct_[i].live;
        return k;
    }
    void retire_io(int i) {
        io_[i].live = false;
        ring_put(io_ring_, io_[i].h.id());
    }
    void retire_timer(int i) {
        tm_[i].live = false;
        ring_put(tm_ring_, tm_[i].h.id());
    }
    void retire_cont(int i) {
        ct_[i].live = false;
        ring_put(ct_ring_, ct_[i].id.id());
    }
    // A live entry at random, -1 if none (or, one time in four, on purpose).
    template <class M>
    int pick_live(const M* m, int n) {
        if (c_.one_in(4)) return -1;
        int k = 0;
        for (int i = 0; i < n; ++i) k += m[i].live;
        if (k == 0) return -1;
        int want = static_cast<int>(c_.pick(static_cast<unsigned>(k)));
        for (int i = 0; i < n; ++i)
            if (m[i].live && want-- == 0) return i;
        return -1;
    }

    // ---- operations ---------------------------------------------------------------
    // One operation at random; poll and advance are returned to the caller
    // (outside callbacks only; a callback may advance the clock itself).
    op pick_op(bool inside) {
        static const unsigned char weight[op_count] = {
            24, // poll
            4,  // advance
            14, // watch
            8,  // modify
            7,  // unwatch
            4,  // re-watch: unwatch, then watch the same fd again
            10, // fill
            6,  // drain
            14, // add timer
            8,  // rearm
            6,  // cancel
            2,  // remaining
            1,  // now
            7,  // continuation add
            3,  // get
            4,  // take
            4,  // release
            1,  // check
        };
        unsigned total = 0;
        for (int i = inside ? op_advance : 0; i < op_count; ++i) total += weight[i];
        unsigned r = c_.pick(total);
        int o = inside ? op_advance : 0;
        while (r >= weight[o]) r -= weight[o++];
        switch (o) {
        case op_watch: watch(); break;
        case op_modify: modify(); break;
        case op_unwatch: unwatch(); break;
        case op_rewatch: rewatch(); break;
        case op_fill: fill(static_cast<int>(c_.pick(npipes))); break;
        case op_drain: drain(static_cast<int>(c_.pick(npipes))); break;
        case op_add_timer: add_timer(); break;
        case op_rearm: rearm(); break;
        case op_cancel: cancel(); break;
        case op_remaining: remaining(); break;
        case op_now: now(); break;
        case op_cont_add: cont_add(); break;
        case op_cont_get: cont_get(); break;
        case op_cont_take: cont_take(); break;
        case op_cont_release: cont_release(); break;
        case op_check: check_tables(); break;
        case op_advance:
            if (inside) advance(); // outside: the caller's
            break;
        default: break;
        }
        return static_cast<op>(o);
    }

    void watch() {
        int i = static_cast<int>(c_.pick(nfds));
        unsigned events = c_.pick(8); // any subset of readable | writable | priority, 0 included
        unsigned variant = c_.pick(24);
        microloop::io_handle h;
        errc want = errc::ok;
        if (variant == 0) {
            h = loop_.watch(-1 - static_cast<int>(c_.pick(3)), events, [this](microloop::io_event ev) { on_io(ev); });
            want = errc::bad_fd;
        } else if (variant == 1 && in_fd_order) { // epoll has no fd ceiling
            h = loop_.watch(FD_SETSIZE + static_cast<int>(c_.pick(3)), events,
                            [this](microloop::io_event ev) { on_io(ev); });
            want = errc::fd_out_of_range;
        } else if (variant == 2) {
            h = loop_.watch(fd_[i], events | 8u << c_.pick(4), [this](microloop::io_event ev) { on_io(ev); });
            want = errc::bad_argument;
        } else if (variant == 3) {
            void (*none)(microloop::io_event) = nullptr;
            h = loop_.watch(fd_[i], events, none);
            want = errc::bad_argument;
        } else {
            h = loop_.watch(fd_[i], events, [this](microloop::io_event ev) { on_io(ev); });
            want = io_[i].live ? errc::already_watched : io_full() ? errc::table_full : errc::ok;
        }
        if (want != errc::ok) {
            check_failed(h, want, __LINE__, "watch");
            if (c_.one_in(4)) ring_put(io_ring_, h.id());
            return;
        }
        check_new(h, io_ring_, __LINE__);
        io_model& m = io_[i];
        m.live = true;
        m.h = h;
        m.interest = events;
        m.added_poll = poll_no_;
        int k = in_use(false);
        if (k > max_io_) max_io_ = k;
    }

    // Target: the running callback's own source one time in three, else a
    // live one at random, else a dead handle.
    int target_io() {
        if (self_io_ >= 0 && io_[self_io_].live && c_.one_in(3)) return self_io_;
        return pick_live(io_, nfds);
    }
    int target_timer() {
        if (self_timer_ >= 0 && tm_[self_timer_].live && tm_[self_timer_].h.id() == self_timer_id_ && c_.one_in(3))
            return self_timer_;
        return pick_live(tm_, timer_cap);
    }

    void modify() {
        int i = target_io();
        unsigned events = c_.pick(8);
        bool bad = c_.one_in(16);
        if (bad) events |= 8u << c_.pick(4);
        if (i < 0) {
            expect(loop_.modify(dead_handle<microloop::io_handle>(io_ring_, &world::io_live_id), events),
                   errc::stale_handle, __LINE__, "modify(dead handle)");
            return;
        }
        expect(loop_.modify(io_[i].h, events), bad ? errc::bad_argument : errc::ok, __LINE__, "modify");
        if (!bad) io_[i].interest = events;
    }

    void unwatch() {
        int i = target_io();
        if (i < 0) {
            expect(loop_.unwatch(dead_handle<microloop::io_handle>(io_ring_, &world::io_live_id)), errc::stale_handle,
                   __LINE__, "unwatch(dead handle)");
            return;
        }
        expect(loop_.unwatch(io_[i].h), errc::ok, __LINE__, "unwatch");
        retire_io(i);
    }

    // Replace a watcher by a new one on the same fd: inside a callback, the
    // new one must wait for the next iteration even if the fd was ready.
    void rewatch() {
        int i = target_io();
        if (i < 0) return;
        expect(loop_.unwatch(io_[i].h), errc::ok, __LINE__, "unwatch before re-watch");
        retire_io(i);
        unsigned events = c_.pick(8);
        microloop::io_handle h = loop_.watch(fd_[i], events, [this](microloop::io_event ev) { on_io(ev); });
        if (!h && h.error() == errc::table_full && io_full()) return;
        check_new(h, io_ring_, __LINE__);
        if (!h && h.error() == errc::table_full && io_full()) return; // removed watchers still running hold the slots
        io_[i].live = true;
        io_[i].h = h;
        io_[i].interest = events;
        io_[i].added_poll = poll_no_;
        int k = in_use(false); // the table's high-water mark moves at every watch
        if (k > max_io_) max_io_ = k;
    }

    void fill(int p) {
        if (bytes_[p] >= max_bytes) return;
        char b = static_cast<char>('a' + p);
        verify(write(fd_[npipes + p], &b, 1) == 1, __LINE__, "write to pipe %d failed", p);
        ++bytes_[p];
    }

    void drain(int p) {
        char buf[64];
        long got = 0;
        for (;;) {
            ssize_t r = read(fd_[p], buf, sizeof buf);
            if (r <= 0) break;
            for (ssize_t k = 0; k < r; ++k) verify(buf[k] == 'a' + p, __LINE__, "pipe %d: a foreign byte", p);
            got += r;
        }
        verify(got == bytes_[p], __LINE__, "pipe %d: read %ld bytes, %d were written", p, got, bytes_[p]);
        n_.bytes_read += static_cast<uint64_t>(got);
        bytes_[p] = 0;
    }

    // What timers armed now count from (see the header comment).
    int64_t arm_time() {
        if (!in_callback_) return loop_.clock().now_ns();
        if (!iter_now_known_) {
            iter_now_ = loop_.clock().now_ns();
            iter_now_known_ = true;
        }
        return iter_now_;
    }
    int64_t random_delay_ns() {
        int64_t ns = static_cast<int64_t>(c_.pick(21)) * 1000000;
        if (c_.one_in(4)) ns += c_.pick(1000) * 1000;
        return ns;
    }

    void add_timer() {
        unsigned kind = c_.pick(4);
        int64_t timeout_ns = random_delay_ns();
        int64_t period_ns = (1 + static_cast<int64_t>(c_.pick(10))) * 1000000;
        unsigned variant = c_.pick(32);
        microloop::timer_handle h;
        errc want = timers_full() ? errc::table_full : errc::ok;
        auto cb = [this](microloop::timer_event ev) { on_timer(ev); };
        if (variant == 0) {
            h = loop_.after(nanoseconds(-1 - static_cast<int64_t>(c_.pick(1000000))), cb);
            want = errc::bad_timeout;
        } else if (variant == 1) {
            h = loop_.every(std::chrono::milliseconds(0), cb);
            want = errc::bad_timeout;
        } else if (variant == 2) {
            h = loop_.add_timer(nanoseconds(timeout_ns), std::chrono::duration<double, std::nano>(0.25), cb);
            want = errc::bad_timeout;
        } else if (variant == 3) {
            h = loop_.after(std::chrono::hours(24 * 366 * 101), cb);
            want = errc::bad_timeout;
        } else if (variant == 4) {
            void (*none)(microloop::timer_event) = nullptr;
            h = loop_.after(nanoseconds(timeout_ns), none);
            want = errc::bad_argument;
        } else if (kind == 0) {
            h = loop_.after(nanoseconds(timeout_ns), cb);
            period_ns = 0;
        } else if (kind == 1) {
            h = loop_.every(nanoseconds(period_ns), cb);
            timeout_ns = period_ns;
        } else if (kind == 2) {
            h = loop_.add_timer(nanoseconds(timeout_ns), nanoseconds(period_ns), cb);
        } else {
            h = loop_.add_timer(nanoseconds(timeout_ns), nanoseconds(0), cb);
            period_ns = 0;
        }
        if (want != errc::ok) {
            check_failed(h, want, __LINE__, "add timer");
            if (c_.one_in(4)) ring_put(tm_ring_, h.id());
            return;
        }
        check_new(h, tm_ring_, __LINE__);
        int i = 0;
        while (i < timer_cap && tm_[i].live) ++i;
        if (i == timer_cap) { // the loop took more than its capacity
            fail(__LINE__, "add timer succeeded with %d timers live", timer_cap);
            return;
        }
        timer_model& t = tm_[i];
        t.live = true;
        t.armed = true;
        t.h = h;
        t.deadline_ns = arm_time() + timeout_ns;
        t.period_ns = period_ns;
        t.seq = seq_++;
        int k = in_use(true);
        if (k > max_timers_) max_timers_ = k;
    }

    void rearm() {
        int i = target_timer();
        int64_t timeout_ns = random_delay_ns();
        bool bad = c_.one_in(16);
        if (bad) timeout_ns = -1 - static_cast<int64_t>(c_.pick(1000));
        if (firing_active_ && c_.one_in(3)) { // the firing one-shot re-arms itself: back in its place
            int f = firing_index();
            if (f >= 0) { // re-armed already: a plain re-arm
                expect(loop_.rearm(firing_, nanoseconds(timeout_ns)), bad ? errc::bad_timeout : errc::ok, __LINE__,
                       "rearm(re-armed firing one-shot)");
                if (bad) return;
                tm_[f].deadline_ns = arm_time() + timeout_ns;
                tm_[f].seq = seq_++;
                return;
            }
            bool full = live_timers() == timer_cap;
            expect(loop_.rearm(firing_, nanoseconds(timeout_ns)),
                   bad ? errc::bad_timeout : full ? errc::table_full : errc::ok, __LINE__, "rearm(firing one-shot)");
            if (bad || full) return;
            int j = 0;
            while (j < timer_cap && tm_[j].live) ++j;
            timer_model& t = tm_[j];
            t.live = true;
            t.armed = true;
            t.h = firing_;
            t.deadline_ns = arm_time() + timeout_ns;
            t.period_ns = 0;
            t.seq = seq_++;
            int k = in_use(true);
            if (k > max_timers_) max_timers_ = k;
            return;
        }
        if (i < 0) {
            expect(loop_.rearm(dead_handle<microloop::timer_handle>(tm_ring_, &world::timer_live_id),
                               nanoseconds(timeout_ns)),
                   errc::stale_handle, __LINE__, "rearm(dead handle)");
            return;
        }
        expect(loop_.rearm(tm_[i].h, nanoseconds(timeout_ns)), bad ? errc::bad_timeout : errc::ok, __LINE__, "rearm");
        if (bad) return;
        tm_[i].armed = true;
        tm_[i].deadline_ns = arm_time() + timeout_ns;
        tm_[i].seq = seq_++;
    }

    void cancel() {
        if (firing_active_ && c_.one_in(3)) { // in its callback, ok whether re-armed or not
            expect(loop_.cancel(firing_), errc::ok, __LINE__, "cancel(firing one-shot)");
            int f = firing_index();
            if (f >= 0) retire_timer(f);
            return;
        }
        int i = target_timer();
        if (i < 0) {
            expect(loop_.cancel(dead_handle<microloop::timer_handle>(tm_ring_, &world::timer_live_id)),
                   errc::stale_handle, __LINE__, "cancel(dead handle)");
            return;
        }
        expect(loop_.cancel(tm_[i].h), errc::ok, __LINE__, "cancel");
        retire_timer(i);
    }

    void remaining() {
        int i = target_timer();
        if (i < 0) {
            nanoseconds left = loop_.remaining(dead_handle<microloop::timer_handle>(tm_ring_, &world::timer_live_id));
            verify(left == nanoseconds(0), __LINE__, "remaining(dead handle) = %lld ns",
                   static_cast<long long>(left.count()));
            return;
        }
        check_remaining(i);
    }
    void check_remaining(int i) {
        const timer_model& t = tm_[i];
        int64_t want = 0;
        if (t.armed && t.deadline_ns > loop_.clock().now_ns()) want = t.deadline_ns - loop_.clock().now_ns();
        int64_t got = static_cast<int64_t>(loop_.remaining(t.h).count());
        verify(got == want, __LINE__, "remaining() = %lld ns, expected %lld ns", static_cast<long long>(got),
               static_cast<long long>(want));
    }

    // now(): the clock outside callbacks, the iteration's time inside.
    void now() {
        int64_t got = static_cast<int64_t>(loop_.now().count());
        int64_t want = arm_time();
        verify(got == want, __LINE__, "now() = %lld, expected %lld%s", static_cast<long long>(got),
               static_cast<long long>(want), in_callback_ ? " (inside a callback)" : "");
    }

    void advance() {
        int64_t ns;
        switch (c_.pick(8)) {
        case 0: ns = 0; break;
        case 1: ns = 1; break;
        case 2: ns = 1000000; break;
        case 3: ns = static_cast<int64_t>(c_.pick(100)) * 1000000; break; // overruns
        default: ns = static_cast<int64_t>(c_.pick(8)) * 1000000 + (c_.one_in(3) ? c_.pick(1000) * 1000 : 0); break;
        }
        loop_.clock().advance(nanoseconds(ns));
    }

    // ---- continuations --------------------------------------------------------------
    void cont_add() {
        bool is_b = c_.one_in(2), by_make = c_.one_in(2);
        uint64_t v = value_++;
        microloop::continuation_id id;
        if (!is_b) {
            if (by_make) {
                microloop::made<cont_a> m = table_.make<cont_a>(v);
                if (m) verify(m->value == v && table_.get<cont_a>(m.id()) == m.get(), __LINE__, "make<a>: wrong object");
                id = m.id();
            } else {
                id = table_.emplace<cont_a>(v);
            }
        } else {
            if (by_make) {
                microloop::made<cont_b> m = table_.make<cont_b>(v, &b_live_);
                if (m) verify(m->value == v && table_.get<cont_b>(m.id()) == m.get(), __LINE__, "make<b>: wrong object");
                id = m.id();
            } else {
                id = table_.emplace<cont_b>(v, &b_live_);
            }
        }
        if (live_cont() == cont_cap) {
            check_failed(id, errc::table_full, __LINE__, "continuation add");
            return;
        }
        check_new(id, ct_ring_, __LINE__);
        int i = 0;
        while (i < cont_cap && ct_[i].live) ++i;
        if (i == cont_cap) return; // cannot happen: counted above
        ct_[i].live = true;
        ct_[i].is_b = is_b;
        ct_[i].id = id;
        ct_[i].value = v;
        int k = live_cont();
        if (k > max_cont_) max_cont_ = k;
    }

    void cont_get() {
        int i = pick_live(ct_, cont_cap);
        if (i < 0) {
            microloop::continuation_id id = dead_handle<microloop::continuation_id>(ct_ring_, &world::cont_live_id);
            verify(!table_.get<cont_a>(id) && !table_.get<cont_b>(id) && !table_.contains(id), __LINE__,
                   "get(dead id) found something");
            ++n_.stale_refused;
            return;
        }
        check_cont(i);
    }
    void check_cont(int i) {
        const cont_model& m = ct_[i];
        const cont_a* a = table_.get<cont_a>(m.id);
        const cont_b* b = table_.get<cont_b>(m.id);
        verify(table_.contains(m.id), __LINE__, "contains() is false for a live entry");
        if (m.is_b) verify(!a && b && b->value == m.value, __LINE__, "get<b>: wrong object or value");
        else verify(a && !b && a->value == m.value, __LINE__, "get<a>: wrong object or value");
    }

    void cont_take() {
        int i = pick_live(ct_, cont_cap);
        bool as_b = c_.one_in(2);
        if (i < 0) {
            microloop::continuation_id id = dead_handle<microloop::continuation_id>(ct_ring_, &world::cont_live_id);
            if (as_b) expect(table_.take<cont_b>(id).error(), errc::stale_handle, __LINE__, "take<b>(dead id)");
            else expect(table_.take<cont_a>(id).error(), errc::stale_handle, __LINE__, "take<a>(dead id)");
            return;
        }
        cont_model& m = ct_[i];
        if (as_b != m.is_b) {
            if (as_b) expect(table_.take<cont_b>(m.id).error(), errc::bad_argument, __LINE__, "take<b> of an a");
            else expect(table_.take<cont_a>(m.id).error(), errc::bad_argument, __LINE__, "take<a> of a b");
            return; // and it stays
        }
        if (as_b) {
            microloop::taken<cont_b> t = table_.take<cont_b>(m.id);
            verify(t && t->value == m.value && !table_.contains(m.id), __LINE__, "take<b>: wrong object or id live");
            verify(b_live_ == count_b(), __LINE__, "b objects: %d live, %d expected while taken", b_live_, count_b());
        } else {
            microloop::taken<cont_a> t = table_.take<cont_a>(m.id);
            verify(t && t->value == m.value && !table_.contains(m.id), __LINE__, "take<a>: wrong object or id live");
        }
        ++n_.cont_taken;
        retire_cont(i);
    }
    int count_b() const {
        int k = 0;
        for (int i = 0; i < cont_cap; ++i) k += ct_[i].live && ct_[i].is_b;
        return k;
    }

    void cont_release() {
        int i = pick_live(ct_, cont_cap);
        if (i < 0) {
            expect(table_.release(dead_handle<microloop::continuation_id>(ct_ring_, &world::cont_live_id)),
                   errc::stale_handle, __LINE__, "release(dead id)");
            return;
        }
        expect(table_.release(ct_[i].id), errc::ok, __LINE__, "release");
        retire_cont(i);
    }

    // ---- the iteration ----------------------------------------------------------------
    unsigned ready_now(int i) const {
        if (i < npipes) return bytes_[i] > 0 ? unsigned(microloop::readable) : 0u;
        return microloop::writable;
    }
    // The events watcher i is to be called with now, in this poll.
    unsigned due(int i) const {
        const io_model& m = io_[i];
        if (!m.live || m.added_poll >= poll_no_) return 0; // added in this poll or one nested in it
        return snap_[i] & m.interest;
    }

    // A poll() from inside a callback nests an iteration: the outer one's
    // state is kept here and put back when it returns; the outer iteration
    // then goes on with what its own select() saw, at its own time.
    struct frame {
        bool in_callback, io_phase, iter_now_known, firing_active;
        int64_t iter_now;
        uint64_t poll_no, mark;
        int cursor, self_io, self_timer;
        bool called[nfds];
        uint64_t self_io_id, self_timer_id;
        microloop::timer_handle firing;
        unsigned snap[nfds];
    };
    void save(frame& f) const {
        f.in_callback = in_callback_;
        f.io_phase = io_phase_;
        f.iter_now_known = iter_now_known_;
        f.firing_active = firing_active_;
        f.iter_now = iter_now_;
        f.poll_no = poll_no_;
        f.mark = mark_;
        f.cursor = cursor_;
        memcpy(f.called, called_, sizeof called_);
        f.self_io = self_io_;
        f.self_timer = self_timer_;
        f.self_timer_id = self_timer_id_;
        f.self_io_id = self_io_id_;
        f.firing = firing_;
        memcpy(f.snap, snap_, sizeof snap_);
    }
    void restore(const frame& f) {
        in_callback_ = f.in_callback;
        io_phase_ = f.io_phase;
        iter_now_known_ = f.iter_now_known;
        firing_active_ = f.firing_active;
        iter_now_ = f.iter_now;
        poll_no_ = f.poll_no;
        mark_ = f.mark;
        cursor_ = f.cursor;
        memcpy(called_, f.called, sizeof called_);
        self_io_ = f.self_io;
        self_timer_ = f.self_timer;
        self_timer_id_ = f.self_timer_id;
        self_io_id_ = f.self_io_id;
        firing_ = f.firing;
        memcpy(snap_, f.snap, sizeof snap_);
    }
    void nested_poll() {
        frame f;
        save(f);
        outer_[depth_++] = &f;
        ++n_.nested_polls;
        in_callback_ = false;
        firing_active_ = false;
        do_poll();
        --depth_;
        restore(f);
        in_poll_ = true; // the outer poll() goes on
    }

    void do_poll() {
        poll_no_ = ++polls_begun_;
        ++n_.polls;
        for (int i = 0; i < nfds; ++i) snap_[i] = io_[i].live ? ready_now(i) & io_[i].interest : 0u;
        mark_ = seq_;
        bool timed = armed_timers() > 0;
        iter_now_known_ = timed;
        iter_now_ = loop_.clock().now_ns();
        in_poll_ = true;
        io_phase_ = true;
        cursor_ = -1;
        memset(called_, 0, sizeof called_);
        self_io_ = -1;
        self_timer_ = -1;
        error_code e = loop_.poll();
        verify(!e, __LINE__, "poll() failed: %s (errno %d)", e.message(), e.sys());
        if (io_phase_) end_io_phase();
        if (timed && !failed_) {
            for (int i = 0; i < timer_cap; ++i) {
                const timer_model& t = tm_[i];
                verify(!(t.live && t.armed && t.seq < mark_ && t.deadline_ns <= iter_now_), __LINE__,
                       "timer %llx was due (deadline %lld, now %lld) and did not fire",
                       static_cast<unsigned long long>(t.h.id()), static_cast<long long>(t.deadline_ns),
                       static_cast<long long>(iter_now_));
            }
        }
        in_poll_ = false;
    }

    // No due watcher after the last one called.
    void end_io_phase() {
        io_phase_ = false;
        if (!in_fd_order) {
            for (int i = 0; i < nfds; ++i)
                verify(called_[i] || due(i) == 0, __LINE__, "fd %d was ready (events %u) and its watcher was not called",
                       fd_[i], due(i));
            return;
        }
        for (int p = cursor_ + 1; p < nfds; ++p) {
            int i = order_[p];
            verify(due(i) == 0, __LINE__, "fd %d was ready (events %u) and its watcher was not called", fd_[i], due(i));
        }
    }

    // A few operations from inside a callback.
    void act() {
        unsigned k = c_.pick(4);
        for (unsigned j = 0; j < k && !failed_; ++j) {
            if (depth_ < max_depth && c_.one_in(8)) nested_poll(); // at most max_depth levels
            else pick_op(true);
        }
        if (c_.one_in(8)) check_tables();
    }

    void on_io(microloop::io_event ev) {
        ++n_.io_calls;
        if (failed_) return;
        if (!in_poll_ || in_callback_) {
            fail(__LINE__, "fd callback outside poll() or inside another callback (fd %d)", ev.fd);
            return;
        }
        if (!io_phase_) {
            fail(__LINE__, "fd callback (fd %d) after a timer callback in the same iteration", ev.fd);
            return;
        }
        int i = 0;
        while (i < nfds && fd_[i] != ev.fd) ++i;
        if (i == nfds) {
            fail(__LINE__, "callback for fd %d, which was never watched", ev.fd);
            return;
        }
        if (in_fd_order) {
            int pos = pos_of_[i];
            if (pos <= cursor_) {
                fail(__LINE__, "fd %d called twice or out of order in one iteration", ev.fd);
                return;
            }
            for (int p = cursor_ + 1; p < pos; ++p)
                verify(due(order_[p]) == 0, __LINE__, "fd %d was ready and skipped (fd %d was called next)",
                       fd_[order_[p]], ev.fd);
            cursor_ = pos;
        } else if (called_[i]) {
            fail(__LINE__, "fd %d called twice in one iteration", ev.fd);
            return;
        }
        called_[i] = true;
        const io_model& m = io_[i];
        verify(m.live, __LINE__, "callback for a removed watcher (fd %d, handle %llx)", ev.fd,
               static_cast<unsigned long long>(ev.handle.id()));
        verify(!m.live || m.h == ev.handle, __LINE__, "fd %d: callback with handle %llx, the watcher's is %llx", ev.fd,
               static_cast<unsigned long long>(ev.handle.id()), static_cast<unsigned long long>(m.h.id()));
        verify(!m.live || m.added_poll < poll_no_, __LINE__, "fd %d: a watcher added in this iteration was called",
               ev.fd);
        verify(ev.events == due(i) && ev.events != 0, __LINE__, "fd %d: events %u, expected %u", ev.fd, ev.events,
               due(i));
        if (failed_) return;
        in_callback_ = true;
        self_io_ = i;
        self_io_id_ = ev.handle.id();
        if (c_.one_in(3) && i < npipes) drain(i); // what a reader does
        act();
        self_io_ = -1;
        in_callback_ = false;
    }

    void on_timer(microloop::timer_event ev) {
        ++n_.timer_calls;
        if (failed_) return;
        if (!in_poll_ || in_callback_) {
            fail(__LINE__, "timer callback outside poll() or inside another callback");
            return;
        }
        if (io_phase_) end_io_phase();
        int i = 0;
        while (i < timer_cap && !(tm_[i].live && tm_[i].h == ev.handle)) ++i;
        if (i == timer_cap) {
            fail(__LINE__, "callback for a removed or unknown timer %llx", static_cast<unsigned long long>(ev.handle.id()));
            return;
        }
        // The one due first: earliest deadline, then first armed.
        int best = -1;
        for (int j = 0; j < timer_cap; ++j) {
            const timer_model& t = tm_[j];
            if (!t.live || !t.armed || t.seq >= mark_ || t.deadline_ns > iter_now_) continue;
            if (best < 0 || t.deadline_ns < tm_[best].deadline_ns ||
                (t.deadline_ns == tm_[best].deadline_ns && t.seq < tm_[best].seq))
                best = j;
        }
        if (!iter_now_known_ || best != i) {
            fail(__LINE__,
                 "timer %llx fired (deadline %lld, seq %llu, armed %d) at %lld; expected %llx (deadline %lld, seq "
                 "%llu); mark %llu",
                 static_cast<unsigned long long>(ev.handle.id()), static_cast<long long>(tm_[i].deadline_ns),
                 static_cast<unsigned long long>(tm_[i].seq), tm_[i].armed ? 1 : 0, static_cast<long long>(iter_now_),
                 best < 0 ? 0ull : static_cast<unsigned long long>(tm_[best].h.id()),
                 best < 0 ? -1ll : static_cast<long long>(tm_[best].deadline_ns),
                 best < 0 ? 0ull : static_cast<unsigned long long>(tm_[best].seq),
                 static_cast<unsigned long long>(mark_));
            return;
        }
        timer_model& t = tm_[i];
        if (t.period_ns > 0) {
            int64_t missed = (iter_now_ - t.deadline_ns) / t.period_ns;
            uint32_t want = missed > 0xffffffffll ? 0xffffffffu : static_cast<uint32_t>(missed);
            verify(ev.overruns == want, __LINE__, "overruns %u, expected %u", ev.overruns, want);
            n_.overruns += ev.overruns;
            t.deadline_ns += (missed + 1) * t.period_ns;
            t.seq = seq_++;
        } else {
            // A one-shot is gone as it fires; its callback may bring it back.
            verify(ev.overruns == 0, __LINE__, "a one-shot reports %u overruns", ev.overruns);
            verify(loop_.remaining(ev.handle) == nanoseconds(0), __LINE__, "remaining() of a firing one-shot");
            retire_timer(i);
            firing_ = ev.handle;
            firing_active_ = true;
        }
        in_callback_ = true;
        self_timer_ = firing_active_ ? -1 : i;
        self_timer_id_ = ev.handle.id();
        act();
        self_timer_ = -1;
        firing_active_ = false;
        in_callback_ = false;
    }

    // ---- the whole-table check ------------------------------------------------------
    void check_tables() {
        if (failed_) return;
        loop_type::loop_stats s = loop_.stats();
        int io = in_use(false), timers = in_use(true), armed = armed_timers(), cont = live_cont();
        verify(s.io.used == static_cast<size_t>(io) && s.io.capacity == static_cast<size_t>(io_cap) &&
                   s.io.high_water == static_cast<size_t>(max_io_),
               __LINE__, "io stats used %zu cap %zu high %zu; model %d %d %d", s.io.used, s.io.capacity,
               s.io.high_water, io, io_cap, max_io_);
        verify(s.timers.used == static_cast<size_t>(timers) && s.timers.capacity == static_cast<size_t>(timer_cap) &&
                   s.timers.high_water == static_cast<size_t>(max_timers_),
               __LINE__, "timer stats used %zu cap %zu high %zu; model %d %d %d", s.timers.used, s.timers.capacity,
               s.timers.high_water, timers, timer_cap, max_timers_);
        verify(s.signals.used == 0 && s.children.used == 0, __LINE__, "signal or child table not empty");
        size_t active_io = 0;
        for (int i = 0; i < nfds; ++i) active_io += io_[i].live && io_[i].interest != 0;
        verify(loop_.active() == active_io + static_cast<size_t>(armed), __LINE__,
               "active() %zu, expected %zu watchers + %d timers", loop_.active(), active_io, armed);

        int seen = 0;
        bool io_ok = true;
        loop_.for_each_io([&](microloop::io_handle h, int fd, unsigned events) {
            ++seen;
            int i = 0;
            while (i < nfds && fd_[i] != fd) ++i;
            if (i == nfds || !io_[i].live || io_[i].h != h || io_[i].interest != events) io_ok = false;
        });
        verify(io_ok && seen == live_io(), __LINE__, "for_each_io: %d watchers listed, %d expected, or one differs", seen,
               live_io());

        seen = 0;
        bool timers_ok = true;
        loop_.for_each_timer([&](microloop::timer_handle h, nanoseconds deadline, nanoseconds period) {
            ++seen;
            int i = 0;
            while (i < timer_cap && !(tm_[i].live && tm_[i].h == h)) ++i;
            if (i == timer_cap || !tm_[i].armed || tm_[i].deadline_ns != static_cast<int64_t>(deadline.count()) ||
                tm_[i].period_ns != static_cast<int64_t>(period.count()))
                timers_ok = false;
        });
        verify(timers_ok && seen == armed, __LINE__, "for_each_timer: %d timers listed, %d expected, or one differs",
               seen, armed);
        for (int i = 0; i < timer_cap; ++i)
            if (tm_[i].live) check_remaining(i);

        microloop::table_stats cs = table_.stats();
        verify(table_.size() == static_cast<size_t>(cont) && cs.used == static_cast<size_t>(cont) &&
                   cs.capacity == static_cast<size_t>(cont_cap) && cs.high_water == static_cast<size_t>(max_cont_),
               __LINE__, "continuation stats used %zu cap %zu high %zu; model %d %d %d", cs.used, cs.capacity,
               cs.high_water, cont, cont_cap, max_cont_);
        seen = 0;
        bool ids_ok = true;
        table_.for_each([&](microloop::continuation_id id) {
            ++seen;
            if (!cont_live_id(id.id())) ids_ok = false;
        });
        verify(ids_ok && seen == cont, __LINE__, "continuation for_each: %d listed, %d expected, or one differs", seen,
               cont);
        for (int i = 0; i < cont_cap; ++i)
            if (ct_[i].live) check_cont(i);
        verify(b_live_ == count_b(), __LINE__, "%d b objects live, %d expected", b_live_, count_b());
    }

    chooser& c_;
    loop_type loop_;
    table_type table_;
    int b_live_;

    int fd_[nfds];
    int bytes_[npipes];
    int order_[nfds];  // indexes by ascending fd
    int pos_of_[nfds]; // index -> position in order_
    io_model io_[nfds]; // one watcher per fd at most
    timer_model tm_[timer_cap];
    cont_model ct_[cont_cap];
    ring io_ring_, tm_ring_, ct_ring_;

    counters n_;
    bool failed_;
    bool pipes_ok_;
    char msg_[512];

    // The iteration in progress.
    bool in_poll_, in_callback_, io_phase_;
    bool iter_now_known_; // the loop has read its time for this iteration
    int64_t iter_now_;
    uint64_t poll_no_;
    uint64_t seq_, mark_; // the model's arming counter; armed before mark_: due in this iteration
    int cursor_;          // position in order_ of the last fd called in this iteration
    bool called_[nfds];   // which fds' watchers were called in this iteration
    unsigned snap_[nfds]; // what select() saw ready, per watched fd
    int self_io_, self_timer_;
    uint64_t self_timer_id_, self_io_id_;
    // The one-shot whose callback runs: gone (its handle stale, its place
    // free) unless the callback re-arms it through that handle.
    microloop::timer_handle firing_;
    bool firing_active_;
    static const int max_depth = 2;
    frame* outer_[max_depth]; // the iterations a nested one runs inside, outermost first
    int depth_;
    uint64_t polls_begun_; // poll_no_ is the running iteration's: back to the outer one's after a nested one

    int max_io_, max_timers_, max_cont_;
    uint64_t value_;
};

} // namespace model

#endif // MICROLOOP_TESTS_MODEL_HPP
