// SPDX-License-Identifier: MIT
// microloop/aio.hpp - disk reads, writes and fsyncs that do not block the
// loop, with completions delivered as loop callbacks.
//
// Opt-in: include <microloop/aio.hpp> (or define MICROLOOP_WITH_AIO before
// including microloop.hpp) and link with -pthread (and -lrt before glibc
// 2.34, for the POSIX engine). Programs that do not use it pay nothing.
//
//     microloop::loop<> loop;
//     microloop::aio<16> disk(loop);               // 16 operations in flight at most
//     static char buf[4096];
//     auto h = disk.read(fd, buf, sizeof buf, 0, [](microloop::aio_event ev) {
//         if (ev.error) printf("read: %s (%d)\n", ev.error.message(), ev.error.sys());
//         else printf("read %ld bytes\n", (long)ev.result);
//     });
//     if (!h) printf("submit: %s\n", h.error().message());
//     loop.run();                                   // runs until the read completes
//
// Two engines, one API: aio<N, Engine>.
//
// thread_aio_engine<Threads> (the default, Threads = MICROLOOP_AIO_THREADS,
// 4): the module starts Threads threads of its own (every signal blocked in
// them; stack size a constructor argument, MICROLOOP_AIO_STACK_SIZE) that
// run pread()/pwrite()/fsync()/fdatasync(). Operations on one fd run in
// parallel; an fsync waits for the operations submitted before it on its fd.
// Completions come back through a lock-free stack and one loop.wake(): no
// signal, no lock, no scan of what is in flight. A read whose data is all
// in the page cache is done in the loop's thread instead, without blocking
// (MICROLOOP_AIO_NOWAIT), and called back at the next iteration. See the
// implementation below for how cancel() and the ring work.
//
// posix_aio_engine: the libc's POSIX AIO, "the portable one the textbook
// describes" (a read all in the page cache is done in the loop's thread here
// too, as above). How completions wake the loop: each request asks for a signal
// on completion (SIGEV_SIGNAL, MICROLOOP_AIO_SIGNAL, SIGIO by default). The
// handler only calls wake() on the loops that have a POSIX AIO module; the
// loop then asks aio_error() about every operation in flight and calls back
// the finished ones. The signal says "look", not "which": that is why a
// coalesced or lost signal costs nothing as long as a later one arrives, and
// a standard (non-realtime) signal is never lost, only merged.
// Why not SIGEV_THREAD, which needs no signal number: glibc starts a new
// thread for every completion (a clone and a stack per I/O on a small board),
// the notify function may run after the module is gone, and glibc makes that
// thread from its own helper thread through an interposed malloc, which
// ThreadSanitizer cannot follow (it crashes). With a signal, nothing but the
// loop thread ever touches the module.
// glibc runs AIO on up to 20 helper threads of its own, each with a small
// stack, and requests on one descriptor one after another. aio_init() (GNU)
// changes the thread count; under ThreadSanitizer set aio_threads = 1 and a
// long aio_idle_time before the first request: TSan cannot follow threads
// that glibc's helper thread starts itself.
#ifndef MICROLOOP_AIO_HPP
#define MICROLOOP_AIO_HPP

#include <aio.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h> // SYS_preadv2
#include <sys/types.h>
#include <sys/uio.h> // struct iovec, RWF_NOWAIT
#include <unistd.h>

#include <atomic>
#include <utility>

#include "callback.hpp"
#include "config.hpp"
#include "detail/threads.hpp"
#include "error.hpp"
#include "handle.hpp"
#include "loop_base.hpp"
#include "signal.hpp" // detail::globals: the AIO signal is claimed like any watched signal

// The signal AIO completions are reported with. A standard signal is never
// lost (only merged, which is harmless here); a realtime one may be refused
// when the queue is full (RLIMIT_SIGPENDING). Once an AIO module exists, the
// signal belongs to AIO for the life of the process: on_signal() for it is
// refused with errc::already_watched (and an AIO module cannot start while
// the signal is watched).
#ifndef MICROLOOP_AIO_SIGNAL
#define MICROLOOP_AIO_SIGNAL SIGIO
#endif

// How many AIO modules may exist at once in the process (a few bytes each).
#ifndef MICROLOOP_AIO_MAX_MODULES
#define MICROLOOP_AIO_MAX_MODULES 8
#endif

// The threads of the default engine, thread_aio_engine<> (its parameter
// overrides this), and their stack size in bytes (0: the system's default,
// usually 8 MiB of address space of which a few KiB are touched).
#ifndef MICROLOOP_AIO_THREADS
#define MICROLOOP_AIO_THREADS 4
#endif
#ifndef MICROLOOP_AIO_STACK_SIZE
#define MICROLOOP_AIO_STACK_SIZE 0
#endif

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

// Process-wide: the signal handler and the loops it wakes. A template only so
// that its statics live in a header; they are constant-initialized, so the
// handler never meets them half-built.
template <class Unused = void>
struct aio_signal {
    static std::atomic<loop_base*> loops[MICROLOOP_AIO_MAX_MODULES];
    static std::atomic<int> running; // handlers running now, on any thread
    static std::atomic<int> state;   // 0: not installed, 1: being installed, 2: installed
    static struct sigaction previous;

    static void handler(int sig, siginfo_t* info, void* context) {
        running.fetch_add(1);
        for (int i = 0; i < MICROLOOP_AIO_MAX_MODULES; ++i) {
            loop_base* l = loops[i].load();
            if (l) l->wake(); // async-signal-safe, keeps errno
        }
        running.fetch_sub(1);
        // Someone else's handler for the same signal keeps working.
        if (previous.sa_flags & SA_SIGINFO) {
            if (previous.sa_sigaction) previous.sa_sigaction(sig, info, context);
        } else if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN) {
            previous.sa_handler(sig);
        }
    }

    // Installed once and never removed: a completion signal may still be
    // pending after the last module is gone, and the default action of SIGIO
    // would end the process.
    static error_code install() {
        for (;;) {
            int s = 0;
            if (state.compare_exchange_strong(s, 1)) {
                // The signal is claimed in the signal watchers' process-wide
                // table, for good: loop.on_signal(MICROLOOP_AIO_SIGNAL) is then
                // refused instead of silently taking completions away, and a
                // signal someone already watches is not taken from them.
                const void* nobody = nullptr;
                if (!globals::state[MICROLOOP_AIO_SIGNAL].owner.compare_exchange_strong(nobody, &state)) {
                    state.store(0);
                    return errc::already_watched;
                }
                struct sigaction sa;
                memset(&sa, 0, sizeof sa);
                sa.sa_sigaction = &handler;
                sa.sa_flags = SA_SIGINFO | SA_RESTART;
                sigemptyset(&sa.sa_mask);
                if (sigaction(MICROLOOP_AIO_SIGNAL, &sa, &previous) != 0) {
                    int e = errno;
                    globals::state[MICROLOOP_AIO_SIGNAL].owner.store(nullptr);
                    state.store(0);
                    return error_code(errc::system, e);
                }
                state.store(2);
                return error_code();
            }
            if (s == 2) return error_code();
            sched_yield(); // another thread is installing it right now
        }
    }
    static int add(loop_base* l) {
        for (int i = 0; i < MICROLOOP_AIO_MAX_MODULES; ++i) {
            loop_base* none = nullptr;
            if (loops[i].compare_exchange_strong(none, l)) return i;
        }
        return -1;
    }
    // After this returns no handler can still be using the loop.
    static void remove(int i) {
        loops[i].store(nullptr);
        while (running.load() != 0) sched_yield();
    }
};

template <class U> std::atomic<loop_base*> aio_signal<U>::loops[MICROLOOP_AIO_MAX_MODULES];
template <class U> std::atomic<int> aio_signal<U>::running(0);
template <class U> std::atomic<int> aio_signal<U>::state(0);
template <class U> struct sigaction aio_signal<U>::previous;

} // namespace detail

// The engines an aio<N, Engine> runs on (see the top of this file).
// Threads of its own, pread()/pwrite()/fsync() on them: the default.
template <size_t Threads = MICROLOOP_AIO_THREADS>
struct thread_aio_engine {
    static_assert(Threads >= 1 && Threads <= 64, "thread_aio_engine: 1 to 64 threads");
};
// The libc's POSIX AIO (aio_read() and friends), completions by a signal.
struct posix_aio_engine {};

// Up to N disk operations in flight on one loop. Construct it after the loop
// and destroy it before; use it from the loop's thread only. Each operation's
// buffer must stay valid until its callback has run (or the module is gone).
// Regular files and block devices are what it is for; on a pipe or socket a
// thread (the libc's, or the module's) blocks in read() until data comes.
template <size_t N, class Engine = thread_aio_engine<> >
class aio;

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

// The submitting calls, written once for both engines: each hands its
// operation to the module's submit(), which checks and queues it.
template <class Module>
class aio_calls {
public:
    // Read len bytes at offset into buf; cb(aio_event) when done, exactly
    // once, in the loop's thread. A failed submission returns an invalid
    // handle: errc::table_full, errc::bad_fd, errc::bad_argument, the
    // module's error(), or errc::system with its errno (last_error() keeps
    // it too).
    template <class F>
    aio_handle read(int fd, void* buf, size_t len, off_t offset, F&& cb) {
        return module().submit(aio_ops::op_read, fd, buf, len, offset, std::forward<F>(cb));
    }
    template <class F>
    aio_handle write(int fd, const void* buf, size_t len, off_t offset, F&& cb) {
        return module().submit(aio_ops::op_write, fd, const_cast<void*>(buf), len, offset, std::forward<F>(cb));
    }
    // Runs after every operation submitted before it on fd has finished (its
    // writes are on the disk), and is called back after them.
    template <class F>
    aio_handle fsync(int fd, F&& cb) {
        return module().submit(aio_ops::op_fsync, fd, nullptr, 0, 0, std::forward<F>(cb));
    }
    template <class F>
    aio_handle fdatasync(int fd, F&& cb) {
        return module().submit(aio_ops::op_fdatasync, fd, nullptr, 0, 0, std::forward<F>(cb));
    }

private:
    Module& module() { return static_cast<Module&>(*this); }
};

} // namespace detail

template <size_t N>
class aio<N, posix_aio_engine> : public detail::aio_calls<aio<N, posix_aio_engine> > {
    friend class detail::aio_calls<aio>;
    typedef detail::aio_ops::op_kind op_kind;

public:
    explicit aio(loop_base& owner);
    // Cancels what is in flight and waits for it (an operation the libc has
    // already started cannot be canceled, so this may wait for the disk, or
    // for data on a pipe); their callbacks are not called. Not from inside
    // one of this module's callbacks.
    ~aio();
    aio(const aio&) = delete;
    aio& operator=(const aio&) = delete;

    // read(), write(), fsync(), fdatasync(): see detail::aio_calls.

    // Ask for the operation to be canceled. Its callback still runs exactly
    // once: with errc::canceled if the cancel won, with the real result if
    // the operation had already started or finished. errc::stale_handle
    // once the callback has run.
    error_code cancel(aio_handle h);

    size_t in_flight() const { return hook_.active; }
    // The error of the last failed submission, with its errno.
    error_code last_error() const { return last_error_; }
    // Why the module could not start (the signal is watched, too many
    // modules), or ok; also returned by every submission.
    error_code error() const { return setup_error_; }
    // Operations in flight: now, at most N, and the most ever at once; the
    // reads served from the page cache in the loop's thread.
    aio_stats stats() const {
        aio_stats s;
        static_cast<table_stats&>(s) = pool_.stats();
        s.inline_reads = inline_reads_;
        return s;
    }
    // f(aio_handle, int fd) for every operation in flight, oldest first.
    template <class F>
    void for_each_in_flight(F&& f) const {
        for (uint16_t i = head_; i != none; i = slots_[i].next) f(aio_handle::from_id(pool_.id_of(i)), cbs_[i].aio_fildes);
    }

private:

    // The control blocks live in their own array: glibc's struct aiocb ends
    // in a zero-length array on 64-bit targets, which may not be a member of
    // another struct in ISO C++ (an array of them is fine).
    struct slot {
        uint16_t next, prev; // the in-flight list, in submission order
        uint16_t callback;   // which of callbacks_ is this operation's
        bool busy;
        bool sync;   // fsync or fdatasync: reported after what was submitted before it on its fd
        bool served; // a read done in the loop's thread (all of aio_nbytes), never given to the libc
    };
    static const uint16_t none = 0xffff;
    struct hook_type : loop_hook {
        aio* owner;
    };

    template <class F>
    aio_handle submit(op_kind op, int fd, void* buf, size_t len, off_t offset, F&& cb);
    static void on_wake(loop_hook* h) { static_cast<hook_type*>(h)->owner->complete(); }
    static void on_fork(loop_hook* h) { static_cast<hook_type*>(h)->owner->abandon(); }
    void abandon();
    void complete();
    void unlink(uint16_t i);
    bool libc_busy_on(int fd) const {
        for (uint16_t i = head_; i != none; i = slots_[i].next)
            if (!slots_[i].served && cbs_[i].aio_fildes == fd) return true;
        return false;
    }
    aio_handle fail(errc why, int sys = 0) {
        last_error_ = error_code(why, sys);
        return aio_handle(last_error_);
    }

    loop_base& loop_;
    pid_t pid_; // in a forked child, the operations in flight are the parent's
    hook_type hook_;
    int registered_; // index in the signal handler's table, or -1
    bool nowait_;    // reads are tried in the loop's thread first (MICROLOOP_AIO_NOWAIT)
    uint64_t inline_reads_;
    error_code setup_error_;
    error_code last_error_;
    uint16_t head_, tail_; // operations in flight, oldest first
    detail::slot_pool<N> pool_;
    struct aiocb cbs_[N];
    slot slots_[N];
    // One callback more than slots: a finished operation's slot is free
    // again while its callback runs (so the callback can start the next
    // operation in it), and the callback runs from the spare storage.
    aio_callback callbacks_[N + 1];
    uint16_t spare_;
};

// ============================================================================
// Implementation
// ============================================================================

template <size_t N>
aio<N, posix_aio_engine>::aio(loop_base& owner)
    : loop_(owner), pid_(getpid()), registered_(-1), nowait_(MICROLOOP_DETAIL_AIO_NOWAIT != 0), inline_reads_(0),
      head_(none), tail_(none), spare_(static_cast<uint16_t>(N)) {
    hook_.on_wake = &on_wake;
    hook_.on_fork = &on_fork;
    hook_.active = 0;
    hook_.next = nullptr;
    hook_.owner = this;
    for (size_t i = 0; i < N; ++i) {
        slots_[i].busy = false;
        slots_[i].sync = false;
        slots_[i].served = false;
        slots_[i].next = slots_[i].prev = none;
        slots_[i].callback = static_cast<uint16_t>(i);
    }
    setup_error_ = detail::aio_signal<>::install();
    if (!setup_error_) {
        registered_ = detail::aio_signal<>::add(&loop_);
        if (registered_ < 0) setup_error_ = errc::table_full;
    }
    // A thread that blocks the signal would never be interrupted by it; if
    // every thread did, completions would wait for some other wake-up.
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, MICROLOOP_AIO_SIGNAL);
    pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
    loop_.attach(&hook_);
}

template <size_t N>
aio<N, posix_aio_engine>::~aio() {
    // In a forked child that never called after_fork() the operations in
    // flight are the parent's: this process's libc knows nothing of them and
    // would wait forever.
    if (getpid() != pid_) abandon();
    // The libc writes into the aiocb and the buffer until aio_error() says
    // the operation is over: wait for that before the memory goes away.
    for (size_t i = 0; i < N; ++i)
        if (slots_[i].busy && !slots_[i].served) aio_cancel(cbs_[i].aio_fildes, &cbs_[i]);
    for (size_t i = 0; i < N; ++i) {
        if (!slots_[i].busy || slots_[i].served) continue;
        const struct aiocb* list[1] = {&cbs_[i]};
        while (aio_error(&cbs_[i]) == EINPROGRESS) aio_suspend(list, 1, nullptr); // EINTR: ask again
        aio_return(&cbs_[i]);
    }
    if (registered_ >= 0) detail::aio_signal<>::remove(registered_);
    loop_.detach(&hook_);
}

template <size_t N>
template <class F>
aio_handle aio<N, posix_aio_engine>::submit(op_kind op, int fd, void* buf, size_t len, off_t offset, F&& cb) {
    if (setup_error_) return fail(setup_error_.code(), setup_error_.sys());
    if (fd < 0) return fail(errc::bad_fd);
    if (offset < 0 || len > static_cast<size_t>(SSIZE_MAX) || (buf == nullptr && len > 0))
        return fail(errc::bad_argument);
    uint64_t id = pool_.acquire();
    if (id == 0) return fail(errc::table_full);
    uint16_t index = static_cast<uint16_t>(id & 0xffffu);
    slot& s = slots_[index];
    struct aiocb& ctl = cbs_[index];
    memset(&ctl, 0, sizeof ctl);
    ctl.aio_fildes = fd;
    ctl.aio_buf = buf;
    ctl.aio_nbytes = len;
    ctl.aio_offset = offset;
    ctl.aio_sigevent.sigev_notify = SIGEV_SIGNAL;
    ctl.aio_sigevent.sigev_signo = MICROLOOP_AIO_SIGNAL;
    aio_callback& done = callbacks_[s.callback];
    done.emplace(std::forward<F>(cb));
    // A read all in the page cache is done here, and called back at the
    // next iteration (the loop is woken below) without the libc's thread
    // and signal. Not while the libc has an operation of ours on this fd:
    // glibc runs one fd's requests in order, and a read must not overtake
    // a write submitted before it.
    const bool served = op == detail::aio_ops::op_read && !libc_busy_on(fd) &&
                        detail::aio_read_nowait(fd, buf, len, offset, nowait_);
    int r = 0;
    if (!served) {
        switch (op) {
        case detail::aio_ops::op_read: r = aio_read(&ctl); break;
        case detail::aio_ops::op_write: r = aio_write(&ctl); break;
        case detail::aio_ops::op_fsync: r = aio_fsync(O_SYNC, &ctl); break;
        default: r = aio_fsync(O_DSYNC, &ctl); break;
        }
    }
    if (r != 0) {
        int e = errno;
        done.reset();
        pool_.release(index);
        return fail(errc::system, e);
    }
    s.busy = true;
    s.sync = op == detail::aio_ops::op_fsync || op == detail::aio_ops::op_fdatasync;
    s.served = served;
    s.next = none;
    s.prev = tail_;
    if (tail_ != none) slots_[tail_].next = index;
    else head_ = index;
    tail_ = index;
    ++hook_.active;
    if (served) {
        ++inline_reads_;
        loop_.wake();
    }
    return aio_handle::from_id(id);
}

template <size_t N>
error_code aio<N, posix_aio_engine>::cancel(aio_handle h) {
    uint16_t index = pool_.lookup(h.id());
    if (index == pool_.none) return errc::stale_handle;
    if (slots_[index].served) return error_code(); // done already: called back with its result
    struct aiocb& ctl = cbs_[index];
    int r = aio_cancel(ctl.aio_fildes, &ctl);
    if (r == -1) return error_code(errc::system, errno);
    // The libc signals canceled requests too; waking here just does not
    // depend on it.
    if (r == AIO_CANCELED) loop_.wake();
    return error_code();
}

// Runs in the loop's thread after every wake-up: asks about each operation
// in flight, so it needs no record of which signal meant which operation.
// The operations are visited in submission order, and an fsync (or
// fdatasync) that finished is held back while an operation submitted before
// it on its fd is still in progress: its callback never runs before theirs,
// as the promise "completes after every write submitted before it" means to
// the user. (The libc finishes them in that order, but both may finish
// between our two questions.) Other operations are reported as they finish,
// so a cancelled read is not kept waiting behind a blocked one. Operations
// submitted by the callbacks of this pass wait for the next one.
template <size_t N>
void aio<N, posix_aio_engine>::complete() {
    const uint16_t last = tail_;
    int busy_fds[N] = {}; // fds with an operation still in progress, seen so far
    size_t nbusy = 0;
    for (uint16_t i = head_, next; i != none; i = next) {
        next = slots_[i].next; // read first: i leaves the list below
        const bool at_end = i == last;
        struct aiocb& ctl = cbs_[i];
        const int fd = ctl.aio_fildes;
        bool seen = false;
        for (size_t k = 0; k < nbusy && !seen; ++k) seen = busy_fds[k] == fd;
        const bool served = slots_[i].served; // done in the loop's thread: never in progress
        int err = served ? 0 : (seen && slots_[i].sync ? EINPROGRESS : aio_error(&ctl));
        if (err == EINPROGRESS) {
            if (!seen && nbusy < N) busy_fds[nbusy++] = fd;
        } else {
            if (err < 0) err = errno;
            ssize_t result = served ? static_cast<ssize_t>(ctl.aio_nbytes) : aio_return(&ctl);
            slot& s = slots_[i];
            s.busy = false;
            s.served = false;
            unlink(i);
            --hook_.active;
            uint64_t id = pool_.id_of(i);
            // The handle is stale inside the callback (no cancel, no second
            // call) and the slot free, with the spare callback storage.
            uint16_t running = s.callback;
            s.callback = spare_;
            spare_ = running;
            pool_.release(i);
            aio_event ev;
            ev.handle = aio_handle::from_id(id);
            ev.result = err ? -1 : result;
            if (err == 0) ev.error = error_code();
            else if (err == ECANCELED) ev.error = error_code(errc::canceled, ECANCELED);
            else ev.error = error_code(errc::system, err);
            aio_callback& cb = callbacks_[running];
            auto done = detail::on_scope_exit([&cb] { cb.reset(); }); // also if it throws
            loop_.invoke(cb, source_kind::aio, id, fd, ev);
        }
        if (at_end) break;
    }
}

template <size_t N>
const uint16_t aio<N, posix_aio_engine>::none;

template <size_t N>
void aio<N, posix_aio_engine>::unlink(uint16_t i) {
    slot& s = slots_[i];
    if (s.prev != none) slots_[s.prev].next = s.next;
    else head_ = s.next;
    if (s.next != none) slots_[s.next].prev = s.prev;
    else tail_ = s.prev;
    s.next = s.prev = none;
}

// after_fork() in a child (or the destructor of a module a child inherited):
// the operations in flight are the parent's; the libc of this process knows
// nothing of them. Forget them without calling their callbacks.
template <size_t N>
void aio<N, posix_aio_engine>::abandon() {
    for (uint16_t i = 0; i < N; ++i) {
        if (!slots_[i].busy) continue;
        slots_[i].busy = false;
        slots_[i].served = false;
        slots_[i].next = slots_[i].prev = none;
        callbacks_[slots_[i].callback].reset();
        pool_.release(i);
    }
    head_ = tail_ = none;
    hook_.active = 0;
    pid_ = getpid();
}


// ============================================================================
// The thread engine: aio<N, thread_aio_engine<Threads>>
// ============================================================================
//
// Loop thread to workers: a bounded lock-free ring (Vyukov's MPMC queue, one
// producer) of {slot, ticket} entries and a POSIX semaphore that idle workers
// sleep on. A worker claims an operation by a compare-and-swap of the slot's
// state from {ticket, queued} to {ticket, running}, runs pread()/pwrite()/
// fsync()/fdatasync() (read()/write() where the fd cannot seek, as glibc's
// AIO does), and hands the slot back through a lock-free stack and one
// loop.wake() (an eventfd write only if none is pending). No signal, no lock.
//
// A read is first tried in the loop's thread with preadv2(RWF_NOWAIT)
// (detail::aio_read_nowait()): when every byte is in the page cache it is
// done there, marked finished as a worker would, put on a list only the loop
// thread touches, and the loop woken; complete() calls it back at the next
// iteration. Such an operation is in flight until then like any other: it
// counts in in_flight(), an fsync behind it on its fd is held, cancel()
// finds it finished.
//
// cancel() of a queued operation wins the same compare-and-swap and reports
// it at once; the ring entry it leaves behind is stale (the ticket no longer
// matches) and is dropped by whoever meets it. A running operation finishes
// with its real result. An fsync()/fdatasync() submitted while an earlier
// operation on its fd is in flight is held in the loop thread and queued
// once those have been called back: it runs after them and its callback
// comes after theirs.
template <size_t N, size_t Threads>
class aio<N, thread_aio_engine<Threads> > : public detail::aio_calls<aio<N, thread_aio_engine<Threads> > > {
    friend class detail::aio_calls<aio>;
    typedef detail::aio_ops::op_kind op_kind;

    static_assert(N >= 1 && N <= 16384, "aio: 1 to 16384 operations in flight");

public:
    // Starts the threads, every signal blocked in them. stack_bytes: each
    // thread's stack (0: the system's default). A failure is kept in error()
    // and returned by every submission.
    explicit aio(loop_base& owner, size_t stack_bytes = MICROLOOP_AIO_STACK_SIZE);
    // Drops what is queued, waits for what runs (a read on a pipe waits for
    // data), stops the threads; the callbacks of what was in flight are not
    // called. Not from inside one of this module's callbacks.
    ~aio();
    aio(const aio&) = delete;
    aio& operator=(const aio&) = delete;

    // read(), write(), fsync(), fdatasync(): see detail::aio_calls.

    // A queued operation is called back with errc::canceled (at the loop's
    // next iteration); a running or finished one with its real result.
    // errc::stale_handle once the callback has run.
    error_code cancel(aio_handle h);

    size_t in_flight() const { return hook_.active; }
    error_code last_error() const { return last_error_; }
    // Why the threads could not start (errc::system with pthread_create's or
    // sem_init's error, errc::bad_argument for a stack size refused), or ok.
    error_code error() const { return setup_error_; }
    // The table's, and the reads served from the page cache in the loop's
    // thread (MICROLOOP_AIO_NOWAIT).
    aio_stats stats() const {
        aio_stats s;
        static_cast<table_stats&>(s) = pool_.stats();
        s.inline_reads = inline_reads_;
        return s;
    }
    template <class F>
    void for_each_in_flight(F&& f) const {
        for (uint16_t i = head_; i != none; i = ops_[i].next) f(aio_handle::from_id(pool_.id_of(i)), ops_[i].fd);
    }
    static constexpr size_t threads() { return Threads; }

private:
    // The low byte of op::state; the ticket of the operation is above it.
    enum : uint32_t { st_free, st_held, st_queued, st_running, st_finished, st_canceled };
    static const uint16_t none = 0xffff;
    static const uint32_t no_slot = 0xffffffffu;
    static const size_t ring_size = detail::pow2_at_least(2 * N); // room for N live entries and stale ones

    struct op {
        int fd;
        op_kind kind;
        void* buf;
        size_t len;
        off_t offset;
        ssize_t result; // written by the worker, read after the completion stack
        int err;
        std::atomic<uint32_t> state; // ticket << 8 | st_*
        uint16_t ticket;             // loop thread: this operation's
        uint16_t next, prev;         // the in-flight list, in submission order (loop thread)
        uint16_t callback;           // which callbacks_ entry is this operation's
        uint32_t done_next;          // link in the completion stack, or in the inline list
    };
    struct hook_type : loop_hook {
        aio* owner;
    };

    template <class F>
    aio_handle submit(op_kind kind, int fd, void* buf, size_t len, off_t offset, F&& cb);
    static void on_wake(loop_hook* h) { static_cast<hook_type*>(h)->owner->complete(); }
    static void on_fork(loop_hook* h) { static_cast<hook_type*>(h)->owner->abandon(true); }
    static void* worker_main(void* arg);
    static void run(op& o);
    static uint32_t state_of(uint16_t ticket, uint32_t st) { return static_cast<uint32_t>(ticket) << 8 | st; }
    error_code start() { return crew_.start(&worker_main, this, stack_bytes_); }
    void reset_queues();
    void abandon(bool restart);
    void enqueue(uint16_t i);
    void push_inline(uint16_t i);
    void push_entry(uint32_t entry);
    bool pop_entry(uint32_t& entry) { return ring_.pop(entry); } // the workers, and push_entry()
    // An operation's link in the completion stack.
    struct link_of {
        op* ops;
        uint32_t& operator()(uint32_t k) const { return ops[k].done_next; }
    };
    void push_completed(uint16_t i) { completed_.push(i, link_of{ops_}); }
    void complete();
    void finish(uint16_t i);
    bool earlier_on_fd(uint16_t i) const;
    void release_held(int fd);
    void unlink(uint16_t i);
    aio_handle fail(errc why, int sys = 0) {
        last_error_ = error_code(why, sys);
        return aio_handle(last_error_);
    }

    loop_base& loop_;
    pid_t pid_;
    hook_type hook_;
    error_code setup_error_;
    error_code last_error_;
    size_t stack_bytes_;
    size_t held_; // fsyncs waiting for an earlier operation on their fd
    bool nowait_; // reads are tried in the loop's thread first (MICROLOOP_AIO_NOWAIT)
    uint16_t head_, tail_; // operations in flight, oldest first
    uint32_t inline_head_, inline_tail_; // reads done in the loop's thread, oldest first
    uint64_t inline_reads_;
    detail::slot_pool<N> pool_;
    op ops_[N];
    aio_callback callbacks_[N + 1]; // one spare: a callback may submit again at capacity
    uint16_t spare_;
    detail::thread_crew<Threads> crew_;
    detail::spmc_ring<ring_size> ring_; // entries (slot | ticket << 16) to run, to the workers
    detail::completion_stack completed_; // finished operations, to the loop's thread
};

template <size_t N, size_t T>
const uint16_t aio<N, thread_aio_engine<T> >::none;
template <size_t N, size_t T>
const uint32_t aio<N, thread_aio_engine<T> >::no_slot;
template <size_t N, size_t T>
const size_t aio<N, thread_aio_engine<T> >::ring_size;

template <size_t N, size_t T>
aio<N, thread_aio_engine<T> >::aio(loop_base& owner, size_t stack_bytes)
    : loop_(owner), pid_(getpid()), stack_bytes_(stack_bytes), held_(0), nowait_(MICROLOOP_DETAIL_AIO_NOWAIT != 0),
      head_(none), tail_(none),
      inline_head_(no_slot), inline_tail_(no_slot), inline_reads_(0), spare_(static_cast<uint16_t>(N)) {
    hook_.on_wake = &on_wake;
    hook_.on_fork = &on_fork;
    hook_.active = 0;
    hook_.next = nullptr;
    hook_.owner = this;
    for (size_t i = 0; i < N; ++i) {
        op& o = ops_[i];
        o.fd = -1;
        o.kind = detail::aio_ops::op_read;
        o.buf = nullptr;
        o.len = 0;
        o.offset = 0;
        o.result = 0;
        o.err = 0;
        o.state.store(st_free, std::memory_order_relaxed);
        o.ticket = 0;
        o.next = o.prev = none;
        o.callback = static_cast<uint16_t>(i);
        o.done_next = no_slot;
    }
    reset_queues();
    loop_.attach(&hook_);
    setup_error_ = start();
}

template <size_t N, size_t T>
void aio<N, thread_aio_engine<T> >::reset_queues() {
    ring_.reset();
    completed_.reset();
    inline_head_ = inline_tail_ = no_slot;
}

template <size_t N, size_t T>
aio<N, thread_aio_engine<T> >::~aio() {
    if (getpid() != pid_) {
        abandon(false); // a forked child: the threads are the parent's
    } else {
        // Queued operations never start; running ones finish before the join.
        for (size_t i = 0; i < N; ++i) {
            op& o = ops_[i];
            uint32_t queued = state_of(o.ticket, st_queued);
            o.state.compare_exchange_strong(queued, state_of(o.ticket, st_canceled), std::memory_order_acq_rel);
        }
        crew_.stop();
    }
    for (size_t i = 0; i <= N; ++i) callbacks_[i].reset();
    loop_.detach(&hook_);
}

template <size_t N, size_t T>
template <class F>
aio_handle aio<N, thread_aio_engine<T> >::submit(op_kind kind, int fd, void* buf, size_t len, off_t offset,
                                                 F&& cb) {
    if (setup_error_) return fail(setup_error_.code(), setup_error_.sys());
    if (fd < 0) return fail(errc::bad_fd);
    if (offset < 0 || len > static_cast<size_t>(SSIZE_MAX) || (buf == nullptr && len > 0))
        return fail(errc::bad_argument);
    if (detail::is_null_callable(cb)) return fail(errc::bad_argument);
    uint64_t id = pool_.acquire();
    if (id == 0) return fail(errc::table_full);
    const uint16_t index = static_cast<uint16_t>(id & 0xffffu);
    op& o = ops_[index];
    o.fd = fd;
    o.kind = kind;
    o.buf = buf;
    o.len = len;
    o.offset = offset;
    o.result = 0;
    o.err = 0;
    callbacks_[o.callback].emplace(std::forward<F>(cb));
    o.next = none;
    o.prev = tail_;
    if (tail_ != none) ops_[tail_].next = index;
    else head_ = index;
    tail_ = index;
    ++hook_.active;
    if (kind == detail::aio_ops::op_read && detail::aio_read_nowait(fd, buf, len, offset, nowait_)) {
        // Done, exactly as if a worker had run it: finished, with a ticket
        // no ring entry carries (cancel() leaves it alone), called back by
        // complete().
        o.result = static_cast<ssize_t>(len);
        o.ticket = static_cast<uint16_t>(o.ticket + 1);
        o.state.store(state_of(o.ticket, st_finished), std::memory_order_relaxed);
        push_inline(index);
    } else if ((kind == detail::aio_ops::op_fsync || kind == detail::aio_ops::op_fdatasync) &&
               earlier_on_fd(index)) {
        o.state.store(state_of(o.ticket, st_held), std::memory_order_relaxed);
        ++held_;
    } else {
        enqueue(index);
    }
    return aio_handle::from_id(id);
}

// A read done in the loop's thread, to be called back at the next
// iteration like any completion: after the wake-up fd, never from inside the
// call that submitted it. Those a callback submits wait for the next
// iteration (see complete()), so a file read chunk by chunk from the page
// cache does not hold the loop.
template <size_t N, size_t T>
void aio<N, thread_aio_engine<T> >::push_inline(uint16_t i) {
    ops_[i].done_next = no_slot;
    if (inline_tail_ == no_slot) inline_head_ = i;
    else ops_[inline_tail_].done_next = i;
    inline_tail_ = i;
    ++inline_reads_;
    loop_.wake(); // only an atomic exchange when a wake-up is pending already
}

template <size_t N, size_t T>
void aio<N, thread_aio_engine<T> >::enqueue(uint16_t i) {
    op& o = ops_[i];
    o.ticket = static_cast<uint16_t>(o.ticket + 1);
    o.state.store(state_of(o.ticket, st_queued), std::memory_order_relaxed);
    push_entry(static_cast<uint32_t>(i) | static_cast<uint32_t>(o.ticket) << 16); // publishes o (release)
    crew_.post();
}

// One producer (the loop thread). At most N entries are live (one per queued
// operation); the others are stale, left by cancel(). When the ring is full
// the loop takes entries from its head itself: a stale one is dropped, a live
// one goes back at the tail, and at least half of them are stale.
template <size_t N, size_t T>
void aio<N, thread_aio_engine<T> >::push_entry(uint32_t entry) {
    while (!ring_.try_push(entry)) {
        uint32_t old;
        if (!ring_.pop(old)) continue; // a worker took one meanwhile: there is room now
        const op& o = ops_[old & 0xffffu];
        if (o.state.load(std::memory_order_relaxed) == state_of(static_cast<uint16_t>(old >> 16), st_queued)) {
            // Live: back at the tail, in the cell just freed (or a later one).
            bool requeued = ring_.try_push(old);
            MICROLOOP_ASSERT(requeued);
            (void)requeued;
        }
    }
}

template <size_t N, size_t T>
void aio<N, thread_aio_engine<T> >::run(op& o) {
    ssize_t r;
    do {
        switch (o.kind) {
        case detail::aio_ops::op_read:
            r = pread(o.fd, o.buf, o.len, o.offset);
            if (r < 0 && errno == ESPIPE) r = ::read(o.fd, o.buf, o.len); // a pipe, a socket: no offset
            break;
        case detail::aio_ops::op_write:
            r = pwrite(o.fd, o.buf, o.len, o.offset);
            if (r < 0 && errno == ESPIPE) r = ::write(o.fd, o.buf, o.len);
            break;
        case detail::aio_ops::op_fsync: r = ::fsync(o.fd); break;
        default: r = ::fdatasync(o.fd); break;
        }
    } while (r < 0 && errno == EINTR); // every signal is blocked, but a debugger may stop us
    o.err = r < 0 ? errno : 0;
    o.result = r;
}

template <size_t N, size_t T>
void* aio<N, thread_aio_engine<T> >::worker_main(void* arg) {
    aio* self = static_cast<aio*>(arg);
    while (self->crew_.wait()) {
        uint32_t entry;
        if (!self->pop_entry(entry)) continue;
        const uint16_t i = static_cast<uint16_t>(entry & 0xffffu);
        op& o = self->ops_[i];
        const uint16_t ticket = static_cast<uint16_t>(entry >> 16);
        uint32_t queued = state_of(ticket, st_queued);
        if (!o.state.compare_exchange_strong(queued, state_of(ticket, st_running), std::memory_order_acq_rel))
            continue; // stale: canceled (and reported) already
        run(o);
        o.state.store(state_of(ticket, st_finished), std::memory_order_relaxed);
        self->push_completed(i);
        self->loop_.wake();
    }
    return nullptr;
}

template <size_t N, size_t T>
error_code aio<N, thread_aio_engine<T> >::cancel(aio_handle h) {
    const uint16_t i = pool_.lookup(h.id());
    if (i == pool_.none) return errc::stale_handle;
    op& o = ops_[i];
    uint32_t queued = state_of(o.ticket, st_queued);
    bool won = o.state.compare_exchange_strong(queued, state_of(o.ticket, st_canceled), std::memory_order_acq_rel);
    if (!won && queued == state_of(o.ticket, st_held)) {
        o.state.store(state_of(o.ticket, st_canceled), std::memory_order_relaxed);
        --held_;
        won = true;
    }
    if (won) {
        push_completed(i);
        loop_.wake();
    }
    return error_code();
}

// In the loop's thread after every wake-up: calls back the reads done in
// the loop's thread before this pass (oldest first), then what the workers
// finished, in the order they finished. The completion stack and the inline
// list are members, so a callback that throws leaves the rest for the next
// wake-up (the loop wakes itself again when a hook throws).
template <size_t N, size_t T>
void aio<N, thread_aio_engine<T> >::complete() {
    if (inline_head_ != no_slot) {
        const uint32_t last = inline_tail_; // later ones were submitted by this pass's callbacks
        for (;;) {
            const uint16_t i = static_cast<uint16_t>(inline_head_);
            inline_head_ = ops_[i].done_next;
            if (inline_head_ == no_slot) inline_tail_ = no_slot;
            const bool at_end = i == last;
            finish(i);
            if (at_end) break;
        }
    }
    for (;;) {
        const uint32_t i = completed_.pop(link_of{ops_});
        if (i == detail::completion_stack::empty) return;
        finish(static_cast<uint16_t>(i));
    }
}

// The slot is free (and the handle stale) while its callback runs, which
// runs from the spare callback storage.
template <size_t N, size_t T>
void aio<N, thread_aio_engine<T> >::finish(uint16_t i) {
    op& o = ops_[i];
    aio_event ev;
    const int fd = o.fd;
    if ((o.state.load(std::memory_order_relaxed) & 0xffu) == st_canceled) {
        ev.result = -1;
        ev.error = error_code(errc::canceled, ECANCELED);
    } else if (o.err != 0) {
        ev.result = -1;
        ev.error = error_code(errc::system, o.err);
    } else {
        ev.result = o.result;
        ev.error = error_code();
    }
    o.state.store(state_of(o.ticket, st_free), std::memory_order_relaxed);
    unlink(i);
    --hook_.active;
    const uint64_t id = pool_.id_of(i);
    ev.handle = aio_handle::from_id(id);
    const uint16_t running = o.callback;
    o.callback = spare_;
    spare_ = running;
    pool_.release(i);
    if (held_ != 0) release_held(fd);
    aio_callback& cb = callbacks_[running];
    auto done = detail::on_scope_exit([&cb] { cb.reset(); }); // also if it throws
    loop_.invoke(cb, source_kind::aio, id, fd, ev);
}

template <size_t N, size_t T>
bool aio<N, thread_aio_engine<T> >::earlier_on_fd(uint16_t i) const {
    for (uint16_t k = head_; k != i && k != none; k = ops_[k].next)
        if (ops_[k].fd == ops_[i].fd) return true;
    return false;
}

// An operation on fd was called back: the oldest one left on fd may be a
// held fsync, which may start now.
template <size_t N, size_t T>
void aio<N, thread_aio_engine<T> >::release_held(int fd) {
    for (uint16_t k = head_; k != none; k = ops_[k].next) {
        if (ops_[k].fd != fd) continue;
        if (ops_[k].state.load(std::memory_order_relaxed) == state_of(ops_[k].ticket, st_held)) {
            --held_;
            enqueue(k);
        }
        return;
    }
}

template <size_t N, size_t T>
void aio<N, thread_aio_engine<T> >::unlink(uint16_t i) {
    op& o = ops_[i];
    if (o.prev != none) ops_[o.prev].next = o.next;
    else head_ = o.next;
    if (o.next != none) ops_[o.next].prev = o.prev;
    else tail_ = o.prev;
    o.next = o.prev = none;
}

// In a forked child the threads are the parent's and the operations in
// flight with them: forget those without calling back. after_fork()
// (restart) then starts threads of the child's own.
template <size_t N, size_t T>
void aio<N, thread_aio_engine<T> >::abandon(bool restart) {
    crew_.forget(); // the parent's threads: nothing to join here
    for (uint16_t i = 0; i < N; ++i) {
        op& o = ops_[i];
        if ((o.state.load(std::memory_order_relaxed) & 0xffu) == st_free) continue;
        o.state.store(state_of(o.ticket, st_free), std::memory_order_relaxed);
        o.next = o.prev = none;
        callbacks_[o.callback].reset();
        pool_.release(i);
    }
    head_ = tail_ = none;
    held_ = 0;
    hook_.active = 0;
    pid_ = getpid();
    reset_queues();
    if (restart && !setup_error_) setup_error_ = start();
}

} // namespace microloop

#endif // MICROLOOP_AIO_HPP
