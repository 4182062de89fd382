// SPDX-License-Identifier: MIT
// microloop/detail/threads.hpp - internal: what the modules that run threads
// of their own share (worker_pool, the thread AIO engine, loop_group).
//
//   pow2_at_least(n)       the power of two a ring of n entries needs
//   spmc_ring<Size>        loop thread to workers: a bounded lock-free ring
//   completion_stack       workers to the loop thread: a lock-free stack
//   all_signals_blocked    every signal blocked in this thread, for a scope
//   thread_starter         threads made with every signal blocked, a stack size
//   thread_crew<Threads>   a fixed set of such threads sleeping on a semaphore
//
// Not part of the API: names and behaviour may change in any release.
#ifndef MICROLOOP_DETAIL_THREADS_HPP
#define MICROLOOP_DETAIL_THREADS_HPP

#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include <atomic>

#include "../config.hpp"
#include "../error.hpp"

// A pause point for the library's own tests, at the moments of the rings
// where another thread's interleaving matters: empty, so it costs nothing.
// A test program defines it before its first microloop header (every one of
// its files alike) to stop a thread there.
#ifndef MICROLOOP_DETAIL_TEST_YIELD
#define MICROLOOP_DETAIL_TEST_YIELD(where)
#endif

namespace microloop {
namespace detail {

constexpr size_t pow2_at_least(size_t n, size_t p = 1) { return p >= n ? p : pow2_at_least(n, p * 2); }

// A bounded ring of 32-bit values with one producer (a loop thread) and many
// consumers (worker threads), after Dmitry Vyukov's bounded queue: each cell
// carries a sequence number, so neither side takes a lock. Size is a power
// of two. What the worker pool and the thread AIO engine hand their workers.
template <size_t Size>
class spmc_ring {
    static_assert(Size >= 1 && (Size & (Size - 1)) == 0, "spmc_ring: a power of two");

public:
    spmc_ring() { reset(); }
    spmc_ring(const spmc_ring&) = delete;
    spmc_ring& operator=(const spmc_ring&) = delete;

    // Empty again; only while no other thread uses the ring.
    void reset() {
        for (size_t i = 0; i < Size; ++i) cells_[i].seq.store(i, std::memory_order_relaxed);
        enqueue_.store(0, std::memory_order_relaxed);
        dequeue_.store(0, std::memory_order_relaxed);
    }
    // The producer only. Publishes v, and what was written before (release);
    // false when the ring is full.
    bool try_push(uint32_t v) {
        size_t pos = enqueue_.load(std::memory_order_relaxed);
        cell& c = cells_[pos & (Size - 1)];
        if (c.seq.load(std::memory_order_acquire) != pos) return false;
        c.value = v;
        enqueue_.store(pos + 1, std::memory_order_relaxed);
        c.seq.store(pos + 1, std::memory_order_release);
        return true;
    }
    // Any thread. False when the ring is empty.
    bool pop(uint32_t& v) {
        size_t pos = dequeue_.load(std::memory_order_relaxed);
        for (;;) {
            cell& c = cells_[pos & (Size - 1)];
            size_t seq = c.seq.load(std::memory_order_acquire);
            intptr_t diff = static_cast<intptr_t>(seq) - static_cast<intptr_t>(pos + 1);
            if (diff == 0) {
                if (dequeue_.compare_exchange_weak(pos, pos + 1, std::memory_order_relaxed)) {
                    MICROLOOP_DETAIL_TEST_YIELD("spmc_ring::pop claimed");
                    v = c.value;
                    c.seq.store(pos + Size, std::memory_order_release);
                    return true;
                }
            } else if (diff < 0) {
                return false; // empty
            } else {
                pos = dequeue_.load(std::memory_order_relaxed);
            }
        }
    }

private:
    struct cell {
        std::atomic<size_t> seq;
        uint32_t value;
    };
    cell cells_[Size];
    std::atomic<size_t> enqueue_, dequeue_;
};

// Completions handed from worker threads to the loop's thread: a Treiber
// stack that workers push to and the loop thread takes whole (so no ABA
// problem), then hands out oldest first. The entries and their links are the
// caller's; `next(i)` gives entry i's link (a uint32_t&). pop() keeps what
// it took in a member, so that a callback that throws between two pops
// leaves the rest for the next call.
class completion_stack {
public:
    static const uint32_t empty = 0xffffffffu;

    completion_stack() : top_(empty), ready_(empty) {}
    completion_stack(const completion_stack&) = delete;
    completion_stack& operator=(const completion_stack&) = delete;

    // Empty again; only while no worker uses it.
    void reset() {
        top_.store(empty, std::memory_order_relaxed);
        ready_ = empty;
    }
    // Any thread. Publishes what was written to entry i before (release).
    template <class Next>
    void push(uint32_t i, Next next) {
        uint32_t top = top_.load(std::memory_order_relaxed);
        do next(i) = top;
        while (!top_.compare_exchange_weak(top, i, std::memory_order_release, std::memory_order_relaxed));
    }
    // The loop's thread: the oldest completion, or empty.
    template <class Next>
    uint32_t pop(Next next) {
        if (ready_ == empty) {
            uint32_t top = top_.exchange(empty, std::memory_order_acquire);
            uint32_t order = empty; // the stack is newest first: reverse it
            while (top != empty) {
                uint32_t below = next(top);
                next(top) = order;
                order = top;
                top = below;
            }
            ready_ = order;
            if (ready_ == empty) return empty;
        }
        const uint32_t i = ready_;
        ready_ = next(i);
        return i;
    }
    // The loop's thread: whether pop() would find something.
    bool pending() const { return ready_ != empty || top_.load(std::memory_order_relaxed) != empty; }

private:
    std::atomic<uint32_t> top_;
    uint32_t ready_; // taken from the stack, oldest first, not yet popped
};

// Every signal blocked in the calling thread for its lifetime: threads made
// meanwhile start with all of them blocked.
class all_signals_blocked {
public:
    all_signals_blocked() {
        sigset_t all;
        sigfillset(&all);
        pthread_sigmask(SIG_BLOCK, &all, &old_);
    }
    ~all_signals_blocked() { pthread_sigmask(SIG_SETMASK, &old_, nullptr); }
    all_signals_blocked(const all_signals_blocked&) = delete;
    all_signals_blocked& operator=(const all_signals_blocked&) = delete;

private:
    sigset_t old_;
};

// Makes threads that start with every signal blocked (the effect of
// block_signals() in them, without a window: they inherit the mask, blocked
// for the starter's lifetime in the thread that makes them), so signals go
// to the loop's thread. stack_bytes: each thread's stack (0: the system's
// default). pthread_create() is called directly: no exceptions, also with
// -fno-exceptions.
class thread_starter {
public:
    explicit thread_starter(size_t stack_bytes = 0) : attr_ok_(false) {
        int rc = pthread_attr_init(&attr_);
        if (rc != 0) {
            error_ = error_code(errc::system, rc);
            return;
        }
        attr_ok_ = true;
        if (stack_bytes != 0 && (rc = pthread_attr_setstacksize(&attr_, stack_bytes)) != 0)
            error_ = rc == EINVAL ? error_code(errc::bad_argument, rc) : error_code(errc::system, rc);
    }
    ~thread_starter() {
        if (attr_ok_) pthread_attr_destroy(&attr_);
    }
    thread_starter(const thread_starter&) = delete;
    thread_starter& operator=(const thread_starter&) = delete;

    // A thread running main(arg). errc::system with the errno of
    // pthread_create (or pthread_attr_init), errc::bad_argument for a stack
    // size pthread refused.
    error_code start(pthread_t& thread, void* (*main)(void*), void* arg) {
        if (error_) return error_;
        const int rc = pthread_create(&thread, &attr_, main, arg);
        return rc == 0 ? error_code() : error_code(errc::system, rc);
    }

private:
    pthread_attr_t attr_;
    error_code error_;
    bool attr_ok_;
    all_signals_blocked blocked_; // the threads inherit the mask
};

// Threads threads running the same main(arg), which sleep on a POSIX
// semaphore between jobs (sem_post is a futex wake only when one sleeps).
// Used from the owner's thread; wait() from the crew's threads.
template <size_t Threads>
class thread_crew {
public:
    thread_crew() : started_(0), sem_ok_(false), stopping_(false) {}
    ~thread_crew() {
        if (sem_ok_) sem_destroy(&sem_);
    }
    thread_crew(const thread_crew&) = delete;
    thread_crew& operator=(const thread_crew&) = delete;

    // Starts every thread (a crew left by forget() starts afresh). On a
    // failure the threads already started are stopped again: errc::system
    // with the errno of sem_init or pthread_create, errc::bad_argument for a
    // stack size pthread refused.
    error_code start(void* (*main)(void*), void* arg, size_t stack_bytes) {
        if (sem_ok_) sem_destroy(&sem_);
        sem_ok_ = false;
        stopping_.store(false, std::memory_order_relaxed);
        if (sem_init(&sem_, 0, 0) != 0) return error_code(errc::system, errno);
        sem_ok_ = true;
        error_code err;
        {
            thread_starter starter(stack_bytes);
            for (size_t t = 0; t < Threads && !err; ++t)
                if (!(err = starter.start(threads_[t], main, arg))) ++started_;
        }
        if (err) stop();
        return err;
    }
    // One job more for the threads: wakes one if any sleeps.
    void post() { sem_post(&sem_); }
    // In a crew thread: sleeps until there is a job (true) or the crew stops
    // (false: the thread returns).
    bool wait() {
        while (sem_wait(&sem_) != 0) {
        } // EINTR (every signal is blocked, but a debugger may stop us)
        return !stopping_.load(std::memory_order_acquire);
    }
    // Each thread finishes its job, then returns; joins them all.
    void stop() {
        stopping_.store(true, std::memory_order_release);
        for (size_t t = 0; t < started_; ++t) sem_post(&sem_);
        for (size_t t = 0; t < started_; ++t) pthread_join(threads_[t], nullptr);
        started_ = 0;
    }
    // In a forked child: the threads are the parent's, nothing to join.
    void forget() { started_ = 0; }

private:
    size_t started_;
    bool sem_ok_;
    std::atomic<bool> stopping_;
    sem_t sem_;
    pthread_t threads_[Threads];
};

} // namespace detail
} // namespace microloop

#endif // MICROLOOP_DETAIL_THREADS_HPP
