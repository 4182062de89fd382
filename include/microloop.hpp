// SPDX-License-Identifier: MIT
// microloop - a header-only select() event loop for embedded Linux.
// Version 2.0.0. MIT licence (see the end of the core's guide).
//
// One loop, every kind of event a small Linux device meets: readable and
// writable fds (sockets, pipes, ttys), monotonic timers, signals (run in the
// loop, not in signal context), child processes, and POSIX AIO completions.
// C++11, no exceptions, no RTTI, no heap after construction.
//
// This header is the whole library: the core (microloop/core.hpp, the libc
// alone), whose guide follows this one (a minimal program, the sources,
// errors, configuration, licence), and the modules below, which use threads.
// A program that needs only the core includes <microloop/core.hpp>, or
// vendors single_include/microloop_core.hpp instead of microloop.hpp.
//
// ---- Beyond one loop -----------------------------------------------------------
//
//   mailbox<N> box(loop); box.post(cb)
//       Any thread hands cb() to the loop's thread (lock-free, never blocks;
//       errc::table_full when N are queued). One loop per thread + a mailbox
//       each is how microloop uses several cores. box.close() drops what was
//       not run and returns how many.
//   aio<N> disk(loop); disk.read/write(fd, buf, len, off, cb); fsync; cancel
//   aio<N, posix_aio_engine> disk(loop);   the same on POSIX AIO instead of threads
//       Disk I/O that never blocks the loop, its completion an ordinary
//       callback: on 4 threads of the module's own by default
//       (thread_aio_engine<Threads>), or on the libc's POSIX AIO (opt-in,
//       see MICROLOOP_WITH_AIO below).
//   worker_pool<Threads, Queue> pool(loop); pool.submit(work, done)
//       work() (blocking: files, compression, DNS) runs on a worker thread and
//       returns an integer; done(work_event{result, status}) then runs in the
//       loop's thread, exactly once (errc::canceled if shut down before it
//       started). errc::table_full when Queue are outstanding. shutdown().
//   loop_group<Max> group; group.start(n, pin); group.post(i, cb); group.stop()
//       n loops on n threads (default: one per online CPU), a mailbox each;
//       stop() stops and joins them all.
//       Both cost nothing unless used (templates only: no thread library
//       referenced, no fd, no static constructor); using them needs -pthread.
//
// ---- Configuration of the modules (define before including) -------------------
//
//   MICROLOOP_WITH_AIO       define to get the AIO module (microloop::aio<N, Engine>)
//                            from this header; or include <microloop/aio.hpp>.
//                            Off by default: it needs -pthread (and -lrt
//                            before glibc 2.34). See microloop/aio.hpp.
//   MICROLOOP_AIO_THREADS    threads of thread_aio_engine<> (4)
//   MICROLOOP_AIO_STACK_SIZE their stack in bytes (0: the system's default)
//   MICROLOOP_AIO_NOWAIT     1: a read all in the page cache is done in the
//                            loop's thread (preadv2 RWF_NOWAIT, never waits
//                            for the disk), without a thread; 0: every
//                            operation goes to the threads or the libc
#ifndef MICROLOOP_HPP
#define MICROLOOP_HPP

#include "microloop/core.hpp"
#include "microloop/mailbox.hpp"
#include "microloop/worker_pool.hpp"
#include "microloop/loop_group.hpp"
#if defined(MICROLOOP_WITH_AIO)
#include "microloop/aio.hpp"
#endif

#endif // MICROLOOP_HPP
