// SPDX-License-Identifier: MIT
// microloop/aio/posix_engine.hpp - internal to the AIO module (include
// <microloop/aio.hpp>): aio<N, posix_aio_engine>'s engine.
//
// posix_aio_engine: the libc's POSIX AIO, "the portable one the textbook
// describes" (a read all in the page cache is done in the loop's thread here
// too: MICROLOOP_AIO_NOWAIT, aio/common.hpp). How completions wake the loop: each request asks for a signal
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
#ifndef MICROLOOP_AIO_POSIX_ENGINE_HPP
#define MICROLOOP_AIO_POSIX_ENGINE_HPP

#include <aio.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include <atomic>
#include <utility>

#include "../signal.hpp" // detail::globals: the AIO signal is claimed like any watched signal
#include "common.hpp"

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

// The libc's POSIX AIO (aio_read() and friends), completions by a signal.
struct posix_aio_engine {};

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

template <size_t N>
class aio_engine<N, posix_aio_engine> : public aio_core<N> {
    typedef aio_core<N> core;

public:
    // Claims MICROLOOP_AIO_SIGNAL (errc::already_watched if it is watched)
    // and a place in the handler's table (errc::table_full beyond
    // MICROLOOP_AIO_MAX_MODULES): a failure is kept in error() and returned
    // by every submission.
    explicit aio_engine(loop_base& owner);
    // Cancels what is in flight and waits for it (an operation the libc has
    // already started cannot be canceled, so this may wait for the disk, or
    // for data on a pipe); their callbacks are not called. Not from inside
    // one of this module's callbacks.
    ~aio_engine();

    // Ask for the operation to be canceled. Its callback still runs exactly
    // once: with errc::canceled if the cancel won, with the real result if
    // the operation had already started or finished. errc::stale_handle
    // once the callback has run; errc::system with aio_cancel()'s errno.
    error_code cancel(aio_handle h);

protected:
    template <class F>
    aio_handle submit(typename core::op_kind op, int fd, void* buf, size_t len, off_t offset, F&& cb);
    int fd_of(uint16_t i) const { return cbs_[i].aio_fildes; }

private:
    // What the libc is not told, beside each control block. The control
    // blocks live in their own array: glibc's struct aiocb ends in a
    // zero-length array on 64-bit targets, which may not be a member of
    // another struct in ISO C++ (an array of them is fine).
    struct slot {
        bool busy;
        bool sync;   // fsync or fdatasync: reported after what was submitted before it on its fd
        bool served; // a read done in the loop's thread (all of aio_nbytes), never given to the libc
        bool batch;  // in flight when the pass under way began
    };

    static void on_wake(loop_hook* h) { core::template engine_of<aio_engine>(h).complete(); }
    static void on_fork(loop_hook* h) { core::template engine_of<aio_engine>(h).abandon(); }
    void abandon();
    void complete();
    bool libc_busy_on(int fd) const {
        for (uint16_t i = this->head_; i != core::none; i = this->links_[i].next)
            if (!slots_[i].served && cbs_[i].aio_fildes == fd) return true;
        return false;
    }

    int registered_; // index in the signal handler's table, or -1
    struct aiocb cbs_[N];
    slot slots_[N];
};

template <size_t N>
aio_engine<N, posix_aio_engine>::aio_engine(loop_base& owner) : core(owner, &on_wake, &on_fork), registered_(-1) {
    for (size_t i = 0; i < N; ++i) {
        slots_[i].busy = false;
        slots_[i].sync = false;
        slots_[i].served = false;
        slots_[i].batch = false;
    }
    this->setup_error_ = aio_signal<>::install();
    if (!this->setup_error_) {
        registered_ = aio_signal<>::add(&this->loop_);
        if (registered_ < 0) this->setup_error_ = errc::table_full;
    }
    // A thread that blocks the signal would never be interrupted by it; if
    // every thread did, completions would wait for some other wake-up.
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, MICROLOOP_AIO_SIGNAL);
    pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
}

template <size_t N>
aio_engine<N, posix_aio_engine>::~aio_engine() {
    // In a forked child that never called after_fork() the operations in
    // flight are the parent's: this process's libc knows nothing of them and
    // would wait forever.
    if (getpid() != this->pid_) abandon();
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
    if (registered_ >= 0) aio_signal<>::remove(registered_);
}

template <size_t N>
template <class F>
aio_handle aio_engine<N, posix_aio_engine>::submit(typename core::op_kind op, int fd, void* buf, size_t len,
                                                   off_t offset, F&& cb) {
    const uint64_t id = this->admit(fd, buf, len, offset, std::forward<F>(cb));
    if (id == 0) return aio_handle(this->last_error_);
    const uint16_t index = detail::slot_of(id);
    slot& s = slots_[index];
    struct aiocb& ctl = cbs_[index];
    memset(&ctl, 0, sizeof ctl);
    ctl.aio_fildes = fd;
    ctl.aio_buf = buf;
    ctl.aio_nbytes = len;
    ctl.aio_offset = offset;
    ctl.aio_sigevent.sigev_notify = SIGEV_SIGNAL;
    ctl.aio_sigevent.sigev_signo = MICROLOOP_AIO_SIGNAL;
    // A read all in the page cache is done here, and called back at the
    // next iteration (the loop is woken below) without the libc's thread
    // and signal. Not while the libc has an operation of ours on this fd:
    // glibc runs one fd's requests in order, and a read must not overtake
    // a write submitted before it.
    const bool served = op == aio_ops::op_read && !libc_busy_on(fd) && this->read_cached(fd, buf, len, offset);
    int r = 0;
    if (!served) {
        switch (op) {
        case aio_ops::op_read: r = aio_read(&ctl); break;
        case aio_ops::op_write: r = aio_write(&ctl); break;
        case aio_ops::op_fsync: r = aio_fsync(O_SYNC, &ctl); break;
        default: r = aio_fsync(O_DSYNC, &ctl); break;
        }
    }
    if (r != 0) {
        int e = errno;
        this->discard(index);
        return this->fail(errc::system, e);
    }
    s.busy = true;
    s.batch = false;
    s.sync = op == aio_ops::op_fsync || op == aio_ops::op_fdatasync;
    s.served = served;
    this->link_last(index);
    if (served) this->loop_.wake();
    return aio_handle::from_id(id);
}

template <size_t N>
error_code aio_engine<N, posix_aio_engine>::cancel(aio_handle h) {
    uint16_t index = this->pool_.lookup(h.id());
    if (index == this->pool_.none) return errc::stale_handle;
    // Being called back inside another callback's nested poll(): its slot
    // is still taken (aio_core::retire()), its handle done with.
    if (!slots_[index].busy) return errc::stale_handle;
    if (slots_[index].served) return error_code(); // done already: called back with its result
    struct aiocb& ctl = cbs_[index];
    int r = aio_cancel(ctl.aio_fildes, &ctl);
    if (r == -1) return error_code(errc::system, errno);
    // The libc signals canceled requests too; waking here just does not
    // depend on it.
    if (r == AIO_CANCELED) this->loop_.wake();
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
// so a cancelled read is not kept waiting behind a blocked one. One batch
// per pass: the operations in flight when it began, marked so; those the
// callbacks of this pass submit wait for the next one. A callback that polls
// the loop runs a pass of its own, which may call back, and free, the
// operation this walk would visit next: then that one is no longer marked
// (or no longer in the list, its links none), and this walk stops or skips
// it instead of calling it back twice.
template <size_t N>
void aio_engine<N, posix_aio_engine>::complete() {
    for (uint16_t i = this->head_; i != core::none; i = this->links_[i].next) slots_[i].batch = true;
    int busy_fds[N] = {}; // fds with an operation still in progress, seen so far
    size_t nbusy = 0;
    for (uint16_t i = this->head_, next; i != core::none; i = next) {
        next = this->links_[i].next; // read first: i leaves the list below
        if (!slots_[i].batch) continue; // submitted in this pass, or called back by a nested one
        struct aiocb& ctl = cbs_[i];
        const int fd = ctl.aio_fildes;
        bool seen = false;
        for (size_t k = 0; k < nbusy && !seen; ++k) seen = busy_fds[k] == fd;
        slot& s = slots_[i];
        const bool served = s.served; // done in the loop's thread: never in progress
        int err = served ? 0 : (seen && s.sync ? EINPROGRESS : aio_error(&ctl));
        if (err == EINPROGRESS) {
            if (!seen && nbusy < N) busy_fds[nbusy++] = fd;
        } else {
            if (err < 0) err = errno;
            const ssize_t result = served ? static_cast<ssize_t>(ctl.aio_nbytes) : aio_return(&ctl);
            s.busy = false;
            s.served = false;
            s.batch = false;
            this->call_back(this->retire(i), fd, result, err);
        }
    }
}

// after_fork() in a child (or the destructor of a module a child inherited):
// the operations in flight are the parent's; the libc of this process knows
// nothing of them. Forget them without calling their callbacks.
template <size_t N>
void aio_engine<N, posix_aio_engine>::abandon() {
    for (size_t i = 0; i < N; ++i) slots_[i].busy = slots_[i].served = slots_[i].batch = false;
    this->forget_all();
}

} // namespace detail
} // namespace microloop

#endif // MICROLOOP_AIO_POSIX_ENGINE_HPP
