// SPDX-License-Identifier: MIT
// microloop/handle.hpp - generation-counted handles and the slot pool behind
// every fixed-capacity table (fd watchers, timers, signals, AIO,
// continuations).
#ifndef MICROLOOP_HANDLE_HPP
#define MICROLOOP_HANDLE_HPP

#include <stdint.h>
#include <stddef.h>

#include "config.hpp"
#include "error.hpp"

namespace microloop {
namespace detail {
// The slot a handle id names: its low 16 bits (0xffff in a failed
// creation's handle, which names no slot).
inline uint16_t slot_of(uint64_t id) { return static_cast<uint16_t>(id & 0xffffu); }
} // namespace detail

// A handle is 64 bits: a 48-bit generation above a 16-bit slot. A handle
// kept after its source is gone no longer matches its slot's generation and
// is refused with errc::stale_handle, for every handle type. Each reuse of a
// slot advances its generation by one, so a kept handle could be mistaken
// for a newer source only after its slot was reused 2^48 - 1 times: 8.9 years
// of a million reuses a second, of that one slot.
//
// A failed creation returns an invalid handle that carries the reason and,
// for errc::system, the errno: `if (!h) puts(h.error().message());`.
// Copying a handle is copying one uint64_t: cheap to capture in a callback.
template <class Tag>
class basic_handle {
public:
    basic_handle() : bits_(failure_bits(error_code(errc::stale_handle))) {}
    // Explicit: `io_handle h = errc::ok;` must not compile into a handle
    // whose error() claims success. errc::ok itself becomes stale_handle.
    explicit basic_handle(error_code failure) : bits_(failure_bits(failure)) {}
    explicit basic_handle(errc failure) : bits_(failure_bits(error_code(failure))) {}

    // Generation 0 never names a live source, and slot 0xffff never exists.
    bool valid() const { return detail::slot_of(bits_) != 0xffffu && (bits_ >> 16) != 0; }
    explicit operator bool() const { return valid(); }
    // Why creation failed (with errno for errc::system); errc::ok for a
    // valid handle.
    error_code error() const {
        if (valid()) return error_code();
        if (detail::slot_of(bits_) != 0xffffu) return error_code(errc::stale_handle);
        return error_code(static_cast<errc>((bits_ >> 16) & 0xffu), static_cast<int>(bits_ >> 32));
    }
    uint64_t id() const { return bits_; }

    static basic_handle from_id(uint64_t id) {
        basic_handle h;
        h.bits_ = id;
        return h;
    }
    friend bool operator==(basic_handle a, basic_handle b) { return a.bits_ == b.bits_; }
    friend bool operator!=(basic_handle a, basic_handle b) { return a.bits_ != b.bits_; }

private:
    // slot 0xffff, the errc in bits 16..23, errno in bits 32..63.
    static uint64_t failure_bits(error_code e) {
        errc why = e.code() == errc::ok ? errc::stale_handle : e.code();
        return static_cast<uint64_t>(static_cast<uint32_t>(e.sys())) << 32 |
               static_cast<uint64_t>(static_cast<unsigned char>(why)) << 16 | 0xffffu;
    }

    uint64_t bits_;
};

typedef basic_handle<struct io_tag> io_handle;
typedef basic_handle<struct timer_tag> timer_handle;
typedef basic_handle<struct signal_tag> signal_handle;
typedef basic_handle<struct child_tag> child_handle;

// How full a table is, and how full it ever was since it was made: size
// capacities from `high_water` measured in a real run.
struct table_stats {
    size_t used;
    size_t capacity;
    size_t high_water;
};

namespace detail {

// slot_pool's invariant checks (is the slot live, or retired, as the call
// requires?), written outside the class template so that assert's strings
// exist once in a program rather than once per capacity and check.
inline void check_slot(bool slot_state_as_expected) {
    MICROLOOP_ASSERT(slot_state_as_expected);
    (void)slot_state_as_expected;
}

// Every slot free, generation 0, slot 0 handed out first. Not a template:
// one copy serves the pools of every capacity.
MICROLOOP_DETAIL_NOINLINE inline void init_slots(uint64_t* gen, uint16_t* free, size_t slots) {
    for (size_t i = 0; i < slots; ++i) {
        free[i] = static_cast<uint16_t>(slots - 1 - i);
        gen[i] = 0;
    }
}

// slot_pool::acquire() for every capacity: not a template, so a build that
// optimises for size has one copy in a program; inlined otherwise.
MICROLOOP_DETAIL_HOT_INLINE uint64_t acquire_slot(uint64_t* gen, const uint16_t* free, uint16_t& nfree, uint16_t& live,
                                                  uint16_t& high_water, size_t n, size_t spare) {
    if (live == n || nfree == 0) return 0;
    const uint16_t slot = free[--nfree];
    uint64_t g = (gen[slot] >> 1) + 1;
    if (g > (uint64_t(1) << 48) - 1) g = 1; // 0 never names a live source
    gen[slot] = g << 1 | 1u;
    ++live;
    // high_water: as in_use(), the live ones or more while retired slots
    // wait to be recycled beyond the spares.
    const size_t held = n + spare - nfree, beyond = held > spare ? held - spare : 0;
    const size_t used = beyond > live ? beyond : live;
    if (used > high_water) high_water = static_cast<uint16_t>(used);
    return (g << 16) | slot;
}

// Free-slot stack plus a generation per slot. O(1) acquire, release, lookup.
// N slots may be live at once. Spare extra slots let a table whose callback
// removes its own source take a new one at once, in that callback: the
// removed source's slot stays out of use until its callback has returned
// (its closure is still running), but no longer counts against N. A table of
// N always holds N. A slot retired and not yet recycled beyond the spares (a
// continuation taken out and still alive) is in use: full() and stats() count
// it, since acquire() cannot hand it out.
//
// N is at most 65,533 for every table: slot numbers are 16 bits, 0xffff
// names no slot, and a loop's tables have one spare (a larger N is a
// static_assert, whatever the table).
template <size_t N, size_t Spare = 0>
class slot_pool {
public:
    static const size_t slots = N + Spare;
    static_assert(N <= 65533 && slots > 0 && slots < 0xffff, "microloop: a capacity must be at most 65533");
    static const uint16_t none = 0xffff;
    static const uint64_t max_generation = (uint64_t(1) << 48) - 1;

    slot_pool() : nfree_(static_cast<uint16_t>(slots)), live_(0), high_water_(0) { init_slots(gen_, free_, slots); }

    // A fresh handle id, or 0 when N are live.
    uint64_t acquire() { return acquire_slot(gen_, free_, nfree_, live_, high_water_, N, Spare); }
    void release(uint16_t slot) {
        retire(slot);
        recycle(slot);
    }
    // Release in two steps: retire() makes the slot's handles stale at once
    // and frees its place among the N; recycle() lets the slot be handed out
    // again (deferred while the slot's callback is still running).
    void retire(uint16_t slot) {
        check_slot(slot < slots && (gen_[slot] & 1u));
        gen_[slot] &= ~uint64_t(1);
        --live_;
    }
    void recycle(uint16_t slot) {
        check_slot(slot < slots && nfree_ < slots && !(gen_[slot] & 1u));
        free_[nfree_++] = slot;
    }
    // Undo retire() for a slot not yet recycled: the same handles are live
    // again. False (nothing changes) when N are live.
    bool revive(uint16_t slot) {
        check_slot(slot < slots && !(gen_[slot] & 1u));
        if (live_ == N) return false;
        gen_[slot] |= 1u;
        ++live_;
        note_high_water();
        return true;
    }
    // The slot a retired (not live) handle names, or `none`: for revive().
    uint16_t lookup_retired(uint64_t id) const {
        const uint16_t slot = slot_of(id);
        if (slot >= slots || (id >> 16) == 0 || gen_[slot] != (id >> 16) << 1) return none;
        return slot;
    }
    // The slot a live handle names, or `none`.
    uint16_t lookup(uint64_t id) const {
        const uint16_t slot = slot_of(id);
        if (slot >= slots || gen_[slot] != ((id >> 16) << 1 | 1u)) return none;
        return slot;
    }
    uint64_t id_of(uint16_t slot) const { return (gen_[slot] >> 1) << 16 | slot; }
    bool live(uint16_t slot) const { return (gen_[slot] & 1u) != 0; }
    // Live sources (handles that name a slot).
    size_t used() const { return live_; }
    // Of the N, those acquire() cannot hand out: the live ones, or more when
    // retired slots wait to be recycled beyond the spares.
    size_t in_use() const {
        const size_t held = slots - nfree_; // live, or retired and not recycled
        const size_t beyond = held > Spare ? held - Spare : 0;
        return beyond > live_ ? beyond : live_;
    }
    bool full() const { return in_use() == N; }
    table_stats stats() const {
        table_stats s = {in_use(), N, high_water_};
        return s;
    }

private:
    friend struct test_access;

    void note_high_water() {
        const size_t n = in_use();
        if (n > high_water_) high_water_ = static_cast<uint16_t>(n);
    }

    uint64_t gen_[slots]; // generation << 1 | live
    uint16_t free_[slots];
    uint16_t nfree_;
    uint16_t live_, high_water_;
};

template <size_t N, size_t S> const size_t slot_pool<N, S>::slots;
template <size_t N, size_t S> const uint16_t slot_pool<N, S>::none;
template <size_t N, size_t S> const uint64_t slot_pool<N, S>::max_generation;

// One running callback: a record on the stack of the dispatch that calls it,
// linked to the record of the callback it runs inside (a callback that
// calls poll() nests an iteration, whose callbacks nest their records).
struct running_frame {
    running_frame* outer;
    uint16_t slot;  // 0xffff: none yet
    bool released;  // its source was removed meanwhile: freed when the frame ends
};

// Which slots' callbacks are running right now, innermost first. Removing a
// source from inside its own callback (or from a callback nested in it)
// makes its handles stale at once but frees the callback's storage, and lets
// the slot be handed out again, only when the outermost frame running it
// ends (the closure is still executing). Every table whose callbacks may
// remove their own source keeps one, and gives its pool a spare slot (see
// slot_pool).
class running_slot {
public:
    running_slot() : top_(nullptr) {}

    // A frame on the caller's stack begins; end() it (also if the callback
    // throws) before it goes out of scope.
    void begin(running_frame& f, uint16_t slot) {
        f.outer = top_;
        f.slot = slot;
        f.released = false;
        top_ = &f;
    }
    // Release `slot` of `pool`, whose callback is `cb`: now, or deferred to
    // the end of the outermost frame running it.
    template <class Pool, class Callback>
    void release(Pool& pool, Callback& cb, uint16_t slot) {
        if (running_frame* f = find(slot)) {
            pool.retire(slot);
            f->released = true;
            return;
        }
        cb.reset();
        pool.release(slot);
    }
    // Whether `slot` is running and has been released meanwhile (it is
    // retired, not yet recycled), and to take that release back.
    bool released(uint16_t slot) const {
        const running_frame* f = find(slot);
        return f && f->released;
    }
    void keep(uint16_t slot) {
        if (running_frame* f = find(slot)) f->released = false;
    }
    // Frame f, the innermost, ends: true if its slot was released while it
    // ran, which is freed now.
    template <class Pool, class Callback>
    bool end(running_frame& f, Pool& pool, Callback& cb) {
        top_ = f.outer;
        if (!f.released) return false;
        cb.reset();
        pool.recycle(f.slot);
        return true;
    }

private:
    // The outermost frame running `slot`, or null. Frames nest a few deep at
    // most; this runs on removals, never per event.
    running_frame* find(uint16_t slot) const {
        running_frame* found = nullptr;
        for (running_frame* f = top_; f; f = f->outer)
            if (f->slot == slot) found = f;
        return found;
    }

    running_frame* top_;
};

} // namespace detail
} // namespace microloop

#endif // MICROLOOP_HANDLE_HPP
