// SPDX-License-Identifier: MIT
// microloop/mailbox.hpp - hand work to a loop from other threads.
#ifndef MICROLOOP_MAILBOX_HPP
#define MICROLOOP_MAILBOX_HPP

#include <sched.h>
#include <stddef.h>
#include <unistd.h>

#include <atomic>

#include "callback.hpp"
#include "error.hpp"
#include "loop_base.hpp"

namespace microloop {

// A fixed-capacity queue of callbacks that any thread may post() to; they run
// in the loop's thread, in the order posted. One loop per thread plus a
// mailbox each is how microloop uses several cores.
//
// The queue is a bounded lock-free ring (each cell carries a sequence number,
// after Dmitry Vyukov's MPMC queue): posting never takes a lock or makes a
// system call other than the wake-up write, so a high-priority thread
// cannot be held up by a preempted poster. N must be a power of two. A full
// mailbox refuses the post with errc::table_full rather than block.
//
// While it exists, a mailbox keeps loop.run() running (it may receive work at
// any time); call close() or destroy it to let run() end. Posted callbacks go
// through stall detection (source_kind::post); one that throws is used up,
// and the rest run in the next iteration.
//
// Closing. close() (or the destructor) refuses every later post with
// errc::canceled and drops what was posted but has not run: those callbacks
// are destroyed without being called, and close() returns how many. So every
// post() either ran, returned an error, or was counted by close(); none runs
// twice. close() may be called from inside one of the mailbox's own
// callbacks: that one finishes, the rest are dropped. A post() racing
// close() from another thread is safe: posts in progress are counted, and
// close() waits for them (a few instructions and a write() each; it yields
// meanwhile), so none writes into the ring after close() returned. In a
// forked child, what the parent had queued is dropped (loop.after_fork()).
// Destroying a mailbox from inside one of its callbacks is not allowed;
// close() it there and destroy it later.
template <size_t N = 16, size_t Size = MICROLOOP_CALLBACK_SIZE>
class mailbox : private loop_hook {
    static_assert(N >= 2 && (N & (N - 1)) == 0, "mailbox capacity must be a power of two");

public:
    explicit mailbox(loop_base& l)
        : loop_(&l), closed_(false), posting_(0), enqueue_(0), dequeue_(0), shut_(false) {
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
        // Counted in before closed_ is read, both sequentially consistent:
        // close() sets closed_ and then waits for the count to fall to zero,
        // so either this post sees closed_ or close() waits for it.
        posting_.fetch_add(1);
        auto out = detail::on_scope_exit([this] { posting_.fetch_sub(1, std::memory_order_release); });
        if (closed_.load()) return errc::canceled;
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

    // Stop receiving: run() no longer waits for this mailbox. Loop thread only
    // (also from inside one of its callbacks). Later posts are refused with
    // errc::canceled; callbacks posted but not run are dropped (destroyed,
    // never called): returns how many. A second close() returns 0.
    size_t close() {
        if (closed_.exchange(true)) return 0;
        shut_ = true;
        // A post between its check and its write. (Not in a forked child
        // that skipped after_fork(): the parent's posters are not there.)
        if (getpid() == loop_->owner_pid())
            while (posting_.load() != 0) sched_yield();
        loop_->detach(this);
        return drop(dequeue_); // the running ones are claimed already: drain()'s to finish
    }

private:
    struct cell {
        std::atomic<size_t> seq;
        detail::inplace_callback<void(), Size> fn;
    };

    // Runs what was posted before this wake-up, at most N, so posters that
    // keep posting cannot starve the rest of the loop.
    // A callback may close() the mailbox: the drain stops after it. (closed_
    // is also checked first: the loop may call a hook that a callback of the
    // hook before it detached.)
    // A callback may call poll(), which drains again, nested: each post is
    // claimed (dequeue_ moves past it) before it runs, so the nested drain
    // starts with the next one, and its cell goes back to the posters only
    // when it has returned (until then a post that wraps onto it is
    // table_full, never a wait).
    static void drain(loop_hook* h) {
        mailbox* self = static_cast<mailbox*>(h);
        loop_base* const l = self->loop_;
        for (size_t n = 0; n < N; ++n) {
            if (self->shut_) return; // not closed_: posters write next to it
            const size_t pos = self->dequeue_;
            cell& c = self->cells_[pos & (N - 1)];
            if (c.seq.load(std::memory_order_acquire) != pos + 1) return;
            self->dequeue_ = pos + 1;
            auto done = detail::on_scope_exit([&c, pos] { // the cell is used up even if fn throws
                c.fn.reset();
                c.seq.store(pos + N, std::memory_order_release);
            });
            l->invoke(c.fn, source_kind::post, 0, -1);
        }
        l->wake(); // more may be waiting: come back next iteration
    }

    // Destroys the callbacks queued from position `from` on; closed, so no
    // post adds any and the ring is not used again (after_fork() resets it).
    size_t drop(size_t from) {
        size_t n = 0;
        for (size_t pos = from; n < N; ++pos, ++n) {
            cell& c = cells_[pos & (N - 1)];
            if (c.seq.load(std::memory_order_acquire) != pos + 1) break;
            c.fn.reset();
            c.seq.store(pos + N, std::memory_order_relaxed);
        }
        return n;
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
        self->posting_.store(0, std::memory_order_relaxed); // posters of the parent, caught by fork()
    }

    loop_base* loop_;
    std::atomic<bool> closed_;
    std::atomic<size_t> posting_; // post() calls between their closed_ check and their return
    cell cells_[N];
    std::atomic<size_t> enqueue_;
    size_t dequeue_; // the next post to run; those before it ran or are running
    bool shut_;    // closed_, as the loop thread sees it
};

} // namespace microloop

#endif // MICROLOOP_MAILBOX_HPP
