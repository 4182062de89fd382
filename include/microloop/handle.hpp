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

// Free-slot stack plus a generation per slot. O(1) acquire, release, lookup.
// N slots may be live at once. Spare extra slots let a table whose callback
// removes its own source take a new one at once, in that callback: the
// removed source's slot stays out of use until its callback has returned
// (its closure is still running), but no longer counts against N. A table of
// N always holds N.
template <size_t N, size_t Spare = 0>
class slot_pool {
public:
    static const size_t slots = N + Spare;
    static_assert(slots > 0 && slots < 0xffff, "capacity must be at most 65533");
    static const uint16_t none = 0xffff;
    static const uint64_t max_generation = (uint64_t(1) << 48) - 1;

    slot_pool() : nfree_(static_cast<uint16_t>(slots)), live_(0), high_water_(0) {
        for (size_t i = 0; i < slots; ++i) {
            free_[i] = static_cast<uint16_t>(slots - 1 - i); // hand out slot 0 first
            gen_[i] = 0;
        }
    }

    // A fresh handle id, or 0 when N are live.
    uint64_t acquire() {
        if (live_ == N || nfree_ == 0) return 0;
        uint16_t slot = free_[--nfree_];
        uint64_t g = (gen_[slot] >> 1) + 1;
        if (g > max_generation) g = 1; // 0 never names a live source
        gen_[slot] = g << 1 | 1u;
        if (++live_ > high_water_) high_water_ = live_;
        return id_of(slot);
    }
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
        if (++live_ > high_water_) high_water_ = live_;
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
    size_t used() const { return live_; }
    bool full() const { return live_ == N; }
    table_stats stats() const {
        table_stats s = {live_, N, high_water_};
        return s;
    }

private:
    friend struct test_access;

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
