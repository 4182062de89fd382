// SPDX-License-Identifier: MIT
// microloop/backend/select.hpp - how a loop waits for its fds: select(), on
// three master fd_sets that watch(), modify() and unwatch() edit and each
// wait copies. The loop core talks to its backend through a few calls:
//
//     add(fd, slot) / remove(fd) / set(fd, was, is)   an fd's watcher and interest
//     watched(fd) / slot(fd)                           which watcher has an fd
//     wait(ready, ns) / dispatch(core, ready, n)       wait, then hand back what is ready
//     report_closed(core)                              after EBADF: fds closed behind its back
//     replace_wake_fd(old, now)                        after_fork()'s new wake-up fd
//
// Events are the loop's readable, writable and priority: bits 0, 1 and 2,
// the read, write and except sets (loop.hpp checks it). The backend owns the
// fd -> watcher table; the core owns the watchers.
#ifndef MICROLOOP_BACKEND_SELECT_HPP
#define MICROLOOP_BACKEND_SELECT_HPP

#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/select.h>
#include <time.h>

#include <type_traits>

#include "../config.hpp"
#include "../error.hpp"
#include "../loop_base.hpp" // detail::narrow

namespace microloop {
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

// Slots: the loop's fd watcher slots. Core: the loop, which the dispatch
// calls back (a friend of the loop, so that these calls are inlined into
// its iteration and cost nothing over a loop with select() written in):
//     core.io_ready(slot, fd, events)           a ready fd, looked up now
//     core.begin_readers(f) / end_readers(f)    the lean scan begins, ends (f: a
//                                               Core::reader_frame on its stack)
//     core.reader_ready<Stall>(f, slot, fd, t0) a ready reader, on the lean scan
//     core.io_changed()                         the watchers changed meanwhile
//     core.io_closed(slot, fd)                  after EBADF: report fd if closed
//     core.stall_on()                           stall detection is on
template <size_t Slots>
class select_backend {
public:
    typedef typename std::conditional<(Slots < 255), uint8_t, uint16_t>::type slot_t;
    static const slot_t no_slot = static_cast<slot_t>(~0u);

    explicit select_backend(int wake_fd) : wake_fd_(wake_fd), maxfd_(-1), words_(fdset_is_words()), wake_seen_(false) {
        for (int i = 0; i < 3; ++i) {
            FD_ZERO(&master_[i]);
            nwatch_[i] = 0;
        }
        memset(watched_, 0, sizeof watched_);
        for (size_t i = 0; i < FD_SETSIZE; ++i) fd_slot_[i] = no_slot;
        if (wake_fd >= 0) {
            FD_SET(wake_fd, &master_[rd]);
            maxfd_ = wake_fd;
        }
    }

    // ---- registration -------------------------------------------------------
    // Whether an fd (>= 0) can be watched here: the core checks before
    // anything touches an fd_set (FD_SET beyond FD_SETSIZE writes past the
    // end of the set), else errc::fd_out_of_range.
    static bool fits(int fd) { return fd < FD_SETSIZE; }
    // The watcher slot of `fd` (which fits()), or 0xffff.
    uint16_t slot(int fd) const { return fd_slot_[fd] == no_slot ? uint16_t(0xffff) : narrow<uint16_t>(fd_slot_[fd]); }
    // A watcher has `fd` (which fits()), or it is the wake-up fd.
    bool watched(int fd) const { return fd_slot_[fd] != no_slot || fd == wake_fd_; }
    void add(int fd, uint16_t slot) {
        fd_slot_[fd] = static_cast<slot_t>(slot);
        set_bit(watched_, fd);
        if (fd > maxfd_) maxfd_ = fd;
    }
    // After set(fd, interest, 0).
    void remove(int fd) {
        fd_slot_[fd] = no_slot;
        clear_bit(watched_, fd);
        if (fd == maxfd_) recompute_maxfd();
    }
    // The watcher of `fd` asked for `was`, asks for `is` now.
    void set(int fd, unsigned was_events, unsigned is_events) {
        static const unsigned bit[3] = {1u, 2u, 4u}; // readable, writable, priority
        for (int s = 0; s < 3; ++s) {
            bool was = (was_events & bit[s]) != 0, is = (is_events & bit[s]) != 0;
            if (was == is) continue;
            if (is) {
                FD_SET(fd, &master_[s]);
                ++nwatch_[s];
            } else {
                FD_CLR(fd, &master_[s]);
                --nwatch_[s];
            }
        }
    }
    // The wake-up fd is `now` instead of `old` (either may be -1).
    void replace_wake_fd(int old, int now) {
        if (old >= 0) FD_CLR(old, &master_[rd]);
        wake_fd_ = now;
        if (now >= 0) FD_SET(now, &master_[rd]);
        recompute_maxfd();
    }

    // ---- waiting ----------------------------------------------------------------
    // What one select() reported; lives on the iteration's stack. The sets
    // are apart from the rest, whose address select() never sees: the
    // compiler need not reload it after the call.
    struct ready_sets {
        fd_set* ptr[3]; // into sets, or NULL for a set nobody watches
        int nfds;
    };
    typedef fd_set fd_sets[3];

    // select() on copies of the masters, for at most timeout() nanoseconds
    // (-1: no limit, 0: do not wait): select()'s result (-1 with errno on
    // failure).
    template <class Timeout>
    MICROLOOP_DETAIL_ALWAYS_INLINE int wait(fd_sets& set, ready_sets& r, Timeout timeout) {
        r.nfds = maxfd_ + 1;
        // Only the words select() will look at are copied. The read set always
        // holds the wake-up fd; the others are usually empty and passed as NULL.
        const size_t bytes =
            (static_cast<size_t>(r.nfds) + word_bits - 1) / word_bits * sizeof(unsigned long);
        r.ptr[rd] = &set[rd];
        r.ptr[wr] = nwatch_[wr] ? &set[wr] : nullptr;
        r.ptr[ex] = nwatch_[ex] ? &set[ex] : nullptr;
        if (words_) {
            memcpy(r.ptr[rd], &master_[rd], bytes);
            if (r.ptr[wr]) memcpy(r.ptr[wr], &master_[wr], bytes);
            if (r.ptr[ex]) memcpy(r.ptr[ex], &master_[ex], bytes);
        } else {
            for (int s = 0; s < 3; ++s)
                if (r.ptr[s]) *r.ptr[s] = master_[s];
        }
        const int64_t wait_ns = timeout(); // after the copies, as few values as possible live across them
        struct timeval tv, *tvp = nullptr;
        if (wait_ns == 0) { // poll(), or a timer already due: no divisions
            tv.tv_sec = 0;
            tv.tv_usec = 0;
            tvp = &tv;
        } else if (wait_ns > 0) {
            // Rounded up: waking before the deadline would only spin.
            int64_t us = (wait_ns + 999) / 1000;
            const int64_t max_s = 0x7fffffff; // fits a 32-bit time_t
            tv.tv_sec = narrow<time_t>(us / 1000000 > max_s ? max_s : us / 1000000);
            tv.tv_usec = narrow<suseconds_t>(us % 1000000);
            tvp = &tv;
        }
        return select(r.nfds, r.ptr[rd], r.ptr[wr], r.ptr[ex], tvp);
    }

    // select() failed with EBADF: some watched fd was closed behind our back.
    // Each watcher's fd is offered to core.io_closed(), which reports and
    // disables it if it is closed. False if no watcher owns a bad fd (the
    // wake-up fd itself was closed).
    template <class Core>
    MICROLOOP_DETAIL_NOINLINE bool report_closed(Core& core) {
        bool found = false;
        for (int fd = 0; fd <= maxfd_; ++fd) {
            slot_t s = fd_slot_[fd];
            if (s != no_slot && core.io_closed(s, fd)) found = true;
        }
        return found;
    }

    // Calls back the watchers of the n > 0 ready fds; true if the wake-up fd
    // was ready (the core drains it after the watchers ran).
    template <class Core>
    bool dispatch(Core& core, ready_sets& r, int n);

private:
    enum { rd = 0, wr = 1, ex = 2 };

    void recompute_maxfd() {
        maxfd_ = wake_fd_;
        for (int w = fd_words - 1; w >= 0; --w) {
            if (watched_[w]) {
                int fd = w * word_bits + (word_bits - 1 - __builtin_clzl(watched_[w]));
                if (fd > maxfd_) maxfd_ = fd;
                return;
            }
        }
    }
    template <class Core>
    void scan(Core& core, const unsigned long* r, const unsigned long* w, const unsigned long* e, int nwords,
              int nready);
    template <bool Stall, class Core>
    bool scan_readers(Core& core, const unsigned long* r, int nwords, int& i, unsigned long& bits, int& nready);
    template <class Core>
    void ready_fd(Core& core, int fd, unsigned ready) {
        slot_t s = fd_slot_[fd];
        if (s != no_slot) {
            core.io_ready(s, fd, ready);
            return;
        }
        if (fd == wake_fd_) wake_seen_ = true; // drained after the watchers; else unwatched meanwhile
    }

    // fd sets: the masters are edited by set() and copied for each select();
    // watched_ is our own bitmap of fds with a watcher.
    fd_set master_[3];
    unsigned long watched_[fd_words];
    slot_t fd_slot_[FD_SETSIZE];
    int wake_fd_;
    int maxfd_;
    unsigned nwatch_[3]; // watchers interested in each set: an empty set is passed as NULL
    bool words_;         // fdset_is_words()
    bool wake_seen_;     // the wake-up fd was ready in this scan
};

template <size_t Slots> const typename select_backend<Slots>::slot_t select_backend<Slots>::no_slot;

template <size_t Slots>
template <class Core>
MICROLOOP_DETAIL_ALWAYS_INLINE bool select_backend<Slots>::dispatch(Core& core, ready_sets& rs, int n) {
    const int nwords = static_cast<int>((static_cast<unsigned>(rs.nfds) + word_bits - 1) / word_bits);
    const unsigned long* sets[3];
    unsigned long words[3][fd_words];
    if (words_) {
        for (int s = 0; s < 3; ++s) sets[s] = reinterpret_cast<const unsigned long*>(rs.ptr[s]); // NULL stays NULL
    } else {
        // Portable path: translate the result sets into words through
        // FD_ISSET, for the fds we watch only.
        memset(words, 0, sizeof words);
        for (int fd = 0; fd < rs.nfds; ++fd) {
            if (!test_bit(watched_, fd) && fd != wake_fd_) continue;
            for (int s = 0; s < 3; ++s)
                if (rs.ptr[s] && FD_ISSET(fd, rs.ptr[s])) set_bit(words[s], fd);
        }
        for (int s = 0; s < 3; ++s) sets[s] = rs.ptr[s] ? words[s] : nullptr;
    }
    scan(core, sets[rd], sets[wr], sets[ex], nwords, n); // one call site: inlined
    const bool wake = wake_seen_;
    wake_seen_ = false;
    return wake;
}

// Ready fds are found a word at a time. nready is select()'s count of set
// bits: the scan stops when it is used up. Inlined into its one caller, the
// loop's iteration: with one ready fd per iteration, the call would cost more
// than the scan.
//
// Two paths, chosen once per iteration. The lean one serves the common case,
// only readers and no stall detection: until a callback changes the fd
// watchers, every ready bit is a watcher that existed at select() time with
// its read interest (the masters held exactly those), so it is called without
// looking anything else up. The first watch(), modify() or unwatch() (or a
// nested iteration) makes core.io_changed() true, and the rest of the scan
// continues on the careful path, which looks every fd up again (ready_fd()).
template <size_t Slots>
template <class Core>
MICROLOOP_DETAIL_ALWAYS_INLINE void select_backend<Slots>::scan(Core& core, const unsigned long* r,
                                                                 const unsigned long* w, const unsigned long* e,
                                                                 int nwords, int nready) {
    int i = 0;
    unsigned long bits = 0; // the careful path resumes with what is left of word i
    bool resume = false;
#if defined(__OPTIMIZE_SIZE__)
    // Built for size: one lean scan, without stall detection; with it on,
    // the careful path serves (it times each callback through invoke()).
    if (!w && !e && !core.stall_on()) {
        if (scan_readers<false>(core, r, nwords, i, bits, nready))
#else
    if (!w && !e) {
        if (!core.stall_on() ? scan_readers<false>(core, r, nwords, i, bits, nready)
                             : scan_readers<true>(core, r, nwords, i, bits, nready))
#endif
            i = nwords; // done
        else
            resume = true;
    }
    // An unused set reads as empty. Not const: zeros in .bss cost no text,
    // in .rodata they would.
    static unsigned long none[fd_words] = {};
    if (!w) w = none;
    if (!e) e = none;
    for (; i < nwords && nready > 0; ++i) {
        for (bits = resume ? bits : (r[i] | w[i] | e[i]), resume = false; bits; bits &= bits - 1) {
            int bit = __builtin_ctzl(bits);
            unsigned long rb = (r[i] >> bit) & 1ul, wb = (w[i] >> bit) & 1ul, eb = (e[i] >> bit) & 1ul;
            nready -= static_cast<int>(rb + wb + eb);
            ready_fd(core, i * word_bits + bit, (rb ? 1u : 0u) | (wb ? 2u : 0u) | (eb ? 4u : 0u));
        }
    }
}

// The lean path: true when the scan is complete; false when a callback
// changed the fd watchers, with i, bits and nready where the careful path
// takes over (the fd that was running is done). With stall detection on
// (Stall), the core reads the clock once per callback, after it (see
// reader_ready()).
template <size_t Slots>
template <bool Stall, class Core>
MICROLOOP_DETAIL_ALWAYS_INLINE bool select_backend<Slots>::scan_readers(Core& core, const unsigned long* r,
                                                                         int nwords, int& i, unsigned long& bits,
                                                                         int& nready) {
    // One record of the running callback for the whole scan, on this stack
    // (a nested iteration's scan has its own), ended once, when the scan
    // ends or a callback throws: while nothing changes, no callback has
    // removed its own watcher and there is nothing to free.
    typename Core::reader_frame frame;
    int64_t t0 = core.template begin_readers<Stall>(frame);
    auto done = on_scope_exit([&core, &frame] { core.end_readers(frame); });
    for (; i < nwords && nready > 0; ++i) {
        for (bits = r[i]; bits;) {
            const int fd = i * word_bits + __builtin_ctzl(bits);
            bits &= bits - 1;
            --nready;
            const slot_t s = fd_slot_[fd];
            if (s == no_slot) { // the wake-up fd: drained after the watchers
                if (fd == wake_fd_) wake_seen_ = true;
                continue;
            }
            core.template reader_ready<Stall>(frame, s, fd, t0);
            if (core.io_changed()) return false;
        }
    }
    return true;
}

} // namespace detail

// basic_loop's Backend argument for select(): fds below FD_SETSIZE.
struct use_select : detail::backend_tag<detail::select_backend> {};

} // namespace microloop

#endif // MICROLOOP_BACKEND_SELECT_HPP
