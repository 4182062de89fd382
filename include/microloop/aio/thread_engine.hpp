// SPDX-License-Identifier: MIT
// microloop/aio/thread_engine.hpp - internal to the AIO module (include
// <microloop/aio.hpp>): aio<N, thread_aio_engine<Threads>>'s engine, the
// default.
//
// Loop thread to workers: a bounded lock-free ring (detail::spmc_ring, one
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
#ifndef MICROLOOP_AIO_THREAD_ENGINE_HPP
#define MICROLOOP_AIO_THREAD_ENGINE_HPP

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <unistd.h>

#include <atomic>
#include <utility>

#include "../detail/threads.hpp"
#include "common.hpp"

// The threads of the default engine, thread_aio_engine<> (its parameter
// overrides this), and their stack size in bytes (0: the system's default,
// usually 8 MiB of address space of which a few KiB are touched).
#ifndef MICROLOOP_AIO_THREADS
#define MICROLOOP_AIO_THREADS 4
#endif
#ifndef MICROLOOP_AIO_STACK_SIZE
#define MICROLOOP_AIO_STACK_SIZE 0
#endif

namespace microloop {

// Threads of its own, pread()/pwrite()/fsync() on them: the default engine.
template <size_t Threads = MICROLOOP_AIO_THREADS>
struct thread_aio_engine {
    static_assert(Threads >= 1 && Threads <= 64, "thread_aio_engine: 1 to 64 threads");
};

namespace detail {

template <size_t N, size_t Threads>
class aio_engine<N, thread_aio_engine<Threads> > : public aio_core<N> {
    typedef aio_core<N> core;

    static_assert(N >= 1 && N <= 16384, "aio: 1 to 16384 operations in flight");

public:
    // Starts the threads, every signal blocked in them. stack_bytes: each
    // thread's stack (0: the system's default). A failure (errc::system with
    // pthread_create's or sem_init's error, errc::bad_argument for a stack
    // size refused) is kept in error() and returned by every submission.
    explicit aio_engine(loop_base& owner, size_t stack_bytes = MICROLOOP_AIO_STACK_SIZE);
    // Drops what is queued, waits for what runs (a read on a pipe waits for
    // data), stops the threads; the callbacks of what was in flight are not
    // called. Not from inside one of this module's callbacks.
    ~aio_engine();

    // A queued operation is called back with errc::canceled (at the loop's
    // next iteration); a running or finished one with its real result.
    // errc::stale_handle once the callback has run.
    error_code cancel(aio_handle h);

    static constexpr size_t threads() { return Threads; }

protected:
    template <class F>
    aio_handle submit(typename core::op_kind kind, int fd, void* buf, size_t len, off_t offset, F&& cb);
    int fd_of(uint16_t i) const { return ops_[i].fd; }

private:
    // The low byte of op::state; the ticket of the operation is above it.
    enum : uint32_t { st_free, st_held, st_queued, st_running, st_finished, st_canceled };
    static const uint32_t no_slot = 0xffffffffu;
    static const size_t ring_size = pow2_at_least(2 * N); // room for N live entries and stale ones

    struct op {
        int fd;
        typename core::op_kind kind;
        void* buf;
        size_t len;
        off_t offset;
        ssize_t result; // written by the worker, read after the completion stack
        int err;
        std::atomic<uint32_t> state; // ticket << 8 | st_*
        uint16_t ticket;             // loop thread: this operation's
        uint32_t done_next;          // link in the completion stack, or in the inline list
    };

    static void on_wake(loop_hook* h) { core::template engine_of<aio_engine>(h).complete(); }
    static void on_fork(loop_hook* h) { core::template engine_of<aio_engine>(h).abandon(true); }
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

    size_t stack_bytes_;
    size_t held_; // fsyncs waiting for an earlier operation on their fd
    uint32_t inline_head_, inline_tail_; // reads done in the loop's thread, oldest first
    uint32_t inline_batch_;              // those of them the pass under way calls back
    op ops_[N];
    thread_crew<Threads> crew_;
    spmc_ring<ring_size> ring_;   // entries (slot | ticket << 16) to run, to the workers
    completion_stack completed_; // finished operations, to the loop's thread
};

template <size_t N, size_t T>
const uint32_t aio_engine<N, thread_aio_engine<T> >::no_slot;
template <size_t N, size_t T>
const size_t aio_engine<N, thread_aio_engine<T> >::ring_size;

template <size_t N, size_t T>
aio_engine<N, thread_aio_engine<T> >::aio_engine(loop_base& owner, size_t stack_bytes)
    : core(owner, &on_wake, &on_fork), stack_bytes_(stack_bytes), held_(0), inline_head_(no_slot),
      inline_tail_(no_slot), inline_batch_(no_slot) {
    for (size_t i = 0; i < N; ++i) {
        op& o = ops_[i];
        o.fd = -1;
        o.kind = aio_ops::op_read;
        o.buf = nullptr;
        o.len = 0;
        o.offset = 0;
        o.result = 0;
        o.err = 0;
        o.state.store(st_free, std::memory_order_relaxed);
        o.ticket = 0;
        o.done_next = no_slot;
    }
    reset_queues();
    this->setup_error_ = start();
}

template <size_t N, size_t T>
void aio_engine<N, thread_aio_engine<T> >::reset_queues() {
    ring_.reset();
    completed_.reset();
    inline_head_ = inline_tail_ = inline_batch_ = no_slot;
}

template <size_t N, size_t T>
aio_engine<N, thread_aio_engine<T> >::~aio_engine() {
    if (getpid() != this->pid_) {
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
}

template <size_t N, size_t T>
template <class F>
aio_handle aio_engine<N, thread_aio_engine<T> >::submit(typename core::op_kind kind, int fd, void* buf, size_t len,
                                                        off_t offset, F&& cb) {
    const uint64_t id = this->admit(fd, buf, len, offset, std::forward<F>(cb));
    if (id == 0) return aio_handle(this->last_error_);
    const uint16_t index = detail::slot_of(id);
    op& o = ops_[index];
    o.fd = fd;
    o.kind = kind;
    o.buf = buf;
    o.len = len;
    o.offset = offset;
    o.result = 0;
    o.err = 0;
    this->link_last(index);
    if (kind == aio_ops::op_read && this->read_cached(fd, buf, len, offset)) {
        // Done, exactly as if a worker had run it: finished, with a ticket
        // no ring entry carries (cancel() leaves it alone), called back by
        // complete().
        o.result = static_cast<ssize_t>(len);
        o.ticket = static_cast<uint16_t>(o.ticket + 1);
        o.state.store(state_of(o.ticket, st_finished), std::memory_order_relaxed);
        push_inline(index);
    } else if ((kind == aio_ops::op_fsync || kind == aio_ops::op_fdatasync) && earlier_on_fd(index)) {
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
void aio_engine<N, thread_aio_engine<T> >::push_inline(uint16_t i) {
    ops_[i].done_next = no_slot;
    if (inline_tail_ == no_slot) inline_head_ = i;
    else ops_[inline_tail_].done_next = i;
    inline_tail_ = i;
    this->loop_.wake(); // only an atomic exchange when a wake-up is pending already
}

template <size_t N, size_t T>
void aio_engine<N, thread_aio_engine<T> >::enqueue(uint16_t i) {
    op& o = ops_[i];
    o.ticket = static_cast<uint16_t>(o.ticket + 1);
    o.state.store(state_of(o.ticket, st_queued), std::memory_order_relaxed);
    push_entry(static_cast<uint32_t>(i) | static_cast<uint32_t>(o.ticket) << 16); // publishes o (release)
    crew_.post();
}

// One producer (the loop thread). At most N entries are live (one per queued
// operation); the others are stale, left by cancel(). When the ring is full
// the loop takes entries from its head itself: a stale one is dropped, a live
// one goes back at the tail, into the cell the pop just freed (a claimed
// cell is free at once: spmc_ring), and at least half of them are stale.
template <size_t N, size_t T>
void aio_engine<N, thread_aio_engine<T> >::push_entry(uint32_t entry) {
    while (!ring_.try_push(entry)) {
        uint32_t old;
        if (!ring_.pop(old)) continue; // a worker took one meanwhile: there is room now
        const op& o = ops_[old & 0xffffu];
        if (o.state.load(std::memory_order_relaxed) == state_of(static_cast<uint16_t>(old >> 16), st_queued)) {
            // Live: back at the tail; the pop made room.
            bool requeued = ring_.try_push(old);
            MICROLOOP_ASSERT(requeued);
            (void)requeued;
        }
    }
}

template <size_t N, size_t T>
void aio_engine<N, thread_aio_engine<T> >::run(op& o) {
    ssize_t r;
    do {
        switch (o.kind) {
        case aio_ops::op_read:
            r = pread(o.fd, o.buf, o.len, o.offset);
            if (r < 0 && errno == ESPIPE) r = ::read(o.fd, o.buf, o.len); // a pipe, a socket: no offset
            break;
        case aio_ops::op_write:
            r = pwrite(o.fd, o.buf, o.len, o.offset);
            if (r < 0 && errno == ESPIPE) r = ::write(o.fd, o.buf, o.len);
            break;
        case aio_ops::op_fsync: r = ::fsync(o.fd); break;
        default: r = ::fdatasync(o.fd); break;
        }
    } while (r < 0 && errno == EINTR); // every signal is blocked, but a debugger may stop us
    o.err = r < 0 ? errno : 0;
    o.result = r;
}

template <size_t N, size_t T>
void* aio_engine<N, thread_aio_engine<T> >::worker_main(void* arg) {
    aio_engine* self = static_cast<aio_engine*>(arg);
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
error_code aio_engine<N, thread_aio_engine<T> >::cancel(aio_handle h) {
    const uint16_t i = this->pool_.lookup(h.id());
    if (i == this->pool_.none) return errc::stale_handle;
    op& o = ops_[i];
    // Being called back inside another callback's nested poll(): its slot
    // is still taken (aio_core::retire()), its handle done with.
    if ((o.state.load(std::memory_order_relaxed) & 0xffu) == st_free) return errc::stale_handle;
    uint32_t queued = state_of(o.ticket, st_queued);
    bool won = o.state.compare_exchange_strong(queued, state_of(o.ticket, st_canceled), std::memory_order_acq_rel);
    if (!won && queued == state_of(o.ticket, st_held)) {
        o.state.store(state_of(o.ticket, st_canceled), std::memory_order_relaxed);
        --held_;
        won = true;
    }
    if (won) {
        push_completed(i);
        this->loop_.wake();
    }
    return error_code();
}

// In the loop's thread after every wake-up: one batch, what was there when
// the pass began. The reads done in the loop's thread before it (oldest
// first), then what the workers had finished (in the order they finished)
// and what cancel() had reported. What this pass's callbacks submit, cancel
// or get done meanwhile waits for the next iteration, as for every other
// source (whoever added it woke the loop). The batches are members, not
// locals: a callback that polls the loop goes on with the same batch in the
// nested pass, and one that throws leaves the rest for the next wake-up
// (the loop wakes itself again when a hook throws).
template <size_t N, size_t T>
void aio_engine<N, thread_aio_engine<T> >::complete() {
    if (inline_batch_ == no_slot) {
        inline_batch_ = inline_head_;
        inline_head_ = inline_tail_ = no_slot;
    }
    completed_.take(link_of{ops_});
    while (inline_batch_ != no_slot) {
        const uint16_t i = static_cast<uint16_t>(inline_batch_);
        inline_batch_ = ops_[i].done_next;
        finish(i);
    }
    for (;;) {
        const uint32_t i = completed_.pop(link_of{ops_});
        if (i == completion_stack::empty) break;
        finish(static_cast<uint16_t>(i));
    }
    // Left for the next pass by a nested one, whose wake-up was its own.
    if (inline_head_ != no_slot || completed_.pending()) this->loop_.wake();
}

// Called back with its result, or errc::canceled; an fsync held behind it
// on its fd may start now, before the callback runs.
template <size_t N, size_t T>
void aio_engine<N, thread_aio_engine<T> >::finish(uint16_t i) {
    op& o = ops_[i];
    const int fd = o.fd;
    const bool canceled = (o.state.load(std::memory_order_relaxed) & 0xffu) == st_canceled;
    const int err = canceled ? ECANCELED : o.err;
    o.state.store(state_of(o.ticket, st_free), std::memory_order_relaxed);
    const typename core::retired r = this->retire(i);
    if (held_ != 0) release_held(fd);
    this->call_back(r, fd, o.result, err);
}

template <size_t N, size_t T>
bool aio_engine<N, thread_aio_engine<T> >::earlier_on_fd(uint16_t i) const {
    for (uint16_t k = this->head_; k != i && k != core::none; k = this->links_[k].next)
        if (ops_[k].fd == ops_[i].fd) return true;
    return false;
}

// An operation on fd was called back: the oldest one left on fd may be a
// held fsync, which may start now.
template <size_t N, size_t T>
void aio_engine<N, thread_aio_engine<T> >::release_held(int fd) {
    for (uint16_t k = this->head_; k != core::none; k = this->links_[k].next) {
        if (ops_[k].fd != fd) continue;
        if (ops_[k].state.load(std::memory_order_relaxed) == state_of(ops_[k].ticket, st_held)) {
            --held_;
            enqueue(k);
        }
        return;
    }
}

// In a forked child the threads are the parent's and the operations in
// flight with them: forget those without calling back. after_fork()
// (restart) then starts threads of the child's own.
template <size_t N, size_t T>
void aio_engine<N, thread_aio_engine<T> >::abandon(bool restart) {
    crew_.forget(); // the parent's threads: nothing to join here
    for (size_t i = 0; i < N; ++i) ops_[i].state.store(state_of(ops_[i].ticket, st_free), std::memory_order_relaxed);
    this->forget_all();
    held_ = 0;
    reset_queues();
    if (restart && !this->setup_error_) this->setup_error_ = start();
}

} // namespace detail
} // namespace microloop

#endif // MICROLOOP_AIO_THREAD_ENGINE_HPP
