// SPDX-License-Identifier: MIT
// microloop/loop_group.hpp - one loop per core: N loops on N threads.
//
//     microloop::loop_group<8> group;                 // at most 8 loops
//     group.start();                                  // one per online CPU (at most 8)
//     group.post(i, [&] { serve(group.loop(i)); });   // runs in loop i's thread
//     ...
//     main_loop.on_signal(SIGTERM, [&](microloop::signal_event) {
//         group.stop();                               // stops and joins them all
//         main_loop.stop();
//     });
//
// Each member is a Loop and a mailbox<MailboxN, Size> on it, built in place
// in the group object by start() and destroyed by stop(): a group that is not
// started holds no fd and no thread. Every thread starts with all signals
// blocked (signals are for the main loop's thread; a signal watcher in a
// member loop still works, its handler runs in the thread that takes the
// signal and wakes the owning loop). Nothing here is global: several groups,
// and other loops, run side by side.
//
// Rules. start(), stop() and loop(i) outside a member thread belong to the
// thread that owns the group (stop() also from a callback of a loop that is
// not a member, such as the main loop's signal callback; never from a member
// loop: a thread cannot join itself, errc::bad_argument). post() is for any
// thread, while the group runs; in a forked child it is refused with
// errc::forked (the member threads are the parent's: nothing would run it).
// result(i) is for any thread, at any time. The loops exist between start()
// and stop() only; loop(i) belongs to loop i's thread: set it up from a
// callback posted to it.
//
// stop(): refuses later posts (errc::canceled), waits out posts in progress,
// stops every loop (each finishes the callback it is running), joins every
// thread, then destroys the loops: callbacks posted but not run are dropped
// (the mailbox's close() rule). In a forked child it only destroys its copy
// of the loops: nothing to stop or join, and the parent's fds untouched.
// A loop whose run() ended early (select() failed, or its own code called
// stop()) has its error in result(i) until the next start().
//
// CPU pinning (start(n, pin_cpus=true)): member i is pinned to the i-th CPU
// the process may run on (sched_getaffinity), modulo their count; best
// effort: pinned(i) says whether it worked.
#ifndef MICROLOOP_LOOP_GROUP_HPP
#define MICROLOOP_LOOP_GROUP_HPP

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <unistd.h>

#include <atomic>
#include <new>
#include <utility>

#include "detail/threads.hpp"
#include "error.hpp"
#include "loop.hpp"
#include "mailbox.hpp"

namespace microloop {

// CPUs online now (sysconf(_SC_NPROCESSORS_ONLN)), at least 1.
inline size_t online_cpus() {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? static_cast<size_t>(n) : 1;
}

template <size_t MaxLoops = 8, class Loop = loop<>, size_t MailboxN = 64, size_t Size = MICROLOOP_CALLBACK_SIZE>
class loop_group {
    static_assert(MaxLoops >= 1, "a loop_group holds at least one loop");

public:
    typedef Loop loop_type;

    loop_group() : n_(0), accepting_(false), posting_(0) {
        for (size_t i = 0; i < MaxLoops; ++i) result_[i].store(0, std::memory_order_relaxed);
    }
    ~loop_group() { stop(); }
    loop_group(const loop_group&) = delete;
    loop_group& operator=(const loop_group&) = delete;

    // Starts n loops on n threads; n = 0: one per online CPU, at most
    // MaxLoops. errc::bad_argument if n > MaxLoops or already started;
    // errc::system (with the errno) if a pipe or a thread could not be made,
    // and then nothing is left running.
    error_code start(size_t n = 0, bool pin_cpus = false);

    // Queue cb() for loop i's thread. Any thread. errc::bad_argument (no
    // loop i), errc::canceled (not running), errc::table_full (MailboxN
    // queued for that loop), errc::forked (a forked child: no member thread
    // runs here).
    template <class F>
    error_code post(size_t i, F&& cb) {
        posting_.fetch_add(1); // see stop(): as post() and close() in mailbox.hpp
        auto out = detail::on_scope_exit([this] { posting_.fetch_sub(1, std::memory_order_release); });
        if (!accepting_.load()) return errc::canceled;
        if (stamp_.forked()) return errc::forked; // one load and compare
        if (i >= n_ || i >= MaxLoops) return errc::bad_argument;
        return members_[i]->box.post(std::forward<F>(cb));
    }

    // Stops every loop, joins every thread, destroys the loops. Not from a
    // member loop's thread (errc::bad_argument). Does nothing if not started.
    error_code stop();

    // How many loops run (0 when stopped).
    size_t size() const { return n_; }
    // Loop i: use it from its own thread (inside a callback posted to it).
    Loop& loop(size_t i) { return members_[i]->loop; }
    // What loop i's run() returned, once it has returned (ok until then, and
    // for a run() that returned ok); kept after stop() until the next
    // start(). Any thread, at any time: loop i's thread stores it atomically.
    // errc::bad_argument for i >= MaxLoops.
    error_code result(size_t i) const {
        if (i >= MaxLoops) return errc::bad_argument;
        const uint32_t v = result_[i].load(std::memory_order_acquire);
        return error_code(static_cast<errc>(v & 0xffu), static_cast<int>(v >> 8));
    }
    // Whether start(n, true) pinned loop i to a CPU.
    bool pinned(size_t i) const { return i < MaxLoops && pinned_[i]; }

private:
    struct member {
        Loop loop;
        mailbox<MailboxN, Size> box;
        loop_group* group;
        size_t index;
        member(loop_group* g, size_t i) : loop(), box(loop), group(g), index(i) {}
    };

    static void* thread_main(void* arg) {
        member* m = static_cast<member*>(arg);
        const error_code e = m->loop.run();
        // The errc below an errno (errno values are far below 2^24).
        m->group->result_[m->index].store(static_cast<uint32_t>(static_cast<unsigned char>(e.code())) |
                                              static_cast<uint32_t>(e.sys()) << 8,
                                          std::memory_order_release);
        return nullptr;
    }
    void pin(size_t i);
    void destroy(size_t count, size_t joined);

    size_t n_;
    detail::fork_stamp stamp_; // taken by start(): is this a forked child of that process?
    std::atomic<bool> accepting_;
    std::atomic<size_t> posting_;
    member* members_[MaxLoops];
    pthread_t threads_[MaxLoops];
    std::atomic<uint32_t> result_[MaxLoops]; // written by member threads: see result()
    bool pinned_[MaxLoops];
    alignas(member) unsigned char storage_[MaxLoops][sizeof(member)];
};

template <size_t MaxLoops, class Loop, size_t MailboxN, size_t Size>
error_code loop_group<MaxLoops, Loop, MailboxN, Size>::start(size_t n, bool pin_cpus) {
    if (n_ != 0) return errc::bad_argument;
    if (n == 0) n = online_cpus() < MaxLoops ? online_cpus() : MaxLoops;
    if (n > MaxLoops) return errc::bad_argument;
    stamp_.take(getpid());
    for (size_t i = 0; i < MaxLoops; ++i) {
        members_[i] = nullptr;
        result_[i].store(0, std::memory_order_relaxed);
        pinned_[i] = false;
    }
    for (size_t i = 0; i < n; ++i) {
        members_[i] = ::new (static_cast<void*>(storage_[i])) member(this, i);
        if (error_code e = members_[i]->loop.wake()) { // the loop could not make its wake-up fd
            destroy(i + 1, 0);
            return e;
        }
    }
    detail::thread_starter starter; // every signal blocked in the threads
    for (size_t i = 0; i < n; ++i) {
        if (error_code e = starter.start(threads_[i], &loop_group::thread_main, members_[i])) {
            for (size_t k = 0; k < i; ++k) members_[k]->loop.stop();
            destroy(n, i);
            return e;
        }
        if (pin_cpus) pin(i);
    }
    n_ = n;
    accepting_.store(true);
    return error_code();
}

template <size_t MaxLoops, class Loop, size_t MailboxN, size_t Size>
error_code loop_group<MaxLoops, Loop, MailboxN, Size>::stop() {
    if (n_ == 0) return error_code();
    for (size_t i = 0; i < n_; ++i)
        if (pthread_equal(pthread_self(), threads_[i])) return errc::bad_argument;
    accepting_.store(false);
    size_t n = n_;
    n_ = 0;
    // In a forked child the threads (and their posts in progress) are the
    // parent's: nothing to wait for, stop or join; the loops' fds, shared
    // with the parent, are left alone (only closed).
    if (stamp_.forked()) {
        destroy(n, 0);
        return error_code();
    }
    while (posting_.load() != 0) sched_yield();
    for (size_t i = 0; i < n; ++i) members_[i]->loop.stop();
    destroy(n, n);
    return error_code();
}

// Joins the first `joined` threads, then destroys the first `count` members.
// Joined, a loop's thread is gone: the mailbox may be closed from here.
template <size_t MaxLoops, class Loop, size_t MailboxN, size_t Size>
void loop_group<MaxLoops, Loop, MailboxN, Size>::destroy(size_t count, size_t joined) {
    for (size_t i = 0; i < joined; ++i) pthread_join(threads_[i], nullptr);
    for (size_t i = 0; i < count; ++i) {
        members_[i]->~member();
        members_[i] = nullptr;
    }
}

template <size_t MaxLoops, class Loop, size_t MailboxN, size_t Size>
void loop_group<MaxLoops, Loop, MailboxN, Size>::pin(size_t i) {
#if defined(CPU_SETSIZE) && defined(CPU_ISSET) && defined(__linux__)
    cpu_set_t allowed;
    CPU_ZERO(&allowed);
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) return;
    int count = CPU_COUNT(&allowed);
    if (count <= 0) return;
    size_t want = i % static_cast<size_t>(count);
    for (size_t cpu = 0; cpu < static_cast<size_t>(CPU_SETSIZE); ++cpu) {
        if (!CPU_ISSET(cpu, &allowed)) continue;
        if (want-- == 0) {
            cpu_set_t one;
            CPU_ZERO(&one);
            CPU_SET(cpu, &one);
            pinned_[i] = pthread_setaffinity_np(threads_[i], sizeof one, &one) == 0;
            return;
        }
    }
#else
    (void)i;
#endif
}

} // namespace microloop

#endif // MICROLOOP_LOOP_GROUP_HPP
