// SPDX-License-Identifier: MIT
// microloop/adapters/sdbus.hpp - drives an sd-bus connection (libsystemd)
// from a microloop loop, as sd_bus_attach_event() does for sd-event. Not
// part of the single header; link with -lsystemd (pkg-config libsystemd).
//
// ---- Usage -------------------------------------------------------------------
//
//     #include <microloop/adapters/sdbus.hpp>
//
//     microloop::loop<> loop;
//     sd_bus* bus = nullptr;
//     sd_bus_open_user(&bus);                          // or _system, or
//                                                      // sd_bus_new + set_address + start
//     sd_bus_add_object_vtable(bus, ...);              // yours, as usual
//     microloop::adapters::sdbus_adapter<microloop::loop<> > dbus(loop, bus);
//     dbus.on_status([](const microloop::adapters::sdbus_event& ev) { ... });
//     if (microloop::error_code e = dbus.start()) ...
//     sd_bus_call_method_async(bus, ...);              // replies arrive in loop.run()
//     loop.run();
//
// The application opens the bus, adds its objects and matches, makes its
// calls and unrefs the bus; all of it from the loop's thread. The bus's
// callbacks (method handlers, replies, signals) run inside the loop's
// iterations. The adapter must outlive its use by the loop and not move
// (its callbacks hold `this`); destroy or stop() it before the last
// sd_bus_unref(). Do not also attach the bus to an sd-event loop.
//
// ---- What the adapter owns ---------------------------------------------------
//
//   - a prepare hook: before every wait it reads sd_bus_get_fd(),
//     sd_bus_get_events() (POLLIN / POLLOUT -> readable / writable) and
//     sd_bus_get_timeout() (an absolute CLOCK_MONOTONIC time in us,
//     UINT64_MAX for none), so what the application queued since counts for
//     that very wait;
//   - a watcher of the bus's fd, and a one-shot timer at the bus's deadline
//     (loop.at(): on the default clock directly; on another clock, converted
//     through the time left);
//   - either one firing -> sd_bus_process() until it returns 0 (at most
//     options::process_batch calls a wake-up: a bus with more work says so
//     with a timeout of 0, and the next iteration goes on).
// Nothing here allocates; sd-bus allocates what it needs.
//
// ---- Status, errors, reconnect -------------------------------------------------
//
// on_status(cb), cb(const sdbus_event&):
//   attached  the fd is watched
//   lost      the connection is gone (the bus daemon died or closed it):
//             sd_bus_process() or sd_bus_get_events() failed (err: the
//             negative errno, -ECONNRESET, -ENOTCONN), or the bus is no
//             longer open. sd-bus has already failed the calls in flight
//             (their callbacks got an error reply) and sent its local
//             Disconnected signal. The adapter stops watching and holds
//             nothing more in the loop.
//   failed    the loop could not host the bus (loop_error: table_full,
//             fd_out_of_range, a timer that could not be armed); the adapter
//             stops watching; the bus is the application's to close.
// Reconnecting is the application's business, as with sd-event: open a new
// bus (and add the objects again), then start() an adapter on it (this one
// after reset(new_bus)).
#ifndef MICROLOOP_ADAPTERS_SDBUS_HPP
#define MICROLOOP_ADAPTERS_SDBUS_HPP

#include <systemd/sd-bus.h>

#include <microloop.hpp>

namespace microloop {
namespace adapters {

enum class sdbus_status { idle, attached, lost, failed };

struct sdbus_event {
    sdbus_status status;
    int err;              // lost: the negative errno sd-bus gave
    error_code loop_error; // failed: why the loop could not host the bus
};

template <class Loop>
class sdbus_adapter {
public:
    struct options {
        unsigned process_batch; // sd_bus_process() calls per wake-up at most
        options() : process_batch(1024) {}
    };

    sdbus_adapter(Loop& loop, sd_bus* bus, const options& opt = options())
        : loop_(loop), bus_(bus), opt_(opt), fd_(-1), interest_(0), deadline_(-1), state_(sdbus_status::idle),
          err_(0), process_calls_(0) {}
    ~sdbus_adapter() { stop(); }
    sdbus_adapter(const sdbus_adapter&) = delete;
    sdbus_adapter& operator=(const sdbus_adapter&) = delete;

    template <class F>
    void on_status(F&& cb) { status_cb_.emplace(std::forward<F>(cb)); }

    // Starts driving the bus. A loop error is returned and, for the fd or the
    // timer, also reported as `failed`; a bus that is not open is `lost`.
    error_code start() {
        if (!hook_) {
            hook_ = loop_.on_prepare([this](hook_event) { sync(); });
            if (!hook_) return last_error_ = hook_.error();
        }
        sync();
        return state_ == sdbus_status::failed ? last_error_ : error_code();
    }

    // Leaves the loop: the hook, the watcher, the timer. The bus is untouched.
    void stop() {
        if (hook_) loop_.unwatch(hook_);
        hook_ = hook_handle();
        drop();
    }

    // Another bus (after a reconnect): stop(), then drive `bus` from start().
    void reset(sd_bus* bus) {
        stop();
        bus_ = bus;
        state_ = sdbus_status::idle;
        err_ = 0;
    }

    sdbus_status state() const { return state_; }
    int last_errno() const { return err_; }
    error_code last_error() const { return last_error_; }
    // How often sd_bus_process() ran: a bus that spins shows here.
    unsigned long process_calls() const { return process_calls_; }

private:
    // What the bus wants for the next wait.
    void sync() {
        if (state_ == sdbus_status::lost || state_ == sdbus_status::failed) return;
        if (sd_bus_is_open(bus_) <= 0) return closing(-ENOTCONN);
        const int fd = sd_bus_get_fd(bus_);
        if (fd < 0) return lost(fd);
        const int ev = sd_bus_get_events(bus_);
        if (ev < 0) return lost(ev);
        // sd-bus speaks poll(): POLLIN and POLLOUT, the same bits as EPOLLIN
        // and EPOLLOUT on Linux.
        const unsigned want = ((static_cast<unsigned>(ev) & EPOLLIN) ? readable : 0u) |
                              ((static_cast<unsigned>(ev) & EPOLLOUT) ? writable : 0u);
        if (fd != fd_) {
            if (io_) loop_.unwatch(io_);
            io_ = loop_.watch(fd, want, [this](io_event) { process(); });
            if (!io_) return fail(io_.error());
            fd_ = fd;
            interest_ = want;
            state_ = sdbus_status::attached;
            report(0, error_code());
            if (state_ != sdbus_status::attached) return;
        } else if (want != interest_) {
            if (error_code e = loop_.modify(io_, want)) return fail(e);
            interest_ = want;
        }
        uint64_t usec = UINT64_MAX;
        if (sd_bus_get_timeout(bus_, &usec) < 0) usec = UINT64_MAX;
        if (usec == UINT64_MAX) {
            if (timer_) loop_.cancel(timer_);
            timer_ = timer_handle();
            deadline_ = -1;
            return;
        }
        const int64_t ns = deadline_ns(usec);
        if (timer_ && ns == deadline_) return;
        deadline_ = ns;
        if (timer_) {
            if (error_code e = loop_.rearm_at(timer_, std::chrono::nanoseconds(ns))) return fail(e);
        } else {
            timer_ = loop_.at(std::chrono::nanoseconds(ns), [this](timer_event) {
                timer_ = timer_handle(); // a one-shot is gone when it runs
                deadline_ = -1;
                process();
            });
            if (!timer_) return fail(timer_.error());
        }
    }

    // CLOCK_MONOTONIC us -> the loop's clock in ns.
    int64_t deadline_ns(uint64_t usec) {
        const uint64_t max_us = static_cast<uint64_t>(INT64_MAX / 4000); // far beyond any deadline
        const int64_t mono = static_cast<int64_t>(usec > max_us ? max_us : usec) * 1000;
        typedef typename std::decay<decltype(loop_.clock())>::type clock_type;
        if (std::is_same<clock_type, monotonic_clock>::value) return mono;
        const int64_t left = mono - detail::monotonic_ns();
        return loop_.clock().now_ns() + (left > 0 ? left : 0);
    }

    void process() {
        for (unsigned i = 0; i < opt_.process_batch; ++i) {
            ++process_calls_;
            const int r = sd_bus_process(bus_, nullptr);
            if (r < 0) {
                // A callback's own error comes back here too: ignored, as
                // sd-event does, while the bus is open (the batch ends).
                if (sd_bus_is_open(bus_) > 0) break;
                return closing(r);
            }
            if (r == 0) break;
            if (!io_) return; // stop(), reset() or a loss, from a callback
        }
        if (sd_bus_is_open(bus_) <= 0) closing(-ENOTCONN);
    }

    // The connection failed: sd-bus is closing it. Each further
    // sd_bus_process() fails one call in flight (its callback gets a
    // NoReply error), then sends the local Disconnected signal; its value
    // is then the callback's, so the end is told by sd_bus_get_timeout(),
    // which fails (-ENOTCONN) once the bus is closed. Bounded: every call
    // consumes one step.
    void closing(int err) {
        drop();
        uint64_t usec = 0;
        for (unsigned long i = 0; i < (1ul << 24) && sd_bus_get_timeout(bus_, &usec) >= 0; ++i) {
            ++process_calls_;
            sd_bus_process(bus_, nullptr);
        }
        lost(err);
    }

    void lost(int err) {
        drop();
        err_ = err;
        state_ = sdbus_status::lost;
        report(err, error_code());
    }
    void fail(error_code e) {
        drop();
        last_error_ = e;
        state_ = sdbus_status::failed;
        report(0, e);
    }
    void drop() {
        if (io_) loop_.unwatch(io_);
        if (timer_) loop_.cancel(timer_);
        io_ = io_handle();
        timer_ = timer_handle();
        fd_ = -1;
        interest_ = 0;
        deadline_ = -1;
    }
    void report(int err, error_code e) {
        sdbus_event ev = {state_, err, e};
        if (status_cb_) status_cb_(ev);
    }

    Loop& loop_;
    sd_bus* bus_;
    options opt_;
    hook_handle hook_;
    io_handle io_;
    timer_handle timer_;
    int fd_;
    unsigned interest_;
    int64_t deadline_;
    sdbus_status state_;
    int err_;
    unsigned long process_calls_;
    error_code last_error_;
    detail::inplace_callback<void(const sdbus_event&)> status_cb_;
};

} // namespace adapters
} // namespace microloop

#endif // MICROLOOP_ADAPTERS_SDBUS_HPP
