// SPDX-License-Identifier: MIT
// microloop/worker_pool.hpp - blocking work on worker threads, the result
// back in the loop's thread.
//
//     microloop::loop<> loop;
//     microloop::worker_pool<4, 32> pool(loop);        // 4 threads, 32 submissions
//     if (pool.error()) ...                            // errc::system: a thread could not start
//     pool.submit([req] { return compress(req); },     // on a worker: returns an integer
//                 [req](microloop::work_event ev) {    // then in the loop's thread
//                     if (ev.status) ...               // errc::canceled: never started
//                     else finish(req, ev.result);
//                 });
//
// What work returns: an integer (int, ssize_t, bool...) or nothing (then 0),
// given to done as work_event::result (an int64_t). Anything bigger goes
// through the state the two callables capture a pointer to (a
// continuation_table slot, say). work must not throw: an exception that
// leaves a thread ends the process.
//
// Every submit() that returned ok gets exactly one done(work_event), in the
// loop's thread, through stall detection (source_kind::work): status ok and
// work's result, or errc::canceled when the pool shut down before the work
// started.
//
// Storage: Queue slots, each holding a submission from submit() until its
// done returns (queued, running, or finished and waiting for the loop), plus
// one spare done callback, so a done may submit again while the pool is
// full (a done run inside another's nested poll() finds the spare taken and
// keeps its slot until it returns). One batch of dones per pass. submit() is refused at once with errc::table_full when the Queue
// slots are taken; it never blocks and never allocates.
//
// How it works. Loop thread to workers: a bounded lock-free ring of slot
// indices (detail::spmc_ring: one producer, a cell claimed by one CAS is
// free at once) and a POSIX semaphore that
// idle workers sleep on (sem_post is a futex wake only when one sleeps).
// Workers to the loop: a lock-free stack of finished slots (a CAS push; the
// loop takes the whole stack with one exchange and reverses it to completion
// order) and loop.wake(), which writes one byte only if none is pending. No
// lock is taken on either side, so a preempted worker cannot hold up the loop.
//
// Shutdown (shutdown() or the destructor, loop thread only): queued work is
// marked canceled and never starts; running work finishes (shutdown() waits
// for it: it joins the threads); then every remaining done runs, in the
// shutdown() call: results first, canceled ones after. Later submissions are
// refused with errc::canceled. A pool keeps loop.run() running while
// submissions are outstanding.
//
// Threads: made in the constructor with pthread_create (no exceptions, also
// with -fno-exceptions), with every signal blocked before they start (the
// effect of block_signals(), without a window), so signals go to the loop's
// thread. A stack size may be given (0: the system's default). submit() and
// shutdown() belong to the loop's thread, like every other loop call.
//
// fork(): the child has none of the threads. After loop.after_fork() the
// child's pool drops the parent's submissions (their done callbacks are not
// called, finished or not) and refuses new ones with errc::forked;
// destroying it there joins nothing, also without after_fork() (the
// destructor checks the pid).
//
// Costs nothing unless used: every function is a template member, so a
// program that includes this header but makes no pool references no pthread
// or semaphore function, opens no fd and runs no static constructor.
#ifndef MICROLOOP_WORKER_POOL_HPP
#define MICROLOOP_WORKER_POOL_HPP

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <unistd.h>

#include <atomic>
#include <type_traits>
#include <utility>

#include "callback.hpp"
#include "detail/threads.hpp"
#include "error.hpp"
#include "loop_base.hpp"

namespace microloop {

// What a done callback is told.
struct work_event {
    int64_t result;    // what work() returned (0 for work returning void, or when canceled)
    error_code status; // ok: work ran; errc::canceled: shut down before it started
};

namespace detail {

// work() returning void counts as returning 0; an integer is widened.
template <class F, class R = decltype(std::declval<F&>()())>
struct work_adapter {
    static_assert(std::is_integral<R>::value || std::is_enum<R>::value,
                  "microloop: work must return an integer (or nothing); pass anything bigger through "
                  "the state it captures a pointer to");
    F f;
    int64_t operator()() { return narrow<int64_t>(f()); } // narrow(): no -Wuseless-cast for int64_t
};
template <class F>
struct work_adapter<F, void> {
    F f;
    int64_t operator()() {
        f();
        return 0;
    }
};

} // namespace detail

template <size_t Threads = 2, size_t Queue = 16, size_t Size = MICROLOOP_CALLBACK_SIZE>
class worker_pool : private loop_hook {
    static_assert(Threads >= 1, "a worker_pool needs at least one thread");
    static_assert(Queue >= 1 && Queue < 0x7fffffff, "a worker_pool's queue holds 1 to 2^31 - 2 submissions");

public:
    // Starts the threads. stack_bytes: each thread's stack (0: the default).
    // A failure is kept in error() and returned by every submit().
    explicit worker_pool(loop_base& l, size_t stack_bytes = 0);
    // shutdown().
    ~worker_pool();
    worker_pool(const worker_pool&) = delete;
    worker_pool& operator=(const worker_pool&) = delete;

    // Run work() on a worker, then done(work_event) in the loop's thread.
    // Loop thread only. errc::table_full when Queue submissions are
    // outstanding, errc::canceled after shutdown(), errc::bad_argument for a
    // null function pointer, error() if the pool could not start,
    // errc::forked in a forked child.
    template <class W, class D>
    error_code submit(W&& work, D&& done);

    // Cancel what is queued, wait for what runs, run every remaining done
    // (canceled ones with errc::canceled), stop the threads. Loop thread only
    // (also from inside a done callback); idempotent.
    void shutdown();

    // Why the pool could not start (errc::system with the errno of
    // pthread_create or sem_init, errc::bad_argument for a stack size
    // pthread refused), or ok.
    error_code error() const { return error_; }
    // Submissions whose done has not run yet.
    size_t in_flight() const { return active; }
    static constexpr size_t threads() { return Threads; }
    static constexpr size_t capacity() { return Queue; }

private:
    enum : unsigned char { st_free, st_queued, st_running, st_finished, st_canceled };
    static const uint32_t none = 0xffffffffu;
    // A slot is in the ring at most once (pushed by submit(), free again only
    // after a worker popped it and its done ran), and a popped cell is free
    // at once (spmc_ring): Queue cells are never full.
    static const size_t ring_size = detail::pow2_at_least(Queue);

    struct slot {
        detail::inplace_callback<int64_t(), Size> work;
        int64_t result;                   // written by the worker, read after the completion stack
        std::atomic<unsigned char> state; // queued -> running (worker) or canceled (shutdown)
        uint32_t next;                    // link in the completion stack
        uint32_t done;                    // which dones_ entry holds its done callback
    };

    static void* worker_main(void* arg);
    static void on_wake_fn(loop_hook* h) { static_cast<worker_pool*>(h)->complete(Queue); }
    static void on_fork_fn(loop_hook* h) { static_cast<worker_pool*>(h)->abandon(); }
    void abandon();
    void push_pending(uint32_t i);
    bool pop_pending(uint32_t& i) { return ring_.pop(i); } // the workers, and shutdown() after them
    // A slot's link in the completion stack.
    struct link_of {
        slot* slots;
        uint32_t& operator()(uint32_t k) const { return slots[k].next; }
    };
    void push_completed(uint32_t i) { completed_.push(i, link_of{slots_}); }
    void complete(size_t limit);
    void finish(uint32_t i);

    loop_base* loop_;
    pid_t pid_; // in a forked child, the threads and what is in flight are the parent's
    error_code error_;
    bool shut_;
    bool forked_;
    detail::thread_crew<Threads> crew_;
    slot slots_[Queue];
    detail::inplace_callback<void(work_event), Size> dones_[Queue + 1];
    uint32_t free_slots_[Queue];
    uint32_t free_dones_[Queue + 1];
    size_t nfree_slots_, nfree_dones_;
    detail::spmc_ring<ring_size> ring_; // slots to run, to the workers
    detail::completion_stack completed_; // finished slots, to the loop's thread
};

// ---- implementation -------------------------------------------------------------

template <size_t Threads, size_t Queue, size_t Size>
worker_pool<Threads, Queue, Size>::worker_pool(loop_base& l, size_t stack_bytes)
    : loop_(&l), pid_(getpid()), shut_(false), forked_(false), nfree_slots_(Queue), nfree_dones_(Queue + 1) {
    for (size_t i = 0; i < Queue; ++i) {
        slots_[i].result = 0;
        slots_[i].state.store(st_free, std::memory_order_relaxed);
        slots_[i].next = none;
        slots_[i].done = 0;
        free_slots_[i] = detail::narrow<uint32_t>(Queue - 1 - i); // slot 0 is handed out first
    }
    for (size_t i = 0; i <= Queue; ++i) free_dones_[i] = detail::narrow<uint32_t>(Queue - i);
    on_wake = &worker_pool::on_wake_fn;
    on_fork = &worker_pool::on_fork_fn;
    active = 0;
    next = nullptr;
    loop_->attach(this);

    error_ = crew_.start(&worker_pool::worker_main, this, stack_bytes);
}

template <size_t Threads, size_t Queue, size_t Size>
worker_pool<Threads, Queue, Size>::~worker_pool() {
    shutdown();
}

template <size_t Threads, size_t Queue, size_t Size>
template <class W, class D>
error_code worker_pool<Threads, Queue, Size>::submit(W&& work, D&& done) {
    if (forked_) return errc::forked;
    if (shut_) return errc::canceled;
    if (error_) return error_;
    if (detail::is_null_callable(work) || detail::is_null_callable(done)) return errc::bad_argument;
    if (nfree_slots_ == 0) return errc::table_full;
    const uint32_t i = free_slots_[--nfree_slots_];
    const uint32_t d = free_dones_[--nfree_dones_]; // never short: one more than the slots
    slot& s = slots_[i];
    typedef typename std::decay<W>::type Fn;
    s.work.emplace(detail::work_adapter<Fn>{std::forward<W>(work)});
    dones_[d].emplace(std::forward<D>(done));
    s.done = d;
    s.result = 0;
    s.state.store(st_queued, std::memory_order_relaxed);
    ++active;
    push_pending(i); // publishes the slot (release)
    crew_.post();
    return error_code();
}

template <size_t Threads, size_t Queue, size_t Size>
void worker_pool<Threads, Queue, Size>::shutdown() {
    if (shut_) return;
    shut_ = true;
    if (!forked_ && getpid() != pid_) abandon(); // a child that did not call after_fork(): nothing here is its own
    if (!forked_) {
        // Queued work never starts: a worker that takes it finds it canceled.
        for (size_t i = 0; i < Queue; ++i) {
            unsigned char queued = st_queued;
            slots_[i].state.compare_exchange_strong(queued, st_canceled, std::memory_order_acq_rel);
        }
        crew_.stop(); // waits for running work
        // The workers are gone: what they left in the ring is canceled work.
        uint32_t i;
        while (pop_pending(i)) push_completed(i);
        while (completed_.pending()) complete(static_cast<size_t>(-1)); // every remaining done, here
    }
    loop_->detach(this);
}

// Single producer (the loop thread); a cell for every slot, so never full.
template <size_t Threads, size_t Queue, size_t Size>
void worker_pool<Threads, Queue, Size>::push_pending(uint32_t i) {
    bool queued = ring_.try_push(i); // at most Queue slots in it: never full
    MICROLOOP_ASSERT(queued);
    (void)queued;
}

template <size_t Threads, size_t Queue, size_t Size>
void* worker_pool<Threads, Queue, Size>::worker_main(void* arg) {
    worker_pool* self = static_cast<worker_pool*>(arg);
    while (self->crew_.wait()) {
        uint32_t i;
        if (!self->pop_pending(i)) continue;
        slot& s = self->slots_[i];
        unsigned char queued = st_queued;
        if (s.state.compare_exchange_strong(queued, st_running, std::memory_order_acq_rel)) {
            s.result = s.work();
            s.state.store(st_finished, std::memory_order_relaxed);
        } // else canceled by shutdown(): not started
        self->push_completed(i);
        self->loop_->wake();
    }
    return nullptr;
}

// One batch per pass: the dones of what had finished when the pass began (at
// most Queue), not of what finishes meanwhile; if more are waiting, the loop
// comes back for them in its next iteration (workers that keep finishing
// cannot starve the loop's other sources). The batch is the completion
// stack's member: a done that polls the loop goes on with it in the nested
// pass, and one that throws, or calls shutdown(), leaves the rest for the
// next call. A forked child's pool has nothing of its own to call back.
template <size_t Threads, size_t Queue, size_t Size>
void worker_pool<Threads, Queue, Size>::complete(size_t limit) {
    if (forked_) return;
    completed_.take(link_of{slots_});
    for (size_t n = 0; n < limit; ++n) {
        const uint32_t i = completed_.pop(link_of{slots_});
        if (i == detail::completion_stack::empty) break;
        finish(i);
    }
    if (completed_.pending()) loop_->wake();
}

// The slot is free before done runs (done may submit again, at capacity);
// its done callback lives in dones_, which has one entry to spare. One for
// the pass, not one per done: a done that runs inside another's nested
// poll() (which took the spare) keeps its slot until it returns, so that a
// free slot always has a free done entry (nfree_slots_ <= nfree_dones_).
template <size_t Threads, size_t Queue, size_t Size>
void worker_pool<Threads, Queue, Size>::finish(uint32_t i) {
    slot& s = slots_[i];
    const bool ran = s.state.load(std::memory_order_relaxed) == st_finished;
    work_event ev = {ran ? s.result : 0, ran ? error_code() : error_code(errc::canceled)};
    const uint32_t d = s.done;
    s.work.reset();
    s.state.store(st_free, std::memory_order_relaxed);
    const bool early = nfree_slots_ < nfree_dones_; // a spare done entry backs the freed slot
    if (early) {
        free_slots_[nfree_slots_++] = i;
        --active;
    }
    auto release = detail::on_scope_exit([this, d, i, early] { // also if done throws
        dones_[d].reset();
        free_dones_[nfree_dones_++] = d;
        if (!early) {
            free_slots_[nfree_slots_++] = i;
            --active;
        }
    });
    loop_->invoke(dones_[d], source_kind::work, 0, -1, ev);
}

// A forked child's copy (after_fork(), or shutdown() in a child that did not
// call it): the threads, the ring and the completion stack hold the
// parent's work. Dropped without calling back: the child refuses
// submissions (errc::forked) and never looks at the parent's entries.
template <size_t Threads, size_t Queue, size_t Size>
void worker_pool<Threads, Queue, Size>::abandon() {
    forked_ = true;
    crew_.forget(); // the parent's threads; nothing to join here
    ring_.reset();
    completed_.reset();
    for (size_t i = 0; i < Queue; ++i) {
        slots_[i].work.reset();
        slots_[i].state.store(st_free, std::memory_order_relaxed);
        free_slots_[i] = detail::narrow<uint32_t>(Queue - 1 - i);
    }
    for (size_t i = 0; i <= Queue; ++i) {
        dones_[i].reset();
        free_dones_[i] = detail::narrow<uint32_t>(Queue - i);
    }
    nfree_slots_ = Queue;
    nfree_dones_ = Queue + 1;
    active = 0;
    pid_ = getpid();
}

} // namespace microloop

#endif // MICROLOOP_WORKER_POOL_HPP
