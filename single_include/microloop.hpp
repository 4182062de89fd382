// microloop single-header edition: generated from include/ by tools/amalgamate.py.
// Do not edit: change the files in include/ and run `make single_include`.
//
// microloop - a header-only select() event loop for embedded Linux.
// Version 1.0.0. MIT licence (see the end of this guide).
//
// One loop, every kind of event a small Linux device meets: readable and
// writable fds (sockets, pipes, ttys), monotonic timers, signals (run in the
// loop, not in signal context), child processes, and POSIX AIO completions.
// C++11, no exceptions, no RTTI, no heap after construction.
//
// ---- Usage -------------------------------------------------------------------
//
//     #include <microloop.hpp>
//     using namespace std::chrono;
//
//     microloop::loop<> loop;                    // 64 fds, 64 timers (see capacity<>)
//     auto in = loop.watch(0, microloop::readable, [&](microloop::io_event ev) {
//         char buf[256];
//         ssize_t n = read(ev.fd, buf, sizeof buf);
//         if (n <= 0) loop.unwatch(ev.handle);    // EOF: the loop ends when nothing is left
//     });
//     if (!in) fprintf(stderr, "watch: %s\n", in.error().message());
//     auto tick = loop.every(milliseconds(500), [](microloop::timer_event ev) {
//         printf("tick (%u missed)\n", ev.overruns);
//     });
//     loop.run();                                 // until stop() or nothing is left
//
// ---- Sources -------------------------------------------------------------------
//
//   watch(fd, events, cb) / modify(h, events) / unwatch(h)
//       events: readable | writable | priority (select's except set). cb gets
//       io_event{handle, fd, events}; events == io_error if the fd was closed
//       while watched (the watcher is then disabled: unwatch it).
//   after(timeout, cb) / every(period, cb) / add_timer(timeout, repeat, cb)
//   rearm(h, timeout) / cancel(h) / remaining(h)
//       Monotonic clock; repeating timers do not drift and, after a stall,
//       skip the missed periods and report them in timer_event::overruns.
//       Equal deadlines fire in arming order.
//   run() / run_once() / run_once(max_wait) / poll() / stop() / wake()
//   on_stall(threshold, cb): names any callback that blocked the loop.
//   on_signal(signo, cb) / unwatch(h)
//       cb(signal_event{handle, signo, count, pid, uid}) runs in the loop,
//       never in signal context; count = arrivals since the last call. One
//       watcher per signal per process (else errc::already_watched);
//       unwatching or destroying the loop restores the old disposition.
//       Block signals in other threads: microloop::block_signals().
//   on_child(pid, cb) / unwatch(h)
//       cb(child_event{handle, pid, status}) once, after reaping that pid
//       (exited()/exit_code()/signaled()/term_signal()). Unwatched children
//       are never reaped. SIGPIPE is left alone: see ignore_sigpipe().
//
// ---- Beyond one loop -----------------------------------------------------------
//
//   mailbox<N> box(loop); box.post(cb)
//       Any thread hands cb() to the loop's thread (lock-free, never blocks;
//       errc::table_full when N are queued). One loop per thread + a mailbox
//       each is how microloop uses several cores.
//   continuation_table<N, Size> t; id = t.emplace<T>(...); t.get<T>(id);
//   t.take<T>(id); t.release(id)
//       The state an async operation needs when it completes, saved when it
//       starts; stale ids and wrong types are refused, never misread.
//   aio<N> disk(loop); disk.read/write(fd, buf, len, off, cb); fsync; cancel
//       POSIX AIO: disk I/O that never blocks the loop, its completion an
//       ordinary callback (opt-in, see MICROLOOP_WITH_AIO below).
//   lock_memory(): mlockall, so page faults cannot stall the loop.
//
// Callbacks are function pointers or lambdas whose captures fit in
// MICROLOOP_CALLBACK_SIZE bytes (two pointers by default); a larger capture is
// a compile-time error. Any callback may add, change or remove any source,
// itself included. A source removed during an iteration is not called again;
// a source added during an iteration is first considered in the next one.
//
// ---- Errors --------------------------------------------------------------------
//
// Nothing throws. Actions return microloop::error_code, true on failure:
//     if (microloop::error_code e = loop.unwatch(h)) puts(e.message());
// Creating a source returns a handle; a failed one is false and carries why:
//     h.error() == microloop::errc::fd_out_of_range
// Handles carry a generation count: a handle kept after its source is gone is
// refused with errc::stale_handle and never acts on a newer source.
//
// ---- Configuration (define before including) ----------------------------------
//
//   MICROLOOP_CALLBACK_SIZE  inline capture bytes per callback (2*sizeof(void*))
//   MICROLOOP_ASSERT(c)      internal invariant checks (assert)
//   MICROLOOP_FDSET_WORDS    1: scan select() results a word at a time when
//                            the libc's fd_set layout allows (checked at run
//                            time); 0: FD_ISSET only
//   MICROLOOP_WITH_AIO       define to get the AIO module (microloop::aio<N>)
//                            from this header; or include <microloop/aio.hpp>.
//                            Off by default: it needs -pthread (and -lrt
//                            before glibc 2.34). See microloop/aio.hpp.
//   MICROLOOP_CONTINUATION_SIZE  bytes per continuation_table slot (8 pointers)
//   Capacities: microloop::loop<Io, Timers, Signals, Children>, or
//   microloop::basic_loop<microloop::capacity<...> >.
//
// ---- Licence -------------------------------------------------------------------
//
// MIT. Copyright (c) 2026 the microloop authors. Permission is hereby granted,
// free of charge, to any person obtaining a copy of this software, to deal in
// it without restriction, including the rights to use, copy, modify, merge,
// publish, distribute, sublicense and/or sell copies, subject to this notice
// being included in all copies. THE SOFTWARE IS PROVIDED "AS IS", WITHOUT
// WARRANTY OF ANY KIND.
#ifndef MICROLOOP_HPP
#define MICROLOOP_HPP

// ---- begin microloop/config.hpp ----------------------------------------
// microloop/config.hpp - configuration macros and version.
// Every macro here may be defined by the user before including microloop.
#ifndef MICROLOOP_CONFIG_HPP
#define MICROLOOP_CONFIG_HPP

#include <cassert>

#define MICROLOOP_VERSION_MAJOR 1
#define MICROLOOP_VERSION_MINOR 0
#define MICROLOOP_VERSION_PATCH 0

// Bytes of inline storage for one callback's captures. A lambda that captures
// more is a compile-time error (capture a pointer to your state instead).
// Changes sizeof(loop); every slot of every table carries one callback.
#ifndef MICROLOOP_CALLBACK_SIZE
#define MICROLOOP_CALLBACK_SIZE (2 * sizeof(void*))
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
    canceled         // the operation was canceled before it completed
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
        static_assert(sizeof(Fn) <= Size,
                      "microloop: callback captures too much; capture a pointer to your state "
                      "or raise MICROLOOP_CALLBACK_SIZE");
        static_assert(alignof(Fn) <= alignof(storage_t),
                      "microloop: callback captures an over-aligned object; capture a pointer to it");
        reset();
        ::new (static_cast<void*>(&buf_)) Fn(std::forward<F>(f));
        invoke_ = &invoke_fn<Fn>;
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
    union storage_t {
        unsigned char bytes[Size];
        void* align_ptr;
        long long align_ll; // 32-bit ABIs align 64-bit members to 8
    };

    template <class Fn>
    static R invoke_fn(void* p, Args... args) { return (*static_cast<Fn*>(p))(static_cast<Args>(args)...); }
    template <class Fn>
    static void destroy_fn(void* p) { static_cast<Fn*>(p)->~Fn(); }

    R (*invoke_)(void*, Args...);
    void (*destroy_)(void*);
    storage_t buf_;
};

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

// A handle is 32 bits: generation << 16 | slot. Generation 0 never names a
// live source, so a failed creation returns a handle whose low bits hold the
// reason instead: `if (!h) puts(h.error().message());`. A handle kept after
// its source is gone (and the slot reused) no longer matches the slot's
// generation and is refused with errc::stale_handle. The generation is 16
// bits: a handle would be mistaken only after the same slot was reused 32767
// times while the stale handle was kept.
template <class Tag>
class basic_handle {
public:
    basic_handle() : bits_(static_cast<uint32_t>(errc::stale_handle)) {}
    basic_handle(errc failure) : bits_(static_cast<uint32_t>(failure)) {}

    bool valid() const { return (bits_ >> 16) != 0; }
    explicit operator bool() const { return valid(); }
    // Why creation failed; errc::ok for a valid handle.
    error_code error() const { return valid() ? error_code() : error_code(static_cast<errc>(bits_ & 0xffu)); }
    uint32_t id() const { return bits_; }

    static basic_handle from_id(uint32_t id) { basic_handle h; h.bits_ = id; return h; }
    friend bool operator==(basic_handle a, basic_handle b) { return a.bits_ == b.bits_; }
    friend bool operator!=(basic_handle a, basic_handle b) { return a.bits_ != b.bits_; }

private:
    uint32_t bits_;
};

typedef basic_handle<struct io_tag> io_handle;
typedef basic_handle<struct timer_tag> timer_handle;

namespace detail {

// Free-slot stack plus a generation per slot. O(1) acquire, release, lookup.
// The generation is bumped on acquire and again on release, so a handle
// stops matching the moment its slot is released.
template <size_t N>
class slot_pool {
    static_assert(N > 0 && N < 0xffff, "capacity must be between 1 and 65534");

public:
    static const uint16_t none = 0xffff;

    slot_pool() : nfree_(static_cast<uint16_t>(N)) {
        for (size_t i = 0; i < N; ++i) {
            free_[i] = static_cast<uint16_t>(N - 1 - i); // hand out slot 0 first
            gen_[i] = 0;
        }
    }

    // A fresh handle id, or 0 when full.
    uint32_t acquire() {
        if (nfree_ == 0) return 0;
        uint16_t slot = free_[--nfree_];
        bump(slot);
        return static_cast<uint32_t>(gen_[slot]) << 16 | slot;
    }
    void release(uint16_t slot) {
        retire(slot);
        recycle(slot);
    }
    // Release in two steps: retire() makes the slot's handles stale at once;
    // recycle() lets the slot be handed out again (used while the slot's
    // callback is still running).
    void retire(uint16_t slot) {
        MICROLOOP_ASSERT(slot < N && (gen_[slot] & 1u));
        bump(slot);
    }
    void recycle(uint16_t slot) {
        MICROLOOP_ASSERT(slot < N && nfree_ < N);
        free_[nfree_++] = slot;
    }
    // The slot a live handle names, or `none`.
    uint16_t lookup(uint32_t id) const {
        uint32_t slot = id & 0xffffu, gen = id >> 16;
        if (slot >= N || gen == 0 || gen_[slot] != gen || !(gen & 1u)) return none;
        return static_cast<uint16_t>(slot);
    }
    uint32_t id_of(uint16_t slot) const { return static_cast<uint32_t>(gen_[slot]) << 16 | slot; }
    size_t used() const { return N - nfree_; }
    bool full() const { return nfree_ == 0; }

private:
    // Live slots have odd generations, free ones even, so a live handle's
    // generation is never 0 (0 marks an error handle). Wraps by design.
    void bump(uint16_t slot) { gen_[slot] = static_cast<uint16_t>(gen_[slot] + 1u); }

    uint16_t free_[N];
    uint16_t gen_[N];
    uint16_t nfree_;
};

template <size_t N> const uint16_t slot_pool<N>::none;

// Which slot's callback is running right now. Removing that source from
// inside its own callback makes its handles stale at once but frees the
// callback's storage only when it returns (the closure is still executing).
// Every table whose callbacks may remove their own source keeps one.
class running_slot {
public:
    running_slot() : slot_(none), released_(false) {}

    void begin(uint16_t slot) { slot_ = slot; }
    // Release `slot` of `pool`, whose callback is `cb`: now, or deferred to
    // end() if that callback is the one running.
    template <class Pool, class Callback>
    void release(Pool& pool, Callback& cb, uint16_t slot) {
        if (slot == slot_) {
            pool.retire(slot);
            released_ = true;
            return;
        }
        cb.reset();
        pool.release(slot);
    }
    // The callback returned; true if it had removed its own source, which is
    // freed now.
    template <class Pool, class Callback>
    bool end(Pool& pool, Callback& cb) {
        uint16_t slot = slot_;
        slot_ = none;
        if (!released_) return false;
        released_ = false;
        cb.reset();
        pool.recycle(slot);
        return true;
    }

private:
    enum { none = 0xffff }; // no slot: nothing is running
    uint16_t slot_;
    bool released_;
};

} // namespace detail
} // namespace microloop

#endif // MICROLOOP_HANDLE_HPP
// ---- end microloop/handle.hpp ------------------------------------------

// ---- begin microloop/loop.hpp ------------------------------------------
// microloop/loop.hpp - the select() loop: fd watchers, timers, wake-up pipe,
// and the hooks through which signals and AIO completions arrive.
#ifndef MICROLOOP_LOOP_HPP
#define MICROLOOP_LOOP_HPP

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>
#include <sys/select.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <type_traits>

// For the hot path only (internal).
#if defined(__GNUC__)
#define MICROLOOP_DETAIL_ALWAYS_INLINE __attribute__((always_inline)) inline
#else
#define MICROLOOP_DETAIL_ALWAYS_INLINE inline
#endif

namespace microloop {

// What an fd watcher asks for, and what its callback is told.
enum : unsigned {
    readable = 1u,  // read set: data, EOF, a connection to accept
    writable = 2u,  // write set
    priority = 4u,  // except set: out-of-band data, tty packet mode, sysfs GPIO edges
    io_error = 8u   // only reported: the fd was closed while watched (EBADF); the
                    // watcher is disabled, unwatch() it
};

struct io_event {
    io_handle handle;
    int fd;
    unsigned events; // the ready subset of what was asked for, or io_error
};

struct timer_event {
    timer_handle handle;
    uint32_t overruns; // repeating timers: whole periods skipped after a stall
};

// What kind of callback a stall report names.
enum class source_kind : unsigned char { io, timer, signal, aio, child };

// Given to the stall callback when a callback ran longer than the threshold.
struct stall_report {
    source_kind kind;
    uint32_t id;          // the handle's id()
    int detail;           // the fd, signal number or pid; -1 for timers
    int64_t duration_ns;  // how long the callback ran
};

typedef detail::inplace_callback<void(io_event)> io_callback;
typedef detail::inplace_callback<void(timer_event)> timer_callback;
typedef detail::inplace_callback<void(const stall_report&)> stall_callback;

typedef basic_handle<struct signal_tag> signal_handle;
typedef basic_handle<struct child_tag> child_handle;
namespace detail {
template <size_t Signals, size_t Children>
class signal_table; // signal.hpp, included at the end of this file
} // namespace detail

namespace detail {

inline int64_t monotonic_ns() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
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

// a before b, for counters that wrap
inline bool serial_before(uint32_t a, uint32_t b) { return static_cast<int32_t>(a - b) < 0; }

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

} // namespace detail

// Compile-time capacities: how many fd watchers, timers, signal watchers and
// child watchers one loop can hold. Each slot costs memory (see README).
template <size_t Io = 64, size_t Timers = 64, size_t Signals = 8, size_t Children = 8>
struct capacity {
    static const size_t io = Io, timers = Timers, signals = Signals, children = Children;
};

// How a module (signals, AIO) hangs off a loop without the loop knowing its
// type: after the wake-up pipe is drained, the loop calls on_wake of every
// attached hook in its own thread; `active` counts the sources the module
// keeps pending, which keep run() running. The hook lives in the module.
struct loop_hook {
    void (*on_wake)(loop_hook* self);
    size_t active;
    loop_hook* next;
};

// The part of a loop that does not depend on its capacities: what modules
// and other threads talk to.
class loop_base {
public:
    // Interrupt a waiting select() from another thread or a signal handler
    // (async-signal-safe; errno is preserved).
    error_code wake();
    // Make run() return after the current iteration. Thread-safe.
    void stop() {
        stop_.store(true, std::memory_order_relaxed);
        wake();
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
    // The write end of the wake-up pipe, for a module's signal handler that
    // must write to it directly; -1 if the pipe could not be made.
    int wake_fd() const { return wake_wr_; }

    // Runs a user callback, reporting it if it stalled the loop. For modules.
    template <class Cb, class Ev>
    void invoke(Cb& cb, Ev ev, source_kind kind, uint32_t id, int what) {
        if (stall_ns_ == 0) {
            cb(ev);
            return;
        }
        int64_t t0 = detail::monotonic_ns();
        cb(ev);
        int64_t took = detail::monotonic_ns() - t0;
        if (took >= stall_ns_) {
            stall_report r = {kind, id, what, took};
            stall_cb_(r);
        }
    }

protected:
    loop_base();
    ~loop_base();
    loop_base(const loop_base&) = delete;
    loop_base& operator=(const loop_base&) = delete;

    void drain_wake();
    size_t hooks_active() const {
        size_t n = 0;
        for (const loop_hook* h = hooks_; h; h = h->next) n += h->active;
        return n;
    }

    int wake_rd_, wake_wr_;
    int wake_errno_; // why the wake pipe could not be made, or 0
    std::atomic<bool> wake_pending_;
    std::atomic<bool> stop_;
    loop_hook* hooks_;
    int64_t stall_ns_;
    stall_callback stall_cb_;
};

// The loop. Every table lives inside the object, sized by Cap (a capacity<>);
// nothing is allocated after construction. One loop per thread: only wake()
// and stop() may be called from other threads (and wake() from a signal
// handler).
template <class Cap>
class basic_loop : public loop_base {
public:
    basic_loop();
    ~basic_loop();

    // ---- fd watchers ----------------------------------------------------
    // Watch fd for `events` (readable | writable | priority); cb(io_event).
    template <class F>
    io_handle watch(int fd, unsigned events, F&& cb);
    // Change what is watched; 0 pauses the watcher without removing it.
    error_code modify(io_handle h, unsigned events);
    error_code unwatch(io_handle h);

    // ---- timers (CLOCK_MONOTONIC) -----------------------------------------
    // Fire once after `timeout`.
    template <class Rep, class Period, class F>
    timer_handle after(std::chrono::duration<Rep, Period> timeout, F&& cb) {
        return add_timer(timeout, std::chrono::nanoseconds::zero(), std::forward<F>(cb));
    }
    // Fire every `period`, first after one period. Deadlines advance by the
    // period, never by when the callback ran, so the timer does not drift.
    template <class Rep, class Period, class F>
    timer_handle every(std::chrono::duration<Rep, Period> period, F&& cb) {
        if (period == std::chrono::duration<Rep, Period>::zero()) return timer_handle(errc::bad_timeout);
        return add_timer(period, period, std::forward<F>(cb));
    }
    // The general form: first after `timeout`, then every `repeat` (0: once).
    template <class Rep1, class Period1, class Rep2, class Period2, class F>
    timer_handle add_timer(std::chrono::duration<Rep1, Period1> timeout, std::chrono::duration<Rep2, Period2> repeat,
                           F&& cb);
    // Re-schedule to fire `timeout` from now (a repeating timer keeps its
    // period). Also valid inside the callback of a one-shot timer, which
    // keeps it alive; a one-shot timer that fired and was not re-armed is gone.
    template <class Rep, class Period>
    error_code rearm(timer_handle h, std::chrono::duration<Rep, Period> timeout);
    error_code cancel(timer_handle h);
    // Time left before the timer fires (zero if due).
    std::chrono::nanoseconds remaining(timer_handle h) const;

    // ---- running ----------------------------------------------------------
    // Until stop() or until no active watcher or timer is left.
    error_code run();
    // One iteration: wait (forever, or at most max_wait), dispatch, return.
    // A stop() ends the wait and is used up, as in run().
    error_code run_once() { return iterate_once(-1); }
    template <class Rep, class Period>
    error_code run_once(std::chrono::duration<Rep, Period> max_wait) {
        int64_t ns;
        if (!detail::to_ns(max_wait, ns)) return errc::bad_timeout;
        return iterate_once(ns);
    }
    // One iteration that does not wait.
    error_code poll() { return iterate_once(0); }
    using loop_base::stop;
    using loop_base::wake;

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

    // Loop time: taken after each wait, so every callback of one iteration
    // sees the same "now" and timers armed in them are relative to it.
    std::chrono::nanoseconds now() { return std::chrono::nanoseconds(now_ns()); }
    void update_now() { refresh_now(); }
    // Watchers with a non-zero interest, armed timers, and what modules
    // (signals, AIO) keep pending.
    size_t active() const { return active_io_ + heap_size_ + hooks_active(); }

private:
    typedef typename std::conditional<(Cap::io < 255), uint8_t, uint16_t>::type fd_slot_t;
    static const fd_slot_t no_slot = static_cast<fd_slot_t>(~0u);
    static const uint16_t no_pos = 0xffff;
    enum { rd = 0, wr = 1, ex = 2 };

    struct io_slot {
        io_callback cb;
        int fd;
        unsigned interest;
        uint32_t added_iter; // not dispatched in the iteration it was added in
        uint32_t id;         // its handle's id, fixed while the watcher lives
    };
    struct timer_slot {
        timer_callback cb;
        int64_t period; // 0: one-shot
        uint16_t heap_pos;
    };
    struct heap_entry {
        int64_t deadline;
        uint32_t seq; // arming order: equal deadlines fire first-armed first
        uint16_t slot;
    };

    int64_t now_ns() {
        if (!now_valid_) refresh_now();
        return now_;
    }
    void refresh_now() {
        now_ = detail::monotonic_ns();
        now_valid_ = true;
    }

    void set_interest(io_slot& io, unsigned events);
    void recompute_maxfd();
    void release_io(uint16_t slot) { running_io_.release(io_pool_, io_[slot].cb, slot); }
    void release_timer(uint16_t slot) { running_timer_.release(timer_pool_, timers_[slot].cb, slot); }
    void call_io(uint16_t s, int fd, unsigned events);
    bool disable_bad_fds();

    void heap_place(uint16_t pos, const heap_entry& e) {
        heap_[pos] = e;
        timers_[e.slot].heap_pos = pos;
    }
    static bool heap_less(const heap_entry& a, const heap_entry& b) {
        return a.deadline < b.deadline || (a.deadline == b.deadline && detail::serial_before(a.seq, b.seq));
    }
    void heap_sift(uint16_t pos, heap_entry e);
    void heap_push(uint16_t slot, int64_t deadline);
    void heap_remove(uint16_t pos);

    error_code iterate(int64_t max_wait_ns);
    error_code iterate_once(int64_t max_wait_ns) {
        error_code result = iterate(max_wait_ns);
        stop_.store(false, std::memory_order_relaxed); // left set, it would make every later wait zero
        return result;
    }
    int64_t select_timeout(int64_t until) const;
    void dispatch_io(const unsigned long* r, const unsigned long* w, const unsigned long* e, int nwords, int nready);
    void dispatch_fd(int fd, unsigned ready);
    fd_set* copy_set(fd_set& to, const fd_set& from, size_t bytes) const {
        if (fdset_words_) memcpy(&to, &from, bytes);
        else to = from;
        return &to;
    }
    void dispatch_timers();

    // fd sets: the masters are edited by watch/modify/unwatch and copied for
    // each select(); watched_ is our own bitmap of fds with a watcher.
    fd_set master_[3];
    unsigned long watched_[detail::fd_words];
    fd_slot_t fd_slot_[FD_SETSIZE];
    int maxfd_;
    unsigned nwatch_[3]; // watchers interested in each set: an empty set is passed as NULL
    size_t active_io_;

    detail::slot_pool<Cap::io> io_pool_;
    io_slot io_[Cap::io];

    detail::slot_pool<Cap::timers> timer_pool_;
    timer_slot timers_[Cap::timers];
    heap_entry heap_[Cap::timers];
    uint16_t heap_size_;
    uint32_t seq_;        // next arming sequence number
    uint32_t seq_mark_;   // seq_ when this iteration began
    uint32_t iteration_;

    // The callback running now, so removing it defers freeing its storage.
    detail::running_slot running_io_, running_timer_;

    int64_t now_;
    bool now_valid_;
    bool wake_seen_; // the wake pipe was ready in this iteration
    bool fdset_words_;

    detail::signal_table<Cap::signals, Cap::children> signals_; // a loop_hook
};

// ============================================================================
// Implementation
// ============================================================================

template <class Cap>
basic_loop<Cap>::basic_loop()
    : maxfd_(-1), active_io_(0), heap_size_(0), seq_(0), seq_mark_(0), iteration_(0), now_(0), now_valid_(false), wake_seen_(false),
      fdset_words_(detail::fdset_is_words()), signals_(*this) {
    for (int i = 0; i < 3; ++i) {
        FD_ZERO(&master_[i]);
        nwatch_[i] = 0;
    }
    memset(watched_, 0, sizeof watched_);
    for (size_t i = 0; i < FD_SETSIZE; ++i) fd_slot_[i] = no_slot;
    if (wake_rd_ >= 0) {
        FD_SET(wake_rd_, &master_[rd]);
        maxfd_ = wake_rd_;
    }
}

template <class Cap> const typename basic_loop<Cap>::fd_slot_t basic_loop<Cap>::no_slot;
template <class Cap> const uint16_t basic_loop<Cap>::no_pos;

// Callbacks of live slots are destroyed with the slot arrays.
template <class Cap>
basic_loop<Cap>::~basic_loop() {}

// ---- fd watchers ------------------------------------------------------------

template <class Cap>
template <class F>
io_handle basic_loop<Cap>::watch(int fd, unsigned events, F&& cb) {
    // Checked before anything touches an fd_set: FD_SET beyond FD_SETSIZE
    // writes past the end of the set.
    if (fd < 0) return io_handle(errc::bad_fd);
    if (fd >= FD_SETSIZE) return io_handle(errc::fd_out_of_range);
    if (events & ~(readable | writable | priority)) return io_handle(errc::bad_argument);
    if (detail::is_null_callable(cb)) return io_handle(errc::bad_argument);
    if (fd_slot_[fd] != no_slot || fd == wake_rd_) return io_handle(errc::already_watched);
    uint32_t id = io_pool_.acquire();
    if (id == 0) return io_handle(errc::table_full);

    uint16_t slot = static_cast<uint16_t>(id & 0xffffu);
    io_slot& io = io_[slot];
    io.cb.emplace(std::forward<F>(cb));
    io.fd = fd;
    io.interest = 0;
    io.added_iter = iteration_;
    io.id = id;
    fd_slot_[fd] = static_cast<fd_slot_t>(slot);
    detail::set_bit(watched_, fd);
    if (fd > maxfd_) maxfd_ = fd;
    set_interest(io, events);
    return io_handle::from_id(id);
}

template <class Cap>
error_code basic_loop<Cap>::modify(io_handle h, unsigned events) {
    uint16_t slot = io_pool_.lookup(h.id());
    if (slot == io_pool_.none) return errc::stale_handle;
    if (events & ~(readable | writable | priority)) return errc::bad_argument;
    set_interest(io_[slot], events);
    return error_code();
}

template <class Cap>
error_code basic_loop<Cap>::unwatch(io_handle h) {
    uint16_t slot = io_pool_.lookup(h.id());
    if (slot == io_pool_.none) return errc::stale_handle;
    io_slot& io = io_[slot];
    set_interest(io, 0);
    fd_slot_[io.fd] = no_slot;
    detail::clear_bit(watched_, io.fd);
    if (io.fd == maxfd_) recompute_maxfd();
    release_io(slot);
    return error_code();
}

template <class Cap>
void basic_loop<Cap>::set_interest(io_slot& io, unsigned events) {
    static const unsigned bit[3] = {readable, writable, priority};
    if ((io.interest != 0) != (events != 0)) active_io_ += events ? 1 : static_cast<size_t>(-1);
    for (int s = 0; s < 3; ++s) {
        bool was = (io.interest & bit[s]) != 0, is = (events & bit[s]) != 0;
        if (was == is) continue;
        if (is) {
            FD_SET(io.fd, &master_[s]);
            ++nwatch_[s];
        } else {
            FD_CLR(io.fd, &master_[s]);
            --nwatch_[s];
        }
    }
    io.interest = events;
}

template <class Cap>
void basic_loop<Cap>::recompute_maxfd() {
    maxfd_ = wake_rd_;
    for (int w = detail::fd_words - 1; w >= 0; --w) {
        if (watched_[w]) {
            int fd = w * detail::word_bits + (detail::word_bits - 1 - __builtin_clzl(watched_[w]));
            if (fd > maxfd_) maxfd_ = fd;
            return;
        }
    }
}

// Runs watcher s's callback, which may remove the watcher or anything else.
template <class Cap>
MICROLOOP_DETAIL_ALWAYS_INLINE void basic_loop<Cap>::call_io(uint16_t s, int fd, unsigned events) {
    io_slot& io = io_[s];
    running_io_.begin(s);
    io_event ev = {io_handle::from_id(io.id), fd, events};
    invoke(io.cb, ev, source_kind::io, ev.handle.id(), fd);
    running_io_.end(io_pool_, io.cb);
}

// select() failed with EBADF: some watched fd was closed behind our back.
// Find each one, report it to its watcher once, and disable the watcher.
// False if no watcher owns a bad fd (the wake-up pipe itself was closed).
template <class Cap>
bool basic_loop<Cap>::disable_bad_fds() {
    bool found = false;
    for (int fd = 0; fd <= maxfd_; ++fd) {
        fd_slot_t s = fd_slot_[fd];
        if (s == no_slot || io_[s].interest == 0) continue;
        if (fcntl(fd, F_GETFD) != -1 || errno != EBADF) continue;
        io_slot& io = io_[s];
        found = true;
        set_interest(io, 0);
        call_io(s, fd, io_error);
    }
    return found;
}

// ---- timers -----------------------------------------------------------------

template <class Cap>
template <class Rep1, class Period1, class Rep2, class Period2, class F>
timer_handle basic_loop<Cap>::add_timer(std::chrono::duration<Rep1, Period1> timeout,
                                               std::chrono::duration<Rep2, Period2> repeat, F&& cb) {
    int64_t after_ns, period_ns;
    if (!detail::to_ns(timeout, after_ns) || !detail::to_ns(repeat, period_ns)) return timer_handle(errc::bad_timeout);
    if (detail::is_null_callable(cb)) return timer_handle(errc::bad_argument);
    uint32_t id = timer_pool_.acquire();
    if (id == 0) return timer_handle(errc::table_full);
    uint16_t slot = static_cast<uint16_t>(id & 0xffffu);
    timer_slot& t = timers_[slot];
    t.cb.emplace(std::forward<F>(cb));
    t.period = period_ns;
    heap_push(slot, now_ns() + after_ns);
    return timer_handle::from_id(id);
}

template <class Cap>
template <class Rep, class Period>
error_code basic_loop<Cap>::rearm(timer_handle h, std::chrono::duration<Rep, Period> timeout) {
    uint16_t slot = timer_pool_.lookup(h.id());
    if (slot == timer_pool_.none) return errc::stale_handle;
    int64_t ns;
    if (!detail::to_ns(timeout, ns)) return errc::bad_timeout;
    timer_slot& t = timers_[slot];
    if (t.heap_pos != no_pos) {
        // Armed: re-keyed in place, one sift instead of a remove and a push.
        // A fresh seq, as a push would give, keeps equal deadlines in arming order.
        heap_entry e = {now_ns() + ns, seq_++, slot};
        heap_sift(t.heap_pos, e);
    } else {
        heap_push(slot, now_ns() + ns);
    }
    return error_code();
}

template <class Cap>
error_code basic_loop<Cap>::cancel(timer_handle h) {
    uint16_t slot = timer_pool_.lookup(h.id());
    if (slot == timer_pool_.none) return errc::stale_handle;
    if (timers_[slot].heap_pos != no_pos) heap_remove(timers_[slot].heap_pos);
    release_timer(slot);
    return error_code();
}

template <class Cap>
std::chrono::nanoseconds basic_loop<Cap>::remaining(timer_handle h) const {
    uint16_t slot = timer_pool_.lookup(h.id());
    if (slot == timer_pool_.none || timers_[slot].heap_pos == no_pos) return std::chrono::nanoseconds::zero();
    int64_t left = heap_[timers_[slot].heap_pos].deadline - detail::monotonic_ns();
    return std::chrono::nanoseconds(left > 0 ? left : 0);
}

// Moves `e` from `pos` up or down to where it belongs: O(log n). The heap is
// 4-ary (as libev's): half the depth of a binary heap, so an entry moves
// through half as many levels, and siblings sit next to each other in memory.
template <class Cap>
void basic_loop<Cap>::heap_sift(uint16_t pos, heap_entry e) {
    uint32_t at = pos;
    while (at > 0) {
        uint32_t parent = (at - 1u) / 4u;
        if (!heap_less(e, heap_[parent])) break;
        heap_place(static_cast<uint16_t>(at), heap_[parent]);
        at = parent;
    }
    // heap_size_ never exceeds the capacity; the clamp tells the optimiser so
    // (gcc -O2 warns of out-of-bounds reads with capacities below 3).
    const uint32_t size = heap_size_ < Cap::timers ? heap_size_ : static_cast<uint32_t>(Cap::timers);
    for (;;) {
        uint32_t first = 4u * at + 1u;
        if (first >= size) break;
        uint32_t end = size - first > 4u ? first + 4u : size, best = first;
        for (uint32_t c = first + 1u; c < end; ++c)
            if (heap_less(heap_[c], heap_[best])) best = c;
        if (!heap_less(heap_[best], e)) break;
        heap_place(static_cast<uint16_t>(at), heap_[best]);
        at = best;
    }
    heap_place(static_cast<uint16_t>(at), e);
}

template <class Cap>
void basic_loop<Cap>::heap_push(uint16_t slot, int64_t deadline) {
    heap_entry e = {deadline, seq_++, slot};
    heap_sift(heap_size_++, e);
}

template <class Cap>
void basic_loop<Cap>::heap_remove(uint16_t pos) {
    timers_[heap_[pos].slot].heap_pos = no_pos;
    if (pos != --heap_size_) heap_sift(pos, heap_[heap_size_]);
}

// ---- the iteration ----------------------------------------------------------

template <class Cap>
error_code basic_loop<Cap>::run() {
    error_code result;
    while (!stop_.load(std::memory_order_relaxed) && active() > 0) {
        result = iterate(-1);
        if (result) break;
    }
    stop_.store(false, std::memory_order_relaxed);
    return result;
}

// Nanoseconds select() may sleep: until the first timer or `until`, -1 for
// no limit.
template <class Cap>
int64_t basic_loop<Cap>::select_timeout(int64_t until) const {
    // Past deadlines clamp to 0: a difference of exactly -1 must not read as
    // "no limit".
    int64_t wait = until < 0 ? -1 : (until > now_ ? until - now_ : 0);
    if (heap_size_ > 0) {
        int64_t t = heap_[0].deadline > now_ ? heap_[0].deadline - now_ : 0;
        if (wait < 0 || t < wait) wait = t;
    }
    return wait;
}

template <class Cap>
error_code basic_loop<Cap>::iterate(int64_t max_wait_ns) {
    ++iteration_;
    seq_mark_ = seq_;
    // The clock is read only when something depends on it: with no timer and
    // no time limit (run() with fds only, or poll()'s zero wait) the loop pays
    // nothing for time, and timers armed in callbacks read it themselves.
    const bool timed = heap_size_ > 0 || max_wait_ns > 0;
    int64_t until = -1;
    if (timed) {
        refresh_now();
        if (max_wait_ns >= 0) until = now_ + max_wait_ns;
    } else {
        now_valid_ = false;
    }

    fd_set set[3];
    fd_set* ptr[3];
    int n, nfds;
    for (;;) {
        nfds = maxfd_ + 1;
        // Only the words select() will look at are copied. The read set always
        // holds the wake pipe; the others are usually empty and passed as NULL.
        const size_t bytes = (static_cast<size_t>(nfds) + detail::word_bits - 1) / detail::word_bits *
                             sizeof(unsigned long);
        ptr[rd] = copy_set(set[rd], master_[rd], bytes);
        ptr[wr] = nwatch_[wr] ? copy_set(set[wr], master_[wr], bytes) : nullptr;
        ptr[ex] = nwatch_[ex] ? copy_set(set[ex], master_[ex], bytes) : nullptr;
        int64_t wait = timed ? select_timeout(until) : max_wait_ns; // untimed: -1 (forever) or 0
        if (stop_.load(std::memory_order_relaxed)) wait = 0;
        struct timeval tv, *tvp = nullptr;
        if (wait == 0) { // poll(), or a timer already due: no divisions
            tv.tv_sec = 0;
            tv.tv_usec = 0;
            tvp = &tv;
        } else if (wait > 0) {
            // Rounded up: waking before the deadline would only spin.
            int64_t us = (wait + 999) / 1000;
            const int64_t max_s = 0x7fffffff; // fits a 32-bit time_t
            tv.tv_sec = static_cast<time_t>(us / 1000000 > max_s ? max_s : us / 1000000);
            tv.tv_usec = static_cast<suseconds_t>(us % 1000000);
            tvp = &tv;
        }
        n = select(nfds, ptr[rd], ptr[wr], ptr[ex], tvp);
        if (timed) refresh_now();
        if (n >= 0) break;
        if (errno == EINTR) continue; // retried with what is left of the timeout
        if (errno == EBADF) {
            // Retrying would fail the same way: with nothing to disable,
            // report it instead of spinning.
            if (!disable_bad_fds()) return error_code(errc::system, EBADF);
            n = 0;
            break;
        }
        return error_code(errc::system, errno);
    }

    if (n > 0) {
        const int nwords = static_cast<int>((static_cast<unsigned>(nfds) + detail::word_bits - 1) / detail::word_bits);
        const unsigned long* sets[3];
        unsigned long words[3][detail::fd_words];
        if (fdset_words_) {
            for (int s = 0; s < 3; ++s) sets[s] = reinterpret_cast<const unsigned long*>(ptr[s]); // NULL stays NULL
        } else {
            // Portable path: translate the result sets into words through
            // FD_ISSET, for the fds we watch only.
            memset(words, 0, sizeof words);
            for (int fd = 0; fd < nfds; ++fd) {
                if (!detail::test_bit(watched_, fd) && fd != wake_rd_) continue;
                for (int s = 0; s < 3; ++s)
                    if (ptr[s] && FD_ISSET(fd, ptr[s])) detail::set_bit(words[s], fd);
            }
            for (int s = 0; s < 3; ++s) sets[s] = ptr[s] ? words[s] : nullptr;
        }
        dispatch_io(sets[rd], sets[wr], sets[ex], nwords, n); // one call site: inlined
    }
    if (heap_size_ > 0) dispatch_timers();
    return error_code();
}

// Ready fds are found a word at a time. nready is select()'s count of set
// bits: the scan stops when it is used up. The wake pipe is drained after the
// watchers ran, as before. Inlined into its one caller, iterate(): with one
// ready fd per iteration, the call would cost more than the scan.
template <class Cap>
MICROLOOP_DETAIL_ALWAYS_INLINE void basic_loop<Cap>::dispatch_io(const unsigned long* r, const unsigned long* w,
                                                                  const unsigned long* e, int nwords,
                                                                  int nready) {
    if (!w && !e) {
        // Only readers (the common case): the scan keeps its state in registers.
        for (int i = 0; i < nwords && nready > 0; ++i)
            for (unsigned long bits = r[i]; bits; bits &= bits - 1, --nready)
                dispatch_fd(i * detail::word_bits + __builtin_ctzl(bits), readable);
    } else {
        static const unsigned long none[detail::fd_words] = {}; // an unused set reads as empty
        if (!w) w = none;
        if (!e) e = none;
        for (int i = 0; i < nwords && nready > 0; ++i) {
            for (unsigned long bits = r[i] | w[i] | e[i]; bits; bits &= bits - 1) {
                int bit = __builtin_ctzl(bits);
                unsigned long rb = (r[i] >> bit) & 1ul, wb = (w[i] >> bit) & 1ul, eb = (e[i] >> bit) & 1ul;
                nready -= static_cast<int>(rb + wb + eb);
                dispatch_fd(i * detail::word_bits + bit,
                            (rb ? readable : 0u) | (wb ? writable : 0u) | (eb ? priority : 0u));
            }
        }
    }
    if (wake_seen_) {
        wake_seen_ = false;
        drain_wake();
    }
}

// One ready fd, looked up in fd_slot_ at the moment it is dispatched, so a
// watcher removed by an earlier callback of this iteration is never called.
template <class Cap>
MICROLOOP_DETAIL_ALWAYS_INLINE void basic_loop<Cap>::dispatch_fd(int fd, unsigned ready) {
    fd_slot_t s = fd_slot_[fd];
    if (s == no_slot) { // the wake pipe (drained after the watchers), or unwatched meanwhile
        if (fd == wake_rd_) wake_seen_ = true;
        return;
    }
    io_slot& io = io_[s];
    unsigned events = ready & io.interest;
    if (events == 0 || io.added_iter == iteration_) return;
    call_io(s, fd, events);
}

template <class Cap>
void basic_loop<Cap>::dispatch_timers() {
    while (heap_size_ > 0 && heap_[0].deadline <= now_ && detail::serial_before(heap_[0].seq, seq_mark_)) {
        const heap_entry top = heap_[0];
        timer_slot& t = timers_[top.slot];
        uint32_t overruns = 0;
        if (t.period > 0) {
            // Next deadline = this one + whole periods; periods that passed
            // during a stall are skipped and counted, not fired in a burst.
            int64_t missed = (now_ - top.deadline) / t.period;
            overruns = missed > 0xffffffffll ? 0xffffffffu : static_cast<uint32_t>(missed);
            heap_entry next = {top.deadline + (missed + 1) * t.period, seq_++, top.slot};
            heap_sift(0, next);
        } else {
            heap_remove(0);
        }
        running_timer_.begin(top.slot);
        timer_event ev = {timer_handle::from_id(timer_pool_.id_of(top.slot)), overruns};
        invoke(t.cb, ev, source_kind::timer, ev.handle.id(), -1);
        if (!running_timer_.end(timer_pool_, t.cb) && t.heap_pos == no_pos)
            release_timer(top.slot); // a one-shot timer that was not re-armed
    }
}

// ---- loop_base: the wake-up pipe ---------------------------------------------

inline loop_base::loop_base()
    : wake_rd_(-1), wake_wr_(-1), wake_errno_(0), wake_pending_(false), stop_(false), hooks_(nullptr),
      stall_ns_(0) {
    // Non-blocking so neither a full pipe nor an empty one can block the
    // loop or a signal handler; close-on-exec so children do not inherit it.
    int p[2];
    if (pipe2(p, O_NONBLOCK | O_CLOEXEC) != 0) {
        wake_errno_ = errno;
    } else if (p[0] >= FD_SETSIZE) {
        close(p[0]);
        close(p[1]);
        wake_errno_ = EMFILE;
    } else {
        wake_rd_ = p[0];
        wake_wr_ = p[1];
    }
}

inline loop_base::~loop_base() {
    if (wake_rd_ >= 0) close(wake_rd_);
    if (wake_wr_ >= 0) close(wake_wr_);
}

inline error_code loop_base::wake() {
    if (wake_wr_ < 0) return error_code(errc::system, wake_errno_);
    if (wake_pending_.exchange(true)) return error_code(); // a byte is on its way already
    int saved = errno;
    char byte = 1;
    ssize_t r;
    do r = write(wake_wr_, &byte, 1);
    while (r < 0 && errno == EINTR);
    errno = saved; // a full pipe (EAGAIN) wakes the loop just as well
    return error_code();
}

inline void loop_base::drain_wake() {
    // Cleared after draining, before the hooks run: a wake() that saw the
    // flag set published its work before we clear it, so the hooks see that
    // work; a wake() after the clear writes a byte the next select() sees.
    // (Cleared before draining, the read could swallow the byte of a wake()
    // whose flag stays set, and every later wake() would then skip its write.)
    // An exchange, not a store, so that what the waker published before
    // wake() is visible here. Modules keep their own pending flags; the pipe
    // only wakes the loop.
    char buf[64];
    while (read(wake_rd_, buf, sizeof buf) == static_cast<ssize_t>(sizeof buf)) {
    }
    wake_pending_.exchange(false);
    for (loop_hook* h = hooks_; h;) {
        loop_hook* next = h->next; // a hook may detach itself
        h->on_wake(h);
        h = next;
    }
}

template <size_t Io = 64, size_t Timers = 64, size_t Signals = 8, size_t Children = 8>
using loop = basic_loop<capacity<Io, Timers, Signals, Children> >;

} // namespace microloop

// ---- begin microloop/signal.hpp ----------------------------------------
// microloop/signal.hpp - signals and child processes as ordinary loop events.
//
//     loop.on_signal(SIGHUP, [&](microloop::signal_event) { reload(); });
//     loop.on_child(pid, [](microloop::child_event ev) { printf("exit %d\n", ev.exit_code()); });
//
// The handler microloop installs only counts: it runs in signal context, so it
// records the signal, the sender, and writes one byte to the loop's wake-up
// pipe. The callback runs later inside the loop, where anything is allowed.
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
// - A forked child inherits the handler and the wake-up pipe (until exec):
//   exec soon after fork, as posix_spawn() does.
//
// Included by loop.hpp (basic_loop holds a signal table); include
// <microloop.hpp> or this file, which brings loop.hpp along.
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
    std::atomic<int> wake_fd;       // the owner's wake-up pipe + 1; 0: drop arrivals
    std::atomic<unsigned> pending;  // arrivals the loop has not taken yet
    std::atomic<unsigned> busy;     // handlers running right now
    // The latest sender, under a seqlock: odd while a handler writes.
    std::atomic<unsigned> seq;
    std::atomic<int> pid;
    std::atomic<unsigned> uid;
};

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
            // Only the first arrival since the loop last looked writes a byte:
            // a storm costs one byte, and a full pipe (EAGAIN) means the loop
            // is about to wake anyway. The count itself is never lost.
            if (s.pending.fetch_add(1) == 0) {
                char byte = 0;
                ssize_t r = write(fd, &byte, 1);
                (void)r;
            }
        }
        s.busy.fetch_sub(1);
        errno = saved_errno;
    }

    // Writer side of the seqlock. Two handlers of one signal may run at once
    // in two threads: the second one skips (its sender is as recent).
    static void record_sender(signal_state& s, int signo, const siginfo_t* info) {
        int pid = 0;
        unsigned uid = 0;
        bool sent = info && (info->si_code == SI_USER || info->si_code == SI_QUEUE ||
#ifdef SI_TKILL
                             info->si_code == SI_TKILL ||
#endif
                             signo == SIGCHLD);
        if (sent) {
            pid = static_cast<int>(info->si_pid);
            uid = static_cast<unsigned>(info->si_uid);
        }
        // Release stores of the data (no fences: ThreadSanitizer cannot
        // check them): a reader that sees new data also sees the odd count.
        unsigned q = s.seq.load(std::memory_order_relaxed);
        if ((q & 1u) || !s.seq.compare_exchange_strong(q, q + 1u, std::memory_order_relaxed)) return;
        s.pid.store(pid, std::memory_order_release);
        s.uid.store(uid, std::memory_order_release);
        s.seq.store(q + 2u, std::memory_order_release);
    }
};

template <class Unused>
signal_state signal_globals<Unused>::state[signal_limit];

typedef signal_globals<> globals;

// Reader side, in the loop thread. A writer is a few instructions long, so a
// few retries suffice; if a handler in another thread is preempted mid-write,
// we give up after 64 tries and may pair one sender's pid with another's uid.
inline void read_sender(const signal_state& s, pid_t& pid, uid_t& uid) {
    for (int tries = 0; tries < 64; ++tries) {
        unsigned q1 = s.seq.load(std::memory_order_acquire);
        pid = static_cast<pid_t>(s.pid.load(std::memory_order_acquire));
        uid = static_cast<uid_t>(s.uid.load(std::memory_order_acquire));
        if (!(q1 & 1u) && s.seq.load(std::memory_order_relaxed) == q1) return;
        sched_yield();
    }
}

// A signal number that may be watched, before asking sigaction().
inline bool watchable_signal(int signo) {
    return signo > 0 && signo < signal_limit && signo != SIGKILL && signo != SIGSTOP;
}

// Take the signal for `owner`: claim it process-wide, install the handler,
// and unblock it in this thread. The previous disposition goes to `saved`.
inline error_code claim_signal(int signo, const void* owner, int wake_fd, struct sigaction* saved) {
    signal_state& s = globals::state[signo];
    const void* nobody = nullptr;
    if (!s.owner.compare_exchange_strong(nobody, owner)) return errc::already_watched;
    s.pending.store(0);
    s.wake_fd.store(wake_fd + 1);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = &globals::handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART | SA_SIGINFO;
    if (sigaction(signo, &sa, saved) != 0) {
        int e = errno;
        s.wake_fd.store(0);
        s.owner.store(nullptr);
        // EINVAL: a number libc or the kernel keeps for itself (glibc's
        // threading signals between the standard and real-time ones).
        return e == EINVAL ? error_code(errc::bad_argument, e) : error_code(errc::system, e);
    }
    sigset_t one;
    sigemptyset(&one);
    sigaddset(&one, signo);
    sigprocmask(SIG_UNBLOCK, &one, nullptr); // this thread only, see block_signals()
    return error_code();
}

// Give the signal back: restore the disposition, then wait until no handler
// is still using the wake-up pipe, which may be closed right after. The
// handler increments `busy` before reading `wake_fd` and we clear `wake_fd`
// before reading `busy` (all seq_cst), so a handler that still saw the fd is
// always seen as busy here.
inline void release_signal(int signo, const struct sigaction& saved) {
    signal_state& s = globals::state[signo];
    sigaction(signo, &saved, nullptr); // cannot fail: the same call succeeded when claiming
    s.wake_fd.store(0);
    while (s.busy.load() != 0) sched_yield();
    s.owner.store(nullptr);
}

// A loop's signal and child watchers: the fixed tables and the hook through
// which the loop hands it each wake-up. Part of basic_loop.
template <size_t Signals, size_t Children>
class signal_table : private loop_hook {
    // slot_pool needs at least one slot; a capacity of 0 is refused at run time.
    static const size_t sig_cap = Signals ? Signals : 1, kid_cap = Children ? Children : 1;
    static const uint16_t none = 0xffff;

public:
    explicit signal_table(loop_base& loop)
        : loop_(&loop), chld_users_(0), chld_count_(0), kids_due_(false) {
        on_wake = &signal_table::dispatch;
        active = 0;
        next = nullptr;
        memset(&chld_saved_, 0, sizeof chld_saved_);
        for (size_t i = 0; i < sig_cap; ++i) sigs_[i].signo = 0;
        for (size_t i = 0; i < kid_cap; ++i) kids_[i].pid = 0;
        loop_->attach(this);
    }

    ~signal_table() {
        for (size_t i = 0; i < sig_cap; ++i)
            if (sigs_[i].signo) give_back(sigs_[i]);
        if (chld_users_ > 0) release_signal(SIGCHLD, chld_saved_);
        loop_->detach(this);
    }

    signal_table(const signal_table&) = delete;
    signal_table& operator=(const signal_table&) = delete;

    template <class F>
    signal_handle add(int signo, F&& cb) {
        if (!watchable_signal(signo)) return signal_handle(errc::bad_argument);
        if (Signals == 0 || sig_pool_.full()) return signal_handle(errc::table_full);
        if (loop_->wake_fd() < 0) return signal_handle(no_pipe());
        sig_slot& s = sigs_[slot_of(sig_pool_.acquire())];
        error_code e = signo == SIGCHLD ? take_sigchld() : claim_signal(signo, this, loop_->wake_fd(), &s.saved);
        uint16_t slot = static_cast<uint16_t>(&s - sigs_);
        if (e) {
            sig_pool_.release(slot);
            if (e.sys()) errno = e.sys(); // kept for the caller: a handle carries only the errc
            return signal_handle(e.code());
        }
        s.cb.emplace(std::forward<F>(cb));
        s.signo = signo;
        ++active;
        return signal_handle::from_id(sig_pool_.id_of(slot));
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
        if (pid <= 0) return child_handle(errc::bad_argument);
        if (Children == 0 || kid_pool_.full()) return child_handle(errc::table_full);
        for (size_t i = 0; i < kid_cap; ++i)
            if (kids_[i].pid == pid) return child_handle(errc::already_watched);
        if (loop_->wake_fd() < 0) return child_handle(no_pipe());
        if (error_code e = take_sigchld()) {
            if (e.sys()) errno = e.sys();
            return child_handle(e.code());
        }
        // SIGCHLD is caught from here on; a child that ended earlier is
        // already a zombie and sends nothing more: look once now. WNOWAIT
        // leaves it unreaped, so unwatching before the report still leaves
        // the child to its owner.
        siginfo_t info;
        memset(&info, 0, sizeof info);
        int r;
        do r = waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT);
        while (r < 0 && errno == EINTR);
        if (r < 0) { // not our child, or already reaped by someone else
            int e = errno;
            drop_sigchld();
            errno = e;
            return child_handle(e == ECHILD ? errc::bad_argument : errc::system);
        }
        uint32_t id = kid_pool_.acquire();
        kid_slot& k = kids_[slot_of(id)];
        k.cb.emplace(std::forward<F>(cb));
        k.pid = pid;
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
        kids_[slot].pid = 0;
        kids_[slot].cb.reset(); // a running child callback's slot is already retired
        kid_pool_.release(slot);
        --active;
        drop_sigchld();
        return error_code();
    }

private:
    struct sig_slot {
        signal_callback cb;
        int signo; // 0: free
        struct sigaction saved; // the disposition to restore (not used for SIGCHLD)
    };
    struct kid_slot {
        child_callback cb;
        pid_t pid; // 0: free
    };

    static uint16_t slot_of(uint32_t id) { return static_cast<uint16_t>(id & 0xffffu); }

    // The loop has no wake-up pipe: errno says why it could not be made.
    errc no_pipe() {
        errno = loop_->wake().sys();
        return errc::system;
    }

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
        if (s.signo == SIGCHLD) drop_sigchld();
        else release_signal(s.signo, s.saved);
        s.signo = 0;
        --active;
    }

    static void dispatch(loop_hook* hook) {
        signal_table* self = static_cast<signal_table*>(hook);
        if (self->chld_users_ > 0) self->chld_count_ += globals::state[SIGCHLD].pending.exchange(0);
        if (self->kids_due_ || self->chld_count_ > 0) self->reap();
        self->dispatch_signals();
    }

    // Each watched child is checked on its own; a SIGCHLD only says that
    // some child changed state, and several exits may share one SIGCHLD.
    void reap() {
        kids_due_ = false;
        for (size_t i = 0; i < kid_cap; ++i) {
            kid_slot& k = kids_[i];
            if (k.pid == 0) continue;
            int status = 0;
            pid_t r;
            do r = waitpid(k.pid, &status, WNOHANG);
            while (r < 0 && errno == EINTR);
            if (r == 0) continue; // still running
            // The watcher is gone before its callback runs: its handle is
            // stale inside the callback, and its slot is reused only after.
            uint16_t slot = static_cast<uint16_t>(i);
            child_event ev = {child_handle::from_id(kid_pool_.id_of(slot)), k.pid, r == k.pid ? status : -1};
            kid_pool_.retire(slot);
            k.pid = 0;
            --active;
            drop_sigchld();
            loop_->invoke(k.cb, ev, source_kind::child, ev.handle.id(), static_cast<int>(ev.pid));
            k.cb.reset();
            kid_pool_.recycle(slot);
        }
    }

    void dispatch_signals() {
        for (size_t i = 0; i < sig_cap; ++i) {
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
            signal_event ev = {signal_handle::from_id(sig_pool_.id_of(slot)), s.signo, n, 0, 0};
            read_sender(g, ev.pid, ev.uid);
            running_.begin(slot);
            loop_->invoke(s.cb, ev, source_kind::signal, ev.handle.id(), ev.signo);
            running_.end(sig_pool_, s.cb);
        }
        chld_count_ = 0; // nobody else wants the SIGCHLD count
    }

    loop_base* loop_;
    slot_pool<sig_cap> sig_pool_;
    sig_slot sigs_[sig_cap];
    slot_pool<kid_cap> kid_pool_;
    kid_slot kids_[kid_cap];
    struct sigaction chld_saved_;
    unsigned chld_users_;
    unsigned chld_count_; // SIGCHLD arrivals taken, for a SIGCHLD watcher
    bool kids_due_;       // a child was found already ended when watched
    running_slot running_; // the signal slot whose callback runs now
};

template <size_t S, size_t C> const size_t signal_table<S, C>::sig_cap;
template <size_t S, size_t C> const size_t signal_table<S, C>::kid_cap;
template <size_t S, size_t C> const uint16_t signal_table<S, C>::none;

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
// reused when the taken<T> goes out of scope. Move-only; false if the take
// failed, error() says why. Must not outlive its table.
template <class T>
class taken {
public:
    taken(errc why) : obj_(nullptr), slot_(0), why_(why) { back_.recycle = nullptr; back_.table = nullptr; }
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
    // The objects still stored are destroyed.
    ~continuation_table() {
        for (size_t i = 0; i < N; ++i)
            if (type_[i] && type_[i]->destroy) type_[i]->destroy(&slots_[i]);
    }
    continuation_table(const continuation_table&) = delete;
    continuation_table& operator=(const continuation_table&) = delete;

    // Construct a T in a free slot from args. An invalid id carries
    // errc::table_full when every slot is taken.
    template <class T, class... Args>
    continuation_id emplace(Args&&... args) {
        static_assert(sizeof(T) <= Size,
                      "microloop: state too big for this continuation table; raise its Size parameter");
        static_assert(alignof(T) <= alignof(storage_t),
                      "microloop: over-aligned state; store a pointer to it instead");
        static_assert(!std::is_reference<T>::value && !std::is_array<T>::value, "microloop: store an object type");
        uint32_t id = pool_.acquire();
        if (id == 0) return continuation_id(errc::table_full);
        uint16_t slot = static_cast<uint16_t>(id & 0xffffu);
        // Gives the slot back if T's constructor throws (where exceptions exist).
        struct guard {
            detail::slot_pool<N>* pool;
            uint16_t slot;
            ~guard() {
                if (pool) pool->release(slot);
            }
        } g = {&pool_, slot};
        ::new (static_cast<void*>(&slots_[slot])) T(std::forward<Args>(args)...);
        g.pool = nullptr;
        type_[slot] = &detail::stored_type_of<typename std::remove_cv<T>::type>::tag;
        return continuation_id::from_id(id);
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

    size_t size() const { return pool_.used(); }
    bool full() const { return pool_.full(); }

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

// ---- begin microloop/mailbox.hpp ---------------------------------------
// microloop/mailbox.hpp - hand work to a loop from other threads.
#ifndef MICROLOOP_MAILBOX_HPP
#define MICROLOOP_MAILBOX_HPP

#include <stddef.h>

#include <atomic>

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
// posted but have not run when the mailbox is destroyed are discarded.
template <size_t N = 16, size_t Size = MICROLOOP_CALLBACK_SIZE>
class mailbox : private loop_hook {
    static_assert(N >= 2 && (N & (N - 1)) == 0, "mailbox capacity must be a power of two");

public:
    explicit mailbox(loop_base& l) : loop_(&l), enqueue_(0), dequeue_(0) {
        for (size_t i = 0; i < N; ++i) cells_[i].seq.store(i, std::memory_order_relaxed);
        on_wake = &mailbox::drain;
        active = 1;
        next = nullptr;
        loop_->attach(this);
    }
    ~mailbox() { close(); }
    mailbox(const mailbox&) = delete;
    mailbox& operator=(const mailbox&) = delete;

    // Queue cb() to run in the loop's thread. Thread-safe.
    template <class F>
    error_code post(F&& cb) {
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
    void close() {
        if (!loop_) return;
        loop_->detach(this);
        loop_ = nullptr;
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
            c.fn();
            c.fn.reset();
            c.seq.store(self->dequeue_ + N, std::memory_order_release);
            ++self->dequeue_;
        }
        self->loop_->wake(); // more may be waiting: come back next iteration
    }

    loop_base* loop_;
    cell cells_[N];
    std::atomic<size_t> enqueue_;
    size_t dequeue_;
};

} // namespace microloop

#endif // MICROLOOP_MAILBOX_HPP
// ---- end microloop/mailbox.hpp -----------------------------------------

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

#if defined(MICROLOOP_WITH_AIO)

// ---- begin microloop/aio.hpp -------------------------------------------
// microloop/aio.hpp - disk reads, writes and fsyncs that do not block the
// loop: POSIX AIO, with completions delivered as loop callbacks.
//
// Opt-in: include <microloop/aio.hpp> (or define MICROLOOP_WITH_AIO before
// including microloop.hpp) and link with -pthread (and -lrt before glibc
// 2.34). Programs that do not use it pay nothing.
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
// How completions wake the loop. Each request asks for a signal on
// completion (SIGEV_SIGNAL, MICROLOOP_AIO_SIGNAL, SIGIO by default). The
// handler only calls wake() on the loops that have an AIO module; the loop
// then asks aio_error() about every operation in flight and calls back the
// finished ones. The signal says "look", not "which": that is why a
// coalesced or lost signal costs nothing as long as a later one arrives, and
// a standard (non-realtime) signal is never lost, only merged.
// Why not SIGEV_THREAD, which needs no signal number: glibc starts a new
// thread for every completion (a clone and a stack per I/O on a small board),
// the notify function may run after the module is gone, and glibc makes that
// thread from its own helper thread through an interposed malloc, which
// ThreadSanitizer cannot follow (it crashes). With a signal, nothing but the
// loop thread ever touches the module.
//
// glibc runs AIO on up to 20 helper threads of its own, each with a small
// stack, and requests on one descriptor one after another. aio_init() (GNU)
// changes the thread count; under ThreadSanitizer set aio_threads = 1 and a
// long aio_idle_time before the first request: TSan cannot follow threads
// that glibc's helper thread starts itself.
#ifndef MICROLOOP_AIO_HPP
#define MICROLOOP_AIO_HPP

#include <aio.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/types.h>

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

typedef basic_handle<struct aio_tag> aio_handle;

// Given to an AIO callback, in the loop's thread, exactly once per
// operation that was submitted.
struct aio_event {
    aio_handle handle;
    ssize_t result;   // bytes read or written (0 at end of file, 0 for fsync); -1 on failure
    error_code error; // ok; errc::canceled (sys() == ECANCELED); errc::system with errno
};

typedef detail::inplace_callback<void(aio_event)> aio_callback;

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

} // namespace detail

// Up to N disk operations in flight on one loop. Construct it after the loop
// and destroy it before; use it from the loop's thread only. Each operation's
// buffer must stay valid until its callback has run (or the module is gone).
// Regular files and block devices are what AIO is for; on a pipe or socket
// the libc's helper thread blocks in read() until data comes.
template <size_t N>
class aio {
public:
    explicit aio(loop_base& l);
    // Cancels what is in flight and waits for it (an operation the libc has
    // already started cannot be canceled, so this may wait for the disk, or
    // for data on a pipe); their callbacks are not called. Not from inside
    // one of this module's callbacks.
    ~aio();
    aio(const aio&) = delete;
    aio& operator=(const aio&) = delete;

    // Read len bytes at offset into buf; cb(aio_event) when done. A failed
    // submission returns an invalid handle: errc::table_full, errc::bad_fd,
    // errc::bad_argument, or errc::system (last_error() has the errno).
    template <class F>
    aio_handle read(int fd, void* buf, size_t len, off_t offset, F&& cb) {
        return submit(op_read, fd, buf, len, offset, std::forward<F>(cb));
    }
    template <class F>
    aio_handle write(int fd, const void* buf, size_t len, off_t offset, F&& cb) {
        return submit(op_write, fd, const_cast<void*>(buf), len, offset, std::forward<F>(cb));
    }
    // Completes after every write submitted before it on fd is on the disk.
    template <class F>
    aio_handle fsync(int fd, F&& cb) {
        return submit(op_fsync, fd, nullptr, 0, 0, std::forward<F>(cb));
    }
    template <class F>
    aio_handle fdatasync(int fd, F&& cb) {
        return submit(op_fdatasync, fd, nullptr, 0, 0, std::forward<F>(cb));
    }

    // Ask for the operation to be canceled. Its callback still runs exactly
    // once: with errc::canceled if the cancel won, with the real result if
    // the operation had already started or finished. errc::stale_handle
    // once the callback has run.
    error_code cancel(aio_handle h);

    size_t in_flight() const { return hook_.active; }
    // The error of the last failed submission, with its errno.
    error_code last_error() const { return last_error_; }

private:
    enum op_kind { op_read, op_write, op_fsync, op_fdatasync };

    // The control blocks live in their own array: glibc's struct aiocb ends
    // in a zero-length array on 64-bit targets, which may not be a member of
    // another struct in ISO C++ (an array of them is fine).
    struct slot {
        uint32_t pass;     // the completion pass it was submitted in
        uint16_t callback; // which of callbacks_ is this operation's
        bool busy;
    };
    struct hook_type : loop_hook {
        aio* owner;
    };

    template <class F>
    aio_handle submit(op_kind op, int fd, void* buf, size_t len, off_t offset, F&& cb);
    static void on_wake(loop_hook* h) { static_cast<hook_type*>(h)->owner->complete(); }
    void complete();
    aio_handle fail(errc why, int sys = 0) {
        last_error_ = error_code(why, sys);
        return aio_handle(why);
    }

    loop_base& loop_;
    hook_type hook_;
    int registered_; // index in the signal handler's table, or -1
    error_code setup_error_;
    error_code last_error_;
    uint32_t pass_;
    detail::slot_pool<N> pool_;
    struct aiocb cbs_[N];
    slot slots_[N];
    // One callback more than slots: a finished operation's slot is free
    // again while its callback runs (so the callback can start the next
    // operation in it), and the callback runs from the spare storage.
    aio_callback callbacks_[N + 1];
    uint16_t spare_;
};

// ============================================================================
// Implementation
// ============================================================================

template <size_t N>
aio<N>::aio(loop_base& l) : loop_(l), registered_(-1), pass_(0), spare_(static_cast<uint16_t>(N)) {
    hook_.on_wake = &on_wake;
    hook_.active = 0;
    hook_.next = nullptr;
    hook_.owner = this;
    for (size_t i = 0; i < N; ++i) {
        slots_[i].busy = false;
        slots_[i].pass = 0;
        slots_[i].callback = static_cast<uint16_t>(i);
    }
    setup_error_ = detail::aio_signal<>::install();
    if (!setup_error_) {
        registered_ = detail::aio_signal<>::add(&loop_);
        if (registered_ < 0) setup_error_ = errc::table_full;
    }
    // A thread that blocks the signal would never be interrupted by it; if
    // every thread did, completions would wait for some other wake-up.
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, MICROLOOP_AIO_SIGNAL);
    pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
    loop_.attach(&hook_);
}

template <size_t N>
aio<N>::~aio() {
    // The libc writes into the aiocb and the buffer until aio_error() says
    // the operation is over: wait for that before the memory goes away.
    for (size_t i = 0; i < N; ++i)
        if (slots_[i].busy) aio_cancel(cbs_[i].aio_fildes, &cbs_[i]);
    for (size_t i = 0; i < N; ++i) {
        if (!slots_[i].busy) continue;
        const struct aiocb* list[1] = {&cbs_[i]};
        while (aio_error(&cbs_[i]) == EINPROGRESS) aio_suspend(list, 1, nullptr); // EINTR: ask again
        aio_return(&cbs_[i]);
    }
    if (registered_ >= 0) detail::aio_signal<>::remove(registered_);
    loop_.detach(&hook_);
}

template <size_t N>
template <class F>
aio_handle aio<N>::submit(op_kind op, int fd, void* buf, size_t len, off_t offset, F&& cb) {
    if (setup_error_) {
        last_error_ = setup_error_;
        return aio_handle(setup_error_.code());
    }
    if (fd < 0) return fail(errc::bad_fd);
    if (offset < 0 || len > static_cast<size_t>(SSIZE_MAX) || (buf == nullptr && len > 0))
        return fail(errc::bad_argument);
    uint32_t id = pool_.acquire();
    if (id == 0) return fail(errc::table_full);
    uint16_t index = static_cast<uint16_t>(id & 0xffffu);
    slot& s = slots_[index];
    struct aiocb& ctl = cbs_[index];
    memset(&ctl, 0, sizeof ctl);
    ctl.aio_fildes = fd;
    ctl.aio_buf = buf;
    ctl.aio_nbytes = len;
    ctl.aio_offset = offset;
    ctl.aio_sigevent.sigev_notify = SIGEV_SIGNAL;
    ctl.aio_sigevent.sigev_signo = MICROLOOP_AIO_SIGNAL;
    aio_callback& done = callbacks_[s.callback];
    done.emplace(std::forward<F>(cb));
    int r;
    switch (op) {
    case op_read: r = aio_read(&ctl); break;
    case op_write: r = aio_write(&ctl); break;
    case op_fsync: r = aio_fsync(O_SYNC, &ctl); break;
    default: r = aio_fsync(O_DSYNC, &ctl); break;
    }
    if (r != 0) {
        int e = errno;
        done.reset();
        pool_.release(index);
        return fail(errc::system, e);
    }
    s.busy = true;
    s.pass = pass_;
    ++hook_.active;
    return aio_handle::from_id(id);
}

template <size_t N>
error_code aio<N>::cancel(aio_handle h) {
    uint16_t index = pool_.lookup(h.id());
    if (index == pool_.none) return errc::stale_handle;
    struct aiocb& ctl = cbs_[index];
    int r = aio_cancel(ctl.aio_fildes, &ctl);
    if (r == -1) return error_code(errc::system, errno);
    // The libc signals canceled requests too; waking here just does not
    // depend on it.
    if (r == AIO_CANCELED) loop_.wake();
    return error_code();
}

// Runs in the loop's thread after every wake-up: asks about each operation
// in flight, so it needs no record of which signal meant which operation.
// Operations submitted by the callbacks of this pass wait for the next one.
template <size_t N>
void aio<N>::complete() {
    ++pass_;
    for (size_t i = 0; i < N && hook_.active > 0; ++i) {
        slot& s = slots_[i];
        if (!s.busy || s.pass == pass_) continue;
        struct aiocb& ctl = cbs_[i];
        int err = aio_error(&ctl);
        if (err == EINPROGRESS) continue;
        if (err < 0) err = errno;
        ssize_t result = aio_return(&ctl);
        s.busy = false;
        --hook_.active;
        uint16_t index = static_cast<uint16_t>(i);
        uint32_t id = pool_.id_of(index);
        int fd = ctl.aio_fildes;
        // The handle is stale inside the callback (no cancel, no second
        // call) and the slot free, with the spare callback storage.
        uint16_t running = s.callback;
        s.callback = spare_;
        spare_ = running;
        pool_.release(index);
        aio_event ev;
        ev.handle = aio_handle::from_id(id);
        ev.result = err ? -1 : result;
        if (err == 0) ev.error = error_code();
        else if (err == ECANCELED) ev.error = error_code(errc::canceled, ECANCELED);
        else ev.error = error_code(errc::system, err);
        loop_.invoke(callbacks_[running], ev, source_kind::aio, id, fd);
        callbacks_[running].reset();
    }
}

} // namespace microloop

#endif // MICROLOOP_AIO_HPP
// ---- end microloop/aio.hpp ---------------------------------------------

#endif

#endif // MICROLOOP_HPP
