// SPDX-License-Identifier: MIT
// microloop/core.hpp - microloop's core: one select() loop for fds, timers,
// signals and child processes, continuation tables and lock_memory().
// Version 2.0.0. MIT licence (see the end of this guide).
//
// The core needs the libc alone: no threads, no -pthread, no -lrt. Include
// <microloop/core.hpp> (or copy single_include/microloop_core.hpp) for just
// this; <microloop.hpp> (single_include/microloop.hpp) adds the modules that
// use threads: mailbox, worker_pool, loop_group, aio.
// C++11, no exceptions, no RTTI, no heap after construction.
//
// ---- Usage -------------------------------------------------------------------
//
//     #include <microloop/core.hpp>       // or <microloop.hpp>
//     using namespace std::chrono;
//
//     microloop::loop<> loop;   // 64 fds, 64 timers (see capacity<>); at namespace
//                               // scope: a static inside main() costs a guard
//     int main() {
//         auto in = loop.watch(0, microloop::readable, [](microloop::io_event ev) {
//             char buf[256];
//             ssize_t n = read(ev.fd, buf, sizeof buf);
//             if (n <= 0) loop.unwatch(ev.handle);    // EOF: the loop ends when nothing is left
//         });
//         if (!in) fprintf(stderr, "watch: %s\n", in.error().message());
//         auto tick = loop.every(milliseconds(500), [](microloop::timer_event ev) {
//             printf("tick (%u missed)\n", ev.overruns);
//         });
//         return loop.run() ? 1 : 0;                  // until stop() or nothing is left
//     }
//
// ---- Sources -------------------------------------------------------------------
//
//   watch(fd, events, cb) / modify(h, events) / unwatch(h)
//       events: readable | writable | priority (select's except set). cb gets
//       io_event{handle, fd, events}; events == io_error if the fd was closed
//       while watched (the watcher is then disabled: unwatch it). Unwatch
//       before close(): if the fd's number is reused (socket(), dup2()...)
//       before the next wait, the old watcher sees the new file's events.
//   after(timeout, cb) / every(period, cb) / add_timer(timeout, repeat, cb)
//   rearm(h, timeout) / cancel(h) / remaining(h)
//       Monotonic clock; repeating timers do not drift and, after a stall,
//       skip the missed periods and report them in timer_event::overruns.
//       Equal deadlines fire in arming order. Armed inside a callback, a
//       timer counts from the iteration's time; outside, from the clock's now.
//       A one-shot is gone when its callback runs, unless it re-arms itself.
//   run() / run_once() / run_once(max_wait) / poll() / stop() / wake()
//       A stop() is used up by the run it ends: the next run_once(max_wait)
//       waits.
//   on_stall(threshold, cb): names any callback that blocked the loop.
//   set_timer_slack(d): how late Linux may wake the loop for a timer (the
//       thread's timer slack, 50 us by default; left alone unless called).
//       nanoseconds(1): as punctual as the kernel allows; 0: the default.
//   stats() / for_each_io(f) / for_each_timer(f): what the loop holds, and
//       the high-water mark of every table, to size capacities from a run.
//   after_fork(): a forked child that keeps the loop calls it first; until
//       then the child cannot disturb the parent (run(), run_once(), poll()
//       and wake() say errc::forked, and none of the parent's watchers or
//       timers run).
//   basic_loop<capacity<...>, manual_clock>: timers in virtual time, for
//       tests: loop.clock().advance(d); loop.poll();
//   on_signal(signo, cb) / unwatch(h)
//       cb(signal_event{handle, signo, count, pid, uid, value}) runs in the
//       loop, never in signal context; count = arrivals since the last call,
//       value = the latest sigqueue() value. One watcher per signal per
//       process (else errc::already_watched); unwatching or destroying the
//       loop restores the old disposition and the thread's mask bit.
//       Block signals in other threads: microloop::block_signals(); clear
//       the mask in a child before exec: microloop::unblock_signals().
//   on_child(pid, cb) / unwatch(h)
//       cb(child_event{handle, pid, status}) once, after reaping that pid
//       (exited()/exit_code()/signaled()/term_signal()). Unwatched children
//       are never reaped. SIGPIPE is left alone: see ignore_sigpipe().
//   continuation_table<N, Size> t; id = t.emplace<T>(...); t.get<T>(id);
//   t.take<T>(id); t.release(id)
//       The state an async operation needs when it completes, saved when it
//       starts; stale ids and wrong types are refused, never misread.
//   lock_memory(): mlockall, so page faults cannot stall the loop.
//
// Callbacks are function pointers or lambdas whose captures fit in
// MICROLOOP_CALLBACK_SIZE bytes (16: a pointer and a handle); a larger
// capture is a compile-time error. Any callback may add, change or remove any
// source, itself included; a table of N holds N sources even when a callback
// replaces its own. A source removed during an iteration is not called again;
// a source added during an iteration is first considered in the next one.
//
// ---- Errors --------------------------------------------------------------------
//
// Nothing throws. Actions return microloop::error_code, true on failure:
//     if (microloop::error_code e = loop.unwatch(h)) puts(e.message());
// Creating a source returns a handle; a failed one is false and carries why
// (and the errno, for errc::system):
//     h.error() == microloop::errc::fd_out_of_range
// Handles are 64 bits with a 48-bit generation: a handle kept after its source
// is gone is refused with errc::stale_handle and never acts on a newer source
// (unless its slot is reused 2^48 times meanwhile). A user callback that
// throws leaves every table consistent; the exception leaves run().
//
// ---- Configuration (define before including) ----------------------------------
//
//   MICROLOOP_CALLBACK_SIZE  inline capture bytes per callback (16)
//   MICROLOOP_ASSERT(c)      internal invariant checks (assert)
//   MICROLOOP_FDSET_WORDS    1: scan select() results a word at a time when
//                            the libc's fd_set layout allows (checked at run
//                            time); 0: FD_ISSET only
//   MICROLOOP_BACKEND        select (the default) or epoll: what loop<> and
//                            basic_loop<> wait with (the same in every TU);
//                            one loop: epoll_loop<...>, or basic_loop<Cap,
//                            Clock, use_epoll / use_select>. epoll takes any
//                            fd (no FD_SETSIZE), dispatches in the kernel's
//                            order, finds fds closed behind its back later
//                            (README: Choosing a backend)
//   MICROLOOP_CONTINUATION_SIZE  bytes per continuation_table slot (8 pointers)
//   Capacities: microloop::loop<Io, Timers, Signals, Children>, or
//   microloop::basic_loop<microloop::capacity<...> >; each at most 65,533
//   (a static_assert), one spare slot per table.
//
// ---- Licence -------------------------------------------------------------------
//
// MIT License
//
// Copyright (c) 2026 the microloop authors
//
// Permission is hereby granted, free of charge, to any person obtaining a copy
// of this software and associated documentation files (the "Software"), to deal
// in the Software without restriction, including without limitation the rights
// to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
// copies of the Software, and to permit persons to whom the Software is
// furnished to do so, subject to the following conditions:
//
// The above copyright notice and this permission notice shall be included in all
// copies or substantial portions of the Software.
//
// THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
// IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
// FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
// AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
// LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
// OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
// SOFTWARE.
#ifndef MICROLOOP_CORE_HPP
#define MICROLOOP_CORE_HPP

#include "config.hpp"
#include "error.hpp"
#include "callback.hpp"
#include "handle.hpp"
#include "loop.hpp"
#include "continuation.hpp"
#include "memory.hpp"

#endif // MICROLOOP_CORE_HPP
