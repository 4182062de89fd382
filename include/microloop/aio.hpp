// SPDX-License-Identifier: MIT
// microloop/aio.hpp - disk reads, writes and fsyncs that do not block the
// loop, with completions delivered as loop callbacks.
//
// Opt-in: include <microloop/aio.hpp> (or define MICROLOOP_WITH_AIO before
// including microloop.hpp) and link with -pthread (and -lrt before glibc
// 2.34, for the POSIX engine). Programs that do not use it pay nothing.
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
// Two engines, one API: aio<N, Engine>.
//
// thread_aio_engine<Threads> (the default, Threads = MICROLOOP_AIO_THREADS,
// 4): the module starts Threads threads of its own (every signal blocked in
// them; stack size a constructor argument, MICROLOOP_AIO_STACK_SIZE) that
// run pread()/pwrite()/fsync()/fdatasync(). Operations on one fd run in
// parallel; an fsync waits for the operations submitted before it on its fd.
// Completions come back through a lock-free stack and one loop.wake(): no
// signal, no lock, no scan of what is in flight. A read whose data is all
// in the page cache is done in the loop's thread instead, without blocking
// (MICROLOOP_AIO_NOWAIT), and called back at the next iteration. How
// cancel() and the ring work: aio/thread_engine.hpp.
//
// posix_aio_engine: the libc's POSIX AIO, "the portable one the textbook
// describes" (a read all in the page cache is done in the loop's thread here
// too, as above), completions woken by a signal (MICROLOOP_AIO_SIGNAL,
// SIGIO by default) that says "look", not "which": aio/posix_engine.hpp.
//
// The files: this one is the front, aio<N, Engine> and what it offers with
// either engine; aio/thread_engine.hpp and aio/posix_engine.hpp are the
// engines, each its own state and operations (submit, cancel, completion,
// fork, shutdown) over aio/common.hpp (the public types, the page-cache
// fast path, the table of operations in flight both keep alike).
#ifndef MICROLOOP_AIO_HPP
#define MICROLOOP_AIO_HPP

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <utility>

#include "aio/common.hpp"
#include "aio/posix_engine.hpp"
#include "aio/thread_engine.hpp"

namespace microloop {

// Up to N disk operations in flight on one loop. Construct it after the loop
// and destroy it before; use it from the loop's thread only. Each operation's
// buffer must stay valid until its callback has run (or the module is gone).
// Regular files and block devices are what it is for; on a pipe or socket a
// thread (the libc's, or the module's) blocks in read() until data comes.
//
// Construction, destruction, cancel() and, for thread_aio_engine<T>,
// threads() are the engine's (aio/thread_engine.hpp, aio/posix_engine.hpp):
//     aio<N> disk(loop, stack_bytes = MICROLOOP_AIO_STACK_SIZE);  // thread_aio_engine<>
//     aio<N, thread_aio_engine<T> > disk(loop, stack_bytes = ...); // T threads
//     aio<N, posix_aio_engine> disk(loop);
// A set-up failure is kept in error() and returned by every submission.
template <size_t N, class Engine = thread_aio_engine<> >
class aio : public detail::aio_engine<N, Engine> {
    typedef detail::aio_engine<N, Engine> engine;

public:
    using detail::aio_engine<N, Engine>::aio_engine;

    // Read len bytes at offset into buf; cb(aio_event) when done, exactly
    // once, in the loop's thread. A failed submission returns an invalid
    // handle: errc::table_full, errc::bad_fd, errc::bad_argument (also a
    // null function pointer), the module's error(), or errc::system with its
    // errno (last_error() keeps it too).
    template <class F>
    aio_handle read(int fd, void* buf, size_t len, off_t offset, F&& cb) {
        return this->submit(detail::aio_ops::op_read, fd, buf, len, offset, std::forward<F>(cb));
    }
    template <class F>
    aio_handle write(int fd, const void* buf, size_t len, off_t offset, F&& cb) {
        return this->submit(detail::aio_ops::op_write, fd, const_cast<void*>(buf), len, offset, std::forward<F>(cb));
    }
    // Runs after every operation submitted before it on fd has finished (its
    // writes are on the disk), and is called back after them.
    template <class F>
    aio_handle fsync(int fd, F&& cb) {
        return this->submit(detail::aio_ops::op_fsync, fd, nullptr, 0, 0, std::forward<F>(cb));
    }
    template <class F>
    aio_handle fdatasync(int fd, F&& cb) {
        return this->submit(detail::aio_ops::op_fdatasync, fd, nullptr, 0, 0, std::forward<F>(cb));
    }

    // cancel(h): the engine's (see above).

    // Operations in flight: submitted, callback not run yet.
    size_t in_flight() const { return this->hook_.active; }
    // The error of the last failed submission, with its errno.
    error_code last_error() const { return this->last_error_; }
    // Why the module could not start, or ok; also returned by every
    // submission. Thread engine: errc::system with pthread_create's or
    // sem_init's error, errc::bad_argument for a stack size refused. POSIX
    // engine: errc::already_watched (the signal is watched), errc::table_full
    // (more than MICROLOOP_AIO_MAX_MODULES modules).
    error_code error() const { return this->setup_error_; }
    // Operations in flight: now, at most N, and the most ever at once; the
    // reads served from the page cache in the loop's thread.
    aio_stats stats() const {
        aio_stats s;
        static_cast<table_stats&>(s) = this->pool_.stats();
        s.inline_reads = this->inline_reads_;
        return s;
    }
    // f(aio_handle, int fd) for every operation in flight, oldest first.
    template <class F>
    void for_each_in_flight(F&& f) const {
        for (uint16_t i = this->head_; i != engine::none; i = this->links_[i].next)
            f(aio_handle::from_id(this->pool_.id_of(i)), this->fd_of(i));
    }
};

} // namespace microloop

#endif // MICROLOOP_AIO_HPP
