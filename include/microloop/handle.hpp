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

// A handle is 32 bits: generation << 16 | slot. Generation 0 never names a
// live source, so a failed creation returns a handle whose low bits hold the
// reason instead: `if (!h) puts(h.error().message());`. A handle kept after
// its source is gone (and the slot reused) no longer matches the slot's
// generation and is refused with errc::stale_handle. The generation is 16
// bits: a handle would be mistaken only after the same slot was reused 32767
// times while the stale handle was kept.
template <class Tag>
class basic_handle {
public:
    basic_handle() : bits_(static_cast<uint32_t>(errc::stale_handle)) {}
    basic_handle(errc failure) : bits_(static_cast<uint32_t>(failure)) {}

    bool valid() const { return (bits_ >> 16) != 0; }
    explicit operator bool() const { return valid(); }
    // Why creation failed; errc::ok for a valid handle.
    error_code error() const { return valid() ? error_code() : error_code(static_cast<errc>(bits_ & 0xffu)); }
    uint32_t id() const { return bits_; }

    static basic_handle from_id(uint32_t id) { basic_handle h; h.bits_ = id; return h; }
    friend bool operator==(basic_handle a, basic_handle b) { return a.bits_ == b.bits_; }
    friend bool operator!=(basic_handle a, basic_handle b) { return a.bits_ != b.bits_; }

private:
    uint32_t bits_;
};

typedef basic_handle<struct io_tag> io_handle;
typedef basic_handle<struct timer_tag> timer_handle;

namespace detail {

// Free-slot stack plus a generation per slot. O(1) acquire, release, lookup.
// The generation is bumped on acquire and again on release, so a handle
// stops matching the moment its slot is released.
template <size_t N>
class slot_pool {
    static_assert(N > 0 && N < 0xffff, "capacity must be between 1 and 65534");

public:
    static const uint16_t none = 0xffff;

    slot_pool() : nfree_(static_cast<uint16_t>(N)) {
        for (size_t i = 0; i < N; ++i) {
            free_[i] = static_cast<uint16_t>(N - 1 - i); // hand out slot 0 first
            gen_[i] = 0;
        }
    }

    // A fresh handle id, or 0 when full.
    uint32_t acquire() {
        if (nfree_ == 0) return 0;
        uint16_t slot = free_[--nfree_];
        bump(slot);
        return static_cast<uint32_t>(gen_[slot]) << 16 | slot;
    }
    void release(uint16_t slot) {
        retire(slot);
        recycle(slot);
    }
    // Release in two steps: retire() makes the slot's handles stale at once;
    // recycle() lets the slot be handed out again (used while the slot's
    // callback is still running).
    void retire(uint16_t slot) {
        MICROLOOP_ASSERT(slot < N && (gen_[slot] & 1u));
        bump(slot);
    }
    void recycle(uint16_t slot) {
        MICROLOOP_ASSERT(slot < N && nfree_ < N);
        free_[nfree_++] = slot;
    }
    // The slot a live handle names, or `none`.
    uint16_t lookup(uint32_t id) const {
        uint32_t slot = id & 0xffffu, gen = id >> 16;
        if (slot >= N || gen == 0 || gen_[slot] != gen || !(gen & 1u)) return none;
        return static_cast<uint16_t>(slot);
    }
    uint32_t id_of(uint16_t slot) const { return static_cast<uint32_t>(gen_[slot]) << 16 | slot; }
    size_t used() const { return N - nfree_; }
    bool full() const { return nfree_ == 0; }

private:
    // Live slots have odd generations, free ones even, so a live handle's
    // generation is never 0 (0 marks an error handle). Wraps by design.
    void bump(uint16_t slot) { gen_[slot] = static_cast<uint16_t>(gen_[slot] + 1u); }

    uint16_t free_[N];
    uint16_t gen_[N];
    uint16_t nfree_;
};

template <size_t N> const uint16_t slot_pool<N>::none;

// Which slot's callback is running right now. Removing that source from
// inside its own callback makes its handles stale at once but frees the
// callback's storage only when it returns (the closure is still executing).
// Every table whose callbacks may remove their own source keeps one.
class running_slot {
public:
    running_slot() : slot_(none), released_(false) {}

    void begin(uint16_t slot) { slot_ = slot; }
    // Release `slot` of `pool`, whose callback is `cb`: now, or deferred to
    // end() if that callback is the one running.
    template <class Pool, class Callback>
    void release(Pool& pool, Callback& cb, uint16_t slot) {
        if (slot == slot_) {
            pool.retire(slot);
            released_ = true;
            return;
        }
        cb.reset();
        pool.release(slot);
    }
    // The callback returned; true if it had removed its own source, which is
    // freed now.
    template <class Pool, class Callback>
    bool end(Pool& pool, Callback& cb) {
        uint16_t slot = slot_;
        slot_ = none;
        if (!released_) return false;
        released_ = false;
        cb.reset();
        pool.recycle(slot);
        return true;
    }

private:
    enum { none = 0xffff }; // no slot: nothing is running
    uint16_t slot_;
    bool released_;
};

} // namespace detail
} // namespace microloop

#endif // MICROLOOP_HANDLE_HPP
