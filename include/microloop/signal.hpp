// SPDX-License-Identifier: MIT
// microloop/signal.hpp - signals and child processes as ordinary loop events.
//
//     loop.on_signal(SIGHUP, [&](microloop::signal_event) { reload(); });
//     loop.on_child(pid, [](microloop::child_event ev) { printf("exit %d\n", ev.exit_code()); });
//
// The handler microloop installs only counts: it runs in signal context, so it
// records the signal, the sender, and writes to the loop's wake-up
// fd (an eventfd). The callback runs later inside the loop, where anything is allowed.
//
// Rules (the handler and dispositions are process-wide, loops are not):
// - Signal and child watchers are active sources: run() keeps running while
//   one exists (a daemon's SIGTERM callback calls stop()).
// - One watcher per signal in the whole process. Watching a signal already
//   watched (by this loop or another) is refused with errc::already_watched.
//   Unwatching, or destroying the loop, puts back the disposition that was
//   in place before (the saved sigaction).
// - on_signal() unblocks the signal in the calling (loop) thread. Block
//   signals in every other thread (block_signals() at the top of a worker
//   thread, or before creating threads) so the kernel delivers them to the
//   loop thread; the handler is correct in any thread, but delivery to a
//   blocked-everywhere signal never happens.
// - Child processes: on_child(pid, cb) reaps exactly that pid with
//   waitpid(pid, WNOHANG) and reports it once. Children nobody watches are
//   never reaped by microloop (no waitpid(-1)): their owner (system(),
//   popen(), a library) waits for them. Every child watcher of the process
//   lives in one loop, the one that owns SIGCHLD.
// - SIGPIPE is left alone: a write to a closed socket or pipe kills the
//   process by default. Send on sockets with MSG_NOSIGNAL, or call
//   ignore_sigpipe() once at start-up so such writes fail with EPIPE.
// - fork(): a child inherits the handler and the loop's wake-up fd, but
//   never disturbs the parent through them: the handler writes to a loop's
//   wake-up fd only in the process that owns the loop, so a signal the child
//   receives before exec (or before after_fork()) wakes nobody. A child that
//   keeps the loop calls loop.after_fork(): from then on its signals reach
//   its own loop; signal counts inherited from the parent are dropped, and so
//   are arrivals between fork() and after_fork() (block signals around fork()
//   if those matter: the kernel keeps them pending until unblocked).
//
// Included by loop.hpp (basic_loop holds a signal table); needs only
// loop_base.hpp.
#ifndef MICROLOOP_SIGNAL_HPP
#define MICROLOOP_SIGNAL_HPP

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>

#include "callback.hpp"
#include "error.hpp"
#include "handle.hpp"
#include "loop_base.hpp"

namespace microloop {

// What a signal callback is told.
struct signal_event {
    signal_handle handle;
    int signo;
    // Arrivals since the last call, at least 1. The kernel merges a standard
    // signal that arrives while the same one is pending; real-time signals
    // (SIGRTMIN + n) are queued, and each one the kernel accepted is counted.
    uint32_t count;
    // The sender of the most recent arrival when a process sent it (kill,
    // sigqueue, raise; for SIGCHLD, the child); 0 when the kernel raised it.
    pid_t pid;
    uid_t uid;
    // The value the most recent arrival carried if it was sent with
    // sigqueue() (which of several things happened, say); zero otherwise.
    union sigval value;
};

// What a child callback is told, once: the child has terminated and has been
// reaped. `status` is waitpid()'s, for the W* macros, or -1 if someone else
// reaped the child first (its status is then lost).
struct child_event {
    child_handle handle;
    pid_t pid;
    int status;

    bool exited() const { return status != -1 && WIFEXITED(status); }
    int exit_code() const { return exited() ? WEXITSTATUS(status) : -1; }
    bool signaled() const { return status != -1 && WIFSIGNALED(status); }
    int term_signal() const { return signaled() ? WTERMSIG(status) : 0; }
    bool lost() const { return status == -1; }
};

typedef detail::inplace_callback<void(signal_event)> signal_callback;
typedef detail::inplace_callback<void(child_event)> child_callback;

// Blocks every signal in the calling thread, so the kernel delivers
// process-directed signals to the loop thread instead. Call it at the start
// of worker threads (threads inherit the creator's mask, so calling it in
// main() before creating threads, then creating the loop, also works: the
// loop thread's on_signal() unblocks what it watches). Synchronous faults
// (SIGSEGV...) are still delivered; libc keeps its own internal signals.
//
// sigprocmask() rather than pthread_sigmask(): on Linux (glibc, musl,
// uClibc-ng) both change the calling thread's mask only, and sigprocmask()
// is in libc proper, so using signals needs no -pthread with older glibc.
inline error_code block_signals() {
    sigset_t all;
    sigfillset(&all);
    if (sigprocmask(SIG_BLOCK, &all, nullptr) != 0) return error_code(errc::system, errno);
    return error_code();
}

// Unblocks every signal in the calling thread. A program exec'd from a
// thread that blocked signals (block_signals() before creating threads, as
// above) starts with that mask and would never see SIGTERM or SIGINT: call
// this in the child between fork() and exec() (it is async-signal-safe).
// Dispositions need no such care: exec resets caught signals to the default
// (ignored ones stay ignored: see ignore_sigpipe()).
inline error_code unblock_signals() {
    sigset_t none;
    sigemptyset(&none);
    if (sigprocmask(SIG_SETMASK, &none, nullptr) != 0) return error_code(errc::system, errno);
    return error_code();
}

namespace detail {

// Signal numbers run from 1 to signal_limit - 1 (65 on most Linux targets,
// 129 on MIPS).
#if defined(NSIG)
const int signal_limit = NSIG;
#elif defined(_NSIG)
const int signal_limit = _NSIG;
#else
const int signal_limit = 65;
#endif

static_assert(ATOMIC_INT_LOCK_FREE == 2 && ATOMIC_POINTER_LOCK_FREE == 2,
              "microloop: the signal handler needs lock-free atomics (a lock could deadlock in signal context)");

// The process-wide record of one signal, shared by the handler and the loop
// that owns the signal. Only lock-free atomics: the handler may interrupt the
// loop thread at any instruction, or run in another thread at the same time.
struct signal_state {
    std::atomic<const void*> owner; // the signal_table that watches it; null: nobody
    std::atomic<int> wake_fd;       // the owner's wake-up fd + 1; 0: drop arrivals
    std::atomic<unsigned> pending;  // arrivals the loop has not taken yet
    std::atomic<unsigned> busy;     // handlers running right now
    std::atomic<int> claimant;      // the process whose loop owns it (not a forked child)
    // The latest sender, under a seqlock: odd while a handler writes.
    std::atomic<unsigned> seq;
    std::atomic<int> pid;
    std::atomic<unsigned> uid;
    std::atomic<uintptr_t> value; // a union sigval's bytes
};

static_assert(sizeof(union sigval) == sizeof(uintptr_t), "microloop: a union sigval is expected to be pointer-sized");

// Static data of a class template: one instance per program however many
// translation units include this header, and (all members zero) constant
// initialised, so a signal arriving before main() finds a valid table.
template <class Unused = void>
struct signal_globals {
    static signal_state state[signal_limit];

    // Async-signal-safe: atomics, write(), errno saved and restored.
    static void handler(int signo, siginfo_t* info, void*) {
        if (signo <= 0 || signo >= signal_limit) return;
        int saved_errno = errno;
        signal_state& s = state[signo];
        s.busy.fetch_add(1); // seq_cst, paired with release_signal()
        int fd = s.wake_fd.load() - 1;
        if (fd >= 0) {
            record_sender(s, signo, info);
            // Only the first arrival since the loop last looked wakes it: a
            // storm costs one write. The count itself is never lost. In a
            // forked child the wake-up fd is still the parent's: no write
            // (and the count stays the child's, until its after_fork() drops
            // it).
            if (s.pending.fetch_add(1) == 0 && getpid() == s.claimant.load()) wake_write(fd);
        }
        s.busy.fetch_sub(1);
        errno = saved_errno;
    }

    // Writer side of the seqlock. Two handlers of one signal may run at once
    // in two threads: the second one skips (its sender is as recent).
    static void record_sender(signal_state& s, int signo, const siginfo_t* info) {
        int pid = 0;
        unsigned uid = 0;
        uintptr_t value = 0;
        bool sent = info && (info->si_code == SI_USER || info->si_code == SI_QUEUE ||
#ifdef SI_TKILL
                             info->si_code == SI_TKILL ||
#endif
                             signo == SIGCHLD);
        if (sent) {
            pid = static_cast<int>(info->si_pid);
            uid = static_cast<unsigned>(info->si_uid);
        }
        if (info && info->si_code == SI_QUEUE) memcpy(&value, &info->si_value, sizeof value);
        // Release stores of the data (no fences: ThreadSanitizer cannot
        // check them): a reader that sees new data also sees the odd count.
        unsigned q = s.seq.load(std::memory_order_relaxed);
        if ((q & 1u) || !s.seq.compare_exchange_strong(q, q + 1u, std::memory_order_relaxed)) return;
        s.pid.store(pid, std::memory_order_release);
        s.uid.store(uid, std::memory_order_release);
        s.value.store(value, std::memory_order_release);
        s.seq.store(q + 2u, std::memory_order_release);
    }
};

template <class Unused>
signal_state signal_globals<Unused>::state[signal_limit];

typedef signal_globals<> globals;

// Reader side, in the loop thread. A writer is a few instructions long, so a
// few retries suffice; if a handler in another thread is preempted mid-write,
// we give up after 64 tries and may pair one sender's pid with another's uid.
inline void read_sender(const signal_state& s, signal_event& ev) {
    for (int tries = 0; tries < 64; ++tries) {
        unsigned q1 = s.seq.load(std::memory_order_acquire);
        ev.pid = narrow<pid_t>(s.pid.load(std::memory_order_acquire));
        ev.uid = narrow<uid_t>(s.uid.load(std::memory_order_acquire));
        uintptr_t value = s.value.load(std::memory_order_acquire);
        memcpy(&ev.value, &value, sizeof value);
        if (!(q1 & 1u) && s.seq.load(std::memory_order_relaxed) == q1) return;
        sched_yield();
    }
}

// A signal number that may be watched, before asking sigaction().
inline bool watchable_signal(int signo) {
    return signo > 0 && signo < signal_limit && signo != SIGKILL && signo != SIGSTOP;
}

// What claiming a signal changed, to be put back when it is given back: the
// disposition, and whether this thread had the signal blocked.
struct claimed_signal {
    struct sigaction disposition;
    bool was_blocked;
};

// Take the signal for `owner`: claim it process-wide, install the handler,
// and unblock it in this thread. What was there before goes to `saved`.
inline error_code claim_signal(int signo, const void* owner, int wake_fd, claimed_signal* saved) {
    signal_state& s = globals::state[signo];
    const void* nobody = nullptr;
    if (!s.owner.compare_exchange_strong(nobody, owner)) return errc::already_watched;
    s.pending.store(0);
    s.claimant.store(narrow<int>(getpid()));
    s.wake_fd.store(wake_fd + 1);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = &globals::handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART | SA_SIGINFO;
    if (sigaction(signo, &sa, &saved->disposition) != 0) {
        int e = errno;
        s.wake_fd.store(0);
        s.owner.store(nullptr);
        // EINVAL: a number libc or the kernel keeps for itself (glibc's
        // threading signals between the standard and real-time ones).
        return e == EINVAL ? error_code(errc::bad_argument, e) : error_code(errc::system, e);
    }
    sigset_t one, before;
    sigemptyset(&one);
    sigaddset(&one, signo);
    sigprocmask(SIG_UNBLOCK, &one, &before); // this thread only, see block_signals()
    saved->was_blocked = sigismember(&before, signo) == 1;
    return error_code();
}

// Give the signal back: block it again in this thread if it was blocked when
// claimed (a daemon that blocks SIGTERM while it shuts down must not be
// killed by one because a watcher came and went), restore the disposition,
// then wait until no handler is still using the wake-up fd, which may be
// closed right after. The handler increments `busy` before reading `wake_fd`
// and we clear `wake_fd` before reading `busy` (all seq_cst), so a handler
// that still saw the fd is always seen as busy here.
inline void release_signal(int signo, const claimed_signal& saved) {
    signal_state& s = globals::state[signo];
    if (saved.was_blocked) {
        sigset_t one;
        sigemptyset(&one);
        sigaddset(&one, signo);
        sigprocmask(SIG_BLOCK, &one, nullptr);
    }
    sigaction(signo, &saved.disposition, nullptr); // cannot fail: the same call succeeded when claiming
    s.wake_fd.store(0);
    while (s.busy.load() != 0) sched_yield();
    s.owner.store(nullptr);
}

// After fork(), in the child: route the signal to the child's new wake-up fd and
// drop the count inherited from the parent (it is the parent's to deliver).
inline void retarget_signal(int signo, int wake_fd) {
    signal_state& s = globals::state[signo];
    s.wake_fd.store(0);
    s.claimant.store(narrow<int>(getpid()));
    s.pending.store(0);
    s.wake_fd.store(wake_fd + 1);
}

// A loop's signal and child watchers: the fixed tables and the hook through
// which the loop hands it each wake-up. Part of basic_loop.
template <size_t Signals, size_t Children>
class signal_table : private loop_hook {
    // One spare slot each: a callback can replace its own watcher at once.
    typedef slot_pool<Signals, 1> sig_pool;
    typedef slot_pool<Children, 1> kid_pool;

public:
    explicit signal_table(loop_base& owner)
        : loop_(&owner), reap_(nullptr), chld_users_(0), chld_count_(0), chld_watched_(false), kids_due_(false) {
        on_wake = &signal_table::dispatch;
        on_fork = nullptr; // the loop's after_fork() calls after_fork() below itself
        active = 0;
        next = nullptr;
        memset(&chld_saved_, 0, sizeof chld_saved_);
        for (size_t i = 0; i < sig_pool::slots; ++i) sigs_[i].signo = 0;
        for (size_t i = 0; i < kid_pool::slots; ++i) kids_[i].pid = 0;
        loop_->attach(this);
    }

    ~signal_table() {
        for (size_t i = 0; i < sig_pool::slots; ++i)
            if (sigs_[i].signo) give_back(sigs_[i]);
        if (chld_users_ > 0) release_signal(SIGCHLD, chld_saved_);
        loop_->detach(this);
    }

    signal_table(const signal_table&) = delete;
    signal_table& operator=(const signal_table&) = delete;

    // A failed watch carries its errno in the handle: h.error().sys().
    // A signal already watched is refused as such before a full table is
    // (the order of watch()); SIGCHLD too, though it is shared with this
    // loop's child watchers.
    template <class F>
    signal_handle add(int signo, F&& cb) {
        if (!watchable_signal(signo) || is_null_callable(cb)) return signal_handle(errc::bad_argument);
        if (signo == SIGCHLD ? chld_watched_ : globals::state[signo].owner.load() != nullptr)
            return signal_handle(errc::already_watched);
        if (sig_pool_.full()) return signal_handle(errc::table_full);
        if (loop_->wake_fd() < 0) return signal_handle(no_wake_fd());
        // Claimed before a slot is taken: a refusal leaves no trace (not even
        // in the high-water mark).
        claimed_signal saved;
        memset(&saved, 0, sizeof saved);
        error_code e = signo == SIGCHLD ? take_sigchld() : claim_signal(signo, this, loop_->wake_fd(), &saved);
        if (e) return signal_handle(e);
        uint64_t id = sig_pool_.acquire(); // not full: checked above
        sig_slot& s = sigs_[slot_of(id)];
        s.saved = saved;
        s.cb.emplace(std::forward<F>(cb));
        s.signo = signo;
        if (signo == SIGCHLD) chld_watched_ = true;
        ++active;
        return signal_handle::from_id(id);
    }

    error_code remove(signal_handle h) {
        uint16_t slot = sig_pool_.lookup(h.id());
        if (slot == sig_pool_.none) return errc::stale_handle;
        give_back(sigs_[slot]);
        running_.release(sig_pool_, sigs_[slot].cb, slot);
        return error_code();
    }

    template <class F>
    child_handle add_child(pid_t pid, F&& cb) {
        if (pid <= 0 || is_null_callable(cb)) return child_handle(errc::bad_argument);
        if (kid_pool_.full()) return child_handle(errc::table_full);
        for (size_t i = 0; i < kid_pool::slots; ++i)
            if (kids_[i].pid == pid) return child_handle(errc::already_watched);
        if (loop_->wake_fd() < 0) return child_handle(no_wake_fd());
        if (error_code e = take_sigchld()) return child_handle(e);
        // SIGCHLD is caught from here on; a child that ended earlier is
        // already a zombie and sends nothing more: look once now. WNOWAIT
        // leaves it unreaped, so unwatching before the report still leaves
        // the child to its owner.
        siginfo_t info;
        memset(&info, 0, sizeof info);
        int r;
        do r = waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT);
        while (r < 0 && errno == EINTR);
        if (r < 0) { // not our child (ECHILD: errc::bad_argument), or already reaped by someone else
            int e = errno;
            drop_sigchld();
            return child_handle(error_code(e == ECHILD ? errc::bad_argument : errc::system, e));
        }
        uint64_t id = kid_pool_.acquire();
        if (id == 0) {
            drop_sigchld();
            return child_handle(errc::table_full);
        }
        kid_slot& k = kids_[slot_of(id)];
        k.cb.emplace(std::forward<F>(cb));
        k.pid = pid;
        reap_ = &signal_table::reap_children;
        if (info.si_pid == pid) { // reported from the loop, never from inside on_child()
            kids_due_ = true;
            loop_->wake();
        }
        ++active;
        return child_handle::from_id(id);
    }

    // Stop watching a child; it is left unreaped.
    error_code remove_child(child_handle h) {
        uint16_t slot = kid_pool_.lookup(h.id());
        if (slot == kid_pool_.none) return errc::stale_handle;
        forget_child(slot);
        return error_code();
    }

    table_stats signal_stats() const { return sig_pool_.stats(); }
    table_stats child_stats() const { return kid_pool_.stats(); }

    // The loop's after_fork(), in the child: signals now wake the child's own
    // wake-up fd, with the parent's pending counts dropped. The child watchers name
    // the parent's children, which this process can neither wait for nor
    // reap: they are dropped, without a call. (Called directly rather than as
    // the hook's on_fork, so that only programs calling after_fork() link it.)
    void after_fork() {
        int fd = loop_->wake_fd();
        for (size_t i = 0; i < sig_pool::slots; ++i)
            if (sigs_[i].signo && sigs_[i].signo != SIGCHLD) retarget_signal(sigs_[i].signo, fd);
        for (uint16_t i = 0; i < kid_pool::slots; ++i)
            if (kids_[i].pid) forget_child(i);
        if (chld_users_ > 0) retarget_signal(SIGCHLD, fd);
        chld_count_ = 0;
        kids_due_ = false;
    }

private:
    struct sig_slot {
        signal_callback cb;
        int signo; // 0: free
        claimed_signal saved; // what to restore (not used for SIGCHLD)
    };
    struct kid_slot {
        child_callback cb;
        pid_t pid; // 0: free
    };

    // The call invoke() makes, out of line: the event is copied once, not
    // once for each of invoke()'s two paths (with and without stall timing).
    struct deliver {
        signal_callback* cb;
        signal_event* ev;
        MICROLOOP_DETAIL_NOINLINE void operator()() { (*cb)(*ev); }
    };

    // The loop has no wake-up fd: the error says why it could not be made.
    error_code no_wake_fd() { return loop_->wake(); }

    // SIGCHLD serves both a SIGCHLD watcher and every child watcher: it is
    // claimed for the first of them and given back after the last.
    error_code take_sigchld() {
        if (chld_users_ == 0) {
            if (error_code e = claim_signal(SIGCHLD, this, loop_->wake_fd(), &chld_saved_)) return e;
            chld_count_ = 0;
        }
        ++chld_users_;
        return error_code();
    }
    void drop_sigchld() {
        if (--chld_users_ == 0) release_signal(SIGCHLD, chld_saved_);
    }

    void give_back(sig_slot& s) {
        if (s.signo == SIGCHLD) {
            chld_watched_ = false;
            drop_sigchld();
        } else {
            release_signal(s.signo, s.saved);
        }
        s.signo = 0;
        --active;
    }

    void forget_child(uint16_t slot) {
        kids_[slot].pid = 0;
        kids_[slot].cb.reset(); // a running child callback's slot is already retired
        kid_pool_.release(slot);
        --active;
        drop_sigchld();
    }

    static void dispatch(loop_hook* hook) {
        signal_table* self = static_cast<signal_table*>(hook);
        if (self->chld_users_ > 0) self->chld_count_ += globals::state[SIGCHLD].pending.exchange(0);
        if (self->reap_ && (self->kids_due_ || self->chld_count_ > 0)) self->reap_(self);
        self->dispatch_signals();
    }

    // Each watched child is checked on its own; a SIGCHLD only says that
    // some child changed state, and several exits may share one SIGCHLD.
    // Reached through reap_, which only on_child() sets: a program that never
    // watches a child links neither this nor waitpid().
    static void reap_children(signal_table* self) { self->reap(); }
    void reap() {
        kids_due_ = false;
        for (size_t i = 0; i < kid_pool::slots; ++i) {
            kid_slot& k = kids_[i];
            if (k.pid == 0) continue;
            int status = 0;
            pid_t r;
            do r = waitpid(k.pid, &status, WNOHANG);
            while (r < 0 && errno == EINTR);
            if (r == 0) continue; // still running
            // The watcher is gone before its callback runs: its handle is
            // stale inside the callback, and its slot is reused only after
            // (the spare slot lets the callback watch another child).
            uint16_t slot = static_cast<uint16_t>(i);
            child_event ev = {child_handle::from_id(kid_pool_.id_of(slot)), k.pid, r == k.pid ? status : -1};
            kid_pool_.retire(slot);
            k.pid = 0;
            --active;
            drop_sigchld();
            auto done = on_scope_exit([this, &k, slot] {
                k.cb.reset();
                kid_pool_.recycle(slot);
            });
            loop_->invoke(k.cb, source_kind::child, ev.handle.id(), narrow<int>(ev.pid), ev);
        }
    }

    void dispatch_signals() {
        for (size_t i = 0; i < sig_pool::slots; ++i) {
            sig_slot& s = sigs_[i];
            if (s.signo == 0) continue;
            signal_state& g = globals::state[s.signo];
            unsigned n;
            if (s.signo == SIGCHLD) {
                n = chld_count_;
                chld_count_ = 0;
            } else {
                n = g.pending.exchange(0);
            }
            if (n == 0) continue;
            uint16_t slot = static_cast<uint16_t>(i);
            signal_event ev;
            ev.handle = signal_handle::from_id(sig_pool_.id_of(slot));
            ev.signo = s.signo;
            ev.count = n;
            read_sender(g, ev);
            running_frame f;
            running_.begin(f, slot);
            auto done = on_scope_exit([this, &f, &s] { running_.end(f, sig_pool_, s.cb); });
            deliver call = {&s.cb, &ev};
            loop_->invoke(call, source_kind::signal, ev.handle.id(), ev.signo);
        }
        chld_count_ = 0; // nobody else wants the SIGCHLD count
    }

    loop_base* loop_;
    void (*reap_)(signal_table*); // reap_children once a child was watched, else null
    sig_pool sig_pool_;
    sig_slot sigs_[sig_pool::slots];
    kid_pool kid_pool_;
    kid_slot kids_[kid_pool::slots];
    claimed_signal chld_saved_;
    unsigned chld_users_;
    unsigned chld_count_; // SIGCHLD arrivals taken, for a SIGCHLD watcher
    bool chld_watched_;   // a signal watcher for SIGCHLD exists (at most one)
    bool kids_due_;       // a child was found already ended when watched
    running_slot running_; // the signal slots whose callbacks run now
};

} // namespace detail

// Makes writes to a closed pipe or socket fail with EPIPE instead of killing
// the process: SIGPIPE's disposition becomes SIG_IGN, for the whole process
// and for programs it execs later (reset it in a child before exec if they
// expect the default). microloop never does this by itself: the disposition
// belongs to the application. For sockets alone, send(..., MSG_NOSIGNAL)
// needs no global change. errc::already_watched if a loop watches SIGPIPE.
inline error_code ignore_sigpipe() {
    if (detail::globals::state[SIGPIPE].owner.load()) return errc::already_watched;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_IGN;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGPIPE, &sa, nullptr) != 0) return error_code(errc::system, errno);
    return error_code();
}

} // namespace microloop

#endif // MICROLOOP_SIGNAL_HPP
