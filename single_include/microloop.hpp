// SPDX-License-Identifier: MIT
// microloop single-header edition: generated from include/ by single_include/amalgamate.py.
// Do not edit: change the files in include/ and run `make single_include`.
//
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

// ---- begin microloop/core.hpp ------------------------------------------
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

// ---- begin microloop/config.hpp ----------------------------------------
// microloop/config.hpp - configuration macros and version.
// Every macro here but the internal ones at the end may be defined by the
// user before including microloop.
#ifndef MICROLOOP_CONFIG_HPP
#define MICROLOOP_CONFIG_HPP

#include <cassert>

// The release: MAJOR.MINOR.PATCH, Semantic Versioning (CHANGELOG.md). The
// pkg-config file and the CMake package take their version from here.
#define MICROLOOP_VERSION_MAJOR 2
#define MICROLOOP_VERSION_MINOR 0
#define MICROLOOP_VERSION_PATCH 0
// One number for #if: 20000 for 2.0.0.
#define MICROLOOP_VERSION (MICROLOOP_VERSION_MAJOR * 10000 + MICROLOOP_VERSION_MINOR * 100 + MICROLOOP_VERSION_PATCH)

// Bytes of inline storage for one callback's captures. A lambda that captures
// more is a compile-time error (capture a pointer to your state instead).
// Changes sizeof(loop); every slot of every table carries one callback. The
// default, 16 bytes on 32- and 64-bit targets alike, holds a pointer and a
// (64-bit) handle: `[this, h]`.
#ifndef MICROLOOP_CALLBACK_SIZE
#define MICROLOOP_CALLBACK_SIZE 16
#endif

// Internal invariant checks. They never guard against bad user input: bad
// input is always answered with an error code, in every build mode.
#ifndef MICROLOOP_ASSERT
#define MICROLOOP_ASSERT(cond) assert(cond)
#endif

// 1 (the default where the libc is known to use it): read select()'s result
// sets word by word, the fast path. 0: only the FD_* macros are used. The loop
// checks the word layout once at construction and falls back to the macros
// by itself if the libc lays fd_set out differently, so 1 is always safe.
#ifndef MICROLOOP_FDSET_WORDS
#define MICROLOOP_FDSET_WORDS 1
#endif

// What loop<> and basic_loop<> wait for fds with unless a loop names its
// own: select (the default) or epoll. Define it for a whole program, as
// -DMICROLOOP_BACKEND=epoll, and in every translation unit alike (it is
// the default of a template parameter: loops of the two backends are
// different types). One loop can choose by itself either way:
// basic_loop<Cap, Clock, use_epoll> / epoll_loop<...>, or use_select.
#ifndef MICROLOOP_BACKEND
#define MICROLOOP_BACKEND select
#endif

// ---- internal: not for users to define -------------------------------------------
// Where the compiler is told what to inline: the hot path always
// (MICROLOOP_DETAIL_ALWAYS_INLINE), speed-only code unless the build
// optimises for size (MICROLOOP_DETAIL_HOT_INLINE, off at -Os), and code
// kept out of its callers (MICROLOOP_DETAIL_NOINLINE, with
// MICROLOOP_DETAIL_COLD for what runs rarely).
#if defined(__GNUC__)
#define MICROLOOP_DETAIL_ALWAYS_INLINE __attribute__((always_inline)) inline
#define MICROLOOP_DETAIL_NOINLINE __attribute__((noinline))
#define MICROLOOP_DETAIL_COLD __attribute__((noinline, cold))
#else
#define MICROLOOP_DETAIL_ALWAYS_INLINE inline
#define MICROLOOP_DETAIL_NOINLINE
#define MICROLOOP_DETAIL_COLD
#endif
#if defined(__GNUC__)
#define MICROLOOP_DETAIL_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define MICROLOOP_DETAIL_UNLIKELY(x) (x)
#endif
#define MICROLOOP_DETAIL_CAT2(a, b) a##b
#define MICROLOOP_DETAIL_CAT(a, b) MICROLOOP_DETAIL_CAT2(a, b)
// The tag MICROLOOP_BACKEND names: use_select or use_epoll.
#define MICROLOOP_DETAIL_BACKEND ::microloop::MICROLOOP_DETAIL_CAT(use_, MICROLOOP_BACKEND)
#if defined(__GNUC__) && !defined(__OPTIMIZE_SIZE__)
#define MICROLOOP_DETAIL_HOT_INLINE __attribute__((always_inline)) inline
#else
#define MICROLOOP_DETAIL_HOT_INLINE inline
#endif

#endif // MICROLOOP_CONFIG_HPP
// ---- end microloop/config.hpp ------------------------------------------

// ---- begin microloop/error.hpp -----------------------------------------
// microloop/error.hpp - error codes. No exceptions are ever thrown.
#ifndef MICROLOOP_ERROR_HPP
#define MICROLOOP_ERROR_HPP

namespace microloop {

// Why an operation failed. errc::ok (0) means it did not.
enum class errc : unsigned char {
    ok = 0,
    bad_fd,          // fd < 0
    fd_out_of_range, // fd >= FD_SETSIZE: select() cannot watch it
    already_watched, // this fd (or signal) already has a watcher
    table_full,      // the fixed-capacity table for this source is full
    stale_handle,    // the handle names a source that no longer exists
    bad_timeout,     // negative, zero period, or too large to represent
    bad_argument,    // e.g. unknown event bits, a null callback, an invalid signal number
    system,          // a system call failed; error_code::sys() has errno
    canceled,        // the operation was canceled before it completed
    forked,          // a loop inherited across fork() was used in the child
                     // before after_fork()
    not_watched      // no watcher has that fd (loop.watcher(fd))
};

inline const char* message(errc e) {
    switch (e) {
    case errc::ok: return "ok";
    case errc::bad_fd: return "negative file descriptor";
    case errc::fd_out_of_range: return "file descriptor >= FD_SETSIZE";
    case errc::already_watched: return "already watched";
    case errc::table_full: return "table full";
    case errc::stale_handle: return "stale or invalid handle";
    case errc::bad_timeout: return "bad timeout";
    case errc::bad_argument: return "bad argument";
    case errc::system: return "system call failed";
    case errc::canceled: return "canceled";
    case errc::forked: return "loop used in a forked child without after_fork()";
    case errc::not_watched: return "no watcher has that fd";
    }
    return "unknown error";
}

// The result of an action: `if (error_code e = loop.unwatch(h)) ...` is true
// when the action failed. Small enough to return in registers.
class error_code {
public:
    error_code() : code_(errc::ok), sys_(0) {}
    error_code(errc c, int sys_errno = 0) : code_(c), sys_(sys_errno) {}

    explicit operator bool() const { return code_ != errc::ok; }
    errc code() const { return code_; }
    int sys() const { return sys_; } // errno, for errc::system
    const char* message() const { return microloop::message(code_); }

    friend bool operator==(error_code a, errc b) { return a.code_ == b; }
    friend bool operator!=(error_code a, errc b) { return a.code_ != b; }
    friend bool operator==(error_code a, error_code b) { return a.code_ == b.code_ && a.sys_ == b.sys_; }
    friend bool operator!=(error_code a, error_code b) { return !(a == b); }

private:
    errc code_;
    int sys_;
};

} // namespace microloop

#endif // MICROLOOP_ERROR_HPP
// ---- end microloop/error.hpp -------------------------------------------

// ---- begin microloop/callback.hpp --------------------------------------
// microloop/callback.hpp - a callable stored inline, without the heap.
#ifndef MICROLOOP_CALLBACK_HPP
#define MICROLOOP_CALLBACK_HPP

#include <stddef.h>
#include <new>
#include <type_traits>
#include <utility>

namespace microloop {
namespace detail {

template <class Signature, size_t Size = MICROLOOP_CALLBACK_SIZE>
class inplace_callback;

// A null function pointer would be stored, and later called, like any other:
// whoever accepts callbacks refuses it up front (errc::bad_argument).
template <class F>
bool is_null_callable(const F&) { return false; }
template <class R, class... Args>
bool is_null_callable(R (*f)(Args...)) { return f == nullptr; }

// The bytes a stored callable lives in, and the checks every one passes: a
// capture that is too big or over-aligned is a compile-time error.
template <size_t Size>
union callback_buffer {
    unsigned char bytes[Size];
    void* align_ptr;
    long long align_ll; // 32-bit ABIs align 64-bit members to 8
};
template <class Fn, size_t Size, class F>
void place_callable(callback_buffer<Size>& buf, F&& f) {
    static_assert(sizeof(Fn) <= Size,
                  "microloop: callback captures too much; capture a pointer to your state "
                  "or raise MICROLOOP_CALLBACK_SIZE");
    static_assert(alignof(Fn) <= alignof(callback_buffer<Size>),
                  "microloop: callback captures an over-aligned object; capture a pointer to it");
    ::new (static_cast<void*>(&buf)) Fn(std::forward<F>(f));
}
template <class Fn, class R, class... Args>
R invoke_stored(void* p, Args... args) { return (*static_cast<Fn*>(p))(static_cast<Args>(args)...); }

// Holds a function pointer or a lambda whose captures fit in Size bytes, in
// place. Why not std::function: it may allocate, and it drags in exceptions
// and RTTI. A capture that is too big or over-aligned is a compile-time
// error. The callback never moves once stored (slots are never relocated),
// so no copy or move operations are needed: two pointers and the buffer.
template <class R, class... Args, size_t Size>
class inplace_callback<R(Args...), Size> {
public:
    inplace_callback() : invoke_(nullptr), destroy_(nullptr) {}
    ~inplace_callback() { reset(); }
    inplace_callback(const inplace_callback&) = delete;
    inplace_callback& operator=(const inplace_callback&) = delete;

    template <class F>
    void emplace(F&& f) {
        typedef typename std::decay<F>::type Fn;
        reset();
        place_callable<Fn>(buf_, std::forward<F>(f));
        invoke_ = &invoke_stored<Fn, R, Args...>;
        destroy_ = std::is_trivially_destructible<Fn>::value ? nullptr : &destroy_fn<Fn>;
    }
    void reset() {
        if (destroy_) destroy_(&buf_);
        invoke_ = nullptr;
        destroy_ = nullptr;
    }
    explicit operator bool() const { return invoke_ != nullptr; }
    R operator()(Args... args) { return invoke_(&buf_, static_cast<Args>(args)...); }

private:
    template <class Fn>
    static void destroy_fn(void* p) { static_cast<Fn*>(p)->~Fn(); }

    R (*invoke_)(void*, Args...);
    void (*destroy_)(void*);
    callback_buffer<Size> buf_;
};

// The same for a table whose construction and destruction must cost no code
// (the iteration hooks: a loop that adds none links none of theirs): it is
// trivially constructible and destructible, so it holds only callables that
// are trivially destructible (function pointers, lambdas that capture
// pointers, references and handles). Called only once emplaced.
template <class Signature, size_t Size = MICROLOOP_CALLBACK_SIZE>
class trivial_callback;

template <class R, class... Args, size_t Size>
class trivial_callback<R(Args...), Size> {
public:
    template <class F>
    void emplace(F&& f) {
        typedef typename std::decay<F>::type Fn;
        static_assert(std::is_trivially_destructible<Fn>::value,
                      "microloop: a hook's callback must be trivially destructible; capture pointers or handles");
        place_callable<Fn>(buf_, std::forward<F>(f));
        invoke_ = &invoke_stored<Fn, R, Args...>;
    }
    void reset() {} // nothing to destroy
    R operator()(Args... args) { return invoke_(&buf_, static_cast<Args>(args)...); }

private:
    R (*invoke_)(void*, Args...);
    callback_buffer<Size> buf_;
};

// Runs f when the scope ends, normally or by an exception thrown from a user
// callback. microloop never throws, but user code may: whatever bookkeeping
// surrounds a callback is finished here, so the tables stay consistent and
// the exception reaches the caller of run(). Works the same with
// -fno-exceptions (then it is simply the end of the scope).
template <class F>
class scope_exit {
public:
    explicit scope_exit(F f) : f_(f), armed_(true) {}
    scope_exit(scope_exit&& other) : f_(other.f_), armed_(other.armed_) { other.armed_ = false; }
    scope_exit(const scope_exit&) = delete;
    scope_exit& operator=(const scope_exit&) = delete;
    ~scope_exit() {
        if (armed_) f_();
    }
    void dismiss() { armed_ = false; }

private:
    F f_;
    bool armed_;
};

template <class F>
scope_exit<F> on_scope_exit(F f) {
    return scope_exit<F>(f);
}

} // namespace detail
} // namespace microloop

#endif // MICROLOOP_CALLBACK_HPP
// ---- end microloop/callback.hpp ----------------------------------------

// ---- begin microloop/handle.hpp ----------------------------------------
// microloop/handle.hpp - generation-counted handles and the slot pool behind
// every fixed-capacity table (fd watchers, timers, signals, AIO,
// continuations).
#ifndef MICROLOOP_HANDLE_HPP
#define MICROLOOP_HANDLE_HPP

#include <stdint.h>
#include <stddef.h>

namespace microloop {
namespace detail {
// The slot a handle id names: its low 16 bits (0xffff in a failed
// creation's handle, which names no slot).
inline uint16_t slot_of(uint64_t id) { return static_cast<uint16_t>(id & 0xffffu); }
} // namespace detail

// A handle is 64 bits: a 48-bit generation above a 16-bit slot. A handle
// kept after its source is gone no longer matches its slot's generation and
// is refused with errc::stale_handle, for every handle type. Each reuse of a
// slot advances its generation by one, so a kept handle could be mistaken
// for a newer source only after its slot was reused 2^48 - 1 times: 8.9 years
// of a million reuses a second, of that one slot.
//
// A failed creation returns an invalid handle that carries the reason and,
// for errc::system, the errno: `if (!h) puts(h.error().message());`.
// Copying a handle is copying one uint64_t: cheap to capture in a callback.
template <class Tag>
class basic_handle {
public:
    basic_handle() : bits_(failure_bits(error_code(errc::stale_handle))) {}
    // Explicit: `io_handle h = errc::ok;` must not compile into a handle
    // whose error() claims success. errc::ok itself becomes stale_handle.
    explicit basic_handle(error_code failure) : bits_(failure_bits(failure)) {}
    explicit basic_handle(errc failure) : bits_(failure_bits(error_code(failure))) {}

    // Generation 0 never names a live source, and slot 0xffff never exists.
    bool valid() const { return detail::slot_of(bits_) != 0xffffu && (bits_ >> 16) != 0; }
    explicit operator bool() const { return valid(); }
    // Why creation failed (with errno for errc::system); errc::ok for a
    // valid handle.
    error_code error() const {
        if (valid()) return error_code();
        if (detail::slot_of(bits_) != 0xffffu) return error_code(errc::stale_handle);
        return error_code(static_cast<errc>((bits_ >> 16) & 0xffu), static_cast<int>(bits_ >> 32));
    }
    uint64_t id() const { return bits_; }

    static basic_handle from_id(uint64_t id) {
        basic_handle h;
        h.bits_ = id;
        return h;
    }
    friend bool operator==(basic_handle a, basic_handle b) { return a.bits_ == b.bits_; }
    friend bool operator!=(basic_handle a, basic_handle b) { return a.bits_ != b.bits_; }

private:
    // slot 0xffff, the errc in bits 16..23, errno in bits 32..63.
    static uint64_t failure_bits(error_code e) {
        errc why = e.code() == errc::ok ? errc::stale_handle : e.code();
        return static_cast<uint64_t>(static_cast<uint32_t>(e.sys())) << 32 |
               static_cast<uint64_t>(static_cast<unsigned char>(why)) << 16 | 0xffffu;
    }

    uint64_t bits_;
};

typedef basic_handle<struct io_tag> io_handle;
typedef basic_handle<struct timer_tag> timer_handle;
typedef basic_handle<struct signal_tag> signal_handle;
typedef basic_handle<struct child_tag> child_handle;

// How full a table is, and how full it ever was since it was made: size
// capacities from `high_water` measured in a real run.
struct table_stats {
    size_t used;
    size_t capacity;
    size_t high_water;
};

namespace detail {

// slot_pool's invariant checks (is the slot live, or retired, as the call
// requires?), written outside the class template so that assert's strings
// exist once in a program rather than once per capacity and check.
inline void check_slot(bool slot_state_as_expected) {
    MICROLOOP_ASSERT(slot_state_as_expected);
    (void)slot_state_as_expected;
}

// Every slot free, generation 0, slot 0 handed out first. Not a template:
// one copy serves the pools of every capacity.
MICROLOOP_DETAIL_NOINLINE inline void init_slots(uint64_t* gen, uint16_t* free, size_t slots) {
    for (size_t i = 0; i < slots; ++i) {
        free[i] = static_cast<uint16_t>(slots - 1 - i);
        gen[i] = 0;
    }
}

// slot_pool::acquire() for every capacity: not a template, so a build that
// optimises for size has one copy in a program; inlined otherwise.
MICROLOOP_DETAIL_HOT_INLINE uint64_t acquire_slot(uint64_t* gen, const uint16_t* free, uint16_t& nfree, uint16_t& live,
                                                  uint16_t& high_water, size_t n, size_t spare) {
    if (live == n || nfree == 0) return 0;
    const uint16_t slot = free[--nfree];
    uint64_t g = (gen[slot] >> 1) + 1;
    if (g > (uint64_t(1) << 48) - 1) g = 1; // 0 never names a live source
    gen[slot] = g << 1 | 1u;
    ++live;
    // high_water: as in_use(), the live ones or more while retired slots
    // wait to be recycled beyond the spares.
    const size_t held = n + spare - nfree, beyond = held > spare ? held - spare : 0;
    const size_t used = beyond > live ? beyond : live;
    if (used > high_water) high_water = static_cast<uint16_t>(used);
    return (g << 16) | slot;
}

// Free-slot stack plus a generation per slot. O(1) acquire, release, lookup.
// N slots may be live at once. Spare extra slots let a table whose callback
// removes its own source take a new one at once, in that callback: the
// removed source's slot stays out of use until its callback has returned
// (its closure is still running), but no longer counts against N. A table of
// N always holds N. A slot retired and not yet recycled beyond the spares (a
// continuation taken out and still alive) is in use: full() and stats() count
// it, since acquire() cannot hand it out.
//
// N is at most 65,533 for every table: slot numbers are 16 bits, 0xffff
// names no slot, and a loop's tables have one spare (a larger N is a
// static_assert, whatever the table).
template <size_t N, size_t Spare = 0>
class slot_pool {
public:
    static const size_t slots = N + Spare;
    static_assert(N <= 65533 && slots > 0 && slots < 0xffff, "microloop: a capacity must be at most 65533");
    static const uint16_t none = 0xffff;
    static const uint64_t max_generation = (uint64_t(1) << 48) - 1;

    slot_pool() : nfree_(static_cast<uint16_t>(slots)), live_(0), high_water_(0) { init_slots(gen_, free_, slots); }

    // A fresh handle id, or 0 when N are live.
    uint64_t acquire() { return acquire_slot(gen_, free_, nfree_, live_, high_water_, N, Spare); }
    void release(uint16_t slot) {
        retire(slot);
        recycle(slot);
    }
    // Release in two steps: retire() makes the slot's handles stale at once
    // and frees its place among the N; recycle() lets the slot be handed out
    // again (deferred while the slot's callback is still running).
    void retire(uint16_t slot) {
        check_slot(slot < slots && (gen_[slot] & 1u));
        gen_[slot] &= ~uint64_t(1);
        --live_;
    }
    void recycle(uint16_t slot) {
        check_slot(slot < slots && nfree_ < slots && !(gen_[slot] & 1u));
        free_[nfree_++] = slot;
    }
    // Undo retire() for a slot not yet recycled: the same handles are live
    // again. False (nothing changes) when N are live.
    bool revive(uint16_t slot) {
        check_slot(slot < slots && !(gen_[slot] & 1u));
        if (live_ == N) return false;
        gen_[slot] |= 1u;
        ++live_;
        note_high_water();
        return true;
    }
    // The slot a retired (not live) handle names, or `none`: for revive().
    uint16_t lookup_retired(uint64_t id) const {
        const uint16_t slot = slot_of(id);
        if (slot >= slots || (id >> 16) == 0 || gen_[slot] != (id >> 16) << 1) return none;
        return slot;
    }
    // The slot a live handle names, or `none`.
    uint16_t lookup(uint64_t id) const {
        const uint16_t slot = slot_of(id);
        if (slot >= slots || gen_[slot] != ((id >> 16) << 1 | 1u)) return none;
        return slot;
    }
    uint64_t id_of(uint16_t slot) const { return (gen_[slot] >> 1) << 16 | slot; }
    bool live(uint16_t slot) const { return (gen_[slot] & 1u) != 0; }
    // Live sources (handles that name a slot).
    size_t used() const { return live_; }
    // Of the N, those acquire() cannot hand out: the live ones, or more when
    // retired slots wait to be recycled beyond the spares.
    size_t in_use() const {
        const size_t held = slots - nfree_; // live, or retired and not recycled
        const size_t beyond = held > Spare ? held - Spare : 0;
        return beyond > live_ ? beyond : live_;
    }
    bool full() const { return in_use() == N; }
    table_stats stats() const {
        table_stats s = {in_use(), N, high_water_};
        return s;
    }

private:
    friend struct test_access;

    void note_high_water() {
        const size_t n = in_use();
        if (n > high_water_) high_water_ = static_cast<uint16_t>(n);
    }

    uint64_t gen_[slots]; // generation << 1 | live
    uint16_t free_[slots];
    uint16_t nfree_;
    uint16_t live_, high_water_;
};

template <size_t N, size_t S> const size_t slot_pool<N, S>::slots;
template <size_t N, size_t S> const uint16_t slot_pool<N, S>::none;
template <size_t N, size_t S> const uint64_t slot_pool<N, S>::max_generation;

// One running callback: a record on the stack of the dispatch that calls it,
// linked to the record of the callback it runs inside (a callback that
// calls poll() nests an iteration, whose callbacks nest their records).
struct running_frame {
    running_frame* outer;
    uint16_t slot;  // 0xffff: none yet
    bool released;  // its source was removed meanwhile: freed when the frame ends
};

// Which slots' callbacks are running right now, innermost first. Removing a
// source from inside its own callback (or from a callback nested in it)
// makes its handles stale at once but frees the callback's storage, and lets
// the slot be handed out again, only when the outermost frame running it
// ends (the closure is still executing). Every table whose callbacks may
// remove their own source keeps one, and gives its pool a spare slot (see
// slot_pool).
class running_slot {
public:
    running_slot() : top_(nullptr) {}

    // A frame on the caller's stack begins; end() it (also if the callback
    // throws) before it goes out of scope.
    void begin(running_frame& f, uint16_t slot) {
        f.outer = top_;
        f.slot = slot;
        f.released = false;
        top_ = &f;
    }
    // Release `slot` of `pool`, whose callback is `cb`: now, or deferred to
    // the end of the outermost frame running it.
    template <class Pool, class Callback>
    void release(Pool& pool, Callback& cb, uint16_t slot) {
        if (running_frame* f = find(slot)) {
            pool.retire(slot);
            f->released = true;
            return;
        }
        cb.reset();
        pool.release(slot);
    }
    // Whether `slot` is running and has been released meanwhile (it is
    // retired, not yet recycled), and to take that release back.
    bool released(uint16_t slot) const {
        const running_frame* f = find(slot);
        return f && f->released;
    }
    void keep(uint16_t slot) {
        if (running_frame* f = find(slot)) f->released = false;
    }
    // Frame f, the innermost, ends: true if its slot was released while it
    // ran, which is freed now.
    template <class Pool, class Callback>
    bool end(running_frame& f, Pool& pool, Callback& cb) {
        top_ = f.outer;
        if (!f.released) return false;
        cb.reset();
        pool.recycle(f.slot);
        return true;
    }

private:
    // The outermost frame running `slot`, or null. Frames nest a few deep at
    // most; this runs on removals, never per event.
    running_frame* find(uint16_t slot) const {
        running_frame* found = nullptr;
        for (running_frame* f = top_; f; f = f->outer)
            if (f->slot == slot) found = f;
        return found;
    }

    running_frame* top_;
};

} // namespace detail
} // namespace microloop

#endif // MICROLOOP_HANDLE_HPP
// ---- end microloop/handle.hpp ------------------------------------------

// ---- begin microloop/loop.hpp ------------------------------------------
// microloop/loop.hpp - the loop: fd watchers, timers, signals and child
// processes in one object of fixed capacity, on a loop_base (the wake-up fd
// and the hooks through which modules' completions arrive).
#ifndef MICROLOOP_LOOP_HPP
#define MICROLOOP_LOOP_HPP

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/select.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <type_traits>

// ---- begin microloop/fd_events.hpp -------------------------------------
// microloop/fd_events.hpp - what an fd watcher asks for and what its
// callback is told: the same bits on every backend.
#ifndef MICROLOOP_FD_EVENTS_HPP
#define MICROLOOP_FD_EVENTS_HPP

namespace microloop {

// What an fd watcher asks for, and what its callback is told.
enum : unsigned {
    readable = 1u,  // read set: data, EOF, a connection to accept
    writable = 2u,  // write set
    priority = 4u,  // except set: out-of-band data, tty packet mode, sysfs GPIO edges
    io_error = 8u   // only reported: the fd was closed while watched (EBADF); the
                    // watcher is disabled, unwatch() it. Unwatch before close():
                    // a number reused before the next wait (socket(), dup2())
                    // is the new file's, and its events reach the old watcher
};

struct io_event {
    io_handle handle;
    int fd;
    unsigned events; // the ready subset of what was asked for, or io_error
};

typedef detail::inplace_callback<void(io_event)> io_callback;

} // namespace microloop

#endif // MICROLOOP_FD_EVENTS_HPP
// ---- end microloop/fd_events.hpp ---------------------------------------

// ---- begin microloop/hooks.hpp -----------------------------------------
// microloop/hooks.hpp - iteration hooks: callbacks a loop runs at fixed
// points of every iteration (on_prepare before the wait, on_check after the
// dispatch, on_idle while the wait must not block), for hosting libraries
// that expect to be driven by the application's loop. The loop holds one
// table (loop.hpp); its order and rules are stated there and in the README
// (Hosting other libraries).
#ifndef MICROLOOP_HOOKS_HPP
#define MICROLOOP_HOOKS_HPP

#include <stddef.h>
#include <stdint.h>

#include <utility>

// ---- begin microloop/loop_base.hpp -------------------------------------
// microloop/loop_base.hpp - the seam between a loop and its modules: what
// signals, AIO, mailboxes, worker pools and other threads need of a loop
// (the wake-up fd, the module hooks, stall reports, fork detection), without
// its capacities, its timers or its backend. Modules include this, never
// loop.hpp.
#ifndef MICROLOOP_LOOP_BASE_HPP
#define MICROLOOP_LOOP_BASE_HPP

#include <errno.h>
#include <pthread.h> // pthread_atfork() (not on glibc: see register_atfork_child()), in the libc itself
#include <stdint.h>
#include <sys/eventfd.h>
#include <sys/select.h> // FD_SETSIZE: the wake-up fd must fit the select() sets
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>

namespace microloop {

// What kind of callback a stall report names.
enum class source_kind : unsigned char { io, timer, signal, aio, child, post, work, hook };

// "io", "timer", "signal", "aio", "child", "post" (a mailbox callback),
// "work" (a worker_pool's done callback) or "hook" (on_prepare, on_check,
// on_idle).
inline const char* source_kind_name(source_kind k) {
    switch (k) {
    case source_kind::io: return "io";
    case source_kind::timer: return "timer";
    case source_kind::signal: return "signal";
    case source_kind::aio: return "aio";
    case source_kind::child: return "child";
    case source_kind::post: return "post";
    case source_kind::work: return "work";
    case source_kind::hook: return "hook";
    }
    return "unknown";
}

// Given to the stall callback when a callback ran longer than the threshold.
struct stall_report {
    source_kind kind;
    uint64_t id;          // the handle's id(); 0 for a mailbox callback
    int detail;           // the fd, signal number or pid; -1 for timers and posts
    int64_t duration_ns;  // how long the callback ran
};

typedef detail::inplace_callback<void(const stall_report&)> stall_callback;

namespace detail {

struct test_access; // lets the tests reach internal counters (wrap tests)

// What a loop's Backend argument is (use_select, use_epoll): it names the
// backend class for a loop's watcher slot count.
template <template <size_t> class B>
struct backend_tag {
    template <size_t Slots>
    struct of {
        typedef B<Slots> type;
    };
};

// static_cast for types whose width depends on the target (time_t, pid_t,
// int64_t...): written in a template, so the cast that is a no-op on one
// target is not flagged by -Wuseless-cast there and still narrows explicitly
// (-Wconversion) on another.
template <class To, class From>
To narrow(From v) {
    return static_cast<To>(v);
}

// Wakes a loop through its eventfd: async-signal-safe, never blocks, never
// raises SIGPIPE. 0, or the errno (EBADF if the fd was closed). Adds `n` to
// the counter: 1, or stop_mark from stop().
inline int wake_write(int fd, uint64_t n = 1) {
    ssize_t r;
    do r = write(fd, &n, sizeof n);
    while (r < 0 && errno == EINTR);
    return r >= 0 || errno == EAGAIN ? 0 : errno; // EAGAIN: the counter is full, the loop is awake
}

// What stop() adds to the eventfd's counter: far above anything the other
// writers (wake() and the signal handlers, one each per wake-up) can add up
// to, so that the loop can take back the stop's share and keep theirs.
static const uint64_t stop_mark = uint64_t(1) << 40;

#if defined(__GLIBC__)
} // namespace detail
} // namespace microloop
// glibc: the function behind pthread_atfork(), in its libc.so since 2.3.2
// (pthread_atfork() itself is in libpthread_nonshared.a before 2.28), taken
// as a weak reference: a static program that never calls fork() does not
// link the fork handler machinery (2 KiB of armhf text) for nothing, and
// one that does finds it there. __dso_handle unregisters the handler if the
// code holding it is a shared library that is unloaded.
extern "C" int __register_atfork(void (*)(void), void (*)(void), void (*)(void), void*) __attribute__((weak));
extern "C" void* __dso_handle __attribute__((weak, visibility("hidden")));
namespace microloop {
namespace detail {
// 0 (registered), an errno, or -1 (this program has no fork()).
inline int register_atfork_child(void (*child)(void)) {
    if (!&__register_atfork) return -1;
    return __register_atfork(nullptr, nullptr, child, &__dso_handle);
}
#else
inline int register_atfork_child(void (*child)(void)) { return pthread_atfork(nullptr, nullptr, child); }
#endif

// Fork detection for one load and compare: a pthread_atfork() child handler,
// registered once per process (by the first loop made), counts the forks in
// the child. The count changes only in a child, before any thread of its own
// exists, so reading it is never a race. Constant-initialised, no heap; a
// template so that a header defines it once per program.
template <class = void>
struct fork_count {
    static unsigned forks;
    // 0: not registered, 1: registering, 2: registered, 3: no fork() in this
    // program (a static one that never calls it), so the count never moves.
    static std::atomic<int> state;
    static void child() { ++forks; }
    // Registers the handler unless it is already (cheap after the first call).
    static void watch() {
        if (state.load(std::memory_order_acquire) != 0) return;
        int expected = 0;
        if (!state.compare_exchange_strong(expected, 1)) return; // another thread is at it
        const int rc = register_atfork_child(&child);
        state.store(rc == 0 ? 2 : rc < 0 ? 3 : 0); // ENOMEM: the next loop tries again
    }
};
template <class T>
unsigned fork_count<T>::forks = 0;
template <class T>
std::atomic<int> fork_count<T>::state(0);

// Taken in a process, says later whether this is a forked child of it: the
// fork count while the handler is registered (or there is no fork()),
// getpid() (a system call) if registering failed.
class fork_stamp {
public:
    fork_stamp() : forks_(0), pid_(0) {}
    void take(pid_t pid) { // pid: getpid()
        fork_count<>::watch();
        forks_ = fork_count<>::forks;
        pid_ = pid;
    }
    bool forked() const {
        return fork_count<>::state.load(std::memory_order_relaxed) >= 2 ? forks_ != fork_count<>::forks
                                                                        : getpid() != pid_;
    }
    unsigned forks() const { return forks_; }

private:
    unsigned forks_;
    pid_t pid_;
};

inline int64_t monotonic_ns() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return narrow<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

// A duration in nanoseconds; false when negative, NaN or beyond 100 years
// (which also keeps every deadline sum far from int64 overflow). Integral
// counts are compared in whole days: in d's own unit, 100 years overflows
// for periods finer than a nanosecond.
template <class Rep, class Period>
bool to_ns(std::chrono::duration<Rep, Period> d, int64_t& out) {
    typedef std::chrono::duration<long long, std::ratio<86400> > days;
    if (d < std::chrono::duration<Rep, Period>::zero() || d != d) return false; // d != d: NaN
    if (std::chrono::treat_as_floating_point<Rep>::value ? d > days(36525)
                                                        : std::chrono::duration_cast<days>(d) > days(36525))
        return false;
    out = static_cast<int64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(d).count());
    return true;
}
} // namespace detail

// How a module (signals, AIO, a mailbox) hangs off a loop without the loop
// knowing its type: after the wake-up fd is drained, the loop calls on_wake
// of every attached hook in its own thread; `active` counts the sources the
// module keeps pending, which keep run() running; on_fork (or null) is
// called by after_fork() in a forked child, to drop what belongs to the
// parent. The hook lives in the module.
struct loop_hook {
    void (*on_wake)(loop_hook* self);
    void (*on_fork)(loop_hook* self);
    size_t active;
    loop_hook* next;
};

// The part of a loop that does not depend on its capacities: what modules
// and other threads talk to.
class loop_base {
public:
    // Interrupt a waiting select() from another thread or a signal handler
    // (async-signal-safe; errno is preserved). errc::forked in a forked
    // child that has not called after_fork(): the fd is the parent's.
    error_code wake();
    // Make run() return after the current iteration. Thread-safe. The
    // wake-up it writes is taken back when the request is used up, so that
    // it does not end the next run_once()'s wait too. In a forked child that
    // has not called after_fork() it writes nothing (the fd is the parent's).
    void stop() {
        stop_.store(true, std::memory_order_relaxed);
        if (wake_fd_ < 0 || forked()) return;
        int saved = errno;
        detail::wake_write(wake_fd_, detail::stop_mark); // not through wake_pending_: see use_up_stop()
        errno = saved;
    }

    // Blocking-callback detection: call cb(stall_report) after any callback
    // that ran longer than `threshold`, naming it. Costs two clock reads per
    // callback while on; a zero threshold turns it off.
    template <class Rep, class Period, class F>
    error_code on_stall(std::chrono::duration<Rep, Period> threshold, F&& cb) {
        int64_t ns;
        if (!detail::to_ns(threshold, ns)) return errc::bad_timeout;
        if (detail::is_null_callable(cb)) return errc::bad_argument;
        stall_cb_.emplace(std::forward<F>(cb));
        stall_ns_ = ns;
        return error_code();
    }

    // For modules: register a hook; detach it before the module goes away.
    void attach(loop_hook* h) {
        h->next = hooks_;
        hooks_ = h;
    }
    void detach(loop_hook* h) {
        for (loop_hook** p = &hooks_; *p; p = &(*p)->next)
            if (*p == h) {
                *p = h->next;
                return;
            }
    }
    // The wake-up fd (an eventfd), for a module's signal handler that must
    // write to it directly (detail::wake_write()); -1 if it could not be made.
    int wake_fd() const { return wake_fd_; }

    // Runs a user callback, reporting it if it stalled the loop. For modules.
    // Stalls are measured on the real monotonic clock, whatever the timers use.
    template <class Cb, class... Ev>
    void invoke(Cb& cb, source_kind kind, uint64_t id, int what, Ev... ev) {
        if (stall_ns_ == 0) {
            cb(ev...);
            return;
        }
        int64_t t0 = detail::monotonic_ns();
        cb(ev...);
        int64_t took = detail::monotonic_ns() - t0;
        if (took >= stall_ns_) report_stall(kind, id, what, took);
    }

    // Calls the stall callback; the clock afterwards, so that its own time is
    // not charged to the next callback.
    int64_t report_stall(source_kind kind, uint64_t id, int what, int64_t took) {
        stall_report r = {kind, id, what, took};
        stall_cb_(r);
        return detail::monotonic_ns();
    }

    // Which process made this loop, or called after_fork() last.
    pid_t owner_pid() const { return owner_pid_; }
    // Whether this is a forked child that has not called after_fork().
    bool forked() const { return forked_ || stamp_.forked(); }

protected:
    loop_base();
    ~loop_base();
    loop_base(const loop_base&) = delete;
    loop_base& operator=(const loop_base&) = delete;

    void drain_wake();
    error_code renew_wake_fd();
    // Whether the loop cannot go on (forked, or the wake-up fd broken):
    // checked every iteration, so it is one load and compare. fault() says why.
    bool faulted() const { return fault_key_ != detail::fork_count<>::forks; }
    error_code fault() const {
        return broken_ && !forked() ? error_code(errc::system, wake_errno_) : error_code(errc::forked);
    }
    void set_fault() { fault_key_ = stamp_.forks() - 1; } // never equal again: the count only grows
    // The end of a run(), run_once() or poll(): the stop request is used up.
    bool use_up_stop(); // true if there was a stop() to use up
    int read_wake(uint64_t& count);
    size_t hooks_active() const {
        size_t n = 0;
        for (const loop_hook* h = hooks_; h; h = h->next) n += h->active;
        return n;
    }

    // The self-pipe, as an eventfd: one fd instead of two, a counter that
    // cannot fill up, and no SIGPIPE if someone closes it behind our back
    // (a daemon that "closes every fd above 2"): then wake() and run()
    // report errc::system instead of the process dying or the loop spinning.
    int wake_fd_;
    int wake_errno_; // why the wake-up fd could not be made or was found broken, or 0
    pid_t owner_pid_; // the wake-up fd is shared with forked children: only this process reads it
    detail::fork_stamp stamp_; // taken with owner_pid_
    unsigned fault_key_;       // stamp_.forks() while all is well (see faulted())
    bool forked_;     // found to be a forked child on reading the wake-up fd (a fork the handler missed)
    bool broken_;     // the wake-up fd was closed or replaced behind our back
    std::atomic<bool> wake_pending_;
    std::atomic<bool> stop_;
    loop_hook* hooks_;
    int64_t stall_ns_;
    stall_callback stall_cb_;
};

// ---- loop_base: the wake-up fd ---------------------------------------------

inline loop_base::loop_base()
    : wake_fd_(-1), wake_errno_(0), owner_pid_(0), fault_key_(0), forked_(false), broken_(false),
      wake_pending_(false),
      stop_(false), hooks_(nullptr), stall_ns_(0) {
    renew_wake_fd();
}

// Makes the wake-up fd (again, after a fork: the child closes its copy of
// the parent's, which stays the parent's). Non-blocking so that neither
// wake() nor a signal handler can block; close-on-exec so exec'd programs do
// not inherit it.
inline error_code loop_base::renew_wake_fd() {
    if (wake_fd_ >= 0) close(wake_fd_);
    wake_fd_ = -1;
    wake_errno_ = 0;
    owner_pid_ = getpid();
    stamp_.take(owner_pid_);
    fault_key_ = stamp_.forks();
    forked_ = false;
    broken_ = false;
    wake_pending_.store(false);
    stop_.store(false);
    int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fd < 0) {
        wake_errno_ = errno;
    } else if (fd >= FD_SETSIZE) {
        close(fd);
        wake_errno_ = EMFILE;
    } else {
        wake_fd_ = fd;
        return error_code();
    }
    return error_code(errc::system, wake_errno_);
}

inline loop_base::~loop_base() {
    if (wake_fd_ >= 0) close(wake_fd_);
}

inline error_code loop_base::wake() {
    if (wake_fd_ < 0) return error_code(errc::system, wake_errno_);
    if (forked()) return errc::forked;
    if (wake_pending_.exchange(true)) return error_code(); // a wake-up is on its way already
    int saved = errno;
    int e = detail::wake_write(wake_fd_);
    errno = saved;
    if (e == 0) return error_code();
    // Broken (closed behind our back): say so, and let the next call try
    // again rather than believe a wake-up is pending.
    wake_pending_.store(false);
    return error_code(errc::system, e);
}

// Reads (and so empties) the wake-up fd's counter: 1 with the count, 0 if
// it was empty, -1 if it is not an eventfd any more (closed, and the number
// reused): then it is never read again, and iterate() reports it.
inline int loop_base::read_wake(uint64_t& count) {
    ssize_t r;
    do r = read(wake_fd_, &count, sizeof count);
    while (r < 0 && errno == EINTR);
    if (r == static_cast<ssize_t>(sizeof count)) return 1;
    if (r < 0 && errno == EAGAIN) return 0;
    wake_errno_ = r < 0 ? errno : EBADF;
    broken_ = true;
    set_fault();
    return -1;
}

inline void loop_base::drain_wake() {
    // After fork() the child shares this fd with the parent. Reading it in
    // the child would take the parent's wake-ups while the parent's
    // wake_pending_ stays set, and every later wake() of the parent would be
    // skipped: the child leaves it alone (iterate() then returns
    // errc::forked). The fork handler catches a fork before any wake-up
    // (faulted()); this getpid(), one per wake-up, never per event, catches
    // what it cannot see (a raw clone(), a failed registration).
    if (getpid() != owner_pid_) {
        forked_ = true;
        set_fault();
        return;
    }
    // Cleared after reading, before the hooks run: a wake() that saw the
    // flag set published its work before we clear it, so the hooks see that
    // work; a wake() after the clear writes again and the next select() sees
    // it. (Cleared before reading, the read could swallow the write of a
    // wake() whose flag stays set, and every later wake() would then skip
    // its write.) An exchange, not a store, so that what the waker published
    // before wake() is visible here. Modules keep their own pending flags;
    // the fd only wakes the loop.
    uint64_t count;
    if (read_wake(count) < 0) return;
    wake_pending_.exchange(false);
    // If a hook's callback throws, the hooks after it (and the rest of its
    // own work) get their turn in the next iteration.
    auto rewake = detail::on_scope_exit([this] { wake(); });
    for (loop_hook* h = hooks_; h;) {
        loop_hook* next = h->next; // a hook may detach itself
        h->on_wake(h);
        h = next;
    }
    rewake.dismiss();
}

// stop() added stop_mark to the eventfd's counter rather than going through
// wake_pending_, so that its share can be told from the others': the loop
// reads the counter and puts back what is not the stop's (a post's, a
// signal's wake-up), which the next iteration then sees. A stop() racing this
// (its request arriving after the one used up here) keeps its own mark, and
// at worst ends one wait early.
inline bool loop_base::use_up_stop() {
    if (!stop_.load(std::memory_order_relaxed)) return false;
    stop_.store(false, std::memory_order_relaxed); // left set, it would make every later wait zero
    if (wake_fd_ < 0 || faulted() || forked()) return true;
    uint64_t count;
    if (read_wake(count) > 0 && count % detail::stop_mark != 0) detail::wake_write(wake_fd_, count % detail::stop_mark);
    return true;
}

} // namespace microloop

#endif // MICROLOOP_LOOP_BASE_HPP
// ---- end microloop/loop_base.hpp ---------------------------------------

namespace microloop {

typedef basic_handle<struct hook_tag> hook_handle;

// What an iteration hook's callback is told.
struct hook_event {
    hook_handle handle;
};

// Trivially destructible callables only (pointers, references, handles):
// a loop's hook table costs no construction or destruction code.
typedef detail::trivial_callback<void(hook_event)> hook_callback;

namespace detail {

enum hook_kind : unsigned char { hook_idle, hook_prepare, hook_check };

// N hooks of every kind together, removable from anywhere (a spare slot, as
// every table whose callbacks may remove their own source).
template <size_t N>
class hook_table {
public:
    hook_table() : idle_(0), phase_(no_hooks) {}

    // A hook of `kind`, added during loop iteration `iteration`: it first
    // runs in the next one (also when added by a hook before the wait, which
    // runs as if before its iteration began: see the loop's hook_pass()).
    template <class F>
    hook_handle add(hook_kind kind, F&& cb, uint64_t iteration) {
        if (is_null_callable(cb)) return hook_handle(errc::bad_argument);
        const uint64_t id = pool_.acquire();
        if (id == 0) return hook_handle(errc::table_full);
        slot& h = slots_[slot_of(id)];
        h.cb.emplace(std::forward<F>(cb));
        h.added_iter = iteration + (phase_ == before_wait ? 1u : 0u);
        h.kind = kind;
        if (kind == hook_idle) ++idle_;
        return hook_handle::from_id(id);
    }
    error_code remove(hook_handle h) {
        const uint16_t s = pool_.lookup(h.id());
        if (s == pool_.none) return errc::stale_handle;
        if (slots_[s].kind == hook_idle) --idle_;
        running_.release(pool_, slots_[s].cb, s);
        return error_code();
    }

    size_t idle() const { return idle_; } // idle hooks keep run() going
    bool running() const { return phase_ != no_hooks; } // an iteration nested in a hook runs none
    table_stats stats() const { return pool_.stats(); }

    // Runs the hooks of `kind`, in slot order, through loop.invoke() (stall
    // reports name them), but none added in loop iteration `iteration` or in
    // one nested in it.
    void run(hook_kind kind, uint64_t iteration, loop_base& loop) {
        const phase was = phase_;
        phase_ = kind == hook_check ? after_dispatch : before_wait;
        auto restore = on_scope_exit([this, was] { phase_ = was; });
        for (uint16_t s = 0; s < pool_type::slots; ++s) {
            if (!pool_.live(s)) continue;
            slot& h = slots_[s];
            if (h.kind != kind || h.added_iter >= iteration) continue;
            running_frame f;
            running_.begin(f, s);
            auto done = on_scope_exit([this, &f, &h] { running_.end(f, pool_, h.cb); });
            hook_event ev = {hook_handle::from_id(pool_.id_of(s))};
            loop.invoke(h.cb, source_kind::hook, ev.handle.id(), -1, ev);
        }
    }

private:
    // Which hooks are running: none, those before the wait, the check hooks.
    enum phase : unsigned char { no_hooks, before_wait, after_dispatch };
    typedef slot_pool<N, 1> pool_type;
    struct slot {
        hook_callback cb;
        uint64_t added_iter; // not run in the iteration it was added in
        hook_kind kind;
    };

    pool_type pool_;
    slot slots_[pool_type::slots];
    size_t idle_;
    running_slot running_;
    phase phase_;
};

} // namespace detail
} // namespace microloop

#endif // MICROLOOP_HOOKS_HPP
// ---- end microloop/hooks.hpp -------------------------------------------

// ---- begin microloop/backend/epoll.hpp ---------------------------------
// microloop/backend/epoll.hpp - how a loop waits for its fds with epoll:
// level-triggered, no fd ceiling (any fd the process may open), no heap. The
// same calls as backend/select.hpp (see there), over one epoll instance per
// loop and a fixed-size fd -> watcher map sized by the loop's fd capacity.
//
// What epoll does not tell, and how it is found out:
// - It drops a registration silently when the last fd of its file is
//   closed, so "closed behind the loop's back" never shows up as an error of
//   the wait (select()'s EBADF). It is found at the next epoll_ctl() on the
//   fd (EBADF, or ENOENT when the number names another file now), and, when
//   a wait returns nothing (a timeout, or poll() with nothing ready), by a
//   sweep that re-checks a couple of registrations (EPOLL_CTL_MOD) in turn
//   per idle wake-up, and one every 64 waits however busy the loop is. The watcher then gets io_error once and is disabled,
//   as with select(). The wake-up fd is checked so before a wait that may
//   sleep after one that found nothing (or the first): an idle loop never
//   goes to sleep on a wake-up fd that can no longer wake it (the wait
//   fails with EBADF, as select()'s does).
// - It keeps the registration while another fd (a dup(), a forked child's
//   copy) holds the file: the file's events keep arriving with the data it
//   was registered with. Every registration carries its watcher's slot and
//   a generation (bumped by each add and remove), so such an event never
//   reaches a newer watcher of the same fd number; once one arrives after an
//   EPOLL_CTL_DEL that failed (the fd was closed first), the instance is
//   made again from the table (as libev does), which is the only way to
//   drop a registration whose fd is gone.
// - An instance is shared with forked children. A child's epoll_ctl() would
//   edit the parent's registrations, so a forked child (counted by a
//   pthread_atfork() handler, one load per check) makes its own instance
//   before it touches the kernel, and after_fork() makes another with the
//   new wake-up fd. The parent never sees what a child does.
// - Regular files (and fds without poll support) are refused with EPERM;
//   select() calls them always ready, and so does this backend: such a
//   watcher is called in every iteration with its readable/writable
//   interest, and the wait does not sleep while one is active.
#ifndef MICROLOOP_BACKEND_EPOLL_HPP
#define MICROLOOP_BACKEND_EPOLL_HPP

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <type_traits>

namespace microloop {
namespace detail {

// The smallest power of two >= n (n >= 1).
constexpr size_t epoll_map_size(size_t n, size_t p = 1) { return p >= n ? p : epoll_map_size(n, p * 2); }

template <size_t Slots>
class epoll_backend {
public:
    typedef typename std::conditional<(Slots < 255), uint8_t, uint16_t>::type slot_t;
    static const slot_t no_slot = static_cast<slot_t>(~0u);

    explicit epoll_backend(int wake_fd)
        : epfd_(-1), wake_fd_(wake_fd), errno_(0), epoch_(0), nlost_(0), nalways_(0), cursor_(0), tick_(0), orphans_(false),
          remake_(false), wake_lost_(false), wake_seen_(false), idle_(true), pwait2_(true) {
        for (size_t i = 0; i < map_size; ++i) map_[i] = no_slot;
        for (size_t i = 0; i < Slots; ++i) {
            st_[i].fd = -1;
            st_[i].gen = 0;
            st_[i].want = st_[i].kernel = st_[i].flags = 0;
        }
        fork_count<>::watch(); // the fork count of loop_base.hpp: a child makes its own instance
        remake();
    }
    ~epoll_backend() {
        if (epfd_ >= 0) close(epfd_);
    }

    // ---- registration -------------------------------------------------------
    // Any fd >= 0 the process can open.
    static bool fits(int) { return true; }
    bool watched(int fd) const { return find(fd) != no_slot || fd == wake_fd_; }
    // The watcher slot of `fd`, or 0xffff.
    uint16_t slot(int fd) const {
        const slot_t s = find(fd);
        return s == no_slot ? uint16_t(0xffff) : narrow<uint16_t>(s);
    }
    void add(int fd, uint16_t slot) {
        state& s = st_[slot];
        s.fd = fd;
        ++s.gen;
        s.want = s.kernel = s.flags = 0;
        size_t i = bucket(fd);
        while (map_[i] != no_slot) i = (i + 1) & (map_size - 1);
        map_[i] = static_cast<slot_t>(slot);
    }
    // After set(fd, interest, 0).
    void remove(int fd) {
        size_t i = bucket(fd);
        while (map_[i] != no_slot && st_[map_[i]].fd != fd) i = (i + 1) & (map_size - 1);
        if (map_[i] == no_slot) return;
        state& s = st_[map_[i]];
        if (s.flags & lost) --nlost_;
        s.fd = -1;
        ++s.gen; // its events still in this iteration's batch are dropped
        s.flags = 0;
        // Backward-shift deletion: the entries after it that probed past
        // this bucket move up, so no tombstones are needed.
        for (size_t j = (i + 1) & (map_size - 1); map_[j] != no_slot; j = (j + 1) & (map_size - 1)) {
            const size_t home = bucket(st_[map_[j]].fd);
            if (((j - home) & (map_size - 1)) >= ((j - i) & (map_size - 1))) {
                map_[i] = map_[j];
                i = j;
            }
        }
        map_[i] = no_slot;
    }
    void set(int fd, unsigned, unsigned is_events) {
        const slot_t s = find(fd);
        if (s != no_slot) apply(s, is_events);
    }
    // after_fork()'s new wake-up fd: a new instance for this process, every
    // watcher registered again.
    void replace_wake_fd(int, int now) {
        wake_fd_ = now;
        wake_lost_ = false;
        remake();
    }

    // ---- waiting ----------------------------------------------------------------
    // Ready events land in an array on the iteration's stack, one per
    // possible registration (the watchers and the wake-up fd), at most 256:
    // more are returned by the next wait (level-triggered, nothing is lost).
    enum { max_events = Slots + 1 < 256 ? Slots + 1 : 256 };
    typedef struct epoll_event fd_sets[max_events];
    struct ready_sets {
        struct epoll_event* ev;
        int n; // what epoll returned
    };

    template <class Timeout>
    MICROLOOP_DETAIL_ALWAYS_INLINE int wait(fd_sets& set, ready_sets& r, Timeout timeout) {
        r.ev = set;
        r.n = 0;
        if (MICROLOOP_DETAIL_UNLIKELY(epoch_ != fork_count<>::forks || remake_))
            remake();
        if (MICROLOOP_DETAIL_UNLIKELY(epfd_ < 0 || wake_lost_)) {
            errno = epfd_ < 0 ? errno_ : EBADF;
            return -1;
        }
        // Watchers to report without the kernel: do not sleep.
        const bool now = (nlost_ | nalways_) != 0;
        const int64_t ns = now ? 0 : timeout();
        // About to sleep, and idle before (or the first wait): never on a
        // wake-up fd epoll has dropped (closed behind our back), which
        // nothing could wake. One epoll_ctl() per such wait, none while
        // fds keep being ready.
        if (ns != 0 && idle_ && wake_fd_ >= 0 && !wake_alive()) {
            errno = EBADF;
            return -1;
        }
        int n = pwait(set, ns);
        if (n < 0) {
            if (errno == EBADF || errno == EINVAL) { // the instance's fd closed or replaced behind our back
                remake_ = true;
                errno = EBADF;
            }
            return -1;
        }
        r.n = n;
        idle_ = n == 0;
        if (MICROLOOP_DETAIL_UNLIKELY((n == 0 && !now) || (++tick_ & 63u) == 0)) sweep(n == 0 ? 2 : 1);
        return n + ((nlost_ | nalways_) != 0 ? 1 : 0);
    }

    // The wait failed with EBADF: report the watchers whose registration was
    // lost; true if any was, or if the instance could be made again.
    template <class Core>
    MICROLOOP_DETAIL_NOINLINE bool report_closed(Core& core) {
        bool found = false;
        if (remake_) found = remake() && !wake_lost_;
        if (nlost_ && report_lost(core)) found = true;
        return found;
    }

    template <class Core>
    bool dispatch(Core& core, ready_sets& r, int n);

private:
    enum : uint8_t { lost = 1, always = 2 }; // state::flags
    enum : uint32_t { wake_data = 0xffffffffu };
    enum { map_size = epoll_map_size(2 * Slots < 8 ? 8 : 2 * Slots) };
    struct state {
        int fd;        // -1: free
        uint32_t gen;  // in every registration's data, with the slot
        uint8_t want;  // readable | writable | priority
        uint8_t kernel; // what the instance has (epoll bits >> 0, see to_epoll), 0: not registered
        uint8_t flags;
    };

    static size_t bucket(int fd) {
        return narrow<size_t>((static_cast<uint32_t>(fd) * 2654435769u) >> 8) & (map_size - 1); // 32-bit: size_t is uint32_t
    }
    slot_t find(int fd) const {
        for (size_t i = bucket(fd);; i = (i + 1) & (map_size - 1)) {
            const slot_t s = map_[i];
            if (s == no_slot || st_[s].fd == fd) return s;
        }
    }
    static uint32_t to_epoll(unsigned ev) {
        return ((ev & 1u) ? static_cast<uint32_t>(EPOLLIN) : 0u) | ((ev & 2u) ? static_cast<uint32_t>(EPOLLOUT) : 0u) |
               ((ev & 4u) ? static_cast<uint32_t>(EPOLLPRI) : 0u);
    }
    // What EPOLL_CTL_MOD of a registered fd says when its file is gone:
    // EBADF, closed; ENOENT, the number names another file now; EPERM, one
    // that epoll cannot watch (a regular file, /dev/null).
    static bool gone(int e) { return e == EBADF || e == ENOENT || e == EPERM; }
    static uint64_t data_of(size_t slot, uint32_t gen) { return static_cast<uint64_t>(gen) << 32 | slot; }

    int ctl(int op, int fd, uint32_t events, uint64_t data) {
        struct epoll_event e;
        e.events = events;
        e.data.u64 = data;
        return epoll_ctl(epfd_, op, fd, &e);
    }
    void set_flag(state& s, uint8_t f, bool on) {
        if (((s.flags & f) != 0) == on) return;
        s.flags = static_cast<uint8_t>(on ? s.flags | f : s.flags & ~f);
        if (f == lost) nlost_ += on ? 1u : ~0u;
    }
    // Always-ready watchers (EPERM) that want readable or writable.
    void count_always() {
        nalways_ = 0;
        for (size_t i = 0; i < Slots; ++i)
            if ((st_[i].flags & always) && (st_[i].want & 3u)) ++nalways_;
    }
    MICROLOOP_DETAIL_NOINLINE void apply(size_t slot, unsigned events);
    MICROLOOP_DETAIL_NOINLINE bool remake();
    MICROLOOP_DETAIL_NOINLINE void sweep(size_t budget);
    MICROLOOP_DETAIL_NOINLINE bool wake_alive();
    MICROLOOP_DETAIL_NOINLINE void lose(state& s);
    template <class Core>
    MICROLOOP_DETAIL_NOINLINE bool report_lost(Core& core);
    template <class Core>
    MICROLOOP_DETAIL_NOINLINE void report_always(Core& core);
    template <class Core>
    void ready(Core& core, const struct epoll_event& e);
    MICROLOOP_DETAIL_NOINLINE void stale() {
        if (orphans_) remake_ = true; // an fd closed before its EPOLL_CTL_DEL: its registration lives on
    }

    // epoll_pwait2() (nanoseconds, Linux 5.11) where the kernel has it, else
    // epoll_wait() with the timeout rounded up to a millisecond.
    int pwait(struct epoll_event* ev, int64_t ns) {
#ifdef __NR_epoll_pwait2
        if (pwait2_) {
            struct {
                long long sec, nsec; // struct __kernel_timespec: 64-bit on every target
            } ts, *tsp = nullptr;
            if (ns >= 0) {
                ts.sec = ns / 1000000000;
                ts.nsec = ns % 1000000000;
                tsp = &ts;
            }
            const long n = syscall(__NR_epoll_pwait2, epfd_, ev, static_cast<int>(max_events), tsp, nullptr, 0);
            if (n >= 0 || errno != ENOSYS) return static_cast<int>(n);
            pwait2_ = false;
        }
#endif
        int ms = -1;
        if (ns >= 0) {
            const int64_t m = (ns + 999999) / 1000000;
            ms = m > 0x7fffffff ? 0x7fffffff : static_cast<int>(m);
        }
        return epoll_wait(epfd_, ev, static_cast<int>(max_events), ms);
    }

    int epfd_;
    int wake_fd_;
    int errno_;        // why the instance could not be made
    unsigned epoch_;   // fork_count when it was made
    unsigned nlost_;   // watchers with `lost`: reported by the next dispatch
    unsigned nalways_; // see count_always()
    size_t cursor_;    // the sweep's next slot
    unsigned tick_;    // waits: every 64th re-checks one registration, busy or not
    bool orphans_;     // an EPOLL_CTL_DEL failed since the instance was made
    bool remake_;      // make the instance again before the next wait
    bool wake_lost_;   // the wake-up fd's registration is gone
    bool wake_seen_;
    bool idle_;        // the last wait returned nothing (or there was none)
    bool pwait2_;
    state st_[Slots];
    slot_t map_[map_size]; // open addressing on the fd, linear probing; keys in st_
};

template <size_t Slots> const typename epoll_backend<Slots>::slot_t epoll_backend<Slots>::no_slot;

// The watcher in `slot` wants `events`: the instance is told (paused
// watchers are removed from it: epoll reports hang-ups and errors even for
// an empty interest, which level-triggered would repeat forever).
template <size_t Slots>
void epoll_backend<Slots>::apply(size_t slot, unsigned events) {
    if (epoch_ != fork_count<>::forks) remake(); // a forked child: its own instance first
    state& s = st_[slot];
    s.want = static_cast<uint8_t>(events);
    if (s.flags & always) {
        count_always();
        return;
    }
    const uint8_t kev = static_cast<uint8_t>(events & 7u);
    if (kev == s.kernel || epfd_ < 0) return;
    const int op = kev == 0 ? EPOLL_CTL_DEL : s.kernel == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD;
    const uint64_t data = data_of(slot, s.gen);
    int r = ctl(op, s.fd, to_epoll(kev), data);
    if (r != 0 && op == EPOLL_CTL_ADD && errno == EEXIST) // a registration left by a closed fd of this file: ours now
        r = ctl(EPOLL_CTL_MOD, s.fd, to_epoll(kev), data);
    if (r == 0) {
        s.kernel = kev;
        set_flag(s, lost, false);
        return;
    }
    const int e = errno;
    s.kernel = 0;
    if (op == EPOLL_CTL_DEL) {
        if (e == EBADF) orphans_ = true; // closed first: if a dup holds the file, its registration lives on
        return;
    }
    if (op == EPOLL_CTL_ADD && e == EPERM) { // a regular file: always ready, as select() says
        s.flags |= always;
        count_always();
        return;
    }
    // EBADF: closed; ENOENT: closed, the number reused; ENOMEM/ENOSPC: the
    // kernel's limit on watches. Reported as io_error by the next dispatch.
    lose(s);
}

// The watcher's registration is gone, or lives on under a closed fd (a dup
// holds its file): its events from now on are stale, and the first one
// makes the instance again, which drops it.
template <size_t Slots>
void epoll_backend<Slots>::lose(state& s) {
    s.kernel = 0;
    ++s.gen;
    orphans_ = true;
    set_flag(s, lost, true);
}

// A new instance with every registration: at construction, in a forked
// child, after_fork(), and when an orphaned registration or a lost instance
// fd showed up. False if epoll_create1() failed (the waits fail with its
// errno).
template <size_t Slots>
bool epoll_backend<Slots>::remake() {
    epoch_ = fork_count<>::forks;
    remake_ = false;
    orphans_ = false;
    const int ep = epoll_create1(EPOLL_CLOEXEC);
    if (epfd_ >= 0) close(epfd_); // a forked child's copy: the parent keeps its own
    epfd_ = ep;
    if (ep < 0) {
        errno_ = errno;
        return false;
    }
    if (wake_fd_ >= 0 && ctl(EPOLL_CTL_ADD, wake_fd_, EPOLLIN, data_of(wake_data, 0)) != 0) wake_lost_ = true;
    for (size_t i = 0; i < Slots; ++i) {
        state& s = st_[i];
        if (s.fd < 0) continue;
        s.kernel = 0;
        s.flags = static_cast<uint8_t>(s.flags & ~always);
        ++s.gen; // what the old instance had returned is stale
        apply(i, s.want);
    }
    count_always();
    return true;
}

// Nothing was ready: check two registrations, in turn, that epoll has not
// dropped them (a closed fd); the next dispatch reports those it has.
template <size_t Slots>
void epoll_backend<Slots>::sweep(size_t budget) {
    for (size_t checked = 0, tries = 0; checked < budget && tries < Slots; ++tries) {
        const size_t i = cursor_;
        cursor_ = cursor_ + 1 >= Slots ? 0 : cursor_ + 1;
        state& s = st_[i];
        if (s.fd < 0 || s.kernel == 0) continue;
        ++checked;
        if (ctl(EPOLL_CTL_MOD, s.fd, to_epoll(s.kernel), data_of(i, s.gen)) != 0 && gone(errno)) lose(s);
    }
}

// Whether the wake-up fd is still registered.
template <size_t Slots>
bool epoll_backend<Slots>::wake_alive() {
    if (ctl(EPOLL_CTL_MOD, wake_fd_, EPOLLIN, data_of(wake_data, 0)) == 0 || !gone(errno)) return true;
    wake_lost_ = true;
    return false;
}

// io_error for each lost registration, through core.io_lost() (false: the
// watcher was added in this iteration, it waits for the next).
template <size_t Slots>
template <class Core>
bool epoll_backend<Slots>::report_lost(Core& core) {
    bool any = false;
    for (size_t i = 0; i < Slots && nlost_; ++i) {
        state& s = st_[i];
        if (!(s.flags & lost)) continue;
        set_flag(s, lost, false);
        const uint32_t gen = s.gen;
        const bool paused = s.want == 0;
        if (!core.io_lost(static_cast<uint16_t>(i), s.fd)) {
            if (s.gen == gen) set_flag(s, lost, true);
        } else if (!paused) {
            any = true;
        }
    }
    return any;
}

template <size_t Slots>
template <class Core>
void epoll_backend<Slots>::report_always(Core& core) {
    for (size_t i = 0; i < Slots; ++i) {
        const state& s = st_[i];
        if ((s.flags & always) && (s.want & 3u)) core.io_ready(static_cast<uint16_t>(i), s.fd, s.want & 3u);
    }
}

// One ready event, its watcher looked up now: dropped if the watcher was
// removed (or replaced) since the wait.
template <size_t Slots>
template <class Core>
MICROLOOP_DETAIL_ALWAYS_INLINE void epoll_backend<Slots>::ready(Core& core, const struct epoll_event& e) {
    const uint32_t slot = static_cast<uint32_t>(e.data.u64);
    if (slot == wake_data) {
        wake_seen_ = true; // drained after the watchers
        return;
    }
    if (slot >= Slots || st_[slot].gen != static_cast<uint32_t>(e.data.u64 >> 32) || st_[slot].fd < 0) {
        stale();
        return;
    }
    const uint32_t ev = e.events;
    unsigned ready = ((ev & EPOLLIN) ? 1u : 0u) | ((ev & EPOLLOUT) ? 2u : 0u) | ((ev & EPOLLPRI) ? 4u : 0u);
    // A hang-up or an error: select() calls the fd readable and writable.
    // A watcher of priority alone hears it too, or the wait would spin.
    if (ev & (EPOLLERR | EPOLLHUP)) ready |= st_[slot].want;
    core.io_ready(static_cast<uint16_t>(slot), st_[slot].fd, ready);
}

// As select's: a lean path for plain readers while no callback changes the
// watchers (each event a watcher that had its read interest at the wait),
// then the careful path, which looks each event's watcher up.
template <size_t Slots>
template <class Core>
MICROLOOP_DETAIL_ALWAYS_INLINE bool epoll_backend<Slots>::dispatch(Core& core, ready_sets& r, int) {
    int i = 0;
    const int n = r.n;
    if (n > 0) {
        const bool stall = core.stall_on();
        typename Core::reader_frame frame;
        int64_t t0 = stall ? core.template begin_readers<true>(frame) : core.template begin_readers<false>(frame);
        auto done = on_scope_exit([&core, &frame] { core.end_readers(frame); });
        for (; i < n; ++i) {
            const struct epoll_event& e = r.ev[i];
            const uint32_t slot = static_cast<uint32_t>(e.data.u64);
            if (e.events != EPOLLIN || slot >= Slots) break;
            const state& s = st_[slot];
            if (s.gen != static_cast<uint32_t>(e.data.u64 >> 32) || s.fd < 0) break;
            if (stall)
                core.template reader_ready<true>(frame, static_cast<uint16_t>(slot), s.fd, t0);
            else
                core.template reader_ready<false>(frame, static_cast<uint16_t>(slot), s.fd, t0);
            if (core.io_changed()) {
                ++i;
                break;
            }
        }
    }
    for (; i < n; ++i) ready(core, r.ev[i]);
    if (MICROLOOP_DETAIL_UNLIKELY((nlost_ | nalways_) != 0)) {
        if (nlost_) report_lost(core);
        if (nalways_) report_always(core);
    }
    const bool wake = wake_seen_;
    wake_seen_ = false;
    return wake;
}

} // namespace detail

// basic_loop's Backend argument for epoll: any fd (see epoll_loop<>).
struct use_epoll : detail::backend_tag<detail::epoll_backend> {};

} // namespace microloop

#endif // MICROLOOP_BACKEND_EPOLL_HPP
// ---- end microloop/backend/epoll.hpp -----------------------------------

// ---- begin microloop/backend/select.hpp --------------------------------
// microloop/backend/select.hpp - how a loop waits for its fds: select(), on
// three master fd_sets that watch(), modify() and unwatch() edit and each
// wait copies. The loop core talks to its backend through a few calls:
//
//     add(fd, slot) / remove(fd) / set(fd, was, is)   an fd's watcher and interest
//     watched(fd) / slot(fd)                           which watcher has an fd
//     wait(ready, ns) / dispatch(core, ready, n)       wait, then hand back what is ready
//     report_closed(core)                              after EBADF: fds closed behind its back
//     replace_wake_fd(old, now)                        after_fork()'s new wake-up fd
//
// Events are the loop's readable, writable and priority: bits 0, 1 and 2,
// the read, write and except sets (loop.hpp checks it). The backend owns the
// fd -> watcher table; the core owns the watchers.
#ifndef MICROLOOP_BACKEND_SELECT_HPP
#define MICROLOOP_BACKEND_SELECT_HPP

#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/select.h>
#include <time.h>

#include <type_traits>

namespace microloop {
namespace detail {

const int word_bits = static_cast<int>(CHAR_BIT * sizeof(unsigned long));
const int fd_words = (FD_SETSIZE + word_bits - 1) / word_bits;

// fd >= 0 always; unsigned arithmetic makes / and % plain shifts and masks.
inline unsigned word_of(int fd) { return static_cast<unsigned>(fd) / static_cast<unsigned>(word_bits); }
inline unsigned long bit_of(int fd) { return 1ul << (static_cast<unsigned>(fd) % static_cast<unsigned>(word_bits)); }
inline void set_bit(unsigned long* w, int fd) { w[word_of(fd)] |= bit_of(fd); }
inline void clear_bit(unsigned long* w, int fd) { w[word_of(fd)] &= ~bit_of(fd); }
inline bool test_bit(const unsigned long* w, int fd) { return (w[word_of(fd)] & bit_of(fd)) != 0; }

// Does this libc lay fd_set out as an array of unsigned long words with fd n
// at bit n % word_bits of word n / word_bits? Every Linux libc does, but POSIX
// does not promise it, so it is checked once rather than assumed.
inline bool fdset_is_words() {
#if MICROLOOP_FDSET_WORDS
    if (sizeof(fd_set) % sizeof(unsigned long) != 0 ||
        sizeof(fd_set) < static_cast<size_t>(fd_words) * sizeof(unsigned long) || word_bits + 3 >= FD_SETSIZE)
        return false;
    fd_set s;
    FD_ZERO(&s);
    FD_SET(1, &s);
    FD_SET(word_bits + 3, &s);
    unsigned long w[2];
    memcpy(w, &s, sizeof w);
    return w[0] == 2ul && w[1] == 8ul;
#else
    return false;
#endif
}

// Slots: the loop's fd watcher slots. Core: the loop, which the dispatch
// calls back (a friend of the loop, so that these calls are inlined into
// its iteration and cost nothing over a loop with select() written in):
//     core.io_ready(slot, fd, events)           a ready fd, looked up now
//     core.begin_readers(f) / end_readers(f)    the lean scan begins, ends (f: a
//                                               Core::reader_frame on its stack)
//     core.reader_ready<Stall>(f, slot, fd, t0) a ready reader, on the lean scan
//     core.io_changed()                         the watchers changed meanwhile
//     core.io_closed(slot, fd)                  after EBADF: report fd if closed
//     core.stall_on()                           stall detection is on
template <size_t Slots>
class select_backend {
public:
    typedef typename std::conditional<(Slots < 255), uint8_t, uint16_t>::type slot_t;
    static const slot_t no_slot = static_cast<slot_t>(~0u);

    explicit select_backend(int wake_fd) : wake_fd_(wake_fd), maxfd_(-1), words_(fdset_is_words()), wake_seen_(false) {
        for (int i = 0; i < 3; ++i) {
            FD_ZERO(&master_[i]);
            nwatch_[i] = 0;
        }
        memset(watched_, 0, sizeof watched_);
        for (size_t i = 0; i < FD_SETSIZE; ++i) fd_slot_[i] = no_slot;
        if (wake_fd >= 0) {
            FD_SET(wake_fd, &master_[rd]);
            maxfd_ = wake_fd;
        }
    }

    // ---- registration -------------------------------------------------------
    // Whether an fd (>= 0) can be watched here: the core checks before
    // anything touches an fd_set (FD_SET beyond FD_SETSIZE writes past the
    // end of the set), else errc::fd_out_of_range.
    static bool fits(int fd) { return fd < FD_SETSIZE; }
    // The watcher slot of `fd` (which fits()), or 0xffff.
    uint16_t slot(int fd) const { return fd_slot_[fd] == no_slot ? uint16_t(0xffff) : narrow<uint16_t>(fd_slot_[fd]); }
    // A watcher has `fd` (which fits()), or it is the wake-up fd.
    bool watched(int fd) const { return fd_slot_[fd] != no_slot || fd == wake_fd_; }
    void add(int fd, uint16_t slot) {
        fd_slot_[fd] = static_cast<slot_t>(slot);
        set_bit(watched_, fd);
        if (fd > maxfd_) maxfd_ = fd;
    }
    // After set(fd, interest, 0).
    void remove(int fd) {
        fd_slot_[fd] = no_slot;
        clear_bit(watched_, fd);
        if (fd == maxfd_) recompute_maxfd();
    }
    // The watcher of `fd` asked for `was`, asks for `is` now.
    void set(int fd, unsigned was_events, unsigned is_events) {
        static const unsigned bit[3] = {1u, 2u, 4u}; // readable, writable, priority
        for (int s = 0; s < 3; ++s) {
            bool was = (was_events & bit[s]) != 0, is = (is_events & bit[s]) != 0;
            if (was == is) continue;
            if (is) {
                FD_SET(fd, &master_[s]);
                ++nwatch_[s];
            } else {
                FD_CLR(fd, &master_[s]);
                --nwatch_[s];
            }
        }
    }
    // The wake-up fd is `now` instead of `old` (either may be -1).
    void replace_wake_fd(int old, int now) {
        if (old >= 0) FD_CLR(old, &master_[rd]);
        wake_fd_ = now;
        if (now >= 0) FD_SET(now, &master_[rd]);
        recompute_maxfd();
    }

    // ---- waiting ----------------------------------------------------------------
    // What one select() reported; lives on the iteration's stack. The sets
    // are apart from the rest, whose address select() never sees: the
    // compiler need not reload it after the call.
    struct ready_sets {
        fd_set* ptr[3]; // into sets, or NULL for a set nobody watches
        int nfds;
    };
    typedef fd_set fd_sets[3];

    // select() on copies of the masters, for at most timeout() nanoseconds
    // (-1: no limit, 0: do not wait): select()'s result (-1 with errno on
    // failure).
    template <class Timeout>
    MICROLOOP_DETAIL_ALWAYS_INLINE int wait(fd_sets& set, ready_sets& r, Timeout timeout) {
        r.nfds = maxfd_ + 1;
        // Only the words select() will look at are copied. The read set always
        // holds the wake-up fd; the others are usually empty and passed as NULL.
        const size_t bytes =
            (static_cast<size_t>(r.nfds) + word_bits - 1) / word_bits * sizeof(unsigned long);
        r.ptr[rd] = &set[rd];
        r.ptr[wr] = nwatch_[wr] ? &set[wr] : nullptr;
        r.ptr[ex] = nwatch_[ex] ? &set[ex] : nullptr;
        if (words_) {
            memcpy(r.ptr[rd], &master_[rd], bytes);
            if (r.ptr[wr]) memcpy(r.ptr[wr], &master_[wr], bytes);
            if (r.ptr[ex]) memcpy(r.ptr[ex], &master_[ex], bytes);
        } else {
            for (int s = 0; s < 3; ++s)
                if (r.ptr[s]) *r.ptr[s] = master_[s];
        }
        const int64_t wait_ns = timeout(); // after the copies, as few values as possible live across them
        struct timeval tv, *tvp = nullptr;
        if (wait_ns == 0) { // poll(), or a timer already due: no divisions
            tv.tv_sec = 0;
            tv.tv_usec = 0;
            tvp = &tv;
        } else if (wait_ns > 0) {
            // Rounded up: waking before the deadline would only spin.
            int64_t us = (wait_ns + 999) / 1000;
            const int64_t max_s = 0x7fffffff; // fits a 32-bit time_t
            tv.tv_sec = narrow<time_t>(us / 1000000 > max_s ? max_s : us / 1000000);
            tv.tv_usec = narrow<suseconds_t>(us % 1000000);
            tvp = &tv;
        }
        return select(r.nfds, r.ptr[rd], r.ptr[wr], r.ptr[ex], tvp);
    }

    // select() failed with EBADF: some watched fd was closed behind our back.
    // Each watcher's fd is offered to core.io_closed(), which reports and
    // disables it if it is closed. False if no watcher owns a bad fd (the
    // wake-up fd itself was closed).
    template <class Core>
    MICROLOOP_DETAIL_NOINLINE bool report_closed(Core& core) {
        bool found = false;
        for (int fd = 0; fd <= maxfd_; ++fd) {
            slot_t s = fd_slot_[fd];
            if (s != no_slot && core.io_closed(s, fd)) found = true;
        }
        return found;
    }

    // Calls back the watchers of the n > 0 ready fds; true if the wake-up fd
    // was ready (the core drains it after the watchers ran).
    template <class Core>
    bool dispatch(Core& core, ready_sets& r, int n);

private:
    enum { rd = 0, wr = 1, ex = 2 };

    void recompute_maxfd() {
        maxfd_ = wake_fd_;
        for (int w = fd_words - 1; w >= 0; --w) {
            if (watched_[w]) {
                int fd = w * word_bits + (word_bits - 1 - __builtin_clzl(watched_[w]));
                if (fd > maxfd_) maxfd_ = fd;
                return;
            }
        }
    }
    template <class Core>
    void scan(Core& core, const unsigned long* r, const unsigned long* w, const unsigned long* e, int nwords,
              int nready);
    template <bool Stall, class Core>
    bool scan_readers(Core& core, const unsigned long* r, int nwords, int& i, unsigned long& bits, int& nready);
    template <class Core>
    void ready_fd(Core& core, int fd, unsigned ready) {
        slot_t s = fd_slot_[fd];
        if (s != no_slot) {
            core.io_ready(s, fd, ready);
            return;
        }
        if (fd == wake_fd_) wake_seen_ = true; // drained after the watchers; else unwatched meanwhile
    }

    // fd sets: the masters are edited by set() and copied for each select();
    // watched_ is our own bitmap of fds with a watcher.
    fd_set master_[3];
    unsigned long watched_[fd_words];
    slot_t fd_slot_[FD_SETSIZE];
    int wake_fd_;
    int maxfd_;
    unsigned nwatch_[3]; // watchers interested in each set: an empty set is passed as NULL
    bool words_;         // fdset_is_words()
    bool wake_seen_;     // the wake-up fd was ready in this scan
};

template <size_t Slots> const typename select_backend<Slots>::slot_t select_backend<Slots>::no_slot;

template <size_t Slots>
template <class Core>
MICROLOOP_DETAIL_ALWAYS_INLINE bool select_backend<Slots>::dispatch(Core& core, ready_sets& rs, int n) {
    const int nwords = static_cast<int>((static_cast<unsigned>(rs.nfds) + word_bits - 1) / word_bits);
    const unsigned long* sets[3];
    unsigned long words[3][fd_words];
    if (words_) {
        for (int s = 0; s < 3; ++s) sets[s] = reinterpret_cast<const unsigned long*>(rs.ptr[s]); // NULL stays NULL
    } else {
        // Portable path: translate the result sets into words through
        // FD_ISSET, for the fds we watch only.
        memset(words, 0, sizeof words);
        for (int fd = 0; fd < rs.nfds; ++fd) {
            if (!test_bit(watched_, fd) && fd != wake_fd_) continue;
            for (int s = 0; s < 3; ++s)
                if (rs.ptr[s] && FD_ISSET(fd, rs.ptr[s])) set_bit(words[s], fd);
        }
        for (int s = 0; s < 3; ++s) sets[s] = rs.ptr[s] ? words[s] : nullptr;
    }
    scan(core, sets[rd], sets[wr], sets[ex], nwords, n); // one call site: inlined
    const bool wake = wake_seen_;
    wake_seen_ = false;
    return wake;
}

// Ready fds are found a word at a time. nready is select()'s count of set
// bits: the scan stops when it is used up. Inlined into its one caller, the
// loop's iteration: with one ready fd per iteration, the call would cost more
// than the scan.
//
// Two paths, chosen once per iteration. The lean one serves the common case,
// only readers and no stall detection: until a callback changes the fd
// watchers, every ready bit is a watcher that existed at select() time with
// its read interest (the masters held exactly those), so it is called without
// looking anything else up. The first watch(), modify() or unwatch() (or a
// nested iteration) makes core.io_changed() true, and the rest of the scan
// continues on the careful path, which looks every fd up again (ready_fd()).
template <size_t Slots>
template <class Core>
MICROLOOP_DETAIL_ALWAYS_INLINE void select_backend<Slots>::scan(Core& core, const unsigned long* r,
                                                                 const unsigned long* w, const unsigned long* e,
                                                                 int nwords, int nready) {
    int i = 0;
    unsigned long bits = 0; // the careful path resumes with what is left of word i
    bool resume = false;
#if defined(__OPTIMIZE_SIZE__)
    // Built for size: one lean scan, without stall detection; with it on,
    // the careful path serves (it times each callback through invoke()).
    if (!w && !e && !core.stall_on()) {
        if (scan_readers<false>(core, r, nwords, i, bits, nready))
#else
    if (!w && !e) {
        if (!core.stall_on() ? scan_readers<false>(core, r, nwords, i, bits, nready)
                             : scan_readers<true>(core, r, nwords, i, bits, nready))
#endif
            i = nwords; // done
        else
            resume = true;
    }
    // An unused set reads as empty. Not const: zeros in .bss cost no text,
    // in .rodata they would.
    static unsigned long none[fd_words] = {};
    if (!w) w = none;
    if (!e) e = none;
    for (; i < nwords && nready > 0; ++i) {
        for (bits = resume ? bits : (r[i] | w[i] | e[i]), resume = false; bits; bits &= bits - 1) {
            int bit = __builtin_ctzl(bits);
            unsigned long rb = (r[i] >> bit) & 1ul, wb = (w[i] >> bit) & 1ul, eb = (e[i] >> bit) & 1ul;
            nready -= static_cast<int>(rb + wb + eb);
            ready_fd(core, i * word_bits + bit, (rb ? 1u : 0u) | (wb ? 2u : 0u) | (eb ? 4u : 0u));
        }
    }
}

// The lean path: true when the scan is complete; false when a callback
// changed the fd watchers, with i, bits and nready where the careful path
// takes over (the fd that was running is done). With stall detection on
// (Stall), the core reads the clock once per callback, after it (see
// reader_ready()).
template <size_t Slots>
template <bool Stall, class Core>
MICROLOOP_DETAIL_ALWAYS_INLINE bool select_backend<Slots>::scan_readers(Core& core, const unsigned long* r,
                                                                         int nwords, int& i, unsigned long& bits,
                                                                         int& nready) {
    // One record of the running callback for the whole scan, on this stack
    // (a nested iteration's scan has its own), ended once, when the scan
    // ends or a callback throws: while nothing changes, no callback has
    // removed its own watcher and there is nothing to free.
    typename Core::reader_frame frame;
    int64_t t0 = core.template begin_readers<Stall>(frame);
    auto done = on_scope_exit([&core, &frame] { core.end_readers(frame); });
    for (; i < nwords && nready > 0; ++i) {
        for (bits = r[i]; bits;) {
            const int fd = i * word_bits + __builtin_ctzl(bits);
            bits &= bits - 1;
            --nready;
            const slot_t s = fd_slot_[fd];
            if (s == no_slot) { // the wake-up fd: drained after the watchers
                if (fd == wake_fd_) wake_seen_ = true;
                continue;
            }
            core.template reader_ready<Stall>(frame, s, fd, t0);
            if (core.io_changed()) return false;
        }
    }
    return true;
}

} // namespace detail

// basic_loop's Backend argument for select(): fds below FD_SETSIZE.
struct use_select : detail::backend_tag<detail::select_backend> {};

} // namespace microloop

#endif // MICROLOOP_BACKEND_SELECT_HPP
// ---- end microloop/backend/select.hpp ----------------------------------

// ---- begin microloop/clock.hpp -----------------------------------------
// microloop/clock.hpp - what a loop's timers run on: the monotonic clock, or
// a manual one for tests in virtual time (basic_loop's Clock parameter).
#ifndef MICROLOOP_CLOCK_HPP
#define MICROLOOP_CLOCK_HPP

#include <stdint.h>

#include <chrono>

namespace microloop {

// The clock timers run on: CLOCK_MONOTONIC, which never jumps with the
// wall-clock time. A loop's second template parameter may replace it with
// any class that has `int64_t now_ns() const` (nanoseconds, never
// decreasing), such as manual_clock.
struct monotonic_clock {
    int64_t now_ns() const { return detail::monotonic_ns(); }
};

// A clock that moves only when told: timer tests (ours and users') run in
// virtual time, deterministically, with no sleeping. Drive such a loop with
// poll() (or run_once(zero)) after each advance(): a wait for a timer would
// otherwise sleep in real time for the virtual interval.
//
//     microloop::basic_loop<microloop::capacity<4, 4>, microloop::manual_clock> loop;
//     loop.after(seconds(10), cb);
//     loop.clock().advance(seconds(10));
//     loop.poll();                                // cb runs
class manual_clock {
public:
    manual_clock() : now_(0) {}
    int64_t now_ns() const { return now_; }
    void set(int64_t ns) { now_ = ns > now_ ? ns : now_; } // never backwards
    template <class Rep, class Period>
    void advance(std::chrono::duration<Rep, Period> d) {
        set(now_ + static_cast<int64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(d).count()));
    }

private:
    int64_t now_;
};

} // namespace microloop

#endif // MICROLOOP_CLOCK_HPP
// ---- end microloop/clock.hpp -------------------------------------------

// ---- begin microloop/signal.hpp ----------------------------------------
// microloop/signal.hpp - signals and child processes as ordinary loop events.
//
//     loop.on_signal(SIGHUP, [&](microloop::signal_event) { reload(); });
//     loop.on_child(pid, [](microloop::child_event ev) { printf("exit %d\n", ev.exit_code()); });
//
// The handler microloop installs only counts: it runs in signal context, so it
// records the signal, the sender, and writes to the loop's wake-up
// fd (an eventfd). The callback runs later inside the loop, where anything is allowed.
//
// Rules (the handler and dispositions are process-wide, loops are not):
// - Signal and child watchers are active sources: run() keeps running while
//   one exists (a daemon's SIGTERM callback calls stop()).
// - One watcher per signal in the whole process. Watching a signal already
//   watched (by this loop or another) is refused with errc::already_watched.
//   Unwatching, or destroying the loop, puts back the disposition that was
//   in place before (the saved sigaction).
// - on_signal() unblocks the signal in the calling (loop) thread. Block
//   signals in every other thread (block_signals() at the top of a worker
//   thread, or before creating threads) so the kernel delivers them to the
//   loop thread; the handler is correct in any thread, but delivery to a
//   blocked-everywhere signal never happens.
// - Child processes: on_child(pid, cb) reaps exactly that pid with
//   waitpid(pid, WNOHANG) and reports it once. Children nobody watches are
//   never reaped by microloop (no waitpid(-1)): their owner (system(),
//   popen(), a library) waits for them. Every child watcher of the process
//   lives in one loop, the one that owns SIGCHLD.
// - SIGPIPE is left alone: a write to a closed socket or pipe kills the
//   process by default. Send on sockets with MSG_NOSIGNAL, or call
//   ignore_sigpipe() once at start-up so such writes fail with EPIPE.
// - fork(): a child inherits the handler and the loop's wake-up fd, but
//   never disturbs the parent through them: the handler writes to a loop's
//   wake-up fd only in the process that owns the loop, so a signal the child
//   receives before exec (or before after_fork()) wakes nobody. A child that
//   keeps the loop calls loop.after_fork(): from then on its signals reach
//   its own loop; signal counts inherited from the parent are dropped, and so
//   are arrivals between fork() and after_fork() (block signals around fork()
//   if those matter: the kernel keeps them pending until unblocked).
//
// Included by loop.hpp (basic_loop holds a signal table); needs only
// loop_base.hpp.
#ifndef MICROLOOP_SIGNAL_HPP
#define MICROLOOP_SIGNAL_HPP

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>

namespace microloop {

// What a signal callback is told.
struct signal_event {
    signal_handle handle;
    int signo;
    // Arrivals since the last call, at least 1. The kernel merges a standard
    // signal that arrives while the same one is pending; real-time signals
    // (SIGRTMIN + n) are queued, and each one the kernel accepted is counted.
    uint32_t count;
    // The sender of the most recent arrival when a process sent it (kill,
    // sigqueue, raise; for SIGCHLD, the child); 0 when the kernel raised it.
    pid_t pid;
    uid_t uid;
    // The value the most recent arrival carried if it was sent with
    // sigqueue() (which of several things happened, say); zero otherwise.
    union sigval value;
};

// What a child callback is told, once: the child has terminated and has been
// reaped. `status` is waitpid()'s, for the W* macros, or -1 if someone else
// reaped the child first (its status is then lost).
struct child_event {
    child_handle handle;
    pid_t pid;
    int status;

    bool exited() const { return status != -1 && WIFEXITED(status); }
    int exit_code() const { return exited() ? WEXITSTATUS(status) : -1; }
    bool signaled() const { return status != -1 && WIFSIGNALED(status); }
    int term_signal() const { return signaled() ? WTERMSIG(status) : 0; }
    bool lost() const { return status == -1; }
};

typedef detail::inplace_callback<void(signal_event)> signal_callback;
typedef detail::inplace_callback<void(child_event)> child_callback;

// Blocks every signal in the calling thread, so the kernel delivers
// process-directed signals to the loop thread instead. Call it at the start
// of worker threads (threads inherit the creator's mask, so calling it in
// main() before creating threads, then creating the loop, also works: the
// loop thread's on_signal() unblocks what it watches). Synchronous faults
// (SIGSEGV...) are still delivered; libc keeps its own internal signals.
//
// sigprocmask() rather than pthread_sigmask(): on Linux (glibc, musl,
// uClibc-ng) both change the calling thread's mask only, and sigprocmask()
// is in libc proper, so using signals needs no -pthread with older glibc.
inline error_code block_signals() {
    sigset_t all;
    sigfillset(&all);
    if (sigprocmask(SIG_BLOCK, &all, nullptr) != 0) return error_code(errc::system, errno);
    return error_code();
}

// Unblocks every signal in the calling thread. A program exec'd from a
// thread that blocked signals (block_signals() before creating threads, as
// above) starts with that mask and would never see SIGTERM or SIGINT: call
// this in the child between fork() and exec() (it is async-signal-safe).
// Dispositions need no such care: exec resets caught signals to the default
// (ignored ones stay ignored: see ignore_sigpipe()).
inline error_code unblock_signals() {
    sigset_t none;
    sigemptyset(&none);
    if (sigprocmask(SIG_SETMASK, &none, nullptr) != 0) return error_code(errc::system, errno);
    return error_code();
}

namespace detail {

// Signal numbers run from 1 to signal_limit - 1 (65 on most Linux targets,
// 129 on MIPS).
#if defined(NSIG)
const int signal_limit = NSIG;
#elif defined(_NSIG)
const int signal_limit = _NSIG;
#else
const int signal_limit = 65;
#endif

static_assert(ATOMIC_INT_LOCK_FREE == 2 && ATOMIC_POINTER_LOCK_FREE == 2,
              "microloop: the signal handler needs lock-free atomics (a lock could deadlock in signal context)");

// The process-wide record of one signal, shared by the handler and the loop
// that owns the signal. Only lock-free atomics: the handler may interrupt the
// loop thread at any instruction, or run in another thread at the same time.
struct signal_state {
    std::atomic<const void*> owner; // the signal_table that watches it; null: nobody
    std::atomic<int> wake_fd;       // the owner's wake-up fd + 1; 0: drop arrivals
    std::atomic<unsigned> pending;  // arrivals the loop has not taken yet
    std::atomic<unsigned> busy;     // handlers running right now
    std::atomic<int> claimant;      // the process whose loop owns it (not a forked child)
    // The latest sender, under a seqlock: odd while a handler writes.
    std::atomic<unsigned> seq;
    std::atomic<int> pid;
    std::atomic<unsigned> uid;
    std::atomic<uintptr_t> value; // a union sigval's bytes
};

static_assert(sizeof(union sigval) == sizeof(uintptr_t), "microloop: a union sigval is expected to be pointer-sized");

// Static data of a class template: one instance per program however many
// translation units include this header, and (all members zero) constant
// initialised, so a signal arriving before main() finds a valid table.
template <class Unused = void>
struct signal_globals {
    static signal_state state[signal_limit];

    // Async-signal-safe: atomics, write(), errno saved and restored.
    static void handler(int signo, siginfo_t* info, void*) {
        if (signo <= 0 || signo >= signal_limit) return;
        int saved_errno = errno;
        signal_state& s = state[signo];
        s.busy.fetch_add(1); // seq_cst, paired with release_signal()
        int fd = s.wake_fd.load() - 1;
        if (fd >= 0) {
            record_sender(s, signo, info);
            // Only the first arrival since the loop last looked wakes it: a
            // storm costs one write. The count itself is never lost. In a
            // forked child the wake-up fd is still the parent's: no write
            // (and the count stays the child's, until its after_fork() drops
            // it).
            if (s.pending.fetch_add(1) == 0 && getpid() == s.claimant.load()) wake_write(fd);
        }
        s.busy.fetch_sub(1);
        errno = saved_errno;
    }

    // Writer side of the seqlock. Two handlers of one signal may run at once
    // in two threads: the second one skips (its sender is as recent).
    static void record_sender(signal_state& s, int signo, const siginfo_t* info) {
        int pid = 0;
        unsigned uid = 0;
        uintptr_t value = 0;
        bool sent = info && (info->si_code == SI_USER || info->si_code == SI_QUEUE ||
#ifdef SI_TKILL
                             info->si_code == SI_TKILL ||
#endif
                             signo == SIGCHLD);
        if (sent) {
            pid = static_cast<int>(info->si_pid);
            uid = static_cast<unsigned>(info->si_uid);
        }
        if (info && info->si_code == SI_QUEUE) memcpy(&value, &info->si_value, sizeof value);
        // Release stores of the data (no fences: ThreadSanitizer cannot
        // check them): a reader that sees new data also sees the odd count.
        unsigned q = s.seq.load(std::memory_order_relaxed);
        if ((q & 1u) || !s.seq.compare_exchange_strong(q, q + 1u, std::memory_order_relaxed)) return;
        s.pid.store(pid, std::memory_order_release);
        s.uid.store(uid, std::memory_order_release);
        s.value.store(value, std::memory_order_release);
        s.seq.store(q + 2u, std::memory_order_release);
    }
};

template <class Unused>
signal_state signal_globals<Unused>::state[signal_limit];

typedef signal_globals<> globals;

// Reader side, in the loop thread. A writer is a few instructions long, so a
// few retries suffice; if a handler in another thread is preempted mid-write,
// we give up after 64 tries and may pair one sender's pid with another's uid.
inline void read_sender(const signal_state& s, signal_event& ev) {
    for (int tries = 0; tries < 64; ++tries) {
        unsigned q1 = s.seq.load(std::memory_order_acquire);
        ev.pid = narrow<pid_t>(s.pid.load(std::memory_order_acquire));
        ev.uid = narrow<uid_t>(s.uid.load(std::memory_order_acquire));
        uintptr_t value = s.value.load(std::memory_order_acquire);
        memcpy(&ev.value, &value, sizeof value);
        if (!(q1 & 1u) && s.seq.load(std::memory_order_relaxed) == q1) return;
        sched_yield();
    }
}

// A signal number that may be watched, before asking sigaction().
inline bool watchable_signal(int signo) {
    return signo > 0 && signo < signal_limit && signo != SIGKILL && signo != SIGSTOP;
}

// What claiming a signal changed, to be put back when it is given back: the
// disposition, and whether this thread had the signal blocked.
struct claimed_signal {
    struct sigaction disposition;
    bool was_blocked;
};

// Take the signal for `owner`: claim it process-wide, install the handler,
// and unblock it in this thread. What was there before goes to `saved`.
inline error_code claim_signal(int signo, const void* owner, int wake_fd, claimed_signal* saved) {
    signal_state& s = globals::state[signo];
    const void* nobody = nullptr;
    if (!s.owner.compare_exchange_strong(nobody, owner)) return errc::already_watched;
    s.pending.store(0);
    s.claimant.store(narrow<int>(getpid()));
    s.wake_fd.store(wake_fd + 1);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = &globals::handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART | SA_SIGINFO;
    if (sigaction(signo, &sa, &saved->disposition) != 0) {
        int e = errno;
        s.wake_fd.store(0);
        s.owner.store(nullptr);
        // EINVAL: a number libc or the kernel keeps for itself (glibc's
        // threading signals between the standard and real-time ones).
        return e == EINVAL ? error_code(errc::bad_argument, e) : error_code(errc::system, e);
    }
    sigset_t one, before;
    sigemptyset(&one);
    sigaddset(&one, signo);
    sigprocmask(SIG_UNBLOCK, &one, &before); // this thread only, see block_signals()
    saved->was_blocked = sigismember(&before, signo) == 1;
    return error_code();
}

// Give the signal back: block it again in this thread if it was blocked when
// claimed (a daemon that blocks SIGTERM while it shuts down must not be
// killed by one because a watcher came and went), restore the disposition,
// then wait until no handler is still using the wake-up fd, which may be
// closed right after. The handler increments `busy` before reading `wake_fd`
// and we clear `wake_fd` before reading `busy` (all seq_cst), so a handler
// that still saw the fd is always seen as busy here.
inline void release_signal(int signo, const claimed_signal& saved) {
    signal_state& s = globals::state[signo];
    if (saved.was_blocked) {
        sigset_t one;
        sigemptyset(&one);
        sigaddset(&one, signo);
        sigprocmask(SIG_BLOCK, &one, nullptr);
    }
    sigaction(signo, &saved.disposition, nullptr); // cannot fail: the same call succeeded when claiming
    s.wake_fd.store(0);
    while (s.busy.load() != 0) sched_yield();
    s.owner.store(nullptr);
}

// After fork(), in the child: route the signal to the child's new wake-up fd and
// drop the count inherited from the parent (it is the parent's to deliver).
inline void retarget_signal(int signo, int wake_fd) {
    signal_state& s = globals::state[signo];
    s.wake_fd.store(0);
    s.claimant.store(narrow<int>(getpid()));
    s.pending.store(0);
    s.wake_fd.store(wake_fd + 1);
}

// A loop's signal and child watchers: the fixed tables and the hook through
// which the loop hands it each wake-up. Part of basic_loop.
template <size_t Signals, size_t Children>
class signal_table : private loop_hook {
    // One spare slot each: a callback can replace its own watcher at once.
    typedef slot_pool<Signals, 1> sig_pool;
    typedef slot_pool<Children, 1> kid_pool;

public:
    explicit signal_table(loop_base& owner)
        : loop_(&owner), reap_(nullptr), chld_users_(0), chld_count_(0), chld_watched_(false), kids_due_(false) {
        on_wake = &signal_table::dispatch;
        on_fork = nullptr; // the loop's after_fork() calls after_fork() below itself
        active = 0;
        next = nullptr;
        memset(&chld_saved_, 0, sizeof chld_saved_);
        for (size_t i = 0; i < sig_pool::slots; ++i) sigs_[i].signo = 0;
        for (size_t i = 0; i < kid_pool::slots; ++i) kids_[i].pid = 0;
        loop_->attach(this);
    }

    ~signal_table() {
        for (size_t i = 0; i < sig_pool::slots; ++i)
            if (sigs_[i].signo) give_back(sigs_[i]);
        if (chld_users_ > 0) release_signal(SIGCHLD, chld_saved_);
        loop_->detach(this);
    }

    signal_table(const signal_table&) = delete;
    signal_table& operator=(const signal_table&) = delete;

    // A failed watch carries its errno in the handle: h.error().sys().
    // A signal already watched is refused as such before a full table is
    // (the order of watch()); SIGCHLD too, though it is shared with this
    // loop's child watchers.
    template <class F>
    signal_handle add(int signo, F&& cb) {
        if (!watchable_signal(signo) || is_null_callable(cb)) return signal_handle(errc::bad_argument);
        if (signo == SIGCHLD ? chld_watched_ : globals::state[signo].owner.load() != nullptr)
            return signal_handle(errc::already_watched);
        if (sig_pool_.full()) return signal_handle(errc::table_full);
        if (loop_->wake_fd() < 0) return signal_handle(no_wake_fd());
        // Claimed before a slot is taken: a refusal leaves no trace (not even
        // in the high-water mark).
        claimed_signal saved;
        memset(&saved, 0, sizeof saved);
        error_code e = signo == SIGCHLD ? take_sigchld() : claim_signal(signo, this, loop_->wake_fd(), &saved);
        if (e) return signal_handle(e);
        uint64_t id = sig_pool_.acquire(); // not full: checked above
        sig_slot& s = sigs_[slot_of(id)];
        s.saved = saved;
        s.cb.emplace(std::forward<F>(cb));
        s.signo = signo;
        if (signo == SIGCHLD) chld_watched_ = true;
        ++active;
        return signal_handle::from_id(id);
    }

    error_code remove(signal_handle h) {
        uint16_t slot = sig_pool_.lookup(h.id());
        if (slot == sig_pool_.none) return errc::stale_handle;
        give_back(sigs_[slot]);
        running_.release(sig_pool_, sigs_[slot].cb, slot);
        return error_code();
    }

    template <class F>
    child_handle add_child(pid_t pid, F&& cb) {
        if (pid <= 0 || is_null_callable(cb)) return child_handle(errc::bad_argument);
        if (kid_pool_.full()) return child_handle(errc::table_full);
        for (size_t i = 0; i < kid_pool::slots; ++i)
            if (kids_[i].pid == pid) return child_handle(errc::already_watched);
        if (loop_->wake_fd() < 0) return child_handle(no_wake_fd());
        if (error_code e = take_sigchld()) return child_handle(e);
        // SIGCHLD is caught from here on; a child that ended earlier is
        // already a zombie and sends nothing more: look once now. WNOWAIT
        // leaves it unreaped, so unwatching before the report still leaves
        // the child to its owner.
        siginfo_t info;
        memset(&info, 0, sizeof info);
        int r;
        do r = waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT);
        while (r < 0 && errno == EINTR);
        if (r < 0) { // not our child (ECHILD: errc::bad_argument), or already reaped by someone else
            int e = errno;
            drop_sigchld();
            return child_handle(error_code(e == ECHILD ? errc::bad_argument : errc::system, e));
        }
        uint64_t id = kid_pool_.acquire();
        if (id == 0) {
            drop_sigchld();
            return child_handle(errc::table_full);
        }
        kid_slot& k = kids_[slot_of(id)];
        k.cb.emplace(std::forward<F>(cb));
        k.pid = pid;
        reap_ = &signal_table::reap_children;
        if (info.si_pid == pid) { // reported from the loop, never from inside on_child()
            kids_due_ = true;
            loop_->wake();
        }
        ++active;
        return child_handle::from_id(id);
    }

    // Stop watching a child; it is left unreaped.
    error_code remove_child(child_handle h) {
        uint16_t slot = kid_pool_.lookup(h.id());
        if (slot == kid_pool_.none) return errc::stale_handle;
        forget_child(slot);
        return error_code();
    }

    table_stats signal_stats() const { return sig_pool_.stats(); }
    table_stats child_stats() const { return kid_pool_.stats(); }

    // The loop's after_fork(), in the child: signals now wake the child's own
    // wake-up fd, with the parent's pending counts dropped. The child watchers name
    // the parent's children, which this process can neither wait for nor
    // reap: they are dropped, without a call. (Called directly rather than as
    // the hook's on_fork, so that only programs calling after_fork() link it.)
    void after_fork() {
        int fd = loop_->wake_fd();
        for (size_t i = 0; i < sig_pool::slots; ++i)
            if (sigs_[i].signo && sigs_[i].signo != SIGCHLD) retarget_signal(sigs_[i].signo, fd);
        for (uint16_t i = 0; i < kid_pool::slots; ++i)
            if (kids_[i].pid) forget_child(i);
        if (chld_users_ > 0) retarget_signal(SIGCHLD, fd);
        chld_count_ = 0;
        kids_due_ = false;
    }

private:
    struct sig_slot {
        signal_callback cb;
        int signo; // 0: free
        claimed_signal saved; // what to restore (not used for SIGCHLD)
    };
    struct kid_slot {
        child_callback cb;
        pid_t pid; // 0: free
    };

    // The call invoke() makes, out of line: the event is copied once, not
    // once for each of invoke()'s two paths (with and without stall timing).
    struct deliver {
        signal_callback* cb;
        signal_event* ev;
        MICROLOOP_DETAIL_NOINLINE void operator()() { (*cb)(*ev); }
    };

    // The loop has no wake-up fd: the error says why it could not be made.
    error_code no_wake_fd() { return loop_->wake(); }

    // SIGCHLD serves both a SIGCHLD watcher and every child watcher: it is
    // claimed for the first of them and given back after the last.
    error_code take_sigchld() {
        if (chld_users_ == 0) {
            if (error_code e = claim_signal(SIGCHLD, this, loop_->wake_fd(), &chld_saved_)) return e;
            chld_count_ = 0;
        }
        ++chld_users_;
        return error_code();
    }
    void drop_sigchld() {
        if (--chld_users_ == 0) release_signal(SIGCHLD, chld_saved_);
    }

    void give_back(sig_slot& s) {
        if (s.signo == SIGCHLD) {
            chld_watched_ = false;
            drop_sigchld();
        } else {
            release_signal(s.signo, s.saved);
        }
        s.signo = 0;
        --active;
    }

    void forget_child(uint16_t slot) {
        kids_[slot].pid = 0;
        kids_[slot].cb.reset(); // a running child callback's slot is already retired
        kid_pool_.release(slot);
        --active;
        drop_sigchld();
    }

    static void dispatch(loop_hook* hook) {
        signal_table* self = static_cast<signal_table*>(hook);
        if (self->chld_users_ > 0) self->chld_count_ += globals::state[SIGCHLD].pending.exchange(0);
        if (self->reap_ && (self->kids_due_ || self->chld_count_ > 0)) self->reap_(self);
        self->dispatch_signals();
    }

    // Each watched child is checked on its own; a SIGCHLD only says that
    // some child changed state, and several exits may share one SIGCHLD.
    // Reached through reap_, which only on_child() sets: a program that never
    // watches a child links neither this nor waitpid().
    static void reap_children(signal_table* self) { self->reap(); }
    void reap() {
        kids_due_ = false;
        for (size_t i = 0; i < kid_pool::slots; ++i) {
            kid_slot& k = kids_[i];
            if (k.pid == 0) continue;
            int status = 0;
            pid_t r;
            do r = waitpid(k.pid, &status, WNOHANG);
            while (r < 0 && errno == EINTR);
            if (r == 0) continue; // still running
            // The watcher is gone before its callback runs: its handle is
            // stale inside the callback, and its slot is reused only after
            // (the spare slot lets the callback watch another child).
            uint16_t slot = static_cast<uint16_t>(i);
            child_event ev = {child_handle::from_id(kid_pool_.id_of(slot)), k.pid, r == k.pid ? status : -1};
            kid_pool_.retire(slot);
            k.pid = 0;
            --active;
            drop_sigchld();
            auto done = on_scope_exit([this, &k, slot] {
                k.cb.reset();
                kid_pool_.recycle(slot);
            });
            loop_->invoke(k.cb, source_kind::child, ev.handle.id(), narrow<int>(ev.pid), ev);
        }
    }

    void dispatch_signals() {
        for (size_t i = 0; i < sig_pool::slots; ++i) {
            sig_slot& s = sigs_[i];
            if (s.signo == 0) continue;
            signal_state& g = globals::state[s.signo];
            unsigned n;
            if (s.signo == SIGCHLD) {
                n = chld_count_;
                chld_count_ = 0;
            } else {
                n = g.pending.exchange(0);
            }
            if (n == 0) continue;
            uint16_t slot = static_cast<uint16_t>(i);
            signal_event ev;
            ev.handle = signal_handle::from_id(sig_pool_.id_of(slot));
            ev.signo = s.signo;
            ev.count = n;
            read_sender(g, ev);
            running_frame f;
            running_.begin(f, slot);
            auto done = on_scope_exit([this, &f, &s] { running_.end(f, sig_pool_, s.cb); });
            deliver call = {&s.cb, &ev};
            loop_->invoke(call, source_kind::signal, ev.handle.id(), ev.signo);
        }
        chld_count_ = 0; // nobody else wants the SIGCHLD count
    }

    loop_base* loop_;
    void (*reap_)(signal_table*); // reap_children once a child was watched, else null
    sig_pool sig_pool_;
    sig_slot sigs_[sig_pool::slots];
    kid_pool kid_pool_;
    kid_slot kids_[kid_pool::slots];
    claimed_signal chld_saved_;
    unsigned chld_users_;
    unsigned chld_count_; // SIGCHLD arrivals taken, for a SIGCHLD watcher
    bool chld_watched_;   // a signal watcher for SIGCHLD exists (at most one)
    bool kids_due_;       // a child was found already ended when watched
    running_slot running_; // the signal slots whose callbacks run now
};

} // namespace detail

// Makes writes to a closed pipe or socket fail with EPIPE instead of killing
// the process: SIGPIPE's disposition becomes SIG_IGN, for the whole process
// and for programs it execs later (reset it in a child before exec if they
// expect the default). microloop never does this by itself: the disposition
// belongs to the application. For sockets alone, send(..., MSG_NOSIGNAL)
// needs no global change. errc::already_watched if a loop watches SIGPIPE.
inline error_code ignore_sigpipe() {
    if (detail::globals::state[SIGPIPE].owner.load()) return errc::already_watched;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_IGN;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGPIPE, &sa, nullptr) != 0) return error_code(errc::system, errno);
    return error_code();
}

} // namespace microloop

#endif // MICROLOOP_SIGNAL_HPP
// ---- end microloop/signal.hpp ------------------------------------------

// ---- begin microloop/slack.hpp -----------------------------------------
// microloop/slack.hpp - the timer slack a loop was asked for, applied in the
// thread that runs it (internal: the public call is basic_loop::set_timer_slack).
#ifndef MICROLOOP_SLACK_HPP
#define MICROLOOP_SLACK_HPP

#include <errno.h>
#include <stdint.h>
#include <sys/prctl.h>

namespace microloop {
namespace detail {

// Linux lets a sleep in select() end up to the thread's "timer slack" late
// (50 us by default), so that wake-ups can be merged. The slack belongs to
// the thread (prctl PR_SET_TIMERSLACK), not to the process, so the loop
// remembers what it was asked for and applies it in the thread that runs it:
// at once when asked from a callback, otherwise when run(), run_once() or
// poll() next starts. Nothing is changed unless asked.
//
// Which thread is which is not told by pthread_self(): a joined thread's
// pthread_t is reused by the next one, so a loop moved to a new thread could
// not tell. Each start asks the thread itself instead (PR_GET_TIMERSLACK,
// one system call, made only once a slack was asked for).
class timer_slack {
public:
    // 0 (the thread's default) up to a second: PR_GET_TIMERSLACK returns an
    // int, and more than a second defeats the timers it is meant to serve.
    static bool valid(int64_t ns) { return ns >= 0 && ns <= 1000000000; }

    timer_slack() : apply_(nullptr), want_ns_(-1), seen_ns_(-1) {}

    // Records `ns` (valid(); 0 is the thread's default slack) and, from the
    // loop's thread, applies it now. From elsewhere it checks only that prctl
    // answers, so that a system without it fails here rather than in run().
    error_code request(int64_t ns, bool in_loop_thread) {
        want_ns_ = static_cast<int32_t>(ns);
        apply_ = &timer_slack::apply_requested;
        if (in_loop_thread) return apply_here();
        if (prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0) == -1) {
            drop();
            return error_code(errc::system, errno);
        }
        seen_ns_ = -1; // applied at the next start, whatever the thread has
        return error_code();
    }

    // At the start of run(), run_once() and poll(): nothing if no slack was
    // asked for, or if this thread has it already. A failure drops the
    // request (the next run goes on with the thread's slack as it is).
    // The work is reached through a pointer that only request() sets, so a
    // program that never asks for a slack links neither it nor prctl().
    error_code apply() {
        if (want_ns_ < 0) return error_code();
        return apply_requested_cold();
    }

private:
    // Out of line and cold: the check above is all that run(), run_once()
    // and poll() carry inline.
    MICROLOOP_DETAIL_COLD error_code apply_requested_cold() {
        return apply_(this);
    }
    static error_code apply_requested(timer_slack* self) {
        int now = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0);
        if (self->seen_ns_ >= 0 && now == self->seen_ns_) return error_code();
        return self->apply_here();
    }
    error_code apply_here() {
        if (prctl(PR_SET_TIMERSLACK, static_cast<unsigned long>(want_ns_), 0, 0, 0) != 0) {
            int e = errno;
            drop();
            return error_code(errc::system, e);
        }
        // What the thread reports from now on: the value asked for, or for
        // 0 the thread's default.
        seen_ns_ = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0);
        return error_code();
    }

    void drop() { want_ns_ = -1; } // leave the thread's slack alone

    error_code (*apply_)(timer_slack*); // apply_requested, set by the first request()
    // Both fit an int: valid() stops at a second, and PR_GET_TIMERSLACK
    // returns an int.
    int32_t want_ns_; // asked for, or -1: leave the thread's slack alone
    int32_t seen_ns_; // what PR_GET_TIMERSLACK said after applying it, or -1
};

} // namespace detail
} // namespace microloop

#endif // MICROLOOP_SLACK_HPP
// ---- end microloop/slack.hpp -------------------------------------------

// ---- begin microloop/timers.hpp ----------------------------------------
// microloop/timers.hpp - a loop's timers: the fixed table of timer slots
// (callback, period), the heap that orders their deadlines
// (timer_heap.hpp), and what arming, re-arming, cancelling and firing do to
// both. The loop (loop.hpp) validates the arguments, owns the clock and says
// when "now" is; this table does the rest.
#ifndef MICROLOOP_TIMERS_HPP
#define MICROLOOP_TIMERS_HPP

#include <stddef.h>
#include <stdint.h>

#include <utility>

// ---- begin microloop/timer_heap.hpp ------------------------------------
// microloop/timer_heap.hpp - the order in which a loop's timers fire: a
// 4-ary min-heap on (deadline, arming order), one entry at most per timer
// slot, with lazy re-arms and cancels. The loop keeps the timers themselves
// (callbacks, periods, handles); this keeps only when each fires.
#ifndef MICROLOOP_TIMER_HEAP_HPP
#define MICROLOOP_TIMER_HEAP_HPP

#include <stddef.h>
#include <stdint.h>

namespace microloop {
namespace detail {

// Slots: the timer table's slot count. Every timer slot has a key (its
// timer's deadline and arming order as last armed) and at most one heap
// entry. The entry's key may be behind: a re-arm to a later deadline writes
// only the slot's key, and a cancel only frees the slot in the loop's pool,
// leaving its entry as a tombstone (the entry of a slot with no live timer).
// The heap stays ordered by its entries' keys, each at or before its timer's
// real one, so a top whose key is current is the real first; a stale top is
// re-keyed and sifted down, a tombstone dropped, when it is looked at
// (settle()). A tombstone never fires and is reused by the next timer of its
// slot.
template <size_t Slots>
class timer_heap {
public:
    // 16 bytes: four siblings fill one 64-byte cache line. The key
    // (deadline, seq) orders the heap.
    struct entry {
        int64_t deadline;
        uint32_t seq; // arming order: equal deadlines fire first-armed first
        uint16_t slot;
    };

    timer_heap() : size_(0), seq_(0), seq_mark_(0) {
        for (size_t i = 0; i < Slots; ++i) keys_[i].pos = no_pos; // (seq is read only through pos)
        // Entry 1 (the first of the root's children) on a 64-byte boundary,
        // when the storage's alignment allows it.
        const uintptr_t first = reinterpret_cast<uintptr_t>(&store_[1]);
        const uintptr_t skip = (64u - first % 64u) % 64u / sizeof(entry);
        heap_ = store_ + (skip <= 3u ? skip : 0u);
    }
    timer_heap(const timer_heap&) = delete; // heap_ points into the object
    timer_heap& operator=(const timer_heap&) = delete;

    // Arms `slot`'s timer at `deadline`, as a new arming (after every timer
    // armed before it at the same deadline).
    void arm(uint16_t slot, int64_t deadline);
    // A repeating timer fired: its next deadline, as a new arming. Its entry
    // stays where it is, stale, until settle() re-keys it (or a re-arm from
    // its callback reuses it).
    void advance(uint16_t slot, int64_t deadline) {
        const uint32_t seq = next_seq(); // first: renumbering moves entries
        keys_[slot].deadline = deadline;
        keys_[slot].seq = seq;
    }
    // Brings the top up to date; `timers.live(slot)` says which slots hold
    // a timer (the loop's slot pool).
    template <class Pool>
    void settle(const Pool& timers);

    bool empty() const { return size_ == 0; }
    // The first entry: after settle(), the first timer to fire.
    const entry& top() const { return heap_[0]; }
    // The deadline `slot`'s timer was last armed at.
    int64_t deadline(uint16_t slot) const { return keys_[slot].deadline; }

    // The timer pass: timers armed from now on (by the pass's callbacks)
    // wait for the next pass.
    void begin_pass() { seq_mark_ = seq_; }
    // The settled top is due at `now` and was armed before the pass began.
    bool top_due(int64_t now) const { return size_ > 0 && heap_[0].deadline <= now && heap_[0].seq < seq_mark_; }

private:
    friend struct test_access;
    static const uint16_t no_pos = 0xffff;
    // One entry at most per slot: the armed timers and the tombstones of
    // cancelled ones.
    static const size_t cap = Slots;
    // A slot's timer as it was last armed, and where its heap entry is. 16 bytes.
    struct key {
        int64_t deadline;
        uint32_t seq; // the last arming's
        uint16_t pos; // the heap entry, or no_pos
    };

    void place(uint32_t pos, const entry& e) {
        heap_[pos] = e;
        keys_[e.slot].pos = static_cast<uint16_t>(pos);
    }
    static bool less(const entry& a, const entry& b) {
        return a.deadline < b.deadline || (a.deadline == b.deadline && a.seq < b.seq);
    }
    uint32_t next_seq() {
        if (seq_ == UINT32_MAX) renumber_seqs();
        return seq_++;
    }
    void renumber_seqs();
    void sift(uint32_t at, entry e);

    key keys_[Slots];
    // The 4-ary heap, libev's layout: the children of entry i are 4i+1..4i+4,
    // and heap_ starts up to three entries into store_ so that each group
    // of four siblings shares one cache line: a sift reads one line per level.
    entry store_[cap + 3];
    entry* heap_; // set once by the constructor; the heap never moves
    uint16_t size_;
    // Arming order. Timers armed while the timer pass runs have a seq at or
    // above seq_mark_ and wait for the next pass. Before seq_ could wrap,
    // the armed timers are renumbered 0..n-1 in order, so no comparison
    // ever meets a wrapped counter (renumber_seqs()).
    uint32_t seq_;
    uint32_t seq_mark_;
};

template <size_t Slots> const uint16_t timer_heap<Slots>::no_pos;
template <size_t Slots> const size_t timer_heap<Slots>::cap;

// Arms `slot`'s timer at `deadline` with a fresh seq, as a new arming. An
// entry already in the heap (the timer's own, or the tombstone of the slot's
// last timer) is kept: moved up if the new key is earlier, else left as it
// is, stale, for settle(). O(1) for a re-arm to a later deadline.
template <size_t Slots>
MICROLOOP_DETAIL_HOT_INLINE void timer_heap<Slots>::arm(uint16_t slot, int64_t deadline) {
    const uint32_t seq = next_seq(); // first: renumbering moves entries
    key& k = keys_[slot];
    k.deadline = deadline;
    k.seq = seq;
    uint32_t at = k.pos;
    if (at == no_pos) {
        if (size_ >= cap) return; // never true: one entry per slot
        at = size_++;
    } else if (deadline >= heap_[at].deadline) {
        return; // its key is earlier than the new one: the heap stays ordered
    }
    entry e = {deadline, seq, slot};
    sift(at, e);
}

// Moves `e` from `at` up or down to where it belongs and stores it:
// O(log n). The heap is 4-ary (as libev's): half the depth of a binary heap,
// so an entry moves through half as many levels, and siblings sit next to
// each other in memory.
template <size_t Slots>
void timer_heap<Slots>::sift(uint32_t at, entry e) {
    const uint32_t pos = at;
    while (at > 0) {
        uint32_t parent = (at - 1u) / 4u;
        if (!less(e, heap_[parent])) break;
        place(at, heap_[parent]);
        at = parent;
    }
    // Moved up: smaller than what it passed, so than their children.
    // size_ never exceeds the capacity; the clamp tells the optimiser so
    // (gcc -O2 warns of out-of-bounds reads with capacities below 3).
    const uint32_t size = at != pos ? 0u : size_ < cap ? size_ : static_cast<uint32_t>(cap);
    for (;;) {
        uint32_t first = 4u * at + 1u;
        if (first >= size) break;
        uint32_t best = first;
        if (size - first >= 4u) { // all four siblings: two pairs, then their winners
            const uint32_t a = less(heap_[first + 1u], heap_[first]) ? first + 1u : first;
            const uint32_t b = less(heap_[first + 3u], heap_[first + 2u]) ? first + 3u : first + 2u;
            best = less(heap_[b], heap_[a]) ? b : a;
        } else {
            for (uint32_t c = first + 1u; c < size; ++c)
                if (less(heap_[c], heap_[best])) best = c;
        }
        if (!less(heap_[best], e)) break;
        place(at, heap_[best]);
        at = best;
    }
    place(at, e);
}

// Brings the top up to date: while its key is behind its timer's, it is
// re-keyed and sifted down, or dropped if its slot holds no live timer (a
// tombstone, or a one-shot that fired).
template <size_t Slots>
template <class Pool>
void timer_heap<Slots>::settle(const Pool& timers) {
    while (size_ > 0) {
        const uint16_t slot = heap_[0].slot;
        key& k = keys_[slot];
        const bool live = timers.live(slot);
        if (live && heap_[0].seq == k.seq) return;
        entry e = {k.deadline, k.seq, slot};
        if (!live) { // the last entry takes its place
            k.pos = no_pos;
            if (--size_ == 0) return;
            e = heap_[size_];
        }
        sift(0, e);
    }
}

// seq_ is about to wrap (after 2^32 armings): give the armed timers the
// numbers 0..n-1 in their arming order, move the mark with them, and rebuild
// the heap. O(n log n), once per 4 billion armings. Deadlines and the order
// of equal deadlines are unchanged; no comparison ever sees a wrapped value.
// Every entry gets its slot's key first (a tombstone's, later or not, is as
// good as its own: the heap is rebuilt).
template <size_t Slots>
void timer_heap<Slots>::renumber_seqs() {
    const uint32_t n = size_ < cap ? size_ : static_cast<uint32_t>(cap);
    for (uint32_t i = 0; i < n; ++i) {
        const key& k = keys_[heap_[i].slot];
        heap_[i].deadline = k.deadline;
        heap_[i].seq = k.seq;
    }
    // Heapsort on seq alone, in place (no allocation): a max-heap, then
    // repeatedly the largest to the end.
    struct by_seq {
        static void sift_down(entry* a, uint32_t at, uint32_t size) {
            entry e = a[at];
            for (;;) {
                uint32_t c = 2u * at + 1u;
                if (c >= size) break;
                if (c + 1u < size && a[c + 1u].seq > a[c].seq) ++c;
                if (a[c].seq <= e.seq) break;
                a[at] = a[c];
                at = c;
            }
            a[at] = e;
        }
    };
    for (uint32_t i = n / 2u; i-- > 0;) by_seq::sift_down(heap_, i, n);
    for (uint32_t end = n; end > 1u; --end) {
        entry top = heap_[0];
        heap_[0] = heap_[end - 1u];
        heap_[end - 1u] = top;
        by_seq::sift_down(heap_, 0, end - 1u);
    }
    // Sorted by seq is not yet a heap by deadline: renumber and insert the
    // entries again, one by one (sift also records every position).
    uint32_t mark = 0;
    for (uint32_t i = 0; i < n; ++i) {
        entry e = heap_[i];
        if (e.seq < seq_mark_) mark = i + 1u;
        e.seq = keys_[e.slot].seq = i;
        size_ = static_cast<uint16_t>(i + 1u);
        sift(i, e);
    }
    seq_mark_ = mark;
    seq_ = n;
}

} // namespace detail
} // namespace microloop

#endif // MICROLOOP_TIMER_HEAP_HPP
// ---- end microloop/timer_heap.hpp --------------------------------------

namespace microloop {

struct timer_event {
    timer_handle handle;
    uint32_t overruns; // repeating timers: whole periods skipped after a stall
};

typedef detail::inplace_callback<void(timer_event)> timer_callback;

namespace detail {

// N timers, and one spare slot: a callback that removes its own timer can
// add a new one at once (see slot_pool). Deadlines are nanoseconds on the
// loop's clock; `when` arguments are callables giving one, called only for
// a timer that is made or re-armed (a refused call reads no clock).
template <size_t N>
class timer_table {
public:
    typedef slot_pool<N, 1> pool_type;
    static const size_t slots = pool_type::slots;

    template <class When, class F>
    MICROLOOP_DETAIL_ALWAYS_INLINE timer_handle start(When when, int64_t period, F&& cb) {
        const uint64_t id = pool_.acquire();
        if (id == 0) return timer_handle(errc::table_full);
        const uint16_t slot = slot_of(id);
        entry& t = timers_[slot];
        t.cb.emplace(std::forward<F>(cb));
        t.period = period; // 0: one-shot
        heap_.arm(slot, when());
        return timer_handle::from_id(id);
    }
    // A new deadline (a repeating timer keeps its period); `valid`: the
    // caller's argument was, checked after the handle (a stale one is named
    // first).
    template <class When>
    MICROLOOP_DETAIL_ALWAYS_INLINE error_code rearm(uint64_t id, bool valid, When when) {
        const uint16_t slot = pool_.lookup(id);
        if (slot == pool_.none) return rearm_fired(id, valid, when);
        if (!valid) return errc::bad_timeout;
        heap_.arm(slot, when());
        return error_code();
    }
    error_code cancel(uint64_t id) {
        uint16_t slot = pool_.lookup(id);
        if (slot == pool_.none) return fired_running(id, slot) ? error_code() : error_code(errc::stale_handle);
        release(slot); // its entry, a tombstone now, waits for the top or the slot's next timer
        return error_code();
    }
    // The deadline of a live timer, or false.
    bool deadline(uint64_t id, int64_t& at) const {
        const uint16_t slot = pool_.lookup(id);
        if (slot == pool_.none) return false;
        at = heap_.deadline(slot);
        return true;
    }

    size_t used() const { return pool_.used(); } // live timers are armed
    table_stats stats() const { return pool_.stats(); }
    // f(timer_handle, deadline ns, period ns) for every armed timer.
    template <class F>
    void for_each(F&& f) const {
        for (uint16_t s = 0; s < slots; ++s)
            if (pool_.live(s)) f(timer_handle::from_id(pool_.id_of(s)), heap_.deadline(s), timers_[s].period);
    }

    // The timer pass: timers armed from now on wait for the next pass.
    void begin_pass() { heap_.begin_pass(); }
    // The first deadline, or false if no timer is armed; the top is brought
    // up to date first, so the wait never ends early.
    bool first(int64_t& at) {
        heap_.settle(pool_);
        if (heap_.empty()) return false;
        at = heap_.top().deadline;
        return true;
    }
    bool empty() const { return heap_.empty(); }

    // Fires the timers due at `now` that were armed before the pass began,
    // in deadline order, then arming order, through loop.invoke() (stall
    // reports name them). A repeating timer's next deadline advances by
    // whole periods: periods that passed during a stall are skipped and
    // counted in overruns, not fired in a burst.
    void fire_due(int64_t now, loop_base& loop) {
        for (;;) {
            heap_.settle(pool_);
            if (!heap_.top_due(now)) break;
            const typename timer_heap<slots>::entry top = heap_.top();
            entry& t = timers_[top.slot];
            uint32_t overruns = 0;
            if (t.period > 0) {
                const int64_t missed = (now - top.deadline) / t.period;
                overruns = missed > 0xffffffffll ? 0xffffffffu : static_cast<uint32_t>(missed);
                heap_.advance(top.slot, top.deadline + (missed + 1) * t.period);
            }
            // Its entry, stale now (a one-shot's: dropped, its slot freed
            // below), stays at the top until the next settle(): a callback
            // that re-arms the timer reuses it.
            running_frame f;
            running_.begin(f, top.slot);
            // A one-shot is gone as it fires: its place is free for a timer
            // its callback arms, and its slot is recycled after the callback
            // (also if it throws), unless the callback re-armed it.
            auto done = on_scope_exit([this, &f, &t] { running_.end(f, pool_, t.cb); });
            if (t.period == 0) release(top.slot);
            timer_event ev = {timer_handle::from_id(pool_.id_of(top.slot)), overruns};
            loop.invoke(t.cb, source_kind::timer, ev.handle.id(), -1, ev);
        }
    }

private:
    friend struct test_access;
    struct entry {
        timer_callback cb;
        int64_t period; // 0: one-shot
    };

    void release(uint16_t slot) { running_.release(pool_, timers_[slot].cb, slot); }
    // A one-shot whose callback is running (in any frame, also around a
    // nested iteration) and that is not armed now: fired, or cancelled
    // since. Its handle still acts: rearm() brings it back, cancel() is ok
    // (it is not armed, and stays so). Not a repeating timer its callback
    // cancelled.
    bool fired_running(uint64_t id, uint16_t& slot) const {
        slot = pool_.lookup_retired(id);
        return slot != pool_.none && running_.released(slot) && timers_[slot].period == 0;
    }
    // rearm() of such a one-shot: it takes its place back (errc::table_full
    // if its callback gave the place away); any other handle is stale.
    template <class When>
    error_code rearm_fired(uint64_t id, bool valid, When when) {
        uint16_t slot;
        if (!fired_running(id, slot)) return errc::stale_handle;
        if (!valid) return errc::bad_timeout;
        if (!pool_.revive(slot)) return errc::table_full;
        running_.keep(slot);
        heap_.arm(slot, when());
        return error_code();
    }

    pool_type pool_;
    entry timers_[slots];
    timer_heap<slots> heap_; // when each fires
    // The callbacks running now (nested in each other by poll() calls from
    // callbacks), so removing one defers freeing its storage.
    running_slot running_;
};

template <size_t N> const size_t timer_table<N>::slots;

} // namespace detail
} // namespace microloop

#endif // MICROLOOP_TIMERS_HPP
// ---- end microloop/timers.hpp ------------------------------------------

namespace microloop {

// Compile-time capacities: how many fd watchers, timers, signal watchers,
// child watchers and iteration hooks (on_prepare, on_check, on_idle) one
// loop can hold. Each slot costs memory (see README). Each is at most 65,533
// (one slot per table is the spare; more is a static_assert).
template <size_t Io = 64, size_t Timers = 64, size_t Signals = 8, size_t Children = 8, size_t Hooks = 4>
struct capacity {
    static const size_t io = Io, timers = Timers, signals = Signals, children = Children, hooks = Hooks;
};

// The loop. Every table lives inside the object, sized by Cap (a capacity<>);
// nothing is allocated after construction. One loop per thread: only wake()
// and stop() may be called from other threads (and wake() from a signal
// handler). Timers run on Clock (monotonic_clock, or manual_clock in tests).
// Fds are waited for by Backend: use_select, or use_epoll (no fd ceiling);
// the default is MICROLOOP_BACKEND's (config.hpp).
template <class Cap, class Clock = monotonic_clock, class Backend = MICROLOOP_DETAIL_BACKEND>
class basic_loop : public loop_base {
public:
    typedef Backend backend_type;
    basic_loop();
    ~basic_loop();

    // ---- fd watchers ----------------------------------------------------
    // Watch fd for `events` (readable | writable | priority); cb(io_event).
    // unwatch() before closing fd (see io_error).
    template <class F>
    io_handle watch(int fd, unsigned events, F&& cb);
    // Change what is watched; 0 pauses the watcher without removing it.
    error_code modify(io_handle h, unsigned events);
    error_code unwatch(io_handle h);
    // The watcher of `fd`, for glue that knows only fds (a hosted library's
    // socket callbacks); an invalid handle if there is none (errc::not_watched,
    // or bad_fd / fd_out_of_range for an fd no watcher can have). One
    // watcher per fd: a second watch() of it is errc::already_watched.
    io_handle watcher(int fd) const;

    // ---- timers -----------------------------------------------------------
    // Fire once after `timeout`.
    template <class Rep, class Period, class F>
    timer_handle after(std::chrono::duration<Rep, Period> timeout, F&& cb) {
        return add_timer(timeout, std::chrono::nanoseconds::zero(), std::forward<F>(cb));
    }
    // Fire every `period`, first after one period. Deadlines advance by the
    // period, never by when the callback ran, so the timer does not drift.
    // A period of zero (or one that rounds to 0 ns) is errc::bad_timeout.
    template <class Rep, class Period, class F>
    timer_handle every(std::chrono::duration<Rep, Period> period, F&& cb) {
        if (period == std::chrono::duration<Rep, Period>::zero()) return timer_handle(errc::bad_timeout);
        return add_timer(period, period, std::forward<F>(cb));
    }
    // The general form: first after `timeout`, then every `repeat` (0: once;
    // a non-zero repeat that rounds to 0 ns is errc::bad_timeout).
    template <class Rep1, class Period1, class Rep2, class Period2, class F>
    timer_handle add_timer(std::chrono::duration<Rep1, Period1> timeout, std::chrono::duration<Rep2, Period2> repeat,
                           F&& cb);
    // Re-schedule to fire `timeout` from now (a repeating timer keeps its
    // period). A one-shot timer is gone when it fires (its place free for a
    // new timer), but inside its own callback (also around a poll() nested
    // in it) its handle acts for every call: rearm() brings it back into its
    // place (errc::table_full if the callback gave the place to another
    // timer), cancel() returns ok and makes sure it does not come back,
    // remaining() is zero unless it was re-armed. Once that callback has
    // returned without re-arming it, the handle is stale for everything.
    template <class Rep, class Period>
    error_code rearm(timer_handle h, std::chrono::duration<Rep, Period> timeout);
    error_code cancel(timer_handle h) { return timers_.cancel(h.id()); }
    // Absolute deadlines, on clock()'s scale (the scale of now() and
    // for_each_timer(); for monotonic_clock, CLOCK_MONOTONIC): fire once at
    // `deadline`, or re-schedule to it. A deadline already past fires at the
    // next timer pass; errc::bad_timeout if negative or beyond 100 years.
    template <class Rep, class Period, class F>
    timer_handle at(std::chrono::duration<Rep, Period> deadline, F&& cb);
    template <class Rep, class Period>
    error_code rearm_at(timer_handle h, std::chrono::duration<Rep, Period> deadline) {
        int64_t ns = 0;
        const bool valid = detail::to_ns(deadline, ns);
        return timers_.rearm(h.id(), valid, [ns] { return ns; });
    }
    // Time left before the timer fires (zero if due).
    std::chrono::nanoseconds remaining(timer_handle h) const;

    // ---- running ----------------------------------------------------------
    // Until stop() or until no active watcher or timer is left. Returns ok,
    // or why the loop cannot go on: errc::system (select() failed; sys() has
    // the errno), errc::forked (see after_fork()). A callback that throws
    // leaves every table consistent; the exception propagates out of run()
    // and the loop can be run again.
    error_code run();
    // One iteration: wait (forever, or at most max_wait), dispatch, return.
    // A stop() ends the wait and is used up, as in run().
    error_code run_once() { return drive(-1, true); }
    template <class Rep, class Period>
    error_code run_once(std::chrono::duration<Rep, Period> max_wait) {
        int64_t ns;
        if (!detail::to_ns(max_wait, ns)) return errc::bad_timeout;
        return drive(ns, true);
    }
    // One iteration that does not wait.
    error_code poll() { return drive(0, true); }
    using loop_base::stop;
    using loop_base::wake;
    // Whether the last run(), run_once() or poll() ended on a stop(), which
    // it used up: for a driver that calls run_once() in a loop of its own.
    bool stopped() const { return stopped_; }

    // ---- iteration hooks ------------------------------------------------------
    // For hosting a library that wants to be driven by the application's loop
    // (GLib's prepare/check, sd-bus, a library's "sync the interest" call).
    // Each iteration runs, in this order: the idle hooks, the prepare hooks,
    // the wait, the fd, signal, child, AIO and mailbox callbacks, the timers,
    // the check hooks. What a prepare hook changes (watchers, timers) counts
    // for that very wait. While an idle hook exists the wait does not block.
    // Idle hooks keep run() going, as a pending source does; prepare and
    // check hooks do not (they add to iterations, they are not work).
    // Hooks run only in the outermost iteration, not in one nested in a
    // callback or a hook; a hook added during an iteration first runs in
    // the next one. Removable from anywhere, their own callback included.
    // cb(hook_event); errc::table_full beyond Cap::hooks.
    template <class F>
    hook_handle on_prepare(F&& cb) { return add_hook(detail::hook_prepare, std::forward<F>(cb)); }
    template <class F>
    hook_handle on_check(F&& cb) { return add_hook(detail::hook_check, std::forward<F>(cb)); }
    template <class F>
    hook_handle on_idle(F&& cb) { return add_hook(detail::hook_idle, std::forward<F>(cb)); }
    error_code unwatch(hook_handle h) { return hooks_table_.remove(h); }

    // ---- signals and child processes (signal.hpp) ---------------------------
    // cb(signal_event) runs in the loop, never in signal context. One watcher
    // per signal in the whole process; unwatching restores the old disposition.
    template <class F>
    signal_handle on_signal(int signo, F&& cb) { return signals_.add(signo, std::forward<F>(cb)); }
    error_code unwatch(signal_handle h) { return signals_.remove(h); }
    // cb(child_event) once, when child `pid` has terminated and been reaped.
    template <class F>
    child_handle on_child(pid_t pid, F&& cb) { return signals_.add_child(pid, std::forward<F>(cb)); }
    error_code unwatch(child_handle h) { return signals_.remove_child(h); }

    // ---- fork ---------------------------------------------------------------
    // A forked child that wants to keep using this loop calls after_fork()
    // first: the loop gets its own wake-up fd and signal routing, and drops
    // what it inherited pending from the parent (signal counts, mailbox
    // posts, AIO operations in flight, child watchers: those belong to the
    // parent). Watchers, timers and signal watchers carry on. Until then the
    // child cannot disturb the parent: its signal handler and its loop leave
    // the shared wake-up fd alone, and its run() returns errc::forked the first
    // time it would have read from it. errc::bad_argument in the process
    // that made the loop; errc::system if no wake-up fd could be made.
    error_code after_fork();

    // ---- time -----------------------------------------------------------------
    // Inside callbacks: the loop time, taken after each wait, so every
    // callback of one iteration sees the same "now" and timers armed in them
    // are relative to it. Outside callbacks (start-up, between run() calls)
    // the clock is read afresh, so after(1s) means one second from now.
    std::chrono::nanoseconds now() { return std::chrono::nanoseconds(arm_time()); }
    void update_now() { refresh_now(); }
    Clock& clock() { return clock_; }
    // How late Linux may wake the loop's select() for a timer: the thread's
    // timer slack (prctl PR_SET_TIMERSLACK, 50 us by default). The loop
    // leaves it alone unless this is called. Takes effect in the loop's
    // thread: at once when called from a callback, otherwise when run(),
    // run_once() or poll() next starts, in the thread running the loop
    // (the start returns errc::system if prctl refuses there, and drops the
    // request; each start costs one prctl call once a slack was asked for).
    // Not for other threads while the loop runs. nanoseconds(1) is as
    // punctual as the kernel allows; 0 restores the thread's default slack
    // (prctl's meaning of 0). errc::bad_timeout: negative, above one second,
    // or non-zero and rounding to 0 ns; errc::system: prctl failed (errno).
    template <class Rep, class Period>
    error_code set_timer_slack(std::chrono::duration<Rep, Period> slack) {
        int64_t ns;
        if (!detail::to_ns(slack, ns) || !detail::timer_slack::valid(ns) ||
            (ns == 0 && slack != std::chrono::duration<Rep, Period>::zero()))
            return errc::bad_timeout;
        return slack_.request(ns, dispatching_);
    }

    // ---- introspection ------------------------------------------------------
    // Watchers with a non-zero interest, armed timers, and what modules
    // (signals, AIO) keep pending.
    size_t active() const { return active_io_ + timers_.used() + hooks_active() + hooks_table_.idle(); }
    struct loop_stats {
        table_stats io, timers, signals, children, hooks;
    };
    // How full each table is and was at most: size capacities from a real run.
    loop_stats stats() const {
        loop_stats s = {io_pool_.stats(), timers_.stats(), signals_.signal_stats(), signals_.child_stats(),
                        hooks_table_.stats()};
        return s;
    }
    // f(io_handle, int fd, unsigned events) for every fd watcher.
    template <class F>
    void for_each_io(F&& f) const {
        for (uint16_t s = 0; s < io_pool_.slots; ++s)
            if (io_pool_.live(s)) f(io_handle::from_id(io_[s].id), io_[s].fd, io_[s].interest);
    }
    // f(timer_handle, std::chrono::nanoseconds deadline, std::chrono::nanoseconds period)
    // for every armed timer, in no particular order; the deadline is on
    // clock()'s scale (compare it with now()), the period 0 for one-shots.
    template <class F>
    void for_each_timer(F&& f) const {
        timers_.for_each([&f](timer_handle h, int64_t deadline, int64_t period) {
            f(h, std::chrono::nanoseconds(deadline), std::chrono::nanoseconds(period));
        });
    }

private:
    friend struct detail::test_access;
    // One spare slot per table: a callback that removes its own source can
    // add a new one at once (see slot_pool).
    typedef detail::slot_pool<Cap::io, 1> io_pool;
    typedef typename Backend::template of<io_pool::slots>::type backend;
    template <size_t>
    friend class detail::select_backend; // calls the core's io_ready() and friends, inlined
    template <size_t>
    friend class detail::epoll_backend;

    struct io_slot {
        io_callback cb;
        int fd;
        unsigned interest;
        uint64_t added_iter; // not dispatched in the iteration it was added in
        uint64_t id;         // its handle's id, fixed while the watcher lives
    };

    int64_t now_ns() {
        if (!now_valid_) refresh_now();
        return now_;
    }
    void refresh_now() {
        now_ = clock_.now_ns();
        now_valid_ = true;
    }
    // What timers are armed relative to: the iteration's time inside
    // callbacks, the clock's time outside them.
    int64_t arm_time() {
        if (!dispatching_) refresh_now();
        return now_ns();
    }

    void set_interest(io_slot& io, unsigned events);
    void release_io(uint16_t slot) { running_io_.release(io_pool_, io_[slot].cb, slot); }
    void call_io(uint16_t s, int fd, unsigned events);
    template <class F>
    hook_handle add_hook(detail::hook_kind kind, F&& cb) {
        hook_pass_ = &basic_loop::hook_pass; // the first hook: from now on iterations run them
        return hooks_table_.add(kind, std::forward<F>(cb), iteration_);
    }
    static bool hook_pass(basic_loop& self, bool before_wait);

    error_code iterate(int64_t max_wait_ns);
    // run() (once == false), run_once() and poll(): iterate() has this one
    // call site, so it is inlined and an iteration costs no extra call.
    error_code drive(int64_t max_wait_ns, bool once);
    int64_t select_timeout(int64_t until);
    // What the backend calls back with ready fds (see backend/select.hpp).
    bool stall_on() const { return stall_ns_ != 0; }
    bool io_changed() const { return io_changed_; }
    typedef detail::running_frame reader_frame;
    template <bool Stall>
    int64_t begin_readers(reader_frame& f) {
        io_changed_ = false;
        running_io_.begin(f, io_pool_.none);
        return Stall ? detail::monotonic_ns() : 0;
    }
    void end_readers(reader_frame& f) { end_io(f); }
    template <bool Stall>
    void reader_ready(reader_frame& f, uint16_t s, int fd, int64_t& t0);
    void io_ready(uint16_t s, int fd, unsigned ready);
    bool io_closed(uint16_t s, int fd);
    bool io_lost(uint16_t s, int fd);
    // The frame's slot is a live or retired watcher's (0xffff: none ran).
    void end_io(detail::running_frame& f) { running_io_.end(f, io_pool_, io_[f.slot < io_pool::slots ? f.slot : 0].cb); }

    backend backend_; // the fd -> watcher table and the wait
    size_t active_io_;
    // The iteration whose callbacks run (back to the outer one when a nested
    // iteration ends), and how many began: 64 bits, never wraps.
    uint64_t iteration_, iterations_;

    io_pool io_pool_;
    io_slot io_[io_pool::slots];

    detail::timer_table<Cap::timers> timers_;

    // The callbacks running now (nested in each other by poll() calls from
    // callbacks), so removing one defers freeing its storage.
    detail::running_slot running_io_;

    detail::hook_table<Cap::hooks> hooks_table_;
    bool (*hook_pass_)(basic_loop&, bool); // null until the first hook: see hook_pass()
    bool stopped_; // the last drive() ended on a stop()

    int64_t now_;
    bool now_valid_;
    bool dispatching_; // inside an iteration, after the wait: callbacks use now_
    bool io_changed_;  // a watcher was added, modified or removed since the scan of ready fds began
    Clock clock_;
    detail::timer_slack slack_; // set_timer_slack()

    detail::signal_table<Cap::signals, Cap::children> signals_; // a loop_hook
};

// ============================================================================
// Implementation
// ============================================================================

template <class Cap, class Clock, class Backend>
basic_loop<Cap, Clock, Backend>::basic_loop()
    : backend_(wake_fd_), active_io_(0), iteration_(0), iterations_(0), hook_pass_(nullptr), stopped_(false), now_(0),
      now_valid_(false), dispatching_(false),
      io_changed_(false), signals_(*this) {}

// Callbacks of live slots are destroyed with the slot arrays.
template <class Cap, class Clock, class Backend>
basic_loop<Cap, Clock, Backend>::~basic_loop() {}

// ---- fd watchers ------------------------------------------------------------

template <class Cap, class Clock, class Backend>
template <class F>
io_handle basic_loop<Cap, Clock, Backend>::watch(int fd, unsigned events, F&& cb) {
    if (fd < 0) return io_handle(errc::bad_fd);
    if (!backend::fits(fd)) return io_handle(errc::fd_out_of_range); // before anything touches the backend
    if (events & ~(readable | writable | priority)) return io_handle(errc::bad_argument);
    if (detail::is_null_callable(cb)) return io_handle(errc::bad_argument);
    if (backend_.watched(fd)) return io_handle(errc::already_watched);
    uint64_t id = io_pool_.acquire();
    if (id == 0) return io_handle(errc::table_full);

    uint16_t slot = detail::slot_of(id);
    io_slot& io = io_[slot];
    io.cb.emplace(std::forward<F>(cb));
    io.fd = fd;
    io.interest = 0;
    io.added_iter = iteration_;
    io.id = id;
    backend_.add(fd, slot);
    set_interest(io, events);
    return io_handle::from_id(id);
}

template <class Cap, class Clock, class Backend>
error_code basic_loop<Cap, Clock, Backend>::modify(io_handle h, unsigned events) {
    uint16_t slot = io_pool_.lookup(h.id());
    if (slot == io_pool_.none) return errc::stale_handle;
    if (events & ~(readable | writable | priority)) return errc::bad_argument;
    set_interest(io_[slot], events);
    return error_code();
}

template <class Cap, class Clock, class Backend>
error_code basic_loop<Cap, Clock, Backend>::unwatch(io_handle h) {
    uint16_t slot = io_pool_.lookup(h.id());
    if (slot == io_pool_.none) return errc::stale_handle;
    io_slot& io = io_[slot];
    set_interest(io, 0);
    backend_.remove(io.fd);
    release_io(slot);
    return error_code();
}

template <class Cap, class Clock, class Backend>
io_handle basic_loop<Cap, Clock, Backend>::watcher(int fd) const {
    if (fd < 0) return io_handle(errc::bad_fd);
    if (!backend::fits(fd)) return io_handle(errc::fd_out_of_range);
    const uint16_t s = backend_.slot(fd);
    if (s == io_pool_.none) return io_handle(errc::not_watched);
    return io_handle::from_id(io_[s].id);
}

template <class Cap, class Clock, class Backend>
void basic_loop<Cap, Clock, Backend>::set_interest(io_slot& io, unsigned events) {
    io_changed_ = true; // every watch(), modify() and unwatch() passes here
    if ((io.interest != 0) != (events != 0)) active_io_ += events ? 1 : static_cast<size_t>(-1);
    backend_.set(io.fd, io.interest, events);
    io.interest = events;
}

// Runs watcher s's callback, which may remove the watcher or anything else,
// or throw.
template <class Cap, class Clock, class Backend>
MICROLOOP_DETAIL_ALWAYS_INLINE void basic_loop<Cap, Clock, Backend>::call_io(uint16_t s, int fd, unsigned events) {
    io_slot& io = io_[s];
    detail::running_frame f;
    running_io_.begin(f, s);
    auto done = detail::on_scope_exit([this, &f] { end_io(f); });
    io_event ev = {io_handle::from_id(io.id), fd, events};
    invoke(io.cb, source_kind::io, io.id, fd, ev);
}

// The backend found some watched fd closed behind our back (select()'s
// EBADF): if `fd` is one, report it to its watcher once and disable the
// watcher. True if it was.
template <class Cap, class Clock, class Backend>
bool basic_loop<Cap, Clock, Backend>::io_closed(uint16_t s, int fd) {
    io_slot& io = io_[s];
    if (io.interest == 0) return false;
    if (fcntl(fd, F_GETFD) != -1 || errno != EBADF) return false;
    set_interest(io, 0);
    call_io(s, fd, io_error);
    return true;
}

// The backend lost `fd`'s registration (epoll: closed behind our back):
// report it to its watcher once and disable the watcher, as io_closed()
// does. False if the watcher was added in this iteration: it is reported in
// the next one.
template <class Cap, class Clock, class Backend>
bool basic_loop<Cap, Clock, Backend>::io_lost(uint16_t s, int fd) {
    io_slot& io = io_[s];
    if (io.interest == 0) return true;
    if (io.added_iter == iteration_) return false;
    set_interest(io, 0);
    call_io(s, fd, io_error);
    return true;
}

// ---- timers -----------------------------------------------------------------

template <class Cap, class Clock, class Backend>
template <class Rep1, class Period1, class Rep2, class Period2, class F>
timer_handle basic_loop<Cap, Clock, Backend>::add_timer(std::chrono::duration<Rep1, Period1> timeout,
                                               std::chrono::duration<Rep2, Period2> repeat, F&& cb) {
    int64_t after_ns, period_ns;
    if (!detail::to_ns(timeout, after_ns) || !detail::to_ns(repeat, period_ns)) return timer_handle(errc::bad_timeout);
    // A repeat finer than a nanosecond would silently make a one-shot.
    if (period_ns == 0 && repeat != std::chrono::duration<Rep2, Period2>::zero())
        return timer_handle(errc::bad_timeout);
    if (detail::is_null_callable(cb)) return timer_handle(errc::bad_argument);
    return timers_.start([this, after_ns] { return arm_time() + after_ns; }, period_ns, std::forward<F>(cb));
}

template <class Cap, class Clock, class Backend>
template <class Rep, class Period, class F>
timer_handle basic_loop<Cap, Clock, Backend>::at(std::chrono::duration<Rep, Period> deadline, F&& cb) {
    int64_t at_ns;
    if (!detail::to_ns(deadline, at_ns)) return timer_handle(errc::bad_timeout);
    if (detail::is_null_callable(cb)) return timer_handle(errc::bad_argument);
    return timers_.start([at_ns] { return at_ns; }, 0, std::forward<F>(cb));
}

template <class Cap, class Clock, class Backend>
template <class Rep, class Period>
error_code basic_loop<Cap, Clock, Backend>::rearm(timer_handle h, std::chrono::duration<Rep, Period> timeout) {
    int64_t ns = 0;
    const bool valid = detail::to_ns(timeout, ns);
    return timers_.rearm(h.id(), valid, [this, ns] { return arm_time() + ns; });
}

template <class Cap, class Clock, class Backend>
std::chrono::nanoseconds basic_loop<Cap, Clock, Backend>::remaining(timer_handle h) const {
    int64_t at;
    if (!timers_.deadline(h.id(), at)) return std::chrono::nanoseconds::zero();
    int64_t left = at - clock_.now_ns();
    return std::chrono::nanoseconds(left > 0 ? left : 0);
}

// ---- iteration hooks ----------------------------------------------------------

// Before the wait: the idle and prepare hooks, in the outermost iteration
// only (not in one nested in a callback or a hook); true if the wait must not
// block: an idle hook was there, or the hooks removed the last active source
// (run() then returns instead of waiting for nothing). After the dispatch:
// the check hooks, unless this iteration is nested in a hook. Reached through
// hook_pass_, set by the first on_prepare/on_check/on_idle: a program that
// adds no hook links none of this.
template <class Cap, class Clock, class Backend>
bool basic_loop<Cap, Clock, Backend>::hook_pass(basic_loop& self, bool before_wait) {
    const uint64_t iteration = self.iteration_;
    detail::hook_table<Cap::hooks>& hooks = self.hooks_table_;
    if (hooks.running()) return false;
    if (!before_wait) {
        hooks.run(detail::hook_check, iteration, self);
        return false;
    }
    if (self.dispatching_) return false;
    const bool idle = hooks.idle() != 0;
    // What the hooks watch now counts for this iteration's wait: they run as
    // if before it began (a watcher added in iteration n is dispatched from
    // n + 1 on).
    --self.iteration_;
    auto restore = detail::on_scope_exit([&self, iteration] { self.iteration_ = iteration; });
    hooks.run(detail::hook_idle, iteration, self);
    hooks.run(detail::hook_prepare, iteration, self);
    return idle || hooks.idle() != 0 || self.active() == 0;
}

// ---- the iteration ----------------------------------------------------------

template <class Cap, class Clock, class Backend>
error_code basic_loop<Cap, Clock, Backend>::run() {
    return drive(-1, false);
}

template <class Cap, class Clock, class Backend>
error_code basic_loop<Cap, Clock, Backend>::drive(int64_t max_wait_ns, bool once) {
    error_code result = slack_.apply();
    // run(): until stop() or nothing is left; run_once(), poll(): one iteration.
    while (!result && (once || (!stop_.load(std::memory_order_relaxed) && active() > 0))) {
        result = iterate(max_wait_ns);
        if (once) break;
    }
    stopped_ = use_up_stop(); // and the wake-up stop() wrote for it
    return result;
}

// Nanoseconds select() may sleep: until the first timer or `until`, -1 for
// no limit.
template <class Cap, class Clock, class Backend>
int64_t basic_loop<Cap, Clock, Backend>::select_timeout(int64_t until) {
    // Past deadlines clamp to 0: a difference of exactly -1 must not read as
    // "no limit".
    int64_t wait = until < 0 ? -1 : (until > now_ ? until - now_ : 0);
    int64_t first;
    if (timers_.first(first)) {
        int64_t t = first > now_ ? first - now_ : 0;
        if (wait < 0 || t < wait) wait = t;
    }
    return wait;
}

template <class Cap, class Clock, class Backend>
MICROLOOP_DETAIL_ALWAYS_INLINE error_code basic_loop<Cap, Clock, Backend>::iterate(int64_t max_wait_ns) {
    if (faulted()) return fault();
    // A nested iteration (poll() from a callback) keeps the outer one's
    // records on this stack and puts them back when it ends: its number (what
    // watchers added meanwhile are compared with) and its time.
    // (Saved only when nested: the outermost iteration pays one test.)
    const bool outer = dispatching_;
    struct outer_state {
        uint64_t iteration;
        int64_t now;
        bool now_valid;
    } saved;
    if (outer) saved = outer_state{iteration_, now_, now_valid_};
    auto done = detail::on_scope_exit([this, outer, &saved] {
        dispatching_ = outer;
        if (outer) {
            iteration_ = saved.iteration;
            now_ = saved.now;
            now_valid_ = saved.now_valid;
            io_changed_ = true; // a nested iteration ran callbacks: the outer scan takes the careful path
        }
    });
    iteration_ = ++iterations_;
    // Iteration hooks (none: one test): before the timer pass begins, so
    // that timers a prepare hook arms count for this iteration.
    if (hook_pass_ && hook_pass_(*this, true)) max_wait_ns = 0;
    timers_.begin_pass();
    // The clock is read only when something depends on it: with no timer and
    // no time limit (run() with fds only, or poll()'s zero wait) the loop pays
    // nothing for time, and timers armed in callbacks read it themselves.
    const bool timed = timers_.used() > 0 || max_wait_ns > 0; // live timers are armed
    int64_t until = -1;
    if (timed) {
        refresh_now();
        if (max_wait_ns >= 0) until = now_ + max_wait_ns;
    } else {
        now_valid_ = false;
    }

    typename backend::fd_sets sets;
    typename backend::ready_sets ready;
    int n;
    for (;;) {
        n = backend_.wait(sets, ready, [&]() -> int64_t {
            const int64_t wait = timed ? select_timeout(until) : max_wait_ns; // untimed: -1 (forever) or 0
            return stop_.load(std::memory_order_relaxed) ? 0 : wait;
        });
        if (timed) refresh_now();
        if (n >= 0) break;
        if (errno == EINTR) continue; // retried with what is left of the timeout
        if (errno == EBADF) {
            // Retrying would fail the same way: with nothing to disable,
            // report it instead of spinning.
            if (!backend_.report_closed(*this)) return error_code(errc::system, EBADF);
            n = 0;
            break;
        }
        return error_code(errc::system, errno);
    }

    // From here on callbacks run: timers they arm count from now_.
    dispatching_ = true;
    if (n > 0) {
        // The wake-up fd is drained after the watchers ran.
        if (backend_.dispatch(*this, ready, n)) drain_wake(); // one call site: inlined
        if (faulted()) return fault();
    }
    if (!timers_.empty()) timers_.fire_due(now_, *this);
    // The check hooks, in the outermost iteration (one nested in a callback
    // has outer set; one nested in a hook: hook_pass() sees it).
    if (hook_pass_ && !outer) hook_pass_(*this, false);
    return error_code();
}

// A ready reader on the backend's lean scan (only readers, nothing changed
// since the wait: see backend/select.hpp): called without looking anything
// else up. With stall detection on (Stall), the clock is read once per
// callback, after it: a callback's time runs from the previous reading (the
// end of the previous callback, or the start of the scan), which adds only
// the loop's own few instructions between two callbacks to it.
template <class Cap, class Clock, class Backend>
template <bool Stall>
MICROLOOP_DETAIL_ALWAYS_INLINE void basic_loop<Cap, Clock, Backend>::reader_ready(detail::running_frame& f, uint16_t s, int fd, int64_t& t0) {
    io_slot& io = io_[s];
    f.slot = s;
    io_event ev = {io_handle::from_id(io.id), fd, readable};
    io.cb(ev);
    if (Stall) {
        const int64_t t1 = detail::monotonic_ns();
        t0 = t1 - t0 >= stall_ns_ ? report_stall(source_kind::io, io.id, fd, t1 - t0) : t1;
    }
}

// A ready fd and its watcher, slot s, as the backend looked it up at the
// moment it is dispatched, so a watcher removed by an earlier callback of
// this iteration is never called.
template <class Cap, class Clock, class Backend>
MICROLOOP_DETAIL_ALWAYS_INLINE void basic_loop<Cap, Clock, Backend>::io_ready(uint16_t s, int fd, unsigned ready) {
    io_slot& io = io_[s];
    unsigned events = ready & io.interest;
    if (events == 0 || io.added_iter >= iteration_) return; // added in this iteration or one nested in it
    call_io(s, fd, events);
}

// ---- fork ---------------------------------------------------------------------

template <class Cap, class Clock, class Backend>
error_code basic_loop<Cap, Clock, Backend>::after_fork() {
    if (getpid() == owner_pid_) return errc::bad_argument;
    const int old = wake_fd_;
    error_code e = renew_wake_fd();
    backend_.replace_wake_fd(old, wake_fd_);
    if (e) return e;
    for (loop_hook* h = hooks_; h;) {
        loop_hook* next = h->next; // a hook may detach itself
        if (h->on_fork) h->on_fork(h);
        h = next;
    }
    signals_.after_fork(); // the first hook attached: the last one called
    return error_code();
}

template <size_t Io = 64, size_t Timers = 64, size_t Signals = 8, size_t Children = 8, size_t Hooks = 4>
using loop = basic_loop<capacity<Io, Timers, Signals, Children, Hooks> >;

// A loop on epoll whatever MICROLOOP_BACKEND says: the same API, no fd
// ceiling (see README, Choosing a backend).
template <size_t Io = 64, size_t Timers = 64, size_t Signals = 8, size_t Children = 8, size_t Hooks = 4>
using epoll_loop = basic_loop<capacity<Io, Timers, Signals, Children, Hooks>, monotonic_clock, use_epoll>;

} // namespace microloop

#endif // MICROLOOP_LOOP_HPP
// ---- end microloop/loop.hpp --------------------------------------------

// ---- begin microloop/continuation.hpp ----------------------------------
// microloop/continuation.hpp - a fixed table of typed state objects, kept
// between starting an asynchronous operation and finishing it.
//
// An event handler that starts a disk read cannot keep the socket and the
// buffer on its stack: the stack is gone when the completion arrives. It
// stores them here instead, gets a 32-bit id small enough to capture in any
// callback, and looks the state up (or takes it out) when the operation ends.
//
//     struct request { int sock; char buf[64]; };
//     microloop::continuation_table<16, 128> pending;
//     microloop::continuation_id id = pending.emplace<request>();    // in place
//     // or, to fill it in at once: the id and the object together
//     microloop::made<request> req = pending.make<request>();
//     if (req) { req->sock = fd; id = req.id(); }
//     ...
//     microloop::taken<request> req = pending.take<request>(id);     // id is stale now
//     if (req) write(req->sock, req->buf, n);                        // freed at scope end
#ifndef MICROLOOP_CONTINUATION_HPP
#define MICROLOOP_CONTINUATION_HPP

#include <stddef.h>
#include <stdint.h>

#include <new>
#include <type_traits>
#include <utility>

// Default bytes of inline storage per continuation slot. A type that is
// larger is a compile-time error; choose per table with the Size parameter.
#ifndef MICROLOOP_CONTINUATION_SIZE
#define MICROLOOP_CONTINUATION_SIZE (8 * sizeof(void*))
#endif

namespace microloop {

typedef basic_handle<struct continuation_tag> continuation_id;

namespace detail {

// One object per stored type: its address is the type's tag (no RTTI
// needed) and it knows how to destroy the type. Deliberately not const:
// identical read-only objects may be folded into one by a linker's identical
// code folding, which would give two types the same tag; writable data never
// is. Across shared libraries built with hidden visibility a type gets one
// tag per library, so get<T>() there refuses (nullptr) rather than guesses.
struct stored_type {
    void (*destroy)(void*);
};

template <class T>
struct stored_type_of {
    static void destroy(void* p) { static_cast<T*>(p)->~T(); }
    static stored_type tag;
};
template <class T>
stored_type stored_type_of<T>::tag = {std::is_trivially_destructible<T>::value ? nullptr : &stored_type_of<T>::destroy};

// What a taken<T> needs to give its slot back, without knowing the table's
// capacity.
struct slot_recycler {
    void (*recycle)(void* table, uint16_t slot);
    void* table;
};

} // namespace detail

// The state taken out of a continuation table: its id is already stale (so
// the request cannot be finished twice); the object is destroyed and its slot
// reused when the taken<T> goes out of scope. Until then the slot is in use:
// size(), full() and stats() count it, and emplace() cannot have it. Move-only; false if the take
// failed, error() says why. Must not outlive its table.
template <class T>
class taken {
public:
    explicit taken(errc why) : obj_(nullptr), slot_(0), why_(why) { back_.recycle = nullptr; back_.table = nullptr; }
    taken(T* obj, detail::slot_recycler back, uint16_t slot) : obj_(obj), back_(back), slot_(slot), why_(errc::ok) {}
    taken(taken&& other) : obj_(other.obj_), back_(other.back_), slot_(other.slot_), why_(other.why_) {
        other.obj_ = nullptr;
    }
    taken(const taken&) = delete;
    taken& operator=(const taken&) = delete;
    taken& operator=(taken&&) = delete;
    ~taken() { reset(); }

    explicit operator bool() const { return obj_ != nullptr; }
    error_code error() const { return error_code(why_); }
    T* get() const { return obj_; }
    T* operator->() const { return obj_; }
    T& operator*() const { return *obj_; }
    // Destroy the state and free its slot now.
    void reset() {
        if (!obj_) return;
        obj_->~T();
        obj_ = nullptr;
        back_.recycle(back_.table, slot_);
    }

private:
    T* obj_;
    detail::slot_recycler back_;
    uint16_t slot_;
    errc why_;
};

// What make<T>() returns: the new entry's id and the object itself, or
// (false) why there is none. The object stays in the table; this is a view.
template <class T>
class made {
public:
    explicit made(errc why) : obj_(nullptr), id_(why) {}
    made(T* obj, continuation_id id) : obj_(obj), id_(id) {}
    explicit operator bool() const { return obj_ != nullptr; }
    error_code error() const { return id_.error(); }
    continuation_id id() const { return id_; }
    T* get() const { return obj_; }
    T* operator->() const { return obj_; }
    T& operator*() const { return *obj_; }

private:
    T* obj_;
    continuation_id id_;
};

// N slots of Size bytes each, aligned for any pointer, long long or double.
// Each slot also costs one pointer (the type tag) and 4 bytes of slot pool.
// Every operation is O(1); nothing is allocated. Not thread-safe: use it
// from the loop's thread.
template <size_t N, size_t Size = MICROLOOP_CONTINUATION_SIZE>
class continuation_table {
public:
    static const size_t capacity = N;
    static const size_t slot_size = Size;

    continuation_table() {
        for (size_t i = 0; i < N; ++i) type_[i] = nullptr;
    }
    // The objects still stored are destroyed, each retired first as by
    // release(): a destructor that releases another entry (a request that
    // owns its sub-request's id) finds that entry alive or stale, never
    // destroyed but still valid.
    ~continuation_table() {
        for (uint16_t i = 0; i < N; ++i)
            if (type_[i]) release(continuation_id::from_id(pool_.id_of(i)));
    }
    continuation_table(const continuation_table&) = delete;
    continuation_table& operator=(const continuation_table&) = delete;

    // Construct a T in a free slot from args (T(args...): with no args, value
    // initialisation, so a plain struct starts zeroed). An invalid id carries
    // errc::table_full when every slot is taken.
    template <class T, class... Args>
    continuation_id emplace(Args&&... args) {
        return make<T>(std::forward<Args>(args)...).id();
    }
    // The same, handing back the object with its id: no get<T>() needed to
    // fill it in (nor a null check the compiler cannot see through).
    template <class T, class... Args>
    made<T> make(Args&&... args) {
        static_assert(sizeof(T) <= Size,
                      "microloop: state too big for this continuation table; raise its Size parameter");
        static_assert(alignof(T) <= alignof(storage_t),
                      "microloop: over-aligned state; store a pointer to it instead");
        static_assert(!std::is_reference<T>::value && !std::is_array<T>::value, "microloop: store an object type");
        uint64_t id = pool_.acquire();
        if (id == 0) return made<T>(errc::table_full);
        uint16_t slot = detail::slot_of(id);
        // Gives the slot back if T's constructor throws (where exceptions exist).
        struct guard {
            detail::slot_pool<N>* pool;
            uint16_t slot;
            ~guard() {
                if (pool) pool->release(slot);
            }
        } g = {&pool_, slot};
        T* obj = ::new (static_cast<void*>(&slots_[slot])) T(std::forward<Args>(args)...);
        g.pool = nullptr;
        type_[slot] = &detail::stored_type_of<typename std::remove_cv<T>::type>::tag;
        return made<T>(obj, continuation_id::from_id(id));
    }

    // The T stored under id; nullptr if id is stale, released or taken, or
    // names an object of another type (the exact type: no base classes).
    template <class T>
    T* get(continuation_id id) {
        uint16_t slot = find<T>(id);
        return slot == pool_.none ? nullptr : reinterpret_cast<T*>(&slots_[slot]);
    }
    template <class T>
    const T* get(continuation_id id) const {
        uint16_t slot = find<T>(id);
        return slot == pool_.none ? nullptr : reinterpret_cast<const T*>(&slots_[slot]);
    }
    bool contains(continuation_id id) const { return pool_.lookup(id.id()) != pool_.none; }

    // Destroy the object and free the slot. A stale or released id is
    // refused with errc::stale_handle and touches nothing.
    error_code release(continuation_id id) {
        uint16_t slot = pool_.lookup(id.id());
        if (slot == pool_.none) return errc::stale_handle;
        const detail::stored_type* type = type_[slot];
        type_[slot] = nullptr;
        pool_.retire(slot); // stale before the destructor runs: it cannot release twice
        if (type->destroy) type->destroy(&slots_[slot]);
        pool_.recycle(slot);
        return error_code();
    }

    // Take the T out to finish the request: the id is stale at once; the
    // object lives until the returned taken<T> goes out of scope. On failure
    // the taken<T> is false with errc::stale_handle (stale id) or
    // errc::bad_argument (another type is stored under id).
    template <class T>
    taken<T> take(continuation_id id) {
        uint16_t slot = pool_.lookup(id.id());
        if (slot == pool_.none) return taken<T>(errc::stale_handle);
        if (type_[slot] != &detail::stored_type_of<typename std::remove_cv<T>::type>::tag)
            return taken<T>(errc::bad_argument);
        type_[slot] = nullptr;
        pool_.retire(slot);
        detail::slot_recycler back = {&recycle_slot, this};
        return taken<T>(reinterpret_cast<T*>(&slots_[slot]), back, slot);
    }

    // Slots in use: entries held, and taken<T>s still alive (their slots
    // are not free yet). full(): emplace() would fail.
    size_t size() const { return pool_.in_use(); }
    bool full() const { return pool_.full(); }
    // Slots in use now (as size()), N, and the most ever in use at once.
    table_stats stats() const { return pool_.stats(); }
    // f(continuation_id) for every entry held (not those taken out).
    template <class F>
    void for_each(F&& f) const {
        for (uint16_t i = 0; i < N; ++i)
            if (type_[i]) f(continuation_id::from_id(pool_.id_of(i)));
    }

private:
    union storage_t {
        unsigned char bytes[Size];
        void* align_ptr;
        long long align_ll;
        double align_d;
    };

    template <class T>
    uint16_t find(continuation_id id) const {
        uint16_t slot = pool_.lookup(id.id());
        if (slot == pool_.none || type_[slot] != &detail::stored_type_of<typename std::remove_cv<T>::type>::tag)
            return pool_.none;
        return slot;
    }
    static void recycle_slot(void* table, uint16_t slot) {
        static_cast<continuation_table*>(table)->pool_.recycle(slot);
    }

    storage_t slots_[N];
    const detail::stored_type* type_[N];
    detail::slot_pool<N> pool_;
};

template <size_t N, size_t Size> const size_t continuation_table<N, Size>::capacity;
template <size_t N, size_t Size> const size_t continuation_table<N, Size>::slot_size;

} // namespace microloop

#endif // MICROLOOP_CONTINUATION_HPP
// ---- end microloop/continuation.hpp ------------------------------------

// ---- begin microloop/memory.hpp ----------------------------------------
// microloop/memory.hpp - keep the loop's memory resident.
#ifndef MICROLOOP_MEMORY_HPP
#define MICROLOOP_MEMORY_HPP

#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <sys/mman.h>

namespace microloop {

// A page fault blocks the whole loop just as a blocking read does: on a board
// that swaps to flash, or that reclaims clean pages of the binary under
// memory pressure, one fault can cost milliseconds. lock_memory() locks every
// page the process has now and will map later (mlockall MCL_CURRENT |
// MCL_FUTURE), and touches `stack_bytes` of stack so those pages are mapped
// and locked before the loop runs rather than on first use.
//
// Call it once, after creating the loop (whose tables live in the loop object
// and need no later allocation). It needs CAP_IPC_LOCK or a large enough
// RLIMIT_MEMLOCK: otherwise it returns errc::system with EPERM or ENOMEM, and
// nothing changes.
inline error_code lock_memory(size_t stack_bytes = 64 * 1024) {
    if (mlockall(MCL_CURRENT | MCL_FUTURE) != 0) return error_code(errc::system, errno);
    // Only run when locking succeeded; touching is what maps the pages.
    struct toucher {
        static void touch(size_t n) {
            volatile unsigned char page[4096];
            memset(const_cast<unsigned char*>(page), 0, sizeof page);
            if (n > sizeof page) touch(n - sizeof page);
            page[0] = page[0]; // keeps each frame alive, so the recursion is real
        }
    };
    toucher::touch(stack_bytes);
    return error_code();
}

// Undo lock_memory().
inline error_code unlock_memory() {
    if (munlockall() != 0) return error_code(errc::system, errno);
    return error_code();
}

} // namespace microloop

#endif // MICROLOOP_MEMORY_HPP
// ---- end microloop/memory.hpp ------------------------------------------

#endif // MICROLOOP_CORE_HPP
// ---- end microloop/core.hpp --------------------------------------------

// ---- begin microloop/mailbox.hpp ---------------------------------------
// microloop/mailbox.hpp - hand work to a loop from other threads.
#ifndef MICROLOOP_MAILBOX_HPP
#define MICROLOOP_MAILBOX_HPP

#include <sched.h>
#include <stddef.h>
#include <unistd.h>

#include <atomic>

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
// ---- end microloop/mailbox.hpp -----------------------------------------

// ---- begin microloop/worker_pool.hpp -----------------------------------
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

// ---- begin microloop/detail/threads.hpp --------------------------------
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
// ---- end microloop/detail/threads.hpp ----------------------------------

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
// ---- end microloop/worker_pool.hpp -------------------------------------

// ---- begin microloop/loop_group.hpp ------------------------------------
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
// ---- end microloop/loop_group.hpp --------------------------------------

#if defined(MICROLOOP_WITH_AIO)

// ---- begin microloop/aio.hpp -------------------------------------------
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

// ---- begin microloop/aio/common.hpp ------------------------------------
// microloop/aio/common.hpp - internal to the AIO module (include
// <microloop/aio.hpp>): what the front, aio<N, Engine>, and both engines
// share. The public types (aio_handle, aio_event, aio_stats), the page-cache
// fast path, and aio_core<N>: the bookkeeping every engine keeps the same
// way, the table of operations in flight. Each operation holds a slot of
// the table (its handle) and a callback, and sits in the in-flight list, in
// submission order, from its submission until its callback runs; the
// engines keep what they need to run it beside that, indexed alike.
#ifndef MICROLOOP_AIO_COMMON_HPP
#define MICROLOOP_AIO_COMMON_HPP

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/syscall.h> // SYS_preadv2
#include <sys/types.h>
#include <sys/uio.h> // struct iovec, RWF_NOWAIT
#include <unistd.h>

#include <utility>

// 1 (the default): both engines first try each read in the loop's thread,
// with preadv2(RWF_NOWAIT), which copies the data if all of it is in the
// page cache and otherwise returns at once instead of waiting for the disk;
// a read served so is called back at the loop's next iteration without a
// thread (stats().inline_reads counts them). Anything else (not all of it
// cached, a short count, a pipe, an fd opened O_DIRECT) goes to the engine's
// threads or the libc's AIO as before, and so does a read of a file that
// refuses RWF_NOWAIT (procfs); a kernel without preadv2 (ENOSYS) turns it
// off for the module. 0: every operation goes to the threads or the libc.
// Off by itself where the libc's headers lack RWF_NOWAIT or SYS_preadv2
// (Linux 4.14 and glibc 2.27 or musl 1.1.20 have both).
#ifndef MICROLOOP_AIO_NOWAIT
#define MICROLOOP_AIO_NOWAIT 1
#endif
// x32 passes a syscall's 64-bit offset in one register, which syscall()'s
// long arguments cannot hold: no fast path there.
#if MICROLOOP_AIO_NOWAIT && defined(RWF_NOWAIT) && defined(SYS_preadv2) && \
    !(defined(__x86_64__) && defined(__ILP32__))
#define MICROLOOP_DETAIL_AIO_NOWAIT 1
#else
#define MICROLOOP_DETAIL_AIO_NOWAIT 0
#endif

namespace microloop {

typedef basic_handle<struct aio_tag> aio_handle;

// Given to an AIO callback, in the loop's thread, exactly once per
// operation that was submitted.
struct aio_event {
    aio_handle handle;
    ssize_t result;   // bytes read or written (0 at end of file, 0 for fsync); -1 on failure
    error_code error; // ok; errc::canceled (sys() == ECANCELED); errc::system with errno
};

typedef detail::inplace_callback<void(aio_event)> aio_callback;

// An AIO module's stats(): its table (operations in flight now, at most N,
// the most ever at once) and how many reads it served in the loop's thread
// from the page cache, without a thread (MICROLOOP_AIO_NOWAIT).
struct aio_stats : table_stats {
    uint64_t inline_reads;
};

namespace detail {

// What a module is asked to do, the same for both engines.
struct aio_ops {
    enum op_kind : unsigned char { op_read, op_write, op_fsync, op_fdatasync };
};

// The read, in the loop's thread, if it cannot block: true when all len
// bytes came from the page cache. RWF_NOWAIT makes the kernel return EAGAIN
// (or a short count) instead of waiting for the disk or a lock. A short
// count may be the end of the file or a partly cached range: the engine's
// usual path finds out. On an fd opened O_DIRECT the read would wait for the
// device, RWF_NOWAIT or not: never tried there. `enabled` is the module's:
// cleared for good only when the kernel has no preadv2 at all.
inline bool aio_read_nowait(int fd, void* buf, size_t len, off_t offset, bool& enabled) {
#if MICROLOOP_DETAIL_AIO_NOWAIT
    if (!enabled) return false;
#ifdef O_DIRECT
    const int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || (flags & O_DIRECT) != 0) return false;
#endif
    struct iovec iov;
    iov.iov_base = buf;
    iov.iov_len = len;
    // The raw system call, not the libc's preadv2(), which older glibc and
    // musl lack. The offset goes in two longs, low half first, on 32- and
    // 64-bit targets alike (a 64-bit kernel ignores the high one).
    const uint64_t off = static_cast<uint64_t>(offset);
    const long r = syscall(SYS_preadv2, static_cast<long>(fd), &iov, 1L, static_cast<long>(off & ULONG_MAX),
                           static_cast<long>(off >> 32), static_cast<long>(RWF_NOWAIT));
    if (r >= 0) return static_cast<size_t>(r) == len;
    // EAGAIN: not all cached; ESPIPE: a pipe or socket; EOPNOTSUPP: a file
    // (procfs, some filesystems) or a kernel that refuses RWF_NOWAIT; the
    // rest is for the usual path to report. Each of these costs one system
    // call next to a worker's hand-off, and says nothing of other files.
    // Only a kernel without preadv2 (ENOSYS) is never asked again.
    if (errno == ENOSYS) enabled = false;
    return false;
#else
    (void)fd;
    (void)buf;
    (void)len;
    (void)offset;
    (void)enabled;
    return false;
#endif
}

// What an aio<N, Engine> runs on: each engine's header specializes it
// (aio/thread_engine.hpp, aio/posix_engine.hpp). Each derives from
// aio_core<N> and gives the front the same few things: its constructor and
// destructor, submit(), cancel() and fd_of(slot).
template <size_t N, class Engine>
class aio_engine;

// The table every engine keeps: in the loop's thread only.
template <size_t N>
class aio_core {
public:
    aio_core(const aio_core&) = delete;
    aio_core& operator=(const aio_core&) = delete;

protected:
    typedef aio_ops::op_kind op_kind;
    static const uint16_t none = 0xffff;
    struct hook_type : loop_hook {
        aio_core* owner;
    };
    struct link {
        uint16_t next, prev; // the in-flight list, in submission order
        uint16_t callback;   // which of callbacks_ is this operation's
    };
    // An operation taken out of the list, its callback not yet run.
    struct retired {
        uint64_t id;
        uint16_t callback;
        uint16_t slot; // still taken until the callback returns, or none
    };

    // Attached to the loop, which calls on_wake after every wake-up and
    // on_fork in a forked child's after_fork().
    aio_core(loop_base& owner, void (*on_wake)(loop_hook*), void (*on_fork)(loop_hook*));
    ~aio_core() { loop_.detach(&hook_); }

    template <class Engine>
    static Engine& engine_of(loop_hook* h) {
        return static_cast<Engine&>(*static_cast<hook_type*>(h)->owner);
    }

    // The checks every submission passes, then a slot holding cb: the new
    // handle's id, or 0 with the reason in last_error_.
    template <class F>
    uint64_t admit(int fd, void* buf, size_t len, off_t offset, F&& cb);
    // A slot from admit() whose operation could not start: free again.
    void discard(uint16_t i) {
        callbacks_[links_[i].callback].reset();
        pool_.release(i);
    }
    // At the tail of the in-flight list: in flight until retire().
    void link_last(uint16_t i);
    // A read done at once from the page cache (MICROLOOP_AIO_NOWAIT).
    bool read_cached(int fd, void* buf, size_t len, off_t offset) {
        if (!aio_read_nowait(fd, buf, len, offset, nowait_)) return false;
        ++inline_reads_;
        return true;
    }
    // Out of the list and, when the spare callback storage can back it, out
    // of the table: the handle is stale and the slot free while the callback
    // runs (so it may submit again at capacity), the slot taking the spare
    // storage. The spare is the pass's, not each callback's: a callback that
    // runs inside another's nested poll() finds it taken, and keeps its slot
    // until it returns (for it the table is as full as before).
    retired retire(uint16_t i);
    // The callback of a retired operation: result, or err (an errno;
    // ECANCELED: canceled).
    void call_back(const retired& r, int fd, ssize_t result, int err);
    // A forked child's: the operations in flight are the parent's. Drops
    // them, their callbacks not called.
    void forget_all();
    aio_handle fail(errc why, int sys = 0) {
        last_error_ = error_code(why, sys);
        return aio_handle(last_error_);
    }

    loop_base& loop_;
    pid_t pid_; // in a forked child, the operations in flight are the parent's
    hook_type hook_;
    error_code setup_error_;
    error_code last_error_;
    bool nowait_; // reads are tried in the loop's thread first (MICROLOOP_AIO_NOWAIT)
    uint64_t inline_reads_;
    uint16_t head_, tail_; // operations in flight, oldest first
    uint16_t spare_;       // the callbacks_ entry no slot holds, or none while a callback runs from it
    slot_pool<N> pool_;
    link links_[N];
    // One callback more than slots: a finished operation's slot is free
    // again while its callback runs (so the callback can start the next
    // operation in it), and the callback runs from the spare storage.
    aio_callback callbacks_[N + 1];
};

template <size_t N>
const uint16_t aio_core<N>::none;

template <size_t N>
aio_core<N>::aio_core(loop_base& owner, void (*on_wake)(loop_hook*), void (*on_fork)(loop_hook*))
    : loop_(owner), pid_(getpid()), nowait_(MICROLOOP_DETAIL_AIO_NOWAIT != 0), inline_reads_(0), head_(none),
      tail_(none), spare_(static_cast<uint16_t>(N)) {
    hook_.on_wake = on_wake;
    hook_.on_fork = on_fork;
    hook_.active = 0;
    hook_.next = nullptr;
    hook_.owner = this;
    for (size_t i = 0; i < N; ++i) {
        links_[i].next = links_[i].prev = none;
        links_[i].callback = static_cast<uint16_t>(i);
    }
    loop_.attach(&hook_);
}

template <size_t N>
template <class F>
uint64_t aio_core<N>::admit(int fd, void* buf, size_t len, off_t offset, F&& cb) {
    if (setup_error_) last_error_ = setup_error_;
    else if (fd < 0) last_error_ = errc::bad_fd;
    else if (offset < 0 || len > static_cast<size_t>(SSIZE_MAX) || (buf == nullptr && len > 0))
        last_error_ = errc::bad_argument;
    else if (is_null_callable(cb)) last_error_ = errc::bad_argument;
    else if (const uint64_t id = pool_.acquire()) {
        callbacks_[links_[slot_of(id)].callback].emplace(std::forward<F>(cb));
        return id;
    } else {
        last_error_ = errc::table_full;
    }
    return 0;
}

template <size_t N>
void aio_core<N>::link_last(uint16_t i) {
    links_[i].next = none;
    links_[i].prev = tail_;
    if (tail_ != none) links_[tail_].next = i;
    else head_ = i;
    tail_ = i;
    ++hook_.active;
}

template <size_t N>
typename aio_core<N>::retired aio_core<N>::retire(uint16_t i) {
    link& l = links_[i];
    if (l.prev != none) links_[l.prev].next = l.next;
    else head_ = l.next;
    if (l.next != none) links_[l.next].prev = l.prev;
    else tail_ = l.prev;
    l.next = l.prev = none;
    --hook_.active;
    retired r = {pool_.id_of(i), l.callback, i};
    if (spare_ != none) {
        l.callback = spare_;
        spare_ = none; // until this callback returns
        r.slot = none;
        pool_.release(i);
    }
    return r;
}

template <size_t N>
void aio_core<N>::call_back(const retired& r, int fd, ssize_t result, int err) {
    aio_event ev;
    ev.handle = aio_handle::from_id(r.id);
    ev.result = err != 0 ? -1 : result;
    if (err == 0) ev.error = error_code();
    else if (err == ECANCELED) ev.error = error_code(errc::canceled, ECANCELED);
    else ev.error = error_code(errc::system, err);
    aio_callback& cb = callbacks_[r.callback];
    auto done = on_scope_exit([this, &cb, &r] { // also if it throws
        cb.reset();
        if (r.slot != none) pool_.release(r.slot); // it kept its own storage
        else spare_ = r.callback;
    });
    loop_.invoke(cb, source_kind::aio, r.id, fd, ev);
}

template <size_t N>
void aio_core<N>::forget_all() {
    for (uint16_t i = 0; i < N; ++i) {
        if (!pool_.live(i)) continue;
        links_[i].next = links_[i].prev = none;
        callbacks_[links_[i].callback].reset();
        pool_.release(i);
    }
    head_ = tail_ = none;
    hook_.active = 0;
    pid_ = getpid();
}

} // namespace detail
} // namespace microloop

#endif // MICROLOOP_AIO_COMMON_HPP
// ---- end microloop/aio/common.hpp --------------------------------------

// ---- begin microloop/aio/posix_engine.hpp ------------------------------
// microloop/aio/posix_engine.hpp - internal to the AIO module (include
// <microloop/aio.hpp>): aio<N, posix_aio_engine>'s engine.
//
// posix_aio_engine: the libc's POSIX AIO, "the portable one the textbook
// describes" (a read all in the page cache is done in the loop's thread here
// too: MICROLOOP_AIO_NOWAIT, aio/common.hpp). How completions wake the loop: each request asks for a signal
// on completion (SIGEV_SIGNAL, MICROLOOP_AIO_SIGNAL, SIGIO by default). The
// handler only calls wake() on the loops that have a POSIX AIO module; the
// loop then asks aio_error() about every operation in flight and calls back
// the finished ones. The signal says "look", not "which": that is why a
// coalesced or lost signal costs nothing as long as a later one arrives, and
// a standard (non-realtime) signal is never lost, only merged.
// Why not SIGEV_THREAD, which needs no signal number: glibc starts a new
// thread for every completion (a clone and a stack per I/O on a small board),
// the notify function may run after the module is gone, and glibc makes that
// thread from its own helper thread through an interposed malloc, which
// ThreadSanitizer cannot follow (it crashes). With a signal, nothing but the
// loop thread ever touches the module.
// glibc runs AIO on up to 20 helper threads of its own, each with a small
// stack, and requests on one descriptor one after another. aio_init() (GNU)
// changes the thread count; under ThreadSanitizer set aio_threads = 1 and a
// long aio_idle_time before the first request: TSan cannot follow threads
// that glibc's helper thread starts itself.
#ifndef MICROLOOP_AIO_POSIX_ENGINE_HPP
#define MICROLOOP_AIO_POSIX_ENGINE_HPP

#include <aio.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include <atomic>
#include <utility>

// The signal AIO completions are reported with. A standard signal is never
// lost (only merged, which is harmless here); a realtime one may be refused
// when the queue is full (RLIMIT_SIGPENDING). Once an AIO module exists, the
// signal belongs to AIO for the life of the process: on_signal() for it is
// refused with errc::already_watched (and an AIO module cannot start while
// the signal is watched).
#ifndef MICROLOOP_AIO_SIGNAL
#define MICROLOOP_AIO_SIGNAL SIGIO
#endif

// How many AIO modules may exist at once in the process (a few bytes each).
#ifndef MICROLOOP_AIO_MAX_MODULES
#define MICROLOOP_AIO_MAX_MODULES 8
#endif

namespace microloop {

// The libc's POSIX AIO (aio_read() and friends), completions by a signal.
struct posix_aio_engine {};

namespace detail {

// Process-wide: the signal handler and the loops it wakes. A template only so
// that its statics live in a header; they are constant-initialized, so the
// handler never meets them half-built.
template <class Unused = void>
struct aio_signal {
    static std::atomic<loop_base*> loops[MICROLOOP_AIO_MAX_MODULES];
    static std::atomic<int> running; // handlers running now, on any thread
    static std::atomic<int> state;   // 0: not installed, 1: being installed, 2: installed
    static struct sigaction previous;

    static void handler(int sig, siginfo_t* info, void* context) {
        running.fetch_add(1);
        for (int i = 0; i < MICROLOOP_AIO_MAX_MODULES; ++i) {
            loop_base* l = loops[i].load();
            if (l) l->wake(); // async-signal-safe, keeps errno
        }
        running.fetch_sub(1);
        // Someone else's handler for the same signal keeps working.
        if (previous.sa_flags & SA_SIGINFO) {
            if (previous.sa_sigaction) previous.sa_sigaction(sig, info, context);
        } else if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN) {
            previous.sa_handler(sig);
        }
    }

    // Installed once and never removed: a completion signal may still be
    // pending after the last module is gone, and the default action of SIGIO
    // would end the process.
    static error_code install() {
        for (;;) {
            int s = 0;
            if (state.compare_exchange_strong(s, 1)) {
                // The signal is claimed in the signal watchers' process-wide
                // table, for good: loop.on_signal(MICROLOOP_AIO_SIGNAL) is then
                // refused instead of silently taking completions away, and a
                // signal someone already watches is not taken from them.
                const void* nobody = nullptr;
                if (!globals::state[MICROLOOP_AIO_SIGNAL].owner.compare_exchange_strong(nobody, &state)) {
                    state.store(0);
                    return errc::already_watched;
                }
                struct sigaction sa;
                memset(&sa, 0, sizeof sa);
                sa.sa_sigaction = &handler;
                sa.sa_flags = SA_SIGINFO | SA_RESTART;
                sigemptyset(&sa.sa_mask);
                if (sigaction(MICROLOOP_AIO_SIGNAL, &sa, &previous) != 0) {
                    int e = errno;
                    globals::state[MICROLOOP_AIO_SIGNAL].owner.store(nullptr);
                    state.store(0);
                    return error_code(errc::system, e);
                }
                state.store(2);
                return error_code();
            }
            if (s == 2) return error_code();
            sched_yield(); // another thread is installing it right now
        }
    }
    static int add(loop_base* l) {
        for (int i = 0; i < MICROLOOP_AIO_MAX_MODULES; ++i) {
            loop_base* none = nullptr;
            if (loops[i].compare_exchange_strong(none, l)) return i;
        }
        return -1;
    }
    // After this returns no handler can still be using the loop.
    static void remove(int i) {
        loops[i].store(nullptr);
        while (running.load() != 0) sched_yield();
    }
};

template <class U> std::atomic<loop_base*> aio_signal<U>::loops[MICROLOOP_AIO_MAX_MODULES];
template <class U> std::atomic<int> aio_signal<U>::running(0);
template <class U> std::atomic<int> aio_signal<U>::state(0);
template <class U> struct sigaction aio_signal<U>::previous;

template <size_t N>
class aio_engine<N, posix_aio_engine> : public aio_core<N> {
    typedef aio_core<N> core;

public:
    // Claims MICROLOOP_AIO_SIGNAL (errc::already_watched if it is watched)
    // and a place in the handler's table (errc::table_full beyond
    // MICROLOOP_AIO_MAX_MODULES): a failure is kept in error() and returned
    // by every submission.
    explicit aio_engine(loop_base& owner);
    // Cancels what is in flight and waits for it (an operation the libc has
    // already started cannot be canceled, so this may wait for the disk, or
    // for data on a pipe); their callbacks are not called. Not from inside
    // one of this module's callbacks.
    ~aio_engine();

    // Ask for the operation to be canceled. Its callback still runs exactly
    // once: with errc::canceled if the cancel won, with the real result if
    // the operation had already started or finished. errc::stale_handle
    // once the callback has run; errc::system with aio_cancel()'s errno.
    error_code cancel(aio_handle h);

protected:
    template <class F>
    aio_handle submit(typename core::op_kind op, int fd, void* buf, size_t len, off_t offset, F&& cb);
    int fd_of(uint16_t i) const { return cbs_[i].aio_fildes; }

private:
    // What the libc is not told, beside each control block. The control
    // blocks live in their own array: glibc's struct aiocb ends in a
    // zero-length array on 64-bit targets, which may not be a member of
    // another struct in ISO C++ (an array of them is fine).
    struct slot {
        bool busy;
        bool sync;   // fsync or fdatasync: reported after what was submitted before it on its fd
        bool served; // a read done in the loop's thread (all of aio_nbytes), never given to the libc
        bool batch;  // in flight when the pass under way began
    };

    static void on_wake(loop_hook* h) { core::template engine_of<aio_engine>(h).complete(); }
    static void on_fork(loop_hook* h) { core::template engine_of<aio_engine>(h).abandon(); }
    void abandon();
    void complete();
    bool libc_busy_on(int fd) const {
        for (uint16_t i = this->head_; i != core::none; i = this->links_[i].next)
            if (!slots_[i].served && cbs_[i].aio_fildes == fd) return true;
        return false;
    }

    int registered_; // index in the signal handler's table, or -1
    struct aiocb cbs_[N];
    slot slots_[N];
};

template <size_t N>
aio_engine<N, posix_aio_engine>::aio_engine(loop_base& owner) : core(owner, &on_wake, &on_fork), registered_(-1) {
    for (size_t i = 0; i < N; ++i) {
        slots_[i].busy = false;
        slots_[i].sync = false;
        slots_[i].served = false;
        slots_[i].batch = false;
    }
    this->setup_error_ = aio_signal<>::install();
    if (!this->setup_error_) {
        registered_ = aio_signal<>::add(&this->loop_);
        if (registered_ < 0) this->setup_error_ = errc::table_full;
    }
    // A thread that blocks the signal would never be interrupted by it; if
    // every thread did, completions would wait for some other wake-up.
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, MICROLOOP_AIO_SIGNAL);
    pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
}

template <size_t N>
aio_engine<N, posix_aio_engine>::~aio_engine() {
    // In a forked child that never called after_fork() the operations in
    // flight are the parent's: this process's libc knows nothing of them and
    // would wait forever.
    if (getpid() != this->pid_) abandon();
    // The libc writes into the aiocb and the buffer until aio_error() says
    // the operation is over: wait for that before the memory goes away.
    for (size_t i = 0; i < N; ++i)
        if (slots_[i].busy && !slots_[i].served) aio_cancel(cbs_[i].aio_fildes, &cbs_[i]);
    for (size_t i = 0; i < N; ++i) {
        if (!slots_[i].busy || slots_[i].served) continue;
        const struct aiocb* list[1] = {&cbs_[i]};
        while (aio_error(&cbs_[i]) == EINPROGRESS) aio_suspend(list, 1, nullptr); // EINTR: ask again
        aio_return(&cbs_[i]);
    }
    if (registered_ >= 0) aio_signal<>::remove(registered_);
}

template <size_t N>
template <class F>
aio_handle aio_engine<N, posix_aio_engine>::submit(typename core::op_kind op, int fd, void* buf, size_t len,
                                                   off_t offset, F&& cb) {
    const uint64_t id = this->admit(fd, buf, len, offset, std::forward<F>(cb));
    if (id == 0) return aio_handle(this->last_error_);
    const uint16_t index = detail::slot_of(id);
    slot& s = slots_[index];
    struct aiocb& ctl = cbs_[index];
    memset(&ctl, 0, sizeof ctl);
    ctl.aio_fildes = fd;
    ctl.aio_buf = buf;
    ctl.aio_nbytes = len;
    ctl.aio_offset = offset;
    ctl.aio_sigevent.sigev_notify = SIGEV_SIGNAL;
    ctl.aio_sigevent.sigev_signo = MICROLOOP_AIO_SIGNAL;
    // A read all in the page cache is done here, and called back at the
    // next iteration (the loop is woken below) without the libc's thread
    // and signal. Not while the libc has an operation of ours on this fd:
    // glibc runs one fd's requests in order, and a read must not overtake
    // a write submitted before it.
    const bool served = op == aio_ops::op_read && !libc_busy_on(fd) && this->read_cached(fd, buf, len, offset);
    int r = 0;
    if (!served) {
        switch (op) {
        case aio_ops::op_read: r = aio_read(&ctl); break;
        case aio_ops::op_write: r = aio_write(&ctl); break;
        case aio_ops::op_fsync: r = aio_fsync(O_SYNC, &ctl); break;
        default: r = aio_fsync(O_DSYNC, &ctl); break;
        }
    }
    if (r != 0) {
        int e = errno;
        this->discard(index);
        return this->fail(errc::system, e);
    }
    s.busy = true;
    s.batch = false;
    s.sync = op == aio_ops::op_fsync || op == aio_ops::op_fdatasync;
    s.served = served;
    this->link_last(index);
    if (served) this->loop_.wake();
    return aio_handle::from_id(id);
}

template <size_t N>
error_code aio_engine<N, posix_aio_engine>::cancel(aio_handle h) {
    uint16_t index = this->pool_.lookup(h.id());
    if (index == this->pool_.none) return errc::stale_handle;
    // Being called back inside another callback's nested poll(): its slot
    // is still taken (aio_core::retire()), its handle done with.
    if (!slots_[index].busy) return errc::stale_handle;
    if (slots_[index].served) return error_code(); // done already: called back with its result
    struct aiocb& ctl = cbs_[index];
    int r = aio_cancel(ctl.aio_fildes, &ctl);
    if (r == -1) return error_code(errc::system, errno);
    // The libc signals canceled requests too; waking here just does not
    // depend on it.
    if (r == AIO_CANCELED) this->loop_.wake();
    return error_code();
}

// Runs in the loop's thread after every wake-up: asks about each operation
// in flight, so it needs no record of which signal meant which operation.
// The operations are visited in submission order, and an fsync (or
// fdatasync) that finished is held back while an operation submitted before
// it on its fd is still in progress: its callback never runs before theirs,
// as the promise "completes after every write submitted before it" means to
// the user. (The libc finishes them in that order, but both may finish
// between our two questions.) Other operations are reported as they finish,
// so a cancelled read is not kept waiting behind a blocked one. One batch
// per pass: the operations in flight when it began, marked so; those the
// callbacks of this pass submit wait for the next one. A callback that polls
// the loop runs a pass of its own, which may call back, and free, the
// operation this walk would visit next: then that one is no longer marked
// (or no longer in the list, its links none), and this walk stops or skips
// it instead of calling it back twice.
template <size_t N>
void aio_engine<N, posix_aio_engine>::complete() {
    for (uint16_t i = this->head_; i != core::none; i = this->links_[i].next) slots_[i].batch = true;
    int busy_fds[N] = {}; // fds with an operation still in progress, seen so far
    size_t nbusy = 0;
    for (uint16_t i = this->head_, next; i != core::none; i = next) {
        next = this->links_[i].next; // read first: i leaves the list below
        if (!slots_[i].batch) continue; // submitted in this pass, or called back by a nested one
        struct aiocb& ctl = cbs_[i];
        const int fd = ctl.aio_fildes;
        bool seen = false;
        for (size_t k = 0; k < nbusy && !seen; ++k) seen = busy_fds[k] == fd;
        slot& s = slots_[i];
        const bool served = s.served; // done in the loop's thread: never in progress
        int err = served ? 0 : (seen && s.sync ? EINPROGRESS : aio_error(&ctl));
        if (err == EINPROGRESS) {
            if (!seen && nbusy < N) busy_fds[nbusy++] = fd;
        } else {
            if (err < 0) err = errno;
            const ssize_t result = served ? static_cast<ssize_t>(ctl.aio_nbytes) : aio_return(&ctl);
            s.busy = false;
            s.served = false;
            s.batch = false;
            this->call_back(this->retire(i), fd, result, err);
        }
    }
}

// after_fork() in a child (or the destructor of a module a child inherited):
// the operations in flight are the parent's; the libc of this process knows
// nothing of them. Forget them without calling their callbacks.
template <size_t N>
void aio_engine<N, posix_aio_engine>::abandon() {
    for (size_t i = 0; i < N; ++i) slots_[i].busy = slots_[i].served = slots_[i].batch = false;
    this->forget_all();
}

} // namespace detail
} // namespace microloop

#endif // MICROLOOP_AIO_POSIX_ENGINE_HPP
// ---- end microloop/aio/posix_engine.hpp --------------------------------

// ---- begin microloop/aio/thread_engine.hpp -----------------------------
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
// ---- end microloop/aio/thread_engine.hpp -------------------------------

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
// ---- end microloop/aio.hpp ---------------------------------------------

#endif

#endif // MICROLOOP_HPP
