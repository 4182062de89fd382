// SPDX-License-Identifier: MIT
// microloop/mailbox.hpp - hand work to a loop from other threads.
#ifndef MICROLOOP_MAILBOX_HPP
#define MICROLOOP_MAILBOX_HPP

#include <stddef.h>

#include <atomic>

#include "callback.hpp"
#include "error.hpp"
#include "loop.hpp"

namespace microloop {

// A fixed-capacity queue of callbacks that any thread may post() to; they run
// in the loop's thread, in the order posted. One loop per thread plus a
// mailbox each is how microloop uses several cores.
//
// The queue is a bounded lock-free ring (each cell carries a sequence number,
// after Dmitry Vyukov's MPMC queue): posting never takes a lock or makes a
// system call other than the one-byte wake-up, so a high-priority thread
// cannot be held up by a preempted poster. N must be a power of two. A full
// mailbox refuses the post with errc::table_full rather than block.
//
// While it exists, a mailbox keeps loop.run() running (it may receive work at
// any time); call close() or destroy it to let run() end. Callbacks that were
// posted but have not run when the mailbox is destroyed are discarded, and so
// are, in a forked child, those the parent had queued (loop.after_fork()).
// Posted callbacks go through stall detection (source_kind::post); one that
// throws is used up, and the rest run in the next iteration.
template <size_t N = 16, size_t Size = MICROLOOP_CALLBACK_SIZE>
class mailbox : private loop_hook {
    static_assert(N >= 2 && (N & (N - 1)) == 0, "mailbox capacity must be a power of two");

public:
    explicit mailbox(loop_base& l) : loop_(&l), closed_(false), enqueue_(0), dequeue_(0) {
        for (size_t i = 0; i < N; ++i) cells_[i].seq.store(i, std::memory_order_relaxed);
        on_wake = &mailbox::drain;
        on_fork = &mailbox::forked;
        active = 1;
        next = nullptr;
        loop_->attach(this);
    }
    ~mailbox() { close(); }
    mailbox(const mailbox&) = delete;
    mailbox& operator=(const mailbox&) = delete;

    // Queue cb() to run in the loop's thread. Thread-safe.
    // errc::table_full when N are queued; errc::canceled once closed.
    template <class F>
    error_code post(F&& cb) {
        if (closed_.load(std::memory_order_acquire)) return errc::canceled;
        size_t pos = enqueue_.load(std::memory_order_relaxed);
        cell* c;
        for (;;) {
            c = &cells_[pos & (N - 1)];
            size_t seq = c->seq.load(std::memory_order_acquire);
            intptr_t diff = static_cast<intptr_t>(seq) - static_cast<intptr_t>(pos);
            if (diff == 0) {
                if (enqueue_.compare_exchange_weak(pos, pos + 1, std::memory_order_relaxed)) break;
            } else if (diff < 0) {
                return errc::table_full; // the loop has not caught up yet
            } else {
                pos = enqueue_.load(std::memory_order_relaxed);
            }
        }
        c->fn.emplace(std::forward<F>(cb));
        c->seq.store(pos + 1, std::memory_order_release);
        return loop_->wake();
    }

    // Stop receiving: run() no longer waits for this mailbox. Loop thread only.
    // Later posts are refused with errc::canceled. The loop pointer stays
    // valid (a post racing with close() still wakes a live loop).
    void close() {
        if (closed_.exchange(true)) return;
        loop_->detach(this);
    }

private:
    struct cell {
        std::atomic<size_t> seq;
        detail::inplace_callback<void(), Size> fn;
    };

    // Runs what was posted before this wake-up, at most N, so posters that
    // keep posting cannot starve the rest of the loop.
    static void drain(loop_hook* h) {
        mailbox* self = static_cast<mailbox*>(h);
        for (size_t n = 0; n < N; ++n) {
            cell& c = self->cells_[self->dequeue_ & (N - 1)];
            if (c.seq.load(std::memory_order_acquire) != self->dequeue_ + 1) return;
            auto done = detail::on_scope_exit([self, &c] { // the cell is used up even if fn throws
                c.fn.reset();
                c.seq.store(self->dequeue_ + N, std::memory_order_release);
                ++self->dequeue_;
            });
            self->loop_->invoke(c.fn, source_kind::post, 0, -1);
        }
        self->loop_->wake(); // more may be waiting: come back next iteration
    }

    // A forked child has one thread: no post is under way. What the parent
    // had queued is the parent's to run.
    static void forked(loop_hook* h) {
        mailbox* self = static_cast<mailbox*>(h);
        for (size_t i = 0; i < N; ++i) {
            self->cells_[i].fn.reset();
            self->cells_[i].seq.store(i, std::memory_order_relaxed);
        }
        self->enqueue_.store(0, std::memory_order_relaxed);
        self->dequeue_ = 0;
    }

    loop_base* loop_;
    std::atomic<bool> closed_;
    cell cells_[N];
    std::atomic<size_t> enqueue_;
    size_t dequeue_;
};

} // namespace microloop

#endif // MICROLOOP_MAILBOX_HPP
