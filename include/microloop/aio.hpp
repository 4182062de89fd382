// SPDX-License-Identifier: MIT
// microloop/aio.hpp - disk reads, writes and fsyncs that do not block the
// loop: POSIX AIO, with completions delivered as loop callbacks.
//
// Opt-in: include <microloop/aio.hpp> (or define MICROLOOP_WITH_AIO before
// including microloop.hpp) and link with -pthread (and -lrt before glibc
// 2.34). Programs that do not use it pay nothing.
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
// How completions wake the loop. Each request asks for a signal on
// completion (SIGEV_SIGNAL, MICROLOOP_AIO_SIGNAL, SIGIO by default). The
// handler only calls wake() on the loops that have an AIO module; the loop
// then asks aio_error() about every operation in flight and calls back the
// finished ones. The signal says "look", not "which": that is why a
// coalesced or lost signal costs nothing as long as a later one arrives, and
// a standard (non-realtime) signal is never lost, only merged.
// Why not SIGEV_THREAD, which needs no signal number: glibc starts a new
// thread for every completion (a clone and a stack per I/O on a small board),
// the notify function may run after the module is gone, and glibc makes that
// thread from its own helper thread through an interposed malloc, which
// ThreadSanitizer cannot follow (it crashes). With a signal, nothing but the
// loop thread ever touches the module.
//
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
#include <signal.h>
#include <string.h>
#include <sys/types.h>

#include <atomic>
#include <utility>

#include "callback.hpp"
#include "config.hpp"
#include "error.hpp"
#include "handle.hpp"
#include "loop.hpp"

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

// Up to N disk operations in flight on one loop. Construct it after the loop
// and destroy it before; use it from the loop's thread only. Each operation's
// buffer must stay valid until its callback has run (or the module is gone).
// Regular files and block devices are what AIO is for; on a pipe or socket
// the libc's helper thread blocks in read() until data comes.
template <size_t N>
class aio {
public:
    explicit aio(loop_base& owner);
    // Cancels what is in flight and waits for it (an operation the libc has
    // already started cannot be canceled, so this may wait for the disk, or
    // for data on a pipe); their callbacks are not called. Not from inside
    // one of this module's callbacks.
    ~aio();
    aio(const aio&) = delete;
    aio& operator=(const aio&) = delete;

    // Read len bytes at offset into buf; cb(aio_event) when done. A failed
    // submission returns an invalid handle: errc::table_full, errc::bad_fd,
    // errc::bad_argument, or errc::system (last_error() has the errno).
    template <class F>
    aio_handle read(int fd, void* buf, size_t len, off_t offset, F&& cb) {
        return submit(op_read, fd, buf, len, offset, std::forward<F>(cb));
    }
    template <class F>
    aio_handle write(int fd, const void* buf, size_t len, off_t offset, F&& cb) {
        return submit(op_write, fd, const_cast<void*>(buf), len, offset, std::forward<F>(cb));
    }
    // Completes after every write submitted before it on fd is on the disk.
    template <class F>
    aio_handle fsync(int fd, F&& cb) {
        return submit(op_fsync, fd, nullptr, 0, 0, std::forward<F>(cb));
    }
    template <class F>
    aio_handle fdatasync(int fd, F&& cb) {
        return submit(op_fdatasync, fd, nullptr, 0, 0, std::forward<F>(cb));
    }

    // Ask for the operation to be canceled. Its callback still runs exactly
    // once: with errc::canceled if the cancel won, with the real result if
    // the operation had already started or finished. errc::stale_handle
    // once the callback has run.
    error_code cancel(aio_handle h);

    size_t in_flight() const { return hook_.active; }
    // The error of the last failed submission, with its errno.
    error_code last_error() const { return last_error_; }
    // Operations in flight: now, at most N, and the most ever at once.
    table_stats stats() const { return pool_.stats(); }
    // f(aio_handle, int fd) for every operation in flight, oldest first.
    template <class F>
    void for_each_in_flight(F&& f) const {
        for (uint16_t i = head_; i != none; i = slots_[i].next) f(aio_handle::from_id(pool_.id_of(i)), cbs_[i].aio_fildes);
    }

private:
    enum op_kind { op_read, op_write, op_fsync, op_fdatasync };

    // The control blocks live in their own array: glibc's struct aiocb ends
    // in a zero-length array on 64-bit targets, which may not be a member of
    // another struct in ISO C++ (an array of them is fine).
    struct slot {
        uint16_t next, prev; // the in-flight list, in submission order
        uint16_t callback;   // which of callbacks_ is this operation's
        bool busy;
        bool sync; // fsync or fdatasync: reported after what was submitted before it on its fd
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
    aio_handle fail(errc why, int sys = 0) {
        last_error_ = error_code(why, sys);
        return aio_handle(last_error_);
    }

    loop_base& loop_;
    pid_t pid_; // in a forked child, the operations in flight are the parent's
    hook_type hook_;
    int registered_; // index in the signal handler's table, or -1
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
aio<N>::aio(loop_base& owner)
    : loop_(owner), pid_(getpid()), registered_(-1), head_(none), tail_(none), spare_(static_cast<uint16_t>(N)) {
    hook_.on_wake = &on_wake;
    hook_.on_fork = &on_fork;
    hook_.active = 0;
    hook_.next = nullptr;
    hook_.owner = this;
    for (size_t i = 0; i < N; ++i) {
        slots_[i].busy = false;
        slots_[i].sync = false;
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
aio<N>::~aio() {
    // In a forked child that never called after_fork() the operations in
    // flight are the parent's: this process's libc knows nothing of them and
    // would wait forever.
    if (getpid() != pid_) abandon();
    // The libc writes into the aiocb and the buffer until aio_error() says
    // the operation is over: wait for that before the memory goes away.
    for (size_t i = 0; i < N; ++i)
        if (slots_[i].busy) aio_cancel(cbs_[i].aio_fildes, &cbs_[i]);
    for (size_t i = 0; i < N; ++i) {
        if (!slots_[i].busy) continue;
        const struct aiocb* list[1] = {&cbs_[i]};
        while (aio_error(&cbs_[i]) == EINPROGRESS) aio_suspend(list, 1, nullptr); // EINTR: ask again
        aio_return(&cbs_[i]);
    }
    if (registered_ >= 0) detail::aio_signal<>::remove(registered_);
    loop_.detach(&hook_);
}

template <size_t N>
template <class F>
aio_handle aio<N>::submit(op_kind op, int fd, void* buf, size_t len, off_t offset, F&& cb) {
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
    int r;
    switch (op) {
    case op_read: r = aio_read(&ctl); break;
    case op_write: r = aio_write(&ctl); break;
    case op_fsync: r = aio_fsync(O_SYNC, &ctl); break;
    default: r = aio_fsync(O_DSYNC, &ctl); break;
    }
    if (r != 0) {
        int e = errno;
        done.reset();
        pool_.release(index);
        return fail(errc::system, e);
    }
    s.busy = true;
    s.sync = op == op_fsync || op == op_fdatasync;
    s.next = none;
    s.prev = tail_;
    if (tail_ != none) slots_[tail_].next = index;
    else head_ = index;
    tail_ = index;
    ++hook_.active;
    return aio_handle::from_id(id);
}

template <size_t N>
error_code aio<N>::cancel(aio_handle h) {
    uint16_t index = pool_.lookup(h.id());
    if (index == pool_.none) return errc::stale_handle;
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
void aio<N>::complete() {
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
        int err = seen && slots_[i].sync ? EINPROGRESS : aio_error(&ctl);
        if (err == EINPROGRESS) {
            if (!seen && nbusy < N) busy_fds[nbusy++] = fd;
        } else {
            if (err < 0) err = errno;
            ssize_t result = aio_return(&ctl);
            slot& s = slots_[i];
            s.busy = false;
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
const uint16_t aio<N>::none;

template <size_t N>
void aio<N>::unlink(uint16_t i) {
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
void aio<N>::abandon() {
    for (uint16_t i = 0; i < N; ++i) {
        if (!slots_[i].busy) continue;
        slots_[i].busy = false;
        slots_[i].next = slots_[i].prev = none;
        callbacks_[slots_[i].callback].reset();
        pool_.release(i);
    }
    head_ = tail_ = none;
    hook_.active = 0;
    pid_ = getpid();
}

} // namespace microloop

#endif // MICROLOOP_AIO_HPP
