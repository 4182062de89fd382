// SPDX-License-Identifier: MIT
// microloop/aio/common.hpp - internal to the AIO module (include
// <microloop/aio.hpp>): what the front, aio<N, Engine>, and both engines
// share. The public types (aio_handle, aio_event, aio_stats), the page-cache
// fast path, and aio_core<N>: the bookkeeping every engine keeps the same
// way, the table of operations in flight. Each operation holds a slot of
// the table (its handle) and a callback, and sits in the in-flight list, in
// submission order, from its submission until its callback runs; the
// engines keep what they need to run it beside that, indexed alike.
#ifndef MICROLOOP_AIO_COMMON_HPP
#define MICROLOOP_AIO_COMMON_HPP

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/syscall.h> // SYS_preadv2
#include <sys/types.h>
#include <sys/uio.h> // struct iovec, RWF_NOWAIT
#include <unistd.h>

#include <utility>

#include "../callback.hpp"
#include "../config.hpp"
#include "../error.hpp"
#include "../handle.hpp"
#include "../loop_base.hpp"

// 1 (the default): both engines first try each read in the loop's thread,
// with preadv2(RWF_NOWAIT), which copies the data if all of it is in the
// page cache and otherwise returns at once instead of waiting for the disk;
// a read served so is called back at the loop's next iteration without a
// thread (stats().inline_reads counts them). Anything else (not all of it
// cached, a short count, a pipe, an fd opened O_DIRECT) goes to the engine's
// threads or the libc's AIO as before, and so does a read of a file that
// refuses RWF_NOWAIT (procfs); a kernel without preadv2 (ENOSYS) turns it
// off for the module. 0: every operation goes to the threads or the libc.
// Off by itself where the libc's headers lack RWF_NOWAIT or SYS_preadv2
// (Linux 4.14 and glibc 2.27 or musl 1.1.20 have both).
#ifndef MICROLOOP_AIO_NOWAIT
#define MICROLOOP_AIO_NOWAIT 1
#endif
// x32 passes a syscall's 64-bit offset in one register, which syscall()'s
// long arguments cannot hold: no fast path there.
#if MICROLOOP_AIO_NOWAIT && defined(RWF_NOWAIT) && defined(SYS_preadv2) && \
    !(defined(__x86_64__) && defined(__ILP32__))
#define MICROLOOP_DETAIL_AIO_NOWAIT 1
#else
#define MICROLOOP_DETAIL_AIO_NOWAIT 0
#endif

namespace microloop {

typedef basic_handle<struct aio_tag> aio_handle;

// Given to an AIO callback, in the loop's thread, exactly once per
// operation that was submitted.
struct aio_event {
    aio_handle handle;
    ssize_t result;   // bytes read or written (0 at end of file, 0 for fsync); -1 on failure
    error_code error; // ok; errc::canceled (sys() == ECANCELED); errc::system with errno
};

typedef detail::inplace_callback<void(aio_event)> aio_callback;

// An AIO module's stats(): its table (operations in flight now, at most N,
// the most ever at once) and how many reads it served in the loop's thread
// from the page cache, without a thread (MICROLOOP_AIO_NOWAIT).
struct aio_stats : table_stats {
    uint64_t inline_reads;
};

namespace detail {

// What a module is asked to do, the same for both engines.
struct aio_ops {
    enum op_kind : unsigned char { op_read, op_write, op_fsync, op_fdatasync };
};

// The read, in the loop's thread, if it cannot block: true when all len
// bytes came from the page cache. RWF_NOWAIT makes the kernel return EAGAIN
// (or a short count) instead of waiting for the disk or a lock. A short
// count may be the end of the file or a partly cached range: the engine's
// usual path finds out. On an fd opened O_DIRECT the read would wait for the
// device, RWF_NOWAIT or not: never tried there. `enabled` is the module's:
// cleared for good only when the kernel has no preadv2 at all.
inline bool aio_read_nowait(int fd, void* buf, size_t len, off_t offset, bool& enabled) {
#if MICROLOOP_DETAIL_AIO_NOWAIT
    if (!enabled) return false;
#ifdef O_DIRECT
    const int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || (flags & O_DIRECT) != 0) return false;
#endif
    struct iovec iov;
    iov.iov_base = buf;
    iov.iov_len = len;
    // The raw system call, not the libc's preadv2(), which older glibc and
    // musl lack. The offset goes in two longs, low half first, on 32- and
    // 64-bit targets alike (a 64-bit kernel ignores the high one).
    const uint64_t off = static_cast<uint64_t>(offset);
    const long r = syscall(SYS_preadv2, static_cast<long>(fd), &iov, 1L, static_cast<long>(off & ULONG_MAX),
                           static_cast<long>(off >> 32), static_cast<long>(RWF_NOWAIT));
    if (r >= 0) return static_cast<size_t>(r) == len;
    // EAGAIN: not all cached; ESPIPE: a pipe or socket; EOPNOTSUPP: a file
    // (procfs, some filesystems) or a kernel that refuses RWF_NOWAIT; the
    // rest is for the usual path to report. Each of these costs one system
    // call next to a worker's hand-off, and says nothing of other files.
    // Only a kernel without preadv2 (ENOSYS) is never asked again.
    if (errno == ENOSYS) enabled = false;
    return false;
#else
    (void)fd;
    (void)buf;
    (void)len;
    (void)offset;
    (void)enabled;
    return false;
#endif
}

// What an aio<N, Engine> runs on: each engine's header specializes it
// (aio/thread_engine.hpp, aio/posix_engine.hpp). Each derives from
// aio_core<N> and gives the front the same few things: its constructor and
// destructor, submit(), cancel() and fd_of(slot).
template <size_t N, class Engine>
class aio_engine;

// The table every engine keeps: in the loop's thread only.
template <size_t N>
class aio_core {
public:
    aio_core(const aio_core&) = delete;
    aio_core& operator=(const aio_core&) = delete;

protected:
    typedef aio_ops::op_kind op_kind;
    static const uint16_t none = 0xffff;
    struct hook_type : loop_hook {
        aio_core* owner;
    };
    struct link {
        uint16_t next, prev; // the in-flight list, in submission order
        uint16_t callback;   // which of callbacks_ is this operation's
    };
    // An operation taken out of the list, its callback not yet run.
    struct retired {
        uint64_t id;
        uint16_t callback;
        uint16_t slot; // still taken until the callback returns, or none
    };

    // Attached to the loop, which calls on_wake after every wake-up and
    // on_fork in a forked child's after_fork().
    aio_core(loop_base& owner, void (*on_wake)(loop_hook*), void (*on_fork)(loop_hook*));
    ~aio_core() { loop_.detach(&hook_); }

    template <class Engine>
    static Engine& engine_of(loop_hook* h) {
        return static_cast<Engine&>(*static_cast<hook_type*>(h)->owner);
    }

    // The checks every submission passes, then a slot holding cb: the new
    // handle's id, or 0 with the reason in last_error_.
    template <class F>
    uint64_t admit(int fd, void* buf, size_t len, off_t offset, F&& cb);
    // A slot from admit() whose operation could not start: free again.
    void discard(uint16_t i) {
        callbacks_[links_[i].callback].reset();
        pool_.release(i);
    }
    // At the tail of the in-flight list: in flight until retire().
    void link_last(uint16_t i);
    // A read done at once from the page cache (MICROLOOP_AIO_NOWAIT).
    bool read_cached(int fd, void* buf, size_t len, off_t offset) {
        if (!aio_read_nowait(fd, buf, len, offset, nowait_)) return false;
        ++inline_reads_;
        return true;
    }
    // Out of the list and, when the spare callback storage can back it, out
    // of the table: the handle is stale and the slot free while the callback
    // runs (so it may submit again at capacity), the slot taking the spare
    // storage. The spare is the pass's, not each callback's: a callback that
    // runs inside another's nested poll() finds it taken, and keeps its slot
    // until it returns (for it the table is as full as before).
    retired retire(uint16_t i);
    // The callback of a retired operation: result, or err (an errno;
    // ECANCELED: canceled).
    void call_back(const retired& r, int fd, ssize_t result, int err);
    // A forked child's: the operations in flight are the parent's. Drops
    // them, their callbacks not called.
    void forget_all();
    aio_handle fail(errc why, int sys = 0) {
        last_error_ = error_code(why, sys);
        return aio_handle(last_error_);
    }

    loop_base& loop_;
    pid_t pid_; // in a forked child, the operations in flight are the parent's
    hook_type hook_;
    error_code setup_error_;
    error_code last_error_;
    bool nowait_; // reads are tried in the loop's thread first (MICROLOOP_AIO_NOWAIT)
    uint64_t inline_reads_;
    uint16_t head_, tail_; // operations in flight, oldest first
    uint16_t spare_;       // the callbacks_ entry no slot holds, or none while a callback runs from it
    slot_pool<N> pool_;
    link links_[N];
    // One callback more than slots: a finished operation's slot is free
    // again while its callback runs (so the callback can start the next
    // operation in it), and the callback runs from the spare storage.
    aio_callback callbacks_[N + 1];
};

template <size_t N>
const uint16_t aio_core<N>::none;

template <size_t N>
aio_core<N>::aio_core(loop_base& owner, void (*on_wake)(loop_hook*), void (*on_fork)(loop_hook*))
    : loop_(owner), pid_(getpid()), nowait_(MICROLOOP_DETAIL_AIO_NOWAIT != 0), inline_reads_(0), head_(none),
      tail_(none), spare_(static_cast<uint16_t>(N)) {
    hook_.on_wake = on_wake;
    hook_.on_fork = on_fork;
    hook_.active = 0;
    hook_.next = nullptr;
    hook_.owner = this;
    for (size_t i = 0; i < N; ++i) {
        links_[i].next = links_[i].prev = none;
        links_[i].callback = static_cast<uint16_t>(i);
    }
    loop_.attach(&hook_);
}

template <size_t N>
template <class F>
uint64_t aio_core<N>::admit(int fd, void* buf, size_t len, off_t offset, F&& cb) {
    if (setup_error_) last_error_ = setup_error_;
    else if (fd < 0) last_error_ = errc::bad_fd;
    else if (offset < 0 || len > static_cast<size_t>(SSIZE_MAX) || (buf == nullptr && len > 0))
        last_error_ = errc::bad_argument;
    else if (is_null_callable(cb)) last_error_ = errc::bad_argument;
    else if (const uint64_t id = pool_.acquire()) {
        callbacks_[links_[slot_of(id)].callback].emplace(std::forward<F>(cb));
        return id;
    } else {
        last_error_ = errc::table_full;
    }
    return 0;
}

template <size_t N>
void aio_core<N>::link_last(uint16_t i) {
    links_[i].next = none;
    links_[i].prev = tail_;
    if (tail_ != none) links_[tail_].next = i;
    else head_ = i;
    tail_ = i;
    ++hook_.active;
}

template <size_t N>
typename aio_core<N>::retired aio_core<N>::retire(uint16_t i) {
    link& l = links_[i];
    if (l.prev != none) links_[l.prev].next = l.next;
    else head_ = l.next;
    if (l.next != none) links_[l.next].prev = l.prev;
    else tail_ = l.prev;
    l.next = l.prev = none;
    --hook_.active;
    retired r = {pool_.id_of(i), l.callback, i};
    if (spare_ != none) {
        l.callback = spare_;
        spare_ = none; // until this callback returns
        r.slot = none;
        pool_.release(i);
    }
    return r;
}

template <size_t N>
void aio_core<N>::call_back(const retired& r, int fd, ssize_t result, int err) {
    aio_event ev;
    ev.handle = aio_handle::from_id(r.id);
    ev.result = err != 0 ? -1 : result;
    if (err == 0) ev.error = error_code();
    else if (err == ECANCELED) ev.error = error_code(errc::canceled, ECANCELED);
    else ev.error = error_code(errc::system, err);
    aio_callback& cb = callbacks_[r.callback];
    auto done = on_scope_exit([this, &cb, &r] { // also if it throws
        cb.reset();
        if (r.slot != none) pool_.release(r.slot); // it kept its own storage
        else spare_ = r.callback;
    });
    loop_.invoke(cb, source_kind::aio, r.id, fd, ev);
}

template <size_t N>
void aio_core<N>::forget_all() {
    for (uint16_t i = 0; i < N; ++i) {
        if (!pool_.live(i)) continue;
        links_[i].next = links_[i].prev = none;
        callbacks_[links_[i].callback].reset();
        pool_.release(i);
    }
    head_ = tail_ = none;
    hook_.active = 0;
    pid_ = getpid();
}

} // namespace detail
} // namespace microloop

#endif // MICROLOOP_AIO_COMMON_HPP
