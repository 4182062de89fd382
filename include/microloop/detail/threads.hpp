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
// consumers (worker threads), neither side taking a lock. Two counters: the
// producer publishes a value by moving `enqueue_` past its cell, a consumer
// reads the value of the cell at `dequeue_` and claims it by moving
// `dequeue_` past it with a compare-and-swap; a failed CAS means another
// consumer took that value, and the value read is dropped. A cell is free
// again the moment it is claimed: a consumer never owes the ring a second
// store. (Vyukov's queue, where a consumer frees its cell with a store after
// its claim, let a consumer preempted between the two keep the producer out
// of that cell once the producer came round to it again, however empty the
// ring was: a push refused, and a value lost where the caller counted on
// room.) So a push fails only when Size values are in the ring. What the
// worker pool and the thread AIO engine hand their workers.
template <size_t Size>
class spmc_ring {
    static_assert(Size >= 1 && (Size & (Size - 1)) == 0, "spmc_ring: a power of two");

public:
    spmc_ring() { reset(); }
    spmc_ring(const spmc_ring&) = delete;
    spmc_ring& operator=(const spmc_ring&) = delete;

    // Empty again; only while no other thread uses the ring.
    void reset() {
        for (size_t i = 0; i < Size; ++i) cells_[i].store(0, std::memory_order_relaxed);
        enqueue_.store(0, std::memory_order_relaxed);
        dequeue_.store(0, std::memory_order_relaxed);
    }
    // The producer only. Publishes v, and what was written before (release);
    // false when Size values are in the ring.
    bool try_push(uint32_t v) {
        const size_t pos = enqueue_.load(std::memory_order_relaxed);
        // Acquire: the consumer that claimed this cell read it before.
        if (pos - dequeue_.load(std::memory_order_acquire) >= Size) return false;
        cells_[pos & (Size - 1)].store(v, std::memory_order_relaxed);
        enqueue_.store(pos + 1, std::memory_order_release);
        return true;
    }
    // Any thread. False when the ring is empty.
    bool pop(uint32_t& v) {
        size_t pos = dequeue_.load(std::memory_order_relaxed);
        for (;;) {
            if (pos == enqueue_.load(std::memory_order_acquire)) return false; // empty
            // Read before the claim: once claimed, the producer may reuse
            // the cell. A value the producer rewrites meanwhile is never
            // returned: dequeue_ has moved on, and the CAS fails.
            const uint32_t value = cells_[pos & (Size - 1)].load(std::memory_order_relaxed);
            if (dequeue_.compare_exchange_weak(pos, pos + 1, std::memory_order_acq_rel,
                                               std::memory_order_relaxed)) {
                MICROLOOP_DETAIL_TEST_YIELD("spmc_ring::pop claimed");
                v = value;
                return true;
            }
        }
    }

private:
    std::atomic<uint32_t> cells_[Size];
    std::atomic<size_t> enqueue_, dequeue_;
};

// Completions handed from worker threads to the loop's thread: a Treiber
// stack that workers push to and the loop thread takes whole (so no ABA
// problem), then hands out oldest first. The entries and their links are the
// caller's; `next(i)` gives entry i's link (a uint32_t&).
//
// One batch per pass: take() moves what the workers pushed so far into the
// batch (unless a batch is still under way), pop() hands out the batch only,
// never what was pushed since. The batch is a member, not the caller's
// local: a nested pass (a callback that polls the loop) goes on with the
// same batch, and a callback that throws between two pops leaves the rest
// for the next pass. Loop-thread pushes (a cancel) wait for the next pass.
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
    // The loop's thread, at the start of a pass: what was pushed so far
    // becomes the batch, oldest first, if the last batch is done.
    template <class Next>
    void take(Next next) {
        if (ready_ != empty || top_.load(std::memory_order_relaxed) == empty) return;
        uint32_t top = top_.exchange(empty, std::memory_order_acquire);
        uint32_t order = empty; // the stack is newest first: reverse it
        while (top != empty) {
            uint32_t below = next(top);
            next(top) = order;
            order = top;
            top = below;
        }
        ready_ = order;
    }
    // The loop's thread: the batch's oldest completion, or empty.
    template <class Next>
    uint32_t pop(Next next) {
        const uint32_t i = ready_;
        if (i != empty) ready_ = next(i);
        return i;
    }
    // The loop's thread: whether a batch or a push is waiting.
    bool pending() const { return ready_ != empty || top_.load(std::memory_order_relaxed) != empty; }

private:
    std::atomic<uint32_t> top_;
    uint32_t ready_; // the batch: taken from the stack, oldest first, not yet popped
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
