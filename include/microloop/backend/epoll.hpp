// SPDX-License-Identifier: MIT
// microloop/backend/epoll.hpp - how a loop waits for its fds with epoll:
// level-triggered, no fd ceiling (any fd the process may open), no heap. The
// same calls as backend/select.hpp (see there), over one epoll instance per
// loop and a fixed-size fd -> watcher map sized by the loop's fd capacity.
//
// What epoll does not tell, and how it is found out:
// - It drops a registration silently when the last fd of its file is
//   closed, so "closed behind the loop's back" never shows up as an error of
//   the wait (select()'s EBADF). It is found at the next epoll_ctl() on the
//   fd (EBADF, or ENOENT when the number names another file now), and, when
//   a wait returns nothing (a timeout, or poll() with nothing ready), by a
//   sweep that re-checks a couple of registrations (EPOLL_CTL_MOD) in turn
//   per idle wake-up, and one every 64 waits however busy the loop is. The watcher then gets io_error once and is disabled,
//   as with select(). The wake-up fd is checked so before a wait that may
//   sleep after one that found nothing (or the first): an idle loop never
//   goes to sleep on a wake-up fd that can no longer wake it (the wait
//   fails with EBADF, as select()'s does).
// - It keeps the registration while another fd (a dup(), a forked child's
//   copy) holds the file: the file's events keep arriving with the data it
//   was registered with. Every registration carries its watcher's slot and
//   a generation (bumped by each add and remove), so such an event never
//   reaches a newer watcher of the same fd number; once one arrives after an
//   EPOLL_CTL_DEL that failed (the fd was closed first), the instance is
//   made again from the table (as libev does), which is the only way to
//   drop a registration whose fd is gone.
// - An instance is shared with forked children. A child's epoll_ctl() would
//   edit the parent's registrations, so a forked child (counted by a
//   pthread_atfork() handler, one load per check) makes its own instance
//   before it touches the kernel, and after_fork() makes another with the
//   new wake-up fd. The parent never sees what a child does.
// - Regular files (and fds without poll support) are refused with EPERM;
//   select() calls them always ready, and so does this backend: such a
//   watcher is called in every iteration with its readable/writable
//   interest, and the wait does not sleep while one is active.
#ifndef MICROLOOP_BACKEND_EPOLL_HPP
#define MICROLOOP_BACKEND_EPOLL_HPP

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <type_traits>

#include "../config.hpp"
#include "../loop_base.hpp" // detail::fork_count, detail::narrow
#include "../callback.hpp" // on_scope_exit

namespace microloop {
namespace detail {

// The smallest power of two >= n (n >= 1).
constexpr size_t epoll_map_size(size_t n, size_t p = 1) { return p >= n ? p : epoll_map_size(n, p * 2); }

template <size_t Slots>
class epoll_backend {
public:
    typedef typename std::conditional<(Slots < 255), uint8_t, uint16_t>::type slot_t;
    static const slot_t no_slot = static_cast<slot_t>(~0u);

    explicit epoll_backend(int wake_fd)
        : epfd_(-1), wake_fd_(wake_fd), errno_(0), epoch_(0), nlost_(0), nalways_(0), cursor_(0), tick_(0), orphans_(false),
          remake_(false), wake_lost_(false), wake_seen_(false), idle_(true), pwait2_(true) {
        for (size_t i = 0; i < map_size; ++i) map_[i] = no_slot;
        for (size_t i = 0; i < Slots; ++i) {
            st_[i].fd = -1;
            st_[i].gen = 0;
            st_[i].want = st_[i].kernel = st_[i].flags = 0;
        }
        fork_count<>::watch(); // the fork count of loop_base.hpp: a child makes its own instance
        remake();
    }
    ~epoll_backend() {
        if (epfd_ >= 0) close(epfd_);
    }

    // ---- registration -------------------------------------------------------
    // Any fd >= 0 the process can open.
    static bool fits(int) { return true; }
    bool watched(int fd) const { return find(fd) != no_slot || fd == wake_fd_; }
    // The watcher slot of `fd`, or 0xffff.
    uint16_t slot(int fd) const {
        const slot_t s = find(fd);
        return s == no_slot ? uint16_t(0xffff) : narrow<uint16_t>(s);
    }
    void add(int fd, uint16_t slot) {
        state& s = st_[slot];
        s.fd = fd;
        ++s.gen;
        s.want = s.kernel = s.flags = 0;
        size_t i = bucket(fd);
        while (map_[i] != no_slot) i = (i + 1) & (map_size - 1);
        map_[i] = static_cast<slot_t>(slot);
    }
    // After set(fd, interest, 0).
    void remove(int fd) {
        size_t i = bucket(fd);
        while (map_[i] != no_slot && st_[map_[i]].fd != fd) i = (i + 1) & (map_size - 1);
        if (map_[i] == no_slot) return;
        state& s = st_[map_[i]];
        if (s.flags & lost) --nlost_;
        s.fd = -1;
        ++s.gen; // its events still in this iteration's batch are dropped
        s.flags = 0;
        // Backward-shift deletion: the entries after it that probed past
        // this bucket move up, so no tombstones are needed.
        for (size_t j = (i + 1) & (map_size - 1); map_[j] != no_slot; j = (j + 1) & (map_size - 1)) {
            const size_t home = bucket(st_[map_[j]].fd);
            if (((j - home) & (map_size - 1)) >= ((j - i) & (map_size - 1))) {
                map_[i] = map_[j];
                i = j;
            }
        }
        map_[i] = no_slot;
    }
    void set(int fd, unsigned, unsigned is_events) {
        const slot_t s = find(fd);
        if (s != no_slot) apply(s, is_events);
    }
    // after_fork()'s new wake-up fd: a new instance for this process, every
    // watcher registered again.
    void replace_wake_fd(int, int now) {
        wake_fd_ = now;
        wake_lost_ = false;
        remake();
    }

    // ---- waiting ----------------------------------------------------------------
    // Ready events land in an array on the iteration's stack, one per
    // possible registration (the watchers and the wake-up fd), at most 256:
    // more are returned by the next wait (level-triggered, nothing is lost).
    enum { max_events = Slots + 1 < 256 ? Slots + 1 : 256 };
    typedef struct epoll_event fd_sets[max_events];
    struct ready_sets {
        struct epoll_event* ev;
        int n; // what epoll returned
    };

    template <class Timeout>
    MICROLOOP_DETAIL_ALWAYS_INLINE int wait(fd_sets& set, ready_sets& r, Timeout timeout) {
        r.ev = set;
        r.n = 0;
        if (MICROLOOP_DETAIL_UNLIKELY(epoch_ != fork_count<>::forks || remake_))
            remake();
        if (MICROLOOP_DETAIL_UNLIKELY(epfd_ < 0 || wake_lost_)) {
            errno = epfd_ < 0 ? errno_ : EBADF;
            return -1;
        }
        // Watchers to report without the kernel: do not sleep.
        const bool now = (nlost_ | nalways_) != 0;
        const int64_t ns = now ? 0 : timeout();
        // About to sleep, and idle before (or the first wait): never on a
        // wake-up fd epoll has dropped (closed behind our back), which
        // nothing could wake. One epoll_ctl() per such wait, none while
        // fds keep being ready.
        if (ns != 0 && idle_ && wake_fd_ >= 0 && !wake_alive()) {
            errno = EBADF;
            return -1;
        }
        int n = pwait(set, ns);
        if (n < 0) {
            if (errno == EBADF || errno == EINVAL) { // the instance's fd closed or replaced behind our back
                remake_ = true;
                errno = EBADF;
            }
            return -1;
        }
        r.n = n;
        idle_ = n == 0;
        if (MICROLOOP_DETAIL_UNLIKELY((n == 0 && !now) || (++tick_ & 63u) == 0)) sweep(n == 0 ? 2 : 1);
        return n + ((nlost_ | nalways_) != 0 ? 1 : 0);
    }

    // The wait failed with EBADF: report the watchers whose registration was
    // lost; true if any was, or if the instance could be made again.
    template <class Core>
    MICROLOOP_DETAIL_NOINLINE bool report_closed(Core& core) {
        bool found = false;
        if (remake_) found = remake() && !wake_lost_;
        if (nlost_ && report_lost(core)) found = true;
        return found;
    }

    template <class Core>
    bool dispatch(Core& core, ready_sets& r, int n);

private:
    enum : uint8_t { lost = 1, always = 2 }; // state::flags
    enum : uint32_t { wake_data = 0xffffffffu };
    enum { map_size = epoll_map_size(2 * Slots < 8 ? 8 : 2 * Slots) };
    struct state {
        int fd;        // -1: free
        uint32_t gen;  // in every registration's data, with the slot
        uint8_t want;  // readable | writable | priority
        uint8_t kernel; // what the instance has (epoll bits >> 0, see to_epoll), 0: not registered
        uint8_t flags;
    };

    static size_t bucket(int fd) {
        return narrow<size_t>((static_cast<uint32_t>(fd) * 2654435769u) >> 8) & (map_size - 1); // 32-bit: size_t is uint32_t
    }
    slot_t find(int fd) const {
        for (size_t i = bucket(fd);; i = (i + 1) & (map_size - 1)) {
            const slot_t s = map_[i];
            if (s == no_slot || st_[s].fd == fd) return s;
        }
    }
    static uint32_t to_epoll(unsigned ev) {
        return ((ev & 1u) ? static_cast<uint32_t>(EPOLLIN) : 0u) | ((ev & 2u) ? static_cast<uint32_t>(EPOLLOUT) : 0u) |
               ((ev & 4u) ? static_cast<uint32_t>(EPOLLPRI) : 0u);
    }
    // What EPOLL_CTL_MOD of a registered fd says when its file is gone:
    // EBADF, closed; ENOENT, the number names another file now; EPERM, one
    // that epoll cannot watch (a regular file, /dev/null).
    static bool gone(int e) { return e == EBADF || e == ENOENT || e == EPERM; }
    static uint64_t data_of(size_t slot, uint32_t gen) { return static_cast<uint64_t>(gen) << 32 | slot; }

    int ctl(int op, int fd, uint32_t events, uint64_t data) {
        struct epoll_event e;
        e.events = events;
        e.data.u64 = data;
        return epoll_ctl(epfd_, op, fd, &e);
    }
    void set_flag(state& s, uint8_t f, bool on) {
        if (((s.flags & f) != 0) == on) return;
        s.flags = static_cast<uint8_t>(on ? s.flags | f : s.flags & ~f);
        if (f == lost) nlost_ += on ? 1u : ~0u;
    }
    // Always-ready watchers (EPERM) that want readable or writable.
    void count_always() {
        nalways_ = 0;
        for (size_t i = 0; i < Slots; ++i)
            if ((st_[i].flags & always) && (st_[i].want & 3u)) ++nalways_;
    }
    MICROLOOP_DETAIL_NOINLINE void apply(size_t slot, unsigned events);
    MICROLOOP_DETAIL_NOINLINE bool remake();
    MICROLOOP_DETAIL_NOINLINE void sweep(size_t budget);
    MICROLOOP_DETAIL_NOINLINE bool wake_alive();
    MICROLOOP_DETAIL_NOINLINE void lose(state& s);
    template <class Core>
    MICROLOOP_DETAIL_NOINLINE bool report_lost(Core& core);
    template <class Core>
    MICROLOOP_DETAIL_NOINLINE void report_always(Core& core);
    template <class Core>
    void ready(Core& core, const struct epoll_event& e);
    MICROLOOP_DETAIL_NOINLINE void stale() {
        if (orphans_) remake_ = true; // an fd closed before its EPOLL_CTL_DEL: its registration lives on
    }

    // epoll_pwait2() (nanoseconds, Linux 5.11) where the kernel has it, else
    // epoll_wait() with the timeout rounded up to a millisecond.
    int pwait(struct epoll_event* ev, int64_t ns) {
#ifdef __NR_epoll_pwait2
        if (pwait2_) {
            struct {
                long long sec, nsec; // struct __kernel_timespec: 64-bit on every target
            } ts, *tsp = nullptr;
            if (ns >= 0) {
                ts.sec = ns / 1000000000;
                ts.nsec = ns % 1000000000;
                tsp = &ts;
            }
            const long n = syscall(__NR_epoll_pwait2, epfd_, ev, static_cast<int>(max_events), tsp, nullptr, 0);
            if (n >= 0 || errno != ENOSYS) return static_cast<int>(n);
            pwait2_ = false;
        }
#endif
        int ms = -1;
        if (ns >= 0) {
            const int64_t m = (ns + 999999) / 1000000;
            ms = m > 0x7fffffff ? 0x7fffffff : static_cast<int>(m);
        }
        return epoll_wait(epfd_, ev, static_cast<int>(max_events), ms);
    }

    int epfd_;
    int wake_fd_;
    int errno_;        // why the instance could not be made
    unsigned epoch_;   // fork_count when it was made
    unsigned nlost_;   // watchers with `lost`: reported by the next dispatch
    unsigned nalways_; // see count_always()
    size_t cursor_;    // the sweep's next slot
    unsigned tick_;    // waits: every 64th re-checks one registration, busy or not
    bool orphans_;     // an EPOLL_CTL_DEL failed since the instance was made
    bool remake_;      // make the instance again before the next wait
    bool wake_lost_;   // the wake-up fd's registration is gone
    bool wake_seen_;
    bool idle_;        // the last wait returned nothing (or there was none)
    bool pwait2_;
    state st_[Slots];
    slot_t map_[map_size]; // open addressing on the fd, linear probing; keys in st_
};

template <size_t Slots> const typename epoll_backend<Slots>::slot_t epoll_backend<Slots>::no_slot;

// The watcher in `slot` wants `events`: the instance is told (paused
// watchers are removed from it: epoll reports hang-ups and errors even for
// an empty interest, which level-triggered would repeat forever).
template <size_t Slots>
void epoll_backend<Slots>::apply(size_t slot, unsigned events) {
    if (epoch_ != fork_count<>::forks) remake(); // a forked child: its own instance first
    state& s = st_[slot];
    s.want = static_cast<uint8_t>(events);
    if (s.flags & always) {
        count_always();
        return;
    }
    const uint8_t kev = static_cast<uint8_t>(events & 7u);
    if (kev == s.kernel || epfd_ < 0) return;
    const int op = kev == 0 ? EPOLL_CTL_DEL : s.kernel == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD;
    const uint64_t data = data_of(slot, s.gen);
    int r = ctl(op, s.fd, to_epoll(kev), data);
    if (r != 0 && op == EPOLL_CTL_ADD && errno == EEXIST) // a registration left by a closed fd of this file: ours now
        r = ctl(EPOLL_CTL_MOD, s.fd, to_epoll(kev), data);
    if (r == 0) {
        s.kernel = kev;
        set_flag(s, lost, false);
        return;
    }
    const int e = errno;
    s.kernel = 0;
    if (op == EPOLL_CTL_DEL) {
        if (e == EBADF) orphans_ = true; // closed first: if a dup holds the file, its registration lives on
        return;
    }
    if (op == EPOLL_CTL_ADD && e == EPERM) { // a regular file: always ready, as select() says
        s.flags |= always;
        count_always();
        return;
    }
    // EBADF: closed; ENOENT: closed, the number reused; ENOMEM/ENOSPC: the
    // kernel's limit on watches. Reported as io_error by the next dispatch.
    lose(s);
}

// The watcher's registration is gone, or lives on under a closed fd (a dup
// holds its file): its events from now on are stale, and the first one
// makes the instance again, which drops it.
template <size_t Slots>
void epoll_backend<Slots>::lose(state& s) {
    s.kernel = 0;
    ++s.gen;
    orphans_ = true;
    set_flag(s, lost, true);
}

// A new instance with every registration: at construction, in a forked
// child, after_fork(), and when an orphaned registration or a lost instance
// fd showed up. False if epoll_create1() failed (the waits fail with its
// errno).
template <size_t Slots>
bool epoll_backend<Slots>::remake() {
    epoch_ = fork_count<>::forks;
    remake_ = false;
    orphans_ = false;
    const int ep = epoll_create1(EPOLL_CLOEXEC);
    if (epfd_ >= 0) close(epfd_); // a forked child's copy: the parent keeps its own
    epfd_ = ep;
    if (ep < 0) {
        errno_ = errno;
        return false;
    }
    if (wake_fd_ >= 0 && ctl(EPOLL_CTL_ADD, wake_fd_, EPOLLIN, data_of(wake_data, 0)) != 0) wake_lost_ = true;
    for (size_t i = 0; i < Slots; ++i) {
        state& s = st_[i];
        if (s.fd < 0) continue;
        s.kernel = 0;
        s.flags = static_cast<uint8_t>(s.flags & ~always);
        ++s.gen; // what the old instance had returned is stale
        apply(i, s.want);
    }
    count_always();
    return true;
}

// Nothing was ready: check two registrations, in turn, that epoll has not
// dropped them (a closed fd); the next dispatch reports those it has.
template <size_t Slots>
void epoll_backend<Slots>::sweep(size_t budget) {
    for (size_t checked = 0, tries = 0; checked < budget && tries < Slots; ++tries) {
        const size_t i = cursor_;
        cursor_ = cursor_ + 1 >= Slots ? 0 : cursor_ + 1;
        state& s = st_[i];
        if (s.fd < 0 || s.kernel == 0) continue;
        ++checked;
        if (ctl(EPOLL_CTL_MOD, s.fd, to_epoll(s.kernel), data_of(i, s.gen)) != 0 && gone(errno)) lose(s);
    }
}

// Whether the wake-up fd is still registered.
template <size_t Slots>
bool epoll_backend<Slots>::wake_alive() {
    if (ctl(EPOLL_CTL_MOD, wake_fd_, EPOLLIN, data_of(wake_data, 0)) == 0 || !gone(errno)) return true;
    wake_lost_ = true;
    return false;
}

// io_error for each lost registration, through core.io_lost() (false: the
// watcher was added in this iteration, it waits for the next).
template <size_t Slots>
template <class Core>
bool epoll_backend<Slots>::report_lost(Core& core) {
    bool any = false;
    for (size_t i = 0; i < Slots && nlost_; ++i) {
        state& s = st_[i];
        if (!(s.flags & lost)) continue;
        set_flag(s, lost, false);
        const uint32_t gen = s.gen;
        const bool paused = s.want == 0;
        if (!core.io_lost(static_cast<uint16_t>(i), s.fd)) {
            if (s.gen == gen) set_flag(s, lost, true);
        } else if (!paused) {
            any = true;
        }
    }
    return any;
}

template <size_t Slots>
template <class Core>
void epoll_backend<Slots>::report_always(Core& core) {
    for (size_t i = 0; i < Slots; ++i) {
        const state& s = st_[i];
        if ((s.flags & always) && (s.want & 3u)) core.io_ready(static_cast<uint16_t>(i), s.fd, s.want & 3u);
    }
}

// One ready event, its watcher looked up now: dropped if the watcher was
// removed (or replaced) since the wait.
template <size_t Slots>
template <class Core>
MICROLOOP_DETAIL_ALWAYS_INLINE void epoll_backend<Slots>::ready(Core& core, const struct epoll_event& e) {
    const uint32_t slot = static_cast<uint32_t>(e.data.u64);
    if (slot == wake_data) {
        wake_seen_ = true; // drained after the watchers
        return;
    }
    if (slot >= Slots || st_[slot].gen != static_cast<uint32_t>(e.data.u64 >> 32) || st_[slot].fd < 0) {
        stale();
        return;
    }
    const uint32_t ev = e.events;
    unsigned ready = ((ev & EPOLLIN) ? 1u : 0u) | ((ev & EPOLLOUT) ? 2u : 0u) | ((ev & EPOLLPRI) ? 4u : 0u);
    // A hang-up or an error: select() calls the fd readable and writable.
    // A watcher of priority alone hears it too, or the wait would spin.
    if (ev & (EPOLLERR | EPOLLHUP)) ready |= st_[slot].want;
    core.io_ready(static_cast<uint16_t>(slot), st_[slot].fd, ready);
}

// As select's: a lean path for plain readers while no callback changes the
// watchers (each event a watcher that had its read interest at the wait),
// then the careful path, which looks each event's watcher up.
template <size_t Slots>
template <class Core>
MICROLOOP_DETAIL_ALWAYS_INLINE bool epoll_backend<Slots>::dispatch(Core& core, ready_sets& r, int) {
    int i = 0;
    const int n = r.n;
    if (n > 0) {
        const bool stall = core.stall_on();
        typename Core::reader_frame frame;
        int64_t t0 = stall ? core.template begin_readers<true>(frame) : core.template begin_readers<false>(frame);
        auto done = on_scope_exit([&core, &frame] { core.end_readers(frame); });
        for (; i < n; ++i) {
            const struct epoll_event& e = r.ev[i];
            const uint32_t slot = static_cast<uint32_t>(e.data.u64);
            if (e.events != EPOLLIN || slot >= Slots) break;
            const state& s = st_[slot];
            if (s.gen != static_cast<uint32_t>(e.data.u64 >> 32) || s.fd < 0) break;
            if (stall)
                core.template reader_ready<true>(frame, static_cast<uint16_t>(slot), s.fd, t0);
            else
                core.template reader_ready<false>(frame, static_cast<uint16_t>(slot), s.fd, t0);
            if (core.io_changed()) {
                ++i;
                break;
            }
        }
    }
    for (; i < n; ++i) ready(core, r.ev[i]);
    if (MICROLOOP_DETAIL_UNLIKELY((nlost_ | nalways_) != 0)) {
        if (nlost_) report_lost(core);
        if (nalways_) report_always(core);
    }
    const bool wake = wake_seen_;
    wake_seen_ = false;
    return wake;
}

} // namespace detail

// basic_loop's Backend argument for epoll: any fd (see epoll_loop<>).
struct use_epoll : detail::backend_tag<detail::epoll_backend> {};

} // namespace microloop

#endif // MICROLOOP_BACKEND_EPOLL_HPP
