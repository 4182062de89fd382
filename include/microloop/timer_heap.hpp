// SPDX-License-Identifier: MIT
// microloop/timer_heap.hpp - the order in which a loop's timers fire: a
// 4-ary min-heap on (deadline, arming order), one entry at most per timer
// slot, with lazy re-arms and cancels. The loop keeps the timers themselves
// (callbacks, periods, handles); this keeps only when each fires.
#ifndef MICROLOOP_TIMER_HEAP_HPP
#define MICROLOOP_TIMER_HEAP_HPP

#include <stddef.h>
#include <stdint.h>

#include "config.hpp"

namespace microloop {
namespace detail {

// Slots: the timer table's slot count. Every timer slot has a key (its
// timer's deadline and arming order as last armed) and at most one heap
// entry. The entry's key may be behind: a re-arm to a later deadline writes
// only the slot's key, and a cancel only frees the slot in the loop's pool,
// leaving its entry as a tombstone (the entry of a slot with no live timer).
// The heap stays ordered by its entries' keys, each at or before its timer's
// real one, so a top whose key is current is the real first; a stale top is
// re-keyed and sifted down, a tombstone dropped, when it is looked at
// (settle()). A tombstone never fires and is reused by the next timer of its
// slot.
template <size_t Slots>
class timer_heap {
public:
    // 16 bytes: four siblings fill one 64-byte cache line. The key
    // (deadline, seq) orders the heap.
    struct entry {
        int64_t deadline;
        uint32_t seq; // arming order: equal deadlines fire first-armed first
        uint16_t slot;
    };

    timer_heap() : size_(0), seq_(0), seq_mark_(0) {
        for (size_t i = 0; i < Slots; ++i) keys_[i].pos = no_pos; // (seq is read only through pos)
        // Entry 1 (the first of the root's children) on a 64-byte boundary,
        // when the storage's alignment allows it.
        const uintptr_t first = reinterpret_cast<uintptr_t>(&store_[1]);
        const uintptr_t skip = (64u - first % 64u) % 64u / sizeof(entry);
        heap_ = store_ + (skip <= 3u ? skip : 0u);
    }
    timer_heap(const timer_heap&) = delete; // heap_ points into the object
    timer_heap& operator=(const timer_heap&) = delete;

    // Arms `slot`'s timer at `deadline`, as a new arming (after every timer
    // armed before it at the same deadline).
    void arm(uint16_t slot, int64_t deadline);
    // A repeating timer fired: its next deadline, as a new arming. Its entry
    // stays where it is, stale, until settle() re-keys it (or a re-arm from
    // its callback reuses it).
    void advance(uint16_t slot, int64_t deadline) {
        const uint32_t seq = next_seq(); // first: renumbering moves entries
        keys_[slot].deadline = deadline;
        keys_[slot].seq = seq;
    }
    // Brings the top up to date; `timers.live(slot)` says which slots hold
    // a timer (the loop's slot pool).
    template <class Pool>
    void settle(const Pool& timers);

    bool empty() const { return size_ == 0; }
    // The first entry: after settle(), the first timer to fire.
    const entry& top() const { return heap_[0]; }
    // The deadline `slot`'s timer was last armed at.
    int64_t deadline(uint16_t slot) const { return keys_[slot].deadline; }

    // The timer pass: timers armed from now on (by the pass's callbacks)
    // wait for the next pass.
    void begin_pass() { seq_mark_ = seq_; }
    // The settled top is due at `now` and was armed before the pass began.
    bool top_due(int64_t now) const { return size_ > 0 && heap_[0].deadline <= now && heap_[0].seq < seq_mark_; }

private:
    friend struct test_access;
    static const uint16_t no_pos = 0xffff;
    // One entry at most per slot: the armed timers and the tombstones of
    // cancelled ones.
    static const size_t cap = Slots;
    // A slot's timer as it was last armed, and where its heap entry is. 16 bytes.
    struct key {
        int64_t deadline;
        uint32_t seq; // the last arming's
        uint16_t pos; // the heap entry, or no_pos
    };

    void place(uint32_t pos, const entry& e) {
        heap_[pos] = e;
        keys_[e.slot].pos = static_cast<uint16_t>(pos);
    }
    static bool less(const entry& a, const entry& b) {
        return a.deadline < b.deadline || (a.deadline == b.deadline && a.seq < b.seq);
    }
    uint32_t next_seq() {
        if (seq_ == UINT32_MAX) renumber_seqs();
        return seq_++;
    }
    void renumber_seqs();
    void sift(uint32_t at, entry e);

    key keys_[Slots];
    // The 4-ary heap, libev's layout: the children of entry i are 4i+1..4i+4,
    // and heap_ starts up to three entries into store_ so that each group
    // of four siblings shares one cache line: a sift reads one line per level.
    entry store_[cap + 3];
    entry* heap_; // set once by the constructor; the heap never moves
    uint16_t size_;
    // Arming order. Timers armed while the timer pass runs have a seq at or
    // above seq_mark_ and wait for the next pass. Before seq_ could wrap,
    // the armed timers are renumbered 0..n-1 in order, so no comparison
    // ever meets a wrapped counter (renumber_seqs()).
    uint32_t seq_;
    uint32_t seq_mark_;
};

template <size_t Slots> const uint16_t timer_heap<Slots>::no_pos;
template <size_t Slots> const size_t timer_heap<Slots>::cap;

// Arms `slot`'s timer at `deadline` with a fresh seq, as a new arming. An
// entry already in the heap (the timer's own, or the tombstone of the slot's
// last timer) is kept: moved up if the new key is earlier, else left as it
// is, stale, for settle(). O(1) for a re-arm to a later deadline.
template <size_t Slots>
MICROLOOP_DETAIL_HOT_INLINE void timer_heap<Slots>::arm(uint16_t slot, int64_t deadline) {
    const uint32_t seq = next_seq(); // first: renumbering moves entries
    key& k = keys_[slot];
    k.deadline = deadline;
    k.seq = seq;
    uint32_t at = k.pos;
    if (at == no_pos) {
        if (size_ >= cap) return; // never true: one entry per slot
        at = size_++;
    } else if (deadline >= heap_[at].deadline) {
        return; // its key is earlier than the new one: the heap stays ordered
    }
    entry e = {deadline, seq, slot};
    sift(at, e);
}

// Moves `e` from `at` up or down to where it belongs and stores it:
// O(log n). The heap is 4-ary (as libev's): half the depth of a binary heap,
// so an entry moves through half as many levels, and siblings sit next to
// each other in memory.
template <size_t Slots>
void timer_heap<Slots>::sift(uint32_t at, entry e) {
    const uint32_t pos = at;
    while (at > 0) {
        uint32_t parent = (at - 1u) / 4u;
        if (!less(e, heap_[parent])) break;
        place(at, heap_[parent]);
        at = parent;
    }
    // Moved up: smaller than what it passed, so than their children.
    // size_ never exceeds the capacity; the clamp tells the optimiser so
    // (gcc -O2 warns of out-of-bounds reads with capacities below 3).
    const uint32_t size = at != pos ? 0u : size_ < cap ? size_ : static_cast<uint32_t>(cap);
    for (;;) {
        uint32_t first = 4u * at + 1u;
        if (first >= size) break;
        uint32_t best = first;
        if (size - first >= 4u) { // all four siblings: two pairs, then their winners
            const uint32_t a = less(heap_[first + 1u], heap_[first]) ? first + 1u : first;
            const uint32_t b = less(heap_[first + 3u], heap_[first + 2u]) ? first + 3u : first + 2u;
            best = less(heap_[b], heap_[a]) ? b : a;
        } else {
            for (uint32_t c = first + 1u; c < size; ++c)
                if (less(heap_[c], heap_[best])) best = c;
        }
        if (!less(heap_[best], e)) break;
        place(at, heap_[best]);
        at = best;
    }
    place(at, e);
}

// Brings the top up to date: while its key is behind its timer's, it is
// re-keyed and sifted down, or dropped if its slot holds no live timer (a
// tombstone, or a one-shot that fired).
template <size_t Slots>
template <class Pool>
void timer_heap<Slots>::settle(const Pool& timers) {
    while (size_ > 0) {
        const uint16_t slot = heap_[0].slot;
        key& k = keys_[slot];
        const bool live = timers.live(slot);
        if (live && heap_[0].seq == k.seq) return;
        entry e = {k.deadline, k.seq, slot};
        if (!live) { // the last entry takes its place
            k.pos = no_pos;
            if (--size_ == 0) return;
            e = heap_[size_];
        }
        sift(0, e);
    }
}

// seq_ is about to wrap (after 2^32 armings): give the armed timers the
// numbers 0..n-1 in their arming order, move the mark with them, and rebuild
// the heap. O(n log n), once per 4 billion armings. Deadlines and the order
// of equal deadlines are unchanged; no comparison ever sees a wrapped value.
// Every entry gets its slot's key first (a tombstone's, later or not, is as
// good as its own: the heap is rebuilt).
template <size_t Slots>
void timer_heap<Slots>::renumber_seqs() {
    const uint32_t n = size_ < cap ? size_ : static_cast<uint32_t>(cap);
    for (uint32_t i = 0; i < n; ++i) {
        const key& k = keys_[heap_[i].slot];
        heap_[i].deadline = k.deadline;
        heap_[i].seq = k.seq;
    }
    // Heapsort on seq alone, in place (no allocation): a max-heap, then
    // repeatedly the largest to the end.
    struct by_seq {
        static void sift_down(entry* a, uint32_t at, uint32_t size) {
            entry e = a[at];
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
        entry top = heap_[0];
        heap_[0] = heap_[end - 1u];
        heap_[end - 1u] = top;
        by_seq::sift_down(heap_, 0, end - 1u);
    }
    // Sorted by seq is not yet a heap by deadline: renumber and insert the
    // entries again, one by one (sift also records every position).
    uint32_t mark = 0;
    for (uint32_t i = 0; i < n; ++i) {
        entry e = heap_[i];
        if (e.seq < seq_mark_) mark = i + 1u;
        e.seq = keys_[e.slot].seq = i;
        size_ = static_cast<uint16_t>(i + 1u);
        sift(i, e);
    }
    seq_mark_ = mark;
    seq_ = n;
}

} // namespace detail
} // namespace microloop

#endif // MICROLOOP_TIMER_HEAP_HPP
